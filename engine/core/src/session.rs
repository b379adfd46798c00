//! Running a model. A [`Session`] holds everything execution needs besides the weights: the
//! thread count, the instruction set the products use, the forward pass's buffers (kept, so a
//! decode step allocates nothing) and the kernel counters a receipt lists. The [`Model`] it
//! runs is only read, so any number of sessions can share one model (one per thread; a
//! session itself is used through `&mut`, nothing in it is locked).
//!
//! The forward pass ([`Session::forward_batch`]) is one layer loop in the manner of llama2.c's
//! `run.c`; the parallelism lives in the products ([`Weight::matmul_group`]) and in
//! [`attention::rows`].
//!
//! ```no_run
//! use bitnet::model::Model;
//! use bitnet::session::Session;
//!
//! let model = Model::load("model.gguf")?;
//! let mut session = Session::new(&model).with_threads(2);
//! let mut state = model.new_state();
//! let logits = session.forward(&mut state, &[1, 15043], false)?;
//! assert_eq!(logits.len(), model.config.vocab_size);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::attention;
use crate::model::{add_into, rmsnorm_rows, rope_neox, Model, ModelError, State};
use crate::quant::matmul::{Input, InputBuffers, Isa, KernelStats, Weight};

/// Runs a [`Model`]: threads, instruction set, buffers, kernel counters.
pub struct Session<'m> {
    model: &'m Model,
    threads: usize,
    isa: Isa,
    stats: KernelStats,
    work: Workspace,
}

/// One sequence's share of a [`Session::forward_batch`] step: its state, the tokens to append,
/// and whether the logits of all of them are wanted or only the last one's.
pub struct Seq<'a> {
    pub state: &'a mut State,
    pub tokens: &'a [u32],
    pub all_logits: bool,
}

/// Every buffer of a forward pass, kept so that a decode step allocates nothing once they have
/// grown to size (a prompt spread over threads still gives each task its own scores).
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att_out: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
    scores: Vec<f32>,
    rows: Vec<(usize, usize)>,
    wanted: Vec<usize>,
    input: InputBuffers,
}

/// `v` as `n` zeros, reusing its allocation.
fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

impl<'m> Session<'m> {
    /// A session with the default thread count (`BITNET_THREADS`, else every core) and the
    /// best instruction set this CPU has.
    pub fn new(model: &'m Model) -> Self {
        Session {
            model,
            threads: crate::env::get().threads,
            isa: Isa::detect(),
            stats: KernelStats::default(),
            work: Workspace::default(),
        }
    }

    /// Computes with `n` threads (at least one). Results do not depend on it.
    pub fn with_threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Runs the products with the kernels of `isa` at most (each format falls back to the
    /// widest it has below it). Results do not depend on it: every kernel gives its scalar
    /// reference's bits.
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa.min(Isa::detect());
        self
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }
    pub fn threads(&self) -> usize {
        self.threads
    }
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// What the products have run so far (kernel ids, calls, elements, time).
    pub fn stats(&self) -> &KernelStats {
        &self.stats
    }

    /// Evaluates `tokens` at positions `state.pos ..`, appends them to the KV cache and returns
    /// the logits of every position (`tokens.len() * vocab`) or only the last (`vocab`).
    pub fn forward(
        &mut self,
        state: &mut State,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::new();
        self.forward_into(state, tokens, all_logits, &mut out)?;
        Ok(out)
    }

    /// [`Session::forward`] into `out` (cleared first): with a state that has
    /// [`State::reserve`]d its positions, a decode step allocates nothing.
    pub fn forward_into(
        &mut self,
        state: &mut State,
        tokens: &[u32],
        all_logits: bool,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        out.clear();
        let mut seqs = [Seq {
            state,
            tokens,
            all_logits,
        }];
        self.forward_each(&mut seqs, &mut |_, logits| out.extend_from_slice(logits))
    }

    /// The forward pass. Evaluates several sequences in one pass: their tokens are stacked
    /// into one activation matrix, so every weight matrix is read once per step for all of
    /// them (continuous batching shares decode steps this way; a prompt is the one-sequence
    /// case). Attention reads each sequence's own KV cache. Each row is computed exactly as
    /// it would be alone, so results do not depend on what else is in the batch.
    ///
    /// Returns, per sequence, the logits of every one of its tokens or of its last one
    /// (nothing for a sequence with no tokens). Nothing is evaluated if any sequence is
    /// invalid.
    pub fn forward_batch(&mut self, seqs: &mut [Seq<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = vec![Vec::new(); seqs.len()];
        self.forward_each(seqs, &mut |i, logits| out[i].extend_from_slice(logits))?;
        Ok(out)
    }

    /// The forward pass itself: hands each wanted logits row to `emit(sequence, row)`, in order.
    fn forward_each(
        &mut self,
        seqs: &mut [Seq<'_>],
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        let (m, c) = (self.model, &self.model.config);
        check(m, seqs)?;
        let (th, isa, st) = (self.threads, self.isa, &self.stats);
        let Workspace {
            x,
            h,
            q,
            k,
            v,
            att_out,
            o,
            gate,
            up,
            logits,
            scores,
            rows,
            wanted,
            input: buffers,
        } = &mut self.work;
        // Row r of every activation matrix is token `rows[r].1` of sequence `rows[r].0`.
        rows.clear();
        for (i, s) in seqs.iter().enumerate() {
            rows.extend((0..s.tokens.len()).map(|t| (i, t)));
        }
        let rows = &rows[..];
        let n = rows.len();
        if n == 0 {
            return Ok(());
        }
        prepare(seqs, scores);
        let (dim, ff, q_dim, kv_dim) = (c.dim, c.hidden_dim, c.q_dim(), c.kv_dim());

        // Residual stream, one row per token.
        let x = zeroed(x, n * dim);
        for (r, &(i, t)) in rows.iter().enumerate() {
            let tok = seqs[i].tokens[t] as usize;
            m.token_embd
                .dequantize_row(tok, &mut x[r * dim..(r + 1) * dim]);
        }
        let h = zeroed(h, n * dim);
        let q = zeroed(q, n * q_dim);
        let k = zeroed(k, n * kv_dim);
        let v = zeroed(v, n * kv_dim);
        let att_out = zeroed(att_out, n * q_dim);
        let o = zeroed(o, n * dim);
        let gate = zeroed(gate, n * ff);
        let up = zeroed(up, n * ff);
        // Products that share an input quantize it once, into the kept buffers.
        let mut products = |x: &[f32], outs: &mut [(&Weight, &mut [f32])]| {
            let input = Input::reusing(x, n, std::mem::take(buffers));
            Weight::matmul_group(isa, &input, outs, th, st);
            *buffers = input.into_buffers();
        };

        for (l, w) in m.layers.iter().enumerate() {
            // Attention block.
            rmsnorm_rows(h, x, &w.attn_norm, c.norm_eps);
            products(
                h,
                &mut [(&w.wq, &mut *q), (&w.wk, &mut *k), (&w.wv, &mut *v)],
            );
            rope_and_cache(m, seqs, rows, l, q, k, v);
            attention::rows(n, q_dim, th, att_out, scores, |r, scores, out| {
                let (i, t) = rows[r];
                let state = &*seqs[i].state;
                let q = &q[r * q_dim..(r + 1) * q_dim];
                state.attention(l, state.pos + t, q, out, scores)
            });
            let sub = &mut *q; // reuse: normalised attention output
            rmsnorm_rows(sub, att_out, &w.attn_sub_norm, c.norm_eps);
            products(sub, &mut [(&w.wo, &mut *o)]);
            add_into(x, o);

            // Feed-forward block.
            rmsnorm_rows(h, x, &w.ffn_norm, c.norm_eps);
            products(h, &mut [(&w.w_gate, &mut *gate), (&w.w_up, &mut *up)]);
            for (g, u) in gate.iter_mut().zip(up.iter()) {
                *g = c.activation.apply(*g) * u;
            }
            rmsnorm_rows(up, gate, &w.ffn_sub_norm, c.norm_eps);
            products(up, &mut [(&w.w_down, &mut *o)]);
            add_into(x, o);
        }

        // Output: only the rows whose logits are wanted, in one product.
        wanted.clear();
        wanted.extend((0..n).filter(|&r| {
            let (i, t) = rows[r];
            seqs[i].all_logits || t + 1 == seqs[i].tokens.len()
        }));
        let wanted_n = wanted.len();
        for (j, &r) in wanted.iter().enumerate() {
            rmsnorm_rows(
                &mut h[j * dim..(j + 1) * dim],
                &x[r * dim..(r + 1) * dim],
                &m.output_norm,
                c.norm_eps,
            );
        }
        let vocab = c.vocab_size;
        let logits = zeroed(logits, wanted_n * vocab);
        let input = Input::reusing(&h[..wanted_n * dim], wanted_n, std::mem::take(buffers));
        m.output.matmul_input(isa, &input, logits, th, st);
        *buffers = input.into_buffers();
        for (j, &r) in wanted.iter().enumerate() {
            emit(rows[r].0, &logits[j * vocab..(j + 1) * vocab]);
        }
        for s in seqs.iter_mut() {
            s.state.pos += s.tokens.len();
        }
        Ok(())
    }
}

/// Every sequence fits its context and names tokens of the vocabulary.
fn check(m: &Model, seqs: &[Seq<'_>]) -> Result<(), ModelError> {
    let c = &m.config;
    for s in seqs {
        let n = s.tokens.len();
        if s.state.pos + n > c.context_length {
            return Err(ModelError::ContextFull {
                pos: s.state.pos,
                n,
                ctx: c.context_length,
            });
        }
        if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: c.vocab_size,
            });
        }
    }
    Ok(())
}

/// Room for the step: attention scores for as many positions as any sequence has reserved
/// (or uses), and every sequence's RoPE table up to its last new position.
fn prepare(seqs: &mut [Seq<'_>], scores: &mut Vec<f32>) {
    let positions = seqs
        .iter()
        .map(|s| s.state.reserved.max(s.state.pos + s.tokens.len()))
        .max()
        .unwrap_or(0);
    scores.reserve(positions.saturating_sub(scores.len()));
    for s in seqs.iter_mut() {
        let end = s.state.pos + s.tokens.len();
        if end > 0 {
            s.state.rope.ensure(end - 1);
        }
    }
}

/// RoPE on every row's query and key heads at the row's position, then its key and value
/// appended to its sequence's cache for layer `l`.
fn rope_and_cache(
    m: &Model,
    seqs: &mut [Seq<'_>],
    rows: &[(usize, usize)],
    l: usize,
    q: &mut [f32],
    k: &mut [f32],
    v: &[f32],
) {
    let c = &m.config;
    let (q_dim, kv_dim, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
    for (r, &(i, t)) in rows.iter().enumerate() {
        let state = &mut *seqs[i].state;
        let pos = state.pos + t;
        for head in q[r * q_dim..(r + 1) * q_dim].chunks_exact_mut(hd) {
            rope_neox(head, pos, c.rope_dim, &state.rope);
        }
        for head in k[r * kv_dim..(r + 1) * kv_dim].chunks_exact_mut(hd) {
            rope_neox(head, pos, c.rope_dim, &state.rope);
        }
        state
            .kv_row(l, pos, true)
            .copy_from_slice(&k[r * kv_dim..(r + 1) * kv_dim]);
        state
            .kv_row(l, pos, false)
            .copy_from_slice(&v[r * kv_dim..(r + 1) * kv_dim]);
    }
}
