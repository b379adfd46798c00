//! Compact string storage for vocabularies and merge lists: all strings in one arena, looked
//! up through an open-addressing index. A 128k-token vocabulary plus 280k merges would
//! otherwise be ~400k separate heap strings to allocate (and free) on every model load.

use super::TokenizerError;

/// FxHash-style mixing over 8-byte words, with a final fold so that the low bits (the slot
/// index) depend on every input bit. Not DoS-resistant; the keys come from the model file.
fn hash(s: &[u8]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h: u64 = s.len() as u64;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    (h ^ (h >> 32)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 29)
}

/// Strings numbered 0.. in insertion order, with exact-match lookup of the first entry
/// holding a given text.
#[derive(Clone, Default)]
pub(super) struct StrTable {
    arena: String,
    /// Entry `i` is `arena[ends[i - 1]..ends[i]]` (`0..ends[0]` for the first).
    ends: Vec<u32>,
    /// Low half: 0 = empty slot, else entry index + 1; high half: the key's hash, high bits
    /// (compared before the text). Length is a power of two, at least twice the entry count.
    slots: Vec<u64>,
}

impl StrTable {
    /// A table for `n` entries of `bytes` total length.
    pub(super) fn with_capacity(n: usize, bytes: usize) -> Result<Self, TokenizerError> {
        if n >= u32::MAX as usize / 2 || bytes > u32::MAX as usize {
            return Err(TokenizerError::BadMetadata(format!(
                "{n} strings of {bytes} bytes are too many for the tokenizer tables"
            )));
        }
        let n_slots = (2 * n).next_power_of_two().max(16);
        Ok(StrTable {
            arena: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
            slots: vec![0; n_slots],
        })
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The text of entry `i`.
    pub(super) fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.arena[start..end])
    }

    /// The slot holding `s`, or the empty slot where it would go; and the slot tag for `s`.
    fn probe(&self, s: &str) -> (usize, u64) {
        let h = hash(s.as_bytes());
        let tag = h & 0xffff_ffff_0000_0000;
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let slot = self.slots[i];
            let entry = slot as u32;
            if entry == 0
                || (slot & 0xffff_ffff_0000_0000 == tag && self.get(entry as usize - 1) == Some(s))
            {
                return (i, tag);
            }
            i = (i + 1) & mask;
        }
    }

    /// The first entry whose text is `s`.
    pub(super) fn find(&self, s: &str) -> Option<u32> {
        match self.slots[self.probe(s).0] as u32 {
            0 => None,
            e => Some(e - 1),
        }
    }

    /// Appends `s` as entry `len()`. If an earlier entry has the same text, that entry's
    /// index is returned and lookups keep finding it.
    pub(super) fn push(&mut self, s: &str) -> Result<Option<u32>, TokenizerError> {
        if self.arena.len() + s.len() > u32::MAX as usize
            || self.ends.len() >= u32::MAX as usize / 2
        {
            return Err(TokenizerError::BadMetadata(
                "tokenizer tables overflow".into(),
            ));
        }
        if 2 * (self.ends.len() + 1) > self.slots.len() {
            self.grow();
        }
        let (slot, tag) = self.probe(s);
        self.arena.push_str(s);
        self.ends.push(self.arena.len() as u32);
        match self.slots[slot] as u32 {
            0 => {
                self.slots[slot] = tag | self.ends.len() as u64;
                Ok(None)
            }
            e => Ok(Some(e - 1)),
        }
    }

    /// Doubles the index and re-inserts every entry (earlier duplicates win, as before).
    fn grow(&mut self) {
        self.slots = vec![0; (2 * self.slots.len()).max(16)];
        for i in 0..self.ends.len() {
            let (slot, tag) = self.probe(self.get(i).unwrap_or_default());
            if self.slots[slot] == 0 {
                self.slots[slot] = tag | (i as u64 + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_find_get() {
        let mut t = StrTable::with_capacity(4, 8).unwrap();
        assert_eq!(t.push("ab").unwrap(), None);
        assert_eq!(t.push("").unwrap(), None);
        assert_eq!(t.push("ab").unwrap(), Some(0));
        assert_eq!(t.push("x").unwrap(), None);
        assert_eq!(
            (t.find("ab"), t.find(""), t.find("x"), t.find("y")),
            (Some(0), Some(1), Some(3), None)
        );
        assert_eq!((t.get(2), t.get(1), t.get(4)), (Some("ab"), Some(""), None));
        assert_eq!(t.len(), 4);
        for i in 0..100 {
            assert_eq!(t.push(&i.to_string()).unwrap(), None);
        }
        assert_eq!(
            (t.find("ab"), t.find("99"), t.get(103)),
            (Some(0), Some(103), Some("99"))
        );
    }
}
