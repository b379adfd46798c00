//! Cross-validation of the engine against references: BitNet.cpp 0.0.5 (linked in-process),
//! the January-2026 BitNet.cpp (the `ref2026` executable), and Hugging Face transformers'
//! float32 logits recorded for a fixture.
//!
//! For each prompt: the sequence is the prompt plus our greedy continuation up to `tokens`;
//! every reference's tokenizer must agree with ours, and every reference evaluates the sequence
//! teacher-forced (one token at a time, or as one batch), each position's logits compared with
//! ours. The first reference is the one the thresholds judge; the others' figures are reported
//! beside it. Because the engines are deterministic, greedy generation agrees up to the first
//! position where a reference's top-1 differs from our choice; that divergence is accepted only
//! as a near-tie (the reference's margin between its choice and ours below `near_tie`), and
//! near-ties are counted: top-1 agreement is also given over the decisive positions alone.

use bitnet::eval::metrics::{compare_all, summarize, PositionMetrics};
pub use bitnet::eval::metrics::{Divergence, Summary};
use bitnet::generate::{generate, GenerateOptions};
use bitnet::model::Model;
use bitnet::sample::SamplerParams;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use bitnet::eval::Mode;

mod reference;
pub use reference::{RefName, Reference};

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

/// Another reference's figures on the same sequences (reported, not judged).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OtherReference {
    pub reference: RefName,
    pub tokenizer_match: bool,
    pub greedy_divergences: Vec<Option<Divergence>>,
    pub aggregate: Summary,
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

impl ModelInfo {
    /// The loaded `model` read from `path`.
    pub fn of(model: &Model, path: &Path) -> Result<Self, String> {
        Ok(ModelInfo {
            path: path.display().to_string(),
            sha256: bitnet::receipt::sha256_file(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
            arch: model.config.arch.clone(),
            vocab: model.config.vocab_size,
            layers: model.config.n_layers,
            hidden: model.config.dim,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema_version: String,
    pub model: ModelInfo,
    pub mode: Mode,
    pub threads: usize,
    pub near_tie: f64,
    /// The reference the aggregate (and the gate) is judged against.
    pub reference: RefName,
    pub prompts: Vec<PromptReport>,
    pub aggregate: Summary,
    pub reference_self: Option<Summary>,
    pub others: Vec<OtherReference>,
}

impl Report {
    /// The gate's measurements: the judged reference's aggregate, `tokenizer_match`, the
    /// reference's own batch noise floor (batch mode), and each other reference's aggregate
    /// under `<name>.` (e.g. `bitnet.cpp-2026.cosine_min`).
    pub fn measurements(&self) -> serde_json::Value {
        let mut m = serde_json::to_value(&self.aggregate).unwrap_or_default();
        m["tokenizer_match"] = self.prompts.iter().all(|p| p.tokenizer_match).into();
        if let Some(n) = &self.reference_self {
            m["reference_self_cosine_min"] = n.cosine_min.into();
            m["reference_self_max_abs_diff"] = n.max_abs_diff.into();
            m["reference_self_top1_agreement"] = n.top1_agreement.into();
        }
        for o in &self.others {
            let mut a = serde_json::to_value(&o.aggregate).unwrap_or_default();
            a["tokenizer_match"] = o.tokenizer_match.into();
            m[o.reference.as_str()] = a;
        }
        m
    }
}

/// Teacher-forced logits from our engine (the same path as `bitnet logits`).
pub(crate) fn our_logits(
    session: &mut Session,
    tokens: &[u32],
    mode: Mode,
) -> Result<Vec<f32>, String> {
    bitnet::eval::teacher_forced_logits(session, tokens, mode).map_err(|e| e.to_string())
}

/// One prompt's sequence and our logits for it.
struct Sequence {
    prompt: String,
    prompt_tokens: Vec<u32>,
    seq: Vec<u32>,
    generated: usize,
    ours: Vec<f32>,
}

/// One reference against our logits on one sequence.
struct Judged {
    reference_tokens: Vec<u32>,
    metrics: Vec<PositionMetrics>,
    nll_ref: f64,
    nll_ours: f64,
    divergence: Option<Divergence>,
    reference_self: Option<Vec<PositionMetrics>>,
}

fn judge(
    reference: &mut Reference,
    s: &Sequence,
    v: usize,
    opts: &Options,
    self_check: bool,
) -> Result<Judged, String> {
    let name = reference.name().as_str();
    let reference_tokens = reference
        .tokenize(&s.prompt)
        .map_err(|e| format!("{name}: {e}"))?;
    let batch = opts.mode == Mode::Batch;
    let theirs = reference
        .logits(&s.seq, batch)
        .map_err(|e| format!("{name}: {e}"))?;
    if theirs.len() != s.ours.len() {
        return Err(format!(
            "{name} gave {} logits for {} tokens x vocabulary {v}",
            theirs.len(),
            s.seq.len()
        ));
    }
    let metrics = compare_all(&theirs, &s.ours, v);
    let reference_self = if batch && self_check {
        let one_by_one = reference.logits(&s.seq, false)?;
        Some(compare_all(&one_by_one, &theirs, v))
    } else {
        None
    };
    let nll_ref = bitnet::eval::metrics::nll_sum(&theirs, &s.seq, v);
    let nll_ours = bitnet::eval::metrics::nll_sum(&s.ours, &s.seq, v);
    // Greedy: our token at p + 1 was our argmax at p; where the reference's differs first,
    // its generation would have diverged.
    let divergence = bitnet::eval::metrics::greedy_divergence(
        &theirs,
        &metrics,
        &s.seq,
        s.prompt_tokens.len(),
        v,
        opts.near_tie,
    );
    Ok(Judged {
        reference_tokens,
        metrics,
        nll_ref,
        nll_ours,
        divergence,
        reference_self,
    })
}

/// One crossval run on a model file: what `bitnet-validate crossval` and the `crossval` gate
/// kind both do.
pub struct Plan<'a> {
    pub model: &'a Path,
    /// The HF checkpoint directory the model was converted from (for `transformers`).
    pub fixture: Option<&'a Path>,
    /// Re-quantize the output projection at load (judged against `engine-as-stored`).
    pub head: Option<bitnet::model::HeadFormat>,
    /// The judged reference first, then the ones reported beside it.
    pub references: Vec<RefName>,
    pub threads: usize,
    pub options: Options,
    /// When the judged reference is transformers, run the fixture's own text and tokens
    /// instead of `options`' prompts and continuation (the gate does; the command line runs
    /// what it is given).
    pub fixture_text: bool,
}

/// Loads the model, opens the references for it (context `tokens`, at least 64, at most the
/// model's) and runs `run`.
pub fn evaluate(plan: Plan) -> Result<Report, String> {
    let mut model = Model::load(plan.model).map_err(|e| e.to_string())?;
    if let Some(h) = plan.head {
        model.quantize_head(h).map_err(|e| e.to_string())?;
    }
    let tok = Tokenizer::from_gguf(&model.file).map_err(|e| e.to_string())?;
    let mut opts = plan.options;
    let ctx_len = opts.tokens.max(64).min(model.config.context_length);
    let mut references = plan
        .references
        .iter()
        .map(|&r| Reference::open(r, plan.model, plan.fixture, ctx_len, plan.threads))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(Reference::Transformers { text, .. }) = references.first() {
        if plan.fixture_text {
            // transformers' logits exist for the fixture's own tokens only: no other prompt, no
            // continuation (every reference then sees exactly those tokens).
            opts.prompts = vec![text.clone()];
            opts.tokens = 0;
        }
    }
    let info = ModelInfo::of(&model, plan.model)?;
    let mut session = Session::new(&model).with_threads(plan.threads);
    run(&mut session, &tok, &mut references, info, &opts)
}

impl Report {
    /// One line per reference: positions, top-1 (decisive, near-ties), cosine min, max |d|,
    /// dNLL, greedy.
    pub fn one_line(&self) -> String {
        let line = |name: &str, a: &Summary| {
            format!(
                "vs {name}: {} positions, top-1 {:.1}% ({:.1}% decisive, {} near-ties), cosine min {:.6}, max |d| {:.4}, dNLL {:+.5}, greedy {}",
                a.positions,
                a.top1_agreement * 100.0,
                a.top1_decisive * 100.0,
                a.near_ties,
                a.cosine_min,
                a.max_abs_diff,
                a.nll_delta,
                if a.greedy_ok { "ok" } else { "diverged" }
            )
        };
        let mut summary = line(self.reference.as_str(), &self.aggregate);
        for o in &self.others {
            summary += "; ";
            summary += &line(o.reference.as_str(), &o.aggregate);
        }
        summary
    }
}

/// Judges the engine against `references[0]`, reporting the others beside it.
pub fn run(
    session: &mut Session,
    tok: &Tokenizer,
    references: &mut [Reference],
    info: ModelInfo,
    opts: &Options,
) -> Result<Report, String> {
    let v = session.model().config.vocab_size;
    let (primary, others) = references
        .split_first_mut()
        .ok_or("crossval needs at least one reference")?;
    let mut seqs = Vec::new();
    for prompt in &opts.prompts {
        let ids = tok.encode(prompt, true, false);
        if ids.is_empty() {
            return Err(format!("prompt {prompt:?} encodes to no tokens"));
        }
        let gen = generate(
            session,
            tok,
            &ids,
            &GenerateOptions {
                max_tokens: opts.tokens.saturating_sub(ids.len()),
                sampler: SamplerParams::greedy(),
                stop: vec![],
                ignore_eos: true,
            },
            &mut |_| true,
        )
        .map_err(|e| e.to_string())?;
        let mut seq = ids.clone();
        seq.extend(&gen.tokens);
        if seq.len() < 2 {
            return Err(format!(
                "prompt {prompt:?}: a sequence needs at least 2 tokens"
            ));
        }
        let ours = our_logits(session, &seq, opts.mode)?;
        seqs.push(Sequence {
            prompt: prompt.clone(),
            prompt_tokens: ids,
            generated: gen.tokens.len(),
            seq,
            ours,
        });
    }

    let mut prompts = Vec::new();
    let mut all = Vec::new();
    let mut self_all = Vec::new();
    let (mut sum_ref, mut sum_ours, mut count, mut all_greedy_ok) = (0f64, 0f64, 0usize, true);
    for s in &seqs {
        let j = judge(primary, s, v, opts, true)?;
        let npred = (s.seq.len() - 1) as f64;
        sum_ref += j.nll_ref;
        sum_ours += j.nll_ours;
        count += s.seq.len() - 1;
        let greedy_ok = j.divergence.as_ref().is_none_or(|d| d.near_tie);
        all_greedy_ok &= greedy_ok;
        let reference_self = j.reference_self.map(|m| {
            self_all.extend(m.iter().cloned());
            summarize(&m, f64::NAN, f64::NAN, true, opts.near_tie)
        });
        all.extend(j.metrics.iter().cloned());
        prompts.push(PromptReport {
            prompt: s.prompt.clone(),
            prompt_tokens: s.prompt_tokens.len(),
            tokenizer_match: s.prompt_tokens == j.reference_tokens,
            reference_tokens: j.reference_tokens,
            tokens: s.seq.clone(),
            generated: s.generated,
            summary: summarize(
                &j.metrics,
                j.nll_ref / npred,
                j.nll_ours / npred,
                greedy_ok,
                opts.near_tie,
            ),
            greedy_divergence: j.divergence,
            reference_self,
            positions: j.metrics,
        });
    }
    let c = count.max(1) as f64;
    let mut aggregate = summarize(
        &all,
        sum_ref / c,
        sum_ours / c,
        all_greedy_ok,
        opts.near_tie,
    );
    aggregate.first_divergence = prompts.iter().find_map(|p| p.summary.first_divergence);

    let mut other_reports = Vec::new();
    for r in others.iter_mut() {
        let (mut all, mut nr, mut no, mut ok, mut tok_ok) = (Vec::new(), 0f64, 0f64, true, true);
        let (mut divergences, mut first) = (Vec::new(), None);
        for s in &seqs {
            let j = judge(r, s, v, opts, false)?;
            tok_ok &= j.reference_tokens == s.prompt_tokens;
            ok &= j.divergence.as_ref().is_none_or(|d| d.near_tie);
            nr += j.nll_ref;
            no += j.nll_ours;
            first = first.or(j.metrics.iter().find(|m| !m.top1_match).map(|m| m.pos));
            all.extend(j.metrics);
            divergences.push(j.divergence);
        }
        let mut aggregate = summarize(&all, nr / c, no / c, ok, opts.near_tie);
        aggregate.first_divergence = first;
        other_reports.push(OtherReference {
            reference: r.name(),
            tokenizer_match: tok_ok,
            greedy_divergences: divergences,
            aggregate,
        });
    }
    Ok(Report {
        schema_version: "2".into(),
        model: info,
        mode: opts.mode,
        threads: session.threads(),
        near_tie: opts.near_tie,
        reference: primary.name(),
        prompts,
        aggregate,
        reference_self: (opts.mode == Mode::Batch)
            .then(|| summarize(&self_all, f64::NAN, f64::NAN, true, opts.near_tie)),
        others: other_reports,
    })
}

/// A fixed-width table of the per-prompt summaries and the aggregate, then one row per other
/// reference.
pub fn table(r: &Report) -> String {
    let mut s = format!(
        "crossval {} ({:?}, {} threads) vs {}\n{:<40} {:>5} {:>9} {:>9} {:>9} {:>8} {:>14} {:>7} {:>9} {:>8}\n",
        r.model.path,
        r.mode,
        r.threads,
        r.reference.as_str(),
        "prompt",
        "pos",
        "cos min",
        "max |d|",
        "KL mean",
        "top-1",
        "decisive/ties",
        "top-5",
        "dNLL",
        "greedy"
    );
    let row = |name: &str, m: &Summary| {
        format!(
            "{:<40} {:>5} {:>9.6} {:>9.4} {:>9.2e} {:>7.1}% {:>8.1}% /{:>4} {:>7.3} {:>+9.5} {:>8}\n",
            name.chars().take(40).collect::<String>(),
            m.positions,
            m.cosine_min,
            m.max_abs_diff,
            m.kl_mean,
            m.top1_agreement * 100.0,
            m.top1_decisive * 100.0,
            m.near_ties,
            m.top5_overlap_mean,
            m.nll_delta,
            if m.greedy_ok { "ok" } else { "DIVERGED" }
        )
    };
    let divergence = |d: &Divergence| {
        format!(
            "  greedy diverges at generated token {} (ours {} vs reference {}, reference margin {:.4}{})\n",
            d.generated_index,
            d.ours,
            d.reference,
            d.ref_margin,
            if d.near_tie { ", near-tie" } else { "" }
        )
    };
    for p in &r.prompts {
        s += &row(&p.prompt, &p.summary);
        if !p.tokenizer_match {
            s += "  tokenizer mismatch with the reference\n";
        }
        if let Some(d) = &p.greedy_divergence {
            s += &divergence(d);
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
    for o in &r.others {
        s += &row(&format!("ALL vs {}", o.reference.as_str()), &o.aggregate);
        if !o.tokenizer_match {
            s += "  tokenizer mismatch with this reference\n";
        }
        for d in o.greedy_divergences.iter().flatten() {
            s += &divergence(d);
        }
    }
    s
}
