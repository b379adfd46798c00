//! Teacher-forced evaluation: the logits of every position of a token sequence, perplexity
//! over fixed windows, and the negative log-likelihood of one target. Used by `bitnet logits`,
//! `bitnet perplexity`, the crossval gates and the tests. [`metrics`] compares two sets of
//! logits (ours against a reference's).

pub mod metrics;

use crate::error::{Error, Result};
use crate::model::State;
use crate::session::Session;

/// How a token sequence is fed to the model.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One token at a time.
    Seq,
    /// All tokens in one batch.
    Batch,
}

impl Mode {
    /// Every mode with its name, for command-line parsers and gate files.
    pub const ALL: [(&'static str, Mode); 2] = [("seq", Mode::Seq), ("batch", Mode::Batch)];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Seq => "seq",
            Mode::Batch => "batch",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Mode::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|&(_, m)| m)
            .ok_or_else(|| format!("unknown mode {s:?}: expected seq or batch"))
    }
}

/// Logits of every position of `tokens`, evaluated one at a time (`Seq`) or as one batch.
pub fn teacher_forced_logits(
    session: &mut Session,
    tokens: &[u32],
    mode: Mode,
) -> Result<Vec<f32>> {
    let model = session.model();
    let mut state = State::new(&model.config);
    match mode {
        Mode::Batch => Ok(session.forward(&mut state, tokens, true)?),
        Mode::Seq => {
            let mut all = Vec::with_capacity(tokens.len() * model.config.vocab_size);
            for &t in tokens {
                all.extend(session.forward(&mut state, &[t], true)?);
            }
            Ok(all)
        }
    }
}

/// Mean NLL of predicting tokens[1..] from their prefixes, in windows of `ctx` tokens that
/// each start fresh (the first token of a window is context only). Returns (mean NLL, count).
pub fn perplexity(session: &mut Session, ids: &[u32], ctx: usize) -> Result<(f64, usize)> {
    let model = session.model();
    if ctx < 2 || ctx > model.config.context_length {
        return Err(Error::Usage(format!(
            "window {ctx} must be in 2..={}",
            model.config.context_length
        )));
    }
    let v = model.config.vocab_size;
    let (mut total, mut count) = (0f64, 0usize);
    for window in ids.chunks(ctx) {
        if window.len() < 2 {
            continue;
        }
        let mut state = State::new(&model.config);
        let logits = session.forward(&mut state, window, true)?;
        for (t, &next) in window.iter().enumerate().skip(1) {
            total += nll(&logits[(t - 1) * v..t * v], next);
            count += 1;
        }
    }
    if count == 0 {
        return Err(Error::Usage(
            "text too short: need at least 2 tokens".into(),
        ));
    }
    Ok((total / count as f64, count))
}

/// -log softmax(logits)[target], in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - logits[target as usize] as f64
}
