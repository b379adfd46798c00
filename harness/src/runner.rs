//! Runs one gate: builds its model, hands its typed inputs to its kind's module
//! (`crate::kinds`), then its thresholds decide. The only module that knows every kind.

use crate::gates::Measured;
use crate::gates::{build_model, check_thresholds, Context, Gate, Job, Outcome, RunError, Spec};
use crate::kinds;
use serde_json::Value as Json;
use std::time::Instant;

/// What the gate's kind measured, or why it could not.
pub fn measure(g: &Gate, ctx: &Context) -> Result<Measured, RunError> {
    let model = match &g.model {
        None => None,
        Some(spec) => Some((spec, build_model(spec, ctx)?)),
    };
    let job = Job {
        id: &g.id,
        kind: g.kind(),
        model,
        ctx,
    };
    match &g.spec {
        Spec::Crossval(i) => kinds::crossval::run(&job, i),
        Spec::Kernel(i) => kinds::kernel::run(&job, i),
        Spec::Tokenizer(i) => kinds::tokenizer::run(&job, i),
        Spec::Receipt(i) => kinds::receipt::run(&job, i),
        Spec::BadInput(i) => kinds::bad_input::run(&job, i),
        Spec::Golden(i) => kinds::golden::run(&job, i),
        Spec::Perf(i) => kinds::perf::run(&job, i),
        Spec::Probe(i) => kinds::probe::run(&job, i),
        Spec::Lint(i) => kinds::lint::run(&job, i),
    }
}

/// Runs one gate: the kind's module produces measurements, then thresholds decide.
pub fn run_gate(g: &Gate, ctx: &Context) -> Outcome {
    let t0 = Instant::now();
    let (passed, message, measurements) = match measure(g, ctx) {
        Err(e) => (false, format!("error: {e}"), Json::Null),
        Ok(Measured {
            summary,
            measurements,
        }) => {
            let misses = check_thresholds(&g.thresholds, &measurements);
            if misses.is_empty() {
                (true, summary, measurements)
            } else {
                let misses: Vec<String> = misses.iter().map(ToString::to_string).collect();
                (
                    false,
                    format!("{} ({summary})", misses.join("; ")),
                    measurements,
                )
            }
        }
    };
    Outcome {
        id: g.id.clone(),
        kind: g.kind(),
        required: g.required,
        passed,
        seconds: t0.elapsed().as_secs_f64(),
        message,
        measurements,
    }
}
