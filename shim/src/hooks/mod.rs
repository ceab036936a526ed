//! The shim's driver-facing surface: which symbols it hooks, their real counterparts, and the
//! exports themselves (in submodules, one job each).
//!
//! `hooked!` lists every exported hook once; it generates a [`RealFn`] slot per name (module
//! [`real_fns`]) and [`lookup`], which `dlsym` and `cuGetProcAddress` use to swap a real
//! address for the shim's wrapper. Helpers are real functions the shim calls but does not hook.

use crate::real::{LIBCUDA, LIBNVML, RealFn};
use std::ffi::c_void;

pub mod context;
#[cfg(not(test))]
pub mod dlsym;
pub mod init;
pub mod launch;
pub mod meminfo;
pub mod memory;
pub mod modules;
pub mod nvml_procs;
pub mod procaddress;
pub mod sync;

macro_rules! hooked {
    (cuda: [$($c:ident),* $(,)?] nvml: [$($n:ident),* $(,)?] helpers_cuda: [$($hc:ident),* $(,)?] helpers_nvml: [$($hn:ident),* $(,)?]) => {
        /// Real-function slots, one per hooked or helper symbol, named like the symbol.
        #[allow(non_upper_case_globals)]
        pub mod real_fns {
            use super::*;
            $(pub static $c: RealFn = RealFn::new(
                // SAFETY: the literal is NUL-terminated with no interior NUL.
                unsafe { std::ffi::CStr::from_bytes_with_nul_unchecked(concat!(stringify!($c), "\0").as_bytes()) }, &LIBCUDA);)*
            $(pub static $n: RealFn = RealFn::new(
                // SAFETY: as above.
                unsafe { std::ffi::CStr::from_bytes_with_nul_unchecked(concat!(stringify!($n), "\0").as_bytes()) }, &LIBNVML);)*
            $(pub static $hc: RealFn = RealFn::new(
                // SAFETY: as above.
                unsafe { std::ffi::CStr::from_bytes_with_nul_unchecked(concat!(stringify!($hc), "\0").as_bytes()) }, &LIBCUDA);)*
            $(pub static $hn: RealFn = RealFn::new(
                // SAFETY: as above.
                unsafe { std::ffi::CStr::from_bytes_with_nul_unchecked(concat!(stringify!($hn), "\0").as_bytes()) }, &LIBNVML);)*
        }

        /// The shim's wrapper and real slot for a hooked symbol name.
        pub fn lookup(name: &[u8]) -> Option<(&'static RealFn, *mut c_void)> {
            #[cfg(not(test))]
            {
                match name {
                    $(n if n == stringify!($c).as_bytes() => Some((&real_fns::$c, exports::$c as *mut c_void)),)*
                    $(n if n == stringify!($n).as_bytes() => Some((&real_fns::$n, exports::$n as *mut c_void)),)*
                    _ => None,
                }
            }
            #[cfg(test)]
            {
                let _ = name;
                None
            }
        }

        /// All hooked names (for tests and diagnostics).
        pub const HOOKED_NAMES: &[&str] = &[$(stringify!($c),)* $(stringify!($n),)*];
    };
}

#[cfg(not(test))]
mod exports {
    pub use super::context::*;
    pub use super::init::*;
    pub use super::launch::*;
    pub use super::meminfo::*;
    pub use super::memory::*;
    pub use super::modules::*;
    pub use super::nvml_procs::*;
    pub use super::procaddress::*;
    pub use super::sync::*;
}

hooked! {
    cuda: [
        cuInit, cuGetProcAddress, cuGetProcAddress_v2,
        cuMemAlloc, cuMemAlloc_v2, cuMemAllocPitch, cuMemAllocPitch_v2, cuMemAllocManaged,
        cuMemAllocAsync, cuMemAllocAsync_ptsz, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz,
        cuMemFree, cuMemFree_v2, cuMemFreeAsync, cuMemFreeAsync_ptsz,
        cuMemCreate, cuMemRelease,
        cuArrayCreate, cuArrayCreate_v2, cuArray3DCreate, cuArray3DCreate_v2, cuArrayDestroy,
        cuMipmappedArrayCreate, cuMipmappedArrayDestroy,
        cuMemGetInfo, cuMemGetInfo_v2, cuDeviceTotalMem, cuDeviceTotalMem_v2,
        cuLaunchKernel, cuLaunchKernel_ptsz, cuLaunchKernelEx, cuLaunchKernelEx_ptsz,
        cuLaunchCooperativeKernel, cuLaunchCooperativeKernel_ptsz, cuGraphLaunch, cuGraphLaunch_ptsz,
        cuCtxCreate, cuCtxCreate_v2, cuCtxCreate_v3, cuCtxCreate_v4,
        cuCtxDestroy, cuCtxDestroy_v2, cuDevicePrimaryCtxReset, cuDevicePrimaryCtxReset_v2,
        cuDevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2,
        cuCtxSynchronize, cuStreamSynchronize, cuStreamSynchronize_ptsz, cuEventSynchronize,
        cuDevicePrimaryCtxRetain,
        cuModuleLoad, cuModuleLoadData, cuModuleLoadDataEx, cuModuleLoadFatBinary, cuModuleUnload,
        cuLibraryLoadData, cuLibraryLoadFromFile, cuLibraryUnload,
    ]
    nvml: [
        nvmlInit, nvmlInit_v2, nvmlInitWithFlags, nvmlDeviceGetMemoryInfo, nvmlDeviceGetMemoryInfo_v2,
        nvmlDeviceGetComputeRunningProcesses, nvmlDeviceGetComputeRunningProcesses_v2,
        nvmlDeviceGetComputeRunningProcesses_v3,
    ]
    helpers_cuda: [
        cuCtxGetDevice, cuDeviceGetCount, cuDeviceGet, cuDeviceGetUuid, cuDeviceGetUuid_v2,
        cuDevicePrimaryCtxGetState, cuCtxGetCurrent,
        cuCtxPushCurrent_v2, cuCtxPopCurrent_v2,
    ]
    helpers_nvml: [nvmlDeviceGetUUID]
}

/// Calls the real function `$name` with C signature `$ty`, or returns `$missing` from the
/// enclosing function if the driver lacks it.
macro_rules! real {
    ($name:ident : $ty:ty) => {
        match crate::hooks::real_fns::$name.get() {
            // SAFETY: the driver exports `$name` with exactly the C signature `$ty`
            // (CUDA driver API / NVML headers), and the address is not the shim's own.
            Some(a) => unsafe { std::mem::transmute::<usize, $ty>(a) },
            None => return,
        }
    };
    ($name:ident : $ty:ty, $missing:expr) => {
        match crate::hooks::real_fns::$name.get() {
            // SAFETY: the driver exports `$name` with exactly the C signature `$ty`
            // (CUDA driver API / NVML headers), and the address is not the shim's own.
            Some(a) => unsafe { std::mem::transmute::<usize, $ty>(a) },
            None => return $missing,
        }
    };
}
pub(crate) use real;

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_sorted_out() {
        assert!(super::HOOKED_NAMES.contains(&"cuMemAlloc_v2"));
        assert!(
            super::HOOKED_NAMES
                .iter()
                .all(|n| n.starts_with("cu") || n.starts_with("nvml"))
        );
    }
}
