//! The daemon's event loop: tenant sockets (registration, process lifetimes), quota-file
//! watching, the operator's control socket, signals. One thread, one epoll; the daemon sleeps
//! when nothing happens.
//!
//! A process's registration lives exactly as long as its connection: when the process exits,
//! is killed, or execs (the socket is close-on-exec), the kernel closes the connection, epoll
//! reports it, and the daemon returns everything the process held to its tenant.
//!
//! Nothing a tenant's process does can stall or crash the loop: it never waits on a lock a
//! tenant can hold (reclaims are tried and deferred), reads only what it bounds (messages per
//! wakeup, demands per second, connections per tenant), logs tenant misbehaviour at most once
//! per interval and site ([`crate::logging`]), backs off when descriptors run out (the control
//! socket keeps answering), and survives what a tenant does to the files it was handed
//! ([`crate::sigbus`], tamper watch).
//!
//! This module owns the loop and the daemon's state; the handlers live beside it:
//! [`tenants`] (quota files → tenants, restart recovery, removal), [`registration`] (tenant
//! connections, process lifetimes, reclaim), [`slicing`] (glue between the per-device
//! schedulers and the tenants' segments and processes), [`endpoint`] (tenant sockets and
//! directories, created without path races), [`watch`] (inotify on `tenants_dir`, re-watched
//! when replaced, and on the accounting files), [`report`] (the status report), [`observe`]
//! (per-process figures and slice waits for the report), [`footprint`] (processes' memory
//! beyond their allocations, unmanaged processes).

use crate::devices::Device;
use crate::ratelimit::{DEMAND_BURST, DEMAND_WINDOW, RateLimiter};
use crate::scheduler::Scheduler;
use crate::segments::TenantSegments;
use crate::status::ControlRequest;
use crate::waits::Waits;
use anyhow::{Context, Result};
use gpumux_common::config::{ConfigError, DaemonConfig, TenantQuota};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod endpoint;
mod footprint;
mod observe;
mod registration;
mod report;
mod slicing;
mod tenants;
mod watch;

use endpoint::Endpoint;
use watch::Watches;

/// How often deferred work (reclaims, audits behind a tenant-held lock) is retried.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// First and longest pause of accepting tenant connections when descriptors run out.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(2);

// epoll token kinds (high byte) — the low bits carry an id.
const K_SIGNAL: u64 = 1 << 56;
const K_CONTROL: u64 = 2 << 56;
const K_LISTENER: u64 = 3 << 56;
const K_CONN: u64 = 4 << 56;
const K_INOTIFY: u64 = 5 << 56;
const K_RETRY: u64 = 6 << 56;
const K_SCHED: u64 = 7 << 56;
const K_PIDFD: u64 = 8 << 56;
const K_TAMPER: u64 = 9 << 56;
const K_BACKOFF: u64 = 10 << 56;
const K_FOOTPRINT: u64 = 11 << 56;
const K_MEASURED: u64 = 12 << 56;
const KIND_MASK: u64 = 0xff << 56;

/// A registered process of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    /// Start time (clock ticks since boot), to tell it from a later process with its pid.
    start: u64,
}

/// A tenant the daemon serves.
struct Tenant {
    quota: TenantQuota,
    segments: TenantSegments,
    endpoint: Endpoint,
    /// slot → registered process.
    processes: BTreeMap<usize, Proc>,
    /// The quota file is gone: no new processes, no new allocations, weight 1; the tenant
    /// lingers (gated) until its last process ends.
    removed: bool,
    /// Slots of processes that did not acknowledge a revocation in time (stopped, stuck):
    /// not waited for again, and not counted as wanting the device, until they speak again.
    stalled: BTreeSet<usize>,
    /// After a daemon restart: slots of live processes registered with the previous daemon,
    /// awaiting their reattachment (slot → pidfd watch id).
    orphans: BTreeMap<usize, (Proc, u64)>,
    /// Times the tenant's accounting file was found tampered with and repaired.
    repairs: u64,
    /// The last look at whether a thread of its processes is runnable: when, and the answer
    /// (reused for [`RUNNABLE_PROBE_EVERY`], so that demands arriving fast cannot make the
    /// daemon read /proc for every one).
    runnable_probe: std::cell::Cell<Option<(Instant, bool)>>,
}

/// How long an answer of [`procfs::thread_runnable`] for a holder is reused.
const RUNNABLE_PROBE_EVERY: Duration = Duration::from_millis(2);
/// Threads looked at per probe of a holder, over all its processes (each process at least
/// [`RUNNABLE_THREADS_PER_PROCESS`]; a process's main thread is listed first).
const RUNNABLE_THREADS_PER_PROBE: usize = 64;
/// Threads looked at per process of a holder, at least.
const RUNNABLE_THREADS_PER_PROCESS: usize = 2;

/// A tenant whose accounting could not be set up (e.g. the file system is full): its socket
/// answers registrations with the reason, and setup is retried at each one.
struct Pending {
    quota: TenantQuota,
    endpoint: Endpoint,
    error: String,
}

/// A process connected to a tenant socket.
struct Conn {
    fd: OwnedFd,
    tenant: String,
    slot: Option<usize>,
    pid: u32,
    /// The protocol agreed at registration (0 before).
    version: u32,
    /// Demands dropped over the limit (`Daemon::demand_limits`).
    dropped_demands: u64,
}

/// Time-slicing of one device: the policy plus the acknowledgements a revocation waits for.
struct DeviceSched {
    sched: Scheduler,
    /// The slice being drained and the acknowledgements it waits for.
    draining: Option<Drain>,
    /// The tenant whose `yield_hint` is set on this device (a contended latency-class holder).
    hinted: Option<String>,
    /// A slice (its epoch) during which a process of its holder that had launched on this
    /// device went away: what that process's work used cannot be reported, so the slice is
    /// charged its wall time.
    unmeasurable: Option<u32>,
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

/// What the loop waits on besides tenant sockets.
struct Loop {
    epoll: Epoll,
    signals: SignalFd,
    retry_timer: TimerFd,
    sched_timer: TimerFd,
    backoff_timer: TimerFd,
    control: UnixListener,
    watches: Watches,
}

/// The daemon.
pub struct Daemon {
    cfg: DaemonConfig,
    devices: Vec<Device>,
    generation: u64,
    started: Instant,
    lp: Loop,
    tenants: BTreeMap<String, Tenant>,
    pending: BTreeMap<String, Pending>,
    listeners: HashMap<u64, String>,
    conns: HashMap<u64, Conn>,
    /// Open connections per tenant (capped by `max_connections_per_tenant`).
    conn_counts: HashMap<String, usize>,
    next_id: u64,
    /// Slots whose reclaim found the tenant's lock held: retried by the timer.
    pending_reclaims: Vec<(String, usize)>,
    /// Tenants whose recovered accounting could not be audited yet (lock held).
    pending_audits: BTreeSet<String>,
    /// Rejected quota files, by path.
    config_errors: BTreeMap<PathBuf, ConfigError>,
    /// One scheduler per device (same order as `devices`).
    scheds: Vec<DeviceSched>,
    /// Exit watches on orphaned processes (id → tenant, slot, pidfd).
    pidfds: HashMap<u64, (String, usize, OwnedFd)>,
    /// `Demand` messages per connection (by id), rate-limited. (Tenant misbehaviour is
    /// logged through [`crate::logging`]'s limit: one line per site and tenant per interval.)
    demand_limits: RateLimiter<u64>,
    /// Accepting tenant connections is paused (descriptors ran out) until the backoff timer.
    accept_paused: Option<Duration>,
    /// A descriptor kept spare so the control socket can answer when descriptors run out.
    spare_fd: Option<OwnedFd>,
    /// Where the metrics thread listens (reported in status).
    pub metrics_address: Option<String>,
    /// Slice waits and grant latencies (for status and metrics).
    waits: Waits,
    /// Footprint measurement (overhead beyond allocations, unmanaged processes).
    fp: footprint::Footprints,
}

/// A monotonic timerfd registered in `epoll` under `token`.
pub(super) fn watched_timer(epoll: &Epoll, token: u64) -> Result<TimerFd> {
    let t = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
    )?;
    epoll.add(t.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
    Ok(t)
}

/// Arms a one-shot timer, logging (never ignoring) a failure: a timer that silently does not
/// fire would leave deadlines unenforced.
fn arm(timer: &TimerFd, after: Duration, what: &str) {
    if let Err(e) = timer.set(
        Expiration::OneShot(TimeSpec::from_duration(
            after.max(Duration::from_micros(50)),
        )),
        TimerSetTimeFlags::empty(),
    ) {
        tracing::error!("cannot arm the {what} timer: {e}");
    }
}

/// Raises the soft limit on open descriptors to the hard limit: each tenant process holds a
/// connection, each tenant a listener, a directory and a file.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    let ok = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            soft == lim.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if ok {
        tracing::info!(limit = lim.rlim_cur, "open descriptor limit");
    } else {
        tracing::warn!(
            "cannot raise the open descriptor limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The spare descriptor (see [`Daemon::spare_fd`]).
fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

impl Loop {
    fn new(cfg: &DaemonConfig) -> Result<Loop> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block().context("blocking signals")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        epoll.add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, K_SIGNAL))?;
        let watches = Watches::new(cfg, &epoll, K_INOTIFY, K_TAMPER)?;
        let control = endpoint::control_listener(&cfg.state_dir)?;
        epoll.add(&control, EpollEvent::new(EpollFlags::EPOLLIN, K_CONTROL))?;
        Ok(Loop {
            retry_timer: watched_timer(&epoll, K_RETRY)?,
            sched_timer: watched_timer(&epoll, K_SCHED)?,
            backoff_timer: watched_timer(&epoll, K_BACKOFF)?,
            epoll,
            signals,
            control,
            watches,
        })
    }
}

impl Daemon {
    /// Sets up sockets and watches; serves no one until [`Daemon::run`].
    pub fn new(cfg: DaemonConfig, devices: Vec<Device>) -> Result<Self> {
        endpoint::prepare_state_dirs(&cfg)?;
        raise_fd_limit();
        crate::sigbus::install().context("installing the SIGBUS guard")?;
        let lp = Loop::new(&cfg)?;
        let fp = footprint::Footprints::new(&lp.epoll, devices.len())?;
        let quantum = Duration::from_millis(u64::from(cfg.quantum_ms));
        let scheds = devices
            .iter()
            .map(|_| DeviceSched {
                sched: Scheduler::new(quantum),
                draining: None,
                unmeasurable: None,
                hinted: None,
            })
            .collect();
        let mut d = Daemon {
            cfg,
            devices,
            generation: generation(),
            started: Instant::now(),
            lp,
            tenants: BTreeMap::new(),
            pending: BTreeMap::new(),
            listeners: HashMap::new(),
            conns: HashMap::new(),
            conn_counts: HashMap::new(),
            next_id: 1,
            pending_reclaims: Vec::new(),
            pending_audits: BTreeSet::new(),
            config_errors: BTreeMap::new(),
            scheds,
            pidfds: HashMap::new(),
            demand_limits: RateLimiter::new(DEMAND_WINDOW, DEMAND_BURST),
            accept_paused: None,
            spare_fd: open_spare(),
            metrics_address: None,
            waits: Waits::default(),
            fp,
        };
        d.reload_tenants();
        d.adopt_leftover_segments();
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
            let n = match self.lp.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("epoll_wait"),
            };
            for ev in &events[..n] {
                if self.dispatch(ev.data(), ev.events())? {
                    tracing::info!("shutting down");
                    return Ok(());
                }
            }
            if crate::sigbus::Guard::any_damage() {
                self.repair_all();
            }
            self.measure_due();
            self.rearm_footprint_timer();
            self.rearm_sched_timer();
        }
    }

    /// Handles one epoll event; true when the daemon should stop.
    fn dispatch(&mut self, token: u64, events: EpollFlags) -> Result<bool> {
        let id = token & !KIND_MASK;
        match token & KIND_MASK {
            K_SIGNAL => return self.handle_signals(),
            K_CONTROL => self.accept_control(),
            K_LISTENER => self.accept_tenant(id),
            K_CONN => self.handle_conn(id, events),
            K_INOTIFY => {
                if self.lp.watches.tenants_dir_changed() {
                    self.reload_tenants();
                }
            }
            K_TAMPER => {
                for tenant in self.lp.watches.tampered_files() {
                    self.repair_tenant(&tenant);
                }
            }
            K_RETRY => {
                drain_timer(&self.lp.retry_timer);
                self.retry_deferred();
            }
            K_BACKOFF => {
                drain_timer(&self.lp.backoff_timer);
                self.resume_accepting();
            }
            K_PIDFD => self.orphan_exited(id),
            K_FOOTPRINT => drain_timer(&self.fp.timer),
            K_MEASURED => self.readings_in(),
            K_SCHED => {
                drain_timer(&self.lp.sched_timer);
                for dev in 0..self.scheds.len() {
                    self.sched_event(dev, |s, now, act| s.tick(now, act));
                }
            }
            _ => tracing::warn!(token, "unknown epoll token"),
        }
        Ok(false)
    }

    fn handle_signals(&mut self) -> Result<bool> {
        while let Some(info) = self.lp.signals.read_signal()? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => {
                    tracing::info!("SIGHUP: rescanning tenants");
                    self.lp.watches.rewatch_tenants_dir();
                    self.reload_tenants();
                }
                Ok(_) => return Ok(true),
                Err(_) => {}
            }
        }
        Ok(false)
    }

    fn accept_control(&mut self) {
        loop {
            match self.lp.control.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.serve_control(stream) {
                        tracing::debug!("control request failed: {e:#}");
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) && self.spare_fd.is_some() => {
                    // Out of descriptors: give up the spare one to answer the operator.
                    self.spare_fd = None;
                    let served = self.lp.control.accept();
                    let pending = served.is_ok();
                    if let Ok((stream, _)) = served
                        && let Err(e) = self.serve_control(stream)
                    {
                        tracing::debug!("control request failed: {e:#}");
                    }
                    // (None while a status request waits for readings with the descriptor:
                    // reopened once it is answered.)
                    self.spare_fd = open_spare();
                    // Nothing was pending (the table is still full, so accepting again would
                    // fail the same way forever): done until the listener is readable again.
                    if !pending {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    return;
                }
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
    fn answer_status(&mut self, mut stream: UnixStream) {
        let result = serde_json::to_vec(&self.status())
            .map_err(std::io::Error::from)
            .and_then(|reply| {
                stream.write_all(&reply)?;
                stream.write_all(b"\n")
            });
        if let Err(e) = result {
            tracing::debug!("control request failed: {e:#}");
        }
        if self.spare_fd.is_none() {
            drop(stream);
            self.spare_fd = open_spare();
        }
    }

    /// Retries what a tenant-held lock deferred.
    fn retry_deferred(&mut self) {
        self.retry_reclaims();
        for tenant in std::mem::take(&mut self.pending_audits) {
            self.audit_recovered(&tenant);
        }
    }

    /// Schedules a retry of deferred work.
    fn defer_retry(&self) {
        arm(&self.lp.retry_timer, RETRY_INTERVAL, "retry");
    }
}

/// Reads a timerfd's expiration count so it stops being readable.
fn drain_timer(timer: &TimerFd) {
    match timer.wait() {
        Ok(()) | Err(nix::errno::Errno::EAGAIN) => {}
        Err(e) => tracing::warn!("reading a timer: {e}"),
    }
}

/// Identifies this daemon instance (segments it created carry it).
fn generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
