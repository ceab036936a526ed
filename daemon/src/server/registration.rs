//! Tenant connections: registration (`Hello`), reattachment after a restart, scheduling
//! messages, footprint announcements, and returning a process's memory when its connection
//! ends.
//!
//! What a connection can cost the daemon is bounded: at most `max_connections_per_tenant`
//! connections per tenant, [`MESSAGES_PER_WAKEUP`] messages read per wakeup, demands
//! rate-limited per connection ([`DEMAND_BURST`] per [`DEMAND_WINDOW`]), and warnings about a
//! tenant at most one line per site per interval (the log's limit, [`crate::logging`]: give
//! such warnings a `tenant` field).
//! When descriptors run out, accepting pauses with a growing backoff (never a busy loop).

use super::{
    ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, Conn, Daemon, EpollEvent, EpollFlags, K_CONN,
    K_LISTENER, Proc, arm,
};
use crate::procfs;
use crate::ratelimit::{DEMAND_BURST, DEMAND_WINDOW, MESSAGES_PER_WAKEUP, Verdict};
use gpumux_common::accounting::{self, ChargeError};
use gpumux_common::protocol::{
    ClientMsg, MAX_MESSAGE, PROTOCOL_VERSION, ServerMsg, check_shim_version,
};
use gpumux_common::shm::{MAX_PROCESSES, SLICE_GRANTED};
use gpumux_common::shm_mutex::LockError;
use gpumux_common::sock;
use nix::errno::Errno;
use nix::sys::socket::{SockFlag, accept4};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Instant;

/// Connections accepted per listener wakeup before others get their turn.
const ACCEPTS_PER_WAKEUP: usize = 64;

impl Daemon {
    pub(super) fn accept_tenant(&mut self, listener_id: u64) {
        let Some(name) = self.listeners.get(&listener_id).cloned() else {
            return;
        };
        let listener = match (self.tenants.get(&name), self.pending.get(&name)) {
            (Some(t), _) => t.endpoint.listener.try_clone(),
            (None, Some(p)) => p.endpoint.listener.try_clone(),
            (None, None) => return,
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => return self.descriptors_exhausted(&name, e.raw_os_error().unwrap_or(0)),
        };
        for _ in 0..ACCEPTS_PER_WAKEUP {
            match accept4(&listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                Ok(fd) => self.admit(&name, fd),
                Err(Errno::EAGAIN) => return,
                Err(Errno::ECONNABORTED | Errno::EINTR) => {}
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    return self.descriptors_exhausted(&name, e as i32);
                }
                Err(e) => {
                    tracing::warn!(tenant = %name, "accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Takes a new connection of `tenant` into the loop, or refuses it over the cap.
    fn admit(&mut self, tenant: &str, fd: OwnedFd) {
        let pid = sock::peer_cred(fd.as_fd()).map_or(0, |c| c.pid as u32);
        let cap = self.cfg.max_connections_per_tenant as usize;
        let count = self.conn_counts.get(tenant).copied().unwrap_or(0);
        if count >= cap {
            tracing::warn!(
                tenant,
                "connection refused: the tenant has {count} connections, its limit (max_connections_per_tenant)"
            );
            let reason = format!(
                "tenant {tenant} has {count} connections to gpumuxd, its limit (max_connections_per_tenant = {cap}); close some or ask the operator to raise it"
            );
            // Best effort: the connection is closed right after.
            if let Err(e) = sock::send(fd.as_fd(), &ServerMsg::Refused { reason }.encode(), &[]) {
                tracing::debug!("refusing a connection: {e}");
            }
            return;
        }
        let id = self.id();
        if let Err(e) = self.lp.epoll.add(
            &fd,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, K_CONN | id),
        ) {
            tracing::warn!(tenant, "cannot watch a connection: {e}");
            return;
        }
        *self.conn_counts.entry(tenant.to_string()).or_default() += 1;
        self.conns.insert(
            id,
            Conn {
                fd,
                tenant: tenant.to_string(),
                slot: None,
                pid,
                version: 0,
                dropped_demands: 0,
            },
        );
    }

    /// Out of descriptors: stop accepting tenant connections for a while (they wait in the
    /// listeners' backlogs) instead of spinning on a listener that stays readable.
    fn descriptors_exhausted(&mut self, tenant: &str, errno: i32) {
        let pause = self
            .accept_paused
            .map_or(ACCEPT_BACKOFF_MIN, |p| (p * 2).min(ACCEPT_BACKOFF_MAX));
        let first = self.accept_paused.is_none();
        self.accept_paused = Some(pause);
        tracing::warn!(
            tenant,
            open = self.conns.len(),
            "out of file descriptors ({}); pausing new tenant connections for {pause:?} \
             (raise LimitNOFILE, or lower max_connections_per_tenant)",
            std::io::Error::from_raw_os_error(errno),
        );
        if first {
            self.set_listeners(false);
        }
        arm(&self.lp.backoff_timer, pause, "accept backoff");
    }

    /// The accept backoff ended: listen again (the pause grows if descriptors are still out).
    pub(super) fn resume_accepting(&mut self) {
        if self.accept_paused.is_none() {
            return;
        }
        self.set_listeners(true);
        // A later exhaustion doubles the pause; a quiet period resets it.
        if self.conns.len() < self.cfg.max_connections_per_tenant as usize {
            self.accept_paused = None;
        } else {
            self.accept_paused = self.accept_paused.map(|p| p / 2);
        }
    }

    fn set_listeners(&mut self, on: bool) {
        let flags = if on {
            EpollFlags::EPOLLIN
        } else {
            EpollFlags::empty()
        };
        let endpoints = self
            .tenants
            .values()
            .map(|t| &t.endpoint)
            .chain(self.pending.values().map(|p| &p.endpoint));
        for e in endpoints {
            let mut ev = EpollEvent::new(flags, K_LISTENER | e.listener_id);
            if let Err(err) = self.lp.epoll.modify(&e.listener, &mut ev) {
                tracing::error!(
                    "cannot {} a tenant socket: {err}",
                    if on { "resume" } else { "pause" }
                );
            }
        }
    }

    pub(super) fn handle_conn(&mut self, id: u64, events: EpollFlags) {
        let mut buf = [0u8; MAX_MESSAGE];
        for _ in 0..MESSAGES_PER_WAKEUP {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            // Descriptors sent along are closed here (dropped): a tenant sends none.
            match sock::recv(conn.fd.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
                Ok((0, _)) => return self.close_conn(id),
                Ok((n, _fds)) => {
                    if !self.handle_bytes(id, &buf[..n]) {
                        return self.close_conn(id);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return self.close_conn(id),
            }
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            self.close_conn(id);
        }
    }

    /// Decodes and handles one message; false when the connection must be closed.
    fn handle_bytes(&mut self, id: u64, bytes: &[u8]) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        let version = match (conn.version, ClientMsg::announced_protocol(bytes)) {
            (0, Some(v)) => v.clamp(1, PROTOCOL_VERSION),
            (0, None) => PROTOCOL_VERSION,
            (v, _) => v,
        };
        match ClientMsg::decode_for(bytes, version) {
            Ok(msg) => {
                self.handle_msg(id, msg);
                true
            }
            Err(e) => {
                tracing::warn!(
                    tenant = %conn.tenant,
                    "bad message from process {}: {e}; disconnecting it",
                    conn.pid
                );
                false
            }
        }
    }

    pub(super) fn handle_msg(&mut self, id: u64, msg: ClientMsg) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if let (Some(slot), Some(t)) = (conn.slot, self.tenants.get_mut(&conn.tenant))
            && t.stalled.remove(&slot)
        {
            tracing::info!(tenant = %conn.tenant, pid = conn.pid, "process responsive again");
        }
        match msg {
            ClientMsg::Hello { protocol, pid } => self.on_hello(id, protocol, pid),
            ClientMsg::Reattach { protocol, slot, .. } => self.on_reattach(id, protocol, slot),
            ClientMsg::Demand { device } => self.on_demand(id, device),
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
            } => {
                let context = ClientMsg::footprint_is_context(seq, context);
                self.footprint_request(id, device, reserved, seq, context);
            }
            ClientMsg::Idle { device, launches } => {
                let (tenant, dev) = (conn.tenant.clone(), device as usize);
                if let Some(slot) = conn.slot
                    && dev < self.scheds.len()
                {
                    self.idle_hint(dev, &tenant, slot, launches);
                }
            }
        }
    }

    /// Answers a registration that cannot proceed (logged at most once per interval).
    fn refuse(&mut self, id: u64, what: &str, reason: String) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (tenant, pid) = (conn.tenant.clone(), conn.pid);
        let msg = ServerMsg::Refused {
            reason: reason.clone(),
        }
        .encode();
        if let Err(e) = sock::send(conn.fd.as_fd(), &msg, &[]) {
            tracing::debug!(pid, "cannot send a refusal: {e}");
        }
        tracing::warn!(tenant, "{what} of process {pid} refused: {reason}");
    }

    /// What a registration or reattachment must pass before anything else: a protocol this
    /// daemon serves, a connection not registered yet, a tenant set up. Err: the refusal.
    fn admission(&mut self, id: u64, protocol: u32) -> Result<(), String> {
        check_shim_version(protocol)?;
        let conn = &self.conns[&id];
        if conn.slot.is_some() {
            return Err("this connection is registered already".into());
        }
        let tenant = conn.tenant.clone();
        if let Some(p) = self.pending.get(&tenant) {
            let quota = p.quota.clone();
            self.add_tenant(quota);
            if let Some(p) = self.pending.get(&tenant) {
                return Err(p.error.clone());
            }
            self.update_scheduling();
        }
        if !self.tenants.contains_key(&tenant) {
            return Err(format!("tenant {tenant} no longer exists"));
        }
        Ok(())
    }

    fn on_hello(&mut self, id: u64, protocol: u32, claimed_pid: u32) {
        if let Err(reason) = self.admission(id, protocol) {
            return self.refuse(id, "registration", reason);
        }
        let conn = &self.conns[&id];
        let tenant = conn.tenant.clone();
        // The kernel's pid, or (when the peer's pid is not visible in the daemon's pid namespace)
        // the claimed one: good enough to name the slot, never trusted to measure by.
        let kernel_pid = conn.pid != 0;
        let pid = if kernel_pid { conn.pid } else { claimed_pid };
        let t = self.tenants.get_mut(&tenant).expect("admitted");
        if t.removed {
            return self.refuse(
                id,
                "registration",
                format!("tenant {tenant} has been removed"),
            );
        }
        let acct = &t.segments.accounting;
        let Some(slot) = (0..MAX_PROCESSES).find(|&s| {
            acct.processes[s].pid.load(Relaxed) == 0
                && !t.processes.contains_key(&s)
                && !t.orphans.contains_key(&s)
        }) else {
            let reason =
                format!("tenant {tenant} has {MAX_PROCESSES} processes registered already");
            return self.refuse(id, "registration", reason);
        };
        let start = procfs::start_time(pid).unwrap_or(0);
        acct.processes[slot].start_time.store(start, Relaxed);
        acct.processes[slot].pid.store(pid, Relaxed);
        t.processes.insert(slot, Proc { pid, start });
        let conn = self.conns.get_mut(&id).expect("present");
        conn.slot = Some(slot);
        conn.version = protocol;
        if kernel_pid {
            self.fp.registered(&tenant, slot, pid);
        } else {
            self.fp.unverified(&tenant, slot);
            tracing::warn!(
                tenant,
                claimed_pid,
                "the kernel gives no pid for this process (another pid namespace?): its memory beyond its allocations is not measured"
            );
        }
        if self.welcome(id) {
            tracing::debug!(pid, tenant, slot, "process registered");
            self.update_bounds();
        }
    }

    /// A process of the previous daemon takes its slot back. A refusal tells it to stop using
    /// the GPU, so everything that can succeed does: a removed tenant's processes reattach
    /// too (and stay gated).
    fn on_reattach(&mut self, id: u64, protocol: u32, slot: u32) {
        if let Err(reason) = self.admission(id, protocol) {
            return self.refuse(id, "reattachment", reason);
        }
        let (tenant, pid) = (self.conns[&id].tenant.clone(), self.conns[&id].pid);
        let slot = slot as usize;
        let t = self.tenants.get_mut(&tenant).expect("admitted");
        let owner =
            (slot < MAX_PROCESSES).then(|| t.segments.accounting.processes[slot].pid.load(Relaxed));
        if owner != Some(pid) || t.processes.contains_key(&slot) {
            let reason = format!(
                "slot {slot} of tenant {tenant} is not this process's; stop using the GPU and restart the process"
            );
            return self.refuse(id, "reattachment", reason);
        }
        let start = match t.orphans.remove(&slot) {
            Some((p, watch)) => {
                if let Some((_, _, pidfd)) = self.pidfds.remove(&watch)
                    && let Err(e) = self.lp.epoll.delete(&pidfd)
                {
                    tracing::debug!("unwatching a pidfd: {e}");
                }
                p.start
            }
            None => procfs::start_time(pid).unwrap_or(0),
        };
        t.processes.insert(slot, Proc { pid, start });
        let conn = self.conns.get_mut(&id).expect("present");
        conn.slot = Some(slot);
        conn.version = protocol;
        if self.welcome(id) {
            tracing::info!(
                pid,
                tenant,
                slot,
                "process reattached after a daemon restart"
            );
            self.update_scheduling();
        }
    }

    fn on_demand(&mut self, id: u64, device: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let dev = device as usize;
        if conn.slot.is_none() || dev >= self.scheds.len() {
            return;
        }
        let now = Instant::now();
        if self.demand_limits.check(&id, now) == Verdict::Suppress {
            conn.dropped_demands += 1;
            // A flood costs a counter per message; the (rate-limited) warning is considered at
            // the 1st, 2nd, 4th, 8th, ... dropped demand only.
            if conn.dropped_demands.is_power_of_two() {
                tracing::warn!(
                    tenant = %conn.tenant,
                    "process {} sends demands faster than {DEMAND_BURST} per {DEMAND_WINDOW:?}; {} dropped so far",
                    conn.pid,
                    conn.dropped_demands
                );
            }
            return;
        }
        let tenant = conn.tenant.clone();
        tracing::trace!(tenant, dev, "demand");
        // Waiting unless its tenant holds the slice (a demand sent just before the grant
        // arrives after it); a draining holder's threads wait too.
        let granted = self.tenants.get(&tenant).is_some_and(|t| {
            t.segments.control.devices[dev].slice.load(SeqCst) & SLICE_GRANTED != 0
        });
        if !granted {
            self.waits.demand(id, &tenant, dev, now);
        }
        self.sched_event(dev, |s, now, act| s.demand(&tenant, now, act));
    }

    /// Answers a registered (or reattached) connection with its slot and the tenant's two
    /// segments, in the connection's protocol version. On failure the connection is closed
    /// (its slot reclaimed) and false returned.
    pub(super) fn welcome(&mut self, id: u64) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        let (Some(slot), Some(t)) = (conn.slot, self.tenants.get(&conn.tenant)) else {
            return false;
        };
        let welcome = ServerMsg::Welcome {
            protocol: conn.version,
            slot: slot as u32,
            generation: self.generation,
        };
        let fds = [
            t.segments.control_fd.as_fd(),
            t.segments.accounting_fd.as_fd(),
        ];
        if let Err(e) = sock::send(conn.fd.as_fd(), &welcome.encode_for(conn.version), &fds) {
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
        if let Err(e) = self.lp.epoll.delete(&conn.fd) {
            tracing::debug!("unwatching a connection: {e}");
        }
        if let Some(n) = self.conn_counts.get_mut(&conn.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.conn_counts.remove(&conn.tenant);
            }
        }
        // A drain need not wait for a process that is gone (nor can it say what it used).
        for dev in 0..self.scheds.len() {
            self.acknowledge(dev, id, None, None);
        }
        // Nor can it say what it used in a slice of its tenant still running: that slice is
        // charged its wall time (if the process ever launched on the device).
        if let Some(slot) = conn.slot
            && let Some(t) = self.tenants.get(&conn.tenant)
        {
            let launches = &t.segments.accounting.processes[slot].launches;
            for (dev, d) in self.scheds.iter_mut().enumerate() {
                if let Some((holder, epoch)) = d.sched.granted()
                    && holder == conn.tenant
                    && launches[dev].load(Relaxed) > 0
                {
                    d.unmeasurable = Some(epoch);
                }
            }
        }
        self.waits.closed(id);
        self.demand_limits.forget(&id);
        if let Some(slot) = conn.slot {
            self.reclaim(&conn.tenant, slot, conn.pid);
        }
    }

    /// Returns a gone process's memory to its tenant. Never waits: if a tenant process holds
    /// the accounting lock, the reclaim is retried later.
    pub(super) fn reclaim(&mut self, tenant: &str, slot: usize, pid: u32) {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        match accounting::reclaim_slot(&t.segments.accounting, slot) {
            Ok(returned) => {
                t.processes.remove(&slot);
                t.stalled.remove(&slot);
                self.fp.unregistered(tenant, slot);
                let total = returned.iter().fold(0u64, |a, b| a.saturating_add(*b));
                tracing::debug!(
                    pid,
                    tenant,
                    slot,
                    returned = total,
                    "process gone; memory returned"
                );
                self.forget_tenant_if_unused(tenant);
                self.update_bounds();
            }
            Err(ChargeError::Lock(LockError::Busy)) => {
                tracing::debug!(
                    pid,
                    tenant,
                    slot,
                    "reclaim deferred: the tenant holds its lock"
                );
                self.pending_reclaims.push((tenant.to_string(), slot));
                self.defer_retry();
            }
            Err(e) => tracing::warn!(tenant, "cannot reclaim slot {slot}: {e}"),
        }
    }

    pub(super) fn retry_reclaims(&mut self) {
        for (tenant, slot) in std::mem::take(&mut self.pending_reclaims) {
            let pid = self
                .tenants
                .get(&tenant)
                .and_then(|t| t.processes.get(&slot).map(|p| p.pid))
                .unwrap_or(0);
            self.reclaim(&tenant, slot, pid);
        }
    }
}
