//! NVML's per-process calls show a tenant only its own processes: another tenant's pids, memory
//! use and activity are that tenant's business, and so is how many there are. Every NVML call
//! that lists processes (running compute, graphics and MPS processes, the process detail list,
//! per-process utilization, accounting pids, the vGPU variants) is answered from the device's
//! whole list, fetched by the shim itself, with only the tenant's entries kept; the caller's
//! size protocol (a size query included) is answered from those alone. The calls that take a
//! pid (accounting statistics) answer `NVML_ERROR_NOT_FOUND` for another tenant's.
//!
//! (`nvmlSystemGetProcessName` is passed through: the library reads the process's name from
//! the caller's own `/proc`, which tells the caller nothing it could not read itself.)
//!
//! Handlers of the entry-point table (`ProcessList`).

use super::table::sig;
use crate::cuda_types::*;
use crate::registration::{Access, Registration, access};
use gpumux_common::nvml_abi::{
    HasPid, PROCESS_DETAIL_LIST_V1, PROCESSES_UTILIZATION_INFO_V1, ProcessDetailListV1,
    ProcessUtilizationSample, ProcessesUtilizationInfoV1, VGPU_PROCESSES_UTILIZATION_INFO_V1,
    VgpuProcessUtilizationSample, VgpuProcessesUtilizationInfoV1,
};
use std::ffi::{c_uint, c_void};
use std::sync::atomic::Ordering::Relaxed;

/// Whether `pid` is one of the tenant's processes.
fn is_own(reg: &Registration, pid: u32) -> bool {
    pid != 0
        && reg
            .accounting
            .processes
            .iter()
            .any(|p| p.pid.load(Relaxed) == pid)
}

/// Keeps the entries of `list` about the tenant's own processes.
fn keep_own<T: HasPid>(reg: &Registration, list: &mut Vec<T>) {
    list.retain(|e| is_own(reg, e.pid()));
}

/// The most entries the shim fetches.
const MAX_LIST: c_uint = 1 << 16;

/// A whole list, by NVML's two-call protocol: `call(n, buffer)` asks for at most `*n` entries
/// into `buffer` and sets `*n` to how many there are (with `NVML_ERROR_INSUFFICIENT_SIZE` when
/// they do not fit; the list may grow between two calls).
fn fetch_all<I: Copy + Default>(
    mut call: impl FnMut(&mut c_uint, *mut I) -> nvmlReturn_t,
) -> Result<Vec<I>, nvmlReturn_t> {
    let mut room: c_uint = 64;
    for _ in 0..8 {
        let mut list = vec![I::default(); room as usize];
        let mut n = room;
        match call(&mut n, list.as_mut_ptr()) {
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

/// Answers the `*infoCount` protocol of the running-process lists with `own`: the entries if
/// `*count` has room for them, else `NVML_ERROR_INSUFFICIENT_SIZE` with the count needed (a
/// size query asks with 0; with no entries it succeeds).
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

/// Answers the sample lists' protocol with `own`: no entries → `empty` (count 0); a null buffer
/// or one too small → `NVML_ERROR_INSUFFICIENT_SIZE` with the count needed; else the entries.
///
/// # Safety
/// `count` is valid for reads and writes; `out` is null or valid for `*count` writes.
unsafe fn answer_samples<I: Copy>(
    own: &[I],
    count: *mut c_uint,
    out: *mut I,
    empty: nvmlReturn_t,
) -> nvmlReturn_t {
    if own.is_empty() {
        // SAFETY: the caller's contract.
        unsafe { *count = 0 };
        return empty;
    }
    // SAFETY: the caller's contract.
    if out.is_null() || (unsafe { *count } as usize) < own.len() {
        // SAFETY: as above.
        unsafe { *count = own.len() as c_uint };
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: `own.len() <= *count` entries of `out` are writable (the caller's contract).
    unsafe {
        std::ptr::copy_nonoverlapping(own.as_ptr(), out, own.len());
        *count = own.len() as c_uint;
    }
    NVML_SUCCESS
}

/// `nvmlDevice{Compute,Graphics,MPSCompute}RunningProcesses` (v1–v3),
/// `nvmlDeviceGetAccountingPids`, `nvmlVgpuInstanceGetAccountingPids`: only the tenant's own
/// processes, counted and listed (`handle`: a device or a vGPU instance).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn running_processes<H: Copy, I: HasPid>(
    real: unsafe extern "C" fn(H, *mut c_uint, *mut I) -> nvmlReturn_t,
    handle: H,
    count: *mut c_uint,
    infos: *mut I,
) -> nvmlReturn_t {
    let Access::Registered(reg) = access() else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(handle, count, infos) };
    };
    if count.is_null() {
        // SAFETY: NVML reports the invalid argument itself.
        return unsafe { real(handle, count, infos) };
    }
    // SAFETY: NVML's function of this list type and the caller's handle; `buf` has room for
    // `*n` entries.
    let mut list = match fetch_all(|n, buf| unsafe { real(handle, n, buf) }) {
        Ok(list) => list,
        Err(rc) => return rc,
    };
    keep_own(reg, &mut list);
    // SAFETY: the caller's `count` and `infos` under the C API's contract.
    unsafe { answer(&list, count, infos) }
}

/// `nvmlDeviceGetProcessUtilization`: samples of the tenant's own processes only
/// (`NVML_ERROR_NOT_FOUND` when none has one, as for no samples at all).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn process_utilization(
    real: sig::nvmlDeviceGetProcessUtilization,
    device: nvmlDevice_t,
    samples: *mut ProcessUtilizationSample,
    count: *mut c_uint,
    last_seen: u64,
) -> nvmlReturn_t {
    let Access::Registered(reg) = access() else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(device, samples, count, last_seen) };
    };
    if count.is_null() {
        // SAFETY: NVML reports the invalid argument itself.
        return unsafe { real(device, samples, count, last_seen) };
    }
    // SAFETY: the caller's device; `buf` has room for `*n` samples.
    let mut list = match fetch_all(|n, buf| unsafe { real(device, buf, n, last_seen) }) {
        Ok(list) => list,
        Err(rc) => return rc,
    };
    keep_own(reg, &mut list);
    // SAFETY: the caller's `count` and `samples` under the C API's contract.
    unsafe { answer_samples(&list, count, samples, NVML_ERROR_NOT_FOUND) }
}

/// `nvmlDeviceGetVgpuProcessUtilization`: samples of the tenant's own processes only (none
/// succeeds with 0, as for no active vGPU).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn vgpu_process_utilization(
    real: sig::nvmlDeviceGetVgpuProcessUtilization,
    device: nvmlDevice_t,
    last_seen: u64,
    count: *mut c_uint,
    samples: *mut VgpuProcessUtilizationSample,
) -> nvmlReturn_t {
    let Access::Registered(reg) = access() else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(device, last_seen, count, samples) };
    };
    if count.is_null() {
        // SAFETY: NVML reports the invalid argument itself.
        return unsafe { real(device, last_seen, count, samples) };
    }
    // SAFETY: the caller's device; `buf` has room for `*n` samples.
    let mut list = match fetch_all(|n, buf| unsafe { real(device, last_seen, n, buf) }) {
        Ok(list) => list,
        Err(rc) => return rc,
    };
    keep_own(reg, &mut list);
    // SAFETY: the caller's `count` and `samples` under the C API's contract.
    unsafe { answer_samples(&list, count, samples, NVML_SUCCESS) }
}

/// A versioned list struct (`version`, an entry count, an entry array): the ones NVML 12.4 added.
pub(super) trait VersionedList: Copy {
    type Entry: HasPid;
    /// The version this build knows (others are passed to NVML to judge).
    const VERSION: c_uint;
    /// What NVML answers when there is no entry.
    const EMPTY: nvmlReturn_t;
    fn version(&self) -> c_uint;
    fn count(&mut self) -> &mut c_uint;
    fn array(&mut self) -> &mut *mut Self::Entry;
}

impl VersionedList for ProcessesUtilizationInfoV1 {
    type Entry = gpumux_common::nvml_abi::ProcessUtilizationInfoV1;
    const VERSION: c_uint = PROCESSES_UTILIZATION_INFO_V1;
    const EMPTY: nvmlReturn_t = NVML_ERROR_NOT_FOUND;
    fn version(&self) -> c_uint {
        self.version
    }
    fn count(&mut self) -> &mut c_uint {
        &mut self.process_samples_count
    }
    fn array(&mut self) -> &mut *mut Self::Entry {
        &mut self.proc_util_array
    }
}

impl VersionedList for VgpuProcessesUtilizationInfoV1 {
    type Entry = gpumux_common::nvml_abi::VgpuProcessUtilizationInfoV1;
    const VERSION: c_uint = VGPU_PROCESSES_UTILIZATION_INFO_V1;
    const EMPTY: nvmlReturn_t = NVML_ERROR_NOT_FOUND;
    fn version(&self) -> c_uint {
        self.version
    }
    fn count(&mut self) -> &mut c_uint {
        &mut self.vgpu_process_count
    }
    fn array(&mut self) -> &mut *mut Self::Entry {
        &mut self.vgpu_proc_util_array
    }
}

impl VersionedList for ProcessDetailListV1 {
    type Entry = gpumux_common::nvml_abi::ProcessDetailV1;
    const VERSION: c_uint = PROCESS_DETAIL_LIST_V1;
    // No process: success with none (what pynvml expects from its size query).
    const EMPTY: nvmlReturn_t = NVML_SUCCESS;
    fn version(&self) -> c_uint {
        self.version
    }
    fn count(&mut self) -> &mut c_uint {
        &mut self.num_proc_array_entries
    }
    fn array(&mut self) -> &mut *mut Self::Entry {
        &mut self.proc_array
    }
}

/// `nvmlDeviceGetProcessesUtilizationInfo`, `nvmlDeviceGetVgpuProcessesUtilizationInfo`,
/// `nvmlDeviceGetRunningProcessDetailList`: the caller's struct (its other fields: the time
/// stamp, the process mode) asked of NVML with the shim's array, the tenant's own entries
/// answered.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn versioned_list<L: VersionedList>(
    real: unsafe extern "C" fn(nvmlDevice_t, *mut L) -> nvmlReturn_t,
    device: nvmlDevice_t,
    list: *mut L,
) -> nvmlReturn_t {
    let Access::Registered(reg) = access() else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(device, list) };
    };
    // SAFETY: null or the caller's struct (the C API's contract).
    let Some(caller) = (unsafe { list.as_mut() }) else {
        // SAFETY: NVML reports the invalid argument itself.
        return unsafe { real(device, list) };
    };
    if caller.version() != L::VERSION {
        // SAFETY: NVML judges a version this build does not know.
        return unsafe { real(device, list) };
    }
    let query = *caller;
    let mut own = match fetch_all(|n, buf| {
        let mut q = query;
        *q.count() = *n;
        *q.array() = buf;
        // SAFETY: the caller's device; `q` is the caller's request with the shim's array of
        // `*n` entries.
        let rc = unsafe { real(device, &mut q) };
        *n = *q.count();
        rc
    }) {
        Ok(list) => list,
        Err(rc) => return rc,
    };
    keep_own(reg, &mut own);
    let out = *caller.array();
    let count: *mut c_uint = caller.count();
    // SAFETY: the caller's count and array under the C API's contract.
    unsafe { answer_samples(&own, count, out, L::EMPTY) }
}

/// `nvmlDeviceGetAccountingStats`, `nvmlVgpuInstanceGetAccountingStats`: another tenant's
/// process is not found.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn accounting_stats<H: Copy>(
    real: unsafe extern "C" fn(H, c_uint, *mut c_void) -> nvmlReturn_t,
    handle: H,
    pid: c_uint,
    stats: *mut c_void,
) -> nvmlReturn_t {
    if let Access::Registered(reg) = access()
        && !is_own(reg, pid)
    {
        return NVML_ERROR_NOT_FOUND;
    }
    // SAFETY: forwarding the caller's arguments.
    unsafe { real(handle, pid, stats) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpumux_common::nvml_abi::ProcessInfoV1;

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

    #[test]
    fn the_sample_protocol_answers_from_the_tenants_own_samples() {
        let own = [info(7), info(9)];
        // A size query with a null buffer, and one with too small a buffer.
        let mut count = 5;
        // SAFETY: valid count; nothing written with a null buffer.
        let rc = unsafe { answer_samples(&own, &mut count, std::ptr::null_mut(), 0) };
        assert_eq!((rc, count), (NVML_ERROR_INSUFFICIENT_SIZE, 2));
        let mut buf = [ProcessInfoV1::default(); 2];
        let mut count = 1;
        // SAFETY: room for 2 >= count.
        let rc = unsafe { answer_samples(&own, &mut count, buf.as_mut_ptr(), 0) };
        assert_eq!((rc, count), (NVML_ERROR_INSUFFICIENT_SIZE, 2));
        let mut count = 2;
        // SAFETY: room for 2.
        let rc = unsafe { answer_samples(&own, &mut count, buf.as_mut_ptr(), 0) };
        assert_eq!((rc, count, buf), (NVML_SUCCESS, 2, own));
        // None of the tenant's: what NVML says for no entry.
        let mut count = 2;
        // SAFETY: nothing written.
        let rc = unsafe {
            answer_samples::<ProcessInfoV1>(&[], &mut count, buf.as_mut_ptr(), NVML_ERROR_NOT_FOUND)
        };
        assert_eq!((rc, count), (NVML_ERROR_NOT_FOUND, 0));
    }

    #[test]
    fn fetching_follows_a_growing_list() {
        // NVML's list grows between the size query and the fetch.
        let mut have: c_uint = 70;
        let mut calls = 0;
        let list = fetch_all(|n, buf: *mut ProcessInfoV1| {
            calls += 1;
            if *n < have {
                *n = have;
                have += 5;
                return NVML_ERROR_INSUFFICIENT_SIZE;
            }
            for i in 0..have {
                // SAFETY: `buf` has room for `*n >= have` entries.
                unsafe { buf.add(i as usize).write(info(i + 1)) };
            }
            *n = have;
            NVML_SUCCESS
        })
        .unwrap();
        assert_eq!((list.len(), calls), (75, 2));
        assert_eq!(
            fetch_all::<ProcessInfoV1>(|_, _| NVML_ERROR_NOT_FOUND),
            Err(NVML_ERROR_NOT_FOUND)
        );
    }
}
