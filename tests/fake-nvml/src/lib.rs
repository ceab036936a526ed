//! Fake NVML (`libnvidia-ml.so.1`) on the simulated GPU of `fakegpu` (test-only, never packaged).
//!
//! This crate owns the NVML C ABI that monitoring code (gpumux-common's NVML reader in the
//! daemon and the device plugin, `nvidia-smi`-like tools, the shim's NVML interception) sees on a
//! machine without a GPU. It implements the documented semantics of the subset listed below,
//! reading everything from the shared state file through [`fakegpu::GpuState::snapshot`] (the
//! same ground truth the fake CUDA driver writes), so memory use and running processes of live
//! workloads show here.
//!
//! Semantics kept from NVML's documentation:
//! - `nvmlInit*` is reference counted; every other call before it (or after the matching
//!   `nvmlShutdown`) returns `NVML_ERROR_UNINITIALIZED`;
//! - null output pointers and bad handles/indexes return `NVML_ERROR_INVALID_ARGUMENT`;
//! - string getters return `NVML_ERROR_INSUFFICIENT_SIZE` when the buffer cannot hold the value
//!   and its NUL;
//! - process lists follow the `*infoCount` protocol: `NVML_ERROR_INSUFFICIENT_SIZE` with the
//!   required count when the array is too small;
//! - versioned structs (`nvmlMemory_v2_t`) must carry the right `version` field, else
//!   `NVML_ERROR_ARGUMENT_VERSION_MISMATCH`.
//!
//! Every export catches panics (`NVML_ERROR_UNKNOWN`): unwinding into C is undefined behaviour.

#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use fakegpu::{DeviceSnapshot, GpuState};
// The compute-process lists' entries (`nvmlProcessInfo_v1_t`, `nvmlProcessInfo_v2_t`).
use gpumux_common::nvml_abi::{ProcessInfoV1, ProcessInfoV2};

mod monitoring;
mod processes;
mod unsupported;

/// `nvmlReturn_t`.
pub type nvmlReturn_t = c_int;
/// `nvmlDevice_t`: an opaque pointer; here, the address of an entry of [`DEVICES`].
pub type nvmlDevice_t = *const NvmlDevice;

pub const NVML_SUCCESS: nvmlReturn_t = 0;
pub const NVML_ERROR_UNINITIALIZED: nvmlReturn_t = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: nvmlReturn_t = 2;
pub const NVML_ERROR_NOT_SUPPORTED: nvmlReturn_t = 3;
pub const NVML_ERROR_NO_PERMISSION: nvmlReturn_t = 4;
pub const NVML_ERROR_ALREADY_INITIALIZED: nvmlReturn_t = 5;
pub const NVML_ERROR_NOT_FOUND: nvmlReturn_t = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: nvmlReturn_t = 7;
pub const NVML_ERROR_DRIVER_NOT_LOADED: nvmlReturn_t = 9;
pub const NVML_ERROR_FUNCTION_NOT_FOUND: nvmlReturn_t = 13;
pub const NVML_ERROR_GPU_IS_LOST: nvmlReturn_t = 15;
pub const NVML_ERROR_MEMORY: nvmlReturn_t = 20;
pub const NVML_ERROR_NO_DATA: nvmlReturn_t = 21;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: nvmlReturn_t = 25;
pub const NVML_ERROR_UNKNOWN: nvmlReturn_t = 999;

/// The driver this fake pretends to be: NVIDIA's 550 (CUDA 12.4), the conformance oracle whose
/// exports the fakes have.
pub const DRIVER_VERSION: &str = "550.163.01";
/// `nvmlSystemGetNVMLVersion`'s answer.
pub const NVML_VERSION: &str = "12.550.163.01";
/// `nvmlSystemGetCudaDriverVersion`'s answer (matches the fake driver's `cuDriverGetVersion`).
pub const CUDA_DRIVER_VERSION: c_int = 12040;
/// `gpuInstanceId` / `computeInstanceId` outside MIG mode.
const NOT_AVAILABLE_U32: c_uint = 0xFFFF_FFFF;
/// Most devices a state file holds (`fakegpu::config::MAX_DEVICES`).
const MAX_DEVICES: usize = 16;
/// Window over which `nvmlDeviceGetUtilizationRates` measures (NVML: 1/6 s to 1 s).
const UTILIZATION_WINDOW_NS: u64 = 1_000_000_000;

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct nvmlMemory_t {
    pub total: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct nvmlMemory_v2_t {
    pub version: c_uint,
    pub total: c_ulonglong,
    pub reserved: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

/// `nvmlMemory_v2` (`NVML_STRUCT_VERSION(Memory, 2)`): the size of the struct | 2 << 24.
pub const NVML_MEMORY_V2: c_uint = std::mem::size_of::<nvmlMemory_v2_t>() as c_uint | (2 << 24);

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct nvmlUtilization_t {
    pub gpu: c_uint,
    pub memory: c_uint,
}

/// What an `nvmlDevice_t` points at.
#[repr(C)]
#[derive(Debug)]
pub struct NvmlDevice {
    index: u32,
}

static DEVICES: [NvmlDevice; MAX_DEVICES] = {
    let mut d = [const { NvmlDevice { index: 0 } }; MAX_DEVICES];
    let mut i = 0;
    while i < MAX_DEVICES {
        d[i].index = i as u32;
        i += 1;
    }
    d
};

/// Library state: the init reference count and the mapped state file while initialised.
struct Nvml {
    refcount: u32,
    gpu: Option<GpuState>,
}

static NVML: Mutex<Nvml> = Mutex::new(Nvml {
    refcount: 0,
    gpu: None,
});

fn lock() -> std::sync::MutexGuard<'static, Nvml> {
    NVML.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs an export's body, turning a panic into `NVML_ERROR_UNKNOWN`.
fn guard(f: impl FnOnce() -> nvmlReturn_t) -> nvmlReturn_t {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(NVML_ERROR_UNKNOWN)
}

/// [`guard`] for an export that would otherwise have the same body as another (`nvmlInit` and
/// `nvmlInit_v2`): a panic is reported with the function's name, and the name keeps the two
/// distinct functions (merged into one address, a pointer could not tell which export it is).
fn guard_named(name: &'static str, f: impl FnOnce() -> nvmlReturn_t) -> nvmlReturn_t {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("fake libnvidia-ml: {name} panicked; returning NVML_ERROR_UNKNOWN\n"),
        )
        .ok();
        NVML_ERROR_UNKNOWN
    })
}

/// Runs `f` with the state file, or returns `NVML_ERROR_UNINITIALIZED`.
fn with_gpu(f: impl FnOnce(&GpuState) -> nvmlReturn_t) -> nvmlReturn_t {
    let nvml = lock();
    match (&nvml.gpu, nvml.refcount) {
        (Some(gpu), n) if n > 0 => f(gpu),
        _ => NVML_ERROR_UNINITIALIZED,
    }
}

/// The device index behind a handle, if the handle is one of ours and the device exists.
fn device_index(gpu: &GpuState, device: nvmlDevice_t) -> Option<u32> {
    let base = DEVICES.as_ptr() as usize;
    let addr = device as usize;
    let size = std::mem::size_of::<NvmlDevice>();
    if addr < base || addr >= base + MAX_DEVICES * size || !(addr - base).is_multiple_of(size) {
        return None;
    }
    let index = ((addr - base) / size) as u32;
    (index < gpu.device_count()).then_some(index)
}

/// Runs `f` with the snapshot of the device behind `device`.
fn with_device(
    device: nvmlDevice_t,
    f: impl FnOnce(&GpuState, &DeviceSnapshot) -> nvmlReturn_t,
) -> nvmlReturn_t {
    with_gpu(|gpu| {
        let Some(index) = device_index(gpu, device) else {
            return NVML_ERROR_INVALID_ARGUMENT;
        };
        let snap = gpu.snapshot();
        match snap.devices.get(index as usize) {
            Some(d) => f(gpu, d),
            None => NVML_ERROR_INVALID_ARGUMENT,
        }
    })
}

/// Copies `s` and a NUL into the C buffer `buf` of `len` bytes.
///
/// # Safety
/// `buf` must be null or valid for `len` bytes of writes.
unsafe fn write_cstr(s: &str, buf: *mut c_char, len: c_uint) -> nvmlReturn_t {
    if buf.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > len as usize {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller guarantees `buf` has `len` writable bytes, and we write
    // `bytes.len() + 1 <= len` of them; the source is a distinct Rust allocation.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
        *buf.add(bytes.len()) = 0;
    }
    NVML_SUCCESS
}

/// Writes `value` through `out` unless it is null.
///
/// # Safety
/// `out` must be null or valid for a write of `T`.
unsafe fn write_out<T>(out: *mut T, value: T) -> nvmlReturn_t {
    if out.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null, and the caller guarantees it is valid for writes.
    unsafe { out.write(value) };
    NVML_SUCCESS
}

// ---------------------------------------------------------------------------------------------
// Initialisation
// ---------------------------------------------------------------------------------------------

fn init() -> nvmlReturn_t {
    let mut nvml = lock();
    if nvml.gpu.is_none() {
        match GpuState::open_default() {
            Ok(gpu) => nvml.gpu = Some(gpu),
            Err(_) => return NVML_ERROR_DRIVER_NOT_LOADED,
        }
    }
    nvml.refcount += 1;
    NVML_SUCCESS
}

/// `nvmlInit_v2`: opens the fake GPU state (creating it from `FAKEGPU_DEVICES` if needed).
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    guard(init)
}

/// `nvmlInit` (v1): same as `nvmlInit_v2` here.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit() -> nvmlReturn_t {
    guard_named("nvmlInit", init)
}

/// `nvmlInitWithFlags`: the flags (`NVML_INIT_FLAG_NO_GPUS`, `..._NO_ATTACH`) change nothing here.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    guard(init)
}

/// `nvmlShutdown`: drops one reference; the last one unmaps the state.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    guard(|| {
        let mut nvml = lock();
        if nvml.refcount == 0 {
            return NVML_ERROR_UNINITIALIZED;
        }
        nvml.refcount -= 1;
        if nvml.refcount == 0 {
            nvml.gpu = None;
        }
        NVML_SUCCESS
    })
}

/// `nvmlErrorString`: a static description of a return code (valid without init).
#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    fn text(result: nvmlReturn_t) -> &'static CStr {
        match result {
            NVML_SUCCESS => c"Success",
            NVML_ERROR_UNINITIALIZED => c"Uninitialized",
            NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
            NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
            NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
            NVML_ERROR_ALREADY_INITIALIZED => c"Already Initialized",
            NVML_ERROR_NOT_FOUND => c"Not Found",
            NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
            NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
            NVML_ERROR_FUNCTION_NOT_FOUND => c"Function Not Found",
            NVML_ERROR_GPU_IS_LOST => c"GPU is lost",
            NVML_ERROR_MEMORY => c"Insufficient Memory",
            NVML_ERROR_NO_DATA => c"No data",
            NVML_ERROR_ARGUMENT_VERSION_MISMATCH => c"Argument version mismatch",
            _ => c"Unknown Error",
        }
    }
    catch_unwind(|| text(result).as_ptr()).unwrap_or(c"Unknown Error".as_ptr())
}

// ---------------------------------------------------------------------------------------------
// System queries
// ---------------------------------------------------------------------------------------------

/// `nvmlSystemGetDriverVersion`.
///
/// # Safety
/// `version` must be null or valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_gpu(|_| unsafe { write_cstr(DRIVER_VERSION, version, length) }))
}

/// `nvmlSystemGetNVMLVersion`.
///
/// # Safety
/// `version` must be null or valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_gpu(|_| unsafe { write_cstr(NVML_VERSION, version, length) }))
}

/// `nvmlSystemGetCudaDriverVersion`.
///
/// # Safety
/// `version` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_gpu(|_| unsafe { write_out(version, CUDA_DRIVER_VERSION) }))
}

/// `nvmlSystemGetCudaDriverVersion_v2`.
///
/// # Safety
/// `version` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    unsafe { nvmlSystemGetCudaDriverVersion(version) }
}

// ---------------------------------------------------------------------------------------------
// Device enumeration and identity
// ---------------------------------------------------------------------------------------------

/// `nvmlDeviceGetCount_v2`.
///
/// # Safety
/// `count` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_gpu(|gpu| unsafe { write_out(count, gpu.device_count()) }))
}

/// `nvmlDeviceGetCount` (v1).
///
/// # Safety
/// `count` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    unsafe { nvmlDeviceGetCount_v2(count) }
}

/// `nvmlDeviceGetHandleByIndex_v2`.
///
/// # Safety
/// `device` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(|gpu| {
            if index >= gpu.device_count() || index as usize >= MAX_DEVICES {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            // SAFETY: forwarded caller contract.
            unsafe { write_out(device, &raw const DEVICES[index as usize]) }
        })
    })
}

/// `nvmlDeviceGetHandleByIndex` (v1).
///
/// # Safety
/// `device` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    unsafe { nvmlDeviceGetHandleByIndex_v2(index, device) }
}

/// `nvmlDeviceGetHandleByUUID`: `NVML_ERROR_NOT_FOUND` when no device has that UUID.
///
/// # Safety
/// `uuid` must be null or a NUL-terminated string; `device` null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(|gpu| {
            if uuid.is_null() || device.is_null() {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            // SAFETY: non-null and NUL-terminated per the caller contract.
            let wanted = unsafe { CStr::from_ptr(uuid) }.to_bytes();
            let snap = gpu.snapshot();
            match snap
                .devices
                .iter()
                .find(|d| d.uuid.as_bytes() == wanted && (d.index as usize) < MAX_DEVICES)
            {
                // SAFETY: `device` is non-null and valid for a write per the caller contract.
                Some(d) => unsafe { write_out(device, &raw const DEVICES[d.index as usize]) },
                None => NVML_ERROR_NOT_FOUND,
            }
        })
    })
}

/// `nvmlDeviceGetUUID`.
///
/// # Safety
/// `uuid` must be null or valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_device(device, |_, d| unsafe { write_cstr(&d.uuid, uuid, length) }))
}

/// `nvmlDeviceGetName`.
///
/// # Safety
/// `name` must be null or valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_device(device, |_, d| unsafe { write_cstr(&d.name, name, length) }))
}

/// `nvmlDeviceGetIndex`.
///
/// # Safety
/// `index` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_device(device, |_, d| unsafe { write_out(index, d.index) }))
}

// ---------------------------------------------------------------------------------------------
// Memory, processes, utilization
// ---------------------------------------------------------------------------------------------

/// `nvmlDeviceGetMemoryInfo`: total, free = total - used, used = memory charged on the device.
///
/// # Safety
/// `memory` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, d| {
            let value = nvmlMemory_t {
                total: d.total_bytes,
                free: d.total_bytes.saturating_sub(d.used_bytes),
                used: d.used_bytes.min(d.total_bytes),
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_out(memory, value) }
        })
    })
}

/// `nvmlDeviceGetMemoryInfo_v2`: the caller sets `version = nvmlMemory_v2`; nothing is
/// reserved by the simulated driver (`reserved = 0`).
///
/// # Safety
/// `memory` must be null or valid for reads and writes of `nvmlMemory_v2_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, d| {
            if memory.is_null() {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            // SAFETY: non-null and valid for reads per the caller contract.
            let version = unsafe { (*memory).version };
            if version != NVML_MEMORY_V2 {
                return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
            }
            let value = nvmlMemory_v2_t {
                version,
                total: d.total_bytes,
                reserved: 0,
                free: d.total_bytes.saturating_sub(d.used_bytes),
                used: d.used_bytes.min(d.total_bytes),
            };
            // SAFETY: non-null and valid for writes per the caller contract.
            unsafe { memory.write(value) };
            NVML_SUCCESS
        })
    })
}

/// The `*infoCount` protocol shared by the process-list getters: `count` in = capacity of
/// `infos`, out = entries written (or required, with `NVML_ERROR_INSUFFICIENT_SIZE`).
///
/// # Safety
/// `count` must be null or valid for reads and writes; `infos` null or valid for `*count`
/// writes of `T`.
unsafe fn write_processes<T>(
    d: &DeviceSnapshot,
    count: *mut c_uint,
    infos: *mut T,
    make: impl Fn(u32, u64) -> T,
) -> nvmlReturn_t {
    if count.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null and valid per the caller contract.
    let capacity = unsafe { *count } as usize;
    let n = d.processes.len();
    if n > capacity {
        // SAFETY: as above.
        unsafe { *count = n as c_uint };
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if n > 0 && infos.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    for (i, p) in d.processes.iter().enumerate() {
        // SAFETY: i < n <= capacity entries of `infos`, valid per the caller contract.
        unsafe { infos.add(i).write(make(p.pid, p.used_bytes)) };
    }
    // SAFETY: as above.
    unsafe { *count = n as c_uint };
    NVML_SUCCESS
}

fn v2_info(pid: u32, used: u64) -> ProcessInfoV2 {
    ProcessInfoV2 {
        pid,
        used_gpu_memory: used,
        gpu_instance_id: NOT_AVAILABLE_U32,
        compute_instance_id: NOT_AVAILABLE_U32,
    }
}

/// A fault a test injected into the process lists ([`fakegpu::fault`]): the error to return,
/// after hanging (without holding the library's lock) as long as the fault says so.
fn injected_fault() -> Option<nvmlReturn_t> {
    let mut state = None;
    with_gpu(|gpu| {
        state = Some(gpu.path().to_path_buf());
        NVML_SUCCESS
    });
    let state = state?;
    loop {
        match fakegpu::fault::nvml_fault(&state) {
            None => return None,
            Some(fakegpu::fault::NvmlFault::Error) => return Some(NVML_ERROR_UNKNOWN),
            Some(fakegpu::fault::NvmlFault::Hang) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// `nvmlDeviceGetComputeRunningProcesses_v3` (`nvmlProcessInfo_t`): processes holding a
/// context on the device, with the memory charged to each.
///
/// # Safety
/// See [`write_processes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut ProcessInfoV2,
) -> nvmlReturn_t {
    guard(|| {
        if let Some(rc) = injected_fault() {
            return rc;
        }
        with_device(device, |_, d| {
            // SAFETY: forwarded caller contract.
            unsafe { write_processes(d, info_count, infos, v2_info) }
        })
    })
}

/// `nvmlDeviceGetComputeRunningProcesses_v2` (`nvmlProcessInfo_v2_t`).
///
/// # Safety
/// See [`write_processes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut ProcessInfoV2,
) -> nvmlReturn_t {
    guard(|| {
        if let Some(rc) = injected_fault() {
            return rc;
        }
        with_device(device, |_, d| {
            // SAFETY: forwarded caller contract.
            unsafe { write_processes(d, info_count, infos, v2_info) }
        })
    })
}

/// `nvmlDeviceGetComputeRunningProcesses` (v1, `nvmlProcessInfo_v1_t`).
///
/// # Safety
/// See [`write_processes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut ProcessInfoV1,
) -> nvmlReturn_t {
    guard(|| {
        if let Some(rc) = injected_fault() {
            return rc;
        }
        with_device(device, |_, d| {
            // SAFETY: forwarded caller contract.
            unsafe {
                write_processes(d, info_count, infos, |pid, used| ProcessInfoV1 {
                    pid,
                    used_gpu_memory: used,
                })
            }
        })
    })
}

/// `nvmlDeviceGetUtilizationRates`: `gpu` = percent of the last second during which a kernel
/// ran (from the kernel trace); `memory` (memory-controller activity) is not simulated: 0.
///
/// # Safety
/// `utilization` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |gpu, d| {
            let Some(percent) = monitoring::utilization_percent(gpu, d.index, None) else {
                return NVML_ERROR_UNKNOWN;
            };
            // SAFETY: forwarded caller contract.
            unsafe {
                write_out(
                    utilization,
                    nvmlUtilization_t {
                        gpu: percent,
                        memory: 0,
                    },
                )
            }
        })
    })
}

/// `nvmlDeviceGetCudaComputeCapability`: [`fakegpu::COMPUTE_CAPABILITY`] (9.0), as the fake
/// CUDA driver reports.
///
/// # Safety
/// `major`/`minor` must be null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, _| {
            if major.is_null() || minor.is_null() {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            // SAFETY: both non-null and valid for writes per the caller contract.
            unsafe {
                major.write(fakegpu::COMPUTE_CAPABILITY.0);
                minor.write(fakegpu::COMPUTE_CAPABILITY.1);
            }
            NVML_SUCCESS
        })
    })
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_nvml_h() {
        assert_eq!(std::mem::size_of::<nvmlMemory_t>(), 24);
        assert_eq!(std::mem::size_of::<nvmlMemory_v2_t>(), 40);
        assert_eq!(NVML_MEMORY_V2, 40 | (2 << 24));
        assert_eq!(std::mem::size_of::<nvmlUtilization_t>(), 8);
    }

    #[test]
    fn uninitialised_calls_are_refused() {
        let mut n: c_uint = 0;
        // SAFETY: valid out pointer.
        let r = unsafe { nvmlDeviceGetCount_v2(&mut n) };
        assert_eq!(r, NVML_ERROR_UNINITIALIZED);
        assert_eq!(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
        // SAFETY: nvmlErrorString returns a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(nvmlErrorString(NVML_ERROR_UNINITIALIZED)) };
        assert_eq!(s.to_str().unwrap(), "Uninitialized");
    }
}
