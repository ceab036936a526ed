//! Entry points the shim's table classifies, on the fake GPU, end to end: every launch entry
//! point goes through the compute gate (the pre-4.0 `cuLaunch`/`cuLaunchGrid`/
//! `cuLaunchGridAsync` and `cuLaunchCooperativeKernelMultiDevice` included), and NVML's
//! process-list size query tells a tenant its own count, not the device's.

use gpumux_integration::gpumux::Gpumux;
use gpumux_integration::workloads::{GIB, MIB, Running, c_workload, nvml_probe, run, u};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const TENANT: &str = "devices = [0]\nmemory_limit = \"1GiB\"\n";
/// `CUDA_ERROR_NOT_SUPPORTED`: what the fake answers for launches it does not simulate.
const NOT_SUPPORTED: i64 = 801;
/// `NVML_ERROR_INSUFFICIENT_SIZE`.
const INSUFFICIENT_SIZE: u64 = 7;

#[test]
fn every_launch_entry_point_passes_the_gate() {
    let g = Gpumux::start(&[4 * GIB], &[("a", TENANT)]);
    let mut w = Running::spawn(
        g.tenant_command("a", c_workload())
            .args(["ops", "legacy-launch:5 sleep:30000"]),
    )
    .expect("spawn the workload");
    let line = w.wait_for("legacy-launch", T).expect("the launches ran");
    for key in ["launch", "grid", "grid_async", "multi_device"] {
        assert_eq!(
            line[key].as_i64(),
            Some(NOT_SUPPORTED),
            "{key}: the fake's own answer comes back through the shim: {line}"
        );
    }
    // The gate counts every launch it lets through, per process and device; the daemon sums
    // the live processes' counts.
    let t = g.tenant_status("a");
    let launches = t["devices"][0]["launches"].as_u64();
    assert_eq!(
        launches,
        Some(4 * 5),
        "5 calls of each of the 4 entry points passed the gate: {t}"
    );
    w.kill();
}

#[test]
fn nvml_size_query_answers_the_tenants_own_count() {
    let g = Gpumux::start(&[16 * GIB], &[("a", TENANT), ("b", TENANT), ("c", TENANT)]);
    let mut mine = g.hold("a", 100 * MIB);
    let mut theirs = g.hold("b", 200 * MIB);
    let mut others = g.hold("b", 50 * MIB);
    let size_query = |tenant: Option<&str>| {
        let mut cmd = match tenant {
            Some(t) => g.tenant_command(t, nvml_probe()),
            None => g.gpu.command(nvml_probe()),
        };
        let out = run(&mut cmd, T).expect("run the NVML probe");
        out.assert_success();
        let p = out.lines.one("processes").clone();
        (u(&p, "query_result"), u(&p, "required"), p)
    };
    // Tenant a has one process on the device: the size query (count 0) says 1, not 3.
    let (rc, required, p) = size_query(Some("a"));
    assert_eq!((rc, required), (INSUFFICIENT_SIZE, 1), "a's own count: {p}");
    let (rc, required, p) = size_query(Some("b"));
    assert_eq!((rc, required), (INSUFFICIENT_SIZE, 2), "b's own count: {p}");
    // Tenant c has none: nothing to make room for.
    let (rc, required, p) = size_query(Some("c"));
    assert_eq!(
        (rc, required),
        (0, 0),
        "c has no process on the device: {p}"
    );
    // Outside gpumux NVML counts every process.
    let (rc, required, p) = size_query(None);
    assert_eq!(
        (rc, required),
        (INSUFFICIENT_SIZE, 3),
        "the whole device: {p}"
    );
    mine.kill();
    theirs.kill();
    others.kill();
}
