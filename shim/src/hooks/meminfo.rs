//! Memory queries (CUDA and NVML) report the tenant's quota as the device size, so frameworks
//! size their caches to the quota. NVML init registers the process like `cuInit` does.

#![allow(non_snake_case)]

use super::init::{device_of_ordinal, working_device};
use super::real;
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use crate::quota_view::{HIDDEN, MemView, view};
use crate::registration::{Access, Registration, access};
use std::ffi::{c_char, c_uint};

fn report(reg: &Registration, device: Option<usize>, total: u64, free: u64) -> MemView {
    match device {
        Some(d) => view(reg.control(), &reg.accounting, d, total, free),
        None => HIDDEN,
    }
}

/// A size type of a driver ABI version (`size_t` for `_v2`, `unsigned int` for v1).
trait SizeWord: Copy {
    fn get(self) -> u64;
    /// Clamped to what the type can hold.
    fn put(v: u64) -> Self;
}

impl SizeWord for usize {
    fn get(self) -> u64 {
        self as u64
    }
    fn put(v: u64) -> Self {
        v as usize
    }
}

impl SizeWord for c_uint {
    fn get(self) -> u64 {
        self as u64
    }
    fn put(v: u64) -> Self {
        v.min(c_uint::MAX as u64) as c_uint
    }
}

macro_rules! mem_get_info {
    ($name:ident, $t:ty) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuMemGetInfo`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(free: *mut $t, total: *mut $t) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(*mut $t, *mut $t) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                // SAFETY: forwarding the caller's arguments.
                let rc = unsafe { f(free, total) };
                if rc != CUDA_SUCCESS || free.is_null() || total.is_null() {
                    return rc;
                }
                if let Access::Registered(reg) = access()
                    && let Ok(device) = working_device(reg)
                {
                    // SAFETY: the driver succeeded, so both pointers are valid and written.
                    unsafe {
                        let v = report(reg, device, (*total).get(), (*free).get());
                        *free = <$t>::put(v.free);
                        *total = <$t>::put(v.total);
                    }
                }
                rc
            })
        }
    };
}
mem_get_info!(cuMemGetInfo, c_uint);
mem_get_info!(cuMemGetInfo_v2, usize);

macro_rules! device_total_mem {
    ($name:ident, $t:ty) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuDeviceTotalMem`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(bytes: *mut $t, dev: CUdevice) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(*mut $t, CUdevice) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                // SAFETY: forwarding the caller's arguments.
                let rc = unsafe { f(bytes, dev) };
                if rc != CUDA_SUCCESS || bytes.is_null() {
                    return rc;
                }
                if let Access::Registered(reg) = access() {
                    // SAFETY: the driver succeeded, so the pointer is valid and written.
                    unsafe {
                        let physical = (*bytes).get();
                        let v = report(reg, device_of_ordinal(reg, dev), physical, physical);
                        *bytes = <$t>::put(v.total);
                    }
                }
                rc
            })
        }
    };
}
device_total_mem!(cuDeviceTotalMem, c_uint);
device_total_mem!(cuDeviceTotalMem_v2, usize);

// ---- NVML ----------------------------------------------------------------------------------

fn nvml_gate() -> Option<nvmlReturn_t> {
    match access() {
        Access::Refused => Some(NVML_ERROR_DRIVER_NOT_LOADED),
        _ => None,
    }
}

/// # Safety
/// C ABI entry point; `nvmlInit_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    guard(NVML_ERROR_UNKNOWN, || {
        let f = real!(nvmlInit_v2: unsafe extern "C" fn() -> nvmlReturn_t, NVML_ERROR_DRIVER_NOT_LOADED);
        if let Some(e) = nvml_gate() {
            return e;
        }
        // SAFETY: no arguments.
        unsafe { f() }
    })
}

/// # Safety
/// C ABI entry point; `nvmlInit` (v1).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> nvmlReturn_t {
    guard(NVML_ERROR_UNKNOWN, || {
        let f =
            real!(nvmlInit: unsafe extern "C" fn() -> nvmlReturn_t, NVML_ERROR_DRIVER_NOT_LOADED);
        if let Some(e) = nvml_gate() {
            return e;
        }
        // SAFETY: no arguments.
        unsafe { f() }
    })
}

/// # Safety
/// C ABI entry point; `nvmlInitWithFlags`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(flags: c_uint) -> nvmlReturn_t {
    guard(NVML_ERROR_UNKNOWN, || {
        let f = real!(nvmlInitWithFlags: unsafe extern "C" fn(c_uint) -> nvmlReturn_t, NVML_ERROR_DRIVER_NOT_LOADED);
        if let Some(e) = nvml_gate() {
            return e;
        }
        // SAFETY: forwarding the caller's argument.
        unsafe { f(flags) }
    })
}

/// The tenant's device index for an NVML handle (by UUID).
fn nvml_device(reg: &Registration, device: nvmlDevice_t) -> Option<usize> {
    let f = real!(nvmlDeviceGetUUID: unsafe extern "C" fn(nvmlDevice_t, *mut c_char, c_uint) -> nvmlReturn_t, None);
    let mut buf = [0 as c_char; 96];
    // SAFETY: valid buffer of the stated length.
    if unsafe { f(device, buf.as_mut_ptr(), buf.len() as c_uint) } != NVML_SUCCESS {
        return None;
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let uuid = gpumux_common::shm::parse_gpu_uuid(std::str::from_utf8(&bytes).ok()?)?;
    reg.device_by_uuid(&uuid)
}

/// An NVML memory struct version the shim rewrites.
trait NvmlMemoryInfo {
    fn physical(&self) -> (u64, u64);
    fn set(&mut self, v: MemView);
}

impl NvmlMemoryInfo for NvmlMemory {
    fn physical(&self) -> (u64, u64) {
        (self.total, self.free)
    }
    fn set(&mut self, v: MemView) {
        (self.total, self.free, self.used) = (v.total, v.free, v.used);
    }
}

impl NvmlMemoryInfo for NvmlMemoryV2 {
    fn physical(&self) -> (u64, u64) {
        (self.total, self.free)
    }
    fn set(&mut self, v: MemView) {
        (self.total, self.free, self.used, self.reserved) = (v.total, v.free, v.used, 0);
    }
}

macro_rules! nvml_memory_info {
    ($name:ident, $t:ty) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `nvmlDeviceGetMemoryInfo`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, memory: *mut $t) -> nvmlReturn_t {
            guard(NVML_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(nvmlDevice_t, *mut $t) -> nvmlReturn_t, NVML_ERROR_DRIVER_NOT_LOADED);
                // SAFETY: forwarding the caller's arguments.
                let rc = unsafe { f(device, memory) };
                if rc != NVML_SUCCESS || memory.is_null() {
                    return rc;
                }
                if let Access::Registered(reg) = access() {
                    // SAFETY: NVML succeeded, so `memory` is valid and written.
                    let m = unsafe { &mut *memory };
                    let (total, free) = m.physical();
                    m.set(report(reg, nvml_device(reg, device), total, free));
                }
                rc
            })
        }
    };
}
nvml_memory_info!(nvmlDeviceGetMemoryInfo, NvmlMemory);
nvml_memory_info!(nvmlDeviceGetMemoryInfo_v2, NvmlMemoryV2);
