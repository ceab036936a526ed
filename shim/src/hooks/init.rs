//! `cuInit`: registration with the daemon happens here (or on the first driver call that needs
//! it), then the real init, then CUDA ordinals are matched to the daemon's devices by UUID.

use super::real;
use super::table::sig;
use crate::cuda_types::*;
use crate::registration::{Access, Registration, access};
use std::ffi::c_uint;

/// `cuInit`: registers (or refuses), then the real init, then maps ordinals to devices.
///
/// # Safety
/// `cuInit`'s contract.
pub(super) unsafe fn cu_init(real: sig::cuInit, flags: c_uint) -> CUresult {
    match access() {
        Access::Refused => CUDA_ERROR_OPERATING_SYSTEM,
        // SAFETY: forwarding the caller's arguments to the real function.
        Access::PassThrough => unsafe { real(flags) },
        Access::Registered(reg) => {
            // SAFETY: as above.
            let rc = unsafe { real(flags) };
            if rc == CUDA_SUCCESS {
                map_all_ordinals(reg);
            }
            rc
        }
    }
}

/// Matches every CUDA ordinal to the daemon's device table.
fn map_all_ordinals(reg: &Registration) {
    let count_fn = real!(cuDeviceGetCount);
    let mut count = 0;
    // SAFETY: valid out-pointer.
    if unsafe { count_fn(&mut count) } != CUDA_SUCCESS {
        return;
    }
    for ordinal in 0..count.min(crate::registration::MAX_ORDINALS as i32) {
        map_ordinal(reg, ordinal);
    }
    reg.set_ordinal_count(count);
}

/// Matches one CUDA ordinal (by UUID) to the daemon's device table.
fn map_ordinal(reg: &Registration, ordinal: i32) {
    let get = real!(cuDeviceGet);
    let mut dev: CUdevice = 0;
    // SAFETY: valid out-pointer.
    if unsafe { get(&mut dev, ordinal) } != CUDA_SUCCESS {
        return;
    }
    let mut uuid = [0u8; 16];
    // Both variants take (CUuuid* (16 bytes), CUdevice); `_v2` reports MIG instances' own.
    let rc = if let Some(get_uuid) = super::table::slots::cuDeviceGetUuid_v2.get() {
        // SAFETY: valid 16-byte out-buffer and a device handle from the driver.
        unsafe { get_uuid(uuid.as_mut_ptr(), dev) }
    } else {
        let get_uuid = real!(cuDeviceGetUuid);
        // SAFETY: as above.
        unsafe { get_uuid(uuid.as_mut_ptr(), dev) }
    };
    if rc == CUDA_SUCCESS {
        reg.map_ordinal(ordinal, &uuid);
    }
}

/// The daemon's device index of the current context's device: `Err(rc)` when there is no
/// usable context (the driver's own error), `Ok(None)` when the device is not one the tenant
/// can use.
pub(crate) fn current_device(reg: &Registration) -> Result<Option<usize>, CUresult> {
    let ctx_dev = real!(cuCtxGetDevice, Err(CUDA_ERROR_NOT_INITIALIZED));
    let mut dev: CUdevice = 0;
    // SAFETY: valid out-pointer.
    let rc = unsafe { ctx_dev(&mut dev) };
    if rc != CUDA_SUCCESS {
        return Err(rc);
    }
    Ok(device_of_ordinal(reg, dev))
}

/// The device the calling thread works on: the only one the process sees (no driver call), or
/// the current context's.
#[inline]
pub(crate) fn working_device(reg: &Registration) -> Result<Option<usize>, CUresult> {
    match reg.single_device() {
        Some(d) => Ok(Some(d)),
        None => current_device(reg),
    }
}

/// The daemon's device index for a CUDA ordinal, looking it up on first use.
pub(crate) fn device_of_ordinal(reg: &Registration, ordinal: CUdevice) -> Option<usize> {
    match reg.device_index(ordinal) {
        Some(d) => d,
        None => {
            map_ordinal(reg, ordinal);
            reg.device_index(ordinal).flatten()
        }
    }
}
