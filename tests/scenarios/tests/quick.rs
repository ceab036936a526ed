//! `gpumux-scenarios --quick --json` end to end on the fake GPU: every scenario runs and yields
//! a row with numbers. Behaviour only: the targets are the runner's business, not the tests'
//! (a one-second smoke run on a loaded machine says nothing about them). Needs the workspace
//! built (`cargo build --workspace`): the runner drives gpumuxd, the shim and the fakes found
//! next to itself.

use serde_json::Value;
use std::process::Command;

/// Every scenario name and the rows it must produce.
const EXPECTED: &[&str] = &[
    "weights-3-1",
    "weights-1-2-3-4",
    "lone-tenant",
    "idle-absorption",
    "compute-limit-30",
    "interactive",
    "processes-8-vs-1",
    "stopped-holder",
    "launch-cost",
    "busy-4",
    "switch-cost",
    "graph-lone",
    "graph-weights-3-1",
    "latency/alone",
    "latency/normal",
    "latency/latency",
    "latency/latency-8ms",
    "latency/batch",
    "latency/bound-cost",
    "consolidation/busy",
    "consolidation/p99",
    "many-tenants/start",
    "many-tenants/status",
];

#[test]
fn quick_run_yields_a_row_with_numbers_for_every_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpumux-scenarios"))
        .args(["--quick", "--json"])
        .output()
        .expect("run gpumux-scenarios");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "gpumux-scenarios --quick failed: {}\n{stderr}",
        out.status
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), EXPECTED.len(), "{v:#}");
    for name in EXPECTED {
        let row = rows
            .iter()
            .find(|r| r["scenario"] == *name)
            .unwrap_or_else(|| panic!("no row for {name} in {v:#}\n{stderr}"));
        let value = row["value"].as_f64();
        assert!(
            value.is_some_and(f64::is_finite),
            "{name}: no number: {row}"
        );
        assert_ne!(row["verdict"], "error", "{name}: {row}");
        let figures = row["figures"].as_object().expect("figures");
        assert!(!figures.is_empty(), "{name}: no figures: {row}");
        assert!(
            figures
                .values()
                .all(|f| f.as_f64().is_some_and(f64::is_finite)),
            "{name}: {row}"
        );
    }
    assert_eq!(v["quick"], true);
    assert!(v["machine"]["cpus"].as_u64().unwrap_or(0) > 0, "{v:#}");
}

#[test]
fn unknown_scenario_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpumux-scenarios"))
        .arg("no-such-scenario")
        .output()
        .expect("run gpumux-scenarios");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown scenario"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
