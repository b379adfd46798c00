//! The routes: OpenAI's `/v1/completions`, `/v1/chat/completions` and `/v1/models`, and
//! llama.cpp-style `/tokenize` and `/detokenize`. A completion handler is given an
//! [`Admitted`] request (rate limit and readiness already passed), reads its body
//! ([`request`](super::request)), queues a job with the scheduler and answers
//! ([`answer`](super::answer)).

use super::admission::Admitted;
use super::answer::Answer;
use super::chat::{Failure, Message};
use super::error::ApiError;
use super::request::{
    read_completion, read_json, ChatRequest, CompletionRequest, Prompt, Route, Sampling,
};
use super::scheduler::{Job, Rejected};
use super::{App, RENDER_DEADLINE};
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::unbounded_channel;

pub async fn completions(a: Admitted, body: Body) -> Result<Response, ApiError> {
    let req: CompletionRequest = read_completion(&a.app, body).await?;
    let logprobs = req.logprobs()?;
    let tok = &a.loaded.tok;
    let mut prompts = Vec::new();
    for p in req.prompts()? {
        prompts.push(match p {
            Prompt::Text(t) => (tok.encode(t, true, false), req.echo.then(|| t.to_string())),
            Prompt::Tokens(t) => {
                if let Some(&bad) = t.iter().find(|&&id| id as usize >= tok.vocab_size()) {
                    return Err(ApiError::bad_request(format!(
                        "prompt token {bad} is outside the vocabulary of {} tokens",
                        tok.vocab_size()
                    )));
                }
                let echo = req.echo.then(|| tok.decode(t).unwrap_or_default());
                (t.to_vec(), echo)
            }
        });
    }
    start(a, Route::Completion, prompts, req.sampling, logprobs).await
}

pub async fn chat_completions(a: Admitted, body: Body) -> Result<Response, ApiError> {
    let req: ChatRequest = read_completion(&a.app, body).await?;
    let messages = req.messages()?;
    let logprobs = req.logprobs()?;
    let text = render_chat(&a, messages).await?;
    let tok = &a.loaded.tok;
    // The template writes BOS itself when it wants one.
    let add_bos = tok
        .bos()
        .and_then(|b| tok.token_text(b))
        .is_none_or(|b| !text.starts_with(b));
    let ids = tok.encode(&text, add_bos, true);
    start(a, Route::Chat, vec![(ids, None)], req.sampling, logprobs).await
}

/// The chat prompt, rendered on a blocking thread (never on the async runtime, whose threads
/// answer the probes), at most [`RENDERS_AT_ONCE`](super::RENDERS_AT_ONCE) at a time, within [`RENDER_DEADLINE`]
/// including the wait for a turn. A render that outlives the deadline still ends by its own
/// budget; its answer is dropped.
async fn render_chat(a: &Admitted, messages: Vec<Message>) -> Result<String, ApiError> {
    let deadline = tokio::time::Instant::now() + RENDER_DEADLINE;
    let permit = tokio::time::timeout_at(deadline, a.app.renders.clone().acquire_owned())
        .await
        .map_err(|_| ApiError::templates_busy(RENDER_DEADLINE.as_secs()))?
        .map_err(|_| ApiError::internal("the render semaphore was closed"))?;
    let loaded = a.loaded.clone();
    let sandbox = a.app.sandbox.clone();
    let running = Arc::new(std::sync::Mutex::new(None));
    let started = running.clone();
    let render = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        match &sandbox {
            Some(s) => s.render(&loaded.chat, &messages, |r| {
                *started.lock().unwrap_or_else(|e| e.into_inner()) = Some(r)
            }),
            None => loaded.chat.render(&messages),
        }
    });
    match tokio::time::timeout_at(deadline, render).await {
        Err(_) => {
            // Past the deadline: end the worker (an in-process render ends by its own budget;
            // its answer is dropped).
            let r = *running.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(s), Some(r)) = (&a.app.sandbox, r) {
                s.kill(r);
            }
            Err(ApiError::template_failed(format!(
                "chat template {}: did not render within {} s",
                a.loaded.chat.name,
                RENDER_DEADLINE.as_secs()
            )))
        }
        Ok(Err(e)) => Err(ApiError::internal(format!("template render task: {e}"))),
        Ok(Ok(Err(e))) => Err(match e.failure {
            Failure::Invalid => ApiError::bad_request(e.to_string()),
            Failure::OutOfFuel | Failure::TooLong | Failure::Crashed => {
                ApiError::template_failed(e.to_string())
            }
        }),
        Ok(Ok(Ok(text))) => Ok(text),
    }
}

/// Queues a job per prompt and answers: one JSON document, or a stream of events, with a
/// choice per prompt. If a later prompt is refused (a full queue), the earlier ones are
/// dropped with the answer and cancelled.
async fn start(
    a: Admitted,
    route: Route,
    prompts: Vec<(Vec<u32>, Option<String>)>,
    sampling: Sampling,
    logprobs: Option<usize>,
) -> Result<Response, ApiError> {
    let ctx = a.loaded.model.config.context_length;
    let mut jobs = Vec::with_capacity(prompts.len());
    for (ids, echo) in prompts {
        if ids.is_empty() {
            return Err(ApiError::bad_request("the prompt has no tokens"));
        }
        let opts = sampling.options(ids.len(), ctx)?;
        jobs.push((ids, opts, echo));
    }
    let app = &a.app;
    let now = Instant::now();
    let mut answers = Vec::with_capacity(jobs.len());
    for (ids, opts, echo) in jobs {
        let (tx, rx) = unbounded_channel();
        let job = Job {
            prompt: ids,
            opts,
            deadline: now + app.opts.request_timeout(),
            events: tx,
            enqueued: now,
            logprobs,
        };
        app.sh.submit(job).map_err(|r| match r {
            Rejected::QueueFull => ApiError::overloaded(app.sh.queue_limit),
            Rejected::Draining => ApiError::shutting_down(),
            Rejected::SchedulerGone => ApiError::scheduler_dead(),
        })?;
        answers.push((rx, echo));
    }
    let answer = Answer::new(app, route, now, logprobs.is_some());
    match sampling.stream() {
        Some(usage) => Ok(answer.stream(answers, usage)),
        None => answer.whole(answers).await,
    }
}

pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let mut data = Vec::new();
    if let Some(l) = app.loaded.get() {
        let c = &l.model.config;
        data.push(json!({
            "id": app.model_id,
            "object": "model",
            "created": app.started_unix,
            "owned_by": "bitnet",
            "meta": {
                "architecture": c.arch,
                "n_ctx": c.context_length,
                "n_vocab": c.vocab_size,
                "n_embd": c.dim,
                "n_layer": c.n_layers,
                "size_bytes": l.model.file.bytes().len(),
                "chat_template": l.chat.name,
            },
        }));
    }
    Json(json!({"object": "list", "data": data}))
}

/// llama-server's `/props`: the model, the context, the slots and the defaults a request
/// gets for what it does not set.
pub async fn props(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let l = app.loaded()?;
    let c = &l.model.config;
    let text = |id: Option<u32>| id.and_then(|i| l.tok.token_text(i)).map(str::to_string);
    Ok(Json(json!({
        "model": app.model_id,
        "model_path": app.opts.model.display().to_string(),
        "architecture": c.arch,
        "n_ctx": c.context_length,
        "n_vocab": c.vocab_size,
        "n_embd": c.dim,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_head_kv": c.n_kv_heads,
        "activation": format!("{:?}", c.activation).to_lowercase(),
        "total_slots": app.sh.parallel,
        "queue_limit": app.sh.queue_limit,
        "threads": app.threads,
        "chat_template": {"name": l.chat.name, "source": l.chat.source()},
        "bos_token": text(l.tok.bos()),
        "eos_token": text(l.tok.eos()),
        "tokenizer": l.tok.kind(),
        "default_generation_settings": {
            "max_tokens": 16,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "repeat_last_n": bitnet::sample::SamplerParams::default().repeat_last_n,
            "n": 1,
        },
        "build": super::fingerprint(),
    })))
}

/// llama-server's `/slots`: every sequence slot, idle or what its request is doing.
pub async fn slots(State(app): State<Arc<App>>) -> Json<Value> {
    let running = app
        .sh
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let slots: Vec<Value> = (0..app.sh.parallel)
        .map(|i| match running.get(i) {
            Some(v) => {
                let mut o = json!(v);
                o["id"] = json!(i);
                o
            }
            None => json!({"id": i, "state": "idle"}),
        })
        .collect();
    Json(Value::Array(slots))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    content: String,
    #[serde(default = "yes")]
    add_special: bool,
    #[serde(default)]
    parse_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

pub async fn tokenize(State(app): State<Arc<App>>, body: Body) -> Result<Json<Value>, ApiError> {
    let req: TokenizeRequest = read_json(&app, body, None).await?;
    let l = app.loaded()?;
    let ids = l
        .tok
        .encode(&req.content, req.add_special, req.parse_special);
    if !req.with_pieces {
        return Ok(Json(json!({"tokens": ids})));
    }
    let pieces: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let bytes = l.tok.token_bytes(id).unwrap_or_default();
            match String::from_utf8(bytes) {
                Ok(s) => json!({"id": id, "piece": s}),
                Err(e) => json!({"id": id, "piece": e.into_bytes()}),
            }
        })
        .collect();
    Ok(Json(json!({"tokens": pieces})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    tokens: Vec<u32>,
}

pub async fn detokenize(State(app): State<Arc<App>>, body: Body) -> Result<Json<Value>, ApiError> {
    let req: DetokenizeRequest = read_json(&app, body, None).await?;
    let l = app.loaded()?;
    let text = l
        .tok
        .decode(&req.tokens)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(json!({"content": text})))
}

pub async fn not_found() -> ApiError {
    ApiError::route_not_found()
}
