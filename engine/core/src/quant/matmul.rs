//! Weight matrices and the matrix product `out[t][r] = W[r] . x[t]` for any supported format.
//!
//! Every call is counted in [`KernelStats`] by the dispatch itself (kernel id, calls, weight
//! elements processed, time), so a receipt can list what actually ran.
//! Each output element is computed by exactly one thread with a fixed operation order, so
//! results are identical for any thread count.

use super::format::{Format, Product};
use super::{float, i2s, quantize_row, tl2, FormatError, Kind, QuantRow, TensorType};
use crate::gguf::{Gguf, TensorInfo};
use crate::pool::SendPtr;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The input of matrix products: `n` token rows of f32, and their int8 quantization for
/// ternary weights, made on first use and kept for every further product of the same input.
pub struct Input<'a> {
    pub x: &'a [f32],
    pub n: usize,
    quantized: std::cell::OnceCell<Vec<QuantRow>>,
    /// TL2 lookup tables of every row, and the K3 they were built for.
    tl2_luts: std::cell::OnceCell<(usize, Vec<u8>)>,
    /// Buffers to quantize into (taken by the first use).
    spare: std::cell::Cell<Option<InputBuffers>>,
}

/// The allocations of an [`Input`], kept between inputs.
#[derive(Default)]
pub struct InputBuffers {
    rows: Vec<QuantRow>,
    luts: Vec<u8>,
}

impl<'a> Input<'a> {
    pub fn new(x: &'a [f32], n: usize) -> Self {
        Self::reusing(x, n, InputBuffers::default())
    }

    /// An input that quantizes into buffers kept from an earlier one ([`Input::into_buffers`]),
    /// so a decode step allocates nothing once they have grown to size.
    pub fn reusing(x: &'a [f32], n: usize, buffers: InputBuffers) -> Self {
        Input {
            x,
            n,
            quantized: std::cell::OnceCell::new(),
            tl2_luts: std::cell::OnceCell::new(),
            spare: std::cell::Cell::new(Some(buffers)),
        }
    }

    /// The buffers back, for the next input.
    pub fn into_buffers(self) -> InputBuffers {
        let mut b = self.spare.take().unwrap_or_default();
        if let Some(rows) = self.quantized.into_inner() {
            b.rows = rows;
        }
        if let Some((_, luts)) = self.tl2_luts.into_inner() {
            b.luts = luts;
        }
        b
    }

    /// The TL2 lookup tables of every row for a layout: made once and shared by the weights
    /// with the same K3 (q, k and v; gate and up), built afresh for any other.
    fn tl2_luts(&self, l: &tl2::Layout) -> std::borrow::Cow<'_, [u8]> {
        let build = || {
            let acts = self.quantized(l.cols);
            let mut spare = self.spare.take().unwrap_or_default();
            let mut luts = std::mem::take(&mut spare.luts);
            self.spare.set(Some(spare));
            luts.clear();
            for a in acts {
                tl2::build_luts(&a.q, l.k3, &mut luts);
            }
            (l.k3, luts)
        };
        let (k3, luts) = self.tl2_luts.get_or_init(build);
        if *k3 == l.k3 {
            std::borrow::Cow::Borrowed(luts)
        } else {
            std::borrow::Cow::Owned(build().1)
        }
    }

    /// Each row quantized as the reference does it ([`quantize_row`]).
    fn quantized(&self, cols: usize) -> &[QuantRow] {
        self.quantized.get_or_init(|| {
            let mut spare = self.spare.take().unwrap_or_default();
            let mut rows = std::mem::take(&mut spare.rows);
            self.spare.set(Some(spare));
            rows.resize_with(self.n, QuantRow::default);
            for (row, q) in self.x.chunks_exact(cols).zip(&mut rows) {
                quantize_row(row, q);
            }
            rows
        })
    }
}

/// A weight matrix viewed in place in its (memory-mapped) file.
#[derive(Clone)]
pub struct Weight {
    file: Arc<Gguf>,
    pub name: String,
    pub ty: TensorType,
    /// The type's behaviour (its kernels).
    format: &'static Format,
    pub rows: usize,
    pub cols: usize,
    start: usize,
    len: usize,
    /// I2_S and TL2 per-tensor scale (1.0 for other types).
    w_scale: f32,
    /// TL2's layout (its tiling comes from the file's metadata).
    tl2: Option<tl2::Layout>,
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
        let format = t.ty.format().ok_or(FormatError::Unsupported(t.ty.name()))?;
        let (rows, cols) = t.rows_cols();
        super::check_size(t.ty, rows, cols, t.size as usize)?;
        let bytes = file.tensor_data(t);
        let (w_scale, tl2) = match t.ty {
            TensorType::I2S => (i2s::scale(bytes, bytes.len()), None),
            TensorType::TL2 => {
                let (scale, layout) = tl2_parts(file, t, rows, cols)?;
                (scale, Some(layout))
            }
            _ => (1.0, None),
        };
        Ok(Weight {
            file: file.clone(),
            name: t.name.clone(),
            ty: t.ty,
            format,
            rows,
            cols,
            start: t.file_offset as usize,
            len: t.size as usize,
            w_scale,
            tl2,
            post_scale: None,
        })
    }

    /// Whether every value the tensor stores is a finite number (formats that can store
    /// another; see [`Format::all_finite`](super::Format)).
    pub fn all_finite(&self) -> bool {
        self.format.all_finite.is_none_or(|f| f(self.bytes()))
    }

    /// The per-tensor weight scale (I2_S's trailer, TL2's scale tensor; 1.0 for formats
    /// without one).
    pub fn scale(&self) -> f32 {
        self.w_scale
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
        if let Some(l) = &self.tl2 {
            let mut v = vec![0i8; self.cols];
            tl2::decode_row(self.bytes(), l, r, &mut v);
            for (o, v) in out.iter_mut().zip(v) {
                *o = v as f32 * self.w_scale;
            }
            return;
        }
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
        self.matmul_input(isa, &Input::new(x, n), out, threads, stats)
    }

    /// [`Weight::matmul_isa`] on an [`Input`] that several weights share (the model's q, k and
    /// v products, gate and up): its int8 quantization is made once, by the first ternary
    /// weight that needs it.
    pub fn matmul_input(
        &self,
        isa: Isa,
        input: &Input,
        out: &mut [f32],
        threads: usize,
        stats: &KernelStats,
    ) {
        let (x, n) = (input.x, input.n);
        assert_eq!(x.len(), n * self.cols, "{}: activation length", self.name);
        assert_eq!(out.len(), n * self.rows, "{}: output length", self.name);
        let t0 = Instant::now();
        let acts: &[QuantRow] = if self.format.kind == Kind::Ternary {
            input.quantized(self.cols)
        } else {
            &[]
        };
        // Small products are not worth waking other threads for.
        let threads = if self.rows * self.cols * n < (1 << 15) {
            1
        } else {
            threads.max(1)
        };
        // Rows in chunks, taken dynamically; each output element is written by exactly one
        // task, so the result does not depend on which thread ran it.
        let mut chunk = self.rows.div_ceil(threads * 4).max(8);
        // TL2 is computed in whole M-tiles (their weights lie together), on its tables.
        let luts = match &self.tl2 {
            Some(l) => {
                chunk = chunk.next_multiple_of(l.tiling.bm);
                input.tl2_luts(l)
            }
            None => std::borrow::Cow::Borrowed(&[][..]),
        };
        let tasks = self.rows.div_ceil(chunk);
        let out_ptr = SendPtr(out.as_mut_ptr());
        crate::pool::get(threads).run(tasks, &|i| {
            let (r0, r1) = (i * chunk, ((i + 1) * chunk).min(self.rows));
            let tokens = tl2::Tokens { acts, luts: &luts };
            // SAFETY: tasks cover disjoint row ranges, and `out` outlives the run.
            unsafe { self.rows_into(isa, r0..r1, x, n, tokens, out_ptr) };
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

    /// Several products of the same input (q, k and v; gate and up) in one dispatch to the
    /// pool: every weight's rows are cut into chunks exactly as [`Weight::matmul_input`] cuts
    /// them and all the chunks are one job, so the threads meet once instead of once per
    /// weight. Each output element is computed by the same code as alone: identical bits.
    pub fn matmul_group(
        isa: Isa,
        input: &Input,
        outs: &mut [(&Weight, &mut [f32])],
        threads: usize,
        stats: &KernelStats,
    ) {
        // Parts live on the stack (a decode step allocates nothing): at most this many.
        const MAX_GROUP: usize = 4;
        if outs.len() == 1 || outs.len() > MAX_GROUP || outs.iter().any(|(w, _)| w.tl2.is_some()) {
            // One weight, or TL2 (whose tables are built per weight): one job each.
            for (w, out) in outs.iter_mut() {
                w.matmul_input(isa, input, out, threads, stats);
            }
            return;
        }
        let (x, n) = (input.x, input.n);
        let t0 = Instant::now();
        let total: usize = outs.iter().map(|(w, _)| w.rows * w.cols * n).sum();
        let threads = if total < (1 << 15) { 1 } else { threads.max(1) };
        struct Part<'a> {
            w: &'a Weight,
            isa: Isa,
            acts: &'a [QuantRow],
            chunk: usize,
            first_task: usize,
            out: SendPtr,
        }
        let mut parts: [Option<Part>; MAX_GROUP] = std::array::from_fn(|_| None);
        let mut tasks = 0;
        for ((w, out), slot) in outs.iter_mut().zip(parts.iter_mut()) {
            assert_eq!(x.len(), n * w.cols, "{}: activation length", w.name);
            assert_eq!(out.len(), n * w.rows, "{}: output length", w.name);
            let acts: &[QuantRow] = if w.format.kind == Kind::Ternary {
                input.quantized(w.cols)
            } else {
                &[]
            };
            let chunk = w.rows.div_ceil(threads * 4).max(8);
            *slot = Some(Part {
                w,
                isa,
                acts,
                chunk,
                first_task: tasks,
                out: SendPtr(out.as_mut_ptr()),
            });
            tasks += w.rows.div_ceil(chunk);
        }
        crate::pool::get(threads).run(tasks, &|i| {
            let p = parts
                .iter()
                .rev()
                .flatten()
                .find(|p| p.first_task <= i)
                .expect("task 0 belongs to the first part");
            let j = i - p.first_task;
            let (r0, r1) = (j * p.chunk, ((j + 1) * p.chunk).min(p.w.rows));
            let tokens = tl2::Tokens {
                acts: p.acts,
                luts: &[],
            };
            // SAFETY: tasks cover disjoint row ranges of each output, and the outputs outlive
            // the run.
            unsafe { p.w.rows_into(p.isa, r0..r1, x, n, tokens, p.out) };
        });
        let elapsed = t0.elapsed();
        for (w, out) in outs.iter_mut() {
            if let Some(s) = w.post_scale {
                out.iter_mut().for_each(|v| *v *= s);
            }
            // The job's time, shared out by each weight's part of the work.
            let elements = w.rows * w.cols * n;
            let share = elapsed.mul_f64(elements as f64 / total.max(1) as f64);
            stats.record(w.kernel_id(n, isa), 1, elements as u64, share);
        }
    }

    /// Writes `out[t * rows + r]` for the rows in `range` and every token `t`, with the
    /// format's kernel for `isa` (the widest the format has and the CPU runs, not above it).
    ///
    /// # Safety
    /// `out` points to `n * rows` floats, and no other thread writes the rows in `range`
    /// (for TL2: whole subtiles, and `tokens.luts` made for `tokens.acts` and its layout).
    unsafe fn rows_into(
        &self,
        isa: Isa,
        range: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        tokens: tl2::Tokens,
        out: SendPtr,
    ) {
        let p = Product {
            w: self.bytes(),
            row_bytes: self.ty.row_bytes(self.cols),
            rows: self.rows,
            cols: self.cols,
            x,
            n,
            acts: tokens.acts,
            luts: tokens.luts,
            w_scale: self.w_scale,
            tl2: self.tl2.as_ref(),
        };
        // SAFETY: the kernel's instruction set is one the CPU runs (`Format::kernel`); the
        // tensor's size was checked in `Weight::new`; `out` as for this function.
        unsafe { (self.format.kernel(isa).rows)(&p, range, out.0) }
    }

    /// The id under which a product of `n` tokens on `isa` is counted: format, gemv (one
    /// token) or gemm, and the implementation that runs.
    pub fn kernel_id(&self, n: usize, isa: Isa) -> &'static str {
        let k = self.format.kernel(isa);
        if n == 1 {
            k.gemv
        } else {
            k.gemm
        }
    }
}

/// A TL2 tensor's scale (the one-element F32 tensor `<name>_scale`) and layout (its tiling
/// from the file's [`tl2::TILES_KEY`]).
fn tl2_parts(
    file: &Gguf,
    t: &TensorInfo,
    rows: usize,
    cols: usize,
) -> Result<(f32, tl2::Layout), FormatError> {
    let scale_name = format!("{}_scale", t.name);
    let scale = match file.tensor(&scale_name) {
        Some(s) if s.ty == TensorType::F32 && s.size == 4 => {
            let b = file.tensor_data(s);
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        _ => return Err(FormatError::MissingScale(scale_name)),
    };
    let no_tiling = FormatError::NoTiling {
        rows,
        cols,
        key: tl2::TILES_KEY,
    };
    let tiles: Vec<usize> = match file.get_array(tl2::TILES_KEY) {
        Ok(Some(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as usize)
            .collect(),
        _ => return Err(no_tiling),
    };
    let tiling = tiles
        .chunks_exact(4)
        .find(|c| c[0] == rows && c[1] == cols)
        .map(|c| tl2::Tiling { bm: c[2], bk: c[3] })
        .ok_or(no_tiling)?;
    Ok((scale, tl2::Layout::new(rows, cols, tiling)?))
}

/// Instruction sets with kernels of their own, in order: each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    /// AVX2 with F16C.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (`vpdpbusd`), besides AVX2 and F16C. Formats without a kernel
    /// of their own here run their AVX2 kernel.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports (detected once).
    pub fn detect() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
                if i2s::avx512::available() && float::avx512::available() {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
            Isa::Scalar
        })
    }

    /// Every instruction set this CPU runs, scalar first (tests compare each with scalar).
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= Isa::detect())
            .collect()
    }

    /// The lower-case name used in kernel ids, `/health` and bench reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The implementation that computes `ty` when `isa` is asked for: the best instruction
    /// set not above `isa` that has a kernel for the type and that the CPU supports.
    pub fn effective(ty: TensorType, isa: Isa) -> Isa {
        ty.format().map_or(Isa::Scalar, |f| f.kernel(isa).isa)
    }
}

pub use super::format::{is_kernel_id, kernels};

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
