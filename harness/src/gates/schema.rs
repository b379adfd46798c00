//! The JSON schema of the gates file, generated from the gate types (`schemars`): the checked-in
//! `schemas/gates.schema.json` is this function's output, and a test fails when they differ.
//! Regenerate it with `cargo run -p bitnet-validate -- schema gates > schemas/gates.schema.json`.
//!
//! The types give the gate's keys and each kind's inputs (`Spec`, tagged by `kind`, its
//! content under `inputs`); the file keeps `kind` and `inputs` as two keys of the gate, so each
//! kind's inputs become an `if kind = K then inputs: <K's inputs>` rule. Whether a kind needs
//! its inputs at all is asked of serde (does an empty table deserialize?); which kinds need a
//! model is `model_rule` (the loader's `Gate::check` says the same, tested below).

use super::spec::{Kind, Spec};
use super::GatesToml;
use serde::Deserialize;
use serde_json::{json, Value as Json};

/// The command that regenerates the checked-in schema.
pub const REGENERATE: &str =
    "cargo run -p bitnet-validate -- schema gates > schemas/gates.schema.json";

/// The gates file's schema, as written to `schemas/gates.schema.json`.
pub fn gates_schema() -> Json {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    // Spec's own schema (one branch per kind) only supplies the branches and the inputs
    // definitions; it is not referenced as a whole.
    generator.subschema_for::<Spec>();
    let spec = generator
        .definitions_mut()
        .remove("Spec")
        .expect("Spec is a definition");
    let mut root = generator.into_root_schema_for::<GatesToml>().to_value();
    root["$id"] = json!("https://bitnet.invalid/schemas/gates.schema.json");
    let rules: Vec<Json> = spec["oneOf"]
        .as_array()
        .expect("Spec is a tagged enum")
        .iter()
        .map(kind_rule)
        .collect();
    let gate = &mut root["$defs"]["Gate"];
    assert!(gate.is_object(), "the gate definition is named Gate");
    gate["allOf"] = Json::Array(rules);
    drop_null_defaults(&mut root);
    root
}

/// Removes `"default": null` (an absent optional key; TOML has no null).
fn drop_null_defaults(v: &mut Json) {
    match v {
        Json::Object(o) => {
            if o.get("default") == Some(&Json::Null) {
                o.remove("default");
            }
            o.values_mut().for_each(drop_null_defaults);
        }
        Json::Array(a) => a.iter_mut().for_each(drop_null_defaults),
        _ => {}
    }
}

/// `if kind = K then { inputs: K's inputs (required unless they all have defaults), model }`.
fn kind_rule(branch: &Json) -> Json {
    let name = branch["properties"]["kind"]["const"]
        .as_str()
        .expect("a Spec branch names its kind");
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.name() == name)
        .expect("every Spec kind is a Kind");
    let mut then = json!({ "properties": { "inputs": branch["properties"]["inputs"].clone() } });
    let defaults_suffice = Spec::deserialize(json!({ "kind": name, "inputs": {} })).is_ok();
    if !defaults_suffice {
        then["required"] = json!(["inputs"]);
    }
    then["allOf"] = json!([model_rule(kind)]);
    json!({
        "if": { "properties": { "kind": { "const": name } }, "required": ["kind"] },
        "then": then,
    })
}

/// Whether the gate's `model` is required or refused (`Spec::needs_model`).
fn model_rule(kind: Kind) -> Json {
    let required = json!({ "required": ["model"] });
    let refused = json!({ "not": { "required": ["model"] } });
    match kind {
        Kind::Crossval | Kind::Receipt | Kind::BadInput | Kind::Lint => required,
        Kind::Kernel | Kind::Golden | Kind::Probe => refused,
        // A model, or a vocabulary GGUF as `inputs.vocab`: exactly one.
        Kind::Tokenizer => json!({
            "if": { "required": ["inputs"], "properties": { "inputs": { "required": ["vocab"] } } },
            "then": refused,
            "else": required,
        }),
        // `bench = "model"` runs on a model; `bench = "kernel"` on a random matrix.
        Kind::Perf => json!({
            "if": { "properties": { "inputs": { "properties": { "bench": { "const": "kernel" } } } } },
            "then": refused,
            "else": required,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::GatesFile;
    use std::path::Path;

    /// For gates with and without a model, the schema accepts exactly what the loader does.
    #[test]
    fn the_schema_and_the_loader_agree_on_models() {
        let v = jsonschema::validator_for(&gates_schema()).unwrap();
        let model = r#"model = { source = "llama2c" }"#;
        let cases = [
            ("crossval", ""),
            ("receipt", ""),
            ("bad-input", ""),
            ("lint", ""),
            ("kernel", ""),
            ("golden", r#"inputs = { file = "golden/x.json" }"#),
            ("probe", r#"inputs = { scenario = "probes/x.toml" }"#),
            ("tokenizer", ""),
            ("tokenizer", r#"inputs = { vocab = "v.gguf" }"#),
            ("perf", r#"inputs = { bench = "model" }"#),
            ("perf", r#"inputs = { bench = "kernel" }"#),
        ];
        for (kind, inputs) in cases {
            for with_model in [false, true] {
                let text = format!(
                    "[[gate]]\nid = \"g\"\nkind = \"{kind}\"\n{inputs}\n{}\n",
                    if with_model { model } else { "" }
                );
                let loaded = GatesFile::parse(&text, Path::new("t.toml"));
                let doc =
                    serde_json::to_value(toml::from_str::<toml::Value>(&text).unwrap()).unwrap();
                assert_eq!(
                    v.is_valid(&doc),
                    loaded.is_ok(),
                    "{kind} {inputs} model {with_model}: loader says {:?}",
                    loaded.err().map(|e| e.to_string())
                );
            }
        }
    }
}
