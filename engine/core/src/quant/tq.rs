//! TQ2_0 and TQ1_0, mainline llama.cpp's ternary types: blocks of 256 values with an f16 scale.
//!
//! TQ2_0 (66 bytes): `qs[64]` then `d`. Element `j*4 + l*32 + m` (j in {0, 32}, l in 0..4,
//! m in 0..32) is code `(qs[j + m] >> 2l) & 3`, value = code - 1.
//! TQ1_0 (54 bytes): `qs[48]`, `qh[4]`, `d`. Five base-3 digits per byte, stored as
//! ceil(v * 256 / 243) so digit n is recovered as `((byte * 3^n) mod 256 * 3) >> 8`: bytes 0..32
//! hold elements `n*32 + m`, bytes 32..48 hold `160 + n*16 + m`, and `qh[j]` (4 digits, then a
//! zero digit) holds elements `240 + n*4 + j`.
//!
//! Both multiply like I2_S against int8 activations, with one scale per block:
//! y = (sum over blocks of d_b * (D_b - S_b)) / s, D_b = sum code*q, S_b = sum q, in block order.

use super::format::{each_row_and_token, Format, Kernel, Kind, Packing, Product, Ternary};
use super::matmul::Isa;
use super::{FormatError, QuantRow};
use half::f16;

/// TQ2_0's behaviour: 2-bit codes in 256-blocks with an f16 scale each; scalar and AVX2.
pub static TQ2_0: Format = Format {
    packing: Some(Packing {
        multiple: QK,
        file_type: 37,
        scale_tensor: false,
        pack: |t| pack_tq2(&t.values, &block_scales(t)?),
    }),
    ..Format::new(
        Kind::Ternary,
        "tq2_0",
        Some(|tensor, r, cols, out| {
            let rb = cols / QK * TQ2_BYTES;
            dequantize_row_tq2(&tensor[r * rb..(r + 1) * rb], out)
        }),
        &[
            Kernel {
                isa: Isa::Scalar,
                gemv: "tq2_0_gemv_scalar",
                gemm: "tq2_0_gemm_scalar",
                rows: |p, range, out| {
                    // SAFETY: as `RowsFn`.
                    unsafe { each_row_and_token(p, range, out, |row, t| dot_tq2(row, &p.acts[t])) }
                },
            },
            #[cfg(target_arch = "x86_64")]
            Kernel {
                isa: Isa::Avx2,
                gemv: "tq2_0_gemv_avx2",
                gemm: "tq2_0_gemm_avx2",
                rows: avx2::rows_tq2,
            },
        ],
    )
};

/// TQ1_0's behaviour: base-3 digits, five per byte, in 256-blocks with an f16 scale each;
/// scalar and AVX2.
pub static TQ1_0: Format = Format {
    packing: Some(Packing {
        multiple: QK,
        file_type: 36,
        scale_tensor: false,
        pack: |t| pack_tq1(&t.values, &block_scales(t)?),
    }),
    ..Format::new(
        Kind::Ternary,
        "tq1_0",
        Some(|tensor, r, cols, out| {
            let rb = cols / QK * TQ1_BYTES;
            dequantize_row_tq1(&tensor[r * rb..(r + 1) * rb], out)
        }),
        &[
            Kernel {
                isa: Isa::Scalar,
                gemv: "tq1_0_gemv_scalar",
                gemm: "tq1_0_gemm_scalar",
                rows: |p, range, out| {
                    // SAFETY: as `RowsFn`.
                    unsafe { each_row_and_token(p, range, out, |row, t| dot_tq1(row, &p.acts[t])) }
                },
            },
            #[cfg(target_arch = "x86_64")]
            Kernel {
                isa: Isa::Avx2,
                gemv: "tq1_0_gemv_avx2",
                gemm: "tq1_0_gemm_avx2",
                rows: avx2::rows_tq1,
            },
        ],
    )
};

/// The matrix's one scale repeated for each 256-block (rows must be whole blocks).
fn block_scales(t: &Ternary) -> Result<Vec<f32>, FormatError> {
    if !t.cols.is_multiple_of(QK) {
        return Err(FormatError::BadCols {
            ty: "TQ",
            rows: t.rows,
            cols: t.cols,
            multiple: QK,
        });
    }
    Ok(vec![t.scale; t.values.len() / QK])
}

pub const QK: usize = 256;
pub const TQ2_BYTES: usize = 66;
pub const TQ1_BYTES: usize = 54;
const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

fn code_of(v: i8) -> Result<u8, FormatError> {
    if (-1..=1).contains(&v) {
        Ok((v + 1) as u8)
    } else {
        Err(FormatError::NotTernary(v))
    }
}

fn check(values: &[i8], scales: &[f32], ty: &'static str) -> Result<(), FormatError> {
    if !values.len().is_multiple_of(QK) || values.len() / QK != scales.len() {
        return Err(FormatError::WrongSize {
            ty,
            rows: scales.len(),
            cols: QK,
            got: values.len(),
            expected: scales.len() * QK,
            row_stride: QK,
        });
    }
    Ok(())
}

/// Packs ternary values with one scale per 256-value block (stored as f16).
pub fn pack_tq2(values: &[i8], scales: &[f32]) -> Result<Vec<u8>, FormatError> {
    check(values, scales, "TQ2_0")?;
    let mut out = Vec::with_capacity(scales.len() * TQ2_BYTES);
    for (blk, &d) in values.chunks_exact(QK).zip(scales) {
        let mut qs = [0u8; 64];
        for j in [0usize, 32] {
            for l in 0..4 {
                for m in 0..32 {
                    qs[j + m] |= code_of(blk[j * 4 + l * 32 + m])? << (2 * l);
                }
            }
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    Ok(out)
}

fn pack_digits(digits: impl Iterator<Item = u8>) -> u8 {
    let v = digits.fold(0u16, |acc, d| acc * 3 + d as u16);
    ((v * 256).div_ceil(243)) as u8
}

pub fn pack_tq1(values: &[i8], scales: &[f32]) -> Result<Vec<u8>, FormatError> {
    check(values, scales, "TQ1_0")?;
    for &v in values {
        code_of(v)?;
    }
    let c = |v: i8| (v + 1) as u8;
    let mut out = Vec::with_capacity(scales.len() * TQ1_BYTES);
    for (blk, &d) in values.chunks_exact(QK).zip(scales) {
        for m in 0..32 {
            out.push(pack_digits((0..5).map(|n| c(blk[n * 32 + m]))));
        }
        for m in 0..16 {
            out.push(pack_digits((0..5).map(|n| c(blk[160 + n * 16 + m]))));
        }
        for j in 0..4 {
            out.push(pack_digits(
                (0..4).map(|n| c(blk[240 + n * 4 + j])).chain([0]),
            ));
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    Ok(out)
}

#[inline]
fn digit(byte: u8, n: usize) -> u8 {
    let q = byte.wrapping_mul(POW3[n]);
    ((q as u16 * 3) >> 8) as u8
}

/// Codes 0..=2 of one TQ2_0 block, in element order.
pub fn block_codes_tq2(blk: &[u8], out: &mut [u8; QK]) {
    for j in [0usize, 32] {
        for l in 0..4 {
            for m in 0..32 {
                out[j * 4 + l * 32 + m] = (blk[j + m] >> (2 * l)) & 3;
            }
        }
    }
}

/// Codes 0..=2 of one TQ1_0 block, in element order.
pub fn block_codes_tq1(blk: &[u8], out: &mut [u8; QK]) {
    for n in 0..5 {
        for m in 0..32 {
            out[n * 32 + m] = digit(blk[m], n);
        }
        for m in 0..16 {
            out[160 + n * 16 + m] = digit(blk[32 + m], n);
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            out[240 + n * 4 + j] = digit(blk[48 + j], n);
        }
    }
}

fn block_scale(blk: &[u8]) -> f32 {
    let n = blk.len();
    f16::from_le_bytes([blk[n - 2], blk[n - 1]]).to_f32()
}

type Decode = fn(&[u8], &mut [u8; QK]);

fn dequant(row: &[u8], bytes: usize, decode: Decode, out: &mut [f32]) {
    let mut codes = [0u8; QK];
    for (blk, o) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(QK)) {
        decode(blk, &mut codes);
        let d = block_scale(blk);
        for (o, &c) in o.iter_mut().zip(&codes) {
            *o = (c as f32 - 1.0) * d;
        }
    }
}

pub fn dequantize_row_tq2(row: &[u8], out: &mut [f32]) {
    dequant(row, TQ2_BYTES, block_codes_tq2, out)
}
pub fn dequantize_row_tq1(row: &[u8], out: &mut [f32]) {
    dequant(row, TQ1_BYTES, block_codes_tq1, out)
}

fn dot(row: &[u8], bytes: usize, decode: Decode, act: &QuantRow) -> f32 {
    let mut codes = [0u8; QK];
    let mut acc = 0f32;
    for (blk, q) in row.chunks_exact(bytes).zip(act.q.chunks_exact(QK)) {
        decode(blk, &mut codes);
        let (mut d, mut s) = (0i32, 0i32);
        for (&c, &q) in codes.iter().zip(q) {
            d += c as i32 * q as i32;
            s += q as i32;
        }
        acc += block_scale(blk) * (d - s) as f32;
    }
    acc / act.scale
}

/// Scalar reference row dot products against quantized activations.
pub fn dot_tq2(row: &[u8], act: &QuantRow) -> f32 {
    dot(row, TQ2_BYTES, block_codes_tq2, act)
}
pub fn dot_tq1(row: &[u8], act: &QuantRow) -> f32 {
    dot(row, TQ1_BYTES, block_codes_tq1, act)
}

/// AVX2 versions of [`dot_tq2`] and [`dot_tq1`] with the same bits: each block's integer
/// sum D_b - S_b is exact (`maddubs` of codes 0..=2, minus `maddubs` of ones, against int8), and
/// the f32 accumulation over blocks runs in the same order with the same operations.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::{block_scale, QuantRow, QK, TQ1_BYTES, TQ2_BYTES};
    use std::arch::x86_64::*;

    /// Sum over one block of (code - 1) * q for eight vectors of 32 codes (0..=2) against the
    /// block's 256 activations at `q`, in the order of the activations.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block_sum(codes: [__m256i; 8], q: *const i8) -> i32 {
        let ones8 = _mm256_set1_epi8(1);
        let mut acc = _mm256_setzero_si256();
        for (k, c) in codes.into_iter().enumerate() {
            let x = _mm256_loadu_si256(q.add(32 * k) as *const __m256i);
            // Each 16-bit lane: at most 2 * 2 * 128 per product pair, 8 pairs: no overflow.
            let d = _mm256_sub_epi16(_mm256_maddubs_epi16(c, x), _mm256_maddubs_epi16(ones8, x));
            acc = _mm256_add_epi16(acc, d);
        }
        crate::quant::i2s::avx2::hsum(_mm256_madd_epi16(acc, _mm256_set1_epi16(1)))
    }

    /// The codes of a TQ2_0 block as eight vectors, in activation order.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes_tq2(blk: *const u8) -> [__m256i; 8] {
        let m = _mm256_set1_epi8(3);
        let h0 = _mm256_loadu_si256(blk as *const __m256i);
        let h1 = _mm256_loadu_si256(blk.add(32) as *const __m256i);
        let c =
            |h: __m256i, l: i32| _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * l)), m);
        [
            c(h0, 0),
            c(h0, 1),
            c(h0, 2),
            c(h0, 3),
            c(h1, 0),
            c(h1, 1),
            c(h1, 2),
            c(h1, 3),
        ]
    }

    /// Bytes times 3, modulo 256 (so repeated, times 3^n: the next base-3 digit moves up).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn times3(x: __m256i) -> __m256i {
        _mm256_add_epi8(x, _mm256_add_epi8(x, x))
    }

    /// The leading base-3 digit of each byte: (x * 3) >> 8, which is (x > 85) + (x > 170).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lead_digit(x: __m256i) -> __m256i {
        let one = _mm256_set1_epi8(1);
        let over = |t: i8| _mm256_min_epu8(_mm256_subs_epu8(x, _mm256_set1_epi8(t)), one);
        _mm256_add_epi8(over(85), over(170u8 as i8))
    }

    /// The codes of a TQ1_0 block as eight vectors, in activation order.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes_tq1(blk: *const u8) -> [__m256i; 8] {
        // Bytes 0..32: digit n is element n * 32 + m.
        let mut x = _mm256_loadu_si256(blk as *const __m256i);
        let mut c = [_mm256_setzero_si256(); 8];
        for (n, c) in c.iter_mut().take(5).enumerate() {
            if n > 0 {
                x = times3(x);
            }
            *c = lead_digit(x);
        }
        // Bytes 32..48: digit n is element 160 + n * 16 + m; two digits per vector.
        let b = _mm_loadu_si128(blk.add(32) as *const __m128i);
        let b3 = _mm_add_epi8(b, _mm_add_epi8(b, b));
        let mut y = _mm256_set_m128i(b3, b);
        c[5] = lead_digit(y);
        y = times3(times3(y));
        c[6] = lead_digit(y);
        y = times3(times3(y));
        // Bytes 48..52: digit n of byte j is element 240 + n * 4 + j; four digits.
        let qh = _mm_set1_epi32((blk.add(48) as *const i32).read_unaligned());
        let qh3 = _mm_add_epi8(qh, _mm_add_epi8(qh, qh));
        let qh9 = _mm_add_epi8(qh3, _mm_add_epi8(qh3, qh3));
        let qh27 = _mm_add_epi8(qh9, _mm_add_epi8(qh9, qh9));
        let tail = _mm_blend_epi32::<0b1100>(
            _mm_blend_epi32::<0b0010>(qh, qh3),
            _mm_blend_epi32::<0b1000>(qh9, qh27),
        );
        c[7] = lead_digit(_mm256_set_m128i(tail, _mm256_castsi256_si128(y)));
        c
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot(
        row: &[u8],
        bytes: usize,
        codes: unsafe fn(*const u8) -> [__m256i; 8],
        act: &QuantRow,
    ) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in row.chunks_exact(bytes).enumerate() {
            let d = block_sum(codes(blk.as_ptr()), act.q.as_ptr().add(b * QK));
            acc += block_scale(blk) * d as f32;
        }
        acc / act.scale
    }

    /// TQ2_0's AVX2 kernel: [`dot_tq2`] per row and token.
    ///
    /// # Safety
    /// As [`super::super::format::RowsFn`].
    pub(super) unsafe fn rows_tq2(
        p: &super::Product,
        range: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        // SAFETY: the kernel table only picks this on a CPU with AVX2; rows are whole blocks.
        unsafe { super::each_row_and_token(p, range, out, |row, t| dot_tq2(row, &p.acts[t])) }
    }

    /// TQ1_0's AVX2 kernel: [`dot_tq1`] per row and token.
    ///
    /// # Safety
    /// As [`super::super::format::RowsFn`].
    pub(super) unsafe fn rows_tq1(
        p: &super::Product,
        range: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        // SAFETY: as `rows_tq2`.
        unsafe { super::each_row_and_token(p, range, out, |row, t| dot_tq1(row, &p.acts[t])) }
    }

    /// # Safety
    /// The CPU must support AVX2; `row` is whole TQ2_0 blocks and `act.q` as long as they hold.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_tq2(row: &[u8], act: &QuantRow) -> f32 {
        debug_assert_eq!(row.len() / TQ2_BYTES * QK, act.q.len());
        dot(row, TQ2_BYTES, codes_tq2, act)
    }

    /// # Safety
    /// The CPU must support AVX2; `row` is whole TQ1_0 blocks and `act.q` as long as they hold.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_tq1(row: &[u8], act: &QuantRow) -> f32 {
        debug_assert_eq!(row.len() / TQ1_BYTES * QK, act.q.len());
        dot(row, TQ1_BYTES, codes_tq1, act)
    }
}
