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
//!
//! The `probe` gate kind, which runs a scenario (and an optional baseline) for a gate, is
//! `crate::kinds::probe`.

pub mod kubelet;
pub mod run;
pub mod scenario;
pub mod sse;
pub mod verdict;

use crate::gates::check_thresholds;
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
    let misses = check_thresholds(&s.expect, &verdict.to_json())
        .iter()
        .map(ToString::to_string)
        .collect();
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
