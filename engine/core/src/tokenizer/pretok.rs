//! BPE pre-tokenizers: split a text fragment into words before byte-level BPE runs on each.
//!
//! These are hand-written matchers for the two regexes llama.cpp also implements by hand
//! (`unicode_regex_split_custom_llama3` / `_gpt2`), with the same character classes: `\p{L}` and
//! `\p{N}` from llama.cpp's Unicode tables, `\s` = the Unicode `White_Space` property.

use super::unicode_tables::{LETTER, NUMBER};

/// Which split pattern a BPE vocabulary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PreTokenizer {
    /// `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|`
    /// `\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
}

fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Unicode general category L.
pub(super) fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    in_table(&LETTER, c)
}

/// Unicode general category N.
pub(super) fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    in_table(&NUMBER, c)
}

/// The Unicode `White_Space` property (the 25 code points of llama.cpp's whitespace set).
pub(super) fn is_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Character classes of the code point at a position; positions past the end have none.
#[derive(Clone, Copy, Default)]
struct Class {
    present: bool,
    letter: bool,
    number: bool,
    space: bool,
}

impl Class {
    fn of(cs: &[char], i: usize) -> Class {
        match cs.get(i) {
            None => Class::default(),
            Some(&c) => Class {
                present: true,
                letter: is_letter(c),
                number: is_number(c),
                space: is_space(c),
            },
        }
    }
    /// `[^\s\p{L}\p{N}]`, and inside the text.
    fn other(self) -> bool {
        self.present && !(self.space || self.letter || self.number)
    }
}

impl PreTokenizer {
    /// Splits `cs` into consecutive non-empty words, returned as `(start, end)` index pairs
    /// into `cs` that cover it completely.
    pub(super) fn split(self, cs: &[char]) -> Vec<(usize, usize)> {
        let mut words = Vec::new();
        let mut pos = 0;
        while pos < cs.len() {
            let end = match self {
                PreTokenizer::Llama3 => llama3_word(cs, pos),
                PreTokenizer::Gpt2 => gpt2_word(cs, pos),
            };
            // Every rule consumes at least one code point.
            let end = end.clamp(pos + 1, cs.len());
            words.push((pos, end));
            pos = end;
        }
        words
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at `pos` (optionally ASCII case-insensitive): the match end.
fn contraction(cs: &[char], pos: usize, fold_case: bool) -> Option<usize> {
    if cs[pos] != '\'' {
        return None;
    }
    let at = |i: usize| {
        cs.get(i)
            .map(|&c| if fold_case { c.to_ascii_lowercase() } else { c })
    };
    match (at(pos + 1), at(pos + 2)) {
        (Some('s' | 't' | 'm' | 'd'), _) => Some(pos + 2),
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => Some(pos + 3),
        _ => None,
    }
}

/// The whitespace rules shared by both patterns: `\s+(?!\S)` then `\s+` (and for LLaMA-3
/// `\s*[\r\n]+` before them). Returns the match end, or `pos + 1` when nothing matches.
fn whitespace(cs: &[char], pos: usize, newline_rule: bool) -> usize {
    let mut n = 0;
    let mut after_last_newline = None;
    while Class::of(cs, pos + n).space {
        if newline_rule && matches!(cs[pos + n], '\r' | '\n') {
            after_last_newline = Some(pos + n + 1);
        }
        n += 1;
    }
    if let Some(end) = after_last_newline {
        // \s*[\r\n]+ : the longest whitespace run ending in a newline.
        return end;
    }
    if n > 1 && pos + n < cs.len() {
        // \s+(?!\S) : leave the last space to prefix the following word.
        return pos + n - 1;
    }
    if n > 0 {
        return pos + n;
    }
    pos + 1
}

fn llama3_word(cs: &[char], pos: usize) -> usize {
    if let Some(end) = contraction(cs, pos, true) {
        return end;
    }
    let c = cs[pos];
    let here = Class::of(cs, pos);

    // [^\r\n\p{L}\p{N}]?\p{L}+
    if !(c == '\r' || c == '\n' || here.number) && (here.letter || Class::of(cs, pos + 1).letter) {
        let mut p = pos + 1;
        while Class::of(cs, p).letter {
            p += 1;
        }
        return p;
    }

    // \p{N}{1,3}
    if here.number {
        let mut p = pos;
        while p < pos + 3 && Class::of(cs, p).number {
            p += 1;
        }
        return p;
    }

    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    let next = if c == ' ' {
        Class::of(cs, pos + 1)
    } else {
        here
    };
    if !(next.space || next.letter || next.number) && here.present {
        let mut p = pos + usize::from(c == ' ');
        while Class::of(cs, p).other() {
            p += 1;
        }
        while matches!(cs.get(p), Some('\r' | '\n')) {
            p += 1;
        }
        return p;
    }

    whitespace(cs, pos, true)
}

fn gpt2_word(cs: &[char], pos: usize) -> usize {
    if let Some(end) = contraction(cs, pos, false) {
        return end;
    }
    let c = cs[pos];
    let skip = usize::from(c == ' ');
    let first = if c == ' ' {
        Class::of(cs, pos + 1)
    } else {
        Class::of(cs, pos)
    };
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
    let class_run = |keep: fn(Class) -> bool| {
        let mut p = pos + skip;
        while keep(Class::of(cs, p)) {
            p += 1;
        }
        p
    };
    if first.letter {
        return class_run(|k| k.letter);
    }
    if first.number {
        return class_run(|k| k.number);
    }
    if first.other() {
        return class_run(Class::other);
    }
    whitespace(cs, pos, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, s: &str) -> Vec<String> {
        let cs: Vec<char> = s.chars().collect();
        pre.split(&cs)
            .into_iter()
            .map(|(a, b)| cs[a..b].iter().collect())
            .collect()
    }

    #[test]
    fn classes() {
        assert!(is_letter('Ä') && is_letter('н') && is_letter('ក') && !is_letter('ា'));
        assert!(is_number('7') && is_number('½') && is_number('٣') && !is_number('a'));
        assert!(is_space('\u{3000}') && is_space('\n') && !is_space('\u{200B}'));
    }

    #[test]
    fn llama3_split() {
        let w = words(PreTokenizer::Llama3, "I'M 12345 ok!!\n\n  x   \t?\r\n");
        assert_eq!(
            w,
            ["I", "'M", " ", "123", "45", " ok", "!!\n\n", " ", " x", "   ", "\t", "?\r\n"]
        );
    }

    #[test]
    fn gpt2_split() {
        let w = words(PreTokenizer::Gpt2, "Hello world's  12 ??x   ");
        assert_eq!(w, ["Hello", " world", "'s", " ", " 12", " ??", "x", "   "]);
    }
}
