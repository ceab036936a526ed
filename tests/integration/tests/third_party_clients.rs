//! Real third-party clients from PyPI on the fake GPU, as a user runs them: pynvml and gpustat
//! (monitoring, outside and inside a tenant), cuda.core over cuda-bindings (inside a tenant,
//! through the shim). They must find every function NVIDIA's NVML exports, get sensible answers,
//! and exit cleanly (no crash, no panic at exit).
//!
//! Needs the Python environment of `scripts/python-clients.sh` (`GPUMUX_PYTHON`; `scripts/test.sh`
//! sets it) and NVIDIA's real NVML for its export list (`scripts/fetch-nvidia-libs.sh`): skipped
//! without them unless `GPUMUX_REQUIRE_NVIDIA=1`.

use gpumux_conformance::exports::{exported_functions, is_nvml_api};
use gpumux_conformance::oracle;
use gpumux_integration::gpumux::Gpumux;
use gpumux_integration::workloads::{self, GIB, MIB};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The clients' Python, or `None` (skipped) when `scripts/python-clients.sh` did not run.
fn python() -> Option<PathBuf> {
    match std::env::var_os("GPUMUX_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            let msg = "GPUMUX_PYTHON is not set: run scripts/python-clients.sh (scripts/test.sh \
                       does) and set it to the python it prints";
            assert!(!oracle::required(), "{msg} (GPUMUX_REQUIRE_NVIDIA=1)");
            eprintln!("skipped: {msg}");
            None
        }
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Runs a prepared command with a timeout; panics with its output unless it succeeded without a
/// panic of the fake.
fn run_ok(what: &str, cmd: &mut Command) -> workloads::Lines {
    let out =
        workloads::run(cmd, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    out.assert_success();
    assert!(
        !out.stderr.contains("panicked"),
        "{what}: the fake panicked:\n{}",
        out.stderr
    );
    out.lines
}

/// The one JSON object a client printed.
fn report(what: &str, cmd: &mut Command) -> Value {
    let lines = run_ok(what, cmd);
    assert_eq!(
        lines.0.len(),
        1,
        "{what}: one JSON object expected: {:?}",
        lines.0
    );
    lines.0.into_iter().next().unwrap()
}

/// The per-process calls of `nvml_monitor.py` that list every compute process of the device
/// (to the node; a tenant sees its own).
const LISTING_EVERY_PROCESS: [&str; 5] = [
    "compute",
    "compute_v2",
    "detail_list_mode_0",
    "utilization",
    "utilization_info",
];

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number: {v}"))
}

#[test]
fn monitoring_clients_find_every_nvml_function_and_sensible_answers() {
    let Some(py) = python() else { return };
    let Some(real) = oracle::require("550") else {
        return;
    };
    let gpumux = Gpumux::start(
        &[4 * GIB],
        &[
            ("a", "devices = [0]\nmemory_limit = \"1GiB\"\nweight = 1\n"),
            ("b", "devices = [0]\nmemory_limit = \"1GiB\"\nweight = 1\n"),
        ],
    );
    let names: Vec<String> = exported_functions(&real.libnvml())
        .unwrap()
        .into_iter()
        .filter(|n| is_nvml_api(n))
        .collect();
    let list = gpumux.dir.path().join("nvml-exports.txt");
    std::fs::write(&list, names.join("\n")).unwrap();
    // A tenant process holding memory and one running kernels, so that processes, utilization
    // and the activity-driven values show.
    let holder = gpumux.hold("a", 64 * MIB);
    let mut load = gpumux.load("a", 30, &["--ns", "2000000", "--batch", "20"]);
    // Another tenant's process: tenant a must not learn of it.
    let theirs = gpumux.hold("b", 32 * MIB);
    std::thread::sleep(Duration::from_millis(300));

    // The node's view (no shim): everything, straight from the fake NVML.
    let admin = report(
        "nvml_monitor.py (node)",
        gpumux
            .command(&py)
            .arg(script("nvml_monitor.py"))
            .arg(&list),
    );
    assert_eq!(admin["missing_functions"], Value::Array(vec![]), "{admin}");
    assert_eq!(admin["driver"], "550.163.01");
    assert_eq!(admin["cuda_driver"], 12040);
    let d = &admin["devices"][0];
    assert_eq!(d["pci"]["busId"], "00000000:01:00.0", "{d}");
    assert_eq!(d["handle_by_pci_bus_id_matches"], true);
    assert_eq!(n(&d["memory"], "total"), 4 * GIB);
    assert!(n(&d["bar1"], "total") >= 4 * GIB, "{d}");
    let temp = n(d, "temperature");
    assert!((30..=70).contains(&temp), "temperature {temp}");
    let power = n(d, "power_mw");
    assert!((70_000..=700_000).contains(&power), "power {power}");
    assert_eq!(n(d, "power_limit_mw"), 700_000);
    assert_eq!(n(d, "compute_mode"), 0);
    assert_eq!(d["mig_mode"], serde_json::json!([0, 0]));
    assert_eq!(d["cc"], serde_json::json!([9, 0]));
    assert_eq!(d["fan"]["error"], "NVMLError_NotSupported", "{d}");
    assert!(n(d, "clock_sm") > 0 && n(d, "max_clock_sm") >= n(d, "clock_sm"));
    assert!(n(&d["utilization"], "gpu") > 0, "kernels ran: {d}");
    let pids: Vec<u64> = d["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| n(p, "pid"))
        .collect();
    for pid in [holder.pid(), load.pid()] {
        assert!(pids.contains(&u64::from(pid)), "pid {pid} in {d}");
    }
    let samples = d["process_utilization"]
        .as_array()
        .unwrap_or_else(|| panic!("process utilization: {d}"));
    let busy = samples
        .iter()
        .find(|s| n(s, "pid") == u64::from(load.pid()))
        .unwrap_or_else(|| panic!("no sample of the load: {d}"));
    assert!(n(busy, "sm") > 0, "{busy}");
    // Every per-process call lists every process to the node.
    let everyone = [holder.pid(), load.pid(), theirs.pid()];
    for call in LISTING_EVERY_PROCESS {
        let listed = &d["pids"][call];
        for pid in everyone {
            assert!(
                listed.as_array().is_some_and(|l| l.contains(&pid.into())),
                "{call} lists {pid} to the node: {listed}"
            );
        }
    }

    // A tenant's view (through the shim): the same functions, its quota as the device memory,
    // and only its own processes in every per-process call (the script fails on another pid).
    let own = format!("{},{}", holder.pid(), load.pid());
    let tenant = report(
        "nvml_monitor.py (tenant)",
        gpumux
            .tenant_command("a", &py)
            .arg(script("nvml_monitor.py"))
            .args(["--only-pids", &own])
            .arg(&list),
    );
    assert_eq!(
        tenant["missing_functions"],
        Value::Array(vec![]),
        "{tenant}"
    );
    assert_eq!(tenant["foreign_pids"], serde_json::json!({}), "{tenant}");
    let d = &tenant["devices"][0];
    assert_eq!(n(&d["memory"], "total"), GIB, "{tenant}");
    for call in LISTING_EVERY_PROCESS {
        assert_eq!(
            d["pids"][call],
            serde_json::json!([holder.pid().min(load.pid()), holder.pid().max(load.pid())]),
            "{call}: the tenant's own processes, all of them: {d}"
        );
    }
    for call in ["graphics", "graphics_v2", "mps", "detail_list_mode_1"] {
        assert_eq!(d["pids"][call], serde_json::json!([]), "{call}: {d}");
    }

    // gpustat's command line, both ways (its JSON spans lines: read it whole).
    let gpustat = py.with_file_name("gpustat");
    for (who, mut cmd) in [
        ("node", gpumux.command("timeout")),
        ("tenant", gpumux.tenant_command("a", "timeout")),
    ] {
        let run = cmd
            .arg("120")
            .arg(&gpustat)
            .arg("--json")
            .output()
            .expect("run gpustat");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success() && !stderr.contains("panicked"),
            "gpustat ({who}) failed ({}): {stderr}",
            run.status
        );
        let out: Value = serde_json::from_slice(&run.stdout).expect("gpustat --json");
        let g = &out["gpus"][0];
        assert_eq!(g["name"], "gpumux Fake GPU", "{out}");
        assert!(g["power.draw"].as_u64().is_some(), "{out}");
        assert!(g["temperature.gpu"].as_u64().is_some(), "{out}");
    }
    load.kill();
    drop(theirs);
}

#[test]
fn cuda_core_runs_through_the_shim_in_a_tenant() {
    let Some(py) = python() else { return };
    let gpumux = Gpumux::start(
        &[4 * GIB],
        &[("a", "devices = [0]\nmemory_limit = \"1GiB\"\nweight = 1\n")],
    );
    let lines = run_ok(
        "cuda_core_client.py (tenant)",
        gpumux
            .tenant_command("a", &py)
            .arg(script("cuda_core_client.py"))
            .arg(workloads::spin_ptx_path())
            .arg((256 * MIB).to_string())
            .arg((2 * GIB).to_string()),
    );
    assert_eq!(lines.one("device")["cc"], serde_json::json!([9, 0]));
    assert_eq!(n(lines.one("allocate"), "size"), 256 * MIB);
    let attrs = lines.one("attributes");
    assert_eq!(n(attrs, "max_threads_per_block"), 1024, "{attrs}");
    assert_eq!(
        n(attrs, "max_dynamic_shared_size_bytes"),
        48 * 1024,
        "{attrs}"
    );
    lines.one("launch");
    assert_eq!(
        lines.one("too-much")["error"],
        "CUDA_ERROR_OUT_OF_MEMORY",
        "2 GiB in a 1 GiB tenant"
    );
    lines.one("done");
    gpumux.wait_tenant_used("a", 0, Duration::from_secs(10));
}
