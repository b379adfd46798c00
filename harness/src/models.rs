//! Models a gate needs, described as data and built on demand (converted from the shared
//! checkpoint, synthesised, or an existing file). Built files are cached in the work directory:
//! conversion and synthesis are deterministic, so a cached file is the file.

use crate::gates::Context;
use bitnet::convert::{self, synth, FloatFormat, WeightFormat};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelSpec {
    /// The shared bitllama2c-3m checkpoint, converted.
    Llama2c {
        #[serde(default = "i2s")]
        weights: String,
        #[serde(default = "f32")]
        embedding: String,
    },
    /// A synthetic preset.
    Synth {
        preset: String,
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        activation: Option<String>,
        #[serde(default = "i2s")]
        weights: String,
        #[serde(default = "f16")]
        embedding: String,
        /// Shape overrides of the preset.
        #[serde(default)]
        hidden: Option<usize>,
        #[serde(default)]
        ffn: Option<usize>,
        #[serde(default)]
        layers: Option<usize>,
        #[serde(default)]
        heads: Option<usize>,
        #[serde(default)]
        kv_heads: Option<usize>,
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
            } => {
                let o = |v: &Option<usize>| v.map_or("d".to_string(), |v| v.to_string());
                format!(
                    "synth-{preset}-{seed}-{}-{weights}-{embedding}-h{}-f{}-l{}-a{}-k{}",
                    activation.as_deref().unwrap_or("default"),
                    o(hidden),
                    o(ffn),
                    o(layers),
                    o(heads),
                    o(kv_heads)
                )
            }
            ModelSpec::File { path } => path.replace(['/', '\\'], "_"),
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
                let vocab = ctx.shared.join(preset.default_vocab());
                synth::synth_file(preset, Some(&vocab), &opts, &out, &mut |_, _| {})
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(out)
    }
}
