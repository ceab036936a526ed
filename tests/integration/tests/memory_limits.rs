//! Hard per-tenant memory limits, end to end: the real daemon, the real shim, real quota files,
//! workloads on the fake GPU. Ground truth comes from the fake's own accounting.

use gpumux_integration::gpumux::{Gpumux, artifact, wait_until};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, MIB, Running, c_workload, cudarc_workload, i,
    nvml_probe, run, u,
};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const ONE_GIB_TENANT: &str = "memory_limit = \"1GiB\"\n";

#[test]
fn quota_holds_on_every_allocation_path() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    for kind in ["alloc", "pitch", "managed", "async", "pool", "vmm", "array"] {
        let out = g.ops(
            "a",
            &format!("{kind}:x:900MiB {kind}:y:200MiB free:x {kind}:z:200MiB"),
        );
        assert_eq!(
            i(out.lines.named(kind, "x"), "result"),
            CUDA_SUCCESS,
            "{kind}: 900 MiB fits: {:?}",
            out.lines
        );
        assert_eq!(
            i(out.lines.named(kind, "y"), "result"),
            CUDA_ERROR_OUT_OF_MEMORY,
            "{kind}: +200 MiB exceeds 1 GiB"
        );
        assert_eq!(
            i(out.lines.named(kind, "z"), "result"),
            CUDA_SUCCESS,
            "{kind}: fits again after the free"
        );
        g.wait_tenant_used("a", 0, Duration::from_secs(2));
    }
    let t = g.tenant_status("a");
    assert!(
        t["devices"][0]["allocations_refused"].as_u64().unwrap() >= 7,
        "{t}"
    );
}

#[test]
fn refused_allocation_charges_nothing_and_reported_size_is_the_quota() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    let out = g.ops(
        "a",
        "meminfo alloc:x:900MiB alloc:y:200MiB meminfo alloc:z:0 alloc:h:64GiB meminfo",
    );
    let infos = out.lines.ops("meminfo");
    assert_eq!(
        u(infos[0], "total"),
        GIB,
        "total = quota, not the 16 GiB device"
    );
    assert_eq!(u(infos[0], "free"), GIB);
    assert_eq!(
        u(infos[1], "free"),
        GIB - 900 * MIB,
        "the refused 200 MiB was not charged"
    );
    assert_eq!(
        u(infos[2], "free"),
        GIB - 900 * MIB,
        "0-byte and huge allocations charged nothing"
    );
    assert_eq!(
        i(out.lines.named("alloc", "z"), "result"),
        1,
        "0 bytes: the driver's CUDA_ERROR_INVALID_VALUE"
    );
    assert_eq!(
        i(out.lines.named("alloc", "h"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY
    );
    g.wait_tenant_used("a", 0, Duration::from_secs(2));
}

#[test]
fn nvml_reports_the_quota() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    let mut holder = g.hold("a", 300 * MIB);
    let out = run(&mut g.tenant_command("a", nvml_probe()), T).unwrap();
    let dev = out.lines.one("device");
    for m in [&dev["mem_v1"], &dev["mem_v2"]] {
        assert_eq!(i(m, "result"), 0, "{m}");
        assert_eq!(u(m, "total"), GIB, "{m}");
        assert_eq!(u(m, "free"), GIB - 300 * MIB, "{m}");
        assert_eq!(u(m, "used"), 300 * MIB, "{m}");
    }
    holder.kill();
}

#[test]
fn cudarc_async_allocator_is_held_to_the_quota() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    let out = run(
        g.tenant_command("a", cudarc_workload())
            .args(["alloc", "--mib", "300", "--count", "4"]),
        T,
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let allocs = out.lines.ops("alloc");
    assert!(
        allocs.iter().all(|l| l["async"] == true),
        "cudarc used the async allocator: {allocs:?}"
    );
    let results: Vec<i64> = allocs.iter().map(|l| i(l, "result")).collect();
    assert_eq!(
        results,
        vec![0, 0, 0, CUDA_ERROR_OUT_OF_MEMORY],
        "{:?}",
        out.lines
    );
    assert_eq!(
        u(&out.lines.one("holding")["meminfo"], "free"),
        GIB - 900 * MIB,
        "{:?}",
        out.lines
    );
    let info = run(g.tenant_command("a", cudarc_workload()).arg("info"), T).unwrap();
    let dev = info.lines.one("device");
    assert_eq!(
        u(dev, "total_mem"),
        GIB,
        "cuDeviceTotalMem reports the quota: {dev}"
    );
    assert_eq!(u(&dev["meminfo"], "total"), GIB, "{dev}");
    g.wait_tenant_used("a", 0, Duration::from_secs(2));
}

#[test]
fn processes_of_one_tenant_share_its_quota_and_tenants_are_independent() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT), ("b", ONE_GIB_TENANT)]);
    let mut holder = g.hold("a", 600 * MIB);

    let out = g.ops("a", "alloc:x:600MiB alloc:y:300MiB");
    assert_eq!(
        i(out.lines.named("alloc", "x"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "600+600 > 1 GiB across processes"
    );
    assert_eq!(i(out.lines.named("alloc", "y"), "result"), CUDA_SUCCESS);

    let out = g.ops("b", "alloc:x:900MiB meminfo");
    assert_eq!(
        i(out.lines.named("alloc", "x"), "result"),
        CUDA_SUCCESS,
        "tenant b is unaffected by a"
    );
    assert_eq!(u(out.lines.one("meminfo"), "free"), GIB - 900 * MIB);

    holder.kill();
    g.wait_tenant_used("a", 0, Duration::from_secs(1));
}

#[test]
fn sigkilled_process_returns_its_memory_within_a_second() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    let mut holder = g.hold("a", 900 * MIB);
    assert_eq!(g.tenant_used("a", 0), 900 * MIB);
    let killed_at = Instant::now();
    holder.kill();
    g.wait_tenant_used("a", 0, Duration::from_secs(1));
    eprintln!("memory returned {:?} after SIGKILL", killed_at.elapsed());
    let out = g.ops("a", "alloc:x:900MiB");
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
}

#[test]
fn dead_daemon_means_a_clear_error_not_unlimited_access() {
    let g = Gpumux::start(&[16 * GIB], &[]);
    let mut c = g.gpu.command(c_workload());
    c.env("LD_PRELOAD", artifact("libgpumux.so"));
    c.env("GPUMUX_SOCKET", g.dir.path().join("nowhere/gpumux.sock"));
    let out = run(c.args(["ops", "alloc:x:900MiB"]), T).unwrap();
    assert!(
        out.stderr
            .contains("cannot register with the gpumux daemon"),
        "stderr: {}",
        out.stderr
    );
    let init = out.lines.one("init");
    assert_ne!(i(init, "result"), CUDA_SUCCESS, "cuInit must fail: {init}");
    assert!(
        out.lines
            .ops("alloc")
            .iter()
            .all(|l| i(l, "result") != CUDA_SUCCESS),
        "{:?}",
        out.lines
    );
    assert_eq!(
        g.gpu.snapshot().devices[0].used_bytes,
        0,
        "nothing reached the device"
    );
}

#[test]
fn without_gpumux_socket_the_shim_passes_through() {
    let g = Gpumux::start(&[4 * GIB], &[]);
    let mut c = g.gpu.command(c_workload());
    c.env("LD_PRELOAD", artifact("libgpumux.so"))
        .env_remove("GPUMUX_SOCKET");
    let out = run(c.args(["ops", "alloc:x:3GiB meminfo"]), T).unwrap();
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
    assert_eq!(
        u(out.lines.one("meminfo"), "total"),
        4 * GIB,
        "the real device size"
    );
}

#[test]
fn exec_chain_and_isolation_of_segments() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT), ("b", ONE_GIB_TENANT)]);
    // An exec'd child (through a shell that itself carries the shim) is counted.
    let script = format!(
        "exec {} ops 'alloc:x:900MiB alloc:y:200MiB'",
        c_workload().display()
    );
    let out = run(g.tenant_command("a", "/bin/sh").args(["-c", &script]), T).unwrap();
    assert_eq!(
        i(out.lines.named("alloc", "x"), "result"),
        CUDA_SUCCESS,
        "{:?} {}",
        out.lines,
        out.stderr
    );
    assert_eq!(
        i(out.lines.named("alloc", "y"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY
    );

    // A process reaching tenant a's socket gets a's segments; the control one is read-only.
    use gpumux_common::protocol::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
    use gpumux_common::sock;
    use std::os::fd::{AsFd, AsRawFd};
    let fd = sock::connect(&g.socket("a")).unwrap();
    sock::send(
        fd.as_fd(),
        &ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            pid: 1,
        }
        .encode(),
        &[],
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let (n, fds) = sock::recv(fd.as_fd(), &mut buf, 0).unwrap();
    assert!(matches!(
        ServerMsg::decode(&buf[..n]).unwrap(),
        ServerMsg::Welcome { .. }
    ));
    assert_eq!(fds.len(), 2);
    let control = fds[0].as_raw_fd();
    // SAFETY: mapping a descriptor we own; a failure is the expected outcome.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            control,
            0,
        )
    };
    assert_eq!(
        p,
        libc::MAP_FAILED,
        "the control segment cannot be mapped writable"
    );
    // SAFETY: writing one byte from a valid buffer; a failure is the expected outcome.
    let w = unsafe { libc::pwrite(control, b"x".as_ptr() as *const libc::c_void, 1, 0) };
    assert_eq!(w, -1, "the control segment cannot be written");
    let seg = gpumux_common::shm::SegmentView::<gpumux_common::shm::ControlSegment>::open(
        fds[0].as_fd(),
        false,
    )
    .unwrap();
    assert_eq!(
        seg.devices[0]
            .memory_limit
            .load(std::sync::atomic::Ordering::Relaxed),
        GIB
    );
    drop(fd);
    wait_until(
        Duration::from_secs(2),
        || {
            g.tenant_status("a")["processes"]
                .as_array()
                .unwrap()
                .is_empty()
        },
        || "registration not ended".into(),
    );
}

/// 8 processes x 8 threads allocate and free random sizes against a 1 GiB quota for 10 s while
/// two of them are SIGKILLed: the device never holds more than the quota, and everything
/// returns to 0.
#[test]
fn stress_many_processes_and_threads_with_kills() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    let mut procs: Vec<Running> = (0..8)
        .map(|p| {
            Running::spawn(g.tenant_command("a", c_workload()).args([
                "stress",
                "--threads",
                "8",
                "--seconds",
                "10",
                "--max-bytes",
                &(96 * MIB).to_string(),
                "--seed",
                &p.to_string(),
            ]))
            .unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut max_seen = 0u64;
    let mut killed = 0;
    while start.elapsed() < Duration::from_secs(11) {
        let snap = g.gpu.snapshot();
        max_seen = max_seen.max(snap.devices[0].used_bytes);
        assert!(
            snap.devices[0].used_bytes <= GIB,
            "device holds {} > quota",
            snap.devices[0].used_bytes
        );
        if killed < 2 && start.elapsed() > Duration::from_secs(3 + 2 * killed as u64) {
            procs[killed].kill();
            killed += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut allocs = 0;
    for p in procs.drain(2..) {
        let (status, lines) = p.finish(Duration::from_secs(30)).unwrap();
        assert!(status.success());
        let s = lines.one("stress");
        assert_eq!(u(s, "other_errors"), 0, "only success or OOM: {s}");
        allocs += u(s, "allocs");
    }
    assert!(
        max_seen > GIB / 2,
        "the stress reached the limit region (max {max_seen})"
    );
    assert!(allocs > 1000, "the stress did work ({allocs} allocations)");
    g.wait_tenant_used("a", 0, Duration::from_secs(2));
    wait_until(
        Duration::from_secs(2),
        || g.gpu.snapshot().devices[0].used_bytes == 0,
        || "device memory not returned".into(),
    );
}

#[test]
fn forked_children_are_counted_with_their_tenant() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    // Parent holds 600 MiB; a forked child asking 600 MiB more is refused, 300 MiB fits.
    for (child, want) in [
        (600 * MIB, CUDA_ERROR_OUT_OF_MEMORY),
        (300 * MIB, CUDA_SUCCESS),
    ] {
        let out = run(
            g.tenant_command("a", c_workload()).args([
                "fork",
                "--parent-bytes",
                &(600 * MIB).to_string(),
                "--child-bytes",
                &child.to_string(),
            ]),
            T,
        )
        .unwrap();
        assert_eq!(
            i(out.lines.one("parent-alloc"), "result"),
            CUDA_SUCCESS,
            "{:?}",
            out.lines
        );
        let c = out.lines.one("child-alloc");
        assert_eq!(i(c, "init_result"), CUDA_SUCCESS, "{c}");
        assert_eq!(
            i(c, "result"),
            want,
            "child of a 600 MiB parent asking {child}: {c}"
        );
        assert_eq!(i(out.lines.one("parent-done"), "free_result"), CUDA_SUCCESS);
    }
    g.wait_tenant_used("a", 0, Duration::from_secs(2));
}

#[test]
fn destroying_a_context_returns_its_memory_at_once() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    let out = g.ops("a", "alloc:x:900MiB meminfo reset meminfo alloc:y:900MiB");
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
    assert_eq!(i(out.lines.one("reset"), "result"), CUDA_SUCCESS);
    let infos = out.lines.ops("meminfo");
    assert_eq!(
        u(infos[1], "free"),
        GIB,
        "the reset context's 900 MiB came back: {:?}",
        out.lines
    );
    assert_eq!(i(out.lines.named("alloc", "y"), "result"), CUDA_SUCCESS);
    g.wait_tenant_used("a", 0, Duration::from_secs(2));
}

#[test]
fn nvml_shows_a_tenant_only_its_own_processes() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT), ("b", ONE_GIB_TENANT)]);
    let mut mine = g.hold("a", 100 * MIB);
    let mut theirs = g.hold("b", 200 * MIB);
    let out = run(&mut g.tenant_command("a", nvml_probe()), T).unwrap();
    let procs = out.lines.one("processes");
    for key in ["processes", "v1_processes"] {
        let pids: Vec<u64> = procs[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| u(p, "pid"))
            .collect();
        assert_eq!(
            pids,
            vec![mine.pid() as u64],
            "{key}: only tenant a's process: {procs}"
        );
    }
    // Outside gpumux, NVML shows every process.
    let all = run(&mut g.gpu.command(nvml_probe()), T).unwrap();
    assert_eq!(
        all.lines.one("processes")["processes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    mine.kill();
    theirs.kill();
}

/// NCCL and vLLM create VMM memory with no current context: the allocation is charged to the
/// device its properties name, and refused over the quota (no crash, no other code).
#[test]
fn vmm_without_a_current_context_is_charged_to_its_device() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB_TENANT)]);
    let out = g.ops(
        "a",
        "device:0 nocontext vmm:x:900MiB vmm:y:200MiB device:0 meminfo",
    );
    assert_eq!(i(out.lines.one("nocontext"), "result"), CUDA_SUCCESS);
    assert_eq!(
        i(out.lines.named("vmm", "x"), "result"),
        CUDA_SUCCESS,
        "{:?}",
        out.lines
    );
    let y = out.lines.named("vmm", "y");
    assert_eq!(i(y, "result"), CUDA_ERROR_OUT_OF_MEMORY, "{y}");
    assert_eq!(y["step"], "cuMemCreate", "{y}");
    assert_eq!(u(out.lines.one("meminfo"), "free"), GIB - 900 * MIB);
    g.wait_tenant_used("a", 0, Duration::from_secs(2));
}
