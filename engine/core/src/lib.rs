//! # bitnet — BitNet b1.58 inference as a library
//!
//! Reads GGUF files ([`gguf`]), computes with ternary and float weight formats ([`quant`]:
//! one [`quant::Format`] row per format carries its kernels), holds the `bitnet` architecture's
//! weights ([`model`]) and runs them ([`session`]: threads, instruction set, buffers, kernel
//! counters), with tokenizers read from GGUF metadata ([`tokenizer`]); samples and generates
//! text ([`sample`], [`generate`]), evaluates ([`eval`]), converts checkpoints into GGUF
//! ([`convert`]) and records what a run did ([`receipt`]). The `bitnet` command is the
//! `bitnet-cli` crate; the HTTP server is `bitnet-server`. This crate needs no async runtime,
//! no command-line parser and no template engine.
//!
//! ```
//! use bitnet::generate::{generate, GenerateOptions};
//! use bitnet::model::Model;
//! use bitnet::sample::SamplerParams;
//! use bitnet::session::Session;
//! use bitnet::tokenizer::Tokenizer;
//! # use bitnet::convert::{self, FloatFormat, WeightFormat};
//! # let dir = bitnet::env::shared_path("models/bitllama2c-3m")?;
//! # let path = std::env::temp_dir().join(format!("bitnet-doc-{}.gguf", std::process::id()));
//! # convert::llama2c::convert(&dir.join("model.bin"), &dir.join("tokenizer.model"), &path,
//! #     WeightFormat::I2S, FloatFormat::F16, &mut |_, _| {})?;
//!
//! let model = Model::load(&path)?;
//! let tok = Tokenizer::from_gguf(&model.file)?;
//! let mut session = Session::new(&model).with_threads(2);
//! let prompt = tok.encode("Once upon a time", true, false);
//! let opts = GenerateOptions {
//!     max_tokens: 16,
//!     sampler: SamplerParams { seed: 7, ..SamplerParams::default() },
//!     stop: vec![],
//!     ignore_eos: false,
//! };
//! let a = generate(&mut session, &tok, &prompt, &opts, &mut |_| true)?;
//! // The same seed gives the same text, whatever the thread count.
//! let mut one = Session::new(&model).with_threads(1);
//! let b = generate(&mut one, &tok, &prompt, &opts, &mut |_| true)?;
//! assert_eq!(a.text, b.text);
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Invariants: every byte read from a file is bounds-checked before use; no environment
//! variable changes numerics (the few there are live in [`env`]); results are identical for any
//! thread count, instruction set and batch composition.

pub mod attention;
pub mod convert;
pub mod env;
pub mod error;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod measure;
pub mod model;
pub mod pool;
pub mod quant;
pub mod receipt;
pub mod sample;
pub mod session;
pub mod tokenizer;

pub use error::{Error, Result};
