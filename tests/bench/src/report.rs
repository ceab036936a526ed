//! Turning runs into figures: per benchmark and configuration the median over runs, the
//! added nanoseconds and the ratio against the bare fake, the verdict against the issue's
//! targets (the bound on queued work against the unbounded time-sliced launch), and their two
//! renderings (plain-text table, JSON document).

use crate::driver_bench::{BENCHES, Config, Params, RunResult};
use serde::Serialize;
use std::fmt::Write as _;

/// Added cost allowed per alloc+free pair (ns).
pub const ALLOC_TARGET_NS: f64 = 1000.0;
/// Added cost allowed per passed-through call (ns).
pub const PASSTHROUGH_TARGET_NS: f64 = 50.0;
/// Added cost allowed per launch for bounding queued work (ns, against the time-sliced launch).
pub const BOUND_TARGET_NS: f64 = 50.0;

/// The machine and build the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Cargo profile directory of this binary (`release`, `debug`).
    pub profile: String,
}

impl Machine {
    /// Describes this machine.
    pub fn detect(profile: String) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            profile,
        }
    }
}

/// One cell of the table: a benchmark under a configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Benchmark name (see [`BENCHES`]).
    pub bench: String,
    /// Configuration key.
    pub config: Config,
    /// Median over runs of each run's median chunk (ns per operation).
    pub median_ns: f64,
    /// Fastest run.
    pub min_ns: f64,
    /// Slowest run.
    pub max_ns: f64,
    /// Every run's figure, in run order.
    pub runs_ns: Vec<f64>,
    /// `median_ns` minus the bare fake's (0 for the bare fake itself).
    pub added_ns: f64,
    /// `median_ns` over the bare fake's.
    pub ratio: f64,
}

/// A target of the issue checked against one shim configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Benchmark the target is about.
    pub bench: String,
    /// Shim configuration measured.
    pub config: Config,
    /// What it is measured against (the bare fake, or another configuration).
    pub baseline: Config,
    /// Added ns measured.
    pub added_ns: f64,
    /// Added ns allowed.
    pub limit_ns: f64,
    /// Whether `added_ns < limit_ns`.
    pub met: bool,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine and build.
    pub machine: Machine,
    /// What the C program was asked to do.
    pub params: Params,
    /// Runs per configuration.
    pub repeats: usize,
    /// Benchmark × configuration, in table order.
    pub rows: Vec<Row>,
    /// The targets.
    pub targets: Vec<Verdict>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

impl Report {
    /// Builds the report from `runs[config]` (every run of each configuration, in order).
    pub fn new(
        machine: Machine,
        params: Params,
        repeats: usize,
        runs: &[(Config, Vec<RunResult>)],
    ) -> Report {
        let runs_of = |c: Config| {
            runs.iter()
                .find(|(k, _)| *k == c)
                .map_or(&[][..], |(_, r)| r.as_slice())
        };
        let mut rows = Vec::new();
        for (bench, _) in BENCHES {
            let figures = |c: Config| -> Vec<f64> {
                runs_of(c)
                    .iter()
                    .filter_map(|r| r.samples.get(bench).map(|s| s.ns_per_op))
                    .collect()
            };
            let bare = median(&figures(Config::Bare));
            for (config, _) in runs {
                let config = *config;
                let runs_ns = figures(config);
                let m = median(&runs_ns);
                rows.push(Row {
                    bench: bench.to_string(),
                    config,
                    median_ns: m,
                    min_ns: runs_ns.iter().copied().fold(f64::INFINITY, f64::min),
                    max_ns: runs_ns.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    runs_ns,
                    added_ns: m - bare,
                    ratio: m / bare,
                });
            }
        }
        // (benchmark, shim configuration, baseline, allowed added ns): every alloc+free pair; a
        // call the shim does not hook, whatever its mode; a hooked call while the shim passes
        // through; the bound on queued work on a launch (against the same launch unbounded).
        let checks = [
            (
                "alloc_free",
                Config::Passthrough,
                Config::Bare,
                ALLOC_TARGET_NS,
            ),
            (
                "alloc_free",
                Config::Registered,
                Config::Bare,
                ALLOC_TARGET_NS,
            ),
            (
                "passthrough",
                Config::Passthrough,
                Config::Bare,
                PASSTHROUGH_TARGET_NS,
            ),
            (
                "passthrough",
                Config::Registered,
                Config::Bare,
                PASSTHROUGH_TARGET_NS,
            ),
            (
                "totalmem",
                Config::Passthrough,
                Config::Bare,
                PASSTHROUGH_TARGET_NS,
            ),
            ("launch", Config::Bounded, Config::Sliced, BOUND_TARGET_NS),
        ];
        let targets = checks
            .iter()
            .filter_map(|&(bench, config, baseline, limit_ns)| {
                let find = |c: Config| rows.iter().find(|r| r.bench == bench && r.config == c);
                let added_ns = find(config)?.median_ns - find(baseline)?.median_ns;
                added_ns.is_finite().then(|| Verdict {
                    bench: bench.to_string(),
                    config,
                    baseline,
                    added_ns,
                    limit_ns,
                    met: added_ns < limit_ns,
                })
            })
            .collect();
        Report {
            machine,
            params,
            repeats,
            rows,
            targets,
        }
    }

    /// The plain-text table.
    pub fn table(&self) -> String {
        let p = &self.params;
        let mut s = String::new();
        writeln!(
            s,
            "gpumux-bench: the shim's added cost per driver call, against the bare fake driver"
        )
        .ok();
        writeln!(
            s,
            "machine: {} CPUs, {}; build: {}",
            self.machine.nproc, self.machine.cpu, self.machine.profile
        )
        .ok();
        writeln!(
            s,
            "per benchmark: {} timed iterations (+{} warm-up) in {} chunks; allocations of {} bytes; \
             {} run(s) per configuration, order alternating",
            p.iters, p.warmup, p.chunks, p.bytes, self.repeats
        ).ok();
        writeln!(
            s,
            "ns/op = median over runs of each run's median chunk; min..max over runs\n"
        )
        .ok();
        writeln!(
            s,
            "{:<38} {:<18} {:>10} {:>21} {:>10} {:>7}",
            "benchmark", "configuration", "ns/op", "min..max", "added ns", "ratio"
        )
        .ok();
        writeln!(s, "{}", "-".repeat(38 + 18 + 10 + 21 + 10 + 7 + 5)).ok();
        for (bench, label) in BENCHES {
            for (i, r) in self.rows.iter().filter(|r| r.bench == bench).enumerate() {
                let spread = format!("{:.1}..{:.1}", r.min_ns, r.max_ns);
                let added = if r.config == Config::Bare {
                    "-".to_string()
                } else if r.added_ns.is_finite() {
                    format!("{:+.1}", r.added_ns)
                } else {
                    "n/a".to_string()
                };
                writeln!(
                    s,
                    "{:<38} {:<18} {:>10.1} {:>21} {:>10} {:>7}",
                    if i == 0 { label } else { "" },
                    r.config.label(),
                    r.median_ns,
                    spread,
                    added,
                    if r.ratio.is_finite() {
                        format!("{:.3}", r.ratio)
                    } else {
                        "n/a".to_string()
                    }
                )
                .ok();
            }
        }
        writeln!(s, "\ntargets (added ns per call against the bare fake):").ok();
        if self.targets.is_empty() {
            writeln!(s, "  n/a: the bare fake was not measured").ok();
        }
        for v in &self.targets {
            let what = match v.bench.as_str() {
                "alloc_free" => "alloc+free pair",
                "passthrough" => "unhooked call",
                "launch" => "launch, bounded",
                _ => "hooked call",
            };
            let against = if v.baseline == Config::Bare {
                String::new()
            } else {
                format!(" (against {})", v.baseline.label())
            };
            writeln!(
                s,
                "  {what:<18} {:<18} {:>+9.1} ns  (target < {:.0} ns)  {}{against}",
                v.config.label(),
                v.added_ns,
                v.limit_ns,
                if v.met { "MET" } else { "MISSED" }
            )
            .ok();
        }
        writeln!(
            s,
            "\n* launch: time for cuLaunchKernel to return, in batches of {} launches with the \
             stream synchronised\n  between batches outside the timer. The fake's stream worker \
             thread runs the kernels meanwhile\n  and competes for the queue lock and the CPUs: \
             this row measures the fake as much as the shim.",
            p.launch_batch
        )
        .ok();
        if self.machine.profile != "release" {
            writeln!(
                s,
                "note: {} build; only a release build gives representative figures",
                self.machine.profile
            )
            .ok();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver_bench::Sample;
    use std::collections::BTreeMap;

    fn run(ns: f64) -> RunResult {
        let mut samples = BTreeMap::new();
        for (b, _) in BENCHES {
            samples.insert(
                b.to_string(),
                Sample {
                    ns_per_op: ns,
                    mean_ns_per_op: ns,
                    min_ns_per_op: ns,
                },
            );
        }
        RunResult { samples }
    }

    #[test]
    fn medians_added_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let params = Params {
            iters: 1,
            warmup: 1,
            chunks: 1,
            bytes: 1,
            launch_batch: 1,
        };
        let machine = Machine {
            nproc: 1,
            cpu: "x".into(),
            profile: "release".into(),
        };
        let runs = vec![
            (Config::Bare, vec![run(100.0), run(110.0), run(90.0)]),
            (Config::Passthrough, vec![run(120.0)]),
            (Config::Registered, vec![run(1200.0)]),
        ];
        let r = Report::new(machine, params, 3, &runs);
        assert_eq!(r.rows.len(), BENCHES.len() * 3);
        let reg = r
            .rows
            .iter()
            .find(|x| x.bench == "alloc_free" && x.config == Config::Registered)
            .unwrap();
        assert_eq!(reg.added_ns, 1100.0);
        assert_eq!(reg.ratio, 12.0);
        let missed: Vec<_> = r.targets.iter().filter(|v| !v.met).collect();
        assert_eq!(
            missed.len(),
            2,
            "registered misses both targets: {missed:?}"
        );
        let t = r.table();
        assert!(t.contains("MISSED") && t.contains("shim + gpumuxd"), "{t}");

        let only = vec![(Config::Registered, vec![run(1200.0)])];
        let r = Report::new(r.machine, params, 1, &only);
        assert_eq!(r.rows.len(), BENCHES.len());
        assert!(r.rows.iter().all(|x| x.added_ns.is_nan()));
        assert!(r.targets.is_empty());
        assert!(r.table().contains("n/a"));
    }
}
