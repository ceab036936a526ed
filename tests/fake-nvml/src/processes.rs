//! The per-process lists besides the compute-process list (`lib.rs`) and the legacy
//! per-process utilization samples (`monitoring.rs`): graphics and MPS processes (the
//! simulated device runs only compute work: none), the process detail list of NVML 12.4 (by
//! process mode), and per-process utilization as `nvmlProcessesUtilizationInfo_v1_t`. Entries
//! are `gpumux_common::nvml_abi`'s (declared once, checked against `nvml.h`).

use crate::monitoring::utilization_percent;
use crate::{
    NOT_AVAILABLE_U32, NVML_ERROR_ARGUMENT_VERSION_MISMATCH, NVML_ERROR_INSUFFICIENT_SIZE,
    NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_FOUND, NVML_SUCCESS, guard, nvmlDevice_t,
    nvmlReturn_t, with_device, write_out,
};
use fakegpu::DeviceSnapshot;
use gpumux_common::nvml_abi::{
    PROCESS_DETAIL_LIST_V1, PROCESSES_UTILIZATION_INFO_V1, ProcessDetailListV1, ProcessDetailV1,
    ProcessInfoV1, ProcessInfoV2, ProcessUtilizationInfoV1, ProcessesUtilizationInfoV1,
};
use std::ffi::c_uint;

/// `nvmlProcessMode_t`: `NVML_PROCESS_MODE_COMPUTE`.
const PROCESS_MODE_COMPUTE: c_uint = 0;

macro_rules! no_processes {
    ($($name:ident($info:ty);)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: no such process runs on the simulated device.")]
        ///
        /// # Safety
        /// `count` must be null or valid for a write.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            device: nvmlDevice_t,
            count: *mut c_uint,
            _infos: *mut $info,
        ) -> nvmlReturn_t {
            // SAFETY: forwarded caller contract.
            guard(|| with_device(device, |_, _| unsafe { write_out(count, 0) }))
        }
    )*};
}

no_processes! {
    nvmlDeviceGetGraphicsRunningProcesses(ProcessInfoV1);
    nvmlDeviceGetGraphicsRunningProcesses_v2(ProcessInfoV2);
    nvmlDeviceGetGraphicsRunningProcesses_v3(ProcessInfoV2);
    nvmlDeviceGetMPSComputeRunningProcesses(ProcessInfoV1);
    nvmlDeviceGetMPSComputeRunningProcesses_v2(ProcessInfoV2);
    nvmlDeviceGetMPSComputeRunningProcesses_v3(ProcessInfoV2);
}

/// Writes `entries` into the caller's `array` of `*count` entries: with none, success and 0 (or
/// `empty`); a null or too small array, `NVML_ERROR_INSUFFICIENT_SIZE` and the count needed.
///
/// # Safety
/// `count` is valid for reads and writes; `array` null or valid for `*count` writes.
unsafe fn fill<T>(
    entries: Vec<T>,
    count: *mut c_uint,
    array: *mut T,
    empty: nvmlReturn_t,
) -> nvmlReturn_t {
    let n = entries.len();
    if n == 0 {
        // SAFETY: the caller's contract.
        unsafe { *count = 0 };
        return empty;
    }
    // SAFETY: the caller's contract.
    if array.is_null() || (unsafe { *count } as usize) < n {
        // SAFETY: as above.
        unsafe { *count = n as c_uint };
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (i, e) in entries.into_iter().enumerate() {
        // SAFETY: i < n <= *count entries of `array`, valid per the caller's contract.
        unsafe { array.add(i).write(e) };
    }
    // SAFETY: as above.
    unsafe { *count = n as c_uint };
    NVML_SUCCESS
}

fn detail(d: &DeviceSnapshot) -> Vec<ProcessDetailV1> {
    d.processes
        .iter()
        .map(|p| ProcessDetailV1 {
            pid: p.pid,
            used_gpu_memory: p.used_bytes,
            gpu_instance_id: NOT_AVAILABLE_U32,
            compute_instance_id: NOT_AVAILABLE_U32,
            // Confidential computing is off: no protected memory (pynvml cannot even take
            // NVML_VALUE_NOT_AVAILABLE here).
            used_gpu_cc_protected_memory: 0,
        })
        .collect()
}

/// `nvmlDeviceGetRunningProcessDetailList`: the compute processes (with their memory, as the
/// compute list has it) for `NVML_PROCESS_MODE_COMPUTE`, none for graphics and MPS. Success with
/// 0 entries when there is none; `NVML_ERROR_INSUFFICIENT_SIZE` with the count when the array
/// is null or too small.
///
/// # Safety
/// `list` must be null or valid for reads and writes, its `procArray` null or valid for
/// `numProcArrayEntries` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRunningProcessDetailList(
    device: nvmlDevice_t,
    list: *mut ProcessDetailListV1,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, d| {
            // SAFETY: null or valid per the caller's contract.
            let Some(list) = (unsafe { list.as_mut() }) else {
                return NVML_ERROR_INVALID_ARGUMENT;
            };
            if list.version != PROCESS_DETAIL_LIST_V1 {
                return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
            }
            let entries = if list.mode == PROCESS_MODE_COMPUTE {
                detail(d)
            } else {
                Vec::new()
            };
            // SAFETY: the caller's list.
            unsafe {
                fill(
                    entries,
                    &raw mut list.num_proc_array_entries,
                    list.proc_array,
                    NVML_SUCCESS,
                )
            }
        })
    })
}

/// `nvmlDeviceGetProcessesUtilizationInfo`: one sample per process using the device, like
/// `nvmlDeviceGetProcessUtilization` (`monitoring.rs`): `NVML_ERROR_NOT_FOUND` when there is no
/// process or nothing newer than `lastSeenTimeStamp`.
///
/// # Safety
/// `info` must be null or valid for reads and writes, its `procUtilArray` null or valid for
/// `processSamplesCount` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessesUtilizationInfo(
    device: nvmlDevice_t,
    info: *mut ProcessesUtilizationInfoV1,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |gpu, d| {
            // SAFETY: null or valid per the caller's contract.
            let Some(info) = (unsafe { info.as_mut() }) else {
                return NVML_ERROR_INVALID_ARGUMENT;
            };
            if info.version != PROCESSES_UTILIZATION_INFO_V1 {
                return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
            }
            let now = crate::monitoring::wall_us();
            if info.last_seen_time_stamp >= now {
                return NVML_ERROR_NOT_FOUND;
            }
            let samples = d
                .processes
                .iter()
                .map(|p| ProcessUtilizationInfoV1 {
                    time_stamp: now,
                    pid: p.pid,
                    sm_util: utilization_percent(gpu, d.index, Some(p.pid)).unwrap_or(0),
                    ..Default::default()
                })
                .collect();
            // SAFETY: the caller's struct.
            unsafe {
                fill(
                    samples,
                    &raw mut info.process_samples_count,
                    info.proc_util_array,
                    NVML_ERROR_NOT_FOUND,
                )
            }
        })
    })
}
