//! Byte-level BPE (`tokenizer.ggml.model = gpt2`), as llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! Each pre-tokenized word is turned into GPT-2's printable byte alphabet, then adjacent pieces
//! are merged lowest merge rank first (ties: leftmost), until no adjacent pair has a rank.

use super::merge::merge;
use super::pretok::PreTokenizer;
use super::table::StrTable;
use super::{TokenizerError, Vocab};
use std::cmp::Reverse;

/// GPT-2's byte -> printable code point table: printable Latin-1 bytes map to themselves,
/// the other 68 bytes to U+0100.. in byte order.
pub(super) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // Every value is below 0x144, a valid scalar value.
        *slot = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

/// The inverse of [`byte_to_char`], indexed by code point (all of them are below 0x144).
pub(super) fn char_to_byte_table(fwd: &[char; 256]) -> Vec<Option<u8>> {
    let mut inv = vec![None; 0x144];
    for (b, &c) in fwd.iter().enumerate() {
        inv[c as usize] = Some(b as u8);
    }
    inv
}

/// Appends a normal BPE token's text as output bytes, the way llama.cpp's `llama_decode_text`
/// does (including its `[UNK_BYTE_0x..]` marker for characters outside the byte alphabet).
pub(super) fn decode_text(text: &str, inv: &[Option<u8>], out: &mut Vec<u8>) {
    for c in text.chars() {
        match inv.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// Merge ranks and pre-tokenizer of a BPE vocabulary.
#[derive(Clone)]
pub(super) struct Bpe {
    pub(super) pre: PreTokenizer,
    /// A word that is itself a token is emitted whole (llama.cpp's `ignore_merges`).
    pub(super) ignore_merges: bool,
    /// Entry = rank, text = "left right". Keyed by the merge string itself: pieces of
    /// byte-encoded text never contain a space, so `left + " " + right` names exactly one pair.
    ranks: StrTable,
    byte_to_char: [char; 256],
}

impl Bpe {
    /// Takes `merges` ("left right", rank = position; the first occurrence of a pair wins).
    /// `is_token` says whether a text is a token of the vocabulary: a merge must join two
    /// tokens into a third (one that names anything else is a damaged or mismatched file).
    pub(super) fn new<M: AsRef<str>>(
        pre: PreTokenizer,
        ignore_merges: bool,
        merges: &[M],
        is_token: impl Fn(&str) -> bool,
    ) -> Result<Self, TokenizerError> {
        let bytes = merges.iter().map(|m| m.as_ref().len()).sum();
        let mut ranks = StrTable::with_capacity(merges.len(), bytes)?;
        for (rank, m) in merges.iter().enumerate() {
            let m = m.as_ref();
            let bad = |what: String| {
                TokenizerError::BadMetadata(format!("tokenizer.ggml.merges[{rank}] = {m:?}{what}"))
            };
            // llama.cpp splits at the first space after the first byte.
            let Some(i) = m.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1) else {
                return Err(bad(" is not \"left right\"".into()));
            };
            let (l, r) = (&m[..i], &m[i + 1..]);
            if let Some(t) = [l.to_string(), r.to_string(), format!("{l}{r}")]
                .into_iter()
                .find(|t| !is_token(t))
            {
                return Err(bad(format!(": {t:?} is not a token of the vocabulary")));
            }
            ranks.push(m)?;
        }
        Ok(Bpe {
            pre,
            ignore_merges,
            ranks,
            byte_to_char: byte_to_char(),
        })
    }

    fn rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.find(key)
    }

    /// Tokenizes one raw-text fragment, appending ids to `out`.
    pub(super) fn tokenize(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let cs: Vec<char> = text.chars().collect();
        let mut word = String::new();
        let mut utf8 = [0u8; 4];
        for (a, b) in self.pre.split(&cs) {
            word.clear();
            for c in &cs[a..b] {
                for &byte in c.encode_utf8(&mut utf8).as_bytes() {
                    word.push(self.byte_to_char[byte as usize]);
                }
            }
            self.merge_word(vocab, &word, out);
        }
    }

    fn merge_word(&self, vocab: &Vocab, word: &str, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(id) = vocab.id(word) {
                out.push(id);
                return;
            }
        }
        // Lowest merge rank first.
        let mut key = String::new();
        for piece in merge(word, |l, r, _| self.rank(&mut key, l, r).map(Reverse)) {
            let piece = &word[piece];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                // Not a token: llama.cpp emits the tokens of the single bytes that are tokens.
                None => {
                    for &b in piece.as_bytes() {
                        if b.is_ascii() {
                            if let Some(id) = vocab.id(char::from(b).encode_utf8(&mut [0; 4])) {
                                out.push(id);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet() {
        let fwd = byte_to_char();
        assert_eq!(fwd[b' ' as usize], 'Ġ');
        assert_eq!(fwd[b'\n' as usize], 'Ċ');
        assert_eq!(fwd[b'A' as usize], 'A');
        assert_eq!(fwd[0xAD], '\u{143}');
        let inv = char_to_byte_table(&fwd);
        for (b, &c) in fwd.iter().enumerate() {
            assert_eq!(inv[c as usize], Some(b as u8));
        }
        let mut out = Vec::new();
        decode_text("ĠhiĊ", &inv, &mut out);
        assert_eq!(out, b" hi\n");
    }
}
