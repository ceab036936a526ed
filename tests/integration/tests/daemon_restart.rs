//! The daemon can be SIGKILLed and restarted while tenants run: running processes keep working
//! and keep their limits, the restarted daemon's accounting matches reality (processes that
//! died meanwhile are reclaimed, live ones keep their charge), new processes register.

use gpumux_integration::gpumux::Gpumux;
use gpumux_integration::workloads::{CUDA_SUCCESS, GIB, MIB, Running, c_workload, i, run, u};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const ONE_GIB: &str = "memory_limit = \"1GiB\"\n";

#[test]
fn sigkill_mid_stress_keeps_limits_and_accounting() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB)]);
    let procs: Vec<Running> = (0..4)
        .map(|p| {
            Running::spawn(g.tenant_command("a", c_workload()).args([
                "stress",
                "--threads",
                "4",
                "--seconds",
                "8",
                "--max-bytes",
                &(128 * MIB).to_string(),
                "--seed",
                &p.to_string(),
            ]))
            .unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut restarted = false;
    let mut killed = false;
    while start.elapsed() < Duration::from_secs(9) {
        let used = g.gpu.snapshot().devices[0].used_bytes;
        assert!(
            used <= GIB,
            "device holds {used} > quota while the daemon is {}",
            if killed && !restarted { "down" } else { "up" }
        );
        if !killed && start.elapsed() > Duration::from_secs(2) {
            g.kill_daemon();
            killed = true;
        }
        if killed && !restarted && start.elapsed() > Duration::from_secs(3) {
            g.start_daemon();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for p in procs {
        let (status, lines) = p.finish(T).unwrap();
        assert!(status.success());
        let s = lines.one("stress");
        assert_eq!(u(s, "other_errors"), 0, "{s}");
        assert!(u(s, "allocs") > 100, "{s}");
    }
    g.wait_tenant_used("a", 0, Duration::from_secs(2));
    // New processes register normally with the restarted daemon.
    let out = run(
        g.tenant_command("a", c_workload())
            .args(["ops", "alloc:x:900MiB alloc:y:200MiB"]),
        T,
    )
    .unwrap();
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
    assert_eq!(i(out.lines.named("alloc", "y"), "result"), 2);
    let log = g.log();
    assert!(log.contains("recovered accounting"), "{log}");
}

#[test]
fn restarted_daemon_reclaims_the_dead_and_keeps_the_living() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB)]);
    let mut survivor = g.hold("a", 300 * MIB);
    let mut casualty = g.hold("a", 500 * MIB);
    assert_eq!(g.tenant_used("a", 0), 800 * MIB);
    g.kill_daemon();
    casualty.kill();
    g.start_daemon();
    // The casualty's memory comes back; the survivor's stays charged.
    g.wait_tenant_used("a", 300 * MIB, Duration::from_secs(2));
    // The limit still counts the survivor: 300 + 800 > 1 GiB.
    let out = run(
        g.tenant_command("a", c_workload())
            .args(["ops", "alloc:x:800MiB alloc:y:700MiB"]),
        T,
    )
    .unwrap();
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), 2);
    assert_eq!(i(out.lines.named("alloc", "y"), "result"), CUDA_SUCCESS);
    // The survivor reattaches and its exit is noticed by the new daemon.
    gpumux_integration::gpumux::wait_until(
        Duration::from_secs(5),
        || {
            g.tenant_status("a")["processes"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x == survivor.pid()))
        },
        || format!("survivor did not reattach; log:\n{}", g.log()),
    );
    survivor.kill();
    g.wait_tenant_used("a", 0, Duration::from_secs(2));
}

#[test]
fn time_sliced_processes_survive_a_daemon_restart() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB), ("b", ONE_GIB)]);
    let a = g.load("a", 6, &["--ns", "2000000", "--batch", "4"]);
    let b = g.load("b", 6, &["--ns", "2000000", "--batch", "4"]);
    std::thread::sleep(Duration::from_secs(1));
    g.kill_daemon();
    std::thread::sleep(Duration::from_millis(500));
    g.start_daemon();
    for r in [a, b] {
        let (status, lines) = r.finish(T).unwrap();
        assert!(status.success(), "{lines:?}; log:\n{}", g.log());
        let l = lines.one("load");
        assert_eq!(i(l, "result"), 0, "{l}");
        assert!(
            u(l, "kernels") > 200,
            "kept running across the restart: {l}"
        );
    }
    let snap = g.gpu.snapshot();
    assert!(snap.devices[0].max_concurrent_kernels <= 1);
}
