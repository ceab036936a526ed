//! Context lifecycle. Contexts the application creates are tracked (the watcher drains them on
//! revocation). A context occupies device memory of its own: creating one (`cuCtxCreate*`, the
//! first `cuDevicePrimaryCtxRetain`, a green context that brings up the primary context) goes
//! through [`crate::footprint::create_context`] (reserved against the limit, measured by the
//! daemon). Destroying a context (or resetting / finally releasing a primary context) frees
//! every allocation made in it, so the tenant gets those bytes back at once rather than when
//! the process exits, and the daemon is told to measure the context's memory gone.
//!
//! Handlers of the entry-point table (`Context`).

use super::real;
use super::table::sig;
use crate::allocations;
use crate::cuda_types::*;
use crate::footprint;
use crate::registration;
use std::ffi::{c_int, c_uint, c_void};

/// The context whose memory an allocation made now belongs to: the calling thread's current
/// context (the primary context when that is a green context's), 0 if none.
pub(crate) fn current_context() -> u64 {
    let get = real!(cuCtxGetCurrent, 0);
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    if unsafe { get(&mut ctx) } == CUDA_SUCCESS {
        crate::contexts::memory_owner(ctx as u64)
    } else {
        0
    }
}

/// Gives back what the allocations of a destroyed context charged, and has the daemon measure
/// the device (`device`: the context's, when known).
fn context_gone(ctx: u64, device: Option<usize>) {
    crate::busy::forget_context(ctx);
    crate::bound::forget_context(ctx);
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

/// The tenant's device index of CUDA ordinal `dev` (registered processes only).
fn device_of(dev: CUdevice) -> Option<usize> {
    registration::current().and_then(|reg| super::init::device_of_ordinal(reg, dev))
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
/// `pctx` is the out-pointer `create` writes (the C API's contract).
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
                let destroy_ctx = real!(cuCtxDestroy_v2);
                // SAFETY: the creation succeeded, so `*pctx` is the new context, destroyed
                // before the application ever saw it.
                unsafe { destroy_ctx(*pctx) };
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
    // SAFETY: forwarding the caller's arguments; `pctx` is what the creation writes.
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
    // SAFETY: forwarding the caller's arguments; `pctx` is what the creation writes.
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
    // SAFETY: forwarding the caller's arguments; `pctx` is what the creation writes.
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
        context_gone(ctx, device_of(dev));
    }
    rc
}

/// Runs `retain` (which retains the primary context of `dev`, creating it when it is not
/// active) under the tenant's limit when it creates the context; `undo` releases what it
/// retained.
fn retain_primary(
    dev: CUdevice,
    retain: impl FnOnce() -> CUresult,
    undo: impl FnOnce(),
) -> CUresult {
    let creating = registration::current()
        .filter(|_| !primary_is_active(dev))
        .and_then(|reg| super::init::device_of_ordinal(reg, dev).map(|d| (reg, d)));
    match creating {
        Some((reg, device)) => footprint::create_context(reg, device, retain, undo),
        None => retain(),
    }
}

/// `cuDevicePrimaryCtxRetain`: the first retain creates the primary context, under the
/// tenant's limit.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn primary_retain(
    real: sig::cuDevicePrimaryCtxRetain,
    pctx: *mut CUcontext,
    dev: CUdevice,
) -> CUresult {
    let release = || {
        let release = real!(cuDevicePrimaryCtxRelease_v2);
        // SAFETY: balances the retain that just succeeded (the last reference: the context is
        // destroyed before the application saw it).
        unsafe { release(dev) };
    };
    // SAFETY: forwarding the caller's arguments.
    retain_primary(dev, || unsafe { real(pctx, dev) }, release)
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

/// `cuGreenCtxCreate`: tracked for draining (through the `CUcontext` it converts to); it holds
/// a reference to the device's primary context, whose memory it shares.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn green_ctx_create(
    real: sig::cuGreenCtxCreate,
    pctx: *mut CUgreenCtx,
    desc: *mut c_void,
    dev: CUdevice,
    flags: c_uint,
) -> CUresult {
    // A green context retains the device's primary context, creating it when not active.
    let destroy = || {
        let destroy = real!(cuGreenCtxDestroy);
        // SAFETY: the creation succeeded, so `*pctx` is the new green context, destroyed
        // before the application ever saw it.
        unsafe { destroy(*pctx) };
    };
    // SAFETY: forwarding the caller's arguments.
    let create = || unsafe { real(pctx, desc, dev, flags) };
    let rc = if pctx.is_null() {
        create()
    } else {
        retain_primary(dev, create, destroy)
    };
    if rc != CUDA_SUCCESS || pctx.is_null() {
        return rc;
    }
    let Some(reg) = registration::current() else {
        return rc;
    };
    let Some(device) = super::init::device_of_ordinal(reg, dev) else {
        return rc;
    };
    let from_green = real!(cuCtxFromGreenCtx, rc);
    // SAFETY: the driver succeeded, so `*pctx` holds the new green context.
    let green = unsafe { *pctx };
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer and the green context just created.
    if unsafe { from_green(&mut ctx, green) } == CUDA_SUCCESS {
        let primary = active_primary(dev).unwrap_or(0);
        crate::contexts::created_green(
            ctx as u64,
            device,
            crate::contexts::Green {
                handle: green as u64,
                ordinal: dev,
                primary,
            },
        );
    }
    rc
}

/// `cuGreenCtxDestroy`: releases its reference to the primary context; when that was the
/// last, the primary context is destroyed with its memory, which the tenant gets back.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn green_ctx_destroy(real: sig::cuGreenCtxDestroy, ctx: CUgreenCtx) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    let (rc, gone) =
        crate::contexts::destroy_green(ctx as u64, CUDA_SUCCESS, || unsafe { real(ctx) });
    if let Some(g) = gone
        && g.primary != 0
        && !primary_is_active(g.ordinal)
    {
        context_gone(g.primary, device_of(g.ordinal));
    }
    rc
}
