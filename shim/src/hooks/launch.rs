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
    ($name:ident) => {
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
                let _ticket = match crate::gate::enter() {
                    Ok(t) => t,
                    Err(rc) => return rc,
                };
                // SAFETY: forwarding the caller's arguments.
                unsafe { real_fn(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) }
            })
        }
    };
}
launch_kernel!(cuLaunchKernel);
launch_kernel!(cuLaunchKernel_ptsz);
launch_kernel!(cuLaunchCooperativeKernel);
launch_kernel!(cuLaunchCooperativeKernel_ptsz);

macro_rules! launch_ex {
    ($name:ident) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuLaunchKernelEx`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(config: *const c_void, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let real_fn = real!($name: unsafe extern "C" fn(*const c_void, CUfunction, *mut *mut c_void, *mut *mut c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let _ticket = match crate::gate::enter() {
                    Ok(t) => t,
                    Err(rc) => return rc,
                };
                // SAFETY: forwarding the caller's arguments.
                unsafe { real_fn(config, f, params, extra) }
            })
        }
    };
}
launch_ex!(cuLaunchKernelEx);
launch_ex!(cuLaunchKernelEx_ptsz);

macro_rules! graph_launch {
    ($name:ident) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuGraphLaunch`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(exec: CUgraphExec, stream: CUstream) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let real_fn = real!($name: unsafe extern "C" fn(CUgraphExec, CUstream) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let _ticket = match crate::gate::enter() {
                    Ok(t) => t,
                    Err(rc) => return rc,
                };
                // SAFETY: forwarding the caller's arguments.
                super::graph::committing(exec, || unsafe { real_fn(exec, stream) })
            })
        }
    };
}
graph_launch!(cuGraphLaunch);
graph_launch!(cuGraphLaunch_ptsz);
