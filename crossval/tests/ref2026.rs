//! Oracle 2, the BitNet.cpp users run today (January 2026, crates.io `bitnet-llm-sys` =1.0.2,
//! the `ref2026` executable this crate builds):
//! - on the real model (arch `bitnet`, SiLU) it gives the 2024 reference's logits bit for bit
//!   (same I2_S layout and kernels' arithmetic), which checks the build itself;
//! - on files in Microsoft's published 2B-4T layout (arch `bitnet-b1.58`: relu2, LLaMA-3
//!   vocabulary, GQA, rope theta 500000), the only layout whose relu2 it computes, the engine
//!   agrees with it: per-position cosine >= 0.999 and the same top-1 wherever the reference's
//!   top-2 margin exceeds 0.5 (closer positions are counted and reported as near-ties).

use bitnet::gguf::Value;
use bitnet_crossval::{ref2026, RefModel};
use std::path::{Path, PathBuf};

fn shared(rel: &str) -> PathBuf {
    bitnet::env::shared_path(rel).unwrap_or_else(|e| panic!("missing shared test data: {e}"))
}

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()))
}

#[test]
fn on_the_bitnet_arch_the_2026_reference_equals_the_2024_one_bit_for_bit() {
    let model = tmp("ref2026-bitllama2c.gguf");
    bitnet::convert::llama2c::convert(
        &shared("models/bitllama2c-3m/model.bin"),
        &shared("models/bitllama2c-3m/tokenizer.model"),
        &model,
        bitnet::convert::WeightFormat::I2S,
        bitnet::convert::FloatFormat::F32,
        &mut |_, _| {},
    )
    .unwrap();
    let tok = bitnet::tokenizer::Tokenizer::from_gguf(&bitnet::gguf::Gguf::open(&model).unwrap())
        .unwrap();
    let tokens = tok.encode(
        "Once upon a time, there was a little girl named Lily.",
        true,
        false,
    );
    let mut r24 = RefModel::load(&model, 64, 1).unwrap();
    for batch in [false, true] {
        let (v, r26) = ref2026::logits(&model, &tokens, batch, 1).unwrap();
        assert_eq!(v, 512);
        let old = r24.logits(&tokens, batch).unwrap();
        let same = r26
            .iter()
            .zip(&old)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        assert_eq!(same, old.len(), "batch={batch}: 2026 vs 2024 reference");
    }
}

fn top2(row: &[f32]) -> (usize, f32) {
    let (mut i1, mut i2) = (0, usize::MAX);
    for (i, &x) in row.iter().enumerate() {
        if x > row[i1] || i == 0 {
            if i != 0 {
                i2 = i1;
            }
            i1 = i;
        } else if i2 == usize::MAX || x > row[i2] {
            i2 = i;
        }
    }
    (i1, row[i1] - row[i2])
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn on_the_published_b158_layout_the_engine_agrees_with_the_2026_reference() {
    // A relu2 model with LLaMA-3's vocabulary and GQA (8 heads, 2 KV), rewritten to the
    // published layout, rope theta 500000 as 2B-4T.
    let src = tmp("ref2026-synth.gguf");
    let opts = bitnet::convert::synth::SynthOptions::parse(
        "i2_s",
        "f16",
        11,
        Some("relu2"),
        Default::default(),
    )
    .unwrap();
    bitnet::convert::synth::synth_file(
        bitnet::convert::synth::Preset::parse("tiny").unwrap(),
        Some(&shared("tokenizers/ggml-vocab-llama-bpe.gguf")),
        &opts,
        &src,
        &mut |_, _| {},
    )
    .unwrap();
    let model = tmp("ref2026-published.gguf");
    bitnet::convert::to_published_layout(&src, &model, &|k, v| match k {
        "bitnet-b1.58.rope.freq_base" => Some(Value::F32(500000.0)),
        _ => Some(v),
    })
    .unwrap();
    let m = bitnet::model::Model::load(&model).unwrap();
    assert_eq!(m.config.arch, "bitnet-b1.58");
    assert_eq!(m.config.rope_theta, 500000.0);
    assert!(m.config.n_kv_heads < m.config.n_heads);
    let tok = bitnet::tokenizer::Tokenizer::from_gguf(&bitnet::gguf::Gguf::open(&model).unwrap())
        .unwrap();
    let text = "The quick brown fox jumps over the lazy dog. In 2026, ternary weights ran on CPUs \
                at the speed of memory; 1.58 bits per weight, and every product exact.";
    let tokens = tok.encode(text, true, false);
    assert!(tokens.len() >= 30);
    let ours = bitnet::eval::teacher_forced_logits(
        &mut bitnet::session::Session::new(&m),
        &tokens,
        bitnet::eval::Mode::Seq,
    )
    .unwrap();
    let v = m.config.vocab_size;
    for batch in [false, true] {
        let (rv, theirs) = ref2026::logits(&model, &tokens, batch, 1).unwrap();
        assert_eq!(rv, v);
        let (mut min_cos, mut decisive, mut agree, mut near) = (1f64, 0, 0, 0);
        for p in 0..tokens.len() {
            let (a, b) = (&ours[p * v..(p + 1) * v], &theirs[p * v..(p + 1) * v]);
            min_cos = min_cos.min(cosine(a, b));
            let (top, margin) = top2(b);
            if margin > 0.5 {
                decisive += 1;
                agree += usize::from(top2(a).0 == top);
            } else {
                near += 1;
            }
        }
        let summary = format!(
            "ours vs BitNet.cpp 2026 ({}): {} positions, min cosine {min_cos:.6}, top-1 {agree}/{decisive} where its margin > 0.5, {near} near-ties",
            if batch { "batch" } else { "seq" },
            tokens.len()
        );
        eprintln!("{summary}");
        assert!(min_cos >= 0.999, "{summary}");
        assert_eq!(agree, decisive, "{summary}");
    }
}
