//! NVML's per-process structures (`nvml.h` of the 550 driver): the entries of every NVML call
//! that lists processes, which the shim filters to a tenant's own and the fake NVML fills.
//! Declared once here; the tests check sizes and offsets against `nvml.h` (as pynvml's ctypes
//! declarations of it give them).
//!
//! Names are Rust-style; each item's doc gives its C name.

use std::ffi::{c_char, c_uint};

/// `NVML_STRUCT_VERSION(name, ver)`: the size of the struct and its version in the top byte.
const fn struct_version<T>(version: u32) -> c_uint {
    std::mem::size_of::<T>() as c_uint | (version << 24)
}

/// `nvmlProcessInfo_v1_t` (`nvmlDeviceGet{Compute,Graphics,MPSCompute}RunningProcesses`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfoV1 {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
}

/// `nvmlProcessInfo_v2_t` (also what the `_v3` lists fill, as `nvmlProcessInfo_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfoV2 {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

/// `nvmlProcessUtilizationSample_t` (`nvmlDeviceGetProcessUtilization`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUtilizationSample {
    pub pid: c_uint,
    pub time_stamp: u64,
    pub sm_util: c_uint,
    pub mem_util: c_uint,
    pub enc_util: c_uint,
    pub dec_util: c_uint,
}

/// `nvmlProcessUtilizationInfo_v1_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUtilizationInfoV1 {
    pub time_stamp: u64,
    pub pid: c_uint,
    pub sm_util: c_uint,
    pub mem_util: c_uint,
    pub enc_util: c_uint,
    pub dec_util: c_uint,
    pub jpg_util: c_uint,
    pub ofa_util: c_uint,
}

/// `nvmlProcessesUtilizationInfo_v1_t` (`nvmlDeviceGetProcessesUtilizationInfo`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessesUtilizationInfoV1 {
    pub version: c_uint,
    pub process_samples_count: c_uint,
    pub last_seen_time_stamp: u64,
    pub proc_util_array: *mut ProcessUtilizationInfoV1,
}

/// `nvmlProcessesUtilizationInfo_v1`.
pub const PROCESSES_UTILIZATION_INFO_V1: c_uint = struct_version::<ProcessesUtilizationInfoV1>(1);

/// `nvmlProcessDetail_v1_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessDetailV1 {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
    pub used_gpu_cc_protected_memory: u64,
}

/// `nvmlProcessDetailList_v1_t` (`nvmlDeviceGetRunningProcessDetailList`); `mode` is an
/// `nvmlProcessMode_t` (0 compute, 1 graphics, 2 MPS).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessDetailListV1 {
    pub version: c_uint,
    pub mode: c_uint,
    pub num_proc_array_entries: c_uint,
    pub proc_array: *mut ProcessDetailV1,
}

/// `nvmlProcessDetailList_v1`.
pub const PROCESS_DETAIL_LIST_V1: c_uint = struct_version::<ProcessDetailListV1>(1);

/// `NVML_VGPU_NAME_BUFFER_SIZE`.
pub const VGPU_NAME_BUFFER_SIZE: usize = 64;

/// `nvmlVgpuProcessUtilizationSample_t` (`nvmlDeviceGetVgpuProcessUtilization`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VgpuProcessUtilizationSample {
    pub vgpu_instance: c_uint,
    pub pid: c_uint,
    pub process_name: [c_char; VGPU_NAME_BUFFER_SIZE],
    pub time_stamp: u64,
    pub sm_util: c_uint,
    pub mem_util: c_uint,
    pub enc_util: c_uint,
    pub dec_util: c_uint,
}

impl Default for VgpuProcessUtilizationSample {
    fn default() -> Self {
        VgpuProcessUtilizationSample {
            vgpu_instance: 0,
            pid: 0,
            process_name: [0; VGPU_NAME_BUFFER_SIZE],
            time_stamp: 0,
            sm_util: 0,
            mem_util: 0,
            enc_util: 0,
            dec_util: 0,
        }
    }
}

/// `nvmlVgpuProcessUtilizationInfo_v1_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VgpuProcessUtilizationInfoV1 {
    pub process_name: [c_char; VGPU_NAME_BUFFER_SIZE],
    pub time_stamp: u64,
    pub vgpu_instance: c_uint,
    pub pid: c_uint,
    pub sm_util: c_uint,
    pub mem_util: c_uint,
    pub enc_util: c_uint,
    pub dec_util: c_uint,
    pub jpg_util: c_uint,
    pub ofa_util: c_uint,
}

impl Default for VgpuProcessUtilizationInfoV1 {
    fn default() -> Self {
        VgpuProcessUtilizationInfoV1 {
            process_name: [0; VGPU_NAME_BUFFER_SIZE],
            time_stamp: 0,
            vgpu_instance: 0,
            pid: 0,
            sm_util: 0,
            mem_util: 0,
            enc_util: 0,
            dec_util: 0,
            jpg_util: 0,
            ofa_util: 0,
        }
    }
}

/// `nvmlVgpuProcessesUtilizationInfo_v1_t` (`nvmlDeviceGetVgpuProcessesUtilizationInfo`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VgpuProcessesUtilizationInfoV1 {
    pub version: c_uint,
    pub vgpu_process_count: c_uint,
    pub last_seen_time_stamp: u64,
    pub vgpu_proc_util_array: *mut VgpuProcessUtilizationInfoV1,
}

/// `nvmlVgpuProcessesUtilizationInfo_v1`.
pub const VGPU_PROCESSES_UTILIZATION_INFO_V1: c_uint =
    struct_version::<VgpuProcessesUtilizationInfoV1>(1);

/// An entry of a per-process list: the process it is about.
pub trait HasPid: Copy + Default {
    fn pid(&self) -> u32;
}

macro_rules! has_pid {
    ($($t:ty),*) => {$(
        impl HasPid for $t {
            fn pid(&self) -> u32 {
                self.pid
            }
        }
    )*};
}
has_pid!(
    ProcessInfoV1,
    ProcessInfoV2,
    ProcessUtilizationSample,
    ProcessUtilizationInfoV1,
    ProcessDetailV1,
    VgpuProcessUtilizationSample,
    VgpuProcessUtilizationInfoV1
);

/// An accounting pid list (`nvmlDeviceGetAccountingPids`) is bare pids.
impl HasPid for c_uint {
    fn pid(&self) -> u32 {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes and offsets as `nvml.h` lays them out (x86-64; pynvml's ctypes declarations agree).
    #[test]
    fn layouts_match_nvml_h() {
        assert_eq!(size_of::<ProcessInfoV1>(), 16);
        assert_eq!(size_of::<ProcessInfoV2>(), 24);
        assert_eq!(size_of::<ProcessUtilizationSample>(), 32);
        assert_eq!(offset_of!(ProcessUtilizationSample, sm_util), 16);
        assert_eq!(size_of::<ProcessUtilizationInfoV1>(), 40);
        assert_eq!(offset_of!(ProcessUtilizationInfoV1, pid), 8);
        assert_eq!(size_of::<ProcessesUtilizationInfoV1>(), 24);
        assert_eq!(offset_of!(ProcessesUtilizationInfoV1, proc_util_array), 16);
        assert_eq!(PROCESSES_UTILIZATION_INFO_V1, 0x0100_0018);
        assert_eq!(size_of::<ProcessDetailV1>(), 32);
        assert_eq!(
            offset_of!(ProcessDetailV1, used_gpu_cc_protected_memory),
            24
        );
        assert_eq!(size_of::<ProcessDetailListV1>(), 24);
        assert_eq!(offset_of!(ProcessDetailListV1, proc_array), 16);
        assert_eq!(PROCESS_DETAIL_LIST_V1, 0x0100_0018);
        assert_eq!(size_of::<VgpuProcessUtilizationSample>(), 96);
        assert_eq!(offset_of!(VgpuProcessUtilizationSample, time_stamp), 72);
        assert_eq!(size_of::<VgpuProcessUtilizationInfoV1>(), 104);
        assert_eq!(offset_of!(VgpuProcessUtilizationInfoV1, pid), 76);
        assert_eq!(size_of::<VgpuProcessesUtilizationInfoV1>(), 24);
        assert_eq!(VGPU_PROCESSES_UTILIZATION_INFO_V1, 0x0100_0018);
    }
}
