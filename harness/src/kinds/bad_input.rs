//! The `bad-input` gate kind: damaged copies of the gate's model file (truncations, bit flips
//! in the header region, extreme values written over header fields, at seeded random places)
//! must each load (and run a token) or fail with a typed error, never panic; what loads is
//! also judged by its logits. Measurements: `variants`, `panics`, `errors`, `loaded`, and of
//! the loaded ones `finite` (every logit of the token a finite number) and `nonfinite`.

use crate::gates::spec::BadInputInputs;
use crate::gates::{Job, Measured, RunError};
use bitnet::gguf::Gguf;
use bitnet::model::Model;
use bitnet::sample::Rng;
use bitnet::tokenizer::Tokenizer;
use serde_json::json;
use std::sync::Arc;

/// Damaged copies of a real model file (truncations, byte flips, field overwrites at seeded
/// random places) must each load or fail with a typed error — never panic.
pub fn run(job: &Job, inputs: &BadInputInputs) -> Result<Measured, RunError> {
    let path = job.model_path()?;
    let bytes = std::fs::read(path).map_err(RunError::io(path))?;
    let variants = inputs.variants;
    let mut rng = Rng::new(inputs.seed);
    let header = (bytes.len() / 8).max(64).min(bytes.len());
    let (mut panics, mut errors, mut loaded, mut finite) = (0usize, 0usize, 0usize, 0usize);
    let mut first_panic = None;
    for i in 0..variants {
        let mut b = bytes.clone();
        match i % 3 {
            0 => b.truncate(rng.below(b.len() as u64) as usize),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(header as u64) as usize;
                    b[at] ^= 1 << rng.below(8);
                }
            }
            _ => {
                // Overwrite an 8-byte field in the header region with an extreme value.
                let at = rng.below((header - 8) as u64) as usize;
                let v = [u64::MAX, 1 << 40, 0, u32::MAX as u64][rng.below(4) as usize];
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        let outcome = std::panic::catch_unwind(move || -> Result<bool, bitnet::Error> {
            let g = Arc::new(Gguf::from_bytes(b)?);
            Tokenizer::from_gguf(&g)?;
            let m = Model::from_gguf(g)?;
            // A model that still loads must also run a token without panicking.
            let mut st = m.new_state();
            let logits = bitnet::session::Session::new(&m).forward(&mut st, &[1], false)?;
            Ok(logits.iter().all(|x| x.is_finite()))
        });
        match outcome {
            Err(_) => {
                panics += 1;
                first_panic.get_or_insert(i);
            }
            Ok(Err(_)) => errors += 1,
            Ok(Ok(ok)) => {
                loaded += 1;
                if ok {
                    finite += 1;
                }
            }
        }
    }
    let summary = match first_panic {
        None => format!(
            "{variants} damaged files: {errors} typed errors, {loaded} still loadable ({finite} with finite logits), no panic"
        ),
        Some(i) => format!("{panics} of {variants} damaged files panicked (first: variant {i})"),
    };
    Ok(Measured::new(
        summary,
        json!({
            "variants": variants,
            "panics": panics,
            "errors": errors,
            "loaded": loaded,
            "finite": finite,
            "nonfinite": loaded - finite,
        }),
    ))
}
