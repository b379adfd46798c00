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

    /// Computes `out[t * rows + r] = W[r] . x[t * cols..]` for `n` token rows with the best
    /// kernels this CPU has.
    pub fn matmul(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        threads: usize,
        stats: &KernelStats,
    ) {
        self.matmul_isa(Isa::detect(), x, n, out, threads, stats)
    }

    /// [`Weight::matmul`] with the instruction set chosen by the caller (benchmarks and the
    /// scalar-reference property tests); an ISA without a kernel for this type falls back to
    /// scalar, and the kernel id says which ran.
    pub fn matmul_isa(
        &self,
        isa: Isa,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        threads: usize,
        stats: &KernelStats,
    ) {
        let isa = Isa::effective(self.ty, isa);
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
        // Small products are not worth waking other threads for.
        let threads = if self.rows * self.cols * n < (1 << 15) {
            1
        } else {
            threads.max(1)
        };
        // Rows in chunks, taken dynamically; each output element is written by exactly one
        // task, so the result does not depend on which thread ran it.
        let chunk = self.rows.div_ceil(threads * 4).max(8);
        let tasks = self.rows.div_ceil(chunk);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let acts = &acts;
        crate::pool::get(threads).run(tasks, &|i| {
            let (r0, r1) = (i * chunk, ((i + 1) * chunk).min(self.rows));
            // SAFETY: tasks cover disjoint row ranges, and `out` outlives the run.
            unsafe { self.rows_into(isa, r0..r1, x, n, acts, out_ptr) };
        });
        if let Some(p) = self.post_scale {
            out.iter_mut().for_each(|v| *v *= p);
        }
        stats.record(
            self.kernel_id(n, isa),
            1,
            (self.rows * self.cols * n) as u64,
            t0.elapsed(),
        );
    }

    /// Writes `out[t * rows + r]` for the rows in `range` and every token `t`.
    ///
    /// # Safety
    /// `out` points to `n * rows` floats, and no other thread writes the rows in `range`.
    unsafe fn rows_into(
        &self,
        isa: Isa,
        range: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        acts: &[QuantRow],
        out: SendPtr,
    ) {
        // Only the scalar float formats need a dequantization buffer; allocate it on first use.
        let mut scratch = Vec::new();
        let mut range = range;
        // The output projection of several sequences (F16): two rows at a time against up to
        // four tokens, each weight converted once for all of them.
        #[cfg(target_arch = "x86_64")]
        if self.ty == TensorType::F16 && isa == Isa::Avx2 && n >= 2 {
            while range.len() >= 2 {
                let r = range.start;
                let rows = [self.row_bytes(r), self.row_bytes(r + 1)];
                let mut t = 0;
                while t < n {
                    let k = (n - t).min(4);
                    // SAFETY: as for the one-row AVX2 arm below; `out` as for this function.
                    unsafe {
                        match k {
                            4 => f16_pair::<4>(rows, x, self.cols, t, r, self.rows, out),
                            3 => f16_pair::<3>(rows, x, self.cols, t, r, self.rows, out),
                            2 => f16_pair::<2>(rows, x, self.cols, t, r, self.rows, out),
                            _ => f16_pair::<1>(rows, x, self.cols, t, r, self.rows, out),
                        }
                    }
                    t += k;
                }
                range.start += 2;
            }
        }
        // The output projection (F16, one row per vocabulary entry): four rows at a time.
        #[cfg(target_arch = "x86_64")]
        if self.ty == TensorType::F16 && isa == Isa::Avx2 {
            while range.len() >= 4 {
                let r = range.start;
                let rows = [
                    self.row_bytes(r),
                    self.row_bytes(r + 1),
                    self.row_bytes(r + 2),
                    self.row_bytes(r + 3),
                ];
                for t in 0..n {
                    // SAFETY: as for the one-row AVX2 arm below.
                    let d = unsafe {
                        float::avx2::dot_f16_x4(rows, &x[t * self.cols..(t + 1) * self.cols])
                    };
                    for (k, v) in d.into_iter().enumerate() {
                        *out.0.add(t * self.rows + r + k) = v;
                    }
                }
                range.start += 4;
            }
        }
        for r in range {
            let row = self.row_bytes(r);
            let mut first = 0;
            // Several tokens (a prompt, or the decode steps of several sequences): up to four
            // per pass over the row's codes.
            #[cfg(target_arch = "x86_64")]
            if self.ty == TensorType::I2S && isa == Isa::Avx2 && n >= 2 {
                while first < n {
                    let k = (n - first).min(4);
                    let a = &acts[first..first + k];
                    // SAFETY: as for the one-token AVX2 arm below.
                    let d: [i32; 4] = unsafe {
                        match k {
                            4 => i2s::avx2::dot_codes_xt(row, [&a[0].q, &a[1].q, &a[2].q, &a[3].q]),
                            3 => {
                                let d = i2s::avx2::dot_codes_xt(row, [&a[0].q, &a[1].q, &a[2].q]);
                                [d[0], d[1], d[2], 0]
                            }
                            2 => {
                                let d = i2s::avx2::dot_codes_xt(row, [&a[0].q, &a[1].q]);
                                [d[0], d[1], 0, 0]
                            }
                            _ => [i2s::avx2::dot_codes(row, &a[0].q), 0, 0, 0],
                        }
                    };
                    for (j, a) in a.iter().enumerate() {
                        *out.0.add((first + j) * self.rows + r) =
                            i2s::finish(d[j], a, self.i2s_scale);
                    }
                    first += k;
                }
            }
            for t in first..n {
                let xt = &x[t * self.cols..(t + 1) * self.cols];
                let v = match (self.ty, isa) {
                    // SAFETY (avx2 arms): Isa::effective only yields Avx2 when the CPU has AVX2
                    // and F16C; row and activation lengths match the validated shape.
                    #[cfg(target_arch = "x86_64")]
                    (TensorType::I2S, Isa::Avx2) => {
                        let d = unsafe { i2s::avx2::dot_codes(row, &acts[t].q) };
                        i2s::finish(d, &acts[t], self.i2s_scale)
                    }
                    #[cfg(target_arch = "x86_64")]
                    (TensorType::F16, Isa::Avx2) => unsafe { float::avx2::dot_f16(row, xt) },
                    #[cfg(target_arch = "x86_64")]
                    (TensorType::F32, Isa::Avx2) => unsafe { float::avx2::dot_f32(row, xt) },
                    (TensorType::I2S, _) => {
                        i2s::finish(i2s::dot_codes(row, &acts[t].q), &acts[t], self.i2s_scale)
                    }
                    (TensorType::TQ2_0, _) => tq::dot_tq2(row, &acts[t]),
                    (TensorType::TQ1_0, _) => tq::dot_tq1(row, &acts[t]),
                    (ty, _) => {
                        scratch.resize(self.cols, 0.0);
                        float::dot(ty, row, xt, &mut scratch)
                    }
                };
                *out.0.add(t * self.rows + r) = v;
            }
        }
    }

    /// The id under which a product of `n` tokens on `isa` is counted: format, gemv (one
    /// token) or gemm, and the implementation that runs.
    pub fn kernel_id(&self, n: usize, isa: Isa) -> &'static str {
        let (gemv, isa) = (n == 1, Isa::effective(self.ty, isa));
        KERNELS
            .iter()
            .find(|k| k.0 == self.ty && k.1 == gemv && k.2 == isa)
            .map_or("unsupported", |k| k.3)
    }
}

/// Rows `r` and `r + 1` of the F16 product for tokens `t .. t + T`.
///
/// # Safety
/// AVX2 and F16C are available; `out` points to the `n * out_rows` outputs and no other
/// thread writes rows `r` and `r + 1`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn f16_pair<const T: usize>(
    rows: [&[u8]; 2],
    x: &[f32],
    cols: usize,
    t: usize,
    r: usize,
    out_rows: usize,
    out: SendPtr,
) {
    let xs: [&[f32]; T] = std::array::from_fn(|j| &x[(t + j) * cols..(t + j + 1) * cols]);
    // SAFETY: the caller's guarantees.
    let d = unsafe { float::avx2::dot_f16_2xt(rows, xs) };
    for (j, (&a, &b)) in d[0].iter().zip(&d[1]).enumerate() {
        unsafe {
            *out.0.add((t + j) * out_rows + r) = a;
            *out.0.add((t + j) * out_rows + r + 1) = b;
        }
    }
}

/// Instruction sets with kernels of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 with F16C.
    Avx2,
}

impl Isa {
    /// The best instruction set this CPU supports (detected once).
    pub fn detect() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
                return Isa::Avx2;
            }
            Isa::Scalar
        })
    }

    /// The implementation that computes `ty` when `isa` is asked for: `isa` if it has a kernel
    /// for the type and the CPU supports it, otherwise scalar.
    pub fn effective(ty: TensorType, isa: Isa) -> Isa {
        let has_kernel = matches!(ty, TensorType::I2S | TensorType::F16 | TensorType::F32);
        if isa == Isa::Avx2 && has_kernel && Isa::detect() == Isa::Avx2 {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }
}

/// Every kernel: (type, one token?, implementation, id). Receipts are audited against it.
pub static KERNELS: &[(TensorType, bool, Isa, &str)] = &[
    (TensorType::I2S, true, Isa::Scalar, "i2s_gemv_scalar"),
    (TensorType::I2S, false, Isa::Scalar, "i2s_gemm_scalar"),
    (TensorType::I2S, true, Isa::Avx2, "i2s_gemv_avx2"),
    (TensorType::I2S, false, Isa::Avx2, "i2s_gemm_avx2"),
    (TensorType::TQ2_0, true, Isa::Scalar, "tq2_0_gemv_scalar"),
    (TensorType::TQ2_0, false, Isa::Scalar, "tq2_0_gemm_scalar"),
    (TensorType::TQ1_0, true, Isa::Scalar, "tq1_0_gemv_scalar"),
    (TensorType::TQ1_0, false, Isa::Scalar, "tq1_0_gemm_scalar"),
    (TensorType::F32, true, Isa::Scalar, "f32_gemv_scalar"),
    (TensorType::F32, false, Isa::Scalar, "f32_gemm_scalar"),
    (TensorType::F32, true, Isa::Avx2, "f32_gemv_avx2"),
    (TensorType::F32, false, Isa::Avx2, "f32_gemm_avx2"),
    (TensorType::F16, true, Isa::Scalar, "f16_gemv_scalar"),
    (TensorType::F16, false, Isa::Scalar, "f16_gemm_scalar"),
    (TensorType::F16, true, Isa::Avx2, "f16_gemv_avx2"),
    (TensorType::F16, false, Isa::Avx2, "f16_gemm_avx2"),
    (TensorType::BF16, true, Isa::Scalar, "bf16_gemv_scalar"),
    (TensorType::BF16, false, Isa::Scalar, "bf16_gemm_scalar"),
    (TensorType::Q8_0, true, Isa::Scalar, "q8_0_gemv_scalar"),
    (TensorType::Q8_0, false, Isa::Scalar, "q8_0_gemm_scalar"),
];

/// Whether `id` names a kernel of this engine.
pub fn is_kernel_id(id: &str) -> bool {
    KERNELS.iter().any(|k| k.3 == id)
}

/// The output pointer, shared by the tasks of one product (each writes its own rows).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements; the pointee outlives the pool run.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

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
