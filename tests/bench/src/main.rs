//! `gpumux-bench`: what the gpumux shim adds to a driver call.
//!
//! This binary owns the benchmark run: it starts a real gpumuxd on a fresh fake GPU (through
//! `gpumux_integration::gpumux::Gpumux`), compiles the C timing program, runs it under the
//! configurations (bare fake, shim pass-through, shim registered with the daemon) on that same
//! fake GPU, and registered on a time-sliced device of a second daemon, holding the slice with
//! and without its queued work bounded (a batch tenant beside a latency one, a latency tenant
//! beside it), several times in alternating order, and prints the figures as a table or, with
//! `--json`, as JSON. It exits non-zero when a configuration fails to run; whether
//! the speed targets are met is reported, not enforced.
//!
//! It must run from the target directory it was built into (`target/<profile>/`), next to
//! `gpumuxd`, `libgpumux.so` and the fake `libcuda.so`/`libnvidia_ml.so`:
//! `cargo build --release -p gpumux-bench -p fake-cuda -p fake-nvml -p gpumux-shim
//! -p gpumux-daemon -p gpumux-workloads && target/release/gpumux-bench`.

mod driver_bench;
mod report;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use driver_bench::{Config, Expect, Params, RunResult};
use gpumux_integration::gpumux::Gpumux;
use report::{Machine, Report};
use std::time::Duration;

/// The tenant the registered configuration runs as.
const TENANT: &str = "bench";
/// On the time-sliced device: the latency-class tenant (not bounded) and the batch-class one
/// beside it (bounded), each the other's idle rival.
const SLICED_TENANT: &str = "interactive";
const BOUNDED_TENANT: &str = "batch";
/// Memory of the fake device.
const DEVICE_BYTES: u64 = 16 << 30;
/// The tenant's quota (below the device, so the check on cuMemGetInfo tells the two apart).
const QUOTA_BYTES: u64 = 8 << 30;

/// Artifacts that must sit next to this binary.
const ARTIFACTS: [&str; 4] = ["gpumuxd", "libgpumux.so", "libcuda.so", "libnvidia_ml.so"];

#[derive(Parser, Debug)]
#[command(
    name = "gpumux-bench",
    about = "Added cost of the gpumux shim per driver call (alloc+free, pass-through, query, \
             launch), as ratios against the bare fake driver in the same run"
)]
struct Args {
    /// A fast smoke run (few iterations, one run per configuration).
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Runs per configuration [default: 5; --quick: 1].
    #[arg(long)]
    repeats: Option<usize>,
    /// Timed iterations per benchmark [default: 200000; --quick: 2000].
    #[arg(long)]
    iters: Option<u64>,
    /// Untimed warm-up iterations per benchmark [default: 20000; --quick: 200].
    #[arg(long)]
    warmup: Option<u64>,
    /// Timed chunks per benchmark (the run's figure is the median chunk) [default: 20;
    /// --quick: 4].
    #[arg(long)]
    chunks: Option<u64>,
    /// Bytes per allocation.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: u64,
    /// Launches per synchronised batch in the launch benchmark.
    #[arg(long, default_value_t = 256)]
    launch_batch: u64,
    /// Run only these configurations (comma-separated), e.g. `registered` under a profiler;
    /// without `bare` there is no baseline and added ns and ratios read n/a.
    #[arg(long, value_enum, value_delimiter = ',')]
    configs: Vec<Config>,
    /// Give up on one run of the timing program after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let params = Params {
        iters: args
            .iters
            .unwrap_or(if args.quick { 2000 } else { 200_000 }),
        warmup: args.warmup.unwrap_or(if args.quick { 200 } else { 20_000 }),
        chunks: args.chunks.unwrap_or(if args.quick { 4 } else { 20 }),
        bytes: args.bytes,
        launch_batch: args.launch_batch,
    };
    let repeats = args.repeats.unwrap_or(if args.quick { 1 } else { 5 });
    if repeats == 0 || params.iters == 0 || params.chunks == 0 || params.launch_batch == 0 {
        bail!("--repeats, --iters, --chunks and --launch-batch must be positive");
    }
    if params.bytes == 0 || params.bytes > QUOTA_BYTES {
        bail!("--bytes must be between 1 and the tenant's quota ({QUOTA_BYTES})");
    }

    let target = fakegpu::testenv::target_dir();
    let missing: Vec<&str> = ARTIFACTS
        .iter()
        .copied()
        .filter(|a| !target.join(a).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} missing from {}: build them with this binary, e.g. `cargo build --release -p \
             gpumux-bench -p fake-cuda -p fake-nvml -p gpumux-shim -p gpumux-daemon`",
            missing.join(", "),
            target.display()
        );
    }
    let program = driver_bench::compile(&target)?;
    let g = start_gpumux()?;
    let sliced = start_sliced()?;

    let expect = Expect {
        device_bytes: DEVICE_BYTES,
        quota_bytes: QUOTA_BYTES,
    };
    let timeout = Duration::from_secs(args.timeout_s);
    let mut selected: Vec<Config> = if args.configs.is_empty() {
        Config::ALL.to_vec()
    } else {
        args.configs.clone()
    };
    selected.sort();
    selected.dedup();
    let mut runs: Vec<(Config, Vec<RunResult>)> =
        selected.iter().map(|&c| (c, Vec::new())).collect();
    for round in 0..repeats {
        let mut order = selected.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for config in order {
            eprintln!("run {}/{repeats}: {}", round + 1, config.label());
            let (daemon, tenant) = match config {
                Config::Sliced => (&sliced, SLICED_TENANT),
                Config::Bounded => (&sliced, BOUNDED_TENANT),
                _ => (&g, TENANT),
            };
            let r =
                driver_bench::run_once(daemon, tenant, config, &program, &params, &expect, timeout)
                    .map_err(|e| e.context(format!("gpumuxd log:\n{}", daemon.log())))?;
            runs.iter_mut()
                .find(|(c, _)| *c == config)
                .context("configuration slot")?
                .1
                .push(r);
        }
    }

    let profile = target
        .file_name()
        .map_or_else(|| "unknown".into(), |n| n.to_string_lossy().into_owned());
    let report = Report::new(Machine::detect(profile), params, repeats, &runs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// A gpumuxd with one tenant on a fresh fake GPU. The harness panics on failure; the panic
/// (already printed by the default hook) becomes an error here.
fn start_gpumux() -> Result<Gpumux> {
    start_with(&[(TENANT, "normal")])
}

/// A gpumuxd whose device is time-sliced between a latency-class and a batch-class tenant
/// (the batch one's queued work bounded).
fn start_sliced() -> Result<Gpumux> {
    start_with(&[(SLICED_TENANT, "latency"), (BOUNDED_TENANT, "batch")])
}

fn start_with(tenants: &[(&str, &str)]) -> Result<Gpumux> {
    let quotas: Vec<(&str, String)> = tenants
        .iter()
        .map(|(n, class)| {
            (
                *n,
                format!(
                    "memory_limit = \"{}GiB\"\npriority = \"{class}\"\n",
                    QUOTA_BYTES >> 30
                ),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = quotas.iter().map(|(n, q)| (*n, q.as_str())).collect();
    std::panic::catch_unwind(|| Gpumux::start(&[DEVICE_BYTES], &refs))
        .map_err(|_| anyhow!("could not start gpumuxd on the fake GPU (see the message above)"))
}
