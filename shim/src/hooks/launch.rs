//! Kernel and graph launches: each goes through the compute time-slicing gate (`crate::gate`),
//! which costs no system call while the tenant holds its slice, then to the driver.

#![allow(non_snake_case)]

use super::real;
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use std::ffi::{c_uint, c_void};

/// The start of `CUlaunchConfig`, up to its stream.
#[repr(C)]
struct LaunchConfigHead {
    dims: [c_uint; 7],
    stream: CUstream,
}

/// Passes the gate; a gated launch opens a busy period on its stream (see `crate::busy`).
#[inline]
fn enter(stream: CUstream, ptsz: bool) -> Result<crate::gate::Ticket, CUresult> {
    let ticket = crate::gate::enter()?;
    if let Some(device) = ticket.device() {
        crate::busy::launch(device, stream, ptsz);
    }
    Ok(ticket)
}

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
                let _ticket = match enter(stream, $ptsz) {
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

macro_rules! launch_ex {
    ($name:ident, $ptsz:expr) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuLaunchKernelEx`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(config: *const c_void, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let real_fn = real!($name: unsafe extern "C" fn(*const c_void, CUfunction, *mut *mut c_void, *mut *mut c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let stream = if config.is_null() {
                    std::ptr::null_mut()
                } else {
                    // SAFETY: a non-null `CUlaunchConfig` from the caller starts with 7
                    // unsigned ints and the stream.
                    unsafe { (*config.cast::<LaunchConfigHead>()).stream }
                };
                let _ticket = match enter(stream, $ptsz) {
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
                let _ticket = match enter(stream, $ptsz) {
                    Ok(t) => t,
                    Err(rc) => return rc,
                };
                // SAFETY: forwarding the caller's arguments.
                unsafe { real_fn(exec, stream) }
            })
        }
    };
}
graph_launch!(cuGraphLaunch, false);
graph_launch!(cuGraphLaunch_ptsz, true);
