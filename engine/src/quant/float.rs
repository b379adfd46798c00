//! Float-like formats: F32, F16, BF16 and Q8_0 (blocks of 32 int8 with an f16 scale).
//! They multiply in f32 against unquantized activations.

use super::TensorType;
use half::{bf16, f16};

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
        TensorType::BF16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
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

    #[target_feature(enable = "avx2")]
    unsafe fn finish(acc: __m256, tail: f32) -> f32 {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), acc);
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail
    }

    /// # Safety
    /// AVX2 and F16C must be available; `row` holds `x.len()` little-endian f16 values.
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

    /// [`dot_f16`] of four rows at once: four independent add chains instead of one (the
    /// single chain is latency-bound), each row summed in exactly the order `dot_f16` uses.
    ///
    /// # Safety
    /// As [`dot_f16`], for each row.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dot_f16_x4(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        let n8 = x.len() / 8 * 8;
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..n8).step_by(8) {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            for (a, row) in acc.iter_mut().zip(rows) {
                let w = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i));
                *a = _mm256_add_ps(*a, _mm256_mul_ps(w, xv));
            }
        }
        let mut out = [0f32; 4];
        for (k, row) in rows.iter().enumerate() {
            let mut tail = 0f32;
            for i in n8..x.len() {
                tail += half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32() * x[i];
            }
            out[k] = finish(acc[k], tail);
        }
        out
    }

    /// [`dot_f16`] of two rows against `T` token rows (the output projection of a batch of
    /// sequences): each weight vector is converted once and used for every token; every
    /// (row, token) pair keeps its own add chain in exactly the order `dot_f16` uses.
    ///
    /// # Safety
    /// As [`dot_f16`], for each row and each `xs[t]` (all the same length).
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dot_f16_2xt<const T: usize>(rows: [&[u8]; 2], xs: [&[f32]; T]) -> [[f32; T]; 2] {
        let len = xs[0].len();
        let n8 = len / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        for i in (0..n8).step_by(8) {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(
                rows[0].as_ptr().add(2 * i) as *const __m128i
            ));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(
                rows[1].as_ptr().add(2 * i) as *const __m128i
            ));
            for t in 0..T {
                let xv = _mm256_loadu_ps(xs[t].as_ptr().add(i));
                acc[0][t] = _mm256_add_ps(acc[0][t], _mm256_mul_ps(w0, xv));
                acc[1][t] = _mm256_add_ps(acc[1][t], _mm256_mul_ps(w1, xv));
            }
        }
        let mut out = [[0f32; T]; 2];
        for (r, row) in rows.iter().enumerate() {
            for t in 0..T {
                let mut tail = 0f32;
                for i in n8..len {
                    tail +=
                        half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32() * xs[t][i];
                }
                out[r][t] = finish(acc[r][t], tail);
            }
        }
        out
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
