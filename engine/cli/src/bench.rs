//! `bitnet bench`: prompt processing (prefill, one batch) and generation (one token at a time)
//! throughput per thread count, each the median of several runs after a warm-up run, and the
//! peak resident set size checked against its bound (file size + KV cache + 64 MiB: the weights
//! are used in place from the mmap).
//!
//! With `--vs-reference` (a build with the `reference` feature), the BitNet.cpp users run today
//! (January 2026, `bitnet-llm-sys` 1.0.2, built as its own CMake builds it: Release, native,
//! OpenMP) runs on the same file, interleaved run by run with ours (each of its runs is one
//! `ref2026 bench` child process that times its own calls after loading and a warm-up run), and
//! the table shows the ratios ours / reference (higher is faster). `--also-2024` adds BitNet.cpp
//! 0.0.5, linked in this process, as a second column. Throughput is only ever compared as
//! such ratios taken in one run: absolute times on a shared machine are noise.
//!
//! Length: ~750 lines, over the house limit on purpose: options, timing loops, the roofline and
//! the report table describe one measurement and change together.

use bitnet::error::{Error, Result};
use bitnet::model::{Model, State};
use bitnet::session::{Seq, Session};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Slack of the peak-RSS bound beyond the file and the KV cache (code, activations, logits).
pub const RSS_SLACK_BYTES: u64 = 64 << 20;

/// Whether this build links BitNet.cpp (the `reference` feature).
pub const REFERENCE_AVAILABLE: bool = cfg!(feature = "reference");

const NO_REFERENCE: &str =
    "--vs-reference needs BitNet.cpp linked in: build with `--features reference` \
     (cargo run --release -p bitnet-cli --features reference -- bench ...)";

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
    /// Also run the January-2026 BitNet.cpp on the same file, interleaved with ours, and print
    /// ours/reference ratios (needs a build with `--features reference`).
    #[arg(long)]
    pub vs_reference: bool,
    /// With --vs-reference: also BitNet.cpp 0.0.5 (2024), in this process, as a second column.
    #[arg(long)]
    pub also_2024: bool,
    /// Also generate with this many sequences decoding together (continuous batching: one
    /// forward step per token for all of them) and report their aggregate tokens/s and its
    /// ratio to one sequence's.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Write the numbers as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The output projection's format at load (the global `--head`, set by the CLI).
    #[arg(skip)]
    pub head: Option<bitnet::model::HeadFormat>,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub prefill: usize,
    pub gen: usize,
    pub threads: Vec<usize>,
    pub repeats: usize,
    /// Time the 2026 reference beside ours.
    pub reference: bool,
    /// And BitNet.cpp 0.0.5 as a second column.
    pub reference_2024: bool,
    /// Re-quantize our output projection at load (`--head`); the references keep the file's.
    pub head: Option<bitnet::model::HeadFormat>,
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
    /// BitNet.cpp January 2026 (the baseline).
    pub reference: Option<Speed>,
    /// ours / reference prompt tokens per second (higher: we are faster).
    pub prefill_ratio: Option<f64>,
    /// ours / reference generated tokens per second.
    pub gen_ratio: Option<f64>,
    /// BitNet.cpp 0.0.5 (with `--also-2024`) and our ratios to it.
    pub reference_2024: Option<Speed>,
    pub prefill_ratio_2024: Option<f64>,
    pub gen_ratio_2024: Option<f64>,
    /// With `--parallel N`: our aggregate generated tokens/s of N sequences decoding together
    /// (median) and its every run.
    pub parallel_gen_tps: Option<f64>,
    pub parallel_gen_runs: Vec<f64>,
    /// parallel_gen_tps / ours.gen_tps.
    pub parallel_ratio: Option<f64>,
    /// Memory read bandwidth with this many threads, measured in this run (GB/s, best of a
    /// few streaming sums over a buffer far larger than the caches).
    pub read_gbs: f64,
    /// The generation roofline: read bandwidth / bytes read per generated token.
    pub roofline_gen_tps: f64,
    /// ours.gen_tps / roofline_gen_tps.
    pub gen_of_roofline: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Memory {
    /// VmHWM of this process (None where /proc/self/status is not available).
    pub peak_rss_bytes: Option<u64>,
    pub file_bytes: u64,
    /// Our KV cache after a full run (prompt + generated tokens), times the sequences held
    /// at once with `--parallel`.
    pub kv_cache_bytes: u64,
    /// With `--head`: the re-quantized output projection held in memory (its source rows in
    /// the file were read once to make it).
    pub head_bytes: u64,
    pub slack_bytes: u64,
    /// file + KV cache + head + slack.
    pub bound_bytes: u64,
    pub within_bound: Option<bool>,
    /// When the peak was read: after all runs, or before the reference was loaded.
    pub measured: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub model: String,
    /// The CPU (`model name` of /proc/cpuinfo).
    pub cpu: String,
    /// What the `reference` columns are.
    pub reference: Option<String>,
    pub arch: String,
    pub layers: usize,
    pub hidden: usize,
    pub vocab: usize,
    /// Tensor type of the layer weights and of the output projection.
    pub weight_type: String,
    pub output_type: String,
    /// Bytes of weights read per generated token: every tensor but the token embedding, which
    /// is read in full only when it is also the (tied) output head.
    pub bytes_per_token: u64,
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
        vec![bitnet::env::get().threads]
    } else {
        a.threads
    };
    let opts = Options {
        prefill: a.prefill,
        gen: a.gen,
        threads,
        repeats: a.repeats,
        reference: a.vs_reference,
        reference_2024: a.also_2024,
        head: a.head,
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
    if opts.reference_2024 && !opts.reference {
        return usage("--also-2024 adds a column to --vs-reference");
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
    if let Some(h) = opts.head {
        model.quantize_head(h)?;
    }
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
    let mut session = Session::new(&model).with_threads(widest);
    let (_, _, state) = ours_run(&mut session, &tokens, opts.prefill)?;
    // With --parallel N, N caches of that size are held at once.
    let kv_cache_bytes = (state.kv_cache_bytes() * opts.parallel.max(1)) as u64;
    drop(state);
    let mut peak = None;
    let mut old = None;
    if opts.reference {
        // The 2026 reference runs in child processes; 0.0.5 maps the same file again into
        // this one, so our peak is taken before it loads.
        reference::check_2026(path, &tokens, opts.prefill)?;
        if opts.reference_2024 {
            peak = Some(bitnet::receipt::peak_rss_bytes());
            let mut r = reference::Reference2024::load(path, total + 1, widest)?;
            r.run(widest, &tokens, opts.prefill)?;
            old = Some(r);
        }
    }

    let bytes_per_token = bytes_per_token(&model);
    let mut rows = Vec::new();
    for &t in &opts.threads {
        // The same session (its buffers grown by the warm-up) at this thread count.
        session = session.with_threads(t);
        let (mut ours, mut theirs, mut theirs_2024) =
            (Runs::default(), Runs::default(), Runs::default());
        let mut parallel = Vec::new();
        for _ in 0..opts.repeats {
            let (p, g, _) = ours_run(&mut session, &tokens, opts.prefill)?;
            ours.push(opts, p, g);
            if opts.parallel > 1 {
                let g = ours_parallel_run(&mut session, &tokens, opts.prefill, opts.parallel)?;
                parallel.push(tps(opts.gen * opts.parallel, g));
            }
            if opts.reference {
                let (p, g) = reference::run_2026(path, t, &tokens, opts.prefill)?;
                theirs.prefill.push(p);
                theirs.gen.push(g);
            }
            if let Some(r) = old.as_mut() {
                let (p, g) = r.run(t, &tokens, opts.prefill)?;
                theirs_2024.push(opts, p, g);
            }
        }
        let ours = ours.speed();
        let theirs = opts.reference.then(|| theirs.speed());
        let theirs_2024 = old.as_ref().map(|_| theirs_2024.speed());
        let parallel_gen_tps = (!parallel.is_empty()).then(|| median(&parallel));
        rows.push(Row {
            threads: t,
            // Filled in below, after the peak RSS is read (the buffer would dwarf it).
            read_gbs: f64::NAN,
            roofline_gen_tps: f64::NAN,
            gen_of_roofline: f64::NAN,
            parallel_ratio: parallel_gen_tps.map(|p| p / ours.gen_tps),
            parallel_gen_tps,
            parallel_gen_runs: parallel,
            prefill_ratio: theirs.as_ref().map(|r| ours.prefill_tps / r.prefill_tps),
            gen_ratio: theirs.as_ref().map(|r| ours.gen_tps / r.gen_tps),
            prefill_ratio_2024: theirs_2024
                .as_ref()
                .map(|r| ours.prefill_tps / r.prefill_tps),
            gen_ratio_2024: theirs_2024.as_ref().map(|r| ours.gen_tps / r.gen_tps),
            reference_2024: theirs_2024,
            ours,
            reference: theirs,
        });
    }
    let (peak, measured) = match peak {
        Some(p) => (p, "ours, before the reference was loaded"),
        None => (bitnet::receipt::peak_rss_bytes(), "after all runs"),
    };
    // The roofline: this machine's read bandwidth at each thread count, measured now, next to
    // the generation speed measured above.
    for row in &mut rows {
        let read = read_bandwidth(row.threads, BANDWIDTH_BUFFER, 5);
        row.read_gbs = read / 1e9;
        row.roofline_gen_tps = read / bytes_per_token.max(1) as f64;
        row.gen_of_roofline = row.ours.gen_tps / row.roofline_gen_tps;
    }
    let head_bytes = if opts.head.is_some() {
        let (cols, rows) = (model.output.cols as u64, model.output.rows as u64);
        model.output.ty.tensor_bytes(cols, cols * rows)
    } else {
        0
    };
    let bound_bytes = file_bytes + kv_cache_bytes + head_bytes + RSS_SLACK_BYTES;
    let c = &model.config;
    Ok(Report {
        model: path.display().to_string(),
        cpu: cpu_model(),
        reference: opts.reference.then(|| reference::NAME_2026.to_string()),
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
        bytes_per_token,
        isa: bitnet::quant::matmul::Isa::detect().name().to_string(),
        prefill_tokens: opts.prefill,
        gen_tokens: opts.gen,
        repeats: opts.repeats,
        parallel: opts.parallel,
        rows,
        memory: Memory {
            peak_rss_bytes: peak,
            file_bytes,
            kv_cache_bytes,
            head_bytes,
            slack_bytes: RSS_SLACK_BYTES,
            bound_bytes,
            within_bound: peak.map(|p| p <= bound_bytes),
            measured: measured.to_string(),
        },
    })
}

/// One run of our engine from an empty cache: prefill time, generation time, the state.
fn ours_run(
    session: &mut Session,
    tokens: &[u32],
    prefill: usize,
) -> Result<(Duration, Duration, State)> {
    let mut state = session.model().new_state();
    state.reserve(tokens.len());
    let mut logits = Vec::new();
    let t0 = Instant::now();
    session.forward_into(&mut state, &tokens[..prefill], false, &mut logits)?;
    let p = t0.elapsed();
    let t0 = Instant::now();
    for &tok in &tokens[prefill..] {
        session.forward_into(&mut state, &[tok], false, &mut logits)?;
    }
    Ok((p, t0.elapsed(), state))
}

/// Generation time of `parallel` sequences decoding together, each after its own prefill
/// (not timed): one batched forward step per generated token.
fn ours_parallel_run(
    session: &mut Session,
    tokens: &[u32],
    prefill: usize,
    parallel: usize,
) -> Result<Duration> {
    let mut states: Vec<State> = (0..parallel).map(|_| session.model().new_state()).collect();
    for s in &mut states {
        session.forward(s, &tokens[..prefill], false)?;
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
        session.forward_batch(&mut seqs)?;
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

pub use bitnet::measure::{cpu_model, median, read_bandwidth};

fn tps(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// The buffer the read bandwidth is measured on: far larger than any cache.
const BANDWIDTH_BUFFER: usize = 512 << 20;

/// Weight bytes a generated token reads: every tensor of the file but the token embedding (one
/// row of it is read) and the output projection, plus the output projection as the model
/// holds it (the file's, the tied embedding, or re-quantized by `--head`).
pub fn bytes_per_token(model: &Model) -> u64 {
    let layers: u64 = model
        .file
        .tensors()
        .iter()
        .filter(|t| t.name != "token_embd.weight" && t.name != "output.weight")
        .map(|t| t.size)
        .sum();
    let (cols, rows) = (model.output.cols as u64, model.output.rows as u64);
    layers + model.output.ty.tensor_bytes(cols, cols * rows)
}

#[cfg(feature = "reference")]
mod reference {
    use bitnet::error::{Error, Result};
    use bitnet_crossval::RefModel;
    use std::path::Path;
    use std::time::{Duration, Instant};

    pub const NAME_2026: &str =
        "BitNet.cpp January 2026 (bitnet-llm-sys 1.0.2; Release, -march=native, OpenMP)";

    fn runtime(e: impl std::fmt::Display) -> Error {
        Error::Runtime(format!("reference: {e}"))
    }

    /// Fails early (before any timing) when the 2026 reference cannot run this file, e.g. an
    /// arch or tensor type it does not know.
    pub fn check_2026(path: &Path, tokens: &[u32], prefill: usize) -> Result<()> {
        bitnet_crossval::ref2026::bench(path, &tokens[..prefill + 1], prefill, 1, 1)
            .map(|_| ())
            .map_err(runtime)
    }

    /// One timed run of the 2026 reference (a `ref2026 bench` child: load, warm-up, one run):
    /// prompt and generated tokens per second.
    pub fn run_2026(
        path: &Path,
        threads: usize,
        tokens: &[u32],
        prefill: usize,
    ) -> Result<(f64, f64)> {
        let (p, g) =
            bitnet_crossval::ref2026::bench(path, tokens, prefill, threads, 1).map_err(runtime)?;
        Ok((p[0], g[0]))
    }

    /// BitNet.cpp 0.0.5 on the same file, timed from here exactly as ours is (wall time of the
    /// calls).
    pub struct Reference2024(RefModel);

    impl Reference2024 {
        pub fn load(path: &Path, ctx: usize, threads: usize) -> Result<Self> {
            RefModel::load(path, ctx, threads)
                .map(Reference2024)
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
    use bitnet::error::{Error, Result};
    use std::path::Path;
    use std::time::Duration;

    pub const NAME_2026: &str = "";

    fn absent<T>() -> Result<T> {
        Err(Error::Usage(super::NO_REFERENCE.into()))
    }

    pub fn check_2026(_: &Path, _: &[u32], _: usize) -> Result<()> {
        absent()
    }

    pub fn run_2026(_: &Path, _: usize, _: &[u32], _: usize) -> Result<(f64, f64)> {
        absent()
    }

    /// Not linked in this build: [`super::check`] refuses `--vs-reference` before this is used.
    pub enum Reference2024 {}

    impl Reference2024 {
        pub fn load(_: &Path, _: usize, _: usize) -> Result<Self> {
            absent()
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
    let with_2024 = r.rows.iter().any(|row| row.reference_2024.is_some());
    let mut s = format!(
        "bitnet bench: {} ({:.1} MiB; {}, {} layers, hidden {}, vocab {}; {} weights, {} output; {} on {})\n\
         prompt {} tokens as one batch, {} generated one at a time after it; median of {} runs after a warm-up run\n",
        r.model,
        mib(r.memory.file_bytes),
        r.arch,
        r.layers,
        r.hidden,
        r.vocab,
        r.weight_type,
        r.output_type,
        r.isa,
        r.cpu,
        r.prefill_tokens,
        r.gen_tokens,
        r.repeats
    );
    s += &format!(
        "roofline: {:.1} MiB of weights read per generated token / the read bandwidth measured here\n",
        mib(r.bytes_per_token)
    );
    if let Some(name) = &r.reference {
        s += &format!("ref: {name}, interleaved run by run\n");
    }
    if with_2024 {
        s += "2024: BitNet.cpp 0.0.5 (bitnet-cpp-sys), in this process\n";
    }
    s += "\n";
    let mut head = vec![
        "threads",
        "prefill t/s",
        "generation t/s",
        "read GB/s",
        "roofline t/s",
        "of roofline",
    ];
    if with_ref {
        head.extend([
            "ref prefill t/s",
            "ref generation t/s",
            "prefill ours/ref",
            "generation ours/ref",
        ]);
    }
    if with_2024 {
        head.extend(["prefill ours/2024", "generation ours/2024"]);
    }
    let par_head = format!("generation t/s, {} sequences", r.parallel);
    if r.parallel > 1 {
        head.extend([par_head.as_str(), "batched/single"]);
    }
    s += &format!("| {} |\n", head.join(" | "));
    s += &format!("|{}\n", "---:|".repeat(head.len()));
    for row in &r.rows {
        s += &format!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.2} | {:.0}% |",
            row.threads,
            row.ours.prefill_tps,
            row.ours.gen_tps,
            row.read_gbs,
            row.roofline_gen_tps,
            100.0 * row.gen_of_roofline
        );
        if let (Some(t), Some(pr), Some(gr)) = (&row.reference, row.prefill_ratio, row.gen_ratio) {
            s += &format!(
                " {:.2} | {:.2} | {:.3} | {:.3} |",
                t.prefill_tps, t.gen_tps, pr, gr
            );
        }
        if let (Some(pr), Some(gr)) = (row.prefill_ratio_2024, row.gen_ratio_2024) {
            s += &format!(" {pr:.3} | {gr:.3} |");
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
    let head = if m.head_bytes > 0 {
        format!(" + re-quantized head {:.1} MiB", mib(m.head_bytes))
    } else {
        String::new()
    };
    s += &format!(
        "\npeak RSS {verdict} (file {:.1} MiB + KV cache {:.1} MiB{head} + {:.0} MiB; {})\n",
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
            reference_2024: false,
            head: None,
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
            ..ok.clone()
        });
        assert_eq!(with_ref.is_ok(), REFERENCE_AVAILABLE);
        let only_2024 = check(&Options {
            reference_2024: true,
            ..ok
        });
        assert!(matches!(only_2024, Err(Error::Usage(_))));
    }
}
