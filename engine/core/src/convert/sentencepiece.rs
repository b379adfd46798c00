//! A minimal reader for SentencePiece `tokenizer.model` files (a protobuf `ModelProto`):
//! the pieces (text, score, type), BOS/EOS ids, and whether a dummy space prefix is added.
//! Only the fields a GGUF tokenizer needs are decoded; everything else is skipped by wire type.

use super::ConvertError;

/// Piece types, numbered as both SentencePiece and GGUF's `tokenizer.ggml.token_type` do.
pub const NORMAL: i32 = 1;

#[derive(Debug, Clone)]
pub struct SpModel {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub add_dummy_prefix: bool,
    /// TrainerSpec.model_type: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: i32,
    pub byte_fallback: bool,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> ConvertError {
        ConvertError::Tokenizer(format!("tokenizer.model: {what} at byte {}", self.pos))
    }
    fn varint(&mut self) -> Result<u64, ConvertError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| self.err("truncated varint"))?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }
    fn take(&mut self, n: u64) -> Result<&'a [u8], ConvertError> {
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(self.err("length past end"));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    /// Next (field number, value); None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ConvertError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                return self.next();
            }
            2 => {
                let n = self.varint()?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32([b[0], b[1], b[2], b[3]])
            }
            w => return Err(self.err(&format!("unsupported wire type {w}"))),
        };
        Ok(Some((key >> 3, f)))
    }
}

pub fn parse(buf: &[u8]) -> Result<SpModel, ConvertError> {
    let mut m = SpModel {
        pieces: Vec::new(),
        scores: Vec::new(),
        types: Vec::new(),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_dummy_prefix: true,
        model_type: 1,
        byte_fallback: false,
    };
    let id = |v: u64| {
        if v as i64 >= 0 && (v as i64) < (1 << 31) {
            Some(v as u32)
        } else {
            None
        }
    };
    let mut r = Reader { buf, pos: 0 };
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Field::Bytes(piece)) => {
                let (mut text, mut score, mut ty) = (None, 0f32, NORMAL);
                let mut p = Reader { buf: piece, pos: 0 };
                while let Some((f, v)) = p.next()? {
                    match (f, v) {
                        (1, Field::Bytes(s)) => {
                            text = Some(
                                String::from_utf8(s.to_vec())
                                    .map_err(|_| p.err("piece is not UTF-8"))?,
                            )
                        }
                        (2, Field::Fixed32(b)) => score = f32::from_le_bytes(b),
                        (3, Field::Varint(t)) => ty = t as i32,
                        _ => {}
                    }
                }
                m.pieces
                    .push(text.ok_or_else(|| r.err("piece without text"))?);
                m.scores.push(score);
                m.types.push(ty);
            }
            (2, Field::Bytes(spec)) => {
                let mut p = Reader { buf: spec, pos: 0 };
                while let Some((f, v)) = p.next()? {
                    match (f, v) {
                        (3, Field::Varint(t)) => m.model_type = t as i32,
                        (35, Field::Varint(b)) => m.byte_fallback = b != 0,
                        (40, Field::Varint(v)) => m.unk = id(v),
                        (41, Field::Varint(v)) => m.bos = id(v),
                        (42, Field::Varint(v)) => m.eos = id(v),
                        _ => {}
                    }
                }
            }
            (3, Field::Bytes(norm)) => {
                let mut p = Reader { buf: norm, pos: 0 };
                while let Some((f, v)) = p.next()? {
                    if let (3, Field::Varint(b)) = (f, v) {
                        m.add_dummy_prefix = b != 0;
                    }
                }
            }
            _ => {}
        }
    }
    if m.pieces.is_empty() {
        return Err(ConvertError::Tokenizer(
            "tokenizer.model holds no pieces".into(),
        ));
    }
    let n = m.pieces.len() as u32;
    for id in [m.bos, m.eos, m.unk].into_iter().flatten() {
        if id >= n {
            return Err(ConvertError::Tokenizer(format!(
                "special token id {id} outside the {n} pieces"
            )));
        }
    }
    Ok(m)
}
