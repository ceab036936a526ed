//! Prometheus metrics: the text exposition of the status report, served over HTTP at
//! `metrics_listen` by a small thread that asks the daemon's control socket for each scrape
//! (so the event loop stays the only owner of the state, and an idle daemon does nothing).

use crate::status::{self, StatusReport};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        writeln!(self.out, "# HELP {name} {help}").ok();
        writeln!(self.out, "# TYPE {name} {kind}").ok();
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            writeln!(self.out, "{name} {value}").ok();
        } else {
            writeln!(self.out, "{name}{{{}}} {value}", labels.join(",")).ok();
        }
    }
}

/// The Prometheus text exposition (format 0.0.4) of a status report.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    f.header("gpumux_up", "gauge", "1 while gpumuxd serves.");
    f.sample("gpumux_up", &[], 1.0);
    f.header(
        "gpumux_config_errors",
        "gauge",
        "Quota files currently rejected (see gpumuxctl check).",
    );
    f.sample("gpumux_config_errors", &[], r.config_errors.len() as f64);
    f.header(
        "gpumux_device_memory_bytes",
        "gauge",
        "Physical memory of each GPU.",
    );
    for d in &r.devices {
        f.sample(
            "gpumux_device_memory_bytes",
            &[("device", &d.index.to_string()), ("uuid", &d.uuid)],
            d.total_bytes as f64,
        );
    }
    f.header(
        "gpumux_tenant_processes",
        "gauge",
        "Processes registered per tenant.",
    );
    for t in &r.tenants {
        f.sample(
            "gpumux_tenant_processes",
            &[("tenant", &t.name)],
            t.processes.len() as f64,
        );
    }
    f.header(
        "gpumux_tenant_weight",
        "gauge",
        "Compute weight per tenant.",
    );
    for t in &r.tenants {
        f.sample(
            "gpumux_tenant_weight",
            &[("tenant", &t.name)],
            t.weight as f64,
        );
    }
    f.header(
        "gpumux_tenant_info",
        "gauge",
        "1 per tenant, labelled with its priority class and, for Kubernetes tenants, the pod or claim it stands for (join on tenant).",
    );
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
        f.sample("gpumux_tenant_info", &labels, 1.0);
    }
    type Get = fn(&status::TenantDeviceStatus) -> f64;
    let per_device: [(&str, &str, &str, Get); 9] = [
        (
            "gpumux_memory_used_bytes",
            "gauge",
            "Device memory charged to the tenant: allocations plus overhead.",
            |d| d.memory_used as f64,
        ),
        (
            "gpumux_tenant_memory_overhead_bytes",
            "gauge",
            "Device memory the tenant's processes hold beyond their allocations (contexts, modules), as NVML reports it.",
            |d| d.memory_overhead as f64,
        ),
        (
            "gpumux_memory_limit_bytes",
            "gauge",
            "The tenant's hard memory limit.",
            |d| d.memory_limit as f64,
        ),
        (
            "gpumux_memory_peak_bytes",
            "gauge",
            "Highest memory use seen.",
            |d| d.memory_peak as f64,
        ),
        (
            "gpumux_allocations_refused_total",
            "counter",
            "Allocations refused for exceeding the limit.",
            |d| d.allocations_refused as f64,
        ),
        (
            "gpumux_kernel_launches_total",
            "counter",
            "Kernel and graph launches issued.",
            |d| d.launches as f64,
        ),
        (
            "gpumux_device_time_seconds_total",
            "counter",
            "Device time granted to the tenant (time-sliced devices).",
            |d| d.device_time_ns as f64 / 1e9,
        ),
        (
            "gpumux_slice_wait_seconds_total",
            "counter",
            "Time the tenant's threads waited for a compute slice.",
            |d| d.slice_wait_ns as f64 / 1e9,
        ),
        (
            "gpumux_device_time_share",
            "gauge",
            "Share of the device's time over the last 10 s (time-sliced devices).",
            |d| d.device_time_share.unwrap_or(0.0),
        ),
    ];
    for (name, kind, help, get) in per_device {
        f.header(name, kind, help);
        for t in &r.tenants {
            for d in &t.devices {
                f.sample(
                    name,
                    &[("tenant", &t.name), ("device", &d.index.to_string())],
                    get(d),
                );
            }
        }
    }
    f.header(
        "gpumux_unmanaged_process_memory_bytes",
        "gauge",
        "Device memory of a process that uses the GPU without gpumux (tenant \"unknown\" unless it shares a tenant's cgroup).",
    );
    for u in &r.unmanaged {
        f.sample(
            "gpumux_unmanaged_process_memory_bytes",
            &[
                ("device", &u.device.to_string()),
                ("pid", &u.pid.to_string()),
                ("tenant", u.tenant.as_deref().unwrap_or("unknown")),
            ],
            u.memory as f64,
        );
    }
    out
}

/// Serves `GET /metrics` on `listener` until the process exits.
pub fn serve(listener: TcpListener, state_dir: PathBuf) {
    for stream in listener.incoming().flatten() {
        if let Err(e) = answer(stream, &state_dir) {
            tracing::debug!("metrics request failed: {e}");
        }
    }
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
    let line = String::from_utf8_lossy(&req);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (code, body) = match (line.starts_with("GET "), path) {
        (true, "/metrics") => match status::fetch(state_dir) {
            Ok(report) => ("200 OK", render(&report)),
            Err(e) => ("503 Service Unavailable", format!("gpumux_up 0\n# {e}\n")),
        },
        (true, _) => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", String::new()),
    };
    write!(
        stream,
        "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DeviceStatus, TenantDeviceStatus, TenantStatus, UnmanagedProcess};

    #[test]
    fn renders_series_with_labels() {
        let r = StatusReport {
            version: "0".into(),
            pid: 1,
            generation: 1,
            uptime_s: 1.0,
            quantum_ms: 50,
            metrics_address: None,
            devices: vec![DeviceStatus {
                index: 0,
                uuid: "GPU-x".into(),
                name: "g".into(),
                total_bytes: 100,
            }],
            tenants: vec![TenantStatus {
                name: "te\"am".into(),
                weight: 2,
                compute_limit_percent: None,
                processes: vec![1, 2],
                socket: "/s".into(),
                devices: vec![TenantDeviceStatus {
                    index: 0,
                    memory_used: 10,
                    memory_overhead: 4,
                    memory_limit: 20,
                    memory_peak: 15,
                    allocations_refused: 3,
                    launches: 7,
                    device_time_share: Some(0.5),
                    device_time_ns: 2_000_000_000,
                    slice_wait_ns: 0,
                }],
                removed: false,
                accounting_repairs: 0,
                priority: gpumux_common::config::Priority::Latency,
                owner: Some(gpumux_common::config::TenantOwner {
                    namespace: Some("ns".into()),
                    pod: Some("train".into()),
                    container: Some("main".into()),
                    claim: None,
                }),
            }],
            config_errors: vec![],
            unmanaged: vec![UnmanagedProcess {
                device: 0,
                pid: 77,
                memory: 3 << 30,
                tenant: None,
            }],
        };
        let text = render(&r);
        assert!(
            text.contains(
                "gpumux_tenant_memory_overhead_bytes{tenant=\"te\\\"am\",device=\"0\"} 4\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "gpumux_unmanaged_process_memory_bytes{device=\"0\",pid=\"77\",tenant=\"unknown\"} 3221225472\n"
        ));
        assert!(
            text.contains("gpumux_memory_used_bytes{tenant=\"te\\\"am\",device=\"0\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("gpumux_allocations_refused_total{tenant=\"te\\\"am\",device=\"0\"} 3\n")
        );
        assert!(
            text.contains("gpumux_device_time_seconds_total{tenant=\"te\\\"am\",device=\"0\"} 2\n")
        );
        assert!(text.contains("gpumux_tenant_processes{tenant=\"te\\\"am\"} 2\n"));
        assert!(text.contains("# TYPE gpumux_allocations_refused_total counter\n"));
        assert!(
            text.contains("gpumux_tenant_info{tenant=\"te\\\"am\",priority=\"latency\",namespace=\"ns\",pod=\"train\",container=\"main\"} 1\n"),
            "{text}"
        );
    }
}
