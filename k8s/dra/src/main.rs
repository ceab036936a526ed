//! `gpumux-dra-plugin`: the Kubernetes DRA driver `gpu.gpumux.dev`. Runs next to gpumuxd on
//! every GPU node (see packaging/kubernetes/dra/).

use anyhow::{Context, Result};
use clap::Parser;
use gpumux_common::config::DEFAULT_CONFIG_PATH;
use gpumux_common::nvml::Nvml;
use gpumux_dra::config::{
    DEFAULT_CDI_DIR, DEFAULT_MEMORY_GRANULARITY, DEFAULT_PLUGINS_DIR, DEFAULT_SHARES_PER_GPU,
    DRIVER_NAME, DriverConfig,
};
use gpumux_k8s::config::{CONTAINER_SHIM_PATH, duration_arg, gpumux_config};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Kubernetes DRA driver: GPUs as consumable memory and shares, prepared claims as gpumux tenants"
)]
struct Args {
    /// The node this runs on (from the downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// The driver's name: its ResourceSlices' and DeviceClasses' `driver`.
    #[arg(long, default_value = DRIVER_NAME)]
    driver_name: String,
    /// The kubelet's plugin registration directory.
    #[arg(long, default_value = gpumux_dra::api::registration::DEFAULT_REGISTRY_DIR)]
    registry_dir: PathBuf,
    /// The driver's own directory for its DRA socket [default: <kubelet plugins dir>/<driver>].
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// A kubeconfig for the API server [default: the pod's service account].
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// gpumuxd's config (for state_dir and tenants_dir); a missing default file means defaults.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    gpumux_config: PathBuf,
    /// The driver's own state directory (its record of prepared claims).
    #[arg(long, default_value = "/var/lib/gpumux/dra")]
    state_dir: PathBuf,
    /// Where the CDI specs of prepared claims are written.
    #[arg(long, default_value = DEFAULT_CDI_DIR)]
    cdi_dir: PathBuf,
    /// The shim library on the host, mounted read-only into containers.
    #[arg(long, default_value = CONTAINER_SHIM_PATH)]
    shim_path: PathBuf,
    /// The host's /dev as this process sees it (e.g. a hostPath mount at /host/dev).
    #[arg(long, default_value = "/dev")]
    dev_root: PathBuf,
    /// The `shares` capacity of each GPU: a claim's weight is the shares it consumes.
    #[arg(long, default_value_t = DEFAULT_SHARES_PER_GPU)]
    shares_per_gpu: u32,
    /// Memory requests are rounded up to a multiple of this (e.g. 256Mi, 1Gi, or bytes).
    #[arg(long, default_value_t = DEFAULT_MEMORY_GRANULARITY, value_parser = quantity)]
    memory_granularity: u64,
    /// How often NVML is asked about the GPUs.
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    health_interval: Duration,
    /// How often the node's ResourceSlice is checked against the API server.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    resync_interval: Duration,
    /// How often the driver's sockets are checked (re-created when removed).
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    watch_interval: Duration,
    /// How long a prepare waits for gpumuxd to open the new tenant's socket.
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    socket_wait: Duration,
}

fn quantity(s: &str) -> Result<u64, String> {
    gpumux_dra::quantity::parse(s).map_err(|e| e.to_string())
}

fn build_config(args: Args) -> Result<DriverConfig> {
    let gpumux = gpumux_config(&args.gpumux_config).context("reading gpumuxd's config")?;
    let plugin_dir = args
        .plugin_dir
        .unwrap_or_else(|| Path::new(DEFAULT_PLUGINS_DIR).join(&args.driver_name));
    let cfg = DriverConfig {
        driver_name: args.driver_name,
        node_name: args.node_name,
        registry_dir: args.registry_dir,
        plugin_dir,
        kubeconfig: args.kubeconfig.filter(|p| !p.as_os_str().is_empty()),
        state_dir: args.state_dir,
        tenants_dir: gpumux.tenants_dir,
        gpumux_state_dir: gpumux.state_dir,
        cdi_dir: args.cdi_dir,
        shim_path: args.shim_path,
        dev_root: args.dev_root,
        shares_per_gpu: args.shares_per_gpu,
        memory_granularity: args.memory_granularity,
        health_interval: args.health_interval,
        resync_interval: args.resync_interval,
        watch_interval: args.watch_interval,
        socket_wait: args.socket_wait,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    gpumux_k8s::process::init_logging();
    let cfg = match build_config(args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cfg: DriverConfig) -> Result<()> {
    gpumux_k8s::process::run_until_signal(|rx| gpumux_dra::run::run(cfg, Arc::new(Nvml), rx))
        .context("starting the async runtime")??;
    Ok(())
}
