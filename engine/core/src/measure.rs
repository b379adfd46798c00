//! Measurement helpers shared by `bitnet bench` and the kernel benchmarks: the median of
//! repeated timings, this machine's memory read bandwidth (the roofline a matmul is judged
//! against) and the CPU's name.

use std::time::Instant;

/// The median (the mean of the middle two for an even count); NaN for no values.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Memory read bandwidth in bytes/s with `threads` threads, each summing its share of a
/// `len`-byte buffer with the widest loads this CPU has and several independent accumulators
/// (a plain scalar sum reads far below what the matmul kernels reach); the best of `passes`.
pub fn read_bandwidth(threads: usize, len: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    // Written first: untouched pages would all map the shared zero page.
    let buf: Vec<u64> = (0..len / 8).map(|i| i as u64).collect();
    let chunk = buf.len().div_ceil(threads).div_ceil(16) * 16;
    let mut best = 0f64;
    for _ in 0..passes {
        let t0 = Instant::now();
        let sum = std::thread::scope(|s| {
            let parts: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || sum_words(std::hint::black_box(part))))
                .collect();
            parts
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max(len as f64 / secs.max(1e-9));
    }
    best
}

/// The wrapping sum of `v`: AVX2, four 256-bit accumulators, where the CPU has it.
fn sum_words(v: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        return unsafe { sum_words_avx2(v) };
    }
    v.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_words_avx2(v: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut blocks = v.chunks_exact(16);
    for b in &mut blocks {
        let p = b.as_ptr() as *const __m256i;
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(k)));
        }
    }
    let mut lanes = [0u64; 16];
    for (k, a) in acc.iter().enumerate() {
        _mm256_storeu_si256(lanes.as_mut_ptr().add(4 * k) as *mut __m256i, *a);
    }
    lanes
        .iter()
        .chain(blocks.remainder())
        .fold(0u64, |a, &x| a.wrapping_add(x))
}

/// The CPU's model name (`/proc/cpuinfo`), or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
