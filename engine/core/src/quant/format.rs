//! What a computable tensor format does, in one row per format (ggml's type traits with the
//! behaviour in the row): its geometry where the block table's arithmetic does not fit, how a
//! row dequantizes, its kernels per instruction set, and how the converter packs ternary
//! weights into it. Each format module (`i2s`, `tq`, `tl2`, `float`) defines its [`Format`]
//! rows; [`super::TYPES`] points at them, and everything else is derived from the rows: the
//! kernel table receipts are audited against ([`kernels`]), which instruction set computes a
//! type ([`Format::kernel`]), the converter's weight formats ([`ternary_targets`]) and the
//! kernel family of a tensor type ([`Format::family`]).
//!
//! Adding a format = one module with its `Format` row + one line in [`super::TYPES`].

use super::matmul::Isa;
use super::{tl2, FormatError, QuantRow, TensorType, TYPES};

/// Everything a kernel needs to compute some rows of one product `out[t][r] = W[r] . x[t]`.
pub struct Product<'a> {
    /// The whole tensor, as stored.
    pub w: &'a [u8],
    /// Bytes of one row ([`TensorType::row_bytes`]).
    pub row_bytes: usize,
    /// Rows of the weight (= the output row stride).
    pub rows: usize,
    pub cols: usize,
    /// `n` token rows of `cols` f32 activations (float formats).
    pub x: &'a [f32],
    pub n: usize,
    /// The same tokens quantized to int8 (ternary formats; empty for float ones).
    pub acts: &'a [QuantRow],
    /// TL2's lookup tables of the tokens (empty otherwise).
    pub luts: &'a [u8],
    /// The per-tensor weight scale (1.0 where the format has none).
    pub w_scale: f32,
    /// TL2's layout (None otherwise).
    pub tl2: Option<&'a tl2::Layout>,
}

impl Product<'_> {
    /// The stored bytes of row `r` (formats with rows of their own).
    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        &self.w[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// Token `t`'s f32 activations.
    #[inline]
    pub fn x_row(&self, t: usize) -> &[f32] {
        &self.x[t * self.cols..(t + 1) * self.cols]
    }
}

/// A kernel: writes `out[t * p.rows + r]` for every token `t` and every row `r` in `range`.
///
/// # Safety
/// The CPU has the kernel's instruction set; `out` points to `p.n * p.rows` floats of which no
/// other thread writes the rows in `range`; `p` was made for this format from a size-checked
/// tensor.
pub type RowsFn = unsafe fn(p: &Product, range: std::ops::Range<usize>, out: *mut f32);

/// Writes row `r` of a (size-checked) tensor of rows of `cols` as f32 into `out`.
pub type DequantizeRowFn = fn(tensor: &[u8], r: usize, cols: usize, out: &mut [f32]);

/// One implementation of a format's product.
pub struct Kernel {
    pub isa: Isa,
    /// Ids under which a one-token product (gemv) and a several-token one (gemm) are counted.
    pub gemv: &'static str,
    pub gemm: &'static str,
    pub rows: RowsFn,
}

/// How the weights of a format take part in a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Multiplied in f32 against unquantized activations.
    Float,
    /// Ternary codes multiplied against int8-quantized activations.
    Ternary,
    /// Known to the reader (so a file can be inspected) but not computable here.
    Unsupported,
}

/// How the converter writes ternary weights in a format.
pub struct Packing {
    /// Columns must be a multiple of this (TL2 checks its own tiling).
    pub multiple: usize,
    /// llama.cpp's `general.file_type` for a model stored in this format.
    pub file_type: u32,
    /// The scale goes in its own one-element F32 tensor `<name>_scale` (TL2).
    pub scale_tensor: bool,
    pub pack: fn(&Ternary) -> Result<Vec<u8>, FormatError>,
}

/// A ternary matrix (values -1/0/+1, row-major rows x cols) with one scale.
#[derive(Clone, Debug)]
pub struct Ternary {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<i8>,
    pub scale: f32,
}

/// The behaviour of one computable format.
pub struct Format {
    pub kind: Kind,
    /// The kernel-id prefix and receipt family (`i2s`, `tq2_0`, ...).
    pub family: &'static str,
    /// Columns must be a multiple of this; None: the block size of the type table.
    pub row_multiple: Option<u64>,
    /// Byte size of a `rows x cols` tensor where it is not whole blocks (I2_S's trailer,
    /// TL2's tiles).
    pub tensor_bytes: Option<fn(rows: u64, cols: u64) -> u64>,
    /// Bytes of one row of `cols` where it is not whole blocks (TL2 has no rows of its own:
    /// its average).
    pub row_bytes: Option<fn(cols: usize) -> usize>,
    /// Row `r` of a (size-checked) tensor in f32; None: needs more than the bytes (TL2's
    /// tiling, see `matmul::Weight::dequantize_row`).
    pub dequantize_row: Option<DequantizeRowFn>,
    /// Implementations, scalar first, each on a wider instruction set than the one before.
    pub kernels: &'static [Kernel],
    /// How the converter writes ternary weights in this format (None: it does not).
    pub packing: Option<Packing>,
    /// Whether every value a (size-checked) tensor stores is a finite number; None: the format
    /// cannot store a non-finite weight (ternary codes; their scale is checked on its own).
    pub all_finite: Option<fn(tensor: &[u8]) -> bool>,
}

impl Format {
    /// A row with the type table's block geometry and no converter packing (the common case;
    /// override the rest with struct update syntax).
    pub const fn new(
        kind: Kind,
        family: &'static str,
        dequantize_row: Option<DequantizeRowFn>,
        kernels: &'static [Kernel],
    ) -> Format {
        Format {
            kind,
            family,
            row_multiple: None,
            tensor_bytes: None,
            row_bytes: None,
            dequantize_row,
            kernels,
            packing: None,
            all_finite: None,
        }
    }

    /// The kernel that computes a product when `isa` is asked for: the widest one not above
    /// `isa` that this CPU runs.
    pub fn kernel(&self, isa: Isa) -> &Kernel {
        let isa = isa.min(Isa::detect());
        self.kernels
            .iter()
            .rev()
            .find(|k| k.isa <= isa)
            .unwrap_or(&self.kernels[0])
    }
}

/// The scalar reference's row loop, for formats whose kernel is a dot product per row and
/// token: `dot(row bytes, token index)`.
///
/// # Safety
/// As [`RowsFn`].
#[inline(always)]
pub unsafe fn each_row_and_token(
    p: &Product,
    range: std::ops::Range<usize>,
    out: *mut f32,
    mut dot: impl FnMut(&[u8], usize) -> f32,
) {
    for r in range {
        let row = p.row(r);
        for t in 0..p.n {
            // SAFETY: `out` holds `n * rows` floats and this task owns row `r` (caller).
            unsafe { *out.add(t * p.rows + r) = dot(row, t) };
        }
    }
}

/// Whether no little-endian `W`-byte word of `bytes` (taken every `stride` bytes from `at`)
/// has all the bits of `exponent` set: the IEEE encoding of an infinity or a NaN. Written
/// as one pass with no early exit, so it vectorizes (a 657 MB F16 head in tens of ms).
pub fn no_all_ones_exponent<const W: usize>(
    bytes: &[u8],
    at: usize,
    stride: usize,
    exponent: u32,
) -> bool {
    let mut bad = 0u32;
    let mut i = at;
    while i + W <= bytes.len() {
        let mut v = 0u32;
        for k in 0..W {
            v |= (bytes[i + k] as u32) << (8 * k);
        }
        bad |= ((v & exponent) == exponent) as u32;
        i += stride;
    }
    bad == 0
}

/// One kernel of the table: (type, one token?, implementation, id).
pub type KernelRow = (TensorType, bool, Isa, &'static str);

/// Every kernel of every format: receipts are audited against these ids.
pub fn kernels() -> impl Iterator<Item = KernelRow> {
    TYPES.iter().flat_map(|t| {
        t.format.into_iter().flat_map(move |f| {
            f.kernels
                .iter()
                .flat_map(move |k| [(t.ty, true, k.isa, k.gemv), (t.ty, false, k.isa, k.gemm)])
        })
    })
}

/// Whether `id` names a kernel of this engine.
pub fn is_kernel_id(id: &str) -> bool {
    kernels().any(|k| k.3 == id)
}

/// The formats the converter can write ternary weights in, in table order.
pub fn ternary_targets() -> impl Iterator<Item = (TensorType, &'static Packing)> {
    TYPES
        .iter()
        .filter_map(|t| Some((t.ty, t.format?.packing.as_ref()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel ids receipts carry: derived from the rows, they must not drift.
    #[test]
    fn the_kernel_table_derived_from_the_rows_is_the_published_one() {
        let mut ids: Vec<&str> = kernels().map(|k| k.3).collect();
        ids.sort();
        let mut want = vec![
            "bf16_gemm_scalar",
            "bf16_gemv_scalar",
            "f16_gemm_scalar",
            "f16_gemv_scalar",
            "f32_gemm_scalar",
            "f32_gemv_scalar",
            "i2s_gemm_scalar",
            "i2s_gemv_scalar",
            "q8_0_gemm_scalar",
            "q8_0_gemv_scalar",
            "tl2_gemm_scalar",
            "tl2_gemv_scalar",
            "tq1_0_gemm_scalar",
            "tq1_0_gemv_scalar",
            "tq2_0_gemm_scalar",
            "tq2_0_gemv_scalar",
        ];
        if cfg!(target_arch = "x86_64") {
            want.extend([
                "f16_gemm_avx2",
                "f16_gemm_avx512",
                "f16_gemv_avx2",
                "f16_gemv_avx512",
                "f32_gemm_avx2",
                "f32_gemv_avx2",
                "i2s_gemm_avx2",
                "i2s_gemm_avx512",
                "i2s_gemv_avx2",
                "i2s_gemv_avx512",
                "q8_0_gemm_avx2",
                "q8_0_gemv_avx2",
                "tl2_gemm_avx2",
                "tl2_gemv_avx2",
                "tq1_0_gemm_avx2",
                "tq1_0_gemv_avx2",
                "tq2_0_gemm_avx2",
                "tq2_0_gemv_avx2",
            ]);
        }
        want.sort();
        assert_eq!(ids, want);
    }

    /// Each float format's finiteness check finds one infinity or NaN anywhere, and passes
    /// finite values (the largest and smallest included).
    #[test]
    fn float_formats_find_a_non_finite_weight_anywhere() {
        use half::{bf16, f16};
        let n = 96;
        for (ty, enc) in [
            (
                TensorType::F32,
                (|v: f32| v.to_le_bytes().to_vec()) as fn(f32) -> Vec<u8>,
            ),
            (TensorType::F16, |v| f16::from_f32(v).to_le_bytes().to_vec()),
            (TensorType::BF16, |v| {
                bf16::from_f32(v).to_le_bytes().to_vec()
            }),
        ] {
            let check = ty.format().unwrap().all_finite.unwrap();
            let finite = |i: usize| [1.0f32, -0.0, 65000.0, -1e-7][i % 4];
            let good: Vec<u8> = (0..n).flat_map(|i| enc(finite(i))).collect();
            assert!(check(&good), "{ty}: finite values pass");
            for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                for at in [0, n / 2, n - 1] {
                    let t: Vec<u8> = (0..n)
                        .flat_map(|i| enc(if i == at { bad } else { finite(i) }))
                        .collect();
                    assert!(!check(&t), "{ty}: {bad} at {at} found");
                }
            }
        }
        // Q8_0: the f16 scale of each 34-byte block.
        let check = TensorType::Q8_0.format().unwrap().all_finite.unwrap();
        let block = |d: f32| {
            let mut b = f16::from_f32(d).to_le_bytes().to_vec();
            b.extend([0x7Cu8; 32]); // int8 values that would look like an f16 exponent
            b
        };
        let good: Vec<u8> = [1.0, 0.5, 2.0].into_iter().flat_map(block).collect();
        assert!(check(&good));
        let bad: Vec<u8> = [1.0, f32::NAN, 2.0].into_iter().flat_map(block).collect();
        assert!(!check(&bad));
    }

    #[test]
    fn every_row_is_well_formed() {
        for t in TYPES {
            let Some(f) = t.format else { continue };
            assert_ne!(f.kind, Kind::Unsupported, "{}", t.name);
            assert_eq!(f.kernels[0].isa, Isa::Scalar, "{}: scalar first", t.name);
            assert!(
                f.kernels.windows(2).all(|w| w[0].isa < w[1].isa),
                "{}: kernels in widening order",
                t.name
            );
            for k in f.kernels {
                for id in [k.gemv, k.gemm] {
                    assert!(
                        id.starts_with(f.family) && id.ends_with(k.isa.name()),
                        "{id} is named for {} on {}",
                        f.family,
                        k.isa.name()
                    );
                }
            }
        }
        let targets: Vec<&str> = ternary_targets().map(|(t, _)| t.name()).collect();
        assert_eq!(targets, ["F32", "TQ1_0", "TQ2_0", "I2_S", "TL2"]);
    }
}
