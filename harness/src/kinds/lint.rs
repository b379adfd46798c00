//! The `lint` gate kind: `bitnet-validate lint` on the gate's model. Measurements: `errors`,
//! `warnings`, `findings`, and `rules`, an object with `true` for every rule that fired
//! (thresholds name the ones that must, or `errors = 0`).

use crate::gates::spec::LintInputs;
use crate::gates::{Job, Measured, RunError};
use serde_json::json;

/// `lint` on the gate's model: `errors`, `warnings`, and `rules`, an object with `true` for
/// every rule that fired (thresholds name the ones that must, or `errors = 0`).
pub fn run(job: &Job, _inputs: &LintInputs) -> Result<Measured, RunError> {
    let r = crate::lint::lint(job.model_path()?);
    let mut rules = serde_json::Map::new();
    for f in &r.findings {
        rules.insert(f.rule.clone(), json!(true));
    }
    let fired: Vec<&str> = rules.keys().map(String::as_str).collect();
    Ok(Measured::new(
        format!(
            "{} errors, {} warnings; rules: {}",
            r.errors,
            r.warnings,
            if fired.is_empty() {
                "none".to_string()
            } else {
                fired.join(", ")
            }
        ),
        json!({"errors": r.errors, "warnings": r.warnings, "findings": r.findings.len(), "rules": rules}),
    ))
}
