//! The plugin's life: learn the GPUs, then serve, register and watch until told to stop.
//!
//! Three tasks run side by side:
//! - **health**: asks NVML every `--health-interval` and publishes the inventory (a
//!   `watch` channel) that `ListAndWatch` streams follow;
//! - **collector**: every `--gc-interval`, asks the pod resources API which containers hold
//!   shares, writes each tenant's pod into its quota file ([`TenantStore::identify`]) and
//!   releases the tenants none of whose shares is held ([`TenantStore::collect`]); when the
//!   kubelet cannot be asked, nothing is removed;
//! - **registration**: serves the plugin socket, registers with the kubelet, then watches
//!   both sockets (inotify on the kubelet's directory, and polling every `--watch-interval`).
//!   A restarting kubelet removes the plugin's socket and recreates its own; either change
//!   makes the plugin serve a fresh socket and register again.
//!
//! Tenants live in files (quota files and the plugin's state file), so neither a kubelet
//! restart nor a plugin restart loses or duplicates one.

use crate::api::v1beta1::device_plugin_server::DevicePluginServer;
use crate::config::PluginConfig;
use crate::kubelet;
use crate::plugin::{SharePlugin, unix_now};
use crate::shares::Inventory;
use crate::tenants::{StorePaths, TenantError, TenantStore};
use gpumux_common::config::TenantOwner;
use gpumux_common::nvml::{DeviceSource, NvmlError};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the plugin cannot run.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot list GPUs: {0}")]
    Nvml(#[from] NvmlError),
    #[error("NVML lists no GPUs on this node")]
    NoGpus,
    #[error(transparent)]
    Tenants(#[from] TenantError),
    #[error("cannot serve on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
}

/// Runs the plugin until `shutdown` turns true. Tenants are kept on shutdown (they belong to
/// containers that keep running); only the plugin's socket is removed.
pub async fn run(
    cfg: PluginConfig,
    source: Arc<dyn DeviceSource>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let store = Arc::new(TenantStore::open(
        StorePaths {
            plugin_state_dir: cfg.state_dir.clone(),
            tenants_dir: cfg.tenants_dir.clone(),
            gpumux_state_dir: cfg.gpumux_state_dir.clone(),
        },
        &cfg.resource_name,
    )?);
    for (name, rec) in store.records() {
        tracing::info!(tenant = %name, devices = ?rec.device_ids, released = rec.released_unix.is_some(), "known tenant");
    }

    let first = probe(&source).await;
    let gpus = first.clone()?;
    if gpus.is_empty() {
        return Err(RunError::NoGpus);
    }
    let mut inventory = Inventory::default();
    inventory.merge(&first);
    for g in inventory.ordered() {
        tracing::info!(index = g.index, uuid = %g.uuid, total = g.total_memory, healthy = g.healthy, shares = cfg.shares_per_gpu, "GPU");
    }
    let (inv_tx, inv_rx) = watch::channel(inventory);

    let health = tokio::spawn(health_loop(cfg.clone(), source, inv_tx));
    let collector = tokio::spawn(collect_loop(cfg.clone(), store.clone()));
    let result = registration_loop(&cfg, &store, &inv_rx, &mut shutdown).await;
    health.abort();
    collector.abort();
    result
}

/// Asks `source` for the GPUs on a blocking thread (NVML calls may take a while).
pub async fn probe(
    source: &Arc<dyn DeviceSource>,
) -> Result<Vec<gpumux_common::nvml::GpuInfo>, NvmlError> {
    let s = source.clone();
    match tokio::task::spawn_blocking(move || s.probe()).await {
        Ok(r) => r,
        Err(e) => Err(NvmlError::Load(format!("probe task failed: {e}"))),
    }
}

async fn health_loop(
    cfg: Arc<PluginConfig>,
    source: Arc<dyn DeviceSource>,
    tx: watch::Sender<Inventory>,
) {
    loop {
        tokio::time::sleep(cfg.health_interval).await;
        let result = probe(&source).await;
        if let Err(e) = &result {
            tracing::warn!("NVML probe failed, every GPU is unhealthy until it works: {e}");
        }
        tx.send_if_modified(|inv| {
            let before = inv.clone();
            inv.merge(&result);
            for (uuid, g) in &inv.gpus {
                let was = before.gpus.get(uuid).map(|b| b.healthy);
                if was != Some(g.healthy) {
                    tracing::warn!(uuid = %uuid, index = g.index, healthy = g.healthy, "GPU health changed");
                }
            }
            *inv != before
        });
    }
}

async fn collect_loop(cfg: Arc<PluginConfig>, store: Arc<TenantStore>) {
    let mut tick = tokio::time::interval(cfg.gc_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let holders = match kubelet::holders(&cfg.pod_resources_socket, &cfg.resource_name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("not collecting released tenants: pod resources unavailable: {e}");
                continue;
            }
        };
        // Owners without a name (the kubelet said something odd) are not written.
        let named: HashMap<String, TenantOwner> = holders
            .iter()
            .filter(|(_, o)| !o.is_empty())
            .map(|(id, o)| (id.clone(), o.clone()))
            .collect();
        match store.identify(&named) {
            Ok(changed) => {
                for t in changed {
                    let owner = store.records().get(&t).and_then(|r| r.owner.clone());
                    tracing::info!(tenant = %t, owner = %owner.map(|o| o.display()).unwrap_or_default(), "tenant's pod identified");
                }
            }
            Err(e) => tracing::error!("recording which pods hold the tenants: {e}"),
        }
        let held: HashSet<String> = holders.into_keys().collect();
        match store.collect(&held, unix_now(), cfg.gc_grace.as_secs()) {
            Ok(c) => {
                for t in &c.released {
                    tracing::info!(tenant = %t, "shares released: quota file removed");
                }
                for t in &c.forgotten {
                    tracing::debug!(tenant = %t, "tenant gone");
                }
            }
            Err(e) => tracing::error!("collecting released tenants: {e}"),
        }
    }
}

/// Identity of a file: device, inode and change time, to notice it being replaced (a new file
/// may reuse the inode number of a removed one).
pub type FileId = (u64, u64, i64, i64);

/// The [`FileId`] of `path` (not following a symlink), `None` if it does not exist.
pub fn identity(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Why a registration ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Shutdown,
    Restart(&'static str),
}

struct Serving {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    identity: Option<FileId>,
}

impl Serving {
    async fn stop(self) {
        self.stop.send(true).ok();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            tracing::warn!("plugin server did not stop within 5 s; aborting it");
            task.abort();
        }
    }
}

fn start_serving(
    cfg: &Arc<PluginConfig>,
    store: &Arc<TenantStore>,
    inventory: &watch::Receiver<Inventory>,
) -> Result<Serving, RunError> {
    let path = cfg.plugin_socket();
    let listen_err = |source| RunError::Listen {
        path: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = UnixListener::bind(&path).map_err(listen_err)?;
    let (stop, stop_rx) = watch::channel(false);
    let service = SharePlugin::new(
        cfg.clone(),
        store.clone(),
        inventory.clone(),
        stop_rx.clone(),
    );
    let task = tokio::spawn(kubelet::serve(
        listener,
        DevicePluginServer::new(service),
        stop_rx,
    ));
    tracing::info!(socket = %path.display(), "serving");
    Ok(Serving {
        stop,
        task,
        identity: identity(&path),
    })
}

async fn registration_loop(
    cfg: &Arc<PluginConfig>,
    store: &Arc<TenantStore>,
    inventory: &watch::Receiver<Inventory>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), RunError> {
    let tick = cfg.watch_interval.max(Duration::from_millis(10));
    loop {
        // The kubelet creates its directory; wait for it rather than invent it.
        while !cfg.kubelet_dir.is_dir() {
            tracing::info!(dir = %cfg.kubelet_dir.display(), "waiting for the kubelet's device plugin directory");
            if sleep_or_shutdown(Duration::from_secs(1).max(tick), shutdown).await {
                return Ok(());
            }
        }
        let serving = start_serving(cfg, store, inventory)?;
        let ended = register_and_watch(cfg, &serving, tick, shutdown).await;
        serving.stop().await;
        match ended {
            Ended::Shutdown => {
                std::fs::remove_file(cfg.plugin_socket()).ok();
                tracing::info!("stopped");
                return Ok(());
            }
            Ended::Restart(why) => tracing::warn!("{why}; serving and registering again"),
        }
    }
}

/// Changes in the kubelet's directory, by inotify: catches a recreated `kubelet.sock` even when
/// the new file reuses the old one's inode number and change time. Without inotify (e.g. the
/// watch limit is reached) the identity polling alone remains.
struct DirWatch {
    inotify: Option<Inotify>,
}

impl DirWatch {
    fn new(dir: &Path) -> DirWatch {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| {
                i.add_watch(
                    dir,
                    AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_DELETE
                        | AddWatchFlags::IN_MOVED_FROM
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF,
                )?;
                Ok(i)
            })
            .map_err(
                |e| tracing::warn!(dir = %dir.display(), "no inotify watch ({e}); polling only"),
            )
            .ok();
        DirWatch { inotify }
    }

    /// Names created or removed since the last call (`None` for the directory itself).
    fn changes(&self) -> Vec<Option<std::ffi::OsString>> {
        let Some(i) = &self.inotify else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Ok(events) = i.read_events() {
            if events.is_empty() {
                break;
            }
            out.extend(events.into_iter().map(|e| {
                if e.mask
                    .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                {
                    None
                } else {
                    e.name
                }
            }));
        }
        out
    }
}

async fn register_and_watch(
    cfg: &PluginConfig,
    serving: &Serving,
    tick: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let socket = cfg.plugin_socket();
    let kubelet_socket = cfg.kubelet_socket();
    let dir_watch = DirWatch::new(&cfg.kubelet_dir);
    let mut backoff = Duration::from_millis(100);
    let kubelet_identity = loop {
        if identity(&socket) != serving.identity {
            return Ended::Restart("plugin socket removed before registration");
        }
        let id = identity(&kubelet_socket);
        if id.is_some() {
            // Whatever happened so far is the kubelet we are about to register with.
            dir_watch.changes();
            match kubelet::register(cfg).await {
                Ok(()) => {
                    tracing::info!(resource = %cfg.resource_name, endpoint = %cfg.endpoint, "registered with the kubelet");
                    break id;
                }
                Err(e) => tracing::warn!("registration failed (retrying in {backoff:?}): {e}"),
            }
        } else {
            tracing::info!(socket = %kubelet_socket.display(), "waiting for the kubelet");
        }
        if sleep_or_shutdown(backoff, shutdown).await {
            return Ended::Shutdown;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    loop {
        if sleep_or_shutdown(tick, shutdown).await {
            return Ended::Shutdown;
        }
        if serving.task.is_finished() {
            return Ended::Restart("plugin server stopped");
        }
        if identity(&socket) != serving.identity {
            return Ended::Restart("plugin socket removed (kubelet restart)");
        }
        if identity(&kubelet_socket) != kubelet_identity {
            return Ended::Restart("kubelet socket recreated (kubelet restart)");
        }
        for change in dir_watch.changes() {
            match change {
                None => return Ended::Restart("kubelet directory replaced"),
                Some(name) if name == crate::api::v1beta1::KUBELET_SOCKET => {
                    return Ended::Restart("kubelet socket recreated (kubelet restart)");
                }
                Some(name) if name.as_os_str() == cfg.endpoint.as_str() => {
                    return Ended::Restart("plugin socket removed (kubelet restart)");
                }
                Some(_) => {}
            }
        }
    }
}

/// Sleeps `d`; true when shutdown was asked for instead.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = shutdown.wait_for(|s| *s) => { r.ok(); true }
    }
}
