//! Text generation: prompt prefill in one batch, then one token at a time with a [`Sampler`],
//! streaming UTF-8 text as it becomes complete and stopping at EOS, a stop string, the token
//! limit or the end of the context.

use crate::model::{ModelError, State};
use crate::sample::{Sampler, SamplerParams};
use crate::session::Session;
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
/// could be the start of a stop string. Invalid bytes become U+FFFD exactly as
/// `String::from_utf8_lossy` of the whole output would render them, so the streamed pieces
/// always concatenate to that text however the bytes are split into tokens.
pub struct TextStream {
    /// Bytes not decoded yet: an incomplete UTF-8 sequence at the end of the output.
    raw: Vec<u8>,
    /// Decoded text not emitted yet (a possible stop-string prefix).
    pending: String,
    stop: Vec<String>,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        TextStream {
            raw: Vec::new(),
            pending: String::new(),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Adds a token's bytes; returns the text that is now final, and the stop string if one
    /// completed (the text then ends right before it).
    pub fn push(&mut self, piece: &[u8]) -> (String, Option<String>) {
        self.raw.extend_from_slice(piece);
        let mut used = 0;
        loop {
            match std::str::from_utf8(&self.raw[used..]) {
                Ok(s) => {
                    self.pending.push_str(s);
                    used = self.raw.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The `valid` bytes from `used` were just checked to be UTF-8.
                    self.pending.push_str(
                        std::str::from_utf8(&self.raw[used..used + valid]).unwrap_or_default(),
                    );
                    used += valid;
                    match e.error_len() {
                        Some(n) => {
                            self.pending.push(char::REPLACEMENT_CHARACTER);
                            used += n;
                        }
                        // Incomplete: wait for the next token's bytes.
                        None => break,
                    }
                }
            }
        }
        self.raw.drain(..used);
        // A stop string may straddle earlier output only by what was held back, so searching
        // the pending text is enough.
        for s in &self.stop {
            if let Some(i) = self.pending.find(s.as_str()) {
                let out = self.pending[..i].to_string();
                self.pending.clear();
                self.raw.clear();
                return (out, Some(s.clone()));
            }
        }
        let pending = &self.pending;
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
        let out: String = self.pending.drain(..self.pending.len() - hold).collect();
        (out, None)
    }

    /// Whatever was held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.pending);
        out.push_str(&String::from_utf8_lossy(&self.raw));
        self.raw.clear();
        out
    }
}

/// A generated token's log-probability and the most likely tokens at its position, from the
/// logits it was sampled from: the log-softmax of the model's raw logits (before temperature,
/// penalties and truncation, which shape the sampling, not the model's distribution).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The `top` most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// Largest `top` that [`token_logprob`] gives (OpenAI's `top_logprobs` allows 20).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The log-probability of `token` under `logits`, and the `top` (at most
/// [`MAX_TOP_LOGPROBS`]) most likely tokens. Sums in f64, in index order: the same logits give
/// the same bits on every machine and thread count.
pub fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |i: usize| (logits[i] as f64 - log_z) as f32;
    let k = top.min(MAX_TOP_LOGPROBS).min(logits.len());
    let mut best: Vec<u32> = Vec::with_capacity(k + 1);
    for (i, &x) in logits.iter().enumerate() {
        if best.len() == k && best.last().is_none_or(|&b| logits[b as usize] >= x) {
            continue;
        }
        let at = best.partition_point(|&b| logits[b as usize] >= x);
        best.insert(at, i as u32);
        best.truncate(k);
    }
    TokenLogprob {
        token,
        logprob: lp(token as usize),
        top: best.into_iter().map(|i| (i, lp(i as usize))).collect(),
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
    /// Alternatives wanted per token when log-probabilities are asked for.
    logprobs: Option<usize>,
    /// The last generated token's log-probability (with [`Decoder::with_logprobs`]).
    pub last_logprob: Option<TokenLogprob>,
}

impl Decoder {
    /// Also compute each generated token's log-probability and `top` alternatives
    /// ([`Decoder::last_logprob`] after each step that generates a token).
    pub fn with_logprobs(mut self, top: usize) -> Self {
        self.logprobs = Some(top);
        self
    }

    pub fn new(prompt: &[u32], opts: &GenerateOptions) -> Self {
        Decoder {
            sampler: Sampler::new(opts.sampler.clone()),
            stream: TextStream::new(opts.stop.clone()),
            history: prompt.to_vec(),
            tokens: Vec::new(),
            max_tokens: opts.max_tokens,
            ignore_eos: opts.ignore_eos,
            logprobs: None,
            last_logprob: None,
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
        self.last_logprob = None;
        let next = self.sampler.sample(logits, &self.history);
        if tok.is_eog(next) && !self.ignore_eos {
            return Ok((String::new(), Next::Done(StopReason::Eos)));
        }
        if let Some(top) = self.logprobs {
            self.last_logprob = Some(token_logprob(logits, next, top));
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
    session: &mut Session,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::EmptyPrompt);
    }
    let model = session.model();
    let ctx = model.config.context_length;
    let mut state = State::new(&model.config);
    // Room for the whole generation up front: the decode steps then allocate nothing.
    state.reserve(ctx.min(prompt.len().saturating_add(opts.max_tokens)));
    let mut dec = Decoder::new(prompt, opts);
    let mut text = String::new();
    let t0 = Instant::now();
    let mut logits = Vec::new();
    session.forward_into(&mut state, prompt, false, &mut logits)?;
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
                session.forward_into(&mut state, &[t], false, &mut logits)?;
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

    #[test]
    fn an_incomplete_sequence_followed_by_a_bad_byte_is_one_replacement() {
        // Once rendered \u{FFFD} while incomplete, then completed by the next token: this
        // once sliced the text inside a character and panicked.
        let mut s = TextStream::new(vec![]);
        let mut out = s.push(b"\xff ok \xe2\x82").0;
        out += &s.push(b"\xac and \xe2").0;
        out += &s.push(b"A").0;
        out += &s.finish();
        assert_eq!(out, "\u{fffd} ok \u{20ac} and \u{fffd}A");
    }

    proptest::proptest! {
        #[test]
        fn pieces_concatenate_to_the_lossy_text(
            pieces in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6), 0..24),
        ) {
            let mut s = TextStream::new(vec![]);
            let mut out = String::new();
            for p in &pieces {
                out += &s.push(p).0;
            }
            out += &s.finish();
            let all: Vec<u8> = pieces.concat();
            proptest::prop_assert_eq!(out, String::from_utf8_lossy(&all).into_owned());
        }

        #[test]
        fn a_stop_string_ends_the_text_exactly_where_it_starts(
            pieces in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(b"abE\xc3\xa9\xffND".to_vec()), 0..5), 0..20),
        ) {
            let mut s = TextStream::new(vec!["END".into()]);
            let mut out = String::new();
            let mut hit = None;
            for p in &pieces {
                let (o, h) = s.push(p);
                out += &o;
                if h.is_some() {
                    hit = h;
                    break;
                }
            }
            let all = String::from_utf8_lossy(&pieces.concat()).into_owned();
            match hit {
                Some(_) => proptest::prop_assert_eq!(Some(out.len()), all.find("END")),
                None => {
                    out += &s.finish();
                    proptest::prop_assert!(!all.contains("END"));
                    proptest::prop_assert_eq!(out, all);
                }
            }
        }
    }
}

#[cfg(test)]
mod logprob_tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_and_top_is_sorted() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5, f32::NEG_INFINITY];
        let lp = token_logprob(&logits, 4, 3);
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        assert!((lp.logprob as f64 - (0.5 - z.ln())).abs() < 1e-6, "{lp:?}");
        // Ties by lower id first; the -inf token has probability 0.
        assert_eq!(
            lp.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 3, 0]
        );
        assert_eq!(token_logprob(&logits, 5, 0).logprob, f32::NEG_INFINITY);
        let all = token_logprob(&logits, 0, MAX_TOP_LOGPROBS);
        let total: f64 = all.top.iter().map(|t| (t.1 as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(all.top.len(), logits.len());
        assert!(token_logprob(&logits, 0, 0).top.is_empty());
    }
}
