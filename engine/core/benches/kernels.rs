//! Kernel throughput on one thread: I2_S GEMV (2560x6912 and 6912x2560) and GEMM (4, 16 and 128
//! tokens), TL2 (the same shapes, BitNet.cpp's lookup-table layout), the F16 output
//! projection, TQ2_0 and TQ1_0; scalar against AVX2 through
//! `Weight::matmul_isa`. Shapes are written as ggml does, `cols x rows` (inputs x outputs):
//! 2560x6912 is the 2B-4T FFN gate/up projection, 6912x2560 its down projection.
//!
//! Every benchmark cycles through copies of its weight (read in place from a GGUF image, as the
//! model reads its mmap) totalling at least 256 MiB, far beyond the last-level cache, so weights
//! stream from memory as they do in decoding. Criterion reports GB/s of weight bytes
//! (`Throughput::Bytes`); at the end a summary gives each kernel's GB/s (median per call) as a
//! fraction of this machine's single-thread memory read bandwidth, measured in the same process
//! by a streaming sum over 1 GiB.
//!
//! `cargo bench -p bitnet --bench kernels [-- FILTER]`. Without `--bench` (e.g. `cargo test
//! --benches`) each benchmark runs once on small buffers, as a smoke test.

use bitnet::gguf::{Gguf, GgufWriter, Value};
use bitnet::measure::median;
use bitnet::quant::matmul::{Isa, KernelStats, Weight};
use bitnet::quant::{i2s, tl2, tq, TensorType};
use bitnet::sample::Rng;
use criterion::{black_box, Criterion, SamplingMode, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each benchmark's weight copies add up to at least this much.
const WORKING_SET: usize = 256 << 20;
const BANDWIDTH_BUFFER: usize = 1 << 30;
/// Criterion samples per benchmark: the last this many `iter_custom` calls are its samples.
const SAMPLES: usize = 10;

/// A weight matrix and the copies of it that a benchmark cycles through.
struct Matrix {
    rows: usize,
    cols: usize,
    copies: Vec<Weight>,
}

impl Matrix {
    /// `copies` tensors holding the same `bytes`, in one in-memory GGUF.
    fn new(ty: TensorType, rows: usize, cols: usize, bytes: Vec<u8>, bench: bool) -> Matrix {
        let copies = if bench {
            WORKING_SET.div_ceil(bytes.len())
        } else {
            1
        };
        let mut w = GgufWriter::new();
        for i in 0..copies {
            w.tensor(&format!("w{i}"), &[cols as u64, rows as u64], ty);
        }
        // TL2 also needs its tiling and a scale tensor per matrix.
        if ty == TensorType::TL2 {
            let t = tl2::Tiling::for_shape(rows, cols).expect("a TL2 shape");
            w.kv(
                tl2::TILES_KEY,
                Value::u32s([rows, cols, t.bm, t.bk].map(|v| v as u32)),
            );
            for i in 0..copies {
                w.tensor(&format!("w{i}_scale"), &[1], TensorType::F32);
            }
        }
        let image = w
            .to_bytes(|i, out| match i < copies {
                true => out.write_all(&bytes),
                false => out.write_all(&0.02f32.to_le_bytes()),
            })
            .expect("in-memory GGUF");
        let g = Arc::new(Gguf::from_bytes(image).expect("valid GGUF"));
        let copies = g
            .tensors()
            .iter()
            .filter(|t| t.ty == ty)
            .map(|t| Weight::new(&g, t).expect("valid weight"))
            .collect();
        Matrix { rows, cols, copies }
    }

    fn bytes(&self) -> u64 {
        self.copies[0].bytes().len() as u64
    }
}

fn ternary(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| rng.below(3) as i8 - 1).collect()
}

fn i2s_matrix(rng: &mut Rng, rows: usize, cols: usize, bench: bool) -> Matrix {
    let bytes = i2s::pack(&ternary(rng, rows * cols), rows, cols, 0.02).expect("pack");
    Matrix::new(TensorType::I2S, rows, cols, bytes, bench)
}

fn tl2_matrix(rng: &mut Rng, rows: usize, cols: usize, bench: bool) -> Matrix {
    let tiling = tl2::Tiling::for_shape(rows, cols).expect("a TL2 shape");
    let bytes = tl2::pack(&ternary(rng, rows * cols), rows, cols, tiling).expect("pack");
    Matrix::new(TensorType::TL2, rows, cols, bytes, bench)
}

fn tq_matrix(rng: &mut Rng, ty: TensorType, rows: usize, cols: usize, bench: bool) -> Matrix {
    let values = ternary(rng, rows * cols);
    let scales: Vec<f32> = (0..rows * cols / 256)
        .map(|_| 0.01 + rng.next_f64() as f32 * 0.02)
        .collect();
    let bytes = match ty {
        TensorType::TQ2_0 => tq::pack_tq2(&values, &scales),
        _ => tq::pack_tq1(&values, &scales),
    }
    .expect("pack");
    Matrix::new(ty, rows, cols, bytes, bench)
}

fn f16_matrix(rng: &mut Rng, rows: usize, cols: usize, bench: bool) -> Matrix {
    let bytes = (0..rows * cols)
        .flat_map(|_| half::f16::from_f64(rng.next_f64() * 0.2 - 0.1).to_le_bytes())
        .collect();
    Matrix::new(TensorType::F16, rows, cols, bytes, bench)
}

/// Single-thread read bandwidth: the probe `bitnet bench` uses for its roofline.
fn read_bandwidth(len: usize, passes: usize) -> f64 {
    bitnet::measure::read_bandwidth(1, len, passes)
}

/// The pool's cost per dispatch (one `run` of one empty task per thread), back to back (the
/// workers still spinning) and after a 200 us pause (as between two products of a decode
/// step when attention or norms run in between: the workers may have parked).
fn pool_dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_dispatch");
    for threads in [2usize, 4] {
        if threads > bitnet::pool::max_threads() {
            continue;
        }
        let pool = bitnet::pool::get(threads);
        g.bench_function(format!("{threads}_threads_back_to_back"), |b| {
            b.iter(|| {
                pool.run(threads, &|i| {
                    black_box(i);
                })
            })
        });
        g.bench_function(format!("{threads}_threads_after_200us"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let pause = Instant::now();
                    while pause.elapsed() < Duration::from_micros(200) {
                        std::hint::spin_loop();
                    }
                    let t0 = Instant::now();
                    pool.run(threads, &|i| {
                        black_box(i);
                    });
                    total += t0.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

/// Per-call times each benchmark observed (criterion's own samples, through `iter_custom`).
struct Observed {
    name: String,
    tokens: usize,
    bytes: u64,
    per_call: Vec<f64>,
}

fn bench(
    c: &mut Criterion,
    log: &mut Vec<Observed>,
    group: &str,
    m: &Matrix,
    cases: &[(&str, Isa, usize)],
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(m.bytes()));
    // Equal iteration counts per sample: some of these take tens of milliseconds a call.
    g.sampling_mode(SamplingMode::Flat);
    let mut rng = Rng::new(7);
    for &(id, isa, n) in cases {
        let x: Vec<f32> = (0..n * m.cols)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        let mut out = vec![0f32; n * m.rows];
        let stats = KernelStats::default();
        let mut next = 0usize;
        let mut per_call = Vec::new();
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let w = &m.copies[next % m.copies.len()];
                    next += 1;
                    w.matmul_isa(isa, black_box(&x), n, &mut out, 1, &stats);
                    black_box(&out);
                }
                let d = t0.elapsed();
                per_call.push(d.as_secs_f64() / iters.max(1) as f64);
                d
            })
        });
        let kernel = m.copies[0].kernel_id(n, isa);
        log.push(Observed {
            name: format!("{group}/{id} ({kernel})"),
            tokens: n,
            bytes: m.bytes(),
            // Warm-up calls come first; the last SAMPLES are the measurement.
            per_call: per_call.split_off(per_call.len().saturating_sub(SAMPLES)),
        });
    }
    g.finish();
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(SAMPLES)
        .configure_from_args();
    let bandwidth = if bench_mode {
        read_bandwidth(BANDWIDTH_BUFFER, 5)
    } else {
        read_bandwidth(16 << 20, 1)
    };
    println!(
        "single-thread memory read bandwidth: {:.2} GB/s (best of streaming sums over {} MiB)",
        bandwidth / 1e9,
        if bench_mode {
            BANDWIDTH_BUFFER
        } else {
            16 << 20
        } >> 20
    );

    let mut rng = Rng::new(1);
    let mut log = Vec::new();
    let (scalar, avx2, avx512) = (Isa::Scalar, Isa::Avx2, Isa::Avx512);
    // AVX-512 kernels are timed beside the AVX2 ones where this CPU has them.
    let has512 = Isa::detect() >= Isa::Avx512;
    let with512 = |base: &[(&'static str, Isa, usize)], extra: &[(&'static str, Isa, usize)]| {
        let mut v = base.to_vec();
        if has512 {
            v.extend_from_slice(extra);
        }
        v
    };
    let up = i2s_matrix(&mut rng, 6912, 2560, bench_mode);
    bench(
        &mut c,
        &mut log,
        "i2s_gemv_2560x6912",
        &up,
        &with512(
            &[("scalar", scalar, 1), ("avx2", avx2, 1)],
            &[("avx512", avx512, 1)],
        ),
    );
    bench(
        &mut c,
        &mut log,
        "i2s_gemm_2560x6912",
        &up,
        &with512(
            &[
                ("scalar_4tok", scalar, 4),
                ("avx2_4tok", avx2, 4),
                ("avx2_16tok", avx2, 16),
                ("avx2_128tok", avx2, 128),
            ],
            &[
                ("avx512_4tok", avx512, 4),
                ("avx512_16tok", avx512, 16),
                ("avx512_128tok", avx512, 128),
            ],
        ),
    );
    drop(up);
    let down = i2s_matrix(&mut rng, 2560, 6912, bench_mode);
    bench(
        &mut c,
        &mut log,
        "i2s_gemv_6912x2560",
        &down,
        &with512(
            &[("scalar", scalar, 1), ("avx2", avx2, 1)],
            &[("avx512", avx512, 1)],
        ),
    );
    drop(down);
    for (group, rows, cols) in [("tl2_2560x6912", 6912, 2560), ("tl2_6912x2560", 2560, 6912)] {
        let m = tl2_matrix(&mut rng, rows, cols, bench_mode);
        bench(
            &mut c,
            &mut log,
            group,
            &m,
            &[
                ("scalar", scalar, 1),
                ("avx2", avx2, 1),
                ("avx2_16tok", avx2, 16),
            ],
        );
    }
    // A slice of the output projection (2B-4T: 128256 rows); 8192 rows are 40 MiB. Then one
    // with short rows (hidden 1024, vocab 32000), where every group of rows starts cold
    // unless prefetched.
    for (group, rows, cols) in [
        ("f16_output_2560x8192", 8192, 2560),
        ("f16_output_1024x32000", 32000, 1024),
    ] {
        let output = f16_matrix(&mut rng, rows, cols, bench_mode);
        bench(
            &mut c,
            &mut log,
            group,
            &output,
            &with512(
                &[
                    ("scalar", scalar, 1),
                    ("avx2", avx2, 1),
                    ("avx2_4tok", avx2, 4),
                ],
                &[("avx512_4tok", avx512, 4)],
            ),
        );
    }
    for (group, ty) in [
        ("tq2_0_gemv_2560x6912", TensorType::TQ2_0),
        ("tq1_0_gemv_2560x6912", TensorType::TQ1_0),
    ] {
        let m = tq_matrix(&mut rng, ty, 6912, 2560, bench_mode);
        bench(
            &mut c,
            &mut log,
            group,
            &m,
            &[("scalar", scalar, 1), ("avx2", avx2, 1)],
        );
    }
    pool_dispatch(&mut c);
    c.final_summary();

    if !bench_mode {
        println!(
            "\n(smoke test, not a measurement: one call each, small buffers; use cargo bench)"
        );
    }
    println!(
        "\nweight bytes per second (median of the samples) as a fraction of the {:.2} GB/s \
         single-thread read bandwidth; a product of n tokens reads the weights once:",
        bandwidth / 1e9
    );
    println!(
        "  {:<52} {:>6} {:>10} {:>9}",
        "benchmark (kernel)", "tokens", "GB/s", "fraction"
    );
    for o in &log {
        if o.per_call.is_empty() {
            continue; // filtered out
        }
        let gbs = o.bytes as f64 / median(&o.per_call) / 1e9;
        println!(
            "  {:<52} {:>6} {:>10.2} {:>8.1}%",
            o.name,
            o.tokens,
            gbs,
            100.0 * gbs * 1e9 / bandwidth
        );
    }
}
