//! Request bodies: reading JSON within `--max-body`, vetting the completion routes' fields
//! ([`super::fields`]), the request types, and turning their sampling fields into validated
//! generation options.

use super::chat::Message;
use super::error::ApiError;
use super::App;
use axum::body::Body;
use bitnet::generate::{GenerateOptions, MAX_TOP_LOGPROBS};
use bitnet::sample::SamplerParams;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// The two completion routes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    Completion,
    Chat,
}

impl Route {
    /// The request fields this route has besides the sampling ones, and whether it has chat
    /// messages (whose fields are vetted too).
    fn own_fields(self) -> (&'static [&'static str], bool) {
        match self {
            Route::Completion => (&["prompt", "echo", "logprobs"], false),
            Route::Chat => (&["messages", "logprobs", "top_logprobs"], true),
        }
    }
}

/// Reads and parses a JSON body of at most `--max-body` bytes; for a completion `route`,
/// every field is first checked to be one this server honours ([`super::fields::vet`]).
pub async fn read_json<T: DeserializeOwned>(
    app: &App,
    body: Body,
    route: Option<Route>,
) -> Result<T, ApiError> {
    let read = axum::body::to_bytes(body, app.opts.max_body);
    let bytes = tokio::time::timeout(Duration::from_secs(app.opts.body_timeout), read)
        .await
        .map_err(|_| ApiError::body_timeout(app.opts.body_timeout))?
        .map_err(|_| ApiError::body_too_large(app.opts.max_body))?;
    parse_body(&bytes, route)
}

/// Parses a body already read: JSON, then (for a completion `route`) every field vetted, then
/// the request type. What the server does with every body, in one place (and fuzzed).
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8], route: Option<Route>) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if let Some(route) = route {
        let (own, chat) = route.own_fields();
        super::fields::vet(own, chat, &v)?;
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

/// The body of a completion route.
pub trait CompletionBody: DeserializeOwned {
    const ROUTE: Route;
    /// The `model` field (absent or empty: whatever this server serves).
    fn model(&self) -> Option<&str>;
}

/// Reads a completion route's body ([`read_json`] with its fields vetted) and checks that it
/// asks for the model this server has.
pub async fn read_completion<T: CompletionBody>(app: &App, body: Body) -> Result<T, ApiError> {
    let req: T = read_json(app, body, Some(T::ROUTE)).await?;
    match req.model() {
        Some(m) if !m.is_empty() && m != app.model_id => {
            Err(ApiError::model_not_found(m, &app.model_id))
        }
        _ => Ok(req),
    }
}

/// The completions API's `prompt`: text or token ids, one or a list of them.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// One prompt: text (tokenized by the server) or token ids (used as they are).
pub enum Prompt<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
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
    prompt: PromptField,
    #[serde(default)]
    pub echo: bool,
    /// Alternatives per token (the completions API's form: a number; null or false for none).
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
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

impl CompletionBody for CompletionRequest {
    const ROUTE: Route = Route::Completion;
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

impl CompletionBody for ChatRequest {
    const ROUTE: Route = Route::Chat;
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

impl CompletionRequest {
    /// The prompts: one text, one list of token ids, or a list of either (each answered as a
    /// choice of its own, `n` = 1 per prompt); at most [`MAX_PROMPTS`].
    pub fn prompts(&self) -> Result<Vec<Prompt<'_>>, ApiError> {
        let v: Vec<Prompt<'_>> = match &self.prompt {
            PromptField::Text(p) => vec![Prompt::Text(p)],
            PromptField::Tokens(t) => vec![Prompt::Tokens(t)],
            PromptField::Texts(v) => v.iter().map(|p| Prompt::Text(p)).collect(),
            PromptField::TokenLists(v) => v.iter().map(|t| Prompt::Tokens(t)).collect(),
        };
        match v.len() {
            0 => Err(ApiError::bad_request("prompt must not be an empty list")),
            n if n > MAX_PROMPTS => Err(ApiError::bad_request(format!(
                "at most {MAX_PROMPTS} prompts in one request ({n} given)"
            ))),
            _ => Ok(v),
        }
    }
}

/// Prompts one completions request may carry.
pub const MAX_PROMPTS: usize = 16;

impl CompletionRequest {
    /// How many alternatives per token to report, if log-probabilities were asked for.
    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        let n = match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= MAX_TOP_LOGPROBS as u64)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "logprobs must be a number from 0 to {MAX_TOP_LOGPROBS}, not {v}"
                    ))
                })?,
        };
        if self.echo {
            return Err(ApiError::unsupported_parameter(
                "logprobs",
                "`logprobs` with `echo` (log-probabilities of the prompt) is not supported",
            ));
        }
        Ok(Some(n as usize))
    }
}

impl ChatRequest {
    /// How many alternatives per token to report, if log-probabilities were asked for.
    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(n)) if n > MAX_TOP_LOGPROBS => Err(ApiError::bad_request(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}"
            ))),
            (false, Some(n)) if n > 0 => {
                Err(ApiError::bad_request("top_logprobs needs logprobs: true"))
            }
            (false, _) => Ok(None),
            (true, n) => Ok(Some(n.unwrap_or(0))),
        }
    }

    /// The conversation for the chat template: at least one message, text content only.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("messages must not be empty"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(s)) => s.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
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
                role: m.role.clone(),
                content,
            });
        }
        Ok(messages)
    }
}

impl Sampling {
    /// None for one whole answer; for a stream, whether it ends with a usage chunk.
    pub fn stream(&self) -> Option<bool> {
        self.stream.then(|| {
            self.stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage)
        })
    }

    /// Validated generation options; `max_tokens` is clamped to the context left after the
    /// prompt.
    pub fn options(&self, prompt_len: usize, ctx: usize) -> Result<GenerateOptions, ApiError> {
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
