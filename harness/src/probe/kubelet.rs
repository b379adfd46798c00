//! The kubelet's prober as a pure state machine driven by (time, probe result); no clock, no
//! I/O, so every rule is unit-tested with a simulated server.
//!
//! Rules (Kubernetes' `prober/worker.go`, without its start-up jitter):
//! - each probe's first attempt is `initialDelaySeconds` after the container start, then one
//!   every `periodSeconds` on that grid; attempts of one probe never overlap, and an attempt
//!   that outlasts the period is followed at once by the one tick Go's ticker buffers, then the
//!   grid resumes;
//! - the startup probe runs first; liveness and readiness attempts only start once it has
//!   succeeded (without a startup probe the container counts as started at once);
//! - an attempt that takes longer than `timeoutSeconds` is a failure;
//! - results are counted in consecutive runs: `failureThreshold` consecutive startup or
//!   liveness failures restart the container (a new container start: counters reset, the
//!   startup probe runs again, readiness is lost); readiness turns Ready after
//!   `successThreshold` consecutive successes and NotReady after `failureThreshold`
//!   consecutive failures; it starts NotReady. Without a readiness probe a started container
//!   is Ready.
//!
//! Length: ~615 lines of which half are the unit tests of each prober rule, beside the rule.

use super::scenario::{ProbeSpec, Probes};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];
    fn idx(self) -> usize {
        self as usize
    }
}

/// A state change the kubelet would act on.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The startup probe succeeded (or there is none): liveness and readiness begin.
    Started,
    /// The endpoint joins the Service.
    Ready,
    /// The endpoint leaves the Service.
    NotReady,
    /// `failureThreshold` consecutive failures of a startup or liveness probe: the kubelet
    /// kills and restarts the container.
    Restart { probe: ProbeKind, restarts: u32 },
}

/// One probe attempt in flight; its result is only counted if no restart happened since.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attempt {
    pub kind: ProbeKind,
    pub epoch: u32,
    pub started: f64,
}

#[derive(Clone, Debug)]
struct Slot {
    spec: Option<ProbeSpec>,
    /// When the next attempt is due (None while inactive or in flight).
    due: Option<f64>,
    /// The grid tick the last (or next) attempt belongs to.
    grid: f64,
    in_flight: bool,
    successes: u32,
    failures: u32,
}

#[derive(Clone, Debug)]
pub struct Kubelet {
    slots: [Slot; 3],
    epoch: u32,
    container_start: f64,
    started: bool,
    ready: bool,
    restarts: u32,
}

/// Tolerance for grid arithmetic on fractional seconds.
const EPS: f64 = 1e-9;

impl Kubelet {
    /// The container starts at `t0` (seconds on the caller's clock).
    pub fn new(probes: &Probes, t0: f64) -> Self {
        let slot = |spec: &Option<ProbeSpec>| Slot {
            spec: spec.clone(),
            due: None,
            grid: 0.0,
            in_flight: false,
            successes: 0,
            failures: 0,
        };
        let mut k = Kubelet {
            slots: [
                slot(&probes.startup),
                slot(&probes.liveness),
                slot(&probes.readiness),
            ],
            epoch: 0,
            container_start: t0,
            started: false,
            ready: false,
            restarts: 0,
        };
        k.reset(t0);
        k
    }

    /// The changes that hold from the container start (a container without a startup probe
    /// is started at once; one without a readiness probe is then Ready).
    pub fn initial_changes(&self) -> Vec<Change> {
        let mut c = Vec::new();
        if self.started {
            c.push(Change::Started);
        }
        if self.ready {
            c.push(Change::Ready);
        }
        c
    }

    fn reset(&mut self, t0: f64) {
        self.container_start = t0;
        self.started = self.slots[ProbeKind::Startup.idx()].spec.is_none();
        self.ready = self.started && self.slots[ProbeKind::Readiness.idx()].spec.is_none();
        for kind in ProbeKind::ALL {
            let active = self.active(kind);
            let s = &mut self.slots[kind.idx()];
            s.successes = 0;
            s.failures = 0;
            s.in_flight = false;
            s.due = None;
            if let Some(spec) = &s.spec {
                s.grid = t0 + spec.initial_delay_s;
                if active {
                    s.due = Some(s.grid);
                }
            }
        }
    }

    fn active(&self, kind: ProbeKind) -> bool {
        self.slots[kind.idx()].spec.is_some()
            && match kind {
                ProbeKind::Startup => !self.started,
                _ => self.started,
            }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }
    pub fn started(&self) -> bool {
        self.started
    }
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
    pub fn container_start(&self) -> f64 {
        self.container_start
    }
    pub fn spec(&self, kind: ProbeKind) -> Option<&ProbeSpec> {
        self.slots[kind.idx()].spec.as_ref()
    }

    /// The earliest attempt due (time, probe), if any probe is waiting for its tick.
    pub fn next_due(&self) -> Option<(f64, ProbeKind)> {
        ProbeKind::ALL
            .iter()
            .filter_map(|&k| {
                let s = &self.slots[k.idx()];
                s.due.filter(|_| !s.in_flight).map(|t| (t, k))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
    }

    /// Starts the attempt of `kind` at `t` (which should be at or after its due time).
    pub fn begin(&mut self, kind: ProbeKind, t: f64) -> Attempt {
        let s = &mut self.slots[kind.idx()];
        s.in_flight = true;
        s.due = None;
        Attempt {
            kind,
            epoch: self.epoch,
            started: t,
        }
    }

    /// The result of an attempt that ended at `t`: `ok` is the probe's own verdict (HTTP
    /// 200-399); an attempt longer than its timeout fails whatever it returned. Results of
    /// attempts begun before a restart are ignored.
    pub fn finish(&mut self, a: Attempt, t: f64, ok: bool) -> Vec<Change> {
        let mut changes = Vec::new();
        if a.epoch != self.epoch {
            return changes;
        }
        let Some(spec) = self.slots[a.kind.idx()].spec.clone() else {
            return changes;
        };
        let ok = ok && t - a.started <= spec.timeout_s + EPS;
        {
            let s = &mut self.slots[a.kind.idx()];
            s.in_flight = false;
            if ok {
                s.successes += 1;
                s.failures = 0;
            } else {
                s.failures += 1;
                s.successes = 0;
            }
            // Next tick: the grid, or at once if a tick passed while this attempt ran.
            let n = ((t - s.grid) / spec.period_s + EPS).floor();
            if n >= 1.0 {
                s.grid += n * spec.period_s;
                s.due = Some(t);
            } else {
                s.grid += spec.period_s;
                s.due = Some(s.grid);
            }
        }
        let s = &self.slots[a.kind.idx()];
        let (successes, failures) = (s.successes, s.failures);
        match a.kind {
            ProbeKind::Startup => {
                if ok && successes >= spec.success_threshold {
                    self.started = true;
                    self.slots[ProbeKind::Startup.idx()].due = None;
                    changes.push(Change::Started);
                    for k in [ProbeKind::Liveness, ProbeKind::Readiness] {
                        let s = &mut self.slots[k.idx()];
                        if let Some(spec) = &s.spec {
                            // First tick of that probe's grid at or after now.
                            if s.grid < t {
                                s.grid +=
                                    ((t - s.grid) / spec.period_s - EPS).ceil() * spec.period_s;
                            }
                            s.due = Some(s.grid);
                        }
                    }
                    if self.slots[ProbeKind::Readiness.idx()].spec.is_none() {
                        self.ready = true;
                        changes.push(Change::Ready);
                    }
                } else if !ok && failures >= spec.failure_threshold {
                    changes.extend(self.restart(t, ProbeKind::Startup));
                }
            }
            ProbeKind::Liveness => {
                if !ok && failures >= spec.failure_threshold {
                    changes.extend(self.restart(t, ProbeKind::Liveness));
                }
            }
            ProbeKind::Readiness => {
                if ok && successes >= spec.success_threshold && !self.ready {
                    self.ready = true;
                    changes.push(Change::Ready);
                } else if !ok && failures >= spec.failure_threshold && self.ready {
                    self.ready = false;
                    changes.push(Change::NotReady);
                }
            }
        }
        changes
    }

    fn restart(&mut self, t: f64, probe: ProbeKind) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.ready {
            changes.push(Change::NotReady);
        }
        self.restarts += 1;
        self.epoch += 1;
        changes.push(Change::Restart {
            probe,
            restarts: self.restarts,
        });
        self.reset(t);
        changes.extend(self.initial_changes());
        changes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn spec(path: &str, delay: f64, period: f64, timeout: f64, succ: u32, fail: u32) -> ProbeSpec {
        ProbeSpec {
            path: path.into(),
            initial_delay_s: delay,
            period_s: period,
            timeout_s: timeout,
            success_threshold: succ,
            failure_threshold: fail,
        }
    }

    /// A simulated pod: `server(kind, t)` gives (latency, probe verdict) of an attempt
    /// started at `t`. Runs the kubelet until `until` as a discrete-event simulation and
    /// returns every attempt (kind, start, ok-as-counted) and every change with its time.
    pub(crate) type Trace = (Vec<(ProbeKind, f64, bool)>, Vec<(f64, Change)>);

    pub(crate) fn simulate(
        probes: &Probes,
        until: f64,
        server: impl Fn(ProbeKind, f64) -> (f64, bool),
    ) -> (Trace, Kubelet) {
        let mut k = Kubelet::new(probes, 0.0);
        let mut attempts = Vec::new();
        let mut changes: Vec<(f64, Change)> =
            k.initial_changes().into_iter().map(|c| (0.0, c)).collect();
        // In-flight attempts: (finish time, attempt, ok).
        let mut flight: Vec<(f64, Attempt, bool)> = Vec::new();
        loop {
            let due = k.next_due();
            let fin = flight
                .iter()
                .enumerate()
                .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
                .map(|(i, f)| (f.0, i));
            // Finishes first at equal times (as a result arriving before the next tick).
            match (due, fin) {
                (_, Some((tf, i))) if due.is_none_or(|(td, _)| tf <= td) => {
                    if tf > until {
                        break;
                    }
                    let (tf, a, ok) = flight.remove(i);
                    let timeout = k.spec(a.kind).unwrap().timeout_s;
                    let counted = ok && tf - a.started <= timeout + EPS;
                    attempts.push((a.kind, a.started, counted));
                    for c in k.finish(a, tf, ok) {
                        changes.push((tf, c));
                    }
                }
                (Some((td, kind)), _) => {
                    if td > until {
                        break;
                    }
                    let a = k.begin(kind, td);
                    let (lat, ok) = server(kind, td);
                    // The prober gives up at the timeout.
                    let timeout = k.spec(kind).unwrap().timeout_s;
                    let (end, ok) = if lat > timeout {
                        (td + timeout + 1e-6, false)
                    } else {
                        (td + lat, ok)
                    };
                    flight.push((end, a, ok));
                }
                (None, None) => break,
                (None, Some(_)) => unreachable!(),
            }
        }
        ((attempts, changes), k)
    }

    fn restarts(changes: &[(f64, Change)]) -> Vec<f64> {
        changes
            .iter()
            .filter(|(_, c)| matches!(c, Change::Restart { .. }))
            .map(|(t, _)| *t)
            .collect()
    }

    fn first(changes: &[(f64, Change)], want: &Change) -> Option<f64> {
        changes.iter().find(|(_, c)| c == want).map(|(t, _)| *t)
    }

    /// A server that becomes ready at `ready_at` (absolute time: the real process is not
    /// restarted by a simulated restart) and answers in 10 ms.
    fn slow_loader(ready_at: f64) -> impl Fn(ProbeKind, f64) -> (f64, bool) {
        move |kind, t| match kind {
            ProbeKind::Liveness => (0.01, true),
            _ => (0.01, t >= ready_at),
        }
    }

    #[test]
    fn startup_threshold_too_small_restarts_the_container() {
        // 3 failures 1 s apart: restart at t=2.01 (attempts at 0, 1, 2), the new container
        // probes at 2.01, 3.01, 4.01 -> restart at 4.02; then 4.02 fails, 5.02 succeeds.
        let probes = Probes {
            startup: Some(spec("/ready", 0.0, 1.0, 1.0, 1, 3)),
            ..Default::default()
        };
        let ((_, changes), k) = simulate(&probes, 10.0, slow_loader(5.0));
        let r = restarts(&changes);
        assert_eq!(r.len(), 2, "{changes:?}");
        assert!(
            (r[0] - 2.01).abs() < 1e-6 && (r[1] - 4.02).abs() < 1e-6,
            "{r:?}"
        );
        assert_eq!(k.restarts(), 2);
        let started = first(&changes, &Change::Started).unwrap();
        assert!((started - 5.03).abs() < 1e-6, "started at {started}");
        // No readiness probe: ready as soon as started.
        assert_eq!(first(&changes, &Change::Ready), Some(started));
    }

    #[test]
    fn a_generous_startup_probe_tolerates_a_slow_load() {
        let probes = Probes {
            startup: Some(spec("/ready", 0.0, 0.5, 1.0, 1, 20)),
            liveness: Some(spec("/live", 0.0, 0.5, 1.0, 1, 3)),
            readiness: Some(spec("/ready", 0.0, 0.5, 1.0, 1, 1)),
        };
        let ((attempts, changes), k) = simulate(&probes, 8.0, slow_loader(3.0));
        assert_eq!(k.restarts(), 0);
        let started = first(&changes, &Change::Started).unwrap();
        assert!((started - 3.01).abs() < 1e-6);
        // Liveness and readiness only after startup succeeded, on their grid.
        for (kind, t, _) in &attempts {
            if *kind != ProbeKind::Startup {
                assert!(
                    *t >= started,
                    "{kind:?} probed at {t} before start {started}"
                );
            }
        }
        let first_ready_probe = attempts
            .iter()
            .find(|a| a.0 == ProbeKind::Readiness)
            .unwrap();
        assert_eq!(first_ready_probe.1, 3.5);
        let ready = first(&changes, &Change::Ready).unwrap();
        assert!((ready - 3.51).abs() < 1e-6);
        // Exactly 7 startup attempts (0, 0.5, ..., 3.0).
        assert_eq!(
            attempts
                .iter()
                .filter(|a| a.0 == ProbeKind::Startup)
                .count(),
            7
        );
    }

    #[test]
    fn the_failure_threshold_is_exact() {
        // Startup failureThreshold n against a server ready at t: restart iff the
        // n attempts at 0, p, .., (n-1)p all fail, i.e. (n-1)p < t.
        for n in 1..8u32 {
            for ready_at in [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5] {
                let probes = Probes {
                    startup: Some(spec("/ready", 0.0, 0.5, 1.0, 1, n)),
                    ..Default::default()
                };
                let ((_, changes), _) = simulate(&probes, 4.0, slow_loader(ready_at));
                let restarted = !restarts(&changes).is_empty();
                let last_attempt = (n - 1) as f64 * 0.5;
                assert_eq!(
                    restarted,
                    last_attempt < ready_at,
                    "n={n} ready_at={ready_at}: {changes:?}"
                );
            }
        }
    }

    #[test]
    fn initial_delay_counts_from_the_container_start() {
        let probes = Probes {
            liveness: Some(spec("/live", 2.5, 1.0, 1.0, 1, 3)),
            readiness: Some(spec("/ready", 1.0, 0.25, 1.0, 1, 3)),
            ..Default::default()
        };
        let ((attempts, changes), _) = simulate(&probes, 5.0, |_, _| (0.01, true));
        let live: Vec<f64> = attempts
            .iter()
            .filter(|a| a.0 == ProbeKind::Liveness)
            .map(|a| a.1)
            .collect();
        assert_eq!(live, vec![2.5, 3.5, 4.5]);
        let ready: Vec<f64> = attempts
            .iter()
            .filter(|a| a.0 == ProbeKind::Readiness)
            .map(|a| a.1)
            .collect();
        assert_eq!(ready[0], 1.0);
        assert_eq!(ready[1], 1.25);
        // Started at once (no startup probe), but NotReady until the readiness probe passes.
        assert_eq!(first(&changes, &Change::Started), Some(0.0));
        assert!((first(&changes, &Change::Ready).unwrap() - 1.01).abs() < 1e-9);
    }

    #[test]
    fn readiness_counts_consecutive_results() {
        // success 2, failure 3; pattern over attempts at 0, 1, 2, ...
        let pattern = [
            true, false, true, true, false, false, true, false, false, false, true, true,
        ];
        let probes = Probes {
            readiness: Some(spec("/ready", 0.0, 1.0, 0.5, 2, 3)),
            ..Default::default()
        };
        let ((_, changes), _) = simulate(&probes, 11.5, |_, t| (0.0, pattern[t as usize]));
        let transitions: Vec<(f64, Change)> = changes
            .into_iter()
            .filter(|(_, c)| matches!(c, Change::Ready | Change::NotReady))
            .collect();
        // Ready after the 2 successes at 2, 3; NotReady after failures at 7, 8, 9 (the two at
        // 4, 5 were interrupted by a success at 6); Ready again after 10, 11.
        assert_eq!(
            transitions,
            vec![
                (3.0, Change::Ready),
                (9.0, Change::NotReady),
                (11.0, Change::Ready)
            ]
        );
    }

    #[test]
    fn a_slow_answer_is_a_failure() {
        // The liveness endpoint answers in 1.5 s with 200 but the timeout is 1 s.
        let probes = Probes {
            liveness: Some(spec("/live", 0.0, 2.0, 1.0, 1, 3)),
            ..Default::default()
        };
        let ((attempts, changes), _) = simulate(&probes, 7.0, |_, _| (1.5, true));
        assert!(attempts.iter().all(|a| !a.2), "{attempts:?}");
        assert_eq!(restarts(&changes).len(), 1);
        assert!((restarts(&changes)[0] - 5.0).abs() < 1e-3);
        // The same with 0.9 s answers never fails.
        let ((attempts, changes), _) = simulate(&probes, 7.0, |_, _| (0.9, true));
        assert!(attempts.iter().all(|a| a.2));
        assert!(restarts(&changes).is_empty());
        // An attempt reported as ok but finishing past its timeout is counted as a failure.
        let mut k = Kubelet::new(&probes, 0.0);
        let a = k.begin(ProbeKind::Liveness, 0.0);
        k.finish(a, 1.2, true);
        let a = k.begin(ProbeKind::Liveness, 2.0);
        k.finish(a, 3.2, true);
        let a = k.begin(ProbeKind::Liveness, 4.0);
        let c = k.finish(a, 5.2, true);
        assert!(
            c.iter().any(|c| matches!(c, Change::Restart { .. })),
            "{c:?}"
        );
    }

    #[test]
    fn attempts_never_overlap_and_a_missed_tick_fires_at_once() {
        // Period 1 s, answers take 2.5 s (timeout 3 s): attempts at 0, 2.5 (buffered tick),
        // 5.0 (buffered tick at 2.5 + 2.5 = 5.0 >= grid 4), ...
        let probes = Probes {
            liveness: Some(spec("/live", 0.0, 1.0, 3.0, 1, 3)),
            ..Default::default()
        };
        let ((attempts, _), _) = simulate(&probes, 8.0, |_, _| (2.5, true));
        let starts: Vec<f64> = attempts.iter().map(|a| a.1).collect();
        assert_eq!(starts, vec![0.0, 2.5, 5.0]);
        // Answers of 0.3 s stay on the grid.
        let ((attempts, _), _) = simulate(&probes, 4.0, |_, _| (0.3, true));
        let starts: Vec<f64> = attempts.iter().map(|a| a.1).collect();
        assert_eq!(starts, vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn liveness_restart_resets_everything() {
        // Liveness fails from t=3 on; threshold 2, period 1: restart at 4; after it the
        // startup probe runs again, and results of attempts begun before it are ignored.
        let probes = Probes {
            startup: Some(spec("/ready", 0.0, 1.0, 1.0, 1, 30)),
            liveness: Some(spec("/live", 0.0, 1.0, 1.0, 1, 2)),
            readiness: Some(spec("/ready", 0.0, 1.0, 1.0, 1, 1)),
        };
        let ((attempts, changes), k) = simulate(&probes, 4.5, |kind, t| match kind {
            ProbeKind::Liveness => (0.0, t < 3.0),
            _ => (0.0, true),
        });
        assert_eq!(restarts(&changes), vec![4.0]);
        assert_eq!(k.restarts(), 1);
        let i = changes
            .iter()
            .position(|(_, c)| matches!(c, Change::Restart { .. }))
            .unwrap();
        assert_eq!(changes[i - 1], (4.0, Change::NotReady));
        // The new container's startup probe runs again at 4.0 and succeeds: Started twice.
        assert!(attempts
            .iter()
            .any(|a| a.0 == ProbeKind::Startup && a.1 == 4.0));
        assert_eq!(
            changes
                .iter()
                .filter(|(_, c)| *c == Change::Started)
                .count(),
            2
        );
        assert!(k.started());
        // A stale result from the old container is ignored.
        let mut k = Kubelet::new(&probes, 0.0);
        let old = k.begin(ProbeKind::Startup, 0.0);
        k.epoch += 1;
        assert!(k.finish(old, 0.1, true).is_empty());
        assert!(!k.started());
    }

    #[test]
    fn without_probes_a_container_is_ready_at_once() {
        let k = Kubelet::new(&Probes::default(), 0.0);
        assert!(k.started() && k.ready());
        assert_eq!(k.initial_changes(), vec![Change::Started, Change::Ready]);
        assert_eq!(k.next_due(), None);
    }
}
