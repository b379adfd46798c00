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

use super::{FormatError, QuantRow};
use half::f16;

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
