//! What each gate kind measures. Every runner returns a one-line summary and a JSON object of
//! measurements that the gate's thresholds are checked against.

use crate::crossval::{self, Mode, ModelInfo, Options, RefName, Reference};
use crate::gates::{Context, Gate};
use bitnet::gguf::Gguf;
use bitnet::model::Model;
use bitnet::quant::matmul::{KernelStats, Weight};
use bitnet::quant::{i2s, TensorType};
use bitnet::sample::Rng;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use bitnet_crossval::RefModel;
use serde_json::{json, Value as Json};
use std::path::Path;
use std::sync::Arc;

pub type RunResult = Result<(String, Json), String>;

fn input_str<'a>(g: &'a Gate, key: &str) -> Option<&'a str> {
    g.inputs.get(key).and_then(|v| v.as_str())
}
pub fn input_int(g: &Gate, key: &str, default: i64) -> Result<i64, String> {
    match g.inputs.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_integer()
            .ok_or_else(|| format!("input {key} must be an integer")),
    }
}

pub fn input_bool(g: &Gate, key: &str) -> Result<bool, String> {
    match g.inputs.get(key) {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("input {key} must be a boolean")),
    }
}

pub fn model_info(model: &Model, path: &Path) -> Result<ModelInfo, String> {
    Ok(ModelInfo {
        path: path.display().to_string(),
        sha256: bitnet::receipt::sha256_file(path)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        arch: model.config.arch.clone(),
        vocab: model.config.vocab_size,
        layers: model.config.n_layers,
        hidden: model.config.dim,
    })
}

/// Options of a crossval gate from its inputs.
pub fn crossval_options(g: &Gate) -> Result<Options, String> {
    let mode: Mode = input_str(g, "mode").unwrap_or("seq").parse()?;
    let prompts = match g.inputs.get("prompts") {
        None => crossval::DEFAULT_PROMPTS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(v) => v
            .as_array()
            .ok_or("prompts must be an array of strings")?
            .iter()
            .map(|p| {
                p.as_str()
                    .map(str::to_string)
                    .ok_or("prompts must be strings")
            })
            .collect::<Result<_, _>>()?,
    };
    let near_tie = match g.inputs.get("near_tie") {
        None => 0.5,
        Some(v) => v.as_float().ok_or("near_tie must be a number")?,
    };
    Ok(Options {
        mode,
        tokens: input_int(g, "tokens", 101)? as usize,
        prompts,
        near_tie,
    })
}

/// The references of a crossval gate: `reference` (judged; default BitNet.cpp 0.0.5) and
/// `also` (reported beside it).
pub fn crossval_references(g: &Gate) -> Result<Vec<RefName>, String> {
    let mut names = vec![match input_str(g, "reference") {
        None => RefName::Cpp2024,
        Some(r) => RefName::parse(r)?,
    }];
    if let Some(v) = g.inputs.get("also") {
        for r in v
            .as_array()
            .ok_or("also must be an array of reference names")?
        {
            names.push(RefName::parse(
                r.as_str()
                    .ok_or("also must be an array of reference names")?,
            )?);
        }
    }
    Ok(names)
}

pub fn crossval(g: &Gate, ctx: &Context) -> RunResult {
    let spec = g.model.as_ref().ok_or("a crossval gate needs a model")?;
    let path = spec.materialize(ctx)?;
    let mut model = Model::load(&path).map_err(|e| e.to_string())?;
    // A load-time option judged against the file as stored (reference "engine-as-stored").
    if let Some(h) = input_str(g, "head") {
        let fmt = h.parse::<bitnet::model::HeadFormat>()?;
        model.quantize_head(fmt).map_err(|e| e.to_string())?;
    }
    let tok = Tokenizer::from_gguf(&model.file).map_err(|e| e.to_string())?;
    let mut opts = crossval_options(g)?;
    let ctx_len = opts.tokens.max(64).min(model.config.context_length);
    let fixture = spec.fixture_dir(ctx);
    let mut references = crossval_references(g)?
        .into_iter()
        .map(|r| Reference::open(r, &path, fixture.as_deref(), ctx_len, ctx.threads))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(Reference::Transformers { text, .. }) = references.first() {
        // transformers' logits exist for the fixture's own tokens only: no other prompt, no
        // continuation (every reference then sees exactly those tokens).
        if g.inputs.contains_key("prompts") || g.inputs.contains_key("tokens") {
            return Err(
                "a gate judged against transformers runs the fixture's own text and \
                        tokens: give no prompts or tokens"
                    .into(),
            );
        }
        opts.prompts = vec![text.clone()];
        opts.tokens = 0;
    }
    let report = crossval::run(
        &mut Session::new(&model).with_threads(ctx.threads),
        &tok,
        &mut references,
        model_info(&model, &path)?,
        &opts,
    )?;
    let dir = ctx.work.join("reports");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(format!("{}.json", g.id)), json).map_err(|e| e.to_string())?;
    let line = |name: &str, a: &crossval::Summary| {
        format!(
            "vs {name}: {} positions, top-1 {:.1}% ({:.1}% decisive, {} near-ties), cosine min {:.6}, max |d| {:.4}, dNLL {:+.5}, greedy {}",
            a.positions,
            a.top1_agreement * 100.0,
            a.top1_decisive * 100.0,
            a.near_ties,
            a.cosine_min,
            a.max_abs_diff,
            a.nll_delta,
            if a.greedy_ok { "ok" } else { "diverged" }
        )
    };
    let mut summary = line(report.reference.as_str(), &report.aggregate);
    for o in &report.others {
        summary += "; ";
        summary += &line(o.reference.as_str(), &o.aggregate);
    }
    Ok((summary, report.measurements()))
}

/// Our I2_S matmul vs the reference's on random shapes: every output bit must match.
pub fn kernel(g: &Gate, _ctx: &Context) -> RunResult {
    let shapes = input_int(g, "shapes", 64)? as usize;
    let seed = input_int(g, "seed", 1)? as u64;
    let mut rng = Rng::new(seed);
    let (mut mismatched_shapes, mut max_d, mut elements) = (0usize, 0f64, 0usize);
    let mut first_failure = None;
    for i in 0..shapes {
        let rows = 1 + rng.below(96) as usize;
        let cols = 128 * (1 + rng.below(6) as usize);
        let n = if i % 2 == 0 {
            1
        } else {
            2 + rng.below(15) as usize
        };
        let threads = 1 + (i % 2);
        let values: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
        let scale = 0.01 + rng.next_f64() as f32;
        let magnitude = [1e-3, 1.0, 50.0][i % 3];
        let x: Vec<f32> = (0..n * cols)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * magnitude) as f32)
            .collect();
        let bytes = i2s::pack(&values, rows, cols, scale).map_err(|e| e.to_string())?;
        let theirs = bitnet_crossval::i2s_matmul(&bytes, rows, cols, &x, n, threads)
            .map_err(|e| e.to_string())?;
        let ours = engine_matmul(bytes, rows, cols, &x, n, threads)?;
        elements += ours.len();
        let bad = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        for (a, b) in ours.iter().zip(&theirs) {
            max_d = max_d.max((*a as f64 - *b as f64).abs());
        }
        if bad > 0 {
            mismatched_shapes += 1;
            first_failure.get_or_insert(format!(
                "{rows}x{cols} n={n} threads={threads}: {bad} elements differ"
            ));
        }
    }
    let summary = match &first_failure {
        None => format!("{shapes} random shapes, {elements} outputs, all bit-exact"),
        Some(f) => format!("{mismatched_shapes}/{shapes} shapes differ; first: {f}"),
    };
    Ok((
        summary,
        json!({"shapes": shapes, "mismatched_shapes": mismatched_shapes, "elements": elements, "max_abs_diff": max_d}),
    ))
}

/// A packed I2_S tensor (`rows * cols / 4` code bytes, scale, padding) as the engine's weight,
/// viewed in place in a GGUF image as the model views its file.
pub fn i2s_weight(bytes: &[u8], rows: usize, cols: usize) -> Result<Weight, String> {
    let mut w = bitnet::gguf::GgufWriter::new();
    w.tensor("w", &[cols as u64, rows as u64], TensorType::I2S);
    let file = w
        .to_bytes(|_, out| out.write_all(bytes))
        .map_err(|e| e.to_string())?;
    let g = Arc::new(Gguf::from_bytes(file).map_err(|e| e.to_string())?);
    let t = g.tensor("w").ok_or("tensor w")?.clone();
    Weight::new(&g, &t).map_err(|e| e.to_string())
}

/// The engine's I2_S product through the same path the model uses.
pub fn engine_matmul(
    bytes: Vec<u8>,
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    threads: usize,
) -> Result<Vec<f32>, String> {
    let weight = i2s_weight(&bytes, rows, cols)?;
    let mut out = vec![0f32; n * rows];
    weight.matmul(x, n, &mut out, threads, &KernelStats::default());
    Ok(out)
}

/// Our tokenizer vs the reference's on every case of a corpus (cases separated by lines
/// holding only `---`), with and without special-token parsing.
pub fn tokenizer(g: &Gate, ctx: &Context) -> RunResult {
    let vocab_path = match (&g.model, input_str(g, "vocab")) {
        (Some(spec), _) => spec.materialize(ctx)?,
        (None, Some(v)) => ctx.shared.join(v),
        (None, None) => return Err("a tokenizer gate needs a model or a vocab input".into()),
    };
    let corpus_path = ctx
        .data
        .join(input_str(g, "corpus").unwrap_or("tokenizer-corpus.txt"));
    let corpus = std::fs::read_to_string(&corpus_path)
        .map_err(|e| format!("{}: {e}", corpus_path.display()))?;
    let cases: Vec<&str> = corpus.split("\n---\n").collect();
    let file = Gguf::open(&vocab_path).map_err(|e| e.to_string())?;
    let ours = Tokenizer::from_gguf(&file).map_err(|e| e.to_string())?;
    // The reference may read another vocabulary file: the published 2B-4T layout has no
    // `tokenizer.ggml.pre`, which llama.cpp reads as its 'default' split, so our inferred split
    // is judged against the vocabulary with the key.
    let ref_path = match input_str(g, "reference_vocab") {
        Some(v) => ctx.shared.join(v),
        None => vocab_path.clone(),
    };
    let theirs = RefModel::load_vocab(&ref_path).map_err(|e| e.to_string())?;
    let (mut mismatches, mut roundtrip_failures, mut compared) = (0usize, 0usize, 0usize);
    let mut first = None;
    for case in &cases {
        for (add, special) in [(false, false), (true, false), (true, true)] {
            let a = ours.encode(case, add, special);
            let b = theirs
                .tokenize(case, add, special)
                .map_err(|e| e.to_string())?;
            compared += 1;
            if a != b {
                mismatches += 1;
                first.get_or_insert(format!(
                    "{case:?} (bos {add}, special {special}): ours {a:?} reference {b:?}"
                ));
            }
        }
        let ids = ours.encode(case, false, false);
        if ours.decode(&ids).map_err(|e| e.to_string())? != *case {
            roundtrip_failures += 1;
        }
    }
    let summary = match &first {
        None => format!("{} cases x 3 settings identical to the reference; {roundtrip_failures} round-trip failures", cases.len()),
        Some(f) => format!("{mismatches}/{compared} differ; first: {f}"),
    };
    Ok((
        summary,
        json!({"cases": cases.len(), "compared": compared, "mismatches": mismatches, "roundtrip_failures": roundtrip_failures}),
    ))
}

/// Runs the model, writes its receipt, and verifies it (schema, audit, digest, replay).
pub fn receipt(g: &Gate, ctx: &Context) -> RunResult {
    use bitnet::generate::{generate, GenerateOptions};
    use bitnet::sample::SamplerParams;
    let spec = g.model.as_ref().ok_or("a receipt gate needs a model")?;
    let path = spec.materialize(ctx)?;
    let t0 = std::time::Instant::now();
    let model = Model::load(&path).map_err(|e| e.to_string())?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut session = Session::new(&model).with_threads(ctx.threads);
    let tok = Tokenizer::from_gguf(&model.file).map_err(|e| e.to_string())?;
    let prompt = input_str(g, "prompt")
        .unwrap_or("Once upon a time")
        .to_string();
    let temperature = match g.inputs.get("temperature") {
        None => 0.8,
        Some(v) => v.as_float().ok_or("temperature must be a number")? as f32,
    };
    let opts = GenerateOptions {
        max_tokens: input_int(g, "tokens", 32)? as usize,
        sampler: SamplerParams {
            temperature,
            seed: input_int(g, "seed", 1)? as u64,
            ..Default::default()
        },
        stop: vec![],
        ignore_eos: false,
    };
    let gen = generate(
        &mut session,
        &tok,
        &tok.encode(&prompt, true, false),
        &opts,
        &mut |_| true,
    )
    .map_err(|e| e.to_string())?;
    let r = bitnet::receipt::for_generation(&session, &path, &opts, &prompt, &gen, load_ms)
        .map_err(|e| e.to_string())?;
    let dir = ctx.work.join("receipts");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join(format!("{}.json", g.id));
    r.write(&file).map_err(|e| e.to_string())?;
    let v = crate::audit::verify_file(
        &file,
        &crate::audit::VerifyOptions {
            public_key: None,
            replay: true,
        },
    );
    let summary = if v.ok {
        format!(
            "{} kernels, {} tokens; schema, audit, digest and replay ok",
            r.kernels.len(),
            r.run.generated_tokens
        )
    } else {
        v.findings
            .iter()
            .map(|f| format!("{}: {}", f.rule, f.message))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Ok((
        summary,
        json!({"ok": v.ok, "findings": v.findings.len(), "kernels": r.kernels.len(), "exit_code": v.exit_code()}),
    ))
}

/// Damaged copies of a real model file (truncations, byte flips, field overwrites at seeded
/// random places) must each load or fail with a typed error — never panic.
pub fn bad_input(g: &Gate, ctx: &Context) -> RunResult {
    let spec = g.model.as_ref().ok_or("a bad-input gate needs a model")?;
    let bytes = std::fs::read(spec.materialize(ctx)?).map_err(|e| e.to_string())?;
    let variants = input_int(g, "variants", 300)? as usize;
    let mut rng = Rng::new(input_int(g, "seed", 1)? as u64);
    let header = (bytes.len() / 8).max(64).min(bytes.len());
    let (mut panics, mut errors, mut loaded) = (0usize, 0usize, 0usize);
    let mut first_panic = None;
    for i in 0..variants {
        let mut b = bytes.clone();
        match i % 3 {
            0 => b.truncate(rng.below(b.len() as u64) as usize),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(header as u64) as usize;
                    b[at] ^= 1 << rng.below(8);
                }
            }
            _ => {
                // Overwrite an 8-byte field in the header region with an extreme value.
                let at = rng.below((header - 8) as u64) as usize;
                let v = [u64::MAX, 1 << 40, 0, u32::MAX as u64][rng.below(4) as usize];
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        let outcome = std::panic::catch_unwind(move || -> Result<(), bitnet::Error> {
            let g = Arc::new(Gguf::from_bytes(b)?);
            Tokenizer::from_gguf(&g)?;
            let m = Model::from_gguf(g)?;
            // A model that still loads must also run a token without panicking.
            let mut st = m.new_state();
            Session::new(&m).forward(&mut st, &[1], false)?;
            Ok(())
        });
        match outcome {
            Err(_) => {
                panics += 1;
                first_panic.get_or_insert(i);
            }
            Ok(Err(_)) => errors += 1,
            Ok(Ok(())) => loaded += 1,
        }
    }
    let summary = match first_panic {
        None => format!(
            "{variants} damaged files: {errors} typed errors, {loaded} still loadable, no panic"
        ),
        Some(i) => format!("{panics} of {variants} damaged files panicked (first: variant {i})"),
    };
    Ok((
        summary,
        json!({"variants": variants, "panics": panics, "errors": errors, "loaded": loaded}),
    ))
}

/// `lint` on the gate's model: `errors`, `warnings`, and `rules`, an object with `true` for
/// every rule that fired (thresholds name the ones that must, or `errors = 0`).
pub fn lint(g: &Gate, ctx: &Context) -> RunResult {
    let spec = g.model.as_ref().ok_or("a lint gate needs a model")?;
    let path = spec.materialize(ctx)?;
    let r = crate::lint::lint(&path);
    let mut rules = serde_json::Map::new();
    for f in &r.findings {
        rules.insert(f.rule.clone(), json!(true));
    }
    let fired: Vec<&str> = rules.keys().map(String::as_str).collect();
    Ok((
        format!(
            "{} errors, {} warnings; rules: {}",
            r.errors,
            r.warnings,
            if fired.is_empty() {
                "none".to_string()
            } else {
                fired.join(", ")
            }
        ),
        json!({"errors": r.errors, "warnings": r.warnings, "findings": r.findings.len(), "rules": rules}),
    ))
}
