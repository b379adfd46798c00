//! BF16 (bfloat16: the top half of an f32), as Hugging Face checkpoints store weights. Only
//! the scalar reference computes with it: each row widened to f32, then the float formats'
//! dot product ([`super::float::dot_f32`]).

use super::format::{each_row_and_token, Format, Kernel, Kind, Product};
use super::matmul::Isa;
use half::bf16;

/// BF16's behaviour: two bytes per weight, no blocks; the scalar kernel.
pub static FORMAT: Format = Format {
    all_finite: Some(|t| super::format::no_all_ones_exponent::<2>(t, 0, 2, 0x7F80)),
    ..Format::new(
        Kind::Float,
        "bf16",
        Some(|tensor, r, cols, out| dequantize_row(&tensor[r * cols * 2..(r + 1) * cols * 2], out)),
        &[Kernel {
            isa: Isa::Scalar,
            gemv: "bf16_gemv_scalar",
            gemm: "bf16_gemm_scalar",
            rows: rows_scalar,
        }],
    )
};

/// Widens a row of BF16 values to f32.
pub fn dequantize_row(row: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
        *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// The scalar kernel: each row widened, then dotted with each token.
///
/// # Safety
/// As [`super::format::RowsFn`].
unsafe fn rows_scalar(p: &Product, range: std::ops::Range<usize>, out: *mut f32) {
    let mut w = vec![0f32; p.cols];
    // SAFETY: forwarded from the caller.
    unsafe {
        each_row_and_token(p, range, out, |row, t| {
            dequantize_row(row, &mut w);
            super::float::dot_f32(&w, p.x_row(t))
        })
    }
}
