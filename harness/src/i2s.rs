//! The engine's I2_S product on a packed matrix, through the same weight type the model uses:
//! what the `kernel` gates compare and the `perf` kernel gates time.

use bitnet::gguf::Gguf;
use bitnet::quant::matmul::{KernelStats, Weight};
use bitnet::quant::TensorType;
use std::sync::Arc;

/// A packed I2_S tensor (`rows * cols / 4` code bytes, scale, padding) as the engine's weight,
/// viewed in place in a GGUF image as the model views its file.
pub fn i2s_weight(bytes: &[u8], rows: usize, cols: usize) -> Result<Weight, String> {
    let mut w = bitnet::gguf::GgufWriter::new();
    w.tensor("w", &[cols as u64, rows as u64], TensorType::I2S);
    let file = w
        .to_bytes(|_, out| out.write_all(bytes))
        .map_err(|e| e.to_string())?;
    let g = Arc::new(Gguf::from_bytes(file).map_err(|e| e.to_string())?);
    let t = g.tensor("w").ok_or("tensor w")?.clone();
    Weight::new(&g, &t).map_err(|e| e.to_string())
}

/// The engine's I2_S product through the same path the model uses.
pub fn engine_matmul(
    bytes: Vec<u8>,
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    threads: usize,
) -> Result<Vec<f32>, String> {
    let weight = i2s_weight(&bytes, rows, cols)?;
    let mut out = vec![0f32; n * rows];
    weight.matmul(x, n, &mut out, threads, &KernelStats::default());
    Ok(out)
}
