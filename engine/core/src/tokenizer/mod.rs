//! Tokenizers read from GGUF metadata (`tokenizer.ggml.*`), reproducing llama.cpp token for
//! token: SentencePiece-style score merging for `llama` vocabularies ([`spm`]) and byte-level
//! BPE with the LLaMA-3 (or GPT-2) pre-tokenizer for `gpt2` vocabularies ([`bpe`], [`pretok`]).
//! Special tokens are cut out of the text first (longest first), then each remaining fragment
//! is tokenized on its own. There is no fallback: a file without a tokenizer, with an unknown
//! model or pre-tokenizer, or with inconsistent arrays is a [`TokenizerError`].
//!
//! Length: ~630 lines, just over the house limit: the loader's checks of every
//! `tokenizer.ggml.*` key belong with the type they build.

mod bpe;
mod merge;
mod pretok;
mod special;
mod spm;
mod table;
mod unicode_tables;

use crate::gguf::{Gguf, GgufError, Value};
use pretok::PreTokenizer;
use special::Frag;
use std::fmt;
use table::StrTable;

/// Why a tokenizer could not be built, or a token id could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the GGUF has no tokenizer (metadata key tokenizer.ggml.model is missing)")]
    MissingModel,
    #[error("unsupported tokenizer model {0:?} (supported: llama, gpt2)")]
    UnsupportedModel(String),
    #[error("unsupported BPE pre-tokenizer {0:?} (supported: llama-bpe, llama3, llama-v3, dbrx, smaug-bpe, gpt-2, phi-2, mpt, olmo, jais)")]
    UnsupportedPre(String),
    #[error("the file has no tokenizer.ggml.pre and its vocabulary (fingerprint {0}) is not one this engine recognises; name the pre-tokenizer with --tokenizer-pre NAME (llama-bpe, gpt-2, ...) rather than guess a split")]
    UnknownVocab(String),
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

/// Token texts (with the text -> id index), scores and attributes.
#[derive(Clone)]
struct Vocab {
    texts: StrTable,
    scores: Vec<f32>,
    attrs: Vec<Attr>,
}

impl Vocab {
    fn id(&self, text: &str) -> Option<u32> {
        self.texts.find(text)
    }
    fn text(&self, id: u32) -> &str {
        self.texts.get(id as usize).unwrap_or_default()
    }
    fn len(&self) -> usize {
        self.texts.len()
    }
}

/// The output bytes of every token, in one buffer.
#[derive(Clone, Default)]
struct Pieces {
    bytes: Vec<u8>,
    /// Token `i` is `bytes[ends[i - 1]..ends[i]]`.
    ends: Vec<usize>,
}

impl Pieces {
    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
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

/// Everything a tokenizer is built from (GGUF metadata or converter input).
struct Parts<'a, T, M> {
    model: &'a str,
    pre: Option<&'a str>,
    tokens: &'a [T],
    scores: Vec<f32>,
    types: Vec<i32>,
    merges: &'a [M],
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Default: true for `llama`, false for `gpt2`.
    add_space_prefix: Option<bool>,
}

/// A tokenizer built from GGUF metadata. Cheap to share: encoding takes `&self`.
#[derive(Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    kind: Kind,
    /// Output bytes of each token (control and unknown tokens: empty).
    pieces: Pieces,
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
    /// A `gpt2` vocabulary's pre-tokenizer and its source.
    pre: Option<(String, PreSource)>,
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

/// Vocabularies recognised by [`vocab_fingerprint`] when a `gpt2` file has no
/// `tokenizer.ggml.pre` (Microsoft's published BitNet b1.58 2B-4T GGUF lacks it): (fingerprint,
/// pre-tokenizer). llama.cpp's converter identifies vocabularies the same way (its `chkhsh`,
/// which hashes a tokenization; a GGUF holds no tokenizer to run, so this hashes the
/// vocabulary itself). The LLaMA-3 entry is checked against llama.cpp's LLaMA-3 vocab file in
/// `tests/tokenizer_vectors.rs`.
pub const KNOWN_VOCABS: &[(&str, &str)] = &[(
    "9edd1a52ede06e72ea1b583237b8aed391787a638ca1de911b02f7815d14b496",
    "llama-bpe",
)];

/// sha256 (hex) of a BPE vocabulary: the text of every normal token (type 1, or every token
/// when the file gives no types), each followed by a NUL, a 0x01 byte, then every merge
/// followed by a NUL. Control and user-defined tokens are left out: releases of one
/// vocabulary differ in how they name their reserved specials.
pub fn vocab_fingerprint<T: AsRef<str>, M: AsRef<str>>(
    tokens: &[T],
    types: &[i32],
    merges: &[M],
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (i, t) in tokens.iter().enumerate() {
        if types.get(i).is_none_or(|&ty| ty == 1) {
            h.update(t.as_ref().as_bytes());
            h.update([0u8]);
        }
    }
    h.update([1u8]);
    for m in merges {
        h.update(m.as_ref().as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a `gpt2` tokenizer's pre-tokenizer came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreSource {
    /// The file's `tokenizer.ggml.pre`.
    Key,
    /// The caller's override (`--tokenizer-pre`).
    Override,
    /// The file has no key; the vocabulary's fingerprint is a known one.
    Fingerprint(String),
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
fn array<'g, T>(
    g: &'g Gguf,
    key: &str,
    what: &str,
    conv: impl Fn(&'g Value) -> Option<T>,
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
        Self::from_gguf_with(g, None)
    }

    /// [`Tokenizer::from_gguf`], with the pre-tokenizer of a `gpt2` vocabulary named by the
    /// caller (it wins over the file's key). Without either, a vocabulary whose
    /// [`vocab_fingerprint`] is in [`KNOWN_VOCABS`] gets its pre-tokenizer
    /// ([`Tokenizer::pre_tokenizer`] says so); any other is [`TokenizerError::UnknownVocab`].
    pub fn from_gguf_with(g: &Gguf, pre_override: Option<&str>) -> Result<Self> {
        let model = g
            .get_str("tokenizer.ggml.model")?
            .ok_or(TokenizerError::MissingModel)?;
        let tokens = array(g, "tokenizer.ggml.tokens", "a string", Value::as_str)?
            .ok_or_else(|| bad("tokenizer.ggml.tokens is missing".into()))?;
        let scores = array(g, "tokenizer.ggml.scores", "a number", |v| {
            v.as_f64().map(|x| x as f32)
        })?
        .unwrap_or_default();
        let types = array(g, "tokenizer.ggml.token_type", "an i32", |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })?
        .unwrap_or_default();
        let merges = match model {
            "gpt2" => array(g, "tokenizer.ggml.merges", "a string", Value::as_str)?
                .ok_or_else(|| bad("tokenizer.ggml.merges is missing".into()))?,
            _ => Vec::new(),
        };
        let (pre, pre_source) = match (pre_override, g.get_str("tokenizer.ggml.pre")?) {
            (Some(p), _) => (Some(p), Some(PreSource::Override)),
            (None, Some(p)) => (Some(p), Some(PreSource::Key)),
            (None, None) if model == "gpt2" => {
                let fp = vocab_fingerprint(&tokens, &types, &merges);
                match KNOWN_VOCABS.iter().find(|(f, _)| *f == fp) {
                    Some(&(_, name)) => (Some(name), Some(PreSource::Fingerprint(fp))),
                    None => return Err(TokenizerError::UnknownVocab(fp)),
                }
            }
            (None, None) => (None, None),
        };
        // llama.cpp's defaults when the keys are absent.
        let (default_bos, default_eos, default_unk, default_add_bos) = match model {
            "llama" => (Some(1), Some(2), Some(0), true),
            "gpt2" => (Some(11), Some(11), None, bpe_pre(pre)?.2),
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
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
        let parts = Parts {
            model,
            pre,
            tokens: &tokens,
            scores,
            types,
            merges: &merges,
            bos: id("tokenizer.ggml.bos_token_id", default_bos)?,
            eos: id("tokenizer.ggml.eos_token_id", default_eos)?,
            unk: id("tokenizer.ggml.unknown_token_id", default_unk)?,
            eot: id("tokenizer.ggml.eot_token_id", None)?,
            eom: id("tokenizer.ggml.eom_token_id", None)?,
            add_bos: g
                .get_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(default_add_bos),
            add_eos: g.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            add_space_prefix: g.get_bool("tokenizer.ggml.add_space_prefix")?,
        };
        let mut tok = Self::build(parts)?;
        tok.pre = pre.zip(pre_source).map(|(p, s)| (p.to_string(), s));
        Ok(tok)
    }

    /// The pre-tokenizer of a `gpt2` vocabulary and where it came from (`None` for `llama`).
    pub fn pre_tokenizer(&self) -> Option<(&str, &PreSource)> {
        self.pre.as_ref().map(|(p, s)| (p.as_str(), s))
    }

    /// One line for stderr when the pre-tokenizer was not the file's own key.
    pub fn pre_note(&self) -> Option<String> {
        match self.pre_tokenizer()? {
            (p, PreSource::Fingerprint(fp)) => Some(format!(
                "note: the file has no tokenizer.ggml.pre; its vocabulary (fingerprint {}...) is a known {p} vocabulary, so the {p} pre-tokenizer is used (--tokenizer-pre overrides)",
                &fp[..16]
            )),
            (p, PreSource::Override) => Some(format!("note: pre-tokenizer {p} (--tokenizer-pre)")),
            (_, PreSource::Key) => None,
        }
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
        Self::build(Parts {
            model,
            pre,
            tokens: &tokens,
            scores,
            types,
            merges: &merges,
            bos,
            eos,
            unk: None,
            eot: None,
            eom: None,
            add_bos,
            add_eos,
            add_space_prefix: None,
        })
    }

    fn build<T: AsRef<str>, M: AsRef<str>>(p: Parts<'_, T, M>) -> Result<Self> {
        let is_spm = match p.model {
            "llama" => true,
            "gpt2" => false,
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let n = p.tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(bad(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        let scores = match p.scores.len() {
            0 => vec![0.0; n],
            len if len != n => return Err(bad(format!("{len} scores for {n} tokens"))),
            _ => p.scores,
        };
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            return Err(bad(format!("score of token {i} is NaN")));
        }
        let attrs = match p.types.len() {
            0 => vec![Attr::Normal; n],
            len if len != n => return Err(bad(format!("{len} token types for {n} tokens"))),
            _ => p
                .types
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    Attr::from_type(t).ok_or_else(|| bad(format!("token {i} has type {t}")))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let bytes = p.tokens.iter().map(|t| t.as_ref().len()).sum();
        let mut texts = StrTable::with_capacity(n, bytes)?;
        for (i, text) in p.tokens.iter().enumerate() {
            let text = text.as_ref();
            let dup = if text.is_empty() {
                texts.push(&format!("[EMPTY_{i}]"))? // llama.cpp's name for empty tokens
            } else {
                texts.push(text)?
            };
            if let Some(prev) = dup {
                return Err(bad(format!("token {i} {text:?} duplicates token {prev}")));
            }
        }
        for id in [p.bos, p.eos, p.unk, p.eot, p.eom].into_iter().flatten() {
            if id as usize >= n {
                return Err(TokenizerError::TokenOutOfRange { id, vocab: n });
            }
        }

        let mut vocab = Vocab {
            texts,
            scores,
            attrs,
        };
        let eog = special::detect_eog(&mut vocab, p.eos, p.eot, p.eom);
        let kind = if is_spm {
            let unk = p.unk.or_else(|| {
                vocab
                    .attrs
                    .iter()
                    .position(|&a| a == Attr::Unknown)
                    .map(|i| i as u32)
            });
            let mut byte_tokens = Box::new([None; 256]);
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let ascii = u8::try_from(b).ok().filter(u8::is_ascii).map(char::from);
                *slot = vocab
                    .id(&format!("<0x{b:02X}>"))
                    .or_else(|| ascii.and_then(|c| vocab.id(c.encode_utf8(&mut [0; 4]))))
                    .or(unk);
            }
            Kind::Spm { byte_tokens }
        } else {
            let (pre, ignore_merges, _) = bpe_pre(p.pre)?;
            Kind::Bpe(Box::new(bpe::Bpe::new(
                pre,
                ignore_merges,
                p.merges,
                |t| vocab.id(t).is_some(),
            )?))
        };

        let pieces = Self::pieces(&vocab, is_spm)?;
        let specials = special::special_tokens(&vocab);
        let has_user_defined = vocab.attrs.contains(&Attr::UserDefined);
        Ok(Tokenizer {
            vocab,
            kind,
            pieces,
            specials,
            has_user_defined,
            bos: p.bos,
            eos: p.eos,
            eog,
            add_bos: p.add_bos,
            add_eos: p.add_eos,
            add_space_prefix: p.add_space_prefix.unwrap_or(is_spm),
            pre: None,
        })
    }

    /// The output bytes of every token, as llama.cpp's `token_to_piece` with `special = false`.
    fn pieces(vocab: &Vocab, is_spm: bool) -> Result<Pieces> {
        let inv = bpe::char_to_byte_table(&bpe::byte_to_char());
        let mut pieces = Pieces {
            bytes: Vec::new(),
            ends: Vec::with_capacity(vocab.len()),
        };
        for (i, &attr) in vocab.attrs.iter().enumerate() {
            let text = vocab.text(i as u32);
            match attr {
                Attr::UserDefined => pieces.bytes.extend_from_slice(text.as_bytes()),
                Attr::Normal if is_spm => {
                    for c in text.chars() {
                        let c = if c == spm::SPACE { ' ' } else { c };
                        pieces
                            .bytes
                            .extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
                Attr::Normal => bpe::decode_text(text, &inv, &mut pieces.bytes),
                Attr::Byte if is_spm => {
                    let hex = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'));
                    match hex
                        .filter(|h| h.len() == 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => pieces.bytes.push(b),
                        None => return Err(bad(format!("byte token {i} is {text:?}, not <0xXX>"))),
                    }
                }
                _ => {}
            }
            pieces.ends.push(pieces.bytes.len());
        }
        Ok(pieces)
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
        let frags = if parse_special || self.has_user_defined {
            special::partition(&self.vocab, &self.specials, text, parse_special)
        } else if text.is_empty() {
            Vec::new()
        } else {
            vec![Frag::Text(text)]
        };
        for frag in frags {
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
            .ok_or(TokenizerError::TokenOutOfRange {
                id,
                vocab: self.vocab_size(),
            })
    }

    /// The text of `ids`. Control tokens render as nothing; with a space-prefix vocabulary the
    /// first space of the first non-empty piece is dropped, so `decode(encode(x)) == x` (also
    /// after a leading BOS, where llama.cpp keeps the space). llama.cpp's BPE "clean spaces"
    /// pass (" ," -> ",") is not applied, for the same reason. Invalid UTF-8 (e.g. a cut
    /// multi-byte character) is replaced by U+FFFD.
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
        self.vocab.len()
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
        self.vocab.texts.get(id as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpe(merges: &[&str]) -> Result<Tokenizer> {
        let tokens = ["a", "b", "ab", "c"].map(String::from).to_vec();
        Tokenizer::from_parts(
            "gpt2",
            Some("llama-bpe"),
            tokens,
            vec![],
            vec![],
            merges.iter().map(|m| m.to_string()).collect(),
            None,
            None,
            false,
            false,
        )
    }

    /// What loads must be sane: a merge joins two tokens into a third, all in the vocabulary.
    #[test]
    fn merges_must_name_tokens_of_the_vocabulary() {
        let t = bpe(&["a b"]).unwrap();
        assert_eq!(t.encode("ab", false, false), vec![2]);
        for (m, missing) in [("a c", "\"ac\""), ("x b", "\"x\""), ("a z", "\"z\"")] {
            let Err(e) = bpe(&["a b", m]) else {
                panic!("{m}: a merge naming a missing token must be refused")
            };
            let e = e.to_string();
            assert!(e.contains("merges[1]") && e.contains(missing), "{m}: {e}");
        }
    }
}
