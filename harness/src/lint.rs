//! `bitnet-validate lint MODEL.gguf`: problems in a model file that make engines compute the
//! wrong thing, each finding a rule id, a severity and a message. The most common wrong-output
//! reports against BitNet.cpp are file problems (a missing pre-tokenizer key, an activation
//! the architecture does not imply, a placeholder chat template), so they are checked here,
//! before anything runs.
//!
//! Severities: `error` (an engine will compute something other than the model, or cannot load
//! it), `warning` (engines disagree, or the file relies on an inference), `info` (worth
//! knowing). The exit code is 1 when there is an error finding.

use bitnet::gguf::{Gguf, Value};
use bitnet::model::Model;
use bitnet::quant::TensorType;
use bitnet::tokenizer::{vocab_fingerprint, Tokenizer, KNOWN_VOCABS};
use bitnet_server::chat::{is_bitnet_placeholder, ChatTemplate, Message};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// Every rule: id, severity, what it checks (the README's table is this list).
pub const RULES: &[(&str, Severity, &str)] = &[
    ("gguf", Severity::Error, "the file is not a readable GGUF"),
    ("model-load", Severity::Error, "tensor names, types and shapes fit the architecture and its hyperparameters"),
    ("pre-tokenizer-missing", Severity::Warning, "a BPE vocabulary without tokenizer.ggml.pre: llama.cpp falls back to its 'default' split; the vocabulary's fingerprint tells which split it was trained with"),
    ("pre-tokenizer-unknown", Severity::Error, "a pre-tokenizer no engine here knows, or a missing key on an unrecognised vocabulary"),
    ("activation-arch", Severity::Error, "the FFN activation key contradicts the architecture (bitnet-b1.58 is relu2; BitNet.cpp computes SiLU for arch bitnet whatever the key says)"),
    ("chat-template-placeholder", Severity::Warning, "BitNet's converter placeholder (Human:/BITNETAssistant:), which no model was trained on"),
    ("chat-template-fails", Severity::Error, "the chat template does not compile, or fails or exceeds its budget on a dry run"),
    ("chat-template-missing", Severity::Info, "no tokenizer.chat_template"),
    ("special-token-ids", Severity::Error, "BOS/EOS/EOT/padding ids inside the vocabulary"),
    ("eos-missing", Severity::Warning, "no end-of-sequence token: generation only stops at its limit"),
    ("tied-head", Severity::Info, "no output.weight: the token embedding is also the output head"),
    ("norm-values", Severity::Error, "norm weights and scales are finite, not all zero, not subnormal, not extreme"),
    ("vocab-consistency", Severity::Error, "tokens, scores and token types have one entry per token; BPE merges join tokens of the vocabulary into one"),
    ("file-type", Severity::Warning, "general.file_type names the type most weights have"),
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub file: String,
    pub findings: Vec<Finding>,
    pub errors: usize,
    pub warnings: usize,
}

struct Lint(Vec<Finding>);

impl Lint {
    fn add(&mut self, rule: &str, message: impl Into<String>) {
        let severity = RULES
            .iter()
            .find(|r| r.0 == rule)
            .map_or(Severity::Error, |r| r.1);
        self.0.push(Finding {
            rule: rule.into(),
            severity,
            message: message.into(),
        });
    }
    fn add_as(&mut self, rule: &str, severity: Severity, message: impl Into<String>) {
        self.0.push(Finding {
            rule: rule.into(),
            severity,
            message: message.into(),
        });
    }
}

/// Instruction budget of the chat template's dry run (minijinja fuel).
const TEMPLATE_FUEL: u64 = 200_000;
/// Longest prompt text the dry run may render.
const TEMPLATE_OUTPUT_MAX: usize = 64 << 10;

pub fn lint(path: &Path) -> Report {
    let mut l = Lint(Vec::new());
    match Gguf::open(path) {
        Err(e) => l.add("gguf", e.to_string()),
        Ok(g) => lint_gguf(Arc::new(g), &mut l),
    }
    let mut findings = l.0;
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.rule.cmp(&b.rule)));
    Report {
        file: path.display().to_string(),
        errors: findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count(),
        warnings: findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count(),
        findings,
    }
}

fn lint_gguf(g: Arc<Gguf>, l: &mut Lint) {
    let arch = g
        .get_str("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("")
        .to_string();
    activation(&g, &arch, l);
    // The vocabulary is read once; a file without one gets the finding and no token checks.
    match str_array(&g, "tokenizer.ggml.tokens") {
        None => l.add(
            "vocab-consistency",
            "tokenizer.ggml.tokens is missing or not an array of strings",
        ),
        Some(tokens) => {
            if vocab(&g, &tokens, l) {
                pre_tokenizer(&g, &tokens, l);
            }
            special_ids(&g, tokens.len() as u64, l);
        }
    }
    file_type(&g, l);
    norms(&g, l);
    if g.tensors().iter().any(|t| t.name == "token_embd.weight")
        && !g.tensors().iter().any(|t| t.name == "output.weight")
    {
        l.add(
            "tied-head",
            "the output head is token_embd.weight (tied embeddings)",
        );
    }
    match Model::from_gguf(g.clone()) {
        Ok(_) => {}
        Err(e) => l.add("model-load", e.to_string()),
    }
    template(&g, l);
}

fn activation(g: &Gguf, arch: &str, l: &mut Lint) {
    let key = format!("{arch}.hidden_activation");
    let Ok(act) = g.get_str(&key) else {
        return l.add("activation-arch", format!("{key} is not a string"));
    };
    match (arch, act) {
        ("bitnet-b1.58", Some(a)) if a != "relu2" => l.add(
            "activation-arch",
            format!("arch bitnet-b1.58 computes relu2, but {key} = {a:?}"),
        ),
        ("bitnet", Some("relu2")) => l.add_as(
            "activation-arch",
            Severity::Warning,
            format!(
                "{key} = \"relu2\" on arch bitnet: this engine honours it, but BitNet.cpp (both \
                 releases) computes SiLU for arch bitnet; write the file as arch bitnet-b1.58 \
                 for it to compute relu2"
            ),
        ),
        _ => {}
    }
}

fn str_array(g: &Gguf, key: &str) -> Option<Vec<String>> {
    let a = g.get_array(key).ok().flatten()?;
    a.iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
}

/// Array lengths and merges; false when the vocabulary is too broken to fingerprint.
fn vocab(g: &Gguf, tokens: &[String], l: &mut Lint) -> bool {
    let mut ok = true;
    for key in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
        if let Ok(Some(a)) = g.get_array(key) {
            if a.len() != tokens.len() {
                l.add(
                    "vocab-consistency",
                    format!("{key} has {} entries for {} tokens", a.len(), tokens.len()),
                );
                ok = false;
            }
        }
    }
    if let Some(merges) = str_array(g, "tokenizer.ggml.merges") {
        let set: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        let bad: Vec<&String> = merges
            .iter()
            .filter(|m| match m.split_once(' ') {
                Some((a, b)) => {
                    !(set.contains(a)
                        && set.contains(b)
                        && set.contains(format!("{a}{b}").as_str()))
                }
                None => true,
            })
            .collect();
        if !bad.is_empty() {
            l.add(
                "vocab-consistency",
                format!(
                    "{} of {} merges do not join two tokens of the vocabulary into a third (first: {:?})",
                    bad.len(),
                    merges.len(),
                    bad[0]
                ),
            );
        }
    }
    ok
}

fn pre_tokenizer(g: &Gguf, tokens: &[String], l: &mut Lint) {
    if g.get_str("tokenizer.ggml.model").ok().flatten() != Some("gpt2") {
        return; // SentencePiece vocabularies have no pre-tokenizer
    }
    let pre = g.get_str("tokenizer.ggml.pre").ok().flatten();
    let merges = str_array(g, "tokenizer.ggml.merges").unwrap_or_default();
    let types: Vec<i32> = g
        .get_array("tokenizer.ggml.token_type")
        .ok()
        .flatten()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_i64().map(|x| x as i32))
                .collect()
        })
        .unwrap_or_default();
    let fp = vocab_fingerprint(tokens, &types, &merges);
    let known = KNOWN_VOCABS.iter().find(|(h, _)| *h == fp).map(|(_, n)| *n);
    match (pre, known) {
        (None, Some(name)) => l.add(
            "pre-tokenizer-missing",
            format!(
                "no tokenizer.ggml.pre: llama.cpp (and BitNet.cpp) will split text with its \
                 'default' pre-tokenizer; the vocabulary's fingerprint {fp} is {name}'s, which \
                 this engine infers (add tokenizer.ggml.pre = \"{name}\" to the file)"
            ),
        ),
        (None, None) => l.add(
            "pre-tokenizer-unknown",
            format!(
                "no tokenizer.ggml.pre and the vocabulary (fingerprint {fp}) is not one this \
                 project recognises: its text split is unknown (--tokenizer-pre NAME overrides)"
            ),
        ),
        (Some(_), _) => {
            if let Err(e) = Tokenizer::from_gguf(g) {
                l.add("pre-tokenizer-unknown", e.to_string());
            }
        }
    }
}

fn special_ids(g: &Gguf, n: u64, l: &mut Lint) {
    let mut eos = false;
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.unknown_token_id",
    ] {
        match g.get(key) {
            None => {}
            Some(v) => match v.as_i64() {
                Some(id) if id >= 0 && (id as u64) < n => {
                    eos |= key.ends_with("eos_token_id") || key.ends_with("eot_token_id")
                }
                Some(id) => l.add(
                    "special-token-ids",
                    format!("{key} = {id} is outside the vocabulary of {n} tokens"),
                ),
                None => l.add("special-token-ids", format!("{key} is not an integer")),
            },
        }
    }
    if n > 0 && !eos {
        l.add(
            "eos-missing",
            "neither tokenizer.ggml.eos_token_id nor eot_token_id names a token",
        );
    }
}

/// llama.cpp's `general.file_type` numbers of the weight types used here.
fn ftype_of(t: TensorType) -> Option<u64> {
    Some(match t {
        TensorType::F32 => 0,
        TensorType::F16 => 1,
        TensorType::Q8_0 => 7,
        TensorType::BF16 => 32,
        TensorType::TQ1_0 => 36,
        TensorType::TQ2_0 => 37,
        TensorType::TL2 => 39,
        TensorType::I2S => 40,
        _ => return None,
    })
}

fn file_type(g: &Gguf, l: &mut Lint) {
    let Some(ft) = g.get("general.file_type").and_then(Value::as_i64) else {
        return;
    };
    // The type of the layer matrices (2-D tensors other than the embedding and the head).
    let mut counts = std::collections::BTreeMap::<String, (u64, TensorType)>::new();
    for t in g.tensors() {
        if t.dims.len() == 2 && t.name.starts_with("blk.") {
            counts.entry(t.ty.name().to_string()).or_insert((0, t.ty)).0 += 1;
        }
    }
    let Some((name, &(_, ty))) = counts.iter().max_by_key(|(_, (c, _))| *c) else {
        return;
    };
    if ftype_of(ty).is_some_and(|want| want != ft as u64) {
        l.add(
            "file-type",
            format!(
                "general.file_type = {ft}, but the layer weights are {name} (file type {})",
                ftype_of(ty).unwrap_or_default()
            ),
        );
    }
}

fn norms(g: &Gguf, l: &mut Lint) {
    for t in g.tensors() {
        let is_norm = t.name.ends_with("norm.weight") || t.name.ends_with(".scale");
        if !is_norm || !matches!(t.ty, TensorType::F32 | TensorType::F16 | TensorType::BF16) {
            continue;
        }
        let n = t.dims.iter().product::<u64>() as usize;
        let mut v = vec![0f32; n];
        let bytes = g.tensor_data(t);
        if bytes.len() < t.ty.tensor_bytes(n as u64, n as u64) as usize {
            continue; // model-load reports it
        }
        bitnet::quant::float::dequantize_row(t.ty, bytes, &mut v);
        let (mut nonfinite, mut zero, mut subnormal, mut extreme) = (0, 0, 0, 0);
        for &x in &v {
            if !x.is_finite() {
                nonfinite += 1;
            } else if x == 0.0 {
                zero += 1;
            } else if x.is_subnormal() {
                subnormal += 1;
            } else if x.abs() > 1e4 {
                extreme += 1;
            }
        }
        if nonfinite > 0 {
            l.add(
                "norm-values",
                format!("{}: {nonfinite} of {n} values are NaN or infinite", t.name),
            );
        } else if zero == n {
            l.add("norm-values", format!("{}: every value is zero", t.name));
        } else if subnormal > 0 || extreme > 0 {
            l.add_as(
                "norm-values",
                Severity::Warning,
                format!(
                    "{}: {subnormal} subnormal and {extreme} values beyond 1e4 of {n}",
                    t.name
                ),
            );
        }
    }
}

fn template(g: &Gguf, l: &mut Lint) {
    let src = match g.get_str("tokenizer.chat_template") {
        Ok(Some(s)) => s.to_string(),
        Ok(None) => return l.add("chat-template-missing", "the file has no chat template"),
        Err(e) => return l.add("chat-template-fails", e.to_string()),
    };
    if is_bitnet_placeholder(&src) {
        l.add(
            "chat-template-placeholder",
            "tokenizer.chat_template is BitNet's converter placeholder (\"Human: ... \
             BITNETAssistant:\"), not the format the model was trained on; this engine uses \
             the release's format instead",
        );
        return;
    }
    let msgs = [
        ("system", "You are a helpful assistant."),
        ("user", "Hello"),
        ("assistant", "Hi there."),
        ("user", "How are you?"),
    ]
    .map(|(role, content)| Message {
        role: role.into(),
        content: content.into(),
    });
    let rendered = ChatTemplate::new("tokenizer.chat_template", &src, "<s>", "</s>")
        .map(|t| t.with_fuel(TEMPLATE_FUEL))
        .and_then(|t| t.render(&msgs));
    match rendered {
        Err(e) => l.add("chat-template-fails", e.to_string()),
        Ok(text) if text.len() > TEMPLATE_OUTPUT_MAX => l.add(
            "chat-template-fails",
            format!(
                "a four-message dry run renders {} bytes (more than {TEMPLATE_OUTPUT_MAX})",
                text.len()
            ),
        ),
        Ok(text) if !text.contains("How are you?") => l.add(
            "chat-template-fails",
            "a dry run's output does not contain the last user message",
        ),
        Ok(_) => {}
    }
}

/// The findings as text: one line each, then a count.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        s += &format!("{sev:<7} [{}] {}\n", f.rule, f.message);
    }
    s += &format!(
        "{}: {} errors, {} warnings, {} findings\n",
        r.file,
        r.errors,
        r.warnings,
        r.findings.len()
    );
    s
}
