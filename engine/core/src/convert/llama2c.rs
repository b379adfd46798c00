//! bitllama2.c checkpoints (`model.bin`, magic "ak42") to `bitnet` GGUF.
//!
//! The checkpoint's BitLinear normalises its input without parameters (x / (||x|| sqrt(n)));
//! in the `bitnet` graph that is RMSNorm with weight 1/n and a negligible epsilon (1e-20: the
//! sub-norm inputs are tiny). Its RoPE rotates adjacent pairs while the reference applies NEOX
//! (split-half) RoPE, so the q/k rows are permuted within each head: new[j] = old[2j],
//! new[j + hd/2] = old[2j + 1]. Codes carry over exactly; each matrix keeps its scale.

use super::{
    sentencepiece, write_bitnet, BitnetTensors, ConvertError, FloatFormat, Ternary, Vocab,
    WeightFormat,
};
use crate::model::{Activation, Config};
use std::path::Path;

const MAGIC: u32 = 0x616b_3432;
const HEADER: usize = 256;

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub final_norm: Vec<f32>,
    /// [vocab][dim], also the classifier.
    pub embedding: Vec<f32>,
    /// wq, wk, wv, wo, w1, w2, w3, each `n_layers` long, in file order.
    pub mats: [Vec<Ternary>; 7],
}

struct Bytes<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ConvertError> {
        if self.b.len() - self.pos < n {
            return Err(ConvertError::Checkpoint(format!(
                "truncated: {what} at byte {} needs {n} bytes, {} left",
                self.pos,
                self.b.len() - self.pos
            )));
        }
        self.pos += n;
        Ok(&self.b[self.pos - n..self.pos])
    }
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, ConvertError> {
        Ok(self
            .take(n * 4, what)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

pub fn read_checkpoint(b: &[u8]) -> Result<Checkpoint, ConvertError> {
    let bad = |m: String| ConvertError::Checkpoint(m);
    if b.len() < HEADER {
        return Err(bad(format!(
            "file of {} bytes is shorter than the 256-byte header",
            b.len()
        )));
    }
    let word = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    if word(0) != MAGIC {
        return Err(bad(format!(
            "magic {:#x}, expected {MAGIC:#x} (\"ak42\")",
            word(0)
        )));
    }
    if word(1) != 1 {
        return Err(bad(format!("version {}, expected 1", word(1))));
    }
    let field = |i: usize, name: &str| -> Result<usize, ConvertError> {
        let v = word(i) as i32;
        if v <= 0 || v > 1 << 20 {
            return Err(bad(format!("{name} = {v}")));
        }
        Ok(v as usize)
    };
    let (dim, hidden_dim, n_layers) = (
        field(2, "dim")?,
        field(3, "hidden_dim")?,
        field(4, "n_layers")?,
    );
    let (n_heads, n_kv_heads) = (field(5, "n_heads")?, field(6, "n_kv_heads")?);
    let (vocab_size, seq_len) = (field(7, "vocab_size")?, field(8, "seq_len")?);
    if b[36] != 1 {
        return Err(bad(
            "unshared classifier (shared_classifier = 0) is not supported".into(),
        ));
    }
    if dim % n_heads != 0 || n_heads % n_kv_heads != 0 || (dim / n_heads) % 2 != 0 {
        return Err(bad(format!(
            "inconsistent heads: dim {dim}, heads {n_heads}, kv heads {n_kv_heads}"
        )));
    }
    let kv_dim = n_kv_heads * (dim / n_heads);
    let shapes = [
        (dim, dim),
        (kv_dim, dim),
        (kv_dim, dim),
        (dim, dim),
        (hidden_dim, dim),
        (dim, hidden_dim),
        (hidden_dim, dim),
    ];
    // Validate the total size before reading anything large.
    let mut expected = HEADER as u64 + 4 * (dim as u64 + (vocab_size * dim) as u64);
    for &(r, c) in &shapes {
        if (r * c) % 4 != 0 {
            return Err(bad(format!(
                "matrix {r}x{c} is not a whole number of bytes"
            )));
        }
        expected += n_layers as u64 * (4 + (r * c / 4) as u64);
    }
    if b.len() as u64 != expected {
        return Err(bad(format!(
            "file has {} bytes, the header's shapes need {expected}",
            b.len()
        )));
    }
    let mut r = Bytes { b, pos: HEADER };
    let final_norm = r.f32s(dim, "final norm")?;
    let embedding = r.f32s(vocab_size * dim, "embedding")?;
    let mut mats: [Vec<Ternary>; 7] = Default::default();
    for (slot, &(rows, cols)) in mats.iter_mut().zip(&shapes) {
        for _ in 0..n_layers {
            let scale = r.f32s(1, "matrix scale")?[0];
            let packed = r.take(rows * cols / 4, "matrix codes")?;
            let mut values = Vec::with_capacity(rows * cols);
            for &byte in packed {
                for i in 0..4 {
                    values.push(match (byte >> (2 * i)) & 3 {
                        0 => 0,
                        1 => 1,
                        3 => -1,
                        _ => return Err(bad(format!("invalid ternary code 2 at byte {}", r.pos))),
                    });
                }
            }
            slot.push(Ternary {
                rows,
                cols,
                values,
                scale,
            });
        }
    }
    Ok(Checkpoint {
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        vocab_size,
        seq_len,
        final_norm,
        embedding,
        mats,
    })
}

/// Reorders the rows of a q or k matrix from adjacent-pair RoPE order to NEOX order.
pub fn permute_rope_rows(m: &Ternary, head_dim: usize) -> Ternary {
    let mut out = m.clone();
    let half = head_dim / 2;
    for head in 0..m.rows / head_dim {
        for j in 0..half {
            for (new, old) in [(j, 2 * j), (j + half, 2 * j + 1)] {
                let (dst, src) = (
                    (head * head_dim + new) * m.cols,
                    (head * head_dim + old) * m.cols,
                );
                out.values[dst..dst + m.cols].copy_from_slice(&m.values[src..src + m.cols]);
            }
        }
    }
    out
}

impl Checkpoint {
    pub fn config(&self) -> Config {
        let head_dim = self.dim / self.n_heads;
        Config {
            arch: "bitnet".into(),
            dim: self.dim,
            hidden_dim: self.hidden_dim,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim,
            rope_dim: head_dim,
            vocab_size: self.vocab_size,
            context_length: self.seq_len,
            rope_theta: 10000.0,
            norm_eps: 1e-20,
            activation: Activation::Silu,
        }
    }
}

pub fn convert(
    model: &Path,
    tokenizer: &Path,
    out: &Path,
    weights: WeightFormat,
    embedding: FloatFormat,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ConvertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| ConvertError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let ck = read_checkpoint(&read(model)?)?;
    let sp = sentencepiece::parse(&read(tokenizer)?)?;
    if sp.pieces.len() != ck.vocab_size {
        return Err(ConvertError::Tokenizer(format!(
            "{} has {} pieces, the checkpoint's vocabulary is {}",
            tokenizer.display(),
            sp.pieces.len(),
            ck.vocab_size
        )));
    }
    let vocab = Vocab::from_sentencepiece(&sp);
    let cfg = ck.config();
    let (dim, ff, hd) = (cfg.dim as u64, cfg.hidden_dim as u64, cfg.head_dim);
    let ones = |n: u64| move || vec![1.0 / n as f32; n as usize];
    let mut t = BitnetTensors::new();
    t.float(
        "token_embd.weight",
        &[dim, cfg.vocab_size as u64],
        embedding,
        || ck.embedding.clone(),
    );
    t.float("output_norm.weight", &[dim], FloatFormat::F32, || {
        ck.final_norm.clone()
    });
    let [wq, wk, wv, wo, w1, w2, w3] = &ck.mats;
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        let m = |x: &Ternary| (x.rows, x.cols);
        t.float(&n("attn_norm"), &[dim], FloatFormat::F32, ones(dim));
        let (r, c) = m(&wq[l]);
        t.ternary(
            &n("attn_q"),
            weights,
            move || Ok(permute_rope_rows(&wq[l], hd)),
            r,
            c,
        );
        let (r, c) = m(&wk[l]);
        t.ternary(
            &n("attn_k"),
            weights,
            move || Ok(permute_rope_rows(&wk[l], hd)),
            r,
            c,
        );
        let (r, c) = m(&wv[l]);
        t.ternary(&n("attn_v"), weights, move || Ok(wv[l].clone()), r, c);
        t.float(&n("attn_sub_norm"), &[dim], FloatFormat::F32, ones(dim));
        let (r, c) = m(&wo[l]);
        t.ternary(&n("attn_output"), weights, move || Ok(wo[l].clone()), r, c);
        t.float(&n("ffn_norm"), &[dim], FloatFormat::F32, ones(dim));
        let (r, c) = m(&w1[l]);
        t.ternary(&n("ffn_gate"), weights, move || Ok(w1[l].clone()), r, c);
        let (r, c) = m(&w3[l]);
        t.ternary(&n("ffn_up"), weights, move || Ok(w3[l].clone()), r, c);
        t.float(&n("ffn_sub_norm"), &[ff], FloatFormat::F32, ones(ff));
        let (r, c) = m(&w2[l]);
        t.ternary(&n("ffn_down"), weights, move || Ok(w2[l].clone()), r, c);
    }
    write_bitnet(out, "bitllama2c", &cfg, weights, &vocab, t, progress)
}
