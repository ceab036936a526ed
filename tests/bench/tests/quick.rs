//! `gpumux-bench --quick` end to end: it runs every configuration on the fake GPU and reports
//! positive figures for every benchmark (behaviour only: speed targets live in the benchmark's
//! report, not in tests). Needs the workspace built (`cargo build --workspace`), like the
//! integration tests.

use serde_json::Value;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gpumux-bench"))
}

const CONFIGS: [(&str, &str); 3] = [
    ("bare", "bare fake"),
    ("passthrough", "shim pass-through"),
    ("registered", "shim + gpumuxd"),
];
const BENCHES: [&str; 5] = ["alloc_free", "passthrough", "totalmem", "meminfo", "launch"];

#[test]
fn quick_json_has_every_configuration_with_positive_figures() {
    let out = bench().args(["--quick", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "gpumux-bench --quick --json failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let rows = v["rows"].as_array().expect("rows");
    for (key, _) in CONFIGS {
        for bench in BENCHES {
            let row = rows
                .iter()
                .find(|r| r["config"] == key && r["bench"] == bench)
                .unwrap_or_else(|| panic!("no {bench} row for {key} in {v:#}"));
            let ns = row["median_ns"].as_f64().expect("median_ns");
            assert!(
                ns > 0.0 && ns.is_finite(),
                "{bench}/{key}: {ns} ns in {row}"
            );
            let ratio = row["ratio"].as_f64().expect("ratio");
            assert!(
                ratio > 0.0 && ratio.is_finite(),
                "{bench}/{key}: ratio {ratio}"
            );
            assert_eq!(row["runs_ns"].as_array().map(Vec::len), Some(1), "{row}");
        }
    }
    let targets = v["targets"].as_array().expect("targets");
    assert_eq!(
        targets.len(),
        4,
        "two targets x two shim configurations: {v:#}"
    );
}

#[test]
fn quick_table_lists_every_configuration_and_benchmark() {
    let out = bench().arg("--quick").output().unwrap();
    assert!(
        out.status.success(),
        "gpumux-bench --quick failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).expect("UTF-8 table");
    for (_, label) in CONFIGS {
        let lines: Vec<&str> = table.lines().filter(|l| l.contains(label)).collect();
        // one row per benchmark (plus target lines for the shim configurations)
        assert!(lines.len() >= BENCHES.len(), "{label}: {lines:?}\n{table}");
        for line in lines.iter().take(BENCHES.len()) {
            let ns: f64 = line
                .split_once(label)
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no ns/op in {line:?}"));
            assert!(ns > 0.0, "{line}");
        }
    }
    for label in [
        "cuMemAlloc_v2 + cuMemFree_v2",
        "cuCtxGetCurrent",
        "cuMemGetInfo_v2",
        "cuLaunchKernel",
    ] {
        assert!(table.contains(label), "{label} missing:\n{table}");
    }
}

#[test]
fn a_bad_argument_is_a_usage_error() {
    let out = bench().args(["--repeats", "0"]).output().unwrap();
    assert!(!out.status.success());
}
