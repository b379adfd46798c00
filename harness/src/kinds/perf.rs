//! The `perf` gate kind: speed checked only as ratios measured in one run (ours against the
//! reference, AVX2 against scalar), never as absolute times, which on a shared 2-core machine
//! are noise. Every ratio is a median over interleaved repeats.
//!
//! `inputs.bench = "model"` runs `bitnet-validate timing` (that is,
//! `bitnet bench --vs-reference`) on the gate's model in a child process, so the peak RSS it
//! reports is that run's alone. Inputs `prompt`, `gen`, `threads` (array), `repeats`,
//! `also_2024` (bool). Measurements per thread count N: `prefill_ratio_tN`, `gen_ratio_tN`
//! (ours / the January-2026 BitNet.cpp tokens per second), with `also_2024` also
//! `prefill_ratio_2024_tN`, `gen_ratio_2024_tN` (ours / BitNet.cpp 0.0.5); and `peak_rss_within_bound` (peak <= file + KV cache + 64 MiB) with
//! `peak_rss_of_bound` (peak / bound).
//!
//! `inputs.bench = "kernel"` times I2_S products of a `rows` x `cols` random matrix on one
//! thread: ours in process, the January-2026 BitNet.cpp's ggml mul_mat in a `ref2026 matmul`
//! child that times its own calls. Inputs `rows`, `cols`, `tokens` (array), `repeats`,
//! `min_ms` (time per measurement), `also_2024`. Measurements: `avx2_speedup` (scalar time /
//! AVX2 time, one token) and, per token count N, `vs_ref_nN` (the 2026 reference's time / ours
//! with the best ISA of this CPU), with `also_2024` `vs_2024_nN` (BitNet.cpp 0.0.5's, linked
//! in process).
//!
//! Both report `checked_build`: whether this harness (and so the engine it times) was built
//! with debug assertions, as `cargo test` builds it, which makes the engine markedly slower.

use crate::gates::spec::{PerfInputs, PerfKernelInputs, PerfModelInputs};
use crate::gates::{Job, Measured, RunError};
use crate::i2s::i2s_weight;
use bitnet::measure::median;
use bitnet::quant::i2s;
use bitnet::quant::matmul::{Isa, KernelStats};
use bitnet::sample::Rng;
use serde_json::{json, Map, Value as Json};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn run(job: &Job, inputs: &PerfInputs) -> Result<Measured, RunError> {
    match inputs {
        PerfInputs::Model(m) => model(job, m),
        PerfInputs::Kernel(k) => kernel(k),
    }
}

/// The `bitnet-validate` binary: this process, or beside the test binary that runs the gates.
fn validate_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let name = format!("bitnet-validate{}", std::env::consts::EXE_SUFFIX);
    if exe.file_name().is_some_and(|n| n == name.as_str()) {
        return Ok(exe);
    }
    let dir = exe.parent().ok_or("the executable has no directory")?;
    [dir.join(&name), dir.join("..").join(&name)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} not found beside {}", exe.display()))
}

fn model(job: &Job, inputs: &PerfModelInputs) -> Result<Measured, RunError> {
    let path = job.model_path()?;
    let PerfModelInputs {
        prompt,
        gen,
        ref threads,
        repeats,
        also_2024,
    } = *inputs;
    let json_path = job
        .work_dir("reports")?
        .join(format!("{}.bench.json", job.id));
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let out = Command::new(validate_binary()?)
        .arg("timing")
        .arg("-m")
        .arg(path)
        .args(["-p", &prompt.to_string(), "-n", &gen.to_string()])
        .args(["-t", &list(threads), "--repeats", &repeats.to_string()])
        .args(also_2024.then_some("--also-2024"))
        .arg("--json")
        .arg(&json_path)
        .output()
        .map_err(|e| format!("running bitnet-validate timing: {e}"))?;
    if !out.status.success() {
        return Err(RunError::Kind(format!(
            "bitnet-validate timing failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = std::fs::read_to_string(&json_path).map_err(RunError::io(&json_path))?;
    let report: Json = serde_json::from_str(&text)
        .map_err(|e| RunError::kind(format!("{}: {e}", json_path.display())))?;
    let mut m = measurements(&report)?;
    m.measurements["checked_build"] = json!(cfg!(debug_assertions));
    Ok(m)
}

/// The ratios of a `bitnet bench --vs-reference` JSON report.
pub fn measurements(report: &Json) -> Result<Measured, RunError> {
    let bad = |what: &str| format!("bench report without {what}");
    let mut m = Map::new();
    let mut summary = Vec::new();
    for row in report["rows"].as_array().ok_or(bad("rows"))? {
        let t = row["threads"].as_u64().ok_or(bad("threads"))?;
        let p = row["prefill_ratio"].as_f64().ok_or(bad("prefill_ratio"))?;
        let gr = row["gen_ratio"].as_f64().ok_or(bad("gen_ratio"))?;
        m.insert(format!("prefill_ratio_t{t}"), json!(p));
        m.insert(format!("gen_ratio_t{t}"), json!(gr));
        let mut line = format!("{t} thread(s): prefill x{p:.3}, generation x{gr:.3}");
        if let (Some(p), Some(gr)) = (
            row["prefill_ratio_2024"].as_f64(),
            row["gen_ratio_2024"].as_f64(),
        ) {
            m.insert(format!("prefill_ratio_2024_t{t}"), json!(p));
            m.insert(format!("gen_ratio_2024_t{t}"), json!(gr));
            line += &format!(" (vs 0.0.5: x{p:.3}, x{gr:.3})");
        }
        summary.push(line);
    }
    let mem = &report["memory"];
    let (peak, bound) = (
        mem["peak_rss_bytes"]
            .as_f64()
            .ok_or(bad("peak_rss_bytes"))?,
        mem["bound_bytes"].as_f64().ok_or(bad("bound_bytes"))?,
    );
    let within = mem["within_bound"].as_bool().ok_or(bad("within_bound"))?;
    m.insert("peak_rss_within_bound".into(), json!(within));
    m.insert("peak_rss_of_bound".into(), json!(peak / bound));
    summary.push(format!(
        "peak RSS {:.1} of {:.1} MiB bound",
        peak / 1048576.0,
        bound / 1048576.0
    ));
    Ok(Measured::new(
        format!("ours/reference: {}", summary.join("; ")),
        Json::Object(m),
    ))
}

/// Seconds per call: calls `f` (which returns the time it measured) until `min` has passed.
fn per_call(min: Duration, mut f: impl FnMut() -> Result<Duration, String>) -> Result<f64, String> {
    let (mut total, mut calls) = (Duration::ZERO, 0u32);
    while total < min || calls == 0 {
        total += f()?;
        calls += 1;
    }
    Ok(total.as_secs_f64() / calls as f64)
}

fn kernel(inputs: &PerfKernelInputs) -> Result<Measured, RunError> {
    // `Spec::check` holds cols to a positive multiple of 128 and tokens to positive counts at
    // load; the same check here keeps a gate built in code from reaching the kernels.
    let (rows, cols) = (inputs.rows, inputs.cols);
    if rows == 0 || cols == 0 || !cols.is_multiple_of(128) {
        return Err(RunError::Kind(format!(
            "rows {rows} x cols {cols}: cols must be a positive multiple of 128"
        )));
    }
    let tokens = &inputs.tokens;
    let repeats = inputs.repeats.max(1);
    let min = Duration::from_millis(inputs.min_ms.max(1));
    let mut rng = Rng::new(inputs.seed);
    let values: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
    let bytes = i2s::pack(&values, rows, cols, 0.02).map_err(RunError::kind)?;
    let w = i2s_weight(&bytes, rows, cols)?;
    let stats = KernelStats::default();
    let ours = |isa: Isa, x: &[f32], n: usize, out: &mut Vec<f32>| -> Result<Duration, String> {
        let t0 = Instant::now();
        w.matmul_isa(isa, x, n, out, 1, &stats);
        Ok(t0.elapsed())
    };
    let also_2024 = inputs.also_2024;
    // The product users get: the best ISA this CPU has.
    let best = Isa::detect();
    let mut speedups = Vec::new();
    let mut vs_ref: Vec<Vec<f64>> = vec![Vec::new(); tokens.len()];
    let mut vs_2024: Vec<Vec<f64>> = vec![Vec::new(); tokens.len()];
    for _ in 0..repeats {
        for (k, &n) in tokens.iter().enumerate() {
            let x: Vec<f32> = (0..n * cols)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                .collect();
            let mut out = vec![0f32; n * rows];
            let avx2 = per_call(min, || ours(Isa::Avx2, &x, n, &mut out))?;
            if n == 1 {
                let scalar = per_call(min, || ours(Isa::Scalar, &x, n, &mut out))?;
                speedups.push(scalar / avx2);
            }
            let ours_best = per_call(min, || ours(best, &x, n, &mut out))?;
            // The 2026 fork's ggml mul_mat in a child: as many calls as ours made in `min`,
            // at least 3; the first (work buffer, page faults) is not counted.
            let calls = ((min.as_secs_f64() / ours_best).ceil() as usize).clamp(3, 1000);
            let (_, secs) = bitnet_crossval::ref2026::i2s_matmul_timed(
                &bytes,
                rows,
                cols,
                &x,
                n,
                1,
                calls + 1,
            )?;
            let reference = secs[1..].iter().sum::<f64>() / calls as f64;
            vs_ref[k].push(reference / ours_best);
            if also_2024 {
                let old = per_call(min, || {
                    bitnet_crossval::i2s_matmul_timed(&bytes, rows, cols, &x, n, 1)
                        .map(|(_, d)| d)
                        .map_err(|e| e.to_string())
                })?;
                vs_2024[k].push(old / ours_best);
            }
        }
    }
    let mut m = Map::new();
    m.insert("checked_build".into(), json!(cfg!(debug_assertions)));
    let mut summary = Vec::new();
    if !speedups.is_empty() {
        let s = median(&speedups);
        m.insert("avx2_speedup".into(), json!(s));
        summary.push(format!("AVX2/scalar x{s:.2}"));
    }
    for (k, &n) in tokens.iter().enumerate() {
        let r = median(&vs_ref[k]);
        m.insert(format!("vs_ref_n{n}"), json!(r));
        let mut line = format!("{n} token(s) ours ({})/2026 x{r:.3}", best.name());
        if also_2024 {
            let o = median(&vs_2024[k]);
            m.insert(format!("vs_2024_n{n}"), json!(o));
            line += &format!(" (/0.0.5 x{o:.3})");
        }
        summary.push(line);
    }
    Ok(Measured::new(
        format!(
            "I2_S {cols}x{rows}, 1 thread, median of {repeats}: {}",
            summary.join(", ")
        ),
        Json::Object(m),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::GatesFile;
    use std::path::Path;

    /// A perf gate with `inputs` (and a model when `model`), or the loader's error.
    fn load(inputs: &str, model: bool) -> Result<GatesFile, String> {
        let text = format!(
            "[[gate]]\nid = \"p\"\nkind = \"perf\"\ninputs = {{ {inputs} }}\n{}",
            if model {
                "model = { source = \"llama2c\" }\n"
            } else {
                ""
            }
        );
        GatesFile::parse(&text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_perf_gates_are_errors() {
        for (inputs, model, want) in [
            ("bench = \"vibes\"", true, "unknown variant `vibes`"),
            ("bench = \"model\"", false, "needs a model"),
            ("", true, "missing field `bench`"),
            ("bench = \"kernel\"", true, "reads no model"),
            ("bench = \"kernel\", cols = 100", false, "multiple of 128"),
            (
                "bench = \"kernel\", tokens = [0]",
                false,
                "positive integers",
            ),
            ("bench = \"model\", threads = []", true, "positive integers"),
            ("bench = \"model\", rows = 64", true, "unknown field `rows`"),
            ("bench = \"kernel\", gen = 8", false, "unknown field `gen`"),
        ] {
            let e = load(inputs, model).unwrap_err();
            assert!(e.contains(want), "{inputs:?}: {e}");
            assert!(e.contains("gate p"), "{inputs:?}: {e}");
        }
        let f = load(
            "bench = \"kernel\", tokens = [1, 16], also_2024 = true",
            false,
        )
        .unwrap();
        assert_eq!(
            f.gates[0].spec,
            crate::gates::Spec::Perf(PerfInputs::Kernel(PerfKernelInputs {
                rows: 6912,
                cols: 2560,
                tokens: vec![1, 16],
                repeats: 7,
                min_ms: 20,
                seed: 1,
                also_2024: true,
            }))
        );
    }

    #[test]
    fn the_schema_knows_perf_gates() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("schemas/gates.schema.json")).unwrap();
        let v = jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap();
        let model = json!({"source": "llama2c"});
        let ok = |g: Json| v.is_valid(&json!({ "gate": [g] }));
        assert!(ok(
            json!({"id": "a", "kind": "perf", "model": model, "inputs": {"bench": "model"}})
        ));
        assert!(ok(
            json!({"id": "a", "kind": "perf", "inputs": {"bench": "kernel"}})
        ));
        assert!(
            !ok(json!({"id": "a", "kind": "perf", "model": model})),
            "bench is required"
        );
        assert!(
            !ok(json!({"id": "a", "kind": "perf", "inputs": {"bench": "model"}})),
            "a model gate needs a model"
        );
        assert!(!ok(
            json!({"id": "a", "kind": "perf", "model": model, "inputs": {"bench": "vibes"}})
        ));
        assert!(!ok(
            json!({"id": "a", "kind": "perf", "model": model, "inputs": {"bench": "model", "rows": 1}})
        ));
    }

    #[test]
    fn ratios_from_a_bench_report() {
        let report = json!({
            "rows": [{"threads": 1, "prefill_ratio": 0.9, "gen_ratio": 1.1}],
            "memory": {"peak_rss_bytes": 50.0, "bound_bytes": 100.0, "within_bound": true}
        });
        let m = measurements(&report).unwrap().measurements;
        assert_eq!(m["prefill_ratio_t1"], json!(0.9));
        assert_eq!(m["gen_ratio_t1"], json!(1.1));
        assert_eq!(m["peak_rss_within_bound"], json!(true));
        assert_eq!(m["peak_rss_of_bound"], json!(0.5));
        let no_reference = json!({
            "rows": [{"threads": 1, "prefill_ratio": null, "gen_ratio": null}],
            "memory": {}
        });
        assert!(measurements(&no_reference).is_err());
    }
}
