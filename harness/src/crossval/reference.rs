//! The references crossval judges the engine against, by name (`RefName`, as gates and the
//! command line spell them) and opened on a model file (`Reference`): tokenizations and
//! teacher-forced logits from BitNet.cpp 0.0.5 (in process), the January-2026 BitNet.cpp (the
//! `ref2026` executable), transformers' recorded logits, or this engine on the file as stored.

use super::{our_logits, Mode};
use bitnet::model::Model;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use bitnet_crossval::RefModel;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which reference: the names gates and the CLI use.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
pub enum RefName {
    /// BitNet.cpp 0.0.5 (crates.io `bitnet-cpp-sys`): arch `bitnet` only, SiLU.
    #[serde(rename = "bitnet.cpp-0.0.5")]
    #[value(name = "bitnet.cpp-0.0.5")]
    Cpp2024,
    /// BitNet.cpp January 2026 (crates.io `bitnet-llm-sys` 1.0.2): also `bitnet-b1.58`, relu2.
    #[serde(rename = "bitnet.cpp-2026")]
    #[value(name = "bitnet.cpp-2026")]
    Cpp2026,
    /// transformers' float32 logits recorded in a HF fixture (`crossval/hf/fixtures`).
    #[serde(rename = "transformers")]
    #[value(name = "transformers")]
    Transformers,
    /// This engine on the file as stored: judges a load-time option such as `--head q8_0`
    /// against the file's own head.
    #[serde(rename = "engine-as-stored")]
    #[value(name = "engine-as-stored")]
    EngineAsStored,
}

impl RefName {
    pub fn as_str(self) -> &'static str {
        match self {
            RefName::Cpp2024 => "bitnet.cpp-0.0.5",
            RefName::Cpp2026 => "bitnet.cpp-2026",
            RefName::Transformers => "transformers",
            RefName::EngineAsStored => "engine-as-stored",
        }
    }
}

/// A source of reference tokenizations and teacher-forced logits.
pub enum Reference {
    Cpp2024(RefModel),
    Cpp2026 {
        model: PathBuf,
        threads: usize,
    },
    /// Recorded logits: only the fixture's text and token ids can be asked for.
    Transformers {
        text: String,
        ids: Vec<u32>,
        logits: Vec<f32>,
    },
    /// The engine on the file as stored, its tokenizer, and the threads to run it with.
    EngineAsStored(Box<(Model, Tokenizer, usize)>),
}

impl Reference {
    /// Opens `name` for the GGUF at `model`; `fixture` is the HF checkpoint directory the model
    /// was converted from (needed for transformers).
    pub fn open(
        name: RefName,
        model: &Path,
        fixture: Option<&Path>,
        n_ctx: usize,
        threads: usize,
    ) -> Result<Self, String> {
        match name {
            RefName::Cpp2024 => Ok(Reference::Cpp2024(
                RefModel::load(model, n_ctx, threads).map_err(|e| e.to_string())?,
            )),
            RefName::Cpp2026 => Ok(Reference::Cpp2026 {
                model: model.to_path_buf(),
                threads,
            }),
            RefName::EngineAsStored => {
                let m = Model::load(model).map_err(|e| e.to_string())?;
                let tok = Tokenizer::from_gguf(&m.file).map_err(|e| e.to_string())?;
                Ok(Reference::EngineAsStored(Box::new((m, tok, threads))))
            }
            RefName::Transformers => {
                let dir = fixture.ok_or(
                    "the transformers reference needs a model converted from a HF fixture \
                     (model.source = \"hf\")",
                )?;
                let read = |f: &str| {
                    std::fs::read(dir.join(f))
                        .map_err(|e| format!("{}: {e}", dir.join(f).display()))
                };
                let t: serde_json::Value = serde_json::from_slice(&read("tokens.json")?)
                    .map_err(|e| format!("tokens.json: {e}"))?;
                let text = t["text"]
                    .as_str()
                    .ok_or("tokens.json: no text")?
                    .to_string();
                let ids = t["ids"]
                    .as_array()
                    .ok_or("tokens.json: no ids")?
                    .iter()
                    .map(|v| v.as_u64().map(|x| x as u32).ok_or("tokens.json: bad id"))
                    .collect::<Result<Vec<_>, _>>()?;
                let (n, _, logits) =
                    bitnet_crossval::ref2026::read_logits_file(&read("logits_f32.bin")?)?;
                if n != ids.len() {
                    return Err(format!(
                        "logits_f32.bin has {n} rows for {} tokens",
                        ids.len()
                    ));
                }
                Ok(Reference::Transformers { text, ids, logits })
            }
        }
    }

    pub fn name(&self) -> RefName {
        match self {
            Reference::Cpp2024(_) => RefName::Cpp2024,
            Reference::Cpp2026 { .. } => RefName::Cpp2026,
            Reference::Transformers { .. } => RefName::Transformers,
            Reference::EngineAsStored(_) => RefName::EngineAsStored,
        }
    }

    /// The reference's tokens for `text`, BOS first.
    pub fn tokenize(&mut self, text: &str) -> Result<Vec<u32>, String> {
        match self {
            Reference::Cpp2024(r) => r.tokenize(text, true, false).map_err(|e| e.to_string()),
            Reference::Cpp2026 { model, .. } => {
                bitnet_crossval::ref2026::tokenize(model, text, true)
            }
            Reference::EngineAsStored(e) => Ok(e.1.encode(text, true, false)),
            Reference::Transformers { text: t, ids, .. } if t == text => Ok(ids.clone()),
            Reference::Transformers { text: t, .. } => Err(format!(
                "transformers' tokens are recorded for {t:?} only (asked for {text:?})"
            )),
        }
    }

    /// Teacher-forced logits of every position of `seq`, `n_vocab` per row.
    pub fn logits(&mut self, seq: &[u32], batch: bool) -> Result<Vec<f32>, String> {
        match self {
            Reference::Cpp2024(r) => r.logits(seq, batch).map_err(|e| e.to_string()),
            Reference::Cpp2026 { model, threads } => {
                bitnet_crossval::ref2026::logits(model, seq, batch, *threads).map(|(_, l)| l)
            }
            Reference::EngineAsStored(e) => {
                let mut session = Session::new(&e.0).with_threads(e.2);
                our_logits(
                    &mut session,
                    seq,
                    if batch { Mode::Batch } else { Mode::Seq },
                )
            }
            Reference::Transformers { ids, logits, .. } if ids == seq => Ok(logits.clone()),
            Reference::Transformers { .. } => Err(
                "transformers' logits are recorded for the fixture's tokens only: use its text \
                 as the one prompt and no continuation"
                    .into(),
            ),
        }
    }
}
