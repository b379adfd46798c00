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
