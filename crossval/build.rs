//! Builds the reference: BitNet.cpp's llama.cpp fork (ggml + libllama) and its I2_S kernels,
//! compiled with `cc` straight from the sources that crates.io package `bitnet-cpp-sys` 0.0.5
//! ships (its own build script, cmake and bindgen are never used), plus our C++ shim.
//!
//! The sources are taken from the cargo registry (`cargo fetch` puts them there: the crate is an
//! optional dependency that no feature enables). Before use, the downloaded `.crate` must have
//! the pinned sha256 and the unpacked files we compile must have the pinned digest. No network.
//!
//! The vendored library is always built with -O3 -march=native (a debug-built ggml is unusably
//! slow) and does not depend on the cargo profile, so it is cached under the target directory
//! keyed by source digest, flags and compiler: dev, test, release and clippy share one build.

use sha2::{Digest, Sha256};
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A pinned reference: its crates.io package, the sha256 of its `.crate` (equals its
/// `checksum` in Cargo.lock), the digest of the unpacked files we compile or include (see
/// `source_digest`), and the directory of BitNet.cpp inside the package.
struct Ref {
    pkg: &'static str,
    crate_sha256: &'static str,
    source_digest: &'static str,
    bitnet: &'static str,
}

impl Ref {
    fn llama(&self) -> String {
        format!("{}/3rdparty/llama.cpp", self.bitnet)
    }
}

/// BitNet.cpp of about December 2024, linked into this crate.
const REF_2024: Ref = Ref {
    pkg: "bitnet-cpp-sys-0.0.5",
    crate_sha256: "be00ca9092d4cd9c30967e8fa3c001b15d1398d021423f0524afb86c00af51f7",
    source_digest: "dd5845e527e58d96ab11d6c9adf9c76ae4acbb5d75cfe0087b69c72f10c74b50",
    bitnet: "bitnet",
};

/// The January-2026 BitNet.cpp (new I2_S GEMM/GEMV, arch `bitnet-b1.58` with relu2). Its
/// ggml_*/llama_* symbols clash with the 2024 ones, so it is linked into its own executable,
/// `ref2026` (shim/ref2026.cpp), run as a child process. Built as its users build it (its
/// CMake and the crate's own build script: Release, native, GGML_OPENMP on, so ggml's threads
/// are an OpenMP team), since it is also the timing baseline of `bitnet bench --vs-reference`
/// and the perf gates. Its logits are bit-identical to a build without OpenMP.
const REF_2026: Ref = Ref {
    pkg: "bitnet-llm-sys-1.0.2",
    crate_sha256: "3f00c00c792b849b395409483b316ab29d2286ede404321ef966f9a2ccab12d7",
    source_digest: "300a398db16c26d45be30e5c933b2dfaf75a1dce2d52c86f3a7d7592f6795f42",
    bitnet: "bitnet.cpp",
};

const C_SOURCES: &[&str] = &[
    "ggml/src/ggml.c",
    "ggml/src/ggml-quants.c",
    "ggml/src/ggml-aarch64.c",
    "ggml/src/ggml-alloc.c",
];
const CXX_SOURCES: &[&str] = &[
    "ggml/src/ggml-backend.cpp",
    // The fork's CMake builds llama.cpp as a subdirectory, where GGML_LLAMAFILE defaults to ON:
    // F32/F16 products (the lm_head) go through tinyBLAS.
    "ggml/src/llamafile/sgemm.cpp",
    "src/llama.cpp",
    "src/llama-vocab.cpp",
    "src/llama-grammar.cpp",
    "src/llama-sampling.cpp",
    "src/unicode.cpp",
    "src/unicode-data.cpp",
];
/// Relative to `bitnet/`. ggml-bitnet-lut.cpp (TL1/TL2) is left out: it includes a generated
/// `bitnet-lut-kernels.h` for fixed matrix shapes. Without GGML_BITNET_ARM_TL1/X86_TL2 neither
/// ggml.c nor llama.cpp calls into it, and I2_S needs no init.
const BITNET_SOURCES: &[&str] = &["src/ggml-bitnet-mad.cpp"];

/// Include directories relative to the llama.cpp fork, then relative to `bitnet/`.
const LLAMA_INCLUDES: &[&str] = &["ggml/include", "ggml/src", "include", "src"];
const BITNET_INCLUDES: &[&str] = &["include"];

/// Defines of the fork's CMake for a Release, native, I2_S x86 Linux build without OpenMP.
/// GGML_BITNET_X86_TL2 is deliberately absent (it replaces I2_S by TL2).
const DEFINES: &[(&str, Option<&str>)] = &[
    ("NDEBUG", None),
    ("_XOPEN_SOURCE", Some("600")),
    ("_GNU_SOURCE", None),
    ("GGML_SCHED_MAX_COPIES", Some("4")),
    ("GGML_USE_LLAMAFILE", None),
];
/// Flags for every file. -ffp-contract=off: no a*b+c fusion the source did not write (gcc's
/// default for non-ISO modes is "fast", which could fuse e.g. the activation rounding
/// `x*s + 12582912.f`; clang, which the fork's setup uses, only fuses within one expression).
const COMMON_FLAGS: &[&str] = &["-march=native", "-pthread", "-ffp-contract=off", "-w"];
const C_FLAGS: &[&str] = &["-std=c11"];
/// The fork's CMake adds -fpermissive for GCC.
const CXX_FLAGS: &[&str] = &["-std=c++17", "-fpermissive"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim/shim.cpp");
    println!("cargo:rerun-if-changed=shim/ref2026.cpp");
    println!("cargo:rerun-if-env-changed=CARGO_HOME");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let located = |r: &Ref| match locate_and_verify(r) {
        Ok(root) => {
            let (llama, bitnet) = (root.join(r.llama()), root.join(r.bitnet));
            let includes: Vec<PathBuf> = LLAMA_INCLUDES
                .iter()
                .map(|d| llama.join(d))
                .chain(BITNET_INCLUDES.iter().map(|d| bitnet.join(d)))
                .collect();
            (llama, bitnet, includes)
        }
        Err(msg) => panic!("\n\nbitnet-crossval: {msg}\n\n"),
    };

    let (llama26, bitnet26, includes26) = located(&REF_2026);
    let exe = ref2026_exe(&llama26, &bitnet26, &includes26, &out);
    println!("cargo:rustc-env=BITNET_REF2026={}", exe.display());

    let (llama, bitnet, includes) = located(&REF_2024);
    let vendor = vendor_lib(&REF_2024, &llama, &bitnet, &includes, &out);
    fs::copy(&vendor, out.join("libbitnet_ref_vendor.a")).expect("copy vendor library");

    // Our shim: its own small archive, linked before the vendored one.
    let mut shim = base_build(&includes, true);
    shim.file("shim/shim.cpp")
        .cpp_link_stdlib(None)
        .out_dir(out.join("shim"))
        .compile("bx_shim");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=bitnet_ref_vendor");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-link-lib=dylib=m");
}

fn base_build(includes: &[PathBuf], cpp: bool) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(cpp)
        .opt_level(3)
        .debug(false)
        .warnings(false)
        .extra_warnings(false);
    for inc in includes {
        b.include(inc);
    }
    for (k, v) in DEFINES {
        b.define(k, *v);
    }
    for f in COMMON_FLAGS {
        b.flag(f);
    }
    for f in if cpp { CXX_FLAGS } else { C_FLAGS } {
        b.flag(f);
    }
    b
}

/// GGML_OPENMP=ON as the fork's CMake sets it when OpenMP is found (gcc's libgomp).
fn with_openmp(mut b: cc::Build, openmp: bool) -> cc::Build {
    if openmp {
        b.define("GGML_USE_OPENMP", None).flag("-fopenmp");
    }
    b
}

/// The cache directory for a build key: `<target>/bitnet-ref-cache/<key>`.
fn cache_dir(out: &Path, key: &str) -> PathBuf {
    // OUT_DIR = <target>[/<triple>]/<profile>/build/<pkg-hash>/out
    out.ancestors()
        .nth(4)
        .map(|p| p.join("bitnet-ref-cache"))
        .unwrap_or_else(|| out.join("bitnet-ref-cache"))
        .join(&key[..24])
}

/// The vendored sources of `r` compiled to objects (C and C++ in parallel).
fn vendor_objects(
    llama: &Path,
    bitnet: &Path,
    includes: &[PathBuf],
    work: &Path,
    openmp: bool,
) -> Vec<PathBuf> {
    let c_files: Vec<PathBuf> = C_SOURCES.iter().map(|f| llama.join(f)).collect();
    let cxx_files: Vec<PathBuf> = CXX_SOURCES
        .iter()
        .map(|f| llama.join(f))
        .chain(BITNET_SOURCES.iter().map(|f| bitnet.join(f)))
        .collect();
    let (c_objs, cxx_objs) = std::thread::scope(|s| {
        let c = s.spawn(|| {
            let mut b = with_openmp(base_build(includes, false), openmp);
            b.files(&c_files).out_dir(work.join("c"));
            b.compile_intermediates()
        });
        let cxx = s.spawn(|| {
            let mut b = with_openmp(base_build(includes, true), openmp);
            b.files(&cxx_files).out_dir(work.join("cxx"));
            b.compile_intermediates()
        });
        (
            c.join().expect("C compilation panicked"),
            cxx.join().expect("C++ compilation panicked"),
        )
    });
    c_objs.into_iter().chain(cxx_objs).collect()
}

/// Copies `from` into the cache as `to`, atomically (builds of other profiles may race).
fn publish(from: &Path, to: &Path) {
    let dir = to.parent().expect("cache path has a parent");
    fs::create_dir_all(dir).expect("create reference cache dir");
    let tmp = dir.join(format!("publish.{}.tmp", std::process::id()));
    fs::copy(from, &tmp).expect("copy to cache");
    fs::rename(&tmp, to).expect("publish into the reference cache");
}

/// The 2026 reference as the `ref2026` executable, from the cache or freshly built into it.
fn ref2026_exe(llama: &Path, bitnet: &Path, includes: &[PathBuf], out: &Path) -> PathBuf {
    let shim = fs::read("shim/ref2026.cpp").expect("read shim/ref2026.cpp");
    let key = cache_key(
        &REF_2026,
        &format!("openmp {}", hex(&Sha256::digest(&shim))),
    );
    let exe = cache_dir(out, &key).join("ref2026");
    if exe.exists() {
        return exe;
    }
    let t0 = Instant::now();
    let work = out.join("ref2026");
    let mut objs = vendor_objects(llama, bitnet, includes, &work, true);
    let mut cli = with_openmp(base_build(includes, true), true);
    cli.file("shim/ref2026.cpp").out_dir(work.join("cli"));
    objs.extend(cli.compile_intermediates());
    let compiler = base_build(includes, true).get_compiler();
    let built = work.join("ref2026");
    let status = compiler
        .to_command()
        .arg("-o")
        .arg(&built)
        .args(&objs)
        .args(["-fopenmp", "-pthread", "-lm"])
        .status()
        .expect("run the linker for ref2026");
    assert!(status.success(), "linking ref2026 failed");
    publish(&built, &exe);
    println!(
        "cargo:warning=compiled the 2026 BitNet.cpp reference (ref2026) in {:.0} s (cached in {})",
        t0.elapsed().as_secs_f64(),
        exe.display()
    );
    exe
}

/// The vendored ggml + llama + I2_S archive, from the cache or freshly compiled into it.
fn vendor_lib(r: &Ref, llama: &Path, bitnet: &Path, includes: &[PathBuf], out: &Path) -> PathBuf {
    let key = cache_key(r, "");
    let dir = cache_dir(out, &key);
    let lib = dir.join("libbitnet_ref_vendor.a");
    if lib.exists() {
        return lib;
    }

    let t0 = Instant::now();
    let work = out.join("vendor");
    let objs = vendor_objects(llama, bitnet, includes, &work, false);
    cc::Build::new()
        .objects(&objs)
        .cargo_metadata(false)
        .out_dir(&work)
        .compile("bitnet_ref_vendor");
    publish(&work.join("libbitnet_ref_vendor.a"), &lib);
    println!(
        "cargo:warning=compiled the BitNet.cpp reference (ggml + llama + I2_S) in {:.0} s (cached in {})",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    lib
}

/// Everything a compiled reference depends on besides the (verified) sources.
fn cache_key(r: &Ref, extra: &str) -> String {
    let mut h = Sha256::new();
    h.update(r.source_digest.as_bytes());
    h.update(extra.as_bytes());
    h.update(format!(
        "{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}",
        C_SOURCES, CXX_SOURCES, BITNET_SOURCES, DEFINES, COMMON_FLAGS, C_FLAGS, CXX_FLAGS, 3
    ));
    h.update(env::var("TARGET").unwrap_or_default());
    for cpp in [false, true] {
        let compiler = cc::Build::new().cpp(cpp).get_compiler();
        h.update(compiler.path().to_string_lossy().as_bytes());
        if let Ok(o) = Command::new(compiler.path()).arg("--version").output() {
            h.update(&o.stdout);
        }
        // What -march=native means on this machine.
        if let Ok(o) = Command::new(compiler.path())
            .args(["-march=native", "-dM", "-E", "-x", "c", "/dev/null"])
            .output()
        {
            h.update(&o.stdout);
        }
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Finds `<registry dir>/<index>/<PKG>{,.crate}` entries under `$CARGO_HOME/registry/{src,cache}`.
fn find_in_registry(home: &Path, kind: &str, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(rd) = fs::read_dir(home.join("registry").join(kind)) {
        for e in rd.flatten() {
            let p = e.path().join(name);
            if p.exists() {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

fn locate_and_verify(r: &Ref) -> Result<PathBuf, String> {
    let (pkg, crate_sha256, source_digest_pin) = (r.pkg, r.crate_sha256, r.source_digest);
    let fetch = format!(
        "run `cargo fetch` in the workspace (needs network access to crates.io) so that \
         cargo downloads and unpacks {pkg}; this build script never uses the network"
    );
    let home =
        cargo_home().ok_or_else(|| format!("neither CARGO_HOME nor HOME is set; {fetch}"))?;
    let crates = find_in_registry(&home, "cache", &format!("{pkg}.crate"));
    if crates.is_empty() {
        return Err(format!(
            "{pkg}.crate not found under {}/registry/cache/*/: {fetch}",
            home.display()
        ));
    }
    let mut ok_crate = false;
    let mut seen = Vec::new();
    for c in &crates {
        let bytes = fs::read(c).map_err(|e| format!("reading {}: {e}", c.display()))?;
        let got = hex(&Sha256::digest(&bytes));
        if got == crate_sha256 {
            ok_crate = true;
        } else {
            seen.push(format!("{} has sha256 {got}", c.display()));
        }
    }
    if !ok_crate {
        return Err(format!(
            "integrity check failed: expected sha256 {crate_sha256} for {pkg}.crate, but {}. \
             Delete it and {fetch}",
            seen.join("; ")
        ));
    }
    let srcs = find_in_registry(&home, "src", pkg);
    if srcs.is_empty() {
        return Err(format!(
            "unpacked sources {}/registry/src/*/{pkg}/ not found: {fetch}",
            home.display()
        ));
    }
    let mut digests = Vec::new();
    for s in &srcs {
        let d = source_digest(r, s)?;
        if d == source_digest_pin {
            return Ok(s.clone());
        }
        digests.push(format!("{} has digest {d}", s.display()));
    }
    Err(format!(
        "integrity check failed: the unpacked sources differ from the pinned ones (expected \
         digest {source_digest_pin}; {}). Delete that directory and {fetch}",
        digests.join("; ")
    ))
}

/// sha256 over (relative path, length, contents) of every file in the directories we compile
/// from or include, in sorted order.
fn source_digest(r: &Ref, root: &Path) -> Result<String, String> {
    let llama = r.llama();
    let dirs = [
        format!("{llama}/ggml/include"),
        format!("{llama}/ggml/src"),
        format!("{llama}/ggml/src/llamafile"),
        format!("{llama}/include"),
        format!("{llama}/src"),
        format!("{}/include", r.bitnet),
        format!("{}/src", r.bitnet),
    ];
    let mut files = Vec::new();
    for d in &dirs {
        let rd = fs::read_dir(root.join(d)).map_err(|e| format!("{}/{d}: {e}", root.display()))?;
        for e in rd.flatten() {
            let p = e.path();
            let is_src = matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("c" | "cpp" | "h" | "hpp")
            );
            if p.is_file() && is_src {
                files.push(format!("{d}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        let bytes = fs::read(root.join(f)).map_err(|e| format!("{f}: {e}"))?;
        h.update(f.as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex(&h.finalize()))
}
