//! Prometheus metrics: the exposition of the status report, served over HTTP at
//! `metrics_listen` by a small thread that asks the daemon's control socket for each scrape
//! (so the event loop stays the only owner of the state, and an idle daemon does nothing).
//!
//! The exposition is written by `prometheus-client` (types, units, escaping, the Prometheus
//! 0.0.4 text format, and OpenMetrics 1.0 when the scraper asks for it): this module only says
//! which families exist and where their values come from, each scrape, through a
//! [`Collector`] over the report.

use crate::status::{self, StatusReport, TenantDeviceStatus, TenantStatus};
use crate::waits::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// The exposition formats a scraper may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text (asked for with `Accept: application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The format an HTTP `Accept` header asks for.
    pub fn from_accept(accept: &str) -> Format {
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The exposition of a status report in `format`.
pub fn exposition(report: &StatusReport, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ReportCollector(report.clone())));
    let mut out = String::new();
    let encoded = match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    // Writing into a String fails only if a value cannot be formatted, which would be a bug.
    if let Err(e) = encoded {
        tracing::error!("encoding metrics failed: {e}");
    }
    out
}

/// Yields the metric families of one status report.
#[derive(Debug)]
struct ReportCollector(StatusReport);

impl Collector for ReportCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let r = &self.0;
        node_families(r, &mut enc)?;
        tenant_families(r, &mut enc)?;
        for f in TENANT_DEVICE_FAMILIES {
            let mut m =
                enc.encode_descriptor(f.name, f.help, f.unit.as_ref(), f.kind.metric_type())?;
            for (t, d) in tenant_devices(r) {
                let labels = tenant_device(t, d);
                f.kind
                    .encode(&mut m.encode_family(&labels)?, (f.value)(d))?;
            }
        }
        tenant_info_family(r, &mut enc)?;
        weight_share_family(r, &mut enc)?;
        unmanaged_family(r, &mut enc)?;
        histogram_family(r, &mut enc, SLICE_WAIT, |d| &d.waits.slice_wait)?;
        histogram_family(r, &mut enc, GRANT_LATENCY, |d| &d.waits.grant_latency)
    }
}

/// Histogram families: name (unit seconds appended), help.
const SLICE_WAIT: (&str, &str) = (
    "gpumux_slice_wait_duration",
    "Each process's wait for a compute slice, from its first request to its tenant's grant (time-sliced devices).",
);
const GRANT_LATENCY: (&str, &str) = (
    "gpumux_grant_latency",
    "A tenant's wait for a compute slice, from the first request of any of its processes to the grant.",
);

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn metric_type(self) -> MetricType {
        match self {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
        }
    }
    fn encode(self, m: &mut MetricEncoder, v: Num) -> fmt::Result {
        match (self, v) {
            (Kind::Gauge, Num::Int(v)) => m.encode_gauge(&v),
            (Kind::Gauge, Num::Float(v)) => m.encode_gauge(&v),
            (Kind::Counter, Num::Int(v)) => m.encode_counter::<NoLabelSet, u64, u64>(&v, None),
            (Kind::Counter, Num::Float(v)) => m.encode_counter::<NoLabelSet, f64, f64>(&v, None),
        }
    }
}

/// A sample's value: counts and bytes stay integers in the exposition.
#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

/// A family with one series per tenant and device.
struct TenantDeviceFamily {
    /// Without the unit suffix (and without `_total`: the encoder adds both).
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: Kind,
    value: fn(&TenantDeviceStatus) -> Num,
}

const TENANT_DEVICE_FAMILIES: [TenantDeviceFamily; 12] = [
    TenantDeviceFamily {
        name: "gpumux_memory_used",
        help: "Device memory charged to the tenant: allocations plus overhead.",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |d| Num::Int(d.memory_used),
    },
    TenantDeviceFamily {
        name: "gpumux_tenant_memory_overhead",
        help: "Device memory the tenant's processes hold beyond their allocations (contexts, modules), as NVML reports it.",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |d| Num::Int(d.memory_overhead),
    },
    TenantDeviceFamily {
        name: "gpumux_memory_limit",
        help: "The tenant's hard memory limit.",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |d| Num::Int(d.memory_limit),
    },
    TenantDeviceFamily {
        name: "gpumux_memory_peak",
        help: "Highest memory use seen.",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |d| Num::Int(d.memory_peak),
    },
    TenantDeviceFamily {
        name: "gpumux_allocations_refused",
        help: "Allocations refused for exceeding the limit.",
        unit: None,
        kind: Kind::Counter,
        value: |d| Num::Int(d.allocations_refused),
    },
    TenantDeviceFamily {
        name: "gpumux_kernel_launches",
        help: "Kernel and graph launches issued.",
        unit: None,
        kind: Kind::Counter,
        value: |d| Num::Int(d.launches),
    },
    TenantDeviceFamily {
        name: "gpumux_device_time",
        help: "Device time granted to the tenant (time-sliced devices).",
        unit: Some(Unit::Seconds),
        kind: Kind::Counter,
        value: |d| Num::Float(d.device_time_ns as f64 / 1e9),
    },
    TenantDeviceFamily {
        name: "gpumux_slice_wait",
        help: "Time the tenant's threads waited for a compute slice, summed over threads.",
        unit: Some(Unit::Seconds),
        kind: Kind::Counter,
        value: |d| Num::Float(d.slice_wait_ns as f64 / 1e9),
    },
    TenantDeviceFamily {
        name: "gpumux_device_time_share",
        help: "Share of the device's time over the last 10 s (time-sliced devices).",
        unit: None,
        kind: Kind::Gauge,
        value: |d| Num::Float(d.device_time_share.unwrap_or(0.0)),
    },
    TenantDeviceFamily {
        name: "gpumux_preemptions",
        help: "Slices of the tenant revoked early for a tenant of a higher priority class.",
        unit: None,
        kind: Kind::Counter,
        value: |d| Num::Int(d.preemptions),
    },
    TenantDeviceFamily {
        name: "gpumux_queue_budget",
        help: "Device time each of the tenant's processes may have queued ahead while a higher priority class shares the device (0: unbounded).",
        unit: Some(Unit::Seconds),
        kind: Kind::Gauge,
        value: |d| Num::Float(f64::from(d.queue_budget_us) / 1e6),
    },
    TenantDeviceFamily {
        name: "gpumux_hint_yields",
        help: "Slices a latency-class tenant gave back as soon as its work was done (its processes' Idle hint).",
        unit: None,
        kind: Kind::Counter,
        value: |d| Num::Int(d.hint_yields),
    },
];

fn tenant_devices(r: &StatusReport) -> impl Iterator<Item = (&TenantStatus, &TenantDeviceStatus)> {
    r.tenants
        .iter()
        .flat_map(|t| t.devices.iter().map(move |d| (t, d)))
}

fn tenant_device(t: &TenantStatus, d: &TenantDeviceStatus) -> [(&'static str, String); 2] {
    [("tenant", t.name.clone()), ("device", d.index.to_string())]
}

/// One-series gauge family.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: Num,
) -> fmt::Result {
    Kind::Gauge.encode(
        &mut enc.encode_descriptor(name, help, unit, MetricType::Gauge)?,
        v,
    )
}

/// The daemon and the node's devices.
fn node_families(r: &StatusReport, enc: &mut DescriptorEncoder) -> fmt::Result {
    single(
        enc,
        "gpumux_up",
        "1 while gpumuxd serves.",
        None,
        Num::Int(1),
    )?;
    enc.encode_descriptor(
        "gpumux_build",
        "The gpumuxd version.",
        None,
        MetricType::Info,
    )?
    .encode_info(&[("version", r.version.as_str())])?;
    single(
        enc,
        "gpumux_config_errors",
        "Quota files currently rejected (see gpumuxctl check).",
        None,
        Num::Int(r.config_errors.len() as u64),
    )?;
    single(
        enc,
        "gpumux_quantum",
        "The time slice length (quantum_ms).",
        Some(&Unit::Seconds),
        Num::Float(r.quantum_ms as f64 / 1e3),
    )?;
    let mut m = enc.encode_descriptor(
        "gpumux_device_memory",
        "Physical memory of each GPU.",
        Some(&Unit::Bytes),
        MetricType::Gauge,
    )?;
    for d in &r.devices {
        let labels = [("device", d.index.to_string()), ("uuid", d.uuid.clone())];
        m.encode_family(&labels)?.encode_gauge(&d.total_bytes)?;
    }
    Ok(())
}

/// Per-tenant families (not per device).
fn tenant_families(r: &StatusReport, enc: &mut DescriptorEncoder) -> fmt::Result {
    type Get = fn(&TenantStatus) -> Option<Num>;
    let families: [(&str, &str, Kind, Get); 5] = [
        (
            "gpumux_tenant_processes",
            "Processes registered per tenant.",
            Kind::Gauge,
            |t| Some(Num::Int(t.processes.len() as u64)),
        ),
        (
            "gpumux_tenant_weight",
            "Compute weight per tenant (1 for a removed tenant).",
            Kind::Gauge,
            |t| Some(Num::Int(u64::from(t.weight))),
        ),
        (
            "gpumux_tenant_compute_limit",
            "The tenant's cap on device time (compute_limit) as a fraction; capped tenants only.",
            Kind::Gauge,
            |t| t.compute_limit_percent.map(|p| Num::Float(p / 100.0)),
        ),
        (
            "gpumux_tenant_removed",
            "1 when the tenant's quota file is gone and its remaining processes run out at weight 1 with no new memory.",
            Kind::Gauge,
            |t| Some(Num::Int(u64::from(t.removed))),
        ),
        (
            "gpumux_accounting_repairs",
            "Times the tenant's accounting file was found damaged through a descriptor and repaired.",
            Kind::Counter,
            |t| Some(Num::Int(t.accounting_repairs)),
        ),
    ];
    for (name, help, kind, get) in families {
        let mut m = enc.encode_descriptor(name, help, None, kind.metric_type())?;
        for t in &r.tenants {
            if let Some(v) = get(t) {
                kind.encode(&mut m.encode_family(&[("tenant", t.name.as_str())])?, v)?;
            }
        }
    }
    Ok(())
}

/// What share of each device a tenant's weight entitles it to when every tenant that may use
/// the device wants it (the target `gpumux_device_time_share` converges to under contention).
fn weight_share_family(r: &StatusReport, enc: &mut DescriptorEncoder) -> fmt::Result {
    let mut total: BTreeMap<u32, f64> = BTreeMap::new();
    for (t, d) in tenant_devices(r) {
        *total.entry(d.index).or_default() += t.weight as f64;
    }
    let mut m = enc.encode_descriptor(
        "gpumux_weight_share",
        "The tenant's weight divided by the weights of all tenants that may use the device.",
        None,
        MetricType::Gauge,
    )?;
    for (t, d) in tenant_devices(r) {
        let share = t.weight as f64 / total[&d.index].max(1.0);
        m.encode_family(&tenant_device(t, d))?
            .encode_gauge(&share)?;
    }
    Ok(())
}

/// One series per tenant, labelled with its priority class and, for Kubernetes tenants, the pod
/// or claim it stands for (join on `tenant`).
fn tenant_info_family(r: &StatusReport, enc: &mut DescriptorEncoder) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "gpumux_tenant",
        "1 per tenant, labelled with its priority class and, for Kubernetes tenants, the pod or claim it stands for (join on tenant).",
        None,
        MetricType::Info,
    )?;
    for t in &r.tenants {
        let owner = t.owner.clone().unwrap_or_default();
        let mut labels = vec![
            ("tenant", t.name.as_str()),
            ("priority", t.priority.as_str()),
        ];
        labels.extend(
            owner
                .fields()
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v))),
        );
        m.encode_info(&labels)?;
    }
    Ok(())
}

/// Processes on a GPU that never registered with gpumux.
fn unmanaged_family(r: &StatusReport, enc: &mut DescriptorEncoder) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "gpumux_unmanaged_process_memory",
        "Device memory of a process that uses the GPU without gpumux (tenant \"unknown\" unless it shares a tenant's cgroup).",
        Some(&Unit::Bytes),
        MetricType::Gauge,
    )?;
    for u in &r.unmanaged {
        let labels = [
            ("device", u.device.to_string()),
            ("pid", u.pid.to_string()),
            (
                "tenant",
                u.tenant.clone().unwrap_or_else(|| "unknown".into()),
            ),
        ];
        m.encode_family(&labels)?.encode_gauge(&u.memory)?;
    }
    Ok(())
}

fn histogram_family(
    r: &StatusReport,
    enc: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    get: fn(&TenantDeviceStatus) -> &Histogram,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (t, d) in tenant_devices(r) {
        let h = get(d);
        m.encode_family(&tenant_device(t, d))?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets(), None)?;
    }
    Ok(())
}

/// Serves `GET /metrics` on `listener` until the process exits.
pub fn serve(listener: TcpListener, state_dir: PathBuf) {
    for stream in listener.incoming().flatten() {
        if let Err(e) = answer(stream, &state_dir) {
            tracing::debug!("metrics request failed: {e}");
        }
    }
}

/// The request line's path and the `Accept` header of an HTTP request head.
fn parse_request(head: &str) -> (Option<&str>, &str) {
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split_whitespace().next());
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map_or("", |(_, v)| v.trim());
    (path, accept)
}

fn answer(mut stream: TcpStream, state_dir: &std::path::Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&req);
    let (path, accept) = parse_request(&head);
    let format = Format::from_accept(accept);
    let (code, content_type, body) = match path.map(|p| p.split('?').next().unwrap_or(p)) {
        Some("/metrics") => match status::fetch(state_dir) {
            Ok(report) => ("200 OK", format.content_type(), exposition(&report, format)),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("gpumux_up 0\n# {e}\n"),
            ),
        },
        Some(_) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try /metrics\n".to_string(),
        ),
        None => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            String::new(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests;
