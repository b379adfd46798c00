//! Continuous batching: one thread owns the model and runs forward steps; every step stacks
//! the next token of every running sequence (and a slice of any prompt being prefilled) into
//! one [`Model::forward_batch`] call, so concurrent requests share each weight read.
//!
//! Requests wait in a bounded queue; up to `parallel` sequences run at once. A sequence ends
//! at its stop condition, at its deadline, or as soon as its client goes away (the receiver
//! of its event channel is dropped). Results do not depend on what else is in the batch.

use super::lifecycle::{Lifecycle, Transition};
use bitnet::generate::{Decoder, GenerateOptions, Next, StopReason};
use bitnet::model::{Model, Seq, State};
use bitnet::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Most prompt tokens prefilled in one step, so running sequences keep getting tokens while a
/// long prompt is read.
const PREFILL_CHUNK: usize = 256;

/// One accepted request.
pub struct Job {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
    pub enqueued: Instant,
}

/// What a request hears back, in order: text pieces, then exactly one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Finish),
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub time_to_first_token: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// max_tokens or the end of the context.
    Length,
    /// The request's deadline passed.
    Timeout,
    /// The server shut down before the request finished.
    Shutdown,
}

impl FinishReason {
    pub fn openai(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Timeout => "timeout",
            FinishReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    QueueFull,
    Draining,
}

/// State shared between the scheduler thread and the HTTP side.
pub struct Shared {
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    pub queue_limit: usize,
    pub parallel: usize,
    /// The server's phase: jobs are refused once it drains; the thread reports its exit.
    lifecycle: Arc<Lifecycle>,
    /// Set when the thread should exit once idle (after draining) or at once (`abort`).
    stop: AtomicBool,
    abort: AtomicBool,
    /// Whether the scheduler thread runs (for the `/health` component report; the phase
    /// records what its exit means).
    pub alive: AtomicBool,
    pub active: AtomicUsize,
    pub kv_tokens: AtomicUsize,
    pub steps: AtomicU64,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicU64,
    pub timed_out: AtomicU64,
}

impl Shared {
    pub fn new(parallel: usize, queue_limit: usize, lifecycle: Arc<Lifecycle>) -> Arc<Self> {
        Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            queue_limit,
            parallel: parallel.max(1),
            lifecycle,
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            alive: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            kv_tokens: AtomicUsize::new(0),
            steps: AtomicU64::new(0),
            tokens_generated: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn queue_depth(&self) -> usize {
        self.lock().len()
    }

    /// Queues a job, or says why not (the caller answers 503).
    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        let mut q = self.lock();
        if self.lifecycle.is_draining() {
            return Err(Rejected::Draining);
        }
        if q.len() >= self.queue_limit {
            return Err(Rejected::QueueFull);
        }
        q.push_back(job);
        self.wake.notify_one();
        Ok(())
    }

    /// Stop taking new work (the phase becomes draining, so readiness goes false); queued
    /// and running work continues. Under the queue lock, so a job is either queued before
    /// the drain starts (and is waited for) or refused.
    pub fn start_draining(&self) {
        let _q = self.lock();
        self.lifecycle.apply(Transition::DrainStarted);
    }

    /// Whether nothing is queued or running.
    pub fn idle(&self) -> bool {
        self.lock().is_empty() && self.active.load(Ordering::SeqCst) == 0
    }

    /// Ends the thread: once idle, or at once with `abort` (remaining requests get
    /// `FinishReason::Shutdown`).
    pub fn shut_down(&self, abort: bool) {
        let _q = self.lock();
        self.stop.store(true, Ordering::SeqCst);
        if abort {
            self.abort.store(true, Ordering::SeqCst);
        }
        self.wake.notify_all();
    }
}

/// A running sequence.
struct Running {
    job: Job,
    state: State,
    dec: Decoder,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// The token to feed next (after the prompt).
    next: Option<u32>,
    first_token: Option<Duration>,
}

impl Running {
    fn send(&self, e: Event) -> bool {
        self.job.events.send(e).is_ok()
    }
    fn finish(self, reason: FinishReason, sh: &Shared) {
        let completion_tokens = self.dec.tokens.len();
        sh.kv_tokens.fetch_sub(self.state.pos, Ordering::Relaxed);
        let _ = self.job.events.send(Event::Done(Finish {
            reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens,
            time_to_first_token: self.first_token,
        }));
    }
}

/// Marks the scheduler dead when its thread ends, however it ends.
struct AliveGuard(Arc<Shared>);
impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
        self.0.active.store(0, Ordering::SeqCst);
        self.0.lifecycle.apply(Transition::SchedulerExited);
    }
}

/// Starts the scheduler thread. Its compute (and the worker pool it creates) runs at a lower
/// CPU priority than the HTTP threads, so health probes answer even when every core is busy.
pub fn spawn(
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    sh: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    sh.alive.store(true, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("bitnet-scheduler".into())
        .spawn(move || {
            lower_priority();
            let guard = AliveGuard(sh.clone());
            run(&model, &tok, &guard.0);
        })
}

/// Nice +10 for the calling thread (Linux: per thread; threads it creates inherit it).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with who = 0 changes only the calling thread's nice value.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

fn run(model: &Model, tok: &Tokenizer, sh: &Shared) {
    let ctx = model.config.context_length;
    let mut running: Vec<Running> = Vec::new();
    loop {
        // Admit queued jobs while there is room; wait when there is nothing to do.
        {
            let mut q = sh.lock();
            loop {
                if sh.abort.load(Ordering::SeqCst) {
                    for job in q.drain(..) {
                        let _ = job.events.send(Event::Done(Finish {
                            reason: FinishReason::Shutdown,
                            prompt_tokens: job.prompt.len(),
                            completion_tokens: 0,
                            time_to_first_token: None,
                        }));
                    }
                    drop(q);
                    for r in running.drain(..) {
                        r.finish(FinishReason::Shutdown, sh);
                    }
                    return;
                }
                while running.len() < sh.parallel {
                    let Some(job) = q.pop_front() else { break };
                    if job.events.is_closed() {
                        sh.cancelled.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let dec = Decoder::new(&job.prompt, &job.opts);
                    running.push(Running {
                        state: model.new_state(),
                        dec,
                        prefilled: 0,
                        next: None,
                        first_token: None,
                        job,
                    });
                }
                sh.active.store(running.len(), Ordering::SeqCst);
                if !running.is_empty() {
                    break;
                }
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                q = sh.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }

        // Drop sequences whose client left or whose deadline passed.
        let now = Instant::now();
        running.retain_mut(|r| {
            if r.job.events.is_closed() {
                sh.cancelled.fetch_add(1, Ordering::Relaxed);
                sh.kv_tokens.fetch_sub(r.state.pos, Ordering::Relaxed);
                return false;
            }
            true
        });
        let (expired, live): (Vec<_>, Vec<_>) =
            running.drain(..).partition(|r| now >= r.job.deadline);
        running = live;
        for r in expired {
            sh.timed_out.fetch_add(1, Ordering::Relaxed);
            r.finish(FinishReason::Timeout, sh);
        }
        if running.is_empty() {
            continue;
        }

        // One step: every decoding sequence's next token, plus prompt slices up to the budget.
        let mut budget = PREFILL_CHUNK;
        // (index into `running`, tokens fed) for each sequence in this step.
        let mut fed: Vec<(usize, usize)> = Vec::with_capacity(running.len());
        let result = {
            let mut seqs = Vec::with_capacity(running.len());
            for (i, r) in running.iter_mut().enumerate() {
                let tokens: &[u32] = match &r.next {
                    Some(t) => std::slice::from_ref(t),
                    None if budget > 0 => {
                        let end = (r.prefilled + budget).min(r.job.prompt.len());
                        budget -= end - r.prefilled;
                        &r.job.prompt[r.prefilled..end]
                    }
                    None => continue,
                };
                fed.push((i, tokens.len()));
                seqs.push(Seq {
                    state: &mut r.state,
                    tokens,
                    all_logits: false,
                });
            }
            model.forward_batch(&mut seqs)
        };
        sh.steps.fetch_add(1, Ordering::Relaxed);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Inputs are validated before queueing, so this is a bug; fail these requests
                // rather than the server.
                for r in running.drain(..) {
                    sh.kv_tokens.fetch_sub(r.state.pos, Ordering::Relaxed);
                    let _ = r.send(Event::Failed(e.to_string()));
                }
                continue;
            }
        };
        sh.kv_tokens
            .fetch_add(fed.iter().map(|f| f.1).sum(), Ordering::Relaxed);

        // Sample for every sequence that got logits for its last token.
        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        for (&(i, n), logits) in fed.iter().zip(&logits) {
            let r = &mut running[i];
            if r.next.is_none() {
                r.prefilled += n;
                sh.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                if r.prefilled < r.job.prompt.len() {
                    continue;
                }
            }
            let before = r.dec.tokens.len();
            let step = r.dec.step(logits, tok, r.state.pos, ctx);
            sh.tokens_generated
                .fetch_add((r.dec.tokens.len() - before) as u64, Ordering::Relaxed);
            let (piece, next) = match step {
                Ok(s) => s,
                Err(e) => {
                    let _ = r.send(Event::Failed(e.to_string()));
                    done.push((i, FinishReason::Stop));
                    continue;
                }
            };
            if r.first_token.is_none() {
                r.first_token = Some(r.job.enqueued.elapsed());
            }
            if !piece.is_empty() && !r.send(Event::Text(piece)) {
                sh.cancelled.fetch_add(1, Ordering::Relaxed);
                done.push((i, FinishReason::Stop));
                continue;
            }
            match next {
                Next::Token(t) => r.next = Some(t),
                Next::Done(stop) => {
                    let rest = r.dec.finish(&stop);
                    if !rest.is_empty() {
                        r.send(Event::Text(rest));
                    }
                    let reason = match stop {
                        StopReason::Eos | StopReason::StopString(_) | StopReason::Cancelled => {
                            FinishReason::Stop
                        }
                        StopReason::Length | StopReason::ContextFull => FinishReason::Length,
                    };
                    done.push((i, reason));
                }
            }
        }
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (i, reason) in done {
            let r = running.swap_remove(i);
            r.finish(reason, sh);
        }
        sh.active.store(running.len(), Ordering::SeqCst);
    }
}
