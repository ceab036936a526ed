//! A tenant's footprint beyond its allocations, from what NVML reports (pure logic; the
//! daemon's `server::footprint` runs it).
//!
//! NVML's `usedGpuMemory` of a process is everything it holds on the device: its allocations,
//! and what no allocation call returns (its contexts, loaded modules, the libraries'
//! workspaces). A registered process's *overhead* is that figure minus the allocations its
//! accounting slot records. A process on the GPU that is registered with no tenant is
//! *unmanaged*.
//!
//! A single reading can be off for a moment: between the shim charging an allocation and the
//! driver making it (or the driver freeing and the shim giving back) the slot and NVML
//! disagree, and an asynchronous free is given back before the stream frees it. So the
//! [`OverheadTracker`] applies a change only when two readings at least [`CONFIRM`] apart agree
//! — except an increase the process announced itself (it just created a context or loaded a
//! module), which is applied at once so the tenant is never told of memory it does not have.
//!
//! What a context takes is learned per tenant ([`ContextSizes`]): the growth of a process that
//! announced a context creation and nothing else since its previous reading, measured against
//! the overhead last applied for it (the daemon's own record, never the tenant-writable
//! segment; growth a reading saw before the announcement arrived is not applied unconfirmed,
//! so the announced reading still measures the whole context). The
//! estimate a tenant's processes reserve before creating a context is the smallest of its
//! recent ones, so a creation that happened to measure other growth too (a library loaded into
//! the new context) does not make the tenant's next contexts look bigger than they are; and a
//! tenant teaches only its own estimate.

use gpumux_common::nvml::ProcessMemory;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How far apart two readings must be to confirm a change nobody announced.
pub const CONFIRM: Duration = Duration::from_millis(50);

/// A process registered with a tenant, as the measurement of one device needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub tenant: String,
    pub slot: usize,
    pub pid: u32,
    /// Bytes of allocations the process's slot records on the device.
    pub allocated: u64,
}

/// What one NVML listing of a device says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// `(index into the registered list, overhead)`; a registered process NVML does not list
    /// holds no context there (overhead 0). Processes NVML lists without a figure are left
    /// out (nothing learned).
    pub overheads: Vec<(usize, u64)>,
    /// Processes on the device that no tenant registered: `(pid, bytes)` (0 when NVML will
    /// not say).
    pub unmanaged: Vec<(u32, u64)>,
}

/// Splits an NVML process listing of one device into registered processes' overhead and
/// unmanaged processes.
pub fn read(nvml: &[ProcessMemory], registered: &[Registered]) -> Reading {
    let mut out = Reading::default();
    for (i, r) in registered.iter().enumerate() {
        match nvml.iter().find(|p| p.pid == r.pid) {
            Some(ProcessMemory {
                used_bytes: Some(used),
                ..
            }) => out.overheads.push((i, used.saturating_sub(r.allocated))),
            Some(_) => {}
            None => out.overheads.push((i, 0)),
        }
    }
    for p in nvml {
        if p.pid != 0 && !registered.iter().any(|r| r.pid == p.pid) {
            out.unmanaged.push((p.pid, p.used_bytes.unwrap_or(0)));
        }
    }
    out.unmanaged.sort_unstable();
    out.unmanaged.dedup_by_key(|u| u.0);
    out
}

/// Identifies one process's overhead on one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub tenant: String,
    pub slot: usize,
    pub pid: u32,
    pub device: usize,
}

/// Changes seen once and waiting for a second reading.
#[derive(Debug, Default)]
pub struct OverheadTracker {
    pending: HashMap<Key, (Instant, u64)>,
}

impl OverheadTracker {
    /// A reading `measured` of `key`, whose recorded overhead is `current`. `announced`: the
    /// process asked for this measurement after an event that grows its footprint. Returns the
    /// overhead to record, if it changes.
    pub fn observe(
        &mut self,
        key: Key,
        current: u64,
        measured: u64,
        announced: bool,
        now: Instant,
    ) -> Option<u64> {
        if measured == current {
            self.pending.remove(&key);
            return None;
        }
        let up = measured > current;
        if announced && up {
            self.pending.remove(&key);
            return Some(measured);
        }
        match self.pending.get_mut(&key) {
            Some((since, value)) if (*value > current) == up => {
                // Keep the smaller change of the two readings: the other may be a moment's.
                let agreed = if up {
                    (*value).min(measured)
                } else {
                    (*value).max(measured)
                };
                if now.duration_since(*since) >= CONFIRM {
                    self.pending.remove(&key);
                    Some(agreed)
                } else {
                    *value = agreed;
                    None
                }
            }
            _ => {
                self.pending.insert(key, (now, measured));
                None
            }
        }
    }

    /// When a second reading can confirm a pending change on `device`, if any is pending.
    pub fn recheck_at(&self, device: usize) -> Option<Instant> {
        self.pending
            .iter()
            .filter(|(k, _)| k.device == device)
            .map(|(_, (since, _))| *since + CONFIRM)
            .min()
    }

    /// Forgets the processes for which `live` is false (gone, or no longer on the device).
    pub fn retain(&mut self, mut live: impl FnMut(&Key) -> bool) {
        self.pending.retain(|k, _| live(k));
    }
}

/// A tenant's recent context sizes on one device.
#[derive(Debug, Default, Clone)]
pub struct ContextSizes {
    recent: VecDeque<u64>,
}

impl ContextSizes {
    /// How many recent sizes are kept.
    pub const KEPT: usize = 8;

    /// Records the growth one context creation measured; returns the new estimate.
    pub fn learn(&mut self, growth: u64) -> u64 {
        if growth > 0 {
            if self.recent.len() == Self::KEPT {
                self.recent.pop_front();
            }
            self.recent.push_back(growth);
        }
        self.estimate()
    }

    /// What a context of the tenant is expected to take: the smallest recent size (0 before
    /// any was measured).
    pub fn estimate(&self) -> u64 {
        self.recent.iter().copied().min().unwrap_or(0)
    }
}

/// The tenant an unmanaged process most likely belongs to: the one tenant whose registered
/// processes share its cgroup. `None` when its cgroup is unknown or the root, or when no
/// tenant or several share it.
pub fn attribute<'a>(
    cgroup: Option<&str>,
    tenants: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Option<String> {
    let cgroup = cgroup.filter(|c| !is_root_cgroup(c))?;
    let mut found: Option<&str> = None;
    for (tenant, theirs) in tenants {
        if theirs == Some(cgroup) {
            match found {
                Some(f) if f != tenant => return None,
                _ => found = Some(tenant),
            }
        }
    }
    found.map(str::to_string)
}

/// Whether a `/proc/PID/cgroup` text places the process at the root of every hierarchy (no
/// container: sharing it says nothing).
pub fn is_root_cgroup(text: &str) -> bool {
    text.lines().filter(|l| !l.trim().is_empty()).all(|l| {
        l.rsplit_once(':')
            .is_some_and(|(_, path)| path.trim() == "/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(tenant: &str, slot: usize, pid: u32, allocated: u64) -> Registered {
        Registered {
            tenant: tenant.into(),
            slot,
            pid,
            allocated,
        }
    }

    fn pm(pid: u32, used: Option<u64>) -> ProcessMemory {
        ProcessMemory {
            pid,
            used_bytes: used,
        }
    }

    #[test]
    fn reading_splits_overhead_and_unmanaged() {
        let registered = [
            reg("a", 0, 10, 100),
            reg("a", 1, 11, 50),
            reg("b", 0, 20, 0),
            reg("b", 1, 21, 0),
        ];
        let nvml = [
            pm(10, Some(400)),
            pm(11, Some(20)),
            pm(21, None),
            pm(99, Some(3000)),
            pm(98, None),
        ];
        let r = read(&nvml, &registered);
        // 10: 400 - 100; 11: less than its allocations (one in flight) → 0; 20 has no
        // context → 0; 21: NVML will not say → nothing learned.
        assert_eq!(r.overheads, vec![(0, 300), (1, 0), (2, 0)]);
        assert_eq!(r.unmanaged, vec![(98, 0), (99, 3000)]);
    }

    fn key(device: usize) -> Key {
        Key {
            tenant: "t".into(),
            slot: 1,
            pid: 5,
            device,
        }
    }

    #[test]
    fn announced_growth_applies_at_once_other_changes_need_confirming() {
        let t0 = Instant::now();
        let mut tr = OverheadTracker::default();
        assert_eq!(tr.observe(key(0), 0, 300, true, t0), Some(300));
        assert_eq!(tr.observe(key(0), 300, 300, false, t0), None);
        // A dip (an allocation in flight) is not applied...
        assert_eq!(tr.observe(key(0), 300, 100, false, t0), None);
        assert_eq!(tr.recheck_at(0), Some(t0 + CONFIRM));
        assert_eq!(tr.recheck_at(1), None);
        // ...and a reading back at the recorded value drops it.
        assert_eq!(tr.observe(key(0), 300, 300, false, t0 + CONFIRM), None);
        assert_eq!(tr.recheck_at(0), None);
        // A lasting decrease is applied once confirmed, at the less extreme of the readings.
        assert_eq!(tr.observe(key(0), 300, 0, true, t0), None);
        assert_eq!(tr.observe(key(0), 300, 10, false, t0 + CONFIRM / 2), None);
        assert_eq!(tr.observe(key(0), 300, 0, false, t0 + CONFIRM), Some(10));
        // Unannounced growth (lazy loading) also needs two readings.
        assert_eq!(tr.observe(key(0), 10, 500, false, t0), None);
        assert_eq!(tr.observe(key(0), 10, 400, false, t0 + CONFIRM), Some(400));
        // A reading in the other direction restarts the wait.
        assert_eq!(tr.observe(key(0), 400, 900, false, t0), None);
        assert_eq!(tr.observe(key(0), 400, 100, false, t0 + CONFIRM), None);
        assert_eq!(
            tr.observe(key(0), 400, 100, false, t0 + CONFIRM * 2),
            Some(100)
        );
        tr.observe(key(1), 0, 7, false, t0);
        tr.retain(|k| k.device != 1);
        assert_eq!(tr.recheck_at(1), None);
    }

    #[test]
    fn context_estimate_is_the_smallest_recent_size() {
        let mut c = ContextSizes::default();
        assert_eq!(c.estimate(), 0);
        assert_eq!(c.learn(300), 300);
        // A creation that also measured a 2 GiB library loaded into the new context.
        assert_eq!(c.learn(300 + 2048), 300);
        assert_eq!(c.learn(0), 300, "nothing measured: nothing learned");
        // Contexts got bigger for good: the estimate follows once the small ones are old.
        for _ in 0..ContextSizes::KEPT - 2 {
            c.learn(500);
        }
        assert_eq!(c.estimate(), 300);
        assert_eq!(c.learn(500), 500);
    }

    #[test]
    fn attribution_needs_exactly_one_tenant_in_a_non_root_cgroup() {
        let pod = "0::/kubepods/pod1/ctr\n";
        let other = "0::/kubepods/pod2/ctr\n";
        let tenants = [("a", Some(pod)), ("a", Some(pod)), ("b", Some(other))];
        assert_eq!(attribute(Some(pod), tenants), Some("a".into()));
        assert_eq!(attribute(Some("0::/x\n"), tenants), None);
        assert_eq!(attribute(None, tenants), None);
        let shared = [("a", Some(pod)), ("b", Some(pod))];
        assert_eq!(attribute(Some(pod), shared), None);
        let root = "1:cpu:/\n0::/\n";
        assert!(is_root_cgroup(root));
        assert!(!is_root_cgroup("4:memory:/docker/x\n0::/\n"));
        assert_eq!(attribute(Some(root), [("a", Some(root))]), None);
    }
}
