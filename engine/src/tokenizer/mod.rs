//! Tokenizers read from GGUF metadata (`tokenizer.ggml.*`), reproducing llama.cpp token for
//! token: SentencePiece-style score merging for `llama` vocabularies ([`spm`]) and byte-level
//! BPE with the LLaMA-3 (or GPT-2) pre-tokenizer for `gpt2` vocabularies ([`bpe`], [`pretok`]).
//! Special tokens are cut out of the text first (longest first), then each remaining fragment
//! is tokenized on its own. There is no fallback: a file without a tokenizer, with an unknown
//! model or pre-tokenizer, or with inconsistent arrays is a [`TokenizerError`].

mod bpe;
mod pretok;
mod spm;
mod unicode_tables;

use crate::gguf::{Gguf, GgufError, Value};
use pretok::PreTokenizer;
use std::collections::HashMap;
use std::fmt;

/// Why a tokenizer could not be built, or a token id could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the GGUF has no tokenizer (metadata key tokenizer.ggml.model is missing)")]
    MissingModel,
    #[error("unsupported tokenizer model {0:?} (supported: llama, gpt2)")]
    UnsupportedModel(String),
    #[error("unsupported BPE pre-tokenizer {0:?} (supported: llama-bpe, llama3, llama-v3, dbrx, smaug-bpe, gpt-2, phi-2, mpt, olmo, jais)")]
    UnsupportedPre(String),
    #[error("bad tokenizer metadata: {0}")]
    BadMetadata(String),
    #[error("token id {id} is out of range (the vocabulary has {vocab} tokens)")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// llama.cpp's token attributes, from `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl Attr {
    fn from_type(t: i32) -> Option<Attr> {
        Some(match t {
            0 => Attr::Undefined,
            1 => Attr::Normal,
            2 => Attr::Unknown,
            3 => Attr::Control,
            4 => Attr::UserDefined,
            5 => Attr::Unused,
            6 => Attr::Byte,
            _ => return None,
        })
    }
}

/// A fast non-cryptographic hasher (the FxHash mixing step) for the vocabulary maps: their
/// keys come from the model file, and SipHash made building a 128k-token vocabulary 3x slower.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits (hashbrown's bucket index) weak: fold the high in.
        let h = self.0;
        (h ^ (h >> 32)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 29)
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// Token texts, scores and attributes, and the text -> id map.
#[derive(Clone)]
struct Vocab {
    texts: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<Attr>,
    ids: FastMap<String, u32>,
}

impl Vocab {
    fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }
}

#[derive(Clone)]
enum Kind {
    /// `byte_tokens[b]`: the token emitted for byte `b` when a piece is not in the vocabulary.
    Spm {
        byte_tokens: Box<[Option<u32>; 256]>,
    },
    Bpe(Box<bpe::Bpe>),
}

/// Texts that llama.cpp recognises as end-of-turn tokens (forced to control, end generation).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<｜end▁of▁sentence｜>",
];
/// Texts that end generation (llama.cpp's `special_eog_ids` text list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
];
/// Fill-in-the-middle texts llama.cpp forces to control; the last group also ends generation.
const FIM_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<｜fim▁end｜>",
    "<MID>",
];
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<|file_sep|>",
];

/// Settings only a GGUF provides; [`Tokenizer::from_parts`] uses the defaults.
#[derive(Default)]
struct Extras {
    unk: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    add_space_prefix: Option<bool>,
}

/// A text piece of the input or a special token cut out of it.
enum Frag<'a> {
    Text(&'a str),
    Token(u32),
}

/// A tokenizer built from GGUF metadata. Cheap to share: encoding takes `&self`.
#[derive(Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    kind: Kind,
    /// Output bytes of each token (control and unknown tokens: empty).
    pieces: Vec<Box<[u8]>>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    has_user_defined: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// (pre-tokenizer, ignore_merges, default add_bos) of a `gpt2` vocabulary, per llama.cpp.
fn bpe_pre(pre: Option<&str>) -> Result<(PreTokenizer, bool, bool)> {
    match pre {
        Some("llama3" | "llama-v3" | "llama-bpe") => Ok((PreTokenizer::Llama3, true, true)),
        Some("dbrx" | "smaug-bpe") => Ok((PreTokenizer::Llama3, false, false)),
        Some("gpt-2" | "phi-2" | "mpt" | "olmo" | "jais") => Ok((PreTokenizer::Gpt2, false, false)),
        Some(other) => Err(TokenizerError::UnsupportedPre(other.to_owned())),
        None => Err(TokenizerError::UnsupportedPre(
            "(absent: llama.cpp 'default')".to_owned(),
        )),
    }
}

fn bad(msg: String) -> TokenizerError {
    TokenizerError::BadMetadata(msg)
}

/// A metadata array converted element-wise, or `None` when the key is absent.
fn array<T>(
    g: &Gguf,
    key: &str,
    what: &str,
    conv: impl Fn(&Value) -> Option<T>,
) -> Result<Option<Vec<T>>> {
    let Some(values) = g.get_array(key)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        out.push(conv(v).ok_or_else(|| bad(format!("{key}[{i}] is {v}, expected {what}")))?);
    }
    Ok(Some(out))
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g
            .get_str("tokenizer.ggml.model")?
            .ok_or(TokenizerError::MissingModel)?;
        let pre = g.get_str("tokenizer.ggml.pre")?;
        let (default_bos, default_eos, default_unk, default_add_bos) = match model {
            "llama" => (Some(1), Some(2), Some(0), true),
            "gpt2" => (Some(11), Some(11), None, bpe_pre(pre)?.2),
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let tokens = array(g, "tokenizer.ggml.tokens", "a string", |v| {
            v.as_str().map(str::to_owned)
        })?
        .ok_or_else(|| bad("tokenizer.ggml.tokens is missing".into()))?;
        let scores = array(g, "tokenizer.ggml.scores", "a number", |v| {
            v.as_f64().map(|x| x as f32)
        })?
        .unwrap_or_default();
        let types = array(g, "tokenizer.ggml.token_type", "an i32", |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })?
        .unwrap_or_default();
        let merges = if model == "gpt2" {
            array(g, "tokenizer.ggml.merges", "a string", |v| {
                v.as_str().map(str::to_owned)
            })?
            .ok_or_else(|| bad("tokenizer.ggml.merges is missing".into()))?
        } else {
            Vec::new()
        };

        let n = tokens.len();
        // Absent: the default if it is inside the vocabulary; negative: explicitly none.
        let id = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
            let Some(v) = g.get(key) else {
                return Ok(default.filter(|&d| (d as usize) < n));
            };
            let x = v
                .as_i64()
                .ok_or_else(|| bad(format!("{key} is {v}, expected an integer")))?;
            if x < 0 {
                return Ok(None);
            }
            match u32::try_from(x) {
                Ok(id) if (id as usize) < n => Ok(Some(id)),
                _ => Err(TokenizerError::TokenOutOfRange {
                    id: u32::try_from(x).unwrap_or(u32::MAX),
                    vocab: n,
                }),
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id", default_bos)?;
        let eos = id("tokenizer.ggml.eos_token_id", default_eos)?;
        let extras = Extras {
            unk: id("tokenizer.ggml.unknown_token_id", default_unk)?,
            eot: id("tokenizer.ggml.eot_token_id", None)?,
            eom: id("tokenizer.ggml.eom_token_id", None)?,
            add_space_prefix: g.get_bool("tokenizer.ggml.add_space_prefix")?,
        };
        let add_bos = g
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(default_add_bos);
        let add_eos = g.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        Self::build(
            model, pre, tokens, scores, types, merges, bos, eos, add_bos, add_eos, extras,
        )
    }

    /// Builds a tokenizer from already-extracted arrays (for converters). `scores` and `types`
    /// may be empty (all 0.0 / all normal); `merges` is only used by `gpt2`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        model: &str,
        pre: Option<&str>,
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        merges: Vec<String>,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        add_eos: bool,
    ) -> Result<Self> {
        let extras = Extras::default();
        Self::build(
            model, pre, tokens, scores, types, merges, bos, eos, add_bos, add_eos, extras,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        model: &str,
        pre: Option<&str>,
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        merges: Vec<String>,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        add_eos: bool,
        extras: Extras,
    ) -> Result<Self> {
        let is_spm = match model {
            "llama" => true,
            "gpt2" => false,
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let n = tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(bad(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        let scores = match scores.len() {
            0 => vec![0.0; n],
            len if len != n => return Err(bad(format!("{len} scores for {n} tokens"))),
            _ => scores,
        };
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            return Err(bad(format!("score of token {i} is NaN")));
        }
        let mut attrs = match types.len() {
            0 => vec![Attr::Normal; n],
            len if len != n => return Err(bad(format!("{len} token types for {n} tokens"))),
            _ => types
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    Attr::from_type(t).ok_or_else(|| bad(format!("token {i} has type {t}")))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let mut texts = tokens;
        let mut ids = FastMap::with_capacity_and_hasher(n, Default::default());
        for (i, text) in texts.iter_mut().enumerate() {
            if text.is_empty() {
                *text = format!("[EMPTY_{i}]"); // llama.cpp's name for empty tokens
            }
            if let Some(prev) = ids.insert(text.clone(), i as u32) {
                return Err(bad(format!("token {i} {text:?} duplicates token {prev}")));
            }
        }
        for id in [bos, eos, extras.unk, extras.eot, extras.eom]
            .into_iter()
            .flatten()
        {
            if id as usize >= n {
                return Err(TokenizerError::TokenOutOfRange { id, vocab: n });
            }
        }

        // llama.cpp's text-based special-token detection: these become control tokens.
        let find = |list: &[&str]| -> Vec<u32> {
            list.iter().filter_map(|t| ids.get(*t).copied()).collect()
        };
        let eot = extras.eot.or_else(|| find(EOT_TEXTS).into_iter().min());
        let eom = extras.eom.or_else(|| ids.get("<|eom_id|>").copied());
        let mut eog: Vec<u32> = find(EOG_TEXTS);
        eog.extend(find(FIM_EOG_TEXTS));
        let forced: Vec<u32> = eog
            .iter()
            .copied()
            .chain(find(FIM_TEXTS))
            .chain(eot)
            .chain(eom)
            .collect();
        for id in forced {
            attrs[id as usize] = Attr::Control;
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        let vocab = Vocab {
            texts,
            scores,
            attrs,
            ids,
        };
        let kind = if is_spm {
            let mut byte_tokens = Box::new([None; 256]);
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                *slot = vocab
                    .id(&format!("<0x{b:02X}>"))
                    .or_else(|| {
                        if b < 0x80 {
                            vocab.id(&char::from(b as u8).to_string())
                        } else {
                            None
                        }
                    })
                    .or(extras.unk.or_else(|| {
                        vocab
                            .attrs
                            .iter()
                            .position(|&a| a == Attr::Unknown)
                            .map(|i| i as u32)
                    }));
            }
            Kind::Spm { byte_tokens }
        } else {
            let (pre, ignore_merges, _) = bpe_pre(pre)?;
            Kind::Bpe(Box::new(bpe::Bpe::new(pre, ignore_merges, merges)?))
        };

        let pieces = Self::pieces(&vocab, is_spm)?;
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    vocab.attrs[i as usize],
                    Attr::Control | Attr::UserDefined | Attr::Unknown
                )
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(vocab.texts[i as usize].len()));
        let has_user_defined = vocab.attrs.contains(&Attr::UserDefined);
        Ok(Tokenizer {
            vocab,
            kind,
            pieces,
            specials,
            has_user_defined,
            bos,
            eos,
            eog,
            add_bos,
            add_eos,
            add_space_prefix: extras.add_space_prefix.unwrap_or(is_spm),
        })
    }

    /// The output bytes of every token, as llama.cpp's `token_to_piece` with `special = false`.
    fn pieces(vocab: &Vocab, is_spm: bool) -> Result<Vec<Box<[u8]>>> {
        let inv = bpe::char_to_byte_table(&bpe::byte_to_char());
        let mut pieces = Vec::with_capacity(vocab.texts.len());
        for (i, (text, &attr)) in vocab.texts.iter().zip(&vocab.attrs).enumerate() {
            let piece: Vec<u8> = match attr {
                Attr::UserDefined => text.as_bytes().to_vec(),
                Attr::Normal if is_spm => text.replace(spm::SPACE, " ").into_bytes(),
                Attr::Normal => bpe::decode_text(text, &inv),
                Attr::Byte if is_spm => {
                    let hex = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'));
                    match hex
                        .filter(|h| h.len() == 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => vec![b],
                        None => return Err(bad(format!("byte token {i} is {text:?}, not <0xXX>"))),
                    }
                }
                _ => Vec::new(),
            };
            pieces.push(piece.into_boxed_slice());
        }
        Ok(pieces)
    }

    /// Cuts special-token texts out of `text`, longest token first (as llama.cpp's
    /// `tokenizer_st_partition`). Control and unknown tokens only when `parse_special`;
    /// user-defined tokens always.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Frag<'a>> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Frag::Text(text));
        if !parse_special && !self.has_user_defined {
            return frags;
        }
        for &id in &self.specials {
            let attr = self.vocab.attrs[id as usize];
            if !parse_special && attr != Attr::UserDefined {
                continue;
            }
            let pat = self.vocab.texts[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Frag::Text(t) if t.contains(pat)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Frag::Text(mut rest) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = rest.find(pat) {
                    if at > 0 {
                        next.push(Frag::Text(&rest[..at]));
                    }
                    next.push(Frag::Token(id));
                    rest = &rest[at + pat.len()..];
                }
                if !rest.is_empty() {
                    next.push(Frag::Text(rest));
                }
            }
            frags = next;
        }
        frags
    }

    /// Token ids of `text`. `add_special` prepends BOS / appends EOS as the vocabulary's
    /// `add_bos_token` / `add_eos_token` say; `parse_special` makes control-token texts in
    /// `text` (e.g. `<|begin_of_text|>`) map to their ids instead of being tokenized as text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        // SentencePiece prefixes a space at the start and after every special token.
        let mut after_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Frag::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Frag::Text(t) => {
                    match &self.kind {
                        Kind::Spm { byte_tokens } => {
                            let prefix = self.add_space_prefix && after_special;
                            spm::tokenize(&self.vocab, byte_tokens, t, prefix, &mut out);
                        }
                        Kind::Bpe(bpe) => bpe.tokenize(&self.vocab, t, &mut out),
                    }
                    after_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    fn piece(&self, id: u32) -> Result<&[u8]> {
        self.pieces
            .get(id as usize)
            .map(|p| &p[..])
            .ok_or(TokenizerError::TokenOutOfRange {
                id,
                vocab: self.vocab_size(),
            })
    }

    /// The text of `ids`. Control tokens render as nothing; with a space-prefix vocabulary the
    /// first space of the first non-empty piece is dropped, so `decode(encode(x)) == x`.
    /// Invalid UTF-8 (e.g. a cut multi-byte character) is replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        let mut strip = self.add_space_prefix;
        for &id in ids {
            let mut p = self.piece(id)?;
            if strip && !p.is_empty() {
                p = p.strip_prefix(b" ").unwrap_or(p);
                strip = false;
            }
            bytes.extend_from_slice(p);
        }
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The bytes one token contributes to the output (for streaming; no space stripping).
    /// Control tokens give nothing; a byte token may be part of a multi-byte character.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        self.piece(id).map(<[u8]>::to_vec)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.texts.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End of generation: EOS, EOT, EOM and the tokens llama.cpp treats as such by their text.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// `"llama"` (SentencePiece-style) or `"gpt2"` (byte-level BPE).
    pub fn kind(&self) -> &'static str {
        match self.kind {
            Kind::Spm { .. } => "llama",
            Kind::Bpe(_) => "gpt2",
        }
    }

    /// The vocabulary text of a token (`▁`-escaped / byte-alphabet form, as stored).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }
}
