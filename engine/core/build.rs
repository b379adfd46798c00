//! Records the compiler and the git commit for receipts (both optional facts of the build),
//! and which SIMD kernels the building CPU can run (`bitnet_host_avx2`, `bitnet_host_avx512`),
//! so an ISA's kernel tests are marked ignored, with the reason, on a machine without it.
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(bitnet_host_avx2)");
    println!("cargo::rustc-check-cfg=cfg(bitnet_host_avx512)");
    #[cfg(target_arch = "x86_64")]
    {
        let native = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c");
        if native && avx2 {
            println!("cargo:rustc-cfg=bitnet_host_avx2");
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
            {
                println!("cargo:rustc-cfg=bitnet_host_avx512");
            }
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "rustc (unknown version)".into());
    println!("cargo:rustc-env=BITNET_RUSTC_VERSION={version}");
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=BITNET_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
}
