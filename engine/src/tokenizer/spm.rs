//! SentencePiece-style tokenization (`tokenizer.ggml.model = llama`), as llama.cpp's
//! `llm_tokenizer_spm_session`.
//!
//! Spaces become U+2581 "▁", the text is cut into UTF-8 characters, and adjacent pieces are
//! merged while their concatenation is a token, highest token score first (ties: leftmost).
//! Pieces that end up outside the vocabulary are emitted byte by byte as `<0xXX>` tokens.

use super::Vocab;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

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

    let mut syms: Vec<Sym> = Vec::with_capacity(s.len());
    for (start, c) in s.char_indices() {
        let i = syms.len();
        syms.push(Sym {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
    }
    let Some(last) = syms.last_mut() else {
        return;
    };
    last.next = None;

    let mut queue = BinaryHeap::new();
    let push =
        |queue: &mut BinaryHeap<Bigram>, syms: &[Sym], l: Option<usize>, r: Option<usize>| {
            if let (Some(l), Some(r)) = (l, r) {
                let start = syms[l].start;
                let size = syms[l].len + syms[r].len;
                if let Some(id) = vocab.id(&s[start..start + size]) {
                    let score = vocab.scores[id as usize];
                    queue.push(Bigram {
                        score,
                        left: l,
                        right: r,
                        size,
                    });
                }
            }
        };
    for i in 1..syms.len() {
        push(&mut queue, &syms, Some(i - 1), Some(i));
    }
    while let Some(bg) = queue.pop() {
        let (l, r) = (syms[bg.left], syms[bg.right]);
        // Outdated: one side was merged into something else since this pair was queued.
        if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
            continue;
        }
        syms[bg.left].len += r.len;
        syms[bg.right].len = 0;
        syms[bg.left].next = r.next;
        if let Some(n) = r.next {
            syms[n].prev = Some(bg.left);
        }
        push(&mut queue, &syms, l.prev, Some(bg.left));
        push(&mut queue, &syms, Some(bg.left), r.next);
    }

    // Every merged piece is a token by construction; single characters may not be.
    let mut i = Some(0);
    while let Some(k) = i {
        let sym = syms[k];
        let piece = &s[sym.start..sym.start + sym.len];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_tokens[b as usize])),
        }
        i = sym.next;
    }
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A queued merge candidate; the heap pops the highest score first, then the leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        // Scores are validated finite at load, so partial_cmp never fails.
        self.score
            .partial_cmp(&o.score)
            .unwrap_or(Ordering::Equal)
            .then(o.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
