//! The plugin's settings (from the command line, see `main.rs`) and what it derives from them.

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// The library path inside containers (SPEC: `LD_PRELOAD=/usr/lib/gpumux/libgpumux.so`).
pub const CONTAINER_SHIM_PATH: &str = "/usr/lib/gpumux/libgpumux.so";
/// gpumux's state directory as containers see it (SPEC:
/// `GPUMUX_SOCKET=/run/gpumux/tenants/<tenant>/gpumux.sock`).
pub const CONTAINER_STATE_DIR: &str = "/run/gpumux";
/// Default resource name.
pub const DEFAULT_RESOURCE_NAME: &str = "gpumux.dev/gpu-share";
/// Default socket file name of the plugin in the kubelet's device plugin directory.
pub const DEFAULT_ENDPOINT: &str = "gpumux-gpu-share.sock";

/// A setting is unusable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--shares-per-gpu must be between 1 and 1000, not {0}")]
    Shares(u32),
    #[error(
        "--resource-name `{0}` must be `<domain>/<name>` (lower-case DNS domain, name of [A-Za-z0-9_.-])"
    )]
    ResourceName(String),
    #[error("--endpoint `{0}` must be a plain socket file name other than kubelet.sock")]
    Endpoint(String),
    #[error("`{0}` is not a duration like 500ms, 30s, 5m or 1h")]
    Duration(String),
}

/// Everything the plugin needs to run.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Extended resource name, e.g. `gpumux.dev/gpu-share`.
    pub resource_name: String,
    /// Shares each GPU is divided into.
    pub shares_per_gpu: u32,
    /// The kubelet's device plugin directory (holds `kubelet.sock` and the plugin's socket).
    pub kubelet_dir: PathBuf,
    /// The plugin's socket file name in `kubelet_dir`.
    pub endpoint: String,
    /// The kubelet's pod resources socket.
    pub pod_resources_socket: PathBuf,
    /// The plugin's own state directory.
    pub state_dir: PathBuf,
    /// gpumux's `tenants_dir` (quota files).
    pub tenants_dir: PathBuf,
    /// gpumux's `state_dir` (tenant sockets), as the host sees it.
    pub gpumux_state_dir: PathBuf,
    /// The shim library on the host (mounted read-only at [`CONTAINER_SHIM_PATH`]).
    pub shim_path: PathBuf,
    /// The host's `/dev` as the plugin sees it: the `/dev/nvidia*` nodes found here are passed
    /// on (as the host's `/dev/<name>`), the others are left out.
    pub dev_root: PathBuf,
    /// How often NVML is asked about the GPUs' health.
    pub health_interval: Duration,
    /// How often released tenants are looked for.
    pub gc_interval: Duration,
    /// How long after `Allocate` a tenant is kept even if no container lists it yet.
    pub gc_grace: Duration,
    /// How often the kubelet's and the plugin's sockets are checked (kubelet restarts).
    pub watch_interval: Duration,
    /// How long `Allocate` waits for gpumuxd to open the new tenant's socket.
    pub socket_wait: Duration,
}

impl PluginConfig {
    /// Checks the settings the kubelet or gpumux would reject later, less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.shares_per_gpu) {
            return Err(ConfigError::Shares(self.shares_per_gpu));
        }
        if !valid_resource_name(&self.resource_name) {
            return Err(ConfigError::ResourceName(self.resource_name.clone()));
        }
        if self.endpoint.is_empty()
            || self.endpoint.contains('/')
            || self.endpoint == crate::api::v1beta1::KUBELET_SOCKET
            || self.endpoint.starts_with('.')
        {
            return Err(ConfigError::Endpoint(self.endpoint.clone()));
        }
        Ok(())
    }

    /// `kubelet_dir/kubelet.sock`.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.kubelet_dir.join(crate::api::v1beta1::KUBELET_SOCKET)
    }

    /// `kubelet_dir/<endpoint>`.
    pub fn plugin_socket(&self) -> PathBuf {
        self.kubelet_dir.join(&self.endpoint)
    }
}

/// `<domain>/<name>`, the shape the kubelet accepts for an extended resource.
fn valid_resource_name(s: &str) -> bool {
    let Some((domain, name)) = s.split_once('/') else {
        return false;
    };
    let domain_ok = dns_subdomain(domain, 253) && !domain.ends_with("kubernetes.io");
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    domain_ok && name_ok
}

/// gpumuxd's config at `path` (for `state_dir` and `tenants_dir`); a missing file at the
/// default path means gpumuxd's defaults.
pub fn gpumux_config(
    path: &std::path::Path,
) -> Result<gpumux_common::config::DaemonConfig, gpumux_common::config::ConfigError> {
    use gpumux_common::config::{DEFAULT_CONFIG_PATH, DaemonConfig};
    if !path.exists() && path.as_os_str() == DEFAULT_CONFIG_PATH {
        return Ok(DaemonConfig::default());
    }
    DaemonConfig::load(path)
}

/// [`parse_duration`] for clap's `value_parser`.
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// A lower-case DNS subdomain of at most `max` characters (labels of `a-z`, `0-9`, `-`, at
/// most 63 each, not starting or ending with `-`).
pub fn dns_subdomain(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Parses `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::Duration(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.checked_mul(1000).ok_or_else(bad)?,
        "m" => n.checked_mul(60_000).ok_or_else(bad)?,
        "h" => n.checked_mul(3_600_000).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "1.5s", "-1s", "10d", "1 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_names() {
        for ok in ["gpumux.dev/gpu-share", "example.com/gpu_share.v2", "a/b"] {
            assert!(valid_resource_name(ok), "{ok}");
        }
        for bad in [
            "gpu-share",
            "/gpu",
            "gpumux.dev/",
            "Gpumux.dev/gpu",
            "nvidia.com/-gpu",
            "kubernetes.io/gpu",
            "x.kubernetes.io/gpu",
            "a/b/c",
        ] {
            assert!(!valid_resource_name(bad), "{bad}");
        }
    }
}
