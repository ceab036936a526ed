//! Context creation and teardown. A context occupies device memory of its own: creating one
//! (`cuCtxCreate*`, the first `cuDevicePrimaryCtxRetain`) goes through
//! [`crate::footprint::create_context`] (reserved against the limit, measured by the daemon).
//! Destroying a context (or resetting / finally releasing a primary context) frees every
//! allocation made in it, so the tenant gets those bytes back at once rather than when the
//! process exits, and the daemon is told to measure the context's memory gone.

#![allow(non_snake_case)]

use super::real;
use crate::allocations;
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use crate::footprint;
use crate::registration;
use gpumux_common::accounting;
use std::ffi::{c_int, c_uint};

/// The calling thread's current context (0 if none).
pub fn current_context() -> u64 {
    let get = real!(cuCtxGetCurrent: unsafe extern "C" fn(*mut CUcontext) -> CUresult, 0);
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
        let _ = accounting::uncharge(&reg.accounting, reg.slot, r.device, r.bytes);
    }
    if let Some(device) = device {
        footprint::changed(reg, device);
    }
}

/// The primary context of `dev` if it is active (its handle is stable while it exists).
fn active_primary(dev: CUdevice) -> Option<u64> {
    let state = real!(cuDevicePrimaryCtxGetState: unsafe extern "C" fn(CUdevice, *mut c_uint, *mut c_int) -> CUresult, None);
    let retain = real!(cuDevicePrimaryCtxRetain: unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult, None);
    let release =
        real!(cuDevicePrimaryCtxRelease_v2: unsafe extern "C" fn(CUdevice) -> CUresult, None);
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
    let state = real!(cuDevicePrimaryCtxGetState: unsafe extern "C" fn(CUdevice, *mut c_uint, *mut c_int) -> CUresult, true);
    let (mut flags, mut active) = (0 as c_uint, 0 as c_int);
    // SAFETY: valid out-pointers.
    unsafe { state(dev, &mut flags, &mut active) != CUDA_SUCCESS || active != 0 }
}

macro_rules! ctx_destroy {
    ($name:ident) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuCtxDestroy`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(ctx: CUcontext) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(CUcontext) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let device = crate::contexts::device_of(ctx as u64);
                // SAFETY: forwarding the caller's argument.
                let rc = crate::contexts::destroy(ctx as u64, CUDA_SUCCESS, || unsafe { f(ctx) });
                if rc == CUDA_SUCCESS {
                    context_gone(ctx as u64, device);
                }
                rc
            })
        }
    };
}
ctx_destroy!(cuCtxDestroy);
ctx_destroy!(cuCtxDestroy_v2);

/// After the application created a context (now current on this thread): remember it.
fn context_created(rc: CUresult, pctx: *mut CUcontext, dev: CUdevice) {
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
fn create_tracked(
    pctx: *mut CUcontext,
    dev: CUdevice,
    create: impl FnOnce() -> CUresult,
) -> CUresult {
    let target = registration::current()
        .and_then(|reg| super::init::device_of_ordinal(reg, dev).map(|d| (reg, d)));
    let rc = match target {
        Some((reg, device)) if !pctx.is_null() => {
            let destroy = || {
                let f = real!(cuCtxDestroy_v2: unsafe extern "C" fn(CUcontext) -> CUresult);
                // SAFETY: the creation succeeded, so `*pctx` is the new context, destroyed
                // before the application ever saw it.
                unsafe { f(*pctx) };
            };
            footprint::create_context(reg, device, create, destroy)
        }
        _ => create(),
    };
    context_created(rc, pctx, dev);
    rc
}

macro_rules! ctx_create {
    ($name:ident) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuCtxCreate`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(*mut CUcontext, c_uint, CUdevice) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                // SAFETY: forwarding the caller's arguments.
                create_tracked(pctx, dev, || unsafe { f(pctx, flags, dev) })
            })
        }
    };
}
ctx_create!(cuCtxCreate);
ctx_create!(cuCtxCreate_v2);

/// # Safety
/// C ABI entry point; arguments as documented for `cuCtxCreate_v3` (execution affinity).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    pctx: *mut CUcontext,
    params: *mut std::ffi::c_void,
    num_params: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuCtxCreate_v3: unsafe extern "C" fn(*mut CUcontext, *mut std::ffi::c_void, c_int, c_uint, CUdevice) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        create_tracked(pctx, dev, || unsafe {
            f(pctx, params, num_params, flags, dev)
        })
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuCtxCreate_v4` (creation parameters).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut CUcontext,
    params: *mut std::ffi::c_void,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuCtxCreate_v4: unsafe extern "C" fn(*mut CUcontext, *mut std::ffi::c_void, c_uint, CUdevice) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        create_tracked(pctx, dev, || unsafe { f(pctx, params, flags, dev) })
    })
}

macro_rules! primary_teardown {
    ($name:ident, $always:expr) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for the primary-context call.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dev: CUdevice) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(CUdevice) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let ctx = registration::current().and_then(|_| active_primary(dev));
                // SAFETY: forwarding the caller's argument.
                let rc = unsafe { f(dev) };
                // A reset always destroys the primary context; a release only when it drops
                // the last reference.
                if rc == CUDA_SUCCESS
                    && let Some(ctx) = ctx
                    && ($always || !primary_is_active(dev))
                {
                    context_gone(ctx, registration::current().and_then(|reg| super::init::device_of_ordinal(reg, dev)));
                }
                rc
            })
        }
    };
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuDevicePrimaryCtxRetain`. The first
/// retain creates the primary context: it is created under the tenant's limit.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuDevicePrimaryCtxRetain: unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        let creating = registration::current()
            .filter(|_| !primary_is_active(dev))
            .and_then(|reg| super::init::device_of_ordinal(reg, dev).map(|d| (reg, d)));
        // SAFETY: forwarding the caller's arguments.
        let retain = || unsafe { f(pctx, dev) };
        match creating {
            Some((reg, device)) => {
                let release = || {
                    let f = real!(cuDevicePrimaryCtxRelease_v2: unsafe extern "C" fn(CUdevice) -> CUresult);
                    // SAFETY: balances the retain that just succeeded (the last reference:
                    // the context is destroyed before the application saw it).
                    unsafe { f(dev) };
                };
                footprint::create_context(reg, device, retain, release)
            }
            None => retain(),
        }
    })
}
primary_teardown!(cuDevicePrimaryCtxReset, true);
primary_teardown!(cuDevicePrimaryCtxReset_v2, true);
primary_teardown!(cuDevicePrimaryCtxRelease, false);
primary_teardown!(cuDevicePrimaryCtxRelease_v2, false);
