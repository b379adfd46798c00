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
use bitnet::session::Session;
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
    fn verdict(self, file: String) -> Verdict {
        Verdict {
            file,
            ok: self.findings.is_empty(),
            findings: self.findings,
            notes: self.notes,
        }
    }
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
    bitnet::quant::TensorType::from_name(tensor_type)
        .and_then(|t| t.format())
        .map(|f| f.family)
}

pub fn verify_file(path: &Path, opts: &VerifyOptions) -> Verdict {
    let mut c = Ctx {
        findings: Vec::new(),
        notes: Vec::new(),
    };
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Err(e) => c.fail(Class::Unreadable, "read", e.to_string()),
        Ok(t) => verify_json(&t, opts, &mut c),
    }
    c.verdict(file)
}

/// [`verify_file`] of a receipt's text (`file` names it in the verdict).
pub fn verify_text(file: &str, text: &str, opts: &VerifyOptions) -> Verdict {
    let mut c = Ctx {
        findings: Vec::new(),
        notes: Vec::new(),
    };
    verify_json(text, opts, &mut c);
    c.verdict(file.to_string())
}

fn verify_json(text: &str, opts: &VerifyOptions, c: &mut Ctx) {
    match serde_json::from_str::<Json>(text) {
        Ok(doc) => verify_doc(&doc, opts, c),
        Err(e) => c.fail(Class::Unreadable, "json", e.to_string()),
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
        // Replay trusts the model-file audit (regular file, size, sha256, shape) that ran above.
        if c.findings.iter().any(|f| f.rule.starts_with("model-")) {
            c.fail(
                Class::Replay,
                "replay",
                "not replayed: the model file failed its audit",
            );
        } else if !Path::new(&r.model_info.path).is_file() {
            c.fail(
                Class::Replay,
                "replay",
                format!("not replayed: model file {} not present", r.model_info.path),
            );
        } else {
            replay(&r, c);
        }
    }
}

/// Kernel ids and counts against the model's tensor types, shape and token counts. Each
/// weight role adds its calls and elements to the kernel family of its tensor type, so mixed
/// types are accounted for role by role. Arithmetic is in u128: no receipt can overflow it.
fn audit_kernels(r: &Receipt, c: &mut Ctx) {
    use std::collections::BTreeMap;
    let m = &r.model_info;
    let run = &r.run;
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
    let (h, f, kv) = (
        m.hidden as u128,
        m.ffn as u128,
        (m.hidden / m.heads * m.kv_heads) as u128,
    );
    let roles: [(&str, u128, u128); 8] = [
        ("attn_q", h, h),
        ("attn_k", kv, h),
        ("attn_v", kv, h),
        ("attn_output", h, h),
        ("ffn_gate", f, h),
        ("ffn_up", f, h),
        ("ffn_down", h, f),
        ("output", m.vocab as u128, h),
    ];
    let (prompt, steps, layers) = (
        run.prompt_tokens as u128,
        run.decode_steps as u128,
        m.layers as u128,
    );
    let mut want: BTreeMap<String, (u128, u128)> = BTreeMap::new();
    for (role, rows, cols) in roles {
        let ty = m.tensor_types.get(role).map(String::as_str).unwrap_or("?");
        let Some(fam) = family(ty) else {
            return c.fail(
                Class::Audit,
                "tensor-types",
                format!("{role} has unknown tensor type {ty:?}"),
            );
        };
        // Layer matrices run once per layer per forward pass; the output projection once per
        // pass, for the last position only.
        let (per_pass, prompt_rows) = if role == "output" {
            (1, 1.min(prompt))
        } else {
            (layers, prompt)
        };
        let mut add = |kind: &str, calls: u128, elements: u128| {
            let e = want.entry(format!("{fam}_{kind}")).or_insert((0, 0));
            e.0 += calls;
            e.1 += elements;
        };
        if prompt > 0 {
            let kind = if prompt_rows == 1 { "gemv" } else { "gemm" };
            add(kind, per_pass, per_pass * rows * cols * prompt_rows);
        }
        if steps > 0 {
            add("gemv", per_pass * steps, per_pass * rows * cols * steps);
        }
    }
    let mut got: BTreeMap<String, (u128, u128)> = BTreeMap::new();
    for k in &r.kernels {
        // The implementation suffix (scalar, avx2, ...) does not change what was computed.
        let base =
            k.id.rsplit_once('_')
                .map_or(k.id.as_str(), |(b, _)| b)
                .to_string();
        let e = got.entry(base).or_insert((0, 0));
        e.0 += k.calls as u128;
        e.1 += k.elements as u128;
    }
    for (id, &(calls, elements)) in &got {
        match want.get(id) {
            None => c.fail(
                Class::Audit,
                "kernel-not-implied",
                format!("kernel {id} ({calls} calls) is not used by a model with tensor types {:?}", m.tensor_types),
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

/// When the model file is present: it must be a regular file of the recorded size and hash,
/// and its hyperparameters and tensor types must be the ones the receipt states.
fn audit_model_file(r: &Receipt, c: &mut Ctx) {
    let m = &r.model_info;
    let path = Path::new(&m.path);
    let Ok(meta) = std::fs::metadata(path) else {
        c.notes.push(format!(
            "model file {} not present: sha256 and shape not checked",
            path.display()
        ));
        return;
    };
    if !meta.is_file() || meta.len() != m.file_size {
        return c.fail(
            Class::Audit,
            "model-file",
            format!(
                "{} is not a regular file of {} bytes",
                path.display(),
                m.file_size
            ),
        );
    }
    let model = match load_as_recorded(r) {
        Ok(model) => model,
        Err(e) => {
            return c.fail(
                Class::Audit,
                "model-shape",
                format!("{}: {e}", path.display()),
            )
        }
    };
    let mut actual = match receipt::model_info(&model, path) {
        Ok(a) => a,
        Err(e) => {
            return c.fail(
                Class::Audit,
                "model-sha256",
                format!("{}: {e}", path.display()),
            )
        }
    };
    if actual.sha256 != m.sha256 {
        return c.fail(
            Class::Audit,
            "model-sha256",
            format!(
                "{} has sha256 {}, the receipt says {}",
                path.display(),
                actual.sha256,
                m.sha256
            ),
        );
    }
    actual.path = m.path.clone();
    if &actual != m {
        c.fail(
            Class::Audit,
            "model-shape",
            "model_info does not describe the model file (shape or tensor types differ)",
        );
    }
}

/// The recorded model as the run loaded it: a head re-quantized at load (`--head`) is
/// recorded as the output's tensor type, and applied again here.
fn load_as_recorded(r: &Receipt) -> Result<Model, String> {
    let mut model = Model::load(&r.model_info.path).map_err(|e| e.to_string())?;
    let recorded = r.model_info.tensor_types.get("output").map(String::as_str);
    if let Some(ty) = recorded.filter(|&t| t != model.output.ty.name()) {
        let fmt = bitnet::model::HeadFormat::ALL
            .iter()
            .find(|f| f.tensor_type().name() == ty)
            .ok_or_else(|| {
                format!(
                    "the receipt's output head is {ty}, the file's {}: no load option makes it",
                    model.output.ty.name()
                )
            })?;
        model.quantize_head(*fmt).map_err(|e| e.to_string())?;
    }
    Ok(model)
}

/// Re-runs the recorded request on the recorded model and compares the output digest.
fn replay(r: &Receipt, c: &mut Ctx) {
    let result = (|| -> Result<(String, usize), String> {
        let model = load_as_recorded(r)?;
        let mut session = Session::new(&model).with_threads(r.environment.threads);
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
        let g = generate(&mut session, &tok, &prompt, &opts, &mut |_| true)
            .map_err(|e| e.to_string())?;
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
