//! The named scenarios and benchmarks.
//!
//! This module owns every scenario: the tenants it configures, the workloads it starts, how long
//! it measures, the figure it reports, the target that figure is held to and the notes (the
//! fake's ground-truth cross-check among them). Each scenario starts its own `gpumuxd` on a fresh
//! device (a fresh fake GPU, or the real driver with `--real`) and leaves nothing running.
//!
//! Device time is measured from the workloads' own reports (see [`crate::measure`]), which works
//! on a real GPU; on the fake GPU the same window is cross-checked against its ground truth, and
//! the switch-cost benchmark reads its kernel trace.

use crate::measure::{self, Load, Window, mono_ms, percentile, points};
use crate::proc::Proc;
use crate::report::{Row, Verdict};
use anyhow::{Context, Result, anyhow, bail};
use gpumux_integration::gpumux::{Backend, Gpumux};
use gpumux_integration::workloads::c_workload;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod latency;

/// A scenario: its name, what it shows, and how it runs.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Ctx) -> Result<Vec<Row>>,
}

/// Every scenario, in table order.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "weights-3-1",
        about: "two saturating tenants, weights 3:1: device time 75/25",
        run: weights_3_1,
    },
    Scenario {
        name: "weights-1-2-3-4",
        about: "four saturating tenants, weights 1:2:3:4: Jain's index of weight-normalised shares",
        run: weights_1_2_3_4,
    },
    Scenario {
        name: "lone-tenant",
        about: "one active tenant beside two registered idle ones gets the device",
        run: lone_tenant,
    },
    Scenario {
        name: "idle-absorption",
        about: "when one of two saturating tenants goes idle the other takes over within a quantum",
        run: idle_absorption,
    },
    Scenario {
        name: "compute-limit-30",
        about: "compute_limit = \"30%\" on an otherwise idle device",
        run: compute_limit_30,
    },
    Scenario {
        name: "interactive",
        about: "short kernels with pauses beside a saturating tenant: p99 wait for the device",
        run: interactive,
    },
    Scenario {
        name: "processes-8-vs-1",
        about: "tenant with 8 saturating processes vs one with 1, equal weights: 50/50",
        run: processes_8_vs_1,
    },
    Scenario {
        name: "stopped-holder",
        about: "a SIGSTOPped slice holder is passed over within a bounded time",
        run: stopped_holder,
    },
    Scenario {
        name: "launch-cost",
        about: "added ns per launch while holding the slice (vs the bare driver)",
        run: launch_cost,
    },
    Scenario {
        name: "busy-4",
        about: "device busy fraction with 4 saturating tenants",
        run: busy_4,
    },
    Scenario {
        name: "switch-cost",
        about: "device idle gap at a tenant switch vs within a slice, switches per second",
        run: switch_cost,
    },
    Scenario {
        name: "graph-lone",
        about: "one tenant replaying a captured CUDA graph (8 kernels) beside an idle one: device busy",
        run: graph_lone,
    },
    Scenario {
        name: "graph-weights-3-1",
        about: "two tenants replaying CUDA graphs, weights 3:1: device time 75/25",
        run: graph_weights_3_1,
    },
    Scenario {
        name: "latency",
        about: "interactive requests beside a deep-queued batch tenant: p99 alone, in class normal, in class latency",
        run: latency::latency,
    },
    Scenario {
        name: "consolidation",
        about: "4 interactive services (15% each) + a batch job on one GPU: device busy, each p99 against alone",
        run: latency::consolidation,
    },
    Scenario {
        name: "many-tenants",
        about: "64 tenants x 8 processes registering at once; gpumuxctl status latency with them",
        run: many_tenants,
    },
];

/// How the runner was asked to run.
pub struct Ctx {
    /// Smoke run: about a second of measurement per scenario.
    pub quick: bool,
    /// The machine's own driver instead of the fake GPU.
    pub real: bool,
    /// Where workloads' stderr goes.
    pub log_dir: PathBuf,
    /// Where to keep each scenario's daemon log, if anywhere.
    pub keep_logs: Option<PathBuf>,
    /// What the daemons of the scenario that just ran logged as warnings or errors (a summary
    /// per daemon; the runner adds it to the scenario's notes and clears it).
    pub daemon_notes: Mutex<Vec<String>>,
}

/// A scenario's gpumuxd: the harness's [`Gpumux`], whose log is summarised into
/// [`Ctx::daemon_notes`] (and kept, with `--keep-logs`) when it is dropped.
pub struct Daemon<'a> {
    g: Gpumux,
    ctx: &'a Ctx,
}

impl std::ops::Deref for Daemon<'_> {
    type Target = Gpumux;
    fn deref(&self) -> &Gpumux {
        &self.g
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let log = self.g.log();
        if let Some(note) = summarise_log(&log) {
            self.ctx
                .daemon_notes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(note);
        }
        if let Some(dir) = &self.ctx.keep_logs {
            std::fs::create_dir_all(dir).ok();
            let name = format!("gpumuxd-{}.log", self.g.daemon_pid().unwrap_or(0));
            std::fs::write(dir.join(name), log).ok();
        }
    }
}

/// Counts of the daemon's warnings and errors by message (fields and ANSI colours stripped),
/// e.g. `daemon log: 2× WARN process did not drain in time ...`.
pub fn summarise_log(log: &str) -> Option<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in log.lines() {
        let plain = strip_ansi(line);
        let Some(level) = ["WARN", "ERROR"]
            .into_iter()
            .find(|l| plain.split_whitespace().nth(1) == Some(*l))
        else {
            continue;
        };
        // "<time> LEVEL target: message key=value ..."
        let msg = plain.split_once(": ").map_or(plain.as_str(), |(_, m)| m);
        let words: Vec<&str> = msg.split(' ').collect();
        let keep = words
            .iter()
            .rposition(|w| !w.contains('='))
            .map_or(0, |i| i + 1);
        let key = format!("{level} {}", words[..keep].join(" "));
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    if counts.is_empty() {
        return None;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n}× {k}")).collect();
    Some(format!("daemon log: {}", parts.join(", ")))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `load` workload's shape.
#[derive(Debug, Clone, Copy)]
struct Spec {
    /// Kernel length.
    ns: u64,
    /// Kernels per synchronized batch.
    batch: u64,
    /// Pause after each batch.
    pause_ms: u64,
    /// 0: `load` (kernel launches); n: `graph`, each launch a CUDA graph of n kernels captured
    /// once (batch counts graphs).
    graph_kernels: u64,
}

/// Saturating: batches of 4 x 2 ms kernels, back to back (as the integration tests).
const SATURATE: Spec = Spec {
    ns: 2_000_000,
    batch: 4,
    pause_ms: 0,
    graph_kernels: 0,
};

/// Decode-like graph replays: a graph of 8 x 2 ms kernels captured once; each step launches it
/// and synchronizes (as a decode loop reads its logits), back to back.
const GRAPH_REPLAY: Spec = Spec {
    ns: 2_000_000,
    batch: 1,
    pause_ms: 0,
    graph_kernels: 8,
};

/// Fake GPU memory.
const DEVICE_BYTES: u64 = 16 << 30;
/// How long a workload may take to start (compile, register, create its context).
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn tenant(weight: u32) -> String {
    format!("memory_limit = \"1GiB\"\nweight = {weight}\n")
}

impl Ctx {
    /// The measurement window.
    fn window(&self) -> Duration {
        if self.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        }
    }

    /// Time given to loads to reach their steady state before measuring.
    fn settle(&self) -> Duration {
        if self.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(500)
        }
    }

    /// A load's run time covering settle + window with slack.
    fn load_secs(&self) -> u64 {
        (self.settle() + self.window()).as_secs() + 2
    }

    fn stderr_log(&self) -> PathBuf {
        self.log_dir.join("workloads.stderr")
    }

    /// A gpumuxd on a fresh device with `tenants`.
    fn start(&self, tenants: &[(&str, String)]) -> Result<Daemon<'_>> {
        let backend = if self.real {
            Backend::Real
        } else {
            Backend::Fake(vec![DEVICE_BYTES])
        };
        let refs: Vec<(&str, &str)> = tenants.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let g = std::panic::catch_unwind(|| Gpumux::start_on(backend, &refs, ""))
            .map_err(|_| anyhow!("could not start gpumuxd (see the message above)"))?;
        Ok(Daemon { g, ctx: self })
    }

    /// Starts a `load` in `tenant` for `seconds` (and idle `linger_s` after) and waits until it
    /// runs.
    fn load_with(
        &self,
        g: &Gpumux,
        tenant: &str,
        spec: Spec,
        seconds: u64,
        linger_s: u64,
    ) -> Result<Load> {
        let mut cmd = g.tenant_command(tenant, c_workload());
        if spec.graph_kernels > 0 {
            cmd.arg("graph")
                .args(["--kernels", &spec.graph_kernels.to_string()]);
        } else {
            cmd.arg("load");
        }
        cmd.args(["--ns", &spec.ns.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--batch", &spec.batch.to_string()])
            .args(["--pause-ms", &spec.pause_ms.to_string()])
            .args(["--report-ms", "1"])
            .args(["--linger-s", &linger_s.to_string()]);
        let proc = Proc::spawn(&mut cmd, format!("load in {tenant}"), &self.stderr_log())?;
        proc.wait_for("load-start", START_TIMEOUT)?;
        Ok(Load {
            proc,
            tenant: tenant.to_string(),
            ns: spec.ns,
        })
    }

    fn load(&self, g: &Gpumux, tenant: &str, spec: Spec) -> Result<Load> {
        self.load_with(g, tenant, spec, self.load_secs(), 0)
    }

    /// The same `load` on the bare driver (no shim, no daemon), on `g`'s device, for `seconds`.
    fn bare_load(&self, g: &Gpumux, spec: Spec, seconds: u64) -> Result<Load> {
        let mut cmd = g.command(c_workload());
        cmd.env_remove("LD_PRELOAD")
            .env_remove("GPUMUX_SOCKET")
            .arg("load")
            .args(["--ns", &spec.ns.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--batch", &spec.batch.to_string()])
            .args(["--pause-ms", &spec.pause_ms.to_string()])
            .args(["--report-ms", "1"]);
        let proc = Proc::spawn(&mut cmd, "bare load".to_string(), &self.stderr_log())?;
        proc.wait_for("load-start", START_TIMEOUT)?;
        Ok(Load {
            proc,
            tenant: "(bare)".to_string(),
            ns: spec.ns,
        })
    }

    /// A registered process of `tenant` holding `bytes` (idle: no launches).
    fn holder(&self, g: &Gpumux, tenant: &str, bytes: u64) -> Result<Proc> {
        let p = Proc::spawn(
            g.tenant_command(tenant, c_workload()).args([
                "hold",
                "--bytes",
                &bytes.to_string(),
                "--seconds",
                "600",
            ]),
            format!("holder in {tenant}"),
            &self.stderr_log(),
        )?;
        let line = p.wait_for("hold", START_TIMEOUT)?;
        if line["result"] != 0 {
            bail!("holding {bytes} bytes in {tenant}: {line}");
        }
        Ok(p)
    }
}

/// The daemon's quantum.
fn quantum_ms(g: &Gpumux) -> Result<f64> {
    g.status()?["quantum_ms"]
        .as_f64()
        .context("quantum_ms in the status report")
}

/// Fails when a load reported a driver error.
fn check_loads(loads: &[&Load]) -> Result<()> {
    for l in loads {
        for v in l.proc.lines_of("load") {
            if v["result"] != 0 {
                bail!("a load in {} failed: {v}", l.tenant);
            }
        }
    }
    Ok(())
}

/// The fake's high-water mark of kernels running at once.
fn overlap(g: &Gpumux) -> Option<u32> {
    let fake = g.fake()?;
    let s = fakegpu::snapshot(fake.state_path()).ok()?;
    s.devices.first().map(|d| d.max_concurrent_kernels)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn shares_text(labels: &[&str], shares: &[f64]) -> String {
    labels
        .iter()
        .zip(shares)
        .map(|(l, x)| format!("{l} {}", pct(*x)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Notes with each group's share of the window by the workloads' reports and, on the fake, by
/// its ground truth next to them (flagging a disagreement over 2 points, and kernels that ever
/// overlapped, which must not happen).
fn with_fake(mut row: Row, g: &Gpumux, w: &Window, labels: &[&str], groups: &[Vec<usize>]) -> Row {
    let ours = w.shares(groups);
    let (busy, fake_busy) = w.busy();
    row = row.note(format!(
        "{:.0} s window, reports: {}, busy {}",
        w.len_ms() / 1e3,
        shares_text(labels, &ours),
        pct(busy)
    ));
    if let Some(fs) = w.fake_shares(groups) {
        row = row.note(format!(
            "fake ground truth: {}, busy {}",
            shares_text(labels, &fs),
            pct(fake_busy.unwrap_or(f64::NAN))
        ));
        let diff = ours
            .iter()
            .zip(&fs)
            .map(|(a, b)| (a - b).abs() * 100.0)
            .fold(0.0, f64::max);
        row = row.fig("fake_max_diff_points", diff);
        if diff > 2.0 {
            row = row.note(format!("REPORTS AND THE FAKE DISAGREE by {diff:.1} points"));
        }
    }
    if groups.len() > 1
        && let Ok(Some(trace)) = measure::trace(g, w.t0, w.t1)
    {
        // How the device actually alternated: runs of one group's kernels.
        let group_of: HashMap<u32, usize> = groups
            .iter()
            .enumerate()
            .flat_map(|(gi, idx)| idx.iter().map(move |&i| (w.pids[i], gi)))
            .collect();
        let runs = measure::runs(&trace, &group_of);
        let lens: Vec<f64> = runs.iter().map(|r| (r.2 - r.1) as f64 / 1e6).collect();
        let per_s = runs.len().saturating_sub(1) as f64 / (w.len_ms() / 1e3);
        row = row
            .note(format!(
                "fake trace: {per_s:.0} tenant switches/s, median run {:.1} ms",
                percentile(&lens, 50.0)
            ))
            .fig("switches_per_s", per_s)
            .fig("median_run_ms", percentile(&lens, 50.0));
    }
    if let Some(m) = overlap(g)
        && m > 1
    {
        row = row.note(format!("KERNELS OVERLAPPED (max {m} at once on the fake)"));
        row.verdict = Verdict::Fail;
    }
    row
}

fn weights_3_1(ctx: &Ctx) -> Result<Vec<Row>> {
    split_3_1(ctx, "weights-3-1", SATURATE)
}

fn graph_weights_3_1(ctx: &Ctx) -> Result<Vec<Row>> {
    split_3_1(ctx, "graph-weights-3-1", GRAPH_REPLAY)
}

/// Two saturating tenants of `spec`, weights 3:1.
fn split_3_1(ctx: &Ctx, name: &str, spec: Spec) -> Result<Vec<Row>> {
    let g = ctx.start(&[("a", tenant(3)), ("b", tenant(1))])?;
    let quantum = quantum_ms(&g)?;
    let a = ctx.load(&g, "a", spec)?;
    let b = ctx.load(&g, "b", spec)?;
    std::thread::sleep(ctx.settle());
    let w = Window::measure(&g, &[&a, &b], ctx.window())?;
    check_loads(&[&a, &b])?;
    let groups = [vec![0], vec![1]];
    let s = w.shares(&groups);
    let busy = s[0] + s[1];
    let frac = s[0] / busy;
    // The weight-1 tenant's waits for the device: on the fake, how long b went without the
    // device between two of its runs (the device's view: a's turn and the switches); its own
    // report (each batch's time beyond its kernels) also counts its host's delays.
    let done = b
        .proc
        .wait_for("load", Duration::from_secs(ctx.load_secs() + 60))?;
    let batch_wait = done["wait_p99_ms"].as_f64().context("wait_p99_ms")?;
    let device_wait = measure::trace(&g, w.t0, w.t1)?.map(|trace| {
        let group_of: HashMap<u32, usize> = [(a.proc.pid(), 0), (b.proc.pid(), 1)].into();
        let runs = measure::runs(&trace, &group_of);
        let b_runs: Vec<&(usize, u64, u64)> = runs.iter().filter(|r| r.0 == 1).collect();
        let gaps: Vec<f64> = b_runs
            .windows(2)
            .map(|p| p[1].1.saturating_sub(p[0].2) as f64 / 1e6)
            .collect();
        percentile(&gaps, 99.0)
    });
    let wait = device_wait.unwrap_or(batch_wait);
    let mut row = Row::new(
        name,
        frac * 100.0,
        "%",
        format!("a {} / b {} of busy time", pct(frac), pct(1.0 - frac)),
    )
    .target("a 75% ± 2", (frac * 100.0 - 75.0).abs() <= 2.0)
    .note(format!(
        "b's p99 wait {wait:.1} ms ({:.2} quanta, target ≤ 1.5){}; its batches' p99 wait {batch_wait:.1} ms",
        wait / quantum,
        if device_wait.is_some() { " between its runs on the device" } else { "" }
    ))
    .fig("a_share", s[0])
    .fig("b_share", s[1])
    .fig("b_wait_p99_ms", wait)
    .fig("b_wait_p99_quanta", wait / quantum)
    .fig("b_batch_wait_p99_ms", batch_wait);
    if wait > 1.5 * quantum {
        row = row.note("B WAITED LONGER THAN 1.5 QUANTA");
        row.verdict = Verdict::Fail;
    }
    Ok(vec![with_fake(row, &g, &w, &["a", "b"], &groups)])
}

fn weights_1_2_3_4(ctx: &Ctx) -> Result<Vec<Row>> {
    let names = ["a", "b", "c", "d"];
    let weights = [1.0, 2.0, 3.0, 4.0];
    let tenants: Vec<(&str, String)> = names
        .iter()
        .zip(1..)
        .map(|(n, w)| (*n, tenant(w)))
        .collect();
    let g = ctx.start(&tenants)?;
    let loads: Vec<Load> = names
        .iter()
        .map(|n| ctx.load(&g, n, SATURATE))
        .collect::<Result<_>>()?;
    let refs: Vec<&Load> = loads.iter().collect();
    std::thread::sleep(ctx.settle());
    let w = Window::measure(&g, &refs, ctx.window())?;
    check_loads(&refs)?;
    let groups: Vec<Vec<usize>> = (0..4).map(|i| vec![i]).collect();
    let s = w.shares(&groups);
    let busy: f64 = s.iter().sum();
    let normalised: Vec<f64> = s
        .iter()
        .zip(weights)
        .map(|(x, wt)| x / busy / (wt / 10.0))
        .collect();
    let j = measure::jain(&normalised);
    let shares: Vec<String> = s
        .iter()
        .map(|x| format!("{:.1}", x / busy * 100.0))
        .collect();
    let row = Row::new(
        "weights-1-2-3-4",
        j,
        "index",
        format!("Jain {j:.4} (shares {} %)", shares.join("/")),
    )
    .target("≥ 0.99", j >= 0.99)
    .fig("jain", j)
    .fig("busy", busy);
    let mut row = with_fake(row, &g, &w, &names, &groups);
    if let Some(fs) = w.fake_shares(&groups) {
        let fb: f64 = fs.iter().sum();
        let fj = measure::jain(
            &fs.iter()
                .zip(weights)
                .map(|(x, wt)| x / fb / (wt / 10.0))
                .collect::<Vec<_>>(),
        );
        row = row.note(format!("fake Jain {fj:.4}")).fig("fake_jain", fj);
    }
    Ok(vec![row])
}

fn graph_lone(ctx: &Ctx) -> Result<Vec<Row>> {
    let g = ctx.start(&[("a", tenant(1)), ("b", tenant(1))])?;
    // b is registered and holds memory, but launches nothing: the device is time-sliced.
    let _b = ctx.holder(&g, "b", 64 << 20)?;
    let a = ctx.load(&g, "a", GRAPH_REPLAY)?;
    std::thread::sleep(ctx.settle());
    let w = Window::measure(&g, &[&a], ctx.window())?;
    check_loads(&[&a])?;
    let s = w.shares(&[vec![0]])[0];
    let row = Row::new("graph-lone", s * 100.0, "%", format!("a {}", pct(s)))
        .target("≥ 97%", s >= 0.97)
        .note("graph of 8 x 2 ms kernels captured once, one launch + sync per step; b idle")
        .fig("a_share", s);
    Ok(vec![with_fake(row, &g, &w, &["a"], &[vec![0]])])
}

fn lone_tenant(ctx: &Ctx) -> Result<Vec<Row>> {
    let g = ctx.start(&[("a", tenant(1)), ("b", tenant(1)), ("c", tenant(1))])?;
    // b and c are registered and hold memory, but launch nothing
    let _b = ctx.holder(&g, "b", 64 << 20)?;
    let _c = ctx.holder(&g, "c", 64 << 20)?;
    // The same load on the bare fake (no shim, no daemon) under the same host load: the two
    // take turns (the other one stopped), in pieces, so that a host whose load drifts weighs
    // on both alike.
    let pieces = 5;
    let piece = ctx.window() / pieces;
    let pause = Duration::from_millis(100);
    let secs = (ctx.settle() + (piece + pause) * 2 * pieces).as_secs() + 3;
    let bare = ctx.bare_load(&g, SATURATE, secs)?;
    let a = ctx.load_with(&g, "a", SATURATE, secs, 0)?;
    a.proc.signal(libc::SIGSTOP)?;
    std::thread::sleep(ctx.settle());
    let (mut bare_ms, mut bare_len, mut a_ms, mut a_len) = (0.0, 0.0, 0.0, 0.0);
    let mut last = None;
    for _ in 0..pieces {
        let w = Window::measure(&g, &[&bare], piece)?;
        (bare_ms, bare_len) = (bare_ms + w.reported_ms[0], bare_len + w.len_ms());
        bare.proc.signal(libc::SIGSTOP)?;
        a.proc.signal(libc::SIGCONT)?;
        std::thread::sleep(pause);
        let w = Window::measure(&g, &[&a], piece)?;
        (a_ms, a_len) = (a_ms + w.reported_ms[0], a_len + w.len_ms());
        a.proc.signal(libc::SIGSTOP)?;
        bare.proc.signal(libc::SIGCONT)?;
        std::thread::sleep(pause);
        last = Some(w);
    }
    a.proc.signal(libc::SIGCONT)?;
    check_loads(&[&a, &bare])?;
    let (s, bare_share) = (a_ms / a_len, bare_ms / bare_len);
    let rel = s / bare_share;
    let row = Row::new(
        "lone-tenant",
        s * 100.0,
        "%",
        format!(
            "a {} ({} of the bare fake's {})",
            pct(s),
            pct(rel),
            pct(bare_share)
        ),
    )
    .target("≥ 95% of bare", rel >= 0.95)
    .note(format!(
        "b and c registered, holding memory, idle; a and the same load on the bare fake took \
         {pieces} turns of {:.1} s each",
        piece.as_secs_f64()
    ))
    .fig("a_share", s)
    .fig("bare_share", bare_share)
    .fig("of_bare", rel);
    let w = last.context("no measurement")?;
    Ok(vec![with_fake(row, &g, &w, &["a"], &[vec![0]])])
}

fn idle_absorption(ctx: &Ctx) -> Result<Vec<Row>> {
    let g = ctx.start(&[("a", tenant(1)), ("b", tenant(1))])?;
    let quantum = quantum_ms(&g)?;
    let b_secs = if ctx.quick { 1 } else { 3 };
    let a = ctx.load(&g, "a", SATURATE)?;
    // b saturates for a while, then stays registered with its context but launches nothing
    let b = ctx.load_with(&g, "b", SATURATE, b_secs, 60)?;
    let done = b.proc.wait_for("load", Duration::from_secs(b_secs + 30))?;
    if done["result"] != 0 {
        bail!("the load in b failed: {done}");
    }
    let b_end = done["end_ms"].as_f64().context("end_ms")?;
    let after = if ctx.quick { 500.0 } else { 2000.0 };
    let t1 = b_end + after;
    std::thread::sleep(Duration::from_secs_f64(
        ((t1 - mono_ms()) / 1e3).max(0.0) + 0.05,
    ));
    a.wait_reported(t1, Duration::from_secs(10))?;
    check_loads(&[&a])?;
    // First batch of a's that finished after b's last one: its kernels started at the earliest
    // (report time - batch × ns), taken as when a got the device.
    let kernel_ms = a.ns as f64 / 1e6;
    let pa = points(&a.proc.lines_of("load-progress"));
    let mut prev = 0;
    let mut gap = None;
    for p in &pa {
        if p.t_ms > b_end {
            let start = p.t_ms - (p.kernels - prev) as f64 * kernel_ms;
            gap = Some((start - b_end).max(0.0));
            break;
        }
        prev = p.kernels;
    }
    let gap = gap.context("a made no progress after b went idle")?;
    let share = a.device_ms(b_end, t1) / after;
    let mut row = Row::new(
        "idle-absorption",
        gap,
        "ms",
        format!("a ran {gap:.1} ms after b's last batch"),
    )
    .target(format!("≤ 1 quantum ({quantum:.0} ms)"), gap <= quantum)
    .note(format!(
        "a's share over the {:.1} s after: {}",
        after / 1e3,
        pct(share)
    ))
    .fig("gap_ms", gap)
    .fig("a_share_after", share);
    let b_pid = b.proc.pid();
    if let Some(trace) = measure::trace(&g, b_end - 1000.0, t1)? {
        let b_last = trace
            .iter()
            .filter(|k| k.pid == b_pid)
            .map(|k| k.end_ns)
            .max();
        if let Some(b_last) = b_last {
            let next = trace
                .iter()
                .filter(|k| k.pid != b_pid && k.start_ns >= b_last)
                .map(|k| k.start_ns)
                .min();
            if let Some(next) = next {
                let fgap = (next - b_last) as f64 / 1e6;
                row = row
                    .note(format!(
                        "fake trace: device idle {fgap:.2} ms between b's last kernel and a's next"
                    ))
                    .fig("fake_gap_ms", fgap);
            }
        }
    }
    Ok(vec![row])
}

fn compute_limit_30(ctx: &Ctx) -> Result<Vec<Row>> {
    let g = ctx.start(&[(
        "capped",
        "memory_limit = \"1GiB\"\ncompute_limit = \"30%\"\n".to_string(),
    )])?;
    let a = ctx.load(&g, "capped", SATURATE)?;
    std::thread::sleep(ctx.settle());
    let charged_before = charged_ns(&g, "capped")?;
    let w = Window::measure(&g, &[&a], ctx.window())?;
    // What the daemon charged the tenant over (about) the same window: the cap holds the
    // charges to 30%, so a gap between this and the device's own figure is a charge the
    // tenant's kernels did not use.
    let charged = (charged_ns(&g, "capped")? - charged_before) as f64 / 1e6 / w.len_ms();
    check_loads(&[&a])?;
    let s = w.shares(&[vec![0]])[0];
    let row = Row::new(
        "compute-limit-30",
        s * 100.0,
        "%",
        format!("capped {}", pct(s)),
    )
    .target("30% ± 1", (s * 100.0 - 30.0).abs() <= 1.0)
    .note(format!(
        "alone on the device; the daemon charged {}",
        pct(charged)
    ))
    .fig("share", s)
    .fig("charged", charged);
    Ok(vec![with_fake(row, &g, &w, &["capped"], &[vec![0]])])
}

/// The device time gpumuxd has charged `tenant` so far (all devices), from its status.
fn charged_ns(g: &Gpumux, tenant: &str) -> Result<u64> {
    let status = g.status()?;
    let t = status["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == tenant))
        .with_context(|| format!("tenant {tenant} missing from the status"))?;
    Ok(t["devices"].as_array().map_or(0, |ds| {
        ds.iter().filter_map(|d| d["device_time_ns"].as_u64()).sum()
    }))
}

fn interactive(ctx: &Ctx) -> Result<Vec<Row>> {
    let g = ctx.start(&[("batch", tenant(1)), ("web", tenant(1))])?;
    let quantum = quantum_ms(&g)?;
    let hog = ctx.load(&g, "batch", SATURATE)?;
    let web_spec = Spec {
        ns: 1_000_000,
        batch: 1,
        pause_ms: 20,
        graph_kernels: 0,
    };
    let secs = (ctx.settle() + ctx.window()).as_secs().max(2);
    let web = ctx.load_with(&g, "web", web_spec, secs, 0)?;
    let (status, lines) = web.proc.finish(Duration::from_secs(secs + 60))?;
    if !status.success() {
        bail!("the interactive load exited {status}");
    }
    let l = lines
        .iter()
        .find(|v| v["op"] == "load")
        .context("no load line from the interactive tenant")?;
    if l["result"] != 0 {
        bail!("the interactive load failed: {l}");
    }
    check_loads(&[&hog])?;
    let num = |k: &str| l[k].as_f64().with_context(|| format!("{k} in {l}"));
    let (p50, p99, max) = (
        num("wait_p50_ms")?,
        num("wait_p99_ms")?,
        num("wait_max_ms")?,
    );
    let batches = num("batches")?;
    Ok(vec![
        Row::new(
            "interactive",
            p99,
            "ms",
            format!("p99 wait {p99:.1} ms"),
        )
        .target(format!("≤ 2 quanta ({:.0} ms)", 2.0 * quantum), p99 <= 2.0 * quantum)
        .note(format!(
            "1 ms kernels + 20 ms pauses beside a saturating tenant: p50 {p50:.1} ms, max {max:.1} ms over {batches:.0} kernels"
        ))
        .fig("p50_ms", p50)
        .fig("p99_ms", p99)
        .fig("max_ms", max)
        .fig("batches", batches),
    ])
}

fn processes_8_vs_1(ctx: &Ctx) -> Result<Vec<Row>> {
    let g = ctx.start(&[("many", tenant(1)), ("one", tenant(1))])?;
    let mut loads = Vec::new();
    for _ in 0..8 {
        loads.push(ctx.load(&g, "many", SATURATE)?);
    }
    loads.push(ctx.load(&g, "one", SATURATE)?);
    let refs: Vec<&Load> = loads.iter().collect();
    std::thread::sleep(ctx.settle());
    let w = Window::measure(&g, &refs, ctx.window())?;
    check_loads(&refs)?;
    let groups = [(0..8).collect::<Vec<_>>(), vec![8]];
    let s = w.shares(&groups);
    let busy = s[0] + s[1];
    let frac = s[0] / busy;
    let row = Row::new(
        "processes-8-vs-1",
        frac * 100.0,
        "%",
        format!(
            "8-process tenant {} / 1-process {}",
            pct(frac),
            pct(1.0 - frac)
        ),
    )
    .target("50% ± 3", (frac * 100.0 - 50.0).abs() <= 3.0)
    .fig("many_share", s[0])
    .fig("one_share", s[1]);
    Ok(vec![with_fake(row, &g, &w, &["many", "one"], &groups)])
}

/// The longest time `l` waited for the device within `[t0, t1]`, by its reports: a report's
/// interval minus the device time of the kernels it counts (the process never pauses).
fn longest_stall(l: &Load, t0: f64, t1: f64) -> f64 {
    let p = points(&l.proc.lines_of("load-progress"));
    let kernel_ms = l.ns as f64 / 1e6;
    p.windows(2)
        .filter(|w| w[1].t_ms > t0 && w[0].t_ms < t1)
        .map(|w| (w[1].t_ms - w[0].t_ms) - (w[1].kernels - w[0].kernels) as f64 * kernel_ms)
        .fold(0.0, f64::max)
}

fn stopped_holder(ctx: &Ctx) -> Result<Vec<Row>> {
    let g = ctx.start(&[("a", tenant(1)), ("b", tenant(1))])?;
    let quantum = quantum_ms(&g)?;
    let drain_timeout = (4.0 * quantum).max(200.0);
    let a = ctx.load(&g, "a", SATURATE)?;
    let b = ctx.load(&g, "b", SATURATE)?;
    std::thread::sleep(ctx.settle());
    // Stop a right after it completed a batch: it is then almost surely the slice holder.
    let seen = a.proc.lines_of("load-progress").len();
    a.proc.wait_until(Duration::from_secs(5), |lines| {
        (lines.iter().filter(|v| v["op"] == "load-progress").count() > seen).then_some(())
    })?;
    a.proc.signal(libc::SIGSTOP)?;
    let t_stop = mono_ms();
    let stopped_for = if ctx.quick { 1.0 } else { 3.0 };
    let before = measure::fake_busy(&g);
    std::thread::sleep(Duration::from_secs_f64(stopped_for));
    let after = measure::fake_busy(&g);
    let t_cont = mono_ms();
    a.proc.signal(libc::SIGCONT)?;
    b.wait_reported(t_cont, Duration::from_secs(10))?;
    let stall = longest_stall(&b, t_stop, t_cont);
    let w_stop = Window::from_parts(&[&a, &b], t_stop, t_cont, before, after);
    let s_stop = w_stop.shares(&[vec![0], vec![1]]);
    // Both run again once a is continued.
    std::thread::sleep(Duration::from_millis(300));
    let w_cont = Window::measure(&g, &[&a, &b], Duration::from_secs_f64(stopped_for.min(2.0)))?;
    let s_cont = w_cont.shares(&[vec![0], vec![1]]);
    check_loads(&[&a, &b])?;
    // The time the stopped holder costs the device: on the fake, the longest device idle gap
    // after the stop (the skip must come within the quantum deadline + the drain timeout).
    // Without the fake's trace, b's longest wait between its reports bounds it from above:
    // the holder's slice (≤ 1 quantum) + the drain timeout + b's own batch (4 x 2 ms).
    let trace = measure::trace(&g, t_stop - 100.0, t_cont)?;
    let gap = trace.as_ref().map(|trace| {
        trace
            .windows(2)
            .filter(|w| w[1].start_ns as f64 / 1e6 >= t_stop)
            .map(|w| w[1].start_ns.saturating_sub(w[0].end_ns) as f64 / 1e6)
            .fold(0.0, f64::max)
    });
    let own_batch_ms = 8.0;
    let (measured, label, bound, target) = match gap {
        Some(gap) => (
            gap,
            format!(
                "device idle {gap:.0} ms while the holder is stopped (b's longest wait {stall:.0} ms)"
            ),
            quantum + drain_timeout,
            "≤ quantum + drain timeout",
        ),
        None => (
            stall,
            format!("b's longest wait {stall:.0} ms"),
            quantum + drain_timeout + own_batch_ms,
            "≤ quantum + drain timeout + own batch",
        ),
    };
    let mut row = Row::new("stopped-holder", measured, "ms", label)
        .target(format!("{target} ({bound:.0} ms)"), measured <= bound)
        .note(format!(
            "while a was stopped {:.0} s: b {}, a {}; after SIGCONT: a {} b {}",
            stopped_for,
            pct(s_stop[1]),
            pct(s_stop[0]),
            pct(s_cont[0]),
            pct(s_cont[1])
        ))
        .fig("stall_ms", stall)
        .fig("b_share_stopped", s_stop[1])
        .fig("a_share_resumed", s_cont[0])
        .fig("b_share_resumed", s_cont[1]);
    if let Some(trace) = trace {
        let a_pid = a.proc.pid();
        let holder = trace
            .iter()
            .rev()
            .find(|k| (k.start_ns as f64) / 1e6 <= t_stop)
            .map(|k| if k.pid == a_pid { "a" } else { "b" });
        let gap = gap.unwrap_or(0.0);
        row = row
            .note(format!(
                "fake trace: last kernel before the stop was {}'s",
                holder.unwrap_or("nobody")
            ))
            .fig("fake_gap_ms", gap);
        if let Some(fs) = w_stop.fake_shares(&[vec![0], vec![1]]) {
            row = row.note(format!("fake: b {} while a was stopped", pct(fs[1])));
        }
    }
    if s_cont[0] < 0.2 || s_cont[1] < 0.2 {
        row = row.note("NOT BOTH PROGRESSING after SIGCONT");
        row.verdict = Verdict::Fail;
    }
    Ok(vec![row])
}

/// One `launch-rate` run; returns its median batch ns per launch.
fn launch_rate(ctx: &Ctx, cmd: &mut std::process::Command, count: u64) -> Result<f64> {
    cmd.args(["launch-rate", "--ns", "0", "--batch", "1024"])
        .args(["--count", &count.to_string()])
        .args(["--warmup", "4096"]);
    let p = Proc::spawn(cmd, "launch-rate", &ctx.stderr_log())?;
    let (status, lines) = p.finish(Duration::from_secs(120))?;
    let l = lines
        .iter()
        .find(|v| v["op"] == "launch-rate")
        .with_context(|| format!("no launch-rate line ({status}): {lines:?}"))?;
    if l["result"] != 0 {
        bail!("launch-rate failed: {l}");
    }
    l["median_batch_ns_per_launch"]
        .as_f64()
        .context("median_batch_ns_per_launch")
}

fn launch_cost(ctx: &Ctx) -> Result<Vec<Row>> {
    // Two tenants may use the device, so it is time-sliced; only a launches, so a holds the
    // slice throughout (a lone tenant keeps it with no timer).
    let g = ctx.start(&[("a", tenant(1)), ("b", tenant(1))])?;
    let (count, repeats) = if ctx.quick { (20_000, 1) } else { (200_000, 5) };
    let mut bare = Vec::new();
    let mut shim = Vec::new();
    for round in 0..repeats {
        let mut order = [false, true];
        if round % 2 == 1 {
            order.reverse();
        }
        for with_shim in order {
            if with_shim {
                shim.push(launch_rate(
                    ctx,
                    &mut g.tenant_command("a", c_workload()),
                    count,
                )?);
            } else {
                let mut c = g.command(c_workload());
                c.env_remove("LD_PRELOAD").env_remove("GPUMUX_SOCKET");
                bare.push(launch_rate(ctx, &mut c, count)?);
            }
        }
    }
    let (b, s) = (percentile(&bare, 50.0), percentile(&shim, 50.0));
    let added = s - b;
    // The launches went through the gate of a registered, time-sliced tenant.
    let st = g.tenant_status("a");
    let launches = st["devices"][0]["launches"].as_u64().unwrap_or(0);
    let mut row = Row::new(
        "launch-cost",
        added,
        "ns",
        format!("+{added:.1} ns per launch ({s:.1} vs {b:.1} ns bare)"),
    )
    .target("≤ 50 ns added", added <= 50.0)
    .note(format!(
        "cuLaunchKernel spin(0), issue only, synced every 1024; median of {repeats} run(s) × {count} launches; ratio {:.3}; runs bare {:?} shim {:?}",
        s / b,
        bare.iter().map(|x| x.round()).collect::<Vec<_>>(),
        shim.iter().map(|x| x.round()).collect::<Vec<_>>()
    ))
    .fig("bare_ns", b)
    .fig("shim_ns", s)
    .fig("ratio", s / b);
    if launches < count {
        row = row.note(format!(
            "WARNING: the daemon counted only {launches} gated launches for a"
        ));
    }
    Ok(vec![row])
}

fn busy_4(ctx: &Ctx) -> Result<Vec<Row>> {
    let names = ["a", "b", "c", "d"];
    let tenants: Vec<(&str, String)> = names.iter().map(|n| (*n, tenant(1))).collect();
    let g = ctx.start(&tenants)?;
    let loads: Vec<Load> = names
        .iter()
        .map(|n| ctx.load(&g, n, SATURATE))
        .collect::<Result<_>>()?;
    let refs: Vec<&Load> = loads.iter().collect();
    std::thread::sleep(ctx.settle());
    let w = Window::measure(&g, &refs, ctx.window())?;
    check_loads(&refs)?;
    let (busy, fake_busy) = w.busy();
    let mut row = Row::new(
        "busy-4",
        busy * 100.0,
        "%",
        format!("device busy {}", pct(busy)),
    )
    .target("≥ 95%", busy >= 0.95)
    .note("4 equal-weight saturating tenants (2 ms kernels)")
    .fig("busy", busy);
    if let Some(fb) = fake_busy {
        row = row
            .note(format!("fake ground truth: busy {}", pct(fb)))
            .fig("fake_busy", fb);
    }
    Ok(vec![row])
}

fn switch_cost(ctx: &Ctx) -> Result<Vec<Row>> {
    let spec = Spec {
        ns: 100_000,
        batch: 8,
        pause_ms: 0,
        graph_kernels: 0,
    };
    let g = ctx.start(&[("a", tenant(1)), ("b", tenant(1))])?;
    let quantum = quantum_ms(&g)?;
    let a = ctx.load(&g, "a", spec)?;
    let b = ctx.load(&g, "b", spec)?;
    std::thread::sleep(ctx.settle());
    let len = if ctx.quick { 1.0 } else { 3.0 };
    let w = Window::measure(&g, &[&a, &b], Duration::from_secs_f64(len))?;
    check_loads(&[&a, &b])?;
    let (busy, _) = w.busy();
    let Some(trace) = measure::trace(&g, w.t0, w.t1)? else {
        let mut row = Row::new(
            "switch-cost",
            f64::NAN,
            "ms",
            "n/a (needs the fake's kernel trace)".into(),
        )
        .note(format!(
            "device busy {} with 2 tenants of 0.1 ms kernels",
            pct(busy)
        ));
        row.value = None;
        return Ok(vec![row]);
    };
    let tenant_of: HashMap<u32, usize> = [(a.proc.pid(), 0), (b.proc.pid(), 1)].into();
    let mut switch = Vec::new();
    let mut within = Vec::new();
    for k in trace.windows(2) {
        let gap = k[1].start_ns.saturating_sub(k[0].end_ns) as f64 / 1e6;
        if tenant_of.get(&k[0].pid) == tenant_of.get(&k[1].pid) {
            within.push(gap);
        } else {
            switch.push(gap);
        }
    }
    if switch.is_empty() || within.is_empty() {
        bail!(
            "no tenant switch in the trace ({} kernels, {} switches)",
            trace.len(),
            switch.len()
        );
    }
    let span = w.len_ms() / 1e3;
    let (sw50, sw99) = (percentile(&switch, 50.0), percentile(&switch, 99.0));
    let (wi50, wi99) = (percentile(&within, 50.0), percentile(&within, 99.0));
    let cost = sw50 - wi50;
    let per_s = switch.len() as f64 / span;
    let lost = switch.iter().sum::<f64>() / w.len_ms();
    Ok(vec![
        Row::new(
            "switch-cost",
            cost,
            "ms",
            format!("{cost:.2} ms per switch (median idle gap {sw50:.2} ms at a switch vs {wi50:.3} ms within a slice)"),
        )
        .note(format!(
            "p99 gap: switch {sw99:.2} ms, within {wi99:.3} ms; {per_s:.1} switches/s (quantum {quantum:.0} ms) idle {} of the time at switches; busy {}; 0.1 ms kernels in batches of 8",
            pct(lost),
            pct(busy)
        ))
        .fig("switch_gap_p50_ms", sw50)
        .fig("switch_gap_p99_ms", sw99)
        .fig("within_gap_p50_ms", wi50)
        .fig("within_gap_p99_ms", wi99)
        .fig("switches_per_s", per_s)
        .fig("switch_idle_fraction", lost),
    ])
}

fn many_tenants(ctx: &Ctx) -> Result<Vec<Row>> {
    let (tenants_n, procs_n) = if ctx.quick { (16, 4) } else { (64, 8) };
    let names: Vec<String> = (0..tenants_n).map(|t| format!("t{t:02}")).collect();
    let tenants: Vec<(&str, String)> = names
        .iter()
        .map(|n| (n.as_str(), "memory_limit = \"256MiB\"\n".to_string()))
        .collect();
    let g = ctx.start(&tenants)?;
    let program = c_workload();
    let t0 = Instant::now();
    let mut procs = Vec::new();
    for n in &names {
        for _ in 0..procs_n {
            procs.push(Proc::spawn(
                g.tenant_command(n, &program)
                    .args(["hold", "--bytes", "1MiB", "--seconds", "600"]),
                format!("holder in {n}"),
                &ctx.stderr_log(),
            )?);
        }
    }
    let spawned = t0.elapsed();
    for p in &procs {
        let l = p.wait_for("hold", START_TIMEOUT)?;
        if l["result"] != 0 {
            bail!("a holder failed: {l}");
        }
    }
    let started = t0.elapsed();
    let total = tenants_n * procs_n;
    // Status with all of them registered.
    let mut lat = Vec::new();
    let mut seen_procs = 0;
    for i in 0..10 {
        let t = Instant::now();
        let out = g
            .ctl()
            .args(["status", "--json"])
            .output()
            .context("run gpumuxctl")?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            bail!(
                "gpumuxctl status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if i == 0 {
            let v: Value = serde_json::from_slice(&out.stdout)?;
            seen_procs = v["tenants"].as_array().map_or(0, |ts| {
                ts.iter()
                    .map(|t| t["processes"].as_array().map_or(0, Vec::len))
                    .sum()
            });
        }
    }
    let t = Instant::now();
    let table = g.ctl().arg("status").output().context("run gpumuxctl")?;
    let table_ms = t.elapsed().as_secs_f64() * 1e3;
    if !table.status.success() {
        bail!("gpumuxctl status (table) failed");
    }
    drop(procs);
    let secs = started.as_secs_f64();
    let (med, max) = (percentile(&lat, 50.0), percentile(&lat, 100.0));
    let size = if ctx.quick {
        format!(" (--quick: {tenants_n} × {procs_n})")
    } else {
        String::new()
    };
    let mut start_row = Row::new(
        "many-tenants/start",
        secs,
        "s",
        format!("{total} processes registered in {secs:.2} s{size}"),
    )
    .target("< 5 s", secs < 5.0)
    .note(format!(
        "{tenants_n} tenants × {procs_n} `hold 1MiB` processes (register, create a context, allocate), spawned in {:.2} s",
        spawned.as_secs_f64()
    ))
    .fig("seconds", secs)
    .fig("processes", total as f64);
    if seen_procs != total {
        start_row = start_row.note(format!("STATUS SHOWED {seen_procs} PROCESSES, not {total}"));
        start_row.verdict = Verdict::Fail;
    }
    let worst = max.max(table_ms);
    let status_row = Row::new(
        "many-tenants/status",
        worst,
        "ms",
        format!("gpumuxctl status max {worst:.1} ms{size}"),
    )
    .target("< 100 ms", worst < 100.0)
    .note(format!(
        "with {total} processes: `status --json` median {med:.1} ms over 10 calls (process start included); table form {table_ms:.1} ms"
    ))
    .fig("max_ms", max)
    .fig("median_ms", med)
    .fig("table_ms", table_ms);
    Ok(vec![start_row, status_row])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_log_summary_counts_warnings_by_message() {
        let log = "2026-01-01T00:00:00.1Z \x1b[33m WARN\x1b[0m \x1b[2mgpumux_daemon::server\x1b[0m\x1b[2m:\x1b[0m process did not drain in time (stopped or stuck); passing it over \x1b[3mtenant\x1b[0m\x1b[2m=\x1b[0ma pid=12 dev=0\n\
                   2026-01-01T00:00:00.2Z  INFO gpumux_daemon::server: tenant added tenant=a\n\
                   2026-01-01T00:00:00.3Z  WARN gpumux_daemon::server: process did not drain in time (stopped or stuck); passing it over tenant=a pid=13 dev=0\n";
        assert_eq!(
            summarise_log(log).as_deref(),
            Some(
                "daemon log: 2× WARN process did not drain in time (stopped or stuck); passing it over"
            )
        );
        assert_eq!(summarise_log("x  INFO y: z\n"), None);
    }
}
