//! The Hugging Face converter on an arbitrary checkpoint: the input's four parts are
//! config.json, tokenizer.json, tokenizer_config.json (absent when empty) and
//! model.safetensors. A conversion either fails with a typed error and leaves no file, or
//! writes a GGUF that loads as a model with its tokenizer.
#![no_main]
use bitnet::convert::{hf, EmbedFormat, FloatFormat, WeightFormat};
use bitnet_fuzz::parts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = parts(data, 4);
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("bitnet-fuzz-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    for (name, bytes) in [
        ("config.json", p[0]),
        ("tokenizer.json", p[1]),
        ("tokenizer_config.json", p[2]),
        ("model.safetensors", p[3]),
    ] {
        if !(bytes.is_empty() && name == "tokenizer_config.json") {
            std::fs::write(dir.join(name), bytes).expect("scratch write");
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
            let g = bitnet::gguf::Gguf::open(&out).expect("the converted file parses");
            bitnet::tokenizer::Tokenizer::from_gguf(&g).expect("its tokenizer loads");
            bitnet::model::Model::load(&out).expect("the converted file loads");
        }
        Err(_) => assert!(!out.exists(), "a failed conversion left {}", out.display()),
    }
    let _ = std::fs::remove_dir_all(&dir);
});
