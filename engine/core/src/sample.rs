//! Token sampling: greedy, temperature, top-k, top-p, min-p and repetition penalty, driven by
//! a small seeded PRNG so a seed gives the same tokens on every run and thread count.
//!
//! The order is llama.cpp's: repetition penalty, top-k, top-p, min-p, temperature, draw.

/// xoshiro256** seeded through splitmix64: fast, portable, and fixed forever (changing it
/// would change every seeded output).
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// 0 (or below) = greedy.
    pub temperature: f32,
    /// 0 = disabled.
    pub top_k: usize,
    /// 1.0 = disabled.
    pub top_p: f32,
    /// 0.0 = disabled.
    pub min_p: f32,
    /// 1.0 = disabled.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerParams {
    pub fn greedy() -> Self {
        SamplerParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() {
            return Err("temperature must be finite".into());
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(format!("top-p {} outside [0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p {} outside [0, 1]", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!(
                "repeat penalty {} must be positive",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    pub params: SamplerParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

/// Index of the largest logit; the lowest index wins ties. NaNs never win (0 when every
/// logit is NaN). The maximum is found with eight running maxima, so it vectorizes, and
/// then its first index.
pub fn argmax(logits: &[f32]) -> u32 {
    let max = |m: f32, v: f32| if v > m { v } else { m };
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| max(m, v));
    for c in chunks {
        for i in 0..8 {
            lanes[i] = max(lanes[i], c[i]);
        }
    }
    m = lanes.into_iter().fold(m, max);
    logits.iter().position(|&v| v == m).unwrap_or(0) as u32
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Self {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
        }
    }

    /// Picks the next token. `history` = every token so far (prompt included).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits_owned;
        let mut logits = logits;
        if p.repeat_penalty != 1.0 && !history.is_empty() {
            logits_owned = logits.to_vec();
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits_owned.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
            logits = &logits_owned;
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, descending; ties by id, so the order is total.
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l)),
        );
        if c.is_empty() {
            return 0;
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);
        // Probabilities at temperature 1 for the top-p / min-p filters (as llama.cpp does).
        let probs = softmax_f64(c, 1.0);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = c.len();
            for (i, &pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let threshold = probs[0] * p.min_p as f64;
            let keep = probs
                .iter()
                .take(c.len())
                .take_while(|&&pr| pr >= threshold)
                .count();
            c.truncate(keep.max(1));
        }
        let probs = softmax_f64(c, p.temperature as f64);
        let r = self.rng.next_f64();
        let mut cum = 0.0;
        for (i, &pr) in probs.iter().enumerate() {
            cum += pr;
            if r < cum {
                return c[i].0;
            }
        }
        c[c.len() - 1].0
    }
}

fn softmax_f64(c: &[(u32, f32)], temp: f64) -> Vec<f64> {
    let max = c[0].1 as f64;
    let e: Vec<f64> = c
        .iter()
        .map(|&(_, l)| ((l as f64 - max) / temp).exp())
        .collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn greedy_is_argmax_with_lowest_index_on_ties() {
        let mut s = Sampler::new(SamplerParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
        assert_eq!(argmax(&[f32::NAN; 11]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    proptest! {
        #[test]
        fn argmax_is_the_first_largest_non_nan(v in prop::collection::vec(
            prop_oneof![(-4i32..4).prop_map(|k| k as f32), prop::num::f32::ANY],
            1..70,
        )) {
            let want = v
                .iter()
                .enumerate()
                .filter(|(_, x)| !x.is_nan())
                .fold(None::<(usize, f32)>, |b, (i, &x)| match b {
                    Some((_, bx)) if x <= bx => b,
                    _ => Some((i, x)),
                })
                .map_or(0, |(i, _)| i);
            prop_assert_eq!(argmax(&v) as usize, want);
        }
    }

    #[test]
    fn seeded_sampling_repeats_and_seeds_differ() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplerParams {
                seed,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                temperature: 1.0,
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.5, 2.0, 1.0];
        let mut s = Sampler::new(SamplerParams {
            top_k: 1,
            temperature: 5.0,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&logits, &[]), 1);
        }
    }

    #[test]
    fn repeat_penalty_demotes_seen_tokens() {
        let logits = [2.0, 1.9, 0.0];
        let mut s = Sampler::new(SamplerParams {
            repeat_penalty: 2.0,
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[0]), 1);
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        // Token 2 is far below min_p * p(top): never drawn.
        let logits = [5.0, 4.5, -10.0];
        let mut s = Sampler::new(SamplerParams {
            min_p: 0.1,
            top_k: 0,
            top_p: 1.0,
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        });
        for _ in 0..200 {
            assert_ne!(s.sample(&logits, &[]), 2);
        }
        let mut s = Sampler::new(SamplerParams {
            top_p: 0.5,
            top_k: 0,
            min_p: 0.0,
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        });
        for _ in 0..200 {
            assert_eq!(s.sample(&logits, &[]), 0);
        }
    }
}
