//! I2_S, BitNet.cpp's x86 ternary layout.
//!
//! Codes 0 -> -1, 1 -> 0, 2 -> +1. Every 128 consecutive values of the row-major tensor become
//! 32 bytes: element j of a block sits in byte j % 32 at bit shift 6 - 2 * (j / 32). One f32
//! scale for the whole tensor follows the packed codes (at byte rows*cols/4), then zero padding
//! to 32 bytes: tensor size = rows*cols/4 + 32.

use super::format::{each_row_and_token, Format, Kernel, Kind, Packing, Product, Ternary};
use super::matmul::Isa;
use super::{FormatError, QuantRow};

/// I2_S's behaviour: 2 bits per weight in rows of whole 128-blocks, one scale per tensor in a
/// 32-byte trailer; scalar, AVX2 and AVX-512 VNNI kernels; the converter's default.
pub static FORMAT: Format = Format {
    kind: Kind::Ternary,
    family: "i2s",
    row_multiple: Some(BLOCK as u64),
    tensor_bytes: Some(|rows, cols| tensor_bytes(rows * cols)),
    row_bytes: Some(|cols| cols / 4),
    dequantize_row: Some(|tensor, r, cols, out| {
        let rb = cols / 4;
        dequantize_row(
            &tensor[r * rb..(r + 1) * rb],
            scale(tensor, tensor.len()),
            out,
        )
    }),
    kernels: &[
        Kernel {
            isa: Isa::Scalar,
            gemv: "i2s_gemv_scalar",
            gemm: "i2s_gemm_scalar",
            rows: rows_scalar,
        },
        #[cfg(target_arch = "x86_64")]
        Kernel {
            isa: Isa::Avx2,
            gemv: "i2s_gemv_avx2",
            gemm: "i2s_gemm_avx2",
            rows: avx2::rows_of,
        },
        #[cfg(target_arch = "x86_64")]
        Kernel {
            isa: Isa::Avx512,
            gemv: "i2s_gemv_avx512",
            gemm: "i2s_gemm_avx512",
            rows: avx512::rows_of,
        },
    ],
    packing: Some(Packing {
        multiple: BLOCK,
        file_type: 40,
        scale_tensor: false,
        pack: |t: &Ternary| pack(&t.values, t.rows, t.cols, t.scale),
    }),
    all_finite: None,
};

/// The scalar reference kernel: [`dot_codes`] and [`finish`] per row and token.
///
/// # Safety
/// As [`super::format::RowsFn`].
unsafe fn rows_scalar(p: &Product, range: std::ops::Range<usize>, out: *mut f32) {
    // SAFETY: forwarded from the caller.
    unsafe {
        each_row_and_token(p, range, out, |row, t| {
            let a = &p.acts[t];
            finish(dot_codes(row, &a.q), a, p.w_scale)
        })
    }
}

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

/// AVX2 version of [`dot_codes`]: identical integer result (codes 0..2 times int8 with
/// `maddubs`, at most 4 * 512 per 16-bit lane per block, widened to i32 every 8 blocks, so
/// nothing saturates or wraps). One token is the one-token case of the multi-token kernel.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    /// How far ahead of the codes being read the kernels prefetch (bytes). Rows are read one
    /// after another, and the hardware prefetcher alone left a GEMV at about 70% of the read
    /// bandwidth; 2-4 KiB ahead measured best (criterion, 2560x6912).
    const PREFETCH: usize = 2048;

    /// Rows per tile of [`rows`]: about this many bytes of codes.
    const TILE_BYTES: usize = 16 << 10;

    /// Blocks summed in 16-bit lanes before widening (at most 16 fit: 16 * 2048 = 32768).
    const WIDEN_EVERY: usize = 8;

    /// # Safety
    /// The CPU must support AVX2; `row.len() * 4 == q.len()` and a multiple of 128 elements.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_codes(row: &[u8], q: &[i8]) -> i32 {
        debug_assert_eq!(row.len() * 4, q.len());
        dot_codes_xt(row, [q])[0]
    }

    /// The sum of the eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn hsum(acc: __m256i) -> i32 {
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256(acc, 1),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// [`dot_codes`] of one row against `T` token rows at once (prompts, and the decode steps
    /// of several sequences): each weight block is decoded once and used `T` times. Same exact
    /// integer results.
    ///
    /// # Safety
    /// As [`dot_codes`], for each of the `q`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_codes_xt<const T: usize>(row: &[u8], q: [&[i8]; T]) -> [i32; T] {
        dot_codes_acc(row, q).map(|a| hsum(a))
    }

    /// [`dot_codes_xt`] before the horizontal sums: eight i32 lane sums per token.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot_codes_acc<const T: usize>(row: &[u8], q: [&[i8]; T]) -> [__m256i; T] {
        let mask = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); T];
        let w = row.as_ptr();
        let blocks = row.len() / 32;
        // A block adds at most 4 * 512 in magnitude to a 16-bit lane, so eight blocks
        // (16384) are summed in 16 bits before one widening to 32.
        for b0 in (0..blocks).step_by(WIDEN_EVERY) {
            let mut acc16 = [_mm256_setzero_si256(); T];
            for b in b0..blocks.min(b0 + WIDEN_EVERY) {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(b * 32 + PREFETCH) as *const i8);
                let packed = _mm256_loadu_si256(w.add(b * 32) as *const __m256i);
                let c = [
                    _mm256_and_si256(_mm256_srli_epi16(packed, 6), mask),
                    _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask),
                    _mm256_and_si256(_mm256_srli_epi16(packed, 2), mask),
                    _mm256_and_si256(packed, mask),
                ];
                for (a, qt) in acc16.iter_mut().zip(q) {
                    let x = qt.as_ptr().add(b * 128);
                    let qv = |k: usize| _mm256_loadu_si256(x.add(32 * k) as *const __m256i);
                    let s01 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(c[0], qv(0)),
                        _mm256_maddubs_epi16(c[1], qv(1)),
                    );
                    let s23 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(c[2], qv(2)),
                        _mm256_maddubs_epi16(c[3], qv(3)),
                    );
                    *a = _mm256_add_epi16(*a, _mm256_add_epi16(s01, s23));
                }
            }
            for (a, a16) in acc.iter_mut().zip(acc16) {
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(a16, ones));
            }
        }
        acc
    }

    /// Four tokens' lane sums reduced at once: `[D0, D1, D2, D3]` (exact integer sums).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hsum4(acc: [__m256i; 4]) -> __m128i {
        let f =
            |a: __m256i| _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        let h01 = _mm_hadd_epi32(f(acc[0]), f(acc[1]));
        let h23 = _mm_hadd_epi32(f(acc[2]), f(acc[3]));
        _mm_hadd_epi32(h01, h23)
    }

    /// [`rows`] as the format's AVX2 kernel.
    ///
    /// # Safety
    /// As [`super::super::format::RowsFn`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn rows_of(p: &super::Product, range: std::ops::Range<usize>, out: *mut f32) {
        // SAFETY: as `RowsFn`: the activations have the tensor's validated row length.
        unsafe { rows(p.w, p.row_bytes, range, p.acts, p.w_scale, out, p.rows) }
    }

    /// The products of rows `rows` of a packed matrix (`row_bytes` per row) with every token
    /// row of `acts`, finished as [`super::finish`] does: `out[t * out_rows + r]`. Rows are
    /// taken in tiles of about 16 KiB; for each group of up to four tokens (their activations
    /// stay in L1) every row of the tile (in L1 or L2 after the first group) is decoded once.
    /// The whole loop is compiled for AVX2, so the kernels inline and calls cost nothing per
    /// row.
    ///
    /// # Safety
    /// The CPU must support AVX2; `w` holds the rows in `rows`, each `acts[t].q` has
    /// `row_bytes * 4` values, and `out` points to `acts.len() * out_rows` floats of which
    /// no other thread writes the rows in `rows`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rows(
        w: &[u8],
        row_bytes: usize,
        rows: std::ops::Range<usize>,
        acts: &[super::QuantRow],
        w_scale: f32,
        out: *mut f32,
        out_rows: usize,
    ) {
        let n = acts.len();
        let tile = (TILE_BYTES / row_bytes.max(1)).max(1);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = rows.end.min(r0 + tile);
            let mut t = 0;
            while t < n {
                let a = &acts[t..n.min(t + 4)];
                for r in r0..r1 {
                    let row = &w[r * row_bytes..(r + 1) * row_bytes];
                    group(row, a, w_scale, out.add(t * out_rows + r), out_rows);
                }
                t += a.len();
            }
            r0 = r1;
        }
    }

    /// One row against one to four tokens: `*out.add(j * out_rows)` for token `j`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn group(
        row: &[u8],
        a: &[super::QuantRow],
        w_scale: f32,
        out: *mut f32,
        out_rows: usize,
    ) {
        if let [a0, a1, a2, a3] = a {
            // The epilogue of four tokens in four vector operations, each the same IEEE
            // operation `finish` does per value.
            let d = hsum4(dot_codes_acc(row, [&a0.q, &a1.q, &a2.q, &a3.q]));
            let sums = _mm_setr_epi32(a0.sum, a1.sum, a2.sum, a3.sum);
            let scales = _mm_setr_ps(a0.scale, a1.scale, a2.scale, a3.scale);
            let y = _mm_mul_ps(
                _mm_div_ps(
                    _mm_sub_ps(_mm_cvtepi32_ps(d), _mm_cvtepi32_ps(sums)),
                    scales,
                ),
                _mm_set1_ps(w_scale),
            );
            let mut v = [0f32; 4];
            _mm_storeu_ps(v.as_mut_ptr(), y);
            for (j, v) in v.into_iter().enumerate() {
                *out.add(j * out_rows) = v;
            }
            return;
        }
        let d: [i32; 4] = match a {
            [a0, a1, a2] => {
                let d = dot_codes_xt(row, [&a0.q, &a1.q, &a2.q]);
                [d[0], d[1], d[2], 0]
            }
            [a0, a1] => {
                let d = dot_codes_xt(row, [&a0.q, &a1.q]);
                [d[0], d[1], 0, 0]
            }
            [a0] => [dot_codes_xt(row, [&a0.q])[0], 0, 0, 0],
            _ => return,
        };
        for (j, a) in a.iter().enumerate() {
            *out.add(j * out_rows) = super::finish(d[j], a, w_scale);
        }
    }
}

/// AVX-512 VNNI version of the I2_S products (AVX512-F/BW/VL + VNNI `vpdpbusd`): the same
/// exact integer sums as [`dot_codes`], four byte products added straight into each i32 lane.
///
/// A 32-byte block (128 values) is broadcast to both halves of a 512-bit register and masked
/// differently in each half: `0xC0` in the low half keeps the codes of elements 0..31 (bits
/// 7:6, so 64 x code), `0x30` in the high half those of 32..63 (16 x code). That register meets
/// the 64 contiguous activation bytes of elements 0..63 in one `vpdpbusd`; masks `0x0C`/`0x03`
/// make the second register (4 x code, 1 x code) for elements 64..127. No shift is needed:
/// every i32 lane sums products of one plane only, so its total is an exact multiple of its
/// plane's factor, divided out once at the end by an exact arithmetic shift. A block costs one
/// load and two masks, shared by every token, and two `vpdpbusd` per token. Two rows share
/// each activation load when four tokens are multiplied together.
///
/// Bound: a lane gains at most 4 * 128 * 128 = 65536 per block, so rows of up to
/// [`MAX_BLOCKS`] blocks cannot overflow; longer rows take the AVX2 kernel.
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use std::arch::x86_64::*;

    /// As in the AVX2 kernel (bytes of codes read ahead; rows per tile about this many bytes).
    const PREFETCH: usize = 2048;
    const TILE_BYTES: usize = 16 << 10;

    /// The longest row (in 128-value blocks) whose lane sums fit in i32: 16384 * 65536 = 2^30.
    pub const MAX_BLOCKS: usize = 16384;

    /// Whether this CPU runs these kernels.
    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }

    /// Lane sums of one (row, token): elements 0..63 in `.0` (lanes 0..7 carry 64 x their
    /// sums, lanes 8..15 16 x), 64..127 in `.1` (4 x, 1 x).
    type Acc = (__m512i, __m512i);

    /// `D` from an [`Acc`]: each lane divided by its plane's factor (exact), then summed.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn total(a: Acc) -> __m512i {
        let s01 = _mm512_setr_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4);
        let s23 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_add_epi32(_mm512_srav_epi32(a.0, s01), _mm512_srav_epi32(a.1, s23))
    }

    /// The lane sums of `R` rows against `T` tokens. `U` blocks per iteration, each with its
    /// own accumulators, so few (row, token) pairs still keep enough `vpdpbusd` chains in
    /// flight.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    // Indexed loops over const-size register arrays: unrolled, and clearer than zips.
    #[allow(clippy::needless_range_loop)]
    unsafe fn acc<const R: usize, const T: usize, const U: usize>(
        rows: [&[u8]; R],
        q: [&[i8]; T],
    ) -> [[__m512i; T]; R] {
        let m01 = _mm512_inserti64x4(_mm512_set1_epi8(0xC0u8 as i8), _mm256_set1_epi8(0x30), 1);
        let m23 = _mm512_inserti64x4(_mm512_set1_epi8(0x0C), _mm256_set1_epi8(0x03), 1);
        let blocks = rows[0].len() / 32;
        let zero = _mm512_setzero_si512();
        let mut acc = [[[(zero, zero); U]; T]; R];
        // Block `b`, into accumulator set `u`: each row's codes are decoded once, each token's
        // activations loaded once and used by every row.
        let block = |acc: &mut [[[Acc; U]; T]; R], b: usize, u: usize| {
            let c: [(__m512i, __m512i); R] = std::array::from_fn(|r| {
                let p = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    rows[r].as_ptr().add(b * 32) as *const __m256i
                ));
                (_mm512_and_si512(p, m01), _mm512_and_si512(p, m23))
            });
            for t in 0..T {
                let x = q[t].as_ptr().add(b * 128);
                let x0 = _mm512_loadu_si512(x as *const _);
                let x1 = _mm512_loadu_si512(x.add(64) as *const _);
                for r in 0..R {
                    let a = &mut acc[r][t][u];
                    a.0 = _mm512_dpbusd_epi32(a.0, c[r].0, x0);
                    a.1 = _mm512_dpbusd_epi32(a.1, c[r].1, x1);
                }
            }
        };
        let mut b = 0;
        while b + U <= blocks {
            for row in rows {
                _mm_prefetch::<_MM_HINT_T0>(
                    row.as_ptr().wrapping_add(b * 32 + PREFETCH) as *const i8
                );
            }
            for u in 0..U {
                block(&mut acc, b + u, u);
            }
            b += U;
        }
        while b < blocks {
            block(&mut acc, b, 0);
            b += 1;
        }
        // Plain loops (closures passed to `map` may not inline into this function's features).
        let mut sums = [[zero; T]; R];
        for r in 0..R {
            for t in 0..T {
                for u in 0..U {
                    sums[r][t] = _mm512_add_epi32(sums[r][t], total(acc[r][t][u]));
                }
            }
        }
        sums
    }

    /// The exact sum `D = sum code_j * q_j` of one row.
    ///
    /// # Safety
    /// The CPU must support the features of [`available`]; `row.len() * 4 == q.len()`, a
    /// multiple of 128 elements, at most [`MAX_BLOCKS`] blocks.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_codes(row: &[u8], q: &[i8]) -> i32 {
        debug_assert_eq!(row.len() * 4, q.len());
        _mm512_reduce_add_epi32(acc::<1, 1, 2>([row], [q])[0][0])
    }

    /// Four lane-sum vectors reduced at once: `[D0, D1, D2, D3]` (each folded to eight lanes,
    /// then the AVX2 kernel's reduction).
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn hsum4(acc: [__m512i; 4]) -> [i32; 4] {
        // Plain code, not `map` with a closure (which may not inline into these features).
        let mut half = [_mm256_setzero_si256(); 4];
        for (h, a) in half.iter_mut().zip(acc) {
            *h = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
        }
        let mut d = [0i32; 4];
        _mm_storeu_si128(d.as_mut_ptr() as *mut __m128i, super::avx2::hsum4(half));
        d
    }

    /// The format's AVX-512 kernel: [`rows`] for rows within its i32 bound, else the AVX2
    /// loop (counted under this kernel's id all the same).
    ///
    /// # Safety
    /// As [`super::super::format::RowsFn`].
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn rows_of(p: &super::Product, range: std::ops::Range<usize>, out: *mut f32) {
        // SAFETY: the CPU has AVX-512 (the kernel table's isa); rows within the bound.
        unsafe {
            if p.cols / super::BLOCK <= MAX_BLOCKS {
                rows(p.w, p.row_bytes, range, p.acts, p.w_scale, out, p.rows)
            } else {
                super::avx2::rows(p.w, p.row_bytes, range, p.acts, p.w_scale, out, p.rows)
            }
        }
    }

    /// As [`super::avx2::rows`]: rows `rows` of a packed matrix against every token row of
    /// `acts`, finished as [`super::finish`] does, `out[t * out_rows + r]`; row tiles of
    /// about 16 KiB, tokens in groups of four (two rows at a time), the rest one by one.
    ///
    /// # Safety
    /// The CPU must support the features of [`available`]; rows have at most [`MAX_BLOCKS`]
    /// blocks; the rest as [`super::avx2::rows`].
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn rows(
        w: &[u8],
        row_bytes: usize,
        rows: std::ops::Range<usize>,
        acts: &[super::QuantRow],
        w_scale: f32,
        out: *mut f32,
        out_rows: usize,
    ) {
        debug_assert!(row_bytes / 32 <= MAX_BLOCKS);
        let n = acts.len();
        let row = |r: usize| &w[r * row_bytes..(r + 1) * row_bytes];
        let put = |t: usize, r: usize, d: i32| {
            *out.add(t * out_rows + r) = super::finish(d, &acts[t], w_scale);
        };
        let tile = (TILE_BYTES / row_bytes.max(1)).max(2);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = rows.end.min(r0 + tile);
            let mut t = 0;
            while t + 4 <= n {
                let q: [&[i8]; 4] = std::array::from_fn(|j| &acts[t + j].q[..]);
                let mut r = r0;
                while r + 2 <= r1 {
                    let [a, b] = acc::<2, 4, 1>([row(r), row(r + 1)], q);
                    for (k, d) in [(r, hsum4(a)), (r + 1, hsum4(b))] {
                        for (j, d) in d.into_iter().enumerate() {
                            put(t + j, k, d);
                        }
                    }
                    r += 2;
                }
                if r < r1 {
                    for (j, d) in hsum4(acc::<1, 4, 1>([row(r)], q)[0])
                        .into_iter()
                        .enumerate()
                    {
                        put(t + j, r, d);
                    }
                }
                t += 4;
            }
            for (t, a) in acts.iter().enumerate().skip(t) {
                for r in r0..r1 {
                    put(t, r, dot_codes(row(r), &a.q));
                }
            }
            r0 = r1;
        }
    }
}
