//! Golden snapshots: self-describing JSON files in `golden/` holding what to compute (kind,
//! model or vocabulary, inputs) and the reviewed expected result. `check` recomputes and
//! compares; `update` rewrites the expected part so the change can be reviewed with `git diff`.
//!
//! Kinds: `tokenizer` (ids of a corpus, exact), `greedy` (greedy token ids per prompt, exact),
//! `logits` (per position: the top-5 ids and logits, sum and L2 norm, within the file's stated
//! tolerance), `receipt` (a seeded run's receipt with volatile fields redacted — times, paths,
//! environment, and the implementation suffix of kernel ids — exact).

use crate::context::Context;
use crate::models::ModelSpec;
use bitnet::generate::{generate, GenerateOptions};
use bitnet::gguf::Gguf;
use bitnet::model::{Model, State};
use bitnet::sample::SamplerParams;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Tokenizer snapshots: a vocabulary GGUF in the shared data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<String>,
    #[serde(default)]
    pub inputs: Json,
    #[serde(default)]
    pub expected: Json,
}

impl Snapshot {
    pub fn load(path: &Path) -> Result<Self, String> {
        let t = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))
    }
    fn input_str(&self, k: &str) -> Option<&str> {
        self.inputs.get(k).and_then(Json::as_str)
    }
    fn input_usize(&self, k: &str, default: usize) -> usize {
        self.inputs
            .get(k)
            .and_then(Json::as_u64)
            .map_or(default, |v| v as usize)
    }
    fn prompts(&self) -> Vec<String> {
        self.inputs
            .get("prompts")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec!["Once upon a time".into()])
    }
}

fn load_model(s: &Snapshot, ctx: &Context) -> Result<(Model, Tokenizer, PathBuf), String> {
    let spec = s.model.as_ref().ok_or("this snapshot kind needs a model")?;
    let path = spec.materialize(ctx)?;
    let m = Model::load(&path).map_err(|e| e.to_string())?;
    let tok = Tokenizer::from_gguf(&m.file).map_err(|e| e.to_string())?;
    Ok((m, tok, path))
}

/// What the snapshot's `expected` would be now.
pub fn compute(s: &Snapshot, ctx: &Context) -> Result<Json, String> {
    match s.kind.as_str() {
        "tokenizer" => {
            let vocab = ctx.shared.join(
                s.vocab
                    .as_deref()
                    .ok_or("a tokenizer snapshot needs a vocab")?,
            );
            let tok = Tokenizer::from_gguf(&Gguf::open(&vocab).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let corpus_path = ctx
                .root
                .join(s.input_str("corpus").unwrap_or("ci/tokenizer-corpus.txt"));
            let corpus = std::fs::read_to_string(&corpus_path)
                .map_err(|e| format!("{}: {e}", corpus_path.display()))?;
            Ok(Json::Array(
                corpus
                    .split("\n---\n")
                    .map(|t| json!({"text": t, "ids": tok.encode(t, true, false)}))
                    .collect(),
            ))
        }
        "greedy" => {
            let (m, tok, _) = load_model(s, ctx)?;
            let mut session = Session::new(&m).with_threads(ctx.threads);
            let opts = GenerateOptions {
                max_tokens: s.input_usize("tokens", 32),
                sampler: SamplerParams::greedy(),
                stop: vec![],
                ignore_eos: true,
            };
            let mut out = Vec::new();
            for p in s.prompts() {
                let g = generate(
                    &mut session,
                    &tok,
                    &tok.encode(&p, true, false),
                    &opts,
                    &mut |_| true,
                )
                .map_err(|e| e.to_string())?;
                out.push(json!({"prompt": p, "ids": g.tokens, "text": g.text}));
            }
            Ok(Json::Array(out))
        }
        "logits" => {
            let (m, tok, _) = load_model(s, ctx)?;
            let mut session = Session::new(&m).with_threads(ctx.threads);
            let prompt = s.prompts().remove(0);
            let ids = tok.encode(&prompt, true, false);
            let logits = session
                .forward(&mut State::new(&m.config), &ids, true)
                .map_err(|e| e.to_string())?;
            let v = m.config.vocab_size;
            let rows: Vec<Json> = logits
                .chunks_exact(v)
                .enumerate()
                .map(|(pos, row)| {
                    let top: Vec<Json> = bitnet::eval::metrics::top_k(row, 5)
                        .iter()
                        .map(|&i| json!([i, row[i as usize]]))
                        .collect();
                    let sum: f64 = row.iter().map(|&x| x as f64).sum();
                    let l2: f64 = row
                        .iter()
                        .map(|&x| (x as f64) * (x as f64))
                        .sum::<f64>()
                        .sqrt();
                    json!({"pos": pos, "top5": top, "sum": sum, "l2": l2})
                })
                .collect();
            Ok(json!({"tokens": ids, "positions": rows}))
        }
        "receipt" => {
            let (m, tok, path) = load_model(s, ctx)?;
            let mut session = Session::new(&m).with_threads(ctx.threads);
            let opts = GenerateOptions {
                max_tokens: s.input_usize("tokens", 16),
                sampler: SamplerParams {
                    temperature: 0.8,
                    seed: s.input_usize("seed", 1) as u64,
                    ..Default::default()
                },
                stop: vec![],
                ignore_eos: false,
            };
            let prompt = s.prompts().remove(0);
            let g = generate(
                &mut session,
                &tok,
                &tok.encode(&prompt, true, false),
                &opts,
                &mut |_| true,
            )
            .map_err(|e| e.to_string())?;
            let r = bitnet::receipt::for_generation(&session, &path, &opts, &prompt, &g, 0.0)
                .map_err(|e| e.to_string())?;
            Ok(redact(r.to_json()))
        }
        k => Err(format!(
            "unknown snapshot kind {k:?} (tokenizer, greedy, logits, receipt)"
        )),
    }
}

/// Removes what legitimately changes between runs and machines.
pub fn redact(mut doc: Json) -> Json {
    const REDACTED: &str = "<redacted>";
    for p in [
        "/timestamp",
        "/digest",
        "/environment",
        "/performance",
        "/model_info/path",
    ] {
        if let Some(v) = doc.pointer_mut(p) {
            *v = json!(REDACTED);
        }
    }
    if let Some(o) = doc.as_object_mut() {
        o.remove("signature");
    }
    if let Some(ks) = doc.get_mut("kernels").and_then(Json::as_array_mut) {
        for k in ks {
            k["time_ns"] = json!(REDACTED);
            // Which implementation ran depends on the CPU; what it computed does not.
            if let Some(id) = k["id"].as_str() {
                let family = id.rsplit_once('_').map_or(id, |(f, _)| f);
                k["id"] = json!(format!("{family}_*"));
            }
        }
    }
    doc
}

/// Differences between the expected and the actual result (empty = match).
pub fn compare(s: &Snapshot, actual: &Json) -> Vec<String> {
    if s.kind != "logits" {
        return if &s.expected == actual {
            vec![]
        } else {
            json_diff("", &s.expected, actual)
        };
    }
    let tol = s
        .inputs
        .get("tolerance")
        .and_then(Json::as_f64)
        .unwrap_or(1e-3);
    let mut d = Vec::new();
    if s.expected.get("tokens") != actual.get("tokens") {
        d.push("tokens differ".into());
    }
    let (e, a) = (
        s.expected["positions"].as_array(),
        actual["positions"].as_array(),
    );
    let (Some(e), Some(a)) = (e, a) else {
        return vec!["positions missing".into()];
    };
    if e.len() != a.len() {
        return vec![format!(
            "{} positions expected, {} computed",
            e.len(),
            a.len()
        )];
    }
    for (pe, pa) in e.iter().zip(a) {
        let pos = &pe["pos"];
        let num = |v: &Json| v.as_f64().unwrap_or(f64::NAN);
        if pe["top5"][0][0] != pa["top5"][0][0] {
            d.push(format!(
                "position {pos}: top-1 {} expected, {} computed",
                pe["top5"][0][0], pa["top5"][0][0]
            ));
        }
        // Each expected top-5 logit, looked up among the computed top-5 by id.
        for pair in pe["top5"].as_array().into_iter().flatten() {
            let found = pa["top5"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|q| q[0] == pair[0]);
            match found {
                Some(q) if (num(&q[1]) - num(&pair[1])).abs() <= tol => {}
                Some(q) => d.push(format!(
                    "position {pos}: logit of {} is {} (expected {} ± {tol})",
                    pair[0], q[1], pair[1]
                )),
                None => d.push(format!("position {pos}: {} left the top 5", pair[0])),
            }
        }
        for (k, scale) in [("sum", 100.0), ("l2", 10.0)] {
            if (num(&pe[k]) - num(&pa[k])).abs() > tol * scale {
                d.push(format!(
                    "position {pos}: {k} {} (expected {} ± {})",
                    pa[k],
                    pe[k],
                    tol * scale
                ));
            }
        }
    }
    d
}

/// Paths where two JSON values differ (at most 20).
fn json_diff(path: &str, e: &Json, a: &Json) -> Vec<String> {
    let mut out = Vec::new();
    match (e, a) {
        (Json::Object(x), Json::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (ve, va) = (
                    x.get(k).unwrap_or(&Json::Null),
                    y.get(k).unwrap_or(&Json::Null),
                );
                if ve != va {
                    out.extend(json_diff(&format!("{path}/{k}"), ve, va));
                }
            }
        }
        (Json::Array(x), Json::Array(y)) if x.len() == y.len() => {
            for (i, (ve, va)) in x.iter().zip(y).enumerate() {
                if ve != va {
                    out.extend(json_diff(&format!("{path}/{i}"), ve, va));
                }
            }
        }
        _ => out.push(format!(
            "{}: expected {e}, got {a}",
            if path.is_empty() { "/" } else { path }
        )),
    }
    out.truncate(20);
    out
}

/// Recomputes and rewrites a snapshot's expected result; returns whether it changed.
pub fn update(path: &Path, ctx: &Context) -> Result<bool, String> {
    let mut s = Snapshot::load(path)?;
    let actual = compute(&s, ctx)?;
    let changed = s.expected != actual;
    s.expected = actual;
    let text = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())? + "\n";
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(changed)
}
