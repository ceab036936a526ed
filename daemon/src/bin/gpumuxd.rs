//! gpumuxd: the gpumux node daemon.

use anyhow::{Context, Result};
use clap::Parser;
use gpumux_common::config::{DEFAULT_CONFIG_PATH, DaemonConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "gpumux node daemon: per-container GPU memory quotas and compute time-slicing"
)]
struct Args {
    /// Daemon config file; a missing default file means all defaults.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = match load_config(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpumuxd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GPUMUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    gpumux_daemon::logging::init(filter);
    match run(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<DaemonConfig> {
    if !path.exists() && path.as_os_str() == DEFAULT_CONFIG_PATH {
        return Ok(DaemonConfig::default());
    }
    Ok(DaemonConfig::load(path)?)
}

fn run(cfg: DaemonConfig) -> Result<()> {
    let devices = gpumux_daemon::devices::discover()
        .context("discovering GPUs through NVML (does `nvidia-smi` work on this node?)")?;
    if devices.is_empty() {
        anyhow::bail!(
            "NVML reports no usable GPUs on this node: check `nvidia-smi` and the warnings above"
        );
    }
    for d in &devices {
        tracing::info!(index = d.index, uuid = %d.uuid, name = %d.name, total = d.total_bytes, "GPU");
    }
    let metrics = match &cfg.metrics_listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| {
                    format!(
                        "binding metrics_listen = \"{addr}\" (is another process on that port? \
                         change metrics_listen in the config, or set it to \"\" to serve no metrics)"
                    )
                })?;
            Some(l)
        }
        None => None,
    };
    let state_dir = cfg.state_dir.clone();
    let mut daemon = gpumux_daemon::server::Daemon::new(cfg, devices)?;
    if let Some(listener) = metrics {
        let addr = listener.local_addr()?.to_string();
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        daemon.metrics_address = Some(addr);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || gpumux_daemon::metrics::serve(listener, state_dir))
            .context("starting the metrics thread")?;
    }
    tracing::info!("ready");
    // Sockets exist: units ordered after gpumuxd (and `systemctl start`) may go on.
    gpumux_daemon::notify::ready();
    let result = daemon.run();
    gpumux_daemon::notify::stopping();
    result
}
