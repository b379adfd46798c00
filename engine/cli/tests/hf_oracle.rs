//! Oracle 1, Hugging Face transformers: tiny random `BitNetForCausalLM` checkpoints made by
//! transformers itself in each of its three layouts (`crossval/hf/make_fixtures.py`, which
//! also recorded transformers' float32 logits, teacher-forced over fixed tokens) are converted
//! by `bitnet convert hf` and must reproduce those logits: per-position cosine >= 0.999 and
//! the same top-1 wherever transformers' top-2 margin exceeds 0.5. The tokenizer built from
//! tokenizer.json must give transformers' token ids for the fixture's text. Malformed
//! checkpoints are typed errors (exit 3) that leave no file behind.

#[path = "../../core/tests/common/mod.rs"]
mod common;
use bitnet::convert::{hf, EmbedFormat, FloatFormat, WeightFormat};
use bitnet::model::Model;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crossval/hf/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    assert_eq!(
        v.len(),
        6,
        "three layouts x two shapes in {}",
        dir.display()
    );
    v
}

fn top2(row: &[f32]) -> (usize, f32) {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    (idx[0], row[idx[0]] - row[idx[1]])
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Converts `dir` with `weights` and compares with transformers' logits; returns a summary.
fn check(dir: &Path, weights: WeightFormat) -> String {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let out = tmp(&format!(
        "hf-{name}-{weights:?}-{}.gguf",
        std::process::id()
    ));
    let opts = hf::Options {
        weights,
        embedding: EmbedFormat::Float(FloatFormat::F32),
        tokenizer_pre: None,
    };
    hf::convert(dir, &out, opts, &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap();
    let ids: Vec<u32> = tokens["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    // Our tokenizer from tokenizer.json gives transformers' ids (BOS included).
    let g = bitnet::gguf::Gguf::open(&out).unwrap();
    let tok = bitnet::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(
        tok.encode(tokens["text"].as_str().unwrap(), true, false),
        ids,
        "{name}: tokenization"
    );
    let m = Model::load(&out).unwrap();
    let ours = bitnet::eval::teacher_forced_logits(
        &mut bitnet::session::Session::new(&m),
        &ids,
        bitnet::eval::Mode::Seq,
    )
    .unwrap();
    let (n, v, want) = read_logits(&dir.join("logits_f32.bin"));
    assert_eq!((n, v), (ids.len(), m.config.vocab_size), "{name}: shape");
    let (mut min_cos, mut max_abs, mut decisive, mut agree) = (1f64, 0f32, 0, 0);
    for p in 0..n {
        let (a, b) = (&ours[p * v..(p + 1) * v], &want[p * v..(p + 1) * v]);
        min_cos = min_cos.min(cosine(a, b));
        max_abs = a
            .iter()
            .zip(b)
            .fold(max_abs, |m, (x, y)| m.max((x - y).abs()));
        let (top, margin) = top2(b);
        if margin > 0.5 {
            decisive += 1;
            if top2(a).0 == top {
                agree += 1;
            }
        }
    }
    let summary = format!(
        "{name} ({weights:?}): {n} positions, min cosine {min_cos:.6}, max |d| {max_abs:.4}, top-1 {agree}/{decisive} where transformers' margin > 0.5"
    );
    eprintln!("{summary}");
    assert!(min_cos >= 0.999, "{summary}");
    assert_eq!(agree, decisive, "{summary}");
    assert!(
        decisive * 3 >= n,
        "{summary}: too few decisive positions to judge"
    );
    summary
}

#[test]
fn converted_checkpoints_reproduce_transformers_logits() {
    for dir in fixtures() {
        check(&dir, WeightFormat::I2S);
    }
}

#[test]
fn every_weight_format_gives_transformers_logits() {
    // The GQA shape, in every other ternary format the converter writes. (`--weights f32`
    // stores value x scale as floats: a float model that skips the activation quantization,
    // so it is not compared with transformers.)
    let dir = fixtures()
        .into_iter()
        .find(|d| d.ends_with("bitlinear-b"))
        .unwrap();
    for w in [WeightFormat::TQ2_0, WeightFormat::TQ1_0, WeightFormat::TL2] {
        check(&dir, w);
    }
}

/// A copy of a fixture directory to damage.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let src = fixtures().into_iter().find(|d| d.ends_with(name)).unwrap();
    let dst = tmp(&format!("hf-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrites one tensor's header entry of a single-file checkpoint (dtype and/or shape).
fn edit_safetensors_header(path: &Path, f: impl FnOnce(&mut Value)) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    f(&mut h);
    let mut text = h.to_string().into_bytes();
    // Same header length, so the data offsets stay valid.
    assert!(text.len() <= n, "edited header grew");
    text.resize(n, b' ');
    let mut out = n.to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&b[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn malformed_checkpoints_are_typed_errors_and_write_nothing() {
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "missing shard",
            {
                let d = copy_fixture("bitlinear-b", "shard");
                std::fs::remove_file(d.join("model-00002-of-00003.safetensors")).unwrap();
                d
            },
            "missing shard",
        ),
        (
            "wrong dtype",
            {
                let d = copy_fixture("bitlinear-a", "dtype");
                edit_safetensors_header(&d.join("model.safetensors"), |h| {
                    h["model.layers.0.self_attn.q_proj.weight"]["dtype"] = "I8".into();
                });
                d
            },
            "dtype",
        ),
        (
            "shape mismatch",
            {
                let d = copy_fixture("bitlinear-a", "shape");
                edit_json(&d.join("config.json"), |c| {
                    c["intermediate_size"] = 192.into()
                });
                d
            },
            "shape",
        ),
        (
            "truncated safetensors header",
            {
                let d = copy_fixture("autobitlinear_offline-a", "trunc");
                let p = d.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..100]).unwrap();
                d
            },
            "model.safetensors",
        ),
        (
            "unknown linear_class",
            {
                let d = copy_fixture("bitlinear-a", "class");
                edit_json(&d.join("config.json"), |c| {
                    c["quantization_config"]["linear_class"] = "bitlinear2".into()
                });
                d
            },
            "linear_class",
        ),
        (
            "tokenizer.json without merges",
            {
                let d = copy_fixture("bitlinear-a", "merges");
                edit_json(&d.join("tokenizer.json"), |t| {
                    t["model"].as_object_mut().unwrap().remove("merges");
                });
                d
            },
            "merges",
        ),
    ];
    for (what, dir, needle) in cases {
        let out = dir.join("out.gguf");
        let r = bitnet()
            .args(["convert", "hf"])
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .args(["--weights", "f32"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(3), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert!(err.trim().lines().count() == 1, "{what}: one line: {err}");
        assert!(!out.exists(), "{what}: nothing written");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: partial file left");
    }
}
