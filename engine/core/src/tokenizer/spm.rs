//! SentencePiece-style tokenization (`tokenizer.ggml.model = llama`), as llama.cpp's
//! `llm_tokenizer_spm_session`.
//!
//! Spaces become U+2581 "▁", the text is cut into UTF-8 characters, and adjacent pieces are
//! merged while their concatenation is a token, highest token score first (ties: leftmost).
//! Pieces that end up outside the vocabulary are emitted byte by byte as `<0xXX>` tokens.

use super::merge::merge;
use super::Vocab;

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible space.
pub(super) const SPACE: char = '\u{2581}';

/// Tokenizes one raw-text fragment, appending ids to `out`. `space_prefix` prepends a space
/// (llama.cpp's `add_space_prefix` at the start of the text and after special tokens).
/// `byte_tokens[b]` is the token for byte `b` when a piece is not in the vocabulary.
pub(super) fn tokenize(
    vocab: &Vocab,
    byte_tokens: &[Option<u32>; 256],
    text: &str,
    space_prefix: bool,
    out: &mut Vec<u32>,
) {
    let mut s = String::with_capacity(text.len() + 3 * (usize::from(space_prefix) + 1));
    if space_prefix {
        s.push(SPACE);
    }
    for c in text.chars() {
        s.push(if c == ' ' { SPACE } else { c });
    }

    // Highest score first; scores are validated finite at load.
    for piece in merge(&s, |_, _, joined| {
        vocab.id(joined).map(|id| Score(vocab.scores[id as usize]))
    }) {
        let piece = &s[piece];
        // Every merged piece is a token by construction; single characters may not be.
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_tokens[b as usize])),
        }
    }
}

/// A token score as a merge priority (total order; scores are finite).
struct Score(f32);
impl Ord for Score {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}
impl PartialOrd for Score {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Score {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Score {}
