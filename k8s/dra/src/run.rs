//! The driver's life: recover prepared claims, learn the GPUs, then serve, register and
//! publish until told to stop.
//!
//! Tasks side by side:
//! - **health**: asks NVML every `--health-interval`; the GPUs (a `watch` channel) feed the
//!   publisher and the prepare calls;
//! - **publisher**: keeps the node's ResourceSlice in step ([`publisher::reconcile`]) when the
//!   GPUs change, after each registration, and every `--resync-interval` (retrying with
//!   backoff while the API server cannot be reached), and forgets released claims whose
//!   tenant gpumuxd has dropped ([`ClaimStore::sweep`]);
//! - **serving**: the DRA service on `<plugin-dir>/dra.sock` and the registration service on
//!   `<registry-dir>/<driver>-reg.sock`. The kubelet's plugin watcher finds the latter, asks
//!   for the driver's info and says whether it accepted it; a restarted kubelet does so again.
//!   If either socket is removed or replaced, both are served afresh, so the kubelet finds the
//!   driver again.
//!
//! Prepared claims live in files (quota files, CDI specs, the state file), so neither a
//! kubelet restart nor a driver restart loses or duplicates a tenant. On shutdown the sockets
//! are removed (the kubelet then knows the driver is gone) and tenants and slices are kept.

use crate::api::registration::registration_server::RegistrationServer;
use crate::config::DriverConfig;
use crate::gpus::Gpus;
use crate::plugin::{DraServices, Driver, Registrar};
use crate::publisher::{self, ApiError, Reconciled};
use crate::slices::{self, Policy};
use crate::store::{ClaimStore, StoreError, StorePaths};
use gpumux_common::nvml::{DeviceSource, NvmlError};
use gpumux_k8s::run::{FileId, identity, probe, sleep_or_shutdown};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the driver cannot run.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot list GPUs: {0}")]
    Nvml(#[from] NvmlError),
    #[error("NVML lists no GPUs on this node")]
    NoGpus,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot serve on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
}

/// Runs the driver until `shutdown` turns true.
pub async fn run(
    cfg: DriverConfig,
    source: Arc<dyn DeviceSource>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let (store, recovered) = ClaimStore::open(StorePaths::from(cfg.as_ref()))?;
    for t in &recovered.active {
        tracing::info!(tenant = %t, repaired = recovered.repaired.contains(t), "prepared claim");
    }
    let store = Arc::new(store);
    let client = publisher::client(cfg.kubeconfig.as_deref()).await?;

    let first = probe(&source).await;
    if first.clone()?.is_empty() {
        return Err(RunError::NoGpus);
    }
    let mut gpus = Gpus::default();
    gpus.merge(&first);
    for g in gpus.published() {
        tracing::info!(index = g.index, uuid = %g.uuid, name = %g.name, total = g.total_memory, "GPU");
    }
    let (gpus_tx, gpus_rx) = watch::channel(gpus);
    let registered = Arc::new(watch::channel(0u64).0);

    let health = tokio::spawn(health_loop(cfg.clone(), source, gpus_tx));
    let publisher = tokio::spawn(publish_loop(
        cfg.clone(),
        client.clone(),
        store.clone(),
        gpus_rx.clone(),
        registered.subscribe(),
    ));
    let driver = Driver::new(cfg.clone(), store, gpus_rx, client);
    let result = serve_loop(&cfg, &driver, &registered, &mut shutdown).await;
    health.abort();
    publisher.abort();
    result
}

async fn health_loop(
    cfg: Arc<DriverConfig>,
    source: Arc<dyn DeviceSource>,
    tx: watch::Sender<Gpus>,
) {
    loop {
        tokio::time::sleep(cfg.health_interval).await;
        let result = probe(&source).await;
        if let Err(e) = &result {
            tracing::warn!("NVML probe failed, no GPU is published until it works: {e}");
        }
        tx.send_if_modified(|g| {
            let before = g.healthy.clone();
            g.merge(&result);
            if g.healthy != before {
                tracing::warn!(published = ?g.healthy, was = ?before, "GPUs changed");
            }
            g.healthy != before
        });
    }
}

async fn publish_loop(
    cfg: Arc<DriverConfig>,
    client: kube::Client,
    store: Arc<ClaimStore>,
    mut gpus: watch::Receiver<Gpus>,
    mut registered: watch::Receiver<u64>,
) {
    let policy = Policy {
        shares_per_gpu: cfg.shares_per_gpu,
        memory_granularity: cfg.memory_granularity,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let devices = slices::devices(&gpus.borrow_and_update(), &policy);
        registered.borrow_and_update();
        let wait =
            match publisher::reconcile(&client, &cfg.driver_name, &cfg.node_name, &devices).await {
                Ok(r) => {
                    backoff = Duration::from_millis(200);
                    match r {
                        Reconciled::Unchanged { .. } => {
                            tracing::debug!(?r, "ResourceSlice up to date");
                        }
                        _ => tracing::info!(?r, devices = devices.len(), "ResourceSlice published"),
                    }
                    cfg.resync_interval
                }
                Err(e) => {
                    tracing::warn!(
                        "publishing the ResourceSlice failed (retrying in {backoff:?}): {e}"
                    );
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    wait
                }
            };
        match store.sweep() {
            Ok(gone) => {
                for t in gone {
                    tracing::debug!(tenant = %t, "released tenant gone");
                }
            }
            Err(e) => tracing::error!("forgetting released claims: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = gpus.changed() => if r.is_err() { return },
            r = registered.changed() => if r.is_err() { return },
        }
    }
}

struct Served {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    sockets: Vec<(std::path::PathBuf, Option<FileId>)>,
}

impl Served {
    async fn stop(self) {
        // Fails only when every server already stopped (their receivers dropped).
        self.stop.send(true).ok();
        for mut task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a server did not stop within 5 s; aborting it");
                task.abort();
            }
        }
    }

    /// Why serving must start over, if it must.
    fn broken(&self) -> Option<String> {
        if self.tasks.iter().any(|t| t.is_finished()) {
            return Some("a server stopped".into());
        }
        self.sockets
            .iter()
            .find(|(p, id)| identity(p) != *id)
            .map(|(p, _)| format!("{} was removed or replaced", p.display()))
    }
}

fn listen(path: &Path) -> Result<UnixListener, RunError> {
    let err = |source| RunError::Listen {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

fn start_serving(
    cfg: &DriverConfig,
    driver: &Driver,
    registered: &Arc<watch::Sender<u64>>,
) -> Result<Served, RunError> {
    let (stop, stop_rx) = watch::channel(false);
    let dra = cfg.dra_socket();
    let dra_task = tokio::spawn(gpumux_k8s::kubelet::serve(
        listen(&dra)?,
        DraServices::new(driver.clone()),
        stop_rx.clone(),
    ));
    // Registration last: the kubelet calls the DRA service as soon as it accepts the driver.
    let reg = cfg.registration_socket();
    let reg_task = tokio::spawn(gpumux_k8s::kubelet::serve(
        listen(&reg)?,
        RegistrationServer::new(Registrar::new(cfg, registered.clone())),
        stop_rx,
    ));
    tracing::info!(dra = %dra.display(), registration = %reg.display(), "serving");
    Ok(Served {
        stop,
        tasks: vec![dra_task, reg_task],
        sockets: vec![(dra.clone(), identity(&dra)), (reg.clone(), identity(&reg))],
    })
}

async fn serve_loop(
    cfg: &DriverConfig,
    driver: &Driver,
    registered: &Arc<watch::Sender<u64>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), RunError> {
    let tick = cfg.watch_interval.max(Duration::from_millis(10));
    loop {
        // The kubelet creates its registration directory; wait for it rather than invent it.
        while !cfg.registry_dir.is_dir() {
            tracing::info!(dir = %cfg.registry_dir.display(), "waiting for the kubelet's plugin registration directory");
            if sleep_or_shutdown(Duration::from_secs(1).max(tick), shutdown).await {
                return Ok(());
            }
        }
        let served = start_serving(cfg, driver, registered)?;
        let why = loop {
            if sleep_or_shutdown(tick, shutdown).await {
                break None;
            }
            if let Some(why) = served.broken() {
                break Some(why);
            }
        };
        let paths: Vec<_> = served.sockets.iter().map(|(p, _)| p.clone()).collect();
        served.stop().await;
        match why {
            None => {
                // Registration socket first: the kubelet stops calling a driver it cannot find.
                for p in paths.iter().rev() {
                    match std::fs::remove_file(p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(path = %p.display(), "cannot remove a socket: {e}");
                        }
                    }
                }
                tracing::info!("stopped");
                return Ok(());
            }
            Some(why) => tracing::warn!("{why}; serving and registering again"),
        }
    }
}
