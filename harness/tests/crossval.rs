//! Crossval end to end against the real reference build: the real model passes the gate's
//! thresholds, deliberately wrong engine configurations are rejected by the same thresholds,
//! and the report validates against its JSON schema.

use bitnet::model::{Activation, Model};
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use bitnet_validate::crossval::ModelInfo;
use bitnet_validate::crossval::{self, Reference, Report};
use bitnet_validate::gates::{check_thresholds, Context, Gate, GatesFile, Miss, Spec};
use bitnet_validate::kinds;
use bitnet_validate::models::ModelSpec;
use std::path::PathBuf;
use std::sync::Mutex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn context() -> Context {
    let shared = bitnet::env::get().shared.clone();
    assert!(
        shared.join("models/bitllama2c-3m/model.bin").exists(),
        "shared data not found at {} (set BITNET_SHARED)",
        shared.display()
    );
    Context {
        shared,
        work: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("validate"),
        data: root().join("ci"),
        root: root(),
        threads: 2,
    }
}

static BUILD: Mutex<()> = Mutex::new(());

fn crossval_inputs(g: &Gate) -> &bitnet_validate::gates::spec::CrossvalInputs {
    match &g.spec {
        Spec::Crossval(i) => i,
        s => panic!("{} is a {} gate", g.id, s.kind().name()),
    }
}

fn real_model() -> PathBuf {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    ModelSpec::Llama2c {
        weights: "i2_s".into(),
        embedding: "f32".into(),
    }
    .materialize(&context())
    .unwrap()
}

/// The thresholds of the real-model I2_S seq gate, as declared in ci/gates.toml.
fn real_gate_thresholds() -> toml::Table {
    let f = GatesFile::load(&root().join("ci/gates.toml")).unwrap();
    f.gates
        .iter()
        .find(|g| g.id == "crossval-real-i2s-seq")
        .expect("gate declared")
        .thresholds
        .clone()
}

fn crossval_with(mutate: impl Fn(&mut Model)) -> Report {
    let path = real_model();
    let mut model = Model::load(&path).unwrap();
    mutate(&mut model);
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    // The gate's references: 0.0.5 judged, 2026 held beside it.
    let f = GatesFile::load(&root().join("ci/gates.toml")).unwrap();
    let gate = f
        .gates
        .iter()
        .find(|g| g.id == "crossval-real-i2s-seq")
        .unwrap();
    let mut references = kinds::crossval::references(crossval_inputs(gate))
        .into_iter()
        .map(|r| Reference::open(r, &path, None, 128, 2).unwrap())
        .collect::<Vec<_>>();
    assert!(
        references.len() >= 2,
        "the real-model gate reports both references"
    );
    let opts = crossval::Options {
        mode: crossval::Mode::Seq,
        tokens: 101,
        prompts: vec!["Once upon a time".into()],
        near_tie: 0.5,
    };
    crossval::run(
        &mut Session::new(&model).with_threads(2),
        &tok,
        &mut references,
        ModelInfo::of(&model, &path).unwrap(),
        &opts,
    )
    .unwrap()
}

/// Runs the declared gate `id` on its model with the engine's configuration changed by
/// `mutate`; returns the threshold misses.
fn gate_misses_with(id: &str, mutate: impl Fn(&mut Model)) -> Vec<Miss> {
    let ctx = context();
    let f = GatesFile::load(&root().join("ci/gates.toml")).unwrap();
    let gate = f.gates.iter().find(|g| g.id == id).expect("gate declared");
    let spec = gate.model.as_ref().unwrap();
    let path = {
        let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        spec.materialize(&ctx).unwrap()
    };
    let mut model = Model::load(&path).unwrap();
    mutate(&mut model);
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let mut references = kinds::crossval::references(crossval_inputs(gate))
        .into_iter()
        .map(|r| Reference::open(r, &path, spec.fixture_dir(&ctx).as_deref(), 128, 2).unwrap())
        .collect::<Vec<_>>();
    let opts = kinds::crossval::options(crossval_inputs(gate));
    let r = crossval::run(
        &mut Session::new(&model).with_threads(2),
        &tok,
        &mut references,
        ModelInfo::of(&model, &path).unwrap(),
        &opts,
    )
    .unwrap();
    check_thresholds(&gate.thresholds, &r.measurements())
}

#[test]
fn the_published_layout_gate_passes_and_catches_wrong_hyperparameters() {
    // The gate judged by BitNet.cpp 2026 on a bitnet-b1.58 file (relu2, GQA, theta 500000)
    // passes as built, and fails for each wrong reading of what that file says.
    let id = "crossval-b158-published-seq";
    let misses = gate_misses_with(id, |_| {});
    assert!(
        misses.is_empty(),
        "unmodified engine misses {id}: {misses:?}"
    );
    type Fault<'a> = (&'a str, &'a dyn Fn(&mut Model));
    let faults: [Fault; 2] = [
        ("silu instead of relu2", &|m| {
            m.config.activation = Activation::Silu
        }),
        ("rope theta 10000 instead of 500000", &|m| {
            m.config.rope_theta = 10000.0
        }),
    ];
    for (what, fault) in faults {
        let misses = gate_misses_with(id, fault);
        println!("{what}: {misses:?}");
        assert!(!misses.is_empty(), "{id} must reject {what}");
    }
}

fn measurements(r: &Report) -> serde_json::Value {
    r.measurements()
}

#[test]
fn real_model_passes_and_the_report_matches_its_schema() {
    let r = crossval_with(|_| {});
    print!("{}", crossval::table(&r));
    let misses = check_thresholds(&real_gate_thresholds(), &measurements(&r));
    assert!(misses.is_empty(), "real model misses the gate: {misses:?}");

    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schemas/crossval-report.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let doc = serde_json::to_value(&r).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "report violates its schema: {errors:?}");
    // The schema is not vacuous: a report with a wrong mode is rejected.
    let mut bad = doc.clone();
    bad["mode"] = serde_json::json!("sideways");
    assert!(!validator.is_valid(&bad));
}

#[test]
fn gate_rejects_epsilon_1e_5() {
    let r = crossval_with(|m| m.config.norm_eps = 1e-5);
    let misses = check_thresholds(&real_gate_thresholds(), &measurements(&r));
    println!("eps 1e-5: {misses:?}");
    assert!(!misses.is_empty(), "a wrong epsilon must fail the gate");
}

#[test]
fn gate_rejects_relu2_instead_of_silu() {
    let r = crossval_with(|m| m.config.activation = Activation::Relu2);
    let misses = check_thresholds(&real_gate_thresholds(), &measurements(&r));
    println!("relu2: {misses:?}");
    assert!(!misses.is_empty(), "a wrong activation must fail the gate");
}

#[test]
fn synthetic_gate_rejects_relu2_instead_of_silu() {
    let misses = gate_misses_with("crossval-synth-gqa", |m| {
        m.config.activation = Activation::Relu2
    });
    println!("synthetic relu2: {misses:?}");
    assert!(
        !misses.is_empty(),
        "a wrong activation must fail the synthetic gate"
    );
}
