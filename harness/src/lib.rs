//! # bitnet-validate
//!
//! The validation product: runs the gates declared as data in `ci/gates.toml` (crossval of the
//! engine against BitNet.cpp, kernel bit-exactness, tokenizer agreement) and reports them as
//! JUnit XML, a JSON summary and a Markdown table.

pub mod audit;
pub mod crossval;
pub mod gates;
pub mod golden;
pub mod lint;
pub mod metrics;
pub mod models;
pub mod perf;
pub mod probe;
pub mod report;
pub mod runners;
