//! The status report `gpumuxctl status` shows, and the control-socket request that asks for it.
//! Both sides (daemon and CLI) use these types, so the JSON is one schema.

use crate::waits::TenantWaits;
use gpumux_common::config::{Priority, TenantOwner};
use serde::{Deserialize, Serialize};

/// A request on the control socket (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
}

/// The whole node as the daemon sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub generation: u64,
    pub uptime_s: f64,
    pub quantum_ms: u32,
    /// Where Prometheus metrics are served, if enabled.
    pub metrics_address: Option<String>,
    pub devices: Vec<DeviceStatus>,
    pub tenants: Vec<TenantStatus>,
    /// Quota files currently rejected (`file:line: reason`); their tenants keep the last good quota.
    pub config_errors: Vec<String>,
    /// Processes on a GPU that no tenant registered (started without the shim): their memory
    /// is the device's, not any tenant's quota's.
    #[serde(default)]
    pub unmanaged: Vec<UnmanagedProcess>,
}

/// A process holding GPU memory that never registered with gpumux.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnmanagedProcess {
    /// Device index.
    pub device: u32,
    /// Host pid.
    pub pid: u32,
    /// Device memory NVML attributes to it (0 when NVML will not say).
    pub memory: u64,
    /// The tenant it most likely belongs to (it shares the cgroup of that tenant's registered
    /// processes), if the daemon can tell.
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceStatus {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub total_bytes: u64,
    /// How late the host runs the daemon's scheduling timers on this device (moving average,
    /// µs): a busy host. The scheduler widens its idle graces with it.
    #[serde(default)]
    pub host_latency_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantStatus {
    pub name: String,
    pub weight: u32,
    /// Hard cap on device time, in percent.
    pub compute_limit_percent: Option<f64>,
    /// Registered processes (host pids).
    pub processes: Vec<u32>,
    pub socket: String,
    pub devices: Vec<TenantDeviceStatus>,
    /// The tenant's quota file is gone: its remaining processes are held to weight 1 and no
    /// new memory until they exit.
    #[serde(default)]
    pub removed: bool,
    /// Times the tenant's accounting file was found damaged through a descriptor and repaired.
    #[serde(default)]
    pub accounting_repairs: u64,
    /// Priority class from the quota file (latency > normal > batch).
    #[serde(default)]
    pub priority: Priority,
    /// The Kubernetes pod or claim the tenant was created for (`[owner]` in its quota file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<TenantOwner>,
    /// Each process (registered, stalled or orphaned) with what it uses, per device.
    #[serde(default)]
    pub process_details: Vec<ProcessStatus>,
}

/// One process of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessStatus {
    pub pid: u32,
    /// Its slot in the tenant's accounting segment.
    pub slot: u32,
    pub state: ProcessState,
    /// Devices the tenant may use.
    pub devices: Vec<ProcessDeviceStatus>,
}

/// Where a process stands with the daemon.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Connected and answering.
    Running,
    /// Did not drain a revoked slice in time (stopped or stuck): passed over until it speaks.
    Stalled,
    /// Registered with a previous daemon, not reattached yet.
    Orphaned,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessDeviceStatus {
    pub index: u32,
    /// This process's footprint on the device (what counts against the limit): its
    /// allocations plus `memory_overhead`.
    pub memory_used: u64,
    /// The part of `memory_used` that is not allocations (contexts, modules; measured through
    /// NVML, or reserved for a context being created).
    #[serde(default)]
    pub memory_overhead: u64,
    /// Kernel and graph launches it issued there (monotonic).
    pub launches: u64,
    /// Total time it waited for a compute slice there, as the daemon saw it (from its first
    /// `Demand` to its tenant's grant), the wait in progress included, ns.
    pub slice_wait_ns: u64,
    /// Waiting for a slice now.
    pub waiting: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantDeviceStatus {
    pub index: u32,
    /// The tenant's footprint, what counts against its limit: allocations + overhead.
    pub memory_used: u64,
    /// The part of `memory_used` that is not allocations: what its processes hold beyond them
    /// (contexts, modules, libraries), as NVML reports it, or reserved for a context being
    /// created.
    #[serde(default)]
    pub memory_overhead: u64,
    pub memory_limit: u64,
    pub memory_peak: u64,
    pub allocations_refused: u64,
    pub launches: u64,
    /// Share of the device's time over the last interval (0..1), when time-sliced.
    pub device_time_share: Option<f64>,
    /// Total device time granted, ns.
    pub device_time_ns: u64,
    /// Total time threads waited for a slice, ns.
    pub slice_wait_ns: u64,
    /// Slices of this tenant revoked early for a tenant of a higher `priority` class.
    #[serde(default)]
    pub preemptions: u64,
    /// Device time (µs) each of its processes may have queued ahead while a higher class shares
    /// the device (0: unbounded).
    #[serde(default)]
    pub queue_budget_us: u32,
    /// Slices this tenant (latency class) gave back as soon as its work was done (its processes'
    /// `Idle`), before any idle grace.
    #[serde(default)]
    pub hint_yields: u64,
    /// Slice-wait and grant-latency histograms (see [`crate::waits`]).
    #[serde(default)]
    pub waits: TenantWaits,
}

/// Asking the daemon for its status failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach gpumuxd at {path} ({source}); {}", connect_hint(.source))]
    Connect {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("talking to gpumuxd: {0}; is it overloaded or stuck? (`systemctl status gpumuxd`)")]
    Io(#[from] std::io::Error),
    #[error(
        "gpumuxd answered something unexpected: {0}; are gpumuxctl and gpumuxd the same version? (`gpumuxctl --version`, `gpumuxd --version`)"
    )]
    BadAnswer(String),
}

/// What to do when the control socket cannot be connected to.
fn connect_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "the control socket is root's: run gpumuxctl as root (e.g. with sudo)"
        }
        std::io::ErrorKind::NotFound => {
            "is gpumuxd running (`systemctl status gpumuxd`), with the same state_dir as this gpumuxctl's --config?"
        }
        std::io::ErrorKind::ConnectionRefused => {
            "gpumuxd is not running (the socket is left from an earlier one): `systemctl status gpumuxd`"
        }
        _ => "is it running? (`systemctl status gpumuxd`)",
    }
}

/// Asks the daemon for its status over its control socket in `state_dir`.
pub fn fetch(state_dir: &std::path::Path) -> Result<StatusReport, FetchError> {
    use std::io::{BufRead, BufReader, Write};
    let path = gpumux_common::names::control_socket(state_dir);
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| FetchError::Connect {
            path: path.clone(),
            source,
        })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut req = serde_json::to_vec(&ControlRequest::Status).expect("serialisable");
    req.push(b'\n');
    stream.write_all(&req)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let value: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| FetchError::BadAnswer(e.to_string()))?;
    if let Some(e) = value.get("error") {
        return Err(FetchError::BadAnswer(e.to_string()));
    }
    serde_json::from_value(value).map_err(|e| FetchError::BadAnswer(e.to_string()))
}
