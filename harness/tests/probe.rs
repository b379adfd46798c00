//! The probe verdict can fail. Misbehaving servers (a few lines of HTTP on a loopback
//! socket) are caught: a stream cut before `[DONE]` is a lost request, a liveness endpoint
//! slower than its timeout gets the pod restarted, a 503 without Retry-After is flagged, and
//! a server that says ready but refuses work counts as traffic routed to an unready pod, and
//! a pod that stays ready, takes new work and cuts its streams on SIGTERM fails the drain. With
//! the real `bitnet serve`, a startup probe whose failureThreshold x period is shorter than
//! the model load restarts the pod, while the CI scenario's does not.

use bitnet_validate::probe::{self, Scenario, Target};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the fake server answers to a path.
type Handler = dyn Fn(&str) -> Reply + Send + Sync;

#[derive(Clone)]
struct Reply {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
    /// Written after `body`, one every `interval`; the connection is closed at once (a cut
    /// stream) when `cut()` turns true.
    chunks: Vec<String>,
    interval: Duration,
    cut: Option<fn() -> bool>,
}

fn reply(status: &'static str, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.into(),
        delay: Duration::ZERO,
        chunks: Vec::new(),
        interval: Duration::ZERO,
        cut: None,
    }
}

/// Serves `handler` on 127.0.0.1 (a free port) in background threads; returns the base URL.
fn fake_server(handler: Arc<Handler>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let h = handler.clone();
            std::thread::spawn(move || {
                let _ = serve_one(conn, &*h);
            });
        }
    });
    url
}

fn serve_one(mut conn: TcpStream, h: &Handler) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let rep = h(&path);
    std::thread::sleep(rep.delay);
    let mut head = format!("HTTP/1.1 {}\r\nconnection: close\r\n", rep.status);
    for (k, v) in &rep.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    // Event streams end when the connection closes; other bodies have a length.
    if !rep.headers.iter().any(|(_, v)| v == "text/event-stream") {
        head.push_str(&format!("content-length: {}\r\n", rep.body.len()));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(rep.body.as_bytes())?;
    for c in &rep.chunks {
        conn.flush()?;
        std::thread::sleep(rep.interval);
        if rep.cut.is_some_and(|cut| cut()) {
            return Ok(());
        }
        conn.write_all(c.as_bytes())?;
    }
    conn.flush()
}

const CHUNK: &str = r#"{"choices":[{"index":0,"text":" a","finish_reason":null}]}"#;
const LAST: &str = r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#;

fn sse(body: String) -> Reply {
    Reply {
        headers: vec![("content-type", "text/event-stream".into())],
        ..reply("200 OK", &body)
    }
}

/// A well-behaved fake: ready, alive, full streams.
fn healthy(path: &str) -> Reply {
    match path {
        "/health/live" => reply("200 OK", r#"{"status":"alive"}"#),
        "/health/ready" => reply("200 OK", r#"{"ready":true}"#),
        _ => sse(format!(
            "data: {CHUNK}\n\ndata: {CHUNK}\n\ndata: {LAST}\n\ndata: [DONE]\n\n"
        )),
    }
}

/// A short attach-mode scenario with the given extra TOML.
fn scenario(extra: &str) -> Scenario {
    Scenario::parse(&format!(
        r#"
[probes.liveness]
path = "/health/live"
period_s = 0.1
timeout_s = 0.5
failure_threshold = 3

[probes.readiness]
path = "/health/ready"
period_s = 0.1
timeout_s = 0.5
failure_threshold = 1

[load]
streams = 2
duration_s = 1.5
max_requests = 40
request_timeout_s = 5
backoff_s = 0.05

{extra}
"#
    ))
    .unwrap()
}

fn attach(s: &Scenario, url: String) -> probe::Report {
    probe::execute(s, Target::Attach { url, pid: None }).unwrap()
}

#[test]
fn a_healthy_fake_meets_every_expectation() {
    // The control: the same checks pass against a server that behaves.
    let url = fake_server(Arc::new(healthy));
    let s = scenario(
        "[expect]\nlost_requests = 0\nrestarts = 0\nunready_routed = 0\ncompleted_requests = { min = 4 }\nfailed_requests = 0",
    );
    let r = attach(&s, url);
    assert!(r.misses.is_empty(), "{:?}\n{}", r.misses, r.summary());
    assert_eq!(r.verdict.lost_requests, 0);
    assert!(r.verdict.live_p99_ms.is_some());
    // Every request is on the timeline, start and end.
    let events = r.timeline.as_array().unwrap();
    let starts = events
        .iter()
        .filter(|e| e["event"] == "request_start")
        .count() as u64;
    assert_eq!(starts, r.verdict.requests_sent);
}

#[test]
fn a_truncated_stream_is_a_lost_request() {
    let url = fake_server(Arc::new(|path: &str| match path {
        "/v1/completions" => sse(format!("data: {CHUNK}\n\ndata: {CHUNK}\n\n")),
        p => healthy(p),
    }));
    let s = scenario("[expect]\nlost_requests = 0");
    let r = attach(&s, url);
    assert!(r.verdict.requests_sent > 0);
    assert_eq!(
        r.verdict.lost_requests,
        r.verdict.requests_sent,
        "{}",
        r.summary()
    );
    assert_eq!(r.verdict.completed_requests, 0);
    assert_eq!(r.misses.len(), 1, "{:?}", r.misses);
}

#[test]
fn a_liveness_endpoint_slower_than_its_timeout_restarts_the_pod() {
    let url = fake_server(Arc::new(|path: &str| match path {
        "/health/live" => Reply {
            delay: Duration::from_millis(800),
            ..reply("200 OK", r#"{"status":"alive"}"#)
        },
        p => healthy(p),
    }));
    let mut s = scenario("[expect]\nrestarts = 0");
    // Failures end at 0.5, 1.0, 1.5 s (each attempt times out after 0.5 s): watch for 2.5 s.
    s.load.duration_s = 2.5;
    let r = attach(&s, url);
    assert!(r.verdict.restarts >= 1, "{}", r.summary());
    assert!(r.verdict.liveness_failures >= 3);
    assert!(r.verdict.live_p50_ms.unwrap() >= 450.0);
    assert!(!r.misses.is_empty());
}

#[test]
fn rejections_without_retry_after_and_unready_routing_are_counted() {
    // Ready by its probe, yet every completion is refused: "shutting_down" without
    // Retry-After.
    let url = fake_server(Arc::new(|path: &str| match path {
        "/v1/completions" => reply(
            "503 Service Unavailable",
            r#"{"error":{"message":"the server is shutting down","type":"service_unavailable","code":"shutting_down"}}"#,
        ),
        p => healthy(p),
    }));
    let s = scenario("[expect]\nrejected_without_retry_after = 0\nunready_routed = 0");
    let r = attach(&s, url);
    let v = &r.verdict;
    assert!(v.rejected_requests > 0);
    assert_eq!(v.rejected_without_retry_after, v.rejected_requests);
    assert_eq!(v.unready_routed, v.rejected_requests);
    assert_eq!(r.misses.len(), 2, "{:?}", r.misses);
}

#[test]
fn nothing_is_sent_to_an_endpoint_that_never_becomes_ready() {
    let url = fake_server(Arc::new(|path: &str| match path {
        "/health/ready" => reply(
            "503 Service Unavailable",
            r#"{"ready":false,"reason":"loading"}"#,
        ),
        p => healthy(p),
    }));
    let s = scenario("");
    let r = attach(&s, url);
    assert_eq!(r.verdict.requests_sent, 0);
    assert_eq!(r.verdict.ready_seconds, None);
    assert!(r.verdict.readiness_failures > 5);
}

/// The flag file the fake pod's process touches when it gets SIGTERM.
fn term_flag() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("probe-fake-pod-sigterm")
}

#[test]
fn a_pod_that_stays_ready_and_cuts_streams_on_sigterm_is_caught() {
    // The "pod" is a shell that notes SIGTERM in a file and exits 1 s later, and an HTTP
    // server that, once the note exists, keeps saying ready, takes new work and cuts every
    // stream in flight: the opposite of a graceful drain.
    let flag = term_flag();
    let _ = std::fs::remove_file(&flag);
    let mut pod = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap 'touch {}; sleep 1; exit 0' TERM; while :; do sleep 0.05; done",
            flag.display()
        ))
        .spawn()
        .unwrap();
    let pid = pod.id() as i32;
    // Reap it when it exits so its pid disappears.
    std::thread::spawn(move || pod.wait());
    fn signalled() -> bool {
        term_flag().exists()
    }
    let url = fake_server(Arc::new(|path: &str| match path {
        "/v1/completions" => Reply {
            chunks: (0..15)
                .map(|_| format!("data: {CHUNK}\n\n"))
                .chain([format!("data: {LAST}\n\ndata: [DONE]\n\n")])
                .collect(),
            interval: Duration::from_millis(100),
            cut: Some(signalled),
            ..sse(String::new())
        },
        p => healthy(p),
    }));
    let mut s = scenario(
        "[[fault]]\nkind = \"sigterm\"\nat_s = 1.0\n[expect]\nready_while_draining = false\nlost_requests = 0\naccepted_while_draining = false",
    );
    s.load.duration_s = 4.0;
    let r = probe::execute(
        &s,
        Target::Attach {
            url,
            pid: Some(pid),
        },
    )
    .unwrap();
    let v = &r.verdict;
    assert_eq!(v.ready_while_draining, Some(true), "{}", r.summary());
    assert_eq!(v.accepted_while_draining, Some(true));
    assert!(v.inflight_at_sigterm.unwrap() >= 1);
    assert_eq!(v.inflight_unfinished, v.inflight_at_sigterm);
    assert!(v.lost_requests >= 1);
    assert!(v.drain_checks >= 3);
    // The pid vanished about 1 s after the signal.
    let drain = v.drain_seconds.unwrap();
    assert!((0.8..3.0).contains(&drain), "drain {drain}");
    assert_eq!(r.misses.len(), 3, "{:?}", r.misses);
    // Without --pid (attach mode) such a scenario is refused.
    let e = probe::execute(
        &s,
        Target::Attach {
            url: "http://127.0.0.1:9".into(),
            pid: None,
        },
    )
    .err()
    .unwrap();
    assert!(e.contains("--pid"), "{e}");
}

fn ci_scenario(name: &str) -> Scenario {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ci/probes")
        .join(name);
    Scenario::load(&p).unwrap()
}

fn launch(s: &Scenario) -> probe::Report {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("probe-test");
    let ctx = bitnet_validate::gates::Context {
        shared: bitnet::env::get().shared.clone(),
        work,
        data: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ci"),
        root: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
        threads: 1,
    };
    let model = s.server.as_ref().unwrap().model.materialize(&ctx).unwrap();
    let bin = probe::find_bitnet().unwrap_or_else(|e| panic!("{e}"));
    probe::execute(s, Target::Launch { bin, model }).unwrap()
}

#[test]
fn a_startup_probe_shorter_than_the_model_load_restarts_the_real_server() {
    // The CI scenario (20 x 0.5 s) tolerates the 3 s load; 3 x 0.5 s does not.
    let mut s = ci_scenario("slow-startup.toml");
    s.probes.startup.as_mut().unwrap().failure_threshold = 3;
    s.load.duration_s = 4.5;
    let r = launch(&s);
    assert!(r.verdict.restarts >= 1, "{}", r.summary());
    assert!(r.verdict.startup_failures >= 3);
    assert!(
        r.misses.iter().any(|m| m.starts_with("restarts")),
        "{:?}",
        r.misses
    );
    // The server itself was fine: it only needed more time.
    assert!(!r.verdict.server_crashed);
    assert_eq!(r.verdict.server_exit_code, Some(0));
}

#[test]
fn with_on_restart_kill_a_too_short_startup_probe_crash_loops() {
    // The kubelet really kills and relaunches the server each time the startup probe gives
    // up (1.5 s), before the 3 s load ends: the pod never becomes ready and serves nothing.
    let mut s = ci_scenario("slow-startup.toml");
    s.probes.startup.as_mut().unwrap().failure_threshold = 3;
    s.on_restart = probe::scenario::OnRestart::Kill;
    s.load.duration_s = 5.0;
    let r = launch(&s);
    let v = &r.verdict;
    assert!(v.kills >= 2, "{}", r.summary());
    assert_eq!(v.kills, v.restarts);
    assert_eq!(v.startup_seconds, None);
    assert_eq!(v.requests_sent, 0);
    // Every kill is on the timeline, followed by a relaunch on a new port.
    let events = r.timeline.as_array().unwrap();
    let relaunched = events.iter().filter(|e| e["event"] == "relaunched").count() as u64;
    assert_eq!(relaunched, v.kills);
}
