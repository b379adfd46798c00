//! The answer to an admitted completion request, read from its scheduler events: one JSON
//! document, or server-sent events as the text arrives. Either way the request counts as in
//! flight until the answer (or its stream) is dropped.

use super::error::ApiError;
use super::request::Route;
use super::scheduler::{Event, Finish, FinishReason};
use super::App;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitnet::generate::TokenLogprob;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc::UnboundedReceiver;

/// Decrements the in-flight count when the answer (or its stream) is dropped.
pub struct InFlight(Arc<App>);
impl InFlight {
    pub fn new(app: &Arc<App>) -> Self {
        app.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(app.clone())
    }
}
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Answer {
    id: String,
    created: u64,
    model: String,
    route: Route,
    started: Instant,
    guard: InFlight,
    /// Whether the request asked for log-probabilities (else `"logprobs": null`).
    logprobs: bool,
}

impl Answer {
    /// The answer to a request of `route` accepted at `started`; it counts as in flight
    /// from now on.
    pub fn new(app: &Arc<App>, route: Route, started: Instant, logprobs: bool) -> Self {
        let prefix = match route {
            Route::Completion => "cmpl",
            Route::Chat => "chatcmpl",
        };
        Answer {
            id: format!("{prefix}-{:x}", app.next_id.fetch_add(1, Ordering::Relaxed)),
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: app.model_id.clone(),
            route,
            started,
            guard: InFlight::new(app),
            logprobs,
        }
    }

    /// The `logprobs` value of a choice or chunk: null unless asked for.
    fn logprobs_json(&self, items: &[TokenLogprob], offset: usize) -> Value {
        match (self.logprobs, self.guard.0.loaded.get()) {
            (true, Some(l)) => super::logprobs::json(self.route, &l.tok, items, offset),
            _ => Value::Null,
        }
    }

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

    pub async fn whole(
        self,
        mut rx: UnboundedReceiver<Event>,
        echo: Option<String>,
    ) -> Result<Response, ApiError> {
        let mut text = echo.unwrap_or_default();
        let mut lps = Vec::new();
        let finish = loop {
            match rx.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Logprob(lp)) => lps.push(lp),
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
        let logprobs = self.logprobs_json(&lps, 0);
        let choice = match self.route {
            Route::Completion => {
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason})
            }
            Route::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
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
        self.chunk_with(delta, reason, first, Value::Null)
    }

    fn chunk_with(
        &self,
        delta: Option<&str>,
        reason: Option<&str>,
        first: bool,
        logprobs: Value,
    ) -> Value {
        let choice = match self.route {
            Route::Completion => json!({
                "index": 0, "text": delta.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason,
            }),
            Route::Chat => {
                let mut d = serde_json::Map::new();
                if first {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(t) = delta {
                    d.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": d, "logprobs": logprobs, "finish_reason": reason})
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

    /// Bytes of a token's text as the completions API's `tokens` show it.
    fn token_text_len(&self, id: u32) -> usize {
        self.guard.0.loaded.get().map_or(0, |l| {
            String::from_utf8_lossy(&l.tok.token_bytes(id).unwrap_or_default()).len()
        })
    }

    /// Server-sent events: `data: {chunk}` per text piece, a final chunk with the finish
    /// reason (and a usage chunk if asked for), then `data: [DONE]`. A timeout or shutdown
    /// ends the stream with an error object instead of a finish reason.
    pub fn stream(
        self,
        rx: UnboundedReceiver<Event>,
        echo: Option<String>,
        usage: bool,
    ) -> Response {
        struct St {
            a: Answer,
            rx: UnboundedReceiver<Event>,
            pending: std::collections::VecDeque<String>,
            first: bool,
            over: bool,
            /// Log-probabilities of tokens whose text has not been sent yet.
            lps: Vec<TokenLogprob>,
            /// Bytes of completion text sent (the completions API's text offsets).
            sent: usize,
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
            lps: Vec::new(),
            sent: 0,
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
                    Some(Event::Logprob(lp)) => st.lps.push(lp),
                    Some(Event::Text(t)) => {
                        let lps = std::mem::take(&mut st.lps);
                        let lp = st.a.logprobs_json(&lps, st.sent);
                        let c = st.a.chunk_with(Some(&t), None, st.first, lp);
                        st.sent += lps
                            .iter()
                            .map(|l| st.a.token_text_len(l.token))
                            .sum::<usize>();
                        st.first = false;
                        st.pending.push_back(c.to_string());
                    }
                    Some(Event::Done(f)) => {
                        st.a.record(&f);
                        match st.a.failure(&f) {
                            Some(e) => st.pending.push_back(e.body().to_string()),
                            None => {
                                // Tokens whose text was held back or cut by a stop string.
                                if !st.lps.is_empty() {
                                    let lps = std::mem::take(&mut st.lps);
                                    let lp = st.a.logprobs_json(&lps, st.sent);
                                    let c = st.a.chunk_with(Some(""), None, st.first, lp);
                                    st.first = false;
                                    st.pending.push_back(c.to_string());
                                }
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
