//! The daemon's event loop: tenant sockets (registration, process lifetimes), quota-file
//! watching, the operator's control socket, signals. One thread, one epoll; the daemon sleeps
//! when nothing happens.
//!
//! A process's registration lives exactly as long as its connection: when the process exits,
//! is killed, or execs (the socket is close-on-exec), the kernel closes the connection, epoll
//! reports it, and the daemon returns everything the process held to its tenant.

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
    /// awaiting their reattachment (slot → pidfd watch id).
    orphans: BTreeMap<usize, u64>,
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
    /// The slice being drained and the connections that have not acknowledged it yet.
    draining: Option<(String, u32, HashSet<u64>)>,
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
                    _ => tracing::warn!(token, "unknown epoll token"),
                }
            }
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

    /// Brings tenants in line with the quota files: adds, changes, removes. A malformed file
    /// is reported and its tenant keeps the last good quota.
    pub fn reload_tenants(&mut self) {
        let mut seen: BTreeMap<String, TenantQuota> = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.cfg.tenants_dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.cfg.tenants_dir.display(), "cannot read tenants dir: {e}");
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !name.ends_with(".toml") || name.starts_with('.') {
                continue;
            }
            match TenantQuota::load(&path) {
                Ok(q) => {
                    seen.insert(q.name.clone(), q);
                }
                Err(e) => {
                    if self.config_errors.get(&path) != Some(&e) {
                        tracing::error!(
                            "rejected quota file {e}; the tenant keeps its last good quota"
                        );
                    }
                    // A rejected file of an existing tenant keeps that tenant as it is.
                    if let Some(t) = tenant_of_quota_file(&path).and_then(|n| self.tenants.get(&n))
                    {
                        seen.insert(t.quota.name.clone(), t.quota.clone());
                    }
                    errors.insert(path, e);
                }
            }
        }
        self.config_errors = errors;

        let gone: Vec<String> = self
            .tenants
            .iter()
            .filter(|(n, t)| !t.removed && !seen.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.remove_tenant(&name);
        }
        for (name, quota) in seen {
            match self.tenants.get_mut(&name) {
                Some(t) if t.removed => {
                    tracing::info!(tenant = %name, "tenant file is back");
                    t.segments.apply_quota(&self.devices, &quota);
                    t.quota = quota;
                    match seqpacket_listener(&tenant_socket(&self.cfg.state_dir, &name)) {
                        Ok(listener) => {
                            t.listener = listener;
                            t.removed = false;
                            let _ = self.epoll.add(
                                &t.listener,
                                EpollEvent::new(EpollFlags::EPOLLIN, K_LISTENER | t.listener_id),
                            );
                            self.listeners.insert(t.listener_id, name.clone());
                        }
                        Err(e) => {
                            tracing::error!(tenant = %name, "cannot recreate the tenant socket: {e:#}")
                        }
                    }
                }
                Some(t) if t.quota == quota => {}
                Some(t) => {
                    tracing::info!(tenant = %name, limit = quota.memory_limit, weight = quota.weight, "quota changed");
                    t.segments.apply_quota(&self.devices, &quota);
                    t.quota = quota;
                }
                None => {
                    if let Err(e) = self.add_tenant(quota) {
                        tracing::error!(tenant = %name, "cannot set up tenant: {e:#}");
                    }
                }
            }
        }
        self.update_scheduling();
    }

    /// Brings every device's scheduler in line with the tenants: who may use the device, with
    /// which weight and cap; a device is time-sliced when two or more tenants share it or a
    /// tenant on it is capped.
    fn update_scheduling(&mut self) {
        let now = Instant::now();
        for dev in 0..self.devices.len() {
            let d = &self.devices[dev];
            let users: Vec<&Tenant> = self
                .tenants
                .values()
                .filter(|t| !t.removed && t.quota.allows(d.index, &d.uuid))
                .collect();
            let scheduled = users.len() >= 2
                || users
                    .iter()
                    .any(|t| t.quota.compute_limit_permille.is_some_and(|c| c < 1000));
            for t in self.tenants.values() {
                let on = scheduled && users.iter().any(|u| u.quota.name == t.quota.name);
                t.segments.control.devices[dev]
                    .scheduled
                    .store(on as u32, SeqCst);
            }
            let names: Vec<(String, u32, Option<u32>)> = users
                .iter()
                .map(|t| {
                    (
                        t.quota.name.clone(),
                        t.quota.weight,
                        t.quota.compute_limit_permille,
                    )
                })
                .collect();
            let mut actions = Vec::new();
            let tenants = &self.tenants;
            let act = |n: &str| Self::activity(tenants, dev, n);
            let s = &mut self.scheds[dev].sched;
            let gone: Vec<String> = s
                .recent_shares(now)
                .into_keys()
                .filter(|n| !names.iter().any(|(m, _, _)| m == n))
                .collect();
            for n in gone {
                actions.extend(s.remove_tenant(&n, now, &act));
            }
            for (n, w, c) in names {
                s.set_tenant(&n, w, c, now);
            }
            self.apply_actions(dev, actions);
        }
    }

    /// What the scheduler may observe of a tenant on device `dev`.
    fn activity(tenants: &BTreeMap<String, Tenant>, dev: usize, name: &str) -> Activity {
        let Some(t) = tenants.get(name) else {
            return Activity::default();
        };
        let a = &t.segments.accounting;
        let responsive = t.processes.keys().any(|s| !t.stalled.contains(s));
        Activity {
            waiting: if responsive {
                a.devices[dev].waiting.load(SeqCst)
            } else {
                0
            },
            launches: t
                .processes
                .keys()
                .map(|&s| a.processes[s].launches[dev].load(Relaxed))
                .fold(0u64, u64::wrapping_add),
            syncing: if responsive {
                a.devices[dev].syncing.load(SeqCst)
            } else {
                0
            },
        }
    }

    /// Runs one scheduler operation on device `dev` and carries out its actions.
    fn sched_event(
        &mut self,
        dev: usize,
        op: impl FnOnce(&mut Scheduler, Instant, &dyn Fn(&str) -> Activity) -> Vec<Action>,
    ) {
        let now = Instant::now();
        let tenants = &self.tenants;
        let act = |n: &str| Self::activity(tenants, dev, n);
        let actions = op(&mut self.scheds[dev].sched, now, &act);
        self.apply_actions(dev, actions);
    }

    fn apply_actions(&mut self, dev: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Grant { tenant, epoch } => {
                    if let Some(t) = self.tenants.get(&tenant) {
                        let word = &t.segments.control.devices[dev].slice;
                        word.store((epoch << 1) | SLICE_GRANTED, SeqCst);
                        futex::wake(word, u32::MAX);
                        tracing::trace!(tenant, dev, epoch, "slice granted");
                    }
                    // A grant while a drain is pending means the drain timed out.
                    if let Some((late_tenant, _, pending)) = self.scheds[dev].draining.take() {
                        for id in pending {
                            if let Some(slot) = self.conns.get(&id).and_then(|c| c.slot) {
                                let pid = self.conns[&id].pid;
                                tracing::warn!(tenant = %late_tenant, pid, dev, "process did not drain in time (stopped or stuck); passing it over");
                                if let Some(t) = self.tenants.get_mut(&late_tenant) {
                                    t.stalled.insert(slot);
                                }
                            }
                        }
                    }
                }
                Action::Revoke { tenant, epoch } => {
                    let mut pending = HashSet::new();
                    if let Some(t) = self.tenants.get(&tenant) {
                        t.segments.control.devices[dev]
                            .slice
                            .store(epoch << 1, SeqCst);
                        let msg = ServerMsg::Revoke {
                            device: dev as u32,
                            epoch,
                        }
                        .encode();
                        for (id, c) in &self.conns {
                            let responsive = c.slot.is_some_and(|s| !t.stalled.contains(&s));
                            if c.tenant == tenant
                                && responsive
                                && sock::send(c.fd.as_fd(), &msg, &[]).is_ok()
                            {
                                pending.insert(*id);
                            }
                        }
                    }
                    tracing::trace!(
                        tenant,
                        dev,
                        epoch,
                        waiting_for = pending.len(),
                        "slice revoked"
                    );
                    if pending.is_empty() {
                        self.sched_event(dev, |s, now, act| s.drained(&tenant, epoch, now, act));
                    } else {
                        self.scheds[dev].draining = Some((tenant, epoch, pending));
                    }
                }
            }
        }
    }

    /// A connection acknowledged (or can no longer acknowledge) a revocation on `dev`.
    fn acknowledge(&mut self, dev: usize, conn: u64, epoch: Option<u32>) {
        let Some((tenant, e, pending)) = &mut self.scheds[dev].draining else {
            return;
        };
        if epoch.is_some_and(|x| x != *e) || !pending.remove(&conn) || !pending.is_empty() {
            return;
        }
        let (tenant, epoch) = (tenant.clone(), *e);
        self.scheds[dev].draining = None;
        self.sched_event(dev, |s, now, act| s.drained(&tenant, epoch, now, act));
    }

    fn rearm_sched_timer(&mut self) {
        let next = self
            .scheds
            .iter()
            .filter_map(|s| s.sched.next_deadline())
            .min();
        match next {
            Some(at) => {
                let wait = at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(50));
                let _ = self.sched_timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(wait)),
                    TimerSetTimeFlags::empty(),
                );
            }
            None => {
                let _ = self.sched_timer.unset();
            }
        }
    }

    fn add_tenant(&mut self, quota: TenantQuota) -> Result<()> {
        let name = quota.name.clone();
        let tenant_name = name.clone();
        let dir = tenant_dir(&self.cfg.state_dir, &name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let segments_dir = self.cfg.state_dir.join("segments");
        let segments = TenantSegments::create(
            &name,
            self.generation,
            &self.devices,
            &quota,
            &segments_dir.join(format!("{name}.acct")),
        )?;
        let listener = seqpacket_listener(&tenant_socket(&self.cfg.state_dir, &name))?;
        let listener_id = self.id();
        self.epoll.add(
            &listener,
            EpollEvent::new(EpollFlags::EPOLLIN, K_LISTENER | listener_id),
        )?;
        self.listeners.insert(listener_id, name.clone());
        tracing::info!(tenant = %name, limit = quota.memory_limit, weight = quota.weight, "tenant added");
        self.tenants.insert(
            name,
            Tenant {
                quota,
                segments,
                listener,
                listener_id,
                processes: BTreeMap::new(),
                removed: false,
                stalled: BTreeSet::new(),
                orphans: BTreeMap::new(),
            },
        );
        self.recover_orphans(&tenant_name);
        Ok(())
    }

    /// Removes a tenant whose quota file is gone: its socket disappears (no new processes);
    /// running processes keep what they hold but may allocate nothing more.
    fn remove_tenant(&mut self, name: &str) {
        let Some(t) = self.tenants.get_mut(name) else {
            return;
        };
        let _ = self.epoll.delete(&t.listener);
        self.listeners.remove(&t.listener_id);
        let _ = std::fs::remove_file(tenant_socket(&self.cfg.state_dir, name));
        let mut closed = t.quota.clone();
        closed.memory_limit = 0;
        t.segments.apply_quota(&self.devices, &closed);
        t.removed = true;
        tracing::info!(tenant = %name, processes = t.processes.len(), "tenant removed");
        self.forget_tenant_if_unused(name);
    }

    /// Drops a removed tenant once no process (registered or orphaned) remains, with its
    /// accounting file.
    fn forget_tenant_if_unused(&mut self, name: &str) {
        if let Some(t) = self.tenants.get(name)
            && t.removed
            && t.processes.is_empty()
            && t.orphans.is_empty()
        {
            self.tenants.remove(name);
            let _ = std::fs::remove_file(self.segment_path(name));
            tracing::info!(tenant = %name, "tenant gone");
        }
    }

    fn segment_path(&self, tenant: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("segments")
            .join(format!("{tenant}.acct"))
    }

    /// After a daemon restart: the adopted accounting segment of `tenant` lists processes the
    /// previous daemon registered. Dead ones are reclaimed now; live ones keep their memory
    /// and are watched (pidfd) until they reattach or exit.
    fn recover_orphans(&mut self, tenant: &str) {
        let Some(t) = self.tenants.get(tenant) else {
            return;
        };
        if !t.segments.recovered {
            return;
        }
        match accounting::audit(&t.segments.accounting, RECLAIM_LOCK_TIMEOUT) {
            Ok(true) => tracing::warn!(
                tenant,
                "accounting totals had drifted from the process records; repaired"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(tenant, "cannot audit recovered accounting: {e}"),
        }
        let slots: Vec<(usize, u32, u64)> = t
            .segments
            .accounting
            .processes
            .iter()
            .enumerate()
            .map(|(s, p)| (s, p.pid.load(Relaxed), p.start_time.load(Relaxed)))
            .filter(|(_, pid, _)| *pid != 0)
            .collect();
        let (mut alive, mut dead) = (0, 0);
        for (slot, pid, start) in slots {
            let watch = procfs::same_process_alive(pid, start)
                .then(|| procfs::pidfd_open(pid).ok())
                .flatten()
                // The pid may have exited between the check and the pidfd: check again.
                .filter(|_| procfs::same_process_alive(pid, start));
            match watch {
                Some(pidfd) => {
                    let id = self.id();
                    if self
                        .epoll
                        .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, K_PIDFD | id))
                        .is_ok()
                    {
                        self.pidfds.insert(id, (tenant.to_string(), slot, pidfd));
                        if let Some(t) = self.tenants.get_mut(tenant) {
                            t.orphans.insert(slot, id);
                        }
                        alive += 1;
                        continue;
                    }
                    self.reclaim(tenant, slot, pid);
                    dead += 1;
                }
                None => {
                    self.reclaim(tenant, slot, pid);
                    dead += 1;
                }
            }
        }
        tracing::info!(
            tenant,
            alive,
            reclaimed = dead,
            "recovered accounting from the previous daemon"
        );
    }

    /// Deletes accounting files of tenants that no longer exist (left by a previous daemon).
    fn remove_stale_segments(&self) {
        let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join("segments")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(tenant) = name.strip_suffix(".acct")
                && !self.tenants.contains_key(tenant)
            {
                tracing::info!(
                    tenant,
                    "removing the accounting file of a tenant that no longer exists"
                );
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn accept_tenant(&mut self, listener_id: u64) {
        let Some(name) = self.listeners.get(&listener_id).cloned() else {
            return;
        };
        let Some(t) = self.tenants.get(&name) else {
            return;
        };
        loop {
            match accept4(
                &t.listener,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => {
                    let id = self.next_id + 1;
                    self.next_id = id;
                    if let Err(e) = self.epoll.add(
                        &fd,
                        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, K_CONN | id),
                    ) {
                        tracing::warn!("cannot watch a connection: {e}");
                        continue;
                    }
                    let pid = sock::peer_cred(fd.as_fd())
                        .map(|c| c.pid as u32)
                        .unwrap_or(0);
                    self.conns.insert(
                        id,
                        Conn {
                            fd,
                            tenant: name.clone(),
                            slot: None,
                            pid,
                        },
                    );
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::warn!(tenant = %name, "accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn handle_conn(&mut self, id: u64, events: EpollFlags) {
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            match sock::recv(conn.fd.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
                Ok((0, _)) => return self.close_conn(id),
                Ok((n, _fds)) => match ClientMsg::decode(&buf[..n]) {
                    Ok(msg) => self.handle_msg(id, msg),
                    Err(e) => {
                        tracing::warn!(
                            pid = conn.pid,
                            "bad message from a tenant process: {e}; disconnecting it"
                        );
                        return self.close_conn(id);
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return self.close_conn(id),
            }
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            self.close_conn(id);
        }
    }

    fn handle_msg(&mut self, id: u64, msg: ClientMsg) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let (Some(slot), Some(t)) = (conn.slot, self.tenants.get_mut(&conn.tenant))
            && t.stalled.remove(&slot)
        {
            tracing::info!(tenant = %conn.tenant, pid = conn.pid, "process responsive again");
        }
        match msg {
            ClientMsg::Hello {
                protocol,
                pid: claimed,
            } => {
                if conn.slot.is_some() {
                    return;
                }
                let reply_refused = |conn: &Conn, reason: String| {
                    tracing::warn!(pid = conn.pid, tenant = %conn.tenant, "registration refused: {reason}");
                    let _ = sock::send(
                        conn.fd.as_fd(),
                        &ServerMsg::Refused { reason }.encode(),
                        &[],
                    );
                };
                if protocol != PROTOCOL_VERSION {
                    return reply_refused(
                        conn,
                        format!(
                            "shim speaks protocol {protocol}, daemon {PROTOCOL_VERSION}: install matching versions"
                        ),
                    );
                }
                let Some(t) = self.tenants.get_mut(&conn.tenant) else {
                    return reply_refused(conn, format!("tenant {} no longer exists", conn.tenant));
                };
                if t.removed {
                    return reply_refused(conn, format!("tenant {} has been removed", conn.tenant));
                }
                let acct = &t.segments.accounting;
                let Some(slot) = (0..MAX_PROCESSES).find(|&s| {
                    acct.processes[s].pid.load(Relaxed) == 0
                        && !t.processes.contains_key(&s)
                        && !t.orphans.contains_key(&s)
                }) else {
                    return reply_refused(
                        conn,
                        format!(
                            "tenant {} has {MAX_PROCESSES} processes registered already",
                            conn.tenant
                        ),
                    );
                };
                let pid = if conn.pid != 0 { conn.pid } else { claimed };
                acct.processes[slot]
                    .start_time
                    .store(procfs::start_time(pid).unwrap_or(0), Relaxed);
                acct.processes[slot].pid.store(pid, Relaxed);
                t.processes.insert(slot, pid);
                conn.slot = Some(slot);
                let welcome = ServerMsg::Welcome {
                    protocol: PROTOCOL_VERSION,
                    slot: slot as u32,
                    generation: self.generation,
                };
                let fds = [
                    t.segments.control_fd.as_fd(),
                    t.segments.accounting_fd.as_fd(),
                ];
                if let Err(e) = sock::send(conn.fd.as_fd(), &welcome.encode(), &fds) {
                    tracing::warn!(pid, "cannot answer a registration: {e}");
                    self.close_conn(id);
                    return;
                }
                tracing::debug!(pid, tenant = %conn.tenant, slot, "process registered");
            }
            ClientMsg::Reattach {
                protocol,
                pid: _,
                slot,
            } => {
                let slot = slot as usize;
                let refused = |conn: &Conn, reason: String| {
                    tracing::warn!(pid = conn.pid, tenant = %conn.tenant, "reattach refused: {reason}");
                    let _ = sock::send(
                        conn.fd.as_fd(),
                        &ServerMsg::Refused { reason }.encode(),
                        &[],
                    );
                };
                if conn.slot.is_some() || protocol != PROTOCOL_VERSION {
                    return refused(conn, "protocol mismatch or already registered".into());
                }
                let Some(t) = self.tenants.get_mut(&conn.tenant) else {
                    return refused(conn, format!("tenant {} no longer exists", conn.tenant));
                };
                let owner = (slot < MAX_PROCESSES)
                    .then(|| t.segments.accounting.processes[slot].pid.load(Relaxed));
                if owner != Some(conn.pid) || t.processes.contains_key(&slot) {
                    return refused(conn, format!("slot {slot} is not this process's"));
                }
                if let Some(watch) = t.orphans.remove(&slot)
                    && let Some((_, _, pidfd)) = self.pidfds.remove(&watch)
                {
                    let _ = self.epoll.delete(&pidfd);
                }
                t.processes.insert(slot, conn.pid);
                conn.slot = Some(slot);
                let welcome = ServerMsg::Welcome {
                    protocol: PROTOCOL_VERSION,
                    slot: slot as u32,
                    generation: self.generation,
                };
                let fds = [
                    t.segments.control_fd.as_fd(),
                    t.segments.accounting_fd.as_fd(),
                ];
                let pid = conn.pid;
                if let Err(e) = sock::send(conn.fd.as_fd(), &welcome.encode(), &fds) {
                    tracing::warn!(pid, "cannot answer a reattach: {e}");
                    self.close_conn(id);
                    return;
                }
                tracing::info!(pid, tenant = %conn.tenant, slot, "process reattached after a daemon restart");
                self.update_scheduling();
            }
            ClientMsg::Demand { device } => {
                let tenant = conn.tenant.clone();
                let dev = device as usize;
                if conn.slot.is_some() && dev < self.scheds.len() {
                    self.sched_event(dev, |s, now, act| s.demand(&tenant, now, act));
                }
            }
            ClientMsg::Drained { device, epoch } => {
                if (device as usize) < self.scheds.len() {
                    self.acknowledge(device as usize, id, Some(epoch));
                }
            }
        }
    }

    fn close_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let _ = self.epoll.delete(&conn.fd);
        if let Some(slot) = conn.slot {
            self.reclaim(&conn.tenant, slot, conn.pid);
        }
    }

    fn reclaim(&mut self, tenant: &str, slot: usize, pid: u32) {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        match accounting::reclaim_slot(&t.segments.accounting, slot, RECLAIM_LOCK_TIMEOUT) {
            Ok(returned) => {
                t.processes.remove(&slot);
                t.stalled.remove(&slot);
                let total: u64 = returned.iter().sum();
                tracing::debug!(
                    pid,
                    tenant,
                    slot,
                    returned = total,
                    "process gone; memory returned"
                );
                self.forget_tenant_if_unused(tenant);
            }
            Err(e) => {
                tracing::warn!(pid, tenant, "reclaim deferred: {e}");
                self.pending_reclaims.push((tenant.to_string(), slot));
                let _ = self.retry_timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(RETRY_INTERVAL)),
                    TimerSetTimeFlags::empty(),
                );
            }
        }
    }

    fn retry_reclaims(&mut self) {
        for (tenant, slot) in std::mem::take(&mut self.pending_reclaims) {
            let pid = self
                .tenants
                .get(&tenant)
                .and_then(|t| t.processes.get(&slot).copied())
                .unwrap_or(0);
            self.reclaim(&tenant, slot, pid);
        }
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
            Ok(ControlRequest::Status) => serde_json::to_vec(&self.status())?,
            Err(e) => {
                serde_json::to_vec(&serde_json::json!({ "error": format!("bad request: {e}") }))?
            }
        };
        stream.write_all(&reply)?;
        stream.write_all(b"\n")?;
        Ok(())
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
                        .chain(
                            t.orphans
                                .keys()
                                .map(|&s| t.segments.accounting.processes[s].pid.load(Relaxed)),
                        )
                        .collect(),
                    socket: tenant_socket(&self.cfg.state_dir, &t.quota.name)
                        .display()
                        .to_string(),
                    devices,
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
        }
    }
}
