//! `gpumux-device-plugin`: the Kubernetes device plugin that hands out GPU shares as gpumux
//! tenants. Runs next to gpumuxd on every GPU node (see packaging/kubernetes/).

use anyhow::{Context, Result};
use clap::Parser;
use gpumux_common::config::DEFAULT_CONFIG_PATH;
use gpumux_common::nvml::Nvml;
use gpumux_k8s::config::{
    CONTAINER_SHIM_PATH, DEFAULT_ENDPOINT, DEFAULT_RESOURCE_NAME, PluginConfig, duration_arg,
    gpumux_config,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Kubernetes device plugin: hands out shares of GPUs as gpumux tenants"
)]
struct Args {
    /// Extended resource to advertise.
    #[arg(long, default_value = DEFAULT_RESOURCE_NAME)]
    resource_name: String,
    /// Shares each GPU is divided into: k shares = k/N of its memory, weight k.
    #[arg(long, default_value_t = 10)]
    shares_per_gpu: u32,
    /// The kubelet's device plugin directory.
    #[arg(long, default_value = gpumux_k8s::api::v1beta1::DEVICE_PLUGIN_PATH)]
    kubelet_dir: PathBuf,
    /// The plugin's socket file name inside --kubelet-dir.
    #[arg(long, default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// The kubelet's pod resources socket (which containers hold which shares).
    #[arg(long, default_value = gpumux_k8s::api::v1::POD_RESOURCES_SOCKET)]
    pod_resources_socket: PathBuf,
    /// gpumuxd's config (for state_dir and tenants_dir); a missing default file means defaults.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    gpumux_config: PathBuf,
    /// The plugin's own state directory (the record of the tenants it created).
    #[arg(long, default_value = "/var/lib/gpumux/device-plugin")]
    state_dir: PathBuf,
    /// The shim library on the host, mounted read-only into containers.
    #[arg(long, default_value = CONTAINER_SHIM_PATH)]
    shim_path: PathBuf,
    /// The host's /dev as this process sees it (e.g. a hostPath mount at /host/dev): the
    /// /dev/nvidia* nodes found there are passed to containers.
    #[arg(long, default_value = "/dev")]
    dev_root: PathBuf,
    /// How often released tenants are looked for.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    gc_interval: Duration,
    /// How long after Allocate a tenant is kept though no container lists it yet.
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    gc_grace: Duration,
    /// How often NVML is asked about GPU health.
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    health_interval: Duration,
    /// How often the kubelet's socket is checked (re-registration after a kubelet restart).
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    watch_interval: Duration,
    /// How long Allocate waits for gpumuxd to open the new tenant's socket.
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    socket_wait: Duration,
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

fn build_config(args: Args) -> Result<PluginConfig> {
    let gpumux = gpumux_config(&args.gpumux_config).context("reading gpumuxd's config")?;
    let cfg = PluginConfig {
        resource_name: args.resource_name,
        shares_per_gpu: args.shares_per_gpu,
        kubelet_dir: args.kubelet_dir,
        endpoint: args.endpoint,
        pod_resources_socket: args.pod_resources_socket,
        state_dir: args.state_dir,
        tenants_dir: gpumux.tenants_dir,
        gpumux_state_dir: gpumux.state_dir,
        shim_path: args.shim_path,
        dev_root: args.dev_root,
        health_interval: args.health_interval,
        gc_interval: args.gc_interval,
        gc_grace: args.gc_grace,
        watch_interval: args.watch_interval,
        socket_wait: args.socket_wait,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn run(cfg: PluginConfig) -> Result<()> {
    gpumux_k8s::process::run_until_signal(|rx| gpumux_k8s::run::run(cfg, Arc::new(Nvml), rx))
        .context("starting the async runtime")??;
    Ok(())
}
