//! Admission of completion requests: an extractor that lets a request in only when this
//! client is within its rate limit and the server's [`Phase`] is ready, and then hands the
//! handler what it needs (the server and the loaded model), so no handler checks either
//! again or assumes them.

use super::error::ApiError;
use super::lifecycle::{Failure, Phase};
use super::{App, Loaded};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A request the server has taken: its handler may queue work.
pub struct Admitted {
    pub app: Arc<App>,
    pub loaded: Arc<Loaded>,
}

/// Why a request is turned away in `phase` (rate limits aside), or None when it is taken.
pub fn refusal(phase: &Phase) -> Option<ApiError> {
    match phase {
        Phase::Ready => None,
        Phase::Draining | Phase::Stopped => Some(ApiError::shutting_down()),
        // A failed load ends the process; until it has, the model is as good as loading.
        Phase::Loading | Phase::Failed(Failure::Load(_)) => Some(ApiError::loading()),
        Phase::Failed(Failure::SchedulerDied) => Some(ApiError::scheduler_dead()),
    }
}

impl FromRequestParts<Arc<App>> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if let Some(limiter) = &app.limiter {
            let ConnectInfo(client) = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .ok_or_else(|| {
                    ApiError::internal("the rate limit needs client addresses (ConnectInfo)")
                })?;
            if let Err(wait) = limiter.check(client.ip(), Instant::now()) {
                return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
            }
        }
        if let Some(e) = refusal(&app.lifecycle.phase()) {
            return Err(e);
        }
        Ok(Admitted {
            app: app.clone(),
            loaded: app.loaded()?.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    /// The refusal's status and whether it carries Retry-After.
    fn code(phase: Phase) -> Option<(u16, bool)> {
        refusal(&phase).map(|e| {
            let r = e.into_response();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        })
    }

    #[test]
    fn each_phase_admits_or_refuses_as_the_probes_say() {
        assert_eq!(code(Phase::Ready), None);
        let unavailable_retry = Some((503, true));
        assert_eq!(code(Phase::Loading), unavailable_retry);
        assert_eq!(code(Phase::Draining), unavailable_retry);
        assert_eq!(code(Phase::Stopped), unavailable_retry);
        assert_eq!(
            code(Phase::Failed(Failure::Load("x".into()))),
            unavailable_retry
        );
        // Retrying cannot help a dead scheduler.
        assert_eq!(
            code(Phase::Failed(Failure::SchedulerDied)),
            Some((503, false))
        );
        // Admission and readiness agree on which phases take work.
        for p in [
            Phase::Loading,
            Phase::Ready,
            Phase::Draining,
            Phase::Stopped,
            Phase::Failed(Failure::Load("x".into())),
            Phase::Failed(Failure::SchedulerDied),
        ] {
            assert_eq!(refusal(&p).is_none(), p.not_ready().is_none(), "{p:?}");
        }
    }
}
