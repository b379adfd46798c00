//! The `bitnet` binary end to end: logits files, tokenize, inspect, synth, exit codes.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use common::*;
use std::path::Path;

#[test]
fn logits_file_has_the_documented_layout_and_seq_equals_batch() {
    let model = converted("i2_s", "f32");
    let mut files = Vec::new();
    for mode in ["seq", "batch"] {
        let out = tmp(&format!("logits-{mode}-{}.bin", std::process::id()));
        let st = bitnet()
            .args(["logits", "-m"])
            .arg(&model)
            .args(["--tokens", "1,403,407,261,378", "--mode", mode, "-o"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        files.push(read_logits(&out));
    }
    let (n, v, seq) = &files[0];
    assert_eq!((*n, *v), (5, 512));
    // The batch path performs the same operations per row, in the same order: bit-identical.
    assert_eq!(
        seq.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        files[1].2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    // And equal to the library's own teacher-forced logits.
    let m = bitnet::model::Model::load(&model).unwrap();
    let lib = bitnet::eval::teacher_forced_logits(
        &mut bitnet::session::Session::new(&m),
        &[1, 403, 407, 261, 378],
        bitnet::eval::Mode::Seq,
    )
    .unwrap();
    assert_eq!(&lib, seq);
}

#[test]
fn tokenize_prints_ids_with_bos() {
    let model = converted("i2_s", "f32");
    let out = bitnet()
        .args(["tokenize", "-m"])
        .arg(&model)
        .arg("Once upon a time")
        .output()
        .unwrap();
    assert!(out.status.success());
    let ids: Vec<u32> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids[0], 1, "BOS first");
    assert!(ids.len() >= 4);
}

#[test]
fn inspect_shows_a_verdict_for_a_valid_model() {
    let model = converted("i2_s", "f16");
    let out = bitnet().arg("inspect").arg(&model).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("verdict: loadable bitnet model: 8 layers"),
        "{s}"
    );
    assert!(s.contains("blk.0.attn_q.weight") && s.contains("I2_S"));
    assert!(s.contains("token_embd.weight") && s.contains("F16"));
}

#[test]
fn synth_is_deterministic_and_loads() {
    let vocab = shared("tokenizers/ggml-vocab-llama-spm.gguf");
    let make = |seed: &str, name: &str| {
        let out = tmp(&format!("synth-{name}-{}.gguf", std::process::id()));
        let st = bitnet()
            .args(["synth", "--preset", "tiny", "--seed", seed, "--vocab"])
            .arg(&vocab)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        out
    };
    let (a, b, c) = (make("7", "a"), make("7", "b"), make("8", "c"));
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "same seed, same bytes");
    assert_ne!(bytes(&a), bytes(&c), "different seed, different weights");
    let out = bitnet().arg("inspect").arg(&a).output().unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("4 layers, hidden 256, heads 8/2 kv, FFN 640 (silu), vocab 32000"),
        "{s}"
    );
    let out = bitnet()
        .args(["run", "-m"])
        .arg(&a)
        .args(["-p", "Hello", "-n", "8", "--temp", "0", "--ignore-eos"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_codes_distinguish_usage_io_and_bad_input() {
    let model = converted("i2_s", "f32");
    let code = |args: &[&str]| {
        let out = bitnet().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        out.status.code()
    };
    let m = model.to_str().unwrap();
    assert_eq!(
        code(&["run", "-m", m, "--top-p", "2"]),
        Some(2),
        "bad sampling parameter"
    );
    assert_eq!(code(&["run", "--bogus"]), Some(2), "unknown flag");
    assert_eq!(
        code(&["inspect", "/nonexistent/model.gguf"]),
        Some(1),
        "missing file is an I/O failure"
    );
    let garbage = tmp(&format!("garbage-{}.bin", std::process::id()));
    std::fs::write(&garbage, vec![7u8; 1000]).unwrap();
    let g = garbage.to_str().unwrap();
    let tokm = shared("models/bitllama2c-3m/tokenizer.model");
    let out = tmp("never-written.gguf");
    assert_eq!(
        code(&[
            "convert",
            "llama2c",
            g,
            "--tokenizer",
            tokm.to_str().unwrap(),
            "-o",
            out.to_str().unwrap()
        ]),
        Some(3)
    );
    assert!(!out.exists(), "no partial output left behind");
    assert_eq!(
        code(&[
            "logits",
            "-m",
            m,
            "--tokens",
            "1,99999",
            "-o",
            out.to_str().unwrap()
        ]),
        Some(3),
        "token out of range"
    );
}

/// `bitnet run` of "Once upon a time", `n` greedy tokens, with `flags` before the model and a
/// receipt written to a scratch file named after `name`: the output and the receipt.
fn run_with_receipt(
    model: &Path,
    flags: &[&str],
    n: u32,
    name: &str,
) -> (std::process::Output, serde_json::Value) {
    let path = tmp(&format!("{name}-{}.json", std::process::id()));
    let out = bitnet()
        .arg("run")
        .args(flags)
        .arg("-m")
        .arg(model)
        .args([
            "-p",
            "Once upon a time",
            "-n",
            &n.to_string(),
            "--temp",
            "0",
        ])
        .arg("--receipt")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (out, doc)
}

#[test]
fn run_writes_a_receipt_whose_kernel_counts_match_the_model_shape() {
    let model = converted("i2_s", "f32");
    let (_, doc) = run_with_receipt(&model, &[], 12, "receipt");
    assert_eq!(
        doc["digest"],
        bitnet::receipt::content_digest(&doc).as_str(),
        "digest covers the written document"
    );
    // Kernels by family (the implementation suffix depends on the CPU).
    let kernel = |family: &str| {
        let ks = doc["kernels"].as_array().unwrap();
        let k = ks
            .iter()
            .find(|k| k["id"].as_str().unwrap().starts_with(family))
            .cloned();
        k.unwrap_or_else(|| panic!("no {family} kernel in {ks:?}"))
    };
    let (prompt, steps) = (
        doc["run"]["prompt_tokens"].as_u64().unwrap(),
        doc["run"]["decode_steps"].as_u64().unwrap(),
    );
    assert_eq!(doc["run"]["generated_tokens"], 12);
    assert_eq!(steps, 11, "the last generated token is not evaluated");
    // 8 layers x 7 ternary matrices; per token 8 * (q,o: 256x256; k,v: 128x256; gate,up,down: 256x256).
    let per_token = 8 * (2 * 256 * 256 + 2 * 128 * 256 + 3 * 256 * 256);
    assert_eq!(kernel("i2s_gemm_")["calls"], 56);
    assert_eq!(kernel("i2s_gemm_")["elements"], prompt * per_token);
    assert_eq!(kernel("i2s_gemv_")["calls"], 56 * steps);
    assert_eq!(kernel("i2s_gemv_")["elements"], steps * per_token);
    assert_eq!(kernel("f32_gemv_")["calls"], 1 + steps);
    assert_eq!(kernel("f32_gemv_")["elements"], (1 + steps) * 512 * 256);
    assert_eq!(
        doc["model_info"]["sha256"],
        bitnet::receipt::sha256_file(&model).unwrap().as_str()
    );
}

#[test]
fn bench_prints_a_table_and_writes_json_with_the_rss_bound() {
    let model = converted("i2_s", "f32");
    let json = tmp(&format!("bench-{}.json", std::process::id()));
    let out = bitnet()
        .args(["bench", "-m"])
        .arg(&model)
        .args("-p 8 -n 4 -t 1,2 --repeats 1 --parallel 3 --json".split(' '))
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains(
            "| threads | prefill t/s | generation t/s | read GB/s | roofline t/s | of roofline | generation t/s, 3 sequences | batched/single |"
        ),
        "{table}"
    );
    assert!(
        table.contains("roofline:") && table.contains(" on "),
        "{table}"
    );
    assert!(table.contains("peak RSS"), "{table}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["threads"].as_u64(), rows[1]["threads"].as_u64()),
        (Some(1), Some(2))
    );
    for row in rows {
        assert_eq!(row["ours"]["prefill_runs"].as_array().unwrap().len(), 1);
        assert!(row["ours"]["gen_tps"].as_f64().unwrap() > 0.0);
        assert!(row["reference"].is_null() && row["gen_ratio"].is_null());
        let (single, batched) = (
            row["ours"]["gen_tps"].as_f64().unwrap(),
            row["parallel_gen_tps"].as_f64().unwrap(),
        );
        let ratio = row["parallel_ratio"].as_f64().unwrap();
        assert!((ratio - batched / single).abs() < 1e-9, "{row}");
        // The roofline: measured bandwidth over the bytes a token reads.
        let (gbs, roof) = (
            row["read_gbs"].as_f64().unwrap(),
            row["roofline_gen_tps"].as_f64().unwrap(),
        );
        let bytes = r["bytes_per_token"].as_f64().unwrap();
        assert!(
            gbs > 0.1 && (roof - gbs * 1e9 / bytes).abs() < 1e-6 * roof,
            "{row}"
        );
        assert!((row["gen_of_roofline"].as_f64().unwrap() - single / roof).abs() < 1e-9);
    }
    assert_eq!(r["parallel"].as_u64(), Some(3));
    let m = &r["memory"];
    let file = std::fs::metadata(&model).unwrap().len();
    assert_eq!(m["file_bytes"].as_u64(), Some(file));
    // 3 sequences x 12 positions x 8 layers x (keys + values) x kv_dim 128 (4 KV heads of 32)
    // x f32.
    let kv = 3 * 12 * 8 * 2 * 128 * 4;
    assert_eq!(m["kv_cache_bytes"].as_u64(), Some(kv));
    assert_eq!(m["bound_bytes"].as_u64(), Some(file + kv + (64 << 20)));
    assert_eq!(m["within_bound"].as_bool(), Some(true));
}

#[test]
fn bench_rejects_bad_options_and_a_missing_reference_with_exit_2() {
    let model = converted("i2_s", "f32");
    let run = |args: &str| {
        let out = bitnet()
            .args(["bench", "-m"])
            .arg(&model)
            .args(args.split(' '))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    for bad in ["-t 0", "--repeats 0", "-n 0", "-p 100000", "--parallel 0"] {
        let (code, err) = run(bad);
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
    }
    let (code, err) = run("-p 4 -n 2 -t 1 --repeats 1 --vs-reference");
    if bitnet_cli::bench::REFERENCE_AVAILABLE {
        assert_eq!(code, Some(0), "{err}");
    } else {
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("--features reference"), "{err}");
    }
}

#[test]
fn a_closed_pipe_ends_inspect_quietly() {
    use std::process::Stdio;
    let model = converted("i2_s", "f32");
    // Its stdout is a pipe whose reader is gone before it starts (`| head -0`).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = bitnet()
        .args(["inspect"])
        .arg(&model)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc_sigpipe()),
            "{:?}",
            out.status
        );
    }
}

#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

/// Microsoft's published 2B-4T GGUF layout (no `tokenizer.ggml.pre`, `bitnet-b1.58.*` keys,
/// the converter's placeholder template) loads in every command; the LLaMA-3 vocabulary is
/// recognised by its fingerprint and said so on stderr; tokenization equals llama.cpp's
/// `llama-bpe` vectors; an unrecognised vocabulary is exit 3 naming `--tokenizer-pre`.
#[test]
fn the_published_2b4t_layout_runs_in_every_command() {
    let (src, published) = published_synth("cli");
    let id = std::process::id();

    let out = bitnet().arg("inspect").arg(&published).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        so.contains("general.architecture = \"bitnet-b1.58\""),
        "{so}"
    );
    assert!(so.contains("pre-tokenizer: llama-bpe (inferred"), "{so}");
    assert!(so.contains("output head: tied"), "{so}");
    assert!(
        so.contains("chat template: BitNet's converter placeholder"),
        "{so}"
    );
    assert!(so.contains("(relu2)"), "{so}");

    // Tokenization equals llama.cpp's vectors (no BOS, special text as plain text).
    let inp = std::fs::read_to_string(shared("tokenizers/ggml-vocab-llama-bpe.gguf.inp")).unwrap();
    let outp = std::fs::read_to_string(shared("tokenizers/ggml-vocab-llama-bpe.gguf.out")).unwrap();
    let cases: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let mut checked = 0;
    for (text, want) in cases.iter().zip(outp.lines()) {
        // Arguments cannot carry NUL or start like a flag; the library test covers them all.
        if text.is_empty() || text.contains('\0') || text.starts_with('-') {
            continue;
        }
        let out = bitnet()
            .args(["tokenize", "--no-bos", "-m"])
            .arg(&published)
            .arg(text)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        let got: Vec<&str> = got
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect();
        let want: Vec<&str> = want.split_whitespace().collect();
        assert_eq!(got, want, "{text:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no tokenizer.ggml.pre") && err.contains("llama-bpe"),
            "{err}"
        );
        checked += 1;
        if checked == 12 {
            break;
        }
    }
    assert_eq!(checked, 12);

    let out = bitnet()
        .args(["run", "-m"])
        .arg(&published)
        .args(["-p", "Hello", "-n", "6", "--temp", "0", "--ignore-eos"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logits = tmp(&format!("published-logits-{id}.bin"));
    let st = bitnet()
        .args(["logits", "-m"])
        .arg(&published)
        .args(["--tokens", "128000,9906,1917", "-o"])
        .arg(&logits)
        .status()
        .unwrap();
    assert!(st.success());
    let (n, v, data) = read_logits(&logits);
    assert_eq!((n, v), (3, 128256));
    assert!(data.iter().all(|x| x.is_finite()));

    // Not LLaMA-3's vocabulary (a merge dropped): refused with the override named; naming it
    // works.
    let odd = tmp(&format!("published-odd-vocab-{id}.gguf"));
    published_layout(&src, &odd, &|k, v| match (k, &v) {
        ("tokenizer.ggml.merges", bitnet::gguf::Value::Array(_, items)) => {
            Some(bitnet::gguf::Value::strings(
                items[1..].iter().map(|m| m.as_str().unwrap().to_string()),
            ))
        }
        _ => Some(v),
    });
    let out = bitnet()
        .args(["tokenize", "-m"])
        .arg(&odd)
        .arg("Hello")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tokenizer-pre") && err.lines().count() == 1,
        "{err}"
    );
    let out = bitnet()
        .args(["tokenize", "--tokenizer-pre", "llama-bpe", "-m"])
        .arg(&odd)
        .arg("Hello")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn head_q8_0_runs_the_q8_0_kernels_and_is_refused_where_it_means_nothing() {
    let model = converted("i2_s", "f16");
    let (out, doc) = run_with_receipt(&model, &["--head", "q8_0"], 8, "receipt-head");
    assert_eq!(doc["model_info"]["tensor_types"]["output"], "Q8_0");
    assert_eq!(doc["model_info"]["tensor_types"]["token_embd"], "F16");
    let ids: Vec<&str> = doc["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(ids.iter().any(|k| k.starts_with("q8_0_gemv_")), "{ids:?}");
    assert!(!ids.iter().any(|k| k.starts_with("f16_gem")), "{ids:?}");
    // Greedy text with the q8_0 head is the F16 head's on this model (gate head-q8-real
    // bounds the difference on longer text).
    let plain = bitnet()
        .args(["run", "-m"])
        .arg(&model)
        .args(["-p", "Once upon a time", "-n", "8", "--temp", "0"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&out.stdout)
    );
    let m = model.to_str().unwrap();
    for args in [
        vec!["tokenize", "--head", "q8_0", "-m", m, "x"],
        vec!["inspect", "--head", "q8_0", m],
    ] {
        let o = bitnet().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--head applies to"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
