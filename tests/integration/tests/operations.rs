//! Operating gpumux: live quota changes through the watched tenant files, bad edits, tenant
//! removal, Prometheus metrics, gpumuxctl (status, env, check) and its exit codes.

use gpumux_integration::gpumux::{Gpumux, wait_until};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, MIB, Running, c_workload, i, nvml_probe, run, u,
};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// The timing-sensitive tests here (a measured split, many processes at once) run one at a
/// time.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn limit_of(g: &Gpumux, tenant: &str) -> u64 {
    g.tenant_status(tenant)["devices"][0]["memory_limit"]
        .as_u64()
        .unwrap()
}

#[test]
fn editing_a_tenant_file_changes_running_processes_limits() {
    let g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let mut p = Running::spawn(g.tenant_command("a", c_workload()).args([
        "ops",
        "alloc:x:600MiB meminfo sleep:1500 alloc:y:600MiB meminfo sleep:1500 alloc:z:600MiB meminfo sleep:1500",
    ]))
    .unwrap();
    assert_eq!(i(&p.wait_for("meminfo", T).unwrap(), "total"), GIB as i64);
    // Raise the limit while the process runs.
    g.write_tenant("a", "memory_limit = \"2GiB\"\n");
    wait_until(
        Duration::from_secs(2),
        || limit_of(&g, "a") == 2 * GIB,
        || "limit not raised".into(),
    );
    // Then lower it below current use: nothing is freed, new allocations are refused.
    std::thread::sleep(Duration::from_millis(1600));
    g.write_tenant("a", "memory_limit = \"1GiB\"\n");
    wait_until(
        Duration::from_secs(2),
        || limit_of(&g, "a") == GIB,
        || "limit not lowered".into(),
    );
    // While the tenant uses 1.2 GiB of a 1 GiB quota, NVML reports 0 free, never an underflow.
    std::thread::sleep(Duration::from_millis(300));
    let nvml = run(&mut g.tenant_command("a", nvml_probe()), T).unwrap();
    let mem = &nvml.lines.one("device")["mem_v2"];
    assert_eq!(i(mem, "result"), 0, "{mem}");
    assert_eq!(
        (u(mem, "total"), u(mem, "used"), u(mem, "free")),
        (GIB, 1200 * MIB, 0),
        "{mem}"
    );
    let (_, lines) = p.finish(T).unwrap();
    assert_eq!(i(lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
    assert_eq!(
        i(lines.named("alloc", "y"), "result"),
        CUDA_SUCCESS,
        "raised to 2 GiB: {lines:?}"
    );
    assert_eq!(
        i(lines.named("alloc", "z"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "lowered to 1 GiB"
    );
    let infos = lines.ops("meminfo");
    assert_eq!(
        u(infos[1], "total"),
        2 * GIB,
        "the reported size follows the quota"
    );
    assert_eq!(u(infos[2], "total"), GIB);
    assert_eq!(
        i(infos[2], "result"),
        CUDA_SUCCESS,
        "no error when use exceeds the quota"
    );
    assert_eq!(
        u(infos[2], "free"),
        0,
        "use above the lowered limit reports 0 free, never underflows"
    );
}

#[test]
fn editing_the_weight_changes_the_split() {
    let _serial = exclusive();
    let g = Gpumux::start(
        &[16 * GIB],
        &[
            ("a", "memory_limit = \"1GiB\"\n"),
            ("b", "memory_limit = \"1GiB\"\n"),
        ],
    );
    let (a, b) = (
        g.load("a", 9, &["--ns", "2000000", "--batch", "4"]),
        g.load("b", 9, &["--ns", "2000000", "--batch", "4"]),
    );
    g.write_tenant("a", "memory_limit = \"1GiB\"\nweight = 3\n");
    wait_until(
        Duration::from_secs(2),
        || g.tenant_status("a")["weight"] == 3,
        || "weight not applied".into(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let busy = |pid: u32| {
        g.gpu.snapshot().devices[0]
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .map_or(0, |p| p.busy_ns)
    };
    let (a0, b0) = (busy(a.pid()), busy(b.pid()));
    std::thread::sleep(Duration::from_secs(5));
    let (a1, b1) = (busy(a.pid()) - a0, busy(b.pid()) - b0);
    let share = a1 as f64 / (a1 + b1) as f64;
    eprintln!("after weight 3:1, a got {share:.3}");
    assert!(
        (share - 0.75).abs() < 0.05,
        "a got {share:.3} after its weight was raised to 3"
    );
    for r in [a, b] {
        assert!(r.finish(T).unwrap().0.success());
    }
}

#[test]
fn a_malformed_edit_is_reported_and_changes_nothing() {
    let g = Gpumux::start(
        &[16 * GIB],
        &[("a", "memory_limit = \"1GiB\"\nweight = 2\n")],
    );
    g.write_tenant("a", "memory_limit = \"1GiB\"\nweight = 2000\n");
    wait_until(
        Duration::from_secs(2),
        || {
            !g.status().unwrap()["config_errors"]
                .as_array()
                .unwrap()
                .is_empty()
        },
        || "error not reported".into(),
    );
    let s = g.status().unwrap();
    let err = s["config_errors"][0].as_str().unwrap();
    assert!(
        err.contains("a.toml:2:") && err.contains("weight = 2000 is out of range"),
        "{err}"
    );
    assert_eq!(
        g.tenant_status("a")["weight"],
        2,
        "the last good quota stays"
    );
    assert_eq!(limit_of(&g, "a"), GIB);
    assert!(
        g.log().contains("weight = 2000 is out of range"),
        "the daemon logs it too"
    );
    // gpumuxctl check names the file, line and reason, with exit code 2.
    let out = g.ctl().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a.toml:2: weight = 2000 is out of range"),
        "{stderr}"
    );
    // Processes still register and run under the last good quota.
    let out = run(
        g.tenant_command("a", c_workload())
            .args(["ops", "alloc:x:900MiB alloc:y:200MiB"]),
        T,
    )
    .unwrap();
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
    assert_eq!(
        i(out.lines.named("alloc", "y"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY
    );
    // Fixing the file clears the error.
    g.write_tenant("a", "memory_limit = \"1GiB\"\nweight = 5\n");
    wait_until(
        Duration::from_secs(2),
        || g.tenant_status("a")["weight"] == 5,
        || "fix not applied".into(),
    );
    assert!(
        g.status().unwrap()["config_errors"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn removing_and_adding_tenants_applies_live() {
    let g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let mut holder = g.hold("a", 100 * MIB);
    std::fs::remove_file(g.tenants_dir.join("a.toml")).unwrap();
    wait_until(
        Duration::from_secs(2),
        || g.tenant_status("a")["removed"] == true,
        || "tenant not removed".into(),
    );
    // Its running process stays under control, shown in status at weight 1 (its socket stays
    // for it to reattach after a daemon restart); new processes cannot join.
    let a = g.tenant_status("a");
    assert_eq!(a["weight"], 1, "{a}");
    assert!(
        a["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == holder.pid()),
        "{a}"
    );
    let out = run(
        g.tenant_command("a", c_workload())
            .args(["ops", "alloc:x:1MiB"]),
        T,
    )
    .unwrap();
    assert!(out.stderr.contains("cannot register"), "{}", out.stderr);
    assert!(out.stderr.contains("removed"), "{}", out.stderr);
    holder.kill();
    wait_until(
        Duration::from_secs(2),
        || !g.socket("a").exists(),
        || "socket not removed once the last process ended".into(),
    );
    // A new tenant appears without a restart.
    g.write_tenant("b", "memory_limit = \"512MiB\"\n");
    g.wait_for_socket("b");
    let out = run(
        g.tenant_command("b", c_workload())
            .args(["ops", "alloc:x:500MiB alloc:y:100MiB"]),
        T,
    )
    .unwrap();
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
    assert_eq!(
        i(out.lines.named("alloc", "y"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY
    );
    g.wait_tenant_gone("a", Duration::from_secs(2), "removed tenant lingers");
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

#[test]
fn metrics_and_status_report_what_happens() {
    let g = Gpumux::start_with(
        &[16 * GIB],
        &[("a", "memory_limit = \"1GiB\"\nweight = 4\n")],
        "metrics_listen = \"127.0.0.1:0\"\n",
    );
    let mut holder = g.hold("a", 300 * MIB);
    run(
        g.tenant_command("a", c_workload())
            .args(["ops", "alloc:x:900MiB"]),
        T,
    )
    .unwrap();
    let status = g.status().unwrap();
    let addr = status["metrics_address"]
        .as_str()
        .expect("metrics address in status")
        .to_string();
    let body = scrape(&addr);
    for line in [
        format!(
            "gpumux_memory_used_bytes{{tenant=\"a\",device=\"0\"}} {}",
            300 * MIB
        ),
        format!("gpumux_memory_limit_bytes{{tenant=\"a\",device=\"0\"}} {GIB}"),
        "gpumux_allocations_refused_total{tenant=\"a\",device=\"0\"} 1".to_string(),
        "gpumux_tenant_processes{tenant=\"a\"} 1".to_string(),
        "gpumux_tenant_weight{tenant=\"a\"} 4".to_string(),
        "gpumux_up 1".to_string(),
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing `{line}` in\n{body}"
        );
    }
    for family in [
        "gpumux_device_time_seconds_total",
        "gpumux_slice_wait_seconds_total",
        "gpumux_kernel_launches_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} counter")),
            "{family}"
        );
    }
    // The table form, and timing of one status call.
    let t0 = Instant::now();
    let out = g.ctl().arg("status").output().unwrap();
    eprintln!("gpumuxctl status took {:?}", t0.elapsed());
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("TENANT")
            && table
                .lines()
                .any(|l| l.starts_with("a ") && l.contains("300 MiB") && l.contains("1 GiB")),
        "{table}"
    );
    holder.kill();
}

#[test]
fn gpumuxctl_env_and_errors() {
    let mut g = Gpumux::start(&[16 * GIB], &[("team-a", "memory_limit = \"1GiB\"\n")]);
    let out = g.ctl().args(["env", "team-a"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("LD_PRELOAD=/usr/lib/gpumux/libgpumux.so"),
        "{text}"
    );
    assert!(
        text.contains(&format!("GPUMUX_SOCKET={}", g.socket("team-a").display())),
        "{text}"
    );
    assert_eq!(
        g.ctl()
            .args(["env", "Bad/Name"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2),
        "usage error"
    );
    assert_eq!(
        g.ctl().arg("frobnicate").output().unwrap().status.code(),
        Some(2)
    );
    g.kill_daemon();
    let out = g.ctl().args(["status", "--json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "daemon down is an operation failure"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach gpumuxd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn many_tenants_and_processes_register_at_once() {
    let _serial = exclusive();
    let tenants: Vec<(String, String)> = (0..16)
        .map(|t| {
            (
                format!("t{t:02}"),
                "memory_limit = \"256MiB\"\n".to_string(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = tenants
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let g = Gpumux::start(&[16 * GIB], &refs);
    let start = Instant::now();
    let mut procs = Vec::new();
    for (t, _) in &tenants {
        for _ in 0..4 {
            procs.push(
                Running::spawn(g.tenant_command(t, c_workload()).args([
                    "hold",
                    "--bytes",
                    &(32 * MIB).to_string(),
                    "--seconds",
                    "30",
                ]))
                .unwrap(),
            );
        }
    }
    for p in &mut procs {
        assert_eq!(i(&p.wait_for("hold", T).unwrap(), "result"), CUDA_SUCCESS);
    }
    eprintln!(
        "64 processes in 16 tenants registered and allocated in {:?}",
        start.elapsed()
    );
    let s = g.status().unwrap();
    let total: usize = s["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["processes"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, 64);
    for t in s["tenants"].as_array().unwrap() {
        assert_eq!(t["devices"][0]["memory_used"], 4 * 32 * MIB, "{t}");
    }
    drop(procs);
    wait_until(
        Duration::from_secs(3),
        || {
            g.status().unwrap()["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["devices"][0]["memory_used"] == 0)
        },
        || "memory not returned".into(),
    );
}

/// Wake-ups (voluntary context switches) of every thread of `pid` so far.
fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            // Wake-ups: a sleeping thread's switch is voluntary; a running one preempted on a
            // busy host (nonvoluntary) did not wake up again.
            .filter(|l| l.starts_with("voluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// No polling: with tenants configured and a registered process holding memory, an idle
/// daemon (and the process's watcher thread) sleeps.
#[test]
fn an_idle_daemon_sleeps() {
    let g = Gpumux::start_with(
        &[16 * GIB],
        &[
            ("a", "memory_limit = \"1GiB\"\n"),
            ("b", "memory_limit = \"1GiB\"\n"),
        ],
        "metrics_listen = \"127.0.0.1:0\"\n",
    );
    let mut holder = g.hold("a", 100 * MIB);
    let daemon = g.daemon_pid().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (d0, h0) = (context_switches(daemon), context_switches(holder.pid()));
    std::thread::sleep(Duration::from_secs(2));
    let (d1, h1) = (context_switches(daemon), context_switches(holder.pid()));
    eprintln!(
        "over 2 s idle: daemon {} context switches, holder {}",
        d1 - d0,
        h1 - h0
    );
    // With a registered process the daemon reconciles footprints every 2 s: its timer wakes
    // the loop, which hands the reading to the measuring thread (one wake-up there) and takes
    // the result when the thread's eventfd wakes it again: 3 context switches per
    // reconciliation, at most 2 reconciliations in the window. A polling daemon would show
    // hundreds.
    assert!(
        d1 - d0 <= 6,
        "the daemon woke {} times in 2 s of idleness",
        d1 - d0
    );
    assert!(
        h1 - h0 <= 4,
        "the holder (its shim watcher included) woke {} times",
        h1 - h0
    );
    holder.kill();
}
