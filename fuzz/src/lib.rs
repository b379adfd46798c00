//! Shared pieces of the fuzz targets (`fuzz_targets/*.rs`): splitting one input into parts,
//! and the real vocabularies of the shared data.

/// The receipt audit of `bitnet-validate`, compiled by path (see Cargo.toml).
#[path = "../../harness/src/audit.rs"]
pub mod audit;

use std::sync::OnceLock;

/// Splitting multi-part inputs: the same file the workspace's regression tests use (its
/// `inputs` reads `fuzz/regressions/`, which only those tests call).
#[path = "../../engine/core/tests/common/fuzz_inputs.rs"]
mod fuzz_inputs;
pub use fuzz_inputs::{parts, SPLIT};

/// llama.cpp's LLaMA-3 BPE and LLaMA SentencePiece vocabularies, loaded once. A fuzz run
/// without them is useless, so their absence stops it with a message.
pub fn vocabularies() -> &'static [bitnet::tokenizer::Tokenizer; 2] {
    static V: OnceLock<[bitnet::tokenizer::Tokenizer; 2]> = OnceLock::new();
    V.get_or_init(|| {
        let load = |name: &str| {
            let p = bitnet::env::shared_path(&format!("tokenizers/{name}"))
                .unwrap_or_else(|e| panic!("{e}"));
            let g = bitnet::gguf::Gguf::open(&p)
                .unwrap_or_else(|e| panic!("{}: {e} (set BITNET_SHARED)", p.display()));
            bitnet::tokenizer::Tokenizer::from_gguf(&g)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        [
            load("ggml-vocab-llama-bpe.gguf"),
            load("ggml-vocab-llama-spm.gguf"),
        ]
    })
}
