//! `gpumux-device-plugin`: the Kubernetes device plugin that hands out GPU shares as gpumux
//! tenants. Runs next to gpumuxd on every GPU node (see packaging/kubernetes/).

use anyhow::{Context, Result};
use clap::Parser;
use gpumux_common::config::{DEFAULT_CONFIG_PATH, DaemonConfig};
use gpumux_common::nvml::Nvml;
use gpumux_k8s::config::{
    CONTAINER_SHIM_PATH, DEFAULT_ENDPOINT, DEFAULT_RESOURCE_NAME, PluginConfig, parse_duration,
};
use std::path::{Path, PathBuf};
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
    #[arg(long, default_value = "30s", value_parser = duration)]
    gc_interval: Duration,
    /// How long after Allocate a tenant is kept though no container lists it yet.
    #[arg(long, default_value = "5m", value_parser = duration)]
    gc_grace: Duration,
    /// How often NVML is asked about GPU health.
    #[arg(long, default_value = "5s", value_parser = duration)]
    health_interval: Duration,
    /// How often the kubelet's socket is checked (re-registration after a kubelet restart).
    #[arg(long, default_value = "1s", value_parser = duration)]
    watch_interval: Duration,
    /// How long Allocate waits for gpumuxd to open the new tenant's socket.
    #[arg(long, default_value = "5s", value_parser = duration)]
    socket_wait: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn load_gpumux_config(path: &Path) -> Result<DaemonConfig> {
    if !path.exists() && path.as_os_str() == DEFAULT_CONFIG_PATH {
        return Ok(DaemonConfig::default());
    }
    DaemonConfig::load(path).context("reading gpumuxd's config")
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("GPUMUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    let gpumux = load_gpumux_config(&args.gpumux_config)?;
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            }
            let _ = tx.send(true);
        });
        gpumux_k8s::run::run(cfg, Arc::new(Nvml), rx).await?;
        Ok(())
    })
}
