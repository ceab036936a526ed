//! The status report `gpumuxctl status` and the metrics show, built from the daemon's state.
//! Counters read from a tenant's accounting segment are tenant-written: summed saturating.

use super::{Daemon, Tenant};
use crate::status::{DeviceStatus, StatusReport, TenantDeviceStatus, TenantStatus};
use gpumux_common::names::tenant_socket;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Daemon {
    /// The report `gpumuxctl status` prints.
    pub fn status(&self) -> StatusReport {
        let now = Instant::now();
        let mut config_errors: Vec<String> =
            self.config_errors.values().map(|e| e.to_string()).collect();
        config_errors.extend(self.pending.values().map(|p| p.error.clone()));
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
                .zip(&self.scheds)
                .map(|(d, s)| DeviceStatus {
                    index: d.index,
                    uuid: d.uuid.clone(),
                    name: d.name.clone(),
                    total_bytes: d.total_bytes,
                    host_latency_us: s.sched.host_latency().as_micros() as u64,
                })
                .collect(),
            tenants: self
                .tenants
                .values()
                .map(|t| self.tenant_status(t, now))
                .collect(),
            config_errors,
            unmanaged: self.fp.unmanaged.clone(),
        }
    }

    fn tenant_status(&self, t: &Tenant, now: Instant) -> TenantStatus {
        let c = &t.segments.control;
        let a = &t.segments.accounting;
        let devices = self
            .devices
            .iter()
            .enumerate()
            .filter(|(i, _)| c.devices[*i].allowed.load(Relaxed) != 0 || t.removed)
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
                    .fold(0u64, u64::saturating_add),
                device_time_share: self.scheds[i]
                    .sched
                    .recent_shares(now)
                    .get(&t.quota.name)
                    .copied(),
                device_time_ns: self.scheds[i].sched.charged_ns(&t.quota.name),
                slice_wait_ns: a.devices[i].wait_ns.load(Relaxed),
                preemptions: self.scheds[i].sched.preemptions(&t.quota.name),
                queue_budget_us: c.devices[i].queue_budget_us.load(Relaxed),
                hint_yields: self.scheds[i].sched.hint_yields(&t.quota.name),
                waits: self.tenant_waits(&t.quota.name, i),
            })
            .collect();
        TenantStatus {
            name: t.quota.name.clone(),
            weight: if t.removed { 1 } else { t.quota.weight },
            compute_limit_percent: if t.removed {
                None
            } else {
                t.quota.compute_limit_permille.map(|p| f64::from(p) / 10.0)
            },
            processes: t
                .processes
                .values()
                .map(|p| p.pid)
                .chain(t.orphans.values().map(|(p, _)| p.pid))
                .collect(),
            socket: tenant_socket(&self.cfg.state_dir, &t.quota.name)
                .display()
                .to_string(),
            devices,
            removed: t.removed,
            accounting_repairs: t.repairs,
            priority: t.quota.priority,
            owner: t.quota.owner.clone(),
            process_details: self.process_details(t, now),
        }
    }
}
