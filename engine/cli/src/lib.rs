//! The `bitnet` command line: run, inspect, tokenize, logits, perplexity, convert, synth, bench,
//! serve.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error, 3 invalid input file (GGUF,
//! model, tokenizer or checkpoint). Every error is one line on stderr.
//!
//! This crate is the command line only: the computation is the `bitnet` library's, the server
//! is `bitnet-server`'s, and [`bench`] times both against BitNet.cpp (feature `reference`).

pub mod bench;
mod inspect;

use bitnet::convert::{self, synth, FloatFormat, WeightFormat};
use bitnet::error::{Error, Result};
use bitnet::eval::{perplexity, teacher_forced_logits, Mode};
use bitnet::generate::{generate, GenerateOptions};
use bitnet::gguf::Gguf;
use bitnet::model::{HeadFormat, Model};
use bitnet::sample::SamplerParams;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A command-line value parsed by the library type's `FromStr` (whose error lists the choices).
fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> std::result::Result<T, String> {
    s.parse()
}

#[derive(Parser, Debug)]
#[command(
    name = "bitnet",
    version,
    about = "BitNet b1.58 inference: run, inspect, convert"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
    /// The BPE pre-tokenizer to use (llama-bpe, gpt-2, ...), for a file whose
    /// `tokenizer.ggml.pre` is absent and whose vocabulary is not recognised, or is wrong.
    #[arg(long, global = true, value_name = "NAME")]
    pub tokenizer_pre: Option<String>,
    /// Re-quantize the output projection (the logits head) at load: q8_0 reads about half the
    /// bytes of an F16 head per token, at a measured cost in accuracy (KL and top-1 against the
    /// file's head: `bitnet-validate` gates head-q8-real, head-q8-hf). For run, logits, perplexity, serve, bench.
    #[arg(long, global = true, value_name = "q8_0", value_parser = parse::<HeadFormat>)]
    pub head: Option<HeadFormat>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt (streams to stdout).
    Run(RunArgs),
    /// Show a GGUF file's metadata and tensors and whether it loads as a model.
    Inspect {
        model: PathBuf,
        /// Only validate the GGUF container (for vocab-only or non-bitnet files).
        #[arg(long)]
        gguf_only: bool,
        /// Print every element of metadata arrays.
        #[arg(long)]
        full: bool,
    },
    /// Print the token ids of a text.
    Tokenize {
        #[arg(short, long)]
        model: PathBuf,
        text: String,
        /// Do not add BOS/EOS even if the model asks for it.
        #[arg(long)]
        no_bos: bool,
        /// Parse special-token text (e.g. <|begin_of_text|>) into single tokens.
        #[arg(long)]
        special: bool,
    },
    /// Teacher-forced logits of every position to a binary file
    /// (i32 n_tokens, i32 n_vocab, then f32 row-major, little endian).
    Logits {
        #[arg(short, long)]
        model: PathBuf,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value = "batch", value_name = "seq|batch", value_parser = parse::<Mode>)]
        mode: Mode,
        #[arg(short, long)]
        threads: Option<usize>,
    },
    /// Mean negative log-likelihood and perplexity of a text file.
    Perplexity {
        #[arg(short, long)]
        model: PathBuf,
        #[arg(short, long)]
        file: PathBuf,
        /// Tokens per evaluation window (default: the model's context length).
        #[arg(long)]
        ctx: Option<usize>,
        #[arg(short, long)]
        threads: Option<usize>,
    },
    /// Convert a checkpoint to a bitnet GGUF.
    Convert {
        #[command(subcommand)]
        source: ConvertSource,
    },
    /// Create an ed25519 key pair for signing receipts: OUT (secret, 64 hex digits) and OUT.pub.
    Keygen {
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Prefill and generation t/s per thread count (medians), peak RSS against its bound;
    /// with --vs-reference, BitNet.cpp on the same file in the same run and the ratios.
    Bench(crate::bench::BenchArgs),
    /// OpenAI-compatible HTTP server with continuous batching, health probes and metrics.
    Serve(bitnet_server::ServeArgs),
    /// Write a deterministic synthetic bitnet model.
    Synth {
        #[arg(long)]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
        /// GGUF to take the vocabulary from (default: the preset's file in the shared data).
        #[arg(long)]
        vocab: Option<PathBuf>,
        #[arg(long, default_value = "i2_s")]
        weights: String,
        /// Token embeddings: f16, f32 or q8_0.
        #[arg(long, default_value = "f16")]
        embedding: String,
        /// Override the preset's FFN activation (silu, relu2).
        #[arg(long)]
        activation: Option<String>,
        /// Override the preset's hidden size.
        #[arg(long)]
        hidden: Option<usize>,
        /// Override the preset's FFN size.
        #[arg(long)]
        ffn: Option<usize>,
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long)]
        heads: Option<usize>,
        #[arg(long)]
        kv_heads: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConvertSource {
    /// A bitllama2.c model.bin plus its SentencePiece tokenizer.model.
    Llama2c {
        checkpoint: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// i2_s, tq2_0, tq1_0, tl2 or f32.
        #[arg(long, default_value = "i2_s")]
        weights: String,
        /// f32 or f16.
        #[arg(long, default_value = "f32")]
        embedding: String,
    },
    /// A Hugging Face BitNetForCausalLM directory (config.json, *.safetensors, tokenizer.json,
    /// tokenizer_config.json): any of transformers' three layouts (bitlinear packed,
    /// autobitlinear offline or online).
    Hf {
        dir: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// i2_s, tl2, tq2_0, tq1_0 or f32.
        #[arg(long, default_value = "i2_s")]
        weights: String,
        /// Token embeddings (and an untied head): f16, f32 or q8_0.
        #[arg(long, default_value = "f16")]
        embedding: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[arg(short, long)]
    pub model: PathBuf,
    #[arg(short, long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// 0 = greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text is generated (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past EOS.
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Do not echo the prompt before the generated text.
    #[arg(long)]
    pub no_echo: bool,
    /// Print timings to stderr at the end.
    #[arg(long)]
    pub verbose: bool,
    /// Write a receipt of this run (JSON, schemas/receipt.v1.schema.json) here.
    #[arg(long)]
    pub receipt: Option<PathBuf>,
    /// Sign the receipt with this ed25519 secret key file (64 hex digits; see `bitnet keygen`).
    #[arg(long, requires = "receipt")]
    pub sign: Option<PathBuf>,
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    // A chat-template render worker of `bitnet serve` (not a user command).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == bitnet_server::sandbox::WORKER_ARG)
    {
        return bitnet_server::sandbox::worker_main();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if !matches!(cli.cmd, Command::Serve(_)) {
        default_sigpipe();
    }
    match dispatch(cli.cmd, cli.tokenizer_pre.as_deref(), cli.head) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            exit_code(&e)
        }
    }
}

/// A closed pipe ends the command quietly, as it does other Unix tools (`bitnet inspect M |
/// head`), instead of a panic from `println!`. Rust ignores SIGPIPE by default; the server
/// keeps that, since a client closing its socket must not kill it.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal has no memory-safety effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn exit_code(e: &Error) -> i32 {
    match e {
        Error::Usage(_) => 2,
        Error::Io { .. } | Error::Gguf(bitnet::gguf::GgufError::Io { .. }) => 1,
        Error::Runtime(_) => 1,
        Error::Convert(convert::ConvertError::Io { .. }) => 1,
        Error::Convert(convert::ConvertError::Usage(_)) => 2,
        _ => 3,
    }
}

/// The model, its tokenizer, and the thread count to run it with (`--threads`, else the
/// default).
fn load(
    path: &Path,
    threads: Option<usize>,
    pre: Option<&str>,
    head: Option<HeadFormat>,
) -> Result<(Model, Tokenizer, usize)> {
    let file = Arc::new(Gguf::open(path)?);
    let tok = Tokenizer::from_gguf_with(&file, pre)?;
    if let Some(note) = tok.pre_note() {
        eprintln!("{note}");
    }
    let mut model = Model::from_gguf(file)?;
    if let Some(h) = head {
        model.quantize_head(h)?;
    }
    if threads == Some(0) {
        return Err(Error::Usage("--threads must be at least 1".into()));
    }
    Ok((model, tok, threads.unwrap_or(bitnet::env::get().threads)))
}

fn progress_bar(len: u64, msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tensors ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

fn dispatch(cmd: Command, pre: Option<&str>, head: Option<HeadFormat>) -> Result<()> {
    let uses_head = matches!(
        cmd,
        Command::Run(_)
            | Command::Bench(_)
            | Command::Serve(_)
            | Command::Logits { .. }
            | Command::Perplexity { .. }
    );
    if head.is_some() && !uses_head {
        return Err(Error::Usage(
            "--head applies to run, logits, perplexity, serve and bench".into(),
        ));
    }
    match cmd {
        Command::Run(a) => run(a, pre, head),
        Command::Bench(mut a) => {
            a.head = head;
            crate::bench::cli(a)
        }
        Command::Serve(mut a) => {
            a.tokenizer_pre = pre.map(str::to_string);
            a.head = head;
            // Chat templates render in sandboxed workers: this binary, `__render-worker`.
            a.render_exe = Some(std::env::current_exe().map_err(|e| Error::io("current_exe", e))?);
            bitnet_server::run(a)
        }
        Command::Keygen { output } => {
            let mut seed = [0u8; 32];
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed))
                .map_err(|e| Error::io("/dev/urandom", e))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let public = output.with_extension("pub");
            std::fs::write(&output, hex(&seed) + "\n")
                .map_err(|e| Error::io(output.display().to_string(), e))?;
            std::fs::write(&public, hex(key.verifying_key().as_bytes()) + "\n")
                .map_err(|e| Error::io(public.display().to_string(), e))?;
            eprintln!(
                "wrote {} (secret) and {} (public)",
                output.display(),
                public.display()
            );
            Ok(())
        }
        Command::Inspect {
            model,
            gguf_only,
            full,
        } => inspect::inspect(&model, gguf_only, full, pre),
        Command::Tokenize {
            model,
            text,
            no_bos,
            special,
        } => {
            let g = Gguf::open(&model)?;
            let tok = Tokenizer::from_gguf_with(&g, pre)?;
            if let Some(note) = tok.pre_note() {
                eprintln!("{note}");
            }
            let ids = tok.encode(&text, !no_bos, special);
            println!(
                "{}",
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Ok(())
        }
        Command::Logits {
            model,
            tokens,
            output,
            mode,
            threads,
        } => {
            let (m, _, threads) = load(&model, threads, pre, head)?;
            let mut session = Session::new(&m).with_threads(threads);
            let logits = teacher_forced_logits(&mut session, &tokens, mode)?;
            write_logits(&output, tokens.len(), m.config.vocab_size, &logits)
        }
        Command::Perplexity {
            model,
            file,
            ctx,
            threads,
        } => {
            let (m, tok, threads) = load(&model, threads, pre, head)?;
            let mut session = Session::new(&m).with_threads(threads);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Error::io(file.display().to_string(), e))?;
            let ids = tok.encode(&text, true, false);
            let (nll, n) = perplexity(&mut session, &ids, ctx.unwrap_or(m.config.context_length))?;
            println!("tokens evaluated: {n}");
            println!("mean NLL: {nll:.4}");
            println!("perplexity: {:.4}", nll.exp());
            Ok(())
        }
        Command::Convert {
            source:
                ConvertSource::Llama2c {
                    checkpoint,
                    tokenizer,
                    output,
                    weights,
                    embedding,
                },
        } => {
            let (w, e) = (
                WeightFormat::parse(&weights)?,
                FloatFormat::parse(&embedding)?,
            );
            let pb = progress_bar(0, "converting");
            convert::llama2c::convert(
                &checkpoint,
                &tokenizer,
                &output,
                w,
                e,
                &mut |done, total| {
                    pb.set_length(total as u64);
                    pb.set_position(done as u64);
                },
            )?;
            pb.finish_and_clear();
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Command::Convert {
            source:
                ConvertSource::Hf {
                    dir,
                    output,
                    weights,
                    embedding,
                },
        } => {
            let opts = convert::hf::Options {
                weights: WeightFormat::parse(&weights)?,
                embedding: convert::EmbedFormat::parse(&embedding)?,
                tokenizer_pre: pre,
            };
            let pb = progress_bar(0, "converting");
            convert::hf::convert(&dir, &output, opts, &mut |done, total| {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            })?;
            pb.finish_and_clear();
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Command::Synth {
            preset,
            seed,
            output,
            vocab,
            weights,
            embedding,
            activation,
            hidden,
            ffn,
            layers,
            heads,
            kv_heads,
        } => {
            let preset = synth::Preset::parse(&preset)?;
            let shape = synth::ShapeOverrides {
                dim: hidden,
                hidden_dim: ffn,
                n_layers: layers,
                n_heads: heads,
                n_kv_heads: kv_heads,
            };
            let opts = synth::SynthOptions::parse(
                &weights,
                &embedding,
                seed,
                activation.as_deref(),
                shape,
            )?;
            let pb = progress_bar(0, "synthesising");
            synth::synth_file(
                preset,
                vocab.as_deref(),
                &opts,
                &output,
                &mut |done, total| {
                    pb.set_length(total as u64);
                    pb.set_position(done as u64);
                },
            )?;
            pb.finish_and_clear();
            eprintln!("wrote {}", output.display());
            Ok(())
        }
    }
}

fn run(a: RunArgs, pre: Option<&str>, head: Option<HeadFormat>) -> Result<()> {
    let signing_key = match &a.sign {
        Some(p) => {
            Some(bitnet::receipt::read_signing_key(p).map_err(|e| Error::Usage(e.to_string()))?)
        }
        None => None,
    };
    let t_load = std::time::Instant::now();
    let (model, tok, threads) = load(&a.model, a.threads, pre, head)?;
    let mut session = Session::new(&model).with_threads(threads);
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let sampler = SamplerParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed,
    };
    sampler.validate().map_err(Error::Usage)?;
    let prompt = tok.encode(&a.prompt, true, false);
    if prompt.is_empty() {
        return Err(Error::Usage(
            "empty prompt and the model adds no BOS: nothing to start from".into(),
        ));
    }
    let opts = GenerateOptions {
        max_tokens: a.n_predict,
        sampler,
        stop: a.stop,
        ignore_eos: a.ignore_eos,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !a.no_echo {
        let _ = write!(out, "{}", a.prompt);
        let _ = out.flush();
    }
    let mut write_failed = false;
    let g = generate(&mut session, &tok, &prompt, &opts, &mut |piece| {
        write_failed = write!(out, "{piece}").and_then(|_| out.flush()).is_err();
        !write_failed
    })?;
    let _ = writeln!(out);
    if let Some(path) = &a.receipt {
        let mut r =
            bitnet::receipt::for_generation(&session, &a.model, &opts, &a.prompt, &g, load_ms)
                .map_err(|e| Error::io(a.model.display().to_string(), e))?;
        if let Some(k) = &signing_key {
            r.sign(k);
        }
        r.write(path)
            .map_err(|e| Error::io(path.display().to_string(), e))?;
    }
    if a.verbose {
        let n = g.decode_steps as f64;
        eprintln!(
            "prompt {} tokens in {:.1} ms ({:.1} t/s); generated {} tokens, {} decode steps in {:.1} ms ({:.1} t/s); stop: {:?}",
            g.prompt_tokens,
            g.prefill.as_secs_f64() * 1e3,
            g.prompt_tokens as f64 / g.prefill.as_secs_f64().max(1e-9),
            g.tokens.len(),
            g.decode_steps,
            g.decode.as_secs_f64() * 1e3,
            n / g.decode.as_secs_f64().max(1e-9),
            g.stop
        );
    }
    Ok(())
}

fn write_logits(path: &Path, n: usize, vocab: usize, logits: &[f32]) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + logits.len() * 4);
    buf.extend_from_slice(&(n as i32).to_le_bytes());
    buf.extend_from_slice(&(vocab as i32).to_le_bytes());
    for v in logits {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, buf).map_err(|e| Error::io(path.display().to_string(), e))
}
