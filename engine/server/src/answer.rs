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

    /// One JSON document: a choice per prompt (`index` in prompt order), usage summed.
    pub async fn whole(
        self,
        prompts: Vec<(UnboundedReceiver<Event>, Option<String>)>,
    ) -> Result<Response, ApiError> {
        let mut choices = Vec::with_capacity(prompts.len());
        let mut total = Finish::default();
        for (index, (mut rx, echo)) in prompts.into_iter().enumerate() {
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
            total.prompt_tokens += finish.prompt_tokens;
            total.completion_tokens += finish.completion_tokens;
            let reason = finish.reason.openai();
            let logprobs = self.logprobs_json(&lps, 0);
            choices.push(match self.route {
                Route::Completion => json!({
                    "index": index, "text": text, "logprobs": logprobs, "finish_reason": reason,
                }),
                Route::Chat => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": reason,
                }),
            });
        }
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
            "choices": choices,
            "usage": Self::usage(&total),
        }))
        .into_response())
    }

    fn chunk(&self, index: usize, delta: Option<&str>, reason: Option<&str>, first: bool) -> Value {
        self.chunk_with(index, delta, reason, first, Value::Null)
    }

    fn chunk_with(
        &self,
        index: usize,
        delta: Option<&str>,
        reason: Option<&str>,
        first: bool,
        logprobs: Value,
    ) -> Value {
        let choice = match self.route {
            Route::Completion => json!({
                "index": index, "text": delta.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason,
            }),
            Route::Chat => {
                let mut d = serde_json::Map::new();
                if first {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(t) = delta {
                    d.insert("content".into(), t.into());
                }
                json!({"index": index, "delta": d, "logprobs": logprobs, "finish_reason": reason})
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
        self.guard
            .0
            .loaded
            .get()
            .map_or(0, |l| super::logprobs::text(&l.tok, id).len())
    }

    /// Server-sent events: `data: {chunk}` per text piece, a final chunk with the finish
    /// reason (and a usage chunk if asked for), then `data: [DONE]`. A timeout or shutdown
    /// ends the stream with an error object instead of a finish reason.
    pub fn stream(
        self,
        prompts: Vec<(UnboundedReceiver<Event>, Option<String>)>,
        usage: bool,
    ) -> Response {
        /// Per choice: log-probabilities of tokens whose text has not been sent yet, and bytes
        /// of completion text sent (the completions API's text offsets).
        #[derive(Default)]
        struct Choice {
            lps: Vec<TokenLogprob>,
            sent: usize,
        }
        struct St {
            a: Answer,
            rx: Events,
            pending: std::collections::VecDeque<String>,
            first: bool,
            over: bool,
            choices: Vec<Choice>,
            /// Choices still generating, and the usage of those that finished.
            running: usize,
            total: Finish,
        }
        let mut pending = std::collections::VecDeque::new();
        let mut first = true;
        if self.route == Route::Chat {
            pending.push_back(self.chunk(0, None, None, true).to_string());
            first = false;
        }
        let n = prompts.len();
        let mut rxs = Vec::with_capacity(n);
        for (i, (rx, echo)) in prompts.into_iter().enumerate() {
            if let Some(e) = echo.filter(|e| !e.is_empty()) {
                pending.push_back(self.chunk(i, Some(&e), None, false).to_string());
            }
            rxs.push(rx);
        }
        let st = St {
            a: self,
            rx: Events::new(rxs),
            pending,
            first,
            over: false,
            choices: (0..n).map(|_| Choice::default()).collect(),
            running: n,
            total: Finish::default(),
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
                let (i, event) = st.rx.recv().await?;
                match event {
                    Event::Logprob(lp) => st.choices[i].lps.push(lp),
                    Event::Text(t) => {
                        let lps = std::mem::take(&mut st.choices[i].lps);
                        let lp = st.a.logprobs_json(&lps, st.choices[i].sent);
                        let c = st.a.chunk_with(i, Some(&t), None, st.first, lp);
                        st.choices[i].sent += lps
                            .iter()
                            .map(|l| st.a.token_text_len(l.token))
                            .sum::<usize>();
                        st.first = false;
                        st.pending.push_back(c.to_string());
                    }
                    Event::Done(f) => {
                        st.a.record(&f);
                        if let Some(e) = st.a.failure(&f) {
                            st.pending.push_back(e.body().to_string());
                            st.pending.push_back("[DONE]".into());
                            st.over = true;
                            continue;
                        }
                        // Tokens whose text was held back or cut by a stop string.
                        if !st.choices[i].lps.is_empty() {
                            let lps = std::mem::take(&mut st.choices[i].lps);
                            let lp = st.a.logprobs_json(&lps, st.choices[i].sent);
                            let c = st.a.chunk_with(i, Some(""), None, st.first, lp);
                            st.first = false;
                            st.pending.push_back(c.to_string());
                        }
                        let c = st.a.chunk(i, None, Some(f.reason.openai()), st.first);
                        st.pending.push_back(c.to_string());
                        st.total.prompt_tokens += f.prompt_tokens;
                        st.total.completion_tokens += f.completion_tokens;
                        st.running -= 1;
                        if st.running == 0 {
                            if usage {
                                let mut u = st.a.chunk(0, None, None, false);
                                u["choices"] = json!([]);
                                u["usage"] = Answer::usage(&st.total);
                                st.pending.push_back(u.to_string());
                            }
                            st.pending.push_back("[DONE]".into());
                            st.over = true;
                        }
                    }
                    Event::Failed(e) => {
                        let e = ApiError::generation_failed(e);
                        st.pending.push_back(e.body().to_string());
                        st.pending.push_back("[DONE]".into());
                        st.over = true;
                    }
                }
            }
        });
        let mut r = Sse::new(events).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    }
}

/// The events of one request's sequences, tagged with the sequence's index. One sequence is
/// read directly; several are forwarded into one channel by a task each (which stops, and
/// so cancels its sequence, when the answer is dropped).
enum Events {
    One(UnboundedReceiver<Event>),
    Many(UnboundedReceiver<(usize, Event)>),
}

impl Events {
    fn new(mut rxs: Vec<UnboundedReceiver<Event>>) -> Self {
        if rxs.len() == 1 {
            return Events::One(rxs.pop().expect("one"));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, mut r) in rxs.into_iter().enumerate() {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(e) = r.recv().await {
                    if tx.send((i, e)).is_err() {
                        return;
                    }
                }
            });
        }
        Events::Many(rx)
    }

    async fn recv(&mut self) -> Option<(usize, Event)> {
        match self {
            Events::One(r) => r.recv().await.map(|e| (0, e)),
            Events::Many(r) => r.recv().await,
        }
    }
}
