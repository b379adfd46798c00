//! Logit comparison metrics, the one implementation (the crossval gates, `bitnet-validate
//! crossval` and the reference tests all use it): per position, how a logit vector
//! compares with the reference's (cosine, max |diff|, MSE, KL(ref || ours), top-1 and top-5,
//! the reference's top-2 margin); per sequence, the NLL of the tokens that followed and where
//! greedy generation would have diverged; over positions, the `Summary` a gate judges
//! (minimum and mean cosine, max |diff|, KL mean and max, top-1 agreement overall and over
//! decisive positions, near-ties, top-5 overlap, NLL delta). All in f64.

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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub positions: usize,
    pub cosine_min: f64,
    pub cosine_mean: f64,
    pub max_abs_diff: f64,
    pub mse_mean: f64,
    pub kl_mean: f64,
    pub kl_max: f64,
    pub top1_agreement: f64,
    /// Positions where the reference's top-2 margin is below `near_tie`.
    pub near_ties: usize,
    /// Top-1 agreement over the other (decisive) positions; 1 when there are none.
    pub top1_decisive: f64,
    pub top5_overlap_mean: f64,
    /// First teacher-forced position whose top-1 differs, if any.
    pub first_divergence: Option<usize>,
    pub nll_ref: f64,
    pub nll_ours: f64,
    pub nll_delta: f64,
    /// Greedy generation identical, or diverging only at a near-tie.
    pub greedy_ok: bool,
}

/// The summary of `ms` (one sequence's positions, or several sequences' together).
pub fn summarize(
    ms: &[PositionMetrics],
    nll_ref: f64,
    nll_ours: f64,
    greedy_ok: bool,
    near_tie: f64,
) -> Summary {
    let n = ms.len().max(1) as f64;
    let decisive: Vec<_> = ms.iter().filter(|m| m.ref_margin >= near_tie).collect();
    Summary {
        positions: ms.len(),
        cosine_min: ms.iter().map(|m| m.cosine).fold(f64::INFINITY, f64::min),
        cosine_mean: ms.iter().map(|m| m.cosine).sum::<f64>() / n,
        max_abs_diff: ms.iter().map(|m| m.max_abs_diff).fold(0.0, f64::max),
        mse_mean: ms.iter().map(|m| m.mse).sum::<f64>() / n,
        kl_mean: ms.iter().map(|m| m.kl).sum::<f64>() / n,
        kl_max: ms.iter().map(|m| m.kl).fold(0.0, f64::max),
        top1_agreement: ms.iter().filter(|m| m.top1_match).count() as f64 / n,
        near_ties: ms.len() - decisive.len(),
        top1_decisive: if decisive.is_empty() {
            1.0
        } else {
            decisive.iter().filter(|m| m.top1_match).count() as f64 / decisive.len() as f64
        },
        top5_overlap_mean: ms.iter().map(|m| m.top5_overlap).sum::<f64>() / n,
        first_divergence: ms.iter().find(|m| !m.top1_match).map(|m| m.pos),
        nll_ref,
        nll_ours,
        nll_delta: nll_ours - nll_ref,
        greedy_ok,
    }
}

/// `compare` at every position of two row-major `[positions x v]` logit matrices.
pub fn compare_all(reference: &[f32], ours: &[f32], v: usize) -> Vec<PositionMetrics> {
    (0..reference.len() / v)
        .map(|p| compare(p, &reference[p * v..(p + 1) * v], &ours[p * v..(p + 1) * v]))
        .collect()
}

/// The summed negative log-likelihood of each next token of `seq` under `logits` (one row of
/// `v` per position; the last row predicts nothing).
pub fn nll_sum(logits: &[f32], seq: &[u32], v: usize) -> f64 {
    (0..seq.len().saturating_sub(1))
        .map(|p| super::nll(&logits[p * v..(p + 1) * v], seq[p + 1]))
        .sum()
}

/// Where greedy generation from `theirs` would first leave `seq` after its first
/// `prompt_len` tokens (`seq[p + 1]` was our argmax at `p`), with the reference's margin
/// between its choice and ours; a margin below `near_tie` is a near-tie.
pub fn greedy_divergence(
    theirs: &[f32],
    metrics: &[PositionMetrics],
    seq: &[u32],
    prompt_len: usize,
    v: usize,
    near_tie: f64,
) -> Option<Divergence> {
    (prompt_len.max(1) - 1..seq.len().saturating_sub(1))
        .find(|&p| metrics[p].top1_ref != seq[p + 1])
        .map(|p| {
            let row = &theirs[p * v..(p + 1) * v];
            let margin = (row[metrics[p].top1_ref as usize] - row[seq[p + 1] as usize]) as f64;
            Divergence {
                generated_index: p + 1 - prompt_len,
                position: p,
                ours: seq[p + 1],
                reference: metrics[p].top1_ref,
                ref_margin: margin,
                near_tie: margin < near_tie,
            }
        })
}

/// The first position where greedy generation from the reference leaves our sequence.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Divergence {
    /// Index in the generated continuation (0 = first generated token).
    pub generated_index: usize,
    pub position: usize,
    pub ours: u32,
    pub reference: u32,
    /// Reference logit of its choice minus its logit of ours.
    pub ref_margin: f64,
    pub near_tie: bool,
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
            (crate::eval::nll(&a, 0) - (-(3.0f64) + (3f64.exp() + 1f64.exp() + 4.0).ln())).abs()
                < 1e-9
        );
    }
}
