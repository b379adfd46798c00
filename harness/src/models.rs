//! Models a gate needs, described as data and built on demand (converted from the shared
//! checkpoint or from a Hugging Face fixture, synthesised, or an existing file). Built files are cached in the work directory:
//! conversion and synthesis are deterministic, so a cached file is the file.

use crate::context::Context;
use bitnet::convert::{self, synth, FloatFormat, WeightFormat};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelSpec {
    /// The shared bitllama2c-3m checkpoint, converted.
    Llama2c {
        #[serde(default = "i2s")]
        #[schemars(extend("enum" = ["i2_s", "tl2", "tq2_0", "tq1_0", "f32"]))]
        weights: String,
        #[serde(default = "f32")]
        #[schemars(extend("enum" = ["f32", "f16", "q8_0"]))]
        embedding: String,
    },
    /// A synthetic preset.
    Synth {
        #[schemars(extend("enum" = ["tiny", "large", "2b-4t"]))]
        preset: String,
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        #[schemars(with = "String", extend("enum" = ["silu", "relu2"]))]
        activation: Option<String>,
        #[serde(default = "i2s")]
        #[schemars(extend("enum" = ["i2_s", "tl2", "tq2_0", "tq1_0", "f32"]))]
        weights: String,
        #[serde(default = "f16")]
        #[schemars(extend("enum" = ["f32", "f16", "q8_0"]))]
        embedding: String,
        /// Shape overrides of the preset.
        #[serde(default)]
        #[schemars(with = "usize", range(min = 1))]
        hidden: Option<usize>,
        #[serde(default)]
        #[schemars(with = "usize", range(min = 1))]
        ffn: Option<usize>,
        #[serde(default)]
        #[schemars(with = "usize", range(min = 1))]
        layers: Option<usize>,
        #[serde(default)]
        #[schemars(with = "usize", range(min = 1))]
        heads: Option<usize>,
        #[serde(default)]
        #[schemars(with = "usize", range(min = 1))]
        kv_heads: Option<usize>,
        /// The vocabulary GGUF (relative to the shared directory) instead of the preset's.
        #[serde(default)]
        #[schemars(with = "String")]
        vocab: Option<String>,
        /// `"published"`: rewritten to the metadata layout of Microsoft's published 2B-4T
        /// GGUF (`bitnet-b1.58.*` keys, no pre-tokenizer key, the placeholder template).
        #[serde(default)]
        #[schemars(with = "String", extend("enum" = ["published"]))]
        layout: Option<String>,
        /// RoPE base written into the file (default: the preset's).
        #[serde(default)]
        #[schemars(with = "f32", extend("exclusiveMinimum" = 0))]
        rope_theta: Option<f32>,
    },
    /// A Hugging Face `BitNetForCausalLM` fixture (`crossval/hf/fixtures/NAME`, made by
    /// transformers itself), converted with `bitnet convert hf`.
    Hf {
        /// A directory of crossval/hf/fixtures.
        #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
        fixture: String,
        #[serde(default = "i2s")]
        #[schemars(extend("enum" = ["i2_s", "tl2", "tq2_0", "tq1_0", "f32"]))]
        weights: String,
        #[serde(default = "f32")]
        #[schemars(extend("enum" = ["f32", "f16", "q8_0"]))]
        embedding: String,
    },
    /// An existing GGUF (relative paths are relative to the shared directory).
    File { path: String },
}

fn i2s() -> String {
    "i2_s".into()
}
fn f32() -> String {
    "f32".into()
}
fn f16() -> String {
    "f16".into()
}

impl ModelSpec {
    /// A file name that identifies the built model.
    pub fn key(&self) -> String {
        match self {
            ModelSpec::Llama2c { weights, embedding } => {
                format!("bitllama2c-{weights}-{embedding}")
            }
            ModelSpec::Synth {
                preset,
                seed,
                activation,
                weights,
                embedding,
                hidden,
                ffn,
                layers,
                heads,
                kv_heads,
                vocab,
                layout,
                rope_theta,
            } => {
                let o = |v: &Option<usize>| v.map_or("d".to_string(), |v| v.to_string());
                let mut k = format!(
                    "synth-{preset}-{seed}-{}-{weights}-{embedding}-h{}-f{}-l{}-a{}-k{}",
                    activation.as_deref().unwrap_or("default"),
                    o(hidden),
                    o(ffn),
                    o(layers),
                    o(heads),
                    o(kv_heads)
                );
                if let Some(v) = vocab {
                    k += &format!("-v{}", v.replace(['/', '\\'], "_"));
                }
                if let Some(l) = layout {
                    k += &format!("-{l}");
                }
                if let Some(t) = rope_theta {
                    k += &format!("-rope{t}");
                }
                k
            }
            ModelSpec::Hf {
                fixture,
                weights,
                embedding,
            } => format!("hf-{fixture}-{weights}-{embedding}"),
            ModelSpec::File { path } => path.replace(['/', '\\'], "_"),
        }
    }

    /// The HF checkpoint directory a `hf` model is converted from.
    pub fn fixture_dir(&self, ctx: &Context) -> Option<PathBuf> {
        match self {
            ModelSpec::Hf { fixture, .. } => {
                Some(ctx.root.join("crossval/hf/fixtures").join(fixture))
            }
            _ => None,
        }
    }

    /// The model's path, building it first if needed. Builds are serialised within the
    /// process so gates running in parallel never write the same file at once.
    pub fn materialize(&self, ctx: &Context) -> Result<PathBuf, String> {
        static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let dir = ctx.work.join("models");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = dir.join(format!("{}.gguf", self.key()));
        match self {
            ModelSpec::File { path } => {
                let p = ctx.shared.join(path);
                return if p.exists() {
                    Ok(p)
                } else {
                    Err(format!("model file {} not found", p.display()))
                };
            }
            _ if out.exists() => return Ok(out),
            ModelSpec::Llama2c { weights, embedding } => {
                let src = ctx.shared.join("models/bitllama2c-3m");
                convert::llama2c::convert(
                    &src.join("model.bin"),
                    &src.join("tokenizer.model"),
                    &out,
                    WeightFormat::parse(weights).map_err(|e| e.to_string())?,
                    FloatFormat::parse(embedding).map_err(|e| e.to_string())?,
                    &mut |_, _| {},
                )
                .map_err(|e| e.to_string())?;
            }
            ModelSpec::Synth {
                preset,
                seed,
                activation,
                weights,
                embedding,
                hidden,
                ffn,
                layers,
                heads,
                kv_heads,
                vocab,
                layout,
                rope_theta,
            } => {
                let preset = synth::Preset::parse(preset).map_err(|e| e.to_string())?;
                let shape = synth::ShapeOverrides {
                    dim: *hidden,
                    hidden_dim: *ffn,
                    n_layers: *layers,
                    n_heads: *heads,
                    n_kv_heads: *kv_heads,
                };
                let opts = synth::SynthOptions::parse(
                    weights,
                    embedding,
                    *seed,
                    activation.as_deref(),
                    shape,
                )
                .map_err(|e| e.to_string())?;
                let vocab = ctx
                    .shared
                    .join(vocab.as_deref().unwrap_or(preset.default_vocab()));
                let published = match layout.as_deref() {
                    None => false,
                    Some("published") => true,
                    Some(l) => return Err(format!("layout {l:?} (only \"published\")")),
                };
                let synth_out = if published || rope_theta.is_some() {
                    dir.join(format!("{}.src.gguf", self.key()))
                } else {
                    out.clone()
                };
                synth::synth_file(preset, Some(&vocab), &opts, &synth_out, &mut |_, _| {})
                    .map_err(|e| e.to_string())?;
                if synth_out != out {
                    let theta = *rope_theta;
                    let rewrite = |k: &str, v: bitnet::gguf::Value| match theta {
                        Some(t) if k.ends_with(".rope.freq_base") => {
                            Some(bitnet::gguf::Value::F32(t))
                        }
                        _ => Some(v),
                    };
                    let r = if published {
                        convert::to_published_layout(&synth_out, &out, &rewrite)
                    } else {
                        convert::rewrite_metadata(&synth_out, &out, &rewrite)
                    };
                    let _ = std::fs::remove_file(&synth_out);
                    r.map_err(|e| e.to_string())?;
                }
            }
            ModelSpec::Hf {
                fixture,
                weights,
                embedding,
            } => {
                let src = ctx.root.join("crossval/hf/fixtures").join(fixture);
                let opts = convert::hf::Options {
                    weights: WeightFormat::parse(weights).map_err(|e| e.to_string())?,
                    embedding: convert::EmbedFormat::parse(embedding).map_err(|e| e.to_string())?,
                    tokenizer_pre: None,
                };
                convert::hf::convert(&src, &out, opts, &mut |_, _| {})
                    .map_err(|e| format!("{}: {e}", src.display()))?;
            }
        }
        Ok(out)
    }
}
