//! The OpenAI-compatible routes (`/v1/completions`, `/v1/chat/completions`, `/v1/models`) and
//! llama.cpp-style `/tokenize` and `/detokenize`: request parsing, admission (rate limit,
//! readiness, queue), and the answers, whole or as server-sent events.

use super::chat::Message;
use super::error::ApiError;
use super::lifecycle::{Failure, Phase};
use super::scheduler::{Event, Finish, FinishReason, Job, Rejected};
use super::App;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitnet::generate::GenerateOptions;
use bitnet::sample::SamplerParams;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Reads and parses a JSON body of at most `--max-body` bytes; for the completion routes,
/// every field is first checked to be one this server honours ([`super::fields::vet`]).
async fn json_body<T: serde::de::DeserializeOwned>(
    app: &App,
    body: Body,
    route: Option<Route>,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, app.opts.max_body)
        .await
        .map_err(|_| ApiError::body_too_large(app.opts.max_body))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if let Some(route) = route {
        let (own, chat): (&[&str], bool) = match route {
            Route::Completion => (&["prompt", "echo"], false),
            Route::Chat => (&["messages"], true),
        };
        super::fields::vet(own, chat, &v)?;
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

/// A string or a list of strings (OpenAI allows both for `stop` and `prompt`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Sampling fields shared by both completion routes. Defaults are OpenAI's; `top_k`,
/// `min_p`, `repeat_penalty` and `repeat_last_n` are llama.cpp extensions.
#[derive(Deserialize, Debug, Default)]
pub struct Sampling {
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<usize>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<OneOrMany>,
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    ignore_eos: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    prompt: OneOrMany,
    #[serde(default)]
    echo: bool,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize, Debug)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// Message content: a string, or a list of parts of which only text parts are supported.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

impl Sampling {
    /// Validated generation options; `max_tokens` is clamped to the context left after the
    /// prompt.
    fn options(&self, prompt_len: usize, ctx: usize) -> Result<GenerateOptions, ApiError> {
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::bad_request("only n = 1 is supported"));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.unwrap_or(0.0) != 0.0 {
                return Err(ApiError::bad_request(format!(
                    "{name} is not supported (use repeat_penalty)"
                )));
            }
        }
        if prompt_len >= ctx {
            return Err(ApiError::context_length_exceeded(prompt_len, ctx));
        }
        let room = ctx - prompt_len;
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(16)
            .min(room);
        let d = SamplerParams::default();
        let sampler = SamplerParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            seed: self.seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
        };
        if !(sampler.temperature >= 0.0 && sampler.temperature.is_finite()) {
            return Err(ApiError::bad_request("temperature must be a number >= 0"));
        }
        sampler.validate().map_err(ApiError::bad_request)?;
        let stop = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stop.len() > 4 {
            return Err(ApiError::bad_request("at most 4 stop sequences"));
        }
        Ok(GenerateOptions {
            max_tokens,
            sampler,
            stop,
            ignore_eos: self.ignore_eos,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decrements the in-flight count when the answer (or its stream) is dropped.
pub struct InFlight(Arc<App>);
impl InFlight {
    fn new(app: &Arc<App>) -> Self {
        app.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(app.clone())
    }
}
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the server takes a request from `client` now.
fn admit(app: &App, client: SocketAddr) -> Result<(), ApiError> {
    if let Some(l) = &app.limiter {
        if let Err(wait) = l.check(client.ip(), Instant::now()) {
            return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
        }
    }
    match app.lifecycle.phase() {
        Phase::Ready => Ok(()),
        Phase::Draining | Phase::Stopped => Err(ApiError::shutting_down()),
        // A failed load ends the process; until it has, the model is as good as loading.
        Phase::Loading | Phase::Failed(Failure::Load(_)) => Err(ApiError::loading()),
        Phase::Failed(Failure::SchedulerDied) => Err(ApiError::scheduler_dead()),
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Route {
    Completion,
    Chat,
}

pub async fn completions(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Body,
) -> Result<Response, ApiError> {
    admit(&app, client)?;
    let req: CompletionRequest = json_body(&app, body, Some(Route::Completion)).await?;
    let loaded = app.loaded.get().expect("admit checked");
    check_model(&app, req.model.as_deref())?;
    let prompt = match req.prompt.into_vec().as_slice() {
        [p] => p.clone(),
        _ => return Err(ApiError::bad_request("prompt must be one string")),
    };
    let ids = loaded.tok.encode(&prompt, true, false);
    let echo = req.echo.then_some(prompt);
    start(app.clone(), Route::Completion, ids, req.sampling, echo).await
}

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Body,
) -> Result<Response, ApiError> {
    admit(&app, client)?;
    let req: ChatRequest = json_body(&app, body, Some(Route::Chat)).await?;
    let loaded = app.loaded.get().expect("admit checked");
    check_model(&app, req.model.as_deref())?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(s)) => s,
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => s.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "content part type {kind:?} is not supported (text only)"
                            )))
                        }
                    }
                }
                s
            }
        };
        messages.push(Message {
            role: m.role,
            content,
        });
    }
    let text = loaded
        .chat
        .render(&messages)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // The template writes BOS itself when it wants one.
    let add_bos = loaded
        .tok
        .bos()
        .and_then(|b| loaded.tok.token_text(b))
        .is_none_or(|b| !text.starts_with(b));
    let ids = loaded.tok.encode(&text, add_bos, true);
    start(app.clone(), Route::Chat, ids, req.sampling, None).await
}

fn check_model(app: &App, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && m != app.model_id => {
            Err(ApiError::model_not_found(m, &app.model_id))
        }
        _ => Ok(()),
    }
}

/// Queues the job and answers: one JSON document, or a stream of events.
async fn start(
    app: Arc<App>,
    route: Route,
    ids: Vec<u32>,
    sampling: Sampling,
    echo: Option<String>,
) -> Result<Response, ApiError> {
    let loaded = app.loaded.get().expect("admit checked");
    if ids.is_empty() {
        return Err(ApiError::bad_request("the prompt has no tokens"));
    }
    let opts = sampling.options(ids.len(), loaded.model.config.context_length)?;
    let (tx, rx) = unbounded_channel();
    let now = Instant::now();
    let job = Job {
        prompt: ids,
        opts,
        deadline: now + app.opts.request_timeout(),
        events: tx,
        enqueued: now,
    };
    app.sh.submit(job).map_err(|r| match r {
        Rejected::QueueFull => ApiError::overloaded(app.sh.queue_limit),
        Rejected::Draining => ApiError::shutting_down(),
    })?;
    let answer = Answer {
        id: format!(
            "{}-{:x}",
            if route == Route::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            app.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: unix_now(),
        model: app.model_id.clone(),
        route,
        started: now,
        guard: InFlight::new(&app),
    };
    if sampling.stream {
        let usage = sampling.stream_options.is_some_and(|o| o.include_usage);
        Ok(answer.stream(rx, echo, usage))
    } else {
        answer.whole(rx, echo).await
    }
}

struct Answer {
    id: String,
    created: u64,
    model: String,
    route: Route,
    started: Instant,
    guard: InFlight,
}

impl Answer {
    fn usage(f: &Finish) -> Value {
        json!({
            "prompt_tokens": f.prompt_tokens,
            "completion_tokens": f.completion_tokens,
            "total_tokens": f.prompt_tokens + f.completion_tokens,
        })
    }

    fn failure(&self, f: &Finish) -> Option<ApiError> {
        match f.reason {
            FinishReason::Timeout => Some(ApiError::timeout(self.guard.0.opts.request_timeout)),
            FinishReason::Shutdown => Some(ApiError::ended_by_shutdown()),
            _ => None,
        }
    }

    fn record(&self, f: &Finish) {
        self.guard
            .0
            .metrics
            .completion(self.started.elapsed(), f.time_to_first_token);
    }

    async fn whole(
        self,
        mut rx: UnboundedReceiver<Event>,
        echo: Option<String>,
    ) -> Result<Response, ApiError> {
        let mut text = echo.unwrap_or_default();
        let finish = loop {
            match rx.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done(f)) => break f,
                Some(Event::Failed(e)) => return Err(ApiError::generation_failed(e)),
                None => return Err(ApiError::scheduler_lost()),
            }
        };
        self.record(&finish);
        if let Some(e) = self.failure(&finish) {
            return Err(e);
        }
        let reason = finish.reason.openai();
        let choice = match self.route {
            Route::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": reason})
            }
            Route::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": reason,
            }),
        };
        let object = match self.route {
            Route::Completion => "text_completion",
            Route::Chat => "chat.completion",
        };
        Ok(Json(json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": super::fingerprint(),
            "choices": [choice],
            "usage": Self::usage(&finish),
        }))
        .into_response())
    }

    fn chunk(&self, delta: Option<&str>, reason: Option<&str>, first: bool) -> Value {
        let choice = match self.route {
            Route::Completion => json!({
                "index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": reason,
            }),
            Route::Chat => {
                let mut d = serde_json::Map::new();
                if first {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(t) = delta {
                    d.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": d, "logprobs": null, "finish_reason": reason})
            }
        };
        json!({
            "id": self.id,
            "object": match self.route {
                Route::Completion => "text_completion",
                Route::Chat => "chat.completion.chunk",
            },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": super::fingerprint(),
            "choices": [choice],
        })
    }

    /// Server-sent events: `data: {chunk}` per text piece, a final chunk with the finish
    /// reason (and a usage chunk if asked for), then `data: [DONE]`. A timeout or shutdown
    /// ends the stream with an error object instead of a finish reason.
    fn stream(self, rx: UnboundedReceiver<Event>, echo: Option<String>, usage: bool) -> Response {
        struct St {
            a: Answer,
            rx: UnboundedReceiver<Event>,
            pending: std::collections::VecDeque<String>,
            first: bool,
            over: bool,
        }
        let mut pending = std::collections::VecDeque::new();
        let mut first = true;
        if self.route == Route::Chat {
            pending.push_back(self.chunk(None, None, true).to_string());
            first = false;
        }
        if let Some(e) = echo.filter(|e| !e.is_empty()) {
            pending.push_back(self.chunk(Some(&e), None, false).to_string());
        }
        let st = St {
            a: self,
            rx,
            pending,
            first,
            over: false,
        };
        let events = futures_util::stream::unfold(st, move |mut st| async move {
            loop {
                if let Some(data) = st.pending.pop_front() {
                    let ev = SseEvent::default().data(data);
                    return Some((Ok::<_, std::convert::Infallible>(ev), st));
                }
                if st.over {
                    return None;
                }
                match st.rx.recv().await {
                    Some(Event::Text(t)) => {
                        let c = st.a.chunk(Some(&t), None, st.first);
                        st.first = false;
                        st.pending.push_back(c.to_string());
                    }
                    Some(Event::Done(f)) => {
                        st.a.record(&f);
                        match st.a.failure(&f) {
                            Some(e) => st.pending.push_back(e.body().to_string()),
                            None => {
                                let c = st.a.chunk(None, Some(f.reason.openai()), st.first);
                                st.pending.push_back(c.to_string());
                                if usage {
                                    let mut u = st.a.chunk(None, None, false);
                                    u["choices"] = json!([]);
                                    u["usage"] = Answer::usage(&f);
                                    st.pending.push_back(u.to_string());
                                }
                            }
                        }
                        st.pending.push_back("[DONE]".into());
                        st.over = true;
                    }
                    Some(Event::Failed(e)) => {
                        let e = ApiError::generation_failed(e);
                        st.pending.push_back(e.body().to_string());
                        st.pending.push_back("[DONE]".into());
                        st.over = true;
                    }
                    None => return None,
                }
            }
        });
        let mut r = Sse::new(events).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
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
    let req: TokenizeRequest = json_body(&app, body, None).await?;
    let l = app.loaded.get().ok_or_else(ApiError::loading)?;
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
    let req: DetokenizeRequest = json_body(&app, body, None).await?;
    let l = app.loaded.get().ok_or_else(ApiError::loading)?;
    let text = l
        .tok
        .decode(&req.tokens)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(json!({"content": text})))
}

pub async fn not_found() -> ApiError {
    ApiError::route_not_found()
}
