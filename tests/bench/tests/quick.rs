//! `gpumux-bench --quick` end to end: it runs every configuration on the fake GPU and reports
//! positive figures for every benchmark (behaviour only: the speed targets live in the
//! benchmark's report, not in tests). Needs the workspace built (`cargo build --workspace`),
//! like the integration tests: the bench finds gpumuxd, the shim and the fakes next to itself.

use serde_json::Value;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gpumux-bench"))
}

/// (JSON key, table label) of every configuration.
const CONFIGS: [(&str, &str); 5] = [
    ("bare", "bare fake"),
    ("passthrough", "shim pass-through"),
    ("registered", "shim + gpumuxd"),
    ("sliced", "time-sliced"),
    ("bounded", "queue-bounded"),
];
/// (JSON name, part of the table label) of every benchmark.
const BENCHES: [(&str, &str); 5] = [
    ("alloc_free", "cuMemAlloc_v2 + cuMemFree_v2"),
    ("passthrough", "cuCtxGetCurrent"),
    ("totalmem", "cuDeviceTotalMem_v2"),
    ("meminfo", "cuMemGetInfo_v2"),
    ("launch", "cuLaunchKernel"),
];

fn run_ok(args: &[&str]) -> Vec<u8> {
    let out = bench().args(args).output().expect("run gpumux-bench");
    assert!(
        out.status.success(),
        "gpumux-bench {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn quick_json_has_every_configuration_with_positive_figures() {
    let stdout = run_ok(&["--quick", "--json"]);
    let v: Value = serde_json::from_slice(&stdout).expect("JSON report");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), CONFIGS.len() * BENCHES.len(), "{v:#}");
    for (key, _) in CONFIGS {
        for (bench, _) in BENCHES {
            let row = rows
                .iter()
                .find(|r| r["config"] == key && r["bench"] == bench)
                .unwrap_or_else(|| panic!("no {bench} row for {key} in {v:#}"));
            let ns = row["median_ns"].as_f64().expect("median_ns");
            assert!(ns > 0.0 && ns.is_finite(), "{bench}/{key}: {row}");
            let ratio = row["ratio"].as_f64().expect("ratio");
            assert!(ratio > 0.0 && ratio.is_finite(), "{bench}/{key}: {row}");
            assert_eq!(row["runs_ns"].as_array().map(Vec::len), Some(1), "{row}");
        }
    }
    // alloc+free and the unhooked call under both shim configurations, the hooked call in
    // pass-through mode, and the bounded launch against the time-sliced one
    let targets = v["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 6, "{v:#}");
    assert!(targets.iter().all(|t| t["met"].is_boolean()), "{v:#}");
}

#[test]
fn quick_table_lists_every_configuration_and_benchmark() {
    let stdout = run_ok(&["--quick"]);
    let table = String::from_utf8(stdout).expect("UTF-8 table");
    // The rows sit between the dashed rule and the next blank line.
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("----"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), CONFIGS.len() * BENCHES.len(), "{table}");
    for (i, (_, bench_label)) in BENCHES.iter().enumerate() {
        assert!(
            rows[i * CONFIGS.len()].starts_with(bench_label),
            "{bench_label} missing:\n{table}"
        );
        for (j, (_, config_label)) in CONFIGS.iter().enumerate() {
            let row = rows[i * CONFIGS.len() + j];
            let ns: f64 = row
                .split_once(config_label)
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no ns/op for {config_label} in {row:?}\n{table}"));
            assert!(ns > 0.0, "{row}");
        }
    }
    assert!(table.contains("targets"), "{table}");
}

#[test]
fn a_bad_argument_is_a_usage_error() {
    let out = bench().args(["--repeats", "0"]).output().unwrap();
    assert!(!out.status.success());
}
