//! llama.cpp's tokenizer test vectors (see shared/tokenizers/README.md): every vector must
//! encode to exactly the expected ids and decode back to the input; plus special-token,
//! BOS and bad-metadata checks.

use bitnet::gguf::{Gguf, GgufWriter, Value};
use bitnet::tokenizer::{vocab_fingerprint, PreSource, Tokenizer, TokenizerError, KNOWN_VOCABS};
use std::time::Instant;

fn shared(rel: &str) -> std::path::PathBuf {
    bitnet::env::shared_path(rel).unwrap_or_else(|e| panic!("{e}"))
}

fn load(vocab: &str) -> Tokenizer {
    let path = shared(&format!("tokenizers/ggml-vocab-{vocab}.gguf"));
    let t0 = Instant::now();
    let g = Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("{vocab}: opened and built in {:?}", t0.elapsed());
    tok
}

/// (input, expected ids) pairs of a vocab's `.inp` / `.out` files.
fn vectors(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let base = format!("tokenizers/ggml-vocab-{vocab}.gguf");
    let read = |ext: &str| {
        let p = shared(&format!("{base}.{ext}"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let inp = read("inp");
    let out = read("out");
    let mut inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(
        inputs.pop(),
        Some(""),
        "{base}.inp must end with the separator"
    );
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|x| x.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{base}: .inp and .out disagree on the count"
    );
    assert!(!inputs.is_empty());
    inputs
        .into_iter()
        .map(str::to_owned)
        .zip(expected)
        .collect()
}

fn check_vectors(vocab: &str) {
    check_vectors_with(vocab, &load(vocab));
}

fn check_vectors_with(vocab: &str, tok: &Tokenizer) {
    let cases = vectors(vocab);
    let mut failures = Vec::new();
    let t0 = Instant::now();
    for (i, (text, want)) in cases.iter().enumerate() {
        let got = tok.encode(text, false, false);
        if &got != want {
            failures.push(format!(
                "vector {i} {text:?}:\n  expected {want:?}\n  got      {got:?}"
            ));
            continue;
        }
        let back = tok.decode(&got).expect("decode");
        if &back != text {
            failures.push(format!("vector {i} {text:?}: round trip gave {back:?}"));
        }
    }
    eprintln!(
        "{vocab}: {} vectors encoded in {:?}",
        cases.len(),
        t0.elapsed()
    );
    let passed = cases.len() - failures.len();
    eprintln!("{vocab}: {passed}/{} vectors passed", cases.len());
    assert!(
        failures.is_empty(),
        "{vocab}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm_vectors() {
    check_vectors("llama-spm");
}

#[test]
fn llama_bpe_vectors() {
    check_vectors("llama-bpe");
}

/// The LLaMA-3 vocab file with its metadata as Microsoft's published 2B-4T GGUF has it: no
/// `tokenizer.ggml.pre` (and, optionally, other keys replaced).
fn llama_bpe_without_pre(extra: &[(&str, Value)]) -> Gguf {
    let g = Gguf::open(shared("tokenizers/ggml-vocab-llama-bpe.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if k != "tokenizer.ggml.pre" && !extra.iter().any(|(e, _)| e == k) {
            w.kv(k, v.clone());
        }
    }
    for (k, v) in extra {
        w.kv(k, v.clone());
    }
    Gguf::from_bytes(w.to_bytes(|_, _| Ok(())).unwrap()).unwrap()
}

#[test]
fn the_llama3_fingerprint_is_llama_cpps_llama3_vocab() {
    let g = Gguf::open(shared("tokenizers/ggml-vocab-llama-bpe.gguf")).unwrap();
    let strs = |k: &str| -> Vec<String> {
        g.get_array(k)
            .unwrap()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let types: Vec<i32> = g
        .get_array("tokenizer.ggml.token_type")
        .unwrap()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    let fp = vocab_fingerprint(
        &strs("tokenizer.ggml.tokens"),
        &types,
        &strs("tokenizer.ggml.merges"),
    );
    assert_eq!(
        KNOWN_VOCABS.iter().find(|(f, _)| *f == fp).map(|k| k.1),
        Some("llama-bpe"),
        "{fp}"
    );
}

#[test]
fn a_llama3_vocab_without_the_pre_key_is_recognised_and_tokenizes_identically() {
    let g = llama_bpe_without_pre(&[]);
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let (pre, source) = tok.pre_tokenizer().unwrap();
    assert_eq!(pre, "llama-bpe");
    assert!(matches!(source, PreSource::Fingerprint(f) if f == KNOWN_VOCABS[0].0));
    assert!(tok.pre_note().unwrap().contains("llama-bpe"));
    check_vectors_with("llama-bpe", &tok);
    // The file's own key gives no note; an override wins and says so.
    assert_eq!(load("llama-bpe").pre_note(), None);
    let o = Tokenizer::from_gguf_with(&g, Some("gpt-2")).unwrap();
    assert_eq!(o.pre_tokenizer().unwrap(), ("gpt-2", &PreSource::Override));
}

#[test]
fn an_unknown_vocab_without_the_pre_key_names_the_override() {
    // One merge fewer: a different vocabulary, never split with a guessed pre-tokenizer.
    let g0 = Gguf::open(shared("tokenizers/ggml-vocab-llama-bpe.gguf")).unwrap();
    let merges = g0.get_array("tokenizer.ggml.merges").unwrap().unwrap();
    let fewer = Value::strings(merges[1..].iter().map(|v| v.as_str().unwrap().to_string()));
    let g = llama_bpe_without_pre(&[("tokenizer.ggml.merges", fewer)]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(matches!(e, TokenizerError::UnknownVocab(_)), "{e}");
    assert!(e.to_string().contains("--tokenizer-pre"), "{e}");
    // Naming it works.
    let tok = Tokenizer::from_gguf_with(&g, Some("llama-bpe")).unwrap();
    assert_eq!(tok.pre_tokenizer().unwrap().0, "llama-bpe");
}

#[test]
fn bpe_metadata_and_special_tokens() {
    let tok = load("llama-bpe");
    assert_eq!(tok.kind(), "gpt2");
    assert_eq!(tok.vocab_size(), 128256);
    assert_eq!((tok.bos(), tok.eos()), (Some(128000), Some(128001)));
    assert!(tok.add_bos());
    assert!(tok.is_eog(128001) && tok.is_eog(128009) && !tok.is_eog(128000));
    assert_eq!(tok.token_text(128000), Some("<|begin_of_text|>"));
    assert_eq!(tok.token_text(128256), None);

    let hello = tok.encode("hello", false, false);
    let ids = tok.encode("<|begin_of_text|>hello", false, true);
    assert_eq!(ids[0], 128000);
    assert_eq!(&ids[1..], &hello[..]);
    // Without parse_special the same text is ordinary characters.
    let plain = tok.encode("<|begin_of_text|>hello", false, false);
    assert!(!plain.contains(&128000) && plain.len() > 2);
    assert_eq!(tok.decode(&plain).unwrap(), "<|begin_of_text|>hello");
    // Specials in the middle, longest match, and decoding drops control tokens.
    let ids = tok.encode("a<|eot_id|>b<|start_header_id|>", false, true);
    assert_eq!(ids.len(), 4);
    assert_eq!((ids[1], ids[3]), (128009, 128006));
    assert_eq!(tok.decode(&ids).unwrap(), "ab");

    // add_special prepends BOS (llama-bpe: add_bos true, add_eos false).
    let ids = tok.encode("hello", true, false);
    assert_eq!(ids[0], 128000);
    assert_eq!(&ids[1..], &hello[..]);
    assert_eq!(tok.decode(&ids).unwrap(), "hello");
    assert_eq!(tok.token_bytes(128000).unwrap(), b"");
    assert!(matches!(
        tok.decode(&[5, 999_999]),
        Err(TokenizerError::TokenOutOfRange { id: 999_999, .. })
    ));
}

#[test]
fn spm_bos_and_specials() {
    let tok = load("llama-spm");
    assert_eq!(tok.kind(), "llama");
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    assert!(tok.add_bos() && tok.is_eog(2));
    let plain = tok.encode("Hello world", false, false);
    let ids = tok.encode("Hello world", true, false);
    assert_eq!(ids[0], 1);
    assert_eq!(&ids[1..], &plain[..]);
    assert_eq!(tok.decode(&ids).unwrap(), "Hello world");
    // Streaming bytes keep the "▁" space of the first word.
    assert_eq!(tok.token_bytes(plain[0]).unwrap(), b" Hello");
    // parse_special: "<s>" becomes BOS; the text after it gets the space prefix again.
    let ids = tok.encode("<s>Hello world", false, true);
    assert_eq!(ids[0], 1);
    assert_eq!(&ids[1..], &plain[..]);
    assert!(!tok.encode("<s>Hello", false, false).contains(&1));
    // Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes.
    let ids = tok.encode("\u{10FFFD}", false, false);
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&i| tok.token_bytes(i).unwrap())
        .collect();
    assert_eq!(bytes, " \u{10FFFD}".as_bytes());
}

fn gguf_with(kvs: Vec<(&str, Value)>) -> Gguf {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()));
    for (k, v) in kvs {
        w.kv(k, v);
    }
    Gguf::from_bytes(w.to_bytes(|_, _| Ok(())).unwrap()).unwrap()
}

#[test]
fn missing_model_is_an_error() {
    let g = gguf_with(vec![]);
    assert!(matches!(
        Tokenizer::from_gguf(&g),
        Err(TokenizerError::MissingModel)
    ));
}

#[test]
fn bad_metadata_is_an_error() {
    let toks = || Value::strings(["<unk>", "<s>", "</s>", "a", "b"]);
    let base = |extra: Vec<(&'static str, Value)>| {
        let mut kv = vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", toks()),
        ];
        kv.extend(extra);
        Tokenizer::from_gguf(&gguf_with(kv))
    };
    assert!(base(vec![]).is_ok());
    let e = base(vec![("tokenizer.ggml.scores", Value::f32s([0.0; 4]))]).unwrap_err();
    assert!(matches!(e, TokenizerError::BadMetadata(_)), "{e}");
    let e = base(vec![("tokenizer.ggml.token_type", Value::i32s([1; 6]))]).unwrap_err();
    assert!(matches!(e, TokenizerError::BadMetadata(_)), "{e}");
    let e = base(vec![(
        "tokenizer.ggml.token_type",
        Value::i32s([2, 3, 3, 1, 77]),
    )])
    .unwrap_err();
    assert!(matches!(e, TokenizerError::BadMetadata(_)), "{e}");
    let e = base(vec![("tokenizer.ggml.bos_token_id", Value::U32(5))]).unwrap_err();
    assert!(
        matches!(e, TokenizerError::TokenOutOfRange { id: 5, vocab: 5 }),
        "{e}"
    );

    let g = gguf_with(vec![
        ("tokenizer.ggml.model", Value::String("bert".into())),
        ("tokenizer.ggml.tokens", toks()),
    ]);
    assert!(
        matches!(Tokenizer::from_gguf(&g), Err(TokenizerError::UnsupportedModel(m)) if m == "bert")
    );
    let g = gguf_with(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens", toks()),
        ("tokenizer.ggml.merges", Value::strings(["a b"])),
    ]);
    assert!(
        matches!(Tokenizer::from_gguf(&g), Err(TokenizerError::UnsupportedPre(p)) if p == "qwen2")
    );
    let g = gguf_with(vec![(
        "tokenizer.ggml.model",
        Value::String("llama".into()),
    )]);
    assert!(matches!(
        Tokenizer::from_gguf(&g),
        Err(TokenizerError::BadMetadata(_))
    ));
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `Tokenizer::from_parts` without EOS and add_eos.
fn parts(
    model: &str,
    pre: Option<&str>,
    tokens: &[&str],
    scores: Vec<f32>,
    types: Vec<i32>,
    merges: &[&str],
    bos: Option<u32>,
) -> Result<Tokenizer, TokenizerError> {
    let (tokens, merges) = (strings(tokens), strings(merges));
    Tokenizer::from_parts(
        model, pre, tokens, scores, types, merges, bos, None, true, false,
    )
}

#[test]
fn from_parts_checks_lengths_and_merges() {
    let toks = ["a", "b", "ab"];
    let e = parts("llama", None, &toks, vec![0.0], vec![], &[], None).unwrap_err();
    assert!(matches!(e, TokenizerError::BadMetadata(_)), "{e}");
    let e = parts("llama", None, &["a", "b", "a"], vec![], vec![], &[], None).unwrap_err();
    assert!(matches!(e, TokenizerError::BadMetadata(_)), "{e}");
    let e = parts(
        "gpt2",
        Some("llama-bpe"),
        &toks,
        vec![],
        vec![],
        &["ab"],
        None,
    )
    .unwrap_err();
    assert!(matches!(e, TokenizerError::BadMetadata(_)), "{e}");
    let e = parts(
        "gpt2",
        Some("llama-bpe"),
        &toks,
        vec![],
        vec![],
        &[],
        Some(3),
    )
    .unwrap_err();
    assert!(
        matches!(e, TokenizerError::TokenOutOfRange { id: 3, vocab: 3 }),
        "{e}"
    );
    let e = parts("gpt2", None, &toks, vec![], vec![], &["a b"], None).unwrap_err();
    assert!(matches!(e, TokenizerError::UnsupportedPre(_)), "{e}");

    let t = parts(
        "gpt2",
        Some("gpt-2"),
        &toks,
        vec![],
        vec![],
        &["a b"],
        Some(1),
    )
    .unwrap();
    assert_eq!(t.encode("ab", false, false), vec![2]);
    assert_eq!(t.encode("aab", true, false), vec![1, 0, 2]);
    assert_eq!(t.decode(&[0, 2]).unwrap(), "aab");
}

#[test]
fn user_defined_tokens_always_split() {
    // llama.cpp cuts user-defined tokens (type 4) out even when parse_special is false;
    // control tokens (type 3) only when it is true.
    let toks = [
        "<unk>",
        "<s>",
        "</s>",
        "\u{2581}a",
        "\u{2581}b",
        "<x>",
        "a",
        "b",
        "<0x3C>",
    ];
    let types = vec![2, 3, 3, 1, 1, 4, 1, 1, 6];
    let t = parts("llama", None, &toks, vec![], types, &[], Some(1)).unwrap();
    assert_eq!(t.encode("a<x>b", false, false), vec![3, 5, 4]);
    assert_eq!(t.encode("a<x>b", false, true), vec![3, 5, 4]);
    assert_eq!(t.decode(&[3, 5, 4]).unwrap(), "a<x> b");
    let plain = t.encode("a<s>", false, false);
    assert_eq!(plain[..2], [3, 8]);
    assert_eq!(t.encode("a<s>", true, true), vec![1, 3, 1]);
    assert_eq!(t.decode(&[1, 3, 1]).unwrap(), "a");
}
