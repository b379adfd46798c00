//! Loading gates files: every way a gate can be wrong is an error naming the gate and the key.

use super::*;
use crate::crossval::RefName;
use crate::gates::spec::{CrossvalInputs, TokenizerInputs};

fn parse(text: &str) -> Result<GatesFile, String> {
    GatesFile::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    parse(text).expect_err(text)
}

const REAL: &str = "model = { source = \"llama2c\" }";

#[test]
fn a_gate_loads_typed_with_documented_defaults() {
    let f = parse(&format!(
        "[[gate]]\nid = \"c\"\nkind = \"crossval\"\n{REAL}\ninputs = {{ mode = \"batch\", also = [\"bitnet.cpp-2026\"], head = \"q8_0\" }}\nthresholds = {{ greedy_ok = true }}"
    ))
    .unwrap();
    let g = &f.gates[0];
    assert!(g.required && !g.release_only);
    assert_eq!(g.kind(), Kind::Crossval);
    assert_eq!(
        g.spec,
        Spec::Crossval(CrossvalInputs {
            mode: bitnet::eval::Mode::Batch,
            also: vec![RefName::Cpp2026],
            head: Some(bitnet::model::HeadFormat::Q8_0),
            ..CrossvalInputs::default()
        })
    );
    // A kind whose inputs all have defaults needs no inputs table.
    let f = parse(&format!(
        "[[gate]]\nid = \"t\"\nkind = \"tokenizer\"\n{REAL}"
    ))
    .unwrap();
    assert_eq!(
        f.gates[0].spec,
        Spec::Tokenizer(TokenizerInputs {
            vocab: None,
            corpus: "tokenizer-corpus.txt".into(),
            reference_vocab: None,
        })
    );
}

#[test]
fn unknown_keys_and_kinds_are_named() {
    let e = err(&format!(
        "[[gate]]\nid = \"a\"\nkind = \"lint\"\n{REAL}\nthreshold = {{}}"
    ));
    assert!(
        e.contains("gate a") && e.contains("unknown field `threshold`"),
        "{e}"
    );
    let e = err(&format!(
        "[[gate]]\nid = \"b\"\nkind = \"crossval\"\n{REAL}\ninputs = {{ mdoe = \"seq\" }}"
    ));
    assert!(
        e.contains("gate b") && e.contains("unknown field `mdoe`"),
        "{e}"
    );
    let e = err(&format!(
        "[[gate]]\nid = \"l\"\nkind = \"lint\"\n{REAL}\ninputs = {{ strict = true }}"
    ));
    assert!(
        e.contains("gate l") && e.contains("unknown field `strict`"),
        "{e}"
    );
    let e = err("[[gate]]\nid = \"v\"\nkind = \"vibes\"");
    assert!(
        e.contains("gate v") && e.contains("unknown variant `vibes`"),
        "{e}"
    );
    let e = err("[[gate]]\nkind = \"kernel\"");
    assert!(
        e.contains("gate #1 (no id)") && e.contains("missing field `id`"),
        "{e}"
    );
    let e = err("[[gates]]\nid = \"x\"");
    assert!(
        e.contains("t.toml") && e.contains("unknown field `gates`"),
        "{e}"
    );
}

#[test]
fn wrongly_typed_inputs_are_named() {
    for (inputs, want) in [
        ("mode = \"sideways\"", "unknown variant `sideways`"),
        ("tokens = -3", "tokens"),
        ("reference = \"llama.cpp\"", "unknown variant `llama.cpp`"),
        ("head = \"q4_0\"", "unknown head format"),
        ("prompts = \"one\"", "prompts"),
        ("near_tie = \"close\"", "near_tie"),
    ] {
        let e = err(&format!(
            "[[gate]]\nid = \"c\"\nkind = \"crossval\"\n{REAL}\ninputs = {{ {inputs} }}"
        ));
        assert!(e.contains("gate c") && e.contains(want), "{inputs}: {e}");
    }
}

#[test]
fn models_inputs_and_ids_are_checked() {
    for (gate, want) in [
        ("kind = \"crossval\"", "a crossval gate needs a model"),
        ("kind = \"tokenizer\"", "needs a model or a vocab input"),
        (
            "kind = \"golden\"\ninputs = { file = \"golden/x.json\" }\nmodel = { source = \"llama2c\" }",
            "reads no model",
        ),
        (
            "kind = \"tokenizer\"\ninputs = { vocab = \"v.gguf\" }\nmodel = { source = \"llama2c\" }",
            "not both",
        ),
        ("kind = \"golden\"", "missing field `file`"),
        (
            "kind = \"probe\"\ninputs = { scenario = \"probes/a.toml\", rounds = 3 }",
            "with inputs.baseline",
        ),
        (
            "kind = \"probe\"\ninputs = { scenario = \"probes/a.toml\", baseline = \"probes/b.toml\", rounds = 10 }",
            "1..=9",
        ),
        (
            "kind = \"crossval\"\nmodel = { source = \"hf\", fixture = \"f\" }\ninputs = { reference = \"transformers\", tokens = 8 }",
            "give no prompts or tokens",
        ),
        (
            "kind = \"kernel\"\nmodel = { source = \"llama2c\", weights = \"i2_s\", vocab = \"x\" }",
            "unknown field `vocab`",
        ),
    ] {
        let e = err(&format!("[[gate]]\nid = \"g\"\n{gate}"));
        assert!(e.contains("gate g") && e.contains(want), "{gate}: {e}");
    }
    let e = err("[[gate]]\nid = \"Bad_Id\"\nkind = \"kernel\"");
    assert!(e.contains("must match"), "{e}");
    let e = err("[[gate]]\nid = \"k\"\nkind = \"kernel\"\n[[gate]]\nid = \"k\"\nkind = \"kernel\"");
    assert!(e.contains("duplicate gate id \"k\""), "{e}");
    let e = GatesFile::load(Path::new("/nonexistent/gates.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/gates.toml: "), "{e}");
}

#[test]
fn head_format_names_read_back() {
    for h in bitnet::model::HeadFormat::ALL {
        let name = crate::gates::spec::head_name(h);
        assert_eq!(name.parse::<bitnet::model::HeadFormat>(), Ok(h), "{name}");
    }
}

#[test]
fn kind_names_are_the_serde_names() {
    for k in Kind::ALL {
        assert_eq!(serde_json::to_value(k).unwrap(), k.name(), "{k:?}");
    }
}
