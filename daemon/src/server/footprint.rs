//! Tenants' footprints beyond their allocations, and unmanaged processes: when the daemon reads
//! NVML's per-process memory, and what it does with a reading ([`crate::footprint`] decides what
//! a reading means).
//!
//! Readings are taken by the measuring thread ([`crate::measurer`]), never by the event loop: a
//! slow or hung NVML delays measurements, not slice grants. One reading per device is in flight
//! at a time. A device is read:
//! - when a process waits for it (`Footprint { seq ≠ 0 }`: a context created, a module or library
//!   loaded): at once, or when the reading in flight is in (at most one per [`MIN_GAP`]); the
//!   answer `Measured` goes out once a reading that started after the announcement is applied;
//! - when a process announced a change nobody waits for (`seq = 0`: a context destroyed, an
//!   unload): within [`MIN_INTERVAL`] (a per-device flag, nothing queued);
//! - every [`RECONCILE_INTERVAL`] while any tenant has processes (what nobody announces: lazy
//!   module loading, libraries' workspaces), and when a change seen once needs confirming
//!   ([`crate::footprint::CONFIRM`]);
//! - when a status report is asked for and the last reading is older than [`STATUS_MAX_AGE`]:
//!   the report waits for it (at most [`STATUS_WAIT`]), and is otherwise made from the last one.
//!
//! A reservation announced with a change (`reserved`: what the shim reserved for a context or
//! an image it then created or loaded) is settled by the first reading of the process applied
//! after the announcement, whenever that is: a `Measured` answered without a reading (a cap, an
//! NVML error, a process NVML lists without a figure, the tenant holding its lock) leaves it
//! to the next one, so the tenant never pays the estimate and the measurement both. Waiting
//! announcements are capped per connection ([`MAX_WAITING_PER_CONN`]) and per tenant
//! ([`MAX_WAITING_PER_TENANT`]); beyond that they are answered at once, for that tenant only.
//!
//! Processes are matched with NVML's list by the pid the kernel gave at registration
//! (`SO_PEERCRED`; for a process adopted after a restart, the pid validated with its start
//! time and its memory map, see `tenants::watch_orphan`), never by what a tenant can write. An idle daemon (no registered process) measures
//! nothing unless asked for its status.

use super::{Conn, Daemon, K_FOOTPRINT, K_MEASURED, watched_timer};
use crate::footprint::{self as fp, ContextSizes, Key, OverheadTracker, Registered};
use crate::measurer::{Job, Measurer, Outcome};
use crate::procfs;
use crate::status::UnmanagedProcess;
use anyhow::{Context, Result};
use gpumux_common::accounting::{self, ChargeError};
use gpumux_common::nvml::{Nvml, ProcessMemory};
use gpumux_common::protocol::ServerMsg;
use gpumux_common::shm_mutex::LockError;
use gpumux_common::sock;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerFd, TimerSetTimeFlags};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How often every device is re-measured while tenants have processes.
pub(super) const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);
/// Announcements nobody waits for measure a device at most this often.
const MIN_INTERVAL: Duration = Duration::from_millis(20);
/// The least time between the starts of two readings of a device.
const MIN_GAP: Duration = Duration::from_millis(1);
/// A status report is made from readings at most this old (else it waits for a new one).
const STATUS_MAX_AGE: Duration = Duration::from_millis(2500);
/// How long a status report waits for a reading before it is made from the last one.
const STATUS_WAIT: Duration = Duration::from_secs(1);
/// A reading in flight this long is reported (NVML hangs).
const STALL_WARNING: Duration = Duration::from_secs(5);
/// Announcements waiting for a reading, per connection and per tenant (all devices).
const MAX_WAITING_PER_CONN: usize = 64;
const MAX_WAITING_PER_TENANT: usize = 1024;

/// A connection waiting for `Measured { seq }`.
struct Waiter {
    conn: u64,
    tenant: String,
    seq: u32,
}

/// What a process announced on a device since a reading of it last started.
#[derive(Debug, Default, Clone, Copy)]
struct Announced {
    reserved: u64,
    contexts: u32,
    others: u32,
}

/// A reading in flight: what it answers once applied.
struct InFlight {
    since: Instant,
    waiters: Vec<Waiter>,
    announced: BTreeMap<(String, usize), Announced>,
}

/// One device's measuring state.
#[derive(Default)]
struct DeviceState {
    /// Waiting for the next reading that starts.
    waiting: Vec<Waiter>,
    /// Per process (tenant, slot): what it announced since the last reading started.
    announced: BTreeMap<(String, usize), Announced>,
    /// A change nobody waits for was announced: read within [`MIN_INTERVAL`].
    soon: bool,
    /// A status report wants a fresh reading.
    wanted: bool,
    in_flight: Option<InFlight>,
    started: Option<Instant>,
    completed: Option<Instant>,
    /// NVML could not list the device's processes (warned once until it can again).
    failing: bool,
    /// The reading in flight was reported as stalled.
    stall_warned: bool,
}

/// The daemon's footprint state.
pub(super) struct Footprints {
    pub(super) timer: TimerFd,
    measurer: Measurer,
    devices: Vec<DeviceState>,
    tracker: OverheadTracker,
    last_reconcile: Option<Instant>,
    /// Unmanaged processes, all devices, as last measured.
    pub(super) unmanaged: Vec<UnmanagedProcess>,
    /// Reservations a started reading may settle, per process and device (kept until a reading
    /// of the process is applied).
    unsettled: HashMap<Key, u64>,
    /// Each registered process's overhead as last applied (the daemon's own record).
    baseline: HashMap<Key, u64>,
    /// Per tenant and device: its recent context sizes (what its processes reserve).
    contexts: HashMap<String, Vec<ContextSizes>>,
    /// Status requests waiting for fresh readings, with their deadlines.
    status_waiting: Vec<(UnixStream, Instant)>,
    /// Processes registered without a pid from the kernel (only a claimed one): never matched
    /// with NVML's list.
    unverified: HashSet<(String, usize)>,
}

impl Footprints {
    pub(super) fn new(epoll: &Epoll, devices: usize) -> Result<Self> {
        let measurer = Measurer::spawn(
            Box::new(|index| Nvml.running_processes(index)),
            Box::new(procfs::cgroup),
        )
        .context("starting the measuring thread")?;
        epoll.add(
            measurer.fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, K_MEASURED),
        )?;
        Ok(Footprints {
            timer: watched_timer(epoll, K_FOOTPRINT)?,
            measurer,
            devices: (0..devices).map(|_| DeviceState::default()).collect(),
            tracker: OverheadTracker::default(),
            last_reconcile: None,
            unmanaged: Vec::new(),
            unsettled: HashMap::new(),
            baseline: HashMap::new(),
            contexts: HashMap::new(),
            status_waiting: Vec::new(),
            unverified: HashSet::new(),
        })
    }

    /// Waiting announcements of connection `conn` and of `tenant`, all devices.
    fn waiting_of(&self, conn: u64, tenant: &str) -> (usize, usize) {
        let mut n = (0, 0);
        for d in &self.devices {
            let in_flight = d.in_flight.iter().flat_map(|f| f.waiters.iter());
            for w in d.waiting.iter().chain(in_flight) {
                n.0 += usize::from(w.conn == conn);
                n.1 += usize::from(w.tenant == tenant);
            }
        }
        n
    }

    /// A process's registration ended: what it announced is nobody's to settle (its slot may
    /// be taken by another process before the next reading).
    pub(super) fn unregistered(&mut self, tenant: &str, slot: usize) {
        for d in &mut self.devices {
            d.announced.retain(|(t, s), _| !(t == tenant && *s == slot));
        }
        self.unsettled
            .retain(|k, _| !(k.tenant == tenant && k.slot == slot));
        self.baseline
            .retain(|k, _| !(k.tenant == tenant && k.slot == slot));
        self.unverified.remove(&(tenant.to_string(), slot));
    }

    /// A process registered with a pid the kernel did not give (the one it claims): it is not
    /// measured, so a claimed pid never makes another process's memory the tenant's.
    pub(super) fn unverified(&mut self, tenant: &str, slot: usize) {
        self.unverified.insert((tenant.to_string(), slot));
    }

    /// A process registered: it has no context yet (it registers on its first driver call), so
    /// its first context's growth is measured from 0.
    pub(super) fn registered(&mut self, tenant: &str, slot: usize, pid: u32) {
        for device in 0..self.devices.len() {
            let key = Key {
                tenant: tenant.to_string(),
                slot,
                pid,
                device,
            };
            self.baseline.insert(key, 0);
        }
    }
}

impl Daemon {
    /// A process announced a change of its footprint on `device` (`Footprint`).
    pub(super) fn footprint_request(
        &mut self,
        id: u64,
        device: u32,
        reserved: u64,
        seq: u32,
        context: bool,
    ) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let answer_now = |conn: &Conn| {
            if seq != 0 {
                send_measured(conn, device, seq);
            }
        };
        let dev = device as usize;
        let Some(slot) = conn.slot.filter(|_| dev < self.devices.len()) else {
            return answer_now(conn);
        };
        let tenant = conn.tenant.clone();
        let (of_conn, of_tenant) = self.fp.waiting_of(id, &tenant);
        let d = &mut self.fp.devices[dev];
        // Settled by the next reading whatever happens to the answer.
        let a = d.announced.entry((tenant.clone(), slot)).or_default();
        a.reserved = a.reserved.saturating_add(reserved);
        if context && seq != 0 {
            a.contexts = a.contexts.saturating_add(1);
        } else {
            a.others = a.others.saturating_add(1);
        }
        if seq == 0 {
            d.soon = true;
        } else if of_conn < MAX_WAITING_PER_CONN && of_tenant < MAX_WAITING_PER_TENANT {
            d.waiting.push(Waiter {
                conn: id,
                tenant,
                seq,
            });
        } else {
            d.soon = true;
            answer_now(conn);
        }
    }

    /// Starts the readings that are due (after each pass of the event loop, and when the
    /// footprint timer fires), and answers status requests whose wait is over.
    pub(super) fn measure_due(&mut self) {
        let now = Instant::now();
        let reconcile = self.has_processes()
            && self
                .fp
                .last_reconcile
                .is_none_or(|l| now.duration_since(l) >= RECONCILE_INTERVAL);
        if reconcile {
            self.fp.last_reconcile = Some(now);
        }
        for dev in 0..self.devices.len() {
            let d = &mut self.fp.devices[dev];
            if let Some(f) = &d.in_flight {
                if !d.stall_warned && now.duration_since(f.since) >= STALL_WARNING {
                    d.stall_warned = true;
                    tracing::warn!(
                        device = self.devices[dev].index,
                        "NVML has not listed the device's processes for {} s: contexts and modules are measured when it does",
                        STALL_WARNING.as_secs()
                    );
                }
                continue;
            }
            let since_start = d.started.map(|s| now.duration_since(s));
            let gap_over = since_start.is_none_or(|s| s >= MIN_GAP);
            let due = reconcile
                || d.wanted
                || (!d.waiting.is_empty() && gap_over)
                || (d.soon && since_start.is_none_or(|s| s >= MIN_INTERVAL))
                || self.fp.tracker.recheck_at(dev).is_some_and(|t| t <= now);
            if due {
                self.start_reading(dev, now);
            }
        }
        self.answer_status_waiting(now);
    }

    fn has_processes(&self) -> bool {
        self.tenants
            .values()
            .any(|t| !t.processes.is_empty() || !t.orphans.is_empty())
    }

    /// Registered processes and their trusted pids: `(tenant, slot, pid)` (the daemon's own
    /// record, never the pid a tenant can write into its slot).
    fn registered_pids(&self) -> Vec<(String, usize, u32)> {
        let mut out = Vec::new();
        for (name, t) in &self.tenants {
            for (&slot, p) in &t.processes {
                out.push((name.clone(), slot, p.pid));
            }
            for (&slot, (p, _)) in &t.orphans {
                out.push((name.clone(), slot, p.pid));
            }
        }
        out.retain(|r| r.2 != 0 && !self.fp.unverified.contains(&(r.0.clone(), r.1)));
        out
    }

    fn start_reading(&mut self, dev: usize, now: Instant) {
        let registered = self.registered_pids();
        let job = Job {
            device: dev,
            index: self.devices[dev].index,
            registered: registered.iter().map(|r| r.2).collect(),
        };
        if !self.fp.measurer.start(job) {
            tracing::error!("the measuring thread is gone: footprints are no longer measured");
            return;
        }
        let d = &mut self.fp.devices[dev];
        let announced = std::mem::take(&mut d.announced);
        // What this reading may settle: reservations announced before it started.
        for ((tenant, slot), a) in &announced {
            if a.reserved == 0 {
                continue;
            }
            if let Some((_, _, pid)) = registered.iter().find(|(t, s, _)| t == tenant && s == slot)
            {
                let key = Key {
                    tenant: tenant.clone(),
                    slot: *slot,
                    pid: *pid,
                    device: dev,
                };
                let u = self.fp.unsettled.entry(key).or_default();
                *u = u.saturating_add(a.reserved);
            }
        }
        d.in_flight = Some(InFlight {
            since: now,
            waiters: std::mem::take(&mut d.waiting),
            announced,
        });
        d.soon = false;
        d.wanted = false;
        d.started = Some(now);
    }

    /// The measuring thread has readings: apply them and answer whoever waits.
    pub(super) fn readings_in(&mut self) {
        for outcome in self.fp.measurer.take() {
            self.apply_outcome(outcome);
        }
        self.answer_status_waiting(Instant::now());
    }

    fn apply_outcome(&mut self, outcome: Outcome) {
        let dev = outcome.device;
        let now = Instant::now();
        let Some(flight) = self
            .fp
            .devices
            .get_mut(dev)
            .and_then(|d| d.in_flight.take())
        else {
            return;
        };
        let index = self.devices[dev].index;
        let d = &mut self.fp.devices[dev];
        d.completed = Some(now);
        d.stall_warned = false;
        match outcome.listing {
            Ok(listing) => {
                if d.failing {
                    tracing::info!(device = index, "NVML lists the device's processes again");
                    d.failing = false;
                }
                self.apply_reading(dev, &listing, &flight, &outcome.cgroups, now);
            }
            Err(e) => {
                // Nothing to confirm against until NVML answers again (and no re-reading
                // every millisecond meanwhile); reservations stay unsettled until then.
                self.fp.tracker.retain(|k| k.device != dev);
                if !d.failing {
                    tracing::warn!(
                        device = index,
                        "cannot read the processes' memory from NVML ({e}); contexts and modules are not charged to tenants until it can"
                    );
                    d.failing = true;
                }
            }
        }
        for w in &flight.waiters {
            if let Some(c) = self.conns.get(&w.conn) {
                send_measured(c, dev as u32, w.seq);
            }
        }
    }

    fn apply_reading(
        &mut self,
        dev: usize,
        listing: &[ProcessMemory],
        flight: &InFlight,
        cgroups: &HashMap<u32, Option<String>>,
        now: Instant,
    ) {
        let registered: Vec<Registered> = self
            .registered_pids()
            .into_iter()
            .map(|(tenant, slot, pid)| {
                let allocated = self.tenants[&tenant].segments.accounting.processes[slot].used[dev]
                    .load(Relaxed);
                Registered {
                    tenant,
                    slot,
                    pid,
                    allocated,
                }
            })
            .collect();
        let reading = fp::read(listing, &registered);
        let mut learned: Vec<(String, u64)> = Vec::new();
        for &(i, measured) in &reading.overheads {
            let r = &registered[i];
            let Some(t) = self.tenants.get(&r.tenant) else {
                continue;
            };
            let key = Key {
                tenant: r.tenant.clone(),
                slot: r.slot,
                pid: r.pid,
                device: dev,
            };
            let announced = flight.announced.get(&(r.tenant.clone(), r.slot));
            // A context's size: the growth since this process's previous reading, when the
            // creation is all it announced since.
            if let Some(a) = announced
                && a.contexts == 1
                && a.others == 0
                && let Some(&before) = self.fp.baseline.get(&key)
                && measured > before
            {
                learned.push((r.tenant.clone(), measured - before));
            }
            let acct = &t.segments.accounting;
            let current = acct.processes[r.slot].overhead[dev].load(Relaxed);
            let settle = self.fp.unsettled.get(&key).copied().unwrap_or(0);
            // Growth the process announced, or that a reservation was made for, is applied at
            // once (the reservation goes as the measurement comes).
            let expected = announced.is_some() || settle > 0;
            let new = self
                .fp
                .tracker
                .observe(key.clone(), current, measured, expected, now);
            // The baseline follows what is applied: growth seen by a reading that started
            // between a creation and its announcement waits for confirmation, so the announced
            // reading still measures the whole context.
            if let Some(v) = new {
                self.fp.baseline.insert(key.clone(), v);
            }
            if new.is_none() && settle == 0 {
                continue;
            }
            let value = new.unwrap_or(current);
            match accounting::set_overhead(acct, r.slot, dev, value, settle) {
                Ok(old) => {
                    self.fp.unsettled.remove(&key);
                    if value != old {
                        tracing::debug!(tenant = %r.tenant, pid = r.pid, device = self.devices[dev].index, overhead = value, "process footprint beyond its allocations");
                    }
                }
                // A tenant process holds its lock: the next reading records it and settles the
                // reservation (the daemon never waits on a lock a tenant can hold).
                Err(ChargeError::Lock(LockError::Busy)) => {
                    tracing::debug!(tenant = %r.tenant, pid = r.pid, "overhead not recorded now: the tenant holds its lock");
                }
                Err(e) => {
                    tracing::warn!(tenant = %r.tenant, pid = r.pid, "cannot record the process's overhead now (the next reading will): {e}");
                }
            }
        }
        for (tenant, growth) in learned {
            self.learn_context(&tenant, dev, growth);
        }
        // What this reading did not see (processes gone, or listed without a figure) has
        // nothing to confirm it; records of processes no longer registered are dropped.
        let seen = |k: &Key| {
            reading.overheads.iter().any(|&(i, _)| {
                let r = &registered[i];
                r.tenant == k.tenant && r.slot == k.slot && r.pid == k.pid
            })
        };
        self.fp.tracker.retain(|k| k.device != dev || seen(k));
        let live = |k: &Key| {
            registered
                .iter()
                .any(|r| r.tenant == k.tenant && r.slot == k.slot && r.pid == k.pid)
        };
        self.fp.unsettled.retain(|k, _| live(k));
        self.fp.baseline.retain(|k, _| live(k));
        self.record_unmanaged(dev, &reading.unmanaged, &registered, cgroups);
    }

    /// A context of `tenant` on `dev` measured `growth` bytes: its estimate, published to that
    /// tenant alone.
    fn learn_context(&mut self, tenant: &str, dev: usize, growth: u64) {
        let devices = self.devices.len();
        let sizes = self
            .fp
            .contexts
            .entry(tenant.to_string())
            .or_insert_with(|| vec![ContextSizes::default(); devices]);
        let estimate = sizes[dev].learn(growth);
        if let Some(t) = self.tenants.get(tenant) {
            t.segments.control.devices[dev]
                .context_overhead
                .store(estimate, Relaxed);
        }
    }

    /// Publishes a (new) tenant's context-size estimates to its control segment.
    pub(super) fn publish_estimates(&self, tenant: &str) {
        let Some(t) = self.tenants.get(tenant) else {
            return;
        };
        for dev in 0..self.devices.len() {
            let estimate = self
                .fp
                .contexts
                .get(tenant)
                .map_or(0, |sizes| sizes[dev].estimate());
            t.segments.control.devices[dev]
                .context_overhead
                .store(estimate, Relaxed);
        }
    }

    fn record_unmanaged(
        &mut self,
        dev: usize,
        found: &[(u32, u64)],
        registered: &[Registered],
        cgroups: &HashMap<u32, Option<String>>,
    ) {
        let index = self.devices[dev].index;
        let before: Vec<u32> = self
            .fp
            .unmanaged
            .iter()
            .filter(|u| u.device == index)
            .map(|u| u.pid)
            .collect();
        self.fp.unmanaged.retain(|u| u.device != index);
        let cgroup_of = |pid: u32| cgroups.get(&pid).and_then(|c| c.as_deref());
        for &(pid, memory) in found {
            let tenant = fp::attribute(
                cgroup_of(pid),
                registered
                    .iter()
                    .map(|r| (r.tenant.as_str(), cgroup_of(r.pid))),
            );
            if !before.contains(&pid) {
                tracing::warn!(
                    pid,
                    device = index,
                    memory,
                    tenant = tenant.as_deref().unwrap_or("unknown"),
                    "a process uses the GPU without gpumux (unmanaged): its memory is not under any quota"
                );
            }
            self.fp.unmanaged.push(UnmanagedProcess {
                device: index,
                pid,
                memory,
                tenant,
            });
        }
    }

    /// Answers a status request now, or, when the last readings are older than
    /// [`STATUS_MAX_AGE`], once fresh ones are in (at most [`STATUS_WAIT`] later).
    pub(super) fn status_when_fresh(&mut self, stream: UnixStream) {
        let now = Instant::now();
        let mut stale = false;
        for d in &mut self.fp.devices {
            if d.completed
                .is_none_or(|c| now.duration_since(c) > STATUS_MAX_AGE)
            {
                d.wanted = true;
                stale = true;
            }
        }
        if stale {
            self.fp.status_waiting.push((stream, now + STATUS_WAIT));
        } else {
            self.answer_status(stream);
        }
    }

    /// Answers the waiting status requests once no reading they wait for is pending, or their
    /// deadline passed.
    fn answer_status_waiting(&mut self, now: Instant) {
        if self.fp.status_waiting.is_empty() {
            return;
        }
        let pending = self
            .fp
            .devices
            .iter()
            .any(|d| d.wanted || d.in_flight.is_some());
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fp.status_waiting)
            .into_iter()
            .partition(|(_, deadline)| !pending || *deadline <= now);
        self.fp.status_waiting = wait;
        for (stream, _) in due {
            self.answer_status(stream);
        }
    }

    /// Arms the footprint timer for the next reading or status deadline due, or disarms it.
    pub(super) fn rearm_footprint_timer(&mut self) {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for (dev, d) in self.fp.devices.iter().enumerate() {
            if let Some(f) = &d.in_flight {
                if !d.stall_warned {
                    consider(f.since + STALL_WARNING);
                }
                continue;
            }
            let after = |gap: Duration| d.started.map_or(now, |s| s + gap);
            if !d.waiting.is_empty() {
                consider(after(MIN_GAP));
            }
            if d.soon {
                consider(after(MIN_INTERVAL));
            }
            if d.wanted {
                consider(now);
            }
            if let Some(t) = self.fp.tracker.recheck_at(dev) {
                consider(t);
            }
        }
        for (_, deadline) in &self.fp.status_waiting {
            consider(*deadline);
        }
        if self.has_processes() {
            consider(
                self.fp
                    .last_reconcile
                    .map_or(now, |l| l + RECONCILE_INTERVAL),
            );
        }
        let result = match next {
            Some(t) => self.fp.timer.set(
                Expiration::OneShot(TimeSpec::from_duration(
                    t.saturating_duration_since(now)
                        .max(Duration::from_millis(1)),
                )),
                TimerSetTimeFlags::empty(),
            ),
            None => self.fp.timer.unset(),
        };
        if let Err(e) = result {
            tracing::warn!("cannot arm the footprint timer: {e}");
        }
    }
}

/// Answers `Footprint { seq }` (best effort: a connection that cannot take it is closing).
fn send_measured(conn: &Conn, device: u32, seq: u32) {
    let msg = ServerMsg::Measured { device, seq }.encode_for(conn.version);
    if let Err(e) = sock::send(conn.fd.as_fd(), &msg, &[]) {
        tracing::debug!(pid = conn.pid, "cannot answer Measured: {e}");
    }
}
