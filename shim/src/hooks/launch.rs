//! Kernel and graph launches: each goes through the compute time-slicing gate (`crate::gate`),
//! which costs no system call while the tenant holds its slice, then to the driver.
//!
//! Handlers of the entry-point table (`Launch`).

use super::table::sig;
use crate::cuda_types::*;
use std::ffi::{c_int, c_uint, c_void};

/// Runs `launch` holding a gate ticket (or returns the gate's error).
fn gated(launch: impl FnOnce() -> CUresult) -> CUresult {
    let _ticket = match crate::gate::enter() {
        Ok(t) => t,
        Err(rc) => return rc,
    };
    launch()
}

/// `cuLaunchKernel`/`_ptsz`, `cuLaunchCooperativeKernel`/`_ptsz` (one signature).
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn launch_kernel(
    real: sig::cuLaunchKernel,
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
    // SAFETY: forwarding the caller's arguments.
    gated(|| unsafe { real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) })
}

/// `cuLaunchKernelEx`/`_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn launch_kernel_ex(
    real: sig::cuLaunchKernelEx,
    config: *const c_void,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    gated(|| unsafe { real(config, f, params, extra) })
}

/// `cuGraphLaunch`/`_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn graph_launch(
    real: sig::cuGraphLaunch,
    exec: CUgraphExec,
    stream: CUstream,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    gated(|| unsafe { real(exec, stream) })
}

/// `cuLaunchCooperativeKernelMultiDevice` (deprecated): kernels on several devices at once,
/// gated on the calling thread's device.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn launch_multi_device(
    real: sig::cuLaunchCooperativeKernelMultiDevice,
    params: *mut c_void,
    num_devices: c_uint,
    flags: c_uint,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    gated(|| unsafe { real(params, num_devices, flags) })
}

/// `cuLaunch` (pre-4.0 API: one block).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn launch_legacy(real: sig::cuLaunch, f: CUfunction) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    gated(|| unsafe { real(f) })
}

/// `cuLaunchGrid` (pre-4.0 API).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn launch_grid(
    real: sig::cuLaunchGrid,
    f: CUfunction,
    grid_width: c_int,
    grid_height: c_int,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    gated(|| unsafe { real(f, grid_width, grid_height) })
}

/// `cuLaunchGridAsync` (pre-4.0 API).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn launch_grid_async(
    real: sig::cuLaunchGridAsync,
    f: CUfunction,
    grid_width: c_int,
    grid_height: c_int,
    stream: CUstream,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    gated(|| unsafe { real(f, grid_width, grid_height, stream) })
}
