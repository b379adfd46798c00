//! Probe scenarios as data (`ci/probes/*.toml`): the kubelet's probes, the server to launch,
//! the load, the faults and the expected verdict. Unknown keys are errors, and every bound
//! (streams, requests, seconds) is checked before anything runs, so a scenario cannot ask for
//! unbounded traffic.

use crate::models::ModelSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Upper bounds that keep every scenario finite whatever its file says.
pub const MAX_STREAMS: usize = 256;
pub const MAX_REQUESTS: u64 = 100_000;
pub const MAX_BURST: usize = 1_000;
pub const MAX_SECONDS: f64 = 3_600.0;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    /// How to launch the server when no `--url` is given.
    #[serde(default)]
    pub server: Option<Server>,
    #[serde(default)]
    pub probes: Probes,
    pub load: Load,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    /// The expected verdict, in the gates' threshold syntax: `restarts = 0`,
    /// `live_p99_ms = { max = 500 }`, `ready_while_draining = false`.
    #[serde(default)]
    pub expect: toml::Table,
    /// What a simulated restart does: `"record"` (default) notes it and the server keeps
    /// running; `"kill"` SIGKILLs the launched server and starts a new one, as the kubelet
    /// would (requests in flight are then lost).
    #[serde(default)]
    pub on_restart: OnRestart,
    /// Hard bound on the whole run in seconds from the container start; everything still
    /// running then is cancelled (default: load duration + request timeout + drain + 10 s).
    #[serde(default)]
    pub deadline_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnRestart {
    #[default]
    Record,
    Kill,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub model: ModelSpec,
    /// Extra `bitnet serve` arguments (`--parallel 2`, `--queue 4`, `--threads 1`, ...).
    #[serde(default)]
    pub args: Vec<String>,
    /// `--startup-delay-ms`: the server waits this long before loading the model.
    #[serde(default)]
    pub startup_delay_ms: Option<u64>,
    /// `--drain-timeout` in seconds; the harness waits this long (plus a grace) for the
    /// process to exit after SIGTERM.
    #[serde(default = "default_drain")]
    pub drain_timeout_s: u64,
}

fn default_drain() -> u64 {
    30
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    #[serde(default)]
    pub startup: Option<ProbeSpec>,
    #[serde(default)]
    pub liveness: Option<ProbeSpec>,
    #[serde(default)]
    pub readiness: Option<ProbeSpec>,
}

/// One HTTP GET probe with the kubelet's fields and defaults (seconds may be fractional so
/// CI scenarios stay short).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    pub path: String,
    #[serde(default)]
    pub initial_delay_s: f64,
    #[serde(default = "ten")]
    pub period_s: f64,
    #[serde(default = "one_f")]
    pub timeout_s: f64,
    #[serde(default = "one")]
    pub success_threshold: u32,
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn ten() -> f64 {
    10.0
}
fn one_f() -> f64 {
    1.0
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl ProbeSpec {
    /// A probe with the kubelet's defaults.
    pub fn new(path: &str) -> Self {
        ProbeSpec {
            path: path.into(),
            initial_delay_s: 0.0,
            period_s: ten(),
            timeout_s: one_f(),
            success_threshold: one(),
            failure_threshold: three(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Concurrent clients; each sends one request at a time.
    pub streams: usize,
    /// No request starts later than this many seconds after the container start.
    pub duration_s: f64,
    /// At most this many load requests in all streams together.
    pub max_requests: u64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// The request's `model` field (omitted by default: the server's own model).
    #[serde(default)]
    pub model: Option<String>,
    /// SSE streaming (`"stream": true`) or one JSON answer.
    #[serde(default = "yes")]
    pub stream: bool,
    #[serde(default)]
    pub temperature: f64,
    #[serde(default = "one_u64")]
    pub seed: u64,
    /// Generate `max_tokens` even past EOS (llama.cpp's extension), so every request costs
    /// the same.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Client-side bound on one request, headers and body together.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_s: f64,
    /// Stream i waits i x stagger_s after the endpoint first turns Ready before its first
    /// request, so requests are spread over their length instead of starting in lockstep.
    #[serde(default)]
    pub stagger_s: f64,
    /// A stream pauses this long after a rejection or a refused connection.
    #[serde(default = "default_backoff")]
    pub backoff_s: f64,
}

fn default_max_tokens() -> u32 {
    32
}
fn default_prompt() -> String {
    "Once upon a time".into()
}
fn yes() -> bool {
    true
}
fn one_u64() -> u64 {
    1
}
fn default_request_timeout() -> f64 {
    30.0
}
fn default_backoff() -> f64 {
    0.1
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// SIGTERM to the server process `at_s` seconds after the container start. With
    /// `deregister_after_s` the simulated Service also drops the endpoint that long after the
    /// signal (as the endpoints controller does for a terminating pod); without it only the
    /// readiness probe takes the endpoint out.
    Sigterm {
        at_s: f64,
        #[serde(default)]
        deregister_after_s: Option<f64>,
    },
    /// A burst of `requests` extra concurrent requests at `at_s` (meant to exceed the
    /// server's parallel slots plus its queue).
    Overload {
        at_s: f64,
        requests: usize,
        #[serde(default)]
        max_tokens: Option<u32>,
    },
}

impl Fault {
    pub fn at_s(&self) -> f64 {
        match self {
            Fault::Sigterm { at_s, .. } | Fault::Overload { at_s, .. } => *at_s,
        }
    }
}

fn seconds(name: &str, v: f64, min_exclusive: bool) -> Result<(), String> {
    let ok = v.is_finite() && v <= MAX_SECONDS && if min_exclusive { v > 0.0 } else { v >= 0.0 };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name} = {v}: must be {} and at most {MAX_SECONDS}",
            if min_exclusive { "> 0" } else { ">= 0" }
        ))
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    /// Every field within its bounds, and the kubelet's own rules (liveness and startup
    /// probes must have successThreshold 1).
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("startup", &self.probes.startup),
            ("liveness", &self.probes.liveness),
            ("readiness", &self.probes.readiness),
        ] {
            let Some(p) = p else { continue };
            if !p.path.starts_with('/') {
                return Err(format!("probes.{name}.path {:?} must start with /", p.path));
            }
            seconds(
                &format!("probes.{name}.initial_delay_s"),
                p.initial_delay_s,
                false,
            )?;
            seconds(&format!("probes.{name}.period_s"), p.period_s, true)?;
            seconds(&format!("probes.{name}.timeout_s"), p.timeout_s, true)?;
            if p.success_threshold < 1 || p.failure_threshold < 1 {
                return Err(format!(
                    "probes.{name}: success_threshold and failure_threshold must be at least 1"
                ));
            }
            if name != "readiness" && p.success_threshold != 1 {
                return Err(format!(
                    "probes.{name}.success_threshold = {}: must be 1 for liveness and startup probes (as Kubernetes enforces)",
                    p.success_threshold
                ));
            }
        }
        let l = &self.load;
        if l.streams > MAX_STREAMS {
            return Err(format!(
                "load.streams = {}: at most {MAX_STREAMS}",
                l.streams
            ));
        }
        if l.max_requests > MAX_REQUESTS {
            return Err(format!(
                "load.max_requests = {}: at most {MAX_REQUESTS}",
                l.max_requests
            ));
        }
        if l.max_tokens == 0 {
            return Err("load.max_tokens must be at least 1".into());
        }
        seconds("load.duration_s", l.duration_s, true)?;
        seconds("load.request_timeout_s", l.request_timeout_s, true)?;
        seconds("load.backoff_s", l.backoff_s, false)?;
        seconds("load.stagger_s", l.stagger_s, false)?;
        if !l.temperature.is_finite() || l.temperature < 0.0 {
            return Err(format!(
                "load.temperature = {}: must be >= 0",
                l.temperature
            ));
        }
        let mut sigterms = 0;
        for f in &self.faults {
            seconds("fault.at_s", f.at_s(), false)?;
            match f {
                Fault::Sigterm {
                    deregister_after_s, ..
                } => {
                    sigterms += 1;
                    if let Some(d) = deregister_after_s {
                        seconds("fault.deregister_after_s", *d, false)?;
                    }
                }
                Fault::Overload {
                    requests,
                    max_tokens,
                    ..
                } => {
                    if *requests == 0 || *requests > MAX_BURST {
                        return Err(format!(
                            "overload fault: requests = {requests}, must be 1..={MAX_BURST}"
                        ));
                    }
                    if *max_tokens == Some(0) {
                        return Err("overload fault: max_tokens must be at least 1".into());
                    }
                }
            }
        }
        if sigterms > 1 {
            return Err("at most one sigterm fault".into());
        }
        if let Some(d) = self.deadline_s {
            seconds("deadline_s", d, true)?;
        }
        if let Some(s) = &self.server {
            if s.drain_timeout_s as f64 > MAX_SECONDS {
                return Err(format!("server.drain_timeout_s: at most {MAX_SECONDS}"));
            }
        }
        Ok(())
    }

    /// Whether a fault needs the server's process id.
    pub fn needs_pid(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f, Fault::Sigterm { .. }))
    }

    /// The drain timeout the server was given (its default when the harness did not launch it).
    pub fn drain_timeout_s(&self) -> f64 {
        self.server
            .as_ref()
            .map_or(default_drain(), |s| s.drain_timeout_s) as f64
    }

    /// The hard bound on the run.
    pub fn deadline_s(&self) -> f64 {
        self.deadline_s.unwrap_or_else(|| {
            let last_fault = self.faults.iter().map(Fault::at_s).fold(0.0, f64::max);
            self.load.duration_s.max(last_fault)
                + self.load.request_timeout_s
                + self.drain_timeout_s()
                + 10.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[load]
streams = 2
duration_s = 1.5
max_requests = 10
"#;

    #[test]
    fn defaults_are_the_kubelets() {
        let s = Scenario::parse(&format!(
            "{MINIMAL}\n[probes.liveness]\npath = \"/health/live\"\n"
        ))
        .unwrap();
        let p = s.probes.liveness.unwrap();
        assert_eq!(p, ProbeSpec::new("/health/live"));
        assert_eq!(
            (
                p.initial_delay_s,
                p.period_s,
                p.timeout_s,
                p.success_threshold,
                p.failure_threshold
            ),
            (0.0, 10.0, 1.0, 1, 3)
        );
        assert!(s.load.stream);
        assert_eq!(s.load.max_tokens, 32);
    }

    #[test]
    fn rejects_what_kubernetes_rejects_and_unbounded_load() {
        for bad in [
            "[probes.liveness]\npath = \"/health/live\"\nsuccess_threshold = 2\n",
            "[probes.startup]\npath = \"/health/ready\"\nsuccess_threshold = 3\n",
            "[probes.readiness]\npath = \"/health/ready\"\nperiod_s = 0\n",
            "[probes.readiness]\npath = \"/health/ready\"\nfailure_threshold = 0\n",
            "[probes.readiness]\npath = \"health\"\n",
            "[probes.readiness]\npath = \"/r\"\ntimeout_s = -1\n",
            "[probes.readiness]\npath = \"/r\"\nperiodSeconds = 3\n",
            "[[fault]]\nkind = \"sigterm\"\nat_s = 1\n[[fault]]\nkind = \"sigterm\"\nat_s = 2\n",
            "[[fault]]\nkind = \"overload\"\nat_s = 1\nrequests = 0\n",
            "[[fault]]\nkind = \"overload\"\nat_s = 1\nrequests = 5000\n",
            "[[fault]]\nkind = \"sigkill\"\nat_s = 1\n",
            "[[fault]]\nkind = \"sigterm\"\nat_s = 1\nsignal = 9\n",
        ] {
            let text = format!("{MINIMAL}\n{bad}");
            assert!(Scenario::parse(&text).is_err(), "accepted:\n{text}");
        }
        // Top-level keys (before the first table).
        for bad in [
            "unknown = 1\n",
            "on_restart = \"reboot\"\n",
            "deadline_s = 0\n",
        ] {
            let text = format!("{bad}{MINIMAL}");
            assert!(Scenario::parse(&text).is_err(), "accepted:\n{text}");
        }
        let s = Scenario::parse(&format!("on_restart = \"kill\"\n{MINIMAL}")).unwrap();
        assert_eq!(s.on_restart, OnRestart::Kill);
        // A readiness probe may ask for several successes.
        Scenario::parse(&format!(
            "{MINIMAL}\n[probes.readiness]\npath = \"/r\"\nsuccess_threshold = 3\n"
        ))
        .unwrap();
        for bad_load in [
            "[load]\nstreams = 100000\nduration_s = 1\nmax_requests = 1\n",
            "[load]\nstreams = 1\nduration_s = 1e9\nmax_requests = 1\n",
            "[load]\nstreams = 1\nduration_s = 1\nmax_requests = 1000000000\n",
            "[load]\nstreams = 1\nduration_s = 1\n",
            "[load]\nstreams = 1\nmax_requests = 1\n",
        ] {
            assert!(Scenario::parse(bad_load).is_err(), "accepted:\n{bad_load}");
        }
    }

    #[test]
    fn the_ci_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/probes");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = Scenario::load(&p).unwrap();
                assert!(
                    s.server.is_some(),
                    "{}: CI scenarios launch their server",
                    p.display()
                );
                assert!(!s.expect.is_empty(), "{}: no expectations", p.display());
                n += 1;
            }
        }
        assert!(n >= 4, "only {n} scenarios in {}", dir.display());
    }
}
