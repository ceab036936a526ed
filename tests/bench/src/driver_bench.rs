//! The C timing program (`c/driver_bench.c`) as the runner uses it.
//!
//! This module owns: compiling the program with `cc` into `<target>/gpumux-bench-c/` (the source
//! is embedded in this binary, so the runner works from any directory), the [`Config`]urations
//! it runs under, running it once under a configuration, checking that the configuration is
//! what it claims (shim mapped or not, memory reported as the device or as the quota) and
//! parsing its JSON lines into a [`RunResult`].

use anyhow::{Context, Result, bail};
use gpumux_integration::gpumux::Gpumux;
use gpumux_integration::workloads::{self, Lines};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The C source, embedded.
const SOURCE: &str = include_str!("../c/driver_bench.c");

/// How the timing program reaches the (fake) driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Config {
    /// The fake driver alone: no `LD_PRELOAD`.
    Bare,
    /// `LD_PRELOAD=libgpumux.so` without `GPUMUX_SOCKET`: the shim's pass-through mode.
    Passthrough,
    /// The shim registered with a running gpumuxd as a process of a tenant: quotas apply.
    Registered,
    /// Registered in a tenant of a time-sliced device (another tenant may use it), holding the
    /// slice: launches pass the gate.
    Sliced,
    /// Registered in a batch-class tenant beside a latency-class one (idle): launches pass the
    /// gate and the bound on queued work (`shim/src/bound.rs`).
    Bounded,
}

impl Config {
    /// Every configuration, in table order.
    pub const ALL: [Config; 5] = [
        Config::Bare,
        Config::Passthrough,
        Config::Registered,
        Config::Sliced,
        Config::Bounded,
    ];

    /// Name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Config::Bare => "bare fake",
            Config::Passthrough => "shim pass-through",
            Config::Registered => "shim + gpumuxd",
            Config::Sliced => "time-sliced",
            Config::Bounded => "queue-bounded",
        }
    }
}

/// The benchmarks the C program runs, in table order: (name in its output, table label).
pub const BENCHES: [(&str, &str); 5] = [
    ("alloc_free", "cuMemAlloc_v2 + cuMemFree_v2 pair"),
    ("passthrough", "cuCtxGetCurrent (not hooked)"),
    ("totalmem", "cuDeviceTotalMem_v2 (hooked, cheap)"),
    ("meminfo", "cuMemGetInfo_v2 (hooked query)"),
    ("launch", "cuLaunchKernel spin(0), issue only*"),
];

/// Parameters passed to the C program.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Params {
    /// Timed iterations per benchmark.
    pub iters: u64,
    /// Untimed iterations before.
    pub warmup: u64,
    /// Timed chunks the iterations are split into.
    pub chunks: u64,
    /// Bytes per allocation.
    pub bytes: u64,
    /// Launches per synchronised batch.
    pub launch_batch: u64,
}

/// One benchmark of one run: ns per operation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Median over the run's chunks.
    pub ns_per_op: f64,
    /// Mean over all timed iterations.
    pub mean_ns_per_op: f64,
    /// Fastest chunk.
    pub min_ns_per_op: f64,
}

/// One run of the C program.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Benchmark name → its timing.
    pub samples: BTreeMap<String, Sample>,
}

/// Compiles the embedded C source into `<target>/gpumux-bench-c/driver_bench` and returns the
/// binary's path. Compiler warnings are passed on to stderr.
pub fn compile(target: &Path) -> Result<PathBuf> {
    let dir = target.join("gpumux-bench-c");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let src = dir.join("driver_bench.c");
    if std::fs::read_to_string(&src).ok().as_deref() != Some(SOURCE) {
        let tmp = dir.join(format!("driver_bench.c.{}.tmp", std::process::id()));
        std::fs::write(&tmp, SOURCE).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &src).with_context(|| format!("install {}", src.display()))?;
    }
    let out = dir.join("driver_bench");
    let tmp = dir.join(format!("driver_bench.{}.tmp", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let res = Command::new(&cc)
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg("-ldl")
        .output()
        .with_context(|| format!("run the C compiler ({cc})"))?;
    let diagnostics = String::from_utf8_lossy(&res.stderr);
    if !res.status.success() {
        bail!("compiling {} failed:\n{diagnostics}", src.display());
    }
    if !diagnostics.trim().is_empty() {
        eprintln!("{cc} warnings for {}:\n{diagnostics}", src.display());
    }
    std::fs::rename(&tmp, &out).with_context(|| format!("install {}", out.display()))?;
    Ok(out)
}

/// The command that runs `program` under `config` on `g`'s fake GPU (tenant `tenant`).
fn command(g: &Gpumux, tenant: &str, config: Config, program: &Path, p: &Params) -> Command {
    let mut c = match config {
        Config::Bare => {
            let mut c = g.gpu.command(program);
            c.env_remove("LD_PRELOAD").env_remove("GPUMUX_SOCKET");
            c
        }
        Config::Passthrough => {
            let mut c = g.gpu.command(program);
            c.env(
                "LD_PRELOAD",
                gpumux_integration::gpumux::artifact("libgpumux.so"),
            )
            .env_remove("GPUMUX_SOCKET");
            c
        }
        Config::Registered | Config::Sliced | Config::Bounded => g.tenant_command(tenant, program),
    };
    c.args(["--iters", &p.iters.to_string()])
        .args(["--warmup", &p.warmup.to_string()])
        .args(["--chunks", &p.chunks.to_string()])
        .args(["--bytes", &p.bytes.to_string()])
        .args(["--launch-batch", &p.launch_batch.to_string()]);
    c
}

/// What the program must report about memory and the shim under each configuration.
pub struct Expect {
    /// The fake device's memory.
    pub device_bytes: u64,
    /// The tenant's quota.
    pub quota_bytes: u64,
}

/// Runs the program once under `config`, failing unless it exits 0, the configuration checks
/// out and every benchmark reported.
pub fn run_once(
    g: &Gpumux,
    tenant: &str,
    config: Config,
    program: &Path,
    params: &Params,
    expect: &Expect,
    timeout: Duration,
) -> Result<RunResult> {
    let mut cmd = command(g, tenant, config, program, params);
    let out = workloads::run(&mut cmd, timeout)
        .with_context(|| format!("run {} under {}", program.display(), config.label()))?;
    if !out.status.success() {
        bail!(
            "{} failed under {}: {}\nstdout: {:?}\nstderr: {}",
            program.display(),
            config.label(),
            out.status,
            out.lines.0,
            out.stderr
        );
    }
    check_config(config, &out.lines, expect)?;
    let mut samples = BTreeMap::new();
    for line in out.lines.ops("bench") {
        let name = line["name"].as_str().context("bench line without a name")?;
        let num = |k: &str| {
            line[k]
                .as_f64()
                .with_context(|| format!("{k} missing in {line}"))
        };
        samples.insert(
            name.to_string(),
            Sample {
                ns_per_op: num("ns_per_op")?,
                mean_ns_per_op: num("mean_ns_per_op")?,
                min_ns_per_op: num("min_ns_per_op")?,
            },
        );
    }
    for (name, _) in BENCHES {
        if !samples.contains_key(name) {
            bail!(
                "no {name:?} result under {}; output: {:?}",
                config.label(),
                out.lines.0
            );
        }
    }
    Ok(RunResult { samples })
}

/// Fails unless the run's `info` line matches `config`: the shim mapped only when preloaded,
/// and `cuMemGetInfo` reporting the quota only when registered.
fn check_config(config: Config, lines: &Lines, expect: &Expect) -> Result<()> {
    let info = lines
        .ops("info")
        .first()
        .copied()
        .with_context(|| format!("no info line under {}: {:?}", config.label(), lines.0))?;
    let shim = info["shim_loaded"].as_bool().unwrap_or(false);
    let total = info["mem_total"].as_u64().unwrap_or(0);
    let (want_shim, want_total) = match config {
        Config::Bare => (false, expect.device_bytes),
        Config::Passthrough => (true, expect.device_bytes),
        _ => (true, expect.quota_bytes),
    };
    if shim != want_shim || total != want_total {
        bail!(
            "{} is not what it claims: shim loaded {shim} (want {want_shim}), cuMemGetInfo total \
             {total} (want {want_total}); info: {info}",
            config.label()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The C program embeds the workloads' spin kernel: keep the copy identical.
    #[test]
    fn embedded_spin_kernel_matches_the_workloads_ptx() {
        let ptx = include_str!("../../workloads/ptx/spin.ptx");
        let code: Vec<&str> = ptx
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !l.trim_start().starts_with("//"))
            .collect();
        assert!(code.len() > 5, "{code:?}");
        for line in code {
            let quoted = format!("\"{}\\n\"", line.replace('\\', "\\\\").replace('"', "\\\""));
            assert!(
                super::SOURCE.contains(&quoted),
                "driver_bench.c lacks PTX line {line:?}"
            );
        }
    }
}
