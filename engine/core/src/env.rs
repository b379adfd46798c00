//! The environment variables bitnet reads — all of them, read once, here.
//!
//! | variable        | meaning                                                    | default |
//! |-----------------|------------------------------------------------------------|---------|
//! | `BITNET_SHARED` | directory of shared test data (models, tokenizers, docs)   | `../shared` next to the workspace |
//! | `BITNET_THREADS`| default worker threads when `--threads` is not given       | all cores |
//!
//! None of them changes numerics: thread counts never change results.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct Env {
    pub shared: PathBuf,
    pub threads: usize,
    /// The documented variables that were set, as read at start-up (for receipts).
    pub set: BTreeMap<String, String>,
}

/// Every variable bitnet reads.
pub const DOCUMENTED: &[&str] = &["BITNET_SHARED", "BITNET_THREADS"];

impl Env {
    pub fn documented_variables(&self) -> BTreeMap<String, String> {
        self.set.clone()
    }
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The process environment, read on first use and never again.
pub fn get() -> &'static Env {
    ENV.get_or_init(|| {
        let shared = std::env::var_os("BITNET_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../..")
                    .join("shared")
            });
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let threads = std::env::var("BITNET_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(cores);
        let set = DOCUMENTED
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        Env {
            shared,
            threads,
            set,
        }
    })
}

/// A path inside the shared data directory, or an error that says how to point at it.
pub fn shared_path(rel: &str) -> Result<PathBuf, String> {
    let p = get().shared.join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "shared data file {} not found (set BITNET_SHARED to the directory holding models/ and tokenizers/)",
            p.display()
        ))
    }
}
