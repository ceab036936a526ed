//! Tenants from quota files: adding, changing, removing them live; after a daemon restart,
//! adopting their accounting and watching the processes registered with the previous daemon.
//!
//! A tenant's last good quota is kept beside its accounting file, so a file that is malformed
//! when the daemon starts (or gone: the tenant was removed while the daemon was down) leaves
//! running processes under the limits they had. A removed tenant keeps its socket for
//! reattachment and stays gated (weight 1, no new memory) until its last process ends.

use super::endpoint::Endpoint;
use super::{Daemon, EpollEvent, EpollFlags, K_LISTENER, K_PIDFD, Pending, Proc, Tenant};
use crate::procfs;
use crate::segments::{self, TenantSegments};
use anyhow::{Context, Result};
use gpumux_common::accounting;
use gpumux_common::config::{ConfigError, Priority, TenantQuota};
use gpumux_common::names::tenant_of_quota_file;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

/// Quota files that parsed, and the ones rejected.
type Scan = (
    BTreeMap<String, TenantQuota>,
    BTreeMap<PathBuf, ConfigError>,
);

impl Daemon {
    /// Brings tenants in line with the quota files: adds, changes, removes. A malformed file
    /// is reported and its tenant keeps the last good quota.
    pub fn reload_tenants(&mut self) {
        let Some((seen, errors)) = self.scan_tenants_dir() else {
            return;
        };
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
        let gone_pending: Vec<String> = self
            .pending
            .keys()
            .filter(|n| !seen.contains_key(*n))
            .cloned()
            .collect();
        for name in gone_pending {
            self.drop_pending(&name);
        }
        for quota in seen.into_values() {
            self.apply_quota(quota);
        }
        self.update_scheduling();
    }

    /// Reads every quota file; `None` when the directory cannot be read (nothing changes).
    fn scan_tenants_dir(&self) -> Option<Scan> {
        let mut seen = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.cfg.tenants_dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.cfg.tenants_dir.display(), "cannot read tenants dir: {e}; tenants stay as they are");
                return None;
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
                    if let Some(q) = tenant_of_quota_file(&path).and_then(|n| self.last_good(&n)) {
                        seen.insert(q.name.clone(), q);
                    }
                    errors.insert(path, e);
                }
            }
        }
        Some((seen, errors))
    }

    /// The quota a tenant had before its file went bad: in force, or kept on disk.
    fn last_good(&self, tenant: &str) -> Option<TenantQuota> {
        if let Some(t) = self.tenants.get(tenant) {
            return (!t.removed).then(|| t.quota.clone());
        }
        if let Some(p) = self.pending.get(tenant) {
            return Some(p.quota.clone());
        }
        segments::load_quota(&self.quota_path(tenant), tenant)
    }

    /// Applies a tenant's (new) quota: adds the tenant, brings a removed one back, or
    /// publishes a change.
    fn apply_quota(&mut self, quota: TenantQuota) {
        let name = quota.name.clone();
        let keep = self.quota_path(&name);
        let Some(t) = self.tenants.get_mut(&name) else {
            return self.add_tenant(quota);
        };
        if !t.removed && t.quota == quota {
            return;
        }
        if t.removed {
            tracing::info!(tenant = %name, "tenant file is back");
            t.removed = false;
        } else {
            tracing::info!(tenant = %name, limit = quota.memory_limit, weight = quota.weight, "quota changed");
        }
        t.segments.apply_quota(&self.devices, &quota);
        if let Err(e) = segments::save_quota(&keep, &quota) {
            tracing::warn!(tenant = %name, "cannot keep the quota beside the accounting: {e}");
        }
        t.quota = quota;
    }

    /// Sets up a tenant: its socket, then its segments. If the segments cannot be set up
    /// (full file system), the socket answers registrations with the reason until they can.
    pub(super) fn add_tenant(&mut self, quota: TenantQuota) {
        let name = quota.name.clone();
        let acct = self.segment_path(&name);
        // Segments first: a tenant's socket appears once the tenant can be served.
        let segments = TenantSegments::create(&name, self.generation, &self.devices, &quota, &acct);
        let endpoint = match self.pending.remove(&name) {
            Some(p) => p.endpoint,
            None => match self.new_endpoint(&name) {
                Ok(e) => e,
                Err(e) => {
                    return tracing::error!(tenant = %name, "cannot set up the tenant's socket: {e:#}");
                }
            },
        };
        match segments {
            Ok(segments) => {
                if let Err(e) = segments::save_quota(&self.quota_path(&name), &quota) {
                    tracing::warn!(tenant = %name, "cannot keep the quota beside the accounting: {e}");
                }
                tracing::info!(tenant = %name, limit = quota.memory_limit, weight = quota.weight, "tenant added");
                self.tenants.insert(
                    name.clone(),
                    Tenant {
                        quota,
                        segments,
                        endpoint,
                        processes: BTreeMap::new(),
                        removed: false,
                        stalled: BTreeSet::new(),
                        orphans: BTreeMap::new(),
                        repairs: 0,
                        runnable_probe: std::cell::Cell::new(None),
                    },
                );
                self.publish_estimates(&name);
                self.recover_orphans(&name);
            }
            Err(e) => {
                let error = format!(
                    "gpumuxd cannot set up tenant {name}'s accounting ({e}); the operator must free space in {}",
                    self.cfg.state_dir.display()
                );
                tracing::error!(tenant = %name, "{error}");
                self.pending.insert(
                    name,
                    Pending {
                        quota,
                        endpoint,
                        error,
                    },
                );
            }
        }
    }

    /// A tenant socket registered in the loop.
    fn new_endpoint(&mut self, name: &str) -> Result<Endpoint> {
        let id = self.id();
        let endpoint = Endpoint::create(&self.cfg.state_dir, name, id)?;
        self.lp
            .epoll
            .add(
                &endpoint.listener,
                EpollEvent::new(EpollFlags::EPOLLIN, K_LISTENER | id),
            )
            .context("watching the tenant socket")?;
        self.listeners.insert(id, name.to_string());
        Ok(endpoint)
    }

    /// Takes a tenant socket out of the loop and removes it.
    fn close_endpoint(&mut self, endpoint: &Endpoint) {
        if let Err(e) = self.lp.epoll.delete(&endpoint.listener) {
            tracing::debug!("unwatching a tenant socket: {e}");
        }
        self.listeners.remove(&endpoint.listener_id);
        endpoint.remove_socket();
    }

    /// A pending tenant's file is gone: its socket goes too.
    fn drop_pending(&mut self, name: &str) {
        if let Some(p) = self.pending.remove(name) {
            self.close_endpoint(&p.endpoint);
            tracing::info!(tenant = %name, "tenant removed");
        }
    }

    /// Removes a tenant whose quota file is gone. Its running processes stay under control:
    /// gated at weight 1, no new memory, until they exit; its socket stays for them to
    /// reattach after a daemon restart, and refuses new processes.
    pub(super) fn remove_tenant(&mut self, name: &str) {
        let Some(t) = self.tenants.get_mut(name) else {
            return;
        };
        let mut closed = t.quota.clone();
        closed.memory_limit = 0;
        t.segments.apply_quota(&self.devices, &closed);
        t.removed = true;
        tracing::info!(
            tenant = %name,
            processes = t.processes.len() + t.orphans.len(),
            "tenant removed; its running processes stay gated at weight 1 with no new memory until they exit"
        );
        self.forget_tenant_if_unused(name);
    }

    /// Drops a removed tenant once no process (registered or orphaned) remains, with its
    /// socket, accounting file and kept quota.
    pub(super) fn forget_tenant_if_unused(&mut self, name: &str) {
        let unused = self
            .tenants
            .get(name)
            .is_some_and(|t| t.removed && t.processes.is_empty() && t.orphans.is_empty());
        if !unused {
            return;
        }
        if let Some(t) = self.tenants.remove(name) {
            self.close_endpoint(&t.endpoint);
        }
        self.waits.forget_tenant(name);
        for path in [self.segment_path(name), self.quota_path(name)] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), "cannot remove: {e}");
            }
        }
        tracing::info!(tenant = %name, "tenant gone");
    }

    pub(super) fn segment_path(&self, tenant: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("segments")
            .join(format!("{tenant}.acct"))
    }

    fn quota_path(&self, tenant: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("segments")
            .join(format!("{tenant}.quota"))
    }

    /// After a daemon restart: the adopted accounting segment of `tenant` lists processes the
    /// previous daemon registered. Dead ones are reclaimed now; live ones keep their memory
    /// and are watched (pidfd) until they reattach or exit.
    pub(super) fn recover_orphans(&mut self, tenant: &str) {
        let Some(t) = self.tenants.get(tenant) else {
            return;
        };
        if !t.segments.recovered {
            return;
        }
        let slots: Vec<(usize, Proc)> = t
            .segments
            .accounting
            .processes
            .iter()
            .enumerate()
            .map(|(s, p)| {
                let proc = Proc {
                    pid: p.pid.load(Relaxed),
                    start: p.start_time.load(Relaxed),
                };
                (s, proc)
            })
            .filter(|(_, p)| p.pid != 0)
            .collect();
        self.audit_recovered(tenant);
        let (mut alive, mut dead) = (0, 0);
        for (slot, proc) in slots {
            if self.watch_orphan(tenant, slot, proc) {
                alive += 1;
            } else {
                self.reclaim(tenant, slot, proc.pid);
                dead += 1;
            }
        }
        tracing::info!(
            tenant,
            alive,
            reclaimed = dead,
            "recovered accounting from the previous daemon"
        );
    }

    /// Watches a live process of the previous daemon until it reattaches or exits; false if
    /// it is not alive (or cannot be watched).
    fn watch_orphan(&mut self, tenant: &str, slot: usize, p: Proc) -> bool {
        // The pid and start time are tenant-written: only a live process with that start time
        // that maps the tenant's accounting segment counts (another process's pid written into
        // a slot would otherwise make its GPU memory the tenant's, hiding it as unmanaged).
        let file = self
            .tenants
            .get(tenant)
            .map(|t| t.segments.accounting_file_id());
        let mapped = match file {
            Some(Ok((dev, ino))) => procfs::maps_file(p.pid, dev, ino),
            Some(Err(e)) => {
                tracing::warn!(tenant, "cannot stat the accounting segment: {e}");
                false
            }
            None => false,
        };
        if !mapped {
            if procfs::same_process_alive(p.pid, p.start) {
                tracing::warn!(
                    tenant,
                    slot,
                    pid = p.pid,
                    "slot {slot} names a live process that does not map the tenant's accounting segment; the slot is reclaimed, not adopted"
                );
            }
            return false;
        }
        let Some(pidfd) = procfs::same_process_alive(p.pid, p.start)
            .then(|| procfs::pidfd_open(p.pid).ok())
            .flatten()
            // The pid may have exited between the check and the pidfd: check again.
            .filter(|_| procfs::same_process_alive(p.pid, p.start))
        else {
            return false;
        };
        let id = self.id();
        if let Err(e) = self
            .lp
            .epoll
            .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, K_PIDFD | id))
        {
            tracing::warn!(tenant, pid = p.pid, "cannot watch a recovered process: {e}");
            return false;
        }
        self.pidfds.insert(id, (tenant.to_string(), slot, pidfd));
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.orphans.insert(slot, (p, id));
        }
        true
    }

    /// An orphaned process exited before reattaching: its memory goes back to its tenant.
    pub(super) fn orphan_exited(&mut self, id: u64) {
        let Some((tenant, slot, pidfd)) = self.pidfds.remove(&id) else {
            return;
        };
        if let Err(e) = self.lp.epoll.delete(&pidfd) {
            tracing::debug!("unwatching a pidfd: {e}");
        }
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

    /// Checks an adopted segment's totals against its process records (deferred while a
    /// tenant process holds the lock).
    pub(super) fn audit_recovered(&mut self, tenant: &str) {
        let Some(t) = self.tenants.get(tenant) else {
            return;
        };
        match accounting::audit(&t.segments.accounting) {
            Ok(true) => tracing::warn!(
                tenant,
                "accounting totals had drifted from the process records; repaired"
            ),
            Ok(false) => {}
            Err(accounting::ChargeError::Lock(gpumux_common::shm_mutex::LockError::Busy)) => {
                self.pending_audits.insert(tenant.to_string());
                self.defer_retry();
            }
            Err(e) => tracing::warn!(tenant, "cannot audit the accounting: {e}"),
        }
    }

    /// After a restart: accounting files of tenants that have no quota file any more. Live
    /// processes in them are adopted under a removed tenant (gated, no new memory, until
    /// they exit); files with none are deleted.
    pub(super) fn adopt_leftover_segments(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join("segments")) else {
            return;
        };
        let leftovers: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".acct")?.to_string();
                gpumux_common::names::validate_tenant_name(&name).ok()?;
                Some(name)
            })
            .filter(|n| !self.tenants.contains_key(n) && !self.pending.contains_key(n))
            .collect();
        for name in leftovers {
            let quota =
                segments::load_quota(&self.quota_path(&name), &name).unwrap_or(TenantQuota {
                    name: name.clone(),
                    devices: Vec::new(),
                    memory_limit: 0,
                    weight: 1,
                    compute_limit_permille: None,
                    priority: Priority::default(),
                    owner: None,
                });
            tracing::info!(tenant = %name, "accounting left by the previous daemon for a tenant with no quota file");
            self.add_tenant(quota);
            if self.pending.contains_key(&name) {
                self.drop_pending(&name);
            }
            self.remove_tenant(&name);
        }
        self.update_scheduling();
    }

    /// Undoes what a tenant did to its accounting file through a descriptor (see
    /// [`TenantSegments::repair`]).
    pub(super) fn repair_tenant(&mut self, name: &str) {
        let Some(t) = self.tenants.get_mut(name) else {
            return;
        };
        let registered: Vec<(usize, u32, u64)> = t
            .processes
            .iter()
            .map(|(&s, p)| (s, p.pid, p.start))
            .chain(t.orphans.iter().map(|(&s, (p, _))| (s, p.pid, p.start)))
            .collect();
        let r = t.segments.repair(&registered);
        if r.detached {
            return self.reset_tenant(name);
        }
        if !r.anything() {
            return;
        }
        t.repairs += 1;
        tracing::warn!(
            tenant = %name,
            resized = r.resized,
            header = r.header,
            slots = r.slots,
            "a process of the tenant damaged its accounting file through its descriptor; repaired (its charges may be lost)",
        );
        self.audit_recovered(name);
    }

    /// Repairs every tenant whose mapping the SIGBUS guard flagged.
    pub(super) fn repair_all(&mut self) {
        let names: Vec<String> = self.tenants.keys().cloned().collect();
        for name in names {
            self.repair_tenant(&name);
        }
    }

    /// The tenant's accounting could not be kept (its file was destroyed and cannot be
    /// restored): it starts afresh. Its processes are disconnected; their reattachment is
    /// refused, which tells them to stop using the GPU.
    fn reset_tenant(&mut self, name: &str) {
        let Some(t) = self.tenants.remove(name) else {
            return;
        };
        tracing::error!(tenant = %name, "the tenant's accounting file was destroyed and cannot be restored; its processes are told to stop using the GPU and the tenant starts afresh");
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.tenant == name)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.slot = None;
            }
            self.close_conn(id);
        }
        for (_, watch) in t.orphans.values() {
            if let Some((_, _, pidfd)) = self.pidfds.remove(watch)
                && let Err(e) = self.lp.epoll.delete(&pidfd)
            {
                tracing::debug!("unwatching a pidfd: {e}");
            }
        }
        self.pending_reclaims.retain(|(n, _)| n != name);
        let Tenant {
            quota, endpoint, ..
        } = t;
        if let Err(e) = std::fs::remove_file(self.segment_path(name)) {
            tracing::warn!(tenant = %name, "cannot remove the destroyed accounting file: {e}");
        }
        self.pending.insert(
            name.to_string(),
            Pending {
                quota: quota.clone(),
                endpoint,
                error: String::new(),
            },
        );
        self.add_tenant(quota);
        self.update_scheduling();
    }
}
