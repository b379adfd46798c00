//! The `crossval` gate kind: the engine against the judged reference (and those reported
//! beside it) on the gate's model; the report goes to `<work>/reports/<id>.json` and its
//! measurements (`crate::crossval::Report::measurements`) are judged.

use crate::crossval::{self, Options, Plan, DEFAULT_PROMPTS};
use crate::gates::spec::{CrossvalInputs, DEFAULT_CROSSVAL_TOKENS};
use crate::gates::{Job, Measured, RunError};

/// The run options the inputs give (defaults filled in).
pub fn options(inputs: &CrossvalInputs) -> Options {
    Options {
        mode: inputs.mode,
        tokens: inputs.tokens.unwrap_or(DEFAULT_CROSSVAL_TOKENS),
        prompts: match &inputs.prompts {
            Some(p) => p.clone(),
            None => DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect(),
        },
        near_tie: inputs.near_tie,
    }
}

/// The judged reference, then the ones reported beside it.
pub fn references(inputs: &CrossvalInputs) -> Vec<crossval::RefName> {
    std::iter::once(inputs.reference)
        .chain(inputs.also.iter().copied())
        .collect()
}

pub fn run(job: &Job, inputs: &CrossvalInputs) -> Result<Measured, RunError> {
    let fixture = job.model_spec()?.fixture_dir(job.ctx);
    let report = crossval::evaluate(Plan {
        model: job.model_path()?,
        fixture: fixture.as_deref(),
        head: inputs.head,
        references: references(inputs),
        threads: job.ctx.threads,
        options: options(inputs),
        fixture_text: true,
    })?;
    let path = job.work_dir("reports")?.join(format!("{}.json", job.id));
    let json = serde_json::to_string_pretty(&report).map_err(RunError::kind)?;
    std::fs::write(&path, json).map_err(RunError::io(&path))?;
    Ok(Measured::new(report.one_line(), report.measurements()))
}
