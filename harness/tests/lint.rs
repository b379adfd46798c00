//! Every lint rule fires on a file crafted to break it, and stays silent on good files.

use bitnet::gguf::{Gguf, GgufWriter, Value};
use bitnet_validate::lint::{lint, Report, Severity, RULES};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lint");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A good file: a tiny synthetic SiLU model on LLaMA-3's vocabulary (with its pre-tokenizer
/// key), built once.
fn good() -> &'static Path {
    static GOOD: OnceLock<PathBuf> = OnceLock::new();
    GOOD.get_or_init(|| {
        let out = tmp("good.gguf");
        let vocab = bitnet::env::shared_path("tokenizers/ggml-vocab-llama-bpe.gguf")
            .unwrap_or_else(|e| panic!("missing shared test data: {e}"));
        let opts =
            bitnet::convert::synth::SynthOptions::parse("i2_s", "f16", 3, None, Default::default())
                .unwrap();
        bitnet::convert::synth::synth_file(
            bitnet::convert::synth::Preset::parse("tiny").unwrap(),
            Some(&vocab),
            &opts,
            &out,
            &mut |_, _| {},
        )
        .unwrap();
        out
    })
}

/// Maps a tensor's (name, bytes) to its new bytes, or None to drop it.
type DataEdit<'a> = &'a dyn Fn(&str, &[u8]) -> Option<Vec<u8>>;

/// A copy of the good file with metadata edited by `meta` (None drops a key; `extra` adds
/// keys) and tensor data by `data` (name, bytes) -> bytes.
fn craft(
    name: &str,
    meta: &dyn Fn(&str, &Value) -> Option<Value>,
    extra: &[(&str, Value)],
    data: DataEdit,
) -> PathBuf {
    let g = Gguf::open(good()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if let Some(v) = meta(k, v) {
            w.kv(k, v);
        }
    }
    for (k, v) in extra {
        w.kv(k, v.clone());
    }
    let kept: Vec<_> = g
        .tensors()
        .iter()
        .filter(|t| data(&t.name, g.tensor_data(t)).is_some())
        .collect();
    for t in &kept {
        w.tensor(&t.name, &t.dims, t.ty);
    }
    let out = tmp(name);
    w.write_file(&out, |i, o| {
        o.write_all(&data(&kept[i].name, g.tensor_data(kept[i])).unwrap())
    })
    .unwrap();
    out
}

fn same(_: &str, v: &Value) -> Option<Value> {
    Some(v.clone())
}
fn same_data(_: &str, b: &[u8]) -> Option<Vec<u8>> {
    Some(b.to_vec())
}

fn fired(r: &Report, rule: &str) -> Option<Severity> {
    r.findings
        .iter()
        .find(|f| f.rule == rule)
        .map(|f| f.severity)
}

#[track_caller]
fn assert_fires(path: &Path, rule: &str, severity: Severity) {
    let r = lint(path);
    assert_eq!(
        fired(&r, rule),
        Some(severity),
        "{rule} on {}: {}",
        path.display(),
        bitnet_validate::lint::text(&r)
    );
}

#[test]
fn good_files_are_clean() {
    let r = lint(good());
    assert_eq!(
        (r.errors, r.warnings),
        (0, 0),
        "{}",
        bitnet_validate::lint::text(&r)
    );
    // Only facts are reported about it.
    assert!(r.findings.iter().all(|f| f.severity == Severity::Info));
}

#[test]
fn every_rule_fires_on_a_file_crafted_to_break_it() {
    let mut covered = std::collections::BTreeSet::new();
    let mut check = |path: PathBuf, rule: &'static str, sev: Severity| {
        assert_fires(&path, rule, sev);
        covered.insert(rule);
    };

    // gguf: not a GGUF at all.
    let trunc = tmp("truncated.gguf");
    std::fs::write(&trunc, &std::fs::read(good()).unwrap()[..100]).unwrap();
    check(trunc, "gguf", Severity::Error);

    // model-load: a layer tensor missing.
    let missing = craft("missing-tensor.gguf", &same, &[], &|n, b| {
        (n != "blk.0.ffn_up.weight").then(|| b.to_vec())
    });
    check(missing, "model-load", Severity::Error);

    // pre-tokenizer-missing: the published layout (no key) on LLaMA-3's vocabulary.
    let published = tmp("published.gguf");
    bitnet::convert::to_published_layout(good(), &published, &|_, v| Some(v)).unwrap();
    check(
        published.clone(),
        "pre-tokenizer-missing",
        Severity::Warning,
    );
    // chat-template-placeholder: the same file's template.
    check(published, "chat-template-placeholder", Severity::Warning);

    // pre-tokenizer-unknown: no key, and a vocabulary no fingerprint matches; or a bad name.
    let unknown = craft(
        "unknown-vocab.gguf",
        &|k, v| match (k, v) {
            ("tokenizer.ggml.pre", _) => None,
            ("tokenizer.ggml.tokens", Value::Array(t, a)) => {
                let mut a = a.clone();
                a[300] = Value::String("zzzunlikely".into());
                Some(Value::Array(*t, a))
            }
            _ => Some(v.clone()),
        },
        &[],
        &same_data,
    );
    check(unknown, "pre-tokenizer-unknown", Severity::Error);
    let bad_pre = craft(
        "bad-pre.gguf",
        &|k, v| match k {
            "tokenizer.ggml.pre" => Some(Value::String("no-such-split".into())),
            _ => Some(v.clone()),
        },
        &[],
        &same_data,
    );
    check(bad_pre, "pre-tokenizer-unknown", Severity::Error);

    // activation-arch: bitnet-b1.58 told silu (error); bitnet told relu2 (warning).
    let b158_silu = tmp("b158-silu.gguf");
    bitnet::convert::to_published_layout(good(), &b158_silu, &|_, v| Some(v)).unwrap();
    let b158_silu = {
        let g = Gguf::open(&b158_silu).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in g.metadata() {
            w.kv(k, v.clone());
        }
        w.kv(
            "bitnet-b1.58.hidden_activation",
            Value::String("silu".into()),
        );
        for t in g.tensors() {
            w.tensor(&t.name, &t.dims, t.ty);
        }
        let out = tmp("b158-silu-key.gguf");
        w.write_file(&out, |i, o| o.write_all(g.tensor_data(&g.tensors()[i])))
            .unwrap();
        out
    };
    check(b158_silu, "activation-arch", Severity::Error);
    let relu2 = craft(
        "bitnet-relu2.gguf",
        &|k, v| (k != "bitnet.hidden_activation").then(|| v.clone()),
        &[("bitnet.hidden_activation", Value::String("relu2".into()))],
        &same_data,
    );
    check(relu2, "activation-arch", Severity::Warning);

    // chat-template-fails: a syntax error; a template that never finishes.
    for (name, t) in [
        ("template-syntax.gguf", "{% if %}oops"),
        (
            "template-loops.gguf",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        ),
        ("template-drops.gguf", "{{ bos_token }}"),
    ] {
        let f = craft(
            name,
            &|k, v| (k != "tokenizer.chat_template").then(|| v.clone()),
            &[("tokenizer.chat_template", Value::String(t.into()))],
            &same_data,
        );
        check(f, "chat-template-fails", Severity::Error);
    }
    // chat-template-missing: the good file has none (info).
    check(
        good().to_path_buf(),
        "chat-template-missing",
        Severity::Info,
    );

    // special-token-ids: EOS outside the vocabulary.
    let eos = craft(
        "eos-out-of-range.gguf",
        &|k, v| match k {
            "tokenizer.ggml.eos_token_id" => Some(Value::U32(1 << 30)),
            _ => Some(v.clone()),
        },
        &[],
        &same_data,
    );
    check(eos, "special-token-ids", Severity::Error);
    // eos-missing: no EOS, no EOT.
    let no_eos = craft(
        "no-eos.gguf",
        &|k, v| (!k.ends_with("eos_token_id") && !k.ends_with("eot_token_id")).then(|| v.clone()),
        &[],
        &same_data,
    );
    check(no_eos, "eos-missing", Severity::Warning);

    // tied-head: no output.weight.
    let tied = craft("tied.gguf", &same, &[], &|n, b| {
        (n != "output.weight").then(|| b.to_vec())
    });
    check(tied, "tied-head", Severity::Info);

    // norm-values: NaN (error), all zero (error), subnormal (warning).
    for (name, value, sev) in [
        ("norm-nan.gguf", f32::NAN, Severity::Error),
        ("norm-zero.gguf", 0.0, Severity::Error),
        ("norm-subnormal.gguf", 1e-40, Severity::Warning),
    ] {
        let f = craft(name, &same, &[], &|n, b| {
            Some(if n == "blk.1.attn_norm.weight" {
                b.chunks_exact(4)
                    .flat_map(|_| value.to_le_bytes())
                    .collect()
            } else {
                b.to_vec()
            })
        });
        check(f, "norm-values", sev);
    }

    // vocab-consistency: token types one short; a merge of tokens that do not exist.
    let short = craft(
        "types-short.gguf",
        &|k, v| match (k, v) {
            ("tokenizer.ggml.token_type", Value::Array(t, a)) => {
                Some(Value::Array(*t, a[..a.len() - 1].to_vec()))
            }
            _ => Some(v.clone()),
        },
        &[],
        &same_data,
    );
    check(short, "vocab-consistency", Severity::Error);
    let merge = craft(
        "bad-merge.gguf",
        &|k, v| match (k, v) {
            ("tokenizer.ggml.merges", Value::Array(t, a)) => {
                let mut a = a.clone();
                a[0] = Value::String("qqqx yyyz".into());
                Some(Value::Array(*t, a))
            }
            _ => Some(v.clone()),
        },
        &[],
        &same_data,
    );
    check(merge, "vocab-consistency", Severity::Error);

    // file-type: says TQ2_0, holds I2_S.
    let ft = craft(
        "file-type.gguf",
        &|k, v| match k {
            "general.file_type" => Some(Value::U32(37)),
            _ => Some(v.clone()),
        },
        &[],
        &same_data,
    );
    check(ft, "file-type", Severity::Warning);

    let all: std::collections::BTreeSet<&str> = RULES.iter().map(|r| r.0).collect();
    assert_eq!(covered, all, "every rule has a crafted file");
}

#[test]
fn the_readme_lists_every_rule() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for (id, _, _) in RULES {
        assert!(
            readme.contains(&format!("| `{id}` |")),
            "README lacks rule {id}"
        );
    }
}
