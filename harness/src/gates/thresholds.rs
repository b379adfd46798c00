//! Thresholds, checked generically against a gate's measurements (a JSON object):
//! `name = { min = .., max = .., abs_max = .. }` or an exact value (`greedy_ok = true`); a
//! measurement that is itself an object takes a table of thresholds
//! (`"bitnet.cpp-2026" = { cosine_min = { min = 0.999 } }`). A threshold naming a measurement
//! that does not exist is a miss. Probe scenarios' `[expect]` uses the same syntax.

use serde_json::Value as Json;

/// Thresholds as written: measurement name to bound, exact value, or group.
pub type Thresholds = toml::Table;

/// One threshold not met.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Miss {
    #[error("{name}: no such measurement")]
    NoSuchMeasurement { name: String },
    /// A bound (`min`, `max`, `abs_max`, or an unknown operator, which no value meets).
    #[error("{name} = {got}, required {op} {bound}")]
    Bound {
        name: String,
        got: Json,
        op: String,
        bound: toml::Value,
    },
    #[error("{name} = {got}, required {want}")]
    NotEqual {
        name: String,
        got: Json,
        want: toml::Value,
    },
    /// A miss inside a group of measurements (`bitnet.cpp-2026.cosine_min ...`).
    #[error("{group}.{miss}")]
    InGroup { group: String, miss: Box<Miss> },
}

/// Checks every threshold against the measurements; returns the misses.
pub fn check_thresholds(thresholds: &Thresholds, m: &Json) -> Vec<Miss> {
    let num = |v: &toml::Value| v.as_float().or(v.as_integer().map(|i| i as f64));
    let mut misses = Vec::new();
    for (name, want) in thresholds {
        let Some(got) = m.get(name) else {
            misses.push(Miss::NoSuchMeasurement { name: name.clone() });
            continue;
        };
        match want {
            // A table of thresholds for a group of measurements (another reference's figures).
            toml::Value::Table(inner) if got.is_object() => {
                misses.extend(
                    check_thresholds(inner, got)
                        .into_iter()
                        .map(|miss| Miss::InGroup {
                            group: name.clone(),
                            miss: Box::new(miss),
                        }),
                );
            }
            toml::Value::Table(bounds) => {
                for (op, bound) in bounds {
                    let ok = match (op.as_str(), num(bound), got.as_f64()) {
                        ("min", Some(w), Some(g)) => g >= w,
                        ("max", Some(w), Some(g)) => g <= w,
                        ("abs_max", Some(w), Some(g)) => g.abs() <= w,
                        _ => false,
                    };
                    if !ok {
                        misses.push(Miss::Bound {
                            name: name.clone(),
                            got: got.clone(),
                            op: op.clone(),
                            bound: bound.clone(),
                        });
                    }
                }
            }
            toml::Value::Boolean(b) if got.as_bool() == Some(*b) => {}
            toml::Value::String(s) if got.as_str() == Some(s.as_str()) => {}
            v if num(v).is_some() && got.as_f64() == num(v) => {}
            _ => misses.push(Miss::NotEqual {
                name: name.clone(),
                got: got.clone(),
                want: want.clone(),
            }),
        }
    }
    misses
}

/// The JSON schema of a thresholds table (the gates file's `thresholds`); one threshold is the
/// definition `Threshold`.
pub(crate) fn schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.definitions_mut().insert(
        "Threshold".into(),
        serde_json::json!({
            "description": "A bound (`{ min, max, abs_max }`, at least one) or an exact value",
            "oneOf": [
                {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": false,
                    "properties": {
                        "min": { "type": "number" },
                        "max": { "type": "number" },
                        "abs_max": { "type": "number", "minimum": 0 }
                    }
                },
                { "type": ["boolean", "number", "string"] }
            ]
        }),
    );
    schemars::json_schema!({
        "description": "Measurement name to a threshold; a measurement that is a group (another reference's figures) takes a table of them. A threshold naming no measurement fails the gate.",
        "type": "object",
        "additionalProperties": {
            "oneOf": [
                { "$ref": "#/$defs/Threshold" },
                {
                    "description": "thresholds on a group of measurements (another reference's figures)",
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": { "not": { "enum": ["min", "max", "abs_max"] } },
                    "additionalProperties": { "$ref": "#/$defs/Threshold" }
                }
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> Thresholds {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn thresholds_pass_and_fail() {
        let m = serde_json::json!({"cosine_min": 0.9995, "max_abs_diff": 0.3, "nll_delta": -0.02, "greedy_ok": true});
        let t =
            table("cosine_min = { min = 0.999 }\nmax_abs_diff = { max = 0.5 }\ngreedy_ok = true");
        assert!(check_thresholds(&t, &m).is_empty());
        let t = table(
            "nll_delta = { abs_max = 0.01 }\nmax_abs_diff = { max = 0.2 }\ngreedy_ok = false",
        );
        let misses = check_thresholds(&t, &m);
        assert_eq!(misses.len(), 3);
        assert_eq!(
            misses[1].to_string(),
            "max_abs_diff = 0.3, required max 0.2",
            "{misses:?}"
        );
        let misses = check_thresholds(&table("nonexistent_max = 1.0"), &m);
        assert_eq!(
            misses,
            vec![Miss::NoSuchMeasurement {
                name: "nonexistent_max".into()
            }],
            "a threshold on a missing measurement fails"
        );
        assert_eq!(
            misses[0].to_string(),
            "nonexistent_max: no such measurement"
        );
        let misses = check_thresholds(&table("cosine_min = { minn = 0.5 }"), &m);
        assert_eq!(misses.len(), 1, "an unknown operator is met by nothing");
    }

    #[test]
    fn grouped_thresholds_check_the_group() {
        let m = serde_json::json!({"cosine_min": 0.9995, "bitnet.cpp-2026": {"cosine_min": 0.99, "greedy_ok": true}});
        let t = table("\"bitnet.cpp-2026\" = { cosine_min = { min = 0.999 }, greedy_ok = true }");
        let misses = check_thresholds(&t, &m);
        assert_eq!(misses.len(), 1, "{misses:?}");
        assert!(
            misses[0]
                .to_string()
                .starts_with("bitnet.cpp-2026.cosine_min"),
            "{misses:?}"
        );
        let t = table("transformers = { cosine_min = { min = 0.9 } }");
        assert_eq!(check_thresholds(&t, &m).len(), 1, "a missing group fails");
    }
}
