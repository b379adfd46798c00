//! What a gate runs: `Spec`, one variant per gate kind, each carrying that kind's typed
//! `inputs`. In the gates file a gate names its kind and gives an `inputs` table
//! (`kind = "crossval"`, `inputs = { mode = "seq", tokens = 101 }`): `Spec` is tagged by `kind`
//! with the table as its content. Every inputs struct denies unknown keys, so a misspelt input
//! is an error naming it, never a silently used default. Defaults are documented on each field
//! (and so in the generated schema).

use crate::crossval::RefName;
use bitnet::eval::Mode;
use bitnet::model::HeadFormat;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;

/// The kind of a gate: its name in the gates file and in the reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Engine vs reference logits and greedy tokens on a model.
    Crossval,
    /// Our I2_S GEMV/GEMM vs the reference's ggml mul_mat on random matrices.
    Kernel,
    /// Our tokenizer vs the reference's on a text corpus.
    Tokenizer,
    /// A real run's receipt passes schema, audit, digest and replay.
    Receipt,
    /// Damaged model files give typed errors, never panics.
    BadInput,
    /// Outputs equal a reviewed snapshot in golden/.
    Golden,
    /// Speed as ratios measured in one run: ours/reference t/s, AVX2/scalar kernels; peak RSS
    /// within its bound.
    Perf,
    /// A probe scenario (ci/probes/*.toml) against a launched `bitnet serve`: kubelet
    /// simulator, load, faults; the verdict is the measurements.
    Probe,
    /// `bitnet-validate lint` on a model: error and warning counts, and which rules fired.
    Lint,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Crossval,
        Kind::Kernel,
        Kind::Tokenizer,
        Kind::Receipt,
        Kind::BadInput,
        Kind::Golden,
        Kind::Perf,
        Kind::Probe,
        Kind::Lint,
    ];

    /// The name in the gates file (`bad-input`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Crossval => "crossval",
            Kind::Kernel => "kernel",
            Kind::Tokenizer => "tokenizer",
            Kind::Receipt => "receipt",
            Kind::BadInput => "bad-input",
            Kind::Golden => "golden",
            Kind::Perf => "perf",
            Kind::Probe => "probe",
            Kind::Lint => "lint",
        }
    }
}

/// A gate's kind with its inputs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", content = "inputs", rename_all = "kebab-case")]
pub enum Spec {
    Crossval(CrossvalInputs),
    Kernel(KernelInputs),
    Tokenizer(TokenizerInputs),
    Receipt(ReceiptInputs),
    BadInput(BadInputInputs),
    Golden(GoldenInputs),
    Perf(PerfInputs),
    Probe(ProbeInputs),
    Lint(LintInputs),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Crossval(_) => Kind::Crossval,
            Spec::Kernel(_) => Kind::Kernel,
            Spec::Tokenizer(_) => Kind::Tokenizer,
            Spec::Receipt(_) => Kind::Receipt,
            Spec::BadInput(_) => Kind::BadInput,
            Spec::Golden(_) => Kind::Golden,
            Spec::Perf(_) => Kind::Perf,
            Spec::Probe(_) => Kind::Probe,
            Spec::Lint(_) => Kind::Lint,
        }
    }

    /// Whether the gate's top-level `model` must be given (`true`) or must be absent (`false`).
    /// A model given to a kind that does not read one would be silently ignored.
    pub fn needs_model(&self) -> bool {
        match self {
            Spec::Crossval(_) | Spec::Receipt(_) | Spec::BadInput(_) | Spec::Lint(_) => true,
            Spec::Kernel(_) | Spec::Golden(_) | Spec::Probe(_) => false,
            // The vocabulary is the model's, or the `vocab` input's.
            Spec::Tokenizer(t) => t.vocab.is_none(),
            Spec::Perf(PerfInputs::Model(_)) => true,
            Spec::Perf(PerfInputs::Kernel(_)) => false,
        }
    }

    /// Constraints between inputs that their types do not express; the message says what to
    /// change.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Spec::Crossval(c) => c.check(),
            Spec::Perf(PerfInputs::Model(m)) => positive_list("threads", &m.threads),
            Spec::Perf(PerfInputs::Kernel(k)) => {
                if k.rows == 0 || k.cols == 0 || !k.cols.is_multiple_of(128) {
                    return Err(format!(
                        "rows {} x cols {}: cols must be a positive multiple of 128",
                        k.rows, k.cols
                    ));
                }
                positive_list("tokens", &k.tokens)
            }
            Spec::Probe(p) => match (p.rounds, &p.baseline) {
                (None, _) => Ok(()),
                (Some(n), Some(_)) if (1..=9).contains(&n) => Ok(()),
                _ => Err("inputs.rounds must be 1..=9, with inputs.baseline".into()),
            },
            _ => Ok(()),
        }
    }
}

fn positive_list(key: &str, v: &[usize]) -> Result<(), String> {
    if v.is_empty() || v.contains(&0) {
        return Err(format!(
            "input {key} must be a non-empty array of positive integers"
        ));
    }
    Ok(())
}

/// The sequence mode names of the engine (`bitnet::eval::Mode::ALL`).
fn mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = Mode::ALL.iter().map(|(n, _)| *n).collect();
    schemars::json_schema!({ "enum": names })
}

fn default_mode() -> Mode {
    Mode::Seq
}

/// The head formats of the engine (`bitnet::model::HeadFormat::ALL`).
fn head_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = HeadFormat::ALL.iter().map(|h| head_name(*h)).collect();
    schemars::json_schema!({ "enum": names })
}

/// A head format's name in gate files and on the command line (`--head q8_0`), which
/// `HeadFormat::from_str` reads back (tested).
pub fn head_name(h: HeadFormat) -> &'static str {
    match h {
        HeadFormat::Q8_0 => "q8_0",
    }
}

fn de_head<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HeadFormat>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

fn ser_head<S: Serializer>(h: &Option<HeadFormat>, s: S) -> Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_str(head_name(*h)),
        None => s.serialize_none(),
    }
}

/// `crossval`: the engine against references on the gate's model.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrossvalInputs {
    /// `seq` (one token at a time, the default) or `batch` (the whole sequence at once).
    #[serde(default = "default_mode")]
    #[schemars(schema_with = "mode_schema")]
    pub mode: Mode,
    /// Total sequence length per prompt, prompt plus greedy continuation (default 101). Not
    /// with the `transformers` reference, which has logits for the fixture's own tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "usize", range(min = 1))]
    pub tokens: Option<usize>,
    /// The prompts (default: `crossval::DEFAULT_PROMPTS`). Not with `transformers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<String>")]
    pub prompts: Option<Vec<String>>,
    /// Reference top-1 margins below this are near-ties (default 0.5).
    #[serde(default = "default_near_tie")]
    pub near_tie: f64,
    /// The reference the thresholds judge (default `bitnet.cpp-0.0.5`).
    #[serde(default = "default_reference")]
    pub reference: RefName,
    /// References reported beside the judged one, under `<name>.` in the measurements.
    #[serde(default)]
    pub also: Vec<RefName>,
    /// Re-quantize the output projection at load (`q8_0`), judged against the file as
    /// stored (`reference = "engine-as-stored"`).
    #[serde(
        default,
        deserialize_with = "de_head",
        serialize_with = "ser_head",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "head_schema")]
    pub head: Option<HeadFormat>,
}

/// The default sequence length of a crossval gate.
pub const DEFAULT_CROSSVAL_TOKENS: usize = 101;

fn default_near_tie() -> f64 {
    0.5
}
fn default_reference() -> RefName {
    RefName::Cpp2024
}

impl Default for CrossvalInputs {
    fn default() -> Self {
        CrossvalInputs {
            mode: default_mode(),
            tokens: None,
            prompts: None,
            near_tie: default_near_tie(),
            reference: default_reference(),
            also: Vec::new(),
            head: None,
        }
    }
}

impl CrossvalInputs {
    fn check(&self) -> Result<(), String> {
        if self.reference == RefName::Transformers
            && (self.prompts.is_some() || self.tokens.is_some())
        {
            return Err(
                "a gate judged against transformers runs the fixture's own text and \
                        tokens: give no prompts or tokens"
                    .into(),
            );
        }
        if self.tokens == Some(0) {
            return Err("inputs.tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// `kernel`: our I2_S matmul vs the reference's on random shapes, bit for bit.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelInputs {
    /// Random shapes to compare (default 64).
    #[serde(default = "default_shapes")]
    pub shapes: usize,
    /// Seed of the shapes and values (default 1).
    #[serde(default = "one")]
    pub seed: u64,
}

fn default_shapes() -> usize {
    64
}
fn one() -> u64 {
    1
}

/// `tokenizer`: our tokenizer vs llama.cpp's on a corpus. The vocabulary is the gate's model's,
/// or `vocab` (then the gate has no model).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInputs {
    /// A vocabulary GGUF relative to the shared directory, instead of a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PathBuf")]
    pub vocab: Option<PathBuf>,
    /// Cases separated by lines holding only `---`, relative to the gates file's directory
    /// (default `tokenizer-corpus.txt`).
    #[serde(default = "default_corpus")]
    pub corpus: PathBuf,
    /// The vocabulary the reference reads, relative to the shared directory (default: the
    /// same as ours). The published 2B-4T layout has no `tokenizer.ggml.pre`, which llama.cpp
    /// reads as its 'default' split, so our inferred split is judged against the vocabulary
    /// with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PathBuf")]
    pub reference_vocab: Option<PathBuf>,
}

fn default_corpus() -> PathBuf {
    "tokenizer-corpus.txt".into()
}

/// `receipt`: a seeded run of the model writes a receipt that must verify.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptInputs {
    /// Default "Once upon a time".
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// Tokens to generate (default 32).
    #[serde(default = "default_receipt_tokens")]
    pub tokens: usize,
    /// Sampler seed (default 1).
    #[serde(default = "one")]
    pub seed: u64,
    /// Sampling temperature (default 0.8).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
}

fn default_prompt() -> String {
    "Once upon a time".into()
}
fn default_receipt_tokens() -> usize {
    32
}
fn default_temperature() -> f32 {
    0.8
}

/// `bad-input`: damaged copies of the model file load or fail with a typed error, never panic.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BadInputInputs {
    /// Damaged copies to try (default 300).
    #[serde(default = "default_variants")]
    pub variants: usize,
    /// Seed of the damage (default 1).
    #[serde(default = "one")]
    pub seed: u64,
}

fn default_variants() -> usize {
    300
}

/// `golden`: a reviewed snapshot matches what is computed now.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GoldenInputs {
    /// The snapshot, relative to the repository root (`golden/NAME.json`).
    pub file: PathBuf,
}

/// `perf`: speed as ratios measured in one run. `bench` says which.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "bench", rename_all = "kebab-case")]
pub enum PerfInputs {
    /// `bitnet-validate timing` on the gate's model in a child process.
    Model(PerfModelInputs),
    /// I2_S products of a random matrix on one thread (no model).
    Kernel(PerfKernelInputs),
}

/// `perf` with `bench = "model"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerfModelInputs {
    /// Prompt tokens, timed as one batch (default 64).
    #[serde(default = "default_perf_prompt")]
    pub prompt: usize,
    /// Generated tokens, timed one at a time (default 32).
    #[serde(default = "default_perf_gen")]
    pub gen: usize,
    /// Thread counts, one row of ratios each (default `[1]`).
    #[serde(default = "default_list")]
    #[schemars(length(min = 1))]
    pub threads: Vec<usize>,
    /// Interleaved repeats per ratio, the median taken (default 5).
    #[serde(default = "default_perf_repeats")]
    pub repeats: usize,
    /// Also BitNet.cpp 0.0.5 (linked in process), as a reported column (default false).
    #[serde(default)]
    pub also_2024: bool,
}

fn default_perf_prompt() -> usize {
    64
}
fn default_perf_gen() -> usize {
    32
}
fn default_list() -> Vec<usize> {
    vec![1]
}
fn default_perf_repeats() -> usize {
    5
}

/// `perf` with `bench = "kernel"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerfKernelInputs {
    /// Matrix rows (default 6912).
    #[serde(default = "default_rows")]
    pub rows: usize,
    /// Matrix columns, a multiple of 128 (default 2560).
    #[serde(default = "default_cols")]
    pub cols: usize,
    /// Token counts, one ratio each (default `[1]`).
    #[serde(default = "default_list")]
    #[schemars(length(min = 1))]
    pub tokens: Vec<usize>,
    /// Interleaved repeats per ratio, the median taken (default 7; 0 counts as 1).
    #[serde(default = "default_kernel_repeats")]
    pub repeats: usize,
    /// Time per measurement in milliseconds (default 20; 0 counts as 1).
    #[serde(default = "default_min_ms")]
    pub min_ms: u64,
    /// Seed of the matrix and inputs (default 1).
    #[serde(default = "one")]
    pub seed: u64,
    /// Also BitNet.cpp 0.0.5's mul_mat, as a reported column (default false).
    #[serde(default)]
    pub also_2024: bool,
}

fn default_rows() -> usize {
    6912
}
fn default_cols() -> usize {
    2560
}
fn default_kernel_repeats() -> usize {
    7
}
fn default_min_ms() -> u64 {
    20
}

/// `probe`: a scenario against a launched `bitnet serve`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeInputs {
    /// The scenario, relative to the gates file's directory (`probes/NAME.toml`).
    #[schemars(with = "String", regex(pattern = r"^probes/[A-Za-z0-9._-]+\.toml$"))]
    pub scenario: PathBuf,
    /// A scenario run first on its own server; its tokens/s is the denominator of
    /// `tokens_per_s_ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = r"^probes/[A-Za-z0-9._-]+\.toml$"))]
    pub baseline: Option<PathBuf>,
    /// Runs of the baseline/scenario pair, alternating; the ratio is their median (1..=9,
    /// with `baseline`; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u32", range(min = 1, max = 9))]
    pub rounds: Option<u32>,
}

/// `lint`: no inputs; the gate's model is linted.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LintInputs {}
