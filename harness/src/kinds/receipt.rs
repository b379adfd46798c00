//! The `receipt` gate kind: a seeded run of the gate's model writes its receipt
//! (`<work>/receipts/<id>.json`), which must pass schema, audit, digest and replay.
//! Measurements: `ok`, `findings`, `kernels`, `exit_code`.

use crate::audit;
use crate::gates::spec::ReceiptInputs;
use crate::gates::{Job, Measured, RunError};
use bitnet::generate::{generate, GenerateOptions};
use bitnet::model::Model;
use bitnet::sample::SamplerParams;
use bitnet::tokenizer::Tokenizer;
use serde_json::json;

/// Runs the model, writes its receipt, and verifies it (schema, audit, digest, replay).
pub fn run(job: &Job, inputs: &ReceiptInputs) -> Result<Measured, RunError> {
    let path = job.model_path()?;
    let t0 = std::time::Instant::now();
    let model = Model::load(path).map_err(RunError::kind)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut session = bitnet::session::Session::new(&model).with_threads(job.ctx.threads);
    let tok = Tokenizer::from_gguf(&model.file).map_err(RunError::kind)?;
    let prompt = &inputs.prompt;
    let opts = GenerateOptions {
        max_tokens: inputs.tokens,
        sampler: SamplerParams {
            temperature: inputs.temperature,
            seed: inputs.seed,
            ..Default::default()
        },
        stop: vec![],
        ignore_eos: false,
    };
    let gen = generate(
        &mut session,
        &tok,
        &tok.encode(prompt, true, false),
        &opts,
        &mut |_| true,
    )
    .map_err(RunError::kind)?;
    let r = bitnet::receipt::for_generation(&session, path, &opts, prompt, &gen, load_ms)
        .map_err(RunError::kind)?;
    let file = job.work_dir("receipts")?.join(format!("{}.json", job.id));
    r.write(&file)
        .map_err(|e| RunError::kind(format!("{}: {e}", file.display())))?;
    let v = audit::verify_file(
        &file,
        &audit::VerifyOptions {
            public_key: None,
            replay: true,
        },
    );
    let summary = if v.ok {
        format!(
            "{} kernels, {} tokens; schema, audit, digest and replay ok",
            r.kernels.len(),
            r.run.generated_tokens
        )
    } else {
        v.findings
            .iter()
            .map(|f| format!("{}: {}", f.rule, f.message))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Ok(Measured::new(
        summary,
        json!({"ok": v.ok, "findings": v.findings.len(), "kernels": r.kernels.len(), "exit_code": v.exit_code()}),
    ))
}
