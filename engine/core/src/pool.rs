//! A persistent worker pool with low per-call overhead: a 2B model runs ~210 matrix products
//! per token, far too many to spawn threads for each.
//!
//! `run(n_tasks, f)` calls `f(i)` once for every task index, on the calling thread and the
//! workers, which take indices from a shared counter. Workers spin briefly between jobs (the
//! gap between two products of one forward pass is microseconds), then park. One pool exists
//! per thread count ([`get`]); a pool runs one job at a time.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n_tasks: usize,
    next: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    fn run_tasks(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n_tasks {
                return;
            }
            (self.f)(i);
        }
    }
}

struct Shared {
    /// How long an idle worker spins before yielding (zero when the pool has more threads
    /// than the machine has cores: a spinning worker would take the core another needs).
    spin_time: Duration,
    generation: AtomicUsize,
    job: AtomicPtr<()>,
    pending: AtomicUsize,
    shutdown: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<(Thread, Option<JoinHandle<()>>)>,
    busy: Mutex<()>,
}

/// Waiting: spin this many times, then yield this many times (so an oversubscribed machine
/// runs the thread being waited for), then park.
const SPINS: u32 = 256;
const YIELDS: u32 = 64;
/// A worker between jobs spins this long (at least SPINS times) before it yields and parks: waking a parked thread
/// costs ~50 us on these VMs (`cargo bench --bench kernels -- pool_dispatch`: 0.4 us back to
/// back, 58 us after a 200 us pause, with 2 threads), and the gaps between the products of one
/// decode step (norms, RoPE, attention) are tens to hundreds of microseconds.
const SPIN_TIME: Duration = Duration::from_millis(1);

impl Pool {
    /// A pool in which `threads` threads (the caller plus `threads - 1` workers) share jobs.
    pub fn new(threads: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Arc::new(Shared {
            spin_time: if threads <= cores {
                SPIN_TIME
            } else {
                Duration::ZERO
            },
            generation: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = shared.clone();
                let h = thread::Builder::new()
                    .name(format!("bitnet-worker-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a worker thread");
                (h.thread().clone(), Some(h))
            })
            .collect();
        Pool {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i < n_tasks`, spread over the pool's threads; returns when all
    /// calls have finished. A panic in any call is re-raised here.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let job = Job {
            f,
            n_tasks,
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        // A job started from inside a task runs inline: the pool's threads are busy with the
        // outer job (and the result is the same either way).
        if self.workers.is_empty() || n_tasks <= 1 || IN_JOB.with(|f| f.get()) {
            job.run_tasks();
            return;
        }
        let _inside = InJob::enter();
        let _one_job_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.shared;
        s.job
            .store(&job as *const Job as *mut (), Ordering::Release);
        s.pending.store(self.workers.len(), Ordering::Release);
        s.generation.fetch_add(1, Ordering::AcqRel);
        for (t, _) in &self.workers {
            t.unpark();
        }
        let caller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run_tasks()));
        // The job lives on this stack frame: wait until no worker can still touch it.
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        if let Err(p) = caller {
            std::panic::resume_unwind(p);
        }
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a worker thread panicked while running a job");
        }
    }
}

thread_local! {
    static IN_JOB: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as running tasks of a job, for as long as it lives.
struct InJob;
impl InJob {
    fn enter() -> Self {
        IN_JOB.with(|f| f.set(true));
        InJob
    }
}
impl Drop for InJob {
    fn drop(&mut self) {
        IN_JOB.with(|f| f.set(false));
    }
}

fn worker(s: &Shared) {
    IN_JOB.with(|f| f.set(true));
    let mut seen = 0usize;
    loop {
        let idle = std::time::Instant::now();
        let (mut spinning, mut spins, mut yields) = (true, 0u32, 0u32);
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if spinning {
                // The clock is read every 64 spins.
                spins = spins.wrapping_add(1);
                if spins >= SPINS && spins % 64 == 0 && idle.elapsed() >= s.spin_time {
                    spinning = false;
                }
                std::hint::spin_loop();
            } else if yields < YIELDS {
                yields += 1;
                thread::yield_now();
            } else {
                // Woken by unpark when work arrives; the timeout only bounds a missed wake-up.
                thread::park_timeout(Duration::from_millis(10));
            }
        }
        // SAFETY: `run` published a live Job before bumping the generation and keeps it alive
        // until `pending` drops to zero, which happens only after this use.
        let job = unsafe { &*(s.job.load(Ordering::Acquire) as *const Job) };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run_tasks())).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for (t, h) in &mut self.workers {
            t.unpark();
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
    }
}

/// Most threads a pool will have: more than the cores only adds contention, and results do
/// not depend on the count. Computed once: `available_parallelism` reads cgroup files on every
/// call, and [`get`] runs for every matrix product.
pub fn max_threads() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()) * 2)
}

/// The shared pool for `threads` threads (clamped to [`max_threads`]; created on first use,
/// kept for the process).
pub fn get(threads: usize) -> Arc<Pool> {
    static POOLS: OnceLock<Mutex<Vec<Arc<Pool>>>> = OnceLock::new();
    let threads = threads.clamp(1, max_threads());
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.iter().find(|p| p.threads() == threads) {
        return p.clone();
    }
    let p = Arc::new(Pool::new(threads));
    pools.push(p.clone());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for n in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "threads {threads}, n {n}"
                );
            }
        }
    }

    #[test]
    fn a_job_started_inside_a_task_runs_inline() {
        let pool = Pool::new(2);
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_panicking_task_is_reported_not_hung() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("task 5");
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let count = AtomicUsize::new(0);
        pool.run(10, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }
}

/// An output buffer shared by the tasks of one [`Pool::run`], each of which writes its own
/// disjoint elements.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: users write disjoint elements from each task, and the pointee outlives the run.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `i` elements on (called as a method, so a closure captures the whole
    /// `SendPtr`, which is `Sync`, not its raw field).
    pub fn offset(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
