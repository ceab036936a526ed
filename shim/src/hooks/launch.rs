//! Kernel and graph launches: each goes through the compute time-slicing gate (`crate::gate`),
//! which costs no system call while the tenant holds its slice, then to the driver. A graph
//! launch is one unit of the holder's work (the drain waits for all of it); its graph memory is
//! charged before the driver commits it (`super::graph`). A launch into a capturing stream puts
//! nothing on the device: without the slice it passes the gate (asked of the driver only then).
//!
//! While the tenant's queued work is bounded (a higher class shares the device), the gate waits
//! for room first and a successful launch is counted (`crate::bound`).
//!
//! Handlers of the entry-point table (`Launch`); `PTSZ` marks the `_ptsz` variants, where a
//! null stream is the calling thread's per-thread stream.

use super::table::sig;
use crate::cuda_types::*;
use std::ffi::{c_int, c_uint, c_void};

/// Runs `launch` on `stream` holding a gate ticket (or returns the gate's error). A launch that
/// puts work on a time-sliced device opens a busy period on its stream (`crate::busy`); one
/// into a capturing stream puts nothing on the device.
fn gated(stream: CUstream, ptsz: bool, launch: impl FnOnce() -> CUresult) -> CUresult {
    let capturing = || crate::captures::is_capturing(stream as u64, ptsz);
    let ticket = match crate::gate::enter(crate::gate::Launch { stream, ptsz }, capturing) {
        Ok(t) => t,
        Err(rc) => return rc,
    };
    let precise = match ticket.device() {
        Some(device) if !(crate::captures::any() && capturing()) => {
            crate::busy::launch(device, stream, ptsz)
        }
        _ => None,
    };
    let rc = launch();
    if rc == CUDA_SUCCESS {
        if let Some(p) = precise {
            crate::busy::launched(p);
        }
        ticket.launched();
    }
    drop(ticket);
    rc
}

/// `cuLaunchKernel`; `PTSZ`: `cuLaunchKernel_ptsz`.
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn launch_kernel<const PTSZ: bool>(
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
    gated(stream, PTSZ, || unsafe {
        real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra)
    })
}

/// `cuLaunchCooperativeKernel` (like `cuLaunchKernel` without `extra`: 10 parameters in
/// `cuda.h`); `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn launch_cooperative_kernel<const PTSZ: bool>(
    real: sig::cuLaunchCooperativeKernel,
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
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    gated(stream, PTSZ, || unsafe {
        real(f, gx, gy, gz, bx, by, bz, shared, stream, params)
    })
}

/// The stream of a `CUlaunchConfig` (after the grid, block and shared-memory `unsigned int`s).
///
/// # Safety
/// `config` is null or a `CUlaunchConfig`.
unsafe fn config_stream(config: *const c_void) -> CUstream {
    if config.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: a CUlaunchConfig: 7 unsigned ints, then the stream handle at offset 32.
    unsafe { *(config.cast::<u8>().add(32) as *const CUstream) }
}

/// `cuLaunchKernelEx`; `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn launch_kernel_ex<const PTSZ: bool>(
    real: sig::cuLaunchKernelEx,
    config: *const c_void,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    // SAFETY: the caller's launch configuration.
    let stream = unsafe { config_stream(config) };
    // SAFETY: forwarding the caller's arguments.
    gated(stream, PTSZ, || unsafe { real(config, f, params, extra) })
}

/// `cuGraphLaunch`; `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn graph_launch<const PTSZ: bool>(
    real: sig::cuGraphLaunch,
    exec: CUgraphExec,
    stream: CUstream,
) -> CUresult {
    gated(stream, PTSZ, || {
        // SAFETY: forwarding the caller's arguments.
        super::graph::committing(exec, || unsafe { real(exec, stream) })
    })
}

/// `cuLaunchCooperativeKernelMultiDevice` (deprecated): kernels on several devices at once,
/// gated on the calling thread's device (its streams are in `params`; the legacy stream stands
/// for them in the capture check).
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
    gated(std::ptr::null_mut(), false, || unsafe {
        real(params, num_devices, flags)
    })
}

/// `cuLaunch` (pre-4.0 API: one block, on the legacy NULL stream).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn launch_legacy(real: sig::cuLaunch, f: CUfunction) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    gated(std::ptr::null_mut(), false, || unsafe { real(f) })
}

/// `cuLaunchGrid` (pre-4.0 API, on the legacy NULL stream).
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
    gated(std::ptr::null_mut(), false, || unsafe {
        real(f, grid_width, grid_height)
    })
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
    gated(stream, false, || unsafe {
        real(f, grid_width, grid_height, stream)
    })
}
