//! Receipts from real runs validate; every way of lying in one is caught, each in its class:
//! kernels that never ran, an edited field, a forged output (replay), a wrong key, a broken
//! schema.

use bitnet::generate::{generate, GenerateOptions};
use bitnet::model::Model;
use bitnet::receipt::{self, Receipt};
use bitnet::sample::SamplerParams;
use bitnet::tokenizer::Tokenizer;
use bitnet_validate::audit::{verify_file, Class, Verdict, VerifyOptions};
use bitnet_validate::gates::Context;
use bitnet_validate::models::ModelSpec;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static BUILD: Mutex<()> = Mutex::new(());

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("receipts");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn model_path(weights: &str) -> PathBuf {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let shared = bitnet::env::get().shared.clone();
    let ctx = Context {
        shared,
        work: tmp("work"),
        data: PathBuf::from("../ci"),
        root: PathBuf::from(".."),
        threads: 2,
    };
    ModelSpec::Llama2c {
        weights: weights.into(),
        embedding: "f32".into(),
    }
    .materialize(&ctx)
    .unwrap()
}

/// A receipt of a real seeded run, built exactly as `bitnet run --receipt` builds it.
fn real_receipt(weights: &str) -> Receipt {
    receipt_with(weights, None)
}

fn receipt_with(weights: &str, head: Option<bitnet::model::HeadFormat>) -> Receipt {
    let path = model_path(weights);
    let mut model = Model::load(&path).unwrap();
    if let Some(h) = head {
        model.quantize_head(h).unwrap();
    }
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let mut session = bitnet::session::Session::new(&model).with_threads(2);
    let opts = GenerateOptions {
        max_tokens: 24,
        sampler: SamplerParams {
            temperature: 0.8,
            seed: 11,
            ..Default::default()
        },
        stop: vec![],
        ignore_eos: false,
    };
    let prompt = "Once upon a time";
    let g = generate(
        &mut session,
        &tok,
        &tok.encode(prompt, true, false),
        &opts,
        &mut |_| true,
    )
    .unwrap();
    receipt::for_generation(&session, &path, &opts, prompt, &g, 1.0).unwrap()
}

fn key() -> (PathBuf, PathBuf, ed25519_dalek::SigningKey) {
    let k = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let (sk, pk) = (tmp("test.key"), tmp("test.pub"));
    std::fs::write(&sk, hex(&[42u8; 32])).unwrap();
    std::fs::write(&pk, hex(k.verifying_key().as_bytes())).unwrap();
    (sk, pk, k)
}

fn check(r: &Receipt, name: &str, opts: &VerifyOptions) -> Verdict {
    let p = tmp(name);
    r.write(&p).unwrap();
    verify_file(&p, opts)
}

fn classes(v: &Verdict) -> Vec<Class> {
    v.findings.iter().map(|f| f.class).collect()
}

#[test]
fn a_run_with_a_requantized_head_replays_with_it_and_not_without() {
    let r = receipt_with("i2_s", Some(bitnet::model::HeadFormat::Q8_0));
    assert_eq!(r.model_info.tensor_types["output"], "Q8_0");
    assert!(r.kernels.iter().any(|k| k.id.starts_with("q8_0_gemv_")));
    let opts = VerifyOptions {
        public_key: None,
        replay: true,
    };
    let v = check(&r, "head-q8_0.json", &opts);
    assert!(v.ok, "replay applies the recorded head: {v:#?}");
    // The same output claimed for the file's own head: replay runs F32 and must disagree
    // (or the audit must, its kernel ids no longer matching the recorded types).
    let mut forged = r.clone();
    forged
        .model_info
        .tensor_types
        .insert("output".into(), "F32".into());
    forged.digest = receipt::content_digest(&serde_json::to_value(&forged).unwrap());
    let v = check(&forged, "head-forged.json", &opts);
    assert!(
        !v.ok,
        "a receipt that hides its re-quantized head must fail"
    );
}

#[test]
fn a_real_receipt_validates_with_signature_and_replay_and_its_kernel_counts_match_the_shape() {
    let (_, pk, k) = key();
    let mut r = real_receipt("i2_s");
    r.sign(&k);
    let v = check(
        &r,
        "good.json",
        &VerifyOptions {
            public_key: Some(pk),
            replay: true,
        },
    );
    assert!(v.ok, "{v:#?}");
    // bitllama2c-3m: 8 layers x 7 ternary matrices; per token 8 * (2*256*256 + 2*256*128 + 3*256*256) weights.
    let per_token = 8 * (2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 256) as u64;
    let k = |id: &str| {
        r.kernels
            .iter()
            .find(|k| k.id.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} kernel in {:?}", r.kernels))
    };
    let prompt = r.run.prompt_tokens as u64;
    assert_eq!(k("i2s_gemm_").calls, 56);
    assert_eq!(k("i2s_gemm_").elements, prompt * per_token);
    let steps = r.run.decode_steps as u64;
    assert_eq!(k("i2s_gemv_").calls, 56 * steps);
    assert_eq!(k("i2s_gemv_").elements, steps * per_token);
    assert_eq!(
        k("f32_gemv_").calls,
        1 + steps,
        "one output projection per forward pass"
    );
}

#[test]
fn an_f32_model_shows_no_i2s_kernels() {
    let r = real_receipt("f32");
    assert!(
        r.kernels.iter().all(|k| !k.id.starts_with("i2s")),
        "{:?}",
        r.kernels
    );
    assert!(check(&r, "f32.json", &VerifyOptions::default()).ok);
}

#[test]
fn kernels_that_never_ran_are_rejected_even_when_resealed() {
    let mut r = real_receipt("i2_s");
    // A kernel nobody ran, with plausible-looking numbers, and the digest recomputed to hide it.
    r.kernels.push(receipt::Kernel {
        id: "tq2_0_gemv_scalar".into(),
        calls: 56,
        elements: 1000,
        time_ns: 10,
    });
    r.seal();
    let v = check(&r, "ghost.json", &VerifyOptions::default());
    assert_eq!(v.exit_code(), 5, "{v:#?}");
    assert!(
        v.findings.iter().any(|f| f.rule == "kernel-not-implied"),
        "{v:#?}"
    );
    // Inflated counts on a real kernel are caught the same way.
    let mut r = real_receipt("i2_s");
    r.kernels
        .iter_mut()
        .find(|k| k.id.starts_with("i2s_gemv_"))
        .unwrap()
        .calls += 7;
    r.seal();
    let v = check(&r, "inflated.json", &VerifyOptions::default());
    assert!(
        v.findings.iter().any(|f| f.rule == "kernel-counts"),
        "{v:#?}"
    );
}

#[test]
fn declaring_other_tensor_types_does_not_switch_the_count_checks_off() {
    let mut r = real_receipt("i2_s");
    r.model_info
        .tensor_types
        .insert("attn_k".into(), "F16".into());
    r.seal();
    let v = check(&r, "mixed.json", &VerifyOptions::default());
    let rules: Vec<&str> = v.findings.iter().map(|f| f.rule.as_str()).collect();
    assert!(
        rules.contains(&"model-shape"),
        "the file's tensor types differ: {rules:?}"
    );
    assert!(
        rules.contains(&"kernel-missing") || rules.contains(&"kernel-counts"),
        "{rules:?}"
    );
}

#[test]
fn an_edited_field_breaks_the_digest() {
    let r = real_receipt("i2_s");
    let p = tmp("edited.json");
    r.write(&p).unwrap();
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"os\": \"linux\"", "\"os\": \"windows\"");
    assert!(text.contains("windows"), "the edit applied");
    std::fs::write(&p, text).unwrap();
    let v = verify_file(&p, &VerifyOptions::default());
    assert_eq!(classes(&v), vec![Class::Digest], "{v:#?}");
    assert_eq!(v.exit_code(), 6);
}

#[test]
fn a_forged_output_fails_replay() {
    let mut r = real_receipt("i2_s");
    r.run.output_digest = receipt::tokens_digest(&[1, 2, 3]);
    r.seal();
    let v = check(
        &r,
        "forged.json",
        &VerifyOptions {
            public_key: None,
            replay: true,
        },
    );
    assert_eq!(classes(&v), vec![Class::Replay], "{v:#?}");
    assert_eq!(v.exit_code(), 8);
}

#[test]
fn a_wrong_key_or_missing_signature_fails_the_signature_check() {
    let (_, pk, _) = key();
    let mut r = real_receipt("i2_s");
    r.sign(&ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]));
    let v = check(
        &r,
        "wrongkey.json",
        &VerifyOptions {
            public_key: Some(pk.clone()),
            replay: false,
        },
    );
    assert_eq!(classes(&v), vec![Class::Signature], "{v:#?}");
    let r = real_receipt("i2_s");
    let v = check(
        &r,
        "unsigned.json",
        &VerifyOptions {
            public_key: Some(pk),
            replay: false,
        },
    );
    assert_eq!(v.exit_code(), 7, "{v:#?}");
}

#[test]
fn schema_violations_and_the_seed_rules() {
    let r = real_receipt("i2_s");
    let p = tmp("schema.json");
    let mut doc = r.to_json();
    doc["compute_path"] = serde_json::json!("mock");
    doc["kernels"][0]["id"] = serde_json::json!("mock_gemv");
    std::fs::write(&p, doc.to_string()).unwrap();
    let v = verify_file(&p, &VerifyOptions::default());
    assert_eq!(v.exit_code(), 4, "{v:#?}");
    let rules: Vec<&str> = v.findings.iter().map(|f| f.rule.as_str()).collect();
    assert!(
        rules.contains(&"compute-path") && rules.contains(&"kernel-id-mock"),
        "{rules:?}"
    );
    std::fs::write(&p, "{ not json").unwrap();
    assert_eq!(verify_file(&p, &VerifyOptions::default()).exit_code(), 3);
    assert_eq!(
        verify_file(
            Path::new("/nonexistent/receipt.json"),
            &VerifyOptions::default()
        )
        .exit_code(),
        3
    );
}
