//! Weighted, work-conserving compute time-slicing across tenants, end to end: the real daemon
//! and shim, `load` workloads on the fake GPU. Shares come from the fake's ground truth (device
//! busy time per process), never from gpumux's own figures.

use gpumux_integration::conserving::{assert_shared_work_conserving, assert_work_conserving};
use gpumux_integration::gpumux::{Gpumux, exclusive, weighted_tenant as tenant};
use gpumux_integration::workloads::{GIB, Running, f, i};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
/// Saturating: batches of 4 x 2 ms kernels, back to back.
const SATURATE: &[&str] = &["--ns", "2000000", "--batch", "4", "--pause-ms", "0"];
/// How long the bare driver's reference ([`Gpumux::bare_busy`]) is measured, before a test's
/// windows and again after them (the lower counts: the host at its busier).
const REFERENCE: Duration = Duration::from_secs(3);

fn finish_ok(r: Running) -> serde_json::Value {
    let (status, lines) = r.finish(T).unwrap();
    assert!(status.success());
    let l = lines.one("load").clone();
    assert_eq!(i(&l, "result"), 0, "{l}");
    l
}

#[test]
fn weights_three_to_one_split_device_time() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("a", &tenant(3)), ("b", &tenant(1))]);
    let before = g.bare_busy("load", SATURATE, REFERENCE);
    let a = g.load("a", 13, SATURATE);
    let b = g.load("b", 13, SATURATE);
    std::thread::sleep(Duration::from_millis(500));
    let s = g.device_shares(&[vec![a.pid()], vec![b.pid()]], Duration::from_secs(10));
    let total = s[0] + s[1];
    eprintln!("shares a={:.3} b={:.3} busy={:.3}", s[0], s[1], total);
    assert!(
        (s[0] / total - 0.75).abs() <= 0.03,
        "a got {:.3} of device time, want 0.75",
        s[0] / total
    );
    finish_ok(a);
    finish_ok(b);
    assert!(g.gpu.snapshot().devices[0].max_concurrent_kernels <= 1);
    let bare = before.min(g.bare_busy("load", SATURATE, REFERENCE));
    assert_shared_work_conserving(total, bare, 0.95, "3:1");
}

#[test]
fn four_tenants_share_by_weight() {
    let _serial = exclusive();
    let g = Gpumux::start(
        &[16 * GIB],
        &[
            ("a", &tenant(1)),
            ("b", &tenant(2)),
            ("c", &tenant(3)),
            ("d", &tenant(4)),
        ],
    );
    let before = g.bare_busy("load", SATURATE, REFERENCE);
    let runs: Vec<Running> = ["a", "b", "c", "d"]
        .iter()
        .map(|t| g.load(t, 13, SATURATE))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let s = g.device_shares(
        &runs.iter().map(|r| vec![r.pid()]).collect::<Vec<_>>(),
        Duration::from_secs(10),
    );
    let total: f64 = s.iter().sum();
    let normalized: Vec<f64> = s
        .iter()
        .zip([1.0, 2.0, 3.0, 4.0])
        .map(|(x, w)| x / total / (w / 10.0))
        .collect();
    let jain = normalized.iter().sum::<f64>().powi(2)
        / (4.0 * normalized.iter().map(|x| x * x).sum::<f64>());
    eprintln!("shares {s:?} busy {total:.3} jain {jain:.4}");
    assert!(
        jain >= 0.99,
        "Jain's index {jain:.4} of weight-normalised shares {normalized:?}"
    );
    for r in runs {
        finish_ok(r);
    }
    let bare = before.min(g.bare_busy("load", SATURATE, REFERENCE));
    assert_shared_work_conserving(total, bare, 0.95, "4 saturating tenants");
}

#[test]
fn lone_active_tenant_gets_the_device_and_absorbs_an_idle_share() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("a", &tenant(1)), ("b", &tenant(1))]);
    let before = g.bare_busy("load", SATURATE, REFERENCE);
    let a = g.load("a", 9, SATURATE);
    let b = g.load("b", 3, SATURATE);
    let (_, b_lines) = b.finish(T).unwrap();
    assert_eq!(i(b_lines.one("load"), "result"), 0);
    let b_pid = b_lines.one("load-start")["pid"].as_u64().unwrap() as u32;
    // b is idle now: a alone must get what the bare driver gives one process (>= 95%).
    let s = g.device_shares(&[vec![a.pid()]], Duration::from_secs(4));
    // a took over within one quantum of b's last kernel.
    let trace = fakegpu::kernel_trace(g.state_path(), 0).unwrap();
    let b_last = trace
        .iter()
        .filter(|k| k.pid == b_pid)
        .map(|k| k.end_ns)
        .max()
        .expect("b ran kernels");
    let a_next = trace
        .iter()
        .filter(|k| k.pid == a.pid() && k.start_ns >= b_last)
        .map(|k| k.start_ns)
        .min()
        .expect("a ran after b");
    let gap = Duration::from_nanos(a_next - b_last);
    eprintln!("gap after the idle tenant's last kernel: {gap:?}");
    assert!(
        gap <= Duration::from_millis(50),
        "a waited {gap:?} (> one 50 ms quantum) after b went idle"
    );
    finish_ok(a);
    let bare = before.min(g.bare_busy("load", SATURATE, REFERENCE));
    assert_work_conserving(s[0], bare, 0.95, "lone active tenant");
}

#[test]
fn compute_limit_caps_device_time_on_an_idle_device() {
    let _serial = exclusive();
    let g = Gpumux::start(
        &[16 * GIB],
        &[(
            "capped",
            "memory_limit = \"1GiB\"\ncompute_limit = \"30%\"\n",
        )],
    );
    let a = g.load("capped", 13, SATURATE);
    std::thread::sleep(Duration::from_millis(500));
    let s = g.device_shares(&[vec![a.pid()]], Duration::from_secs(10));
    eprintln!("capped share {:.3}", s[0]);
    assert!(
        (s[0] - 0.30).abs() <= 0.03,
        "capped tenant got {:.3} of device time, cap 30%",
        s[0]
    );
    finish_ok(a);
}

#[test]
fn interactive_tenant_waits_at_most_two_quanta_at_p99() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("batch", &tenant(1)), ("web", &tenant(1))]);
    let hog = g.load("batch", 12, SATURATE);
    let web = g.load(
        "web",
        10,
        &["--ns", "1000000", "--batch", "1", "--pause-ms", "20"],
    );
    let l = finish_ok(web);
    eprintln!("interactive waits: {l}");
    assert!(
        f(&l, "wait_p99_ms") <= 100.0,
        "p99 wait {} ms > 2 quanta (100 ms)",
        f(&l, "wait_p99_ms")
    );
    assert!(
        l["batches"].as_u64().unwrap() > 50,
        "the interactive tenant made progress: {l}"
    );
    finish_ok(hog);
}

#[test]
fn tenants_not_processes_share_the_device() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("many", &tenant(1)), ("one", &tenant(1))]);
    let many: Vec<Running> = (0..8).map(|_| g.load("many", 13, SATURATE)).collect();
    let one = g.load("one", 13, SATURATE);
    std::thread::sleep(Duration::from_millis(500));
    let s = g.device_shares(
        &[many.iter().map(Running::pid).collect(), vec![one.pid()]],
        Duration::from_secs(10),
    );
    let total = s[0] + s[1];
    eprintln!("8-process tenant {:.3}, 1-process tenant {:.3}", s[0], s[1]);
    assert!(
        (s[0] / total - 0.5).abs() <= 0.05,
        "8 processes vs 1 split {:.3}/{:.3}, want 50/50",
        s[0] / total,
        s[1] / total
    );
    for r in many {
        finish_ok(r);
    }
    finish_ok(one);
}

#[test]
fn stopped_or_killed_holder_is_skipped() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("a", &tenant(1)), ("b", &tenant(1))]);
    let before = g.bare_busy("load", SATURATE, REFERENCE);
    let mut a = g.load("a", 20, SATURATE);
    let b = g.load("b", 14, SATURATE);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(a.pid() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(500));
    let stopped = g.device_shares(&[vec![a.pid()], vec![b.pid()]], Duration::from_secs(3));
    eprintln!("with a stopped: a={:.3} b={:.3}", stopped[0], stopped[1]);
    // SAFETY: as above.
    unsafe { libc::kill(a.pid() as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(500));
    let resumed = g.device_shares(&[vec![a.pid()], vec![b.pid()]], Duration::from_secs(2));
    eprintln!("a resumed: a={:.3} b={:.3}", resumed[0], resumed[1]);
    let split = resumed[0] / (resumed[0] + resumed[1]);
    assert!(
        (0.35..=0.65).contains(&split),
        "both progress again, at equal weights: {resumed:?}"
    );
    a.kill();
    std::thread::sleep(Duration::from_millis(300));
    let killed = g.device_shares(&[vec![b.pid()]], Duration::from_secs(2));
    finish_ok(b);
    let bare = before.min(g.bare_busy("load", SATURATE, REFERENCE));
    assert_work_conserving(stopped[1], bare, 0.85, "b while a is stopped");
    assert_shared_work_conserving(resumed[0] + resumed[1], bare, 0.95, "a resumed beside b");
    assert_work_conserving(killed[0], bare, 0.9, "b after a was killed");
}

/// A process killed while its tenant holds the device cannot report the device time it used:
/// the slice is charged its wall time, and a tenant arriving meanwhile is not left behind the
/// holder by what went unreported (it once waited for the holder's whole lone slice again).
#[test]
fn a_holder_whose_process_died_owes_a_newcomer_nothing() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("a", &tenant(1)), ("b", &tenant(1))]);
    let mut first = g.load("a", 20, SATURATE);
    std::thread::sleep(Duration::from_secs(2));
    first.kill();
    let a = g.load("a", 12, SATURATE);
    let b = g.load("b", 12, SATURATE);
    std::thread::sleep(Duration::from_millis(500));
    let s = g.device_shares(&[vec![a.pid()], vec![b.pid()]], Duration::from_secs(3));
    eprintln!("after a's holder died: a={:.3} b={:.3}", s[0], s[1]);
    assert!(
        s[1] / (s[0] + s[1]) >= 0.35,
        "equal weights, but b got {:.3} of the device time to a's {:.3}",
        s[1],
        s[0]
    );
    finish_ok(a);
    finish_ok(b);
}

/// A process on a context of its own (`cuCtxCreate`, not the primary context) is drained on
/// revocation like any other: the device runs one tenant's slice at a time, not interleaved
/// kernels of both.
#[test]
fn own_contexts_are_drained_too() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("a", &tenant(1)), ("b", &tenant(1))]);
    let a = g.load("a", 8, &[SATURATE, &["--own-context", "1"]].concat());
    let b = g.load("b", 8, SATURATE);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = fakegpu::procid::monotonic_ns();
    let s = g.device_shares(&[vec![a.pid()], vec![b.pid()]], Duration::from_secs(5));
    let trace: Vec<_> = fakegpu::kernel_trace(g.state_path(), 0)
        .unwrap()
        .into_iter()
        .filter(|k| k.start_ns >= t0)
        .collect();
    let switches = trace.windows(2).filter(|w| w[0].pid != w[1].pid).count();
    eprintln!(
        "own context: a={:.3} b={:.3}, {switches} tenant switches over 5 s ({} kernels)",
        s[0],
        s[1],
        trace.len()
    );
    assert!((s[0] - s[1]).abs() < 0.1, "equal weights: {s:?}");
    // 50 ms quanta: ~20 switches/s. Undrained, every 2 ms kernel would alternate (~250/s).
    assert!(
        switches < 5 * 50,
        "{switches} switches in 5 s: the tenants' kernels interleave"
    );
    finish_ok(a);
    finish_ok(b);
}

/// A launcher late between its launches (4 ms of host time between 1 ms kernels, no
/// synchronize between them: what a busy host does to a descheduled thread) leaves the device
/// idle within its batches. It is charged its kernels' device time, not the idle between them:
/// what gpumuxd charged against the fake's ground truth (the old busy periods charged ~3.6×).
#[test]
fn a_late_launcher_is_charged_its_kernels_not_the_idle_between_them() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("late", &tenant(1)), ("steady", &tenant(1))]);
    let late_args = [
        "--ns",
        "1000000",
        "--batch",
        "8",
        "--pause-ms",
        "0",
        "--gap-us",
        "4000",
    ];
    let late = g.load("late", 6, &late_args);
    let steady = g.load("steady", 6, SATURATE);
    let pid = late.pid();
    let charged_ns = || {
        let status = g.status().unwrap();
        let late = status["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "late");
        late.unwrap()["devices"][0]["device_time_ns"]
            .as_u64()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));
    let (truth0, charged0) = (g.busy_ns()[&pid], charged_ns());
    std::thread::sleep(Duration::from_secs(4));
    let (truth1, charged1) = (g.busy_ns()[&pid], charged_ns());
    finish_ok(late);
    finish_ok(steady);
    // Charges come at the end of slices (a quantum or so): the window's edges move them by
    // a few tens of ms against the 4 s window.
    let truth = (truth1 - truth0) as f64;
    let charged = (charged1 - charged0) as f64;
    eprintln!(
        "late launcher: device time {:.0} ms, charged {:.0} ms",
        truth / 1e6,
        charged / 1e6
    );
    assert!(truth > 0.0, "the late launcher ran nothing");
    assert!(
        charged <= truth * 1.25,
        "charged {:.0} ms for {:.0} ms of kernels: the idle between late launches was charged",
        charged / 1e6,
        truth / 1e6
    );
    assert!(
        charged >= truth * 0.8,
        "charged {:.0} ms for {:.0} ms of kernels: kernels went uncharged",
        charged / 1e6,
        truth / 1e6
    );
}
