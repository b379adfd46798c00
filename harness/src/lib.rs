//! # bitnet-validate
//!
//! The validation product: runs the gates declared as data in `ci/gates.toml` (crossval of the
//! engine against BitNet.cpp and transformers, kernel bit-exactness, tokenizer agreement,
//! receipts, damaged inputs, golden snapshots, speed ratios, kubelet probes of `bitnet serve`,
//! model-file lint) and reports them as JUnit XML, a JSON summary and a Markdown table.
//!
//! Layers, each depending only on those above it:
//! `context` (directories) and `models` (models built on demand); the libraries the kinds use
//! (`crossval`, on the engine's `bitnet::eval::metrics`; `golden`, `lint`, `audit`, `probe`,
//! `i2s`); `gates` (the gate types:
//! `Gate`, its typed `Spec`, errors, thresholds, the generated schema); `kinds` (one module per
//! gate kind); `runner` (`run_gate`); `report`.

pub mod audit;
pub mod context;
pub mod crossval;
pub mod gates;
pub mod golden;
pub mod i2s;
pub mod kinds;
pub mod lint;
pub mod models;
pub mod probe;
pub mod report;
pub mod runner;
