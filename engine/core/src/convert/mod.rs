//! Converters that write `bitnet` GGUF files: [`llama2c`] (bitllama2.c checkpoints), [`hf`]
//! (Hugging Face `BitNetForCausalLM` checkpoints) and [`synth`] (deterministic synthetic
//! models of real shapes). Both describe their model as a
//! [`Config`], a [`Vocab`] and ternary matrices, and share [`write_bitnet`].

pub mod hf;
pub mod llama2c;
pub mod sentencepiece;
pub mod synth;

use crate::gguf::{Gguf, GgufWriter, Value};
use crate::model::Config;
use crate::quant::format::{ternary_targets, Packing};
use crate::quant::{tl2, FormatError, TensorType};
use half::f16;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("bad checkpoint: {0}")]
    Checkpoint(String),
    #[error("bad tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("{0}")]
    Usage(String),
}

/// Storage format for the ternary matrices of a converted model: any tensor type whose
/// [`Format`](crate::quant::Format) row has a [`Packing`] (`quant::format::ternary_targets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightFormat(TensorType);

#[allow(non_upper_case_globals)]
impl WeightFormat {
    pub const I2S: WeightFormat = WeightFormat(TensorType::I2S);
    pub const TQ2_0: WeightFormat = WeightFormat(TensorType::TQ2_0);
    pub const TQ1_0: WeightFormat = WeightFormat(TensorType::TQ1_0);
    pub const TL2: WeightFormat = WeightFormat(TensorType::TL2);
    pub const F32: WeightFormat = WeightFormat(TensorType::F32);

    /// By type name, case-insensitive, with or without its underscore (`i2_s`, `I2S`).
    pub fn parse(s: &str) -> Result<Self, ConvertError> {
        let bare = |n: &str| n.replace('_', "").to_ascii_lowercase();
        ternary_targets()
            .find(|(ty, _)| ty.name().eq_ignore_ascii_case(s) || bare(ty.name()) == bare(s))
            .map(|(ty, _)| WeightFormat(ty))
            .ok_or_else(|| {
                let names: Vec<String> = ternary_targets()
                    .map(|(ty, _)| ty.name().to_ascii_lowercase())
                    .collect();
                ConvertError::Usage(format!(
                    "unknown weight format {s:?} ({})",
                    names.join(", ")
                ))
            })
    }
    pub fn tensor_type(self) -> TensorType {
        self.0
    }
    fn packing(self) -> &'static Packing {
        ternary_targets()
            .find(|(ty, _)| *ty == self.0)
            .map(|(_, p)| p)
            .expect("a WeightFormat is only made from a type with a packing")
    }
    /// The column multiple the format packs in (TL2's is checked by its tiling).
    pub fn block(self) -> usize {
        self.packing().multiple
    }
    /// `general.file_type` (llama.cpp's ftype numbering; I2_S = 40).
    fn file_type(self) -> u32 {
        self.packing().file_type
    }
}

/// Float storage for embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatFormat {
    F32,
    F16,
}

impl FloatFormat {
    pub fn parse(s: &str) -> Result<Self, ConvertError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err(ConvertError::Usage(format!(
                "unknown float format {s:?} (f32, f16)"
            ))),
        }
    }
    pub fn tensor_type(self) -> TensorType {
        match self {
            Self::F32 => TensorType::F32,
            Self::F16 => TensorType::F16,
        }
    }
    /// The values in this format; every one must be finite in it (an F16 tensor cannot hold a
    /// value past 65504), or the file would be refused at load.
    fn encode(self, name: &str, v: &[f32]) -> Result<Vec<u8>, ConvertError> {
        let max = match self {
            Self::F32 => f32::MAX,
            Self::F16 => f16::MAX.to_f32(),
        };
        check_range(name, v, max)?;
        Ok(self.encode_unchecked(v))
    }
    fn encode_unchecked(self, v: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::F16 => v
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }
}

/// Storage for token embeddings and an untied output head: a float format or Q8_0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedFormat {
    Float(FloatFormat),
    Q8_0,
}

impl EmbedFormat {
    pub fn parse(s: &str) -> Result<Self, ConvertError> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Self::Q8_0),
            other => FloatFormat::parse(other).map(Self::Float).map_err(|_| {
                ConvertError::Usage(format!("unknown embedding format {s:?} (f16, f32, q8_0)"))
            }),
        }
    }
    pub fn tensor_type(self) -> TensorType {
        match self {
            Self::Float(f) => f.tensor_type(),
            Self::Q8_0 => TensorType::Q8_0,
        }
    }
    fn encode(self, name: &str, v: &[f32]) -> Result<Vec<u8>, ConvertError> {
        match self {
            Self::Float(f) => f.encode(name, v),
            Self::Q8_0 => {
                check_range(name, v, f32::MAX)?;
                Ok(encode_q8_0(v))
            }
        }
    }
}

/// Every value of tensor `name` finite and within `max` in magnitude: a converter refuses a
/// checkpoint whose values the engine would refuse at load.
fn check_range(name: &str, v: &[f32], max: f32) -> Result<(), ConvertError> {
    match v.iter().position(|x| x.is_nan() || x.abs() > max) {
        None => Ok(()),
        Some(i) => Err(ConvertError::Checkpoint(format!(
            "{name}: value {} at index {i} is not finite{}",
            v[i],
            if v[i].is_finite() {
                format!(" in the output format (largest {max}): choose a wider --embedding")
            } else {
                String::new()
            }
        ))),
    }
}

pub use crate::quant::float::encode_q8_0;

pub use crate::quant::Ternary;

impl Ternary {
    /// The matrix packed in `fmt` (the scale inside it, or for TL2 left to its own tensor:
    /// see [`BitnetTensors::ternary`]).
    pub fn encode(&self, fmt: WeightFormat) -> Result<Vec<u8>, ConvertError> {
        if !self.scale.is_finite() {
            return Err(ConvertError::Checkpoint(format!(
                "a ternary matrix of {}x{} has scale {} (its source weights are not finite)",
                self.rows, self.cols, self.scale
            )));
        }
        Ok((fmt.packing().pack)(self)?)
    }
}

/// A tokenizer as GGUF metadata.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: Option<bool>,
    /// End of turn (`<|eot_id|>`), written as `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// Written as `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl Vocab {
    pub fn from_sentencepiece(m: &sentencepiece::SpModel) -> Self {
        Vocab {
            model: "llama".into(),
            pre: Some("default".into()),
            tokens: m.pieces.clone(),
            scores: m.scores.clone(),
            types: m.types.clone(),
            merges: Vec::new(),
            bos: m.bos,
            eos: m.eos,
            unk: m.unk,
            add_bos: true,
            add_space_prefix: Some(m.add_dummy_prefix),
            eot: None,
            chat_template: None,
        }
    }

    /// Copies the tokenizer of an existing GGUF (e.g. llama.cpp's vocab-only files).
    pub fn from_gguf(g: &Gguf) -> Result<Self, ConvertError> {
        let bad = |m: &str| ConvertError::Tokenizer(m.to_string());
        let model = g
            .get_str("tokenizer.ggml.model")?
            .ok_or_else(|| bad("no tokenizer.ggml.model"))?
            .to_string();
        let strings = |k: &str| -> Result<Vec<String>, ConvertError> {
            g.get_array(k)?
                .unwrap_or(&[])
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(&format!("{k}: non-string element")))
                })
                .collect::<Result<_, _>>()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(bad("no tokenizer.ggml.tokens"));
        }
        let scores = match g.get_array("tokenizer.ggml.scores")? {
            Some(a) => a
                .iter()
                .map(|v| {
                    v.as_f64()
                        .map(|x| x as f32)
                        .ok_or_else(|| bad("non-numeric score"))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let types = match g.get_array("tokenizer.ggml.token_type")? {
            Some(a) => a
                .iter()
                .map(|v| {
                    v.as_i64()
                        .map(|x| x as i32)
                        .ok_or_else(|| bad("non-integer token type"))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let id =
            |k: &str| -> Result<Option<u32>, ConvertError> { Ok(g.get_u64(k)?.map(|v| v as u32)) };
        Ok(Vocab {
            pre: g.get_str("tokenizer.ggml.pre")?.map(str::to_string),
            merges: strings("tokenizer.ggml.merges")?,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: g.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true),
            add_space_prefix: g.get_bool("tokenizer.ggml.add_space_prefix")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_string),
            model,
            tokens,
            scores,
            types,
        })
    }

    fn write(&self, w: &mut GgufWriter) {
        w.kv("tokenizer.ggml.model", Value::String(self.model.clone()));
        if let Some(p) = &self.pre {
            w.kv("tokenizer.ggml.pre", Value::String(p.clone()));
        }
        w.kv(
            "tokenizer.ggml.tokens",
            Value::strings(self.tokens.iter().cloned()),
        );
        if !self.scores.is_empty() {
            w.kv(
                "tokenizer.ggml.scores",
                Value::f32s(self.scores.iter().copied()),
            );
        }
        if !self.types.is_empty() {
            w.kv(
                "tokenizer.ggml.token_type",
                Value::i32s(self.types.iter().copied()),
            );
        }
        if !self.merges.is_empty() {
            w.kv(
                "tokenizer.ggml.merges",
                Value::strings(self.merges.iter().cloned()),
            );
        }
        for (k, v) in [
            ("bos", self.bos),
            ("eos", self.eos),
            ("unknown", self.unk),
            ("eot", self.eot),
        ] {
            if let Some(v) = v {
                w.kv(&format!("tokenizer.ggml.{k}_token_id"), Value::U32(v));
            }
        }
        w.kv("tokenizer.ggml.add_bos_token", Value::Bool(self.add_bos));
        w.kv("tokenizer.ggml.add_eos_token", Value::Bool(false));
        if let Some(p) = self.add_space_prefix {
            w.kv("tokenizer.ggml.add_space_prefix", Value::Bool(p));
        }
        if let Some(t) = &self.chat_template {
            w.kv("tokenizer.chat_template", Value::String(t.clone()));
        }
    }
}

/// One tensor of a model being written: its name, dims (innermost first), type, and a
/// producer of its bytes (called once, in file order, so large models stream).
pub struct TensorSpec<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: TensorType,
    pub data: Box<dyn FnOnce() -> Result<Vec<u8>, ConvertError> + 'a>,
}

/// Describes a full `bitnet` model's tensors in the reference's naming, with data producers.
pub struct BitnetTensors<'a> {
    pub tensors: Vec<TensorSpec<'a>>,
}

impl<'a> BitnetTensors<'a> {
    pub fn new() -> Self {
        BitnetTensors {
            tensors: Vec::new(),
        }
    }
    pub fn float(
        &mut self,
        name: &str,
        dims: &[u64],
        fmt: FloatFormat,
        data: impl FnOnce() -> Vec<f32> + 'a,
    ) {
        let owned = name.to_string();
        self.tensors.push(TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ty: fmt.tensor_type(),
            data: Box::new(move || fmt.encode(&owned, &data())),
        });
    }
    /// Token embeddings or an output head in `fmt` (Q8_0 needs rows of whole blocks).
    pub fn embedding(
        &mut self,
        name: &str,
        dims: &[u64],
        fmt: EmbedFormat,
        data: impl FnOnce() -> Vec<f32> + 'a,
    ) -> Result<(), ConvertError> {
        if fmt == EmbedFormat::Q8_0 && !dims[0].is_multiple_of(32) {
            return Err(ConvertError::Usage(format!(
                "{name}: rows of {} values are not whole Q8_0 blocks of 32; use --embedding f16",
                dims[0]
            )));
        }
        let owned = name.to_string();
        self.tensors.push(TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ty: fmt.tensor_type(),
            data: Box::new(move || fmt.encode(&owned, &data())),
        });
        Ok(())
    }
    pub fn ternary(
        &mut self,
        name: &str,
        fmt: WeightFormat,
        data: impl FnOnce() -> Result<Ternary, ConvertError> + 'a,
        rows: usize,
        cols: usize,
    ) {
        if !fmt.packing().scale_tensor {
            self.tensors.push(TensorSpec {
                name: name.into(),
                dims: vec![cols as u64, rows as u64],
                ty: fmt.tensor_type(),
                data: Box::new(move || data()?.encode(fmt)),
            });
            return;
        }
        // A format that keeps its scale in a one-element tensor `<name>_scale` (TL2): written
        // right after the matrix whose producer reads it.
        let scale = std::rc::Rc::new(std::cell::Cell::new(None));
        let seen = scale.clone();
        self.tensors.push(TensorSpec {
            name: name.into(),
            dims: vec![cols as u64, rows as u64],
            ty: fmt.tensor_type(),
            data: Box::new(move || {
                let t = data()?;
                seen.set(Some(t.scale));
                t.encode(fmt)
            }),
        });
        self.tensors.push(TensorSpec {
            name: format!("{name}_scale"),
            dims: vec![1],
            ty: TensorType::F32,
            data: Box::new(move || {
                let s = scale.get().expect("the matrix is written before its scale");
                Ok(s.to_le_bytes().to_vec())
            }),
        });
    }
}

impl Default for BitnetTensors<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes a `bitnet` GGUF: hyperparameters from `cfg`, the tokenizer, and the tensors.
/// `progress(done, total)` is called after each tensor.
pub fn write_bitnet(
    path: &Path,
    name: &str,
    cfg: &Config,
    weights: WeightFormat,
    vocab: &Vocab,
    tensors: BitnetTensors<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ConvertError> {
    let mut w = GgufWriter::new();
    let a = &cfg.arch;
    w.kv("general.architecture", Value::String(a.clone()));
    w.kv("general.name", Value::String(name.into()));
    w.kv("general.file_type", Value::U32(weights.file_type()));
    w.kv("general.alignment", Value::U32(32));
    let u = |v: usize| Value::U32(v as u32);
    w.kv(&format!("{a}.vocab_size"), u(cfg.vocab_size));
    w.kv(&format!("{a}.context_length"), u(cfg.context_length));
    w.kv(&format!("{a}.embedding_length"), u(cfg.dim));
    w.kv(&format!("{a}.block_count"), u(cfg.n_layers));
    w.kv(&format!("{a}.feed_forward_length"), u(cfg.hidden_dim));
    w.kv(&format!("{a}.rope.dimension_count"), u(cfg.rope_dim));
    w.kv(&format!("{a}.attention.head_count"), u(cfg.n_heads));
    w.kv(&format!("{a}.attention.head_count_kv"), u(cfg.n_kv_heads));
    w.kv(
        &format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.norm_eps),
    );
    w.kv(&format!("{a}.rope.freq_base"), Value::F32(cfg.rope_theta));
    w.kv(
        &format!("{a}.hidden_activation"),
        Value::String(cfg.activation.name().into()),
    );
    vocab.write(&mut w);
    // Every TL2 shape's tiling, as the reader needs it (the reference keeps it in a
    // kernel_config.ini beside its build instead).
    let mut tiles: Vec<u32> = Vec::new();
    for t in tensors.tensors.iter().filter(|t| t.ty == TensorType::TL2) {
        let (rows, cols) = (t.dims[1] as usize, t.dims[0] as usize);
        let tiling = tl2::Tiling::for_shape(rows, cols)?;
        let entry = [rows, cols, tiling.bm, tiling.bk].map(|v| v as u32);
        if !tiles.chunks_exact(4).any(|c| c == entry) {
            tiles.extend(entry);
        }
    }
    if !tiles.is_empty() {
        w.kv(tl2::TILES_KEY, Value::u32s(tiles));
    }
    for t in &tensors.tensors {
        w.tensor(&t.name, &t.dims, t.ty);
    }
    let total = tensors.tensors.len();
    let mut producers: Vec<_> = tensors.tensors.into_iter().map(|t| Some(t.data)).collect();
    let mut failure: Option<ConvertError> = None;
    let result = w.write_file(path, |i, out: &mut dyn Write| {
        let produce = producers[i].take().expect("each tensor is written once");
        match produce() {
            Ok(bytes) => {
                out.write_all(&bytes)?;
                progress(i + 1, total);
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                failure = Some(e);
                Err(std::io::Error::other(msg))
            }
        }
    });
    match (result, failure) {
        (_, Some(e)) => Err(e),
        (Err(source), None) => Err(ConvertError::Io {
            path: path.display().to_string(),
            source,
        }),
        (Ok(()), None) => Ok(()),
    }
}

/// The placeholder chat template BitNet's GGUF converter writes into every `bitnet` model
/// (`utils/convert-ms-to-gguf-bitnet.py`); no model was trained on it.
pub const BITNET_PLACEHOLDER_TEMPLATE: &str = "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n\\nBITNETAssistant: ' + eos_token }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

/// Rewrites a `bitnet`-arch file into exactly the metadata layout of Microsoft's published
/// 2B-4T GGUF: arch `bitnet-b1.58` with keys `bitnet-b1.58.*`, no `tokenizer.ggml.pre`, no
/// `hidden_activation` (the arch implies relu2), BitNet's placeholder chat template. `edit`
/// may change or drop (None) any resulting key. Tensors are copied unchanged. Used to test
/// and cross-validate the layout users arrive with (the 2026 BitNet.cpp reads only it).
pub fn to_published_layout(
    src: &Path,
    out: &Path,
    edit: &dyn Fn(&str, Value) -> Option<Value>,
) -> Result<(), ConvertError> {
    copy_with_metadata(src, out, &mut |g, w| {
        for (k, v) in g.metadata() {
            if k == "tokenizer.ggml.pre"
                || k.ends_with(".hidden_activation")
                || k == "tokenizer.chat_template"
            {
                continue;
            }
            let (k, v) = match (k.as_str(), k.strip_prefix("bitnet.")) {
                ("general.architecture", _) => (k.clone(), Value::String("bitnet-b1.58".into())),
                (_, Some(rest)) => (format!("bitnet-b1.58.{rest}"), v.clone()),
                _ => (k.clone(), v.clone()),
            };
            if let Some(v) = edit(&k, v) {
                w.kv(&k, v);
            }
        }
        if let Some(v) = edit(
            "tokenizer.chat_template",
            Value::String(BITNET_PLACEHOLDER_TEMPLATE.into()),
        ) {
            w.kv("tokenizer.chat_template", v);
        }
    })
}

/// Copies a GGUF with `edit` applied to each metadata value (None drops the key); tensors
/// unchanged.
pub fn rewrite_metadata(
    src: &Path,
    out: &Path,
    edit: &dyn Fn(&str, Value) -> Option<Value>,
) -> Result<(), ConvertError> {
    copy_with_metadata(src, out, &mut |g, w| {
        for (k, v) in g.metadata() {
            if let Some(v) = edit(k, v.clone()) {
                w.kv(k, v);
            }
        }
    })
}

/// Copies `src` to `out` with the metadata `meta` writes and the same tensors.
fn copy_with_metadata(
    src: &Path,
    out: &Path,
    meta: &mut dyn FnMut(&Gguf, &mut GgufWriter),
) -> Result<(), ConvertError> {
    let g = Gguf::open(src)?;
    let mut w = GgufWriter::new();
    meta(&g, &mut w);
    for t in g.tensors() {
        w.tensor(&t.name, &t.dims, t.ty);
    }
    w.write_file(out, |i, o| o.write_all(g.tensor_data(&g.tensors()[i])))
        .map_err(|source| ConvertError::Io {
            path: out.display().to_string(),
            source,
        })
}
