//! Tenants' footprints beyond their allocations, and unmanaged processes: when the daemon reads
//! NVML's per-process memory, and what it does with the reading ([`crate::footprint`] decides
//! what a reading means).
//!
//! A device is measured (one NVML process listing, never more than once per event-loop pass):
//! - when a process announces a change (`Footprint`: it created a context or loaded a module);
//!   a context creation waits for the answer (`Measured`), so it is measured at once; other
//!   announcements are coalesced to at most one measurement per [`MIN_INTERVAL`];
//! - every [`RECONCILE_INTERVAL`] while any tenant has processes (what nobody announces: lazy
//!   module loading, libraries' workspaces), and when a change seen once needs confirming
//!   ([`crate::footprint::CONFIRM`]);
//! - when someone asks for the status (so `gpumuxctl status` and the metrics are current).
//!
//! An idle daemon (no registered process) measures nothing unless asked for its status.

use super::{Conn, Daemon, K_FOOTPRINT, watched_timer};
use crate::footprint::{self as fp, Key, OverheadTracker, Registered};
use crate::procfs;
use crate::status::UnmanagedProcess;
use anyhow::Result;
use gpumux_common::accounting;
use gpumux_common::nvml::Nvml;
use gpumux_common::protocol::ServerMsg;
use gpumux_common::sock;
use nix::sys::epoll::Epoll;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerFd, TimerSetTimeFlags};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How often every device is re-measured while tenants have processes.
pub(super) const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);
/// Announcements nobody waits for (module loads) measure a device at most this often.
const MIN_INTERVAL: Duration = Duration::from_millis(20);
/// Announcements queued per device at most, and per connection and device: beyond that an
/// announcement is answered at once without another measurement (the queued ones are measured
/// anyway), so a flooding process neither grows the daemon nor delays other processes.
const MAX_QUEUED: usize = 4096;
const MAX_QUEUED_PER_CONN: usize = 16;

/// A process's announcement, until its device is measured.
struct Request {
    conn: u64,
    tenant: String,
    slot: usize,
    reserved: u64,
    seq: u32,
}

/// The daemon's footprint state.
pub(super) struct Footprints {
    pub(super) timer: TimerFd,
    /// Announcements per device (the daemon's device order).
    requests: Vec<Vec<Request>>,
    tracker: OverheadTracker,
    /// When each device was last measured.
    last: Vec<Option<Instant>>,
    last_reconcile: Option<Instant>,
    /// NVML could not list a device's processes (warned once until it can again).
    failing: Vec<bool>,
    /// Unmanaged processes, all devices, as last measured.
    pub(super) unmanaged: Vec<UnmanagedProcess>,
    /// The last context creation's measured size per device (what shims reserve).
    estimates: Vec<u64>,
}

impl Footprints {
    pub(super) fn new(epoll: &Epoll, devices: usize) -> Result<Self> {
        Ok(Footprints {
            timer: watched_timer(epoll, K_FOOTPRINT)?,
            requests: (0..devices).map(|_| Vec::new()).collect(),
            tracker: OverheadTracker::default(),
            last: vec![None; devices],
            last_reconcile: None,
            failing: vec![false; devices],
            unmanaged: Vec::new(),
            estimates: vec![0; devices],
        })
    }
}

impl Daemon {
    /// A process announced a change of its footprint on `device` (`Footprint`).
    pub(super) fn footprint_request(&mut self, id: u64, device: u32, reserved: u64, seq: u32) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let answer_now = |conn: &Conn| {
            if seq != 0 {
                sock::send(
                    conn.fd.as_fd(),
                    &ServerMsg::Measured { device, seq }.encode(),
                    &[],
                )
                .ok();
            }
        };
        let dev = device as usize;
        let Some(slot) = conn.slot else {
            return answer_now(conn);
        };
        if dev >= self.devices.len()
            || self.fp.requests[dev].len() >= MAX_QUEUED
            || self.fp.requests[dev]
                .iter()
                .filter(|r| r.conn == id)
                .count()
                >= MAX_QUEUED_PER_CONN
        {
            return answer_now(conn);
        }
        let tenant = conn.tenant.clone();
        self.fp.requests[dev].push(Request {
            conn: id,
            tenant,
            slot,
            reserved,
            seq,
        });
    }

    /// Measures the devices that are due (after each pass of the event loop, and when the
    /// footprint timer fires).
    pub(super) fn measure_due(&mut self) {
        let now = Instant::now();
        let reconcile = self.has_processes()
            && self
                .fp
                .last_reconcile
                .is_none_or(|l| now.duration_since(l) >= RECONCILE_INTERVAL);
        for dev in 0..self.devices.len() {
            let requests = &self.fp.requests[dev];
            let asked = !requests.is_empty()
                && (requests.iter().any(|r| r.seq != 0)
                    || self.fp.last[dev].is_none_or(|l| now.duration_since(l) >= MIN_INTERVAL));
            let recheck = self.fp.tracker.recheck_at(dev).is_some_and(|t| t <= now);
            if reconcile || asked || recheck {
                self.measure(dev, now);
            }
        }
        if reconcile {
            self.fp.last_reconcile = Some(now);
        }
    }

    /// Measures every device now (before a status report).
    pub(super) fn measure_all(&mut self) {
        let now = Instant::now();
        for dev in 0..self.devices.len() {
            self.measure(dev, now);
        }
    }

    fn has_processes(&self) -> bool {
        self.tenants
            .values()
            .any(|t| !t.processes.is_empty() || !t.orphans.is_empty())
    }

    /// Arms the footprint timer for the next measurement due, or disarms it.
    pub(super) fn rearm_footprint_timer(&mut self) {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for dev in 0..self.devices.len() {
            if !self.fp.requests[dev].is_empty() {
                consider(self.fp.last[dev].map_or(now, |l| l + MIN_INTERVAL));
            }
            if let Some(t) = self.fp.tracker.recheck_at(dev) {
                consider(t);
            }
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

    /// Publishes the context-size estimates to a (new) tenant's control segment.
    pub(super) fn publish_estimates(&self, tenant: &str) {
        if let Some(t) = self.tenants.get(tenant) {
            for (dev, &e) in self.fp.estimates.iter().enumerate() {
                t.segments.control.devices[dev]
                    .context_overhead
                    .store(e, Relaxed);
            }
        }
    }

    /// One NVML reading of device `dev`: records registered processes' overhead, settles the
    /// announcers' reservations, learns the size of a context, lists unmanaged processes, and
    /// answers whoever waits.
    fn measure(&mut self, dev: usize, now: Instant) {
        let requests = std::mem::take(&mut self.fp.requests[dev]);
        self.fp.last[dev] = Some(now);
        let index = self.devices[dev].index;
        match Nvml.running_processes(index) {
            Ok(listing) => {
                if self.fp.failing[dev] {
                    tracing::info!(device = index, "NVML lists the device's processes again");
                    self.fp.failing[dev] = false;
                }
                self.apply_reading(dev, &listing, &requests, now);
            }
            Err(e) => {
                // Nothing to confirm against until NVML answers again (and no re-reading
                // every millisecond meanwhile).
                self.fp.tracker.retain(|k| k.device != dev);
                if !self.fp.failing[dev] {
                    tracing::warn!(
                        device = index,
                        "cannot read the processes' memory from NVML ({e}); contexts and modules are not charged to tenants until it can"
                    );
                    self.fp.failing[dev] = true;
                }
            }
        }
        for r in requests.iter().filter(|r| r.seq != 0) {
            if let Some(c) = self.conns.get(&r.conn) {
                let msg = ServerMsg::Measured {
                    device: dev as u32,
                    seq: r.seq,
                };
                sock::send(c.fd.as_fd(), &msg.encode(), &[]).ok();
            }
        }
    }

    fn apply_reading(
        &mut self,
        dev: usize,
        listing: &[gpumux_common::nvml::ProcessMemory],
        requests: &[Request],
        now: Instant,
    ) {
        let mut registered = Vec::new();
        for (name, t) in &self.tenants {
            let acct = &t.segments.accounting;
            for &slot in t.processes.keys().chain(t.orphans.keys()) {
                let pid = acct.processes[slot].pid.load(Relaxed);
                if pid != 0 {
                    registered.push(Registered {
                        tenant: name.clone(),
                        slot,
                        pid,
                        allocated: acct.processes[slot].used[dev].load(Relaxed),
                    });
                }
            }
        }
        let reading = fp::read(listing, &registered);
        let mut learned = None;
        for &(i, measured) in &reading.overheads {
            let r = &registered[i];
            let Some(t) = self.tenants.get(&r.tenant) else {
                continue;
            };
            let acct = &t.segments.accounting;
            let current = acct.processes[r.slot].overhead[dev].load(Relaxed);
            let mine: Vec<&Request> = requests
                .iter()
                .filter(|q| q.tenant == r.tenant && q.slot == r.slot)
                .collect();
            let settle = mine.iter().fold(0u64, |a, q| a.saturating_add(q.reserved));
            // Only a context creation waits for the answer.
            let created = mine.iter().any(|q| q.seq != 0);
            let key = Key {
                tenant: r.tenant.clone(),
                slot: r.slot,
                pid: r.pid,
                device: dev,
            };
            let new = self
                .fp
                .tracker
                .observe(key, current, measured, !mine.is_empty(), now);
            if new.is_none() && settle == 0 {
                continue;
            }
            let value = new.unwrap_or(current);
            match accounting::set_overhead(acct, r.slot, dev, value, settle) {
                Ok(old) => {
                    if created && value > old {
                        learned = Some(value - old);
                    }
                    if value != old {
                        tracing::debug!(tenant = %r.tenant, pid = r.pid, device = self.devices[dev].index, overhead = value, "process footprint beyond its allocations");
                    }
                }
                // A tenant process holds its lock: the next measurement records it (the
                // daemon never waits on a lock a tenant can hold).
                Err(accounting::ChargeError::Lock(gpumux_common::shm_mutex::LockError::Busy)) => {
                    tracing::debug!(tenant = %r.tenant, pid = r.pid, "overhead not recorded now: the tenant holds its lock");
                }
                Err(e) => {
                    tracing::warn!(tenant = %r.tenant, pid = r.pid, "cannot record the process's overhead now: {e}");
                }
            }
        }
        if let Some(bytes) = learned {
            self.fp.estimates[dev] = bytes;
            for t in self.tenants.values() {
                t.segments.control.devices[dev]
                    .context_overhead
                    .store(bytes, Relaxed);
            }
        }
        // Pending changes of processes this reading did not see (gone, or no figure from
        // NVML) are dropped: nothing would confirm them.
        self.fp.tracker.retain(|k| {
            k.device != dev
                || reading.overheads.iter().any(|&(i, _)| {
                    let r = &registered[i];
                    r.tenant == k.tenant && r.slot == k.slot && r.pid == k.pid
                })
        });
        self.record_unmanaged(dev, &reading.unmanaged, &registered);
    }

    fn record_unmanaged(&mut self, dev: usize, found: &[(u32, u64)], registered: &[Registered]) {
        let index = self.devices[dev].index;
        let before: Vec<u32> = self
            .fp
            .unmanaged
            .iter()
            .filter(|u| u.device == index)
            .map(|u| u.pid)
            .collect();
        self.fp.unmanaged.retain(|u| u.device != index);
        if found.is_empty() {
            return;
        }
        // Only read when someone is unmanaged: one small /proc read per registered process.
        let cgroups: Vec<(&str, Option<String>)> = registered
            .iter()
            .map(|r| (r.tenant.as_str(), procfs::cgroup(r.pid)))
            .collect();
        for &(pid, memory) in found {
            let tenant = fp::attribute(
                procfs::cgroup(pid).as_deref(),
                cgroups.iter().map(|(t, c)| (*t, c.as_deref())),
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
}
