//! Every input with which the fuzzer (`fuzz/`, cargo fuzz) found a fault, replayed through
//! the same checks as its fuzz target: `fuzz/regressions/<target>/<what it found>`. Each must
//! now end in a typed error (or a sane result), within its memory.

use bitnet::convert::{hf, EmbedFormat, FloatFormat, WeightFormat};
use bitnet::gguf::Gguf;
use bitnet::model::Model;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::Arc;

#[path = "common/fuzz_inputs.rs"]
mod fuzz_inputs;
use fuzz_inputs::{inputs, parts};

/// As `fuzz_targets/gguf.rs`: parse, tokenizer, model, one forward step.
#[test]
fn gguf_regressions_are_typed_errors_or_sane() {
    for (name, data) in inputs("gguf") {
        let Ok(g) = Gguf::from_bytes(data) else {
            continue;
        };
        if let Ok(tok) = Tokenizer::from_gguf(&g) {
            let ids = tok.encode("Hello world <s>", true, true);
            assert!(
                ids.iter().all(|&i| (i as usize) < tok.vocab_size()),
                "{name}"
            );
        }
        match Model::from_gguf(Arc::new(g)) {
            Err(e) => println!("{name}: {e}"),
            Ok(model) => {
                let n = model.config.vocab_size as u32;
                let mut s = Session::new(&model).with_threads(1);
                let mut st = model.new_state();
                if let Ok(l) = s.forward(&mut st, &[0, 1.min(n - 1)], false) {
                    assert_eq!(l.len(), n as usize, "{name}");
                }
            }
        }
    }
}

/// As `fuzz_targets/hf_convert.rs`: a conversion fails with nothing left behind, or its file
/// loads.
#[test]
fn hf_convert_regressions_fail_cleanly_or_load() {
    for (name, data) in inputs("hf_convert") {
        let p = parts(&data, 4);
        let dir: PathBuf =
            std::env::temp_dir().join(format!("bitnet-fuzz-regr-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, bytes) in [
            ("config.json", p[0]),
            ("tokenizer.json", p[1]),
            ("tokenizer_config.json", p[2]),
            ("model.safetensors", p[3]),
        ] {
            if !(bytes.is_empty() && file == "tokenizer_config.json") {
                std::fs::write(dir.join(file), bytes).unwrap();
            }
        }
        let out = dir.join("out.gguf");
        let opts = hf::Options {
            weights: WeightFormat::I2S,
            embedding: EmbedFormat::Float(FloatFormat::F16),
            tokenizer_pre: None,
        };
        match hf::convert(&dir, &out, opts, &mut |_, _| {}) {
            Ok(()) => {
                Model::load(&out).unwrap_or_else(|e| panic!("{name}: converted but {e}"));
            }
            Err(e) => {
                println!("{name}: {e}");
                assert!(!out.exists(), "{name}: a failed conversion left its file");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
