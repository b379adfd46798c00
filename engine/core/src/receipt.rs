//! Inference receipts (`schemas/receipt.v1.schema.json`): what ran, on which model, where, and
//! how fast — checkable, never self-declared. Kernel entries are the dispatch counters
//! ([`KernelStats`]) of the run; the model is identified by the sha256 of its file; the output by
//! a digest of its token ids; the whole receipt by a digest of its canonical JSON, optionally
//! signed with ed25519.

use crate::env;
use crate::generate::{GenerateOptions, Generation};
use crate::model::Model;
use crate::quant::matmul::KernelStats;
use crate::session::Session;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

pub const SCHEMA_VERSION: &str = "1.0.0";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub id: String,
    pub calls: u64,
    /// Weight elements multiplied (rows * cols * tokens).
    pub elements: u64,
    pub time_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// The documented BITNET_* variables as set at start-up (absent = unset).
    pub variables: BTreeMap<String, String>,
    pub threads: usize,
    pub cpu_features: Vec<String>,
    pub gpu: String,
    pub os: String,
    pub arch: String,
    pub compiler: String,
    pub profile: String,
    pub git_commit: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub path: String,
    pub sha256: String,
    pub file_size: u64,
    pub arch: String,
    /// Tensor type of each weight role (token_embd, output, attn_q, ..., ffn_down).
    pub tensor_types: BTreeMap<String, String>,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tied_output: bool,
}

/// What was asked: enough to replay the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub prompt: String,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Run {
    pub request: Request,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Tokens evaluated one at a time after the prompt (the last generated token is not).
    pub decode_steps: usize,
    /// sha256 of the generated token ids as little-endian u32.
    pub output_digest: String,
    pub stop_reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Performance {
    pub load_ms: f64,
    pub time_to_first_token_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestResults {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub algorithm: String,
    /// Hex of the 32-byte ed25519 public key.
    pub public_key: String,
    /// Hex of the 64-byte signature over the `digest` string.
    pub value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub schema_version: String,
    pub timestamp: String,
    pub compute_path: String,
    pub backend: String,
    pub deterministic: bool,
    pub seed: u64,
    pub kernels: Vec<Kernel>,
    pub environment: Environment,
    pub model_info: ModelInfo,
    pub run: Run,
    pub performance: Performance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_results: Option<TestResults>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Json>,
    /// "sha256:<hex>" of the canonical JSON of everything but `digest` and `signature`.
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(format!("{:x}", h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// sha256 of token ids as little-endian u32.
pub fn tokens_digest(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
    sha256_hex(&bytes)
}

/// The digest of a receipt document: sha256 over its canonical JSON (sorted keys, no
/// whitespace) without the `digest` and `signature` members.
pub fn content_digest(doc: &Json) -> String {
    let mut v = doc.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("digest");
        o.remove("signature");
    }
    // serde_json's map is ordered by key, so this serialization is canonical.
    format!(
        "sha256:{}",
        sha256_hex(
            serde_json::to_string(&v)
                .expect("JSON value serializes")
                .as_bytes()
        )
    )
}

/// CPU features the engine can use, as detected at run time.
pub fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut f: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => { $( if std::is_x86_feature_detected!($name) { f.push($name); } )* };
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16",
            "avxvnni"
        );
    }
    f.into_iter().map(str::to_string).collect()
}

/// Peak resident set size of this process (Linux VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Current resident set size of this process (Linux VmRSS), if known.
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// A `kB` field of /proc/self/status, in bytes.
fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// RFC 3339 UTC timestamp of now (computed from the Unix clock, no time zone database).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The weight roles whose tensor types a receipt records.
pub fn tensor_types(model: &Model) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("token_embd".into(), model.token_embd.ty.name().into());
    m.insert("output".into(), model.output.ty.name().into());
    if let Some(l) = model.layers.first() {
        for (role, w) in [
            ("attn_q", &l.wq),
            ("attn_k", &l.wk),
            ("attn_v", &l.wv),
            ("attn_output", &l.wo),
            ("ffn_gate", &l.w_gate),
            ("ffn_up", &l.w_up),
            ("ffn_down", &l.w_down),
        ] {
            m.insert(role.into(), w.ty.name().into());
        }
    }
    m
}

pub fn model_info(model: &Model, path: &Path) -> std::io::Result<ModelInfo> {
    let c = &model.config;
    Ok(ModelInfo {
        path: path.display().to_string(),
        sha256: sha256_file(path)?,
        file_size: std::fs::metadata(path)?.len(),
        arch: c.arch.clone(),
        tensor_types: tensor_types(model),
        layers: c.n_layers,
        hidden: c.dim,
        ffn: c.hidden_dim,
        heads: c.n_heads,
        kv_heads: c.n_kv_heads,
        vocab: c.vocab_size,
        tied_output: model.tied_output,
    })
}

pub fn environment(threads: usize) -> Environment {
    Environment {
        variables: env::get().documented_variables(),
        threads,
        cpu_features: cpu_features(),
        gpu: "none".into(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        compiler: env!("BITNET_RUSTC_VERSION").into(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        git_commit: option_env!("BITNET_GIT_COMMIT")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    }
}

pub fn kernels(stats: &KernelStats) -> Vec<Kernel> {
    stats
        .snapshot()
        .into_iter()
        .map(|(id, s)| Kernel {
            id: id.into(),
            calls: s.calls,
            elements: s.elements,
            time_ns: s.nanos,
        })
        .collect()
}

/// Builds the receipt of one generation run by `session` (whose kernel counters must have
/// been reset before it ran).
pub fn for_generation(
    session: &Session,
    path: &Path,
    opts: &GenerateOptions,
    prompt: &str,
    generation: &Generation,
    load_ms: f64,
) -> std::io::Result<Receipt> {
    let g = generation;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let per_s = |n: usize, d: std::time::Duration| {
        if d.is_zero() {
            0.0
        } else {
            n as f64 / d.as_secs_f64()
        }
    };
    let decode_steps = g.decode_steps;
    let p = &opts.sampler;
    let mut r = Receipt {
        schema_version: SCHEMA_VERSION.into(),
        timestamp: now_rfc3339(),
        compute_path: "real".into(),
        backend: "cpu".into(),
        deterministic: true,
        seed: p.seed,
        kernels: kernels(session.stats()),
        environment: environment(session.threads()),
        model_info: model_info(session.model(), path)?,
        run: Run {
            request: Request {
                prompt: prompt.into(),
                max_tokens: opts.max_tokens,
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                min_p: p.min_p,
                repeat_penalty: p.repeat_penalty,
                repeat_last_n: p.repeat_last_n,
                stop: opts.stop.clone(),
                ignore_eos: opts.ignore_eos,
            },
            prompt_tokens: g.prompt_tokens,
            generated_tokens: g.tokens.len(),
            decode_steps,
            output_digest: tokens_digest(&g.tokens),
            stop_reason: format!("{:?}", g.stop),
        },
        performance: Performance {
            load_ms,
            time_to_first_token_ms: ms(g.prefill),
            prefill_ms: ms(g.prefill),
            decode_ms: ms(g.decode),
            prefill_tokens_per_s: per_s(g.prompt_tokens, g.prefill),
            decode_tokens_per_s: per_s(decode_steps, g.decode),
            peak_rss_bytes: peak_rss_bytes(),
        },
        test_results: None,
        parity: None,
        digest: String::new(),
        signature: None,
    };
    r.seal();
    Ok(r)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: expected 64 hex digits (a 32-byte ed25519 {what})")]
    Format { path: String, what: &'static str },
}

fn read_hex32(path: &Path, what: &'static str) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bad = || KeyError::Format {
        path: path.display().to_string(),
        what,
    };
    let t = text.trim();
    if t.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read_hex32(path, "secret key")?))
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read_hex32(path, "public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Format {
        path: path.display().to_string(),
        what: "public key",
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Receipt {
    /// The receipt as the JSON document it is written as. (Parsed back from its text, not
    /// converted directly: direct conversion widens f32 fields to f64 and prints them
    /// differently, which would change the digest.)
    pub fn to_json(&self) -> Json {
        let text = serde_json::to_string(self).expect("receipt serializes");
        serde_json::from_str(&text).expect("serialized receipt parses")
    }

    /// Recomputes the content digest (drops any signature, which covered the old digest).
    pub fn seal(&mut self) {
        self.signature = None;
        self.digest = String::new();
        self.digest = content_digest(&self.to_json());
    }

    /// Signs the digest with an ed25519 key.
    pub fn sign(&mut self, key: &SigningKey) {
        let sig = key.sign(self.digest.as_bytes());
        self.signature = Some(Signature {
            algorithm: "ed25519".into(),
            public_key: hex(key.verifying_key().as_bytes()),
            value: hex(&sig.to_bytes()),
        });
    }

    /// Writes pretty JSON atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)? + "\n";
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

/// Checks a signature over `digest` with `key`.
pub fn verify_signature(digest: &str, sig: &Signature, key: &VerifyingKey) -> bool {
    let Ok(bytes) = (0..sig.value.len() / 2)
        .map(|i| u8::from_str_radix(sig.value.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let Ok(arr) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        return false;
    };
    sig.algorithm == "ed25519"
        && key
            .verify(
                digest.as_bytes(),
                &ed25519_dalek::Signature::from_bytes(&arr),
            )
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_the_right_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && &t[4..5] == "-" && &t[10..11] == "T");
    }

    #[test]
    fn digest_ignores_key_order_and_signature_but_not_content() {
        let a: Json = serde_json::from_str(r#"{"b":1,"a":[1,2],"digest":"x"}"#).unwrap();
        let b: Json = serde_json::from_str(r#"{"a":[1,2],"b":1,"signature":{"k":1}}"#).unwrap();
        let c: Json = serde_json::from_str(r#"{"a":[1,2],"b":2}"#).unwrap();
        assert_eq!(content_digest(&a), content_digest(&b));
        assert_ne!(content_digest(&a), content_digest(&c));
    }

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let mut r = Signature {
            algorithm: "ed25519".into(),
            public_key: String::new(),
            value: String::new(),
        };
        r.value = hex(&key.sign(b"sha256:abc").to_bytes());
        assert!(verify_signature("sha256:abc", &r, &key.verifying_key()));
        assert!(!verify_signature("sha256:abd", &r, &key.verifying_key()));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!verify_signature("sha256:abc", &r, &other.verifying_key()));
    }
}
