//! NVML's per-process lists show a tenant only its own processes: another tenant's pids and
//! memory use are that tenant's business.

#![allow(non_snake_case)]

use super::real;
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use crate::registration::{Access, Registration, access};
use std::ffi::c_uint;
use std::sync::atomic::Ordering::Relaxed;

/// `nvmlProcessInfo_v1_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessInfoV1 {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
}

/// `nvmlProcessInfo_v2_t` (also what `_v3` fills).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessInfoV2 {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

trait HasPid: Copy {
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

macro_rules! running_processes {
    ($name:ident, $info:ty) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `nvmlDeviceGetComputeRunningProcesses`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, count: *mut c_uint, infos: *mut $info) -> nvmlReturn_t {
            guard(NVML_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut $info) -> nvmlReturn_t, NVML_ERROR_DRIVER_NOT_LOADED);
                // SAFETY: forwarding the caller's arguments.
                let rc = unsafe { f(device, count, infos) };
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
            })
        }
    };
}
running_processes!(nvmlDeviceGetComputeRunningProcesses, ProcessInfoV1);
running_processes!(nvmlDeviceGetComputeRunningProcesses_v2, ProcessInfoV2);
running_processes!(nvmlDeviceGetComputeRunningProcesses_v3, ProcessInfoV2);
