//! The engine against the ground truth: the real trained bitllama2c-3m model.
//!
//! - `bitnet run` prints exactly the expected greedy text of SOURCE.md.
//! - A float64 re-implementation of the original checkpoint's math, written here from
//!   SOURCE.md and sharing no code with the engine, agrees with the engine teacher-forced.
//! - Perplexity on TinyStories-style text is where a trained model should be.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use bitnet::eval::{teacher_forced_logits, Mode};
use bitnet::model::Model;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use common::*;

#[test]
fn run_prints_the_expected_greedy_text() {
    let model = converted("i2_s", "f32");
    let out = bitnet()
        .args(["run", "-m"])
        .arg(&model)
        .args([
            "-p",
            "Once upon a time",
            "-n",
            "96",
            "--temp",
            "0",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bitnet run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    let expected = expected_greedy_text();
    assert_eq!(
        got.trim_end_matches('\n'),
        expected,
        "greedy text differs from SOURCE.md"
    );
}

/// Float64 reference of bitllama2.c's model, from SOURCE.md: parameter-free input
/// normalisation in every BitLinear, adjacent-pair RoPE (theta 10000), GQA, SiLU gating,
/// final RMSNorm (eps 1e-5) and tied classifier. Weights are code * scale; activations are not
/// quantized (exact math).
mod reference {
    pub struct Mat {
        pub rows: usize,
        pub cols: usize,
        pub w: Vec<f64>,
    }

    pub struct Checkpoint {
        pub dim: usize,
        pub layers: usize,
        pub heads: usize,
        pub kv_heads: usize,
        pub vocab: usize,
        pub final_norm: Vec<f64>,
        pub emb: Vec<f64>,
        /// wq, wk, wv, wo, w1, w2, w3 (each per layer).
        pub mats: Vec<Vec<Mat>>,
    }

    fn i32_at(b: &[u8], i: usize) -> usize {
        i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as usize
    }
    fn f32s(b: &[u8], at: &mut usize, n: usize) -> Vec<f64> {
        let v = (0..n)
            .map(|i| f32::from_le_bytes(b[*at + 4 * i..*at + 4 * i + 4].try_into().unwrap()) as f64)
            .collect();
        *at += 4 * n;
        v
    }

    pub fn load(b: &[u8]) -> Checkpoint {
        assert_eq!(&b[0..4], &0x616b3432u32.to_le_bytes());
        let (dim, hidden, layers, heads, kv_heads, vocab) = (
            i32_at(b, 2),
            i32_at(b, 3),
            i32_at(b, 4),
            i32_at(b, 5),
            i32_at(b, 6),
            i32_at(b, 7),
        );
        let mut at = 256;
        let final_norm = f32s(b, &mut at, dim);
        let emb = f32s(b, &mut at, vocab * dim);
        let kv = kv_heads * (dim / heads);
        let shapes = [
            (dim, dim),
            (kv, dim),
            (kv, dim),
            (dim, dim),
            (hidden, dim),
            (dim, hidden),
            (hidden, dim),
        ];
        let mut mats = Vec::new();
        for (rows, cols) in shapes {
            let mut per_layer = Vec::new();
            for _ in 0..layers {
                let scale = f32s(b, &mut at, 1)[0];
                let mut w = Vec::with_capacity(rows * cols);
                for &byte in &b[at..at + rows * cols / 4] {
                    for k in 0..4 {
                        w.push(match (byte >> (2 * k)) & 3 {
                            0 => 0.0,
                            1 => scale,
                            3 => -scale,
                            c => panic!("code {c}"),
                        });
                    }
                }
                at += rows * cols / 4;
                per_layer.push(Mat { rows, cols, w });
            }
            mats.push(per_layer);
        }
        assert_eq!(at, b.len());
        Checkpoint {
            dim,
            layers,
            heads,
            kv_heads,
            vocab,
            final_norm,
            emb,
            mats,
        }
    }

    fn bitlinear(m: &Mat, x: &[f64]) -> Vec<f64> {
        let n = x.len() as f64;
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let xn: Vec<f64> = x.iter().map(|v| v / (norm * n.sqrt())).collect();
        (0..m.rows)
            .map(|r| {
                m.w[r * m.cols..(r + 1) * m.cols]
                    .iter()
                    .zip(&xn)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect()
    }

    fn rope(v: &mut [f64], pos: usize, head_size: usize) {
        for i in (0..v.len()).step_by(2) {
            let freq = 1.0 / 10000f64.powf((i % head_size) as f64 / head_size as f64);
            let (c, s) = ((pos as f64 * freq).cos(), (pos as f64 * freq).sin());
            let (a, b) = (v[i], v[i + 1]);
            v[i] = a * c - b * s;
            v[i + 1] = a * s + b * c;
        }
    }

    /// Logits at every position of `tokens`.
    pub fn forward_all(ck: &Checkpoint, tokens: &[u32]) -> Vec<Vec<f64>> {
        let hs = ck.dim / ck.heads;
        let group = ck.heads / ck.kv_heads;
        let mut keys: Vec<Vec<Vec<f64>>> = vec![Vec::new(); ck.layers];
        let mut values: Vec<Vec<Vec<f64>>> = vec![Vec::new(); ck.layers];
        let mut all = Vec::new();
        for (pos, &tok) in tokens.iter().enumerate() {
            let mut x = ck.emb[tok as usize * ck.dim..(tok as usize + 1) * ck.dim].to_vec();
            for l in 0..ck.layers {
                let m = |i: usize| &ck.mats[i][l];
                let mut q = bitlinear(m(0), &x);
                let mut k = bitlinear(m(1), &x);
                let v = bitlinear(m(2), &x);
                rope(&mut q, pos, hs);
                rope(&mut k, pos, hs);
                keys[l].push(k);
                values[l].push(v);
                let mut out = vec![0.0; ck.dim];
                for h in 0..ck.heads {
                    let kvh = h / group;
                    let qh = &q[h * hs..(h + 1) * hs];
                    let mut att: Vec<f64> = keys[l]
                        .iter()
                        .map(|k| {
                            qh.iter()
                                .zip(&k[kvh * hs..(kvh + 1) * hs])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (hs as f64).sqrt()
                        })
                        .collect();
                    let max = att.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = att
                        .iter_mut()
                        .map(|a| {
                            *a = (*a - max).exp();
                            *a
                        })
                        .sum();
                    for (t, a) in att.iter().enumerate() {
                        for i in 0..hs {
                            out[h * hs + i] += a / sum * values[l][t][kvh * hs + i];
                        }
                    }
                }
                let o = bitlinear(m(3), &out);
                for (a, b) in x.iter_mut().zip(&o) {
                    *a += b;
                }
                let h1 = bitlinear(m(4), &x);
                let h3 = bitlinear(m(6), &x);
                let g: Vec<f64> = h1
                    .iter()
                    .zip(&h3)
                    .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                    .collect();
                let d = bitlinear(m(5), &g);
                for (a, b) in x.iter_mut().zip(&d) {
                    *a += b;
                }
            }
            let ms = x.iter().map(|v| v * v).sum::<f64>() / ck.dim as f64;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            let xn: Vec<f64> = x
                .iter()
                .zip(&ck.final_norm)
                .map(|(v, w)| v * inv * w)
                .collect();
            all.push(
                (0..ck.vocab)
                    .map(|r| {
                        ck.emb[r * ck.dim..(r + 1) * ck.dim]
                            .iter()
                            .zip(&xn)
                            .map(|(a, b)| a * b)
                            .sum()
                    })
                    .collect(),
            );
        }
        all
    }
}

fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Teacher-forced comparison over the expected greedy text (BOS + >= 100 tokens).
fn compare_with_reference(weights: &str, tolerance: f64) {
    let ck = reference::load(&std::fs::read(shared("models/bitllama2c-3m/model.bin")).unwrap());
    let path = converted(weights, "f32");
    let model = Model::load(&path).unwrap();
    let mut session = Session::new(&model).with_threads(2);
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let tokens = tok.encode(&expected_greedy_text(), true, false);
    assert!(tokens.len() >= 100, "only {} tokens", tokens.len());
    let want = reference::forward_all(&ck, &tokens);
    let v = ck.vocab;
    for mode in [Mode::Seq, Mode::Batch] {
        let got = teacher_forced_logits(&mut session, &tokens, mode).unwrap();
        let mut max_d = 0f64;
        let mut top1 = 0;
        for (p, want) in want.iter().enumerate() {
            let got = &got[p * v..(p + 1) * v];
            for (g, w) in got.iter().zip(want) {
                max_d = max_d.max((*g as f64 - w).abs());
            }
            if argmax(got) == argmax(want) {
                top1 += 1;
            } else {
                panic!(
                    "{weights} {mode:?}: top-1 differs at position {p}: engine {} reference {}",
                    argmax(got),
                    argmax(want)
                );
            }
        }
        println!(
            "{weights} {mode:?}: {} positions, top-1 {top1}/{}, max |dlogit| {max_d:.4}",
            want.len(),
            want.len()
        );
        assert!(
            max_d <= tolerance,
            "{weights} {mode:?}: max |dlogit| {max_d} > {tolerance}"
        );
    }
}

#[test]
fn i2s_model_matches_float64_reference() {
    compare_with_reference("i2_s", 0.35);
}

#[test]
fn f32_model_matches_float64_reference() {
    compare_with_reference("f32", 0.05);
}

#[test]
fn perplexity_of_tinystories_text() {
    let model = converted("i2_s", "f32");
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tinystories.txt");
    let out = bitnet()
        .args(["perplexity", "-m"])
        .arg(&model)
        .args(["-f", text])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    println!("{s}");
    let field = |name: &str| -> f64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {s}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (n, nll) = (field("tokens evaluated:"), field("mean NLL:"));
    assert!(n >= 300.0, "only {n} tokens evaluated");
    assert!(nll < 1.2, "mean NLL {nll} >= 1.2");
}

#[test]
fn seeded_sampling_is_identical_across_runs_and_thread_counts() {
    let model = converted("i2_s", "f32");
    let run = |threads: &str| {
        let out = bitnet()
            .args(["run", "-m"])
            .arg(&model)
            .args([
                "-p",
                "Once upon a time",
                "-n",
                "40",
                "--temp",
                "0.9",
                "--seed",
                "42",
                "--threads",
                threads,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let a = run("1");
    assert_eq!(a, run("1"));
    assert_eq!(a, run("2"));
    let greedy = bitnet()
        .args(["run", "-m"])
        .arg(&model)
        .args(["-p", "Once upon a time", "-n", "40", "--temp", "0"])
        .output()
        .unwrap();
    assert_ne!(
        a,
        String::from_utf8(greedy.stdout).unwrap(),
        "sampling at temperature 0.9 should differ from greedy"
    );
}

#[test]
fn generating_from_an_empty_prompt_is_an_error() {
    let model = Model::load(converted("i2_s", "f32")).unwrap();
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let opts = bitnet::generate::GenerateOptions {
        max_tokens: 4,
        sampler: bitnet::sample::SamplerParams::greedy(),
        stop: vec![],
        ignore_eos: false,
    };
    let r = bitnet::generate::generate(&mut Session::new(&model), &tok, &[], &opts, &mut |_| true);
    assert!(
        matches!(r, Err(bitnet::model::ModelError::EmptyPrompt)),
        "{:?}",
        r.map(|g| g.tokens)
    );
}

/// Continuous batching stacks several sequences (prompts and single decode tokens, at
/// different positions) into one forward pass; each must get exactly the logits it gets alone.
#[test]
fn batched_sequences_get_the_logits_they_get_alone() {
    use bitnet::session::Seq;
    let model = Model::load(converted("i2_s", "f32")).unwrap();
    let mut session = Session::new(&model);
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let prompts = [
        "Once upon a time",
        "The cat sat",
        "Lily and Ben went to the park",
    ];
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, true, false)).collect();
    // Alone: prefill each prompt, then two decode steps.
    let mut alone = Vec::new();
    for p in &ids {
        let mut st = model.new_state();
        let a = session.forward(&mut st, p, true).unwrap();
        let b = session.forward(&mut st, &[42], false).unwrap();
        let c = session.forward(&mut st, &[7], false).unwrap();
        alone.push((a, b, c));
    }
    // Together: prompts 0 and 1 in one step; then 0 and 1 decode while 2 prefills; then all
    // three decode (2 gets its own first decode token).
    let mut states: Vec<_> = (0..3).map(|_| model.new_state()).collect();
    let [s0, s1, s2] = &mut states[..] else {
        unreachable!()
    };
    let step1 = session
        .forward_batch(&mut [
            Seq {
                state: s0,
                tokens: &ids[0],
                all_logits: true,
            },
            Seq {
                state: s1,
                tokens: &ids[1],
                all_logits: true,
            },
        ])
        .unwrap();
    let step2 = session
        .forward_batch(&mut [
            Seq {
                state: s2,
                tokens: &ids[2],
                all_logits: true,
            },
            Seq {
                state: s0,
                tokens: &[42],
                all_logits: false,
            },
            Seq {
                state: s1,
                tokens: &[42],
                all_logits: false,
            },
        ])
        .unwrap();
    let step3 = session
        .forward_batch(&mut [
            Seq {
                state: s1,
                tokens: &[7],
                all_logits: false,
            },
            Seq {
                state: s2,
                tokens: &[42],
                all_logits: false,
            },
            Seq {
                state: s0,
                tokens: &[7],
                all_logits: false,
            },
        ])
        .unwrap();
    assert!(step1[0] == alone[0].0 && step1[1] == alone[1].0, "prompts");
    assert!(step2[0] == alone[2].0, "prompt next to decodes");
    assert!(
        step2[1] == alone[0].1 && step2[2] == alone[1].1,
        "decodes next to a prompt"
    );
    assert!(step3[2] == alone[0].2 && step3[0] == alone[1].2, "decodes");
    assert!(step3[1] == alone[2].1, "a later sequence's first decode");
    // An invalid sequence rejects the whole step and changes no state.
    let before: Vec<usize> = states.iter().map(|s| s.pos).collect();
    let [s0, s1, _] = &mut states[..] else {
        unreachable!()
    };
    let bad = session.forward_batch(&mut [
        Seq {
            state: s0,
            tokens: &[1],
            all_logits: false,
        },
        Seq {
            state: s1,
            tokens: &[u32::MAX],
            all_logits: false,
        },
    ]);
    assert!(matches!(
        bad,
        Err(bitnet::model::ModelError::TokenOutOfRange { .. })
    ));
    assert_eq!(before, states.iter().map(|s| s.pos).collect::<Vec<_>>());
}

/// A prompt's rows attend on several threads (forward_batch spreads them once there are
/// enough): the logits are the bits of one token at a time, on one thread or two.
#[test]
fn a_prompt_on_two_threads_gives_the_bits_of_one_token_at_a_time() {
    let model = Model::load(converted("i2_s", "f32")).unwrap();
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let tokens = tok.encode(&expected_greedy_text(), true, false);
    let tokens = &tokens[..40];
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let mut one = Session::new(&model).with_threads(1);
    let seq = bits(teacher_forced_logits(&mut one, tokens, Mode::Seq).unwrap());
    let mut two = Session::new(&model).with_threads(2);
    let batch = bits(teacher_forced_logits(&mut two, tokens, Mode::Batch).unwrap());
    assert_eq!(seq.len(), batch.len());
    assert!(
        seq == batch,
        "batched prompt logits differ from token-at-a-time ones"
    );
}

/// The real model converted to TL2 (shapes BitNet.cpp has no TL2 kernel for) gives the I2_S
/// model's logits bit for bit: a 64-token prompt in one batch and one token at a time, on 1
/// and 2 threads.
#[test]
fn tl2_model_gives_the_bits_of_the_i2s_model() {
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let i2s = Model::load(converted("i2_s", "f32")).unwrap();
    let tl2 = Model::load(converted("tl2", "f32")).unwrap();
    let tokens: Vec<u32> = (0..64).map(|i| (i * 37 + 5) % 500 + 3).collect();
    let mut tl2_session = Session::new(&tl2);
    for threads in [1, 2] {
        let mut i2s_session = Session::new(&i2s).with_threads(threads);
        tl2_session = tl2_session.with_threads(threads);
        for mode in [Mode::Batch, Mode::Seq] {
            let want = bits(teacher_forced_logits(&mut i2s_session, &tokens, mode).unwrap());
            let got = bits(teacher_forced_logits(&mut tl2_session, &tokens, mode).unwrap());
            assert!(
                got == want,
                "{mode:?}, {threads} threads: TL2 logits differ"
            );
        }
    }
    let k = tl2_session.stats().snapshot();
    assert!(
        k.contains_key("tl2_gemm_avx2") || k.contains_key("tl2_gemm_scalar"),
        "{k:?}"
    );
}
