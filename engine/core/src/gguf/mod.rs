//! GGUF v2/v3 reader: memory-mapped, every offset and length validated against the file
//! before it is used, every allocation sized from a validated length.
//!
//! Layout (little endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/value pairs, the tensor infos, padding to `general.alignment` (default 32),
//! then the tensor data. Tensor offsets are relative to the start of the data section.
//! Dimensions are stored innermost first (`dims[0]` = row length = columns).
//!
//! Length: one file on purpose (~750 lines): the reader is one bounds-checked cursor and the
//! types it yields; splitting it would spread the validation invariants over several files.

mod write;

pub use write::GgufWriter;

use crate::quant::{TensorType, TypeTraits};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are rejected (the format allows nesting; nobody needs 16 levels).
const MAX_ARRAY_DEPTH: usize = 16;
/// Metadata values decoded per file at most. Each takes ~32 bytes in memory however small it
/// is in the file, so this bounds metadata memory to about 1 GiB (LLaMA-3's vocabulary and
/// merges are ~0.4M values).
const MAX_METADATA_VALUES: u64 = 1 << 25;

/// Everything that can be wrong with a GGUF file. Each variant names what was found and
/// where, so a one-line message is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("truncated file: {what} at byte {offset} needs {need} bytes, only {have} left")]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        have: u64,
    },
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("absurd {what} count {count}: the rest of the file ({remaining} bytes) can hold at most {max}")]
    AbsurdCount {
        what: &'static str,
        count: u64,
        remaining: u64,
        max: u64,
    },
    #[error("string at byte {offset} declares length {len}, but only {remaining} bytes remain")]
    StringPastEof {
        offset: u64,
        len: u64,
        remaining: u64,
    },
    #[error("string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64 },
    #[error("metadata key {key:?}: unknown value type {ty}")]
    UnknownValueType { key: String, ty: u32 },
    #[error("metadata key {key:?}: invalid bool byte {byte}")]
    InvalidBool { key: String, byte: u8 },
    #[error("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}")]
    ArrayTooDeep { key: String },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("metadata key {key:?} has type {got}, expected {expected}")]
    WrongValueType {
        key: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("general.alignment = {0} is not a power of two")]
    BadAlignment(u64),
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("tensor {tensor:?}: {n_dims} dimensions (at most {MAX_DIMS} allowed)")]
    TooManyDims { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?}: invalid shape {dims:?} (zero or overflowing element count)")]
    BadShape { tensor: String, dims: Vec<u64> },
    #[error("tensor {tensor:?}: unknown tensor type id {ty}")]
    UnknownTensorType { tensor: String, ty: u32 },
    #[error("tensor {tensor:?}: type {ty} is recognised but not supported yet")]
    UnsupportedTensorType { tensor: String, ty: &'static str },
    #[error("tensor {tensor:?}: row length {ne0} of type {ty} is not a multiple of its block size {block}")]
    BlockMismatch {
        tensor: String,
        ty: &'static str,
        ne0: u64,
        block: u64,
    },
    #[error("tensor {tensor:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {tensor:?}: data bytes {start}..{end} lie outside the file ({file_len} bytes)"
    )]
    DataOutOfFile {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensors {a:?} and {b:?} overlap in the data section")]
    Overlap { a: String, b: String },
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Metadata value type ids of the GGUF specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The smallest number of bytes one value of this type occupies in a file.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// One metadata value. Arrays keep their declared element type (so an empty array round-trips).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type that fits in u64 without loss.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    /// Short human form; long arrays are abbreviated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) if s.chars().count() > 60 => {
                let head: String = s.chars().take(57).collect();
                write!(f, "{head:?}...")
            }
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(t, v) => {
                write!(f, "[{}; {}]", t.name(), v.len())?;
                if !v.is_empty() {
                    write!(f, " [")?;
                    for (i, x) in v.iter().take(4).enumerate() {
                        if i > 0 {
                            write!(f, ", ")?;
                        }
                        write!(f, "{x}")?;
                    }
                    if v.len() > 4 {
                        write!(f, ", ...")?;
                    }
                    write!(f, "]")?;
                }
                Ok(())
            }
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// A tensor's description, validated: shape, type, and its byte range in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Innermost first: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Offset relative to the data section.
    pub offset: u64,
    /// Byte size derived from shape and type (I2_S includes its scale trailer).
    pub size: u64,
    /// Absolute byte offset in the file.
    pub file_offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// (rows, cols) of the tensor viewed as a matrix: cols = dims[0], rows = the rest.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims[0] as usize;
        (self.n_elements() as usize / cols, cols)
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF file. Tensor bytes are borrowed from the mapping.
pub struct Gguf {
    data: Backing,
    pub version: u32,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    pub data_offset: u64,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-maps and validates a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; like every mmap reader we rely on nobody truncating
        // the file while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map))
    }

    /// Parses and validates an in-memory file image.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(data: Backing) -> Result<Self> {
        let mut c = Cursor {
            buf: &data,
            pos: 0,
            values_left: MAX_METADATA_VALUES,
        };
        let magic = c.bytes(4, "magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                found: [magic[0], magic[1], magic[2], magic[3]],
            });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
        // at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        c.check_count("metadata", n_kv, 13)?;
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("value type")?;
            let ty = ValueType::from_u32(ty).ok_or_else(|| GgufError::UnknownValueType {
                key: key.clone(),
                ty,
            })?;
            let value = c.value(&key, ty, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.as_u64().ok_or_else(|| GgufError::WrongValueType {
                    key: "general.alignment".into(),
                    expected: "u32",
                    got: v.value_type().name(),
                })?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
        };

        c.check_count("tensor", n_tensors, 24)?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimension count")?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    tensor: name,
                    n_dims,
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dimension")?);
            }
            // A scalar (ggml allows 0 dimensions; BitNet.cpp's TL2 scales are written so) is
            // read as one element.
            if dims.is_empty() {
                dims.push(1);
            }
            let ty = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            raw.push((name, dims, ty, offset));
        }

        let data_offset = align_up(c.pos as u64, alignment);
        let file_len = data.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, dims, ty_id, offset) in raw {
            let n_el = dims.iter().try_fold(
                1u64,
                |acc, &d| if d == 0 { None } else { acc.checked_mul(d) },
            );
            let Some(n_el) = n_el.filter(|&n| n < (1u64 << 48)) else {
                return Err(GgufError::BadShape { tensor: name, dims });
            };
            let ty = TensorType::from_id(ty_id).ok_or_else(|| GgufError::UnknownTensorType {
                tensor: name.clone(),
                ty: ty_id,
            })?;
            let traits: &TypeTraits = ty.traits();
            if !traits.layout_known {
                return Err(GgufError::UnsupportedTensorType {
                    tensor: name,
                    ty: traits.name,
                });
            }
            if dims[0] % traits.row_multiple() != 0 {
                return Err(GgufError::BlockMismatch {
                    tensor: name,
                    ty: traits.name,
                    ne0: dims[0],
                    block: traits.row_multiple(),
                });
            }
            let size = ty.tensor_bytes(dims[0], n_el);
            if offset % alignment != 0 {
                return Err(GgufError::MisalignedOffset {
                    tensor: name,
                    offset,
                    alignment,
                });
            }
            let start = data_offset.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => {
                    if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                        return Err(GgufError::DuplicateTensor(name));
                    }
                    tensors.push(TensorInfo {
                        name,
                        dims,
                        ty,
                        offset,
                        size,
                        file_offset: start,
                    });
                }
                _ => {
                    return Err(GgufError::DataOutOfFile {
                        tensor: name,
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    })
                }
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].size > w[1].offset {
                return Err(GgufError::Overlap {
                    a: w[0].name.clone(),
                    b: w[1].name.clone(),
                });
            }
        }
        Ok(Gguf {
            data,
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// The bytes of a tensor (validated to lie inside the file at open).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.data[t.file_offset as usize..(t.file_offset + t.size) as usize]
    }
    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| GgufError::WrongValueType {
                key: key.into(),
                expected,
                got: v.value_type().name(),
            }),
        }
    }
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "unsigned integer", Value::as_u64)
    }
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "number", Value::as_f64)
    }
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "string", Value::as_str)
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "bool", Value::as_bool)
    }
    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>> {
        self.typed(key, "array", Value::as_array)
    }
}

pub fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// A bounds-checked little-endian reader over the file image.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata values that may still be decoded.
    values_left: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N as u64, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Rejects a count whose minimal encoding could not fit in the rest of the file.
    fn check_count(&self, what: &'static str, count: u64, min_each: u64) -> Result<()> {
        let max = self.remaining() / min_each;
        if count > max {
            return Err(GgufError::AbsurdCount {
                what,
                count,
                remaining: self.remaining(),
                max,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let offset = self.pos as u64;
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(GgufError::StringPastEof {
                offset,
                len,
                remaining: self.remaining(),
            });
        }
        let b = self.bytes(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<Value> {
        let what = "metadata value";
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte => {
                    return Err(GgufError::InvalidBool {
                        key: key.into(),
                        byte,
                    })
                }
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::ArrayTooDeep { key: key.into() });
                }
                let et = self.u32("array element type")?;
                let et = ValueType::from_u32(et).ok_or_else(|| GgufError::UnknownValueType {
                    key: key.into(),
                    ty: et,
                })?;
                let n = self.u64("array length")?;
                self.check_count("array element", n, et.min_size())?;
                if n > self.values_left {
                    return Err(GgufError::AbsurdCount {
                        what: "metadata value",
                        count: n,
                        remaining: self.remaining(),
                        max: self.values_left,
                    });
                }
                self.values_left -= n;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(key, et, depth + 1)?);
                }
                Value::Array(et, v)
            }
        })
    }
}
