//! The server's error answers: one [`ApiError`] type rendered as an OpenAI-style body
//! (`{"error": {"message", "type", "param", "code"}}`, plus `Retry-After` when the client
//! should come back), built only through named constructors so that every refusal of the
//! same kind has the same status, code and wording wherever it is raised.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// An OpenAI-style error answer. Its fields are private: every error is made by one of the
/// named constructors below.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// OpenAI's `type`, a function of the status.
    kind: &'static str,
    code: &'static str,
    message: String,
    /// The request field the error is about.
    param: Option<String>,
    /// Seconds for the `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            400 | 404 | 408 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            504 => "timeout_error",
            _ => "server_error",
        };
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// At least one second: `Retry-After: 0` would invite an immediate retry storm.
    fn retry(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    fn about(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400 `invalid_request`: the request is malformed or asks for something impossible.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 400 `unsupported_parameter` about the field `param`: a known field this server does
    /// not implement.
    pub fn unsupported_parameter(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_parameter", message).about(param)
    }

    /// 400 `unknown_parameter` about the field `param`: a field no API defines.
    pub fn unknown_parameter(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unknown_parameter", message).about(param)
    }

    /// 400 `context_length_exceeded`: the prompt leaves no room in the context.
    pub fn context_length_exceeded(prompt_tokens: usize, context: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
            format!("the prompt has {prompt_tokens} tokens; the context holds {context}"),
        )
    }

    /// 413 `body_too_large`: the body is over `--max-body` (`limit` bytes).
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body larger than {limit} bytes (--max-body)"),
        )
    }

    /// 404 `model_not_found`: the request names a model other than the one `served`.
    pub fn model_not_found(requested: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model {requested:?} is not served here (this server has {served:?})"),
        )
    }

    /// 404 `not_found`: no route matches.
    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 429 `rate_limit_exceeded`: this client's bucket is empty for `retry_after` seconds.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "too many requests from this client",
        )
        .retry(retry_after)
    }

    /// 503 `queue_full`: `queue_limit` requests already wait for a sequence slot.
    pub fn overloaded(queue_limit: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            format!("{queue_limit} requests are already waiting"),
        )
        .retry(1)
    }

    /// 503 `loading`: the model is not loaded yet.
    pub fn loading() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            "the model is still loading",
        )
        .retry(5)
    }

    /// 503 `shutting_down`: the server is draining and takes no new work.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .retry(5)
    }

    /// 503 `shutting_down`: an accepted request was ended by the drain timeout.
    pub fn ended_by_shutdown() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server shut down before the request finished",
        )
        .retry(5)
    }

    /// 503 `scheduler_dead`: the generation thread has exited, so no request can be served.
    pub fn scheduler_dead() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler_dead",
            "the generation thread has stopped",
        )
    }

    /// 503 `scheduler_dead`: the generation thread went away while answering this request.
    pub fn scheduler_lost() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler_dead",
            "the generation thread stopped",
        )
    }

    /// 408 `body_timeout`: the client did not send its whole body within `--body-timeout`.
    pub fn body_timeout(secs: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {secs} s (--body-timeout)"),
        )
    }

    /// 401 `invalid_api_key`: `--api-key` is set and the request does not carry it as
    /// `Authorization: Bearer KEY`.
    pub fn unauthorized(present: bool) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            if present {
                "incorrect API key (send Authorization: Bearer KEY)"
            } else {
                "this server needs an API key (send Authorization: Bearer KEY)"
            },
        )
    }

    /// 504 `timeout`: the request passed its `--request-timeout` of `secs` seconds.
    pub fn timeout(secs: u64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("the request did not finish within {secs} s (--request-timeout)"),
        )
    }

    /// 500 `generation_failed`: the model failed on an accepted request (an engine bug).
    pub fn generation_failed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation_failed",
            message,
        )
    }

    /// 500 `chat_template_failed`: the model's chat template exceeded its budget (instructions,
    /// output size or time) on these messages.
    pub fn template_failed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "chat_template_failed",
            message,
        )
    }

    /// 503 `chat_templates_busy`: every template render slot stayed taken past the deadline.
    pub fn templates_busy(retry_after: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "chat_templates_busy",
            "every chat-template render slot is busy: retry shortly",
        )
        .retry(retry_after)
    }

    /// 500 `internal_error`: the server itself is misassembled (never the client's fault).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The JSON body (also sent as the last event of a stream that fails).
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_codes_and_retry_after() {
        let e = ApiError::unsupported_parameter("tools", "no tools");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"error": {"message": "no tools", "type": "invalid_request_error", "param": "tools", "code": "unsupported_parameter"}})
        );
        let r = ApiError::overloaded(3).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        // A sub-second wait still asks for one second.
        let r = ApiError::rate_limited(0).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(ApiError::scheduler_dead()
            .into_response()
            .headers()
            .get(header::RETRY_AFTER)
            .is_none());
        assert_eq!(ApiError::timeout(2).kind, "timeout_error");
        assert_eq!(ApiError::generation_failed("x").kind, "server_error");
        assert_eq!(ApiError::rate_limited(2).kind, "rate_limit_error");
    }
}
