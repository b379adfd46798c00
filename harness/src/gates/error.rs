//! Typed errors of the gate layer: loading a gates file (`LoadError`) and running a gate
//! (`RunError`). Every message names the file or the gate it is about.

use std::path::PathBuf;

/// A gates file that cannot be used; nothing runs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or not a list of `[[gate]]` tables.
    #[error("{}: {source}", path.display())]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A gate whose keys, kind or inputs do not fit its type: `key` is where (`inputs.tokens`;
    /// empty for the gate itself), `message` what (an unknown key is named in it).
    #[error("{}: gate {id}: {}{message}", path.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Spec {
        path: PathBuf,
        id: String,
        key: String,
        message: String,
    },
    /// A gate whose inputs or model contradict each other.
    #[error("{}: gate {id}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        id: String,
        reason: String,
    },
    #[error("{}: duplicate gate id {id:?}", path.display())]
    DuplicateId { path: PathBuf, id: String },
}

/// Why a gate produced no measurements.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gate's model could not be built or found.
    #[error("model {key}: {message}")]
    Model { key: String, message: String },
    /// A kind that runs on a model was given none (only a gate built in code can be so).
    #[error("a {kind} gate needs a model")]
    NoModel { kind: &'static str },
    /// A file the gate reads or writes.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kind's own run failed (engine, reference, child process, bad data).
    #[error("{0}")]
    Kind(String),
}

impl From<String> for RunError {
    fn from(message: String) -> Self {
        RunError::Kind(message)
    }
}

impl From<&str> for RunError {
    fn from(message: &str) -> Self {
        RunError::Kind(message.to_string())
    }
}

impl RunError {
    /// Any displayable failure of the kind's run.
    pub fn kind(e: impl std::fmt::Display) -> Self {
        RunError::Kind(e.to_string())
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RunError::Io { path, source }
    }
}
