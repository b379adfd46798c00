//! Kernels against naive implementations written here from the format descriptions:
//! I2_S GEMV/GEMM bit-exact (activation quantization included), TQ1_0/TQ2_0 pack/unpack
//! round trips and dot products, TL2 for every batch size from 1 to 64 on shapes BitNet.cpp
//! has no kernel for, on random shapes and adversarial values.

use bitnet::gguf::Value;
use bitnet::gguf::{Gguf, GgufWriter};
use bitnet::quant::matmul::{Isa, KernelStats, Weight};
use bitnet::quant::{i2s, tl2, tq, TensorType};
use proptest::prelude::*;
use std::sync::Arc;

/// One tensor named "w" in an in-memory GGUF, viewed as a Weight.
fn weight(ty: TensorType, rows: usize, cols: usize, bytes: Vec<u8>) -> Weight {
    let mut w = GgufWriter::new();
    w.tensor("w", &[cols as u64, rows as u64], ty);
    let file = w.to_bytes(|_, out| out.write_all(&bytes)).unwrap();
    let g = Arc::new(Gguf::from_bytes(file).unwrap());
    let t = g.tensor("w").unwrap().clone();
    Weight::new(&g, &t).unwrap()
}

/// A TL2 matrix as a file holds it: the tensor, its `_scale` tensor and its tiling.
fn tl2_weight(values: &[i8], rows: usize, cols: usize, tiling: tl2::Tiling, scale: f32) -> Weight {
    let packed = tl2::pack(values, rows, cols, tiling).unwrap();
    let mut w = GgufWriter::new();
    let tiles = [rows, cols, tiling.bm, tiling.bk].map(|v| v as u32);
    w.kv(tl2::TILES_KEY, Value::u32s(tiles));
    w.tensor("w", &[cols as u64, rows as u64], TensorType::TL2);
    w.tensor("w_scale", &[1], TensorType::F32);
    let file = w
        .to_bytes(|i, out| match i {
            0 => out.write_all(&packed),
            _ => out.write_all(&scale.to_le_bytes()),
        })
        .unwrap();
    let g = Arc::new(Gguf::from_bytes(file).unwrap());
    let t = g.tensor("w").unwrap().clone();
    Weight::new(&g, &t).unwrap()
}

/// The product of row-major ternary `values` with each token row of `x`, from the formula.
fn naive_gemm(
    values: &[i8],
    rows: usize,
    cols: usize,
    scale: f32,
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; n * rows];
    for t in 0..n {
        let (q, s, _) = naive_quant(&x[t * cols..(t + 1) * cols]);
        for r in 0..rows {
            let d: i32 = (0..cols).map(|c| values[r * cols + c] as i32 * q[c]).sum();
            out[t * rows + r] = d as f32 / s * scale;
        }
    }
    out
}

/// The activation quantization formula, written out: max in f64, s = 127 / max(m, 1e-5) as
/// f32, q = clamp(round-half-even(x * s)), sum of q.
fn naive_quant(x: &[f32]) -> (Vec<i32>, f32, i32) {
    let mut m = 1e-5f64;
    for &v in x {
        if (v as f64).abs() > m {
            m = (v as f64).abs();
        }
    }
    let s = (127.0 / m) as f32;
    let q: Vec<i32> = x
        .iter()
        .map(|&v| {
            let p = v * s;
            let r = p.round();
            // round half to even
            let r = if (p - p.trunc()).abs() == 0.5 {
                2.0 * (p / 2.0).round()
            } else {
                r
            };
            r.clamp(-128.0, 127.0) as i32
        })
        .collect();
    let sum = q.iter().sum();
    (q, s, sum)
}

/// Ternary value of element j of an I2_S buffer, from the documented bit layout.
fn naive_i2s_value(bytes: &[u8], j: usize) -> i32 {
    let (block, i) = (j / 128, j % 128);
    let byte = bytes[block * 32 + i % 32];
    let code = (byte >> (6 - 2 * (i / 32))) & 3;
    code as i32 - 1
}

fn naive_i2s_gemm(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    scale: f32,
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let values: Vec<i8> = (0..rows * cols)
        .map(|j| naive_i2s_value(bytes, j) as i8)
        .collect();
    naive_gemm(&values, rows, cols, scale, x, n)
}

fn activations() -> impl Strategy<Value = Vec<f32>> {
    let n = 8 * 128;
    prop_oneof![
        prop::collection::vec(-1.0f32..1.0, n),
        prop::collection::vec(-1e-7f32..1e-7, n),
        prop::collection::vec(-3e4f32..3e4, n),
        Just(vec![0.0; n]),
        (-5.0f32..5.0).prop_map(move |v| vec![v; n]),
        prop::collection::vec(
            prop_oneof![Just(f32::MAX), Just(-f32::MAX), Just(0.0f32), -1.0f32..1.0],
            n
        ),
        // Ties after scaling: max 63.5 gives s = 2 exactly, and x = k / 4 gives x * s = k / 2.
        prop::collection::vec((-254i32..=254).prop_map(|k| k as f32 / 4.0), n).prop_map(|mut v| {
            v[0] = 63.5;
            v
        }),
    ]
}

fn weights() -> impl Strategy<Value = Vec<i8>> {
    let n = 8 * 4 * 128;
    prop_oneof![
        prop::collection::vec(-1i8..=1, n),
        Just(vec![0i8; n]),
        Just(vec![1i8; n]),
        Just(vec![-1i8; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn i2s_pack_unpack_round_trip(rows in 1usize..6, blocks in 1usize..4, vals in weights(), scale in 0.001f32..10.0) {
        let cols = blocks * 128;
        let v = &vals[..rows * cols];
        let packed = i2s::pack(v, rows, cols, scale).unwrap();
        prop_assert_eq!(packed.len(), rows * cols / 4 + 32);
        let (back, s) = i2s::unpack(&packed, rows, cols).unwrap();
        prop_assert_eq!(&back[..], v);
        prop_assert_eq!(s, scale);
        for (j, &want) in v.iter().enumerate() {
            prop_assert_eq!(naive_i2s_value(&packed, j), want as i32);
        }
    }

    #[test]
    fn i2s_gemv_and_gemm_are_bit_exact(rows in 1usize..9, blocks in 1usize..5, n in 1usize..10,
                                       vals in weights(), x in activations(), zero_row in any::<bool>(),
                                       scale in 0.001f32..10.0) {
        let cols = blocks * 128;
        let mut v = vals[..rows * cols].to_vec();
        if zero_row {
            v[..cols].fill(0);
        }
        let x: Vec<f32> = x.iter().cycle().take(n * cols).copied().collect();
        let packed = i2s::pack(&v, rows, cols, scale).unwrap();
        let want = naive_i2s_gemm(&packed, rows, cols, scale, &x, n);
        let w = weight(TensorType::I2S, rows, cols, packed);
        // The scalar reference and every kernel this CPU runs must be bit-exact.
        for isa in Isa::available() {
            let stats = KernelStats::default();
            for threads in [1, 2] {
                let mut got = vec![0f32; n * rows];
                w.matmul_isa(isa, &x, n, &mut got, threads, &stats);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    prop_assert_eq!(g.to_bits(), e.to_bits(), "element {} ({:?}, threads {}): {} vs {}", i, isa, threads, g, e);
                }
            }
            // One counted call per matmul, under the id of the kernel that ran.
            let snap = stats.snapshot();
            let id = w.kernel_id(n, isa);
            let family = if n == 1 { "i2s_gemv_" } else { "i2s_gemm_" };
            prop_assert!(id.starts_with(family), "{} is not a {} kernel", id, family);
            prop_assert_eq!(snap[id].calls, 2);
            prop_assert_eq!(snap[id].elements, 2 * (rows * cols * n) as u64);
        }
    }

    #[test]
    fn tq_formats_round_trip_and_dot_like_the_formula(blocks in 1usize..4, vals in weights(), x in activations(),
                                                       d in 0.01f32..4.0) {
        let cols = blocks * 256;
        let v = &vals[..cols];
        let x = &x.iter().cycle().take(cols).copied().collect::<Vec<_>>();
        let (q, s, _) = naive_quant(x);
        // A different scale per block, so the order of the block sums matters.
        let scales: Vec<f32> = (0..blocks).map(|b| d * (1.0 + b as f32 / 3.0)).collect();
        let d16: Vec<f32> = scales.iter().map(|&d| half::f16::from_f32(d).to_f32()).collect();
        for ty in [TensorType::TQ2_0, TensorType::TQ1_0] {
            let packed = if ty == TensorType::TQ2_0 { tq::pack_tq2(v, &scales) } else { tq::pack_tq1(v, &scales) }.unwrap();
            prop_assert_eq!(packed.len() as u64, ty.tensor_bytes(cols as u64, cols as u64));
            let deq = bitnet::quant::dequantize(ty, &packed, 1, cols).unwrap();
            for (j, (&got, &want)) in deq.iter().zip(v).enumerate() {
                prop_assert_eq!(got, want as f32 * d16[j / 256], "{} element {}", ty, j);
            }
            // Block-wise formula: sum_b d_b * sum_j (w_j * q_j), then / s.
            let mut acc = 0f32;
            for (b, d) in d16.iter().enumerate() {
                let dot: i32 = (b * 256..(b + 1) * 256).map(|j| v[j] as i32 * q[j]).sum();
                acc += d * dot as f32;
            }
            let want = acc / s;
            let w = weight(ty, 1, cols, packed);
            // The scalar reference and every kernel this CPU runs must be bit-exact.
            for isa in Isa::available() {
                let mut got = [0f32];
                let stats = KernelStats::default();
                w.matmul_isa(isa, x, 1, &mut got, 1, &stats);
                prop_assert_eq!(got[0].to_bits(), want.to_bits(), "{} {:?}: {} vs {}", ty, isa, got[0], want);
                prop_assert!(stats.snapshot().contains_key(w.kernel_id(1, isa)));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Float rows (the output projection): every implementation equals the scalar reference.
    #[test]
    fn float_gemv_matches_the_scalar_reference(rows in 1usize..6, cols in 1usize..300, n in 1usize..10, seed in any::<u64>()) {
        let mut rng = bitnet::sample::Rng::new(seed);
        let vals: Vec<f32> = (0..rows * cols).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
        for ty in [TensorType::F32, TensorType::F16] {
            let bytes: Vec<u8> = match ty {
                TensorType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => vals.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            };
            let w = weight(ty, rows, cols, bytes);
            let mut a = vec![0f32; n * rows];
            w.matmul_isa(Isa::Scalar, &x, n, &mut a, 1, &KernelStats::default());
            for isa in Isa::available() {
                let mut b = vec![0f32; n * rows];
                w.matmul_isa(isa, &x, n, &mut b, 2, &KernelStats::default());
                for (p, q) in a.iter().zip(&b) {
                    prop_assert_eq!(p.to_bits(), q.to_bits(), "{} {:?}: {} vs {}", ty, isa, p, q);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Q8_0 rows (a quantized output projection): every implementation equals the scalar
    /// dequantize-then-dot reference bit for bit, for any row split across threads.
    #[test]
    fn q8_0_matmul_matches_the_scalar_reference(rows in 1usize..11, blocks in 1usize..12, n in 1usize..10, threads in 1usize..4, seed in any::<u64>()) {
        let cols = 32 * blocks;
        let mut rng = bitnet::sample::Rng::new(seed);
        let vals: Vec<f32> = (0..rows * cols).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
        let w = weight(TensorType::Q8_0, rows, cols, bitnet::convert::encode_q8_0(&vals));
        let mut a = vec![0f32; n * rows];
        w.matmul_isa(Isa::Scalar, &x, n, &mut a, 1, &KernelStats::default());
        for isa in Isa::available() {
            let mut b = vec![0f32; n * rows];
            let stats = KernelStats::default();
            w.matmul_isa(isa, &x, n, &mut b, threads, &stats);
            for (p, q) in a.iter().zip(&b) {
                prop_assert_eq!(p.to_bits(), q.to_bits(), "{:?}: {} vs {}", isa, p, q);
            }
            prop_assert!(stats.snapshot().contains_key(w.kernel_id(n, isa)));
        }
    }
}

#[test]
fn wrong_sizes_say_what_they_got_and_expected() {
    let e = bitnet::quant::check_size(TensorType::I2S, 4, 256, 100)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("4x256")
            && e.contains("got 100")
            && e.contains("expected 288")
            && e.contains("row stride 64"),
        "{e}"
    );
    let e = bitnet::quant::check_size(TensorType::I2S, 4, 100, 132)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 128"), "{e}");
    assert!(i2s::pack(&[2i8; 128], 1, 128, 1.0).is_err());
}

#[test]
fn a_post_scale_multiplies_the_product_afterwards() {
    let vals: Vec<i8> = (0..2 * 128).map(|j| (j % 3) as i8 - 1).collect();
    let x: Vec<f32> = (0..128).map(|j| (j as f32 * 0.37).sin()).collect();
    let mut w = weight(
        TensorType::I2S,
        2,
        128,
        i2s::pack(&vals, 2, 128, 0.25).unwrap(),
    );
    let (mut plain, mut scaled) = ([0f32; 2], [0f32; 2]);
    w.matmul(&x, 1, &mut plain, 1, &KernelStats::default());
    w.post_scale = Some(3.0);
    w.matmul(&x, 1, &mut scaled, 1, &KernelStats::default());
    assert_eq!(scaled, [plain[0] * 3.0, plain[1] * 3.0]);
}

/// At the largest magnitudes (every code +1 or -1, every activation at +-127) over many
/// blocks the GEMV must still be exact, for every ISA and thread count (16-bit partial sums
/// in a SIMD kernel would wrap here, as the reference's do).
#[test]
fn i2s_gemv_is_exact_at_extreme_magnitudes_over_many_blocks() {
    for (rows, cols) in [(4, 128 * 20), (7, 128 * 33), (9, 4096)] {
        for (wv, xv) in [(1i8, 1.0f32), (-1, 1.0), (1, -1.0), (-1, -1.0)] {
            let v = vec![wv; rows * cols];
            let x = vec![xv; cols];
            let packed = i2s::pack(&v, rows, cols, 1.0).unwrap();
            let want = naive_i2s_gemm(&packed, rows, cols, 1.0, &x, 1);
            let w = weight(TensorType::I2S, rows, cols, packed);
            for isa in Isa::available() {
                for threads in [1, 2] {
                    let mut got = vec![0f32; rows];
                    w.matmul_isa(isa, &x, 1, &mut got, threads, &KernelStats::default());
                    assert_eq!(got, want, "{rows}x{cols} w={wv} x={xv} {isa:?} {threads}");
                    assert_eq!(got[0], (wv as f32) * xv * cols as f32);
                }
            }
        }
    }
}

/// Checks a TL2 product against the formula, bit for bit, with every ISA and 1 and 2 threads.
fn check_tl2(values: &[i8], rows: usize, cols: usize, tiling: tl2::Tiling, x: &[f32], n: usize) {
    let scale = 0.75;
    let want = naive_gemm(values, rows, cols, scale, x, n);
    let w = tl2_weight(values, rows, cols, tiling, scale);
    for isa in Isa::available() {
        for threads in [1, 2] {
            let stats = KernelStats::default();
            let mut got = vec![0f32; n * rows];
            w.matmul_isa(isa, x, n, &mut got, threads, &stats);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{rows}x{cols} {tiling:?}, {n} tokens, element {i} ({isa:?}, {threads} threads): {g} vs {e}"
                );
            }
            let id = w.kernel_id(n, isa);
            assert!(id.starts_with("tl2_"), "{id}");
            assert_eq!(stats.snapshot()[id].calls, 1);
        }
    }
}

fn lcg_values(n: usize, seed: u64) -> Vec<i8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 3) as i8 - 1
        })
        .collect()
}

fn lcg_floats(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// Every batch size from 1 to 64, on shapes BitNet.cpp has no generated kernel for: the real
/// model's (256x256 and 128x256: K = 2 K-tiles + 64 pair columns) and an odd one with several
/// M-tiles and a 32-column tail.
#[test]
fn tl2_is_exact_for_every_batch_size_from_1_to_64() {
    let shapes = [
        (256, 256, tl2::Tiling { bm: 256, bk: 96 }),
        (128, 256, tl2::Tiling { bm: 128, bk: 96 }),
        (96, 416, tl2::Tiling { bm: 32, bk: 96 }),
    ];
    for (i, (rows, cols, tiling)) in shapes.into_iter().enumerate() {
        let values = lcg_values(rows * cols, i as u64);
        let x = lcg_floats(64 * cols, 100 + i as u64);
        for n in 1..=64 {
            check_tl2(&values, rows, cols, tiling, &x[..n * cols], n);
        }
    }
}

/// The same weights give the same bits as TL2 and as I2_S.
#[test]
fn tl2_and_i2s_give_the_same_bits() {
    let (rows, cols) = (64, 384);
    let values = lcg_values(rows * cols, 7);
    let x = lcg_floats(5 * cols, 8);
    let tl2 = tl2_weight(
        &values,
        rows,
        cols,
        tl2::Tiling::for_shape(rows, cols).unwrap(),
        1.5,
    );
    let i2s = weight(
        TensorType::I2S,
        rows,
        cols,
        i2s::pack(&values, rows, cols, 1.5).unwrap(),
    );
    for n in [1, 5] {
        let stats = KernelStats::default();
        let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
        tl2.matmul(&x[..n * cols], n, &mut a, 2, &stats);
        i2s.matmul(&x[..n * cols], n, &mut b, 2, &stats);
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random tilings and shapes (1-4 subtiles per M-tile, 1-3 M-tiles, BK 96 or 192, 0-64
    /// pair columns), adversarial weights and activations, 1-64 tokens.
    #[test]
    fn tl2_matches_the_formula_on_random_shapes(subtiles in 1usize..=4, m_tiles in 1usize..=3,
                                                 k_tiles in 0usize..=4, tail in 0usize..3, wide in any::<bool>(),
                                                 n in 1usize..=64, seed in any::<u64>(), x in activations(),
                                                 fill in prop_oneof![Just(None), Just(Some(1i8)), Just(Some(-1i8))]) {
        let bk = if wide { 192 } else { 96 };
        let cols = (k_tiles * bk + tail * 32).max(32);
        let rows = subtiles * 32 * m_tiles;
        let tiling = tl2::Tiling { bm: subtiles * 32, bk };
        let values = match fill {
            Some(v) => vec![v; rows * cols],
            None => lcg_values(rows * cols, seed),
        };
        let x: Vec<f32> = x.iter().cycle().take(n * cols).copied().collect();
        check_tl2(&values, rows, cols, tiling, &x, n);
    }
}

/// A TL2 tensor whose file records no tiling for its shape, or a tiling that cannot hold it,
/// is a typed error naming what is missing.
#[test]
fn tl2_without_a_usable_tiling_is_a_typed_error() {
    use bitnet::quant::FormatError;
    let (rows, cols) = (64, 288);
    let packed = tl2::pack(
        &vec![1i8; rows * cols],
        rows,
        cols,
        tl2::Tiling { bm: 64, bk: 96 },
    )
    .unwrap();
    for tiles in [None, Some([rows, cols, 48, 96]), Some([32, cols, 32, 96])] {
        let mut w = GgufWriter::new();
        if let Some(t) = tiles {
            w.kv(tl2::TILES_KEY, Value::u32s(t.map(|v| v as u32)));
        }
        w.tensor("w", &[cols as u64, rows as u64], TensorType::TL2);
        w.tensor("w_scale", &[1], TensorType::F32);
        let file = w
            .to_bytes(|i, out| match i {
                0 => out.write_all(&packed),
                _ => out.write_all(&1f32.to_le_bytes()),
            })
            .unwrap();
        let g = Arc::new(Gguf::from_bytes(file).unwrap());
        let t = g.tensor("w").unwrap().clone();
        let err = Weight::new(&g, &t).unwrap_err();
        match tiles {
            Some([_, _, 48, _]) => assert!(
                matches!(err, FormatError::BadTiling { bm: 48, .. }),
                "{err}"
            ),
            _ => assert!(
                matches!(
                    err,
                    FormatError::NoTiling {
                        rows: 64,
                        cols: 288,
                        ..
                    }
                ),
                "{err}"
            ),
        }
    }
}

/// Every I2_S kernel of one instruction set against the naive formula on the model's row
/// lengths (odd and even block counts) and every group size 1..=9 tokens, 1 and 2 threads.
fn i2s_kernels_of(isa: Isa) {
    assert!(
        Isa::available().contains(&isa),
        "{isa:?} is not available on this CPU"
    );
    let mut rng = bitnet::sample::Rng::new(7);
    for (rows, cols) in [(3, 128), (17, 384), (9, 2560), (5, 6912)] {
        let v: Vec<i8> = (0..rows * cols)
            .map(|_| (rng.next_f64() * 3.0) as i8 - 1)
            .collect();
        let packed = i2s::pack(&v, rows, cols, 0.37).unwrap();
        let w = weight(TensorType::I2S, rows, cols, packed.clone());
        for n in 1..=9 {
            // Activations at the extremes too (int8 -128 and 127 after quantization).
            let x: Vec<f32> = (0..n * cols)
                .map(|i| match i % 97 {
                    0 => -1e3,
                    1 => 1e3,
                    _ => (rng.next_f64() * 2.0 - 1.0) as f32,
                })
                .collect();
            let want = naive_i2s_gemm(&packed, rows, cols, 0.37, &x, n);
            for threads in [1, 2] {
                let stats = KernelStats::default();
                let mut got = vec![0f32; n * rows];
                w.matmul_isa(isa, &x, n, &mut got, threads, &stats);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{isa:?} {rows}x{cols} n={n} threads={threads} element {i}: {g} vs {e}"
                    );
                }
                let id = w.kernel_id(n, isa);
                assert!(
                    id.ends_with(isa.name()),
                    "{id} ran instead of a {isa:?} kernel"
                );
                assert!(stats.snapshot().contains_key(id));
            }
        }
    }
}

#[test]
#[cfg_attr(
    not(bitnet_host_avx2),
    ignore = "the CPU that built these tests has no AVX2+F16C: the avx2 kernels cannot run here"
)]
fn i2s_avx2_kernels_are_bit_exact_on_model_shapes() {
    i2s_kernels_of(Isa::Avx2);
}

#[test]
#[cfg_attr(
    not(bitnet_host_avx512),
    ignore = "the CPU that built these tests has no AVX-512 F/BW/VL+VNNI: the avx512 kernels cannot run here"
)]
fn i2s_avx512_kernels_are_bit_exact_on_model_shapes() {
    i2s_kernels_of(Isa::Avx512);
}
