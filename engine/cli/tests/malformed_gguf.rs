//! A corpus of malformed GGUF files, generated here from one valid tiny model: each class must
//! give a typed error from the library and make `bitnet inspect` exit 3 with a one-line
//! message — never a panic, never an allocation sized by the bad field.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use bitnet::gguf::{Gguf, GgufError, GgufWriter, Value, ValueType};
use bitnet::model::{Model, ModelError};
use bitnet::quant::{i2s, TensorType};
use bitnet::tokenizer::Tokenizer;
use bitnet::Error;
use std::sync::Arc;

const DIM: u64 = 128;
const FF: u64 = 256;
const VOCAB: usize = 4;

/// What to leave out of or change in the valid model.
#[derive(Default, Clone)]
struct Knobs {
    skip_tensor: Option<&'static str>,
    skip_key: Option<&'static str>,
    extra_token: bool,
    q_rows: Option<u64>,
    no_tokenizer: bool,
    extra_kv: Option<(&'static str, Value)>,
}

fn build(k: &Knobs) -> Vec<u8> {
    let mut w = GgufWriter::new();
    let mut kvs: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("bitnet".into())),
        ("bitnet.context_length", Value::U32(64)),
        ("bitnet.embedding_length", Value::U32(DIM as u32)),
        ("bitnet.block_count", Value::U32(1)),
        ("bitnet.feed_forward_length", Value::U32(FF as u32)),
        ("bitnet.attention.head_count", Value::U32(2)),
        ("bitnet.attention.head_count_kv", Value::U32(1)),
        ("bitnet.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    if !k.no_tokenizer {
        let mut tokens = vec!["<unk>", "<s>", "</s>", "\u{2581}a"];
        if k.extra_token {
            tokens.push("\u{2581}b");
        }
        kvs.push(("tokenizer.ggml.model", Value::String("llama".into())));
        kvs.push((
            "tokenizer.ggml.scores",
            Value::f32s(tokens.iter().map(|_| 0.0)),
        ));
        kvs.push((
            "tokenizer.ggml.token_type",
            Value::i32s([2, 3, 3, 1, 1].into_iter().take(tokens.len())),
        ));
        kvs.push(("tokenizer.ggml.tokens", Value::strings(tokens)));
        kvs.push(("tokenizer.ggml.bos_token_id", Value::U32(1)));
        kvs.push(("tokenizer.ggml.eos_token_id", Value::U32(2)));
    }
    if let Some((key, v)) = &k.extra_kv {
        kvs.push((key, v.clone()));
    }
    for (key, v) in kvs {
        if Some(key) != k.skip_key {
            w.kv(key, v);
        }
    }
    let kv = DIM / 2;
    let mut tensors: Vec<(String, Vec<u64>, TensorType)> = vec![(
        "token_embd.weight".into(),
        vec![DIM, VOCAB as u64],
        TensorType::F32,
    )];
    tensors.push(("output_norm.weight".into(), vec![DIM], TensorType::F32));
    let l = |s: &str| format!("blk.0.{s}.weight");
    for (name, dims) in [
        ("attn_norm", vec![DIM]),
        ("attn_q", vec![DIM, k.q_rows.unwrap_or(DIM)]),
        ("attn_k", vec![DIM, kv]),
        ("attn_v", vec![DIM, kv]),
        ("attn_sub_norm", vec![DIM]),
        ("attn_output", vec![DIM, DIM]),
        ("ffn_norm", vec![DIM]),
        ("ffn_gate", vec![DIM, FF]),
        ("ffn_up", vec![DIM, FF]),
        ("ffn_sub_norm", vec![FF]),
        ("ffn_down", vec![FF, DIM]),
    ] {
        let ty = if dims.len() == 1 {
            TensorType::F32
        } else {
            TensorType::I2S
        };
        tensors.push((l(name), dims, ty));
    }
    let tensors: Vec<_> = tensors
        .into_iter()
        .filter(|(n, _, _)| k.skip_tensor.is_none_or(|s| n != s))
        .collect();
    for (n, d, t) in &tensors {
        w.tensor(n, d, *t);
    }
    w.to_bytes(|i, out| {
        let (_, dims, ty) = &tensors[i];
        let n: u64 = dims.iter().product();
        let bytes = match ty {
            TensorType::I2S => {
                let vals: Vec<i8> = (0..n).map(|j| (j % 3) as i8 - 1).collect();
                i2s::pack(&vals, (n / dims[0]) as usize, dims[0] as usize, 0.5).unwrap()
            }
            _ => (0..n)
                .flat_map(|j| ((j % 7) as f32 * 0.1).to_le_bytes())
                .collect(),
        };
        out.write_all(&bytes)
    })
    .unwrap()
}

/// Everything a user-facing load does: container, tokenizer, model.
fn load(bytes: Vec<u8>) -> Result<(), Error> {
    let g = Arc::new(Gguf::from_bytes(bytes)?);
    Tokenizer::from_gguf(&g)?;
    Model::from_gguf(g)?;
    Ok(())
}

/// Byte position of the tensor info of `name` (its type field and offset field).
fn tensor_info(bytes: &[u8], name: &str) -> (usize, usize) {
    let pat = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("tensor info present")
        + pat.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    (ty, ty + 4)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

type Check = fn(&Error) -> bool;

fn corpus() -> Vec<(&'static str, Vec<u8>, Check)> {
    let valid = build(&Knobs::default());
    let mut c: Vec<(&'static str, Vec<u8>, Check)> = Vec::new();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = valid.clone();
        f(&mut b);
        b
    };
    c.push(("truncated header", valid[..12].to_vec(), |e| {
        matches!(e, Error::Gguf(GgufError::Truncated { .. }))
    }));
    let in_tokens = valid
        .windows(3)
        .position(|w| w == "\u{2581}".as_bytes())
        .unwrap()
        + 1;
    c.push(("truncated metadata", valid[..in_tokens].to_vec(), |e| {
        matches!(
            e,
            Error::Gguf(GgufError::Truncated { .. } | GgufError::StringPastEof { .. })
        )
    }));
    c.push((
        "truncated tensor data",
        valid[..valid.len() - 1000].to_vec(),
        |e| matches!(e, Error::Gguf(GgufError::DataOutOfFile { .. })),
    ));
    c.push((
        "bad magic",
        with(&|b| b[..4].copy_from_slice(b"GGUX")),
        |e| matches!(e, Error::Gguf(GgufError::BadMagic { .. })),
    ));
    c.push(("unsupported version", with(&|b| put_u32(b, 4, 1)), |e| {
        matches!(e, Error::Gguf(GgufError::UnsupportedVersion(1)))
    }));
    c.push((
        "absurd tensor count",
        with(&|b| put_u64(b, 8, u64::MAX / 3)),
        |e| {
            matches!(
                e,
                Error::Gguf(GgufError::AbsurdCount { what: "tensor", .. })
            )
        },
    ));
    c.push(
        ("absurd kv count", with(&|b| put_u64(b, 16, 1 << 40)), |e| {
            matches!(
                e,
                Error::Gguf(GgufError::AbsurdCount {
                    what: "metadata",
                    ..
                })
            )
        }),
    );
    c.push((
        "string length past EOF",
        with(&|b| put_u64(b, 24, 1 << 40)),
        |e| matches!(e, Error::Gguf(GgufError::StringPastEof { .. })),
    ));
    c.push((
        "unknown value type",
        with(&|b| {
            let key_len = get_u64(b, 24) as usize;
            put_u32(b, 32 + key_len, 99)
        }),
        |e| matches!(e, Error::Gguf(GgufError::UnknownValueType { ty: 99, .. })),
    ));
    c.push((
        "unknown tensor type",
        with(&|b| {
            let (ty, _) = tensor_info(b, "blk.0.attn_q.weight");
            put_u32(b, ty, 77)
        }),
        |e| matches!(e, Error::Gguf(GgufError::UnknownTensorType { ty: 77, .. })),
    ));
    c.push((
        "TL1 tensor (recognised, not supported)",
        with(&|b| {
            let (ty, _) = tensor_info(b, "blk.0.attn_q.weight");
            put_u32(b, ty, 38)
        }),
        |e| {
            matches!(
                e,
                Error::Gguf(GgufError::UnsupportedTensorType { ty: "TL1", .. })
            )
        },
    ));
    c.push((
        "TL2 tensor without its scale tensor",
        with(&|b| {
            let (ty, _) = tensor_info(b, "blk.0.attn_q.weight");
            put_u32(b, ty, 39)
        }),
        |e| {
            matches!(
                e,
                Error::Model(bitnet::model::ModelError::TensorFormat {
                    source: bitnet::quant::FormatError::MissingScale(_),
                    ..
                })
            )
        },
    ));
    c.push((
        "data out of file",
        with(&|b| {
            let (_, off) = tensor_info(b, "blk.0.ffn_gate.weight");
            put_u64(b, off, 1 << 30)
        }),
        |e| matches!(e, Error::Gguf(GgufError::DataOutOfFile { .. })),
    ));
    c.push((
        "misaligned offset",
        with(&|b| {
            let (_, off) = tensor_info(b, "blk.0.ffn_gate.weight");
            let v = get_u64(b, off);
            put_u64(b, off, v + 4)
        }),
        |e| matches!(e, Error::Gguf(GgufError::MisalignedOffset { .. })),
    ));
    c.push((
        "overlapping tensors",
        with(&|b| {
            let (_, a) = tensor_info(b, "blk.0.ffn_gate.weight");
            let (_, u) = tensor_info(b, "blk.0.ffn_up.weight");
            let v = get_u64(b, a);
            put_u64(b, u, v + 32)
        }),
        |e| matches!(e, Error::Gguf(GgufError::Overlap { .. })),
    ));
    c.push((
        "byte size != shape x type (Q8_0 row of 128 in a 1-D 100-element tensor)",
        with(&|b| {
            let (ty, _) = tensor_info(b, "blk.0.attn_norm.weight");
            put_u64(b, ty - 8, 100);
            put_u32(b, ty, 8)
        }),
        |e| matches!(e, Error::Gguf(GgufError::BlockMismatch { ty: "Q8_0", .. })),
    ));
    c.push((
        "I2_S size wrong (row length 64, not a multiple of 128)",
        with(&|b| {
            let (ty, _) = tensor_info(b, "blk.0.attn_q.weight");
            put_u64(b, ty - 16, 64);
            put_u64(b, ty - 8, 256)
        }),
        |e| matches!(e, Error::Gguf(GgufError::BlockMismatch { ty: "I2_S", .. })),
    ));
    c.push((
        "I2_S scale trailer missing",
        valid[..valid.len() - 32].to_vec(),
        |e| matches!(e, Error::Gguf(GgufError::DataOutOfFile { .. })),
    ));
    c.push((
        "missing tensor",
        build(&Knobs {
            skip_tensor: Some("blk.0.ffn_up.weight"),
            ..Default::default()
        }),
        |e| matches!(e, Error::Model(ModelError::MissingTensor(_))),
    ));
    c.push((
        "missing key",
        build(&Knobs {
            skip_key: Some("bitnet.block_count"),
            ..Default::default()
        }),
        |e| matches!(e, Error::Model(ModelError::MissingKey(_))),
    ));
    c.push((
        "vocab size != embedding rows",
        build(&Knobs {
            extra_token: true,
            ..Default::default()
        }),
        |e| {
            matches!(
                e,
                Error::Model(ModelError::VocabMismatch { .. }) | Error::Tokenizer(_)
            )
        },
    ));
    c.push((
        "tensor shape mismatch",
        build(&Knobs {
            q_rows: Some(DIM / 2),
            ..Default::default()
        }),
        |e| matches!(e, Error::Model(ModelError::Shape { .. })),
    ));
    c.push((
        "no tokenizer",
        build(&Knobs {
            no_tokenizer: true,
            ..Default::default()
        }),
        |e| matches!(e, Error::Tokenizer(_)),
    ));
    c.push((
        "bad alignment",
        build(&Knobs {
            extra_kv: Some(("general.alignment", Value::U32(48))),
            ..Default::default()
        }),
        |e| matches!(e, Error::Gguf(GgufError::BadAlignment(48))),
    ));
    c.push((
        "wrong value type for a hyperparameter",
        build(&Knobs {
            extra_kv: Some(("bitnet.rope.freq_base", Value::String("x".into()))),
            ..Default::default()
        }),
        |e| {
            matches!(
                e,
                Error::Model(ModelError::Gguf(GgufError::WrongValueType { .. }))
            )
        },
    ));
    let nested = (0..20).fold(Value::Array(ValueType::U8, vec![]), |v, _| {
        Value::Array(ValueType::Array, vec![v])
    });
    let deep = build(&Knobs {
        extra_kv: Some(("test.deep", nested)),
        ..Default::default()
    });
    c.push(("arrays nested too deep", deep, |e| {
        matches!(e, Error::Gguf(GgufError::ArrayTooDeep { .. }))
    }));
    c.push((
        "invalid bool",
        with(&|b| {
            // Make the first key's value a bool with byte 7: replace the architecture string
            // value type with bool and its length's first byte with 7.
            let key_len = get_u64(b, 24) as usize;
            put_u32(b, 32 + key_len, 7);
            b[36 + key_len] = 7;
        }),
        |e| matches!(e, Error::Gguf(GgufError::InvalidBool { byte: 7, .. })),
    ));
    c
}

#[test]
fn the_valid_model_loads() {
    load(build(&Knobs::default())).expect("the corpus's base model is valid");
}

#[test]
fn a_huge_declared_context_allocates_only_what_is_used() {
    // 2^24 positions x 64 KV floats x 2 would be 8 GiB up front; the cache grows with use.
    let bytes = build(&Knobs {
        extra_kv: Some(("bitnet.context_length", Value::U32(1 << 24))),
        ..Default::default()
    });
    let m = Model::from_gguf(Arc::new(Gguf::from_bytes(bytes).unwrap())).unwrap();
    assert_eq!(m.config.context_length, 1 << 24);
    let mut st = m.new_state();
    let logits = bitnet::session::Session::new(&m)
        .forward(&mut st, &[1, 3, 3], true)
        .unwrap();
    assert_eq!(logits.len(), 3 * VOCAB);
}

#[test]
fn every_malformed_class_gives_its_typed_error() {
    let corpus = corpus();
    assert!(corpus.len() >= 15);
    for (name, bytes, check) in corpus {
        match load(bytes) {
            Ok(()) => panic!("{name}: loaded without error"),
            Err(e) => {
                assert!(check(&e), "{name}: unexpected error {e:?}");
                let msg = e.to_string();
                assert!(
                    !msg.contains('\n'),
                    "{name}: message is not one line: {msg}"
                );
            }
        }
    }
}

#[test]
fn inspect_rejects_every_malformed_file_with_one_line() {
    for (i, (name, bytes, _)) in corpus().into_iter().enumerate() {
        let path = common::tmp(&format!("malformed-{i}-{}.gguf", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let out = common::bitnet().arg("inspect").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{name}: exit {:?}, stderr {stderr}",
            out.status.code()
        );
        assert!(!stderr.contains("panicked"), "{name}: panicked: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{name}: not one line: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{name}: {stderr}");
        std::fs::remove_file(&path).ok();
    }
}
