//! `bitnet bench`: prompt processing (prefill, one batch) and generation (one token at a time)
//! throughput per thread count, each the median of several runs after a warm-up run, and the
//! peak resident set size checked against its bound (file size + KV cache + 64 MiB: the weights
//! are used in place from the mmap).
//!
//! With `--vs-reference` (a build with the `reference` feature), BitNet.cpp runs on the same
//! file in the same process, interleaved run by run with ours, and the table shows the ratios
//! ours / reference (higher is faster). Throughput is only ever compared as such ratios taken in
//! one run: absolute times on a shared machine are noise.

use crate::error::{Error, Result};
use crate::model::{Model, Seq, State};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Slack of the peak-RSS bound beyond the file and the KV cache (code, activations, logits).
pub const RSS_SLACK_BYTES: u64 = 64 << 20;

/// Whether this build links BitNet.cpp (the `reference` feature).
pub const REFERENCE_AVAILABLE: bool = cfg!(feature = "reference");

const NO_REFERENCE: &str =
    "--vs-reference needs BitNet.cpp linked in: build with `--features reference` \
     (cargo run --release -p bitnet --features reference -- bench ...)";

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(short, long)]
    pub model: PathBuf,
    /// Prompt tokens, evaluated as one batch.
    #[arg(short = 'p', long = "prompt", default_value_t = 128)]
    pub prefill: usize,
    /// Tokens generated one at a time after the prompt.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub gen: usize,
    /// Thread counts, comma-separated (default: BITNET_THREADS or all cores).
    #[arg(short, long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Runs per thread count; the table shows their medians.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Also run BitNet.cpp on the same file in this process and print ours/reference ratios
    /// (needs a build with `--features reference`).
    #[arg(long)]
    pub vs_reference: bool,
    /// Also generate with this many sequences decoding together (continuous batching: one
    /// forward step per token for all of them) and report their aggregate tokens/s and its
    /// ratio to one sequence's.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Write the numbers as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub prefill: usize,
    pub gen: usize,
    pub threads: Vec<usize>,
    pub repeats: usize,
    pub reference: bool,
    /// Sequences decoding together in the batched generation runs (1: none).
    pub parallel: usize,
}

/// Throughput of one engine at one thread count.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Speed {
    /// Median prompt tokens per second.
    pub prefill_tps: f64,
    /// Median generated tokens per second.
    pub gen_tps: f64,
    /// Every run, in order.
    pub prefill_runs: Vec<f64>,
    pub gen_runs: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub threads: usize,
    pub ours: Speed,
    pub reference: Option<Speed>,
    /// ours / reference prompt tokens per second (higher: we are faster).
    pub prefill_ratio: Option<f64>,
    /// ours / reference generated tokens per second.
    pub gen_ratio: Option<f64>,
    /// With `--parallel N`: our aggregate generated tokens/s of N sequences decoding together
    /// (median) and its every run.
    pub parallel_gen_tps: Option<f64>,
    pub parallel_gen_runs: Vec<f64>,
    /// parallel_gen_tps / ours.gen_tps.
    pub parallel_ratio: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Memory {
    /// VmHWM of this process (None where /proc/self/status is not available).
    pub peak_rss_bytes: Option<u64>,
    pub file_bytes: u64,
    /// Our KV cache after a full run (prompt + generated tokens), times the sequences held
    /// at once with `--parallel`.
    pub kv_cache_bytes: u64,
    pub slack_bytes: u64,
    /// file + KV cache + slack.
    pub bound_bytes: u64,
    pub within_bound: Option<bool>,
    /// When the peak was read: after all runs, or before the reference was loaded.
    pub measured: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub model: String,
    pub arch: String,
    pub layers: usize,
    pub hidden: usize,
    pub vocab: usize,
    /// Tensor type of the layer weights and of the output projection.
    pub weight_type: String,
    pub output_type: String,
    pub isa: String,
    pub prefill_tokens: usize,
    pub gen_tokens: usize,
    pub repeats: usize,
    pub parallel: usize,
    pub rows: Vec<Row>,
    pub memory: Memory,
}

/// `bitnet bench`: measures, prints the table, writes the JSON.
pub fn cli(a: BenchArgs) -> Result<()> {
    let threads = if a.threads.is_empty() {
        vec![crate::env::get().threads]
    } else {
        a.threads
    };
    let opts = Options {
        prefill: a.prefill,
        gen: a.gen,
        threads,
        repeats: a.repeats,
        reference: a.vs_reference,
        parallel: a.parallel,
    };
    let report = run(&a.model, &opts)?;
    print!("{}", table(&report));
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report).expect("the report serialises");
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path.display().to_string(), e))?;
    }
    Ok(())
}

/// Most sequences `--parallel` decodes together (each holds its own KV cache).
pub const MAX_PARALLEL: usize = 64;

/// Token ids of the benchmark: a fixed pattern spread over the vocabulary (their values do not
/// change the cost).
pub fn bench_tokens(vocab: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((1 + i * 7919) % vocab.max(1)) as u32)
        .collect()
}

fn check(opts: &Options) -> Result<()> {
    let usage = |m: &str| Err(Error::Usage(m.into()));
    if opts.reference && !REFERENCE_AVAILABLE {
        return usage(NO_REFERENCE);
    }
    if opts.threads.is_empty() || opts.threads.contains(&0) {
        return usage("thread counts must be at least 1");
    }
    if opts.repeats == 0 {
        return usage("--repeats must be at least 1");
    }
    if opts.parallel == 0 || opts.parallel > MAX_PARALLEL {
        return usage(&format!("--parallel must be 1..={MAX_PARALLEL}"));
    }
    if opts.prefill == 0 || opts.gen == 0 {
        return usage("prompt (-p) and generated (-n) token counts must be at least 1");
    }
    Ok(())
}

/// Runs the benchmark on the model at `path`.
pub fn run(path: &Path, opts: &Options) -> Result<Report> {
    check(opts)?;
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| Error::io(path.display().to_string(), e))?
        .len();
    let mut model = Model::load(path)?;
    let c = &model.config;
    let total = opts.prefill + opts.gen;
    if total > c.context_length {
        return Err(Error::Usage(format!(
            "{} prompt + {} generated tokens exceed the model's context length {}",
            opts.prefill, opts.gen, c.context_length
        )));
    }
    let tokens = bench_tokens(c.vocab_size, total);
    let widest = *opts.threads.iter().max().expect("checked non-empty");

    // Warm-up: pages the weights in and starts the widest worker pool.
    model.threads = widest;
    let (_, _, state) = ours_run(&model, &tokens, opts.prefill)?;
    // With --parallel N, N caches of that size are held at once.
    let kv_cache_bytes = (state.kv_cache_bytes() * opts.parallel.max(1)) as u64;
    drop(state);
    let mut reference = None;
    let mut peak = None;
    if opts.reference {
        // The reference maps the same file again: our peak is taken before it loads.
        peak = Some(crate::receipt::peak_rss_bytes());
        let mut r = reference::Reference::load(path, total + 1, widest)?;
        r.run(widest, &tokens, opts.prefill)?;
        reference = Some(r);
    }

    let mut rows = Vec::new();
    for &t in &opts.threads {
        model.threads = t;
        let (mut ours, mut theirs) = (Runs::default(), Runs::default());
        let mut parallel = Vec::new();
        for _ in 0..opts.repeats {
            let (p, g, _) = ours_run(&model, &tokens, opts.prefill)?;
            ours.push(opts, p, g);
            if opts.parallel > 1 {
                let g = ours_parallel_run(&model, &tokens, opts.prefill, opts.parallel)?;
                parallel.push(tps(opts.gen * opts.parallel, g));
            }
            if let Some(r) = reference.as_mut() {
                let (p, g) = r.run(t, &tokens, opts.prefill)?;
                theirs.push(opts, p, g);
            }
        }
        let ours = ours.speed();
        let theirs = reference.as_ref().map(|_| theirs.speed());
        let parallel_gen_tps = (!parallel.is_empty()).then(|| median(&parallel));
        rows.push(Row {
            threads: t,
            parallel_ratio: parallel_gen_tps.map(|p| p / ours.gen_tps),
            parallel_gen_tps,
            parallel_gen_runs: parallel,
            prefill_ratio: theirs.as_ref().map(|r| ours.prefill_tps / r.prefill_tps),
            gen_ratio: theirs.as_ref().map(|r| ours.gen_tps / r.gen_tps),
            ours,
            reference: theirs,
        });
    }
    let (peak, measured) = match peak {
        Some(p) => (p, "ours, before the reference was loaded"),
        None => (crate::receipt::peak_rss_bytes(), "after all runs"),
    };
    let bound_bytes = file_bytes + kv_cache_bytes + RSS_SLACK_BYTES;
    let c = &model.config;
    Ok(Report {
        model: path.display().to_string(),
        arch: c.arch.clone(),
        layers: c.n_layers,
        hidden: c.dim,
        vocab: c.vocab_size,
        weight_type: model
            .layers
            .first()
            .map_or("none", |l| l.wq.ty.name())
            .to_string(),
        output_type: model.output.ty.name().to_string(),
        isa: crate::quant::matmul::Isa::detect().name().to_string(),
        prefill_tokens: opts.prefill,
        gen_tokens: opts.gen,
        repeats: opts.repeats,
        parallel: opts.parallel,
        rows,
        memory: Memory {
            peak_rss_bytes: peak,
            file_bytes,
            kv_cache_bytes,
            slack_bytes: RSS_SLACK_BYTES,
            bound_bytes,
            within_bound: peak.map(|p| p <= bound_bytes),
            measured: measured.to_string(),
        },
    })
}

/// One run of our engine from an empty cache: prefill time, generation time, the state.
fn ours_run(model: &Model, tokens: &[u32], prefill: usize) -> Result<(Duration, Duration, State)> {
    let mut state = State::new(&model.config);
    state.reserve(tokens.len());
    let mut logits = Vec::new();
    let t0 = Instant::now();
    model.forward_into(&mut state, &tokens[..prefill], false, &mut logits)?;
    let p = t0.elapsed();
    let t0 = Instant::now();
    for &tok in &tokens[prefill..] {
        model.forward_into(&mut state, &[tok], false, &mut logits)?;
    }
    Ok((p, t0.elapsed(), state))
}

/// Generation time of `parallel` sequences decoding together, each after its own prefill
/// (not timed): one batched forward step per generated token.
fn ours_parallel_run(
    model: &Model,
    tokens: &[u32],
    prefill: usize,
    parallel: usize,
) -> Result<Duration> {
    let mut states: Vec<State> = (0..parallel).map(|_| State::new(&model.config)).collect();
    for s in &mut states {
        model.forward(s, &tokens[..prefill], false)?;
    }
    let t0 = Instant::now();
    for i in prefill..tokens.len() {
        let mut seqs: Vec<Seq> = states
            .iter_mut()
            .map(|state| Seq {
                state,
                tokens: &tokens[i..i + 1],
                all_logits: false,
            })
            .collect();
        model.forward_batch(&mut seqs)?;
    }
    Ok(t0.elapsed())
}

#[derive(Default)]
struct Runs {
    prefill: Vec<f64>,
    gen: Vec<f64>,
}

impl Runs {
    fn push(&mut self, opts: &Options, p: Duration, g: Duration) {
        self.prefill.push(tps(opts.prefill, p));
        self.gen.push(tps(opts.gen, g));
    }
    fn speed(self) -> Speed {
        Speed {
            prefill_tps: median(&self.prefill),
            gen_tps: median(&self.gen),
            prefill_runs: self.prefill,
            gen_runs: self.gen,
        }
    }
}

/// The median (the mean of the middle two for an even count); NaN for no values.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn tps(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

#[cfg(feature = "reference")]
mod reference {
    use crate::error::{Error, Result};
    use bitnet_crossval::RefModel;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// BitNet.cpp on the same file, timed from here exactly as ours is (wall time of the calls).
    pub struct Reference(RefModel);

    fn runtime(e: bitnet_crossval::RefError) -> Error {
        Error::Runtime(format!("reference: {e}"))
    }

    impl Reference {
        pub fn load(path: &Path, ctx: usize, threads: usize) -> Result<Self> {
            RefModel::load(path, ctx, threads)
                .map(Reference)
                .map_err(runtime)
        }

        /// One run from an empty cache: prefill as one batch asking for the last logits only
        /// (as ours does), then one token at a time.
        pub fn run(
            &mut self,
            threads: usize,
            tokens: &[u32],
            prefill: usize,
        ) -> Result<(Duration, Duration)> {
            let r = &mut self.0;
            r.set_threads(threads);
            r.reset();
            let t0 = Instant::now();
            r.prefill_timed(&tokens[..prefill]).map_err(runtime)?;
            let p = t0.elapsed();
            let t0 = Instant::now();
            for &tok in &tokens[prefill..] {
                r.append_timed(&[tok], true).map_err(runtime)?;
            }
            Ok((p, t0.elapsed()))
        }
    }
}

#[cfg(not(feature = "reference"))]
mod reference {
    use crate::error::{Error, Result};
    use std::path::Path;
    use std::time::Duration;

    /// Not linked in this build: [`super::check`] refuses `--vs-reference` before this is used.
    pub enum Reference {}

    impl Reference {
        pub fn load(_: &Path, _: usize, _: usize) -> Result<Self> {
            Err(Error::Usage(super::NO_REFERENCE.into()))
        }

        pub fn run(&mut self, _: usize, _: &[u32], _: usize) -> Result<(Duration, Duration)> {
            match *self {}
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// The report as a Markdown table plus the memory line.
pub fn table(r: &Report) -> String {
    let with_ref = r.rows.iter().any(|row| row.reference.is_some());
    let mut s = format!(
        "bitnet bench: {} ({:.1} MiB; {}, {} layers, hidden {}, vocab {}; {} weights, {} output; {})\n\
         prompt {} tokens as one batch, {} generated one at a time; median of {} runs after a warm-up run\n\n",
        r.model,
        mib(r.memory.file_bytes),
        r.arch,
        r.layers,
        r.hidden,
        r.vocab,
        r.weight_type,
        r.output_type,
        r.isa,
        r.prefill_tokens,
        r.gen_tokens,
        r.repeats
    );
    let mut head = vec!["threads", "prefill t/s", "generation t/s"];
    if with_ref {
        head.extend([
            "ref prefill t/s",
            "ref generation t/s",
            "prefill ours/ref",
            "generation ours/ref",
        ]);
    }
    let par_head = format!("generation t/s, {} sequences", r.parallel);
    if r.parallel > 1 {
        head.extend([par_head.as_str(), "batched/single"]);
    }
    s += &format!("| {} |\n", head.join(" | "));
    s += &format!("|{}\n", "---:|".repeat(head.len()));
    for row in &r.rows {
        s += &format!(
            "| {} | {:.2} | {:.2} |",
            row.threads, row.ours.prefill_tps, row.ours.gen_tps
        );
        if let (Some(t), Some(pr), Some(gr)) = (&row.reference, row.prefill_ratio, row.gen_ratio) {
            s += &format!(
                " {:.2} | {:.2} | {:.3} | {:.3} |",
                t.prefill_tps, t.gen_tps, pr, gr
            );
        }
        if let (Some(p), Some(ratio)) = (row.parallel_gen_tps, row.parallel_ratio) {
            s += &format!(" {p:.2} | {ratio:.3} |");
        }
        s += "\n";
    }
    let m = &r.memory;
    let verdict = match (m.peak_rss_bytes, m.within_bound) {
        (Some(p), Some(ok)) => format!(
            "{:.1} MiB {} bound {:.1} MiB: {}",
            mib(p),
            if ok { "<=" } else { ">" },
            mib(m.bound_bytes),
            if ok {
                "within bound"
            } else {
                "EXCEEDS THE BOUND"
            }
        ),
        _ => format!(
            "unknown (no /proc/self/status); bound {:.1} MiB",
            mib(m.bound_bytes)
        ),
    };
    s += &format!(
        "\npeak RSS {verdict} (file {:.1} MiB + KV cache {:.1} MiB + {:.0} MiB; {})\n",
        mib(m.file_bytes),
        mib(m.kv_cache_bytes),
        mib(m.slack_bytes),
        m.measured
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn bad_options_are_usage_errors() {
        let ok = Options {
            prefill: 4,
            gen: 2,
            threads: vec![1],
            repeats: 1,
            reference: false,
            parallel: 1,
        };
        assert!(check(&ok).is_ok());
        for bad in [
            Options {
                threads: vec![],
                ..ok.clone()
            },
            Options {
                threads: vec![1, 0],
                ..ok.clone()
            },
            Options {
                repeats: 0,
                ..ok.clone()
            },
            Options {
                prefill: 0,
                ..ok.clone()
            },
            Options {
                gen: 0,
                ..ok.clone()
            },
            Options {
                parallel: 0,
                ..ok.clone()
            },
            Options {
                parallel: MAX_PARALLEL + 1,
                ..ok.clone()
            },
        ] {
            assert!(matches!(check(&bad), Err(Error::Usage(_))), "{bad:?}");
        }
        let with_ref = check(&Options {
            reference: true,
            ..ok
        });
        assert_eq!(with_ref.is_ok(), REFERENCE_AVAILABLE);
    }
}
