//! Server-sent events and what a completion request came to, as pure functions of the bytes
//! and statuses seen: a request is *completed* when its stream ended with `data: [DONE]` after
//! a chunk carrying `finish_reason`, *lost* when the server accepted it (200 and headers) or
//! took it without answering and the answer never finished, *rejected* when it was refused
//! with 503/429 before starting, *refused* when no connection could be made.

use serde::Serialize;
use serde_json::Value as Json;

/// Incremental SSE decoder (lines ended by `\n` or `\r\n`; an empty line ends an event;
/// `data:` lines are joined with `\n`; comments and other fields are ignored).
#[derive(Default, Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if line.is_empty() {
                if let Some(d) = self.data.take() {
                    events.push(d);
                }
            } else if let Some(v) = line.strip_prefix("data") {
                // `data` alone, `data:` or `data: value`; other fields start differently.
                let v = match v.strip_prefix(':') {
                    Some(v) => v.strip_prefix(' ').unwrap_or(v),
                    None if v.is_empty() => "",
                    None => continue,
                };
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(v);
                    }
                    None => self.data = Some(v.to_string()),
                }
            }
        }
        events
    }

    /// Bytes received after the last complete event (a truncated event or line).
    pub fn pending(&self) -> bool {
        !self.line.is_empty() || self.data.is_some()
    }
}

/// What the chunks of one streamed completion said.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct StreamState {
    pub chunks: u64,
    /// Chunks carrying non-empty `choices[0].text`.
    pub text_chunks: u64,
    /// `usage.completion_tokens` if a chunk reported it.
    pub usage_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    pub done: bool,
    /// An `{"error": ..}` chunk, or a chunk that is not JSON.
    pub error: Option<String>,
}

impl StreamState {
    pub fn on_event(&mut self, data: &str) {
        if self.done {
            return;
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        self.chunks += 1;
        let v: Json = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                self.error
                    .get_or_insert_with(|| format!("chunk is not JSON: {e}"));
                return;
            }
        };
        if let Some(e) = v.get("error") {
            self.error.get_or_insert_with(|| error_text(e));
        }
        let choice = &v["choices"][0];
        if choice["text"].as_str().is_some_and(|t| !t.is_empty()) {
            self.text_chunks += 1;
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(r.to_string());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            self.usage_tokens = Some(n);
        }
    }

    /// Tokens generated: the server's count if it gave one, else the text-bearing chunks.
    pub fn tokens(&self) -> u64 {
        self.usage_tokens.unwrap_or(self.text_chunks)
    }
}

fn error_text(e: &Json) -> String {
    match e {
        Json::Object(o) => o
            .get("message")
            .and_then(Json::as_str)
            .or_else(|| o.get("code").and_then(Json::as_str))
            .unwrap_or("error")
            .to_string(),
        other => other.to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Rejected,
    Lost,
    Refused,
    /// Answered, but wrongly: an unexpected status, a malformed body, an error chunk, a
    /// stream that ended with `[DONE]` but no `finish_reason`.
    Failed,
}

/// The classification of one request and the facts behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classified {
    pub outcome: Outcome,
    pub tokens: u64,
    pub detail: String,
}

/// A streamed 200 answer: how its body ended (`transport_error` when reading failed or timed
/// out before the end of the body).
pub fn classify_stream(
    s: &StreamState,
    parser_pending: bool,
    transport_error: Option<&str>,
) -> Classified {
    let tokens = s.tokens();
    let (outcome, detail) = if !s.done {
        let why = match transport_error {
            Some(e) => format!("stream broken after {} chunks: {e}", s.chunks),
            None if parser_pending => {
                format!("stream truncated mid-event after {} chunks", s.chunks)
            }
            None => format!("stream ended after {} chunks without [DONE]", s.chunks),
        };
        (Outcome::Lost, why)
    } else if let Some(e) = &s.error {
        (Outcome::Failed, format!("error chunk: {e}"))
    } else if s.finish_reason.is_none() {
        (
            Outcome::Failed,
            "[DONE] without a finish_reason chunk".into(),
        )
    } else {
        (
            Outcome::Completed,
            format!("finish_reason {}", s.finish_reason.as_deref().unwrap_or("")),
        )
    };
    Classified {
        outcome,
        tokens,
        detail,
    }
}

/// A non-streamed 200 answer.
pub fn classify_json(body: Result<&[u8], &str>) -> Classified {
    let body = match body {
        Err(e) => {
            return Classified {
                outcome: Outcome::Lost,
                tokens: 0,
                detail: format!("body broken: {e}"),
            }
        }
        Ok(b) => b,
    };
    let v: Json = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Classified {
                outcome: Outcome::Failed,
                tokens: 0,
                detail: format!("body is not JSON: {e}"),
            }
        }
    };
    match v["choices"][0]["text"].as_str() {
        Some(_) => Classified {
            outcome: Outcome::Completed,
            tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            detail: format!(
                "finish_reason {}",
                v["choices"][0]["finish_reason"].as_str().unwrap_or("?")
            ),
        },
        None => Classified {
            outcome: Outcome::Failed,
            tokens: 0,
            detail: "no choices[0].text".into(),
        },
    }
}

/// A rejection (503/429) and whether it was well formed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejection {
    pub retry_after: bool,
    /// The body is an OpenAI error object with a message.
    pub error_body: bool,
    /// `error.code` (or `error.type`) as the server named the reason.
    pub code: Option<String>,
    /// The server said it is not ready (loading, draining, not ready) rather than busy.
    pub unready: bool,
}

/// Words with which a 503 says the server cannot take traffic at all (as opposed to a full
/// queue or a rate limit).
const UNREADY_WORDS: [&str; 8] = [
    "loading",
    "draining",
    "not_ready",
    "not ready",
    "shutting",
    "starting",
    "scheduler_dead",
    "load_failed",
];

pub fn classify_rejection(status: u16, retry_after: Option<&str>, body: &[u8]) -> Rejection {
    let v: Option<Json> = serde_json::from_slice(body).ok();
    let err = v.as_ref().and_then(|v| v.get("error"));
    let error_body = err.is_some_and(|e| e["message"].as_str().is_some());
    let code = err.and_then(|e| {
        e["code"]
            .as_str()
            .or_else(|| e["type"].as_str())
            .map(str::to_string)
    });
    let text = err
        .map(|e| {
            format!(
                "{} {} {}",
                e["code"].as_str().unwrap_or(""),
                e["type"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
            .to_lowercase()
        })
        .unwrap_or_default();
    Rejection {
        retry_after: retry_after.is_some_and(|v| !v.trim().is_empty()),
        error_body,
        code,
        unready: status == 503 && UNREADY_WORDS.iter().any(|w| text.contains(w)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = r#"{"id":"c1","object":"text_completion","choices":[{"index":0,"text":" there","finish_reason":null}]}"#;
    const LAST: &str = r#"{"id":"c1","object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;

    fn full_stream() -> String {
        format!("data: {CHUNK}\n\ndata: {CHUNK}\r\n\r\ndata: {CHUNK}\n\ndata: {LAST}\n\ndata: [DONE]\n\n")
    }

    fn run(bytes: &[u8], split: usize, err: Option<&str>) -> Classified {
        let mut p = SseParser::default();
        let mut s = StreamState::default();
        for piece in bytes.chunks(split.max(1)) {
            for e in p.push(piece) {
                s.on_event(&e);
            }
        }
        classify_stream(&s, p.pending(), err)
    }

    #[test]
    fn a_whole_stream_completes_however_it_is_split() {
        let b = full_stream();
        for split in [1, 2, 3, 7, 64, 10_000] {
            let c = run(b.as_bytes(), split, None);
            assert_eq!(c.outcome, Outcome::Completed, "split {split}: {c:?}");
            assert_eq!(c.tokens, 3);
        }
    }

    #[test]
    fn a_truncated_stream_is_lost() {
        let b = full_stream();
        let done = b.find("data: [DONE]").unwrap();
        // Every cut before the end of `[DONE]`'s event is a lost request.
        for cut in [0, 10, b.len() / 2, done, done + 8, b.len() - 2] {
            let c = run(&b.as_bytes()[..cut], 5, None);
            assert_eq!(c.outcome, Outcome::Lost, "cut at {cut}: {c:?}");
        }
        let c = run(&b.as_bytes()[..done], 5, Some("connection reset"));
        assert_eq!(c.outcome, Outcome::Lost);
        assert!(c.detail.contains("connection reset"));
        // Cut right after the blank line that ends [DONE]: complete.
        assert_eq!(run(b.as_bytes(), 5, None).outcome, Outcome::Completed);
    }

    #[test]
    fn malformed_streams_fail() {
        let no_finish = format!("data: {CHUNK}\n\ndata: [DONE]\n\n");
        assert_eq!(run(no_finish.as_bytes(), 4, None).outcome, Outcome::Failed);
        let err = format!(
            "data: {CHUNK}\n\ndata: {{\"error\":{{\"message\":\"boom\"}}}}\n\ndata: {LAST}\n\ndata: [DONE]\n\n"
        );
        let c = run(err.as_bytes(), 4, None);
        assert_eq!(c.outcome, Outcome::Failed);
        assert!(c.detail.contains("boom"));
        let junk = format!("data: not json\n\ndata: {LAST}\n\ndata: [DONE]\n\n");
        assert_eq!(run(junk.as_bytes(), 4, None).outcome, Outcome::Failed);
    }

    #[test]
    fn sse_fields() {
        let mut p = SseParser::default();
        let ev = p.push(b": comment\nevent: x\ndata: a\ndata:b\ndata\nid: 3\n\ndata: [DONE]\n\n");
        assert_eq!(ev, vec!["a\nb\n".to_string(), "[DONE]".to_string()]);
        assert!(!p.pending());
        p.push(b"data: x");
        assert!(p.pending());
    }

    #[test]
    fn json_answers() {
        let ok = br#"{"choices":[{"text":"hi","finish_reason":"stop"}],"usage":{"completion_tokens":4}}"#;
        assert_eq!(
            classify_json(Ok(ok)),
            Classified {
                outcome: Outcome::Completed,
                tokens: 4,
                detail: "finish_reason stop".into()
            }
        );
        assert_eq!(
            classify_json(Ok(b"{\"choices\":[]}")).outcome,
            Outcome::Failed
        );
        assert_eq!(classify_json(Err("reset")).outcome, Outcome::Lost);
    }

    #[test]
    fn rejections() {
        let busy =
            br#"{"error":{"message":"queue full","type":"server_error","code":"queue_full"}}"#;
        let r = classify_rejection(503, Some("1"), busy);
        assert!(r.retry_after && r.error_body && !r.unready);
        assert_eq!(r.code.as_deref(), Some("queue_full"));
        let draining =
            br#"{"error":{"message":"server is draining","type":"unavailable","code":"draining"}}"#;
        assert!(classify_rejection(503, Some("5"), draining).unready);
        let loading = br#"{"error":{"message":"model loading","type":"x","code":"loading"}}"#;
        assert!(classify_rejection(503, None, loading).unready);
        assert!(!classify_rejection(503, None, loading).retry_after);
        // A 429 is never "unready"; a body that is not an error object is flagged.
        assert!(!classify_rejection(429, Some("1"), draining).unready);
        assert!(!classify_rejection(503, Some("1"), b"busy").error_body);
        assert!(!classify_rejection(503, Some(" "), busy).retry_after);
    }
}
