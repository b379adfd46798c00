//! Server counters and histograms, and their two renderings: the `/health` JSON report and
//! the Prometheus text exposition at `/metrics`.

use super::scheduler::Shared;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 14],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

pub struct Metrics {
    pub started: Instant,
    /// Finished HTTP requests by (route, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Completion requests: whole duration, and time to the first token.
    pub request_seconds: Histogram,
    pub ttft_seconds: Histogram,
    /// Completion requests answered within the SLA latency.
    sla_met: AtomicU64,
    completions: AtomicU64,
    /// Answers with a 5xx status.
    errors: AtomicU64,
    answered: AtomicU64,
    pub sla: Duration,
    cpu: Mutex<(Instant, u64)>,
}

impl Metrics {
    pub fn new(sla: Duration) -> Self {
        Metrics {
            started: Instant::now(),
            requests: Mutex::new(BTreeMap::new()),
            request_seconds: Histogram::default(),
            ttft_seconds: Histogram::default(),
            sla_met: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            sla,
            cpu: Mutex::new((Instant::now(), cpu_ticks().unwrap_or(0))),
        }
    }

    pub fn count_response(&self, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
        self.answered.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A completion finished: its total time and time to first token.
    pub fn completion(&self, total: Duration, ttft: Option<Duration>) {
        self.request_seconds.observe(total);
        if let Some(t) = ttft {
            self.ttft_seconds.observe(t);
        }
        self.completions.fetch_add(1, Ordering::Relaxed);
        if total <= self.sla {
            self.sla_met.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Process CPU time since the previous call over wall time, as a fraction of all cores.
    fn cpu_utilisation(&self) -> Option<f64> {
        let ticks = cpu_ticks()?;
        let mut last = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        let dt = last.0.elapsed().as_secs_f64();
        let used = ticks.saturating_sub(last.1) as f64 / clock_ticks_per_second();
        *last = (Instant::now(), ticks);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        (dt > 0.0).then(|| (used / dt / cores).clamp(0.0, 1.0))
    }

    /// The `/health` report (without components, which the caller adds).
    pub fn performance(&self) -> serde_json::Value {
        let n = self.completions.load(Ordering::Relaxed);
        let answered = self.answered.load(Ordering::Relaxed);
        let up = self.started.elapsed().as_secs_f64().max(1e-9);
        let sum = self.request_seconds.sum_micros.load(Ordering::Relaxed) as f64 / 1e3;
        serde_json::json!({
            "avg_response_ms": if n > 0 { sum / n as f64 } else { 0.0 },
            "requests_per_second": answered as f64 / up,
            "error_rate": if answered > 0 { self.errors.load(Ordering::Relaxed) as f64 / answered as f64 } else { 0.0 },
            "sla_ms": self.sla.as_millis() as u64,
            "sla_compliance": if n > 0 { self.sla_met.load(Ordering::Relaxed) as f64 / n as f64 } else { 1.0 },
        })
    }

    pub fn system(&self, sh: &Shared, in_flight: usize) -> serde_json::Value {
        serde_json::json!({
            "cpu_utilisation": self.cpu_utilisation(),
            "memory_bytes": bitnet::receipt::rss_bytes(),
            "active_requests": in_flight,
            "active_sequences": sh.active.load(Ordering::Relaxed),
            "queue_depth": sh.queue_depth(),
        })
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn prometheus(
        &self,
        sh: &Shared,
        draining: bool,
        in_flight: usize,
        kv_bytes_per_token: usize,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP bitnet_http_requests_total HTTP requests answered, by route and status.\n# TYPE bitnet_http_requests_total counter"
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "bitnet_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        counter(
            &mut out,
            "bitnet_prompt_tokens_total",
            "Prompt tokens evaluated.",
            ld(&sh.prompt_tokens),
        );
        counter(
            &mut out,
            "bitnet_generated_tokens_total",
            "Tokens generated.",
            ld(&sh.tokens_generated),
        );
        counter(
            &mut out,
            "bitnet_forward_steps_total",
            "Batched forward steps run by the scheduler.",
            ld(&sh.steps),
        );
        counter(
            &mut out,
            "bitnet_cancelled_requests_total",
            "Requests dropped because the client went away.",
            ld(&sh.cancelled),
        );
        counter(
            &mut out,
            "bitnet_timed_out_requests_total",
            "Requests ended by their deadline.",
            ld(&sh.timed_out),
        );
        self.request_seconds.render(
            &mut out,
            "bitnet_request_duration_seconds",
            "Completion request duration, queueing included.",
        );
        self.ttft_seconds.render(
            &mut out,
            "bitnet_time_to_first_token_seconds",
            "Time from accepting a completion request to its first token.",
        );
        gauge(
            &mut out,
            "bitnet_queue_depth",
            "Requests waiting for a sequence slot.",
            sh.queue_depth() as f64,
        );
        gauge(
            &mut out,
            "bitnet_queue_limit",
            "Most requests that may wait.",
            sh.queue_limit as f64,
        );
        gauge(
            &mut out,
            "bitnet_active_sequences",
            "Sequences being generated.",
            sh.active.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "bitnet_parallel_sequences",
            "Most sequences generated at once.",
            sh.parallel as f64,
        );
        gauge(
            &mut out,
            "bitnet_in_flight_requests",
            "Completion requests being answered.",
            in_flight as f64,
        );
        let kv = sh.kv_tokens.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "bitnet_kv_cache_tokens",
            "Positions held in the KV caches of running sequences.",
            kv as f64,
        );
        gauge(
            &mut out,
            "bitnet_kv_cache_bytes",
            "Bytes of KV cache those positions use.",
            (kv * kv_bytes_per_token) as f64,
        );
        gauge(
            &mut out,
            "bitnet_draining",
            "1 while shutting down.",
            draining as u8 as f64,
        );
        if let Some(rss) = bitnet::receipt::rss_bytes() {
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory.",
                rss as f64,
            );
        }
        if let Some(t) = cpu_ticks() {
            let secs = t as f64 / clock_ticks_per_second();
            counter(
                &mut out,
                "process_cpu_seconds_total",
                "User and system CPU time.",
                secs,
            );
        }
        gauge(
            &mut out,
            "process_uptime_seconds",
            "Seconds since the server started.",
            self.started.elapsed().as_secs_f64(),
        );
        out
    }
}

/// utime + stime of this process, in clock ticks (Linux).
fn cpu_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            return t as f64;
        }
    }
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(70));
        h.observe(Duration::from_secs(500));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.005\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"120\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
    }
}
