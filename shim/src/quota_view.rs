//! What a registered process is told about memory: the tenant's quota as the device's size.

use gpumux_common::shm::{AccountingSegment, ControlSegment};
use std::sync::atomic::Ordering::{Acquire, Relaxed};

/// Memory figures as reported to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemView {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// total = min(quota, physical), used = the tenant's use, free = total − used clamped at 0 and
/// never more than the device physically has free.
pub fn view(
    ctl: &ControlSegment,
    acct: &AccountingSegment,
    device: usize,
    physical_total: u64,
    physical_free: u64,
) -> MemView {
    let c = &ctl.devices[device];
    if c.allowed.load(Acquire) == 0 {
        return MemView {
            total: 0,
            free: 0,
            used: 0,
        };
    }
    let total = c.memory_limit.load(Acquire).min(physical_total);
    let used = acct.devices[device].used.load(Relaxed);
    let free = total.saturating_sub(used).min(physical_free);
    MemView { total, free, used }
}

/// Reported total for an unmapped/forbidden device.
pub const HIDDEN: MemView = MemView {
    total: 0,
    free: 0,
    used: 0,
};
