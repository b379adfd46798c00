//! Text generation: prompt prefill in one batch, then one token at a time with a [`Sampler`],
//! streaming UTF-8 text as it becomes complete and stopping at EOS, a stop string, the token
//! limit or the end of the context.

use crate::model::{Model, ModelError, State};
use crate::sample::{Sampler, SamplerParams};
use crate::tokenizer::Tokenizer;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    Length,
    Eos,
    StopString(String),
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    /// Generated text (stop string excluded).
    pub text: String,
    pub stop: StopReason,
    /// Single-token forward passes after the prompt.
    pub decode_steps: usize,
    pub prefill: Duration,
    pub decode: Duration,
}

/// Turns token bytes into text pieces: holds back incomplete UTF-8 sequences and any tail that
/// could be the start of a stop string.
pub struct TextStream {
    bytes: Vec<u8>,
    emitted: usize,
    stop: Vec<String>,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        TextStream {
            bytes: Vec::new(),
            emitted: 0,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Adds a token's bytes; returns the text that is now final, and the stop string if one
    /// completed (the text then ends right before it).
    pub fn push(&mut self, piece: &[u8]) -> (String, Option<String>) {
        self.bytes.extend_from_slice(piece);
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Invalid bytes (not just incomplete): let them through as replacement characters.
            Err(_) => self.bytes.len(),
        };
        let text = String::from_utf8_lossy(&self.bytes[..valid]).into_owned();
        let pending = &text[self.emitted.min(text.len())..];
        // A stop string may straddle earlier emitted text only by what we held back, so search
        // the held-back region plus the new text.
        for s in &self.stop {
            if let Some(i) = pending.find(s.as_str()) {
                let out = pending[..i].to_string();
                self.emitted = text.len();
                return (out, Some(s.clone()));
            }
        }
        let hold = self
            .stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|p| pending.ends_with(p))
            .map(|p| p.len())
            .max()
            .unwrap_or(0);
        let out = pending[..pending.len() - hold].to_string();
        self.emitted += out.len();
        (out, None)
    }

    /// Whatever was held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.bytes).into_owned();
        let out = text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = text.len();
        out
    }
}

/// Generates after `prompt` (token ids, BOS included if wanted). `on_text` receives each
/// finished piece of text and returns false to stop.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::EmptyPrompt);
    }
    let mut state = State::new(&model.config);
    let mut sampler = Sampler::new(opts.sampler.clone());
    let mut stream = TextStream::new(opts.stop.clone());
    let mut history = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let t0 = Instant::now();
    let mut logits = model.forward(&mut state, prompt, false)?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    let mut stop = StopReason::Length;
    let mut decode_steps = 0;
    while tokens.len() < opts.max_tokens {
        let next = sampler.sample(&logits, &history);
        if tok.is_eog(next) && !opts.ignore_eos {
            stop = StopReason::Eos;
            break;
        }
        tokens.push(next);
        history.push(next);
        let bytes = tok
            .token_bytes(next)
            .map_err(|_| ModelError::TokenOutOfRange {
                id: next,
                vocab: tok.vocab_size(),
            })?;
        let (piece, hit) = stream.push(&bytes);
        text.push_str(&piece);
        let keep_going = piece.is_empty() || on_text(&piece);
        if let Some(s) = hit {
            stop = StopReason::StopString(s);
            break;
        }
        if !keep_going {
            stop = StopReason::Cancelled;
            break;
        }
        if tokens.len() == opts.max_tokens {
            break;
        }
        if state.pos >= model.config.context_length {
            stop = StopReason::ContextFull;
            break;
        }
        logits = model.forward(&mut state, &[next], false)?;
        decode_steps += 1;
    }
    if !matches!(stop, StopReason::StopString(_)) {
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(&rest);
            text.push_str(&rest);
        }
    }
    Ok(Generation {
        prompt_tokens: prompt.len(),
        tokens,
        text,
        stop,
        decode_steps,
        prefill,
        decode: t1.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::TextStream;

    #[test]
    fn utf8_is_held_until_complete() {
        let mut s = TextStream::new(vec![]);
        let e = "é".as_bytes();
        assert_eq!(s.push(&e[..1]).0, "");
        assert_eq!(s.push(&e[1..]).0, "é");
    }

    #[test]
    fn stop_string_across_tokens() {
        let mut s = TextStream::new(vec!["END".into()]);
        assert_eq!(s.push(b"abc E").0, "abc ");
        assert_eq!(s.push(b"N").0, "");
        let (out, hit) = s.push(b"D tail");
        assert_eq!(out, "");
        assert_eq!(hit.as_deref(), Some("END"));
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_match() {
        let mut s = TextStream::new(vec!["END".into()]);
        assert_eq!(s.push(b"xE").0, "x");
        assert_eq!(s.push(b"Z").0, "EZ");
        assert_eq!(s.finish(), "");
    }
}
