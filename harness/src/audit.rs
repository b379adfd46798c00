//! Receipt verification: JSON-schema validation, audit rules, the content digest, an optional
//! ed25519 signature check, and an optional deterministic replay. Each failure belongs to a
//! class with its own exit code, so CI can tell a forged receipt from a stale one.
//!
//! Audit rules: the seed's eight (schema version, compute_path real, kernels non-empty,
//! at most 10,000 kernels, no empty id, no id containing "mock", ids at most 128 characters,
//! zero failed tests) and ours: every kernel belongs to a tensor type the model has, and the
//! kernels' calls and elements equal what the model's shape and the token counts imply (so a
//! kernel nobody ran, or a count nobody did, shows); the model file's sha256 matches when the
//! file is present; performance figures agree with token counts and times.

use bitnet::generate::{generate, GenerateOptions};
use bitnet::model::Model;
use bitnet::receipt::{self, Receipt};
use bitnet::sample::SamplerParams;
use bitnet::tokenizer::Tokenizer;
use serde::Serialize;
use serde_json::Value as Json;
use std::path::Path;

pub const SCHEMA: &str = include_str!("../../schemas/receipt.v1.schema.json");

/// Failure classes, in the order they are checked; the exit code of a verification is the
/// code of the first class that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Unreadable,
    Schema,
    Audit,
    Digest,
    Signature,
    Replay,
}

impl Class {
    pub fn exit_code(self) -> i32 {
        match self {
            Class::Unreadable => 3,
            Class::Schema => 4,
            Class::Audit => 5,
            Class::Digest => 6,
            Class::Signature => 7,
            Class::Replay => 8,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub class: Class,
    pub rule: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub file: String,
    pub ok: bool,
    pub findings: Vec<Finding>,
    /// Checks that could not run (e.g. the model file is not present), said out loud.
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn exit_code(&self) -> i32 {
        self.findings
            .iter()
            .map(|f| f.class)
            .min()
            .map_or(0, Class::exit_code)
    }
}

#[derive(Default, Clone, Debug)]
pub struct VerifyOptions {
    pub public_key: Option<std::path::PathBuf>,
    pub replay: bool,
}

struct Ctx {
    findings: Vec<Finding>,
    notes: Vec<String>,
}

impl Ctx {
    fn fail(&mut self, class: Class, rule: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            class,
            rule: rule.into(),
            message: message.into(),
        });
    }
}

/// The kernel family a tensor type is computed by (the prefix of its kernel ids).
fn family(tensor_type: &str) -> Option<&'static str> {
    Some(match tensor_type {
        "I2_S" => "i2s",
        "TQ2_0" => "tq2_0",
        "TQ1_0" => "tq1_0",
        "F32" => "f32",
        "F16" => "f16",
        "BF16" => "bf16",
        "Q8_0" => "q8_0",
        _ => return None,
    })
}

pub fn verify_file(path: &Path, opts: &VerifyOptions) -> Verdict {
    let mut c = Ctx {
        findings: Vec::new(),
        notes: Vec::new(),
    };
    let file = path.display().to_string();
    let doc: Option<Json> = match std::fs::read_to_string(path) {
        Err(e) => {
            c.fail(Class::Unreadable, "read", e.to_string());
            None
        }
        Ok(t) => match serde_json::from_str(&t) {
            Ok(v) => Some(v),
            Err(e) => {
                c.fail(Class::Unreadable, "json", e.to_string());
                None
            }
        },
    };
    if let Some(doc) = doc {
        verify_doc(&doc, opts, &mut c);
    }
    Verdict {
        file,
        ok: c.findings.is_empty(),
        findings: c.findings,
        notes: c.notes,
    }
}

fn verify_doc(doc: &Json, opts: &VerifyOptions, c: &mut Ctx) {
    let schema: Json = serde_json::from_str(SCHEMA).expect("embedded schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("embedded schema compiles");
    for e in validator.iter_errors(doc) {
        c.fail(
            Class::Schema,
            "schema",
            format!("{e} at {}", e.instance_path),
        );
    }
    // The seed's rules, checked on the raw document so they hold even when the schema fails.
    let kernels = doc
        .get("kernels")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    if doc
        .get("schema_version")
        .and_then(Json::as_str)
        .is_none_or(|v| !v.starts_with("1."))
    {
        c.fail(
            Class::Audit,
            "schema-version",
            "schema_version must be 1.x.y",
        );
    }
    if doc.get("compute_path").and_then(Json::as_str) != Some("real") {
        c.fail(
            Class::Audit,
            "compute-path",
            "compute_path must be \"real\"",
        );
    }
    if kernels.is_empty() {
        c.fail(Class::Audit, "kernels-non-empty", "no kernels recorded");
    }
    if kernels.len() > 10_000 {
        c.fail(
            Class::Audit,
            "kernels-count",
            format!("{} kernels (at most 10,000)", kernels.len()),
        );
    }
    for k in &kernels {
        let id = k.get("id").and_then(Json::as_str).unwrap_or("");
        if id.is_empty() {
            c.fail(Class::Audit, "kernel-id-empty", "a kernel has an empty id");
        }
        if id.to_lowercase().contains("mock") {
            c.fail(
                Class::Audit,
                "kernel-id-mock",
                format!("kernel id {id:?} names a mock"),
            );
        }
        if id.chars().count() > 128 {
            c.fail(
                Class::Audit,
                "kernel-id-length",
                format!("kernel id of {} characters", id.chars().count()),
            );
        }
        if !id.is_empty() && !bitnet::quant::matmul::is_kernel_id(id) {
            c.fail(
                Class::Audit,
                "kernel-unknown",
                format!("kernel id {id:?} is not a kernel this engine has"),
            );
        }
        let (calls, elements) = (
            k.get("calls").and_then(Json::as_u64),
            k.get("elements").and_then(Json::as_u64),
        );
        if calls == Some(0) || elements == Some(0) {
            c.fail(
                Class::Audit,
                "kernel-never-ran",
                format!("kernel {id:?} is listed with {calls:?} calls and {elements:?} elements"),
            );
        }
    }
    if let Some(failed) = doc.pointer("/test_results/failed").and_then(Json::as_u64) {
        if failed > 0 {
            c.fail(
                Class::Audit,
                "failed-tests",
                format!("{failed} failed tests"),
            );
        }
    }
    if c.findings.iter().any(|f| f.class == Class::Schema) {
        return; // The typed rules below need a well-formed receipt.
    }
    let r: Receipt = match serde_json::from_value(doc.clone()) {
        Ok(r) => r,
        Err(e) => return c.fail(Class::Schema, "structure", e.to_string()),
    };
    audit_kernels(&r, c);
    audit_performance(&r, c);
    audit_model_file(&r, c);
    let digest = receipt::content_digest(doc);
    if digest != r.digest {
        c.fail(
            Class::Digest,
            "content-digest",
            format!("content digest is {digest}, the receipt says {}", r.digest),
        );
    }
    match (&opts.public_key, &r.signature) {
        (Some(k), sig) => match receipt::read_public_key(k) {
            Err(e) => c.fail(Class::Signature, "public-key", e.to_string()),
            Ok(key) => match sig {
                None => c.fail(Class::Signature, "signature", "the receipt is not signed"),
                Some(s) if !receipt::verify_signature(&r.digest, s, &key) => c.fail(
                    Class::Signature,
                    "signature",
                    "the signature does not verify with the given public key",
                ),
                Some(_) => {}
            },
        },
        (None, Some(_)) => c
            .notes
            .push("signed, but no --pubkey given: signature not checked".into()),
        (None, None) => {}
    }
    if opts.replay {
        replay(&r, c);
    }
}

/// Kernel ids and counts against the model's tensor types, shape and token counts.
fn audit_kernels(r: &Receipt, c: &mut Ctx) {
    let m = &r.model_info;
    let run = &r.run;
    let role_type = |role: &str| m.tensor_types.get(role).map(String::as_str).unwrap_or("?");
    let ternary = role_type("attn_q");
    let roles = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    if roles.iter().any(|r| role_type(r) != ternary) {
        c.notes
            .push("layer matrices of mixed types: per-family counts not checked".into());
        return;
    }
    let (Some(mat_family), Some(out_family)) = (family(ternary), family(role_type("output")))
    else {
        return c.fail(
            Class::Audit,
            "tensor-types",
            format!("unknown tensor types {:?}", m.tensor_types),
        );
    };
    if run.decode_steps > run.generated_tokens || run.decode_steps + 1 < run.generated_tokens {
        c.fail(
            Class::Audit,
            "decode-steps",
            format!(
                "{} decode steps for {} generated tokens",
                run.decode_steps, run.generated_tokens
            ),
        );
    }
    let kv = m.hidden / m.heads * m.kv_heads;
    let per_token =
        (m.layers * (2 * m.hidden * m.hidden + 2 * m.hidden * kv + 3 * m.hidden * m.ffn)) as u64;
    let (prompt, steps) = (run.prompt_tokens as u64, run.decode_steps as u64);
    let layer_calls = 7 * m.layers as u64;
    // The prompt runs as one GEMM (a one-token prompt as a GEMV), then one GEMV per step.
    let mut want: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut add = |id: String, calls: u64, elements: u64| {
        let e = want.entry(id).or_insert((0, 0));
        e.0 += calls;
        e.1 += elements;
    };
    let mats = |kind: &str| format!("{mat_family}_{kind}");
    let out = |kind: &str| format!("{out_family}_{kind}");
    let out_elems = (m.vocab * m.hidden) as u64;
    if prompt > 0 {
        let kind = if prompt == 1 { "gemv" } else { "gemm" };
        add(mats(kind), layer_calls, prompt * per_token);
        add(out("gemv"), 1, out_elems);
    }
    if steps > 0 {
        add(mats("gemv"), layer_calls * steps, steps * per_token);
        add(out("gemv"), steps, steps * out_elems);
    }
    let mut got: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for k in &r.kernels {
        // The implementation suffix (scalar, avx2, ...) does not change what was computed.
        let base =
            k.id.split('_')
                .take_while(|p| !matches!(*p, "scalar" | "avx2" | "avx512" | "vnni" | "neon"))
                .collect::<Vec<_>>()
                .join("_");
        let e = got.entry(base).or_insert((0, 0));
        e.0 += k.calls;
        e.1 += k.elements;
    }
    for (id, &(calls, elements)) in &got {
        match want.get(id) {
            None => c.fail(
                Class::Audit,
                "kernel-not-implied",
                format!("kernel {id} ({calls} calls) is not used by a model whose matrices are {ternary} and output {}", role_type("output")),
            ),
            Some(&(wc, we)) if (wc, we) != (calls, elements) => c.fail(
                Class::Audit,
                "kernel-counts",
                format!("kernel {id}: {calls} calls / {elements} elements recorded, the model's shape and token counts imply {wc} / {we}"),
            ),
            _ => {}
        }
    }
    for id in want.keys().filter(|id| !got.contains_key(*id)) {
        c.fail(
            Class::Audit,
            "kernel-missing",
            format!("kernel {id} must have run but is not recorded"),
        );
    }
}

fn audit_performance(r: &Receipt, c: &mut Ctx) {
    let p = &r.performance;
    let close = |a: f64, b: f64| (a - b).abs() <= 0.01 * a.abs().max(b.abs()) + 1e-6;
    let rate = |n: usize, ms: f64| if ms > 0.0 { n as f64 / (ms / 1e3) } else { 0.0 };
    if !close(
        p.prefill_tokens_per_s,
        rate(r.run.prompt_tokens, p.prefill_ms),
    ) {
        c.fail(
            Class::Audit,
            "prefill-rate",
            format!(
                "prefill {} t/s, but {} tokens in {} ms",
                p.prefill_tokens_per_s, r.run.prompt_tokens, p.prefill_ms
            ),
        );
    }
    if !close(p.decode_tokens_per_s, rate(r.run.decode_steps, p.decode_ms)) {
        c.fail(
            Class::Audit,
            "decode-rate",
            format!(
                "decode {} t/s, but {} steps in {} ms",
                p.decode_tokens_per_s, r.run.decode_steps, p.decode_ms
            ),
        );
    }
    if p.time_to_first_token_ms + 1e-9 < p.prefill_ms {
        c.fail(
            Class::Audit,
            "ttft",
            "time to first token is shorter than the prefill",
        );
    }
    // Kernel times are wall-clock spans inside the run; together they cannot exceed it.
    let kernel_ms: f64 = r.kernels.iter().map(|k| k.time_ns as f64 / 1e6).sum();
    if kernel_ms > (p.prefill_ms + p.decode_ms) * 1.01 + 1.0 {
        c.fail(
            Class::Audit,
            "kernel-time",
            format!(
                "kernels took {kernel_ms:.1} ms of a {:.1} ms run",
                p.prefill_ms + p.decode_ms
            ),
        );
    }
}

fn audit_model_file(r: &Receipt, c: &mut Ctx) {
    let path = Path::new(&r.model_info.path);
    if !path.exists() {
        c.notes.push(format!(
            "model file {} not present: sha256 not checked",
            path.display()
        ));
        return;
    }
    match receipt::sha256_file(path) {
        Err(e) => c.fail(
            Class::Audit,
            "model-sha256",
            format!("{}: {e}", path.display()),
        ),
        Ok(h) if h != r.model_info.sha256 => c.fail(
            Class::Audit,
            "model-sha256",
            format!(
                "{} has sha256 {h}, the receipt says {}",
                path.display(),
                r.model_info.sha256
            ),
        ),
        Ok(_) => {}
    }
}

/// Re-runs the recorded request on the recorded model and compares the output digest.
fn replay(r: &Receipt, c: &mut Ctx) {
    let path = Path::new(&r.model_info.path);
    let result = (|| -> Result<(String, usize), String> {
        if receipt::sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?
            != r.model_info.sha256
        {
            return Err("the model file is not the one the receipt names".into());
        }
        let mut model = Model::load(path).map_err(|e| e.to_string())?;
        model.threads = r.environment.threads.max(1);
        let tok = Tokenizer::from_gguf(&model.file).map_err(|e| e.to_string())?;
        let q = &r.run.request;
        let opts = GenerateOptions {
            max_tokens: q.max_tokens,
            sampler: SamplerParams {
                temperature: q.temperature,
                top_k: q.top_k,
                top_p: q.top_p,
                min_p: q.min_p,
                repeat_penalty: q.repeat_penalty,
                repeat_last_n: q.repeat_last_n,
                seed: r.seed,
            },
            stop: q.stop.clone(),
            ignore_eos: q.ignore_eos,
        };
        let prompt = tok.encode(&q.prompt, true, false);
        let g = generate(&model, &tok, &prompt, &opts, &mut |_| true).map_err(|e| e.to_string())?;
        Ok((receipt::tokens_digest(&g.tokens), g.tokens.len()))
    })();
    match result {
        Err(e) => c.fail(Class::Replay, "replay", e),
        Ok((digest, n)) if digest != r.run.output_digest || n != r.run.generated_tokens => c.fail(
            Class::Replay,
            "replay",
            format!(
                "replay generated {n} tokens with digest {digest}; the receipt says {} with {}",
                r.run.generated_tokens, r.run.output_digest
            ),
        ),
        Ok(_) => {}
    }
}

pub fn human(v: &Verdict) -> String {
    let mut s = format!("{}: {}\n", v.file, if v.ok { "OK" } else { "FAILED" });
    for f in &v.findings {
        s += &format!("  [{:?}] {}: {}\n", f.class, f.rule, f.message);
    }
    for n in &v.notes {
        s += &format!("  note: {n}\n");
    }
    s
}
