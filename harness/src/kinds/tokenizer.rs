//! The `tokenizer` gate kind: our tokenizer against llama.cpp's (through the reference) on
//! every case of a corpus, with and without BOS and special-token parsing, and our decode of
//! our encoding. Measurements: `cases`, `compared`, `mismatches`, `roundtrip_failures`.

use crate::gates::spec::TokenizerInputs;
use crate::gates::{Job, Measured, RunError};
use bitnet::gguf::Gguf;
use bitnet::tokenizer::Tokenizer;
use bitnet_crossval::RefModel;
use serde_json::json;

/// Our tokenizer vs the reference's on every case of a corpus (cases separated by lines
/// holding only `---`), with and without special-token parsing.
pub fn run(job: &Job, inputs: &TokenizerInputs) -> Result<Measured, RunError> {
    let ctx = job.ctx;
    let vocab_path = match &inputs.vocab {
        Some(v) => ctx.shared.join(v),
        None => job.model_path()?.to_path_buf(),
    };
    let corpus_path = ctx.data.join(&inputs.corpus);
    let corpus = std::fs::read_to_string(&corpus_path).map_err(RunError::io(&corpus_path))?;
    let cases: Vec<&str> = corpus.split("\n---\n").collect();
    let file = Gguf::open(&vocab_path).map_err(RunError::kind)?;
    let ours = Tokenizer::from_gguf(&file).map_err(RunError::kind)?;
    // The reference may read another vocabulary file: the published 2B-4T layout has no
    // `tokenizer.ggml.pre`, which llama.cpp reads as its 'default' split, so our inferred split
    // is judged against the vocabulary with the key.
    let ref_path = match &inputs.reference_vocab {
        Some(v) => ctx.shared.join(v),
        None => vocab_path.clone(),
    };
    let theirs = RefModel::load_vocab(&ref_path).map_err(RunError::kind)?;
    let (mut mismatches, mut roundtrip_failures, mut compared) = (0usize, 0usize, 0usize);
    let mut first = None;
    for case in &cases {
        for (add, special) in [(false, false), (true, false), (true, true)] {
            let a = ours.encode(case, add, special);
            let b = theirs
                .tokenize(case, add, special)
                .map_err(RunError::kind)?;
            compared += 1;
            if a != b {
                mismatches += 1;
                first.get_or_insert(format!(
                    "{case:?} (bos {add}, special {special}): ours {a:?} reference {b:?}"
                ));
            }
        }
        let ids = ours.encode(case, false, false);
        if ours.decode(&ids).map_err(RunError::kind)? != *case {
            roundtrip_failures += 1;
        }
    }
    let summary = match &first {
        None => format!("{} cases x 3 settings identical to the reference; {roundtrip_failures} round-trip failures", cases.len()),
        Some(f) => format!("{mismatches}/{compared} differ; first: {f}"),
    };
    Ok(Measured::new(
        summary,
        json!({"cases": cases.len(), "compared": compared, "mismatches": mismatches, "roundtrip_failures": roundtrip_failures}),
    ))
}
