//! What a run recorded, and the verdict computed from it (pure: the driver only records).

use super::kubelet::{Change, ProbeKind};
use super::sse::{Outcome, Rejection};
use serde::Serialize;
use serde_json::{json, Value as Json};

/// Probe and drain-check attempts that start within this long after SIGTERM may still see
/// the server before its signal handler ran; they do not count for `ready_while_draining`.
pub const SIGNAL_GRACE_S: f64 = 0.05;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// One of the `[load]` streams.
    Load,
    /// The burst of an overload fault.
    Overload,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestRecord {
    pub id: u64,
    pub source: Source,
    pub stream: Option<usize>,
    pub start_s: f64,
    /// When the status line and headers arrived.
    pub answered_s: Option<f64>,
    pub end_s: f64,
    pub status: Option<u16>,
    pub outcome: Outcome,
    pub tokens: u64,
    /// The simulated Service had the endpoint Ready when the request was sent.
    pub routed_ready: bool,
    pub rejection: Option<Rejection>,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeRecord {
    pub probe: ProbeKind,
    pub epoch: u32,
    pub start_s: f64,
    pub end_s: f64,
    /// The kubelet's verdict: HTTP 200-399 within the timeout.
    pub ok: bool,
    pub status: Option<u16>,
    /// `reason` (or `status`) from a JSON body, e.g. "draining".
    pub reason: Option<String>,
    pub error: Option<String>,
}

impl ProbeRecord {
    pub fn latency_ms(&self) -> f64 {
        (self.end_s - self.start_s) * 1e3
    }
}

/// The harness's own GET of the readiness path every 50 ms between SIGTERM and exit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainCheck {
    pub start_s: f64,
    pub end_s: f64,
    pub status: Option<u16>,
    pub reason: Option<String>,
}

/// The harness's own completion request sent just after SIGTERM (the contract: 503 with
/// Retry-After, no new work while draining).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainCompletion {
    pub start_s: f64,
    pub status: Option<u16>,
    pub retry_after: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExitRecord {
    pub t_s: f64,
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Other timeline entries: launch, listening, faults, deregistration, teardown, deadline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Note {
    pub t_s: f64,
    pub event: String,
    pub detail: Json,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunRecord {
    pub requests: Vec<RequestRecord>,
    pub probes: Vec<ProbeRecord>,
    pub changes: Vec<(f64, Change)>,
    pub drain_checks: Vec<DrainCheck>,
    pub drain_completion: Option<DrainCompletion>,
    pub notes: Vec<Note>,
    /// The SIGTERM of a fault (not the harness's own teardown).
    pub sigterm_s: Option<f64>,
    /// The harness's SIGTERM at the end of a run that had no sigterm fault.
    pub teardown_s: Option<f64>,
    /// The final exit of the server process.
    pub exit: Option<ExitRecord>,
    /// Processes killed by a simulated restart (`on_restart = "kill"`), each relaunched.
    pub kills: Vec<ExitRecord>,
    pub listening_s: Option<f64>,
    pub end_s: f64,
    #[serde(skip)]
    pub server_log: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Restarts the kubelet would have made (startup or liveness failureThreshold reached).
    pub restarts: u64,
    /// Restarts that really killed the server (`on_restart = "kill"`).
    pub kills: u64,
    /// Requests sent while the simulated endpoint was Ready that the server refused as not
    /// ready (503 loading/draining) or could not connect to.
    pub unready_routed: u64,
    /// Requests the server took but never finished: 200 without `[DONE]`, or no answer.
    pub lost_requests: u64,
    pub completed_requests: u64,
    /// 503/429 answers before any generation.
    pub rejected_requests: u64,
    pub rejected_503: u64,
    pub rejected_429: u64,
    pub rejected_without_retry_after: u64,
    pub rejected_without_error_body: u64,
    /// Connection refused.
    pub refused_requests: u64,
    /// Wrong answers: unexpected status, malformed body or chunk, no finish_reason.
    pub failed_requests: u64,
    pub requests_sent: u64,
    pub overload_requests: u64,
    /// The most requests open at once (sent and not yet ended, refusals excepted).
    pub max_inflight: u64,
    /// Requests in flight when the sigterm fault hit, and how many of them completed.
    pub inflight_at_sigterm: Option<u64>,
    pub inflight_completed: Option<u64>,
    /// In flight at SIGTERM and not completed (lost, failed or cut by the drain timeout).
    pub inflight_unfinished: Option<u64>,
    /// Did the readiness path answer 2xx/3xx to any probe or drain check that started after
    /// SIGTERM (plus a 50 ms grace for the signal to be handled)?
    pub ready_while_draining: Option<bool>,
    pub drain_checks: u64,
    /// A new completion sent after SIGTERM was answered 200 (work taken while draining).
    pub accepted_while_draining: Option<bool>,
    /// Its 503 carried Retry-After.
    pub drain_rejection_retry_after: Option<bool>,
    pub server_exit_code: Option<i32>,
    pub server_exit_signal: Option<i32>,
    /// The server exited without being sent SIGTERM.
    pub server_crashed: bool,
    /// Seconds from the sigterm fault to the process exit.
    pub drain_seconds: Option<f64>,
    pub live_p50_ms: Option<f64>,
    pub live_p99_ms: Option<f64>,
    pub live_max_ms: Option<f64>,
    pub startup_failures: u64,
    pub liveness_failures: u64,
    pub readiness_failures: u64,
    /// Seconds from the container start until the kubelet saw it started / Ready.
    pub startup_seconds: Option<f64>,
    pub ready_seconds: Option<f64>,
    pub tokens: u64,
    /// Tokens of completed requests over the span from the first one's start to the last
    /// one's end.
    pub tokens_per_s: Option<f64>,
    pub run_seconds: f64,
}

/// Nearest-rank percentile of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// The largest number of intervals open at one time (an interval ending when another starts
/// does not overlap it).
pub fn max_overlap(intervals: impl Iterator<Item = (f64, f64)>) -> u64 {
    let mut edges: Vec<(f64, i64)> = intervals.flat_map(|(a, b)| [(a, 1), (b, -1)]).collect();
    // Ends before starts at equal times.
    edges.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut open, mut max) = (0i64, 0i64);
    for (_, d) in edges {
        open += d;
        max = max.max(open);
    }
    max as u64
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

impl Verdict {
    pub fn from_run(r: &RunRecord, readiness_path_probes: &[ProbeKind]) -> Verdict {
        let count =
            |f: &dyn Fn(&RequestRecord) -> bool| r.requests.iter().filter(|q| f(q)).count() as u64;
        let rejected = |q: &RequestRecord| q.outcome == Outcome::Rejected;
        let probe_failures =
            |k: ProbeKind| r.probes.iter().filter(|p| p.probe == k && !p.ok).count() as u64;
        let live: Vec<f64> = r
            .probes
            .iter()
            .filter(|p| p.probe == ProbeKind::Liveness)
            .map(ProbeRecord::latency_ms)
            .collect();
        let first_change = |want: &Change| {
            r.changes
                .iter()
                .find(|(_, c)| c == want)
                .map(|(t, _)| round3(*t))
        };
        let completed: Vec<&RequestRecord> = r
            .requests
            .iter()
            .filter(|q| q.outcome == Outcome::Completed)
            .collect();
        let tokens: u64 = completed.iter().map(|q| q.tokens).sum();
        let tokens_per_s = {
            let start = completed
                .iter()
                .map(|q| q.start_s)
                .fold(f64::INFINITY, f64::min);
            let end = completed.iter().map(|q| q.end_s).fold(0.0, f64::max);
            (end > start).then(|| round3(tokens as f64 / (end - start)))
        };
        let (inflight_at_sigterm, inflight_completed, ready_while_draining) = match r.sigterm_s {
            None => (None, None, None),
            Some(t) => {
                let inflight: Vec<&RequestRecord> = r
                    .requests
                    .iter()
                    .filter(|q| q.start_s < t && q.end_s > t && q.outcome != Outcome::Refused)
                    .collect();
                let done = inflight
                    .iter()
                    .filter(|q| q.outcome == Outcome::Completed)
                    .count() as u64;
                let after = t + SIGNAL_GRACE_S;
                let probe_ready = r.probes.iter().any(|p| {
                    readiness_path_probes.contains(&p.probe) && p.start_s >= after && p.ok
                });
                let check_ready = r.drain_checks.iter().any(|c| {
                    c.start_s >= after && c.status.is_some_and(|s| (200..400).contains(&s))
                });
                (
                    Some(inflight.len() as u64),
                    Some(done),
                    Some(probe_ready || check_ready),
                )
            }
        };
        Verdict {
            restarts: r
                .changes
                .iter()
                .filter(|(_, c)| matches!(c, Change::Restart { .. }))
                .count() as u64,
            kills: r.kills.len() as u64,
            unready_routed: count(&|q| {
                q.routed_ready
                    && (q.outcome == Outcome::Refused
                        || q.rejection.as_ref().is_some_and(|j| j.unready))
            }),
            lost_requests: count(&|q| q.outcome == Outcome::Lost),
            completed_requests: completed.len() as u64,
            rejected_requests: count(&rejected),
            rejected_503: count(&|q| rejected(q) && q.status == Some(503)),
            rejected_429: count(&|q| rejected(q) && q.status == Some(429)),
            rejected_without_retry_after: count(&|q| {
                rejected(q) && !q.rejection.as_ref().is_some_and(|j| j.retry_after)
            }),
            rejected_without_error_body: count(&|q| {
                rejected(q) && !q.rejection.as_ref().is_some_and(|j| j.error_body)
            }),
            refused_requests: count(&|q| q.outcome == Outcome::Refused),
            failed_requests: count(&|q| q.outcome == Outcome::Failed),
            requests_sent: r.requests.len() as u64,
            overload_requests: count(&|q| q.source == Source::Overload),
            max_inflight: max_overlap(
                r.requests
                    .iter()
                    .filter(|q| q.outcome != Outcome::Refused)
                    .map(|q| (q.start_s, q.end_s)),
            ),
            inflight_at_sigterm,
            inflight_completed,
            inflight_unfinished: inflight_at_sigterm
                .zip(inflight_completed)
                .map(|(a, b)| a - b),
            ready_while_draining,
            drain_checks: r.drain_checks.len() as u64,
            accepted_while_draining: r.drain_completion.as_ref().map(|d| d.status == Some(200)),
            drain_rejection_retry_after: r
                .drain_completion
                .as_ref()
                .filter(|d| d.status == Some(503))
                .map(|d| d.retry_after),
            server_exit_code: r.exit.as_ref().and_then(|e| e.code),
            server_exit_signal: r.exit.as_ref().and_then(|e| e.signal),
            server_crashed: r.exit.as_ref().is_some_and(|e| {
                let signalled = r
                    .sigterm_s
                    .into_iter()
                    .chain(r.teardown_s)
                    .any(|t| t <= e.t_s);
                !signalled
            }),
            drain_seconds: match (r.sigterm_s, &r.exit) {
                (Some(t), Some(e)) => Some(round3(e.t_s - t)),
                _ => None,
            },
            live_p50_ms: percentile(&live, 50.0).map(round3),
            live_p99_ms: percentile(&live, 99.0).map(round3),
            live_max_ms: percentile(&live, 100.0).map(round3),
            startup_failures: probe_failures(ProbeKind::Startup),
            liveness_failures: probe_failures(ProbeKind::Liveness),
            readiness_failures: probe_failures(ProbeKind::Readiness),
            startup_seconds: first_change(&Change::Started),
            ready_seconds: first_change(&Change::Ready),
            tokens,
            tokens_per_s,
            run_seconds: round3(r.end_s),
        }
    }

    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// Every recorded fact as one list of events ordered by time (milliseconds from the
/// container start).
pub fn timeline(r: &RunRecord) -> Json {
    let ms = |t: f64| (t * 1e6).round() / 1e3;
    let mut ev: Vec<(f64, Json)> = Vec::new();
    for n in &r.notes {
        ev.push((n.t_s, json!({"event": n.event, "detail": n.detail})));
    }
    for p in &r.probes {
        ev.push((
            p.end_s,
            json!({"event": "probe", "probe": p.probe, "ok": p.ok, "status": p.status,
                   "latency_ms": (p.latency_ms() * 1e3).round() / 1e3, "reason": p.reason,
                   "error": p.error, "epoch": p.epoch}),
        ));
    }
    for (t, c) in &r.changes {
        let mut v = serde_json::to_value(c).unwrap_or(Json::Null);
        v["event"] = json!("kubelet");
        ev.push((*t, v));
    }
    for q in &r.requests {
        ev.push((
            q.start_s,
            json!({"event": "request_start", "id": q.id, "source": q.source, "stream": q.stream,
                   "routed_ready": q.routed_ready}),
        ));
        ev.push((
            q.end_s,
            json!({"event": "request_end", "id": q.id, "outcome": q.outcome, "status": q.status,
                   "tokens": q.tokens, "answered_ms": q.answered_s.map(ms), "detail": q.detail,
                   "rejection": q.rejection}),
        ));
    }
    for c in &r.drain_checks {
        ev.push((
            c.end_s,
            json!({"event": "drain_check", "status": c.status, "reason": c.reason,
                   "started_ms": ms(c.start_s)}),
        ));
    }
    if let Some(d) = &r.drain_completion {
        ev.push((
            d.start_s,
            json!({"event": "drain_completion", "status": d.status, "retry_after": d.retry_after}),
        ));
    }
    for k in &r.kills {
        ev.push((
            k.t_s,
            json!({"event": "killed", "code": k.code, "signal": k.signal}),
        ));
    }
    if let Some(e) = &r.exit {
        ev.push((
            e.t_s,
            json!({"event": "exit", "code": e.code, "signal": e.signal}),
        ));
    }
    ev.sort_by(|a, b| a.0.total_cmp(&b.0));
    Json::Array(
        ev.into_iter()
            .map(|(t, mut v)| {
                v["t_ms"] = json!(ms(t));
                v
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::sse::classify_rejection;

    fn req(id: u64, start: f64, end: f64, outcome: Outcome, status: Option<u16>) -> RequestRecord {
        RequestRecord {
            id,
            source: Source::Load,
            stream: Some(0),
            start_s: start,
            answered_s: status.map(|_| start + 0.01),
            end_s: end,
            status,
            outcome,
            tokens: if outcome == Outcome::Completed { 10 } else { 0 },
            routed_ready: true,
            rejection: None,
            detail: String::new(),
        }
    }

    fn probe(kind: ProbeKind, start: f64, ok: bool) -> ProbeRecord {
        ProbeRecord {
            probe: kind,
            epoch: 0,
            start_s: start,
            end_s: start + 0.002,
            ok,
            status: Some(if ok { 200 } else { 503 }),
            reason: None,
            error: None,
        }
    }

    #[test]
    fn counts_what_went_wrong() {
        let draining =
            br#"{"error":{"message":"draining","type":"unavailable","code":"draining"}}"#;
        let busy = br#"{"error":{"message":"queue full","type":"overloaded","code":"queue_full"}}"#;
        let mut rejected_draining = req(3, 2.1, 2.11, Outcome::Rejected, Some(503));
        rejected_draining.rejection = Some(classify_rejection(503, Some("1"), draining));
        let mut rejected_busy = req(4, 1.0, 1.01, Outcome::Rejected, Some(503));
        rejected_busy.rejection = Some(classify_rejection(503, None, busy));
        let mut unrouted_refusal = req(6, 3.0, 3.0, Outcome::Refused, None);
        unrouted_refusal.routed_ready = false;
        let r = RunRecord {
            requests: vec![
                req(1, 0.5, 2.5, Outcome::Completed, Some(200)),
                req(2, 1.5, 2.4, Outcome::Lost, Some(200)),
                rejected_draining,
                rejected_busy,
                req(5, 2.9, 2.9, Outcome::Refused, None),
                unrouted_refusal,
            ],
            probes: vec![
                probe(ProbeKind::Liveness, 0.0, true),
                probe(ProbeKind::Readiness, 2.0, true),
                probe(ProbeKind::Readiness, 2.03, true),
                probe(ProbeKind::Readiness, 2.25, false),
            ],
            sigterm_s: Some(2.0),
            exit: Some(ExitRecord {
                t_s: 2.75,
                code: Some(0),
                signal: None,
            }),
            end_s: 3.0,
            ..Default::default()
        };
        let v = Verdict::from_run(&r, &[ProbeKind::Readiness]);
        assert_eq!(v.lost_requests, 1);
        assert_eq!(v.completed_requests, 1);
        assert_eq!(v.rejected_requests, 2);
        assert_eq!(v.rejected_without_retry_after, 1);
        assert_eq!(
            v.unready_routed, 2,
            "the draining 503 and the routed refusal"
        );
        assert_eq!(v.inflight_at_sigterm, Some(2));
        assert_eq!(v.inflight_completed, Some(1));
        assert_eq!(v.inflight_unfinished, Some(1));
        // The probe at 2.03 is inside the signal grace; none after it said ready.
        assert_eq!(v.ready_while_draining, Some(false));
        assert_eq!(v.drain_seconds, Some(0.75));
        assert!(!v.server_crashed);
        assert_eq!(v.tokens_per_s, Some(5.0));

        // A 200 from the readiness path after the grace is caught, by a probe or a check.
        let mut late = r.clone();
        late.probes.push(probe(ProbeKind::Readiness, 2.5, true));
        assert_eq!(
            Verdict::from_run(&late, &[ProbeKind::Readiness]).ready_while_draining,
            Some(true)
        );
        let mut late = r.clone();
        late.drain_checks.push(DrainCheck {
            start_s: 2.3,
            end_s: 2.31,
            status: Some(200),
            reason: None,
        });
        assert_eq!(
            Verdict::from_run(&late, &[]).ready_while_draining,
            Some(true)
        );
        // An exit without any SIGTERM is a crash.
        let mut crash = r.clone();
        crash.sigterm_s = None;
        assert!(Verdict::from_run(&crash, &[]).server_crashed);
        assert_eq!(Verdict::from_run(&crash, &[]).ready_while_draining, None);
    }

    #[test]
    fn overlap() {
        let iv = [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (2.5, 2.6)];
        assert_eq!(max_overlap(iv.into_iter()), 3);
        assert_eq!(max_overlap([(0.0, 1.0), (1.0, 2.0)].into_iter()), 1);
        assert_eq!(max_overlap(std::iter::empty()), 0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 99.0), None);
    }

    #[test]
    fn the_timeline_is_ordered() {
        let r = RunRecord {
            requests: vec![req(1, 0.5, 2.5, Outcome::Completed, Some(200))],
            probes: vec![probe(ProbeKind::Liveness, 1.0, true)],
            changes: vec![(0.2, Change::Ready)],
            ..Default::default()
        };
        let t = timeline(&r);
        let times: Vec<f64> = t
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["t_ms"].as_f64().unwrap())
            .collect();
        assert_eq!(times, vec![200.0, 500.0, 1002.0, 2500.0]);
        assert_eq!(t[0]["event"], "kubelet");
        assert_eq!(t[0]["change"], "ready");
    }
}
