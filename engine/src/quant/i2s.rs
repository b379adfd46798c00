//! I2_S, BitNet.cpp's x86 ternary layout.
//!
//! Codes 0 -> -1, 1 -> 0, 2 -> +1. Every 128 consecutive values of the row-major tensor become
//! 32 bytes: element j of a block sits in byte j % 32 at bit shift 6 - 2 * (j / 32). One f32
//! scale for the whole tensor follows the packed codes (at byte rows*cols/4), then zero padding
//! to 32 bytes: tensor size = rows*cols/4 + 32.

use super::{FormatError, QuantRow};

pub const BLOCK: usize = 128;
const BLOCK_BYTES: usize = 32;
const TRAILER: u64 = 32;

pub fn tensor_bytes(n: u64) -> u64 {
    n / 4 + TRAILER
}

/// The per-tensor scale stored after the codes.
pub fn scale(bytes: &[u8], total_len: usize) -> f32 {
    let at = total_len - TRAILER as usize;
    f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn code_of(v: i8) -> Result<u8, FormatError> {
    match v {
        -1 => Ok(0),
        0 => Ok(1),
        1 => Ok(2),
        other => Err(FormatError::NotTernary(other)),
    }
}

/// Packs ternary values (row-major, cols a multiple of 128) and the tensor scale.
pub fn pack(values: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Vec<u8>, FormatError> {
    if cols == 0 || !cols.is_multiple_of(BLOCK) {
        return Err(FormatError::BadCols {
            ty: "I2_S",
            rows,
            cols,
            multiple: BLOCK,
        });
    }
    if values.len() != rows * cols {
        return Err(FormatError::WrongSize {
            ty: "I2_S",
            rows,
            cols,
            got: values.len(),
            expected: rows * cols,
            row_stride: cols,
        });
    }
    let mut out = vec![0u8; tensor_bytes(values.len() as u64) as usize];
    for (b, block) in values.chunks_exact(BLOCK).enumerate() {
        let dst = &mut out[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        for (j, &v) in block.iter().enumerate() {
            dst[j % 32] |= code_of(v)? << (6 - 2 * (j / 32));
        }
    }
    let at = values.len() / 4;
    out[at..at + 4].copy_from_slice(&scale.to_le_bytes());
    Ok(out)
}

/// The 2-bit code (0..=2) of element `j` of a packed row.
#[inline]
pub fn code(row: &[u8], j: usize) -> u8 {
    let (b, i) = (j / BLOCK, j % BLOCK);
    (row[b * BLOCK_BYTES + i % 32] >> (6 - 2 * (i / 32))) & 3
}

/// Unpacks a whole tensor to ternary values and its scale.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<(Vec<i8>, f32), FormatError> {
    super::check_size(super::TensorType::I2S, rows, cols, bytes.len())?;
    let n = rows * cols;
    let v = (0..n).map(|j| code(bytes, j) as i8 - 1).collect();
    Ok((v, scale(bytes, bytes.len())))
}

pub fn dequantize_row(row: &[u8], scale: f32, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = (code(row, j) as f32 - 1.0) * scale;
    }
}

/// Scalar reference dot product: D = sum code_j * q_j (codes 0..2, unsigned x signed).
pub fn dot_codes(row: &[u8], q: &[i8]) -> i32 {
    let mut d = 0i32;
    for (blk, qb) in row.chunks_exact(BLOCK_BYTES).zip(q.chunks_exact(BLOCK)) {
        for (i, &byte) in blk.iter().enumerate() {
            d += ((byte >> 6) & 3) as i32 * qb[i] as i32
                + ((byte >> 4) & 3) as i32 * qb[32 + i] as i32
                + ((byte >> 2) & 3) as i32 * qb[64 + i] as i32
                + (byte & 3) as i32 * qb[96 + i] as i32;
        }
    }
    d
}

/// The reference epilogue: y = (D - S) / s * w_scale, all in f32 as the reference does it.
#[inline]
pub fn finish(d: i32, act: &QuantRow, w_scale: f32) -> f32 {
    (d as f32 - act.sum as f32) / act.scale * w_scale
}
