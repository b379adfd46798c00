//! `bitnet serve`: an OpenAI-compatible HTTP server (tokio + axum) over a continuous-batching
//! scheduler.
//!
//! Life cycle: bind the socket and print `bitnet serve: listening on http://ADDR` at once
//! (probes get answers while the model loads), load the model on a thread, start the
//! scheduler ([`scheduler`]), then serve. On SIGTERM or SIGINT readiness turns 503 at once,
//! new work gets 503 with Retry-After, queued and running requests finish (up to
//! `--drain-timeout`, after which they are ended with an error), the scheduler stops, the
//! HTTP server closes, and the process exits 0.
//!
//! Where the server is in that life is one [`lifecycle::Phase`], which the probes
//! ([`health`]: `/health`, `/health/live`, `/health/ready`, `/metrics` and its alias
//! `/health/metrics`) and request admission ([`api`]: completions, chat, models, tokenize)
//! all read.

pub mod admission;
pub mod answer;
pub mod api;
pub mod batch;
pub mod chat;
pub mod conn;
pub mod error;
pub mod fields;
pub mod health;
pub mod lifecycle;
pub mod limit;
pub mod logprobs;
pub mod metrics;
pub mod request;
pub mod sandbox;
pub mod scheduler;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bitnet::error::{Error, Result};
use bitnet::model::Model;
use bitnet::tokenizer::Tokenizer;
use lifecycle::Transition;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[arg(short, long)]
    pub model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences generated at once (they share every forward step).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a free sequence; beyond it, 503 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Compute threads (default: BITNET_THREADS, else all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Seconds a request may take from arrival to its last token.
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Seconds a client has to send a request's head; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, default_value_t = 15)]
    pub header_timeout: u64,
    /// Seconds a client has to send a request's body once its head has arrived (else 408).
    #[arg(long, default_value_t = 30)]
    pub body_timeout: u64,
    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Completion requests per second per client address (0 = no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit: f64,
    /// Burst size for --rate-limit.
    #[arg(long, default_value_t = 10.0)]
    pub rate_burst: f64,
    /// Chat template: a built-in name (chatml, llama3, llama2, bitnet, plain) or a Jinja file.
    /// Default: the model's `tokenizer.chat_template`, else chatml.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// The BPE pre-tokenizer (the global `--tokenizer-pre`, set by the CLI).
    #[arg(skip)]
    pub tokenizer_pre: Option<String>,
    /// The output projection's format at load (the global `--head`, set by the CLI).
    #[arg(skip)]
    pub head: Option<bitnet::model::HeadFormat>,
    /// The binary whose `__render-worker` subcommand renders chat templates in a sandbox
    /// ([`sandbox`]); the CLI sets it to itself. None: in-process renders (minijinja's limits
    /// only), with a warning.
    #[arg(skip)]
    pub render_exe: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` on every route but /health/live and /health/ready
    /// (401 otherwise). A key on the command line is visible to other users of the machine:
    /// prefer --api-key-file.
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// --api-key, read from the first line of this file.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Model id reported by /v1/models (default: the file name without extension).
    #[arg(long)]
    pub alias: Option<String>,
    /// Latency under which a completion counts as meeting the SLA in /health, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub sla_ms: u64,
    /// Wait this long before loading the model (to rehearse slow starts and startup probes).
    #[arg(long, default_value_t = 0)]
    pub startup_delay_ms: u64,
}

impl ServeArgs {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout)
    }
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Usage(m.into()));
        if self.parallel == 0 {
            return bad("--parallel must be at least 1");
        }
        if self.threads == Some(0) {
            return bad("--threads must be at least 1");
        }
        if self.request_timeout == 0 {
            return bad("--request-timeout must be at least 1 second");
        }
        if self.header_timeout == 0 || self.body_timeout == 0 {
            return bad("--header-timeout and --body-timeout must be at least 1 second");
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1");
        }
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return bad("--api-key must not be empty");
        }
        if !(self.rate_limit >= 0.0 && self.rate_limit.is_finite()) {
            return bad("--rate-limit must be a non-negative number");
        }
        if self.rate_burst < 1.0 || !self.rate_burst.is_finite() {
            return bad("--rate-burst must be at least 1");
        }
        Ok(())
    }
}

/// What exists once the model has loaded.
pub struct Loaded {
    pub model: Arc<Model>,
    pub tok: Arc<Tokenizer>,
    pub chat: chat::ChatTemplate,
}

/// Everything the handlers share.
pub struct App {
    pub opts: ServeArgs,
    pub sh: Arc<scheduler::Shared>,
    pub metrics: metrics::Metrics,
    pub limiter: Option<limit::RateLimiter>,
    /// Set once, just before the phase becomes ready.
    pub loaded: OnceLock<Arc<Loaded>>,
    /// The one stored [`lifecycle::Phase`]; the scheduler shares it.
    pub lifecycle: Arc<lifecycle::Lifecycle>,
    pub in_flight: AtomicUsize,
    pub next_id: AtomicU64,
    pub model_id: String,
    pub started_unix: u64,
    pub threads: usize,
    /// Set by the signal thread when it ends the drain itself (a second signal, or the drain
    /// outran `--drain-timeout` + [`EXIT_GRACE`]).
    pub forced_exit: AtomicBool,
    /// Chat-template renders running at once (off the async runtime; each bounded).
    pub renders: Arc<tokio::sync::Semaphore>,
    /// The render workers, one per render at once ([`sandbox`]).
    pub sandbox: Option<Arc<sandbox::Sandbox>>,
    /// `--api-key` / `--api-key-file`.
    pub api_key: Option<String>,
}

/// Chat-template renders that may run at once, each on a blocking thread.
pub const RENDERS_AT_ONCE: usize = 2;
/// How long a chat request may wait for, and spend in, its template render.
pub const RENDER_DEADLINE: Duration = Duration::from_secs(2);

impl App {
    /// The model, tokenizer and chat template; a 503 `loading` until they are in place.
    pub fn loaded(&self) -> std::result::Result<&Arc<Loaded>, error::ApiError> {
        self.loaded.get().ok_or_else(error::ApiError::loading)
    }
}

/// Identifies the build in answers (OpenAI's `system_fingerprint`).
pub fn fingerprint() -> String {
    format!("bitnet-{}", env!("CARGO_PKG_VERSION"))
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/completions", post(api::completions))
        .route("/v1/chat/completions", post(api::chat_completions))
        .route("/v1/models", get(api::models))
        .route("/props", get(api::props))
        .route("/slots", get(api::slots))
        .route("/tokenize", post(api::tokenize))
        .route("/detokenize", post(api::detokenize))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::prometheus))
        .route("/health/metrics", get(health::prometheus))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .layer(axum::middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// Routes open without the API key: the kubelet's probes.
const OPEN_ROUTES: &[&str] = &["/health/live", "/health/ready"];

/// With an API key set, every route but [`OPEN_ROUTES`] needs `Authorization: Bearer KEY`.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(req).await;
    };
    if OPEN_ROUTES.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same(g.as_bytes(), key.as_bytes()) => next.run(req).await,
        other => axum::response::IntoResponse::into_response(error::ApiError::unauthorized(
            other.is_some(),
        )),
    }
}

/// Equality in time that depends only on the lengths (no early exit at the first difference).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Counts every answer by route and status for /metrics.
async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let r = next.run(req).await;
    app.metrics.count_response(&route, r.status().as_u16());
    r
}

/// Loads the model, tokenizer and chat template.
fn load(opts: &ServeArgs, sandbox: Option<&sandbox::Sandbox>) -> Result<Loaded> {
    let file = Arc::new(bitnet::gguf::Gguf::open(&opts.model)?);
    let tok = Tokenizer::from_gguf_with(&file, opts.tokenizer_pre.as_deref())?;
    if let Some(note) = tok.pre_note() {
        eprintln!("bitnet serve: {note}");
    }
    let gguf_template = file.get_str("tokenizer.chat_template")?.map(str::to_string);
    let mut model = Model::from_gguf(file)?;
    if let Some(h) = opts.head {
        model.quantize_head(h)?;
    }
    let (name, source) = match (&opts.chat_template, gguf_template) {
        (Some(t), _) if chat::BUILTIN.iter().any(|(n, _)| n == t) => (t.clone(), t.clone()),
        (Some(path), _) => (
            path.clone(),
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
        ),
        // BitNet's GGUF converter writes a placeholder ("Human: ... BITNETAssistant: "), not
        // the format the model was trained on: use the release's own (its tokenizer_config.json,
        // the built-in `bitnet`: "Role: content<|eot_id|>" turns, then "Assistant: ").
        (None, Some(t)) if chat::is_bitnet_placeholder(&t) => {
            eprintln!(
                "bitnet serve: note: the file's chat template is BitNet's converter placeholder; using the trained format (built-in `bitnet`, turns end with <|eot_id|>; --chat-template overrides)"
            );
            ("bitnet".to_string(), "bitnet".to_string())
        }
        (None, Some(t)) => ("gguf".to_string(), t),
        (None, None) => ("chatml".to_string(), "chatml".to_string()),
    };
    let text = |id: Option<u32>| {
        id.and_then(|i| tok.token_text(i))
            .unwrap_or_default()
            .to_string()
    };
    let chat = chat::ChatTemplate::new(&name, &source, &text(tok.bos()), &text(tok.eos()))
        .map_err(|e| Error::Usage(e.to_string()))?;
    // A template that cannot render a plain conversation within its budget will fail every
    // chat request: say so now (its renders stay bounded either way).
    let dry_run =
        [("system", "You are helpful."), ("user", "Hello")].map(|(role, content)| chat::Message {
            role: role.into(),
            content: content.into(),
        });
    let rendered = match sandbox {
        Some(s) => s.render(&chat, &dry_run, |_| {}),
        None => {
            eprintln!("bitnet serve: warning: chat templates render in this process, without the sandbox's memory limit");
            chat.render(&dry_run)
        }
    };
    if let Err(e) = rendered {
        eprintln!("bitnet serve: warning: a dry run of the chat template failed: {e}");
    }
    Ok(Loaded {
        model: Arc::new(model),
        tok: Arc::new(tok),
        chat,
    })
}

/// Runs the server until SIGTERM/SIGINT, then drains and returns.
pub fn run(opts: ServeArgs) -> Result<()> {
    opts.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bitnet-http")
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    runtime.block_on(serve(opts))
}

async fn serve(opts: ServeArgs) -> Result<()> {
    let api_key = match (&opts.api_key, &opts.api_key_file) {
        (Some(k), _) => Some(k.trim().to_string()),
        (None, Some(p)) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| Error::io(p.display().to_string(), e))?;
            let k = text.lines().next().unwrap_or("").trim().to_string();
            if k.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: no API key on its first line",
                    p.display()
                )));
            }
            Some(k)
        }
        (None, None) => None,
    };
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::io(&addr, e))?;
    let local = listener.local_addr().map_err(|e| Error::io(&addr, e))?;
    eprintln!("bitnet serve: listening on http://{local}");

    let threads = opts.threads.unwrap_or(bitnet::env::get().threads);
    let model_id = opts.alias.clone().unwrap_or_else(|| {
        opts.model
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned())
    });
    let limiter = (opts.rate_limit > 0.0)
        .then(|| limit::RateLimiter::new(opts.rate_limit, opts.rate_burst, 100_000));
    let lifecycle = Arc::new(lifecycle::Lifecycle::default());
    let app = Arc::new(App {
        sh: scheduler::Shared::new(opts.parallel, opts.queue, lifecycle.clone()),
        lifecycle,
        metrics: metrics::Metrics::new(Duration::from_millis(opts.sla_ms)),
        limiter,
        loaded: OnceLock::new(),
        in_flight: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
        model_id,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        threads,
        renders: Arc::new(tokio::sync::Semaphore::new(RENDERS_AT_ONCE)),
        sandbox: opts
            .render_exe
            .clone()
            .map(|exe| Arc::new(sandbox::Sandbox::new(exe, RENDERS_AT_ONCE))),
        forced_exit: AtomicBool::new(false),
        api_key,
        opts,
    });

    // Load in the background; a failure ends the process with the load error's exit code.
    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::channel::<Error>(1);
    let scheduler_thread = Arc::new(std::sync::Mutex::new(None));
    {
        let app = app.clone();
        let handle = scheduler_thread.clone();
        std::thread::Builder::new()
            .name("bitnet-load".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(app.opts.startup_delay_ms));
                let t0 = Instant::now();
                let loaded = match load(&app.opts, app.sandbox.as_deref()) {
                    Ok(l) => l,
                    Err(e) => {
                        app.lifecycle.apply(Transition::LoadFailed(e.to_string()));
                        let _ = fail_tx.blocking_send(e);
                        return;
                    }
                };
                let spawned =
                    scheduler::spawn(loaded.model.clone(), loaded.tok.clone(), app.threads, app.sh.clone());
                match spawned {
                    Ok(h) => *handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
                    Err(e) => {
                        let _ = fail_tx.blocking_send(Error::io("scheduler thread", e));
                        return;
                    }
                }
                eprintln!(
                    "bitnet serve: model {} loaded in {:.2} s ({} threads, {} parallel sequences, chat template {})",
                    app.model_id,
                    t0.elapsed().as_secs_f64(),
                    app.threads,
                    app.sh.parallel,
                    loaded.chat.name
                );
                let _ = app.loaded.set(Arc::new(loaded));
                app.lifecycle.apply(Transition::Loaded);
            })
            .map_err(|e| Error::io("loader thread", e))?;
    }

    if app.limiter.is_some() {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                if let Some(l) = &app.limiter {
                    l.sweep(Instant::now());
                }
            }
        });
    }

    // Signals are taken by a thread of their own, so a shutdown never waits for a runtime
    // thread to be free: readiness turns 503 at the signal, and the process ends by a hard
    // deadline however busy everything else is.
    let signalled = Arc::new(tokio::sync::Notify::new());
    watch_signals(app.clone(), signalled.clone())?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = conn::Limits {
        header_timeout: Duration::from_secs(app.opts.header_timeout),
        max_connections: app.opts.max_connections,
    };
    let server = conn::serve(listener, router(app.clone()), limits, async move {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(server);

    // Serve until a signal (or a load failure), then drain while still answering probes.
    let load_failure = tokio::select! {
        r = &mut server => return r.map_err(|e| Error::io("http server", e)),
        _ = signalled.notified() => None,
        Some(e) = fail_rx.recv() => Some(e),
    };
    if let Some(e) = load_failure {
        eprintln!("bitnet serve: model failed to load: {e}");
        return Err(e);
    }
    app.sh.start_draining();
    eprintln!(
        "bitnet serve: draining: {} running, {} queued (up to {} s)",
        app.sh.active.load(Ordering::SeqCst),
        app.sh.queue_depth(),
        app.opts.drain_timeout
    );
    let deadline = Instant::now() + Duration::from_secs(app.opts.drain_timeout);
    let drain = async {
        while !app.sh.idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = &mut server => return r.map_err(|e| Error::io("http server", e)),
        _ = drain => {}
    }
    let forced = app.forced_exit.load(Ordering::SeqCst);
    let clean = app.sh.idle() && !forced;
    app.sh.shut_down(!clean);
    let handle = scheduler_thread
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(h) = handle {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    // Streams have ended; close the listener and let open answers finish (bounded).
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(conn::CLOSE_GRACE + Duration::from_secs(1), &mut server).await;
    eprintln!(
        "bitnet serve: stopped ({})",
        if clean {
            "all requests finished"
        } else if forced {
            "ended by the signal thread: unfinished requests were ended"
        } else {
            "drain timeout: unfinished requests were ended"
        }
    );
    if forced {
        return Err(Error::Runtime(
            "shutdown forced by a second signal or a drain past its deadline".into(),
        ));
    }
    Ok(())
}

/// Extra time past `--drain-timeout` for the scheduler to end what is left and the HTTP
/// side to close, before the signal thread ends the process itself.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Starts the thread that takes SIGTERM and SIGINT. The first signal starts the drain at once
/// (readiness 503, new work refused) and wakes the async side; if the process is still running
/// `--drain-timeout` + [`EXIT_GRACE`] later, or at a second signal, the thread ends what is
/// left (counted as ended by shutdown) and exits with status 1.
fn watch_signals(app: Arc<App>, signalled: Arc<tokio::sync::Notify>) -> Result<()> {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
            .map_err(|e| Error::io("signal handlers", e))?;
        std::thread::Builder::new()
            .name("bitnet-signals".into())
            .spawn(move || {
                if signals.forever().next().is_none() {
                    return;
                }
                app.sh.start_draining();
                signalled.notify_one();
                let hard =
                    Instant::now() + Duration::from_secs(app.opts.drain_timeout) + EXIT_GRACE;
                let second = loop {
                    if signals.pending().next().is_some() {
                        break true;
                    }
                    if Instant::now() >= hard {
                        break false;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                eprintln!(
                    "bitnet serve: {}: ending {} running and {} queued requests and exiting",
                    if second {
                        "second signal"
                    } else {
                        "the drain did not finish in time"
                    },
                    app.sh.active.load(Ordering::SeqCst),
                    app.sh.queue_depth()
                );
                app.forced_exit.store(true, Ordering::SeqCst);
                app.sh.shut_down(true);
                // Let the scheduler tell its requests; then go, whatever else is running.
                std::thread::sleep(Duration::from_millis(200));
                std::process::exit(1);
            })
            .map_err(|e| Error::io("signal thread", e))?;
    }
    #[cfg(not(unix))]
    {
        let _ = app;
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            signalled.notify_one();
        });
    }
    Ok(())
}
