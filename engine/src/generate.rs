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

/// What comes after a sampled token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Feed this token to the model and sample again.
    Token(u32),
    /// Generation is over.
    Done(StopReason),
}

/// One sequence's sampling side of generation: the sampler, the token history the penalties
/// look at, the text stream with its stop strings, and the limits. [`generate`] and the
/// server's continuous-batching scheduler both drive it, one set of logits at a time.
pub struct Decoder {
    sampler: Sampler,
    stream: TextStream,
    history: Vec<u32>,
    /// Tokens generated so far.
    pub tokens: Vec<u32>,
    max_tokens: usize,
    ignore_eos: bool,
}

impl Decoder {
    pub fn new(prompt: &[u32], opts: &GenerateOptions) -> Self {
        Decoder {
            sampler: Sampler::new(opts.sampler.clone()),
            stream: TextStream::new(opts.stop.clone()),
            history: prompt.to_vec(),
            tokens: Vec::new(),
            max_tokens: opts.max_tokens,
            ignore_eos: opts.ignore_eos,
        }
    }

    /// Samples the next token from `logits` (the model's output after the last token fed,
    /// whose position is `pos`; `ctx` is the context length). Returns the text that became
    /// final, and what to do next.
    pub fn step(
        &mut self,
        logits: &[f32],
        tok: &Tokenizer,
        pos: usize,
        ctx: usize,
    ) -> Result<(String, Next), ModelError> {
        if self.tokens.len() >= self.max_tokens {
            return Ok((String::new(), Next::Done(StopReason::Length)));
        }
        let next = self.sampler.sample(logits, &self.history);
        if tok.is_eog(next) && !self.ignore_eos {
            return Ok((String::new(), Next::Done(StopReason::Eos)));
        }
        self.tokens.push(next);
        self.history.push(next);
        let bytes = tok
            .token_bytes(next)
            .map_err(|_| ModelError::TokenOutOfRange {
                id: next,
                vocab: tok.vocab_size(),
            })?;
        let (piece, hit) = self.stream.push(&bytes);
        let next = if let Some(s) = hit {
            Next::Done(StopReason::StopString(s))
        } else if self.tokens.len() == self.max_tokens {
            Next::Done(StopReason::Length)
        } else if pos >= ctx {
            Next::Done(StopReason::ContextFull)
        } else {
            Next::Token(next)
        };
        Ok((piece, next))
    }

    /// The text held back at the end (an incomplete character or a partial stop string);
    /// empty after a stop string, whose text is never shown.
    pub fn finish(&mut self, stop: &StopReason) -> String {
        match stop {
            StopReason::StopString(_) => String::new(),
            _ => self.stream.finish(),
        }
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
    let ctx = model.config.context_length;
    let mut state = State::new(&model.config);
    // Room for the whole generation up front: the decode steps then allocate nothing.
    state.reserve(ctx.min(prompt.len().saturating_add(opts.max_tokens)));
    let mut dec = Decoder::new(prompt, opts);
    let mut text = String::new();
    let t0 = Instant::now();
    let mut logits = Vec::new();
    model.forward_into(&mut state, prompt, false, &mut logits)?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    let mut decode_steps = 0;
    let stop = loop {
        let (piece, next) = dec.step(&logits, tok, state.pos, ctx)?;
        text.push_str(&piece);
        let keep_going = piece.is_empty() || on_text(&piece);
        match next {
            Next::Done(stop) => break stop,
            Next::Token(_) if !keep_going => break StopReason::Cancelled,
            Next::Token(t) => {
                model.forward_into(&mut state, &[t], false, &mut logits)?;
                decode_steps += 1;
            }
        }
    };
    let rest = dec.finish(&stop);
    if !rest.is_empty() {
        on_text(&rest);
        text.push_str(&rest);
    }
    Ok(Generation {
        prompt_tokens: prompt.len(),
        tokens: dec.tokens,
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
