//! Special tokens: llama.cpp's text-based detection of end-of-generation and other control
//! tokens, and the cutting of special-token texts out of the input before tokenization.

use super::{Attr, Vocab};

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

/// Which tokens end generation, per llama.cpp: EOS, EOT and EOM (EOT/EOM found by their text
/// when the metadata does not name them) and the tokens with the texts listed above. Those
/// found by text are made control tokens, as llama.cpp does.
pub(super) fn detect_eog(
    vocab: &mut Vocab,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
) -> Vec<u32> {
    let find = |vocab: &Vocab, list: &[&str]| -> Vec<u32> {
        list.iter().filter_map(|t| vocab.id(t)).collect()
    };
    let eot = eot.or_else(|| find(vocab, EOT_TEXTS).into_iter().min());
    let eom = eom.or_else(|| vocab.id("<|eom_id|>"));
    let mut eog = find(vocab, EOG_TEXTS);
    eog.extend(find(vocab, FIM_EOG_TEXTS));
    let forced: Vec<u32> = eog
        .iter()
        .copied()
        .chain(find(vocab, FIM_TEXTS))
        .chain(eot)
        .chain(eom)
        .collect();
    for id in forced {
        vocab.attrs[id as usize] = Attr::Control;
    }
    eog.extend([eos, eot, eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();
    eog
}

/// Control, user-defined and unknown tokens, longest text first (ties: lower id first).
pub(super) fn special_tokens(vocab: &Vocab) -> Vec<u32> {
    let mut specials: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&i| {
            matches!(
                vocab.attrs[i as usize],
                Attr::Control | Attr::UserDefined | Attr::Unknown
            )
        })
        .collect();
    specials.sort_by_key(|&i| std::cmp::Reverse(vocab.text(i).len()));
    specials
}

/// A text piece of the input or a special token cut out of it.
pub(super) enum Frag<'a> {
    Text(&'a str),
    Token(u32),
}

/// Cuts special-token texts out of `text`, longest token first (as llama.cpp's
/// `tokenizer_st_partition`). Control and unknown tokens only when `parse_special`;
/// user-defined tokens always.
pub(super) fn partition<'a>(
    vocab: &Vocab,
    specials: &[u32],
    text: &'a str,
    parse_special: bool,
) -> Vec<Frag<'a>> {
    let mut frags = Vec::new();
    if text.is_empty() {
        return frags;
    }
    frags.push(Frag::Text(text));
    for &id in specials {
        let attr = vocab.attrs[id as usize];
        if !parse_special && attr != Attr::UserDefined {
            continue;
        }
        let pat = vocab.text(id);
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
