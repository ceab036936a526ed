//! Device time per process, from the workloads' own reports and from the fake's ground truth.
//!
//! This module owns: the clock the workloads stamp their reports with ([`mono_ms`]), turning a
//! `load` workload's `load-progress` lines into its completed device time at any instant
//! ([`kernels_at`]), measuring a window of device time per process both ways ([`Window`]),
//! reading the fake's kernel trace for a window, and the statistics the scenarios report
//! (percentiles, Jain's fairness index).
//!
//! The workloads' figure works on any driver: a `load` process synchronizes after every batch
//! of `spin(ns)` kernels and reports how many kernels completed by then, so its device time is
//! kernels × ns. Between two reports the batch is taken to have run back to back just before
//! the later one (true under time-slicing, where a batch runs inside its tenant's slice). When
//! the fake GPU is present, the same window is also read from its per-process busy time.

use crate::proc::Proc;
use anyhow::{Context, Result, bail};
use fakegpu::KernelRecord;
use gpumux_integration::gpumux::Gpumux;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// CLOCK_MONOTONIC in ms: the clock of the workloads' `t_ms`, `start_ms`, `end_ms` and of the
/// fake's kernel trace.
pub fn mono_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// A `load-progress` report: `kernels` had completed at `t_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t_ms: f64,
    pub kernels: u64,
}

/// The progress reports among `lines`, in order.
pub fn points(lines: &[Value]) -> Vec<Point> {
    lines
        .iter()
        .filter(|v| v["op"] == "load-progress")
        .filter_map(|v| {
            Some(Point {
                t_ms: v["t_ms"].as_f64()?,
                kernels: v["kernels"].as_u64()?,
            })
        })
        .collect()
}

/// Kernels completed at `t` (fractional inside a batch), with each batch taken to have run
/// back to back (`ns` each) just before the report that counts it.
pub fn kernels_at(points: &[Point], ns: u64, t: f64) -> f64 {
    let kernel_ms = ns as f64 / 1e6;
    let mut before = 0u64;
    for p in points {
        if t <= p.t_ms {
            let batch = (p.kernels - before) as f64;
            let ran_from = p.t_ms - batch * kernel_ms;
            let done = if kernel_ms > 0.0 {
                ((t - ran_from) / kernel_ms).clamp(0.0, batch)
            } else {
                0.0
            };
            return before as f64 + done;
        }
        before = p.kernels;
    }
    before as f64
}

/// A `load` workload and the kernel length it runs.
pub struct Load {
    pub proc: Proc,
    pub tenant: String,
    pub ns: u64,
}

impl Load {
    /// Device ms this load completed in `[t0, t1]` by its own reports.
    pub fn device_ms(&self, t0: f64, t1: f64) -> f64 {
        let p = points(&self.proc.lines_of("load-progress"));
        (kernels_at(&p, self.ns, t1) - kernels_at(&p, self.ns, t0)) * self.ns as f64 / 1e6
    }

    /// Waits until a report at or after `t` arrived (or the load ended).
    pub fn wait_reported(&self, t: f64, timeout: Duration) -> Result<()> {
        self.proc.wait_until(timeout, |lines| {
            let reported = lines.iter().any(|v| {
                v["op"] == "load" || (v["op"] == "load-progress" && v["t_ms"].as_f64() >= Some(t))
            });
            reported.then_some(())
        })
    }
}

/// Busy ns per pid on device 0 of the fake GPU.
pub fn fake_busy(g: &Gpumux) -> Option<HashMap<u32, u64>> {
    let fake = g.fake()?;
    let snap = fakegpu::snapshot(fake.state_path()).ok()?;
    let d = snap.devices.first()?;
    let mut m: HashMap<u32, u64> = d.processes.iter().map(|p| (p.pid, p.busy_ns)).collect();
    // the device's own total under pid 0 (no process has pid 0)
    m.insert(0, d.busy_ns);
    Some(m)
}

/// One measured window: `[t0, t1]` on the monotonic clock, per-load device ms by the loads'
/// reports and (fake GPU) by ground truth.
#[derive(Debug, Clone)]
pub struct Window {
    pub t0: f64,
    pub t1: f64,
    /// The loads' pids (same order as the loads).
    pub pids: Vec<u32>,
    /// Device ms per load, by its reports (same order as the loads).
    pub reported_ms: Vec<f64>,
    /// Device ms per load by the fake's ground truth.
    pub fake_ms: Option<Vec<f64>>,
    /// The fake device's total busy ms over the window.
    pub fake_busy_ms: Option<f64>,
}

impl Window {
    /// Measures `loads` over the next `len`, then waits for their reports to cover it.
    pub fn measure(g: &Gpumux, loads: &[&Load], len: Duration) -> Result<Window> {
        let before = fake_busy(g);
        let t0 = mono_ms();
        std::thread::sleep(len);
        let after = fake_busy(g);
        let t1 = mono_ms();
        for l in loads {
            l.wait_reported(t1, Duration::from_secs(10))
                .context("a load's reports to cover the window")?;
        }
        Ok(Self::from_parts(loads, t0, t1, before, after))
    }

    /// The window `[t0, t1]` from reports already received and two fake snapshots.
    pub fn from_parts(
        loads: &[&Load],
        t0: f64,
        t1: f64,
        before: Option<HashMap<u32, u64>>,
        after: Option<HashMap<u32, u64>>,
    ) -> Window {
        let reported_ms = loads.iter().map(|l| l.device_ms(t0, t1)).collect();
        let (fake_ms, fake_busy_ms) = match (before, after) {
            (Some(b), Some(a)) => {
                let d = |pid: u32| {
                    a.get(&pid)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(b.get(&pid).copied().unwrap_or(0))
                        as f64
                        / 1e6
                };
                (
                    Some(loads.iter().map(|l| d(l.proc.pid())).collect()),
                    Some(d(0)),
                )
            }
            _ => (None, None),
        };
        Window {
            t0,
            t1,
            pids: loads.iter().map(|l| l.proc.pid()).collect(),
            reported_ms,
            fake_ms,
            fake_busy_ms,
        }
    }

    /// Window length, ms.
    pub fn len_ms(&self) -> f64 {
        self.t1 - self.t0
    }

    /// Fraction of the window each group of loads (indices) ran, by reports.
    pub fn shares(&self, groups: &[Vec<usize>]) -> Vec<f64> {
        Self::group(&self.reported_ms, groups, self.len_ms())
    }

    /// The same by the fake's ground truth.
    pub fn fake_shares(&self, groups: &[Vec<usize>]) -> Option<Vec<f64>> {
        self.fake_ms
            .as_ref()
            .map(|ms| Self::group(ms, groups, self.len_ms()))
    }

    /// Fraction of the window the device was busy: by reports (sum over loads) and by the fake.
    pub fn busy(&self) -> (f64, Option<f64>) {
        (
            self.reported_ms.iter().sum::<f64>() / self.len_ms(),
            self.fake_busy_ms.map(|b| b / self.len_ms()),
        )
    }

    fn group(ms: &[f64], groups: &[Vec<usize>], len: f64) -> Vec<f64> {
        groups
            .iter()
            .map(|g| g.iter().map(|&i| ms[i]).sum::<f64>() / len)
            .collect()
    }
}

/// The fake's kernel trace on device 0 for kernels that started in `[t0, t1]` (ms), by start.
pub fn trace(g: &Gpumux, t0: f64, t1: f64) -> Result<Option<Vec<KernelRecord>>> {
    let Some(fake) = g.fake() else {
        return Ok(None);
    };
    let mut t = fakegpu::kernel_trace(fake.state_path(), 0).context("read the kernel trace")?;
    let (a, b) = ((t0 * 1e6) as u64, (t1 * 1e6) as u64);
    t.retain(|k| k.start_ns >= a && k.start_ns <= b);
    t.sort_by_key(|k| k.start_ns);
    if t.len() >= 65536 {
        bail!("the kernel trace ring (65536) overflowed in the window: use longer kernels");
    }
    Ok(Some(t))
}

/// Runs of consecutive kernels of the same group in a trace: `(group, first start ns, last end
/// ns)`; kernels of pids not in `group_of` are skipped. Each change of group is a switch.
pub fn runs(trace: &[KernelRecord], group_of: &HashMap<u32, usize>) -> Vec<(usize, u64, u64)> {
    let mut out: Vec<(usize, u64, u64)> = Vec::new();
    for k in trace {
        let Some(&g) = group_of.get(&k.pid) else {
            continue;
        };
        match out.last_mut() {
            Some(r) if r.0 == g => r.2 = k.end_ns,
            _ => out.push((g, k.start_ns, k.end_ns)),
        }
    }
    out
}

/// The `p`-th percentile (0..=100, nearest rank) of `xs`; NaN when empty.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Jain's fairness index of `xs`: 1 when all equal, 1/n when one has everything.
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let sq: f64 = xs.iter().map(|x| x * x).sum();
    if sq == 0.0 {
        return f64::NAN;
    }
    sum * sum / (xs.len() as f64 * sq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_at_places_each_batch_just_before_its_report() {
        // 4 kernels of 2 ms reported at 100 (ran 92..100), 4 more at 200 (ran 192..200)
        let p = [
            Point {
                t_ms: 100.0,
                kernels: 4,
            },
            Point {
                t_ms: 200.0,
                kernels: 8,
            },
        ];
        let ns = 2_000_000;
        assert_eq!(kernels_at(&p, ns, 50.0), 0.0);
        assert_eq!(kernels_at(&p, ns, 96.0), 2.0);
        assert_eq!(kernels_at(&p, ns, 150.0), 4.0);
        assert_eq!(kernels_at(&p, ns, 199.0), 7.5);
        assert_eq!(kernels_at(&p, ns, 300.0), 8.0);
    }

    #[test]
    fn runs_merge_consecutive_kernels_of_a_group() {
        let k = |pid, start_ns, end_ns| KernelRecord {
            pid,
            start_ns,
            end_ns,
            ready_ns: start_ns,
        };
        let t = [
            k(1, 0, 10),
            k(2, 10, 20),
            k(3, 20, 30),
            k(9, 30, 35),
            k(1, 40, 50),
        ];
        let g: HashMap<u32, usize> = [(1, 0), (2, 0), (3, 1)].into();
        assert_eq!(runs(&t, &g), vec![(0, 0, 20), (1, 20, 30), (0, 40, 50)]);
    }

    #[test]
    fn statistics() {
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 99.0), 4.0);
        assert!((jain(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0]) - 0.5).abs() < 1e-12);
    }
}
