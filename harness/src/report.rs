//! Gate run reports: JUnit XML (for CI systems), a JSON summary (schemas/gates-summary.schema.json)
//! and a Markdown table.

use crate::gates::Outcome;
use serde::Serialize;

#[derive(Serialize)]
pub struct Summary<'a> {
    pub schema_version: &'static str,
    pub passed: usize,
    pub failed: usize,
    pub required_failed: usize,
    pub seconds: f64,
    pub gates: &'a [Outcome],
}

pub fn summary(outcomes: &[Outcome]) -> Summary<'_> {
    Summary {
        schema_version: "1",
        passed: outcomes.iter().filter(|o| o.passed).count(),
        failed: outcomes.iter().filter(|o| !o.passed).count(),
        required_failed: outcomes.iter().filter(|o| !o.passed && o.required).count(),
        seconds: outcomes.iter().map(|o| o.seconds).sum(),
        gates: outcomes,
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                out.push_str(&format!("&#{};", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

pub fn junit(outcomes: &[Outcome]) -> String {
    let s = summary(outcomes);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x += &format!(
        "<testsuites name=\"bitnet-validate\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">\n",
        outcomes.len(),
        s.failed,
        s.seconds
    );
    x += &format!(
        "  <testsuite name=\"gates\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\">\n",
        outcomes.len(),
        s.failed,
        s.seconds
    );
    for o in outcomes {
        let kind = serde_json::to_value(o.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        x += &format!(
            "    <testcase name=\"{}\" classname=\"gates.{}\" time=\"{:.3}\">\n",
            xml_escape(&o.id),
            xml_escape(&kind),
            o.seconds
        );
        if !o.passed {
            let kind_word = if o.required {
                "required gate failed"
            } else {
                "optional gate failed"
            };
            x += &format!(
                "      <failure message=\"{}\" type=\"{kind_word}\"/>\n",
                xml_escape(&o.message)
            );
        }
        x += &format!(
            "      <system-out>{}</system-out>\n",
            xml_escape(&o.message)
        );
        x += "    </testcase>\n";
    }
    x += "  </testsuite>\n</testsuites>\n";
    x
}

pub fn markdown(outcomes: &[Outcome]) -> String {
    let mut m = String::from(
        "| gate | kind | required | result | time | details |\n|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let kind = serde_json::to_value(o.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        m += &format!(
            "| {} | {} | {} | {} | {:.1}s | {} |\n",
            o.id,
            kind,
            if o.required { "yes" } else { "no" },
            if o.passed { "pass" } else { "**FAIL**" },
            o.seconds,
            o.message.replace('|', "\\|").replace('\n', " ")
        );
    }
    let s = summary(outcomes);
    m += &format!(
        "\n{} passed, {} failed ({} required)\n",
        s.passed, s.failed, s.required_failed
    );
    m
}
