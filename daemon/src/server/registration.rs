//! Tenant connections: registration (`Hello`), reattachment after a restart, scheduling
//! messages, footprint announcements, and returning a process's memory when its connection
//! ends.

use super::*;

impl Daemon {
    pub(super) fn accept_tenant(&mut self, listener_id: u64) {
        let Some(name) = self.listeners.get(&listener_id).cloned() else {
            return;
        };
        let Some(t) = self.tenants.get(&name) else {
            return;
        };
        loop {
            match accept4(
                &t.listener,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => {
                    let id = self.next_id + 1;
                    self.next_id = id;
                    if let Err(e) = self.epoll.add(
                        &fd,
                        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, K_CONN | id),
                    ) {
                        tracing::warn!("cannot watch a connection: {e}");
                        continue;
                    }
                    let pid = sock::peer_cred(fd.as_fd())
                        .map(|c| c.pid as u32)
                        .unwrap_or(0);
                    self.conns.insert(
                        id,
                        Conn {
                            fd,
                            tenant: name.clone(),
                            slot: None,
                            pid,
                        },
                    );
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::warn!(tenant = %name, "accept failed: {e}");
                    break;
                }
            }
        }
    }

    pub(super) fn handle_conn(&mut self, id: u64, events: EpollFlags) {
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            match sock::recv(conn.fd.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
                Ok((0, _)) => return self.close_conn(id),
                Ok((n, _fds)) => match ClientMsg::decode(&buf[..n]) {
                    Ok(msg) => self.handle_msg(id, msg),
                    Err(e) => {
                        tracing::warn!(
                            pid = conn.pid,
                            "bad message from a tenant process: {e}; disconnecting it"
                        );
                        return self.close_conn(id);
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return self.close_conn(id),
            }
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            self.close_conn(id);
        }
    }

    pub(super) fn handle_msg(&mut self, id: u64, msg: ClientMsg) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let (Some(slot), Some(t)) = (conn.slot, self.tenants.get_mut(&conn.tenant))
            && t.stalled.remove(&slot)
        {
            tracing::info!(tenant = %conn.tenant, pid = conn.pid, "process responsive again");
        }
        match msg {
            ClientMsg::Hello {
                protocol,
                pid: claimed,
            } => {
                if conn.slot.is_some() {
                    return;
                }
                let reply_refused = |conn: &Conn, reason: String| {
                    tracing::warn!(pid = conn.pid, tenant = %conn.tenant, "registration refused: {reason}");
                    let _ = sock::send(
                        conn.fd.as_fd(),
                        &ServerMsg::Refused { reason }.encode(),
                        &[],
                    );
                };
                if protocol != PROTOCOL_VERSION {
                    return reply_refused(
                        conn,
                        format!(
                            "shim speaks protocol {protocol}, daemon {PROTOCOL_VERSION}: install matching versions"
                        ),
                    );
                }
                let Some(t) = self.tenants.get_mut(&conn.tenant) else {
                    return reply_refused(conn, format!("tenant {} no longer exists", conn.tenant));
                };
                if t.removed {
                    return reply_refused(conn, format!("tenant {} has been removed", conn.tenant));
                }
                let acct = &t.segments.accounting;
                let Some(slot) = (0..MAX_PROCESSES).find(|&s| {
                    acct.processes[s].pid.load(Relaxed) == 0
                        && !t.processes.contains_key(&s)
                        && !t.orphans.contains_key(&s)
                }) else {
                    return reply_refused(
                        conn,
                        format!(
                            "tenant {} has {MAX_PROCESSES} processes registered already",
                            conn.tenant
                        ),
                    );
                };
                let pid = if conn.pid != 0 { conn.pid } else { claimed };
                acct.processes[slot]
                    .start_time
                    .store(procfs::start_time(pid).unwrap_or(0), Relaxed);
                acct.processes[slot].pid.store(pid, Relaxed);
                t.processes.insert(slot, pid);
                conn.slot = Some(slot);
                let tenant = conn.tenant.clone();
                self.fp.registered(&tenant, slot, pid);
                if self.welcome(id) {
                    tracing::debug!(pid, tenant = %self.conns[&id].tenant, slot, "process registered");
                }
            }
            ClientMsg::Reattach {
                protocol,
                pid: _,
                slot,
            } => {
                let slot = slot as usize;
                let refused = |conn: &Conn, reason: String| {
                    tracing::warn!(pid = conn.pid, tenant = %conn.tenant, "reattach refused: {reason}");
                    let _ = sock::send(
                        conn.fd.as_fd(),
                        &ServerMsg::Refused { reason }.encode(),
                        &[],
                    );
                };
                if conn.slot.is_some() || protocol != PROTOCOL_VERSION {
                    return refused(conn, "protocol mismatch or already registered".into());
                }
                let Some(t) = self.tenants.get_mut(&conn.tenant) else {
                    return refused(conn, format!("tenant {} no longer exists", conn.tenant));
                };
                let owner = (slot < MAX_PROCESSES)
                    .then(|| t.segments.accounting.processes[slot].pid.load(Relaxed));
                if owner != Some(conn.pid) || t.processes.contains_key(&slot) {
                    return refused(conn, format!("slot {slot} is not this process's"));
                }
                if let Some((_, watch)) = t.orphans.remove(&slot)
                    && let Some((_, _, pidfd)) = self.pidfds.remove(&watch)
                {
                    let _ = self.epoll.delete(&pidfd);
                }
                t.processes.insert(slot, conn.pid);
                conn.slot = Some(slot);
                let (pid, tenant) = (conn.pid, conn.tenant.clone());
                if !self.welcome(id) {
                    return;
                }
                tracing::info!(
                    pid,
                    tenant,
                    slot,
                    "process reattached after a daemon restart"
                );
                self.update_scheduling();
            }
            ClientMsg::Demand { device } => {
                let tenant = conn.tenant.clone();
                let dev = device as usize;
                if conn.slot.is_some() && dev < self.scheds.len() {
                    tracing::trace!(tenant, dev, "demand");
                    self.sched_event(dev, |s, now, act| s.demand(&tenant, now, act));
                }
            }
            ClientMsg::Drained {
                device,
                epoch,
                busy_ns,
            } => {
                if (device as usize) < self.scheds.len() {
                    self.acknowledge(device as usize, id, Some(epoch), busy_ns);
                }
            }
            ClientMsg::Footprint {
                device,
                reserved,
                seq,
                context,
            } => self.footprint_request(id, device, reserved, seq, context != 0),
        }
    }

    /// Answers a registered (or reattached) connection with its slot and the tenant's two
    /// segments. On failure the connection is closed (its slot reclaimed) and false returned.
    pub(super) fn welcome(&mut self, id: u64) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        let (Some(slot), Some(t)) = (conn.slot, self.tenants.get(&conn.tenant)) else {
            return false;
        };
        let welcome = ServerMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            slot: slot as u32,
            generation: self.generation,
        };
        let fds = [
            t.segments.control_fd.as_fd(),
            t.segments.accounting_fd.as_fd(),
        ];
        if let Err(e) = sock::send(conn.fd.as_fd(), &welcome.encode(), &fds) {
            tracing::warn!(pid = conn.pid, "cannot answer a registration: {e}");
            self.close_conn(id);
            return false;
        }
        true
    }

    pub(super) fn close_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let _ = self.epoll.delete(&conn.fd);
        // A drain need not wait for a process that is gone (nor can it say what it used).
        for dev in 0..self.scheds.len() {
            self.acknowledge(dev, id, None, None);
        }
        if let Some(slot) = conn.slot {
            self.reclaim(&conn.tenant, slot, conn.pid);
        }
    }

    pub(super) fn reclaim(&mut self, tenant: &str, slot: usize, pid: u32) {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        match accounting::reclaim_slot(&t.segments.accounting, slot, RECLAIM_LOCK_TIMEOUT) {
            Ok(returned) => {
                t.processes.remove(&slot);
                t.stalled.remove(&slot);
                self.fp.unregistered(tenant, slot);
                let total: u64 = returned.iter().sum();
                tracing::debug!(
                    pid,
                    tenant,
                    slot,
                    returned = total,
                    "process gone; memory returned"
                );
                self.forget_tenant_if_unused(tenant);
            }
            Err(e) => {
                tracing::warn!(pid, tenant, "reclaim deferred: {e}");
                self.pending_reclaims.push((tenant.to_string(), slot));
                let _ = self.retry_timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(RETRY_INTERVAL)),
                    TimerSetTimeFlags::empty(),
                );
            }
        }
    }

    pub(super) fn retry_reclaims(&mut self) {
        for (tenant, slot) in std::mem::take(&mut self.pending_reclaims) {
            let pid = self
                .tenants
                .get(&tenant)
                .and_then(|t| t.processes.get(&slot).copied())
                .unwrap_or(0);
            self.reclaim(&tenant, slot, pid);
        }
    }
}
