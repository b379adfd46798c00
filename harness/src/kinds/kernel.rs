//! The `kernel` gate kind: our I2_S GEMV/GEMM against the reference's ggml mul_mat on random
//! shapes (1 and 2 threads, 1 to 16 tokens, inputs of three magnitudes); every output bit must
//! match. Measurements: `shapes`, `mismatched_shapes`, `elements`, `max_abs_diff`.

use crate::gates::spec::KernelInputs;
use crate::gates::{Job, Measured, RunError};
use crate::i2s::engine_matmul;
use bitnet::quant::i2s;
use bitnet::sample::Rng;
use serde_json::json;

/// Our I2_S matmul vs the reference's on random shapes: every output bit must match.
pub fn run(_job: &Job, inputs: &KernelInputs) -> Result<Measured, RunError> {
    let shapes = inputs.shapes;
    let mut rng = Rng::new(inputs.seed);
    let (mut mismatched_shapes, mut max_d, mut elements) = (0usize, 0f64, 0usize);
    let mut first_failure = None;
    for i in 0..shapes {
        let rows = 1 + rng.below(96) as usize;
        let cols = 128 * (1 + rng.below(6) as usize);
        let n = if i % 2 == 0 {
            1
        } else {
            2 + rng.below(15) as usize
        };
        let threads = 1 + (i % 2);
        let values: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
        let scale = 0.01 + rng.next_f64() as f32;
        let magnitude = [1e-3, 1.0, 50.0][i % 3];
        let x: Vec<f32> = (0..n * cols)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * magnitude) as f32)
            .collect();
        let bytes = i2s::pack(&values, rows, cols, scale).map_err(RunError::kind)?;
        let theirs = bitnet_crossval::i2s_matmul(&bytes, rows, cols, &x, n, threads)
            .map_err(RunError::kind)?;
        let ours = engine_matmul(bytes, rows, cols, &x, n, threads)?;
        elements += ours.len();
        let bad = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        for (a, b) in ours.iter().zip(&theirs) {
            max_d = max_d.max((*a as f64 - *b as f64).abs());
        }
        if bad > 0 {
            mismatched_shapes += 1;
            first_failure.get_or_insert(format!(
                "{rows}x{cols} n={n} threads={threads}: {bad} elements differ"
            ));
        }
    }
    let summary = match &first_failure {
        None => format!("{shapes} random shapes, {elements} outputs, all bit-exact"),
        Some(f) => format!("{mismatched_shapes}/{shapes} shapes differ; first: {f}"),
    };
    Ok(Measured::new(
        summary,
        json!({"shapes": shapes, "mismatched_shapes": mismatched_shapes, "elements": elements, "max_abs_diff": max_d}),
    ))
}
