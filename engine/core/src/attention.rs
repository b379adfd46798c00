//! Attention of one query head over a sequence's KV cache: scores, softmax, the weighted sum
//! of values. [`head`] is the plain reference; an AVX2 version runs the same arithmetic in the
//! same order (eight lane sums per dot product combined in one fixed tree, separate multiplies
//! and adds, values summed position by position), so both give the same bits (property test
//! below) and results do not depend on the machine's instruction set.
//!
//! Decode steps of several sequences share every weight read, but each sequence attends over
//! its own cache, so this is the part of a batched step that does not shrink per token.

use crate::pool::SendPtr;
use crate::quant::matmul::Isa;

/// Attention of `n` rows whose keys and values are all in their caches: `attend(r, scores,
/// out_row)` writes row `r`'s `width` outputs. Rows attend independently, so a prompt's rows
/// are spread over `threads` (each row computed the same way wherever it runs, with scratch
/// scores of its task's own); a few decode rows run here, with `scores` as scratch.
pub fn rows(
    n: usize,
    width: usize,
    threads: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    attend: impl Fn(usize, &mut Vec<f32>, &mut [f32]) + Sync,
) {
    if threads > 1 && n >= 8 {
        let out = SendPtr(out.as_mut_ptr());
        let chunk = n.div_ceil(threads * 4);
        crate::pool::get(threads).run(n.div_ceil(chunk), &|c| {
            let mut scores = Vec::new();
            for r in c * chunk..n.min((c + 1) * chunk) {
                // SAFETY: row r of `out` is written by this task only, and `out` outlives the
                // run.
                let o = unsafe { std::slice::from_raw_parts_mut(out.offset(r * width), width) };
                attend(r, &mut scores, o);
            }
        });
    } else {
        for (r, o) in out.chunks_exact_mut(width).enumerate().take(n) {
            attend(r, scores, o);
        }
    }
}

/// The cache of one layer as [`head`] reads it: position `p`'s key for this head is
/// `keys[p * stride + offset..][..q.len()]`, likewise its value.
#[derive(Clone, Copy)]
pub struct Cache<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub stride: usize,
    pub offset: usize,
}

/// `out = sum_p softmax(q . k_p * scale)_p v_p` over positions `0..scores.len()`, with
/// `scores` as scratch. Uses AVX2 when the CPU has it (identical results).
pub fn head(q: &[f32], cache: Cache, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() >= Isa::Avx2 && q.len().is_multiple_of(8) {
        // SAFETY: the CPU has AVX2; the slices are checked inside.
        return unsafe { avx2::head(q, cache, scale, scores, out) };
    }
    head_scalar(q, cache, scale, scores, out)
}

/// The reference: [`head`] written out plainly.
pub fn head_scalar(q: &[f32], c: Cache, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let hd = q.len();
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot(q, &c.keys[p * c.stride + c.offset..][..hd]) * scale;
    }
    softmax(scores);
    out.fill(0.0);
    for (p, &a) in scores.iter().enumerate() {
        let v = &c.values[p * c.stride + c.offset..][..hd];
        for (o, &vv) in out.iter_mut().zip(v) {
            *o += a * vv;
        }
    }
}

/// Dot product in a fixed order: eight lane sums (lane i takes elements i, i + 8, ...), folded
/// as `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, then the tail added in order.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            l[i] += x[i] * y[i];
        }
    }
    let s = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let mut d = (s[0] + s[1]) + (s[2] + s[3]);
    for (x, y) in ar.iter().zip(br) {
        d += x * y;
    }
    d
}

/// Softmax in place: subtract the maximum, exponentiate ([`exp_neg`]), divide by the sum
/// (eight lane sums folded as in [`dot`], then the tail in order).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for v in x.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let sum = sum8(x);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

fn sum8(x: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            l[i] += c[i];
        }
    }
    let s = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let mut d = (s[0] + s[1]) + (s[2] + s[3]);
    for &v in tail {
        d += v;
    }
    d
}

/// Below this, e^x is clamped (e^-87.33 is about f32's smallest normal).
const EXP_MIN: f32 = -87.33654;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer, ties to even.
const ROUND: f32 = 12_582_912.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cephes): `n * LN2_HI` is exact for the n that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes expf polynomial on [-ln2/2, ln2/2].
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// e^x for x <= 0 (softmax's shifted scores), to about 1 ulp: x = n ln2 + r, e^r by a
/// polynomial, times 2^n built in the exponent bits. Plain f32 multiplies and adds in a fixed
/// order (no fused multiply-add), which the AVX2 version repeats lane by lane.
pub fn exp_neg(x: f32) -> f32 {
    let x = if x < EXP_MIN { EXP_MIN } else { x };
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p * r + c;
    }
    let y = (p * (r * r) + r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{exp_neg, Cache, EXP_MIN, EXP_P, LN2_HI, LN2_LO, LOG2E, ROUND};
    use std::arch::x86_64::*;

    /// [`exp_neg`] of eight lanes, operation for operation.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let min = _mm256_set1_ps(EXP_MIN);
        // x < min ? min : x (a NaN stays NaN, as in the scalar form).
        let x = _mm256_blendv_ps(x, min, _mm256_cmp_ps::<_CMP_LT_OQ>(x, min));
        let round = _mm256_set1_ps(ROUND);
        let n = _mm256_sub_ps(
            _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), round),
            round,
        );
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
            _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
        );
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r),
            _mm256_set1_ps(1.0),
        );
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    /// [`super::softmax`] with the exponentials, the lane sums and the divisions eight at a
    /// time.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn softmax(x: &mut [f32]) {
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let (mv, n8) = (_mm256_set1_ps(max), x.len() / 8 * 8);
        let p = x.as_mut_ptr();
        let mut acc = _mm256_setzero_ps();
        for i in (0..n8).step_by(8) {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
        let s4 = fold4(acc);
        let h = _mm_hadd_ps(s4, s4);
        let mut sum = _mm_cvtss_f32(_mm_hadd_ps(h, h));
        for v in &mut x[n8..] {
            *v = exp_neg(*v - max);
            sum += *v;
        }
        let sv = _mm256_set1_ps(sum);
        for i in (0..n8).step_by(8) {
            _mm256_storeu_ps(p.add(i), _mm256_div_ps(_mm256_loadu_ps(p.add(i)), sv));
        }
        for v in &mut x[n8..] {
            *v /= sum;
        }
    }

    /// Lanes `[l0+l4, l1+l5, l2+l6, l3+l7]` of an eight-lane sum.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn fold4(acc: __m256) -> __m128 {
        _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1))
    }

    /// The dots of `q` with the keys of positions `p..p + 8`, folded as [`super::dot`] folds
    /// them: `[[d_p .. d_p+3], [d_p+4 .. d_p+7]]`.
    ///
    /// # Safety
    /// AVX2; the eight keys lie within the cache.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn scores8(
        qp: *const f32,
        kp: *const f32,
        hd: usize,
        stride: usize,
        offset: usize,
        p: usize,
    ) -> [__m128; 2] {
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in (0..hd).step_by(8) {
            let qv = _mm256_loadu_ps(qp.add(i));
            for (j, a) in acc.iter_mut().enumerate() {
                let k = _mm256_loadu_ps(kp.add((p + j) * stride + offset + i));
                *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, k));
            }
        }
        let f = |a: &[__m256]| {
            let h01 = _mm_hadd_ps(fold4(a[0]), fold4(a[1]));
            let h23 = _mm_hadd_ps(fold4(a[2]), fold4(a[3]));
            _mm_hadd_ps(h01, h23)
        };
        [f(&acc[..4]), f(&acc[4..])]
    }

    /// # Safety
    /// AVX2 is available and `q.len()` is a multiple of 8.
    #[target_feature(enable = "avx2")]
    pub unsafe fn head(q: &[f32], c: Cache, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        let hd = q.len();
        let n = scores.len();
        assert!(hd.is_multiple_of(8) && out.len() == hd);
        if n > 0 {
            // Every position read below lies within both caches.
            let last = (n - 1) * c.stride + c.offset + hd;
            assert!(c.keys.len() >= last && c.values.len() >= last);
        }
        let (qp, kp, vp) = (q.as_ptr(), c.keys.as_ptr(), c.values.as_ptr());
        let sc = _mm_set1_ps(scale);
        // Scores, eight then four positions at a time: independent add chains (one chain
        // per position is bound by the add latency).
        let mut p = 0;
        while p + 8 <= n {
            let d = scores8(qp, kp, hd, c.stride, c.offset, p);
            _mm_storeu_ps(scores.as_mut_ptr().add(p), _mm_mul_ps(d[0], sc));
            _mm_storeu_ps(scores.as_mut_ptr().add(p + 4), _mm_mul_ps(d[1], sc));
            p += 8;
        }
        while p + 4 <= n {
            let mut acc = [_mm256_setzero_ps(); 4];
            for i in (0..hd).step_by(8) {
                let qv = _mm256_loadu_ps(qp.add(i));
                for (j, a) in acc.iter_mut().enumerate() {
                    let k = _mm256_loadu_ps(kp.add((p + j) * c.stride + c.offset + i));
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, k));
                }
            }
            // hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3]: twice gives each position's
            // (s0 + s1) + (s2 + s3), the scalar fold.
            let h01 = _mm_hadd_ps(fold4(acc[0]), fold4(acc[1]));
            let h23 = _mm_hadd_ps(fold4(acc[2]), fold4(acc[3]));
            let d = _mm_hadd_ps(h01, h23);
            _mm_storeu_ps(scores.as_mut_ptr().add(p), _mm_mul_ps(d, sc));
            p += 4;
        }
        for (j, s) in scores.iter_mut().enumerate().skip(p) {
            let mut acc = _mm256_setzero_ps();
            for i in (0..hd).step_by(8) {
                let k = _mm256_loadu_ps(kp.add(j * c.stride + c.offset + i));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(qp.add(i)), k));
            }
            let s4 = fold4(acc);
            let h = _mm_hadd_ps(s4, s4);
            *s = _mm_cvtss_f32(_mm_hadd_ps(h, h)) * scale;
        }
        softmax(scores);
        // Weighted values: eight output lanes per register, positions in order.
        let op = out.as_mut_ptr();
        let mut i = 0;
        // 64 lanes per pass: eight independent add chains, each position's weight broadcast
        // once for all of them.
        while i + 64 <= hd {
            let mut o = [_mm256_setzero_ps(); 8];
            for (pos, &a) in scores.iter().enumerate() {
                let av = _mm256_set1_ps(a);
                let base = vp.add(pos * c.stride + c.offset + i);
                for (j, o) in o.iter_mut().enumerate() {
                    *o = _mm256_add_ps(*o, _mm256_mul_ps(av, _mm256_loadu_ps(base.add(8 * j))));
                }
            }
            for (j, o) in o.iter().enumerate() {
                _mm256_storeu_ps(op.add(i + 8 * j), *o);
            }
            i += 64;
        }
        while i < hd {
            let w = (hd - i).min(32) / 8;
            let mut o = [_mm256_setzero_ps(); 4];
            for (pos, &a) in scores.iter().enumerate() {
                let av = _mm256_set1_ps(a);
                let base = vp.add(pos * c.stride + c.offset + i);
                for (j, o) in o.iter_mut().enumerate().take(w) {
                    *o = _mm256_add_ps(*o, _mm256_mul_ps(av, _mm256_loadu_ps(base.add(8 * j))));
                }
            }
            for (j, o) in o.iter().enumerate().take(w) {
                _mm256_storeu_ps(op.add(i + 8 * j), *o);
            }
            i += 8 * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn avx2_attention_matches_the_reference_bit_for_bit(
            hd8 in 1usize..=20,
            positions in 1usize..40,
            heads in 1usize..4,
            head in 0usize..4,
            seed in any::<u64>(),
        ) {
            let hd = hd8 * 8;
            let head = head % heads;
            let stride = heads * hd;
            let mut rng = crate::sample::Rng::new(seed);
            let mut vals = |n: usize| -> Vec<f32> {
                (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 8.0).collect()
            };
            let q = vals(hd);
            let keys = vals(positions * stride);
            let values = vals(positions * stride);
            let cache = Cache { keys: &keys, values: &values, stride, offset: head * hd };
            let scale = 1.0 / (hd as f32).sqrt();
            let (mut s1, mut s2) = (vec![0f32; positions], vec![0f32; positions]);
            let (mut o1, mut o2) = (vec![0f32; hd], vec![0f32; hd]);
            head_scalar(&q, cache, scale, &mut s1, &mut o1);
            super::head(&q, cache, scale, &mut s2, &mut o2);
            prop_assert_eq!(s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            s2.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            prop_assert_eq!(o1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            o2.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn exp_neg_is_within_two_ulps_of_exp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (got, want) = (exp_neg(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_neg(f32::NAN).is_nan());
    }

    #[test]
    fn dot_handles_a_tail() {
        let a: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..11).map(|i| (i * i) as f32).sum::<f32>());
    }
}
