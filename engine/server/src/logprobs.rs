//! Token log-probabilities in OpenAI's two shapes: the chat API's `logprobs.content` (one
//! entry per token, with its bytes and `top_logprobs` alternatives) and the completions API's
//! `tokens` / `token_logprobs` / `top_logprobs` / `text_offset` columns. Values come from
//! [`bitnet::generate::token_logprob`]: the log-softmax of the logits each token was sampled
//! from.

use super::request::Route;
use bitnet::generate::TokenLogprob;
use bitnet::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// What OpenAI reports for a token of probability zero (JSON has no -infinity).
const FLOOR: f32 = -9999.0;

fn num(lp: f32) -> Value {
    json!(if lp.is_finite() { lp } else { FLOOR })
}

fn bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    tok.token_bytes(id).unwrap_or_default()
}

/// A token's text as the `tokens` / `token` fields show it (invalid UTF-8 replaced).
pub fn text(tok: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(&bytes(tok, id)).into_owned()
}

/// The `logprobs` object of a choice (or of a streamed chunk) for `items`; `offset` is the
/// completions API's text offset of the first one.
pub fn json(route: Route, tok: &Tokenizer, items: &[TokenLogprob], offset: usize) -> Value {
    match route {
        Route::Chat => {
            let entry = |id: u32, lp: f32| json!({"token": text(tok, id), "logprob": num(lp), "bytes": bytes(tok, id)});
            let content: Vec<Value> = items
                .iter()
                .map(|t| {
                    let mut e = entry(t.token, t.logprob);
                    e["top_logprobs"] =
                        Value::Array(t.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
                    e
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Route::Completion => {
            let mut at = offset;
            let mut offsets = Vec::with_capacity(items.len());
            for t in items {
                offsets.push(at);
                at += text(tok, t.token).len();
            }
            let top: Vec<Value> = items
                .iter()
                .map(|t| {
                    let mut m = Map::new();
                    for &(id, lp) in &t.top {
                        m.entry(text(tok, id)).or_insert(num(lp));
                    }
                    Value::Object(m)
                })
                .collect();
            json!({
                "tokens": items.iter().map(|t| text(tok, t.token)).collect::<Vec<_>>(),
                "token_logprobs": items.iter().map(|t| num(t.logprob)).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": offsets,
            })
        }
    }
}
