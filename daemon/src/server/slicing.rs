//! Glue between the per-device schedulers ([`crate::scheduler`]) and the tenants: which devices
//! are time-sliced, with which classes, what the schedulers observe, carrying out grants and
//! revocations, and the control-segment words that follow from them: the bound on a
//! lower-class tenant's queued work (`queue_budget_us`) and a contended latency holder's
//! `yield_hint`.
//!
//! A removed tenant whose processes still run stays scheduled at weight 1, without a cap, in
//! the `normal` class: its processes are never un-gated.

use super::{
    Daemon, Drain, RUNNABLE_PROBE_EVERY, RUNNABLE_THREADS_PER_PROBE, RUNNABLE_THREADS_PER_PROCESS,
    Tenant, arm,
};
use crate::procfs;
use crate::scheduler::{Action, Activity, Priority, Scheduler};
use gpumux_common::config::MAX_DRAIN_BUDGET_US;
use gpumux_common::futex;
use gpumux_common::protocol::ServerMsg;
use gpumux_common::shm::SLICE_GRANTED;
use gpumux_common::sock;
use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

/// Whether a tenant takes part in time-slicing, and with which weight and cap.
fn slicing_terms(t: &Tenant) -> Option<(u32, Option<u32>)> {
    if !t.removed {
        Some((t.quota.weight, t.quota.compute_limit_permille))
    } else if !t.processes.is_empty() || !t.orphans.is_empty() {
        Some((1, None))
    } else {
        None
    }
}

/// The class a tenant is scheduled in: its quota's, or `normal` once removed.
fn slicing_class(t: &Tenant) -> Priority {
    if t.removed {
        Priority::Normal
    } else {
        t.quota.priority
    }
}

impl Daemon {
    /// Brings every device's scheduler in line with the tenants: who may use the device, with
    /// which weight and cap; a device is time-sliced when two or more tenants share it or a
    /// tenant on it is capped.
    pub(super) fn update_scheduling(&mut self) {
        let now = Instant::now();
        for dev in 0..self.devices.len() {
            let d = &self.devices[dev];
            let users: Vec<(&Tenant, u32, Option<u32>)> = self
                .tenants
                .values()
                .filter(|t| t.quota.allows(d.index, &d.uuid))
                .filter_map(|t| slicing_terms(t).map(|(w, c)| (t, w, c)))
                .collect();
            let scheduled =
                users.len() >= 2 || users.iter().any(|(_, _, c)| c.is_some_and(|c| c < 1000));
            for t in self.tenants.values() {
                let on = scheduled && users.iter().any(|(u, _, _)| u.quota.name == t.quota.name);
                t.segments.control.devices[dev]
                    .scheduled
                    .store(u32::from(on), SeqCst);
                if !on {
                    // Its waiting threads pass now: their waits end without a grant.
                    self.waits.cancel(&t.quota.name, dev);
                }
            }
            let names: Vec<(String, u32, Option<u32>)> = users
                .iter()
                .map(|(t, w, c)| (t.quota.name.clone(), *w, *c))
                .collect();
            let mut actions = Vec::new();
            let tenants = &self.tenants;
            let holder = self.scheds[dev].sched.granted().map(|(h, _)| h.to_string());
            let act = |n: &str| Self::activity(tenants, dev, n, holder.as_deref());
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
                if let Some(t) = tenants.get(&n) {
                    s.set_priority(&n, slicing_class(t));
                }
            }
            self.apply_actions(dev, actions);
        }
        self.update_bounds();
    }

    /// Bounds each process's queued work on the devices where its tenant shares the device with
    /// a higher class: `drain_budget_us` (scaled up while a busy host runs the tenant too late
    /// to keep the device fed from it: [`Scheduler::queue_scale`]) divided among the tenant's
    /// processes (at least 100 µs each), so that a revocation for the higher class drains
    /// within about the budget (plus the kernel running). Elsewhere 0: unbounded, and the shim
    /// pays nothing for it. Follows quota changes, processes coming and going, and the scale.
    pub(super) fn update_bounds(&self) {
        for (dev, d) in self.devices.iter().enumerate() {
            let users: Vec<&Tenant> = self
                .tenants
                .values()
                .filter(|t| t.quota.allows(d.index, &d.uuid) && slicing_terms(t).is_some())
                .collect();
            let top = users
                .iter()
                .map(|t| slicing_class(t).precedence())
                .max()
                .unwrap_or(0);
            for t in self.tenants.values() {
                let ctl = &t.segments.control.devices[dev];
                let bounded = ctl.scheduled.load(SeqCst) != 0
                    && users.iter().any(|u| u.quota.name == t.quota.name)
                    && slicing_class(t).precedence() < top;
                let budget = if bounded {
                    let scale = self.scheds[dev].sched.queue_scale(&t.quota.name);
                    let budget = (self.cfg.drain_budget_us as f64 * scale)
                        .min(MAX_DRAIN_BUDGET_US as f64) as u32;
                    (budget / t.processes.len().max(1) as u32).max(100)
                } else {
                    0
                };
                ctl.queue_budget_us.store(budget, SeqCst);
            }
        }
    }

    /// Sets `yield_hint` for device `dev`'s holder when it is a latency-class tenant that others
    /// wait for (and clears it for the one that had it), so its processes tell the daemon when
    /// their work is done.
    fn update_yield_hint(&mut self, dev: usize) {
        let now = self.scheds[dev]
            .sched
            .contended_holder()
            .filter(|(_, class)| *class == Priority::Latency)
            .map(|(n, _)| n.to_string());
        if now == self.scheds[dev].hinted {
            return;
        }
        if let Some(t) = self.scheds[dev]
            .hinted
            .as_ref()
            .and_then(|n| self.tenants.get(n))
        {
            t.segments.control.devices[dev].yield_hint.store(0, SeqCst);
        }
        if let Some(t) = now.as_ref().and_then(|n| self.tenants.get(n)) {
            t.segments.control.devices[dev].yield_hint.store(1, SeqCst);
        }
        self.scheds[dev].hinted = now;
    }

    /// A process of `tenant` says its work on `dev` is done (`ClientMsg::Idle`): the scheduler
    /// passes the device on if the tenant is a contended latency-class holder with nothing
    /// left, judged by whether the process launched anything since (`launches` is its count
    /// when it said so). From any other tenant (whose processes have no hint to answer) it
    /// costs a comparison.
    pub(super) fn idle_hint(&mut self, dev: usize, tenant: &str, slot: usize, launches: u64) {
        if self.scheds[dev].hinted.as_deref() != Some(tenant) {
            return;
        }
        let quiet = self.tenants.get(tenant).is_some_and(|t| {
            t.segments.accounting.processes[slot].launches[dev].load(Relaxed) == launches
        });
        self.sched_event(dev, |s, now, act| s.idle_hint(tenant, quiet, now, act));
    }

    /// What the scheduler may observe of a tenant on device `dev`; whether a thread of it is
    /// runnable is looked up (in /proc) only for the `holder`, and only when no thread of it
    /// waits at the gate or in a synchronize.
    pub(super) fn activity(
        tenants: &BTreeMap<String, Tenant>,
        dev: usize,
        name: &str,
        holder: Option<&str>,
    ) -> Activity {
        let Some(t) = tenants.get(name) else {
            return Activity::default();
        };
        let a = &t.segments.accounting;
        // Tenant-written counters: read as untrusted (wrapping sums, no overflow).
        let responsive = t.processes.keys().any(|s| !t.stalled.contains(s));
        let mut activity = Activity {
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
            runnable: false,
            bound_dry: a.devices[dev].bound_dry.load(Relaxed),
        };
        if holder == Some(name) && activity.waiting == 0 && activity.syncing == 0 {
            activity.runnable = Self::probe_runnable(t);
        }
        activity
    }

    /// Whether a thread of `t`'s (responsive) processes is runnable, read from /proc at most
    /// every [`RUNNABLE_PROBE_EVERY`] and over at most about [`RUNNABLE_THREADS_PER_PROBE`]
    /// threads, whatever the tenant's processes and threads number.
    fn probe_runnable(t: &Tenant) -> bool {
        let now = Instant::now();
        if let Some((at, runnable)) = t.runnable_probe.get()
            && now.saturating_duration_since(at) < RUNNABLE_PROBE_EVERY
        {
            return runnable;
        }
        let live: Vec<u32> = t
            .processes
            .iter()
            .filter(|(s, _)| !t.stalled.contains(s))
            .map(|(_, p)| p.pid)
            .collect();
        let per_process =
            (RUNNABLE_THREADS_PER_PROBE / live.len().max(1)).max(RUNNABLE_THREADS_PER_PROCESS);
        let runnable = live
            .iter()
            .take(RUNNABLE_THREADS_PER_PROBE / RUNNABLE_THREADS_PER_PROCESS)
            .any(|&pid| procfs::thread_runnable(pid, per_process));
        t.runnable_probe.set(Some((now, runnable)));
        runnable
    }

    /// Runs one scheduler operation on device `dev` and carries out its actions.
    pub(super) fn sched_event(
        &mut self,
        dev: usize,
        op: impl FnOnce(&mut Scheduler, Instant, &dyn Fn(&str) -> Activity) -> Vec<Action>,
    ) {
        let now = Instant::now();
        let tenants = &self.tenants;
        let holder = self.scheds[dev].sched.granted().map(|(h, _)| h.to_string());
        let act = |n: &str| Self::activity(tenants, dev, n, holder.as_deref());
        let scales = self.scheds[dev].sched.scale_generation();
        let actions = op(&mut self.scheds[dev].sched, now, &act);
        self.apply_actions(dev, actions);
        if self.scheds[dev].sched.scale_generation() != scales {
            self.update_bounds();
        }
    }

    pub(super) fn apply_actions(&mut self, dev: usize, actions: Vec<Action>) {
        self.carry_out(dev, actions);
        self.update_yield_hint(dev);
    }

    fn carry_out(&mut self, dev: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Grant { tenant, epoch } => {
                    self.waits.granted(&tenant, dev, Instant::now());
                    if let Some(t) = self.tenants.get(&tenant) {
                        let word = &t.segments.control.devices[dev].slice;
                        word.store((epoch << 1) | SLICE_GRANTED, SeqCst);
                        futex::wake(word, u32::MAX);
                        tracing::trace!(tenant, dev, epoch, "slice granted");
                    }
                    // A grant while a drain is pending means the drain timed out.
                    if let Some(Drain {
                        tenant: late_tenant,
                        pending,
                        ..
                    }) = self.scheds[dev].draining.take()
                    {
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
                        };
                        for (id, c) in &self.conns {
                            let responsive = c.slot.is_some_and(|s| !t.stalled.contains(&s));
                            // In the protocol version the process speaks.
                            if c.tenant == tenant
                                && responsive
                                && sock::send(c.fd.as_fd(), &msg.encode_for(c.version), &[]).is_ok()
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
                        self.sched_event(dev, |s, now, act| {
                            s.drained(&tenant, epoch, None, now, act)
                        });
                    } else {
                        let measurable = self.scheds[dev].unmeasurable != Some(epoch);
                        self.scheds[dev].draining = Some(Drain {
                            tenant,
                            epoch,
                            pending,
                            busy_ns: measurable.then_some(0),
                        });
                    }
                }
            }
        }
    }

    /// A connection acknowledged (or can no longer acknowledge: `epoch` None) a revocation on
    /// `dev`, with the device time its process measured (`busy_ns`). When the last one did, the
    /// slice ends, charged with their sum (or its wall time when one could not say). Device
    /// time is measured per process: the sum over a tenant's processes whose kernels ran
    /// interleaved counts the overlap more than once, so the scheduler never charges more than
    /// the slice's wall time.
    pub(super) fn acknowledge(
        &mut self,
        dev: usize,
        conn: u64,
        epoch: Option<u32>,
        busy_ns: Option<u64>,
    ) {
        let Some(d) = &mut self.scheds[dev].draining else {
            return;
        };
        if epoch.is_some_and(|x| x != d.epoch) || !d.pending.remove(&conn) {
            return;
        }
        d.busy_ns = d.busy_ns.zip(busy_ns).map(|(a, b)| a.saturating_add(b));
        if !d.pending.is_empty() {
            return;
        }
        let Some(Drain {
            tenant,
            epoch,
            busy_ns,
            ..
        }) = self.scheds[dev].draining.take()
        else {
            return;
        };
        tracing::trace!(tenant, dev, epoch, ?busy_ns, "slice drained");
        let device_time = busy_ns.map(Duration::from_nanos);
        self.sched_event(dev, |s, now, act| {
            s.drained(&tenant, epoch, device_time, now, act)
        });
    }

    pub(super) fn rearm_sched_timer(&mut self) {
        let next = self
            .scheds
            .iter()
            .filter_map(|s| s.sched.next_deadline())
            .min();
        match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                arm(
                    &self.lp.sched_timer,
                    wait.max(Duration::from_micros(50)),
                    "scheduling",
                );
            }
            None => {
                if let Err(e) = self.lp.sched_timer.unset() {
                    tracing::error!("cannot disarm the scheduling timer: {e}");
                }
            }
        }
    }
}
