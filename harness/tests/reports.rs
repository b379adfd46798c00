//! The gates file and the reports are checked against their schemas; a golden mismatch and a
//! failing gate show up as failures in every report format.

use bitnet_validate::gates::{Context, Gate, GatesFile};
use bitnet_validate::report;
use bitnet_validate::runner::run_gate;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schemas").join(name)).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn errors(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect()
}

#[test]
fn the_gates_file_matches_its_schema() {
    let text = std::fs::read_to_string(root().join("ci/gates.toml")).unwrap();
    let doc = serde_json::to_value(toml::from_str::<toml::Value>(&text).unwrap()).unwrap();
    let v = validator("gates.schema.json");
    assert_eq!(errors(&v, &doc), Vec::<String>::new());
    GatesFile::load(&root().join("ci/gates.toml")).unwrap();
    // Not vacuous: an unknown kind and a gate without an id are rejected.
    let bad = serde_json::json!({"gate": [{"id": "x", "kind": "vibes"}, {"kind": "golden"}]});
    assert!(errors(&v, &bad).len() >= 2);
}

#[test]
fn the_checked_in_gates_schema_is_the_generated_one() {
    let generated = bitnet_validate::gates::schema::gates_schema();
    let path = root().join("schemas/gates.schema.json");
    let checked_in: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        checked_in == generated,
        "{} differs from the schema generated from the gate types; regenerate it with `{}` \
         and review the diff",
        path.display(),
        bitnet_validate::gates::schema::REGENERATE
    );
}

/// A scratch repository root with a golden snapshot whose expected ids were tampered with.
fn tampered_root() -> PathBuf {
    let r = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tampered-root");
    std::fs::create_dir_all(r.join("golden")).unwrap();
    std::fs::create_dir_all(r.join("ci")).unwrap();
    std::fs::copy(
        root().join("ci/tokenizer-corpus.txt"),
        r.join("ci/tokenizer-corpus.txt"),
    )
    .unwrap();
    let mut s: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("golden/tokenizer-llama-spm.json")).unwrap(),
    )
    .unwrap();
    s["expected"][0]["ids"][1] = serde_json::json!(12345);
    std::fs::write(r.join("golden/tampered.json"), s.to_string()).unwrap();
    r
}

/// A gate as the gates file would declare it.
fn gate(id: &str, kind: &str, inputs: &str, thresholds: &str) -> Gate {
    let text = format!(
        "[[gate]]\nid = \"{id}\"\nkind = \"{kind}\"\ninputs = {{ {inputs} }}\nthresholds = {{ {thresholds} }}\n"
    );
    GatesFile::parse(&text, std::path::Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .gates
        .remove(0)
}

#[test]
fn reports_validate_and_show_failures() {
    let ctx = Context {
        shared: bitnet::env::get().shared.clone(),
        work: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reports"),
        data: root().join("ci"),
        root: tampered_root(),
        threads: 1,
    };
    let gates = [
        gate(
            "kernel-small",
            "kernel",
            "shapes = 8",
            "mismatched_shapes = 0",
        ),
        gate(
            "golden-tampered",
            "golden",
            "file = \"golden/tampered.json\"",
            "mismatches = 0",
        ),
        gate(
            "kernel-impossible",
            "kernel",
            "shapes = 4",
            "shapes = { min = 50 }",
        ),
    ];
    let outcomes: Vec<_> = gates.iter().map(|g| run_gate(g, &ctx)).collect();
    assert!(outcomes[0].passed, "{:?}", outcomes[0]);
    assert!(
        !outcomes[1].passed && outcomes[1].message.contains("differs"),
        "golden mismatch must fail: {:?}",
        outcomes[1]
    );
    assert!(
        !outcomes[2].passed,
        "a threshold miss must fail: {:?}",
        outcomes[2]
    );

    let summary = serde_json::to_value(report::summary(&outcomes)).unwrap();
    assert_eq!(
        errors(&validator("gates-summary.schema.json"), &summary),
        Vec::<String>::new()
    );
    assert_eq!(summary["required_failed"], 2);

    let xml = report::junit(&outcomes);
    let doc = roxmltree::Document::parse(&xml).expect("JUnit report is well-formed XML");
    let suites = doc.root_element();
    assert_eq!(suites.tag_name().name(), "testsuites");
    assert_eq!(suites.attribute("tests"), Some("3"));
    assert_eq!(suites.attribute("failures"), Some("2"));
    let cases: Vec<_> = suites
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 3);
    for (case, o) in cases.iter().zip(&outcomes) {
        assert_eq!(case.attribute("name"), Some(o.id.as_str()));
        assert!(case.attribute("time").unwrap().parse::<f64>().is_ok());
        let failure = case.children().find(|n| n.has_tag_name("failure"));
        assert_eq!(failure.is_some(), !o.passed, "{}", o.id);
    }
    let md = report::markdown(&outcomes);
    assert!(
        md.contains("| golden-tampered | golden | yes | **FAIL** |"),
        "{md}"
    );
}
