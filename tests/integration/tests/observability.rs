//! What an operator sees, from the real daemon: the log's shape with and without systemd's
//! journal, the metrics of a contended run (histograms included) feeding the packaged Grafana
//! dashboard and alert rules, and `gpumuxctl top` when stdout is not a terminal.

use gpumux_integration::gpumux::{Gpumux, wait_until};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, MIB, c_workload, i, run,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// GET /metrics with `accept` (may be empty); the body of a 200 answer.
fn scrape(addr: &str, accept: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let accept = if accept.is_empty() {
        String::new()
    } else {
        format!("Accept: {accept}\r\n")
    };
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap()
        .to_string();
    (content_type, body.to_string())
}

/// Names a query may use against an exposition: its samples' names, and those of the families
/// it declares (a family may have no series yet, e.g. no tenant is capped).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    for l in text.lines() {
        let mut f = l.split(' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (f.next(), f.next(), f.next(), f.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
            }
        }
    }
    names
}

/// `gpumux_*` identifiers in a text (metric names in PromQL).
fn gpumux_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("gpumux_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every PromQL expression in a Grafana dashboard: panel targets (rows' panels included) and
/// template variable queries.
fn dashboard_queries(d: &Value) -> Vec<String> {
    fn panels(v: &Value, out: &mut Vec<String>) {
        for p in v.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(
                    t["expr"]
                        .as_str()
                        .expect("a target without expr")
                        .to_string(),
                );
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// A contended run: two tenants with weights 3 and 1 time-slice one GPU, one allocation is
/// refused; then the exposition must hold everything the dashboard and the alert rules ask
/// for, with the wait histograms filled.
#[test]
fn a_contended_run_feeds_the_dashboard_and_the_alerts() {
    let g = Gpumux::start_with(
        &[16 * GIB],
        &[
            ("alice", "memory_limit = \"6GiB\"\nweight = 3\n"),
            ("bob", "memory_limit = \"2GiB\"\nweight = 1\n"),
        ],
        "metrics_listen = \"127.0.0.1:0\"\nquantum_ms = 20\n",
    );
    let loads = [
        g.load("alice", 3, &["--ns", "2000000", "--batch", "4"]),
        g.load("bob", 3, &["--ns", "2000000", "--batch", "4"]),
    ];
    let out = run(
        g.tenant_command("bob", c_workload())
            .args(["ops", "alloc:x:1GiB alloc:y:1500MiB"]),
        T,
    )
    .unwrap();
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
    assert_eq!(
        i(out.lines.named("alloc", "y"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY
    );
    for l in loads {
        assert!(l.finish(T).unwrap().0.success());
    }
    let status = g.status().unwrap();
    let addr = status["metrics_address"].as_str().unwrap().to_string();
    let (content_type, text) = scrape(&addr, "");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );

    // The daemon recorded waits: both tenants waited for slices and were granted them.
    for tenant in ["alice", "bob"] {
        for family in [
            "gpumux_slice_wait_duration_seconds",
            "gpumux_grant_latency_seconds",
        ] {
            let count = text
                .lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "{family}_count{{tenant=\"{tenant}\",device=\"0\"}}"
                    ))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {family}_count for {tenant}:\n{text}"));
            assert!(
                count > 0,
                "{tenant} never waited for a slice ({family}):\n{text}"
            );
        }
    }
    // Per-process figures in status, for `top`.
    let bob = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "bob")
        .unwrap();
    assert!(bob["process_details"].is_array(), "{bob}");

    let names = exported_names(&text);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("packaging/monitoring/gpumux-dashboard.json"))
            .unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "{queries:?}");
    let rules =
        std::fs::read_to_string(repo().join("packaging/monitoring/gpumux-alerts.yml")).unwrap();
    for (what, text) in [("dashboard", queries.join("\n")), ("alert rules", rules)] {
        let used = gpumux_names(&text);
        assert!(!used.is_empty());
        let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "the {what} use metrics gpumuxd does not export: {missing:?}"
        );
    }

    // Lint the exposition with Prometheus' own tooling when scripts/test.sh provides it.
    if let Some(promtool) = std::env::var_os("GPUMUX_PROMTOOL").filter(|p| !p.is_empty()) {
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "note: GPUMUX_PROMTOOL unset: promtool check metrics skipped (scripts/test.sh sets it)"
        );
    }

    // OpenMetrics when asked for.
    let (content_type, om) = scrape(
        &addr,
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    );
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(om.ends_with("# EOF\n"));
    assert!(
        om.contains("# TYPE gpumux_allocations_refused counter\n"),
        "{om}"
    );
    assert!(
        om.contains("gpumux_allocations_refused_total{tenant=\"bob\",device=\"0\"} 1\n"),
        "{om}"
    );
}

#[test]
fn top_prints_text_frames_when_stdout_is_not_a_terminal() {
    let g = Gpumux::start(
        &[16 * GIB],
        &[
            ("alice", "memory_limit = \"6GiB\"\nweight = 3\n"),
            ("bob", "memory_limit = \"2GiB\"\nweight = 1\n"),
        ],
    );
    let mut holder = g.hold("bob", 300 * MIB);
    let out = g
        .ctl()
        .args([
            "top",
            "--interval",
            "0.3",
            "--iterations",
            "2",
            "--sort",
            "memory",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("gpumuxd 0.1.0 (pid").count(),
        2,
        "two frames:\n{text}"
    );
    assert!(!text.contains('\x1b'), "no terminal control in text output");
    let lines: Vec<&str> = text.lines().collect();
    let row = |start: &str| {
        lines
            .iter()
            .position(|l| l.trim_start_matches('│').trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no row {start}:\n{text}"))
    };
    // Sorted by memory: bob (300 MiB) first, its holder process under it.
    let (bob, pid, alice) = (row("bob"), row(&holder.pid().to_string()), row("alice"));
    assert!(bob < pid && pid < alice, "{text}");
    assert!(lines[pid].contains("300 MiB"), "{}", lines[pid]);
    holder.kill();

    // Unreachable daemon: exit 1 with the socket path and what to do.
    drop(g);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gpumuxd.toml");
    std::fs::write(
        &config,
        format!("state_dir = \"{}\"\n", dir.path().display()),
    )
    .unwrap();
    let out = std::process::Command::new(gpumux_integration::gpumux::artifact("gpumuxctl"))
        .arg("--config")
        .arg(&config)
        .args(["top", "-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gpumuxd.sock") && err.contains("systemctl status gpumuxd"),
        "{err}"
    );
}

/// Under systemd (JOURNAL_STREAM naming stderr) the log has priority prefixes and no
/// timestamps; in a file, timestamps and no colour; a stale JOURNAL_STREAM (stderr redirected
/// since) is ignored.
#[test]
fn the_log_follows_journal_stream() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let plain = g.log();
    assert!(
        !plain.contains('\x1b'),
        "colour codes in a log file:\n{plain}"
    );
    let ready = plain
        .lines()
        .find(|l| l.contains("ready"))
        .expect("a ready line");
    assert!(
        ready.contains(" INFO ") && ready.as_bytes()[4] == b'-',
        "{ready}"
    );

    let run = |g: &mut Gpumux, stream: String| {
        g.kill_daemon();
        let before = g.log().len();
        g.start_daemon_with_env(&[("JOURNAL_STREAM", &stream)]);
        // A malformed quota file: an error-priority line.
        g.write_tenant("broken", "memory_limit = \"lots\"\n");
        wait_until(
            Duration::from_secs(10),
            || g.log()[before..].contains("rejected quota file"),
            || format!("no rejection logged:\n{}", g.log()),
        );
        std::fs::remove_file(g.tenants_dir.join("broken.toml")).unwrap();
        g.log()[before..].to_string()
    };
    let meta = std::fs::metadata(g.log_path()).unwrap();
    let journal = run(&mut g, format!("{}:{}", meta.dev(), meta.ino()));
    let ready = journal
        .lines()
        .find(|l| l.contains("ready"))
        .expect("ready");
    assert!(
        ready.starts_with("<6>gpumux"),
        "info priority, no timestamp: {ready}"
    );
    let rejected = journal
        .lines()
        .find(|l| l.contains("rejected quota file"))
        .unwrap();
    assert!(rejected.starts_with("<3>"), "error priority: {rejected}");
    assert!(journal.lines().all(|l| l.starts_with('<')), "{journal}");
    assert!(!journal.contains('\x1b'));

    let stale = run(&mut g, format!("{}:{}", meta.dev(), meta.ino() + 1));
    assert!(stale.lines().all(|l| !l.starts_with('<')), "{stale}");
    assert!(stale.contains(" ERROR "), "{stale}");
}

/// A process refused GPU access because the daemon cannot be reached is told which socket,
/// the likely cause, and what to check on the host.
#[test]
fn a_refused_process_is_told_where_and_what_to_check() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let refused = |c: &mut std::process::Command| {
        let out = run(c.args(["ops", "alloc:x:1MiB"]), T).unwrap();
        assert_ne!(i(out.lines.one("init"), "result"), CUDA_SUCCESS);
        out.stderr
    };
    let missing = g.dir.path().join("not-mounted/gpumux.sock");
    let mut c = g.gpu.command(c_workload());
    c.env(
        "LD_PRELOAD",
        gpumux_integration::gpumux::artifact("libgpumux.so"),
    )
    .env("GPUMUX_SOCKET", &missing);
    let err = refused(&mut c);
    for want in [
        missing.to_str().unwrap(),
        "not mounted into this container",
        "systemctl status gpumuxd",
        "GPU access is refused",
    ] {
        assert!(err.contains(want), "no {want:?} in: {err}");
    }
    // The daemon died (SIGKILL leaves its socket file): nothing listens.
    g.kill_daemon();
    let err = refused(&mut g.tenant_command("a", c_workload()));
    assert!(
        err.contains("gpumuxd is not running") && err.contains(g.socket("a").to_str().unwrap()),
        "{err}"
    );
}
