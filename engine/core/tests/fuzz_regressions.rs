//! Every input with which the fuzzer (`fuzz/`, cargo fuzz) found a fault, replayed through
//! the same checks as its fuzz target: `fuzz/regressions/<target>/<what it found>`. Each must
//! now end in a typed error (or a sane result), within its memory.

use bitnet::convert::{hf, EmbedFormat, FloatFormat, WeightFormat};
use bitnet::gguf::Gguf;
use bitnet::model::Model;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no regression inputs in {}", dir.display());
    v
}

/// What `fuzz/src/lib.rs` splits multi-part inputs at.
const SPLIT: &[u8] = b"\n\x00--split--\x00\n";

fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(SPLIT.len()).position(|w| w == SPLIT) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SPLIT.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[]);
    out
}

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
