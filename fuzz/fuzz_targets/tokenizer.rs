//! Tokenizer encode and decode on arbitrary bytes, with the real LLaMA-3 BPE and LLaMA
//! SentencePiece vocabularies. The first byte picks the vocabulary (bit 0), `add_special`
//! (bit 1) and `parse_special` (bit 2). Every id is inside the vocabulary; what encode gives,
//! decode takes; plain text comes back unchanged; arbitrary ids are errors, not panics.
#![no_main]
use bitnet_fuzz::vocabularies;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let tok = &vocabularies()[(sel & 1) as usize];
    let (add_special, parse_special) = (sel & 2 != 0, sel & 4 != 0);
    let text = String::from_utf8_lossy(rest);
    let ids = tok.encode(&text, add_special, parse_special);
    let n = tok.vocab_size();
    assert!(ids.iter().all(|&i| (i as usize) < n), "id out of range");
    let back = tok.decode(&ids).expect("what encode gives, decode takes");
    if !add_special && !parse_special {
        // (SentencePiece's dummy prefix space is removed again by decode.)
        assert_eq!(back, text, "round trip");
    }
    // The same bytes as token ids.
    let raw: Vec<u32> = rest
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let _ = tok.decode(&raw);
    for &id in raw.iter().take(8) {
        let _ = tok.token_bytes(id);
        let _ = tok.token_text(id);
        let _ = tok.is_eog(id);
    }
});
