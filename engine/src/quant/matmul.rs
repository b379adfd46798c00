//! Weight matrices and the matrix product `out[t][r] = W[r] . x[t]` for any supported format.
//!
//! Every call is counted in [`KernelStats`] by the dispatch itself (kernel id, calls, weight
//! elements processed, time), so a receipt can list what actually ran.
//! Each output element is computed by exactly one thread with a fixed operation order, so
//! results are identical for any thread count.

use super::{float, i2s, quantize_row, tq, FormatError, Kind, QuantRow, TensorType};
use crate::gguf::{Gguf, TensorInfo};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A weight matrix viewed in place in its (memory-mapped) file.
#[derive(Clone)]
pub struct Weight {
    file: Arc<Gguf>,
    pub name: String,
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    start: usize,
    len: usize,
    /// I2_S per-tensor scale (1.0 for other types).
    i2s_scale: f32,
    /// A separate scalar the product is multiplied by afterwards (the reference's optional
    /// `<name>.scale` tensors), applied as its own f32 multiply like the reference's ggml_mul.
    pub post_scale: Option<f32>,
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Weight({} {} {}x{})",
            self.name, self.ty, self.rows, self.cols
        )
    }
}

impl Weight {
    /// Views tensor `t` of `file` as a `rows x cols` matrix, checking that its type can compute
    /// and that its byte size matches.
    pub fn new(file: &Arc<Gguf>, t: &TensorInfo) -> Result<Self, FormatError> {
        if t.ty.traits().kind == Kind::Unsupported {
            return Err(FormatError::Unsupported(t.ty.name()));
        }
        let (rows, cols) = t.rows_cols();
        super::check_size(t.ty, rows, cols, t.size as usize)?;
        let bytes = file.tensor_data(t);
        let i2s_scale = if t.ty == TensorType::I2S {
            i2s::scale(bytes, bytes.len())
        } else {
            1.0
        };
        Ok(Weight {
            file: file.clone(),
            name: t.name.clone(),
            ty: t.ty,
            rows,
            cols,
            start: t.file_offset as usize,
            len: t.size as usize,
            i2s_scale,
            post_scale: None,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.start..self.start + self.len]
    }

    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.cols);
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Row `r` dequantized to f32 (embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        super::dequantize_row(self.ty, self.bytes(), r, self.cols, out)
            .expect("type and size were validated in Weight::new");
    }

    /// Computes `out[t * rows + r] = W[r] . x[t * cols..]` for `n` token rows.
    pub fn matmul(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        threads: usize,
        stats: &KernelStats,
    ) {
        assert_eq!(x.len(), n * self.cols, "{}: activation length", self.name);
        assert_eq!(out.len(), n * self.rows, "{}: output length", self.name);
        let t0 = Instant::now();
        let kind = self.ty.traits().kind;
        let acts: Vec<QuantRow> = if kind == Kind::Ternary {
            x.chunks_exact(self.cols)
                .map(|row| {
                    let mut q = QuantRow::default();
                    quantize_row(row, &mut q);
                    q
                })
                .collect()
        } else {
            Vec::new()
        };
        let threads = threads.clamp(1, self.rows.max(1));
        // Small products are not worth a thread spawn.
        let threads = if self.rows * self.cols * n < (1 << 16) {
            1
        } else {
            threads
        };
        if threads == 1 {
            let mut local = vec![0f32; n * self.rows];
            self.rows_into(0..self.rows, x, n, &acts, &mut local);
            transpose_into(&local, n, self.rows, 0, self.rows, out);
        } else {
            let chunk = self.rows.div_ceil(threads);
            let parts: Vec<(usize, usize, Vec<f32>)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|i| {
                        let (r0, r1) = (i * chunk, ((i + 1) * chunk).min(self.rows));
                        let acts = &acts;
                        s.spawn(move || {
                            let mut local = vec![0f32; n * (r1 - r0)];
                            self.rows_into(r0..r1, x, n, acts, &mut local);
                            (r0, r1, local)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("matmul worker panicked"))
                    .collect()
            });
            for (r0, r1, local) in parts {
                transpose_into(&local, n, r1 - r0, r0, self.rows, out);
            }
        }
        stats.record(
            self.kernel_id(n),
            1,
            (self.rows * self.cols * n) as u64,
            t0.elapsed(),
        );
    }

    /// Fills `local[(r - r0) * n + t]` for rows in `range` (row-major per weight row).
    fn rows_into(
        &self,
        range: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        acts: &[QuantRow],
        local: &mut [f32],
    ) {
        let r0 = range.start;
        let mut scratch = vec![0f32; self.cols];
        for r in range {
            let row = self.row_bytes(r);
            for t in 0..n {
                local[(r - r0) * n + t] = match self.ty {
                    TensorType::I2S => {
                        i2s::finish(i2s::dot_codes(row, &acts[t].q), &acts[t], self.i2s_scale)
                    }
                    TensorType::TQ2_0 => tq::dot_tq2(row, &acts[t]),
                    TensorType::TQ1_0 => tq::dot_tq1(row, &acts[t]),
                    ty => float::dot(
                        ty,
                        row,
                        &x[t * self.cols..(t + 1) * self.cols],
                        &mut scratch,
                    ),
                };
            }
        }
    }

    /// The id under which this product is counted: format, gemv (one token) or gemm, and the
    /// implementation that ran.
    pub fn kernel_id(&self, n: usize) -> &'static str {
        let gemv = n == 1;
        match (self.ty, gemv) {
            (TensorType::I2S, true) => "i2s_gemv_scalar",
            (TensorType::I2S, false) => "i2s_gemm_scalar",
            (TensorType::TQ2_0, true) => "tq2_0_gemv_scalar",
            (TensorType::TQ2_0, false) => "tq2_0_gemm_scalar",
            (TensorType::TQ1_0, true) => "tq1_0_gemv_scalar",
            (TensorType::TQ1_0, false) => "tq1_0_gemm_scalar",
            (TensorType::F32, true) => "f32_gemv",
            (TensorType::F32, false) => "f32_gemm",
            (TensorType::F16, true) => "f16_gemv",
            (TensorType::F16, false) => "f16_gemm",
            (TensorType::BF16, true) => "bf16_gemv",
            (TensorType::BF16, false) => "bf16_gemm",
            (TensorType::Q8_0, true) => "q8_0_gemv",
            (TensorType::Q8_0, false) => "q8_0_gemm",
            _ => "unsupported",
        }
    }
}

fn transpose_into(local: &[f32], n: usize, nrows: usize, r0: usize, rows: usize, out: &mut [f32]) {
    for i in 0..nrows {
        for t in 0..n {
            out[t * rows + r0 + i] = local[i * n + t];
        }
    }
}

/// Every kernel id the dispatch can record (receipts are audited against this list).
pub const KERNEL_IDS: &[&str] = &[
    "i2s_gemv_scalar",
    "i2s_gemm_scalar",
    "tq2_0_gemv_scalar",
    "tq2_0_gemm_scalar",
    "tq1_0_gemv_scalar",
    "tq1_0_gemm_scalar",
    "f32_gemv",
    "f32_gemm",
    "f16_gemv",
    "f16_gemm",
    "bf16_gemv",
    "bf16_gemm",
    "q8_0_gemv",
    "q8_0_gemm",
];

/// Counters for one kernel id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStat {
    pub calls: u64,
    /// Weight elements multiplied (rows * cols * tokens).
    pub elements: u64,
    pub nanos: u64,
}

/// Kernel counters filled by the dispatch code.
#[derive(Debug, Default)]
pub struct KernelStats {
    inner: Mutex<BTreeMap<&'static str, KernelStat>>,
}

impl KernelStats {
    pub fn record(&self, id: &'static str, calls: u64, elements: u64, time: std::time::Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let s = m.entry(id).or_default();
        s.calls += calls;
        s.elements += elements;
        s.nanos += time.as_nanos() as u64;
    }
    pub fn snapshot(&self) -> BTreeMap<&'static str, KernelStat> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn reset(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
