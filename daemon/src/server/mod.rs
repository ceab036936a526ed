//! The daemon's event loop: tenant sockets (registration, process lifetimes), quota-file
//! watching, the operator's control socket, signals. One thread, one epoll; the daemon sleeps
//! when nothing happens.
//!
//! A process's registration lives exactly as long as its connection: when the process exits,
//! is killed, or execs (the socket is close-on-exec), the kernel closes the connection, epoll
//! reports it, and the daemon returns everything the process held to its tenant.
//!
//! This module owns the loop and the daemon's state; the handlers live beside it:
//! [`tenants`] (quota files → tenants, restart recovery), [`registration`] (tenant
//! connections, process lifetimes, reclaim), [`slicing`] (glue between the per-device
//! schedulers and the tenants' segments and processes), [`footprint`] (processes' memory beyond
//! their allocations, unmanaged processes).

use crate::devices::Device;
use crate::procfs;
use crate::scheduler::{Action, Activity, Scheduler};
use crate::segments::TenantSegments;
use crate::status::{ControlRequest, DeviceStatus, StatusReport, TenantDeviceStatus, TenantStatus};
use anyhow::{Context, Result};
use gpumux_common::accounting;
use gpumux_common::config::{ConfigError, DaemonConfig, TenantQuota};
use gpumux_common::futex;
use gpumux_common::names::{control_socket, tenant_dir, tenant_of_quota_file, tenant_socket};
use gpumux_common::protocol::{ClientMsg, MAX_MESSAGE, PROTOCOL_VERSION, ServerMsg};
use gpumux_common::shm::{MAX_PROCESSES, SLICE_GRANTED};
use gpumux_common::sock;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, listen, socket,
};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

mod footprint;
mod registration;
mod slicing;
mod tenants;

/// How long the daemon waits for a tenant's accounting lock before retrying later.
const RECLAIM_LOCK_TIMEOUT: Duration = Duration::from_millis(100);
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

// epoll token kinds (high byte) — the low bits carry an id.
const K_SIGNAL: u64 = 1 << 56;
const K_CONTROL: u64 = 2 << 56;
const K_LISTENER: u64 = 3 << 56;
const K_CONN: u64 = 4 << 56;
const K_INOTIFY: u64 = 5 << 56;
const K_RETRY: u64 = 6 << 56;
const K_SCHED: u64 = 7 << 56;
const K_PIDFD: u64 = 8 << 56;
const K_FOOTPRINT: u64 = 9 << 56;
const K_MEASURED: u64 = 10 << 56;
const KIND_MASK: u64 = 0xff << 56;

/// A tenant the daemon serves.
struct Tenant {
    quota: TenantQuota,
    segments: TenantSegments,
    listener: OwnedFd,
    listener_id: u64,
    /// slot → pid of registered processes.
    processes: BTreeMap<usize, u32>,
    /// The quota file is gone: no new processes, no new allocations; the tenant lingers
    /// until its last process ends.
    removed: bool,
    /// Slots of processes that did not acknowledge a revocation in time (stopped, stuck):
    /// not waited for again, and not counted as wanting the device, until they speak again.
    stalled: BTreeSet<usize>,
    /// After a daemon restart: slots of live processes registered with the previous daemon,
    /// awaiting their reattachment (slot → their pid, validated with its start time, and the
    /// pidfd watch id).
    orphans: BTreeMap<usize, (u32, u64)>,
}

/// A process connected to a tenant socket.
struct Conn {
    fd: OwnedFd,
    tenant: String,
    slot: Option<usize>,
    pid: u32,
}

/// Time-slicing of one device: the policy plus the acknowledgements a revocation waits for.
struct DeviceSched {
    sched: Scheduler,
    /// The slice being drained and the acknowledgements it waits for.
    draining: Option<Drain>,
}

/// A revocation in progress on one device.
struct Drain {
    tenant: String,
    epoch: u32,
    /// Connections that have not acknowledged it yet.
    pending: HashSet<u64>,
    /// Device time the acknowledging processes measured, summed; None once one could not say.
    busy_ns: Option<u64>,
}

/// The daemon.
pub struct Daemon {
    cfg: DaemonConfig,
    devices: Vec<Device>,
    generation: u64,
    started: Instant,
    epoll: Epoll,
    signals: SignalFd,
    inotify: Inotify,
    retry_timer: TimerFd,
    control: UnixListener,
    tenants: BTreeMap<String, Tenant>,
    listeners: HashMap<u64, String>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// Slots whose reclaim timed out on a held lock: retried by the timer.
    pending_reclaims: Vec<(String, usize)>,
    /// Rejected quota files, by path.
    config_errors: BTreeMap<PathBuf, ConfigError>,
    /// One scheduler per device (same order as `devices`).
    scheds: Vec<DeviceSched>,
    sched_timer: TimerFd,
    /// Exit watches on orphaned processes (id → tenant, slot, pidfd).
    pidfds: HashMap<u64, (String, usize, OwnedFd)>,
    /// Where the metrics thread listens (reported in status).
    pub metrics_address: Option<String>,
    /// Footprint measurement (overhead beyond allocations, unmanaged processes).
    fp: footprint::Footprints,
}

fn seqpacket_listener(path: &Path) -> Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("creating a tenant socket")?;
    let addr = UnixAddr::new(path).with_context(|| format!("socket path {}", path.display()))?;
    bind(fd.as_raw_fd(), &addr).with_context(|| format!("binding {}", path.display()))?;
    // Containers may run as any uid: access is controlled by which directory is mounted.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN)).context("listen")?;
    Ok(fd)
}

/// A monotonic timerfd registered in `epoll` under `token`.
fn watched_timer(epoll: &Epoll, token: u64) -> Result<TimerFd> {
    let t = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
    )?;
    epoll.add(t.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
    Ok(t)
}

impl Daemon {
    /// Sets up sockets and watches; serves no one until [`Daemon::run`].
    pub fn new(cfg: DaemonConfig, devices: Vec<Device>) -> Result<Self> {
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        std::fs::create_dir_all(cfg.state_dir.join("tenants"))
            .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
        let segments_dir = cfg.state_dir.join("segments");
        std::fs::create_dir_all(&segments_dir)
            .with_context(|| format!("creating {}", segments_dir.display()))?;
        // Accounting files are the daemon's own: never readable by tenants.
        std::fs::set_permissions(&segments_dir, std::fs::Permissions::from_mode(0o700))?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;

        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block().context("blocking signals")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        epoll.add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, K_SIGNAL))?;

        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        std::fs::create_dir_all(&cfg.tenants_dir)
            .with_context(|| format!("creating {}", cfg.tenants_dir.display()))?;
        inotify
            .add_watch(
                &cfg.tenants_dir,
                AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_CREATE,
            )
            .with_context(|| format!("watching {}", cfg.tenants_dir.display()))?;
        epoll.add(
            inotify.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, K_INOTIFY),
        )?;

        let retry_timer = watched_timer(&epoll, K_RETRY)?;
        let sched_timer = watched_timer(&epoll, K_SCHED)?;
        let fp = footprint::Footprints::new(&epoll, devices.len())?;
        let quantum = Duration::from_millis(cfg.quantum_ms as u64);
        let scheds = devices
            .iter()
            .map(|_| DeviceSched {
                sched: Scheduler::new(quantum),
                draining: None,
            })
            .collect();

        let control_path = control_socket(&cfg.state_dir);
        let _ = std::fs::remove_file(&control_path);
        let control = UnixListener::bind(&control_path)
            .with_context(|| format!("binding {}", control_path.display()))?;
        std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o600))?;
        control.set_nonblocking(true)?;
        epoll.add(&control, EpollEvent::new(EpollFlags::EPOLLIN, K_CONTROL))?;

        let mut d = Daemon {
            cfg,
            devices,
            generation,
            started: Instant::now(),
            epoll,
            signals,
            inotify,
            retry_timer,
            control,
            tenants: BTreeMap::new(),
            listeners: HashMap::new(),
            conns: HashMap::new(),
            next_id: 1,
            pending_reclaims: Vec::new(),
            config_errors: BTreeMap::new(),
            scheds,
            sched_timer,
            pidfds: HashMap::new(),
            metrics_address: None,
            fp,
        };
        d.reload_tenants();
        d.remove_stale_segments();
        Ok(d)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Serves until SIGTERM/SIGINT.
    pub fn run(&mut self) -> Result<()> {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("epoll_wait"),
            };
            for ev in &events[..n] {
                let token = ev.data();
                let id = token & !KIND_MASK;
                match token & KIND_MASK {
                    K_SIGNAL => {
                        if self.handle_signals()? {
                            tracing::info!("shutting down");
                            return Ok(());
                        }
                    }
                    K_CONTROL => self.accept_control(),
                    K_LISTENER => self.accept_tenant(id),
                    K_CONN => self.handle_conn(id, ev.events()),
                    K_INOTIFY => {
                        let _ = self.inotify.read_events();
                        self.reload_tenants();
                    }
                    K_RETRY => {
                        let _ = self.retry_timer.wait();
                        self.retry_reclaims();
                    }
                    K_PIDFD => {
                        if let Some((tenant, slot, pidfd)) = self.pidfds.remove(&id) {
                            let _ = self.epoll.delete(&pidfd);
                            if let Some(t) = self.tenants.get_mut(&tenant) {
                                t.orphans.remove(&slot);
                            }
                            tracing::info!(
                                tenant,
                                slot,
                                "orphaned process exited; returning its memory"
                            );
                            self.reclaim(&tenant, slot, 0);
                        }
                    }
                    K_SCHED => {
                        let _ = self.sched_timer.wait();
                        for dev in 0..self.scheds.len() {
                            self.sched_event(dev, |s, now, act| s.tick(now, act));
                        }
                    }
                    K_FOOTPRINT => {
                        let _ = self.fp.timer.wait();
                    }
                    K_MEASURED => self.readings_in(),
                    _ => tracing::warn!(token, "unknown epoll token"),
                }
            }
            self.measure_due();
            self.rearm_footprint_timer();
            self.rearm_sched_timer();
        }
    }

    fn handle_signals(&mut self) -> Result<bool> {
        while let Some(info) = self.signals.read_signal()? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => {
                    tracing::info!("SIGHUP: rescanning tenants");
                    self.reload_tenants();
                }
                Ok(_) => return Ok(true),
                Err(_) => {}
            }
        }
        Ok(false)
    }

    fn accept_control(&mut self) {
        while let Ok((stream, _)) = self.control.accept() {
            if let Err(e) = self.serve_control(stream) {
                tracing::debug!("control request failed: {e:#}");
            }
        }
    }

    fn serve_control(&mut self, mut stream: UnixStream) -> Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.set_write_timeout(Some(Duration::from_millis(500)))?;
        let mut line = Vec::new();
        let mut buf = [0u8; 512];
        while !line.contains(&b'\n') && line.len() < 4096 {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            line.extend_from_slice(&buf[..n]);
        }
        let reply = match serde_json::from_slice::<ControlRequest>(line.trim_ascii()) {
            // From fresh footprint readings (taken by the measuring thread, not here).
            Ok(ControlRequest::Status) => {
                self.status_when_fresh(stream);
                return Ok(());
            }
            Err(e) => {
                serde_json::to_vec(&serde_json::json!({ "error": format!("bad request: {e}") }))?
            }
        };
        stream.write_all(&reply)?;
        stream.write_all(b"\n")?;
        Ok(())
    }

    /// Writes the status report to a control connection.
    fn answer_status(&self, mut stream: UnixStream) {
        let result = serde_json::to_vec(&self.status())
            .map_err(std::io::Error::from)
            .and_then(|reply| {
                stream.write_all(&reply)?;
                stream.write_all(b"\n")
            });
        if let Err(e) = result {
            tracing::debug!("control request failed: {e:#}");
        }
    }

    /// The report `gpumuxctl status` prints.
    pub fn status(&self) -> StatusReport {
        let now = Instant::now();
        let tenants = self
            .tenants
            .values()
            .map(|t| {
                let c = &t.segments.control;
                let a = &t.segments.accounting;
                let devices = self
                    .devices
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| c.devices[*i].allowed.load(Relaxed) != 0)
                    .map(|(i, d)| TenantDeviceStatus {
                        index: d.index,
                        memory_used: a.devices[i].used.load(Relaxed),
                        memory_overhead: a.devices[i].overhead.load(Relaxed),
                        memory_limit: c.devices[i].memory_limit.load(Relaxed),
                        memory_peak: a.devices[i].peak.load(Relaxed),
                        allocations_refused: a.devices[i].refused.load(Relaxed),
                        launches: a
                            .processes
                            .iter()
                            .map(|p| p.launches[i].load(Relaxed))
                            .sum(),
                        device_time_share: self.scheds[i]
                            .sched
                            .recent_shares(now)
                            .get(&t.quota.name)
                            .copied(),
                        device_time_ns: self.scheds[i].sched.charged_ns(&t.quota.name),
                        slice_wait_ns: a.devices[i].wait_ns.load(Relaxed),
                    })
                    .collect();
                TenantStatus {
                    name: t.quota.name.clone(),
                    weight: t.quota.weight,
                    compute_limit_percent: t.quota.compute_limit_permille.map(|p| p as f64 / 10.0),
                    processes: t
                        .processes
                        .values()
                        .copied()
                        .chain(t.orphans.values().map(|&(pid, _)| pid))
                        .collect(),
                    socket: tenant_socket(&self.cfg.state_dir, &t.quota.name)
                        .display()
                        .to_string(),
                    devices,
                    priority: t.quota.priority,
                    owner: t.quota.owner.clone(),
                }
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            generation: self.generation,
            uptime_s: self.started.elapsed().as_secs_f64(),
            quantum_ms: self.cfg.quantum_ms,
            metrics_address: self.metrics_address.clone(),
            devices: self
                .devices
                .iter()
                .map(|d| DeviceStatus {
                    index: d.index,
                    uuid: d.uuid.clone(),
                    name: d.name.clone(),
                    total_bytes: d.total_bytes,
                })
                .collect(),
            tenants,
            config_errors: self.config_errors.values().map(|e| e.to_string()).collect(),
            unmanaged: self.fp.unmanaged.clone(),
        }
    }
}
