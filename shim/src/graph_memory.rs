//! Graph memory (the allocation nodes of CUDA graphs) as the tenant is charged for it.
//!
//! The driver commits physical memory for graph allocations when an executable graph is
//! launched or uploaded, never at instantiation (the stream it will run in is unknown then),
//! takes it from a per-device graph memory pool that keeps it after the graph is destroyed, and
//! returns it to the device only on `cuDeviceGraphMemTrim`. So the shim charges an executable
//! graph's allocation bytes before its first launch or upload (over the quota: the launch fails
//! with `CUDA_ERROR_OUT_OF_MEMORY`, nothing charged, the driver never called); the graph is then
//! *warm* and its replays charge nothing. After a trim (the application's, or the shim's own when
//! an executable graph with graph memory is destroyed) the charge becomes what the driver still
//! holds (`CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`) and every graph of the device is cold again:
//! its next launch is charged again, as the driver maps memory again.
//!
//! The charge is never below what the driver holds: it is at least the sum of the warm graphs'
//! allocations, the most the driver can have mapped for them.
//!
//! [`Table`] is the pure bookkeeping (unit-tested); [`TABLE`] is the process's, reset in a forked
//! child.

use gpumux_common::shm::MAX_DEVICES;
use std::collections::HashMap;

/// Graph memory of an executable graph on one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// CUDA ordinal (for driver calls).
    pub(crate) ordinal: i32,
    /// Segment device index.
    pub(crate) device: usize,
    /// Bytes of its allocation nodes on that device.
    pub(crate) bytes: u64,
}

/// An executable graph with graph memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exec {
    /// The context it was instantiated in.
    pub(crate) context: u64,
    /// Its graph memory, per device.
    pub(crate) parts: Vec<Part>,
    /// Charged: launched or uploaded since the device's graph memory was last trimmed.
    pub(crate) warm: bool,
}

/// The process's executable graphs with graph memory and what their devices' pools are charged.
#[derive(Default, Debug)]
pub(crate) struct Table {
    execs: HashMap<u64, Exec>,
    /// Charged per device for graph memory.
    charged: [u64; MAX_DEVICES],
}

impl Table {
    /// Records a new executable graph (nothing to record without graph memory).
    pub(crate) fn insert(&mut self, exec: u64, context: u64, parts: Vec<Part>) {
        if !parts.is_empty() {
            self.execs.insert(
                exec,
                Exec {
                    context,
                    parts,
                    warm: false,
                },
            );
        }
    }

    /// The record of an executable graph with graph memory.
    pub(crate) fn get(&self, exec: u64) -> Option<&Exec> {
        self.execs.get(&exec)
    }

    /// Charged per device.
    #[cfg(test)]
    pub(crate) fn charged(&self, device: usize) -> u64 {
        self.charged.get(device).copied().unwrap_or(0)
    }

    /// A cold graph's parts were charged and it launched: it is warm.
    pub(crate) fn warmed(&mut self, exec: u64) {
        if let Some(e) = self.execs.get_mut(&exec)
            && !e.warm
        {
            e.warm = true;
            for p in &e.parts {
                self.charged[p.device] += p.bytes;
            }
        }
    }

    /// Forgets a destroyed executable graph; returns its record (its charge stays until the
    /// driver's pool is trimmed).
    pub(crate) fn remove(&mut self, exec: u64) -> Option<Exec> {
        self.execs.remove(&exec)
    }

    /// Forgets the executable graphs of a destroyed context; returns the `(ordinal, device)`
    /// pairs whose pools must be reconciled.
    pub(crate) fn remove_context(&mut self, context: u64) -> Vec<(i32, usize)> {
        let gone: Vec<u64> = self
            .execs
            .iter()
            .filter(|(_, e)| e.context == context)
            .map(|(h, _)| *h)
            .collect();
        let mut devices = Vec::new();
        for h in gone {
            for p in self.execs.remove(&h).map(|e| e.parts).unwrap_or_default() {
                if !devices.contains(&(p.ordinal, p.device)) {
                    devices.push((p.ordinal, p.device));
                }
            }
        }
        devices
    }

    /// After a trim: the driver holds `reserved` on `device`. The charge becomes that, and every
    /// graph with memory there is cold. Returns `(to give back, to charge)`.
    pub(crate) fn reconcile(&mut self, device: usize, reserved: u64) -> (u64, u64) {
        let Some(c) = self.charged.get_mut(device) else {
            return (0, 0);
        };
        let old = std::mem::replace(c, reserved);
        for e in self.execs.values_mut() {
            if e.parts.iter().any(|p| p.device == device) {
                e.warm = false;
            }
        }
        (old.saturating_sub(reserved), reserved.saturating_sub(old))
    }
}

/// The process's table and the fork generation it belongs to. Held for writing across the
/// driver calls that change the graph memory pool (a cold launch, a trim, a destroy), for
/// reading across warm launches, so the charge and the driver's pool change together.
pub(crate) static TABLE: parking_lot::RwLock<(u32, Option<Table>)> =
    parking_lot::const_rwlock((0, None));
/// Bumped in a forked child: the parent's graphs are not the child's.
static GENERATION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The table for the current fork generation (emptied when stale).
pub(crate) fn current(slot: &mut (u32, Option<Table>)) -> &mut Table {
    let generation = GENERATION.load(std::sync::atomic::Ordering::Acquire);
    if slot.0 != generation {
        *slot = (generation, None);
    }
    slot.1.get_or_insert_with(Table::default)
}

/// Whether the table (as read) knows `exec` for the current generation, and if it is warm.
pub(crate) fn lookup(slot: &(u32, Option<Table>), exec: u64) -> Option<bool> {
    if slot.0 != GENERATION.load(std::sync::atomic::Ordering::Acquire) {
        return None;
    }
    slot.1.as_ref()?.get(exec).map(|e| e.warm)
}

/// Fork support: hold the table across `fork`.
pub(crate) fn lock_for_fork() {
    std::mem::forget(TABLE.write());
}

/// Fork support: release after `fork`; in the child, orphan the parent's records.
///
/// # Safety
/// Only after [`lock_for_fork`] on this thread (the atfork handlers).
pub(crate) unsafe fn unlock_after_fork(child: bool) {
    if child {
        GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    // SAFETY: `lock_for_fork` write-locked the table on this thread and forgot the guard.
    unsafe { TABLE.force_unlock_write() };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(device: usize, bytes: u64) -> Part {
        Part {
            ordinal: device as i32,
            device,
            bytes,
        }
    }

    #[test]
    fn warm_graphs_are_charged_once_and_trim_reconciles() {
        let mut t = Table::default();
        t.insert(1, 10, vec![part(0, 100)]);
        t.insert(2, 10, vec![part(0, 50), part(1, 7)]);
        t.insert(3, 10, vec![]);
        assert!(t.get(3).is_none(), "no graph memory, nothing recorded");
        assert!(!t.get(1).unwrap().warm);
        t.warmed(1);
        t.warmed(1);
        assert_eq!(t.charged(0), 100, "replays charge nothing more");
        t.warmed(2);
        assert_eq!((t.charged(0), t.charged(1)), (150, 7));
        // Graph 1 destroyed: its charge stays until the pool is trimmed.
        assert!(t.remove(1).is_some());
        assert_eq!(t.charged(0), 150);
        // The trim leaves 50 reserved (graph 2 still running).
        assert_eq!(t.reconcile(0, 50), (100, 0));
        assert_eq!(t.charged(0), 50);
        assert!(
            !t.get(2).unwrap().warm,
            "cold: its next launch is charged again"
        );
        assert_eq!(
            t.reconcile(0, 80),
            (0, 30),
            "the driver holds more: charged up"
        );
        assert_eq!(t.remove_context(10), vec![(0, 0), (1, 1)]);
        assert!(t.get(2).is_none());
        assert_eq!(t.reconcile(MAX_DEVICES, 5), (0, 0), "bad device ignored");
    }
}
