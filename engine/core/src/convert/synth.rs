//! Deterministic synthetic `bitnet` models: random ternary weights (one scale per tensor),
//! random embeddings, unit norm weights, and a real vocabulary copied from a tokenizer GGUF.
//! The same preset and seed always give the same bytes. Shapes:
//!
//! | preset  | hidden | layers | heads | kv heads | FFN  | vocab (from)            | FFN act |
//! |---------|--------|--------|-------|----------|------|-------------------------|---------|
//! | tiny    | 256    | 4      | 8     | 2        | 640  | 32000 (LLaMA SPM)       | silu    |
//! | large   | 1536   | 24     | 16    | 16       | 4096 | 32000 (LLaMA SPM)       | silu    |
//! | 2b-4t   | 2560   | 30     | 20    | 5        | 6912 | 128256 (LLaMA-3 BPE)    | relu2   |
//!
//! (`large` is bitnet_b1_58-large's shape with the 32000-token SPM vocabulary instead of its
//! 32002; `2b-4t` is BitNet b1.58 2B-4T's shape.)

use super::{
    write_bitnet, BitnetTensors, ConvertError, EmbedFormat, FloatFormat, Ternary, Vocab,
    WeightFormat,
};
use crate::model::{Activation, Config};
use crate::sample::Rng;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Tiny,
    Large,
    B2_4T,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Self, ConvertError> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "large" => Ok(Preset::Large),
            "2b-4t" => Ok(Preset::B2_4T),
            _ => Err(ConvertError::Usage(format!(
                "unknown preset {s:?} (tiny, large, 2b-4t)"
            ))),
        }
    }

    /// The shared-data file whose vocabulary the preset uses by default.
    pub fn default_vocab(self) -> &'static str {
        match self {
            Preset::Tiny | Preset::Large => "tokenizers/ggml-vocab-llama-spm.gguf",
            Preset::B2_4T => "tokenizers/ggml-vocab-llama-bpe.gguf",
        }
    }

    /// The preset's shape; `vocab_size` is filled in from the vocabulary.
    pub fn config(self) -> Config {
        let (dim, layers, heads, kv, ff, ctx, theta, act) = match self {
            Preset::Tiny => (256, 4, 8, 2, 640, 512, 10000.0, Activation::Silu),
            Preset::Large => (1536, 24, 16, 16, 4096, 2048, 10000.0, Activation::Silu),
            Preset::B2_4T => (2560, 30, 20, 5, 6912, 4096, 500000.0, Activation::Relu2),
        };
        Config {
            arch: "bitnet".into(),
            dim,
            hidden_dim: ff,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: dim / heads,
            rope_dim: dim / heads,
            vocab_size: 0,
            context_length: ctx,
            rope_theta: theta,
            norm_eps: 1e-5,
            activation: act,
        }
    }
}

/// Random ternary values (about a third each of -1, 0, +1) with a scale near 1/sqrt(cols).
fn random_ternary(rows: usize, cols: usize, seed: u64) -> Ternary {
    let mut rng = Rng::new(seed);
    let values = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
    let scale = (0.5 + rng.next_f64() as f32) / (cols as f32).sqrt();
    Ternary {
        rows,
        cols,
        values,
        scale,
    }
}

pub struct SynthOptions {
    pub weights: WeightFormat,
    pub embedding: EmbedFormat,
    pub seed: u64,
    pub activation: Option<Activation>,
    pub shape: ShapeOverrides,
}

impl SynthOptions {
    /// Options from their textual form (command line, gate files).
    pub fn parse(
        weights: &str,
        embedding: &str,
        seed: u64,
        activation: Option<&str>,
        shape: ShapeOverrides,
    ) -> Result<Self, ConvertError> {
        let activation = match activation {
            None => None,
            Some(a) => Some(Activation::parse(a).ok_or_else(|| {
                ConvertError::Usage(format!("unknown activation {a:?} (silu, relu2)"))
            })?),
        };
        Ok(SynthOptions {
            weights: WeightFormat::parse(weights)?,
            embedding: EmbedFormat::parse(embedding)?,
            seed,
            activation,
            shape,
        })
    }
}

/// Writes a synthetic model, taking the vocabulary from `vocab` or, by default, from the
/// preset's tokenizer file in the shared data directory.
pub fn synth_file(
    preset: Preset,
    vocab: Option<&Path>,
    opts: &SynthOptions,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ConvertError> {
    let path = match vocab {
        Some(p) => p.to_path_buf(),
        None => crate::env::shared_path(preset.default_vocab()).map_err(ConvertError::Usage)?,
    };
    let vocab = Vocab::from_gguf(&crate::gguf::Gguf::open(&path)?)?;
    synth(preset, vocab, opts, out, progress)
}

/// Changes to a preset's shape (for test models of other shapes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShapeOverrides {
    pub dim: Option<usize>,
    pub hidden_dim: Option<usize>,
    pub n_layers: Option<usize>,
    pub n_heads: Option<usize>,
    pub n_kv_heads: Option<usize>,
}

impl ShapeOverrides {
    fn apply(&self, c: &mut Config) -> Result<(), ConvertError> {
        c.dim = self.dim.unwrap_or(c.dim);
        c.hidden_dim = self.hidden_dim.unwrap_or(c.hidden_dim);
        c.n_layers = self.n_layers.unwrap_or(c.n_layers);
        c.n_heads = self.n_heads.unwrap_or(c.n_heads);
        c.n_kv_heads = self.n_kv_heads.unwrap_or(c.n_kv_heads);
        let bad = |m: String| Err(ConvertError::Usage(m));
        if c.n_layers == 0 || c.n_heads == 0 || c.n_kv_heads == 0 {
            return bad("layers and heads must be positive".into());
        }
        if !c.dim.is_multiple_of(128) || !c.hidden_dim.is_multiple_of(128) {
            return bad(format!(
                "hidden {} and FFN {} must be multiples of 128 (I2_S blocks)",
                c.dim, c.hidden_dim
            ));
        }
        if !c.dim.is_multiple_of(c.n_heads)
            || !c.n_heads.is_multiple_of(c.n_kv_heads)
            || !(c.dim / c.n_heads).is_multiple_of(2)
        {
            return bad(format!(
                "hidden {} / heads {} / kv heads {} do not divide evenly",
                c.dim, c.n_heads, c.n_kv_heads
            ));
        }
        c.head_dim = c.dim / c.n_heads;
        c.rope_dim = c.head_dim;
        Ok(())
    }
}

pub fn synth(
    preset: Preset,
    vocab: Vocab,
    opts: &SynthOptions,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ConvertError> {
    let mut cfg = preset.config();
    opts.shape.apply(&mut cfg)?;
    cfg.vocab_size = vocab.tokens.len();
    if let Some(a) = opts.activation {
        cfg.activation = a;
    }
    let (dim, ff, kv) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim());
    // Every tensor has its own stream derived from (seed, index), so tensors can be produced
    // in any order and the file is a pure function of (preset, seed, vocabulary).
    let mut index = 0u64;
    let mut next_seed = || {
        index += 1;
        opts.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    };
    let mut t = BitnetTensors::new();
    let (vocab_n, s) = (cfg.vocab_size, next_seed());
    t.embedding(
        "token_embd.weight",
        &[dim as u64, vocab_n as u64],
        opts.embedding,
        move || {
            let mut rng = Rng::new(s);
            (0..vocab_n * dim)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                .collect()
        },
    )?;
    t.float(
        "output_norm.weight",
        &[dim as u64],
        FloatFormat::F32,
        move || vec![1.0; dim],
    );
    let w = opts.weights;
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        let mut mat = |t: &mut BitnetTensors, name: &str, rows: usize, cols: usize| {
            let s = next_seed();
            t.ternary(
                name,
                w,
                move || Ok(random_ternary(rows, cols, s)),
                rows,
                cols,
            );
        };
        t.float(
            &n("attn_norm"),
            &[dim as u64],
            FloatFormat::F32,
            move || vec![1.0; dim],
        );
        mat(&mut t, &n("attn_q"), dim, dim);
        mat(&mut t, &n("attn_k"), kv, dim);
        mat(&mut t, &n("attn_v"), kv, dim);
        t.float(
            &n("attn_sub_norm"),
            &[dim as u64],
            FloatFormat::F32,
            move || vec![1.0; dim],
        );
        mat(&mut t, &n("attn_output"), dim, dim);
        t.float(&n("ffn_norm"), &[dim as u64], FloatFormat::F32, move || {
            vec![1.0; dim]
        });
        mat(&mut t, &n("ffn_gate"), ff, dim);
        mat(&mut t, &n("ffn_up"), ff, dim);
        t.float(
            &n("ffn_sub_norm"),
            &[ff as u64],
            FloatFormat::F32,
            move || vec![1.0; ff],
        );
        mat(&mut t, &n("ffn_down"), dim, ff);
    }
    let name = format!(
        "synth-{}-seed{}",
        format!("{preset:?}").to_lowercase(),
        opts.seed
    );
    write_bitnet(out, &name, &cfg, w, &vocab, t, progress)
}
