//! Probe simulators: would Kubernetes have restarted the pod, routed traffic to it while it
//! was not ready, or lost requests? A scenario (`ci/probes/*.toml`) declares the kubelet's
//! startup/liveness/readiness probes, the load (N concurrent streaming completions, bounded
//! in count and time) and faults (SIGTERM mid-stream, an overload burst; a slow model load is
//! the server's `--startup-delay-ms`). The harness launches `bitnet serve` (or attaches to a
//! running server), simulates the kubelet against it on the wall clock, routes the load
//! through a simulated Service that only sends to a Ready endpoint, and records a timeline and
//! a verdict, which the scenario's `[expect]` (or a `probe` gate's thresholds) judge.
//!
//! | module | what |
//! |---|---|
//! | `scenario` | the scenario file, its defaults (the kubelet's) and bounds |
//! | `kubelet` | the prober as a pure state machine of (time, result) |
//! | `sse` | SSE decoding and what a request came to (completed, rejected, lost, ...) |
//! | `verdict` | the records of a run, the verdict and the timeline computed from them |
//! | `run` | the driver: process, probes, load, faults on tokio + reqwest |

pub mod kubelet;
pub mod run;
pub mod scenario;
pub mod sse;
pub mod verdict;

use crate::gates::{check_thresholds, Context, Gate};
use crate::runners::RunResult;
pub use run::Target;
pub use scenario::Scenario;
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
pub use verdict::{RunRecord, Verdict};

/// A finished scenario: its verdict, the misses against `[expect]`, the timeline.
pub struct Report {
    pub verdict: Verdict,
    pub misses: Vec<String>,
    pub timeline: Json,
    pub record: RunRecord,
}

impl Report {
    /// The verdict plus `expectations_met` (the scenario's own `[expect]`).
    pub fn measurements(&self) -> Json {
        let mut m = self.verdict.to_json();
        m["expectations_met"] = json!(self.misses.is_empty());
        m
    }

    pub fn summary(&self) -> String {
        let v = &self.verdict;
        let opt = |x: Option<f64>, unit: &str| x.map_or("-".into(), |x| format!("{x:.1}{unit}"));
        format!(
            "restarts {}, lost {}, completed {}, rejected {}, unready-routed {}, live p99 {}, {} tok/s, startup {}, exit {}{}",
            v.restarts,
            v.lost_requests,
            v.completed_requests,
            v.rejected_requests,
            v.unready_routed,
            opt(v.live_p99_ms, " ms"),
            opt(v.tokens_per_s, ""),
            opt(v.startup_seconds, " s"),
            v.server_exit_code
                .map_or("-".into(), |c| c.to_string()),
            v.drain_seconds
                .map_or(String::new(), |d| format!(" after a {d:.2} s drain")),
        )
    }

    /// Writes `<stem>.verdict.json`, `<stem>.timeline.json` and `<stem>.server.log` in `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let put = |name: String, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
        };
        put(
            format!("{stem}.verdict.json"),
            serde_json::to_string_pretty(&self.measurements()).map_err(|e| e.to_string())?,
        )?;
        put(
            format!("{stem}.timeline.json"),
            serde_json::to_string_pretty(&self.timeline).map_err(|e| e.to_string())?,
        )?;
        put(
            format!("{stem}.server.log"),
            self.record.server_log.join("\n") + "\n",
        )
    }
}

/// Runs a scenario against a target and judges it against its `[expect]`.
pub fn execute(s: &Scenario, target: Target) -> Result<Report, String> {
    let record = run::run(s, target)?;
    let verdict = Verdict::from_run(&record, &run::readiness_path_probes(s));
    let misses = check_thresholds(&s.expect, &verdict.to_json());
    Ok(Report {
        timeline: verdict::timeline(&record),
        verdict,
        misses,
        record,
    })
}

/// The `bitnet` binary: next to the running executable, or one directory up (test
/// executables live in `target/<profile>/deps/`).
pub fn find_bitnet() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let name = format!("bitnet{}", std::env::consts::EXE_SUFFIX);
    let dir = exe.parent().ok_or("the executable has no directory")?;
    let candidates = [dir.join(&name), dir.join("..").join(&name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "the bitnet binary was not found at {} or {}: build it first (`cargo build --release -p bitnet-cli`, or `cargo build -p bitnet-cli` for a debug harness)",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// The `probe` gate: `inputs.scenario` (relative to the gates file's directory) is launched
/// with its `[server]`, the verdict is the measurements (plus `expectations_met`), and the
/// verdict, timeline and server log go to `<work>/reports/<id>.*`.
pub fn gate(g: &Gate, ctx: &Context) -> RunResult {
    let rel = g
        .inputs
        .get("scenario")
        .and_then(|v| v.as_str())
        .ok_or("a probe gate needs inputs.scenario = \"probes/NAME.toml\"")?;
    let s = Scenario::load(&ctx.data.join(rel))?;
    let server = s
        .server
        .as_ref()
        .ok_or_else(|| format!("{rel}: a probe gate launches its server: add [server]"))?;
    let model = server.model.materialize(ctx)?;
    let rounds = match g.inputs.get("rounds") {
        None => 1,
        Some(v) => match v.as_integer() {
            Some(n) if (1..=9).contains(&n) && g.inputs.contains_key("baseline") => n as usize,
            _ => return Err("inputs.rounds must be 1..=9, with inputs.baseline".into()),
        },
    };
    let bin = find_bitnet()?;
    // An optional baseline scenario runs first on its own server; the gate then also reports
    // this scenario's throughput as a ratio of the baseline's (e.g. 4 streams vs 1). With
    // `inputs.rounds = N` the pair runs N times, alternating, and the ratio is the median of
    // the N ratios: a throughput ratio from one short window on a shared machine is noisy.
    let baseline = match g.inputs.get("baseline").and_then(|v| v.as_str()) {
        None => None,
        Some(b) => {
            let bs = Scenario::load(&ctx.data.join(b))?;
            let bm = bs
                .server
                .as_ref()
                .ok_or_else(|| format!("{b}: a baseline scenario launches its server"))?
                .model
                .materialize(ctx)?;
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
                r.write(&ctx.work.join("reports"), &format!("{}.baseline", g.id))?;
                base_met &= r.misses.is_empty();
                Some(r)
            }
        };
        let target = Target::Launch {
            bin: bin.clone(),
            model: model.clone(),
        };
        let report = execute(&s, target)?;
        report.write(&ctx.work.join("reports"), &g.id)?;
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
    Ok((summary, measurements))
}
