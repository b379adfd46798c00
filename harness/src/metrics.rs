//! Comparison metrics between two logit vectors (reference vs ours), computed in f64.

use serde::{Deserialize, Serialize};

/// How one position's logits compare.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PositionMetrics {
    pub pos: usize,
    pub cosine: f64,
    pub max_abs_diff: f64,
    pub mse: f64,
    /// KL(softmax(ref) || softmax(ours)).
    pub kl: f64,
    pub top1_ref: u32,
    pub top1_ours: u32,
    pub top1_match: bool,
    /// |top5(ref) ∩ top5(ours)| / 5.
    pub top5_overlap: f64,
    /// Reference's top-1 minus top-2 logit.
    pub ref_margin: f64,
}

pub fn compare(pos: usize, reference: &[f32], ours: &[f32]) -> PositionMetrics {
    assert_eq!(reference.len(), ours.len());
    let (mut dot, mut na, mut nb, mut max_d, mut se) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in reference.iter().zip(ours) {
        let (a, b) = (a as f64, b as f64);
        dot += a * b;
        na += a * a;
        nb += b * b;
        let d = (a - b).abs();
        max_d = max_d.max(d);
        se += d * d;
    }
    let cosine = if na == 0.0 || nb == 0.0 {
        if na == nb {
            1.0
        } else {
            0.0
        }
    } else {
        dot / (na.sqrt() * nb.sqrt())
    };
    let lp = log_softmax(reference);
    let lq = log_softmax(ours);
    let kl = lp
        .iter()
        .zip(&lq)
        .map(|(p, q)| p.exp() * (p - q))
        .sum::<f64>()
        .max(0.0);
    let tr = top_k(reference, 5);
    let to = top_k(ours, 5);
    let overlap = tr.iter().filter(|i| to.contains(i)).count() as f64 / tr.len().max(1) as f64;
    let ref_margin = if tr.len() >= 2 {
        (reference[tr[0] as usize] - reference[tr[1] as usize]) as f64
    } else {
        f64::INFINITY
    };
    PositionMetrics {
        pos,
        cosine,
        max_abs_diff: max_d,
        mse: se / reference.len().max(1) as f64,
        kl,
        top1_ref: tr[0],
        top1_ours: to[0],
        top1_match: tr[0] == to[0],
        top5_overlap: overlap,
        ref_margin,
    }
}

pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// Indices of the k largest values, largest first; ties broken by the lower index.
pub fn top_k(x: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..x.len() as u32).collect();
    idx.sort_by(|&a, &b| x[b as usize].total_cmp(&x[a as usize]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_vectors_agree_perfectly() {
        let a = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0];
        let m = compare(0, &a, &a);
        assert!((m.cosine - 1.0).abs() < 1e-12);
        assert_eq!(m.max_abs_diff, 0.0);
        assert!(m.kl.abs() < 1e-12);
        assert!(m.top1_match);
        assert_eq!(m.top5_overlap, 1.0);
        assert!((m.ref_margin - 1.0).abs() < 1e-12);
    }

    #[test]
    fn differences_are_measured() {
        let a = [3.0f32, 1.0, 0.0, 0.0, 0.0, 0.0];
        let b = [1.0f32, 3.0, 0.0, 0.0, 0.0, 0.0];
        let m = compare(0, &a, &b);
        assert!(!m.top1_match);
        assert_eq!(m.max_abs_diff, 2.0);
        assert!(m.kl > 0.5);
        assert!(m.cosine < 0.7);
        assert!(
            (bitnet::eval::nll(&a, 0) - (-(3.0f64) + (3f64.exp() + 1f64.exp() + 4.0).ln())).abs()
                < 1e-9
        );
    }
}
