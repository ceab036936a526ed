//! CUDA graphs under gpumux, end to end: graph replays are time-sliced like kernel launches
//! (device time by weight, work-conserving, drained at slice end), and graph memory is held to
//! the tenant's quota when the driver commits it (at launch), returned when the executable graph
//! is destroyed. Device time and memory come from the fake GPU's ground truth.

use gpumux_integration::conserving::{assert_shared_work_conserving, assert_work_conserving};
use gpumux_integration::gpumux::{Gpumux, exclusive, weighted_tenant as tenant};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, MIB, Running, c_workload, i, run, u,
};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
/// A decode-like step: 8 spin kernels of 2 ms captured once; each step launches the graph and
/// synchronizes.
const REPLAY: &[&str] = &["--ns", "2000000", "--kernels", "8", "--batch", "1"];
/// How long the bare driver's reference is measured ([`Gpumux::bare_busy`]).
const REFERENCE: Duration = Duration::from_secs(3);

fn finish_ok(r: Running) {
    let (status, lines) = r.finish(T).unwrap();
    assert!(status.success());
    let l = lines.one("load");
    assert_eq!(i(l, "result"), 0, "{l}");
    assert_eq!(l["mode"], "graph", "{l}");
}

#[test]
fn a_lone_graph_replaying_tenant_keeps_the_device_busy() {
    let _serial = exclusive();
    // Two tenants, so the device is time-sliced; only one works.
    let g = Gpumux::start(&[16 * GIB], &[("a", &tenant(1)), ("b", &tenant(1))]);
    let before = g.bare_busy("graph", REPLAY, REFERENCE);
    let a = g.graph("a", 9, REPLAY);
    std::thread::sleep(Duration::from_millis(500));
    let s = g.device_shares(&[vec![a.pid()]], Duration::from_secs(6));
    finish_ok(a);
    let bare = before.min(g.bare_busy("graph", REPLAY, REFERENCE));
    assert_work_conserving(s[0], bare, 0.97, "lone graph-replaying tenant");
}

#[test]
fn graph_replays_split_device_time_three_to_one_and_are_drained() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("a", &tenant(3)), ("b", &tenant(1))]);
    let before = g.bare_busy("graph", REPLAY, REFERENCE);
    let a = g.graph("a", 13, REPLAY);
    let b = g.graph("b", 13, REPLAY);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = fakegpu::procid::monotonic_ns();
    let s = g.device_shares(&[vec![a.pid()], vec![b.pid()]], Duration::from_secs(10));
    let total = s[0] + s[1];
    let trace: Vec<_> = fakegpu::kernel_trace(g.state_path(), 0)
        .unwrap()
        .into_iter()
        .filter(|k| k.start_ns >= t0)
        .collect();
    let switches = trace.windows(2).filter(|w| w[0].pid != w[1].pid).count();
    eprintln!(
        "graph replays: a={:.3} b={:.3} busy={:.3}, {switches} tenant switches in 10 s",
        s[0], s[1], total
    );
    assert!(
        (s[0] / total - 0.75).abs() <= 0.03,
        "a got {:.3} of device time, want 0.75",
        s[0] / total
    );
    // 50 ms quanta: ~20 switches/s. If a slice's graphs were not drained, kernels of both
    // tenants would interleave at every 2 ms kernel.
    assert!(
        switches < 10 * 50,
        "{switches} switches in 10 s: the tenants' graph kernels interleave"
    );
    finish_ok(a);
    finish_ok(b);
    assert!(g.gpu.snapshot().devices[0].max_concurrent_kernels <= 1);
    let bare = before.min(g.bare_busy("graph", REPLAY, REFERENCE));
    assert_shared_work_conserving(total, bare, 0.95, "graph replays 3:1");
}

#[test]
fn graph_memory_beyond_the_quota_fails_at_launch_and_charges_nothing() {
    let g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let out = g.ops(
        "a",
        "graph:big:2GiB graph-launch:big meminfo \
         graph:g:900MiB graph-launch:g meminfo graph:h:200MiB graph-launch:h meminfo",
    );
    let l = &out.lines;
    assert_eq!(
        i(l.named("graph", "big"), "result"),
        CUDA_SUCCESS,
        "instantiation commits no memory: {l:?}"
    );
    let launches = l.ops("graph-launch");
    assert_eq!(i(launches[0], "result"), CUDA_ERROR_OUT_OF_MEMORY);
    assert_eq!(
        i(launches[0], "reserved"),
        0,
        "the driver committed nothing for the refused launch"
    );
    assert_eq!(i(launches[1], "result"), CUDA_SUCCESS);
    assert_eq!(u(launches[1], "reserved"), 900 * MIB);
    assert_eq!(
        i(launches[2], "result"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "900 MiB of graph memory + 200 MiB more exceed 1 GiB"
    );
    assert_eq!(u(launches[2], "reserved"), 900 * MIB);
    let infos = l.ops("meminfo");
    assert_eq!(
        u(infos[0], "free"),
        GIB,
        "the refused launch charged nothing"
    );
    assert_eq!(u(infos[1], "free"), GIB - 900 * MIB);
    assert_eq!(u(infos[2], "free"), GIB - 900 * MIB);
    g.wait_tenant_used("a", 0, Duration::from_secs(5));
}

#[test]
fn graph_memory_comes_back_when_the_graph_is_destroyed() {
    let g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let out = g.ops(
        "a",
        "graph:g:600MiB meminfo graph-launch:g graph-launch:g meminfo graph-destroy:g meminfo \
         alloc:x:900MiB free:x graph:g2:700MiB graph-launch:g2 graph-trim meminfo",
    );
    let l = &out.lines;
    let infos = l.ops("meminfo");
    assert_eq!(u(infos[0], "free"), GIB, "nothing charged at instantiation");
    assert_eq!(
        u(infos[1], "free"),
        GIB - 600 * MIB,
        "charged once, at the first launch"
    );
    let destroyed = l.named("graph-destroy", "g");
    assert_eq!(i(destroyed, "result"), CUDA_SUCCESS);
    assert_eq!(
        i(destroyed, "reserved"),
        0,
        "the driver's graph memory pool gave the memory back to the device"
    );
    assert_eq!(u(infos[2], "free"), GIB, "the tenant got it back");
    assert_eq!(i(l.named("alloc", "x"), "result"), CUDA_SUCCESS, "{l:?}");
    assert_eq!(i(l.named("graph-launch", "g2"), "result"), CUDA_SUCCESS);
    // A trim while the graph is idle unmaps its memory: charge and driver agree again.
    let trim = l.one("graph-trim");
    assert_eq!(i(trim, "reserved"), 0);
    assert_eq!(u(infos[3], "free"), GIB);
    g.wait_tenant_used("a", 0, Duration::from_secs(5));
}

#[test]
fn captured_workspace_is_charged_when_the_graph_is_uploaded() {
    let g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    // A decode step with a 256 MiB workspace allocated inside the capture: fits.
    let ok = g.graph("a", 2, &[REPLAY, &["--mem", "256MiB"]].concat());
    finish_ok(ok);
    // With a 2 GiB workspace the capture and instantiation succeed (no memory yet); the upload,
    // where the driver would commit it, is refused.
    let out = run(
        g.tenant_command("a", c_workload()).args([
            "graph",
            "--seconds",
            "1",
            "--ns",
            "1000000",
            "--mem",
            "2GiB",
        ]),
        T,
    )
    .unwrap();
    let l = out.lines.one("load");
    assert_eq!(l["step"], "upload", "{l}");
    assert_eq!(i(l, "result"), CUDA_ERROR_OUT_OF_MEMORY, "{l}");
    g.wait_tenant_used("a", 0, Duration::from_secs(5));
}

/// A capture in progress is host work: a slice revoked meanwhile must not break it (the drain's
/// context synchronize would invalidate the capture), and captured launches, which put nothing
/// on the device, must not wait for a slice.
#[test]
fn a_capture_survives_slice_revocations() {
    let _serial = exclusive();
    let g = Gpumux::start(&[16 * GIB], &[("a", &tenant(1)), ("b", &tenant(1))]);
    let a = g.load("a", 8, &["--ns", "2000000", "--batch", "4"]);
    // b captures 8 launches with 25 ms of host work before each: 200 ms, several quanta, while
    // a saturates the device.
    let out = run(
        g.tenant_command("b", c_workload()).args([
            "graph",
            "--seconds",
            "2",
            "--ns",
            "1000000",
            "--capture-pause-ms",
            "25",
        ]),
        T,
    )
    .unwrap();
    let l = out.lines.one("load");
    assert_eq!(
        i(l, "result"),
        CUDA_SUCCESS,
        "b's capture or replay failed: {l}"
    );
    assert!(l["kernels"].as_u64().unwrap() > 0, "{l}");
    let (status, lines) = a.finish(T).unwrap();
    assert!(status.success());
    assert_eq!(i(lines.one("load"), "result"), 0);
}
