//! The driver: launches (or attaches to) a server, runs the kubelet simulator against it on
//! the wall clock, drives the load through the simulated Service, injects the faults and
//! records everything. All decisions are made by the pure parts (`kubelet`, `sse`,
//! `verdict`); this module only does I/O and timing.
//!
//! Length: ~880 lines, over the house limit on purpose: launch, probing, load and faults share
//! one clock and one record, and their interleaving is the thing under test.

use super::kubelet::{Attempt, Change, Kubelet, ProbeKind};
use super::scenario::{Fault, OnRestart, Scenario};
use super::sse::{self, Outcome, SseParser, StreamState};
use super::verdict::{
    DrainCheck, DrainCompletion, ExitRecord, Note, ProbeRecord, RequestRecord, RunRecord, Source,
    SIGNAL_GRACE_S,
};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout_at, Instant};

/// What to probe.
#[derive(Clone, Debug)]
pub enum Target {
    /// Launch `bin serve -m model --host 127.0.0.1 --port 0 ...` per the scenario's `[server]`.
    Launch { bin: PathBuf, model: PathBuf },
    /// A server that is already running; faults that signal it need its pid.
    Attach { url: String, pid: Option<i32> },
}

/// How long a launched server may take to print its listening line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time after the drain timeout before the harness gives up on an exit.
const EXIT_GRACE_S: f64 = 5.0;
/// Interval of the harness's readiness checks while the server drains.
const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(50);
/// Server log lines kept.
const LOG_LINES: usize = 10_000;
/// Bytes of a rejection or error body read.
const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Route {
    kubelet_ready: bool,
    deregistered: bool,
}

impl Route {
    fn routable(&self) -> bool {
        self.kubelet_ready && !self.deregistered
    }
}

struct Shared {
    t0: Instant,
    /// The server's base URL and pid (both change when a killed container is relaunched).
    url: Mutex<String>,
    pid: Mutex<Option<i32>>,
    scenario: Scenario,
    route: watch::Sender<Route>,
    /// The server process is gone for good (exited, and not being relaunched).
    gone: watch::Sender<bool>,
    record: Mutex<RunRecord>,
    log: Mutex<Vec<String>>,
    /// Requests to the supervisor of a launched server.
    ctl: Option<mpsc::UnboundedSender<Ctl>>,
    next_id: AtomicU64,
    budget: AtomicU64,
    client: reqwest::Client,
}

impl Shared {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
    fn at(&self, s: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(s.max(0.0))
    }
    fn rec(&self) -> std::sync::MutexGuard<'_, RunRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn note(&self, event: &str, detail: Json) {
        let t_s = self.now();
        self.rec().notes.push(Note {
            t_s,
            event: event.into(),
            detail,
        });
    }
    fn gone(&self) -> bool {
        *self.gone.borrow()
    }
    fn url(&self) -> String {
        self.url.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn pid(&self) -> Option<i32> {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn push_log(&self, lines: Vec<String>) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let room = LOG_LINES.saturating_sub(log.len());
        log.extend(lines.into_iter().take(room));
    }
}

/// Runs a scenario to its end (bounded by its deadline) and returns what happened.
pub fn run(scenario: &Scenario, target: Target) -> Result<RunRecord, String> {
    if let Target::Attach { pid: None, .. } = target {
        if scenario.needs_pid() {
            return Err(
                "the scenario sends SIGTERM: give the server's --pid, or let the harness launch it (no --url)"
                    .into(),
            );
        }
    }
    match target {
        Target::Launch { .. } if scenario.server.is_none() => {
            return Err("the scenario has no [server] section: give --url".into());
        }
        Target::Attach { .. } if scenario.on_restart == OnRestart::Kill => {
            return Err(
                "on_restart = \"kill\" relaunches the server: let the harness launch it (no --url)"
                    .into(),
            );
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(run_async(scenario.clone(), target))
}

/// No proxy (only the server's own address is ever contacted) and, like the kubelet's prober,
/// no connection reuse: every request opens its own connection, so a failure before the answer
/// is the server's doing, never a stale pooled connection's.
fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("http client: {e}"))
}

struct Launched {
    child: tokio::process::Child,
    url: String,
    log: Vec<String>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
}

async fn launch(scenario: &Scenario, bin: &PathBuf, model: &PathBuf) -> Result<Launched, String> {
    let server = scenario
        .server
        .as_ref()
        .ok_or("the scenario has no [server] section")?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("serve")
        .arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--drain-timeout", &server.drain_timeout_s.to_string()]);
    if let Some(ms) = server.startup_delay_ms {
        cmd.args(["--startup-delay-ms", &ms.to_string()]);
    }
    cmd.args(&server.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        match timeout_at(deadline, lines.next_line()).await {
            Err(_) => {
                let _ = child.start_kill();
                return Err(format!(
                    "the server printed no 'bitnet serve: listening on' line within {}s; its stderr:\n{}",
                    LISTEN_TIMEOUT.as_secs(),
                    log.join("\n")
                ));
            }
            Ok(Ok(Some(line))) => {
                let url = line
                    .strip_prefix("bitnet serve: listening on ")
                    .map(|u| u.trim().trim_end_matches('/').to_string());
                log.push(line);
                if let Some(url) = url {
                    return Ok(Launched {
                        child,
                        url,
                        log,
                        lines,
                    });
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await.map_err(|e| e.to_string())?;
                return Err(format!(
                    "the server exited ({status}) before listening; its stderr:\n{}",
                    log.join("\n")
                ));
            }
        }
    }
}

async fn run_async(scenario: Scenario, target: Target) -> Result<RunRecord, String> {
    let t0 = Instant::now();
    let mut launched = None;
    let (url, pid) = match &target {
        Target::Attach { url, pid } => (url.trim_end_matches('/').to_string(), *pid),
        Target::Launch { bin, model } => {
            let l = launch(&scenario, bin, model).await?;
            let pid = l.child.id().map(|p| p as i32);
            let url = l.url.clone();
            launched = Some((l, bin.clone(), model.clone()));
            (url, pid)
        }
    };
    let (route, _) = watch::channel(Route::default());
    let (gone, _) = watch::channel(false);
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel::<Ctl>();
    let sh = Arc::new(Shared {
        t0,
        url: Mutex::new(url.clone()),
        pid: Mutex::new(pid),
        route,
        gone,
        record: Mutex::new(RunRecord::default()),
        log: Mutex::new(Vec::new()),
        ctl: launched.is_some().then_some(ctl_tx),
        next_id: AtomicU64::new(0),
        budget: AtomicU64::new(0),
        client: client()?,
        scenario: scenario.clone(),
    });
    let listening = sh.now();
    sh.rec().listening_s = Some(listening);
    sh.note(
        "listening",
        json!({"url": url, "pid": pid, "launched": launched.is_some()}),
    );

    // The process: a supervisor for a launched one (its exit, its log, kills and restarts), a
    // watcher for an attached one's pid.
    let watcher = match launched {
        Some((l, bin, model)) => Some(tokio::spawn(supervise(sh.clone(), l, bin, model, ctl_rx))),
        None => pid.map(|pid| {
            let sh2 = sh.clone();
            tokio::spawn(async move {
                while process_alive(pid) {
                    sleep(Duration::from_millis(50)).await;
                }
                let t_s = sh2.now();
                sh2.rec().exit = Some(ExitRecord {
                    t_s,
                    code: None,
                    signal: None,
                });
                sh2.gone.send_replace(true);
            })
        }),
    };

    // The kubelet.
    let (stop_tx, stop_rx) = watch::channel(false);
    let kubelet = tokio::spawn(kubelet_loop(sh.clone(), stop_rx));

    // Load streams, faults.
    let mut streams = JoinSet::new();
    for i in 0..scenario.load.streams {
        streams.spawn(stream_loop(sh.clone(), i));
    }
    let mut faults = JoinSet::new();
    for f in scenario.faults.clone() {
        let sh2 = sh.clone();
        faults.spawn(async move { fault(sh2, f).await });
    }

    let deadline = sh.at(scenario.deadline_s());
    let work = async {
        while streams.join_next().await.is_some() {}
        while faults.join_next().await.is_some() {}
        // The probes watch the pod for the whole duration, even when the request budget ran
        // out earlier, unless the process is gone.
        let mut g = sh.gone.subscribe();
        let _ = timeout_at(sh.at(scenario.load.duration_s), g.wait_for(|g| *g)).await;
        // After a sigterm fault, wait for the process to exit (the drain).
        let sigterm = sh.rec().sigterm_s;
        if let Some(t) = sigterm {
            if sh.pid().is_some() {
                let until = sh.at(t + scenario.drain_timeout_s() + EXIT_GRACE_S);
                let mut g = sh.gone.subscribe();
                let _ = timeout_at(until, g.wait_for(|g| *g)).await;
            }
        }
    };
    if timeout_at(deadline, work).await.is_err() {
        sh.note(
            "deadline",
            json!({"deadline_s": scenario.deadline_s(), "cancelled": "everything still running"}),
        );
    }
    streams.abort_all();
    faults.abort_all();
    let _ = stop_tx.send(true);
    let _ = kubelet.await;

    // Teardown: a launched server still running is stopped (SIGTERM, then SIGKILL).
    if let Some(ctl) = &sh.ctl {
        if !sh.gone() {
            let t = sh.now();
            sh.rec().teardown_s = Some(t);
            sh.note("teardown", json!({"signal": "SIGTERM"}));
            signal(&sh, libc::SIGTERM);
            let mut g = sh.gone.subscribe();
            let until =
                Instant::now() + Duration::from_secs_f64(scenario.drain_timeout_s() + EXIT_GRACE_S);
            if timeout_at(until, g.wait_for(|g| *g)).await.is_err() {
                sh.note("teardown", json!({"signal": "SIGKILL"}));
                let _ = ctl.send(Ctl::Kill);
            }
        }
    }
    if let Some(w) = watcher {
        if sh.ctl.is_some() {
            // The supervisor ends with the process, which has exited or been killed by now.
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        } else {
            w.abort();
        }
    }
    let mut rec = std::mem::take(&mut *sh.rec());
    rec.end_s = sh.now();
    rec.server_log = std::mem::take(&mut *sh.log.lock().unwrap_or_else(|e| e.into_inner()));
    rec.requests.sort_by_key(|q| q.id);
    Ok(rec)
}

/// What the harness asks of a launched process.
#[derive(Debug)]
enum Ctl {
    /// The kubelet restarts the container: SIGKILL, then launch a new one.
    Restart,
    /// Teardown: SIGKILL and stop.
    Kill,
}

/// Owns the launched process: keeps its log, records its exit, and on a kubelet restart
/// (`on_restart = "kill"`) kills it and launches a new one in its place.
async fn supervise(
    sh: Arc<Shared>,
    first: Launched,
    bin: PathBuf,
    model: PathBuf,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let mut current = first;
    loop {
        let Launched {
            mut child,
            log,
            mut lines,
            ..
        } = current;
        sh.push_log(log);
        let sh2 = sh.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sh2.push_log(vec![line]);
            }
        });
        // Only an explicit request kills (a closed channel disables that branch).
        let (status, restart) = tokio::select! {
            s = child.wait() => (s, false),
            Some(c) = ctl.recv() => {
                let _ = child.start_kill();
                (child.wait().await, matches!(c, Ctl::Restart))
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        let (code, signal) = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                (s.code(), s.signal())
            }
            Err(_) => (None, None),
        };
        let exit = ExitRecord {
            t_s: sh.now(),
            code,
            signal,
        };
        if restart {
            sh.rec().kills.push(exit.clone());
            match launch(&sh.scenario, &bin, &model).await {
                Ok(next) => {
                    let pid = next.child.id().map(|p| p as i32);
                    *sh.url.lock().unwrap_or_else(|e| e.into_inner()) = next.url.clone();
                    *sh.pid.lock().unwrap_or_else(|e| e.into_inner()) = pid;
                    sh.note("relaunched", json!({"url": next.url, "pid": pid}));
                    current = next;
                    continue;
                }
                Err(e) => sh.note("relaunch_failed", json!({"error": e})),
            }
        }
        sh.rec().exit = Some(exit);
        sh.gone.send_replace(true);
        return;
    }
}

/// Whether `pid` is a running process: it exists (kill with signal 0) and is not a zombie
/// waiting for its parent to reap it (Linux /proc; elsewhere existence alone).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    exists && !zombie
}

fn signal(sh: &Shared, sig: i32) -> bool {
    match sh.pid() {
        Some(pid) if !sh.gone() => {
            // SAFETY: plain kill(2) on the server's pid, which is still ours (not reaped).
            let r = unsafe { libc::kill(pid, sig) };
            if r != 0 {
                sh.note(
                    "signal_failed",
                    json!({"signal": sig, "error": std::io::Error::last_os_error().to_string()}),
                );
            }
            r == 0
        }
        _ => false,
    }
}

type ProbeResult = (Attempt, ProbeRecord);

async fn kubelet_loop(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut k = Kubelet::new(&sh.scenario.probes, 0.0);
    let initial: Vec<(f64, Change)> = k.initial_changes().into_iter().map(|c| (0.0, c)).collect();
    sh.rec().changes.extend(initial);
    sh.route.send_modify(|r| r.kubelet_ready = k.ready());
    let (tx, mut rx) = mpsc::unbounded_channel::<ProbeResult>();
    let mut attempts = JoinSet::new();
    loop {
        let due = k.next_due();
        let tick = async {
            match due {
                Some((t, _)) => sleep_until(sh.at(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some((a, rec)) = rx.recv() => {
                let a = Attempt { started: rec.start_s, ..a };
                let changes = k.finish(a, rec.end_s, rec.ok);
                if sh.scenario.on_restart == OnRestart::Kill
                    && changes.iter().any(|c| matches!(c, Change::Restart { .. }))
                {
                    if let Some(ctl) = &sh.ctl {
                        let _ = ctl.send(Ctl::Restart);
                    }
                }
                let mut r = sh.rec();
                let t = rec.end_s;
                r.probes.push(rec);
                r.changes.extend(changes.into_iter().map(|c| (t, c)));
                drop(r);
                sh.route.send_modify(|r| r.kubelet_ready = k.ready());
            }
            _ = tick => {
                let t = sh.now();
                while let Some((td, kind)) = k.next_due() {
                    if td > t {
                        break;
                    }
                    let a = k.begin(kind, t);
                    let path = k.spec(kind).map(|s| (s.path.clone(), s.timeout_s));
                    if let Some((path, timeout_s)) = path {
                        let (sh2, tx2) = (sh.clone(), tx.clone());
                        attempts.spawn(async move {
                            let rec = probe_attempt(&sh2, a, &path, timeout_s).await;
                            let _ = tx2.send((a, rec));
                        });
                    }
                }
            }
        }
        // Reap finished attempt tasks.
        while attempts.try_join_next().is_some() {}
    }
    attempts.abort_all();
}

/// One HTTP GET with the kubelet's semantics: 200-399 within the timeout is a success.
async fn get_status(
    sh: &Shared,
    path: &str,
    timeout_s: f64,
) -> (Option<u16>, Option<String>, Option<String>) {
    let url = format!("{}{}", sh.url(), path);
    let fut = async {
        let resp = sh.client.get(&url).send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let reason = serde_json::from_slice::<Json>(&body[..body.len().min(BODY_LIMIT)])
            .ok()
            .and_then(|v| {
                v.get("reason")
                    .or_else(|| v.get("status"))
                    .and_then(|r| r.as_str().map(str::to_string))
            });
        Ok::<_, reqwest::Error>((status, reason))
    };
    match tokio::time::timeout(Duration::from_secs_f64(timeout_s), fut).await {
        Err(_) => (None, None, Some(format!("timeout after {timeout_s}s"))),
        Ok(Err(e)) => (None, None, Some(error_chain(&e))),
        Ok(Ok((s, reason))) => (Some(s), reason, None),
    }
}

async fn probe_attempt(sh: &Shared, a: Attempt, path: &str, timeout_s: f64) -> ProbeRecord {
    let start_s = sh.now();
    let (status, reason, error) = get_status(sh, path, timeout_s).await;
    let end_s = sh.now();
    ProbeRecord {
        probe: a.kind,
        epoch: a.epoch,
        start_s,
        end_s,
        ok: status.is_some_and(|s| (200..400).contains(&s)),
        status,
        reason,
        error,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

async fn stream_loop(sh: Arc<Shared>, i: usize) {
    let load = &sh.scenario.load;
    let end = sh.at(load.duration_s);
    let mut route = sh.route.subscribe();
    let mut gone = sh.gone.subscribe();
    let mut first = true;
    loop {
        if sh.gone() || Instant::now() >= end {
            break;
        }
        // The Service only routes to a Ready endpoint: wait for one.
        let routable = tokio::select! {
            r = route.wait_for(Route::routable) => r.is_ok(),
            _ = sleep_until(end) => false,
            _ = gone.wait_for(|g| *g) => false,
        };
        if !routable || sh.gone() || Instant::now() >= end {
            break;
        }
        if std::mem::take(&mut first) && i > 0 && load.stagger_s > 0.0 {
            // Then wait for Ready again: the endpoint may have left meanwhile.
            sleep(Duration::from_secs_f64(i as f64 * load.stagger_s)).await;
            continue;
        }
        if sh.budget.fetch_add(1, Ordering::SeqCst) >= load.max_requests {
            break;
        }
        let outcome = request(&sh, Source::Load, Some(i), load.max_tokens).await;
        if matches!(
            outcome,
            Outcome::Rejected | Outcome::Refused | Outcome::Failed
        ) {
            sleep(Duration::from_secs_f64(load.backoff_s)).await;
        }
    }
}

/// Sends one completion request and records what it came to.
async fn request(sh: &Shared, source: Source, stream: Option<usize>, max_tokens: u32) -> Outcome {
    let load = &sh.scenario.load;
    let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
    let routed_ready = sh.route.borrow().routable();
    let start_s = sh.now();
    let deadline = Instant::now() + Duration::from_secs_f64(load.request_timeout_s);
    let mut body = json!({
        "prompt": load.prompt,
        "max_tokens": max_tokens,
        "stream": load.stream,
        "temperature": load.temperature,
        "seed": load.seed,
        "ignore_eos": load.ignore_eos,
    });
    if load.stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(m) = &load.model {
        body["model"] = json!(m);
    }
    let send = sh
        .client
        .post(format!("{}/v1/completions", sh.url()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send();
    let mut rec = RequestRecord {
        id,
        source,
        stream,
        start_s,
        answered_s: None,
        end_s: start_s,
        status: None,
        outcome: Outcome::Lost,
        tokens: 0,
        routed_ready,
        rejection: None,
        detail: String::new(),
    };
    match timeout_at(deadline, send).await {
        Err(_) => {
            rec.detail = format!(
                "no answer within {}s (the server held the request)",
                load.request_timeout_s
            );
        }
        Ok(Err(e)) if e.is_connect() => {
            rec.outcome = Outcome::Refused;
            rec.detail = error_chain(&e);
        }
        Ok(Err(e)) => {
            rec.detail = format!("no answer: {}", error_chain(&e));
        }
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            rec.status = Some(status);
            rec.answered_s = Some(sh.now());
            if status == 200 && load.stream {
                let mut parser = SseParser::default();
                let mut state = StreamState::default();
                let mut body = resp.bytes_stream();
                let mut transport: Option<String> = None;
                loop {
                    match timeout_at(deadline, body.next()).await {
                        Err(_) => {
                            transport = Some(format!("timeout after {}s", load.request_timeout_s));
                            break;
                        }
                        Ok(None) => break,
                        Ok(Some(Err(e))) => {
                            transport = Some(error_chain(&e));
                            break;
                        }
                        Ok(Some(Ok(bytes))) => {
                            for ev in parser.push(&bytes) {
                                state.on_event(&ev);
                            }
                        }
                    }
                }
                let c = sse::classify_stream(&state, parser.pending(), transport.as_deref());
                rec.outcome = c.outcome;
                rec.tokens = c.tokens;
                rec.detail = c.detail;
            } else if status == 200 {
                let body = timeout_at(deadline, resp.bytes()).await;
                let c = match &body {
                    Err(_) => sse::classify_json(Err("timeout")),
                    Ok(Err(e)) => sse::classify_json(Err(&error_chain(e))),
                    Ok(Ok(b)) => sse::classify_json(Ok(b)),
                };
                rec.outcome = c.outcome;
                rec.tokens = c.tokens;
                rec.detail = c.detail;
            } else {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = match timeout_at(deadline, resp.bytes()).await {
                    Ok(Ok(b)) => b[..b.len().min(BODY_LIMIT)].to_vec(),
                    _ => Vec::new(),
                };
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                if status == 503 || status == 429 {
                    let r = sse::classify_rejection(status, retry_after.as_deref(), &body);
                    rec.outcome = Outcome::Rejected;
                    rec.detail = format!(
                        "{status} {} (Retry-After {})",
                        r.code.as_deref().unwrap_or("?"),
                        retry_after.as_deref().unwrap_or("missing")
                    );
                    rec.rejection = Some(r);
                } else {
                    rec.outcome = Outcome::Failed;
                    rec.detail = format!("unexpected status {status}: {text}");
                }
            }
        }
    }
    rec.end_s = sh.now();
    let outcome = rec.outcome;
    sh.rec().requests.push(rec);
    outcome
}

/// Injects one fault at its time; after a sigterm it watches the drain until the exit.
async fn fault(sh: Arc<Shared>, f: Fault) {
    sleep_until(sh.at(f.at_s())).await;
    if sh.gone() {
        sh.note(
            "fault_skipped",
            json!({"fault": f, "why": "the server already exited"}),
        );
        return;
    }
    match f {
        Fault::Sigterm {
            deregister_after_s, ..
        } => {
            let t = sh.now();
            if !signal(&sh, libc::SIGTERM) {
                sh.note(
                    "fault_skipped",
                    json!({"fault": "sigterm", "why": "no pid"}),
                );
                return;
            }
            sh.rec().sigterm_s = Some(t);
            sh.note("fault", json!({"kind": "sigterm", "pid": sh.pid()}));
            let deregister = async {
                if let Some(d) = deregister_after_s {
                    sleep_until(sh.at(t + d)).await;
                    sh.route.send_modify(|r| r.deregistered = true);
                    sh.note("deregistered", json!({"after_sigterm_s": d}));
                }
            };
            tokio::join!(drain_checks(sh.clone(), t), deregister);
        }
        Fault::Overload {
            requests,
            max_tokens,
            ..
        } => {
            if !sh.route.borrow().routable() {
                sh.note(
                    "fault_skipped",
                    json!({"fault": "overload", "why": "the endpoint is not Ready: the Service routes nothing"}),
                );
                return;
            }
            sh.note("fault", json!({"kind": "overload", "requests": requests}));
            let mt = max_tokens.unwrap_or(sh.scenario.load.max_tokens);
            let mut burst = JoinSet::new();
            for _ in 0..requests {
                let sh2 = sh.clone();
                burst.spawn(async move { request(&sh2, Source::Overload, None, mt).await });
            }
            while burst.join_next().await.is_some() {}
        }
    }
}

/// Judges readiness at SIGTERM and after it, however short the drain: the first GET of the
/// readiness path goes out as soon as the signal grace has passed, then one every 50 ms until
/// the process exits or the drain deadline passes. The check of the new completion sent while
/// draining runs beside these, so it never delays the first readiness check (a drain can end
/// within 0.15 s on a fast CPU).
async fn drain_checks(sh: Arc<Shared>, sigterm_s: f64) {
    let until = sh.at(sigterm_s + sh.scenario.drain_timeout_s() + EXIT_GRACE_S);
    let path = sh
        .scenario
        .probes
        .readiness
        .as_ref()
        .map_or("/health/ready".to_string(), |p| p.path.clone());
    sleep_until(sh.at(sigterm_s + SIGNAL_GRACE_S)).await;
    // One new completion while draining (sent past the simulated Service, as a client with a
    // stale endpoint list would): it must be refused.
    let completion = async {
        if sh.gone() {
            return;
        }
        let start_s = sh.now();
        let send = sh
            .client
            .post(format!("{}/v1/completions", sh.url()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json!({"prompt": sh.scenario.load.prompt, "max_tokens": 1}).to_string())
            .timeout(Duration::from_secs_f64(sh.scenario.load.request_timeout_s))
            .send()
            .await;
        let (status, retry_after) = match send {
            Ok(r) => (
                Some(r.status().as_u16()),
                r.headers().contains_key(reqwest::header::RETRY_AFTER),
            ),
            Err(_) => (None, false),
        };
        sh.rec().drain_completion = Some(DrainCompletion {
            start_s,
            status,
            retry_after,
        });
    };
    let checks = async {
        // The first check is taken even if the process has just exited: a refused
        // connection is recorded as such (not ready), so a drain is always judged.
        let mut first = true;
        while (first || !sh.gone()) && Instant::now() < until {
            first = false;
            let start_s = sh.now();
            let (status, reason, _) = get_status(&sh, &path, 1.0).await;
            let end_s = sh.now();
            sh.rec().drain_checks.push(DrainCheck {
                start_s,
                end_s,
                status,
                reason,
            });
            sleep(DRAIN_CHECK_EVERY).await;
        }
    };
    tokio::join!(completion, checks);
}

/// Probe kinds whose path is the readiness path (their successes after SIGTERM count as
/// "ready while draining").
pub fn readiness_path_probes(s: &Scenario) -> Vec<ProbeKind> {
    let path = s
        .probes
        .readiness
        .as_ref()
        .map_or("/health/ready", |p| p.path.as_str());
    [
        (ProbeKind::Startup, &s.probes.startup),
        (ProbeKind::Liveness, &s.probes.liveness),
        (ProbeKind::Readiness, &s.probes.readiness),
    ]
    .into_iter()
    .filter(|(_, p)| p.as_ref().is_some_and(|p| p.path == path))
    .map(|(k, _)| k)
    .collect()
}
