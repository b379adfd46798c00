//! Cross-validation harness: the reference BitNet b1.58 implementation (Microsoft's BitNet.cpp
//! and its llama.cpp fork, from the pinned crates.io sources of `bitnet-cpp-sys` 0.0.5, compiled
//! by this crate's build script with -O3 -march=native) behind a small safe API.
//! [`RefModel`] loads a GGUF with the reference's libllama and returns the logits of every
//! position; [`i2s_matmul`] multiplies an I2_S matrix through the reference's ggml `mul_mat`.
//! Used by tests to compare the engine with the reference, token by token and bit by bit.
//!
//! Length: ~700 lines, over the house limit on purpose: the safe wrapper of every shim call
//! sits next to the one unsafe call it wraps.

use std::ffi::{c_char, c_int, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;

mod ffi {
    use std::ffi::{c_char, c_double, c_int};

    #[repr(C)]
    pub struct BxModel {
        _private: [u8; 0],
    }

    extern "C" {
        pub fn bx_load(
            path: *const c_char,
            n_ctx: c_int,
            n_threads: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut BxModel;
        pub fn bx_load_vocab(path: *const c_char, err: *mut c_char, err_len: usize)
            -> *mut BxModel;
        pub fn bx_free(m: *mut BxModel);
        pub fn bx_n_vocab(m: *const BxModel) -> c_int;
        pub fn bx_n_ctx(m: *const BxModel) -> c_int;
        pub fn bx_set_threads(m: *mut BxModel, n: c_int) -> c_int;
        pub fn bx_tokenize(
            m: *const BxModel,
            text: *const c_char,
            add_special: c_int,
            parse_special: c_int,
            out: *mut i32,
            cap: c_int,
        ) -> c_int;
        pub fn bx_detokenize(
            m: *const BxModel,
            tokens: *const i32,
            n: c_int,
            remove_special: c_int,
            unparse_special: c_int,
            out: *mut c_char,
            cap: c_int,
        ) -> c_int;
        pub fn bx_reset(m: *mut BxModel);
        pub fn bx_n_past(m: *const BxModel) -> c_int;
        pub fn bx_decode(
            m: *mut BxModel,
            tokens: *const i32,
            n: c_int,
            batch: c_int,
            logits_out: *mut f32,
            seconds: *mut c_double,
        ) -> c_int;
        pub fn bx_decode_last(
            m: *mut BxModel,
            tokens: *const i32,
            n: c_int,
            logits_out: *mut f32,
            seconds: *mut c_double,
        ) -> c_int;
        pub fn bx_i2s_matmul(
            w_i2s: *const u8,
            rows: c_int,
            cols: c_int,
            x: *const f32,
            n: c_int,
            out: *mut f32,
            n_threads: c_int,
            seconds: *mut c_double,
        ) -> c_int;
    }
}

/// Errors from the reference.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error("reference failed to load {path}: {msg}")]
    Load { path: String, msg: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{needed} tokens do not fit the reference's context of {n_ctx}")]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("reference {what} failed with code {code}")]
    Failed { what: &'static str, code: i32 },
}

/// Serialises model loading and context creation (llama.cpp's loader touches process-wide state:
/// logging, backend registration).
static LOAD_LOCK: Mutex<()> = Mutex::new(());

fn c_len(n: usize, what: &str) -> Result<c_int, RefError> {
    c_int::try_from(n).map_err(|_| RefError::Invalid(format!("{what} {n} is too large")))
}

/// A GGUF model loaded by the reference's libllama, with its own context (KV cache).
pub struct RefModel {
    ptr: NonNull<ffi::BxModel>,
    n_vocab: usize,
    n_ctx: usize,
}

// The model and its context are owned exclusively by this value; llama.cpp allows using them
// from any one thread at a time.
unsafe impl Send for RefModel {}

impl Drop for RefModel {
    fn drop(&mut self) {
        // SAFETY: ptr came from bx_load and is freed exactly once.
        unsafe { ffi::bx_free(self.ptr.as_ptr()) }
    }
}

impl std::fmt::Debug for RefModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RefModel(n_vocab {}, n_ctx {})",
            self.n_vocab, self.n_ctx
        )
    }
}

impl RefModel {
    /// Loads `path` with a context of `n_ctx` tokens evaluated by `threads` threads.
    pub fn load(path: &Path, n_ctx: usize, threads: usize) -> Result<Self, RefError> {
        let load_err = |msg: String| RefError::Load {
            path: path.display().to_string(),
            msg,
        };
        let cpath = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| load_err("path contains a NUL byte".into()))?;
        if n_ctx == 0 || threads == 0 {
            return Err(RefError::Invalid(
                "n_ctx and threads must be positive".into(),
            ));
        }
        let mut err = vec![0u8; 2048];
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: valid NUL-terminated path and an error buffer of err.len() bytes.
        let p = unsafe {
            ffi::bx_load(
                cpath.as_ptr(),
                c_len(n_ctx, "n_ctx")?,
                c_len(threads, "threads")?,
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        };
        let Some(ptr) = NonNull::new(p) else {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(load_err(
                String::from_utf8_lossy(&err[..end]).trim().to_string(),
            ));
        };
        // SAFETY: ptr is a live model.
        let (n_vocab, n_ctx) =
            unsafe { (ffi::bx_n_vocab(ptr.as_ptr()), ffi::bx_n_ctx(ptr.as_ptr())) };
        Ok(RefModel {
            ptr,
            n_vocab: n_vocab.max(0) as usize,
            n_ctx: n_ctx.max(0) as usize,
        })
    }

    /// Loads only the vocabulary of `path` (e.g. llama.cpp's vocab-only GGUFs): tokenize and
    /// detokenize work; evaluation returns an error.
    pub fn load_vocab(path: &Path) -> Result<Self, RefError> {
        let load_err = |msg: String| RefError::Load {
            path: path.display().to_string(),
            msg,
        };
        let cpath = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| load_err("path contains a NUL byte".into()))?;
        let mut err = vec![0u8; 2048];
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: valid NUL-terminated path and an error buffer of err.len() bytes.
        let p = unsafe {
            ffi::bx_load_vocab(cpath.as_ptr(), err.as_mut_ptr() as *mut c_char, err.len())
        };
        let Some(ptr) = NonNull::new(p) else {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(load_err(
                String::from_utf8_lossy(&err[..end]).trim().to_string(),
            ));
        };
        // SAFETY: ptr is a live model.
        let n_vocab = unsafe { ffi::bx_n_vocab(ptr.as_ptr()) };
        Ok(RefModel {
            ptr,
            n_vocab: n_vocab.max(0) as usize,
            n_ctx: 0,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// The reference tokenizer (`llama_tokenize`).
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, RefError> {
        let ctext =
            CString::new(text).map_err(|_| RefError::Invalid("text contains a NUL byte".into()))?;
        let mut out = vec![0i32; text.len() + 8];
        for _ in 0..2 {
            // SAFETY: out has out.len() slots.
            let n = unsafe {
                ffi::bx_tokenize(
                    self.ptr.as_ptr(),
                    ctext.as_ptr(),
                    add_special as c_int,
                    parse_special as c_int,
                    out.as_mut_ptr(),
                    c_len(out.len(), "token capacity")?,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out.into_iter().map(|t| t as u32).collect());
            }
            out.resize((-n) as usize, 0);
        }
        Err(RefError::Failed {
            what: "llama_tokenize",
            code: -1,
        })
    }

    /// The reference detokenizer (`llama_detokenize`), lossy for invalid UTF-8.
    pub fn detokenize(
        &self,
        tokens: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Result<String, RefError> {
        let ids = self.check_tokens(tokens)?;
        let mut out = vec![0u8; tokens.len() * 16 + 16];
        for _ in 0..2 {
            // SAFETY: ids has ids.len() tokens, out has out.len() bytes.
            let n = unsafe {
                ffi::bx_detokenize(
                    self.ptr.as_ptr(),
                    ids.as_ptr(),
                    c_len(ids.len(), "token count")?,
                    remove_special as c_int,
                    unparse_special as c_int,
                    out.as_mut_ptr() as *mut c_char,
                    c_len(out.len(), "text capacity")?,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.resize((-n) as usize, 0);
        }
        Err(RefError::Failed {
            what: "llama_detokenize",
            code: -1,
        })
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<Vec<i32>, RefError> {
        tokens
            .iter()
            .map(|&t| {
                if (t as usize) < self.n_vocab {
                    Ok(t as i32)
                } else {
                    Err(RefError::Invalid(format!(
                        "token {t} is outside the vocabulary of {}",
                        self.n_vocab
                    )))
                }
            })
            .collect()
    }

    /// Logits of every position of `tokens` (row-major, `tokens.len() * n_vocab`), from an empty
    /// KV cache, feeding the tokens one at a time (`batch = false`) or as one batch.
    pub fn logits(&mut self, tokens: &[u32], batch: bool) -> Result<Vec<f32>, RefError> {
        Ok(self.logits_timed(tokens, batch)?.0)
    }

    /// [`RefModel::logits`] plus the time spent in the reference.
    pub fn logits_timed(
        &mut self,
        tokens: &[u32],
        batch: bool,
    ) -> Result<(Vec<f32>, Duration), RefError> {
        self.reset();
        self.append_timed(tokens, batch)
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        // SAFETY: live model, exclusive access.
        unsafe { ffi::bx_reset(self.ptr.as_ptr()) }
    }

    /// Tokens currently in the KV cache.
    pub fn n_past(&self) -> usize {
        // SAFETY: live model.
        unsafe { ffi::bx_n_past(self.ptr.as_ptr()) }.max(0) as usize
    }

    /// Evaluates `tokens` after those already in the KV cache; returns their logits.
    pub fn append(&mut self, tokens: &[u32], batch: bool) -> Result<Vec<f32>, RefError> {
        Ok(self.append_timed(tokens, batch)?.0)
    }

    /// [`RefModel::append`] plus the time spent in the reference.
    pub fn append_timed(
        &mut self,
        tokens: &[u32],
        batch: bool,
    ) -> Result<(Vec<f32>, Duration), RefError> {
        self.decode(tokens, batch, false)
    }

    /// Evaluates `tokens` as one batch after those already in the KV cache and returns only the
    /// last token's logits (`n_vocab`), plus the time spent in the reference: prompt processing
    /// as llama-bench measures it (no output projection for the other positions).
    pub fn prefill_timed(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, Duration), RefError> {
        self.decode(tokens, true, true)
    }

    fn decode(
        &mut self,
        tokens: &[u32],
        batch: bool,
        last_only: bool,
    ) -> Result<(Vec<f32>, Duration), RefError> {
        if tokens.is_empty() {
            return Ok((Vec::new(), Duration::ZERO));
        }
        let ids = self.check_tokens(tokens)?;
        let needed = self.n_past() + ids.len();
        if needed > self.n_ctx {
            return Err(RefError::ContextFull {
                needed,
                n_ctx: self.n_ctx,
            });
        }
        let rows = if last_only { 1 } else { ids.len() };
        let mut out = vec![0f32; rows * self.n_vocab];
        let mut secs = 0f64;
        let n = c_len(ids.len(), "token count")?;
        // SAFETY: ids has ids.len() tokens; out has room for the logits of `rows` tokens.
        let code = unsafe {
            if last_only {
                ffi::bx_decode_last(
                    self.ptr.as_ptr(),
                    ids.as_ptr(),
                    n,
                    out.as_mut_ptr(),
                    &mut secs,
                )
            } else {
                ffi::bx_decode(
                    self.ptr.as_ptr(),
                    ids.as_ptr(),
                    n,
                    batch as c_int,
                    out.as_mut_ptr(),
                    &mut secs,
                )
            }
        };
        if code != 0 {
            return Err(RefError::Failed {
                what: "llama_decode",
                code,
            });
        }
        Ok((out, Duration::from_secs_f64(secs)))
    }

    /// Threads for both one-token and batch evaluation.
    pub fn set_threads(&mut self, n: usize) {
        let n = c_int::try_from(n.max(1)).unwrap_or(c_int::MAX);
        // SAFETY: live model, exclusive access.
        unsafe { ffi::bx_set_threads(self.ptr.as_ptr(), n) };
    }
}

/// The reference's I2_S matrix product: `out[t * rows + r] = W[r] . x[t * cols..]`, computed by
/// ggml `mul_mat` of W (I2_S, ne = [cols, rows]) and X (F32, ne = [cols, n]) on `threads`
/// threads. `w` is the packed tensor: `rows * cols / 4` code bytes, the f32 scale, padding to
/// `rows * cols / 4 + 32` bytes. `cols` must be a multiple of 128.
pub fn i2s_matmul(
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    threads: usize,
) -> Result<Vec<f32>, RefError> {
    Ok(i2s_matmul_timed(w, rows, cols, x, n, threads)?.0)
}

/// [`i2s_matmul`] plus the time of the graph computation alone.
pub fn i2s_matmul_timed(
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    threads: usize,
) -> Result<(Vec<f32>, Duration), RefError> {
    if rows == 0 || n == 0 || threads == 0 || cols == 0 || !cols.is_multiple_of(128) {
        return Err(RefError::Invalid(format!(
            "I2_S product needs rows, n, threads > 0 and cols a multiple of 128 (rows {rows}, \
             cols {cols}, n {n}, threads {threads})"
        )));
    }
    if w.len() != rows * cols / 4 + 32 {
        return Err(RefError::Invalid(format!(
            "I2_S tensor of {rows}x{cols} has {} bytes, expected {}",
            w.len(),
            rows * cols / 4 + 32
        )));
    }
    if x.len() != n * cols {
        return Err(RefError::Invalid(format!(
            "activations have {} values, expected {n} x {cols}",
            x.len()
        )));
    }
    let mut out = vec![0f32; rows * n];
    let mut secs = 0f64;
    // SAFETY: buffer sizes checked above.
    let code = unsafe {
        ffi::bx_i2s_matmul(
            w.as_ptr(),
            c_len(rows, "rows")?,
            c_len(cols, "cols")?,
            x.as_ptr(),
            c_len(n, "n")?,
            out.as_mut_ptr(),
            c_len(threads, "threads")?,
            &mut secs,
        )
    };
    if code != 0 {
        return Err(RefError::Failed {
            what: "ggml mul_mat (I2_S)",
            code,
        });
    }
    Ok((out, Duration::from_secs_f64(secs)))
}

/// The January-2026 BitNet.cpp (crates.io `bitnet-llm-sys` =1.0.2: new I2_S GEMM/GEMV kernels,
/// arch `bitnet-b1.58` with relu2), built by this crate's build script into the `ref2026`
/// executable (`shim/ref2026.cpp`; its symbols clash with the 2024 reference's, so it runs as a
/// child process).
pub mod ref2026 {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The executable.
    pub fn exe() -> &'static Path {
        Path::new(env!("BITNET_REF2026"))
    }

    /// A scratch file name for this process and thread.
    fn scratch(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "ref2026-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    /// Runs `ref2026 <what> ...`; its stdout when it succeeds, else its status and stderr.
    fn run(what: &str, cmd: &mut Command) -> Result<Vec<u8>, String> {
        let r = cmd
            .output()
            .map_err(|e| format!("{}: {e}", exe().display()))?;
        if !r.status.success() {
            return Err(format!(
                "ref2026 {what} failed ({}): {}",
                r.status,
                String::from_utf8_lossy(&r.stderr).trim()
            ));
        }
        Ok(r.stdout)
    }

    fn f32s(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// A logits file as `ref2026 logits` and `bitnet logits` write it: i32 n_tokens,
    /// i32 n_vocab, then n_tokens * n_vocab f32, row-major, little-endian.
    pub fn read_logits_file(b: &[u8]) -> Result<(usize, usize, Vec<f32>), String> {
        if b.len() < 8 {
            return Err("logits file shorter than its header".into());
        }
        let n = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let v = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let (Ok(n), Ok(v)) = (usize::try_from(n), usize::try_from(v)) else {
            return Err("logits file header has a negative size".into());
        };
        if n.checked_mul(v).and_then(|x| x.checked_mul(4)) != Some(b.len() - 8) {
            return Err(format!(
                "logits file holds {} bytes for {n} x {v} values",
                b.len() - 8
            ));
        }
        Ok((n, v, f32s(&b[8..])))
    }

    /// The reference's tokenization of `text` (BOS added as the vocabulary says when `bos`;
    /// special-token text is not parsed).
    pub fn tokenize(model: &Path, text: &str, bos: bool) -> Result<Vec<u32>, String> {
        let file = scratch("text");
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut cmd = Command::new(exe());
        cmd.arg("tokenize").arg(model).arg("--text-file").arg(&file);
        if !bos {
            cmd.arg("--no-bos");
        }
        let r = run(&format!("tokenize on {}", model.display()), &mut cmd);
        let _ = std::fs::remove_file(&file);
        let out = String::from_utf8_lossy(&r?).into_owned();
        let out = out.trim();
        if out.is_empty() {
            return Ok(Vec::new());
        }
        out.split(',')
            .map(|t| {
                t.parse::<u32>()
                    .map_err(|_| format!("ref2026 tokenize printed {t:?}, not a token id"))
            })
            .collect()
    }

    /// The 2026 fork's ggml_mul_mat of an I2_S matrix (`w_i2s`: the GGUF tensor's bytes,
    /// `rows * cols / 4` packed plus the 32-byte scale trailer) by `n` f32 columns, computed
    /// `reps` times in one child process: the outputs (`rows` per token) and each call's
    /// seconds, timed by the child around the graph compute alone.
    pub fn i2s_matmul_timed(
        w_i2s: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        n: usize,
        threads: usize,
        reps: usize,
    ) -> Result<(Vec<f32>, Vec<f64>), String> {
        if w_i2s.len() != rows * cols / 4 + 32 || x.len() != n * cols {
            return Err("i2s_matmul_timed: buffer sizes do not match the shape".into());
        }
        let base = scratch("mm");
        let (wp, xp, yp) = (
            base.with_extension("w"),
            base.with_extension("x"),
            base.with_extension("y"),
        );
        let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let write =
            |p: &Path, b: &[u8]| std::fs::write(p, b).map_err(|e| format!("{}: {e}", p.display()));
        let out = write(&wp, w_i2s)
            .and_then(|_| write(&xp, &xb))
            .and_then(|_| {
                run(
                    "matmul",
                    Command::new(exe())
                        .arg("matmul")
                        .args(["--rows", &rows.to_string(), "--cols", &cols.to_string()])
                        .args(["--n", &n.to_string(), "-t", &threads.to_string()])
                        .args(["-r", &reps.to_string()])
                        .arg("--weights")
                        .arg(&wp)
                        .arg("--x")
                        .arg(&xp)
                        .arg("--out")
                        .arg(&yp),
                )
            })
            .and_then(|stdout| {
                let v: serde_json::Value = serde_json::from_slice(&stdout)
                    .map_err(|e| format!("ref2026 matmul printed no JSON: {e}"))?;
                let secs: Vec<f64> = v["seconds"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                    .unwrap_or_default();
                if secs.len() != reps {
                    return Err(format!(
                        "ref2026 matmul reported {} timings for {reps} calls",
                        secs.len()
                    ));
                }
                let y = std::fs::read(&yp).map_err(|e| format!("{}: {e}", yp.display()))?;
                if y.len() != rows * n * 4 {
                    return Err("ref2026 matmul wrote a truncated output".into());
                }
                Ok((f32s(&y), secs))
            });
        for p in [&wp, &xp, &yp] {
            let _ = std::fs::remove_file(p);
        }
        out
    }

    /// Throughput of one `ref2026 bench` process: `reps` runs, each prefilling
    /// `tokens[..prefill]` as one batch (logits of the last only) and then generating the rest
    /// one token at a time after it. The child times its own calls (model loading and its
    /// warm-up run are not timed). Returns every run's (prompt, generated) tokens per second.
    pub fn bench(
        model: &Path,
        tokens: &[u32],
        prefill: usize,
        threads: usize,
        reps: usize,
    ) -> Result<(Vec<f64>, Vec<f64>), String> {
        if prefill == 0 || prefill >= tokens.len() {
            return Err("ref2026 bench needs a prompt and at least one generated token".into());
        }
        let ids: Vec<String> = tokens.iter().map(u32::to_string).collect();
        let stdout = run(
            &format!("bench on {}", model.display()),
            Command::new(exe())
                .arg("bench")
                .arg(model)
                .args(["-p", &prefill.to_string()])
                .args(["-n", &(tokens.len() - prefill).to_string()])
                .args(["-t", &threads.to_string()])
                .args(["-r", &reps.to_string()])
                .args(["--tokens", &ids.join(",")])
                .arg("--after-prompt"),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&stdout)
            .map_err(|e| format!("ref2026 bench printed no JSON report: {e}"))?;
        let runs = |k: &str| -> Result<Vec<f64>, String> {
            let runs: Vec<f64> = v[k]
                .as_array()
                .ok_or(format!("ref2026 bench report has no {k}"))?
                .iter()
                .filter_map(|x| x.as_f64())
                .collect();
            if runs.len() != reps || runs.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                return Err(format!("ref2026 bench report: bad {k} {runs:?}"));
            }
            Ok(runs)
        };
        Ok((runs("prefill_runs")?, runs("gen_runs")?))
    }

    /// Teacher-forced logits of every position of `tokens` (from an empty cache), `n_vocab`
    /// per row: one token per decode call (`batch = false`) or all in one batch.
    pub fn logits(
        model: &Path,
        tokens: &[u32],
        batch: bool,
        threads: usize,
    ) -> Result<(usize, Vec<f32>), String> {
        let out = scratch("logits");
        let ids: Vec<String> = tokens.iter().map(u32::to_string).collect();
        let r = run(
            &format!("logits on {}", model.display()),
            Command::new(exe())
                .arg("logits")
                .arg(model)
                .args(["--tokens", &ids.join(",")])
                .arg("--out")
                .arg(&out)
                .args(["--threads", &threads.to_string()])
                .args(["--mode", if batch { "batch" } else { "seq" }]),
        )
        .and_then(|_| std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display())));
        let _ = std::fs::remove_file(&out);
        let (n, v, data) = read_logits_file(&r?).map_err(|e| format!("ref2026: {e}"))?;
        if n != tokens.len() {
            return Err(format!(
                "ref2026 wrote logits of {n} positions for {} tokens",
                tokens.len()
            ));
        }
        Ok((v, data))
    }
}
