//! GGUF v3 writer. Metadata and tensor descriptions are collected first; tensor bytes are then
//! streamed in declaration order, so multi-gigabyte models never need to sit in memory. The
//! output goes to a temporary file that is renamed into place only when complete.

use super::{align_up, Value, ValueType, DEFAULT_ALIGNMENT, MAGIC};
use crate::quant::TensorType;
use std::io::{self, BufWriter, Write};
use std::path::Path;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: TensorType,
    size: u64,
}

#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a metadata key (insertion order is kept).
    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        if let Some(slot) = self.metadata.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.metadata.push((key.to_string(), value));
        }
        self
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Declares a tensor; `dims` innermost first. Its bytes are supplied later, in order.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: TensorType) -> &mut Self {
        let n: u64 = dims.iter().product();
        let size = ty.tensor_bytes(dims.first().copied().unwrap_or(1), n);
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            size,
        });
        self
    }

    /// Byte size expected for tensor `i`.
    pub fn tensor_size(&self, i: usize) -> u64 {
        self.tensors[i].size
    }
    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Writes the file atomically. `fill(i, out)` must write exactly the bytes of tensor `i`.
    pub fn write_file<F>(&self, path: &Path, fill: F) -> io::Result<()>
    where
        F: FnMut(usize, &mut dyn Write) -> io::Result<()>,
    {
        let tmp = path.with_extension("gguf.partial");
        let result = (|| {
            let f = std::fs::File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            self.write_to(&mut w, fill)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Writes the whole file image into memory (tests, small models).
    pub fn to_bytes<F>(&self, fill: F) -> io::Result<Vec<u8>>
    where
        F: FnMut(usize, &mut dyn Write) -> io::Result<()>,
    {
        // Sized up front: a large tensor must not make the vector grow by doubling.
        let data: u64 = self.tensors.iter().map(|t| t.size).sum();
        let mut v = Vec::with_capacity(usize::try_from(data).unwrap_or(0) + (1 << 16));
        self.write_to(&mut v, fill)?;
        Ok(v)
    }

    fn write_to<F>(&self, w: &mut dyn Write, mut fill: F) -> io::Result<()>
    where
        F: FnMut(usize, &mut dyn Write) -> io::Result<()>,
    {
        let align = self.alignment();
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut data_len = 0u64;
        for t in &self.tensors {
            let off = align_up(data_len, align);
            offsets.push(off);
            data_len = off + t.size;
        }
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut header, k);
            header.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut header, v);
        }
        for (t, off) in self.tensors.iter().zip(&offsets) {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&off.to_le_bytes());
        }
        header.resize(align_up(header.len() as u64, align) as usize, 0);
        w.write_all(&header)?;
        // Position relative to the start of the data section.
        let mut pos = 0u64;
        for (i, (t, off)) in self.tensors.iter().zip(&offsets).enumerate() {
            w.write_all(&vec![0u8; (off - pos) as usize])?;
            pos = *off;
            let mut counter = CountingWriter { inner: w, n: 0 };
            fill(i, &mut counter)?;
            if counter.n != t.size {
                return Err(io::Error::other(format!(
                    "tensor {:?}: wrote {} bytes, its shape and type need {}",
                    t.name, counter.n, t.size
                )));
            }
            pos += t.size;
        }
        // Pad the file end so the last tensor is followed by a whole alignment unit, as ggml does.
        let end = align_up(pos, align);
        w.write_all(&vec![0u8; (end - pos) as usize])?;
        Ok(())
    }
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}
impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(t, items) => {
            out.extend_from_slice(&(*t as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                debug_assert_eq!(it.value_type(), *t, "array element of the wrong type");
                put_value(out, it);
            }
        }
    }
}

impl Value {
    /// Convenience constructors for arrays.
    pub fn strings<I: IntoIterator<Item = S>, S: Into<String>>(it: I) -> Value {
        Value::Array(
            ValueType::String,
            it.into_iter().map(|s| Value::String(s.into())).collect(),
        )
    }
    pub fn f32s(it: impl IntoIterator<Item = f32>) -> Value {
        Value::Array(ValueType::F32, it.into_iter().map(Value::F32).collect())
    }
    pub fn u32s(it: impl IntoIterator<Item = u32>) -> Value {
        Value::Array(ValueType::U32, it.into_iter().map(Value::U32).collect())
    }
    pub fn i32s(it: impl IntoIterator<Item = i32>) -> Value {
        Value::Array(ValueType::I32, it.into_iter().map(Value::I32).collect())
    }
}
