//! The merge loop shared by SentencePiece and BPE: start from the characters of a word and
//! repeatedly join the adjacent pair with the highest priority (ties: the leftmost), until no
//! adjacent pair has one. A heap of candidate pairs plus a linked list of live pieces makes it
//! O(n log n) per word.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram<P> {
    priority: P,
    left: usize,
    right: usize,
    size: usize,
}

impl<P: Ord> Ord for Bigram<P> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority.cmp(&o.priority).then(o.left.cmp(&self.left))
    }
}
impl<P: Ord> PartialOrd for Bigram<P> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<P: Ord> PartialEq for Bigram<P> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl<P: Ord> Eq for Bigram<P> {}

/// Merges the characters of `word`; `priority(left, right, joined)` rates a candidate pair
/// (None = may not merge). Returns the final pieces as byte ranges of `word`, in order.
pub(super) fn merge<P: Ord>(
    word: &str,
    mut priority: impl FnMut(&str, &str, &str) -> Option<P>,
) -> Vec<Range<usize>> {
    let mut syms: Vec<Sym> = Vec::with_capacity(word.len());
    for (start, c) in word.char_indices() {
        let i = syms.len();
        syms.push(Sym {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
    }
    let Some(last) = syms.last_mut() else {
        return Vec::new();
    };
    last.next = None;
    let mut queue = BinaryHeap::new();
    let mut push =
        |queue: &mut BinaryHeap<Bigram<P>>, syms: &[Sym], l: Option<usize>, r: Option<usize>| {
            if let (Some(l), Some(r)) = (l, r) {
                let (a, b) = (syms[l], syms[r]);
                let size = a.len + b.len;
                let text = |s: Sym| &word[s.start..s.start + s.len];
                if let Some(p) = priority(text(a), text(b), &word[a.start..a.start + size]) {
                    queue.push(Bigram {
                        priority: p,
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
    syms.iter()
        .filter(|s| s.len > 0)
        .map(|s| s.start..s.start + s.len)
        .collect()
}
