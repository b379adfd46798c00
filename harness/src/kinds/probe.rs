//! The `probe` gate kind: `inputs.scenario` (relative to the gates file's directory) is
//! launched with its `[server]` (`crate::probe`), the verdict is the measurements (plus
//! `expectations_met`), and the verdict, timeline and server log go to
//! `<work>/reports/<id>.*`. With `inputs.baseline`, that scenario runs first on its own server
//! and the gate also reports `tokens_per_s_ratio` (median over `inputs.rounds`).

use crate::gates::spec::ProbeInputs;
use crate::gates::{build_model, Job, Measured, RunError};
use crate::probe::{execute, find_bitnet, Scenario, Target};
use serde_json::json;

pub fn run(job: &Job, inputs: &ProbeInputs) -> Result<Measured, RunError> {
    let ctx = job.ctx;
    let rel = inputs.scenario.display();
    let s = Scenario::load(&ctx.data.join(&inputs.scenario))?;
    let server = s
        .server
        .as_ref()
        .ok_or_else(|| format!("{rel}: a probe gate launches its server: add [server]"))?;
    let model = build_model(&server.model, ctx)?;
    // Checked at load (`Spec::check`): 1..=9, and only with a baseline.
    let rounds = inputs.rounds.unwrap_or(1) as usize;
    let bin = find_bitnet()?;
    // An optional baseline scenario runs first on its own server; the gate then also reports
    // this scenario's throughput as a ratio of the baseline's (e.g. 4 streams vs 1). With
    // `inputs.rounds = N` the pair runs N times, alternating, and the ratio is the median of
    // the N ratios: a throughput ratio from one short window on a shared machine is noisy.
    let baseline = match &inputs.baseline {
        None => None,
        Some(b) => {
            let bs = Scenario::load(&ctx.data.join(b))?;
            let server = bs.server.as_ref().ok_or_else(|| {
                format!("{}: a baseline scenario launches its server", b.display())
            })?;
            let bm = build_model(&server.model, ctx)?;
            Some((bs, bm))
        }
    };
    let mut ratios = Vec::new();
    let mut base_met = true;
    // Every round's expectations must hold, not only the last one's.
    let mut misses = Vec::new();
    let mut last = None;
    for round in 0..rounds {
        let base = match &baseline {
            None => None,
            Some((bs, bm)) => {
                let target = Target::Launch {
                    bin: bin.clone(),
                    model: bm.clone(),
                };
                let r = execute(bs, target)?;
                r.write(&ctx.work.join("reports"), &format!("{}.baseline", job.id))?;
                base_met &= r.misses.is_empty();
                Some(r)
            }
        };
        let target = Target::Launch {
            bin: bin.clone(),
            model: model.clone(),
        };
        let report = execute(&s, target)?;
        report.write(&ctx.work.join("reports"), job.id)?;
        misses.extend(report.misses.iter().map(|m| match rounds {
            1 => m.clone(),
            _ => format!("round {}: {m}", round + 1),
        }));
        if let Some(b) = &base {
            let (ours, base) = (report.verdict.tokens_per_s, b.verdict.tokens_per_s);
            ratios.push((ours.unwrap_or(0.0), base.unwrap_or(0.0)));
            if rounds > 1 {
                eprintln!(
                    "  round {}: {:.1} vs baseline {:.1} tok/s",
                    round + 1,
                    ours.unwrap_or(0.0),
                    base.unwrap_or(0.0)
                );
            }
        }
        last = Some(report);
    }
    let report = last.ok_or("no rounds ran")?;
    let mut summary = report.summary();
    let mut measurements = report.measurements();
    measurements["expectations_met"] = json!(misses.is_empty());
    if baseline.is_some() {
        let each: Vec<f64> = ratios.iter().map(|(o, b)| o / b.max(1e-9)).collect();
        let ratio = bitnet::measure::median(&each);
        let (ours, base) = ratios[ratios.len() - 1];
        measurements["baseline_tokens_per_s"] = json!(base);
        measurements["baseline_expectations_met"] = json!(base_met);
        measurements["tokens_per_s_ratio"] = json!((ratio * 1000.0).round() / 1000.0);
        measurements["tokens_per_s_ratios"] = json!(each
            .iter()
            .map(|r| (r * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>());
        summary = if rounds == 1 {
            format!("{summary}; {ours:.1} vs baseline {base:.1} tok/s = {ratio:.2}x")
        } else {
            let list: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
            format!(
                "{summary}; median of {rounds} rounds {ratio:.2}x ({}; last {ours:.1} vs baseline {base:.1} tok/s)",
                list.join(", ")
            )
        };
    }
    if !misses.is_empty() {
        summary = format!(
            "{summary}; scenario expectations missed: {}",
            misses.join("; ")
        );
    }
    Ok(Measured::new(summary, measurements))
}
