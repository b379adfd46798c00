use bitnet_validate::crossval::{self, Mode, RefName};
use bitnet_validate::gates::{Context, GatesFile};
use bitnet_validate::{report, runner};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Exit codes: 0 all required gates passed, 1 a required gate failed (or crossval failed),
/// 2 usage or configuration error.
#[derive(Parser)]
#[command(
    name = "bitnet-validate",
    version,
    about = "Validation gates for the bitnet engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compare the engine with BitNet.cpp on one model (teacher-forced logits, greedy tokens, NLL).
    Crossval {
        #[arg(short, long)]
        model: PathBuf,
        /// One prompt per line (default: a built-in set).
        #[arg(long)]
        prompts: Option<PathBuf>,
        #[arg(long, default_value = "seq", value_name = "seq|batch", value_parser = |s: &str| s.parse::<Mode>())]
        mode: Mode,
        /// Sequence length per prompt (prompt + greedy continuation).
        #[arg(long, default_value_t = 101)]
        tokens: usize,
        #[arg(long, default_value_t = 0.5)]
        near_tie: f64,
        /// The reference judged (the exit code follows its greedy verdict).
        #[arg(long, value_enum, default_value = "bitnet.cpp-0.0.5")]
        reference: RefName,
        /// Further references reported beside it (repeatable).
        #[arg(long, value_enum)]
        also: Vec<RefName>,
        /// The HF checkpoint the model was converted from (for `transformers`).
        #[arg(long)]
        fixture: Option<PathBuf>,
        #[arg(short, long)]
        threads: Option<usize>,
        /// Write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Inference receipts.
    Receipt {
        #[command(subcommand)]
        cmd: ReceiptCmd,
    },
    /// Check the golden snapshots (prints differences), or rewrite them with --update.
    Golden {
        /// Directory of snapshot files.
        #[arg(long, default_value = "golden")]
        dir: PathBuf,
        #[arg(long)]
        filter: Option<String>,
        /// Recompute and rewrite the expected results (review the change with git diff).
        #[arg(long)]
        update: bool,
        /// Where built models go.
        #[arg(long, default_value = "target/bitnet-validate")]
        out: PathBuf,
    },
    /// Check a model file for problems that make engines compute the wrong thing (rule ids and
    /// severities: README). Exit 1 when there is an error finding.
    Lint {
        model: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time the engine and the reference side by side on the same file in the same process:
    /// `bitnet bench --vs-reference` (this binary always links the reference).
    Timing(bitnet_cli::bench::BenchArgs),
    /// Simulate the kubelet's startup/liveness/readiness probes against `bitnet serve` under
    /// load and faults; prints the verdict. Exit 0 when it meets the scenario's [expect],
    /// 1 when not (or the run failed), 2 on usage errors.
    Probe(Box<ProbeArgs>),
    /// Print a JSON schema generated from the harness's types: `gates` (the gates file,
    /// checked in as schemas/gates.schema.json).
    Schema {
        #[arg(value_enum)]
        which: SchemaName,
    },
    /// Run the gates of a gates file and write JUnit XML, a JSON summary and a Markdown table.
    Gates {
        #[arg(long, default_value = "ci/gates.toml")]
        config: PathBuf,
        /// Only gates whose id contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Where reports and built models go.
        #[arg(long, default_value = "target/bitnet-validate")]
        out: PathBuf,
        #[arg(short, long)]
        threads: Option<usize>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaName {
    /// The gates file (ci/gates.toml).
    Gates,
}

/// Arguments of `probe` (boxed in `Cmd` to keep the enum small).
#[derive(clap::Args)]
struct ProbeArgs {
    /// The scenario (TOML, e.g. ci/probes/sigterm-drain.toml).
    #[arg(long)]
    scenario: PathBuf,
    /// Probe a server that is already running (otherwise the scenario's [server] is launched).
    #[arg(long)]
    url: Option<String>,
    /// The running server's process id, for faults that signal it (with --url); its exit is
    /// seen, but not its exit code (it is not this process's child).
    #[arg(long, requires = "url")]
    pid: Option<i32>,
    /// The bitnet binary to launch (default: next to this executable).
    #[arg(long, conflicts_with = "url")]
    bitnet: Option<PathBuf>,
    /// Write the verdict JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the timeline JSON here.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Where models the scenario needs are built.
    #[arg(long, default_value = "target/bitnet-validate")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum ReceiptCmd {
    /// Validate receipts: schema, audit rules, content digest, optional signature and replay.
    /// Exit codes: 0 valid, 3 unreadable, 4 schema, 5 audit rule, 6 digest, 7 signature,
    /// 8 replay (the first class that failed).
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// ed25519 public key file (64 hex digits) the receipts must be signed with.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// Re-run each recorded inference and compare its output digest.
        #[arg(long)]
        replay: bool,
        /// Print the verdicts as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let code = match Cli::try_parse() {
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                2
            } else {
                0
            }
        }
        Ok(cli) => match run(cli.cmd) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
    };
    std::process::exit(code);
}

fn threads(t: Option<usize>) -> usize {
    t.unwrap_or(bitnet::env::get().threads).max(1)
}

fn run(cmd: Cmd) -> Result<i32, String> {
    match cmd {
        Cmd::Crossval {
            model,
            prompts,
            mode,
            tokens,
            near_tie,
            reference,
            also,
            fixture,
            threads: t,
            json,
        } => {
            let prompts = match prompts {
                None => crossval::DEFAULT_PROMPTS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                Some(p) => std::fs::read_to_string(&p)
                    .map_err(|e| format!("{}: {e}", p.display()))?
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string)
                    .collect(),
            };
            let r = crossval::evaluate(crossval::Plan {
                model: &model,
                fixture: fixture.as_deref(),
                head: None,
                references: std::iter::once(reference).chain(also).collect(),
                threads: threads(t),
                options: crossval::Options {
                    mode,
                    tokens,
                    prompts,
                    near_tie,
                },
                fixture_text: false,
            })?;
            print!("{}", crossval::table(&r));
            if let Some(path) = json {
                write(
                    &path,
                    &serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?,
                )?;
            }
            Ok(if r.aggregate.greedy_ok { 0 } else { 1 })
        }
        Cmd::Golden {
            dir,
            filter,
            update,
            out,
        } => {
            use bitnet_validate::golden;
            let root = dir.join("..");
            let ctx = Context {
                shared: bitnet::env::get().shared.clone(),
                work: out,
                data: root.join("ci"),
                root,
                threads: threads(None),
            };
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .filter(|p| {
                    filter
                        .as_deref()
                        .is_none_or(|f| p.to_string_lossy().contains(f))
                })
                .collect();
            files.sort();
            let mut failed = 0;
            for f in &files {
                if update {
                    let changed = golden::update(f, &ctx)?;
                    println!(
                        "{}: {}",
                        f.display(),
                        if changed {
                            "UPDATED (review with git diff)"
                        } else {
                            "unchanged"
                        }
                    );
                } else {
                    let s = golden::Snapshot::load(f)?;
                    let diffs = golden::compare(&s, &golden::compute(&s, &ctx)?);
                    println!(
                        "{}: {}",
                        f.display(),
                        if diffs.is_empty() { "ok" } else { "DIFFERS" }
                    );
                    for d in &diffs {
                        println!("  {d}");
                    }
                    failed += usize::from(!diffs.is_empty());
                }
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        Cmd::Receipt {
            cmd:
                ReceiptCmd::Verify {
                    files,
                    pubkey,
                    replay,
                    json,
                },
        } => {
            use bitnet_validate::audit;
            let opts = audit::VerifyOptions {
                public_key: pubkey,
                replay,
            };
            let verdicts: Vec<_> = files.iter().map(|f| audit::verify_file(f, &opts)).collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&verdicts).map_err(|e| e.to_string())?
                );
            } else {
                for v in &verdicts {
                    print!("{}", audit::human(v));
                }
            }
            Ok(verdicts
                .iter()
                .map(|v| v.exit_code())
                .filter(|&c| c != 0)
                .min()
                .unwrap_or(0))
        }
        Cmd::Lint { model, json } => {
            let r = bitnet_validate::lint::lint(&model);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", bitnet_validate::lint::text(&r));
            }
            Ok(if r.errors > 0 { 1 } else { 0 })
        }
        Cmd::Timing(mut a) => {
            a.vs_reference = true;
            Ok(match bitnet_cli::bench::cli(a) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e}");
                    bitnet_cli::exit_code(&e)
                }
            })
        }
        Cmd::Probe(a) => probe(*a),
        Cmd::Schema {
            which: SchemaName::Gates,
        } => {
            let schema = bitnet_validate::gates::schema::gates_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).map_err(|e| e.to_string())?
            );
            Ok(0)
        }
        Cmd::Gates {
            config,
            filter,
            out,
            threads: t,
        } => {
            let file = GatesFile::load(&config).map_err(|e| e.to_string())?;
            let data = config.parent().unwrap_or(Path::new(".")).to_path_buf();
            let ctx = Context {
                root: data.join(".."),
                shared: bitnet::env::get().shared.clone(),
                work: out.clone(),
                data,
                threads: threads(t),
            };
            let selected: Vec<_> = file
                .gates
                .iter()
                .filter(|g| filter.as_deref().is_none_or(|f| g.id.contains(f)))
                .collect();
            if selected.is_empty() {
                return Err(format!("no gate matches {:?}", filter.unwrap_or_default()));
            }
            let mut outcomes = Vec::new();
            for g in selected {
                eprintln!("gate {} ...", g.id);
                let o = runner::run_gate(g, &ctx);
                eprintln!(
                    "  {} ({:.1}s): {}",
                    if o.passed { "pass" } else { "FAIL" },
                    o.seconds,
                    o.message
                );
                outcomes.push(o);
            }
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            write(&out.join("junit.xml"), &report::junit(&outcomes))?;
            write(
                &out.join("summary.json"),
                &serde_json::to_string_pretty(&report::summary(&outcomes))
                    .map_err(|e| e.to_string())?,
            )?;
            let md = report::markdown(&outcomes);
            write(&out.join("summary.md"), &md)?;
            print!("{md}");
            Ok(if report::summary(&outcomes).required_failed > 0 {
                1
            } else {
                0
            })
        }
    }
}

fn probe(a: ProbeArgs) -> Result<i32, String> {
    use bitnet_validate::probe::{self, Scenario, Target};
    let s = Scenario::load(&a.scenario)?;
    let target = match a.url {
        Some(url) => {
            if s.needs_pid() && a.pid.is_none() {
                return Err(format!(
                    "{}: the scenario sends SIGTERM; with --url give the server's --pid too",
                    a.scenario.display()
                ));
            }
            Target::Attach { url, pid: a.pid }
        }
        None => {
            let server = s.server.as_ref().ok_or_else(|| {
                format!(
                    "{}: no [server] section: give --url of a running server",
                    a.scenario.display()
                )
            })?;
            let bin = match a.bitnet {
                Some(b) => b,
                None => probe::find_bitnet()?,
            };
            let ctx = Context {
                shared: bitnet::env::get().shared.clone(),
                work: a.out.clone(),
                data: a.scenario.parent().unwrap_or(Path::new(".")).to_path_buf(),
                root: PathBuf::from("."),
                threads: threads(None),
            };
            let model = bitnet_validate::gates::build_model(&server.model, &ctx)
                .map_err(|e| e.to_string())?;
            Target::Launch { bin, model }
        }
    };
    let report = match probe::execute(&s, target) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    let m = report.measurements();
    if let Some(obj) = m.as_object() {
        for (k, v) in obj {
            println!("{k:<30} {v}");
        }
    }
    if let Some(path) = &a.json {
        write(
            path,
            &serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?,
        )?;
    }
    if let Some(path) = &a.timeline {
        write(
            path,
            &serde_json::to_string_pretty(&report.timeline).map_err(|e| e.to_string())?,
        )?;
    }
    println!("{}", report.summary());
    if report.misses.is_empty() {
        println!("verdict: as expected");
        Ok(0)
    } else {
        println!("verdict: NOT as expected: {}", report.misses.join("; "));
        Ok(1)
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}
