//! Float-like formats: F32, F16 and Q8_0 (blocks of 32 int8 with an f16 scale).
//! They multiply in f32 against unquantized activations.

use super::format::{each_row_and_token, Format, Kernel, Kind, Packing, Product};
use super::matmul::Isa;
use super::TensorType;
use half::f16;

/// The dequantizer of a float format's row `r`, as a [`Format`] row takes it.
macro_rules! dequantize_as {
    ($ty:expr) => {
        Some(|tensor, r, cols, out| {
            let rb = $ty.row_bytes(cols);
            dequantize_row($ty, &tensor[r * rb..(r + 1) * rb], out)
        })
    };
}

/// The scalar reference kernel of a float format: dequantize the row, then [`dot`].
macro_rules! scalar_kernel {
    ($ty:expr, $gemv:literal, $gemm:literal) => {
        Kernel {
            isa: Isa::Scalar,
            gemv: $gemv,
            gemm: $gemm,
            // SAFETY: as `RowsFn`.
            rows: |p, range, out| unsafe { scalar_rows($ty, p, range, out) },
        }
    };
}

/// F32: scalar and AVX2; also what the converter writes for unquantized ternary weights.
pub static F32: Format = Format {
    all_finite: Some(|t| super::format::no_all_ones_exponent::<4>(t, 0, 4, 0x7F80_0000)),
    packing: Some(Packing {
        multiple: 1,
        file_type: 0,
        scale_tensor: false,
        pack: |t| {
            Ok(t.values
                .iter()
                .flat_map(|&v| (v as f32 * t.scale).to_le_bytes())
                .collect())
        },
    }),
    ..Format::new(
        Kind::Float,
        "f32",
        dequantize_as!(TensorType::F32),
        &[
            scalar_kernel!(TensorType::F32, "f32_gemv_scalar", "f32_gemm_scalar"),
            #[cfg(target_arch = "x86_64")]
            Kernel {
                isa: Isa::Avx2,
                gemv: "f32_gemv_avx2",
                gemm: "f32_gemm_avx2",
                // SAFETY: as `RowsFn`; the table picks this only on a CPU with AVX2.
                rows: |p, range, out| unsafe {
                    each_row_and_token(p, range, out, |row, t| avx2::dot_f32(row, p.x_row(t)))
                },
            },
        ],
    )
};

/// F16 (token embeddings, the output projection): scalar, AVX2 and AVX-512 row loops.
pub static F16: Format = Format {
    all_finite: Some(|t| super::format::no_all_ones_exponent::<2>(t, 0, 2, 0x7C00)),
    ..Format::new(
        Kind::Float,
        "f16",
        dequantize_as!(TensorType::F16),
        &[
            scalar_kernel!(TensorType::F16, "f16_gemv_scalar", "f16_gemm_scalar"),
            #[cfg(target_arch = "x86_64")]
            Kernel {
                isa: Isa::Avx2,
                gemv: "f16_gemv_avx2",
                gemm: "f16_gemm_avx2",
                // SAFETY: as `RowsFn`; the table picks this only with AVX2 and F16C.
                rows: |p, range, out| unsafe {
                    avx2::f16_rows(p.w, p.row_bytes, range, p.x, p.n, out, p.rows)
                },
            },
            #[cfg(target_arch = "x86_64")]
            Kernel {
                isa: Isa::Avx512,
                gemv: "f16_gemv_avx512",
                gemm: "f16_gemm_avx512",
                // SAFETY: as `RowsFn`; the table picks this only with AVX-512 F, AVX2 and F16C.
                rows: |p, range, out| unsafe {
                    avx512::f16_rows(p.w, p.row_bytes, range, p.x, p.n, out, p.rows)
                },
            },
        ],
    )
};

/// Q8_0 (a quantized output projection, embeddings): scalar and AVX2.
pub static Q8_0: Format = Format {
    all_finite: Some(|t| super::format::no_all_ones_exponent::<2>(t, 0, 34, 0x7C00)),
    ..Format::new(
        Kind::Float,
        "q8_0",
        dequantize_as!(TensorType::Q8_0),
        &[
            scalar_kernel!(TensorType::Q8_0, "q8_0_gemv_scalar", "q8_0_gemm_scalar"),
            #[cfg(target_arch = "x86_64")]
            Kernel {
                isa: Isa::Avx2,
                gemv: "q8_0_gemv_avx2",
                gemm: "q8_0_gemm_avx2",
                // SAFETY: as `RowsFn`; the table picks this only with AVX2 and F16C; rows are
                // whole 32-blocks.
                rows: |p, range, out| unsafe {
                    avx2::q8_0_rows(p.w, p.row_bytes, range, p.x, p.n, out, p.rows)
                },
            },
        ],
    )
};

/// The scalar float kernel: each row dequantized (F32 read in place where aligned), then
/// [`dot`] with each token.
///
/// # Safety
/// As [`super::format::RowsFn`].
unsafe fn scalar_rows(ty: TensorType, p: &Product, range: std::ops::Range<usize>, out: *mut f32) {
    let mut scratch = vec![0f32; p.cols];
    // SAFETY: forwarded from the caller.
    unsafe {
        each_row_and_token(p, range, out, |row, t| {
            dot(ty, row, p.x_row(t), &mut scratch)
        })
    }
}

#[inline]
fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

pub fn dequantize_row(ty: TensorType, row: &[u8], out: &mut [f32]) {
    match ty {
        TensorType::F32 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f32_at(row, i);
            }
        }
        TensorType::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        TensorType::Q8_0 => {
            for (o, blk) in out.chunks_exact_mut(32).zip(row.chunks_exact(34)) {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                for (o, &q) in o.iter_mut().zip(&blk[2..]) {
                    *o = q as i8 as f32 * d;
                }
            }
        }
        other => unreachable!("{other} is not a float format"),
    }
}

/// ggml's Q8_0: blocks of 32 values, each an f16 scale d = max|x| / 127 and 32 int8
/// round(x / d) (half away from zero, as ggml's `roundf`). `v.len()` is a multiple of 32.
pub fn encode_q8_0(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() / 32 * 34);
    for b in v.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|x| (x * id).round() as i8 as u8));
    }
    out
}

/// Dot product of a float-format row with f32 activations. Eight partial sums, combined in a
/// fixed order, so the result never depends on how rows are split across threads.
pub fn dot(ty: TensorType, row: &[u8], x: &[f32], scratch: &mut [f32]) -> f32 {
    let w: &[f32] = if ty == TensorType::F32 && (row.as_ptr() as usize).is_multiple_of(4) {
        // SAFETY: aligned, length checked by the caller's size validation; f32 has no invalid bits.
        unsafe { std::slice::from_raw_parts(row.as_ptr() as *const f32, x.len()) }
    } else {
        dequantize_row(ty, row, &mut scratch[..x.len()]);
        &scratch[..x.len()]
    };
    dot_f32(w, x)
}

pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut wc = w.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (a, b) in (&mut wc).zip(&mut xc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    let mut tail = 0f32;
    for (a, b) in wc.remainder().iter().zip(xc.remainder()) {
        tail += a * b;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// AVX2 (+F16C) versions of [`dot`] for F32 and F16 rows: the same eight lane sums, each
/// updated with a separate multiply and add (no FMA) in the same order, and the same final
/// combination — bit-identical to the scalar path.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn finish(acc: __m256, tail: f32) -> f32 {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), acc);
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail
    }

    /// # Safety
    /// AVX2 and F16C must be available; `row` holds `x.len()` little-endian f16 values.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
        let n8 = x.len() / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        for i in (0..n8).step_by(8) {
            let h = _mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i);
            let w = _mm256_cvtph_ps(h);
            acc = _mm256_add_ps(acc, _mm256_mul_ps(w, _mm256_loadu_ps(x.as_ptr().add(i))));
        }
        let mut tail = 0f32;
        for i in n8..x.len() {
            tail += half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32() * x[i];
        }
        finish(acc, tail)
    }

    /// Eight weights of `row` from value `i` on, as f32: F16 (`Q8 = false`) or Q8_0 blocks
    /// (`Q8 = true`; `i` a multiple of 8, so the eight lie in one block), each value exactly
    /// as [`super::dequantize_row`] gives it (`q as f32 * d`, one rounding).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8<const Q8: bool>(row: &[u8], i: usize) -> __m256 {
        if Q8 {
            let blk = row.as_ptr().add(i / 32 * 34);
            // The block's f16 scale, converted by F16C and broadcast (exact, as half's is).
            let bits = u16::from_le_bytes([*blk, *blk.add(1)]);
            let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
            let q = _mm_loadl_epi64(blk.add(2 + i % 32) as *const __m128i);
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d)
        } else {
            _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i))
        }
    }

    /// Bytes of a row up to value `i`.
    #[inline]
    fn offset<const Q8: bool>(i: usize) -> usize {
        if Q8 {
            i / 32 * 34 + 2 + i % 32
        } else {
            2 * i
        }
    }

    /// [`dot_f16`] (or the Q8_0 equivalent) of `R` rows against `T` token rows (the output
    /// projection): each weight vector is converted once and used for every token; every
    /// (row, token) pair keeps its own add chain in exactly the order `dot_f16` uses. The bytes
    /// from `ahead` on (the next rows, typically) are prefetched as these are read: rows are
    /// short, so the hardware prefetcher would meet every new group of rows cold.
    ///
    /// # Safety
    /// As [`dot_f16`], for each row and each `xs[t]` (all the same length); for Q8_0 the
    /// length is a multiple of 32.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn dot_rxt<const Q8: bool, const R: usize, const T: usize>(
        rows: [&[u8]; R],
        xs: [&[f32]; T],
        ahead: *const u8,
    ) -> [[f32; T]; R] {
        let len = xs[0].len();
        let n8 = len / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        for i in (0..n8).step_by(8) {
            // As many bytes of what comes next as are read here.
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(R * offset::<Q8>(i)) as *const i8);
            let w: [__m256; R] = std::array::from_fn(|r| load8::<Q8>(rows[r], i));
            for t in 0..T {
                let xv = _mm256_loadu_ps(xs[t].as_ptr().add(i));
                for r in 0..R {
                    acc[r][t] = _mm256_add_ps(acc[r][t], _mm256_mul_ps(w[r], xv));
                }
            }
        }
        let mut out = [[0f32; T]; R];
        for t in 0..T {
            let mut tail = [0f32; R];
            if !Q8 {
                for (r, row) in rows.iter().enumerate() {
                    for i in n8..len {
                        tail[r] += half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32()
                            * xs[t][i];
                    }
                }
            }
            for r in 0..R {
                out[r][t] = finish(acc[r][t], tail[r]);
            }
        }
        out
    }

    /// The whole groups of `R` rows in `rows`, against tokens `T` at a time (then the
    /// remaining tokens one at a time); returns the first row not done.
    ///
    /// # Safety
    /// As [`f16_rows`].
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn groups<const Q8: bool, const R: usize, const T: usize>(
        w: &[u8],
        row_bytes: usize,
        cols: usize,
        rows: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        out: *mut f32,
        out_rows: usize,
    ) -> usize {
        let xt = |t: usize| &x[t * cols..(t + 1) * cols];
        let mut r = rows.start;
        while r + R <= rows.end {
            let rs: [&[u8]; R] =
                std::array::from_fn(|i| &w[(r + i) * row_bytes..(r + i + 1) * row_bytes]);
            let ahead = w.as_ptr().wrapping_add((r + R) * row_bytes);
            let mut t = 0;
            while t < n {
                if n - t >= T {
                    let d = dot_rxt::<Q8, R, T>(rs, std::array::from_fn(|j| xt(t + j)), ahead);
                    for (i, dr) in d.iter().enumerate() {
                        for (j, &v) in dr.iter().enumerate() {
                            *out.add((t + j) * out_rows + r + i) = v;
                        }
                    }
                    t += T;
                } else {
                    let d = dot_rxt::<Q8, R, 1>(rs, [xt(t)], ahead);
                    for (i, dr) in d.iter().enumerate() {
                        *out.add(t * out_rows + r + i) = dr[0];
                    }
                    t += 1;
                }
            }
            r += R;
        }
        r
    }

    /// The F16 product for rows `rows` of `w` (`row_bytes` each) and the `n` token rows of
    /// `x`: `out[t * out_rows + r]`. Four rows at a time (four read streams) against two
    /// tokens at a time; the rest one by one. Every output is summed exactly as [`dot_f16`]
    /// sums it, however it is grouped.
    ///
    /// # Safety
    /// AVX2 and F16C are available; `w` holds the rows in `rows`, `x` holds `n` rows of
    /// `row_bytes / 2` values, and `out` points to `n * out_rows` floats of which no other
    /// thread writes the rows in `rows`.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f16_rows(
        w: &[u8],
        row_bytes: usize,
        rows: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        out: *mut f32,
        out_rows: usize,
    ) {
        float_rows::<false>(w, row_bytes, row_bytes / 2, rows, x, n, out, out_rows)
    }

    /// [`f16_rows`] for Q8_0 rows (`row_bytes / 34` blocks of 32 values): the same sums as
    /// the scalar dequantize-then-dot path, bit for bit.
    ///
    /// # Safety
    /// As [`f16_rows`], with `x` holding `n` rows of `row_bytes / 34 * 32` values.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn q8_0_rows(
        w: &[u8],
        row_bytes: usize,
        rows: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        out: *mut f32,
        out_rows: usize,
    ) {
        float_rows::<true>(w, row_bytes, row_bytes / 34 * 32, rows, x, n, out, out_rows)
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn float_rows<const Q8: bool>(
        w: &[u8],
        row_bytes: usize,
        cols: usize,
        rows: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        out: *mut f32,
        out_rows: usize,
    ) {
        let mut r = rows.start;
        // Several tokens: two rows against four tokens per pass (eight add chains, each
        // converted weight used four times); one token: four rows per pass.
        if n >= 4 {
            r = groups::<Q8, 2, 4>(w, row_bytes, cols, r..rows.end, x, n, out, out_rows);
        }
        r = groups::<Q8, 4, 1>(w, row_bytes, cols, r..rows.end, x, n, out, out_rows);
        groups::<Q8, 1, 1>(w, row_bytes, cols, r..rows.end, x, n, out, out_rows);
    }

    /// # Safety
    /// AVX2 must be available; `row` holds `x.len()` little-endian f32 values.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
        let n8 = x.len() / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        for i in (0..n8).step_by(8) {
            let w = _mm256_loadu_ps(row.as_ptr().add(4 * i) as *const f32);
            acc = _mm256_add_ps(acc, _mm256_mul_ps(w, _mm256_loadu_ps(x.as_ptr().add(i))));
        }
        let mut tail = 0f32;
        for i in n8..x.len() {
            tail +=
                f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]])
                    * x[i];
        }
        finish(acc, tail)
    }
}

/// AVX-512 version of the F16 output projection for several tokens: two rows share one
/// 512-bit register (row `2p` in lanes 0..7, row `2p + 1` in lanes 8..15), so each lane keeps
/// exactly the add chain [`avx2::dot_f16`] keeps for its row and lane (separate multiply and
/// add, same order, same final combination): the same bits, with half the instructions.
/// One token stays on the AVX2 loop (it is bound by reading the rows, not by arithmetic).
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use std::arch::x86_64::*;

    /// Whether this CPU runs these kernels (AVX-512 F plus AVX2/F16C).
    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("f16c")
    }

    /// Rows `rs` (an even number, `2 * P`) against `T` tokens; outputs `[row][token]`.
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f")]
    unsafe fn dot_f16_pairs<const P: usize, const T: usize>(
        rs: [[&[u8]; 2]; P],
        xs: [&[f32]; T],
        ahead: *const u8,
    ) -> [[[f32; T]; 2]; P] {
        let len = xs[0].len();
        let n8 = len / 8 * 8;
        let mut acc = [[_mm512_setzero_ps(); T]; P];
        for i in (0..n8).step_by(8) {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(4 * P * i) as *const i8);
            let w: [__m512; P] = std::array::from_fn(|p| {
                let lo = _mm_loadu_si128(rs[p][0].as_ptr().add(2 * i) as *const __m128i);
                let hi = _mm_loadu_si128(rs[p][1].as_ptr().add(2 * i) as *const __m128i);
                _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1))
            });
            for t in 0..T {
                let x8 = _mm256_loadu_pd(xs[t].as_ptr().add(i) as *const f64);
                let xv = _mm512_castpd_ps(_mm512_broadcast_f64x4(x8));
                for p in 0..P {
                    acc[p][t] = _mm512_add_ps(acc[p][t], _mm512_mul_ps(w[p], xv));
                }
            }
        }
        let mut out = [[[0f32; T]; 2]; P];
        for (p, rows) in rs.iter().enumerate() {
            for (h, row) in rows.iter().enumerate() {
                for t in 0..T {
                    let mut tail = 0f32;
                    for i in n8..len {
                        tail += half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32()
                            * xs[t][i];
                    }
                    // Row `h` of the pair is lanes 8h..8h+8: the AVX2 kernel's eight lane sums.
                    let a = acc[p][t];
                    let lanes = if h == 0 {
                        _mm512_castps512_ps256(a)
                    } else {
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)))
                    };
                    out[p][h][t] = super::avx2::finish(lanes, tail);
                }
            }
        }
        out
    }

    /// As [`super::avx2::f16_rows`], with four rows (two register pairs) against four tokens
    /// per pass while at least four tokens remain; the rest on the AVX2 loop.
    ///
    /// # Safety
    /// The CPU must support the features of [`available`]; the rest as
    /// [`super::avx2::f16_rows`].
    #[target_feature(enable = "avx2,f16c,avx512f")]
    pub unsafe fn f16_rows(
        w: &[u8],
        row_bytes: usize,
        rows: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        out: *mut f32,
        out_rows: usize,
    ) {
        let cols = row_bytes / 2;
        let xt = |t: usize| &x[t * cols..(t + 1) * cols];
        let row = |r: usize| &w[r * row_bytes..(r + 1) * row_bytes];
        let n4 = n / 4 * 4;
        let mut r = rows.start;
        if n4 > 0 {
            while r + 4 <= rows.end {
                let rs = [[row(r), row(r + 1)], [row(r + 2), row(r + 3)]];
                let ahead = w.as_ptr().wrapping_add((r + 4) * row_bytes);
                for t in (0..n4).step_by(4) {
                    let d = dot_f16_pairs::<2, 4>(rs, std::array::from_fn(|j| xt(t + j)), ahead);
                    for (p, dp) in d.iter().enumerate() {
                        for (h, dh) in dp.iter().enumerate() {
                            for (j, &v) in dh.iter().enumerate() {
                                *out.add((t + j) * out_rows + r + 2 * p + h) = v;
                            }
                        }
                    }
                }
                r += 4;
            }
        }
        // The rows left over against the first n4 tokens, and every row against the rest.
        if r < rows.end && n4 > 0 {
            super::avx2::f16_rows(
                w,
                row_bytes,
                r..rows.end,
                &x[..n4 * cols],
                n4,
                out,
                out_rows,
            );
        }
        if n4 < n {
            super::avx2::f16_rows(
                w,
                row_bytes,
                rows,
                &x[n4 * cols..],
                n - n4,
                out.add(n4 * out_rows),
                out_rows,
            );
        }
    }
}
