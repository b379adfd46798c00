//! The gate types: gates declared as data (`ci/gates.toml`), each with an id, a description,
//! `required`, an optional `model`, `thresholds`, `release_only` and a typed `Spec` (its kind
//! with that kind's inputs); `Outcome`, what a run of one comes to; the typed errors of loading
//! and running; the threshold checks; the JSON schema of the file, generated from these types.
//!
//! Dependencies point one way: this module depends on no gate kind; the kinds
//! (`crate::kinds`) take their typed inputs from here; the runner (`crate::runner`) depends on
//! the kinds.

pub mod error;
pub mod schema;
pub mod spec;
pub mod thresholds;

pub use crate::context::Context;
pub use error::{LoadError, RunError};
pub use spec::{Kind, Spec};
pub use thresholds::{check_thresholds, Miss, Thresholds};

use crate::models::ModelSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// One gate, its inputs typed by its kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    pub id: String,
    pub description: String,
    /// A failing required gate fails the run (default true).
    pub required: bool,
    pub model: Option<ModelSpec>,
    pub thresholds: Thresholds,
    /// A timed ratio that only means something in an optimised build: the gates test
    /// (`cargo test`, a debug build) lists it as ignored; `bitnet-validate gates` runs it.
    pub release_only: bool,
    pub spec: Spec,
}

impl Gate {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// Checks what the types do not: the id's form, the model's presence for the kind, and
    /// constraints between inputs. The message says what to change.
    pub fn check(&self) -> Result<(), String> {
        if !valid_id(&self.id) {
            return Err(format!(
                "the id must match {ID_PATTERN} and be at most {ID_MAX} characters"
            ));
        }
        match (self.spec.needs_model(), &self.model) {
            (true, None) => {
                return Err(match &self.spec {
                    Spec::Tokenizer(_) => "a tokenizer gate needs a model or a vocab input".into(),
                    s => format!("a {} gate needs a model", s.kind().name()),
                })
            }
            (false, Some(_)) => {
                return Err(match &self.spec {
                    Spec::Tokenizer(_) => {
                        "a tokenizer gate reads a model or a vocab input, not both".into()
                    }
                    Spec::Perf(_) => "a kernel perf gate reads no model: remove it".into(),
                    s => format!("a {} gate reads no model: remove it", s.kind().name()),
                })
            }
            _ => {}
        }
        self.spec.check()
    }
}

/// The pattern gate ids match (also in the schema).
pub const ID_PATTERN: &str = "^[a-z0-9][a-z0-9-]*$";
const ID_MAX: usize = 80;

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= ID_MAX
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn yes() -> bool {
    true
}

/// One `[[gate]]` table as written: `kind` and `inputs` become the typed `Spec`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Gate")]
struct GateEntry {
    /// Unique in the file; the test's name and the report's file names.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]*$"), length(max = 80))]
    id: String,
    kind: Kind,
    #[serde(default)]
    description: String,
    /// A failing required gate fails the run (default true).
    #[serde(default = "yes")]
    required: bool,
    /// The model the gate runs on, built on demand (kinds that read one need it; the others
    /// refuse it).
    #[serde(default)]
    #[schemars(with = "ModelSpec")]
    model: Option<ModelSpec>,
    /// The kind's inputs (see each kind's definition).
    #[serde(default)]
    #[schemars(with = "serde_json::Map<String, Json>")]
    inputs: Option<toml::Table>,
    #[serde(default)]
    #[schemars(schema_with = "thresholds::schema")]
    thresholds: Thresholds,
    /// A timed ratio checked only in optimised builds (ignored by the debug-build gates test).
    #[serde(default)]
    release_only: bool,
}

impl GateEntry {
    fn into_gate(self) -> Result<Gate, PathError> {
        // `kind` first, so serde reads the inputs as the kind's type directly (not buffered),
        // and an error's path names the input (`inputs.tokens`).
        let tagged = [
            ("kind", toml::Value::from(self.kind.name())),
            (
                "inputs",
                toml::Value::Table(self.inputs.unwrap_or_default()),
            ),
        ];
        let spec = serde_path_to_error::deserialize(serde::de::value::MapDeserializer::<
            _,
            toml::de::Error,
        >::new(tagged.into_iter()))?;
        Ok(Gate {
            id: self.id,
            description: self.description,
            required: self.required,
            model: self.model,
            thresholds: self.thresholds,
            release_only: self.release_only,
            spec,
        })
    }
}

type PathError = serde_path_to_error::Error<toml::de::Error>;

/// The file as written: a list of `[[gate]]` tables (each read on its own, so an error names
/// its gate).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "bitnet-validate gates file (ci/gates.toml, as JSON)",
    description = "Generated from the harness's gate types: `cargo run -p bitnet-validate -- schema gates > schemas/gates.schema.json`"
)]
pub(crate) struct GatesToml {
    #[schemars(with = "Vec<GateEntry>", length(min = 1))]
    gate: Vec<toml::Table>,
}

/// A gates file, every gate checked.
#[derive(Clone, Debug)]
pub struct GatesFile {
    pub gates: Vec<Gate>,
}

impl GatesFile {
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a gates file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, LoadError> {
        let file: GatesToml = toml::from_str(text).map_err(|source| LoadError::Toml {
            path: path.to_path_buf(),
            source,
        })?;
        let mut gates: Vec<Gate> = Vec::with_capacity(file.gate.len());
        for (i, table) in file.gate.into_iter().enumerate() {
            let id = match table.get("id").and_then(|v| v.as_str()) {
                Some(id) => id.to_string(),
                None => format!("#{} (no id)", i + 1),
            };
            let spec_error = |e: PathError| LoadError::Spec {
                path: path.to_path_buf(),
                id: id.clone(),
                key: match e.path().to_string() {
                    root if root == "." => String::new(),
                    key => key,
                },
                message: e.inner().message().to_string(),
            };
            let gate = serde_path_to_error::deserialize(toml::Value::Table(table))
                .and_then(GateEntry::into_gate)
                .map_err(spec_error)?;
            gate.check().map_err(|reason| LoadError::Invalid {
                path: path.to_path_buf(),
                id: id.clone(),
                reason,
            })?;
            if gates.iter().any(|g| g.id == gate.id) {
                return Err(LoadError::DuplicateId {
                    path: path.to_path_buf(),
                    id,
                });
            }
            gates.push(gate);
        }
        Ok(GatesFile { gates })
    }
}

/// What a kind's run measured: a one-line summary and the measurements the thresholds judge.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub summary: String,
    pub measurements: Json,
}

impl Measured {
    pub fn new(summary: impl Into<String>, measurements: Json) -> Self {
        Measured {
            summary: summary.into(),
            measurements,
        }
    }
}

/// What a kind's run is given besides its inputs: the gate's id (report file names), its
/// model (already built) and the context.
pub struct Job<'a> {
    pub id: &'a str,
    pub kind: Kind,
    pub model: Option<(&'a ModelSpec, PathBuf)>,
    pub ctx: &'a Context,
}

impl Job<'_> {
    /// The built model file (an error for a gate built in code without one).
    pub fn model_path(&self) -> Result<&Path, RunError> {
        self.model
            .as_ref()
            .map(|(_, p)| p.as_path())
            .ok_or(RunError::NoModel {
                kind: self.kind.name(),
            })
    }

    pub fn model_spec(&self) -> Result<&ModelSpec, RunError> {
        self.model
            .as_ref()
            .map(|(s, _)| *s)
            .ok_or(RunError::NoModel {
                kind: self.kind.name(),
            })
    }

    /// `<work>/<name>`, created.
    pub fn work_dir(&self, name: &str) -> Result<PathBuf, RunError> {
        let dir = self.ctx.work.join(name);
        std::fs::create_dir_all(&dir).map_err(RunError::io(&dir))?;
        Ok(dir)
    }
}

/// The model's file, built first if needed (`ModelSpec::materialize`).
pub fn build_model(spec: &ModelSpec, ctx: &Context) -> Result<PathBuf, RunError> {
    spec.materialize(ctx).map_err(|message| RunError::Model {
        key: spec.key(),
        message,
    })
}

/// What a run of one gate came to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub id: String,
    pub kind: Kind,
    pub required: bool,
    pub passed: bool,
    pub seconds: f64,
    /// Why it failed (threshold misses or the error), or a one-line summary when it passed.
    pub message: String,
    pub measurements: Json,
}

#[cfg(test)]
mod tests;
