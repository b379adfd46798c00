//! One module per gate kind. Each takes its typed inputs (`crate::gates::spec`) and a `Job`
//! (the gate's id, its built model, the context) and returns what it measured; none reads
//! another kind or the runner. `crate::runner` picks the module by the gate's `Spec`.

pub mod bad_input;
pub mod crossval;
pub mod golden;
pub mod kernel;
pub mod lint;
pub mod perf;
pub mod probe;
pub mod receipt;
pub mod tokenizer;
