//! Every gate of ci/gates.toml as one test (libtest-mimic), so `cargo test` / nextest run and
//! filter them like any other test: `cargo test -p bitnet-validate --test gates -- crossval`.
//! Gates marked `release_only` (timed ratios) are listed as ignored in debug builds; the
//! release `bitnet-validate gates` run checks them.

use bitnet_validate::gates::{Context, GatesFile};
use bitnet_validate::runner::run_gate;
use libtest_mimic::{Arguments, Failed, Trial};
use std::path::PathBuf;
use std::sync::Arc;

fn main() {
    let args = Arguments::from_args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = GatesFile::load(&root.join("ci/gates.toml")).unwrap_or_else(|e| panic!("{e}"));
    let shared = bitnet::env::get().shared.clone();
    let ctx = Arc::new(Context {
        shared,
        work: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gates"),
        data: root.join("ci"),
        root,
        threads: 1,
    });
    let trials = file
        .gates
        .into_iter()
        .map(|g| {
            let ctx = ctx.clone();
            let g_release_only = g.release_only;
            let kind = g.kind().name();
            Trial::test(g.id.clone(), move || {
                let o = run_gate(&g, &ctx);
                if o.passed || !o.required {
                    Ok(())
                } else {
                    Err(Failed::from(o.message))
                }
            })
            .with_kind(kind)
            .with_ignored_flag(g_release_only && cfg!(debug_assertions))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
