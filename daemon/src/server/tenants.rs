//! Tenants from quota files: adding, changing, removing them live; after a daemon restart,
//! adopting their accounting and watching the processes registered with the previous daemon.

use super::*;

impl Daemon {
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

    pub(super) fn add_tenant(&mut self, quota: TenantQuota) -> Result<()> {
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
        self.publish_estimates(&tenant_name);
        self.recover_orphans(&tenant_name);
        Ok(())
    }

    /// Removes a tenant whose quota file is gone: its socket disappears (no new processes);
    /// running processes keep what they hold but may allocate nothing more.
    pub(super) fn remove_tenant(&mut self, name: &str) {
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
    pub(super) fn forget_tenant_if_unused(&mut self, name: &str) {
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

    pub(super) fn segment_path(&self, tenant: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("segments")
            .join(format!("{tenant}.acct"))
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
                            t.orphans.insert(slot, (pid, id));
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
    pub(super) fn remove_stale_segments(&self) {
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
}
