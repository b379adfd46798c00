//! Gates declared as data (`ci/gates.toml`): each has an id, a kind, inputs, thresholds and
//! `required`. A gate run produces measurements (a JSON object); thresholds are checked
//! against them generically: `name = { min = .., max = .., abs_max = .. }` or an exact value
//! (`greedy_ok = true`); a measurement that is itself an object takes a table of thresholds
//! (`"bitnet.cpp-2026" = { cosine_min = { min = 0.999 } }`). A threshold naming a measurement that does not exist fails the gate.

use crate::models::ModelSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Engine vs reference logits and greedy tokens on a model.
    Crossval,
    /// Our I2_S GEMV/GEMM vs the reference's ggml mul_mat on random matrices.
    Kernel,
    /// Our tokenizer vs the reference's on a text corpus.
    Tokenizer,
    /// A real run's receipt passes schema, audit, digest and replay.
    Receipt,
    /// Damaged model files give typed errors, never panics.
    BadInput,
    /// Outputs equal a reviewed snapshot in golden/.
    Golden,
    /// Speed as ratios measured in one run: ours/reference t/s, AVX2/scalar kernels; peak RSS
    /// within its bound.
    Perf,
    /// A probe scenario (ci/probes/*.toml) against a launched `bitnet serve`: kubelet
    /// simulator, load, faults; the verdict is the measurements.
    Probe,
    /// `bitnet-validate lint` on a model: error and warning counts, and which rules fired.
    Lint,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub id: String,
    pub kind: Kind,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default)]
    pub model: Option<ModelSpec>,
    #[serde(default)]
    pub inputs: toml::Table,
    #[serde(default)]
    pub thresholds: toml::Table,
    /// A timed ratio that only means something in an optimised build: the gates test
    /// (`cargo test`, a debug build) lists it as ignored; `bitnet-validate gates` runs it.
    #[serde(default)]
    pub release_only: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatesFile {
    #[serde(rename = "gate")]
    pub gates: Vec<Gate>,
}

impl GatesFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: GatesFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut seen = std::collections::HashSet::new();
        for g in &f.gates {
            if !seen.insert(&g.id) {
                return Err(format!("{}: duplicate gate id {:?}", path.display(), g.id));
            }
        }
        Ok(f)
    }
}

/// Where gates find shared data and put what they build.
#[derive(Clone, Debug)]
pub struct Context {
    pub shared: PathBuf,
    /// Directory for converted/synthesised models and reports.
    pub work: PathBuf,
    /// Directory holding `ci/` data files (the gates file's directory).
    pub data: PathBuf,
    /// The repository root (golden snapshots are named relative to it).
    pub root: PathBuf,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub id: String,
    pub kind: Kind,
    pub required: bool,
    pub passed: bool,
    pub seconds: f64,
    /// Why it failed (threshold misses or the error), or a one-line summary when it passed.
    pub message: String,
    pub measurements: Json,
}

/// Checks every threshold against the measurements; returns the misses.
pub fn check_thresholds(thresholds: &toml::Table, m: &Json) -> Vec<String> {
    let num = |v: &toml::Value| v.as_float().or(v.as_integer().map(|i| i as f64));
    let mut misses = Vec::new();
    for (name, want) in thresholds {
        let Some(got) = m.get(name) else {
            misses.push(format!("{name}: no such measurement"));
            continue;
        };
        match want {
            // A table of thresholds for a group of measurements (another reference's figures).
            toml::Value::Table(inner) if got.is_object() => {
                misses.extend(
                    check_thresholds(inner, got)
                        .into_iter()
                        .map(|miss| format!("{name}.{miss}")),
                );
            }
            toml::Value::Table(bounds) => {
                for (op, bound) in bounds {
                    let ok = match (op.as_str(), num(bound), got.as_f64()) {
                        ("min", Some(w), Some(g)) => g >= w,
                        ("max", Some(w), Some(g)) => g <= w,
                        ("abs_max", Some(w), Some(g)) => g.abs() <= w,
                        _ => false,
                    };
                    if !ok {
                        misses.push(format!("{name} = {got}, required {op} {bound}"));
                    }
                }
            }
            toml::Value::Boolean(b) if got.as_bool() == Some(*b) => {}
            toml::Value::String(s) if got.as_str() == Some(s.as_str()) => {}
            v if num(v).is_some() && got.as_f64() == num(v) => {}
            _ => misses.push(format!("{name} = {got}, required {want}")),
        }
    }
    misses
}

/// Runs one gate: the kind's runner produces measurements, then thresholds decide.
pub fn run_gate(g: &Gate, ctx: &Context) -> Outcome {
    let t0 = Instant::now();
    let result = match g.kind {
        Kind::Crossval => crate::runners::crossval(g, ctx),
        Kind::Kernel => crate::runners::kernel(g, ctx),
        Kind::Tokenizer => crate::runners::tokenizer(g, ctx),
        Kind::Receipt => crate::runners::receipt(g, ctx),
        Kind::BadInput => crate::runners::bad_input(g, ctx),
        Kind::Golden => crate::golden::check(g, ctx),
        Kind::Perf => crate::perf::gate(g, ctx),
        Kind::Probe => crate::probe::gate(g, ctx),
        Kind::Lint => crate::runners::lint(g, ctx),
    };
    let (passed, message, measurements) = match result {
        Err(e) => (false, format!("error: {e}"), Json::Null),
        Ok((summary, m)) => {
            let misses = check_thresholds(&g.thresholds, &m);
            if misses.is_empty() {
                (true, summary, m)
            } else {
                (false, format!("{} ({summary})", misses.join("; ")), m)
            }
        }
    };
    Outcome {
        id: g.id.clone(),
        kind: g.kind,
        required: g.required,
        passed,
        seconds: t0.elapsed().as_secs_f64(),
        message,
        measurements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_pass_and_fail() {
        let m = serde_json::json!({"cosine_min": 0.9995, "max_abs_diff": 0.3, "nll_delta": -0.02, "greedy_ok": true});
        let t: toml::Table = toml::from_str(
            "cosine_min = { min = 0.999 }\nmax_abs_diff = { max = 0.5 }\ngreedy_ok = true",
        )
        .unwrap();
        assert!(check_thresholds(&t, &m).is_empty());
        let t: toml::Table = toml::from_str(
            "nll_delta = { abs_max = 0.01 }\nmax_abs_diff = { max = 0.2 }\ngreedy_ok = false",
        )
        .unwrap();
        assert_eq!(check_thresholds(&t, &m).len(), 3);
        let t: toml::Table = toml::from_str("nonexistent_max = 1.0").unwrap();
        assert_eq!(
            check_thresholds(&t, &m).len(),
            1,
            "a threshold on a missing measurement fails"
        );
    }

    #[test]
    fn grouped_thresholds_check_the_group() {
        let m = serde_json::json!({"cosine_min": 0.9995, "bitnet.cpp-2026": {"cosine_min": 0.99, "greedy_ok": true}});
        let t: toml::Table = toml::from_str(
            "\"bitnet.cpp-2026\" = { cosine_min = { min = 0.999 }, greedy_ok = true }",
        )
        .unwrap();
        let misses = check_thresholds(&t, &m);
        assert_eq!(misses.len(), 1, "{misses:?}");
        assert!(
            misses[0].starts_with("bitnet.cpp-2026.cosine_min"),
            "{misses:?}"
        );
        let t: toml::Table =
            toml::from_str("transformers = { cosine_min = { min = 0.9 } }").unwrap();
        assert_eq!(check_thresholds(&t, &m).len(), 1, "a missing group fails");
    }
}
