//! The probes and reports: `/health/live`, `/health/ready`, the `/health` JSON report and the
//! Prometheus exposition at `/metrics`. Their verdicts come from the one stored
//! [`Phase`] (plus, for readiness, whether the wait queue is full).

use super::lifecycle::{NotReady, Phase};
use super::App;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why the server is not ready in `phase`, or None when it is.
fn not_ready(app: &App, phase: &Phase) -> Option<NotReady> {
    phase
        .not_ready()
        .or_else(|| (app.sh.queue_depth() >= app.sh.queue_limit).then_some(NotReady::QueueFull))
}

pub async fn live(State(app): State<Arc<App>>) -> Response {
    if !app.lifecycle.phase().is_live() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "dead", "reason": NotReady::SchedulerDead.as_str()})),
        )
            .into_response();
    }
    Json(json!({"status": "alive"})).into_response()
}

pub async fn ready(State(app): State<Arc<App>>) -> Response {
    match not_ready(&app, &app.lifecycle.phase()) {
        None => Json(json!({"ready": true})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason.as_str()})),
        )
            .into_response(),
    }
}

/// CPU features, threads and the honest absence of a GPU.
pub fn device(threads: usize) -> Value {
    json!({
        "cpu": {
            "arch": std::env::consts::ARCH,
            "features": bitnet::receipt::cpu_features(),
            "kernels": bitnet::quant::matmul::Isa::detect().name().to_string(),
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        "threads": threads,
        "gpu": "none",
    })
}

pub async fn health(State(app): State<Arc<App>>) -> Response {
    let phase = app.lifecycle.phase();
    let reason = not_ready(&app, &phase);
    let status = match reason {
        None => "healthy",
        Some(r) if r.is_fatal() => "unhealthy",
        Some(_) => "degraded",
    };
    let sh = &app.sh;
    let loaded = app.loaded.get();
    let model = match (loaded, phase.load_error()) {
        (Some(l), _) => json!({
            "status": "loaded",
            "id": app.model_id,
            "path": app.opts.model.display().to_string(),
            "architecture": l.model.config.arch,
            "context_length": l.model.config.context_length,
        }),
        (None, Some(e)) => json!({"status": "failed", "error": e}),
        (None, None) => json!({"status": "loading"}),
    };
    let in_flight = app.in_flight.load(Ordering::SeqCst);
    let body = json!({
        "status": status,
        "reason": reason.map(NotReady::as_str),
        "timestamp": bitnet::receipt::now_rfc3339(),
        "uptime_seconds": app.metrics.started.elapsed().as_secs_f64(),
        "version": env!("CARGO_PKG_VERSION"),
        "components": {
            "model": model,
            "scheduler": {
                "status": if sh.alive.load(Ordering::SeqCst) { "running" } else if loaded.is_some() { "stopped" } else { "not_started" },
                "draining": phase.is_draining(),
                "queue_depth": sh.queue_depth(),
                "queue_limit": sh.queue_limit,
            },
            "batch_engine": {
                "mode": "continuous",
                "parallel": sh.parallel,
                "active_sequences": sh.active.load(Ordering::SeqCst),
                "forward_steps": sh.steps.load(Ordering::Relaxed),
                "kv_cache_tokens": sh.kv_tokens.load(Ordering::Relaxed),
            },
            "device_monitor": device(app.threads),
        },
        "system": app.metrics.system(sh, in_flight),
        "performance": app.metrics.performance(),
    });
    let code = if reason.is_some_and(NotReady::is_fatal) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

pub async fn prometheus(State(app): State<Arc<App>>) -> Response {
    let kv_bytes = app.loaded.get().map_or(0, |l| {
        let c = &l.model.config;
        2 * c.n_layers * c.kv_dim() * std::mem::size_of::<f32>()
    });
    let text = app.metrics.prometheus(
        &app.sh,
        app.lifecycle.is_draining(),
        app.in_flight.load(Ordering::SeqCst),
        kv_bytes,
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
