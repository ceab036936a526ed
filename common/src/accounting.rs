//! Memory reservation against a tenant's limit, shared by every process of the tenant.
//!
//! A reservation is atomic against the limit: the check and the charge happen under the
//! segment's robust mutex, so neither threads nor processes can race past the limit. Each
//! charge is recorded twice (tenant total and the process's slot) so that the daemon can return
//! exactly what a dead process held, and so that a process killed between the two stores is
//! repaired by the next locker (`owner_died` → totals recomputed from the slots).
//!
//! A tenant's footprint is more than its allocations: each process also holds device memory
//! no allocation call returns (contexts, modules). Per process and device the slot records
//! three amounts, all counted against the limit: `used` (allocations, charged by the shim),
//! `overhead` (what the daemon last measured beyond the allocations, [`set_overhead`]) and
//! `reserved` (the shim's estimate for a context it is about to create or code it is about to
//! load, [`reserve`], until a measurement settles it).
//!
//! The segment is writable by every process of the tenant, so whatever is read from it is
//! untrusted: sums saturate, nothing here can overflow or index out of bounds whatever the
//! tenant wrote, and the daemon's side never waits for the lock ([`reclaim_slot`], [`audit`],
//! [`set_overhead`] only try it: a tenant process can hold it as long as it likes).

use crate::shm::{AccountingSegment, ControlSegment, MAX_DEVICES, MAX_PROCESSES};
use crate::shm_mutex::{LockError, ShmMutexGuard};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use thiserror::Error;

/// Why a charge was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChargeError {
    #[error(
        "allocation of {requested} bytes would exceed the tenant's limit ({used} of {limit} bytes in use)"
    )]
    OverLimit {
        requested: u64,
        used: u64,
        limit: u64,
    },
    #[error("this tenant may not use device {0}")]
    DeviceNotAllowed(usize),
    #[error("bad device {device} or process slot {slot}")]
    OutOfRange { device: usize, slot: usize },
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// Reserves `bytes` on `device` for the process in `slot`, or refuses without charging.
pub fn charge(
    ctl: &ControlSegment,
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    bytes: u64,
) -> Result<(), ChargeError> {
    charge_into(ctl, acct, slot, device, bytes, false)
}

/// Reserves `bytes` on `device` for a context the process in `slot` is about to create (an
/// estimate of the context's own memory), or refuses like [`charge`] without reserving.
pub fn reserve(
    ctl: &ControlSegment,
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    bytes: u64,
) -> Result<(), ChargeError> {
    charge_into(ctl, acct, slot, device, bytes, true)
}

fn charge_into(
    ctl: &ControlSegment,
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    bytes: u64,
    reservation: bool,
) -> Result<(), ChargeError> {
    if device >= MAX_DEVICES || slot >= MAX_PROCESSES {
        return Err(ChargeError::OutOfRange { device, slot });
    }
    let cdev = &ctl.devices[device];
    if cdev.allowed.load(Acquire) == 0 {
        acct.devices[device].refused.fetch_add(1, Relaxed);
        return Err(ChargeError::DeviceNotAllowed(device));
    }
    let limit = cdev.memory_limit.load(Acquire);
    let guard = acct.lock.lock()?;
    if guard.owner_died {
        repair_locked(acct);
    }
    let dev = &acct.devices[device];
    let used = dev.used.load(Relaxed);
    match used.checked_add(bytes) {
        Some(new) if new <= limit => {
            dev.used.store(new, Relaxed);
            let p = if reservation {
                dev.overhead
                    .store(dev.overhead.load(Relaxed).saturating_add(bytes), Relaxed);
                &acct.processes[slot].reserved[device]
            } else {
                &acct.processes[slot].used[device]
            };
            p.store(p.load(Relaxed).saturating_add(bytes), Relaxed);
            if new > dev.peak.load(Relaxed) {
                dev.peak.store(new, Relaxed);
            }
            Ok(())
        }
        _ => {
            dev.refused.fetch_add(1, Relaxed);
            Err(ChargeError::OverLimit {
                requested: bytes,
                used,
                limit,
            })
        }
    }
}

/// Returns `bytes` on `device` charged by the process in `slot`. Never underflows: a process
/// can only give back what its slot holds.
pub fn uncharge(
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    bytes: u64,
) -> Result<(), ChargeError> {
    let _guard = lock_for(acct, slot, device, Waiting::Yes)?;
    let p = &acct.processes[slot].used[device];
    let give = bytes.min(p.load(Relaxed));
    p.store(p.load(Relaxed) - give, Relaxed);
    let dev = &acct.devices[device];
    dev.used
        .store(dev.used.load(Relaxed).saturating_sub(give), Relaxed);
    Ok(())
}

/// Gives back up to `bytes` of the reservation of the process in `slot` on `device` (the
/// context it was for was not created).
pub fn unreserve(
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    bytes: u64,
) -> Result<(), ChargeError> {
    settle(acct, slot, device, bytes, false)
}

/// Turns up to `bytes` of the reservation of the process in `slot` on `device` into measured
/// overhead: the context exists but no measurement will settle the reservation (the daemon is
/// away); the next measurement replaces it with the truth.
pub fn reservation_to_overhead(
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    bytes: u64,
) -> Result<(), ChargeError> {
    settle(acct, slot, device, bytes, true)
}

fn settle(
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    bytes: u64,
    keep_as_overhead: bool,
) -> Result<(), ChargeError> {
    let _guard = lock_for(acct, slot, device, Waiting::Yes)?;
    let p = &acct.processes[slot];
    let take = bytes.min(p.reserved[device].load(Relaxed));
    p.reserved[device].store(p.reserved[device].load(Relaxed) - take, Relaxed);
    if keep_as_overhead {
        p.overhead[device].store(
            p.overhead[device].load(Relaxed).saturating_add(take),
            Relaxed,
        );
    } else {
        let dev = &acct.devices[device];
        dev.used
            .store(dev.used.load(Relaxed).saturating_sub(take), Relaxed);
        dev.overhead
            .store(dev.overhead.load(Relaxed).saturating_sub(take), Relaxed);
    }
    Ok(())
}

/// Records a measurement of the process in `slot` on `device`: its overhead becomes
/// `measured`, and up to `settle` bytes of its reservation are released (the reservation was
/// for a context this measurement includes). No limit check: the memory is held already; a
/// tenant pushed over its limit gets no new memory until it is back under. Returns the
/// overhead recorded before.
pub fn set_overhead(
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    measured: u64,
    settle: u64,
) -> Result<u64, ChargeError> {
    let _guard = lock_for(acct, slot, device, Waiting::No)?;
    let p = &acct.processes[slot];
    let old = p.overhead[device].swap(measured, Relaxed);
    let take = settle.min(p.reserved[device].load(Relaxed));
    p.reserved[device].store(p.reserved[device].load(Relaxed) - take, Relaxed);
    let dev = &acct.devices[device];
    let adjust = |a: &std::sync::atomic::AtomicU64| {
        a.store(
            (a.load(Relaxed).saturating_add(measured)).saturating_sub(old.saturating_add(take)),
            Relaxed,
        );
    };
    adjust(&dev.used);
    adjust(&dev.overhead);
    let used = dev.used.load(Relaxed);
    if used > dev.peak.load(Relaxed) {
        dev.peak.store(used, Relaxed);
    }
    Ok(old)
}

/// Whether taking the lock may wait: tenant processes wait, the daemon never does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Yes,
    No,
}

/// Checks `slot` and `device`, then takes the segment's lock (or only tries, `Waiting::No`:
/// `Lock(Busy)` when a tenant process holds it), repairing the totals if its last owner died
/// holding it.
fn lock_for(
    acct: &AccountingSegment,
    slot: usize,
    device: usize,
    waiting: Waiting,
) -> Result<ShmMutexGuard<'_>, ChargeError> {
    if device >= MAX_DEVICES || slot >= MAX_PROCESSES {
        return Err(ChargeError::OutOfRange { device, slot });
    }
    let guard = match waiting {
        Waiting::No => acct.lock.try_lock()?,
        Waiting::Yes => acct.lock.lock()?,
    };
    if guard.owner_died {
        repair_locked(acct);
    }
    Ok(guard)
}

/// Whether the tenant's footprint on `device` exceeds its limit.
pub fn over_limit(ctl: &ControlSegment, acct: &AccountingSegment, device: usize) -> bool {
    device < MAX_DEVICES
        && acct.devices[device].used.load(Acquire) > ctl.devices[device].memory_limit.load(Acquire)
}

/// Returns everything the process in `slot` holds and frees the slot (daemon side, when a
/// process's registration ends). Returns the bytes given back per device (allocations,
/// overhead and reservations), or `Lock(Busy)` without waiting when a tenant process holds
/// the lock (try again later).
pub fn reclaim_slot(
    acct: &AccountingSegment,
    slot: usize,
) -> Result<[u64; MAX_DEVICES], ChargeError> {
    if slot >= MAX_PROCESSES {
        return Err(ChargeError::OutOfRange { device: 0, slot });
    }
    let guard = acct.lock.try_lock()?;
    if guard.owner_died {
        repair_locked(acct);
    }
    let mut returned = [0u64; MAX_DEVICES];
    let proc_slot = &acct.processes[slot];
    for (d, ret) in returned.iter_mut().enumerate() {
        let beyond = proc_slot.overhead[d]
            .swap(0, Relaxed)
            .saturating_add(proc_slot.reserved[d].swap(0, Relaxed));
        let held = proc_slot.used[d].swap(0, Relaxed).saturating_add(beyond);
        let dev = &acct.devices[d];
        dev.used
            .store(dev.used.load(Relaxed).saturating_sub(held), Relaxed);
        dev.overhead
            .store(dev.overhead.load(Relaxed).saturating_sub(beyond), Relaxed);
        *ret = held;
    }
    proc_slot.pid.store(0, Relaxed);
    Ok(returned)
}

/// Recomputes tenant totals from the process slots (the slots are the record of truth).
/// Caller holds the lock.
fn repair_locked(acct: &AccountingSegment) {
    for d in 0..MAX_DEVICES {
        let (used, overhead) = sums(acct, d);
        acct.devices[d].used.store(used, Relaxed);
        acct.devices[d].overhead.store(overhead, Relaxed);
    }
}

/// `(footprint, overhead)` of `device` summed over the process slots.
fn sums(acct: &AccountingSegment, d: usize) -> (u64, u64) {
    // Tenant-written: saturating, whatever is in the slots.
    acct.processes.iter().fold((0u64, 0u64), |(u, o), p| {
        let beyond = p.overhead[d]
            .load(Relaxed)
            .saturating_add(p.reserved[d].load(Relaxed));
        (
            u.saturating_add(p.used[d].load(Relaxed))
                .saturating_add(beyond),
            o.saturating_add(beyond),
        )
    })
}

/// Verifies and, if needed, repairs the totals (daemon side, e.g. after adopting a segment).
/// Returns true when the totals had drifted from the slots, or `Lock(Busy)` without waiting
/// when a tenant process holds the lock.
pub fn audit(acct: &AccountingSegment) -> Result<bool, ChargeError> {
    let _guard = acct.lock.try_lock()?;
    let drift = (0..MAX_DEVICES).any(|d| {
        sums(acct, d)
            != (
                acct.devices[d].used.load(Relaxed),
                acct.devices[d].overhead.load(Relaxed),
            )
    });
    if drift {
        repair_locked(acct);
    }
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::SegmentView;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::sync::atomic::Ordering::Release;

    fn memfd() -> OwnedFd {
        // SAFETY: memfd_create with a valid C string; the returned fd is owned here.
        unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC)) }
    }

    fn segments(limit: u64) -> (SegmentView<ControlSegment>, SegmentView<AccountingSegment>) {
        let (cf, af) = (memfd(), memfd());
        let ctl = SegmentView::<ControlSegment>::create(cf.as_fd()).unwrap();
        let acct = SegmentView::<AccountingSegment>::create(af.as_fd()).unwrap();
        // SAFETY: a fresh segment nobody else has mapped.
        unsafe { acct.lock.init() }.unwrap();
        ctl.devices[0].allowed.store(1, Release);
        ctl.devices[0].memory_limit.store(limit, Release);
        (ctl, acct)
    }

    #[test]
    fn limit_is_hard_and_refusal_charges_nothing() {
        let (ctl, acct) = segments(1000);
        charge(&ctl, &acct, 0, 0, 900).unwrap();
        assert!(matches!(
            charge(&ctl, &acct, 1, 0, 200),
            Err(ChargeError::OverLimit {
                used: 900,
                limit: 1000,
                ..
            })
        ));
        assert_eq!(acct.devices[0].used.load(Relaxed), 900);
        assert_eq!(acct.devices[0].refused.load(Relaxed), 1);
        uncharge(&acct, 0, 0, 900).unwrap();
        charge(&ctl, &acct, 1, 0, 200).unwrap();
        assert_eq!(acct.devices[0].used.load(Relaxed), 200);
        assert_eq!(acct.devices[0].peak.load(Relaxed), 900);
        assert!(matches!(
            charge(&ctl, &acct, 0, 1, 1),
            Err(ChargeError::DeviceNotAllowed(1))
        ));
        assert!(matches!(
            charge(&ctl, &acct, 0, 99, 1),
            Err(ChargeError::OutOfRange { .. })
        ));
        assert!(
            charge(&ctl, &acct, 0, 0, u64::MAX).is_err(),
            "overflow refused"
        );
    }

    #[test]
    fn uncharge_never_underflows_and_reclaim_returns_exactly() {
        let (ctl, acct) = segments(1 << 30);
        charge(&ctl, &acct, 3, 0, 100).unwrap();
        charge(&ctl, &acct, 4, 0, 50).unwrap();
        uncharge(&acct, 3, 0, 1_000_000).unwrap();
        assert_eq!(acct.devices[0].used.load(Relaxed), 50);
        let back = reclaim_slot(&acct, 4).unwrap();
        assert_eq!(back[0], 50);
        assert_eq!(acct.devices[0].used.load(Relaxed), 0);
        assert!(!audit(&acct).unwrap());
        acct.devices[0].used.store(77, Relaxed);
        assert!(audit(&acct).unwrap());
        assert_eq!(acct.devices[0].used.load(Relaxed), 0);
    }

    #[test]
    fn overhead_counts_against_the_limit() {
        let (ctl, acct) = segments(1000);
        charge(&ctl, &acct, 0, 0, 100).unwrap();
        // A reservation is limit-checked like an allocation.
        reserve(&ctl, &acct, 0, 0, 300).unwrap();
        assert!(matches!(
            reserve(&ctl, &acct, 1, 0, 700),
            Err(ChargeError::OverLimit { used: 400, .. })
        ));
        assert_eq!(acct.devices[0].overhead.load(Relaxed), 300);
        // The measurement replaces the estimate: 250 measured, the 300 reserved settled.
        assert_eq!(set_overhead(&acct, 0, 0, 250, 300).unwrap(), 0);
        assert_eq!(acct.devices[0].used.load(Relaxed), 350);
        assert_eq!(acct.devices[0].overhead.load(Relaxed), 250);
        assert_eq!(acct.processes[0].reserved[0].load(Relaxed), 0);
        // Allocations stop where allocations + overhead reach the limit.
        charge(&ctl, &acct, 1, 0, 650).unwrap();
        assert!(charge(&ctl, &acct, 1, 0, 1).is_err());
        assert!(!over_limit(&ctl, &acct, 0));
        // A measurement may push the tenant over (the memory is held already).
        set_overhead(&acct, 0, 0, 400, 0).unwrap();
        assert!(over_limit(&ctl, &acct, 0));
        assert_eq!(acct.devices[0].peak.load(Relaxed), 1150);
        assert!(!audit(&acct).unwrap());
        // A reservation given back, or kept as overhead.
        set_overhead(&acct, 0, 0, 0, 0).unwrap();
        reserve(&ctl, &acct, 2, 0, 200).unwrap();
        unreserve(&acct, 2, 0, 500).unwrap();
        assert_eq!(acct.devices[0].used.load(Relaxed), 750);
        reserve(&ctl, &acct, 2, 0, 200).unwrap();
        reservation_to_overhead(&acct, 2, 0, u64::MAX).unwrap();
        assert_eq!(acct.processes[2].overhead[0].load(Relaxed), 200);
        assert_eq!(acct.devices[0].overhead.load(Relaxed), 200);
        assert!(!audit(&acct).unwrap());
        // Reclaim returns allocations, overhead and reservations.
        reserve(&ctl, &acct, 2, 0, 10).unwrap();
        assert_eq!(reclaim_slot(&acct, 2).unwrap()[0], 210);
        assert_eq!(acct.devices[0].used.load(Relaxed), 750);
        assert_eq!(acct.devices[0].overhead.load(Relaxed), 0);
        // Repair recomputes both totals from the slots.
        acct.devices[0].overhead.store(5, Relaxed);
        assert!(audit(&acct).unwrap());
        assert_eq!(acct.devices[0].overhead.load(Relaxed), 0);
    }

    /// What a tenant process writes into its own slot cannot make the daemon's side overflow
    /// (a panic in debug builds, wrong totals in release).
    #[test]
    fn tenant_written_values_never_overflow_the_daemons_side() {
        let (ctl, acct) = segments(u64::MAX);
        acct.processes[0].overhead[0].store(u64::MAX, Relaxed);
        acct.processes[0].reserved[0].store(1, Relaxed);
        assert_eq!(reclaim_slot(&acct, 0).unwrap()[0], u64::MAX);
        for p in acct.processes.iter().take(3) {
            p.used[0].store(u64::MAX - 1, Relaxed);
            p.overhead[0].store(u64::MAX - 1, Relaxed);
            p.reserved[0].store(u64::MAX - 1, Relaxed);
        }
        assert!(audit(&acct).unwrap(), "drift repaired");
        assert_eq!(acct.devices[0].used.load(Relaxed), u64::MAX);
        set_overhead(&acct, 0, 0, u64::MAX, u64::MAX).unwrap();
        reservation_to_overhead(&acct, 1, 0, u64::MAX).unwrap();
        acct.devices[0].used.store(0, Relaxed);
        reserve(&ctl, &acct, 2, 0, 10).unwrap();
        assert_eq!(acct.processes[2].reserved[0].load(Relaxed), u64::MAX);
    }

    #[test]
    fn tenant_written_garbage_never_overflows() {
        let (ctl, acct) = segments(u64::MAX);
        for p in acct.processes.iter().take(4) {
            p.used[0].store(u64::MAX - 1, Relaxed);
            p.overhead[0].store(u64::MAX - 1, Relaxed);
            p.reserved[0].store(u64::MAX - 1, Relaxed);
        }
        acct.devices[0].used.store(3, Relaxed);
        assert!(audit(&acct).unwrap(), "drift repaired");
        assert_eq!(acct.devices[0].used.load(Relaxed), u64::MAX);
        charge(&ctl, &acct, 0, 0, 10).unwrap_err();
        acct.devices[0].used.store(0, Relaxed);
        charge(&ctl, &acct, 0, 0, 10).unwrap();
        assert_eq!(acct.processes[0].used[0].load(Relaxed), u64::MAX);
        set_overhead(&acct, 0, 0, u64::MAX, u64::MAX).unwrap();
        assert_eq!(reclaim_slot(&acct, 0).unwrap()[0], u64::MAX);
    }

    #[test]
    fn the_daemon_side_never_waits_for_the_lock() {
        let (_ctl, acct) = segments(1000);
        let held = acct.lock.lock().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let busy = Err(ChargeError::Lock(LockError::Busy));
                assert_eq!(reclaim_slot(&acct, 0), busy);
                assert_eq!(audit(&acct), Err(ChargeError::Lock(LockError::Busy)));
                assert_eq!(
                    set_overhead(&acct, 0, 0, 1, 0),
                    Err(ChargeError::Lock(LockError::Busy))
                );
            });
        });
        drop(held);
        reclaim_slot(&acct, 0).unwrap();
    }

    #[test]
    fn concurrent_threads_never_exceed_limit() {
        let (ctl, acct) = segments(10_000);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (ctl, acct) = (&ctl, &acct);
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..20_000u64 {
                        let size = 1 + (i * 7919 + t * 104_729) % 3000;
                        if charge(ctl, acct, t as usize, 0, size).is_ok() {
                            held.push(size);
                        }
                        assert!(acct.devices[0].used.load(Relaxed) <= 10_000);
                        if (held.len() > 2 || i % 3 == 0)
                            && let Some(s) = held.pop()
                        {
                            uncharge(acct, t as usize, 0, s).unwrap();
                        }
                    }
                    for s in held {
                        uncharge(acct, t as usize, 0, s).unwrap();
                    }
                });
            }
        });
        assert_eq!(acct.devices[0].used.load(Relaxed), 0);
    }
}
