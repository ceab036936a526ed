//! Memory the process holds beyond its allocations: each context and loaded module occupies
//! device memory that no allocation call returns, and the tenant's quota covers it. The
//! daemon measures it (NVML's per-process memory); the shim tells the daemon when it changes
//! (`Footprint`), and reserves an estimate before creating a context or loading code, so the
//! tenant never holds more than its limit while it comes up.
//!
//! Creating a context ([`create_context`]) or loading a module or library ([`load_code`]):
//! reserve the estimate (a context: the daemon's estimate for this tenant's contexts on the
//! device; code: the image's size) on the device — over the limit → `CUDA_ERROR_OUT_OF_MEMORY`,
//! nothing created — then create or load, announce it with the reservation and wait (at most
//! [`WAIT`]) for the daemon's `Measured`: the daemon replaces the reservation by the measured
//! overhead (with the first reading it applies after the announcement, whenever that is). If
//! the tenant is then over its limit (bigger than the estimate), the context is destroyed or
//! the code unloaded again and the call fails with `CUDA_ERROR_OUT_OF_MEMORY`. Destroying a
//! context and unloading code are announced without waiting ([`changed`]).
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

/// Longest a creation or a load waits for the daemon's measurement (then the reservation
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

/// What an announcement is about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A context this process just created (its growth teaches the tenant's estimate).
    ContextCreated,
    /// Code loaded (waited for: checked against the limit).
    CodeLoaded,
    /// Anything else (nobody waits).
    Other,
}

/// Sends `Footprint` for `device` (`reserved` bytes of the reservation were for this change);
/// the sequence number to wait for, `Some(0)` when nobody waits, `None` if the daemon is away.
fn send(reg: &Registration, device: usize, reserved: u64, change: Change) -> Option<u32> {
    let seq = match change {
        Change::Other => 0,
        _ => next_seq(),
    };
    let msg = ClientMsg::Footprint {
        device: device as u32,
        reserved,
        seq,
        context: Some(u32::from(change == Change::ContextCreated)),
    };
    reg.send(&msg).then_some(seq)
}

/// Waits until every one of `seqs` is answered or [`WAIT`] passed; whether each was answered.
fn wait_answered(seqs: &[u32]) -> Vec<bool> {
    let deadline = Instant::now() + WAIT;
    loop {
        let epoch = EPOCH.load(Acquire);
        let done: Vec<bool> = seqs
            .iter()
            .map(|&s| ANSWERED[s as usize % RING].load(Acquire) == s)
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if done.iter().all(|&d| d) || left.is_zero() {
            return done;
        }
        futex::wait(&EPOCH, epoch, Some(left));
    }
}

/// Tells the daemon the process's footprint on `device` changed (a context destroyed, a module
/// or library unloaded, a load undone); it measures soon, nobody waits.
pub(crate) fn changed(reg: &Registration, device: usize) {
    // Nobody waits: sent or not (the daemon away), nothing more to do.
    send(reg, device, 0, Change::Other);
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
    under_limit(
        reg,
        &[device],
        std::iter::once(device),
        estimate,
        Change::ContextCreated,
        create,
        destroy,
    )
}

/// Loads a module or a library of `image_bytes` under the tenant's limit (see the module docs):
/// the image's size is reserved on `device` (the current context's, where the code goes; none
/// without a context), the load is measured on `measured` (every device it lands on), and
/// `unload` undoes a successful `load` that took the tenant over its limit.
pub(crate) fn load_code(
    reg: &Registration,
    device: Option<usize>,
    measured: impl Iterator<Item = usize>,
    image_bytes: u64,
    load: impl FnOnce() -> CUresult,
    unload: impl FnOnce(),
) -> CUresult {
    let allowed = |d: &usize| reg.control().devices[*d].allowed.load(Acquire) != 0;
    let reserve: Vec<usize> = device.into_iter().filter(allowed).collect();
    under_limit(
        reg,
        &reserve,
        measured.filter(allowed),
        image_bytes,
        Change::CodeLoaded,
        load,
        unload,
    )
}

/// Reserves `estimate` on each of `reserve`, runs `make`, announces the change on `measured`
/// and waits for the measurements; over the limit then, runs `undo` and refuses.
fn under_limit(
    reg: &Registration,
    reserve: &[usize],
    measured: impl Iterator<Item = usize>,
    estimate: u64,
    change: Change,
    make: impl FnOnce() -> CUresult,
    undo: impl FnOnce(),
) -> CUresult {
    let ctl = reg.control();
    // Every device a reservation is made on is announced (so its reservation is settled).
    let mut targets: Vec<usize> = measured.collect();
    for d in reserve {
        if !targets.contains(d) {
            targets.push(*d);
        }
    }
    for (i, &device) in reserve.iter().enumerate() {
        if accounting::reserve(ctl, &reg.accounting, reg.slot, device, estimate).is_err() {
            // Best effort: an unusable lock was reported when reserving.
            for &d in &reserve[..i] {
                accounting::unreserve(&reg.accounting, reg.slot, d, estimate).ok();
            }
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    let rc = make();
    if rc != CUDA_SUCCESS {
        // Best effort: an unusable lock was reported when reserving.
        for &d in reserve {
            accounting::unreserve(&reg.accounting, reg.slot, d, estimate).ok();
        }
        return rc;
    }
    let mut seqs = Vec::new();
    let mut waited = Vec::new();
    for &device in &targets {
        let reserved = if reserve.contains(&device) {
            estimate
        } else {
            0
        };
        match send(reg, device, reserved, change) {
            Some(seq) => {
                seqs.push(seq);
                waited.push(device);
            }
            // The daemon is away: keep the estimate as what was made until it measures.
            None => {
                accounting::reservation_to_overhead(&reg.accounting, reg.slot, device, reserved)
                    .ok();
            }
        }
    }
    let answered = wait_answered(&seqs);
    let over = waited
        .iter()
        .zip(&answered)
        .any(|(&d, &a)| a && accounting::over_limit(ctl, &reg.accounting, d));
    if over {
        undo();
        for &device in &targets {
            changed(reg, device);
        }
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // Measured and within the limit, or not answered in time (the reservation stands until
    // the daemon's next reading of the process settles it).
    rc
}

/// After a reattach to a restarted daemon: reservations announced to the old daemon will never
/// be settled; keep them as measured overhead (the new daemon's next measurement corrects it).
pub(crate) fn keep_unsettled(reg: &Registration) {
    for device in 0..gpumux_common::shm::MAX_DEVICES {
        // Best effort: an unusable lock leaves the reservation (still counted) in place.
        accounting::reservation_to_overhead(&reg.accounting, reg.slot, device, u64::MAX).ok();
    }
}
