//! The `golden` gate kind: `inputs.file` names a snapshot (`crate::golden`) relative to the
//! repository root; it is recomputed and compared. Measurement: `mismatches`.

use crate::gates::spec::GoldenInputs;
use crate::gates::{Job, Measured, RunError};
use crate::golden::{compare, compute, Snapshot};
use serde_json::json;

pub fn run(job: &Job, inputs: &GoldenInputs) -> Result<Measured, RunError> {
    let ctx = job.ctx;
    let rel = inputs.file.display();
    let s = Snapshot::load(&ctx.root.join(&inputs.file))?;
    if s.expected.is_null() {
        return Err(RunError::Kind(format!(
            "{rel} has no expected result yet: run `bitnet-validate golden --update` and review it"
        )));
    }
    let diffs = compare(&s, &compute(&s, ctx)?);
    let summary = if diffs.is_empty() {
        format!("{rel} ({}) matches", s.kind)
    } else {
        format!(
            "{rel} differs: {}",
            diffs.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )
    };
    Ok(Measured::new(summary, json!({"mismatches": diffs.len()})))
}
