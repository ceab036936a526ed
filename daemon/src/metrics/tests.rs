//! The exposition, parsed back with a strict reader of the text formats (Prometheus 0.0.4 and
//! OpenMetrics 1.0): every sample belongs to a declared family, label values unescape to what
//! went in, histograms are cumulative and agree with their count.

use super::*;
use crate::status::{
    DeviceStatus, ProcessDeviceStatus, ProcessState, ProcessStatus, UnmanagedProcess,
};
use crate::waits::TenantWaits;
use gpumux_common::config::{Priority, TenantOwner};
use std::collections::BTreeMap;

#[derive(Debug, Default)]
struct Family {
    kind: String,
    unit: Option<String>,
    help: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|e| format!("bad value {v:?}: {e}")),
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// `{k="v",...}` with escapes; returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (key, r) = rest
            .split_once("=\"")
            .ok_or(format!("no =\" in {rest:?}"))?;
        if !is_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("raw newline in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample name belongs to.
fn family_of<'a>(families: &'a mut BTreeMap<String, Family>, name: &str) -> Option<&'a mut Family> {
    let base = ["_total", "_bucket", "_sum", "_count", "_info", "_created"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|b| families.contains_key(*b))
        .unwrap_or(name)
        .to_string();
    families.get_mut(&base)
}

fn parse(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (what, name, arg) = (parts.next(), parts.next(), parts.next());
            let (Some(what), Some(name)) = (what, name) else {
                return Err(format!("bad comment {line:?}"));
            };
            let f = families.entry(name.to_string()).or_default();
            match what {
                "HELP" => f.help = arg.unwrap_or("").to_string(),
                "TYPE" => f.kind = arg.ok_or("TYPE without a type")?.to_string(),
                "UNIT" => f.unit = arg.map(str::to_string),
                _ => return Err(format!("unknown comment {line:?}")),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or(format!("bad sample {line:?}"))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = parse_value(rest.trim().split(' ').next().unwrap_or(""))?;
        if !seen.insert(format!("{name}{labels:?}")) {
            return Err(format!("duplicate series {line:?}"));
        }
        let f = family_of(&mut families, name).ok_or(format!("{name} has no TYPE"))?;
        f.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(families)
}

fn histogram(buckets: &[(f64, u64)], sum: f64) -> Histogram {
    let mut h = Histogram::default();
    for &(le, n) in buckets {
        let i = h.le.iter().position(|&b| b == le).unwrap();
        h.counts[i] = n;
        h.count += n;
    }
    h.sum_seconds = sum;
    h
}

fn report() -> StatusReport {
    let device = |index, used, share, waits| TenantDeviceStatus {
        index,
        memory_used: used,
        memory_overhead: 4,
        memory_limit: 20,
        memory_peak: 15,
        allocations_refused: 3,
        launches: 7,
        device_time_share: share,
        device_time_ns: 2_000_000_000,
        slice_wait_ns: 500_000_000,
        preemptions: 5,
        queue_budget_us: 2000,
        hint_yields: 6,
        waits,
    };
    let tenant = |name: &str, weight, devices| TenantStatus {
        name: name.into(),
        weight,
        compute_limit_percent: (weight == 1).then_some(50.0),
        processes: vec![1, 2],
        socket: "/s".into(),
        devices,
        removed: weight == 1,
        accounting_repairs: if weight == 1 { 2 } else { 0 },
        priority: if weight == 1 {
            Priority::Latency
        } else {
            Priority::default()
        },
        owner: (weight == 1).then(|| TenantOwner {
            namespace: Some("ns".into()),
            pod: Some("train".into()),
            container: Some("main".into()),
            claim: None,
        }),
        process_details: vec![ProcessStatus {
            pid: 1,
            slot: 0,
            state: ProcessState::Running,
            devices: vec![ProcessDeviceStatus {
                index: 0,
                memory_used: 10,
                memory_overhead: 4,
                launches: 7,
                slice_wait_ns: 1,
                waiting: false,
            }],
        }],
    };
    let waits = TenantWaits {
        slice_wait: histogram(&[(0.01, 4), (0.05, 2), (10.0, 1)], 7.3),
        grant_latency: histogram(&[(0.1, 3)], 0.25),
    };
    StatusReport {
        version: "0.1.0".into(),
        pid: 1,
        generation: 1,
        uptime_s: 1.0,
        quantum_ms: 50,
        metrics_address: None,
        devices: vec![
            DeviceStatus {
                index: 0,
                uuid: "GPU-x".into(),
                name: "g".into(),
                total_bytes: 100,
                host_latency_us: 0,
            },
            DeviceStatus {
                index: 1,
                uuid: "GPU-y".into(),
                name: "g".into(),
                total_bytes: 100,
                host_latency_us: 0,
            },
        ],
        tenants: vec![
            tenant(
                "te\"a\\m\nx",
                3,
                vec![
                    device(0, 10, Some(0.7), waits),
                    device(1, 0, None, TenantWaits::default()),
                ],
            ),
            tenant(
                "b",
                1,
                vec![device(0, 5, Some(0.3), TenantWaits::default())],
            ),
        ],
        config_errors: vec!["x.toml:1: bad".into()],
        unmanaged: vec![UnmanagedProcess {
            device: 0,
            pid: 77,
            memory: 3 << 30,
            tenant: None,
        }],
    }
}

fn value(f: &Family, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    f.samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .unwrap_or_else(|| panic!("no {name}{want:?} in {f:?}"))
        .value
}

const ODD: &str = "te\"a\\m\nx";

#[test]
fn exposition_parses_back_with_types_and_values() {
    let text = exposition(&report(), Format::Prometheus);
    let fams = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let f = |n: &str| {
        fams.get(n)
            .unwrap_or_else(|| panic!("no family {n}\n{text}"))
    };
    // Family names as Prometheus 0.0.4 has them (counters with their _total).
    for (name, kind) in [
        ("gpumux_up", "gauge"),
        ("gpumux_config_errors", "gauge"),
        ("gpumux_quantum_seconds", "gauge"),
        ("gpumux_device_memory_bytes", "gauge"),
        ("gpumux_tenant_processes", "gauge"),
        ("gpumux_tenant_weight", "gauge"),
        ("gpumux_tenant_compute_limit", "gauge"),
        ("gpumux_tenant_removed", "gauge"),
        ("gpumux_accounting_repairs_total", "counter"),
        ("gpumux_memory_used_bytes", "gauge"),
        ("gpumux_tenant_memory_overhead_bytes", "gauge"),
        ("gpumux_unmanaged_process_memory_bytes", "gauge"),
        ("gpumux_memory_limit_bytes", "gauge"),
        ("gpumux_memory_peak_bytes", "gauge"),
        ("gpumux_allocations_refused_total", "counter"),
        ("gpumux_kernel_launches_total", "counter"),
        ("gpumux_device_time_seconds_total", "counter"),
        ("gpumux_slice_wait_seconds_total", "counter"),
        ("gpumux_device_time_share", "gauge"),
        ("gpumux_preemptions_total", "counter"),
        ("gpumux_queue_budget_seconds", "gauge"),
        ("gpumux_hint_yields_total", "counter"),
        ("gpumux_weight_share", "gauge"),
        ("gpumux_tenant_info", "gauge"),
        ("gpumux_slice_wait_duration_seconds", "histogram"),
        ("gpumux_grant_latency_seconds", "histogram"),
    ] {
        assert_eq!(f(name).kind, kind, "{name}");
        assert!(!f(name).help.is_empty(), "{name} has no help");
    }
    let td = |dev: &'static str| [("tenant", ODD), ("device", dev)];
    assert_eq!(value(f("gpumux_up"), "gpumux_up", &[]), 1.0);
    assert_eq!(
        value(f("gpumux_config_errors"), "gpumux_config_errors", &[]),
        1.0
    );
    assert_eq!(
        value(f("gpumux_quantum_seconds"), "gpumux_quantum_seconds", &[]),
        0.05
    );
    let g = "gpumux_memory_used_bytes";
    assert_eq!(value(f(g), g, &td("0")), 10.0);
    assert_eq!(value(f(g), g, &td("1")), 0.0);
    let g = "gpumux_tenant_memory_overhead_bytes";
    assert_eq!(value(f(g), g, &td("0")), 4.0);
    let g = "gpumux_unmanaged_process_memory_bytes";
    let unmanaged = [("device", "0"), ("pid", "77"), ("tenant", "unknown")];
    assert_eq!(value(f(g), g, &unmanaged), (3u64 << 30) as f64);
    let c = "gpumux_allocations_refused_total";
    assert_eq!(value(f(c), c, &td("0")), 3.0);
    let c = "gpumux_device_time_seconds_total";
    assert_eq!(value(f(c), c, &td("0")), 2.0);
    let c = "gpumux_slice_wait_seconds_total";
    assert_eq!(value(f(c), c, &td("0")), 0.5);
    let g = "gpumux_tenant_processes";
    assert_eq!(value(f(g), g, &[("tenant", ODD)]), 2.0);
    let g = "gpumux_tenant_compute_limit";
    assert_eq!(value(f(g), g, &[("tenant", "b")]), 0.5);
    assert_eq!(f(g).samples.len(), 1, "only capped tenants have a cap");
    let g = "gpumux_tenant_weight";
    assert_eq!(value(f(g), g, &[("tenant", ODD)]), 3.0);
    let g = "gpumux_tenant_removed";
    assert_eq!(value(f(g), g, &[("tenant", "b")]), 1.0);
    assert_eq!(value(f(g), g, &[("tenant", ODD)]), 0.0);
    let c = "gpumux_accounting_repairs_total";
    assert_eq!(value(f(c), c, &[("tenant", "b")]), 2.0);
    assert_eq!(value(f(c), c, &[("tenant", ODD)]), 0.0);
    let g = "gpumux_memory_limit_bytes";
    assert_eq!(value(f(g), g, &td("0")), 20.0);
    let g = "gpumux_memory_peak_bytes";
    assert_eq!(value(f(g), g, &td("0")), 15.0);
    let c = "gpumux_kernel_launches_total";
    assert_eq!(value(f(c), c, &td("0")), 7.0);
    let c = "gpumux_preemptions_total";
    assert_eq!(value(f(c), c, &td("0")), 5.0);
    let g = "gpumux_queue_budget_seconds";
    assert_eq!(value(f(g), g, &td("0")), 0.002);
    let c = "gpumux_hint_yields_total";
    assert_eq!(value(f(c), c, &td("0")), 6.0);
    let g = "gpumux_device_time_share";
    assert_eq!(value(f(g), g, &td("0")), 0.7);
    assert_eq!(value(f(g), g, &td("1")), 0.0, "not time-sliced there");
    let g = "gpumux_device_memory_bytes";
    assert_eq!(value(f(g), g, &[("device", "1"), ("uuid", "GPU-y")]), 100.0);
    // Weight 3 against 1 on device 0; alone on device 1.
    let g = "gpumux_tenant_info";
    let b = [
        ("tenant", "b"),
        ("priority", "latency"),
        ("namespace", "ns"),
        ("pod", "train"),
        ("container", "main"),
    ];
    assert_eq!(value(f(g), g, &b), 1.0);
    assert_eq!(
        value(f(g), g, &[("tenant", ODD), ("priority", "normal")]),
        1.0
    );
    let g = "gpumux_weight_share";
    assert_eq!(value(f(g), g, &td("0")), 0.75);
    assert_eq!(value(f(g), g, &[("tenant", "b"), ("device", "0")]), 0.25);
    assert_eq!(value(f(g), g, &td("1")), 1.0);
}

#[test]
fn label_values_are_escaped_and_read_back_unchanged() {
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let text = exposition(&report(), format);
        assert!(text.contains(r#"tenant="te\"a\\m\nx""#), "{text}");
        let fams = parse(&text).unwrap();
        let tenants: Vec<&str> = fams["gpumux_tenant_weight"]
            .samples
            .iter()
            .map(|s| s.labels["tenant"].as_str())
            .collect();
        assert_eq!(tenants, [ODD, "b"]);
    }
}

#[test]
fn histograms_are_cumulative_and_agree_with_their_count_and_sum() {
    let text = exposition(&report(), Format::Prometheus);
    let fams = parse(&text).unwrap();
    let h = &fams["gpumux_slice_wait_duration_seconds"];
    let name = "gpumux_slice_wait_duration_seconds";
    let labels = [("tenant", ODD), ("device", "0")];
    assert_eq!(value(h, &format!("{name}_count"), &labels), 7.0);
    assert!((value(h, &format!("{name}_sum"), &labels) - 7.3).abs() < 1e-9);
    let buckets: Vec<(f64, f64)> = h
        .samples
        .iter()
        .filter(|s| {
            s.name.ends_with("_bucket") && s.labels["tenant"] == ODD && s.labels["device"] == "0"
        })
        .map(|s| (parse_value(&s.labels["le"]).unwrap(), s.value))
        .collect();
    assert_eq!(buckets.len(), crate::waits::WAIT_BUCKETS.len() + 1);
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 7.0));
    let at = |le: f64| buckets.iter().find(|b| b.0 == le).unwrap().1;
    assert_eq!(at(0.005), 0.0);
    assert_eq!(at(0.01), 4.0);
    assert_eq!(at(0.05), 6.0);
    assert_eq!(at(5.0), 6.0);
    assert_eq!(at(10.0), 7.0);
    let g = &fams["gpumux_grant_latency_seconds"];
    let name = "gpumux_grant_latency_seconds";
    assert_eq!(value(g, &format!("{name}_count"), &labels), 3.0);
    assert!((value(g, &format!("{name}_sum"), &labels) - 0.25).abs() < 1e-9);
    assert_eq!(
        value(
            g,
            &format!("{name}_bucket"),
            &[labels[0], labels[1], ("le", "0.1")]
        ),
        3.0
    );
    // Every tenant and device has both histograms, empty ones included.
    for fam in [
        "gpumux_slice_wait_duration_seconds",
        "gpumux_grant_latency_seconds",
    ] {
        let counts = fams[fam]
            .samples
            .iter()
            .filter(|s| s.name.ends_with("_count"))
            .count();
        assert_eq!(counts, 3, "{fam}");
    }
}

#[test]
fn openmetrics_when_asked_for() {
    assert_eq!(Format::from_accept(""), Format::Prometheus);
    assert_eq!(
        Format::from_accept("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
        Format::Prometheus
    );
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::from_accept(accept), Format::OpenMetrics);
    assert!(
        Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text")
    );
    let text = exposition(&report(), Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"), "{text}");
    let fams = parse(&text).unwrap();
    // OpenMetrics names counter families without _total, and declares units.
    assert_eq!(fams["gpumux_allocations_refused"].kind, "counter");
    assert!(
        fams["gpumux_allocations_refused"]
            .samples
            .iter()
            .all(|s| s.name == "gpumux_allocations_refused_total")
    );
    assert_eq!(
        fams["gpumux_device_time_seconds"].unit.as_deref(),
        Some("seconds")
    );
    assert_eq!(
        fams["gpumux_memory_used_bytes"].unit.as_deref(),
        Some("bytes")
    );
    assert_eq!(fams["gpumux_build"].kind, "info");
    assert_eq!(
        value(
            &fams["gpumux_build"],
            "gpumux_build_info",
            &[("version", "0.1.0")]
        ),
        1.0
    );
}

#[test]
fn request_head_parsing() {
    let head = "GET /metrics HTTP/1.1\r\nHost: x\r\nACCEPT: application/openmetrics-text\r\n\r\n";
    assert_eq!(
        parse_request(head),
        (Some("/metrics"), "application/openmetrics-text")
    );
    assert_eq!(parse_request("POST /metrics HTTP/1.1\r\n\r\n"), (None, ""));
    assert_eq!(parse_request("GET / HTTP/1.1\r\n\r\n"), (Some("/"), ""));
}

#[test]
fn the_strict_reader_rejects_what_it_should() {
    assert!(parse("x 1\n").is_err(), "a sample without TYPE");
    assert!(
        parse("# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n").is_err(),
        "a duplicate"
    );
    assert!(
        parse("# TYPE x gauge\nx{a=\"\\q\"} 1\n").is_err(),
        "a bad escape"
    );
    assert!(
        parse("# TYPE x gauge\nx{a=\"1} 1\n").is_err(),
        "unterminated"
    );
    assert!(parse("# TYPE x gauge\nx one\n").is_err(), "a bad value");
}
