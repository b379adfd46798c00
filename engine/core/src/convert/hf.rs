//! Hugging Face `BitNetForCausalLM` checkpoints (transformers' `models/bitnet` and
//! `integrations/bitnet.py`) to `bitnet-b1.58` GGUF.
//!
//! A checkpoint directory holds `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json` and optionally
//! `generation_config.json`. Its projections come in one of three layouts
//! (`quantization_config.linear_class` / `quantization_mode`), each read into ternary values
//! and one scale per matrix (the effective weight is value x scale):
//! - `bitlinear`, offline (the released 2B-4T): `weight` uint8 `[out/4, in]`, byte `[r, c]` holds
//!   in bits `2i..2i+1` the code of row `i * out/4 + r`, value = code - 1; transformers divides
//!   the product by `weight_scale`, so the scale is `1 / weight_scale`;
//! - `autobitlinear`, offline: `weight` holds the ternary values themselves (any float type),
//!   multiplied by `weight_scale` after the product;
//! - `autobitlinear`, online (the `-bf16` master weights): the float weights are ternarized
//!   per tensor with absmean as transformers' `WeightQuant` does: `s = 1 / max(mean|W|, 1e-5)`,
//!   value = clamp(round_half_even(W x s), -1, 1), scale = 1 / s.
//!
//! HF's RoPE (`rotate_half`) pairs `i` and `i + d/2`, as the `bitnet` graph's NEOX RoPE does,
//! so q and k rows are taken as they are. The tokenizer comes from `tokenizer.json` (byte-level
//! BPE: vocabulary, merges, added tokens), its pre-tokenizer identified by the vocabulary's
//! fingerprint or by the pre-tokenizer `tokenizer.json` declares; the chat template from
//! `tokenizer_config.json`.
//!
//! Every file is validated before anything is written (shapes, dtypes, shards, the layout,
//! the tokenizer); tensors are then read from the memory-mapped shards one at a time, so the
//! model is never held twice.
//!
//! Length: one file on purpose (~840 lines): config, tensor layouts and tokenizer are read in
//! one validated pass before anything is written; its three parts share the checkpoint's types.

use super::{write_bitnet, BitnetTensors, ConvertError, Ternary, Vocab, WeightFormat};
use crate::model::{Activation, Config};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How a checkpoint stores its projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `bitlinear`, offline: 2-bit codes packed four rows to a byte, `weight_scale` divides.
    BitLinear,
    /// `autobitlinear`, offline: ternary values as floats, `weight_scale` multiplies.
    AutoOffline,
    /// `autobitlinear`, online: float master weights, ternarized by absmean here.
    AutoOnline,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::BitLinear => "bitlinear (offline, packed)",
            Layout::AutoOffline => "autobitlinear (offline)",
            Layout::AutoOnline => "autobitlinear (online)",
        }
    }
}

/// The hyper-parameters of `config.json` this converter uses.
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub norm_eps: f32,
    pub activation: Activation,
    pub tied: bool,
    pub layout: Layout,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

fn bad(msg: impl Into<String>) -> ConvertError {
    ConvertError::Checkpoint(msg.into())
}

fn read_json(path: &Path) -> Result<Json, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// A JSON id or list of ids (HF writes `eos_token_id` either way).
fn ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl HfConfig {
    pub fn from_json(c: &Json) -> Result<Self, ConvertError> {
        let arch = c["architectures"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Json::as_str)
            .unwrap_or("(none)");
        if arch != "BitNetForCausalLM" {
            return Err(bad(format!(
                "config.json: architectures {arch:?}, expected \"BitNetForCausalLM\""
            )));
        }
        let num = |k: &str| -> Result<usize, ConvertError> {
            match c[k].as_u64() {
                Some(v) if v > 0 && v <= 1 << 24 => Ok(v as usize),
                Some(v) => Err(bad(format!("config.json: {k} = {v} is out of range"))),
                None => Err(bad(format!(
                    "config.json: {k} is missing or not an integer"
                ))),
            }
        };
        let dim = num("hidden_size")?;
        let n_heads = num("num_attention_heads")?;
        let n_kv_heads = match c.get("num_key_value_heads") {
            Some(_) => num("num_key_value_heads")?,
            None => n_heads,
        };
        let head_dim = match c.get("head_dim") {
            Some(Json::Null) | None => dim / n_heads,
            Some(_) => num("head_dim")?,
        };
        if !dim.is_multiple_of(n_heads) && c.get("head_dim").is_none() {
            return Err(bad(format!(
                "config.json: hidden_size {dim} is not a multiple of num_attention_heads {n_heads}"
            )));
        }
        if !n_heads.is_multiple_of(n_kv_heads) || head_dim % 2 != 0 {
            return Err(bad(format!(
                "config.json: {n_heads} heads, {n_kv_heads} KV heads, head_dim {head_dim}: heads must divide evenly and head_dim be even"
            )));
        }
        let activation = match c["hidden_act"].as_str() {
            Some("relu2") => Activation::Relu2,
            Some("silu") => Activation::Silu,
            other => {
                return Err(bad(format!(
                    "config.json: hidden_act {other:?} (supported: relu2, silu)"
                )))
            }
        };
        // Recent transformers keep RoPE settings in `rope_parameters`.
        let rope_theta = c["rope_theta"]
            .as_f64()
            .or_else(|| c["rope_parameters"]["rope_theta"].as_f64())
            .unwrap_or(10000.0) as f32;
        if c["quantization_config"]["use_rms_norm"].as_bool() == Some(true) {
            return Err(bad(
                "config.json: quantization_config.use_rms_norm = true (an extra RMSNorm inside every BitLinear) is not supported",
            ));
        }
        if let Some(t) = c["rope_scaling"].as_object() {
            return Err(bad(format!(
                "config.json: rope_scaling {t:?} is not supported"
            )));
        }
        let norm_eps = c["rms_norm_eps"].as_f64().unwrap_or(1e-5) as f32;
        let q = &c["quantization_config"];
        if q.is_null() {
            return Err(bad(
                "config.json has no quantization_config: not a BitNet b1.58 checkpoint",
            ));
        }
        if q["quant_method"].as_str() != Some("bitnet") {
            return Err(bad(format!(
                "config.json: quantization_config.quant_method {:?}, expected \"bitnet\"",
                q["quant_method"]
            )));
        }
        let mode = q["quantization_mode"].as_str().unwrap_or("offline");
        let layout = match (q["linear_class"].as_str().unwrap_or("bitlinear"), mode) {
            ("bitlinear", "offline") => Layout::BitLinear,
            ("autobitlinear", "offline") => Layout::AutoOffline,
            ("autobitlinear", "online") => Layout::AutoOnline,
            (class, mode) => {
                return Err(bad(format!(
                    "config.json: quantization_config linear_class {class:?} with quantization_mode {mode:?} is not a layout transformers defines (bitlinear/offline, autobitlinear/offline, autobitlinear/online)"
                )))
            }
        };
        Ok(HfConfig {
            dim,
            hidden_dim: num("intermediate_size")?,
            n_layers: num("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size: num("vocab_size")?,
            context_length: c["max_position_embeddings"].as_u64().unwrap_or(4096) as usize,
            rope_theta,
            norm_eps,
            activation,
            // BitNetConfig's default is untied.
            tied: c["tie_word_embeddings"].as_bool().unwrap_or(false),
            layout,
            bos: c["bos_token_id"].as_u64().map(|v| v as u32),
            eos: ids(c.get("eos_token_id")),
        })
    }

    fn engine_config(&self) -> Config {
        Config {
            arch: "bitnet-b1.58".into(),
            dim: self.dim,
            hidden_dim: self.hidden_dim,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            rope_dim: self.head_dim,
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            rope_theta: self.rope_theta,
            norm_eps: self.norm_eps,
            activation: self.activation,
        }
    }
}

/// The checkpoint's shards, memory-mapped, and where each tensor lies (every header is parsed
/// once, when the shards are opened).
pub struct Shards {
    maps: Vec<memmap2::Mmap>,
    index: BTreeMap<String, Entry>,
}

/// A tensor of a shard: the shard, its dtype and shape, and its bytes in the shard's map.
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

impl Shards {
    pub fn open(dir: &Path) -> Result<Self, ConvertError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let idx = read_json(&index_path)?;
            let map = idx["weight_map"]
                .as_object()
                .ok_or_else(|| bad(format!("{}: no weight_map", index_path.display())))?;
            let mut files: Vec<String> = map
                .values()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("weight_map values must be file names"))
                })
                .collect::<Result<_, _>>()?;
            files.sort();
            files.dedup();
            for f in &files {
                if f.contains('/') || f.contains('\\') || f == ".." {
                    return Err(bad(format!(
                        "weight_map names a file outside the directory: {f}"
                    )));
                }
            }
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(bad(format!(
                "{}: neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            )));
        };
        let mut maps = Vec::new();
        let mut index = BTreeMap::new();
        for (i, path) in files.into_iter().enumerate() {
            if !path.exists() {
                return Err(bad(format!(
                    "missing shard {} (listed in model.safetensors.index.json)",
                    path.display()
                )));
            }
            let f = std::fs::File::open(&path).map_err(|source| ConvertError::Io {
                path: path.display().to_string(),
                source,
            })?;
            // SAFETY: the file is mapped read-only; like every model reader we assume it is not
            // modified while we convert (a concurrent writer could change the bytes we read,
            // never memory safety of this process beyond those values).
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|source| ConvertError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            for (name, t) in st.tensors() {
                let start = t.data().as_ptr() as usize - map.as_ptr() as usize;
                let entry = Entry {
                    shard: i,
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    bytes: start..start + t.data().len(),
                };
                if index.insert(name.clone(), entry).is_some() {
                    return Err(bad(format!("tensor {name} appears in two shards")));
                }
            }
            drop(st);
            maps.push(map);
        }
        Ok(Shards { maps, index })
    }

    /// A tensor's dtype, shape and bytes.
    pub fn get(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8]), ConvertError> {
        let e = self
            .index
            .get(name)
            .ok_or_else(|| bad(format!("missing tensor {name}")))?;
        Ok((
            e.dtype,
            e.shape.clone(),
            &self.maps[e.shard][e.bytes.clone()],
        ))
    }
}

/// Float values of a float tensor (F32, F16 or BF16).
fn floats(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, ConvertError> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(bad(format!(
                "{name}: dtype {other:?}, expected a float type (F32, F16, BF16)"
            )))
        }
    })
}

fn expect_shape(name: &str, got: &[usize], want: &[usize]) -> Result<(), ConvertError> {
    if got != want {
        return Err(bad(format!("{name}: shape {got:?}, expected {want:?}")));
    }
    Ok(())
}

/// A one-element float tensor (`weight_scale`).
fn scalar(sh: &Shards, name: &str) -> Result<f32, ConvertError> {
    let (dtype, shape, bytes) = sh.get(name)?;
    if shape.iter().product::<usize>() != 1 {
        return Err(bad(format!(
            "{name}: shape {shape:?}, expected one element"
        )));
    }
    Ok(floats(name, dtype, bytes)?[0])
}

/// Checks a projection's tensors (dtype, shape) without decoding it.
fn check_projection(
    sh: &Shards,
    layout: Layout,
    prefix: &str,
    rows: usize,
    cols: usize,
) -> Result<(), ConvertError> {
    let name = format!("{prefix}.weight");
    let (dtype, shape, _) = sh.get(&name)?;
    match layout {
        Layout::BitLinear => {
            if dtype != Dtype::U8 {
                return Err(bad(format!(
                    "{name}: dtype {dtype:?}, expected U8 (packed bitlinear)"
                )));
            }
            if !rows.is_multiple_of(4) {
                return Err(bad(format!(
                    "{name}: {rows} output rows do not pack four to a byte"
                )));
            }
            expect_shape(&name, &shape, &[rows / 4, cols])?;
        }
        Layout::AutoOffline | Layout::AutoOnline => {
            floats(&name, dtype, &[])?;
            expect_shape(&name, &shape, &[rows, cols])?;
        }
    }
    if layout != Layout::AutoOnline {
        scalar(sh, &format!("{prefix}.weight_scale"))?;
    }
    Ok(())
}

/// Round half to even, as `torch.round`.
fn round_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// One projection as ternary values and a scale.
pub fn ternary(
    sh: &Shards,
    layout: Layout,
    prefix: &str,
    rows: usize,
    cols: usize,
) -> Result<Ternary, ConvertError> {
    let name = format!("{prefix}.weight");
    let (dtype, _, bytes) = sh.get(&name)?;
    let (values, scale) = match layout {
        Layout::BitLinear => {
            let q = rows / 4;
            let mut v = vec![0i8; rows * cols];
            for (r, row) in v.chunks_exact_mut(cols).enumerate() {
                let (i, pr) = (r / q, r % q);
                for (c, o) in row.iter_mut().enumerate() {
                    let code = (bytes[pr * cols + c] >> (2 * i)) & 3;
                    if code == 3 {
                        return Err(bad(format!(
                            "{name}: code 3 at row {r}, column {c} (codes are 0, 1, 2)"
                        )));
                    }
                    *o = code as i8 - 1;
                }
            }
            let ws = scalar(sh, &format!("{prefix}.weight_scale"))?;
            (v, 1.0 / ws)
        }
        Layout::AutoOffline => {
            let f = floats(&name, dtype, bytes)?;
            let mut v = Vec::with_capacity(f.len());
            for (j, &x) in f.iter().enumerate() {
                v.push(match x {
                    -1.0 => -1,
                    0.0 => 0,
                    1.0 => 1,
                    _ => {
                        return Err(bad(format!(
                            "{name}: element {j} is {x}, not a ternary value (offline autobitlinear stores -1, 0, 1)"
                        )))
                    }
                });
            }
            (v, scalar(sh, &format!("{prefix}.weight_scale"))?)
        }
        Layout::AutoOnline => {
            let f = floats(&name, dtype, bytes)?;
            let w = absmean_ternary(&f);
            (w.0, w.1)
        }
    };
    if !scale.is_finite() || scale <= 0.0 {
        return Err(bad(format!(
            "{prefix}: scale {scale} is not a positive finite number"
        )));
    }
    Ok(Ternary {
        rows,
        cols,
        values,
        scale,
    })
}

/// transformers' `WeightQuant` on a float tensor, computed in f32 as it does:
/// `s = 1 / max(mean|W|, 1e-5)`, value = clamp(round_half_even(W x s), -1, 1), scale `1 / s`
/// (transformers casts `value / s` to the compute dtype; the scale is kept in f32, as an
/// f32 run of transformers computes it, whatever the file's dtype).
pub fn absmean_ternary(w: &[f32]) -> (Vec<i8>, f32) {
    let sum: f64 = w.iter().map(|&x| x.abs() as f64).sum();
    let mean = ((sum / w.len().max(1) as f64) as f32).max(1e-5);
    let s = 1.0 / mean;
    let values = w
        .iter()
        .map(|&x| round_even(x * s).clamp(-1.0, 1.0) as i8)
        .collect();
    (values, 1.0 / s)
}

/// The tokenizer of `tokenizer.json` + `tokenizer_config.json` as GGUF metadata.
pub fn read_vocab(
    dir: &Path,
    cfg: &HfConfig,
    pre_override: Option<&str>,
) -> Result<Vocab, ConvertError> {
    let tbad = |m: String| ConvertError::Tokenizer(m);
    let tj = read_json(&dir.join("tokenizer.json"))?;
    let tc = match dir.join("tokenizer_config.json") {
        p if p.exists() => read_json(&p)?,
        _ => Json::Null,
    };
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(tbad(format!(
            "tokenizer.json: model type {:?}, expected BPE (byte-level)",
            model["type"]
        )));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| tbad("tokenizer.json: model.vocab is missing".into()))?;
    let merges_json = model["merges"]
        .as_array()
        .ok_or_else(|| tbad("tokenizer.json: model.merges is missing".into()))?;
    if merges_json.is_empty() {
        return Err(tbad("tokenizer.json: model.merges is empty".into()));
    }
    let mut merges = Vec::with_capacity(merges_json.len());
    for (i, m) in merges_json.iter().enumerate() {
        merges.push(match m {
            Json::String(s) => s.clone(),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => {
                format!(
                    "{} {}",
                    p[0].as_str().unwrap_or(""),
                    p[1].as_str().unwrap_or("")
                )
            }
            _ => return Err(tbad(format!("tokenizer.json: merge {i} is {m}"))),
        });
    }
    // Ids: the BPE vocabulary, then added tokens (which may also be in it).
    let n = cfg.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![1i32; n];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<(), ConvertError> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            tbad(format!(
                "tokenizer.json: token {text:?} has id {id}, outside the model's vocabulary of {n}"
            ))
        })?;
        *slot = Some(text.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| tbad(format!("tokenizer.json: id of {text:?} is {id}")))?;
        place(id, text, 1)?;
    }
    for a in tj["added_tokens"].as_array().map_or(&[][..], |v| v) {
        let (Some(id), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(tbad(format!("tokenizer.json: added token {a}")));
        };
        let ty = if a["special"].as_bool().unwrap_or(false) {
            3
        } else {
            4
        };
        place(id, text, ty)?;
    }
    // Rows of the embedding no token uses (vocabularies padded to a round size).
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let find = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
    let special = |k: &str| -> Option<u32> {
        match &tc[k] {
            Json::String(s) => find(s),
            Json::Object(o) => o.get("content").and_then(Json::as_str).and_then(find),
            _ => None,
        }
    };
    let bos = special("bos_token").or(cfg.bos);
    let eos = special("eos_token").or_else(|| cfg.eos.first().copied());
    // Turn ends: `<|eot_id|>` where the vocabulary has it, else any other id that
    // generation_config / config list as end of sequence.
    let gen = match dir.join("generation_config.json") {
        p if p.exists() => read_json(&p)?,
        _ => Json::Null,
    };
    let mut ends = ids(gen.get("eos_token_id"));
    ends.extend(&cfg.eos);
    let eot = find("<|eot_id|>").or_else(|| ends.into_iter().find(|&e| Some(e) != eos));
    let pre = match pre_override {
        Some(p) => p.to_string(),
        None => identify_pre(&tokens, &types, &merges, &tj["pre_tokenizer"])?,
    };
    let add_bos = tc["add_bos_token"]
        .as_bool()
        .unwrap_or_else(|| tj["post_processor"].to_string().contains("bos") || pre == "llama-bpe");
    let chat_template = match &tc["chat_template"] {
        Json::String(s) => Some(s.clone()),
        Json::Null => None,
        // A list of named templates: the default one.
        Json::Array(a) => a
            .iter()
            .find(|t| t["name"].as_str() == Some("default"))
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        other => {
            return Err(tbad(format!(
                "tokenizer_config.json: chat_template is {other}"
            )))
        }
    };
    let vocab = Vocab {
        model: "gpt2".into(),
        pre: Some(pre),
        tokens,
        scores: Vec::new(),
        types,
        merges,
        bos,
        eos,
        unk: None,
        add_bos,
        add_space_prefix: None,
        eot,
        chat_template,
    };
    // The engine must be able to load what is written: build the tokenizer now (merges that
    // name missing tokens, duplicate tokens, ids out of range are refused here, not at load).
    crate::tokenizer::Tokenizer::from_parts(
        &vocab.model,
        vocab.pre.as_deref(),
        vocab.tokens.clone(),
        vocab.scores.clone(),
        vocab.types.clone(),
        vocab.merges.clone(),
        vocab.bos,
        vocab.eos,
        vocab.add_bos,
        false,
    )
    .map_err(|e| tbad(format!("tokenizer.json: {e}")))?;
    Ok(vocab)
}

/// LLaMA-3's pre-tokenizer split pattern (tokenizer.json `Split` regex).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer of a byte-level BPE vocabulary: a known vocabulary's by fingerprint, else
/// the one `tokenizer.json` declares if it is one the engine implements; never a guess.
fn identify_pre(
    tokens: &[String],
    types: &[i32],
    merges: &[String],
    pre: &Json,
) -> Result<String, ConvertError> {
    let fp = crate::tokenizer::vocab_fingerprint(tokens, types, merges);
    if let Some((_, name)) = crate::tokenizer::KNOWN_VOCABS
        .iter()
        .find(|(f, _)| *f == fp)
    {
        return Ok(name.to_string());
    }
    let byte_level = |p: &Json| p["type"].as_str() == Some("ByteLevel");
    let declared = if byte_level(pre) && pre["use_regex"].as_bool().unwrap_or(true) {
        Some("gpt-2")
    } else if pre["type"].as_str() == Some("Sequence") {
        let steps = pre["pretokenizers"].as_array().map_or(&[][..], |v| v);
        let split = steps.iter().find(|s| s["type"].as_str() == Some("Split"));
        let regex = split.and_then(|s| s["pattern"]["Regex"].as_str());
        let last_byte_level = steps
            .last()
            .is_some_and(|s| byte_level(s) && s["use_regex"].as_bool() == Some(false));
        (steps.len() == 2 && regex == Some(LLAMA3_SPLIT) && last_byte_level).then_some("llama-bpe")
    } else {
        None
    };
    declared.map(str::to_string).ok_or_else(|| {
        ConvertError::Tokenizer(format!(
            "tokenizer.json: pre-tokenizer {pre} is not one this engine implements and the vocabulary (fingerprint {fp}) is not a known one; name it with --tokenizer-pre NAME"
        ))
    })
}

/// HF tensor-name prefix and GGUF name of each projection, with its (rows, cols).
fn projections(c: &HfConfig, l: usize) -> Vec<(String, String, usize, usize)> {
    let (dim, ff) = (c.dim, c.hidden_dim);
    let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let p = |hf: &str, gg: &str, rows: usize, cols: usize| {
        (
            format!("model.layers.{l}.{hf}"),
            format!("blk.{l}.{gg}.weight"),
            rows,
            cols,
        )
    };
    vec![
        p("self_attn.q_proj", "attn_q", q, dim),
        p("self_attn.k_proj", "attn_k", kv, dim),
        p("self_attn.v_proj", "attn_v", kv, dim),
        p("self_attn.o_proj", "attn_output", dim, q),
        p("mlp.gate_proj", "ffn_gate", ff, dim),
        p("mlp.up_proj", "ffn_up", ff, dim),
        p("mlp.down_proj", "ffn_down", dim, ff),
    ]
}

/// Norm weights: HF name, GGUF name, length.
fn norms(c: &HfConfig, l: usize) -> Vec<(String, String, usize)> {
    let n = |hf: &str, gg: &str, len: usize| {
        (
            format!("model.layers.{l}.{hf}.weight"),
            format!("blk.{l}.{gg}.weight"),
            len,
        )
    };
    vec![
        n("input_layernorm", "attn_norm", c.dim),
        n("self_attn.attn_sub_norm", "attn_sub_norm", c.dim),
        n("post_attention_layernorm", "ffn_norm", c.dim),
        n("mlp.ffn_sub_norm", "ffn_sub_norm", c.hidden_dim),
    ]
}

/// Options of `bitnet convert hf`.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    pub weights: WeightFormat,
    pub embedding: super::EmbedFormat,
    pub tokenizer_pre: Option<&'a str>,
}

/// Converts the checkpoint in `dir` to `out`. Everything is checked before the file is
/// started; on any error nothing is left at `out`.
pub fn convert(
    dir: &Path,
    out: &Path,
    opts: Options<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ConvertError> {
    let cfg = HfConfig::from_json(&read_json(&dir.join("config.json"))?)?;
    let vocab = read_vocab(dir, &cfg, opts.tokenizer_pre)?;
    let sh = Shards::open(dir)?;
    // Validate every tensor first: names, dtypes, shapes.
    let (dim, nv) = (cfg.dim, cfg.vocab_size);
    let check_float = |name: &str, shape: &[usize]| -> Result<(), ConvertError> {
        let (dtype, got, _) = sh.get(name)?;
        floats(name, dtype, &[])?;
        expect_shape(name, &got, shape)
    };
    check_float("model.embed_tokens.weight", &[nv, dim])?;
    check_float("model.norm.weight", &[dim])?;
    if !cfg.tied {
        check_float("lm_head.weight", &[nv, dim])?;
    }
    for l in 0..cfg.n_layers {
        for (hf, _, len) in norms(&cfg, l) {
            check_float(&hf, &[len])?;
        }
        for (hf, _, rows, cols) in projections(&cfg, l) {
            check_projection(&sh, cfg.layout, &hf, rows, cols)?;
            if !cols.is_multiple_of(opts.weights.block()) {
                return Err(ConvertError::Usage(format!(
                    "{hf}: {cols} columns are not a multiple of {} ({:?} blocks); choose another --weights",
                    opts.weights.block(),
                    opts.weights
                )));
            }
        }
    }
    let float = |name: &'static str| -> Result<Vec<f32>, ConvertError> {
        let (dtype, _, bytes) = sh.get(name)?;
        floats(name, dtype, bytes)
    };
    let read_float = |name: String| -> Vec<f32> {
        let (dtype, _, bytes) = sh.get(&name).expect("validated above");
        floats(&name, dtype, bytes).expect("validated above")
    };
    let ecfg = cfg.engine_config();
    let mut t = BitnetTensors::new();
    let embd = float("model.embed_tokens.weight")?;
    t.embedding(
        "token_embd.weight",
        &[dim as u64, nv as u64],
        opts.embedding,
        move || embd,
    )?;
    t.float(
        "output_norm.weight",
        &[dim as u64],
        super::FloatFormat::F32,
        move || read_float("model.norm.weight".into()),
    );
    if !cfg.tied {
        let head = float("lm_head.weight")?;
        t.embedding(
            "output.weight",
            &[dim as u64, nv as u64],
            opts.embedding,
            move || head,
        )?;
    }
    let sh = &sh;
    for l in 0..cfg.n_layers {
        let nm = norms(&cfg, l);
        let pr = projections(&cfg, l);
        // The reference's tensor order within a block: norms and products as the graph uses
        // them.
        enum Item {
            Norm(usize),
            Proj(usize),
        }
        use Item::{Norm, Proj};
        for item in [
            Norm(0),
            Proj(0),
            Proj(1),
            Proj(2),
            Norm(1),
            Proj(3),
            Norm(2),
            Proj(4),
            Proj(5),
            Norm(3),
            Proj(6),
        ] {
            match item {
                Norm(i) => {
                    let (hf, gg, len) = nm[i].clone();
                    t.float(&gg, &[len as u64], super::FloatFormat::F32, move || {
                        let (dtype, _, bytes) = sh.get(&hf).expect("validated above");
                        floats(&hf, dtype, bytes).expect("validated above")
                    });
                }
                Proj(i) => {
                    let (hf, gg, rows, cols) = pr[i].clone();
                    let layout = cfg.layout;
                    t.ternary(
                        &gg,
                        opts.weights,
                        move || ternary(sh, layout, &hf, rows, cols),
                        rows,
                        cols,
                    );
                }
            }
        }
    }
    let name = dir
        .file_name()
        .map_or("hf".to_string(), |n| n.to_string_lossy().into_owned());
    write_bitnet(out, &name, &ecfg, opts.weights, &vocab, t, progress)
}
