//! The driver's settings (from the command line, see `main.rs`) and what follows from them:
//! socket paths, the capacity policy of published GPUs.

use gpumux_k8s::config::dns_subdomain;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// The driver's name (SPEC): the `driver` of its ResourceSlices and DeviceClasses.
pub const DRIVER_NAME: &str = "gpu.gpumux.dev";
/// The kubelet's plugin directory under which the driver's own directory lives.
pub const DEFAULT_PLUGINS_DIR: &str = "/var/lib/kubelet/plugins";
/// The DRA service's socket file name in the driver's plugin directory.
pub const DRA_SOCKET: &str = "dra.sock";
/// Where CDI specs for prepared claims are written (CDI's dynamic spec directory).
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";
/// Default shares per GPU (the `shares` capacity: a claim's weight is the shares it consumes).
pub const DEFAULT_SHARES_PER_GPU: u32 = 100;
/// Default memory granularity: requests are rounded up to a multiple of it.
pub const DEFAULT_MEMORY_GRANULARITY: u64 = 256 << 20;

/// A setting is unusable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--node-name is empty: pass the node's name (the DaemonSet sets NODE_NAME from spec.nodeName)"
    )]
    NoNodeName,
    #[error("--node-name `{0}` is not a Kubernetes node name (lower-case DNS subdomain)")]
    NodeName(String),
    #[error("--driver-name `{0}` must be a lower-case DNS subdomain of at most 63 characters")]
    DriverName(String),
    #[error("--shares-per-gpu must be between 2 and 1000, not {0}")]
    Shares(u32),
    #[error("--memory-granularity must be between 1MiB and 64GiB, not {0} bytes")]
    Granularity(u64),
}

/// Everything the driver needs to run.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// `gpu.gpumux.dev` unless overridden.
    pub driver_name: String,
    /// The node this driver runs on (its slices' `nodeName` and pool name).
    pub node_name: String,
    /// The kubelet's plugin registration directory (`plugins_registry`).
    pub registry_dir: PathBuf,
    /// The driver's own directory, where its DRA socket lives (as the kubelet sees it).
    pub plugin_dir: PathBuf,
    /// A kubeconfig for the API server; `None`: in-cluster config (or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// The driver's state directory (its record of prepared claims).
    pub state_dir: PathBuf,
    /// gpumux's `tenants_dir` (quota files).
    pub tenants_dir: PathBuf,
    /// gpumux's `state_dir` (tenant sockets), as the host sees it.
    pub gpumux_state_dir: PathBuf,
    /// Where the CDI specs of prepared claims go.
    pub cdi_dir: PathBuf,
    /// The shim on the host (mounted at the same path into containers).
    pub shim_path: PathBuf,
    /// The host's `/dev` as the driver sees it (to find `/dev/nvidia*`).
    pub dev_root: PathBuf,
    /// The `shares` capacity of each GPU.
    pub shares_per_gpu: u32,
    /// Memory requests are rounded up to multiples of this (the `memory` request policy).
    pub memory_granularity: u64,
    /// How often NVML is asked about the GPUs.
    pub health_interval: Duration,
    /// How often the published slices are checked against the API server even when nothing
    /// changed here (someone deleted them, a kubelet restart wiped them).
    pub resync_interval: Duration,
    /// How often the driver's sockets are checked (re-created when removed).
    pub watch_interval: Duration,
    /// How long a prepare waits for gpumuxd to open the new tenant's socket.
    pub socket_wait: Duration,
}

impl DriverConfig {
    /// Checks what the API server or the kubelet would reject later, less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.is_empty() {
            return Err(ConfigError::NoNodeName);
        }
        if !dns_subdomain(&self.node_name, 253) {
            return Err(ConfigError::NodeName(self.node_name.clone()));
        }
        if !dns_subdomain(&self.driver_name, 63) {
            return Err(ConfigError::DriverName(self.driver_name.clone()));
        }
        if !(2..=gpumux_common::config::MAX_WEIGHT).contains(&self.shares_per_gpu) {
            return Err(ConfigError::Shares(self.shares_per_gpu));
        }
        if !((1 << 20)..=(64 << 30)).contains(&self.memory_granularity) {
            return Err(ConfigError::Granularity(self.memory_granularity));
        }
        Ok(())
    }

    /// `registry_dir/<driver>-reg.sock`: where the kubelet finds the driver.
    pub fn registration_socket(&self) -> PathBuf {
        self.registry_dir
            .join(format!("{}-reg.sock", self.driver_name))
    }

    /// `plugin_dir/dra.sock`: the DRA service the kubelet calls.
    pub fn dra_socket(&self) -> PathBuf {
        self.plugin_dir.join(DRA_SOCKET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config() -> DriverConfig {
        DriverConfig {
            driver_name: DRIVER_NAME.into(),
            node_name: "node-1".into(),
            registry_dir: "/r".into(),
            plugin_dir: "/p/gpu.gpumux.dev".into(),
            kubeconfig: None,
            state_dir: "/s".into(),
            tenants_dir: "/t".into(),
            gpumux_state_dir: "/run/gpumux".into(),
            cdi_dir: "/c".into(),
            shim_path: "/usr/lib/gpumux/libgpumux.so".into(),
            dev_root: "/dev".into(),
            shares_per_gpu: 100,
            memory_granularity: 256 << 20,
            health_interval: Duration::from_secs(5),
            resync_interval: Duration::from_secs(30),
            watch_interval: Duration::from_secs(1),
            socket_wait: Duration::from_secs(5),
        }
    }

    #[test]
    fn validation() {
        let c = config();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.registration_socket(),
            PathBuf::from("/r/gpu.gpumux.dev-reg.sock")
        );
        assert_eq!(c.dra_socket(), PathBuf::from("/p/gpu.gpumux.dev/dra.sock"));
        for (f, e) in [
            (
                (|c: &mut DriverConfig| c.node_name.clear()) as fn(&mut DriverConfig),
                ConfigError::NoNodeName,
            ),
            (
                |c| c.node_name = "Node_1".into(),
                ConfigError::NodeName("Node_1".into()),
            ),
            (
                |c| c.driver_name = "gpu/x".into(),
                ConfigError::DriverName("gpu/x".into()),
            ),
            (|c| c.shares_per_gpu = 1, ConfigError::Shares(1)),
            (|c| c.shares_per_gpu = 1001, ConfigError::Shares(1001)),
            (
                |c| c.memory_granularity = 4096,
                ConfigError::Granularity(4096),
            ),
        ] {
            let mut c = config();
            f(&mut c);
            assert_eq!(c.validate(), Err(e));
        }
    }
}
