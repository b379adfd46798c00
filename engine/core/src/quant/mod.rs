//! Tensor types, one row each in [`TYPES`] (ggml-style type traits), plus one module per format
//! that knows its bit layout and defines its behaviour as a [`format::Format`] row: [`i2s`]
//! (BitNet.cpp's I2_S), [`tq`] (TQ1_0/TQ2_0), [`float`] (F32, F16, Q8_0), [`bf16`], [`tl2`]
//! (BitNet.cpp's lookup-table layout). [`matmul`] applies any of them to activations by looking
//! the kernel up in the row.
//!
//! Ternary formats multiply against int8 activations quantized per token row exactly as the
//! reference does ([`quantize_row`]); float formats multiply in f32.

pub mod bf16;
pub mod float;
pub mod format;
pub mod i2s;
pub mod matmul;
pub mod tl2;
pub mod tq;

pub use format::{Format, Kind, Ternary};

/// The traits of one tensor type: ggml type id, name, block geometry, and for a computable
/// type its behaviour ([`Format`]).
pub struct TypeTraits {
    pub ty: TensorType,
    pub id: u32,
    pub name: &'static str,
    /// Elements per block and bytes per block (I2_S: see [`TensorType::tensor_bytes`]).
    pub block_elems: u64,
    pub block_bytes: u64,
    /// Whether the byte size of a tensor of this type is known (TL1's depends on a kernel config).
    pub layout_known: bool,
    /// What computing with it means (None: the engine reads the type but cannot compute).
    pub format: Option<&'static Format>,
}

impl TypeTraits {
    /// A row's length must be a multiple of this.
    pub fn row_multiple(&self) -> u64 {
        self.format
            .and_then(|f| f.row_multiple)
            .unwrap_or(self.block_elems)
    }
    pub fn kind(&self) -> Kind {
        self.format.map_or(Kind::Unsupported, |f| f.kind)
    }
}

impl std::fmt::Debug for TypeTraits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TypeTraits({} {:?})", self.name, self.kind())
    }
}

macro_rules! tensor_types {
    ($($v:ident = $id:literal, $name:literal, $be:literal, $bb:literal, $known:literal, $fmt:expr;)*) => {
        /// Every GGUF tensor type this engine recognises.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum TensorType { $($v),* }

        /// The type table. Adding a format = one module with its [`Format`] + its row here.
        pub static TYPES: &[TypeTraits] = &[
            $(TypeTraits { ty: TensorType::$v, id: $id, name: $name, block_elems: $be,
                           block_bytes: $bb, layout_known: $known, format: $fmt },)*
        ];
    };
}

tensor_types! {
    F32 = 0, "F32", 1, 4, true, Some(&float::F32);
    F16 = 1, "F16", 1, 2, true, Some(&float::F16);
    Q4_0 = 2, "Q4_0", 32, 18, true, None;
    Q4_1 = 3, "Q4_1", 32, 20, true, None;
    Q5_0 = 6, "Q5_0", 32, 22, true, None;
    Q5_1 = 7, "Q5_1", 32, 24, true, None;
    Q8_0 = 8, "Q8_0", 32, 34, true, Some(&float::Q8_0);
    Q8_1 = 9, "Q8_1", 32, 36, true, None;
    Q2_K = 10, "Q2_K", 256, 84, true, None;
    Q3_K = 11, "Q3_K", 256, 110, true, None;
    Q4_K = 12, "Q4_K", 256, 144, true, None;
    Q5_K = 13, "Q5_K", 256, 176, true, None;
    Q6_K = 14, "Q6_K", 256, 210, true, None;
    Q8_K = 15, "Q8_K", 256, 292, true, None;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66, true, None;
    IQ2_XS = 17, "IQ2_XS", 256, 74, true, None;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98, true, None;
    IQ1_S = 19, "IQ1_S", 256, 50, true, None;
    IQ4_NL = 20, "IQ4_NL", 32, 18, true, None;
    IQ3_S = 21, "IQ3_S", 256, 110, true, None;
    IQ2_S = 22, "IQ2_S", 256, 82, true, None;
    IQ4_XS = 23, "IQ4_XS", 256, 136, true, None;
    I8 = 24, "I8", 1, 1, true, None;
    I16 = 25, "I16", 1, 2, true, None;
    I32 = 26, "I32", 1, 4, true, None;
    I64 = 27, "I64", 1, 8, true, None;
    F64 = 28, "F64", 1, 8, true, None;
    IQ1_M = 29, "IQ1_M", 256, 56, true, None;
    BF16 = 30, "BF16", 1, 2, true, Some(&bf16::FORMAT);
    TQ1_0 = 34, "TQ1_0", 256, 54, true, Some(&tq::TQ1_0);
    TQ2_0 = 35, "TQ2_0", 256, 66, true, Some(&tq::TQ2_0);
    I2S = 36, "I2_S", 1, 1, true, Some(&i2s::FORMAT);
    TL1 = 38, "TL1", 1, 1, false, None;
    TL2 = 39, "TL2", 1, 1, true, Some(&tl2::FORMAT);
}

impl TensorType {
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|t| t.id == id).map(|t| t.ty)
    }
    pub fn from_name(name: &str) -> Option<Self> {
        TYPES
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .map(|t| t.ty)
    }
    pub fn traits(self) -> &'static TypeTraits {
        // The table is in enum order, so this is a direct index.
        &TYPES[self as usize]
    }
    pub fn id(self) -> u32 {
        self.traits().id
    }
    pub fn name(self) -> &'static str {
        self.traits().name
    }
    /// The type's behaviour, if the engine computes with it.
    pub fn format(self) -> Option<&'static Format> {
        self.traits().format
    }
    /// Byte size of a tensor of `n` elements with rows of `ne0` (a multiple of the row
    /// multiple): whole blocks, or the format's own size where ggml's traits get it wrong
    /// (I2_S's trailer, TL2's tiles).
    pub fn tensor_bytes(self, ne0: u64, n: u64) -> u64 {
        let t = self.traits();
        match t.format.and_then(|f| f.tensor_bytes) {
            Some(size) if ne0 > 0 => size(n / ne0, ne0),
            _ => n / t.block_elems * t.block_bytes,
        }
    }
    /// Bytes of one row of `cols` elements (not meaningful for I2_S's trailer; TL2 has no
    /// rows of its own, this is its average).
    pub fn row_bytes(self, cols: usize) -> usize {
        let t = self.traits();
        match t.format.and_then(|f| f.row_bytes) {
            Some(size) => size(cols),
            None => cols / t.block_elems as usize * t.block_bytes as usize,
        }
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A malformed weight buffer: says what it got and what the shape needs.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{ty} matrix {rows}x{cols}: got {got} bytes, expected {expected} (row stride {row_stride} bytes)")]
    WrongSize {
        ty: &'static str,
        rows: usize,
        cols: usize,
        got: usize,
        expected: usize,
        row_stride: usize,
    },
    #[error("{ty} matrix {rows}x{cols}: cols must be a multiple of {multiple}")]
    BadCols {
        ty: &'static str,
        rows: usize,
        cols: usize,
        multiple: usize,
    },
    #[error("tensor type {0} cannot be used for computation")]
    Unsupported(&'static str),
    #[error("ternary value {0} out of range (must be -1, 0 or +1)")]
    NotTernary(i8),
    #[error("TL2 matrix {rows}x{cols} with tiling BM={bm} BK={bk}: {why}")]
    BadTiling {
        rows: usize,
        cols: usize,
        bm: usize,
        bk: usize,
        why: &'static str,
    },
    #[error("TL2 matrix {rows}x{cols}: no tiling recorded for this shape in `{key}`")]
    NoTiling {
        rows: usize,
        cols: usize,
        key: &'static str,
    },
    #[error("TL2 matrix needs its scale, a one-element F32 tensor `{0}`")]
    MissingScale(String),
}

/// Checks a weight buffer's size against its declared shape.
pub fn check_size(ty: TensorType, rows: usize, cols: usize, got: usize) -> Result<(), FormatError> {
    let multiple = ty.traits().row_multiple() as usize;
    if cols == 0 || !cols.is_multiple_of(multiple) {
        return Err(FormatError::BadCols {
            ty: ty.name(),
            rows,
            cols,
            multiple,
        });
    }
    let expected = ty.tensor_bytes(cols as u64, (rows * cols) as u64) as usize;
    if got != expected {
        return Err(FormatError::WrongSize {
            ty: ty.name(),
            rows,
            cols,
            got,
            expected,
            row_stride: ty.row_bytes(cols),
        });
    }
    Ok(())
}

/// Dequantizes a whole tensor to f32 (rows * cols values).
pub fn dequantize(
    ty: TensorType,
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>, FormatError> {
    check_size(ty, rows, cols, bytes.len())?;
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        dequantize_row(ty, bytes, r, cols, &mut out[r * cols..(r + 1) * cols])?;
    }
    Ok(out)
}

/// Dequantizes row `r` of a (size-checked) tensor.
pub fn dequantize_row(
    ty: TensorType,
    bytes: &[u8],
    r: usize,
    cols: usize,
    out: &mut [f32],
) -> Result<(), FormatError> {
    match ty.format().map(|f| f.dequantize_row) {
        Some(Some(dequantize)) => dequantize(bytes, r, cols, out),
        // TL2 needs its tiling: see `matmul::Weight::dequantize_row`.
        Some(None) => return Err(FormatError::Unsupported("TL2 without its tiling")),
        None => return Err(FormatError::Unsupported(ty.name())),
    }
    Ok(())
}

/// 64 bytes on a cache-line boundary.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// An int8 buffer that starts on a 64-byte boundary, so the 512-bit activation loads of the
/// AVX-512 kernels never straddle two cache lines (a split load costs two). Reads and writes
/// as a `[i8]`.
#[derive(Clone, Default)]
pub struct AlignedI8 {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedI8 {
    /// Sets the length to `len`, every value 0.
    pub fn reset(&mut self, len: usize) {
        self.lines.clear();
        self.lines.resize(len.div_ceil(64), Line([0; 64]));
        self.len = len;
    }
}

impl std::ops::Deref for AlignedI8 {
    type Target = [i8];
    fn deref(&self) -> &[i8] {
        // SAFETY: `lines` holds at least `len` initialised bytes (`Line` is 64 i8s, no padding).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const i8, self.len) }
    }
}

impl std::ops::DerefMut for AlignedI8 {
    fn deref_mut(&mut self) -> &mut [i8] {
        // SAFETY: as in `deref`, and `self` is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut i8, self.len) }
    }
}

impl std::fmt::Debug for AlignedI8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl PartialEq for AlignedI8 {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// One token row of activations quantized to int8 the way the reference does it.
#[derive(Clone, Debug, Default)]
pub struct QuantRow {
    pub q: AlignedI8,
    /// s = 127 / max(max|x|, 1e-5); the row's real values are q / s.
    pub scale: f32,
    /// Sum of q (the I2_S kernel subtracts it to map codes 0..2 back to -1..+1).
    pub sum: i32,
}

/// The reference's activation quantization: max|x| in f64, s = (f32)(127 / max(m, 1e-5)),
/// q = clamp(round_half_even(x * s), -128, 127) with the product taken in f32.
///
/// Written so the compiler vectorizes it (eight running maxima; rounding by adding and
/// subtracting 1.5 * 2^23, exact for the clamped range), with the same result as the
/// straightforward form (property test `quantize_row_matches_the_plain_form`).
pub fn quantize_row(x: &[f32], out: &mut QuantRow) {
    // The same body compiled for wider vectors where the CPU has them: every operation is an
    // exact IEEE one (no contraction into FMA), so the bits do not depend on which runs.
    #[cfg(target_arch = "x86_64")]
    {
        use matmul::Isa;
        if Isa::detect() >= Isa::Avx512 {
            // SAFETY: detected above.
            return unsafe { quantize_row_avx512(x, out) };
        }
        if Isa::detect() >= Isa::Avx2 {
            // SAFETY: detected above.
            return unsafe { quantize_row_avx2(x, out) };
        }
    }
    quantize_row_body(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], out: &mut QuantRow) {
    quantize_row_body(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
unsafe fn quantize_row_avx512(x: &[f32], out: &mut QuantRow) {
    quantize_row_body(x, out)
}

#[inline(always)]
fn quantize_row_body(x: &[f32], out: &mut QuantRow) {
    // |v| is exact in f32, so its maximum equals the reference's f64 maximum; NaN is skipped
    // by both.
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let mut amax = chunks
        .remainder()
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m { v.abs() } else { m });
    for c in chunks {
        for i in 0..8 {
            let a = c[i].abs();
            lanes[i] = if a > lanes[i] { a } else { lanes[i] };
        }
    }
    for l in lanes {
        amax = if l > amax { l } else { amax };
    }
    let m = (amax as f64).max(1e-5);
    let s = (127.0 / m) as f32;
    // Adding 1.5 * 2^23 to a value in [-128, 127] leaves an integer (ulp 1 there) rounded half
    // to even; subtracting it back is exact.
    const ROUND: f32 = 12_582_912.0;
    out.q.reset(x.len());
    let mut sum = 0i32;
    // After adding ROUND, the float's bits are ROUND's bits plus the rounded integer (its ulp
    // is 1 there), so the integer is read off the bits with no float-to-int conversion; NaN
    // becomes 0, as the reference's cast makes it.
    for (q, &v) in out.q.iter_mut().zip(x) {
        let p = v * s;
        let c = if p.is_nan() {
            0.0
        } else {
            p.clamp(-128.0, 127.0)
        };
        let i = (c + ROUND).to_bits() as i32 - ROUND.to_bits() as i32;
        sum += i;
        *q = i as i8;
    }
    out.scale = s;
    out.sum = sum;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference's formula written out directly.
    fn plain(x: &[f32]) -> QuantRow {
        let m = x.iter().fold(1e-5f64, |m, &v| m.max((v as f64).abs()));
        let s = (127.0 / m) as f32;
        let q: Vec<i8> = x
            .iter()
            .map(|&v| (v * s).round_ties_even().clamp(-128.0, 127.0) as i32 as i8)
            .collect();
        let sum = q.iter().map(|&v| v as i32).sum();
        let mut aligned = AlignedI8::default();
        aligned.reset(q.len());
        aligned.copy_from_slice(&q);
        QuantRow {
            q: aligned,
            scale: s,
            sum,
        }
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            -4.0f32..4.0,
            -1e6f32..1e6,
            -1e-6f32..1e-6,
            // Exact halves after scaling are the rounding's hard case.
            (-254i32..254).prop_map(|k| k as f32 / 2.0),
            Just(0.0),
            Just(-0.0),
            Just(f32::NAN),
        ]
    }

    proptest! {
        #[test]
        fn quantize_row_matches_the_plain_form(x in prop::collection::vec(value(), 0..300)) {
            let mut got = QuantRow::default();
            quantize_row(&x, &mut got);
            let want = plain(&x);
            prop_assert_eq!(&got.q, &want.q);
            prop_assert_eq!(got.sum, want.sum);
            prop_assert_eq!(got.scale.to_bits(), want.scale.to_bits());
        }
    }
}
