//! Kernel and graph launches: each goes through the compute time-slicing gate (`crate::gate`),
//! which costs no system call while the tenant holds its slice, then to the driver. A graph
//! launch is one unit of the holder's work (the drain waits for all of it); its graph memory is
//! charged before the driver commits it (`super::graph`).

#![allow(non_snake_case)]

use super::real;
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use std::ffi::{c_uint, c_void};

macro_rules! launch_kernel {
    ($name:ident, $ptsz:expr) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuLaunchKernel`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            f: CUfunction,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            shared: c_uint,
            stream: CUstream,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let real_fn = real!($name: unsafe extern "C" fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let _ticket = match crate::gate::enter(|| crate::captures::is_capturing(stream as u64, $ptsz)) {
                    Ok(t) => t,
                    Err(rc) => return rc,
                };
                // SAFETY: forwarding the caller's arguments.
                unsafe { real_fn(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) }
            })
        }
    };
}
launch_kernel!(cuLaunchKernel, false);
launch_kernel!(cuLaunchKernel_ptsz, true);
launch_kernel!(cuLaunchCooperativeKernel, false);
launch_kernel!(cuLaunchCooperativeKernel_ptsz, true);

/// The stream of a `CUlaunchConfig` (after the grid, block and shared-memory `unsigned int`s).
fn config_stream(config: *const c_void) -> CUstream {
    if config.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: a non-null CUlaunchConfig from the caller: 7 unsigned ints, then the stream
    // handle at offset 32.
    unsafe { *(config.cast::<u8>().add(32) as *const CUstream) }
}

macro_rules! launch_ex {
    ($name:ident, $ptsz:expr) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuLaunchKernelEx`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(config: *const c_void, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let real_fn = real!($name: unsafe extern "C" fn(*const c_void, CUfunction, *mut *mut c_void, *mut *mut c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let _ticket = match crate::gate::enter(|| crate::captures::is_capturing(config_stream(config) as u64, $ptsz)) {
                    Ok(t) => t,
                    Err(rc) => return rc,
                };
                // SAFETY: forwarding the caller's arguments.
                unsafe { real_fn(config, f, params, extra) }
            })
        }
    };
}
launch_ex!(cuLaunchKernelEx, false);
launch_ex!(cuLaunchKernelEx_ptsz, true);

macro_rules! graph_launch {
    ($name:ident, $ptsz:expr) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuGraphLaunch`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(exec: CUgraphExec, stream: CUstream) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let real_fn = real!($name: unsafe extern "C" fn(CUgraphExec, CUstream) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let _ticket = match crate::gate::enter(|| crate::captures::is_capturing(stream as u64, $ptsz)) {
                    Ok(t) => t,
                    Err(rc) => return rc,
                };
                // SAFETY: forwarding the caller's arguments.
                super::graph::committing(exec, || unsafe { real_fn(exec, stream) })
            })
        }
    };
}
graph_launch!(cuGraphLaunch, false);
graph_launch!(cuGraphLaunch_ptsz, true);
