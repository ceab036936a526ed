//! `gpumux-scenarios`: gpumux's compute time-slicing, scenario by scenario.
//!
//! This binary owns the scenario run: it parses the command line, checks that the artifacts it
//! drives sit next to it (gpumuxd, gpumuxctl, the shim and, unless `--real`, the fake driver and
//! NVML), runs the named scenarios of [`scenarios::ALL`] one after the other (each on its own
//! daemon and fresh device) and prints one table (Markdown) or, with `--json`, the report as
//! JSON. Targets are reported, not enforced: the exit status is non-zero only when a scenario
//! could not run at all.
//!
//! Run it from the target directory it was built into, after building the workspace:
//! `cargo build --release --workspace && target/release/gpumux-scenarios [--quick] [NAME...]`.
//! `--real` uses the machine's own `libcuda.so.1` and NVML (a GPU machine) instead of the fake.
//! `--cpu-hogs N` runs each scenario beside N CPU-bound processes (a busy host); `--check` makes
//! a missed target fail the run.

mod measure;
mod proc;
mod report;
mod scenarios;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use report::{Machine, Report, Row, Verdict};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "gpumux-scenarios",
    about = "Runs gpumux's time-slicing scenarios and benchmarks and prints one table",
    after_help = "Scenarios (default: all): weights-3-1 weights-1-2-3-4 lone-tenant \
                  idle-absorption compute-limit-30 interactive processes-8-vs-1 stopped-holder \
                  launch-cost busy-4 switch-cost graph-lone graph-weights-3-1 latency \
                  consolidation many-tenants; --list describes them."
)]
struct Args {
    /// Smoke run: about a second of measurement per scenario (figures are indicative only).
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Use the machine's own CUDA driver and NVML (a real GPU) instead of the fake GPU.
    #[arg(long)]
    real: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Keep every scenario's daemon log in this directory.
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<std::path::PathBuf>,
    /// Run every scenario beside N CPU-bound processes (a busy host), e.g. 2 per core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    cpu_hogs: usize,
    /// Exit non-zero when a scenario misses its target (not only when it cannot run).
    #[arg(long)]
    check: bool,
    /// Scenarios to run (default: all).
    scenarios: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.list {
        for s in scenarios::ALL {
            println!("{:<18} {}", s.name, s.about);
        }
        return Ok(());
    }
    let selected: Vec<&scenarios::Scenario> = if args.scenarios.is_empty() {
        scenarios::ALL.iter().collect()
    } else {
        args.scenarios
            .iter()
            .map(|n| {
                scenarios::ALL
                    .iter()
                    .find(|s| s.name == n)
                    .ok_or_else(|| anyhow!("unknown scenario {n:?} (--list shows them)"))
            })
            .collect::<Result<_>>()?
    };

    let target = fakegpu::testenv::target_dir();
    let mut needed = vec!["gpumuxd", "gpumuxctl", "libgpumux.so"];
    if !args.real {
        needed.extend(["libcuda.so", "libnvidia_ml.so"]);
    }
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|a| !target.join(a).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} missing from {}: build the workspace first (`cargo build --release --workspace`) \
             and run this binary from its target directory",
            missing.join(", "),
            target.display()
        );
    }
    // Compile the C workload once, up front (the harness panics on a compiler error).
    std::panic::catch_unwind(gpumux_integration::workloads::c_workload)
        .map_err(|_| anyhow!("could not compile the C workload (see the message above)"))?;

    let log_dir = tempfile_dir()?;
    let ctx = scenarios::Ctx {
        quick: args.quick,
        real: args.real,
        log_dir: log_dir.clone(),
        keep_logs: args.keep_logs.clone(),
        daemon_notes: Default::default(),
    };
    let mut rows: Vec<Row> = Vec::new();
    for s in &selected {
        eprintln!("scenario {} ...", s.name);
        let t = Instant::now();
        let hogs = gpumux_integration::hogs::CpuHogs::start(args.cpu_hogs);
        let result = std::panic::catch_unwind(|| (s.run)(&ctx))
            .unwrap_or_else(|_| Err(anyhow!("the scenario panicked (see the message above)")));
        let load = gpumux_integration::hogs::loadavg();
        drop(hogs);
        let result = result.map(|mut r| {
            if args.cpu_hogs > 0
                && let (Some(first), Some(l)) = (r.first_mut(), load)
            {
                *first = first.clone().note(format!(
                    "beside {} CPU hogs, load average {:.1}",
                    args.cpu_hogs, l[0]
                ));
            }
            r
        });
        let daemon_notes =
            std::mem::take(&mut *ctx.daemon_notes.lock().unwrap_or_else(|p| p.into_inner()));
        let result = result.map(|mut r| {
            if let Some(first) = r.first_mut() {
                for n in &daemon_notes {
                    *first = first.clone().note(n);
                }
            }
            r
        });
        match result {
            Ok(r) => {
                for row in &r {
                    eprintln!(
                        "  {}: {} [{}] {}",
                        row.scenario, row.measured, row.target, row.notes
                    );
                }
                rows.extend(r);
            }
            Err(e) => {
                eprintln!("  {} failed: {e:#}", s.name);
                let mut row = Row::error(s.name, &e);
                for n in &daemon_notes {
                    row = row.note(n);
                }
                rows.push(row);
            }
        }
        eprintln!("  ({:.1} s)", t.elapsed().as_secs_f64());
    }

    let gpu = if args.real {
        real_gpu_name()
    } else {
        "fake GPU (gpumux fakegpu, 16 GiB)".to_string()
    };
    let profile = target
        .file_name()
        .map_or_else(|| "unknown".into(), |n| n.to_string_lossy().into_owned());
    let report = Report {
        machine: Machine::detect(gpu, profile),
        quick: args.quick,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    std::fs::remove_dir_all(&log_dir).ok();
    if report.rows.iter().any(|r| r.verdict == Verdict::Error) {
        bail!("some scenarios could not run (see the table)");
    }
    if args.check && report.rows.iter().any(|r| r.verdict == Verdict::Fail) {
        bail!("some scenarios missed their targets (see the table)");
    }
    Ok(())
}

/// A private directory for workloads' stderr.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("gpumux-scenarios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// The real GPU's name, from `nvidia-smi` when there is one.
fn real_gpu_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| format!("real GPU: {}", l.trim()))
        })
        .unwrap_or_else(|| "real GPU (name unknown)".to_string())
}
