//! NVML's per-process lists show a tenant only its own processes: another tenant's pids and
//! memory use are that tenant's business.
//!
//! Handlers of the entry-point table (`ProcessList`).

use crate::cuda_types::*;
use crate::registration::{Access, Registration, access};
use std::ffi::c_uint;
use std::sync::atomic::Ordering::Relaxed;

/// `nvmlProcessInfo_v1_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcessInfoV1 {
    pub(crate) pid: c_uint,
    pub(crate) used_gpu_memory: u64,
}

/// `nvmlProcessInfo_v2_t` (also what `_v3` fills).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcessInfoV2 {
    pub(crate) pid: c_uint,
    pub(crate) used_gpu_memory: u64,
    pub(crate) gpu_instance_id: c_uint,
    pub(crate) compute_instance_id: c_uint,
}

pub(super) trait HasPid: Copy {
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

/// `nvmlDeviceGetComputeRunningProcesses` (v1–v3): only the tenant's own processes.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn running_processes<I: HasPid>(
    real: unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut I) -> nvmlReturn_t,
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut I,
) -> nvmlReturn_t {
    // SAFETY: forwarding the caller's arguments.
    let rc = unsafe { real(device, count, infos) };
    if rc != NVML_SUCCESS || count.is_null() || infos.is_null() {
        return rc;
    }
    if let Access::Registered(reg) = access() {
        // SAFETY: NVML succeeded: `*count` entries of `infos` are valid.
        unsafe {
            let list = std::slice::from_raw_parts_mut(infos, *count as usize);
            *count = keep_own(reg, list) as c_uint;
        }
    }
    rc
}
