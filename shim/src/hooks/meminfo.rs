//! Memory queries (CUDA and NVML) report the tenant's quota as the device size, so frameworks
//! size their caches to the quota. NVML init registers the process like `cuInit` does.
//!
//! Handlers of the entry-point table (`MemReport`, and NVML's `Init`).

use super::init::{device_of_ordinal, working_device};
use super::real;
use super::table::sig;
use crate::cuda_types::*;
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
pub(super) trait SizeWord: Copy {
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

/// `cuMemGetInfo`/`_v2`: the quota as the device's size.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_get_info<T: SizeWord>(
    real: unsafe extern "C" fn(*mut T, *mut T) -> CUresult,
    free: *mut T,
    total: *mut T,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    let rc = unsafe { real(free, total) };
    if rc != CUDA_SUCCESS || free.is_null() || total.is_null() {
        return rc;
    }
    if let Access::Registered(reg) = access()
        && let Ok(device) = working_device(reg)
    {
        // SAFETY: the driver succeeded, so both pointers are valid and written.
        unsafe {
            let v = report(reg, device, (*total).get(), (*free).get());
            *free = T::put(v.free);
            *total = T::put(v.total);
        }
    }
    rc
}

/// `cuDeviceTotalMem`/`_v2`: the quota as the device's size.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn device_total_mem<T: SizeWord>(
    real: unsafe extern "C" fn(*mut T, CUdevice) -> CUresult,
    bytes: *mut T,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    let rc = unsafe { real(bytes, dev) };
    if rc != CUDA_SUCCESS || bytes.is_null() {
        return rc;
    }
    if let Access::Registered(reg) = access() {
        // SAFETY: the driver succeeded, so the pointer is valid and written.
        unsafe {
            let physical = (*bytes).get();
            let v = report(reg, device_of_ordinal(reg, dev), physical, physical);
            *bytes = T::put(v.total);
        }
    }
    rc
}

// ---- NVML ----------------------------------------------------------------------------------

fn nvml_gate() -> Option<nvmlReturn_t> {
    match access() {
        Access::Refused => Some(NVML_ERROR_DRIVER_NOT_LOADED),
        _ => None,
    }
}

/// `nvmlInit`/`_v2`: registers (or refuses) first.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn nvml_init(real: sig::nvmlInit_v2) -> nvmlReturn_t {
    if let Some(e) = nvml_gate() {
        return e;
    }
    // SAFETY: no arguments.
    unsafe { real() }
}

/// `nvmlInitWithFlags`: registers (or refuses) first.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn nvml_init_with_flags(
    real: sig::nvmlInitWithFlags,
    flags: c_uint,
) -> nvmlReturn_t {
    if let Some(e) = nvml_gate() {
        return e;
    }
    // SAFETY: forwarding the caller's argument.
    unsafe { real(flags) }
}

/// The tenant's device index for an NVML handle (by UUID).
fn nvml_device(reg: &Registration, device: nvmlDevice_t) -> Option<usize> {
    let f = real!(nvmlDeviceGetUUID, None);
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
pub(super) trait NvmlMemoryInfo {
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

/// `nvmlDeviceGetMemoryInfo`/`_v2`: the quota as the device's size.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn nvml_memory_info<M: NvmlMemoryInfo>(
    real: unsafe extern "C" fn(nvmlDevice_t, *mut M) -> nvmlReturn_t,
    device: nvmlDevice_t,
    memory: *mut M,
) -> nvmlReturn_t {
    // SAFETY: forwarding the caller's arguments.
    let rc = unsafe { real(device, memory) };
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
}
