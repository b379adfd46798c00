//! The engine against the reference (BitNet.cpp's llama.cpp fork, built by this crate).
//!
//! - End to end on the real trained model (bitllama2c-3m converted to an I2_S GGUF by the
//!   engine): the reference's greedy text, and teacher-forced logits of reference vs engine.
//! - Kernel: the engine's I2_S matmul against the reference's ggml mul_mat, bit for bit.
//!
//! Missing shared data is a failure, never a skip.
//!
//! Length: a long test file on purpose: every comparison with BitNet.cpp 0.0.5 in one place.

use bitnet::quant::matmul::{KernelStats, Weight};
use bitnet::quant::TensorType;
use bitnet_crossval::{i2s_matmul, RefModel};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

const PROMPT: &str = "Once upon a time";
const N_GEN: usize = 96;
/// SOURCE.md: greedy output, prompt "Once upon a time", BOS, 96 tokens, F32 embedding.
const EXPECTED: &str = "Once upon a time, there was a little girl named Lily. She loved to play \
outside and explore the world around her. One day, she saw a big, red ball. She was so happy and \
wanted to play with it.\nBut then, she saw a big ball. She was scared and didn't know what to do";
/// A TinyStories-style text that the model did not generate itself.
const STORY: &str = "Tom and his dog Max went to the park on a sunny day. Max ran after a red \
ball and Tom laughed. Then a little bird sat on the bench next to them. \"Hello, bird!\" said \
Tom. The bird sang a happy song. Max barked and the bird flew up into the tall tree. Tom \
waved goodbye and they walked home for lunch. Mom made soup and bread, and Tom told her all \
about the bird.";

fn shared(rel: &str) -> PathBuf {
    bitnet::env::shared_path(rel).unwrap_or_else(|e| panic!("missing shared test data: {e}"))
}

/// bitllama2c-3m converted by the engine to a `bitnet` GGUF (I2_S weights, F32 embedding).
fn model_path() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crossval-bitllama2c-3m-i2s.gguf");
        bitnet::convert::llama2c::convert(
            &shared("models/bitllama2c-3m/model.bin"),
            &shared("models/bitllama2c-3m/tokenizer.model"),
            &out,
            bitnet::convert::WeightFormat::I2S,
            bitnet::convert::FloatFormat::F32,
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("converting bitllama2c-3m: {e}"));
        out
    })
}

fn engine_tokenizer() -> bitnet::tokenizer::Tokenizer {
    let g = bitnet::gguf::Gguf::open(model_path()).expect("open converted GGUF");
    bitnet::tokenizer::Tokenizer::from_gguf(&g).expect("engine tokenizer")
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Prompt (with BOS) followed by the reference's 96 greedy tokens, fed one token at a time.
fn reference_greedy() -> &'static (Vec<u32>, usize) {
    static G: OnceLock<(Vec<u32>, usize)> = OnceLock::new();
    G.get_or_init(|| {
        let mut r = RefModel::load(model_path(), 512, 2).expect("reference loads the model");
        let prompt = r
            .tokenize(PROMPT, true, false)
            .expect("reference tokenizer");
        let n_vocab = r.n_vocab();
        let mut ids = prompt.clone();
        let mut last = Vec::new();
        for &t in &prompt {
            last = r.append(&[t], false).expect("reference decode");
        }
        for i in 0..N_GEN {
            let next = argmax(&last[..n_vocab]) as u32;
            ids.push(next);
            if i + 1 < N_GEN {
                last = r.append(&[next], false).expect("reference decode");
            }
        }
        (ids, prompt.len())
    })
}

#[test]
fn reference_greedy_text_matches_source_md() {
    let (ids, n_prompt) = reference_greedy();
    let tok = engine_tokenizer();
    let r = RefModel::load(model_path(), 512, 1).expect("reference loads the model");
    let engine_prompt = tok.encode(PROMPT, true, false);
    assert_eq!(
        ids[..*n_prompt],
        engine_prompt[..],
        "reference and engine tokenize the prompt differently"
    );
    assert_eq!(ids[0], 1, "prompt must start with BOS");
    let text = tok.decode(&ids[1..]).expect("engine decode");
    let ref_text = r
        .detokenize(&ids[1..], true, false)
        .expect("ref detokenize");
    println!(
        "reference greedy ({} tokens): {text:?}",
        ids.len() - n_prompt
    );
    println!("reference detokenizer:        {ref_text:?}");
    assert_eq!(
        text, EXPECTED,
        "reference greedy text differs from SOURCE.md"
    );
    assert_eq!(
        ref_text.trim_start(),
        EXPECTED,
        "reference detokenizer disagrees"
    );
}

/// Two sets of logits compared position by position (`bitnet::eval::metrics`, the
/// implementation the crossval gates use).
#[derive(Debug, Default)]
struct Diff {
    positions: usize,
    max_abs: f32,
    cosine_min: f64,
    top1_agree: usize,
    /// Largest top-1/top-2 margin of the first logits among positions where top-1 differs.
    disagree_margin: Option<f32>,
}

/// `prefill_timed` (the benchmark's prompt processing: one batch, only the last logits) leaves
/// the same KV cache and last-token logits as a batch that asks for every position's logits.
#[test]
fn prefill_with_last_logits_only_matches_a_full_batch() {
    let mut r = RefModel::load(model_path(), 128, 1).expect("reference loads the model");
    let n_vocab = r.n_vocab();
    let tokens = r.tokenize(STORY, true, false).expect("reference tokenizer");
    let (prompt, next) = (&tokens[..40], tokens[40]);
    let full = r.logits(prompt, true).expect("full batch");
    let after_full = r.append(&[next], false).expect("one more token");
    r.reset();
    let (last, _) = r.prefill_timed(prompt).expect("prefill, last logits only");
    assert_eq!(r.n_past(), prompt.len());
    assert_eq!(last.len(), n_vocab);
    let after_last = r.append(&[next], false).expect("one more token");
    let max_d = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let full_last = &full[(prompt.len() - 1) * n_vocab..];
    assert_eq!(argmax(&last), argmax(full_last));
    assert!(
        max_d(&last, full_last) < 1e-3,
        "{}",
        max_d(&last, full_last)
    );
    assert!(max_d(&after_last, &after_full) < 1e-3);
}

fn compare(a: &[f32], b: &[f32], n_vocab: usize) -> Diff {
    assert_eq!(a.len(), b.len(), "logit counts differ");
    assert_eq!(a.len() % n_vocab, 0);
    assert!(
        a.iter().chain(b).all(|x| x.is_finite()),
        "non-finite logits"
    );
    let per = bitnet::eval::metrics::compare_all(a, b, n_vocab);
    let mut d = Diff {
        positions: per.len(),
        cosine_min: 1.0,
        ..Diff::default()
    };
    for m in &per {
        d.max_abs = d.max_abs.max(m.max_abs_diff as f32);
        d.cosine_min = d.cosine_min.min(m.cosine);
        if m.top1_match {
            d.top1_agree += 1;
        } else {
            let margin = m.ref_margin as f32;
            d.disagree_margin = Some(d.disagree_margin.map_or(margin, |x| x.max(margin)));
        }
    }
    d
}

fn report(label: &str, d: &Diff) {
    println!(
        "{label}: {} positions, max |dlogit| {:.4}, cosine min {:.6}, top-1 {}/{}{}",
        d.positions,
        d.max_abs,
        d.cosine_min,
        d.top1_agree,
        d.positions,
        d.disagree_margin
            .map(|m| format!(" (largest first-side top-1 margin at a disagreement {m:.4})"))
            .unwrap_or_default()
    );
}

#[test]
fn teacher_forced_logits_agree_with_engine() {
    let (greedy, n_prompt) = reference_greedy();
    let model = bitnet::model::Model::load(model_path()).expect("engine loads the model");
    let tok = engine_tokenizer();
    // One thread: ggml's spinning barrier makes 2-thread timings erratic on a busy 2-core
    // machine; the logits do not depend on it (checked below).
    let mut r = RefModel::load(model_path(), 512, 1).expect("reference loads the model");
    let n_vocab = r.n_vocab();
    assert_eq!(n_vocab, model.config.vocab_size);

    let story = r.tokenize(STORY, true, false).expect("reference tokenizer");
    assert_eq!(
        story,
        tok.encode(STORY, true, false),
        "reference and engine tokenize the story differently"
    );
    assert!(greedy.len() >= 100 && story.len() >= 100);

    use bitnet::eval::{teacher_forced_logits, Mode};
    use bitnet::session::Session;
    let mut worst = 0f32;
    for (name, tokens) in [("greedy", greedy), ("story", &story)] {
        let (ref_seq, t_ref_seq) = r.logits_timed(tokens, false).expect("reference seq");
        let (ref_batch, t_ref_batch) = r.logits_timed(tokens, true).expect("reference batch");
        r.set_threads(2);
        let ref_seq2 = r.logits(tokens, false).expect("reference seq, 2 threads");
        let ref_batch2 = r.logits(tokens, true).expect("reference batch, 2 threads");
        r.set_threads(1);
        let same_bits =
            |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same_bits(&ref_seq, &ref_seq2),
            "{name}: reference seq logits depend on threads"
        );
        assert!(
            same_bits(&ref_batch, &ref_batch2),
            "{name}: reference batch logits depend on threads"
        );

        let t0 = std::time::Instant::now();
        let eng_seq = teacher_forced_logits(&mut Session::new(&model), tokens, Mode::Seq)
            .expect("engine seq");
        let t_eng_seq = t0.elapsed();
        let t0 = std::time::Instant::now();
        let eng_batch = teacher_forced_logits(&mut Session::new(&model), tokens, Mode::Batch)
            .expect("engine batch");
        let t_eng_batch = t0.elapsed();

        let seq = compare(&ref_seq, &eng_seq, n_vocab);
        let batch = compare(&ref_batch, &eng_batch, n_vocab);
        report(
            &format!("{name} seq   (ref one-at-a-time vs engine seq)"),
            &seq,
        );
        report(
            &format!("{name} batch (ref batch vs engine batch)      "),
            &batch,
        );
        report(
            &format!("{name} ref seq vs ref batch                   "),
            &compare(&ref_seq, &ref_batch, n_vocab),
        );
        report(
            &format!("{name} engine seq vs engine batch             "),
            &compare(&eng_seq, &eng_batch, n_vocab),
        );
        println!(
            "{name}: {} tokens, 1 thread; reference seq {:.1} ms, batch {:.1} ms; engine seq {:.1} ms, batch {:.1} ms",
            tokens.len(),
            t_ref_seq.as_secs_f64() * 1e3,
            t_ref_batch.as_secs_f64() * 1e3,
            t_eng_seq.as_secs_f64() * 1e3,
            t_eng_batch.as_secs_f64() * 1e3
        );
        if name == "greedy" {
            // The engine's own greedy choices are the reference's.
            for p in n_prompt - 1..tokens.len() - 1 {
                let e = argmax(&eng_seq[p * n_vocab..(p + 1) * n_vocab]) as u32;
                assert_eq!(e, tokens[p + 1], "engine greedy differs at position {p}");
            }
        }
        for (mode, d) in [("seq", &seq), ("batch", &batch)] {
            assert!(
                d.max_abs < 0.5,
                "{name} {mode}: max |dlogit| {} >= 0.5",
                d.max_abs
            );
            if name == "greedy" {
                // The model's own continuation: no near-ties, so every position must agree.
                assert_eq!(
                    d.top1_agree, d.positions,
                    "{name} {mode}: top-1 agreement {}/{}",
                    d.top1_agree, d.positions
                );
            } else {
                // Text the model did not write: top-1 may differ only where the reference's own
                // top-1/top-2 margin is below the measured noise (max |dlogit|). The reference's
                // one-at-a-time and batch paths disagree with each other the same way.
                assert!(
                    d.disagree_margin.unwrap_or(0.0) < d.max_abs,
                    "{name} {mode}: top-1 differs where the reference's margin is {:?} (noise {})",
                    d.disagree_margin,
                    d.max_abs
                );
                assert!(
                    d.top1_agree * 100 >= d.positions * 95,
                    "{name} {mode}: top-1 agreement {}/{}",
                    d.top1_agree,
                    d.positions
                );
            }
            worst = worst.max(d.max_abs);
        }
    }
    println!("worst max |dlogit| over all comparisons: {worst:.4}");
}

// ---------------------------------------------------------------------------------------------
// Kernel level: I2_S matmul, bit for bit.

/// splitmix64: a deterministic generator for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let u1 = (self.unit() as f64).max(1e-12);
        let u2 = self.unit() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

fn engine_i2s_matmul(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    threads: usize,
) -> Vec<f32> {
    let mut w = bitnet::gguf::GgufWriter::new();
    w.tensor("w", &[cols as u64, rows as u64], TensorType::I2S);
    let file = w.to_bytes(|_, out| out.write_all(bytes)).unwrap();
    let g = Arc::new(bitnet::gguf::Gguf::from_bytes(file).unwrap());
    let t = g.tensor("w").unwrap().clone();
    let weight = Weight::new(&g, &t).unwrap();
    let mut out = vec![0f32; rows * n];
    weight.matmul(x, n, &mut out, threads, &KernelStats::default());
    out
}

/// The reference AVX2 kernel accumulates, per 16-bit lane, the products code*q of two
/// neighbouring bytes for 4 sub-blocks over up to 32 blocks of 128 (one `accu32` register) in
/// int16 with wrap-around, then widens. This returns (the reference's D, whether any lane's
/// partial sum left the int16 range); without wrap-around D equals the exact sum.
fn emulate_reference_dot(codes: &[u8], q: &[i8]) -> (i32, bool) {
    let nb = codes.len() / 128;
    let mut d = 0i32;
    let mut wrapped = false;
    let mut g = 0;
    while g < nb {
        let end = (g + 32).min(nb);
        for lane in 0..16 {
            let mut s = 0i32;
            for blk in g..end {
                for sub in 0..4 {
                    for b in [2 * lane, 2 * lane + 1] {
                        let j = blk * 128 + sub * 32 + b;
                        s += codes[j] as i32 * q[j] as i32;
                    }
                }
            }
            if s != s as i16 as i32 {
                wrapped = true;
            }
            d += s as i16 as i32;
        }
        g = end;
    }
    (d, wrapped)
}

/// The reference's activation quantization (also what the engine claims to do).
fn quantize(x: &[f32]) -> (Vec<i8>, f32, i32) {
    let m = x.iter().fold(1e-5f64, |m, &v| m.max((v as f64).abs()));
    let s = (127.0 / m) as f32;
    let q: Vec<i8> = x
        .iter()
        .map(|&v| (v * s).round_ties_even().clamp(-128.0, 127.0) as i8)
        .collect();
    let sum = q.iter().map(|&v| v as i32).sum();
    (q, s, sum)
}

#[derive(Clone, Copy, Debug)]
enum Dist {
    Uniform,
    Normal,
    Outliers,
    Positive,
    Tiny,
    Zeros,
}

fn activations(rng: &mut Rng, n: usize, cols: usize, dist: Dist) -> Vec<f32> {
    (0..n * cols)
        .map(|_| match dist {
            Dist::Uniform => rng.unit() * 2.0 - 1.0,
            Dist::Normal => rng.normal() * 3.0,
            Dist::Outliers => {
                let v = rng.normal() * 0.1;
                if rng.below(97) == 0 {
                    v * 300.0
                } else {
                    v
                }
            }
            Dist::Positive => rng.unit() * 0.7,
            Dist::Tiny => (rng.unit() - 0.5) * 3e-6,
            Dist::Zeros => 0.0,
        })
        .collect()
}

struct Case {
    rows: usize,
    cols: usize,
    n: usize,
    dist: Dist,
    bias: u64,
}

fn kernel_cases() -> Vec<Case> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    // cols in blocks of 128: 1..4 blocks, around the reference's 32-block int16 group, and
    // real model widths (256, 768, 1536, 2560, 6912 = 54 blocks).
    let blocks = [
        1, 2, 3, 5, 8, 20, 31, 32, 33, 40, 54, 63, 64, 65, 2, 12, 6, 24,
    ];
    let dists = [
        Dist::Uniform,
        Dist::Normal,
        Dist::Outliers,
        Dist::Positive,
        Dist::Uniform,
        Dist::Normal,
        Dist::Tiny,
        Dist::Zeros,
    ];
    let mut cases = Vec::new();
    for i in 0..64 {
        let cols = 128 * blocks[i % blocks.len()];
        let rows = match i % 5 {
            0 => 1 + rng.below(7) as usize,
            1 => 16 * (1 + rng.below(20) as usize),
            2 => 1 + rng.below(300) as usize,
            3 => 256,
            _ => 33 + rng.below(64) as usize,
        };
        let n = if i % 2 == 0 {
            1
        } else {
            2 + rng.below(15) as usize
        };
        cases.push(Case {
            rows,
            cols,
            n,
            dist: dists[i % dists.len()],
            bias: rng.below(3),
        });
    }
    cases
}

#[test]
fn i2s_matmul_is_bit_exact() {
    let mut rng = Rng(0xc0ff_ee00_1234_5678);
    let cases = kernel_cases();
    let (mut gemv, mut gemm, mut compared, mut total_cases) = (0, 0, 0usize, 0);
    for (ci, c) in cases.iter().enumerate() {
        // Ternary weights; `bias` skews the mix (uniform, mostly zero, mostly +1).
        let values: Vec<i8> = (0..c.rows * c.cols)
            .map(|_| match c.bias {
                0 => rng.below(3) as i8 - 1,
                1 => [0, 0, 0, 1, -1][rng.below(5) as usize],
                _ => [1, 1, 0, -1][rng.below(4) as usize],
            })
            .collect();
        let scale = 0.01 + rng.unit() * 2.0;
        let bytes = bitnet::quant::i2s::pack(&values, c.rows, c.cols, scale).unwrap();
        let x = activations(&mut rng, c.n, c.cols, c.dist);

        // Stay inside the domain where the reference kernel computes the exact integer dot
        // product (see reference_i2s_int16_wraparound); random data never gets near the edge.
        let codes: Vec<u8> = values.iter().map(|&v| (v + 1) as u8).collect();
        for t in 0..c.n {
            let (q, _, _) = quantize(&x[t * c.cols..(t + 1) * c.cols]);
            for r in 0..c.rows {
                let (_, wrapped) = emulate_reference_dot(&codes[r * c.cols..(r + 1) * c.cols], &q);
                assert!(!wrapped, "case {ci}: random data hit the int16 wrap-around");
            }
        }

        for threads in [1, 2] {
            let reference = i2s_matmul(&bytes, c.rows, c.cols, &x, c.n, threads).unwrap();
            let engine = engine_i2s_matmul(&bytes, c.rows, c.cols, &x, c.n, threads);
            for (i, (a, b)) in reference.iter().zip(&engine).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "case {ci} ({}x{} n={} {:?} bias {} threads {threads}): out[{}][{}] reference {a:e} ({:#010x}) engine {b:e} ({:#010x})",
                    c.rows,
                    c.cols,
                    c.n,
                    c.dist,
                    c.bias,
                    i / c.rows,
                    i % c.rows,
                    a.to_bits(),
                    b.to_bits()
                );
            }
            compared += reference.len();
            total_cases += 1;
        }
        if c.n == 1 {
            gemv += 1;
        } else {
            gemm += 1;
        }
    }
    let shapes: Vec<String> = cases
        .iter()
        .map(|c| format!("{}x{}/n{}", c.rows, c.cols, c.n))
        .collect();
    println!(
        "I2_S kernel: {} shapes ({gemv} GEMV n=1, {gemm} GEMM n=2..16) x threads 1,2 = {total_cases} products, {compared} outputs, all bit-exact",
        cases.len()
    );
    println!("shapes (rows x cols / n): {}", shapes.join(" "));
    assert!(cases.len() >= 50);
}

/// Documents a reference bug rather than a requirement on the engine: the AVX2 I2_S kernel
/// (ggml_vec_dot_i2_i8_s) sums 16-bit lanes over up to 32 blocks of 128 before widening, so a
/// lane whose partial sum of code*q leaves [-32768, 32767] wraps around. Codes are 0..2 (not
/// -1..1), so strongly correlated weights and activations reach it: all +1 weights with
/// all-equal positive activations do from 17 blocks (2176 columns) on.
#[test]
fn reference_i2s_int16_wraparound() {
    let (rows, cols, n) = (3, 4096, 1);
    let values = vec![1i8; rows * cols];
    let bytes = bitnet::quant::i2s::pack(&values, rows, cols, 1.0).unwrap();
    let x = vec![0.5f32; cols];
    let (q, s, sum) = quantize(&x);
    let codes = vec![2u8; cols];
    let (emulated, wrapped) = emulate_reference_dot(&codes, &q);
    let exact: i32 = q.iter().map(|&v| 2 * v as i32).sum();
    assert!(wrapped);
    let reference = i2s_matmul(&bytes, rows, cols, &x, n, 1).unwrap();
    let engine = engine_i2s_matmul(&bytes, rows, cols, &x, n, 1);
    let expect_ref = (emulated as f32 - sum as f32) / s;
    let expect_exact = (exact as f32 - sum as f32) / s;
    println!(
        "int16 wrap-around: exact W.x = {}, reference gives {} (emulated {expect_ref}), engine gives {}",
        expect_exact, reference[0], engine[0]
    );
    assert_eq!(expect_exact, 2048.0);
    assert!(
        reference
            .iter()
            .all(|&v| v.to_bits() == expect_ref.to_bits()),
        "the reference no longer wraps as emulated: {reference:?}"
    );
    assert!(
        engine.iter().all(|&v| v == expect_exact),
        "engine: {engine:?}"
    );
}
