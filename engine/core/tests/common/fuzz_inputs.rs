//! The inputs kept in `fuzz/regressions/<target>/`, and how the fuzz targets cut a multi-part
//! input (as `fuzz/src/lib.rs` does), for the tests that replay them.
#![allow(dead_code)] // each test file that includes this uses part of it

use std::path::Path;

/// What `fuzz/src/lib.rs` splits multi-part inputs at.
pub const SPLIT: &[u8] = b"\n\x00--split--\x00\n";

/// `(file name, bytes)` of every regression input of `target`, sorted; at least one.
pub fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no regression inputs in {}", dir.display());
    v
}

/// `data` cut at each [`SPLIT`], always `n` parts (missing ones empty, extra ones joined into
/// the last).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(SPLIT.len()).position(|w| w == SPLIT) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SPLIT.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[]);
    out
}
