//! Context lifecycle. A context occupies device memory of its own: creating one
//! (`cuCtxCreate*`, the first `cuDevicePrimaryCtxRetain`) goes through
//! [`crate::footprint::create_context`] (reserved against the limit, measured by the daemon), and
//! contexts the application creates are tracked (the watcher drains them on revocation).
//! Destroying a context (or resetting / finally releasing a primary context) frees every
//! allocation made in it, so the tenant gets those bytes back at once rather than when the
//! process exits, and the daemon is told to measure the context's memory gone.
//!
//! Handlers of the entry-point table (`Context`).

use super::real;
use super::table::sig;
use crate::allocations;
use crate::cuda_types::*;
use crate::footprint;
use crate::registration;
use std::ffi::{c_int, c_uint, c_void};

/// The calling thread's current context (0 if none).
pub(super) fn current_context() -> u64 {
    let get = real!(cuCtxGetCurrent, 0);
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    if unsafe { get(&mut ctx) } == CUDA_SUCCESS {
        ctx as u64
    } else {
        0
    }
}

/// Gives back what the allocations of a destroyed context charged, and has the daemon measure
/// the device (`device`: the context's, when known).
fn context_gone(ctx: u64, device: Option<usize>) {
    let Some(reg) = registration::current() else {
        return;
    };
    for r in allocations::remove_context(ctx) {
        super::memory::give_back_bytes(reg, r.device, r.bytes);
    }
    super::graph::context_gone(ctx);
    if let Some(device) = device {
        footprint::changed(reg, device);
    }
}

/// The primary context of `dev` if it is active (its handle is stable while it exists).
fn active_primary(dev: CUdevice) -> Option<u64> {
    let state = real!(cuDevicePrimaryCtxGetState, None);
    let retain = real!(cuDevicePrimaryCtxRetain, None);
    let release = real!(cuDevicePrimaryCtxRelease_v2, None);
    let (mut flags, mut active) = (0 as c_uint, 0 as c_int);
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointers; a retain is balanced by a release, leaving the reference
    // count as it was.
    unsafe {
        if state(dev, &mut flags, &mut active) != CUDA_SUCCESS || active == 0 {
            return None;
        }
        if retain(&mut ctx, dev) != CUDA_SUCCESS {
            return None;
        }
        release(dev);
    }
    Some(ctx as u64)
}

fn primary_is_active(dev: CUdevice) -> bool {
    let state = real!(cuDevicePrimaryCtxGetState, true);
    let (mut flags, mut active) = (0 as c_uint, 0 as c_int);
    // SAFETY: valid out-pointers.
    unsafe { state(dev, &mut flags, &mut active) != CUDA_SUCCESS || active != 0 }
}

/// `cuCtxDestroy`/`_v2`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn ctx_destroy(real: sig::cuCtxDestroy_v2, ctx: CUcontext) -> CUresult {
    let device = crate::contexts::device_of(ctx as u64);
    // SAFETY: forwarding the caller's argument.
    let rc = crate::contexts::destroy(ctx as u64, CUDA_SUCCESS, || unsafe { real(ctx) });
    if rc == CUDA_SUCCESS {
        context_gone(ctx as u64, device);
    }
    rc
}

/// After the application created a context (now current on this thread): remember it.
///
/// # Safety
/// `pctx` is the caller's out-pointer of a creation call that returned `rc`.
unsafe fn context_created(rc: CUresult, pctx: *mut CUcontext, dev: CUdevice) {
    if rc != CUDA_SUCCESS || pctx.is_null() {
        return;
    }
    if let Some(reg) = registration::current()
        && let Some(device) = super::init::device_of_ordinal(reg, dev)
    {
        // SAFETY: the driver succeeded, so `*pctx` holds the new context.
        crate::contexts::created(unsafe { *pctx } as u64, device);
    }
}

/// Creates a context on ordinal `dev` with `create` (the real call writing `*pctx`) under the
/// tenant's limit, and remembers it.
///
/// # Safety
/// `pctx` is the caller's out-pointer that `create` writes.
unsafe fn create_tracked(
    pctx: *mut CUcontext,
    dev: CUdevice,
    create: impl FnOnce() -> CUresult,
) -> CUresult {
    let target = registration::current()
        .and_then(|reg| super::init::device_of_ordinal(reg, dev).map(|d| (reg, d)));
    let rc = match target {
        Some((reg, device)) if !pctx.is_null() => {
            let destroy = || {
                let f = real!(cuCtxDestroy_v2);
                // SAFETY: the creation succeeded, so `*pctx` is the new context, destroyed
                // before the application ever saw it.
                unsafe { f(*pctx) };
            };
            footprint::create_context(reg, device, create, destroy)
        }
        _ => create(),
    };
    // SAFETY: the caller's out-pointer of the call just made.
    unsafe { context_created(rc, pctx, dev) };
    rc
}

/// `cuCtxCreate`/`_v2`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn ctx_create(
    real: sig::cuCtxCreate_v2,
    pctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments; `pctx` is the out-pointer the call writes.
    unsafe { create_tracked(pctx, dev, || real(pctx, flags, dev)) }
}

/// `cuCtxCreate_v3` (execution affinity).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn ctx_create_v3(
    real: sig::cuCtxCreate_v3,
    pctx: *mut CUcontext,
    params: *mut c_void,
    num_params: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments; `pctx` is the out-pointer the call writes.
    unsafe { create_tracked(pctx, dev, || real(pctx, params, num_params, flags, dev)) }
}

/// `cuCtxCreate_v4` (creation parameters).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn ctx_create_v4(
    real: sig::cuCtxCreate_v4,
    pctx: *mut CUcontext,
    params: *mut c_void,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments; `pctx` is the out-pointer the call writes.
    unsafe { create_tracked(pctx, dev, || real(pctx, params, flags, dev)) }
}

/// Runs a primary-context teardown; `always`: it destroys the context (a reset), else only
/// when it drops the last reference (a release).
///
/// # Safety
/// The C API's contract for `real`.
unsafe fn primary_teardown(
    real: unsafe extern "C" fn(CUdevice) -> CUresult,
    dev: CUdevice,
    always: bool,
) -> CUresult {
    let ctx = registration::current().and_then(|_| active_primary(dev));
    // SAFETY: forwarding the caller's argument.
    let rc = unsafe { real(dev) };
    if rc == CUDA_SUCCESS
        && let Some(ctx) = ctx
        && (always || !primary_is_active(dev))
    {
        context_gone(
            ctx,
            registration::current().and_then(|reg| super::init::device_of_ordinal(reg, dev)),
        );
    }
    rc
}

/// `cuDevicePrimaryCtxRetain`. The first retain creates the primary context: it is created
/// under the tenant's limit.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn primary_retain(
    real: sig::cuDevicePrimaryCtxRetain,
    pctx: *mut CUcontext,
    dev: CUdevice,
) -> CUresult {
    let creating = registration::current()
        .filter(|_| !primary_is_active(dev))
        .and_then(|reg| super::init::device_of_ordinal(reg, dev).map(|d| (reg, d)));
    // SAFETY: forwarding the caller's arguments.
    let retain = || unsafe { real(pctx, dev) };
    match creating {
        Some((reg, device)) => {
            let release = || {
                let f = real!(cuDevicePrimaryCtxRelease_v2);
                // SAFETY: balances the retain that just succeeded (the last reference: the
                // context is destroyed before the application saw it).
                unsafe { f(dev) };
            };
            footprint::create_context(reg, device, retain, release)
        }
        None => retain(),
    }
}

/// `cuDevicePrimaryCtxReset`/`_v2`: always destroys the primary context.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn primary_reset(
    real: sig::cuDevicePrimaryCtxReset_v2,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: the caller's contract.
    unsafe { primary_teardown(real, dev, true) }
}

/// `cuDevicePrimaryCtxRelease`/`_v2`: destroys the primary context with its last reference.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn primary_release(
    real: sig::cuDevicePrimaryCtxRelease_v2,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: the caller's contract.
    unsafe { primary_teardown(real, dev, false) }
}
