//! The `bitnet` architecture as BitNet.cpp builds it, read from GGUF.
//!
//! Per layer: h = RMSNorm(x)·attn_norm; q,k,v = ternary matmuls of h; NEOX RoPE on q,k;
//! causal GQA attention; RMSNorm(attn)·attn_sub_norm; W_o; residual. Then
//! h = RMSNorm(x)·ffn_norm; f = act(gate·h) * (up·h); RMSNorm(f)·ffn_sub_norm; down; residual.
//! Finally RMSNorm(x)·output_norm and the output projection (`output`, or `token_embd` tied).
//! The FFN activation comes from `<arch>.hidden_activation` ("silu" default; "relu2" is the
//! 2B-4T release's squared ReLU, and arch `bitnet-b1.58` defaults to it).
//!
//! A [`Model`] is the weights and the hyper-parameters, immutable once loaded and shareable
//! between threads; a [`crate::session::Session`] runs it (threads, instruction set, buffers,
//! kernel counters). [`State`] is one sequence's KV cache and position.

use crate::attention;
use crate::gguf::{Gguf, GgufError};
use crate::quant::matmul::Weight;
use crate::quant::FormatError;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unsupported architecture {0:?} (supported: bitnet, bitnet-b1.58)")]
    UnsupportedArch(String),
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("bad hyperparameter: {0}")]
    BadHyper(String),
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {tensor:?} has shape {got:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        expected: Vec<u64>,
        got: Vec<u64>,
    },
    #[error("tensor {tensor:?}: {source}")]
    TensorFormat { tensor: String, source: FormatError },
    #[error("tensor {tensor:?}: {what} is not a finite number")]
    NotFinite { tensor: String, what: String },
    #[error("vocabulary has {tokens} tokens but token_embd has {rows} rows")]
    VocabMismatch { tokens: usize, rows: usize },
    #[error("token id {id} out of range (vocab {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("nothing to evaluate: the prompt has no tokens")]
    EmptyPrompt,
    #[error("context full: position {pos} + {n} tokens exceeds the context length {ctx}")]
    ContextFull { pos: usize, n: usize, ctx: usize },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Storage of the output projection chosen at load time (`--head`), instead of the file's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadFormat {
    /// ggml's Q8_0 (8.5 bits per weight): about half the bytes of F16 read per token.
    Q8_0,
}

impl std::str::FromStr for HeadFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "q8_0" => Ok(HeadFormat::Q8_0),
            _ => Err(format!("unknown head format {s:?}: expected q8_0")),
        }
    }
}

impl HeadFormat {
    /// Every head format.
    pub const ALL: [HeadFormat; 1] = [HeadFormat::Q8_0];

    pub fn tensor_type(self) -> crate::quant::TensorType {
        match self {
            HeadFormat::Q8_0 => crate::quant::TensorType::Q8_0,
        }
    }
}

/// FFN gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Squared ReLU: relu(x)^2.
    Relu2,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "silu" | "swiglu" => Some(Activation::Silu),
            "relu2" | "relu_squared" | "squared_relu" => Some(Activation::Relu2),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Relu2 => "relu2",
        }
    }
    #[inline]
    pub(crate) fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Relu2 => {
                let r = x.max(0.0);
                r * r
            }
        }
    }
}

/// Hyperparameters, all from GGUF keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: String,
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub norm_eps: f32,
    pub activation: Activation,
}

impl Config {
    pub fn from_gguf(g: &Gguf) -> Result<Self, ModelError> {
        let arch = g
            .get_str("general.architecture")?
            .ok_or_else(|| ModelError::MissingKey("general.architecture".into()))?
            .to_string();
        if arch != "bitnet" && arch != "bitnet-b1.58" {
            return Err(ModelError::UnsupportedArch(arch));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let req = |k: &str| -> Result<usize, ModelError> {
            let v = g
                .get_u64(&key(k))?
                .ok_or_else(|| ModelError::MissingKey(key(k)))?;
            if v == 0 || v > (1 << 24) {
                return Err(ModelError::BadHyper(format!("{} = {v}", key(k))));
            }
            Ok(v as usize)
        };
        let dim = req("embedding_length")?;
        let hidden_dim = req("feed_forward_length")?;
        let n_layers = req("block_count")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = match g.get_u64(&key("attention.head_count_kv"))? {
            Some(v) => v as usize,
            None => n_heads,
        };
        let context_length = req("context_length")?;
        // Every layer is nine tensors or more: a block count the file cannot hold is refused
        // before anything is sized by it.
        if n_layers.saturating_mul(9) > g.tensors().len() {
            return Err(ModelError::BadHyper(format!(
                "{} = {n_layers}, but the file has only {} tensors",
                key("block_count"),
                g.tensors().len()
            )));
        }
        if dim % n_heads != 0 {
            return Err(ModelError::BadHyper(format!(
                "embedding_length {dim} not divisible by head_count {n_heads}"
            )));
        }
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::BadHyper(format!(
                "head_count {n_heads} not a multiple of head_count_kv {n_kv_heads}"
            )));
        }
        let head_dim = dim / n_heads;
        let rope_dim = g
            .get_u64(&key("rope.dimension_count"))?
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::BadHyper(format!(
                "rope.dimension_count {rope_dim} (head dim {head_dim})"
            )));
        }
        let rope_theta = g.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
        let norm_eps = g
            .get_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5) as f32;
        let valid =
            rope_theta > 0.0 && rope_theta.is_finite() && norm_eps >= 0.0 && norm_eps.is_finite();
        if !valid {
            return Err(ModelError::BadHyper(format!(
                "rope.freq_base {rope_theta}, epsilon {norm_eps}"
            )));
        }
        let default_act = if arch == "bitnet-b1.58" {
            Activation::Relu2
        } else {
            Activation::Silu
        };
        let activation = match g.get_str(&key("hidden_activation"))? {
            None => default_act,
            Some(s) => Activation::parse(s).ok_or_else(|| {
                ModelError::BadHyper(format!(
                    "{} = {s:?} (expected silu or relu2)",
                    key("hidden_activation")
                ))
            })?,
        };
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let vocab_size = embd.rows_cols().0;
        if let Some(v) = g.get_u64(&key("vocab_size"))? {
            if v as usize != vocab_size {
                return Err(ModelError::VocabMismatch {
                    tokens: v as usize,
                    rows: vocab_size,
                });
            }
        }
        if let Some(tokens) = g.get_array("tokenizer.ggml.tokens")? {
            if tokens.len() != vocab_size {
                return Err(ModelError::VocabMismatch {
                    tokens: tokens.len(),
                    rows: vocab_size,
                });
            }
        }
        Ok(Config {
            arch,
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            vocab_size,
            context_length,
            rope_theta,
            norm_eps,
            activation,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub attn_sub_norm: Vec<f32>,
    pub wo: Weight,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub ffn_sub_norm: Vec<f32>,
    pub w_down: Weight,
}

pub struct Model {
    pub config: Config,
    pub file: Arc<Gguf>,
    pub token_embd: Weight,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    /// `output.weight`, or `token_embd` when tied.
    pub output: Weight,
    pub tied_output: bool,
}

impl Model {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_gguf(Arc::new(Gguf::open(path)?))
    }

    pub fn from_gguf(file: Arc<Gguf>) -> Result<Self, ModelError> {
        let c = Config::from_gguf(&file)?;
        let (dim, ff, q_dim, kv_dim) = (
            c.dim as u64,
            c.hidden_dim as u64,
            c.q_dim() as u64,
            c.kv_dim() as u64,
        );
        let weight = |name: &str, shape: [u64; 2]| -> Result<Weight, ModelError> {
            let mut w = checked_tensor(&file, name, &shape)?;
            finite(name, "its scale", w.scale())?;
            // A weight that is not finite turns logits into NaN (float formats only; ternary
            // codes cannot hold one). Reads the tensor once: tens of ms for a 2B model's head.
            if !w.all_finite() {
                return Err(ModelError::NotFinite {
                    tensor: name.into(),
                    what: "a stored weight".into(),
                });
            }
            // The reference multiplies by an optional `<name>.scale` scalar after the product.
            let scale_name = name.replace(".weight", ".scale");
            if file.tensor(&scale_name).is_some() {
                let mut s = [0f32];
                checked_tensor(&file, &scale_name, &[1])?.dequantize_row(0, &mut s);
                finite(&scale_name, "the scale", s[0])?;
                w.post_scale = Some(s[0]);
            }
            Ok(w)
        };
        let vector = |name: &str, len: u64| -> Result<Vec<f32>, ModelError> {
            let mut v = vec![0f32; len as usize];
            checked_tensor(&file, name, &[len])?.dequantize_row(0, &mut v);
            // A norm weight that is not finite turns every logit into NaN.
            if let Some(&bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(ModelError::NotFinite {
                    tensor: name.into(),
                    what: format!("a weight ({bad})"),
                });
            }
            Ok(v)
        };
        let token_embd = weight("token_embd.weight", [dim, c.vocab_size as u64])?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(&n("attn_norm"), dim)?,
                wq: weight(&n("attn_q"), [dim, q_dim])?,
                wk: weight(&n("attn_k"), [dim, kv_dim])?,
                wv: weight(&n("attn_v"), [dim, kv_dim])?,
                attn_sub_norm: vector(&n("attn_sub_norm"), q_dim)?,
                wo: weight(&n("attn_output"), [q_dim, dim])?,
                ffn_norm: vector(&n("ffn_norm"), dim)?,
                w_gate: weight(&n("ffn_gate"), [dim, ff])?,
                w_up: weight(&n("ffn_up"), [dim, ff])?,
                ffn_sub_norm: vector(&n("ffn_sub_norm"), ff)?,
                w_down: weight(&n("ffn_down"), [ff, dim])?,
            });
        }
        let output_norm = vector("output_norm.weight", dim)?;
        let (output, tied_output) = match file.tensor("output.weight") {
            Some(_) => (weight("output.weight", [dim, c.vocab_size as u64])?, false),
            None => (token_embd.clone(), true),
        };
        Ok(Model {
            config: c,
            token_embd,
            layers,
            output_norm,
            output,
            tied_output,
            file,
        })
    }

    /// Re-quantizes the output projection (`output.weight`, or the tied embedding) to `fmt` in
    /// memory, row by row from the file's values; the forward pass then reads only that copy
    /// for the logits (token embeddings keep the file's format). A head already in `fmt` is
    /// left as it is.
    pub fn quantize_head(&mut self, fmt: HeadFormat) -> Result<(), ModelError> {
        let ty = fmt.tensor_type();
        if self.output.ty == ty {
            return Ok(());
        }
        let (rows, cols) = (self.output.rows, self.output.cols);
        if !cols.is_multiple_of(32) {
            return Err(ModelError::BadHyper(format!(
                "--head {fmt:?}: rows of {cols} values are not whole blocks of 32"
            )));
        }
        let dims = [cols as u64, rows as u64];
        let mut w = crate::gguf::GgufWriter::new();
        w.tensor("output.weight", &dims, ty);
        let src = &self.output;
        let mut row = vec![0f32; cols];
        let bytes = w
            .to_bytes(|_, out| {
                for r in 0..rows {
                    src.dequantize_row(r, &mut row);
                    out.write_all(&crate::quant::float::encode_q8_0(&row))?;
                }
                Ok(())
            })
            .map_err(|e| {
                ModelError::Gguf(GgufError::Io {
                    path: "<head>".into(),
                    source: e,
                })
            })?;
        let file = Arc::new(Gguf::from_bytes(bytes)?);
        let mut head = checked_tensor(&file, "output.weight", &dims)?;
        head.post_scale = src.post_scale;
        self.output = head;
        Ok(())
    }

    pub fn new_state(&self) -> State {
        State::new(&self.config)
    }
}

/// `value` (what `what` names in `tensor`) must be a finite number.
fn finite(tensor: &str, what: &'static str, value: f32) -> Result<(), ModelError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(ModelError::NotFinite {
            tensor: tensor.into(),
            what: format!("{what} ({value})"),
        })
    }
}

/// A tensor that must exist with exactly `dims`, viewed as a matrix (1-D = one row).
fn checked_tensor(file: &Arc<Gguf>, name: &str, dims: &[u64]) -> Result<Weight, ModelError> {
    let t = file
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    if t.dims != dims {
        return Err(ModelError::Shape {
            tensor: name.into(),
            expected: dims.to_vec(),
            got: t.dims.clone(),
        });
    }
    Weight::new(file, t).map_err(|source| ModelError::TensorFormat {
        tensor: name.into(),
        source,
    })
}

/// RMSNorm of each row of `x` (row length = weight length) into `out`:
/// x / sqrt(mean(x^2) + eps) * w, the sum of squares taken in f64 as ggml does.
pub fn rmsnorm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (o, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        // Sum of squares in f64, in four running sums (so it vectorizes) added pairwise.
        let mut l = [0f64; 4];
        let chunks = x.chunks_exact(4);
        let tail: f64 = chunks
            .remainder()
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum();
        for c in chunks {
            for i in 0..4 {
                l[i] += (c[i] as f64) * (c[i] as f64);
            }
        }
        let ss = (l[0] + l[1]) + (l[2] + l[3]) + tail;
        let mean = (ss / d as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(x).zip(w) {
            *o = (v * scale) * w;
        }
    }
}

pub(crate) fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// NEOX RoPE on one head: rotates the pairs (i, i + rope_dim/2).
pub(crate) fn rope_neox(head: &mut [f32], pos: usize, rope_dim: usize, table: &RopeTable) {
    let half = rope_dim / 2;
    let (cos, sin) = table.at(pos);
    for i in 0..half {
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos[i] - b * sin[i];
        head[i + half] = a * sin[i] + b * cos[i];
    }
}

/// cos/sin of pos * theta^(-2i/rope_dim), computed in f64 once per position and kept; the
/// table grows with the positions actually used.
pub(crate) struct RopeTable {
    half: usize,
    theta: f64,
    dim: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    fn new(c: &Config) -> Self {
        RopeTable {
            half: c.rope_dim / 2,
            theta: c.rope_theta as f64,
            dim: c.rope_dim,
            cos: Vec::new(),
            sin: Vec::new(),
        }
    }
    pub(crate) fn ensure(&mut self, pos: usize) {
        while self.cos.len() < (pos + 1) * self.half {
            let p = self.cos.len() / self.half.max(1);
            for i in 0..self.half {
                let a = p as f64 * self.theta.powf(-2.0 * i as f64 / self.dim as f64);
                self.cos.push(a.cos() as f32);
                self.sin.push(a.sin() as f32);
            }
            if self.half == 0 {
                break;
            }
        }
    }
    fn at(&self, pos: usize) -> (&[f32], &[f32]) {
        let r = pos * self.half..(pos + 1) * self.half;
        (&self.cos[r.clone()], &self.sin[r])
    }
}

/// Per-sequence state: the KV cache (f32, per layer [pos][kv_dim]) and the position. The
/// cache grows with the positions used, never from the header's context length alone.
pub struct State {
    pub pos: usize,
    kv_dim: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    pub(crate) rope: RopeTable,
    /// Positions made room for by [`State::reserve`].
    pub(crate) reserved: usize,
}

impl State {
    pub fn new(c: &Config) -> Self {
        State {
            pos: 0,
            kv_dim: c.kv_dim(),
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            keys: vec![Vec::new(); c.n_layers],
            values: vec![Vec::new(); c.n_layers],
            rope: RopeTable::new(c),
            reserved: 0,
        }
    }

    /// Bytes the KV cache holds for the positions used so far (keys and values, every layer).
    pub fn kv_cache_bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|b| std::mem::size_of_val(b.as_slice()))
            .sum()
    }

    /// Makes room for `positions` positions in all (the KV cache and the RoPE table), so that
    /// steps up to there allocate nothing. The caller bounds it (by the context length).
    pub fn reserve(&mut self, positions: usize) {
        let end = positions * self.kv_dim;
        for b in self.keys.iter_mut().chain(&mut self.values) {
            b.reserve(end.saturating_sub(b.len()));
        }
        if positions > 0 {
            self.rope.ensure(positions - 1);
        }
        self.reserved = self.reserved.max(positions);
    }

    /// Forgets everything after position `pos` (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    pub(crate) fn kv_row(&mut self, layer: usize, pos: usize, key: bool) -> &mut [f32] {
        let buf = if key {
            &mut self.keys[layer]
        } else {
            &mut self.values[layer]
        };
        let end = (pos + 1) * self.kv_dim;
        if buf.len() < end {
            buf.resize(end, 0.0);
        }
        &mut buf[pos * self.kv_dim..end]
    }

    /// Causal attention of query `q` (all heads) at `pos` over cache positions 0..=pos, with
    /// `scores` as scratch.
    pub(crate) fn attention(
        &self,
        layer: usize,
        pos: usize,
        q: &[f32],
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        let hd = self.head_dim;
        let group = self.n_heads / self.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        if scores.len() <= pos {
            scores.resize(pos + 1, 0.0);
        }
        for h in 0..self.n_heads {
            let cache = attention::Cache {
                keys: &self.keys[layer],
                values: &self.values[layer],
                stride: self.kv_dim,
                offset: (h / group) * hd,
            };
            attention::head(
                &q[h * hd..(h + 1) * hd],
                cache,
                scale,
                &mut scores[..=pos],
                &mut out[h * hd..(h + 1) * hd],
            );
        }
    }
}
