//! Continuous batching: one thread owns the model and runs forward steps; every step stacks
//! the next token of every running sequence (and a slice of any prompt being prefilled) into
//! one [`Model::forward_batch`] call, so concurrent requests share each weight read.
//!
//! Requests wait in a bounded queue; up to `parallel` sequences run at once. A sequence ends
//! at its stop condition, at its deadline, or as soon as its client goes away (the receiver
//! of its event channel is dropped). Results do not depend on what else is in the batch.
//!
//! This module holds what the HTTP side sees (jobs, events, the queue and counters in
//! [`Shared`]) and the thread's loop; the running sequences and the steps applied to them
//! are in [`crate::batch`]. The thread's exit moves the server's
//! [`Phase`](crate::lifecycle::Phase): to `Stopped` after a drain, to `Failed` otherwise.

use super::batch::Batch;
use super::lifecycle::{Lifecycle, Transition};
use bitnet::generate::GenerateOptions;
use bitnet::model::Model;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// One accepted request.
pub struct Job {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
    pub enqueued: Instant,
    /// Report each generated token's log-probability with this many alternatives.
    pub logprobs: Option<usize>,
}

/// What a request hears back, in order: text pieces (each generated token's log-probability
/// before the text it completes, when asked for), then exactly one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Logprob(bitnet::generate::TokenLogprob),
    Done(Finish),
    Failed(String),
}

#[derive(Clone, Debug, Default)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub time_to_first_token: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum FinishReason {
    /// EOS or a stop string.
    #[default]
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
    /// The scheduler thread has ended: nothing would ever run the job.
    SchedulerGone,
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
    /// Running sequences and the KV positions they hold, as last published by the thread
    /// ([`Batch::publish`], computed from its slots).
    pub active: AtomicUsize,
    pub kv_tokens: AtomicUsize,
    pub steps: AtomicU64,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicU64,
    pub timed_out: AtomicU64,
    /// What each running sequence is doing, as last published ([`Batch::publish`]).
    pub slots: Mutex<Vec<SlotView>>,
}

/// One running sequence, as `/slots` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlotView {
    /// `prefill` (reading its prompt) or `decode` (generating).
    pub state: &'static str,
    pub prompt_tokens: usize,
    /// Prompt tokens in the KV cache so far.
    pub prefilled: usize,
    pub generated_tokens: usize,
    pub max_tokens: usize,
    /// KV cache positions held.
    pub kv_positions: usize,
    /// Milliseconds since the request was accepted.
    pub age_ms: u64,
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
            slots: Mutex::new(Vec::new()),
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
        if !self.alive.load(Ordering::SeqCst) {
            return Err(Rejected::SchedulerGone);
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

/// Records the thread's end, however it ends (a panic included): not alive, nothing
/// running, and [`Transition::SchedulerExited`] for the phase.
struct AliveGuard(Arc<Shared>);
impl Drop for AliveGuard {
    fn drop(&mut self) {
        // Under the queue lock: no job is queued after this, and the queued ones are dropped
        // (their answers end with `scheduler_lost`) instead of waiting for a thread that is
        // gone, a panic included.
        let orphans: Vec<Job> = {
            let mut q = self.0.lock();
            self.0.alive.store(false, Ordering::SeqCst);
            q.drain(..).collect()
        };
        drop(orphans);
        self.0.active.store(0, Ordering::SeqCst);
        self.0.lifecycle.apply(Transition::SchedulerExited);
    }
}

/// Starts the scheduler thread. Its compute (and the worker pool it creates) runs at a lower
/// CPU priority than the HTTP threads, so health probes answer even when every core is busy.
pub fn spawn(
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    threads: usize,
    sh: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    sh.alive.store(true, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("bitnet-scheduler".into())
        .spawn(move || {
            lower_priority();
            let guard = AliveGuard(sh.clone());
            let mut session = Session::new(&model).with_threads(threads);
            run(&mut session, &tok, &guard.0);
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

/// The scheduler thread: take work, drop what no one waits for, step; until told to stop.
/// (Each of these publishes what it changed; see [`Batch::publish`].)
fn run(session: &mut Session, tok: &Tokenizer, sh: &Shared) {
    let model = session.model();
    let mut batch = Batch::new(model.config.context_length);
    while refill(&mut batch, model, sh) {
        batch.drop_cancelled(sh);
        batch.expire(Instant::now(), sh);
        if !batch.is_empty() {
            batch.step(session, tok, sh);
        }
    }
}

/// Moves queued jobs into free slots, waiting while there is nothing to run. False when the
/// thread should exit: stopped with nothing left to run, or aborted (every queued and
/// running request is then told [`FinishReason::Shutdown`]).
fn refill(batch: &mut Batch, model: &Model, sh: &Shared) -> bool {
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
            batch.abort(sh);
            return false;
        }
        while batch.len() < sh.parallel {
            let Some(job) = q.pop_front() else { break };
            if job.events.is_closed() {
                sh.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            batch.admit(job, model);
        }
        batch.publish(sh);
        if !batch.is_empty() {
            return true;
        }
        if sh.stop.load(Ordering::SeqCst) {
            return false;
        }
        q = sh.wake.wait(q).unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::{job, model};
    use crate::lifecycle::{Failure, Phase};

    fn started(parallel: usize) -> (Arc<Shared>, Arc<Lifecycle>, std::thread::JoinHandle<()>) {
        let (model, tok) = model();
        let lifecycle = Arc::new(Lifecycle::default());
        let sh = Shared::new(parallel, 4, lifecycle.clone());
        let h = spawn(model.clone(), tok.clone(), 1, sh.clone()).unwrap();
        lifecycle.apply(Transition::Loaded);
        (sh, lifecycle, h)
    }

    fn end(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Event {
        loop {
            match rx.blocking_recv() {
                Some(Event::Text(_)) => {}
                Some(e) => return e,
                None => panic!("the channel closed without an end"),
            }
        }
    }

    #[test]
    fn drain_then_abort_tells_every_request_and_stops_the_phase() {
        let (sh, lifecycle, h) = started(1);
        let later = Instant::now() + Duration::from_secs(600);
        // The whole context: far longer than the few steps below take.
        let (running, mut rx1) = job(vec![1, 100, 200], 509, later);
        let (queued, mut rx2) = job(vec![1, 100], 400, later);
        sh.submit(running).unwrap();
        sh.submit(queued).unwrap();
        // The first job runs (its first text arrives); the second waits for the one slot.
        assert!(matches!(rx1.blocking_recv(), Some(Event::Text(_))));
        assert_eq!(sh.queue_depth(), 1);

        sh.start_draining();
        assert_eq!(lifecycle.phase(), Phase::Draining);
        let (late, _rx3) = job(vec![1], 1, later);
        assert_eq!(sh.submit(late).err(), Some(Rejected::Draining));
        assert!(!sh.idle());

        sh.shut_down(true);
        for (rx, prompt) in [(&mut rx1, 3), (&mut rx2, 2)] {
            match end(rx) {
                Event::Done(f) => {
                    assert_eq!(f.reason, FinishReason::Shutdown);
                    assert_eq!(f.prompt_tokens, prompt);
                }
                e => panic!("{e:?}"),
            }
        }
        h.join().unwrap();
        assert_eq!(lifecycle.phase(), Phase::Stopped);
        assert!(!sh.alive.load(Ordering::SeqCst));
        assert!(sh.idle());
        assert_eq!(sh.kv_tokens.load(Ordering::Relaxed), 0);
    }

    /// However the scheduler thread ends (a panic included), what was queued is answered,
    /// not left waiting, and nothing more is queued.
    #[test]
    fn queued_jobs_are_not_left_waiting_when_the_scheduler_is_gone() {
        let lifecycle = Arc::new(Lifecycle::default());
        let sh = Shared::new(1, 4, lifecycle.clone());
        lifecycle.apply(Transition::Loaded);
        sh.alive.store(true, Ordering::SeqCst);
        let later = Instant::now() + Duration::from_secs(600);
        let (queued, mut rx) = job(vec![1, 100], 3, later);
        sh.submit(queued).unwrap();
        drop(AliveGuard(sh.clone()));
        assert_eq!(sh.queue_depth(), 0);
        assert!(
            rx.blocking_recv().is_none(),
            "the queued job's channel closes (its answer: scheduler_lost)"
        );
        let (late, _rx) = job(vec![1, 100], 3, later);
        assert_eq!(sh.submit(late).err(), Some(Rejected::SchedulerGone));
    }

    #[test]
    fn a_scheduler_that_ends_outside_a_drain_fails_the_phase() {
        let (sh, lifecycle, h) = started(2);
        let (j, mut rx) = job(vec![1, 100], 3, Instant::now() + Duration::from_secs(600));
        sh.submit(j).unwrap();
        match end(&mut rx) {
            Event::Done(f) => {
                assert_eq!((f.reason, f.completion_tokens), (FinishReason::Length, 3))
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(lifecycle.phase(), Phase::Ready);
        sh.shut_down(false);
        h.join().unwrap();
        assert_eq!(lifecycle.phase(), Phase::Failed(Failure::SchedulerDied));
        assert!(!lifecycle.phase().is_live());
    }
}
