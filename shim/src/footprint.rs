//! Memory the process holds beyond its allocations: each context and loaded module occupies
//! device memory that no allocation call returns, and the tenant's quota covers it. The
//! daemon measures it (NVML's per-process memory); the shim tells the daemon when it changes
//! (`Footprint`), and reserves the size of a context before creating one, so the tenant never
//! holds more than its limit while the context comes up.
//!
//! Creating a context ([`create_context`]): reserve the daemon's estimate of a context on the
//! device (over the limit → `CUDA_ERROR_OUT_OF_MEMORY`, no context), create it, announce it
//! with the reservation and wait (at most [`WAIT`]) for the daemon's `Measured`: the
//! reservation is replaced by the measured size. If the tenant is then over its limit (the
//! context was bigger than the estimate), the context is destroyed again and the creation fails
//! with `CUDA_ERROR_OUT_OF_MEMORY`. Destroying a context and loading or unloading a module are
//! announced without waiting ([`changed`]).
//!
//! Answers are matched by sequence number in a small lock-free ring (fork-safe: no lock a
//! forked child could inherit held).

use crate::cuda_types::*;
use crate::registration::Registration;
use gpumux_common::protocol::ClientMsg;
use gpumux_common::{accounting, futex};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::time::{Duration, Instant};

/// Longest a context creation waits for the daemon's measurement (then the reservation
/// stands until the daemon measures).
pub const WAIT: Duration = Duration::from_secs(2);

const RING: usize = 32;
static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);
/// Answered sequence numbers, `seq % RING`.
static ANSWERED: [AtomicU32; RING] = [const { AtomicU32::new(0) }; RING];
/// Bumped on every answer (futex word the waiters sleep on).
static EPOCH: AtomicU32 = AtomicU32::new(0);

/// The watcher received `Measured { seq }`.
pub(crate) fn answered(seq: u32) {
    ANSWERED[seq as usize % RING].store(seq, Release);
    EPOCH.fetch_add(1, AcqRel);
    futex::wake(&EPOCH, u32::MAX);
}

fn next_seq() -> u32 {
    loop {
        let s = NEXT_SEQ.fetch_add(1, AcqRel);
        if s != 0 {
            return s;
        }
    }
}

/// Announces a footprint change on `device` (`reserved` bytes of the reservation were for it).
/// With `wait`, waits for the measurement. Returns `(sent, measured)`.
fn announce(reg: &Registration, device: usize, reserved: u64, wait: bool) -> (bool, bool) {
    let seq = if wait { next_seq() } else { 0 };
    let msg = ClientMsg::Footprint {
        device: device as u32,
        reserved,
        seq,
    };
    if !reg.send(&msg) {
        return (false, false);
    }
    if !wait {
        return (true, false);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let epoch = EPOCH.load(Acquire);
        if ANSWERED[seq as usize % RING].load(Acquire) == seq {
            return (true, true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (true, false);
        }
        futex::wait(&EPOCH, epoch, Some(left));
    }
}

/// Tells the daemon the process's footprint on `device` changed (a context destroyed, a module
/// loaded or unloaded); it measures soon, nobody waits.
pub(crate) fn changed(reg: &Registration, device: usize) {
    let _ = announce(reg, device, 0, false);
}

/// Creates a context on `device` under the tenant's limit (see the module docs): `create` is
/// the real creation, `destroy` undoes a successful one.
pub(crate) fn create_context(
    reg: &Registration,
    device: usize,
    create: impl FnOnce() -> CUresult,
    destroy: impl FnOnce(),
) -> CUresult {
    let ctl = reg.control();
    if ctl.devices[device].allowed.load(Acquire) == 0 {
        // Not a device of this tenant: nothing to charge (allocations on it are refused).
        return create();
    }
    let estimate = ctl.devices[device].context_overhead.load(Acquire);
    if accounting::reserve(ctl, &reg.accounting, reg.slot, device, estimate).is_err() {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    let rc = create();
    if rc != CUDA_SUCCESS {
        // Best effort: an unusable lock was reported when reserving.
        accounting::unreserve(&reg.accounting, reg.slot, device, estimate).ok();
        return rc;
    }
    match announce(reg, device, estimate, true) {
        // The daemon is away: keep the estimate as the context's size until it measures.
        (false, _) => {
            accounting::reservation_to_overhead(&reg.accounting, reg.slot, device, estimate).ok();
        }
        (true, true) if accounting::over_limit(ctl, &reg.accounting, device) => {
            destroy();
            changed(reg, device);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        // Measured and within the limit, or not answered in time (the reservation stands
        // until the daemon measures).
        (true, _) => {}
    }
    rc
}

/// After a reattach to a restarted daemon: reservations announced to the old daemon will never
/// be settled; keep them as measured overhead (the new daemon's next measurement corrects it).
pub(crate) fn keep_unsettled(reg: &Registration) {
    for device in 0..gpumux_common::shm::MAX_DEVICES {
        accounting::reservation_to_overhead(&reg.accounting, reg.slot, device, u64::MAX).ok();
    }
}
