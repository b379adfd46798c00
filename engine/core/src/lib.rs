//! # bitnet — a BitNet b1.58 inference engine
//!
//! Reads GGUF files ([`gguf`]), computes with ternary and float weight formats ([`quant`]),
//! runs the `bitnet` architecture ([`model`]) with tokenizers read from GGUF metadata
//! ([`tokenizer`]), samples and generates text ([`sample`], [`generate`]), and converts
//! checkpoints into GGUF ([`convert`]). The `bitnet` binary ([`cli`]) exposes all of it.
//!
//! Invariants: every byte read from a file is bounds-checked before use; no environment
//! variable changes numerics (the few there are live in [`env`]); results are identical for any
//! thread count.

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
pub mod tokenizer;

pub use error::{Error, Result};
