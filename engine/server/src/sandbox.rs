//! Chat templates rendered in a child process: what a model file's template can cost is
//! bounded by the operating system, not only by minijinja's own limits.
//!
//! minijinja's fuel stops loops and its caps stop one huge repetition, but a template can
//! still double a string with `~` in a few dozen instructions (memory), or store a namespace
//! in itself and print it (a stack overflow, which no thread survives). So the server renders
//! in worker processes (`bitnet __render-worker`, [`worker_main`]) with an address-space limit
//! ([`MEMORY_LIMIT`]); a worker that passes its deadline is killed, and one that dies is
//! replaced at the next render. The answer is the same as an in-process
//! [`ChatTemplate::render`] for every template that stays within bounds.
//!
//! Protocol: one JSON line per request on the worker's stdin ([`Job`]), one JSON line per
//! answer on its stdout ([`Reply`]). A worker keeps the last template it compiled.

use crate::chat::{ChatTemplate, Failure, Message, RenderLimits, TemplateError};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The hidden subcommand of the `bitnet` binary that runs [`worker_main`].
pub const WORKER_ARG: &str = "__render-worker";

/// Address space a render worker may use (its own code and heap included).
pub const MEMORY_LIMIT: u64 = 1 << 30;

#[derive(Serialize, Deserialize)]
struct Job {
    name: String,
    source: String,
    bos: String,
    eos: String,
    fuel: u64,
    max_output: usize,
    messages: Vec<Message>,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Ok(String),
    Err { failure: Failure, message: String },
}

/// Runs a render worker on stdin/stdout until stdin closes; the process's exit code.
pub fn worker_main() -> i32 {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut cached: Option<((String, String, String), ChatTemplate)> = None;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return 0 };
        let job: Job = match serde_json::from_str(&line) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("render worker: bad job: {e}");
                return 2;
            }
        };
        let key = (job.source.clone(), job.bos.clone(), job.eos.clone());
        let reply = match &cached {
            Some((k, _)) if *k == key => Ok(()),
            _ => ChatTemplate::new(&job.name, &job.source, &job.bos, &job.eos).map(|t| {
                cached = Some((key, t));
            }),
        }
        .and_then(|()| {
            let (_, t) = cached.as_mut().expect("compiled above");
            let limits = RenderLimits {
                fuel: job.fuel,
                max_output: job.max_output,
            };
            t.set_limits(limits);
            t.render(&job.messages)
        });
        let reply = match reply {
            Ok(text) => Reply::Ok(text),
            Err(e) => Reply::Err {
                failure: e.failure,
                message: e.message,
            },
        };
        let mut text = serde_json::to_string(&reply).expect("a reply serializes");
        text.push('\n');
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return 0;
        }
    }
    0
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    renders: usize,
}

/// Renders a worker does before it is replaced: a template that stores a namespace in itself
/// leaks that memory (a reference cycle) on every render; a fresh process gives it back.
pub const RENDERS_PER_WORKER: usize = 1000;

/// One worker slot. `ticket` names the render running in it (0: none); whoever clears it
/// first decides that render's end: the render itself when its answer arrives, or
/// [`Sandbox::kill`] at its deadline (which then kills `pid`).
struct Slot {
    worker: Mutex<Option<Worker>>,
    pid: AtomicU32,
    ticket: AtomicU64,
}

/// Which render to end: given to [`Sandbox::render`]'s `on_start`, taken by [`Sandbox::kill`].
#[derive(Clone, Copy, Debug)]
pub struct Running {
    slot: usize,
    ticket: u64,
}

/// A pool of render workers, one per render that may run at once.
pub struct Sandbox {
    exe: PathBuf,
    slots: Vec<Slot>,
    tickets: AtomicU64,
}

impl Sandbox {
    /// Workers are `exe __render-worker`, started at first use.
    pub fn new(exe: PathBuf, workers: usize) -> Self {
        Sandbox {
            exe,
            slots: (0..workers.max(1))
                .map(|_| Slot {
                    worker: Mutex::new(None),
                    pid: AtomicU32::new(0),
                    ticket: AtomicU64::new(0),
                })
                .collect(),
            tickets: AtomicU64::new(1),
        }
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg(WORKER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Read only once it has died: its last words say why (a worker that lives writes
            // nothing there).
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit {
                        rlim_cur: MEMORY_LIMIT,
                        rlim_max: MEMORY_LIMIT,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Worker {
            child,
            stdin,
            stdout,
            renders: 0,
        })
    }

    /// Renders `messages` with `template` in a free worker (blocking: call it off the async
    /// runtime). `on_start` gets the render's [`Running`]: pass it to [`Sandbox::kill`] from
    /// elsewhere to end a render that outlives its deadline (this call then returns a
    /// [`Failure::Crashed`]).
    pub fn render(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        on_start: impl FnOnce(Running),
    ) -> Result<String, TemplateError> {
        let fail = |failure: Failure, message: String| TemplateError {
            name: template.name.clone(),
            message,
            failure,
        };
        // A free slot (callers are limited to as many renders at once as there are slots).
        let (index, mut guard) = loop {
            if let Some(found) = self
                .slots
                .iter()
                .enumerate()
                .find_map(|(i, s)| s.worker.try_lock().ok().map(|g| (i, g)))
            {
                break found;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let slot = &self.slots[index];
        if guard.is_none() {
            let w = self.spawn().map_err(|e| {
                fail(
                    Failure::Crashed,
                    format!(
                        "could not start a render worker ({}): {e}",
                        self.exe.display()
                    ),
                )
            })?;
            slot.pid.store(w.child.id(), Ordering::SeqCst);
            *guard = Some(w);
        }
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst);
        slot.ticket.store(ticket, Ordering::SeqCst);
        on_start(Running {
            slot: index,
            ticket,
        });
        let job = Job {
            name: template.name.clone(),
            source: template.source().to_string(),
            bos: template.bos().to_string(),
            eos: template.eos().to_string(),
            fuel: template.limits().fuel,
            max_output: template.limits().max_output,
            messages: messages.to_vec(),
        };
        let mut line = serde_json::to_string(&job).expect("a job serializes");
        line.push('\n');
        let w = guard.as_mut().expect("spawned above");
        let mut answer = String::new();
        let sent = w
            .stdin
            .write_all(line.as_bytes())
            .and_then(|()| w.stdin.flush());
        let read = sent.and_then(|()| w.stdout.read_line(&mut answer));
        // Ours to finish, unless a kill took the ticket first (then the worker is going).
        let killed = slot
            .ticket
            .compare_exchange(ticket, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err();
        let read = if killed { Ok(0) } else { read };
        w.renders += 1;
        if w.renders >= RENDERS_PER_WORKER {
            if let Some(mut old) = guard.take() {
                slot.pid.store(0, Ordering::SeqCst);
                drop(old.stdin);
                let _ = old.child.kill();
                let _ = old.child.wait();
            }
            return match read {
                Ok(n) if n > 0 => self.reply(template, &answer),
                _ => Err(fail(Failure::Crashed, "the render worker ended".into())),
            };
        }
        match read {
            Ok(n) if n > 0 => match serde_json::from_str::<Reply>(&answer) {
                Ok(Reply::Ok(text)) => Ok(text),
                Ok(Reply::Err { failure, message }) => Err(fail(failure, message)),
                Err(e) => Err(fail(
                    Failure::Crashed,
                    format!("unreadable worker answer: {e}"),
                )),
            },
            _ => {
                // The worker died (memory limit, stack overflow) or was killed at the deadline.
                let mut w = guard.take().expect("spawned above");
                slot.pid.store(0, Ordering::SeqCst);
                let _ = w.child.kill();
                let status = w.child.wait().ok();
                let mut last_words = String::new();
                if let Some(mut e) = w.child.stderr.take() {
                    use std::io::Read;
                    let _ = (&mut e).take(4096).read_to_string(&mut last_words);
                }
                let why = last_words
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map_or(String::new(), |l| format!(": {l}"));
                Err(fail(
                    Failure::Crashed,
                    format!(
                        "the template ended its sandboxed renderer ({}{why}); renders are limited to {} MiB of memory and {} s",
                        status.map_or("no status".into(), |s| s.to_string()),
                        MEMORY_LIMIT >> 20,
                        crate::RENDER_DEADLINE.as_secs()
                    ),
                ))
            }
        }
    }

    fn reply(&self, template: &ChatTemplate, answer: &str) -> Result<String, TemplateError> {
        let fail = |failure: Failure, message: String| TemplateError {
            name: template.name.clone(),
            message,
            failure,
        };
        match serde_json::from_str::<Reply>(answer) {
            Ok(Reply::Ok(text)) => Ok(text),
            Ok(Reply::Err { failure, message }) => Err(fail(failure, message)),
            Err(e) => Err(fail(
                Failure::Crashed,
                format!("unreadable worker answer: {e}"),
            )),
        }
    }

    /// Kills the worker of a render that outlived its deadline, if it is still running; its
    /// caller gets an error and the next render starts a new worker.
    pub fn kill(&self, r: Running) {
        let slot = &self.slots[r.slot];
        if slot
            .ticket
            .compare_exchange(r.ticket, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let pid = slot.pid.load(Ordering::SeqCst);
        #[cfg(unix)]
        if pid != 0 {
            // SAFETY: kill(2) of our own child, which is still unreaped (its slot holds it).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for s in &self.slots {
            if let Ok(mut g) = s.worker.lock() {
                if let Some(mut w) = g.take() {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                }
            }
        }
    }
}
