//! The scheduler's running sequences: a [`Batch`] of [`Slot`]s, each in an explicit
//! [`Stage`] (reading its prompt, generating, or finished this step), and the steps the
//! scheduler applies to them: admit, drop the cancelled, expire, one forward step, remove
//! the finished. The KV positions in use are computed from the slots ([`Batch::kv_tokens`]),
//! never kept as a separately adjusted counter, and published with the number of running
//! sequences for `/health` and `/metrics` ([`Batch::publish`]) by every step that changes
//! the slots, before any client hears of the change: a client that has its answer sees
//! its sequence gone from the metrics.
//!
//! Order is part of the behaviour: slots keep admission order except that a finished slot
//! is replaced by the last one (`swap_remove`, highest index first), and the prompt budget
//! of a step goes to prefilling slots in slot order.

use super::scheduler::{Event, Finish, FinishReason, Job, Shared, SlotView};
use bitnet::generate::{Decoder, Next, StopReason};
use bitnet::model::{Model, ModelError, State};
use bitnet::session::{Seq, Session};
use bitnet::tokenizer::Tokenizer;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Most prompt tokens prefilled in one step, so running sequences keep getting tokens while a
/// long prompt is read.
pub const PREFILL_CHUNK: usize = 256;

/// Where a running sequence is.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// Reading the prompt: its first `prefilled` tokens are in the KV cache.
    Prefill { prefilled: usize },
    /// Generating: `next` (sampled, not yet in the KV cache) is fed at the next step; the
    /// first token was sampled `first_token` after the request was accepted.
    Decode { next: u32, first_token: Duration },
    /// Ended during this step; removed, and its client told, at the step's end.
    Finished {
        reason: FinishReason,
        first_token: Option<Duration>,
    },
}

/// One running sequence: the request, its KV cache and sampler, and its stage.
pub struct Slot {
    job: Job,
    state: State,
    dec: Decoder,
    stage: Stage,
}

impl Slot {
    fn send(&self, e: Event) -> bool {
        self.job.events.send(e).is_ok()
    }

    fn first_token(&self) -> Option<Duration> {
        match self.stage {
            Stage::Prefill { .. } => None,
            Stage::Decode { first_token, .. } => Some(first_token),
            Stage::Finished { first_token, .. } => first_token,
        }
    }

    /// Tells the client how the request ended (its receiver may be gone; then no one hears).
    fn finish(self, reason: FinishReason) {
        let _ = self.job.events.send(Event::Done(Finish {
            reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.dec.tokens.len(),
            time_to_first_token: self.first_token(),
        }));
    }

    /// Takes the logits of the `fed` tokens this step gave the slot: prefill progress, and
    /// once the whole prompt is in, a sampled token (its text goes to the client).
    fn advance(&mut self, fed: usize, logits: &[f32], tok: &Tokenizer, ctx: usize, sh: &Shared) {
        let first_token = match &mut self.stage {
            Stage::Prefill { prefilled } => {
                *prefilled += fed;
                sh.prompt_tokens.fetch_add(fed as u64, Ordering::Relaxed);
                if *prefilled < self.job.prompt.len() {
                    return;
                }
                None
            }
            Stage::Decode { first_token, .. } => Some(*first_token),
            // Finished slots are not fed (Batch::forward skips them).
            Stage::Finished { .. } => return,
        };
        let before = self.dec.tokens.len();
        let step = self.dec.step(logits, tok, self.state.pos, ctx);
        sh.tokens_generated
            .fetch_add((self.dec.tokens.len() - before) as u64, Ordering::Relaxed);
        let (piece, next) = match step {
            Ok(s) => s,
            Err(e) => {
                let _ = self.send(Event::Failed(e.to_string()));
                self.stage = Stage::Finished {
                    reason: FinishReason::Stop,
                    first_token,
                };
                return;
            }
        };
        let first_token = first_token.unwrap_or_else(|| self.job.enqueued.elapsed());
        if let Some(lp) = self.dec.last_logprob.take() {
            let _ = self.send(Event::Logprob(lp));
        }
        if !piece.is_empty() && !self.send(Event::Text(piece)) {
            sh.cancelled.fetch_add(1, Ordering::Relaxed);
            self.stage = Stage::Finished {
                reason: FinishReason::Stop,
                first_token: Some(first_token),
            };
            return;
        }
        self.stage = match next {
            Next::Token(next) => Stage::Decode { next, first_token },
            Next::Done(stop) => {
                let rest = self.dec.finish(&stop);
                if !rest.is_empty() {
                    let _ = self.send(Event::Text(rest));
                }
                let reason = match stop {
                    StopReason::Eos | StopReason::StopString(_) | StopReason::Cancelled => {
                        FinishReason::Stop
                    }
                    StopReason::Length | StopReason::ContextFull => FinishReason::Length,
                };
                Stage::Finished {
                    reason,
                    first_token: Some(first_token),
                }
            }
        };
    }
}

/// The running sequences, at most `--parallel` of them.
pub struct Batch {
    slots: Vec<Slot>,
    /// The model's context length.
    ctx: usize,
}

impl Batch {
    pub fn new(ctx: usize) -> Self {
        Batch {
            slots: Vec::new(),
            ctx,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Positions held in the KV caches of the running sequences.
    pub fn kv_tokens(&self) -> usize {
        self.slots.iter().map(|s| s.state.pos).sum()
    }

    /// Makes the running sequences and their KV use visible to `/health` and `/metrics`.
    pub fn publish(&self, sh: &Shared) {
        sh.active.store(self.len(), Ordering::SeqCst);
        sh.kv_tokens.store(self.kv_tokens(), Ordering::Relaxed);
        // Rewritten in place: a step allocates nothing here once the vector has grown.
        let mut views = sh.slots.lock().unwrap_or_else(|e| e.into_inner());
        views.clear();
        views.extend(self.slots.iter().filter_map(|s| {
            let (state, prefilled) = match s.stage {
                Stage::Prefill { prefilled } => ("prefill", prefilled),
                Stage::Decode { .. } => ("decode", s.job.prompt.len()),
                Stage::Finished { .. } => return None,
            };
            Some(SlotView {
                state,
                prompt_tokens: s.job.prompt.len(),
                prefilled,
                generated_tokens: s.dec.tokens.len(),
                max_tokens: s.job.opts.max_tokens,
                kv_positions: s.state.pos,
                age_ms: s.job.enqueued.elapsed().as_millis() as u64,
            })
        }));
    }

    /// Starts `job` in a new slot, at the start of its prompt.
    pub fn admit(&mut self, job: Job, model: &Model) {
        self.slots.push(Slot {
            state: model.new_state(),
            dec: match job.logprobs {
                Some(top) => Decoder::new(&job.prompt, &job.opts).with_logprobs(top),
                None => Decoder::new(&job.prompt, &job.opts),
            },
            stage: Stage::Prefill { prefilled: 0 },
            job,
        });
    }

    /// Drops the sequences whose client went away (no one is left to tell).
    pub fn drop_cancelled(&mut self, sh: &Shared) {
        self.slots.retain(|s| {
            let gone = s.job.events.is_closed();
            if gone {
                sh.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        self.publish(sh);
    }

    /// Ends the sequences whose deadline is at or before `now` with a timeout.
    pub fn expire(&mut self, now: Instant, sh: &Shared) {
        let (expired, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.slots)
            .into_iter()
            .partition(|s| now >= s.job.deadline);
        self.slots = live;
        sh.timed_out
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        self.publish(sh);
        for s in expired {
            s.finish(FinishReason::Timeout);
        }
    }

    /// Ends every sequence with [`FinishReason::Shutdown`].
    pub fn abort(&mut self, sh: &Shared) {
        let ended = std::mem::take(&mut self.slots);
        self.publish(sh);
        for s in ended {
            s.finish(FinishReason::Shutdown);
        }
    }

    /// One forward step for the whole batch, then sampling, then the finished slots leave.
    pub fn step(&mut self, session: &mut Session, tok: &Tokenizer, sh: &Shared) {
        let (fed, result) = self.forward(session);
        sh.steps.fetch_add(1, Ordering::Relaxed);
        let logits = match result {
            Ok(l) => l,
            Err(e) => return self.fail_all(&e, sh),
        };
        for (&(i, n), logits) in fed.iter().zip(&logits) {
            self.slots[i].advance(n, logits, tok, self.ctx, sh);
        }
        self.remove_finished(sh);
    }

    /// Feeds every generating slot its next token and the prefilling ones slices of their
    /// prompts, up to [`PREFILL_CHUNK`] prompt tokens in all, in one [`Session::forward_batch`].
    /// Returns (slot index, tokens fed) per sequence in the step, and the logits of each one's
    /// last token.
    #[allow(clippy::type_complexity)]
    fn forward(
        &mut self,
        session: &mut Session,
    ) -> (Vec<(usize, usize)>, Result<Vec<Vec<f32>>, ModelError>) {
        let mut budget = PREFILL_CHUNK;
        let mut fed = Vec::with_capacity(self.slots.len());
        let mut seqs = Vec::with_capacity(self.slots.len());
        for (i, s) in self.slots.iter_mut().enumerate() {
            let tokens: &[u32] = match &s.stage {
                Stage::Decode { next, .. } => std::slice::from_ref(next),
                Stage::Prefill { prefilled } if budget > 0 => {
                    let end = (prefilled + budget).min(s.job.prompt.len());
                    budget -= end - prefilled;
                    &s.job.prompt[*prefilled..end]
                }
                Stage::Prefill { .. } | Stage::Finished { .. } => continue,
            };
            fed.push((i, tokens.len()));
            seqs.push(Seq {
                state: &mut s.state,
                tokens,
                all_logits: false,
            });
        }
        let result = session.forward_batch(&mut seqs);
        (fed, result)
    }

    /// The step failed: inputs are validated before queueing, so this is an engine bug; fail
    /// these requests rather than the server.
    fn fail_all(&mut self, e: &ModelError, sh: &Shared) {
        let failed = std::mem::take(&mut self.slots);
        self.publish(sh);
        for s in failed {
            let _ = s.send(Event::Failed(e.to_string()));
        }
    }

    /// Removes the slots that finished this step (highest index first, each replaced by the
    /// last slot), publishes, and tells their clients.
    fn remove_finished(&mut self, sh: &Shared) {
        let mut ended = Vec::new();
        for i in (0..self.slots.len()).rev() {
            if let Stage::Finished { reason, .. } = &self.slots[i].stage {
                let reason = reason.clone();
                ended.push((self.slots.swap_remove(i), reason));
            }
        }
        self.publish(sh);
        for (s, reason) in ended {
            s.finish(reason);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;
    use bitnet::generate::GenerateOptions;
    use bitnet::sample::{Rng, SamplerParams};
    use std::sync::{Arc, OnceLock};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// The shared bitllama2c-3m model (a real trained model, context 512, vocabulary 512),
    /// converted once per test process.
    pub(crate) fn model() -> &'static (Arc<Model>, Arc<Tokenizer>) {
        static M: OnceLock<(Arc<Model>, Arc<Tokenizer>)> = OnceLock::new();
        M.get_or_init(|| {
            let shared = |f: &str| {
                bitnet::env::shared_path(&format!("models/bitllama2c-3m/{f}"))
                    .unwrap_or_else(|e| panic!("{e}"))
            };
            let out = std::env::temp_dir().join(format!(
                "bitnet-server-test-{}-{:?}.gguf",
                std::process::id(),
                std::thread::current().id()
            ));
            bitnet::convert::llama2c::convert(
                &shared("model.bin"),
                &shared("tokenizer.model"),
                &out,
                bitnet::convert::WeightFormat::parse("i2_s").unwrap(),
                bitnet::convert::FloatFormat::parse("f32").unwrap(),
                &mut |_, _| {},
            )
            .unwrap();
            let file = Arc::new(bitnet::gguf::Gguf::open(&out).unwrap());
            let _ = std::fs::remove_file(&out);
            let tok = Tokenizer::from_gguf_with(&file, None).unwrap();
            let model = Model::from_gguf(file).unwrap();
            (Arc::new(model), Arc::new(tok))
        })
    }

    /// A greedy job that ignores EOS, so its length is exactly `max_tokens` (or the context).
    pub(crate) fn job(
        prompt: Vec<u32>,
        max_tokens: usize,
        deadline: Instant,
    ) -> (Job, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        let opts = GenerateOptions {
            max_tokens,
            sampler: SamplerParams {
                temperature: 0.0,
                ..SamplerParams::default()
            },
            stop: Vec::new(),
            ignore_eos: true,
        };
        let job = Job {
            prompt,
            opts,
            deadline,
            events: tx,
            enqueued: Instant::now(),
            logprobs: None,
        };
        (job, rx)
    }

    /// A prompt of `n` tokens: BOS, then ordinary tokens.
    fn prompt(n: usize) -> Vec<u32> {
        (0..n as u32)
            .map(|i| if i == 0 { 1 } else { 100 + i % 300 })
            .collect()
    }

    fn shared() -> Arc<Shared> {
        Shared::new(4, 16, Arc::new(Lifecycle::default()))
    }

    /// The KV positions each slot must hold, from its stage and its tokens alone: the
    /// prompt tokens prefilled, or the prompt and every sampled token but the one not yet
    /// fed. Between steps no slot is finished.
    fn expected_kv(b: &Batch) -> usize {
        b.slots
            .iter()
            .map(|s| match &s.stage {
                Stage::Prefill { prefilled } => *prefilled,
                Stage::Decode { .. } => s.job.prompt.len() + s.dec.tokens.len() - 1,
                Stage::Finished { .. } => panic!("a finished slot outlived its step"),
            })
            .sum()
    }

    /// KV use is the sum over the slots, and what `/metrics` sees: every operation that
    /// changes the slots has published (admission is published by the scheduler's refill).
    fn check(b: &Batch, sh: &Shared) -> usize {
        let kv = b.kv_tokens();
        assert_eq!(kv, expected_kv(b));
        assert_eq!(sh.kv_tokens.load(Ordering::Relaxed), kv);
        assert_eq!(sh.active.load(Ordering::SeqCst), b.len());
        kv
    }

    /// Every event so far: text pieces, and the end if it came.
    fn drain(rx: &mut UnboundedReceiver<Event>) -> (String, Option<Event>) {
        let mut text = String::new();
        while let Ok(e) = rx.try_recv() {
            match e {
                Event::Text(t) => text.push_str(&t),
                end => {
                    assert!(rx.try_recv().is_err(), "an event after the end");
                    return (text, Some(end));
                }
            }
        }
        (text, None)
    }

    #[test]
    fn prefill_budget_decode_cancel_expire_finish() {
        let (model, tok) = model();
        let mut session = Session::new(model).with_threads(1);
        let sh = shared();
        let t0 = Instant::now();
        let hour = t0 + Duration::from_secs(3600);
        let mut b = Batch::new(model.config.context_length);
        let (a, mut rx_a) = job(prompt(300), 4, hour);
        let (bj, rx_b) = job(prompt(5), 50, hour);
        let (c, mut rx_c) = job(prompt(5), 50, t0 + Duration::from_secs(10));
        for j in [a, bj, c] {
            b.admit(j, model);
        }
        b.publish(&sh);
        assert_eq!(check(&b, &sh), 0);

        // The 256-token budget goes to the first slot; the others wait.
        b.step(&mut session, tok, &sh);
        assert_eq!(check(&b, &sh), 256);
        assert_eq!(b.slots[0].stage, Stage::Prefill { prefilled: 256 });
        assert_eq!(b.slots[1].stage, Stage::Prefill { prefilled: 0 });
        // The rest of A (44) and both short prompts fit one step; all three sample a token.
        b.step(&mut session, tok, &sh);
        assert_eq!(check(&b, &sh), 310);
        assert!(b
            .slots
            .iter()
            .all(|s| matches!(s.stage, Stage::Decode { .. })));
        assert_eq!(sh.prompt_tokens.load(Ordering::Relaxed), 310);
        assert_eq!(sh.tokens_generated.load(Ordering::Relaxed), 3);
        b.step(&mut session, tok, &sh);
        assert_eq!(check(&b, &sh), 313);

        // B's client leaves: its 6 positions go with it, and no one is told.
        drop(rx_b);
        b.drop_cancelled(&sh);
        assert_eq!((check(&b, &sh), b.len()), (307, 2));
        assert_eq!(sh.cancelled.load(Ordering::Relaxed), 1);

        // C's deadline passes (A's does not).
        b.expire(t0 + Duration::from_secs(10), &sh);
        assert_eq!((check(&b, &sh), b.len()), (301, 1));
        assert_eq!(sh.timed_out.load(Ordering::Relaxed), 1);
        match drain(&mut rx_c) {
            (_, Some(Event::Done(f))) => {
                assert_eq!(f.reason, FinishReason::Timeout);
                assert_eq!((f.prompt_tokens, f.completion_tokens), (5, 2));
                assert!(f.time_to_first_token.is_some());
            }
            other => panic!("C: {other:?}"),
        }

        // A ends at max_tokens = 4: two more steps, then nothing is held.
        b.step(&mut session, tok, &sh);
        assert_eq!(check(&b, &sh), 302);
        b.step(&mut session, tok, &sh);
        assert_eq!((check(&b, &sh), b.len()), (0, 0));
        match drain(&mut rx_a) {
            (text, Some(Event::Done(f))) => {
                assert_eq!(f.reason, FinishReason::Length);
                assert_eq!((f.prompt_tokens, f.completion_tokens), (300, 4));
                assert!(!text.is_empty());
            }
            other => panic!("A: {other:?}"),
        }
        assert_eq!(sh.steps.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn kv_use_is_the_sum_over_slots_after_any_sequence_of_operations() {
        let (model, tok) = model();
        let mut session = Session::new(model).with_threads(1);
        let sh = shared();
        let ctx = model.config.context_length;
        let mut rng = Rng::new(2024);
        let t0 = Instant::now();
        let mut b = Batch::new(ctx);
        // Receivers by job; None once the client has gone.
        let mut clients: Vec<Option<UnboundedReceiver<Event>>> = Vec::new();
        let mut ended = vec![];
        for _ in 0..400 {
            match rng.below(10) {
                0..=1 if b.len() < 4 => {
                    let n = 1 + rng.below(400) as usize;
                    let max = 1 + rng.below(24) as usize;
                    let deadline = t0 + Duration::from_millis(rng.below(100_000));
                    let (j, rx) = job(prompt(n), max, deadline);
                    b.admit(j, model);
                    b.publish(&sh);
                    clients.push(Some(rx));
                }
                2 => {
                    // A random client leaves (whether or not its request still runs).
                    if !clients.is_empty() {
                        let i = rng.below(clients.len() as u64) as usize;
                        clients[i] = None;
                    }
                    b.drop_cancelled(&sh);
                }
                3 => b.expire(t0 + Duration::from_millis(rng.below(100_000)), &sh),
                _ => b.step(&mut session, tok, &sh),
            }
            check(&b, &sh);
            assert!(b.kv_tokens() <= b.len() * ctx);
            for rx in clients.iter_mut().flatten() {
                if let (_, Some(end)) = drain(rx) {
                    ended.push(end);
                }
            }
        }
        assert!(
            ended.len() > 10,
            "the run ended few requests: {}",
            ended.len()
        );
        assert!(
            ended.iter().all(|e| matches!(e, Event::Done(_))),
            "{ended:?}"
        );
        b.abort(&sh);
        assert_eq!(check(&b, &sh), 0);
    }
}
