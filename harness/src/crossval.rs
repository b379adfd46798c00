//! Cross-validation of the engine against the reference (BitNet.cpp via `bitnet-crossval`).
//!
//! For each prompt: our tokenizer and the reference's must agree; the sequence is the prompt
//! plus our greedy continuation up to `tokens`; both engines evaluate it teacher-forced (one
//! token at a time, or as one batch) and every position's logits are compared. Because both
//! engines are deterministic, greedy generation agrees up to the first position where the
//! reference's top-1 differs from our choice; that divergence is accepted only as a near-tie
//! (the reference's margin between its choice and ours below the noise floor).

use crate::metrics::{compare, PositionMetrics};
use bitnet::cli::nll;
use bitnet::generate::{generate, GenerateOptions};
use bitnet::model::Model;
use bitnet::sample::SamplerParams;
use bitnet::tokenizer::Tokenizer;
use bitnet_crossval::RefModel;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Seq,
    Batch,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Total sequence length (prompt + continuation) per prompt.
    pub tokens: usize,
    pub prompts: Vec<String>,
    /// Reference top-1 margins below this count as near-ties.
    pub near_tie: f64,
}

pub const DEFAULT_PROMPTS: &[&str] = &[
    "Once upon a time",
    "The little dog ran to the park and",
    "Lily and Ben were best friends. One day,",
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Divergence {
    /// Index in the generated continuation (0 = first generated token).
    pub generated_index: usize,
    pub position: usize,
    pub ours: u32,
    pub reference: u32,
    /// Reference logit of its choice minus its logit of ours.
    pub ref_margin: f64,
    pub near_tie: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub positions: usize,
    pub cosine_min: f64,
    pub cosine_mean: f64,
    pub max_abs_diff: f64,
    pub mse_mean: f64,
    pub kl_mean: f64,
    pub kl_max: f64,
    pub top1_agreement: f64,
    pub top5_overlap_mean: f64,
    /// First teacher-forced position whose top-1 differs, if any.
    pub first_divergence: Option<usize>,
    pub nll_ref: f64,
    pub nll_ours: f64,
    pub nll_delta: f64,
    /// Greedy generation identical, or diverging only at a near-tie.
    pub greedy_ok: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PromptReport {
    pub prompt: String,
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub tokenizer_match: bool,
    pub reference_tokens: Vec<u32>,
    pub generated: usize,
    pub greedy_divergence: Option<Divergence>,
    pub summary: Summary,
    /// Batch mode only: the reference's batch logits against its own one-token-at-a-time
    /// logits — the noise floor any engine's batch path is judged against.
    pub reference_self: Option<Summary>,
    pub positions: Vec<PositionMetrics>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub path: String,
    pub sha256: String,
    pub arch: String,
    pub vocab: usize,
    pub layers: usize,
    pub hidden: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema_version: String,
    pub model: ModelInfo,
    pub mode: Mode,
    pub threads: usize,
    pub near_tie: f64,
    pub prompts: Vec<PromptReport>,
    pub aggregate: Summary,
    pub reference_self: Option<Summary>,
}

fn summarize(ms: &[PositionMetrics], nll_ref: f64, nll_ours: f64, greedy_ok: bool) -> Summary {
    let n = ms.len().max(1) as f64;
    Summary {
        positions: ms.len(),
        cosine_min: ms.iter().map(|m| m.cosine).fold(f64::INFINITY, f64::min),
        cosine_mean: ms.iter().map(|m| m.cosine).sum::<f64>() / n,
        max_abs_diff: ms.iter().map(|m| m.max_abs_diff).fold(0.0, f64::max),
        mse_mean: ms.iter().map(|m| m.mse).sum::<f64>() / n,
        kl_mean: ms.iter().map(|m| m.kl).sum::<f64>() / n,
        kl_max: ms.iter().map(|m| m.kl).fold(0.0, f64::max),
        top1_agreement: ms.iter().filter(|m| m.top1_match).count() as f64 / n,
        top5_overlap_mean: ms.iter().map(|m| m.top5_overlap).sum::<f64>() / n,
        first_divergence: ms.iter().find(|m| !m.top1_match).map(|m| m.pos),
        nll_ref,
        nll_ours,
        nll_delta: nll_ours - nll_ref,
        greedy_ok,
    }
}

/// Teacher-forced logits from our engine (the same path as `bitnet logits`).
fn our_logits(model: &Model, tokens: &[u32], mode: Mode) -> Result<Vec<f32>, String> {
    let mode = match mode {
        Mode::Seq => bitnet::cli::Mode::Seq,
        Mode::Batch => bitnet::cli::Mode::Batch,
    };
    bitnet::cli::teacher_forced_logits(model, tokens, mode).map_err(|e| e.to_string())
}

pub fn run(
    model: &Model,
    tok: &Tokenizer,
    reference: &mut RefModel,
    info: ModelInfo,
    opts: &Options,
) -> Result<Report, String> {
    let v = model.config.vocab_size;
    if reference.n_vocab() != v {
        return Err(format!(
            "vocabulary sizes differ: reference {} ours {v}",
            reference.n_vocab()
        ));
    }
    let mut prompts = Vec::new();
    let mut all_metrics = Vec::new();
    let mut self_metrics = Vec::new();
    let (mut sum_ref, mut sum_ours, mut count, mut all_greedy_ok) = (0f64, 0f64, 0usize, true);
    for prompt in &opts.prompts {
        let ids = tok.encode(prompt, true, false);
        let ref_ids = reference
            .tokenize(prompt, true, false)
            .map_err(|e| e.to_string())?;
        let gen_n = opts.tokens.saturating_sub(ids.len());
        let gen = generate(
            model,
            tok,
            &ids,
            &GenerateOptions {
                max_tokens: gen_n,
                sampler: SamplerParams::greedy(),
                stop: vec![],
                ignore_eos: true,
            },
            &mut |_| true,
        )
        .map_err(|e| e.to_string())?;
        let mut seq = ids.clone();
        seq.extend(&gen.tokens);
        let ours = our_logits(model, &seq, opts.mode)?;
        let theirs = reference
            .logits(&seq, opts.mode == Mode::Batch)
            .map_err(|e| e.to_string())?;
        let metrics = compare_all(&theirs, &ours, v);
        let reference_self = if opts.mode == Mode::Batch {
            let one_by_one = reference.logits(&seq, false).map_err(|e| e.to_string())?;
            let m = compare_all(&one_by_one, &theirs, v);
            self_metrics.extend(m.iter().cloned());
            Some(summarize(&m, f64::NAN, f64::NAN, true))
        } else {
            None
        };
        let (mut nr, mut no) = (0f64, 0f64);
        for p in 0..seq.len() - 1 {
            nr += nll(&theirs[p * v..(p + 1) * v], seq[p + 1]);
            no += nll(&ours[p * v..(p + 1) * v], seq[p + 1]);
        }
        let npred = (seq.len() - 1).max(1) as f64;
        sum_ref += nr;
        sum_ours += no;
        count += seq.len() - 1;
        // Greedy: our token at p + 1 was our argmax at p; where the reference's differs first,
        // its generation would have diverged.
        let divergence = (ids.len() - 1..seq.len() - 1)
            .find(|&p| metrics[p].top1_ref != seq[p + 1])
            .map(|p| {
                let row = &theirs[p * v..(p + 1) * v];
                let margin = (row[metrics[p].top1_ref as usize] - row[seq[p + 1] as usize]) as f64;
                Divergence {
                    generated_index: p + 1 - ids.len(),
                    position: p,
                    ours: seq[p + 1],
                    reference: metrics[p].top1_ref,
                    ref_margin: margin,
                    near_tie: margin < opts.near_tie,
                }
            });
        let greedy_ok = divergence.as_ref().is_none_or(|d| d.near_tie);
        all_greedy_ok &= greedy_ok;
        let summary = summarize(&metrics, nr / npred, no / npred, greedy_ok);
        all_metrics.extend(metrics.iter().cloned());
        prompts.push(PromptReport {
            prompt: prompt.clone(),
            prompt_tokens: ids.len(),
            tokenizer_match: ids == ref_ids,
            reference_tokens: ref_ids,
            tokens: seq,
            generated: gen.tokens.len(),
            greedy_divergence: divergence,
            summary,
            reference_self,
            positions: metrics,
        });
    }
    let c = count.max(1) as f64;
    let mut aggregate = summarize(&all_metrics, sum_ref / c, sum_ours / c, all_greedy_ok);
    aggregate.first_divergence = prompts.iter().find_map(|p| p.summary.first_divergence);
    Ok(Report {
        schema_version: "1".into(),
        model: info,
        mode: opts.mode,
        threads: model.threads,
        near_tie: opts.near_tie,
        prompts,
        aggregate,
        reference_self: (opts.mode == Mode::Batch)
            .then(|| summarize(&self_metrics, f64::NAN, f64::NAN, true)),
    })
}

fn compare_all(reference: &[f32], ours: &[f32], v: usize) -> Vec<PositionMetrics> {
    (0..reference.len() / v)
        .map(|p| compare(p, &reference[p * v..(p + 1) * v], &ours[p * v..(p + 1) * v]))
        .collect()
}

/// A fixed-width table of the per-prompt summaries and the aggregate.
pub fn table(r: &Report) -> String {
    let mut s = format!(
        "crossval {} ({:?}, {} threads)\n{:<40} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8}\n",
        r.model.path,
        r.mode,
        r.threads,
        "prompt",
        "pos",
        "cos min",
        "max |d|",
        "KL mean",
        "top-1",
        "top-5",
        "dNLL",
        "greedy"
    );
    let row = |name: &str, m: &Summary| {
        format!(
            "{:<40} {:>5} {:>9.6} {:>9.4} {:>9.2e} {:>8.1}% {:>7.3} {:>+9.5} {:>8}\n",
            name.chars().take(40).collect::<String>(),
            m.positions,
            m.cosine_min,
            m.max_abs_diff,
            m.kl_mean,
            m.top1_agreement * 100.0,
            m.top5_overlap_mean,
            m.nll_delta,
            if m.greedy_ok { "ok" } else { "DIVERGED" }
        )
    };
    for p in &r.prompts {
        s += &row(&p.prompt, &p.summary);
        if !p.tokenizer_match {
            s += "  tokenizer mismatch with the reference\n";
        }
        if let Some(d) = &p.greedy_divergence {
            s += &format!(
                "  greedy diverges at generated token {} (ours {} vs reference {}, reference margin {:.4}{})\n",
                d.generated_index,
                d.ours,
                d.reference,
                d.ref_margin,
                if d.near_tie { ", near-tie" } else { "" }
            );
        }
    }
    s += &row("ALL", &r.aggregate);
    if let Some(n) = &r.reference_self {
        s += &format!(
            "reference batch vs its own one-token path: cos min {:.6}, max |d| {:.4}, top-1 {:.1}%\n",
            n.cosine_min,
            n.max_abs_diff,
            n.top1_agreement * 100.0
        );
    }
    s
}
