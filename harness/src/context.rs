//! Where gates (and the commands that build models) find shared data and put what they build.
//! A leaf module: the gate types, the model builder and every gate kind read it.

use std::path::PathBuf;

/// Directories and the thread count a gate runs with.
#[derive(Clone, Debug)]
pub struct Context {
    /// The shared data directory (checkpoints, vocabularies): `BITNET_SHARED`.
    pub shared: PathBuf,
    /// Directory for converted/synthesised models and reports.
    pub work: PathBuf,
    /// Directory holding `ci/` data files (the gates file's directory).
    pub data: PathBuf,
    /// The repository root (golden snapshots are named relative to it).
    pub root: PathBuf,
    pub threads: usize,
}
