//! NVML's per-process lists show a tenant only its own processes: another tenant's pids and
//! memory use are that tenant's business, and so is how many there are. The shim fetches the
//! device's whole list itself, keeps the tenant's entries, and answers the caller's
//! `*infoCount` protocol (size query included) from those alone.
//!
//! Handlers of the entry-point table (`ProcessList`).

use crate::cuda_types::*;
use crate::registration::{Access, Registration, access};
use std::ffi::c_uint;
use std::sync::atomic::Ordering::Relaxed;

/// `nvmlProcessInfo_v1_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessInfoV1 {
    pub(crate) pid: c_uint,
    pub(crate) used_gpu_memory: u64,
}

/// `nvmlProcessInfo_v2_t` (also what `_v3` fills).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessInfoV2 {
    pub(crate) pid: c_uint,
    pub(crate) used_gpu_memory: u64,
    pub(crate) gpu_instance_id: c_uint,
    pub(crate) compute_instance_id: c_uint,
}

pub(super) trait HasPid: Copy + Default {
    fn pid(&self) -> u32;
}
impl HasPid for ProcessInfoV1 {
    fn pid(&self) -> u32 {
        self.pid
    }
}
impl HasPid for ProcessInfoV2 {
    fn pid(&self) -> u32 {
        self.pid
    }
}

/// Keeps the entries of `list` whose pid is one of the tenant's processes; returns how many.
fn keep_own<T: HasPid>(reg: &Registration, list: &mut [T]) -> usize {
    let own = |pid: u32| {
        pid != 0
            && reg
                .accounting
                .processes
                .iter()
                .any(|p| p.pid.load(Relaxed) == pid)
    };
    let mut kept = 0;
    for i in 0..list.len() {
        if own(list[i].pid()) {
            list[kept] = list[i];
            kept += 1;
        }
    }
    kept
}

/// The most entries the shim fetches (NVML lists processes with a context on one GPU).
const MAX_LIST: c_uint = 1 << 16;

/// The device's whole list: NVML says how much room it needs, and the list may grow between
/// two calls.
///
/// # Safety
/// `real` is NVML's function of this list type; `device` the caller's handle.
unsafe fn fetch_all<I: HasPid>(
    real: unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut I) -> nvmlReturn_t,
    device: nvmlDevice_t,
) -> Result<Vec<I>, nvmlReturn_t> {
    let mut room: c_uint = 64;
    for _ in 0..8 {
        let mut list = vec![I::default(); room as usize];
        let mut n = room;
        // SAFETY: `list` has room for `n` entries; NVML writes at most that many.
        match unsafe { real(device, &mut n, list.as_mut_ptr()) } {
            NVML_SUCCESS => {
                list.truncate(n.min(room) as usize);
                return Ok(list);
            }
            NVML_ERROR_INSUFFICIENT_SIZE => room = n.saturating_add(16).clamp(room, MAX_LIST),
            rc => return Err(rc),
        }
    }
    Err(NVML_ERROR_UNKNOWN)
}

/// Answers NVML's `*infoCount` protocol with `own`: the entries if `*count` has room for them,
/// else `NVML_ERROR_INSUFFICIENT_SIZE` with the count needed (a size query asks with 0).
///
/// # Safety
/// `count` is valid for reads and writes; `infos` is null or valid for `*count` writes.
unsafe fn answer<I: Copy>(own: &[I], count: *mut c_uint, infos: *mut I) -> nvmlReturn_t {
    // SAFETY: the caller's contract.
    let capacity = unsafe { *count } as usize;
    if own.len() > capacity {
        // SAFETY: as above.
        unsafe { *count = own.len() as c_uint };
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if !own.is_empty() && infos.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: `own.len() <= *count` entries of `infos` are writable (the caller's contract).
    unsafe {
        std::ptr::copy_nonoverlapping(own.as_ptr(), infos, own.len());
        *count = own.len() as c_uint;
    }
    NVML_SUCCESS
}

/// `nvmlDeviceGetComputeRunningProcesses` (v1–v3): only the tenant's own processes, counted
/// and listed.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn running_processes<I: HasPid>(
    real: unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut I) -> nvmlReturn_t,
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut I,
) -> nvmlReturn_t {
    let Access::Registered(reg) = access() else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(device, count, infos) };
    };
    if count.is_null() {
        // SAFETY: NVML reports the invalid argument itself.
        return unsafe { real(device, count, infos) };
    }
    // SAFETY: NVML's function and the caller's device handle.
    let mut list = match unsafe { fetch_all(real, device) } {
        Ok(list) => list,
        Err(rc) => return rc,
    };
    let kept = keep_own(reg, &mut list);
    // SAFETY: the caller's `count` and `infos` under the C API's contract.
    unsafe { answer(&list[..kept], count, infos) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32) -> ProcessInfoV1 {
        ProcessInfoV1 {
            pid,
            used_gpu_memory: 1,
        }
    }

    #[test]
    fn the_count_protocol_answers_from_the_tenants_own_list() {
        let own = [info(7), info(9)];
        // The size query: count 0, no buffer.
        let mut count = 0;
        // SAFETY: valid count; no buffer is written with INSUFFICIENT_SIZE.
        let rc = unsafe { answer(&own, &mut count, std::ptr::null_mut()) };
        assert_eq!((rc, count), (NVML_ERROR_INSUFFICIENT_SIZE, 2));
        // Too small a buffer.
        let mut buf = [ProcessInfoV1::default(); 4];
        let mut count = 1;
        // SAFETY: room for 4 >= count.
        let rc = unsafe { answer(&own, &mut count, buf.as_mut_ptr()) };
        assert_eq!((rc, count), (NVML_ERROR_INSUFFICIENT_SIZE, 2));
        assert_eq!(buf[0], ProcessInfoV1::default(), "nothing written");
        // Enough room.
        let mut count = 4;
        // SAFETY: room for 4.
        let rc = unsafe { answer(&own, &mut count, buf.as_mut_ptr()) };
        assert_eq!((rc, count), (NVML_SUCCESS, 2));
        assert_eq!(&buf[..2], &own);
        // No processes of the tenant: a size query succeeds with 0.
        let mut count = 0;
        // SAFETY: nothing to write.
        let rc = unsafe { answer::<ProcessInfoV1>(&[], &mut count, std::ptr::null_mut()) };
        assert_eq!((rc, count), (NVML_SUCCESS, 0));
    }
}
