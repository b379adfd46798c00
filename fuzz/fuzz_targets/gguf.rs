//! The GGUF reader on arbitrary bytes, then everything built from a file that parses: its
//! tokenizer, its model, and one forward step of two tokens. Errors are fine; a panic, a
//! hang or an out-of-range id is a finding.
#![no_main]
use bitnet::gguf::Gguf;
use bitnet::model::Model;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    for (k, v) in g.metadata() {
        let _ = format!("{k} = {v}");
    }
    for t in g.tensors() {
        let _ = g.tensor_data(t).len();
        let _ = t.rows_cols();
    }
    if let Ok(tok) = Tokenizer::from_gguf(&g) {
        let n = tok.vocab_size();
        for (add, parse) in [(true, true), (false, false)] {
            let ids = tok.encode("Hello world, the cat. 日本 <s></s><|eot_id|>", add, parse);
            assert!(ids.iter().all(|&i| (i as usize) < n), "id out of range");
            let _ = tok.decode(&ids);
        }
    }
    if let Ok(model) = Model::from_gguf(Arc::new(g)) {
        let n = model.config.vocab_size as u32;
        let mut session = Session::new(&model).with_threads(1);
        let mut state = model.new_state();
        if let Ok(logits) = session.forward(&mut state, &[0, 1.min(n - 1)], false) {
            assert_eq!(logits.len(), n as usize);
        }
    }
});
