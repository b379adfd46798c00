//! Writes the seed corpora of `fuzz/` (the cargo-fuzz targets) with the engine's own writers:
//! tiny models in every weight format, with a SentencePiece-style and a byte-level BPE
//! vocabulary; texts for the tokenizers; and Hugging Face checkpoints cut down from the
//! transformers-made fixtures in `crossval/hf/fixtures`. Run from the repository root:
//!
//! ```text
//! cargo run --release -p bitnet --example fuzz_seeds -- fuzz/corpus
//! ```
//!
//! Files are named by content and the same run writes the same bytes, so rerunning it leaves
//! the committed corpora unchanged. The chat-template, request and receipt seeds are written
//! by hand or by `bitnet run --receipt` (see `fuzz/README.md`).

use bitnet::convert::synth::{synth, Preset, ShapeOverrides, SynthOptions};
use bitnet::convert::{EmbedFormat, Vocab, WeightFormat};
use bitnet::model::Activation;
use serde_json::Value;
use std::path::{Path, PathBuf};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// GPT-2's map from bytes to the printable characters byte-level BPE vocabularies store.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE vocabulary: the 256 byte characters, a few merges, three specials.
fn bpe_vocab() -> Vocab {
    let bytes = byte_chars();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    let merges: Vec<String> = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![1; tokens.len()];
    for s in ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"] {
        tokens.push(s.into());
        types.push(3);
    }
    let n = tokens.len() as u32;
    Vocab {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        scores: vec![0.0; tokens.len()],
        tokens,
        types,
        merges,
        bos: Some(n - 3),
        eos: Some(n - 2),
        eot: Some(n - 1),
        unk: None,
        add_bos: true,
        add_space_prefix: None,
        chat_template: Some(
            "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}".into(),
        ),
    }
}

/// A SentencePiece-style vocabulary: unknown, BOS, EOS, the 256 byte tokens, some pieces.
fn spm_vocab() -> Vocab {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        "▁", "e", "t", "a", "o", "n", "h", "s", "▁t", "he", "▁the", "▁a", "in", "er", "▁s", "on",
        "é", "日", "本",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(-(i as f32));
    }
    Vocab {
        model: "llama".into(),
        pre: Some("default".into()),
        tokens,
        scores,
        types,
        merges: Vec::new(),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        eot: None,
        add_bos: true,
        add_space_prefix: Some(true),
        chat_template: None,
    }
}

fn write_named(dir: &Path, stem: &str, bytes: &[u8]) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(stem), bytes)?;
    println!("{} ({} bytes)", dir.join(stem).display(), bytes.len());
    Ok(())
}

/// A seed model: file name, weight format, vocabulary, FFN activation, shape.
type Case<'a> = (
    &'a str,
    WeightFormat,
    fn() -> Vocab,
    Activation,
    &'a ShapeOverrides,
);

fn gguf_seeds(out: &Path) -> Res<()> {
    let tmp = std::env::temp_dir().join(format!("fuzz-seed-{}.gguf", std::process::id()));
    let shape = ShapeOverrides {
        dim: Some(128),
        hidden_dim: Some(128),
        n_layers: Some(1),
        n_heads: Some(2),
        n_kv_heads: Some(1),
    };
    // TQ blocks are 256 values wide: those two get a 256-wide model.
    let wide = ShapeOverrides {
        dim: Some(256),
        hidden_dim: Some(256),
        ..shape.clone()
    };
    let cases: [Case; 5] = [
        (
            "i2s-spm",
            WeightFormat::I2S,
            spm_vocab,
            Activation::Silu,
            &shape,
        ),
        (
            "i2s-bpe-relu2",
            WeightFormat::I2S,
            bpe_vocab,
            Activation::Relu2,
            &shape,
        ),
        (
            "tq1_0-spm",
            WeightFormat::TQ1_0,
            spm_vocab,
            Activation::Silu,
            &wide,
        ),
        (
            "tq2_0-bpe",
            WeightFormat::TQ2_0,
            bpe_vocab,
            Activation::Silu,
            &wide,
        ),
        (
            "tl2-spm",
            WeightFormat::TL2,
            spm_vocab,
            Activation::Silu,
            &shape,
        ),
    ];
    for (name, weights, vocab, act, shape) in cases {
        // Q8_0 embeddings keep the seeds small.
        let opts = SynthOptions {
            weights,
            embedding: EmbedFormat::Q8_0,
            seed: 7,
            activation: Some(act),
            shape: shape.clone(),
        };
        match synth(Preset::Tiny, vocab(), &opts, &tmp, &mut |_, _| {}) {
            Ok(()) => write_named(&out.join("gguf"), name, &std::fs::read(&tmp)?)?,
            Err(e) => println!("gguf seed {name} not written: {e}"),
        }
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

fn text_seeds(out: &Path) -> Res<()> {
    let texts = [
        "Hello world",
        " the cat sat on the mat.\n\nThe end.",
        "  leading spaces and\ttabs\r\n",
        "Numbers 1234567890 and 3.14159, 1,000,000!",
        "Émile a mangé du pâté à Noël. 日本語のテキスト。 Привет, мир! 🙂🚀 👩‍👩‍👧",
        "<|begin_of_text|>User: hi<|eot_id|>Assistant: <s></s><unk>",
        "don't you're I'll we've they'd IT'S",
        "\u{0}\u{1}\u{7f}\u{fffd}\u{200b}\u{feff}",
        "```rust\nfn main() { println!(\"{}\", 1 + 2); }\n```",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];
    for (i, t) in texts.iter().enumerate() {
        // The first byte picks the vocabulary and the flags (see fuzz_targets/tokenizer.rs).
        for sel in [i as u8 % 8, 7 - i as u8 % 8] {
            let mut b = vec![sel];
            b.extend_from_slice(t.as_bytes());
            write_named(&out.join("tokenizer"), &format!("text-{i}-{sel}"), &b)?;
        }
    }
    Ok(())
}

/// A fixture cut to its first layer (a smaller seed that still converts).
fn hf_seeds(out: &Path, fixtures: &Path) -> Res<()> {
    // (The other layouts keep bf16 matrices: seeds of half a megabyte, which slow the fuzzer.)
    for name in ["bitlinear-a"] {
        let dir = fixtures.join(name);
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        config["num_hidden_layers"] = 1.into();
        let weights = std::fs::read(dir.join("model.safetensors"))?;
        let st = safetensors::SafeTensors::deserialize(&weights)?;
        let keep: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("model.layers.") || n.starts_with("model.layers.0."))
            .collect();
        let cut = safetensors::serialize(keep, None)?;
        // The four parts, as fuzz_targets/hf_convert.rs splits them.
        let mut b = Vec::new();
        for part in [
            serde_json::to_vec_pretty(&config)?,
            std::fs::read(dir.join("tokenizer.json"))?,
            std::fs::read(dir.join("tokenizer_config.json"))?,
            cut,
        ] {
            if !b.is_empty() {
                b.extend_from_slice(SPLIT);
            }
            b.extend_from_slice(&part);
        }
        write_named(&out.join("hf_convert"), name, &b)?;
    }
    Ok(())
}

/// What separates the parts of a multi-part fuzz input (fuzz/src/lib.rs has the same).
const SPLIT: &[u8] = b"\n\x00--split--\x00\n";

fn main() -> Res<()> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: fuzz_seeds OUT_DIR (fuzz/corpus)")?
        .into();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    gguf_seeds(&out)?;
    text_seeds(&out)?;
    hf_seeds(&out, &root.join("crossval/hf/fixtures"))?;
    Ok(())
}
