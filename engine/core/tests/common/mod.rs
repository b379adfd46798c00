//! Shared test support (also compiled into the `bitnet-cli` tests, by path): paths to the shared data, converted models built once per test binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// A file in the shared data directory; panics with a clear message when it is missing.
pub fn shared(rel: &str) -> PathBuf {
    bitnet::env::shared_path(rel).unwrap_or_else(|e| panic!("{e}"))
}

pub fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

static CONVERT: Mutex<()> = Mutex::new(());

/// The bitllama2c-3m model converted with the given weight and embedding formats (cached
/// in the target's temp dir for the life of this test binary's run).
pub fn converted(weights: &str, embedding: &str) -> PathBuf {
    let _guard = CONVERT.lock().unwrap_or_else(|e| e.into_inner());
    let out = tmp(&format!(
        "bitllama2c-{weights}-{embedding}-{}.gguf",
        std::process::id()
    ));
    if !out.exists() {
        let w = bitnet::convert::WeightFormat::parse(weights).unwrap();
        let e = bitnet::convert::FloatFormat::parse(embedding).unwrap();
        bitnet::convert::llama2c::convert(
            &shared("models/bitllama2c-3m/model.bin"),
            &shared("models/bitllama2c-3m/tokenizer.model"),
            &out,
            w,
            e,
            &mut |_, _| {},
        )
        .expect("conversion of the shared model");
    }
    out
}

/// The `bitnet` binary built for this test run (tests of the `bitnet-cli` package only).
pub fn bitnet() -> Command {
    match option_env!("CARGO_BIN_EXE_bitnet") {
        Some(exe) => Command::new(exe),
        None => panic!("the bitnet binary is built only for the tests of the bitnet-cli package"),
    }
}

/// The expected greedy text, read from the model's SOURCE.md (the quoted block after
/// "Expected greedy output (...):").
pub fn expected_greedy_text() -> String {
    let src = std::fs::read_to_string(shared("models/bitllama2c-3m/SOURCE.md")).unwrap();
    let at = src
        .find("Expected greedy output")
        .expect("SOURCE.md names the expected greedy output");
    // The block is the quoted text after the parenthesised settings (which quote the prompt).
    let rest = &src[at..];
    let rest = &rest[rest.find("):").expect("settings end with '):'")..];
    let start = rest.find('"').unwrap() + 1;
    let len = rest[start..].find('"').unwrap();
    let raw = &rest[start..start + len];
    let joined: Vec<&str> = raw.lines().map(str::trim).collect();
    joined.join(" ").replace("\\n", "\n").replace("\n ", "\n")
}

/// A copy of `src` in Microsoft's published 2B-4T metadata layout
/// ([`bitnet::convert::to_published_layout`]).
pub fn published_layout(
    src: &std::path::Path,
    out: &std::path::Path,
    edit: &dyn Fn(&str, bitnet::gguf::Value) -> Option<bitnet::gguf::Value>,
) {
    bitnet::convert::to_published_layout(src, out, edit).unwrap();
}

/// A tiny relu2 model with LLaMA-3's vocabulary (`bitnet synth`), and its copy in the published
/// 2B-4T layout: `(source, published)`, named after `tag`.
pub fn published_synth(tag: &str) -> (PathBuf, PathBuf) {
    let id = std::process::id();
    let src = tmp(&format!("{tag}-synth-relu2-bpe-{id}.gguf"));
    let st = bitnet()
        .args([
            "synth",
            "--preset",
            "tiny",
            "--activation",
            "relu2",
            "--vocab",
        ])
        .arg(shared("tokenizers/ggml-vocab-llama-bpe.gguf"))
        .arg("-o")
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let published = tmp(&format!("{tag}-published-layout-{id}.gguf"));
    published_layout(&src, &published, &|_, v| Some(v));
    (src, published)
}

/// A logits file (`bitnet logits`, the oracles): i32 n_tokens, i32 n_vocab, f32 row-major.
pub fn read_logits(path: &std::path::Path) -> (usize, usize, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = i32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
    let v = i32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let data: Vec<f32> = b[8..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(data.len(), n * v, "file length matches its header");
    (n, v, data)
}
