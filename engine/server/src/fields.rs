//! Which request fields the completion routes honour. Every field is either honoured or
//! refused with a 400 naming it: a request is never answered as if part of it had not been
//! asked.

use super::error::ApiError;
use serde_json::Value;

/// Fields both completion routes honour (OpenAI's, and llama.cpp's sampling extensions).
/// `user` is an end-user id for the caller's own records; it never changes an answer.
const SAMPLING_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "ignore_eos",
    "user",
];

/// OpenAI fields this server does not implement: a request that asks for one (any value but
/// "nothing") is refused with a 400 naming it, never answered as if it had not been asked.
const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    (
        "response_format",
        "structured output (json_object, json_schema) is not implemented yet",
    ),
    ("tools", "tool calls are not implemented yet"),
    ("tool_choice", "tool calls are not implemented yet"),
    ("parallel_tool_calls", "tool calls are not implemented yet"),
    ("functions", "function calls are not implemented"),
    ("function_call", "function calls are not implemented"),
    ("logit_bias", "logit_bias is not implemented"),
    ("suffix", "suffix (insertion) is not supported"),
    ("best_of", "best_of is not supported (n = 1 only)"),
    (
        "grammar",
        "grammar-constrained output is not implemented yet",
    ),
    (
        "json_schema",
        "schema-constrained output is not implemented yet",
    ),
    ("audio", "audio output is not supported"),
    ("modalities", "only text output is supported"),
    ("prediction", "predicted outputs are not supported"),
    (
        "reasoning_effort",
        "this model has no reasoning-effort setting",
    ),
    ("web_search_options", "web search is not supported"),
    ("store", "stored completions are not supported"),
    ("metadata", "stored completions are not supported"),
    ("service_tier", "service tiers are not supported"),
];

/// Whether `v` asks for nothing: absent-equivalent values a client may send by default.
fn asks_nothing(name: &str, v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) if o.is_empty() => true,
        Value::String(s) if name == "tool_choice" => s == "none",
        Value::Object(o) if name == "response_format" => {
            o.len() == 1 && o.get("type").and_then(Value::as_str) == Some("text")
        }
        _ => false,
    }
}

/// Every field of a completion request is one this server honours (the route's `own`
/// fields and the sampling ones), or one that asks for nothing; an unsupported or unknown
/// field is a 400 naming it. `chat`: the messages' fields are checked too.
pub fn vet(own: &[&str], chat: bool, v: &Value) -> Result<(), ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    for (k, val) in obj {
        if own.contains(&k.as_str()) || SAMPLING_FIELDS.contains(&k.as_str()) {
            continue;
        }
        match UNSUPPORTED_FIELDS.iter().find(|(f, _)| f == k) {
            Some(_) if asks_nothing(k, val) => {}
            Some((_, why)) => {
                return Err(ApiError::unsupported_parameter(
                    k.clone(),
                    format!("`{k}` is not supported by this server: {why}"),
                ))
            }
            None => {
                return Err(ApiError::unknown_parameter(
                    k.clone(),
                    format!("unrecognized request field `{k}`"),
                ))
            }
        }
    }
    if chat {
        if let Some(msgs) = obj.get("messages").and_then(Value::as_array) {
            for (i, m) in msgs.iter().enumerate() {
                let Some(m) = m.as_object() else { continue };
                for (k, val) in m {
                    let ok = matches!(k.as_str(), "role" | "content")
                        || (matches!(
                            k.as_str(),
                            "name" | "tool_calls" | "tool_call_id" | "refusal"
                        ) && asks_nothing(k, val));
                    if !ok {
                        let what = match k.as_str() {
                            "name" => "participant names are not passed to the chat template",
                            "tool_calls" | "tool_call_id" => "tool calls are not implemented yet",
                            _ => "unrecognized message field",
                        };
                        return Err(ApiError::unsupported_parameter(
                            format!("messages[{i}].{k}"),
                            format!("`messages[{i}].{k}` is not supported: {what}"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
