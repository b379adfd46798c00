#[test]
fn timing() {
    let p = bitnet::env::shared_path("tokenizers/ggml-vocab-llama-bpe.gguf").unwrap();
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let g = bitnet::gguf::Gguf::open(&p).unwrap();
        let t1 = t0.elapsed();
        let tok = bitnet::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        eprintln!("open {:?} build {:?}", t1, t0.elapsed() - t1);
        let text = std::fs::read_to_string("/work/main/engine/src/tokenizer/mod.rs")
            .unwrap()
            .repeat(20);
        let t2 = std::time::Instant::now();
        let n = tok.encode(&text, true, true).len();
        eprintln!(
            "encode {} bytes -> {} tokens in {:?}",
            text.len(),
            n,
            t2.elapsed()
        );
        let long = "a".repeat(100000);
        let t2 = std::time::Instant::now();
        let n = tok.encode(&long, true, true).len();
        eprintln!("encode 100k a -> {} tokens in {:?}", n, t2.elapsed());
    }
}
