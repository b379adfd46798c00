//! TL2, BitNet.cpp's x86 lookup-table layout, computed here for any tiling, any shape the
//! layout can express and any number of tokens (the reference generates code per shape, and its
//! GEMM ignores the batch index, so it is wrong for 8 or more tokens).
//!
//! The layout, as the reference's converter writes it for a kernel config of BM rows by BK
//! columns (the tiling is not in the tensor; see [`TILES_KEY`]):
//! - The first K3 = K - K mod BK columns go in groups of three, v = 9 w0 + 3 w1 + w2 (-13..=13):
//!   |v| is a 4-bit index and the sign of v one bit. The last K2 = K mod BK columns (a multiple
//!   of 32) go in pairs, v = 3 w0 + w1 + 4 (0..=8), 4 bits.
//! - Three regions follow each other: the indices (M K3 / 6 bytes), the sign bits (M K3 / 24)
//!   and the pairs (M K2 / 4). Each region is a run of 32-byte units with one byte per row of a
//!   32-row subtile; units go M-tile (BM rows) outermost, then K-tile (BK columns, 32 for pairs),
//!   then subtile, then position within the K-tile. A byte holds two groups, the first in the
//!   high nibble. Within a unit the 8-byte quarters are stored in the order 0, 2, 1, 3.
//! - A sign unit holds 8 groups of 32 rows as sixteen little-endian u16 words: group j, row
//!   r is bit 15 - (2 j + r / 16) of word r % 16; set means negative.
//! - Zero padding up to the size ggml computes for TL2 ([`tensor_bytes`]); the f32 scale is a
//!   separate one-element tensor `<name>_scale`.
//!
//! Indices the layout never produces (14 and 15 for groups, 9..=15 for pairs) count as zero,
//! as in the reference's tables. A product is the exact integer D = sum w q against the
//! int8 activations, finished as I2_S does, so a TL2 matrix gives the bits an I2_S matrix of the
//! same weights gives.
//!
//! Length: one file on purpose (~650 lines): the layout's addressing, packer, scalar decoder and
//! AVX2 kernel all follow the same byte order and are only checkable side by side.

use super::format::{Format, Kernel, Kind, Packing, Product};
use super::matmul::Isa;
use super::{FormatError, QuantRow};

/// TL2's behaviour: groups of three weights as 4-bit table indices plus a sign bit, in tiles
/// whose shape the file records; scalar and AVX2 lookup-table kernels. Its rows cannot be
/// read without the tiling (see `matmul::Weight`), and its scale is a tensor of its own.
pub static FORMAT: Format = Format {
    kind: Kind::Ternary,
    family: "tl2",
    row_multiple: Some(SUBTILE as u64),
    tensor_bytes: Some(tensor_bytes),
    row_bytes: Some(|cols| cols / 4),
    dequantize_row: None,
    kernels: &[
        Kernel {
            isa: Isa::Scalar,
            gemv: "tl2_gemv_scalar",
            gemm: "tl2_gemm_scalar",
            rows: rows_scalar,
        },
        #[cfg(target_arch = "x86_64")]
        Kernel {
            isa: Isa::Avx2,
            gemv: "tl2_gemv_avx2",
            gemm: "tl2_gemm_avx2",
            rows: avx2::rows_of,
        },
    ],
    packing: Some(Packing {
        multiple: 1,
        file_type: 39,
        scale_tensor: true,
        pack: |t| {
            pack(
                &t.values,
                t.rows,
                t.cols,
                Tiling::for_shape(t.rows, t.cols)?,
            )
        },
    }),
    all_finite: None,
};

/// The scalar reference kernel: each row decoded, then the exact integer dot per token.
///
/// # Safety
/// As [`super::format::RowsFn`]; `p.tl2` is the tensor's layout.
unsafe fn rows_scalar(p: &Product, range: std::ops::Range<usize>, out: *mut f32) {
    let l = p.tl2.expect("a TL2 product carries its layout");
    let mut scratch = Vec::new();
    for r in range {
        for (t, a) in p.acts.iter().enumerate() {
            let d = dot(p.w, l, r, &a.q, &mut scratch);
            // SAFETY: `out` holds `n * rows` floats and this task owns row `r` (caller).
            unsafe { *out.add(t * p.rows + r) = finish(d, a, p.w_scale) };
        }
    }
}

/// Metadata key with the tiling of every TL2 shape in a file: `[M, K, BM, BK]` per shape, the
/// content of the reference's `kernel_config.ini`.
pub const TILES_KEY: &str = "bitnet.tl2.tiles";

/// Rows per subtile (the reference's `bmm`).
pub const SUBTILE: usize = 32;
/// Columns per K-tile of the pair region.
const PAIR_TILE: usize = 32;
/// Storage order of the 8-byte quarters of a unit (an involution).
const QUARTERS: [usize; 4] = [0, 2, 1, 3];

/// A TL2 matrix's tiling: BM rows by BK columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub bm: usize,
    pub bk: usize,
}

impl Tiling {
    /// The tiling this engine writes: BK = 96 (the reference's usual choice), BM the largest
    /// multiple of 32 up to 256 that divides the row count.
    pub fn for_shape(rows: usize, cols: usize) -> Result<Tiling, FormatError> {
        let bm = (1..=8)
            .rev()
            .map(|i| i * SUBTILE)
            .find(|bm| rows.is_multiple_of(*bm))
            .unwrap_or(SUBTILE);
        let t = Tiling { bm, bk: 96 };
        Layout::new(rows, cols, t)?;
        Ok(t)
    }
}

/// Where everything of one TL2 matrix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub tiling: Tiling,
    /// Columns in groups of three.
    pub k3: usize,
    sign_at: usize,
    pair_at: usize,
    end: usize,
}

impl Layout {
    pub fn new(rows: usize, cols: usize, tiling: Tiling) -> Result<Layout, FormatError> {
        let Tiling { bm, bk } = tiling;
        let bad = |why: &'static str| FormatError::BadTiling {
            rows,
            cols,
            bm,
            bk,
            why,
        };
        if bm == 0 || !bm.is_multiple_of(SUBTILE) || !rows.is_multiple_of(bm) || rows == 0 {
            return Err(bad("BM must be a multiple of 32 that divides the rows"));
        }
        if bk == 0 || !bk.is_multiple_of(24) {
            return Err(bad("BK must be a multiple of 24"));
        }
        if cols == 0 || !(cols % bk).is_multiple_of(PAIR_TILE) {
            return Err(bad("columns mod BK must be a multiple of 32"));
        }
        let k3 = cols - cols % bk;
        let sign_at = rows * k3 / 6;
        let pair_at = sign_at + rows * k3 / 24;
        let end = pair_at + rows * (cols - k3) / 4;
        if end as u64 > tensor_bytes(rows as u64, cols as u64) - 32 {
            return Err(bad("at most 256 columns may be left over from the K-tiles"));
        }
        Ok(Layout {
            rows,
            cols,
            tiling,
            k3,
            sign_at,
            pair_at,
            end,
        })
    }

    fn unit_pos(row32: usize) -> usize {
        QUARTERS[row32 / 8] * 8 + row32 % 8
    }

    /// Index of the unit of row `r` at unit-in-tile `u` of K-tile `kt`, with `kts` K-tiles and
    /// `per_tile` units per (K-tile, subtile).
    fn unit(&self, r: usize, kt: usize, kts: usize, per_tile: usize, u: usize) -> usize {
        let bm = self.tiling.bm;
        let (mt, st) = (r / bm, r % bm / SUBTILE);
        ((mt * kts + kt) * (bm / SUBTILE) + st) * per_tile + u
    }

    /// Byte and shift of the index of group `g` (columns 3g..3g+3) of row `r`.
    fn index_at(&self, r: usize, g: usize) -> (usize, u32) {
        let per = self.tiling.bk / 3;
        let (kt, gg) = (g / per, g % per);
        let u = self.unit(r, kt, self.k3 / self.tiling.bk, per / 2, gg / 2);
        let shift = if gg.is_multiple_of(2) { 4 } else { 0 };
        (u * 32 + Self::unit_pos(r % SUBTILE), shift)
    }

    /// Byte and bit of the sign of group `g` of row `r`.
    fn sign_at(&self, r: usize, g: usize) -> (usize, u32) {
        let per = self.tiling.bk / 3;
        let (kt, gg) = (g / per, g % per);
        let u = self.unit(r, kt, self.k3 / self.tiling.bk, per / 8, gg / 8);
        let row32 = r % SUBTILE;
        let bit = 15 - (2 * (gg % 8) + row32 / 16) as u32;
        let word = self.sign_at + u * 32 + (row32 % 16) * 2;
        (word + (bit / 8) as usize, bit % 8)
    }

    /// Byte and shift of pair `p` (columns k3 + 2p, k3 + 2p + 1) of row `r`.
    fn pair_at(&self, r: usize, p: usize) -> (usize, u32) {
        let per = PAIR_TILE / 2;
        let (kt, pp) = (p / per, p % per);
        let kts = (self.cols - self.k3) / PAIR_TILE;
        let u = self.unit(r, kt, kts, per / 2, pp / 2);
        let shift = if pp.is_multiple_of(2) { 4 } else { 0 };
        (self.pair_at + u * 32 + Self::unit_pos(r % SUBTILE), shift)
    }

    /// Bytes of one token's lookup tables ([`build_luts`]).
    pub fn lut_bytes(&self) -> usize {
        (self.k3 / 3 + (self.cols - self.k3) / 2) * 32
    }
}

/// Byte size of a TL2 tensor of `rows` x `cols`: ggml's formula, which is
/// `(K - 256) M / 3 * 5 / 8  +  256 M / 2 * 4 / 8` rounded up to 32, plus 32. Below 256 columns, where the formula means
/// nothing, every column counted as pairs (4 bits per 2 weights, the most any tiling needs).
pub fn tensor_bytes(rows: u64, cols: u64) -> u64 {
    let data = if cols >= 256 {
        (cols - 256) * rows / 3 * 5 / 8 + 256 * rows / 2 * 4 / 8
    } else {
        rows * cols / 4
    };
    data.next_multiple_of(32) + 32
}

/// The weights of group index `n` (|v| of v = 9 w0 + 3 w1 + w2); zero for 14 and 15.
fn three(n: u8) -> [i8; 3] {
    if n > 13 {
        return [0; 3];
    }
    let n = n as i8;
    let w2 = (n + 1).rem_euclid(3) - 1;
    let m = (n - w2) / 3;
    let w1 = (m + 1).rem_euclid(3) - 1;
    [(m - w1) / 3, w1, w2]
}

/// The weights of pair index `n` (v = 3 w0 + w1 + 4); zero for 9..=15.
fn two(n: u8) -> [i8; 2] {
    if n > 8 {
        return [0; 2];
    }
    [(n / 3) as i8 - 1, (n % 3) as i8 - 1]
}

fn ternary(v: i8) -> Result<i8, FormatError> {
    if (-1..=1).contains(&v) {
        Ok(v)
    } else {
        Err(FormatError::NotTernary(v))
    }
}

/// Packs row-major ternary values into TL2 with the given tiling, padded to [`tensor_bytes`].
pub fn pack(
    values: &[i8],
    rows: usize,
    cols: usize,
    tiling: Tiling,
) -> Result<Vec<u8>, FormatError> {
    let l = Layout::new(rows, cols, tiling)?;
    if values.len() != rows * cols {
        return Err(FormatError::WrongSize {
            ty: "TL2",
            rows,
            cols,
            got: values.len(),
            expected: rows * cols,
            row_stride: cols,
        });
    }
    let mut out = vec![0u8; tensor_bytes(rows as u64, cols as u64) as usize];
    for r in 0..rows {
        let row = &values[r * cols..(r + 1) * cols];
        for g in 0..l.k3 / 3 {
            let w = &row[3 * g..3 * g + 3];
            let v = 9 * ternary(w[0])? + 3 * ternary(w[1])? + ternary(w[2])?;
            let (at, shift) = l.index_at(r, g);
            out[at] |= v.unsigned_abs() << shift;
            if v < 0 {
                let (at, bit) = l.sign_at(r, g);
                out[at] |= 1 << bit;
            }
        }
        for p in 0..(cols - l.k3) / 2 {
            let w = &row[l.k3 + 2 * p..l.k3 + 2 * p + 2];
            let v = 3 * ternary(w[0])? + ternary(w[1])? + 4;
            let (at, shift) = l.pair_at(r, p);
            out[at] |= (v as u8) << shift;
        }
    }
    Ok(out)
}

/// Row `r`'s ternary values (the scalar reference decoder).
pub fn decode_row(w: &[u8], l: &Layout, r: usize, out: &mut [i8]) {
    for g in 0..l.k3 / 3 {
        let (at, shift) = l.index_at(r, g);
        let (sat, bit) = l.sign_at(r, g);
        let neg = (w[sat] >> bit) & 1 == 1;
        for (o, v) in out[3 * g..3 * g + 3]
            .iter_mut()
            .zip(three((w[at] >> shift) & 15))
        {
            *o = if neg { -v } else { v };
        }
    }
    for p in 0..(l.cols - l.k3) / 2 {
        let (at, shift) = l.pair_at(r, p);
        let c = l.k3 + 2 * p;
        out[c..c + 2].copy_from_slice(&two((w[at] >> shift) & 15));
    }
}

/// Scalar reference product of row `r` with int8 activations: D = sum w q, exactly.
pub fn dot(w: &[u8], l: &Layout, r: usize, q: &[i8], scratch: &mut Vec<i8>) -> i32 {
    scratch.resize(l.cols, 0);
    decode_row(w, l, r, scratch);
    scratch
        .iter()
        .zip(q)
        .map(|(&w, &q)| w as i32 * q as i32)
        .sum()
}

/// The reference epilogue, in the same operations as I2_S's ([`super::i2s::finish`]) on
/// D + S, so TL2 and I2_S give the same bits for the same weights.
#[inline]
pub fn finish(d: i32, act: &QuantRow, w_scale: f32) -> f32 {
    super::i2s::finish(d + act.sum, act, w_scale)
}

/// The tokens of a product as the TL2 kernels take them: the quantized rows and, for the
/// AVX2 kernel, their lookup tables ([`build_luts`], one [`Layout::lut_bytes`] set per row).
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    pub acts: &'a [QuantRow],
    pub luts: &'a [u8],
}

/// Appends one token's lookup tables to `out` ([`Layout::lut_bytes`] bytes): for each group of
/// three activations, then each pair, the 16 sums sum w q an index stands for, as 16-bit values
/// split into 16 low bytes then 16 high bytes (what `pshufb` looks up).
pub fn build_luts(q: &[i8], k3: usize, out: &mut Vec<u8>) {
    let mut table = |sums: [i16; 16]| {
        out.extend(sums.iter().map(|s| *s as u16 as u8));
        out.extend(sums.iter().map(|s| (*s as u16 >> 8) as u8));
    };
    for g in q[..k3].chunks_exact(3) {
        table(std::array::from_fn(|n| {
            let w = three(n as u8);
            (0..3).map(|i| w[i] as i16 * g[i] as i16).sum()
        }));
    }
    for p in q[k3..].chunks_exact(2) {
        table(std::array::from_fn(|n| {
            let w = two(n as u8);
            w[0] as i16 * p[0] as i16 + w[1] as i16 * p[1] as i16
        }));
    }
}

/// The AVX2 lookup-table kernel: for each 32-row subtile and token, `pshufb` looks up the
/// 16-bit sums of each group in the token's tables (low and high bytes), signs them, and adds
/// them in 16 bits over one K-tile (at most 32 groups of |sum| <= 384 per BK = 96; wider
/// tiles are summed in 16 bits 32 groups at a time), then in 32 bits.
///
/// Loops follow the layout: K-tile outer, then the subtiles of a window of up to 8 within one
/// M-tile, which lie one after another in memory, so the weights stream.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::{Layout, PAIR_TILE, SUBTILE};
    use std::arch::x86_64::*;

    /// How far ahead of the indices being read to prefetch (bytes; the signs, a quarter as
    /// many, a quarter as far).
    const AHEAD: usize = 2048;

    /// Subtiles per pass (their 32-bit sums stay in L1).
    const WINDOW: usize = 8;
    /// Tokens per pass.
    const TOKENS: usize = 4;
    /// Groups summed in 16 bits before widening: a group adds at most 3 * 128 = 384 in
    /// magnitude, so up to 85 would fit; 32 is one K-tile of BK = 96.
    const WIDEN_GROUPS: usize = 32;

    /// TL2's AVX2 kernel: [`rows`] on the product's tables.
    ///
    /// # Safety
    /// As [`super::super::format::RowsFn`]; `p.tl2` is the tensor's layout and `p.luts` were
    /// built for `p.acts` with its K3.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn rows_of(p: &super::Product, range: std::ops::Range<usize>, out: *mut f32) {
        let l = p.tl2.expect("a TL2 product carries its layout");
        let tokens = super::Tokens {
            acts: p.acts,
            luts: p.luts,
        };
        // SAFETY: forwarded from the caller.
        unsafe { rows(p.w, l, range, tokens, p.w_scale, out) }
    }

    /// Products of the subtiles in `rows` (32-row aligned) with every token, finished:
    /// `out[t * l.rows + r]`.
    ///
    /// # Safety
    /// The CPU must support AVX2; `w` is a TL2 tensor with layout `l`; the tables were built
    /// for the tokens with `l.k3`; `out` points to `tokens.acts.len() * l.rows` floats of which
    /// no other thread writes the rows in `rows`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rows(
        w: &[u8],
        l: &Layout,
        rows: std::ops::Range<usize>,
        tokens: super::Tokens,
        w_scale: f32,
        out: *mut f32,
    ) {
        let (acts, luts) = (tokens.acts, tokens.luts);
        debug_assert!(rows.start.is_multiple_of(SUBTILE) && rows.end.is_multiple_of(SUBTILE));
        debug_assert_eq!(luts.len(), acts.len() * l.lut_bytes());
        let (lb, bm, n) = (l.lut_bytes(), l.tiling.bm, acts.len());
        let mut r = rows.start;
        while r < rows.end {
            let r1 = rows.end.min((r / bm + 1) * bm).min(r + WINDOW * SUBTILE);
            let subtiles = (r1 - r) / SUBTILE;
            for t0 in (0..n).step_by(TOKENS) {
                let tn = TOKENS.min(n - t0);
                let lut = |j: usize| luts.as_ptr().add((t0 + j) * lb);
                let mut acc = [[[0i32; SUBTILE]; TOKENS]; WINDOW];
                for kt in 0..l.k3 / l.tiling.bk {
                    for (s, acc) in acc.iter_mut().enumerate().take(subtiles) {
                        for (j, acc) in acc.iter_mut().enumerate().take(tn) {
                            three_tile(w, l, r + s * SUBTILE, kt, lut(j), acc);
                        }
                    }
                }
                for kt in 0..(l.cols - l.k3) / PAIR_TILE {
                    for (s, acc) in acc.iter_mut().enumerate().take(subtiles) {
                        for (j, acc) in acc.iter_mut().enumerate().take(tn) {
                            pair_tile(w, l, r + s * SUBTILE, kt, lut(j), acc);
                        }
                    }
                }
                for (s, acc) in acc.iter().enumerate().take(subtiles) {
                    for (j, acc) in acc.iter().enumerate().take(tn) {
                        let (t, a) = (t0 + j, &acts[t0 + j]);
                        let o = out.add(t * l.rows + r + s * SUBTILE);
                        for (i, &d) in acc.iter().enumerate() {
                            *o.add(i) = super::finish(d, a, w_scale);
                        }
                    }
                }
            }
            r = r1;
        }
    }

    /// Adds 16-bit sums of rows 0..16 and 16..32 (`c0`, `c1`) into the 32-bit `acc`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn widen(acc: &mut [i32; SUBTILE], c0: __m256i, c1: __m256i) {
        let parts = [
            _mm256_castsi256_si128(c0),
            _mm256_extracti128_si256(c0, 1),
            _mm256_castsi256_si128(c1),
            _mm256_extracti128_si256(c1, 1),
        ];
        for (i, p) in parts.into_iter().enumerate() {
            let a = acc.as_mut_ptr().add(i * 8) as *mut __m256i;
            _mm256_storeu_si256(
                a,
                _mm256_add_epi32(_mm256_loadu_si256(a), _mm256_cvtepi16_epi32(p)),
            );
        }
    }

    /// The 16-bit sums a unit's 32 indices (`idx`, already masked to 4 bits) stand for in the
    /// table at `lut`: rows 0..16 and rows 16..32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn look_up(lut: *const u8, idx: __m256i) -> (__m256i, __m256i) {
        let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(lut as *const __m128i));
        let hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(lut.add(16) as *const __m128i));
        let (l, h) = (_mm256_shuffle_epi8(lo, idx), _mm256_shuffle_epi8(hi, idx));
        // The quarter order 0, 2, 1, 3 puts rows 0..16 in the low halves of the lanes.
        (_mm256_unpacklo_epi8(l, h), _mm256_unpackhi_epi8(l, h))
    }

    /// Adds K-tile `kt` of the group region times one token (tables at `lut`) into the sums
    /// of the subtile starting at row `r0`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn three_tile(
        w: &[u8],
        l: &Layout,
        r0: usize,
        kt: usize,
        lut: *const u8,
        acc: &mut [i32; SUBTILE],
    ) {
        let nib = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi16(1);
        let groups = l.tiling.bk / 3;
        let g0 = kt * groups;
        let idx_unit = w.as_ptr().add(l.index_at(r0, g0).0 & !31);
        let sign_unit = w.as_ptr().add(l.sign_at(r0, g0).0 & !31);
        for w0 in (0..groups).step_by(WIDEN_GROUPS) {
            let (mut c0, mut c1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for c8 in w0 / 8..(w0 + WIDEN_GROUPS).min(groups) / 8 {
                _mm_prefetch::<_MM_HINT_T0>(
                    sign_unit.wrapping_add(c8 * 32 + AHEAD / 4) as *const i8
                );
                let signs = _mm256_loadu_si256(sign_unit.add(c8 * 32) as *const __m256i);
                // Sign bit 15 - i moved to bit 15; `| 1` keeps `sign` from zeroing a value.
                let s =
                    |i: i32| _mm256_or_si256(_mm256_sll_epi16(signs, _mm_cvtsi32_si128(i)), one);
                for j2 in 0..4 {
                    let at = (c8 * 4 + j2) * 32;
                    _mm_prefetch::<_MM_HINT_T0>(idx_unit.wrapping_add(at + AHEAD) as *const i8);
                    let a = _mm256_loadu_si256(idx_unit.add(at) as *const __m256i);
                    let g = g0 + c8 * 8 + j2 * 2;
                    let i = (j2 * 4) as i32;
                    let top = _mm256_and_si256(_mm256_srli_epi16(a, 4), nib);
                    let (x0, x1) = look_up(lut.add(g * 32), top);
                    c0 = _mm256_add_epi16(c0, _mm256_sign_epi16(x0, s(i)));
                    c1 = _mm256_add_epi16(c1, _mm256_sign_epi16(x1, s(i + 1)));
                    let (x0, x1) = look_up(lut.add((g + 1) * 32), _mm256_and_si256(a, nib));
                    c0 = _mm256_add_epi16(c0, _mm256_sign_epi16(x0, s(i + 2)));
                    c1 = _mm256_add_epi16(c1, _mm256_sign_epi16(x1, s(i + 3)));
                }
            }
            widen(acc, c0, c1);
        }
    }

    /// Adds K-tile `kt` of the pair region (32 columns) times one token into the sums of the
    /// subtile starting at row `r0`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair_tile(
        w: &[u8],
        l: &Layout,
        r0: usize,
        kt: usize,
        lut: *const u8,
        acc: &mut [i32; SUBTILE],
    ) {
        let nib = _mm256_set1_epi8(0x0f);
        let pair_lut = lut.add(l.k3 / 3 * 32);
        let p0 = kt * PAIR_TILE / 2;
        let unit = w.as_ptr().add(l.pair_at(r0, p0).0 & !31);
        let (mut c0, mut c1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for u in 0..PAIR_TILE / 4 {
            let a = _mm256_loadu_si256(unit.add(u * 32) as *const __m256i);
            let p = p0 + u * 2;
            let top = _mm256_and_si256(_mm256_srli_epi16(a, 4), nib);
            let (x0, x1) = look_up(pair_lut.add(p * 32), top);
            c0 = _mm256_add_epi16(c0, x0);
            c1 = _mm256_add_epi16(c1, x1);
            let (x0, x1) = look_up(pair_lut.add((p + 1) * 32), _mm256_and_si256(a, nib));
            c0 = _mm256_add_epi16(c0, x0);
            c1 = _mm256_add_epi16(c1, x1);
        }
        widen(acc, c0, c1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn group_and_pair_indices_decode_to_their_weights() {
        for w0 in -1i8..=1 {
            for w1 in -1i8..=1 {
                for w2 in -1i8..=1 {
                    let v = 9 * w0 + 3 * w1 + w2;
                    let d = three(v.unsigned_abs());
                    let d = if v < 0 { d.map(|x| -x) } else { d };
                    assert_eq!(d, [w0, w1, w2]);
                }
                assert_eq!(two((3 * w0 + w1 + 4) as u8), [w0, w1]);
            }
        }
    }

    /// The bytes BitNet.cpp's converter writes. Expected digest: `preprocess_weights_tl2` from
    /// bitnet-cpp-sys 0.0.5's `utils/convert-hf-to-gguf-bitnet.py` run (numpy) on this matrix with
    /// a kernel_config.ini of m = 128, k = 352, bm = 64, bk = 96, bmm = 32; its output (10752
    /// bytes) plus ggml's 32 bytes of padding, hashed with sha256.
    #[test]
    fn packing_matches_bitnet_cpp_converter_byte_for_byte() {
        let (rows, cols) = (128, 352);
        let v: Vec<i8> = (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                ((r * 31 + c * 17 + (r * c) % 7) % 3) as i8 - 1
            })
            .collect();
        let bytes = pack(&v, rows, cols, Tiling { bm: 64, bk: 96 }).unwrap();
        assert_eq!(bytes.len(), 10752 + 32);
        assert_eq!(
            crate::receipt::sha256_hex(&bytes),
            "7b35f09df286000e537a7fb7f8ceb89ea128ea2ed5acdc14f00c442e464cbdf9"
        );
    }

    /// A shape the layout can express, a tiling for it, and ternary values.
    fn matrix() -> impl Strategy<Value = (usize, usize, Tiling, Vec<i8>)> {
        (1usize..=4, 1usize..=3, 0usize..=6, 0usize..3, 1usize..=2)
            .prop_filter("no columns", |(_, _, kt, tail, _)| kt + tail > 0)
            .prop_flat_map(|(subtiles, tiles_m, kt, tail, bk96)| {
                let bm = subtiles * SUBTILE;
                let bk = bk96 * 96;
                let rows = bm * tiles_m;
                // Whole K-tiles plus 0, 32 or 64 columns of pairs.
                let cols = kt * bk + tail * 32;
                let n = rows * cols;
                (
                    Just(rows),
                    Just(cols),
                    Just(Tiling { bm, bk }),
                    prop::collection::vec(-1i8..=1, n),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn pack_then_decode_gives_the_values((rows, cols, t, v) in matrix()) {
            let bytes = pack(&v, rows, cols, t).unwrap();
            prop_assert_eq!(bytes.len() as u64, tensor_bytes(rows as u64, cols as u64));
            let l = Layout::new(rows, cols, t).unwrap();
            prop_assert!(l.end <= bytes.len());
            let mut row = vec![0i8; cols];
            for r in 0..rows {
                decode_row(&bytes, &l, r, &mut row);
                prop_assert_eq!(&row[..], &v[r * cols..(r + 1) * cols]);
            }
        }
    }
}
