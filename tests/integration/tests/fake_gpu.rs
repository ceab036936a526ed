//! Acceptance tests of the fake GPU (fake `libcuda.so.1`, fake `libnvidia-ml.so.1`, `fakegpu`
//! state): real workload processes run on an isolated fake GPU each, and the tests check that the
//! fake behaves like a GPU by the driver's documented semantics — capacity enforced across
//! processes, asynchronous launches and stream order, event timing, one kernel at a time with a
//! fair FIFO across processes, the runtime's way of loading the driver, and NVML's view.
//!
//! Run after `cargo build --workspace` (the fakes and `cudarc-workload` are found in the
//! target directory of this test binary).

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fakegpu::testenv::FakeGpuEnv;
use gpumux_integration::hogs::{self, CpuHogs};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, MIB, Running, c_workload, command,
    cudarc_workload, dlsym_logger, f, i, nvml_probe, run, spin_ptx_path, u,
};

const T: Duration = Duration::from_secs(30);

/// Serialises the tests whose assertions are about time (and the CPU-heavy stress test): the
/// simulated device runs on the host's CPUs, so on a small machine parallel CPU-bound tests
/// would stretch the gaps between kernels that events and shares measure.
fn timing_exclusive() -> (MutexGuard<'static, ()>, CpuHogs) {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // With GPUMUX_TEST_CPU_HOGS=N these run beside N CPU-bound processes.
    (guard, CpuHogs::from_env())
}

/// Runs the C workload's `ops` script to completion (exit 0 expected).
fn ops(env: &FakeGpuEnv, script: &str) -> gpumux_integration::workloads::Lines {
    let out = run(&mut command(env, &c_workload(), ["ops", script]), T).expect("run ops");
    out.assert_success();
    out.lines
}

/// Asserts the kernel records never overlap (the device runs one kernel at a time).
fn assert_no_overlap(trace: &[fakegpu::KernelRecord]) {
    let mut t: Vec<_> = trace.to_vec();
    t.sort_by_key(|k| k.start_ns);
    for w in t.windows(2) {
        assert!(
            w[1].start_ns >= w[0].end_ns,
            "kernels overlap on the device: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn capacity_is_enforced_across_processes_and_returned_when_the_holder_dies() {
    let env = FakeGpuEnv::new(&[GIB]);
    let mut a = Running::spawn(&mut command(
        &env,
        &c_workload(),
        ["hold", "--bytes", "900MiB", "--seconds", "60"],
    ))
    .unwrap();
    let held = a.wait_for("hold", T).unwrap();
    assert_eq!(i(&held, "result"), CUDA_SUCCESS, "{held}");

    // B: 200 MiB does not fit next to A's 900 MiB; 100 MiB does.
    let lines = ops(&env, "meminfo alloc:b:200MiB alloc:c:100MiB meminfo");
    let m = &lines.ops("meminfo")[0];
    assert_eq!(u(m, "total"), GIB);
    let free = u(m, "free");
    assert!(
        free <= GIB - 900 * MIB && free + 8 * MIB >= GIB - 900 * MIB,
        "free {free} with 900 MiB held of 1 GiB"
    );
    assert_eq!(
        i(lines.named("alloc", "b"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY
    );
    assert_eq!(i(lines.named("alloc", "c"), "result"), CUDA_SUCCESS);
    let m2 = &lines.ops("meminfo")[1];
    assert!(u(m2, "free") + 100 * MIB <= free, "{m2} after 100 MiB");

    // ground truth while A holds: A's pid is charged its 900 MiB (B has exited)
    let snap = env.snapshot();
    let dev = &snap.devices[0];
    let pa = dev
        .processes
        .iter()
        .find(|p| p.pid == a.pid())
        .unwrap_or_else(|| panic!("holder {} not in {dev:?}", a.pid()));
    assert!(pa.used_bytes >= 900 * MIB, "{pa:?}");
    assert_eq!(
        dev.used_bytes, pa.used_bytes,
        "B's memory not returned at exit: {dev:?}"
    );

    // SIGKILL the holder: its memory comes back without it freeing anything
    a.kill();
    let lines = ops(&env, "alloc:b:200MiB meminfo");
    assert_eq!(i(lines.named("alloc", "b"), "result"), CUDA_SUCCESS);
    let snap = env.snapshot();
    assert_eq!(snap.devices[0].used_bytes, 0, "{snap:?}");
    assert!(snap.devices[0].processes.iter().all(|p| p.pid != a.pid()));
}

#[test]
fn every_allocation_kind_is_charged_and_released() {
    let env = FakeGpuEnv::new(&[GIB]);
    for kind in [
        "alloc", "pitch", "async", "pool", "vmm", "array", "array3d", "managed",
    ] {
        let lines = ops(
            &env,
            &format!("meminfo {kind}:x:100MiB meminfo free:x meminfo"),
        );
        let a = lines.named(kind, "x");
        assert_eq!(i(a, "result"), CUDA_SUCCESS, "{kind}: {a}");
        let m = lines.ops("meminfo");
        let (before, during, after) = (u(m[0], "free"), u(m[1], "free"), u(m[2], "free"));
        if kind != "managed" {
            // managed memory lives where it is touched; the others occupy the device at once
            assert!(
                before - during >= 100 * MIB,
                "{kind}: free {before} -> {during} for 100 MiB"
            );
        }
        assert_eq!(after, before, "{kind}: free not restored after free");
        assert_eq!(i(lines.named("free", "x"), "result"), CUDA_SUCCESS);
    }
    // linear kinds hold data
    let lines = ops(
        &env,
        "alloc:a:3MiB memcpy-check:a pitch:p:1MiB memcpy-check:p vmm:v:2MiB memcpy-check:v \
         managed:m:1MiB memcpy-check:m pool:q:1MiB memcpy-check:q",
    );
    for name in ["a", "p", "v", "m", "q"] {
        let c = lines.named("memcpy-check", name);
        assert_eq!(c["match"], true, "{c}");
    }
}

#[test]
fn launches_are_asynchronous_and_streams_run_in_order() {
    let _serial = timing_exclusive();
    let env = FakeGpuEnv::new(&[GIB]);
    // 3 x 100 ms kernels: the launches return at once, synchronisation waits for all three
    let lines = ops(&env, "launch:100000000:3 sync spin:50000000:2");
    let l = lines.one("launch");
    assert_eq!(i(l, "result"), CUDA_SUCCESS, "{l}");
    assert!(
        f(l, "launch_ms") < 60.0,
        "3 launches of 100 ms kernels took {} ms to return: not asynchronous",
        f(l, "launch_ms")
    );
    let s = lines.one("sync");
    assert_eq!(i(s, "result"), CUDA_SUCCESS, "{s}");
    assert!(
        f(s, "wall_ms") + f(l, "launch_ms") >= 290.0,
        "cuCtxSynchronize returned before the kernels ended: {s}"
    );
    let sp = lines.one("spin");
    assert_eq!(i(sp, "result"), CUDA_SUCCESS, "{sp}");
    assert!(f(sp, "launch_ms") < 40.0, "{sp}");
    assert!(f(sp, "wall_ms") >= 99.0, "{sp}");

    // the device trace: 5 kernels of this process, one after another in launch order
    let trace = fakegpu::kernel_trace(env.state_path(), 0).unwrap();
    assert_eq!(trace.len(), 5, "{trace:?}");
    for (k, want) in trace.iter().zip([100, 100, 100, 50, 50]) {
        let d = (k.end_ns - k.start_ns) as f64 / 1e6;
        assert!(
            d >= want as f64 && d <= want as f64 * 1.05,
            "kernel of {want} ms ran {d} ms: {trace:?}"
        );
    }
    assert_no_overlap(&trace);
    let snap = env.snapshot();
    assert_eq!(snap.devices[0].kernels_completed, 5);
}

/// The device does not wait for the host: a process that keeps 8 kernels queued keeps the device
/// busy, and events measure the device's time, while 2 CPU-bound processes per core compete
/// with the fake's worker threads (which then wake late). The kernels are 10 ms, so that the
/// workload itself (which must wake to keep its queue full) has 70 ms of slack on a host that is
/// busier still.
#[test]
fn a_busy_host_neither_idles_the_device_nor_skews_events() {
    let _serial = timing_exclusive();
    let env = FakeGpuEnv::new(&[GIB]);
    let hogs = CpuHogs::per_core(2);
    let out = run(
        &mut command(
            &env,
            &c_workload(),
            [
                "queue",
                "--ns",
                "10000000",
                "--seconds",
                "3",
                "--depth",
                "8",
            ],
        ),
        T,
    )
    .unwrap();
    let load = hogs::loadavg();
    drop(hogs);
    out.assert_success();
    let q = out.lines.one("queue");
    assert_eq!(i(q, "result"), CUDA_SUCCESS, "{q}");
    let kernels = u(q, "kernels");
    let expected = kernels as f64 * 10.0;
    let ev = f(q, "event_ms");
    let trace = fakegpu::kernel_trace(env.state_path(), 0).unwrap();
    assert_eq!(trace.len() as u64, kernels, "every kernel in the trace");
    assert_no_overlap(&trace);
    let span = (trace.last().unwrap().end_ns - trace[0].start_ns) as f64 / 1e6;
    let busy: f64 = trace
        .iter()
        .map(|k| (k.end_ns - k.start_ns) as f64 / 1e6)
        .sum();
    let wall = f(q, "end_ms") - f(q, "start_ms");
    let err = (ev - expected).abs() / expected;
    eprintln!(
        "{kernels} x 10 ms kernels, 8 queued, beside {} CPU hogs (load {load:?}): device busy \
         {:.2}% of its span ({span:.1} ms; wall {wall:.1} ms), events {ev:.3} ms vs {expected:.0} \
         ms of kernels (error {:.3}%)",
        2 * hogs::cores(),
        busy / span * 100.0,
        err * 100.0
    );
    assert!(kernels >= 100, "only {kernels} kernels in 3 s");
    // The device's part, whatever the host: it never idles while a kernel is ready, and runs
    // each for exactly its duration.
    for w in trace.windows(2) {
        assert_eq!(
            w[1].start_ns,
            w[0].end_ns.max(w[1].ready_ns),
            "the device idled with a kernel ready: {w:?}"
        );
        assert_eq!(w[1].end_ns - w[1].start_ns, 10_000_000, "{w:?}");
    }
    // The workload's part: it keeps 8 queued (70 ms of slack) unless the host runs it later
    // still; the gaps it left are when it had nothing queued.
    let late: Vec<f64> = trace
        .windows(2)
        .filter(|w| w[1].ready_ns > w[0].end_ns)
        .map(|w| (w[1].ready_ns - w[0].end_ns) as f64 / 1e6)
        .collect();
    eprintln!(
        "the workload let its queue run dry {} times: {late:?} ms",
        late.len()
    );
    // Events are the device's clock: exact against the device's own timeline.
    let device_span = span;
    assert!(
        (ev - device_span).abs() / device_span < 0.001,
        "events {ev} ms vs the device's {device_span} ms"
    );
    let idle_by_host: f64 = late.iter().sum();
    let kept_busy = busy / (span - idle_by_host);
    assert!(
        kept_busy >= 0.98,
        "device busy {:.2}% of the time it had kernels queued",
        kept_busy * 100.0
    );
    if late.is_empty() {
        assert!(
            busy / span >= 0.98,
            "device busy {:.2}% of its span",
            busy / span * 100.0
        );
        assert!(
            err < 0.01,
            "events measured {ev} ms for {expected} ms of back-to-back kernels"
        );
    }
    assert!(
        span >= wall * 0.9,
        "the device timeline ({span} ms) fell behind the host's ({wall} ms)"
    );
}

#[test]
fn events_measure_the_simulated_kernel_time() {
    let _serial = timing_exclusive();
    let env = FakeGpuEnv::new(&[GIB]);
    let out = run(
        &mut command(
            &env,
            &c_workload(),
            ["spin", "--ns", "50000000", "--count", "4"],
        ),
        T,
    )
    .unwrap();
    out.assert_success();
    let s = out.lines.one("spin");
    assert_eq!(i(s, "result"), CUDA_SUCCESS, "{s}");
    let ev = f(s, "event_ms");
    let err = (ev - 200.0).abs() / 200.0;
    eprintln!(
        "C workload: 4 x 50 ms spin, event {ev:.3} ms, error {:.2}%",
        err * 100.0
    );
    assert!(err <= 0.05, "events measured {ev} ms for 200 ms of kernels");
    assert!(f(s, "wall_ms") >= ev * 0.95, "{s}");
    // the device's own timeline: 4 kernels of 50 ms, and the events bracket them
    let trace = fakegpu::kernel_trace(env.state_path(), 0).unwrap();
    assert_eq!(trace.len(), 4, "{trace:?}");
    for k in &trace {
        // never short; late only by host scheduling noise
        let d = (k.end_ns - k.start_ns) as f64 / 1e6;
        assert!((50.0..55.0).contains(&d), "a 50 ms kernel ran {d} ms");
    }
    let span = (trace[3].end_ns - trace[0].start_ns) as f64 / 1e6;
    assert!(
        ev >= span * 0.99 && ev <= span * 1.05,
        "events {ev} ms vs device span {span} ms"
    );
    let busy = env.snapshot().devices[0].busy_ns as f64 / 1e6;
    assert!((busy - 200.0).abs() <= 10.0, "device busy {busy} ms");
}

#[test]
fn two_saturating_processes_share_the_device_evenly_one_kernel_at_a_time() {
    let _serial = timing_exclusive();
    let env = FakeGpuEnv::new(&[GIB]);
    // each: 400 kernels of 2 ms enqueued at once (0.8 s of device time), then sleeps so its
    // ground truth stays visible
    let script = "launch:2000000:400 sync sleep:3000";
    let mut a = Running::spawn(&mut command(&env, &c_workload(), ["ops", script])).unwrap();
    let mut b = Running::spawn(&mut command(&env, &c_workload(), ["ops", script])).unwrap();
    // wait until both processes have kernels completed
    let start = Instant::now();
    let both = |s: &fakegpu::Snapshot| {
        let p = &s.devices[0].processes;
        [a.pid(), b.pid()]
            .iter()
            .all(|pid| p.iter().any(|q| q.pid == *pid && q.kernels > 0))
    };
    while !both(&env.snapshot()) {
        assert!(
            start.elapsed() < T,
            "both workloads never ran: {:?}",
            env.snapshot()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A 500 ms window on the device's timeline, split by the kernel trace once both are done
    // (the processes' busy counters are updated when their stream threads wake, which a busy
    // host makes late; the trace has the device's own times).
    let t1 = fakegpu::procid::monotonic_ns();
    std::thread::sleep(Duration::from_millis(500));
    let t2 = fakegpu::procid::monotonic_ns();
    let wall = (t2 - t1) as f64;
    a.wait_for("sync", T).unwrap();
    b.wait_for("sync", T).unwrap();
    let trace = fakegpu::kernel_trace(env.state_path(), 0).unwrap();
    let in_window = |pid: Option<u32>| {
        trace
            .iter()
            .filter(|k| pid.is_none_or(|p| k.pid == p))
            .map(|k| k.end_ns.min(t2).saturating_sub(k.start_ns.max(t1)))
            .sum::<u64>() as f64
    };
    let (da, db) = (in_window(Some(a.pid())), in_window(Some(b.pid())));
    let share_a = da / (da + db);
    let dev_busy = in_window(None);
    eprintln!(
        "fairness over {:.0} ms: A {:.1}% / B {:.1}%, device busy {:.1}% of wall",
        wall / 1e6,
        share_a * 100.0,
        (1.0 - share_a) * 100.0,
        dev_busy / wall * 100.0
    );
    assert!(
        (0.4..=0.6).contains(&share_a),
        "device time split {:.1}% / {:.1}%",
        share_a * 100.0,
        (1.0 - share_a) * 100.0
    );
    assert!(
        dev_busy >= 0.85 * wall,
        "device idle while two processes wait"
    );

    let snap = env.snapshot();
    let dev = &snap.devices[0];
    assert!(dev.max_concurrent_kernels <= 1, "{dev:?}");
    assert_eq!(dev.kernels_completed, 800);
    assert_eq!(trace.len(), 800);
    assert_no_overlap(&trace);
    // in the window where both were queued, they alternate: neither runs long streaks
    let mut longest = 0;
    let mut run_len = 0;
    let mut last = 0;
    let both_end = [a.pid(), b.pid()]
        .iter()
        .map(|p| {
            trace
                .iter()
                .filter(|k| k.pid == *p)
                .map(|k| k.end_ns)
                .max()
                .unwrap()
        })
        .min()
        .unwrap();
    let both_start = [a.pid(), b.pid()]
        .iter()
        .map(|p| {
            trace
                .iter()
                .filter(|k| k.pid == *p)
                .map(|k| k.start_ns)
                .min()
                .unwrap()
        })
        .max()
        .unwrap();
    for k in trace
        .iter()
        .filter(|k| k.start_ns >= both_start && k.end_ns <= both_end)
    {
        run_len = if k.pid == last { run_len + 1 } else { 1 };
        last = k.pid;
        longest = longest.max(run_len);
    }
    assert!(
        longest <= 3,
        "one process ran {longest} kernels in a row while the other waited"
    );
}

#[test]
fn c_workload_reaches_the_driver_only_through_cu_get_proc_address() {
    let env = FakeGpuEnv::new(&[GIB]);
    let log = env.state_path().with_file_name("dlsym.log");
    let logger = dlsym_logger();
    let mut cmd = command(
        &env,
        &c_workload(),
        [
            "ops",
            "alloc:a:1MiB memcpy-check:a free:a spin:1000000 meminfo",
        ],
    );
    cmd.env("LD_PRELOAD", &logger).env("DLSYM_LOG", &log);
    let out = run(&mut cmd, T).unwrap();
    out.assert_success();
    // every entry point the workload asked for was handed out by cuGetProcAddress
    assert!(
        out.lines.ops("getproc").is_empty(),
        "{:#?}",
        out.lines.ops("getproc")
    );
    assert_eq!(i(out.lines.named("alloc", "a"), "result"), CUDA_SUCCESS);
    assert_eq!(out.lines.named("memcpy-check", "a")["match"], true);
    assert_eq!(i(out.lines.one("spin"), "result"), CUDA_SUCCESS);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let on_libcuda: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(lib, _)| lib.contains("libcuda"))
        .map(|(_, sym)| sym)
        .collect();
    assert_eq!(on_libcuda, ["cuGetProcAddress_v2"], "dlsym log:\n{text}");

    // control: the same logger sees cudarc's many plain dlsyms on libcuda
    let log2 = env.state_path().with_file_name("dlsym-cudarc.log");
    let mut cmd = command(&env, &cudarc_workload(), ["alloc", "--mib", "1"]);
    cmd.env("LD_PRELOAD", &logger).env("DLSYM_LOG", &log2);
    run(&mut cmd, T).unwrap().assert_success();
    let text = std::fs::read_to_string(&log2).unwrap_or_default();
    let syms: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(lib, _)| lib.contains("libcuda"))
        .map(|(_, sym)| sym)
        .collect();
    assert!(
        syms.contains("cuInit"),
        "the dlsym logger missed cudarc's lookups:\n{text}"
    );
}

#[test]
fn c_workload_info_and_stress() {
    let env = FakeGpuEnv::new(&[GIB, 2 * GIB]);
    let out = run(&mut command(&env, &c_workload(), ["info"]), T).unwrap();
    out.assert_success();
    assert_eq!(u(out.lines.one("info"), "devices"), 2);
    let devs = out.lines.ops("device");
    for (d, want) in devs.iter().zip([GIB, 2 * GIB]) {
        assert_eq!(i(d, "result"), CUDA_SUCCESS, "{d}");
        assert_eq!(u(d, "total_mem"), want);
        assert_eq!(u(d, "total"), want);
        assert_eq!(u(d, "free"), want);
    }

    let _serial = timing_exclusive();
    // 4 threads x up to 16 live allocations of up to 256 MiB on 1 GiB: plenty of OOMs,
    // never another error, and everything comes back
    let out = run(
        &mut command(
            &env,
            &c_workload(),
            [
                "stress",
                "--threads",
                "4",
                "--seconds",
                "1",
                "--max-bytes",
                "256MiB",
                "--seed",
                "7",
            ],
        ),
        T,
    )
    .unwrap();
    out.assert_success();
    let s = out.lines.one("stress");
    assert_eq!(u(s, "other_errors"), 0, "unexpected codes: {s}");
    assert!(u(s, "allocs") > 100 && u(s, "ooms") > 0, "{s}");
    assert_eq!(u(s, "allocs"), u(s, "frees"), "{s}");
    assert_eq!(u(s, "free_after"), u(s, "free_before"), "{s}");
}

#[test]
fn cudarc_workload_allocates_copies_and_spins() {
    let _serial = timing_exclusive();
    let env = FakeGpuEnv::new(&[GIB]);
    let w = cudarc_workload();
    let out = run(&mut command(&env, &w, ["info"]), T).unwrap();
    out.assert_success();
    let d = out.lines.one("device");
    assert_eq!(u(d, "total_mem"), GIB, "{d}");
    assert_eq!(
        d["async_alloc"], true,
        "the fake must report memory pools: {d}"
    );

    // OOM is data: 600 MiB fits once in 1 GiB
    let out = run(
        &mut command(&env, &w, ["alloc", "--mib", "600", "--count", "2"]),
        T,
    )
    .unwrap();
    out.assert_success();
    let a = out.lines.ops("alloc");
    assert_eq!(i(a[0], "result"), CUDA_SUCCESS, "{a:?}");
    assert_eq!(i(a[1], "result"), CUDA_ERROR_OUT_OF_MEMORY, "{a:?}");
    let h = out.lines.one("holding");
    assert_eq!(u(&h["meminfo"], "free"), GIB - 600 * MIB, "{h}");
    let fr = out.lines.one("freed");
    assert_eq!(i(fr, "result"), CUDA_SUCCESS, "{fr}");
    assert_eq!(u(&fr["meminfo"], "free"), GIB, "{fr}");

    let out = run(&mut command(&env, &w, ["copy", "--mib", "8"]), T).unwrap();
    out.assert_success();
    let c = out.lines.one("copy");
    assert_eq!(c["match"], true, "{c}");

    let out = run(
        &mut command(&env, &w, ["spin", "--ns", "25000000", "--count", "2"]),
        T,
    )
    .unwrap();
    out.assert_success();
    let s = out.lines.one("spin");
    assert_eq!(i(s, "result"), CUDA_SUCCESS, "{s}");
    let ev = f(s, "event_ms");
    eprintln!(
        "cudarc: 2 x 25 ms spin, event {ev:.3} ms, error {:.2}%",
        (ev - 50.0).abs() / 0.5
    );
    assert!((ev - 50.0).abs() <= 2.5, "{s}");
    assert!(f(s, "launch_ms") < 25.0, "{s}");
    assert_eq!(env.snapshot().devices[0].kernels_completed, 2);
}

#[test]
fn nvml_reports_a_live_workloads_memory_and_process() {
    let env = FakeGpuEnv::new(&[GIB]);
    let mut hold = Running::spawn(&mut command(
        &env,
        &c_workload(),
        ["hold", "--bytes", "300MiB", "--seconds", "60"],
    ))
    .unwrap();
    assert_eq!(
        i(&hold.wait_for("hold", T).unwrap(), "result"),
        CUDA_SUCCESS
    );

    let out = run(&mut command(&env, &nvml_probe(), Vec::<&str>::new()), T).unwrap();
    out.assert_success();
    let init = out.lines.one("init");
    assert_eq!(
        i(init, "uninitialized_count_result"),
        1,
        "NVML_ERROR_UNINITIALIZED: {init}"
    );
    assert_eq!(i(init, "result"), 0);
    assert_eq!(
        i(init, "small_buffer_result"),
        7,
        "INSUFFICIENT_SIZE: {init}"
    );
    assert_eq!(i(init, "null_count_result"), 2, "INVALID_ARGUMENT: {init}");
    assert_eq!(u(init, "count"), 1);
    let d = out.lines.one("device");
    assert_eq!(i(d, "uuid_result"), 0);
    assert_eq!(d["by_uuid_same"], true, "{d}");
    assert_eq!(d["uuid"], env.snapshot().devices[0].uuid.as_str());
    for key in ["mem_v1", "mem_v2"] {
        let m = &d[key];
        assert_eq!(i(m, "result"), 0, "{d}");
        assert_eq!(u(m, "total"), GIB);
        assert!(u(m, "used") >= 300 * MIB, "{d}");
        assert_eq!(u(m, "free") + u(m, "used"), GIB, "{d}");
    }
    assert_eq!(
        i(&d["mem_v2"], "bad_version_result"),
        25,
        "version check: {d}"
    );
    let p = out.lines.one("processes");
    assert_eq!(
        i(p, "query_result"),
        7,
        "size query must say INSUFFICIENT_SIZE: {p}"
    );
    assert_eq!(u(p, "required"), 1, "{p}");
    assert_eq!(i(p, "result"), 0);
    let procs = p["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{p}");
    assert_eq!(u(&procs[0], "pid"), u64::from(hold.pid()));
    assert!(u(&procs[0], "used") >= 300 * MIB);
    assert_eq!(u(&procs[0], "gpu_instance"), 0xFFFF_FFFF);
    assert_eq!(u(&p["v1_processes"][0], "pid"), u64::from(hold.pid()));
    let sd = out.lines.one("shutdown");
    assert_eq!((i(sd, "result"), i(sd, "second_result")), (0, 1), "{sd}");

    hold.kill();
    let out = run(&mut command(&env, &nvml_probe(), Vec::<&str>::new()), T).unwrap();
    let d = out.lines.one("device");
    assert_eq!(
        u(&d["mem_v1"], "used"),
        0,
        "killed holder still charged: {d}"
    );
    let p = out.lines.one("processes");
    assert_eq!((i(p, "query_result"), u(p, "required")), (0, 0), "{p}");
}

#[test]
fn workloads_share_one_spin_kernel() {
    // the C workload embeds tests/workloads/ptx/spin.ptx verbatim between markers
    let ptx = std::fs::read_to_string(spin_ptx_path()).unwrap();
    let c = std::fs::read_to_string(
        gpumux_integration::workloads::workloads_dir().join("c/driver_workload.c"),
    )
    .unwrap();
    let begin = c.find("/* PTX-BEGIN */").expect("PTX-BEGIN marker") + "/* PTX-BEGIN */".len();
    let end = c.find("/* PTX-END */").expect("PTX-END marker");
    let embedded: String = c[begin..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let l = l.strip_prefix('"').expect("string literal line");
            let l = l.strip_suffix("\\n\"").expect("line ends with \\n\"");
            format!("{l}\n")
        })
        .collect();
    assert_eq!(
        embedded, ptx,
        "driver_workload.c's PTX differs from ptx/spin.ptx"
    );
    assert!(ptx.contains(".entry spin(") && ptx.contains(".param .u64 ns"));
}
