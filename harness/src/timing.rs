//! Side-by-side timing of the engine and the reference on the same file in the same process:
//! prompt processing (prefill) and one-token generation, per thread count. Each figure is the
//! median of `repeats` runs; ratios are ours / reference (higher is faster).

use bitnet::model::{Model, State};
use bitnet_crossval::RefModel;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub threads: usize,
    pub prefill_tokens: usize,
    pub gen_tokens: usize,
    pub ours_prefill_tps: f64,
    pub ref_prefill_tps: f64,
    pub ours_gen_tps: f64,
    pub ref_gen_tps: f64,
    pub prefill_ratio: f64,
    pub gen_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn tps(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Prompt token ids: a fixed, valid pattern (the content does not change the cost).
fn prompt(vocab: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (1 + (i * 7919) % (vocab - 1)) as u32)
        .collect()
}

pub fn run(
    path: &Path,
    threads: &[usize],
    prefill: usize,
    gen: usize,
    repeats: usize,
) -> Result<Vec<Row>, String> {
    let mut model = Model::load(path).map_err(|e| e.to_string())?;
    let ctx = prefill + gen + 1;
    if ctx > model.config.context_length {
        return Err(format!(
            "{prefill} + {gen} tokens exceed the context length {}",
            model.config.context_length
        ));
    }
    let mut reference = RefModel::load(path, ctx, 1).map_err(|e| e.to_string())?;
    let tokens = prompt(model.config.vocab_size, prefill + gen);
    let mut rows = Vec::new();
    for &t in threads {
        model.threads = t;
        reference.set_threads(t);
        let (mut op, mut rp, mut og, mut rg) = (vec![], vec![], vec![], vec![]);
        for _ in 0..repeats.max(1) {
            let mut state = State::new(&model.config);
            let t0 = Instant::now();
            model
                .forward(&mut state, &tokens[..prefill], false)
                .map_err(|e| e.to_string())?;
            op.push(tps(prefill, t0.elapsed()));
            let t0 = Instant::now();
            for &tok in &tokens[prefill..] {
                model
                    .forward(&mut state, &[tok], false)
                    .map_err(|e| e.to_string())?;
            }
            og.push(tps(gen, t0.elapsed()));

            reference.reset();
            let (_, d) = reference
                .append_timed(&tokens[..prefill], true)
                .map_err(|e| e.to_string())?;
            rp.push(tps(prefill, d));
            let mut total = Duration::ZERO;
            for &tok in &tokens[prefill..] {
                total += reference
                    .append_timed(&[tok], true)
                    .map_err(|e| e.to_string())?
                    .1;
            }
            rg.push(tps(gen, total));
        }
        let (op, rp, og, rg) = (median(op), median(rp), median(og), median(rg));
        rows.push(Row {
            threads: t,
            prefill_tokens: prefill,
            gen_tokens: gen,
            ours_prefill_tps: op,
            ref_prefill_tps: rp,
            ours_gen_tps: og,
            ref_gen_tps: rg,
            prefill_ratio: op / rp,
            gen_ratio: og / rg,
        });
    }
    Ok(rows)
}

pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:>7} {:>14} {:>14} {:>8} {:>14} {:>14} {:>8}\n",
        "threads", "ours pp t/s", "ref pp t/s", "pp x", "ours tg t/s", "ref tg t/s", "tg x"
    );
    for r in rows {
        s += &format!(
            "{:>7} {:>14.2} {:>14.2} {:>8.3} {:>14.2} {:>14.2} {:>8.3}\n",
            r.threads,
            r.ours_prefill_tps,
            r.ref_prefill_tps,
            r.prefill_ratio,
            r.ours_gen_tps,
            r.ref_gen_tps,
            r.gen_ratio
        );
    }
    s
}
