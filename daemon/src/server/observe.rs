//! What the status report says about a tenant's processes and waits (read-only views of the
//! daemon's state for `gpumuxctl status`/`top` and the metrics). Figures read from a tenant's
//! accounting segment are tenant-written: added saturating.

use super::{Daemon, Tenant};
use crate::status::{ProcessDeviceStatus, ProcessState, ProcessStatus};
use crate::waits::TenantWaits;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Daemon {
    /// Every process of `t` (registered, then orphaned) with its use of each device the
    /// tenant may use.
    pub(super) fn process_details(&self, t: &Tenant, now: Instant) -> Vec<ProcessStatus> {
        let conns: HashMap<usize, u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.tenant == t.quota.name)
            .filter_map(|(&id, c)| Some((c.slot?, id)))
            .collect();
        let control = &t.segments.control;
        let acct = &t.segments.accounting;
        let registered = t.processes.iter().map(|(&slot, p)| {
            let state = if t.stalled.contains(&slot) {
                ProcessState::Stalled
            } else {
                ProcessState::Running
            };
            (slot, p.pid, state)
        });
        let orphaned = t
            .orphans
            .iter()
            .map(|(&slot, (p, _))| (slot, p.pid, ProcessState::Orphaned));
        registered
            .chain(orphaned)
            .map(|(slot, pid, state)| {
                let p = &acct.processes[slot];
                let devices = (0..self.devices.len())
                    .filter(|&i| control.devices[i].allowed.load(Relaxed) != 0 || t.removed)
                    .map(|i| {
                        let (waited, waiting) = conns
                            .get(&slot)
                            .map(|&id| self.waits.process(id, i, now))
                            .unwrap_or_default();
                        // Tenant-written figures: added saturating.
                        let overhead = p.overhead[i]
                            .load(Relaxed)
                            .saturating_add(p.reserved[i].load(Relaxed));
                        ProcessDeviceStatus {
                            index: self.devices[i].index,
                            memory_used: p.used[i].load(Relaxed).saturating_add(overhead),
                            memory_overhead: overhead,
                            launches: p.launches[i].load(Relaxed),
                            slice_wait_ns: waited.as_nanos() as u64,
                            waiting,
                        }
                    })
                    .collect();
                ProcessStatus {
                    pid,
                    slot: slot as u32,
                    state,
                    devices,
                }
            })
            .collect()
    }

    /// The wait histograms of tenant `name` on device slot `dev` (empty if it never waited).
    pub(super) fn tenant_waits(&self, name: &str, dev: usize) -> TenantWaits {
        self.waits.tenant(name, dev).cloned().unwrap_or_default()
    }
}
