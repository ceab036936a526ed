//! Primary contexts and contexts: creation, destruction, the current-context stack, and
//! context-wide queries and settings.

use crate::context::{self, check_flags};
use crate::driver::process;
use crate::types::*;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::Ordering;

fn primary_set_flags(dev: CUdevice, flags: c_uint) -> Res<()> {
    let p = process()?;
    let d = p.device(dev)?;
    check_flags(flags)?;
    let mut pr = p.primary[d as usize].lock();
    pr.flags = flags;
    if pr.active
        && let Ok(c) = context::lookup(p, pr.handle)
    {
        c.flags.store(flags, Ordering::Release);
    }
    Ok(())
}

fn ctx_create(pctx: *mut Handle, flags: c_uint, dev: CUdevice) -> Res<()> {
    need(pctx)?;
    let p = process()?;
    let d = p.device(dev)?;
    let h = context::create(p, d, flags)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(pctx, hptr(h)) }
}

fn ctx_destroy(ctx: Handle) -> Res<()> {
    let p = process()?;
    let h = hval(ctx);
    let c = context::lookup(p, h)?;
    if c.primary {
        // A primary context is released, not destroyed.
        return Err(err::INVALID_CONTEXT);
    }
    context::destroy(p, h)
}

cuda_fn! {
    fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) {
        need(pctx)?;
        let p = process()?;
        let d = p.device(dev)?;
        let h = context::primary_retain(p, d)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pctx, hptr(h)) }
    }

    fn cuDevicePrimaryCtxRelease(dev: CUdevice) {
        let p = process()?;
        let d = p.device(dev)?;
        context::primary_release(p, d)
    }

    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) {
        let p = process()?;
        let d = p.device(dev)?;
        context::primary_release(p, d)
    }

    fn cuDevicePrimaryCtxReset(dev: CUdevice) {
        let p = process()?;
        let d = p.device(dev)?;
        context::primary_reset(p, d)
    }

    fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) {
        let p = process()?;
        let d = p.device(dev)?;
        context::primary_reset(p, d)
    }

    fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) {
        need(flags)?;
        need(active)?;
        let p = process()?;
        let d = p.device(dev)?;
        let pr = p.primary[d as usize].lock();
        // SAFETY: output pointers from the caller (null checked).
        unsafe {
            write_out(flags, pr.flags)?;
            write_out(active, c_int::from(pr.active))
        }
    }

    fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) {
        primary_set_flags(dev, flags)
    }

    fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) {
        primary_set_flags(dev, flags)
    }

    fn cuCtxCreate(pctx: *mut Handle, flags: c_uint, dev: CUdevice) {
        ctx_create(pctx, flags, dev)
    }

    fn cuCtxCreate_v2(pctx: *mut Handle, flags: c_uint, dev: CUdevice) {
        ctx_create(pctx, flags, dev)
    }

    fn cuCtxCreate_v3(
        pctx: *mut Handle,
        params: *mut c_void,
        num_params: c_int,
        flags: c_uint,
        dev: CUdevice,
    ) {
        if num_params < 0 || (num_params > 0 && params.is_null()) {
            return Err(err::INVALID_VALUE);
        }
        if num_params > 0 {
            // Execution affinity (SM partitions) is not simulated.
            return Err(err::NOT_SUPPORTED);
        }
        ctx_create(pctx, flags, dev)
    }

    fn cuCtxCreate_v4(pctx: *mut Handle, params: *mut [usize; 3], flags: c_uint, dev: CUdevice) {
        if !params.is_null() {
            // SAFETY: CUctxCreateParams from the caller (non-null): three pointer-sized fields.
            let prm = unsafe { read_in(params)? };
            if prm[0] != 0 || prm[1] != 0 || prm[2] != 0 {
                // Execution affinity and CiG are not simulated.
                return Err(err::NOT_SUPPORTED);
            }
        }
        ctx_create(pctx, flags, dev)
    }

    fn cuCtxDestroy(ctx: Handle) {
        ctx_destroy(ctx)
    }

    fn cuCtxDestroy_v2(ctx: Handle) {
        ctx_destroy(ctx)
    }

    fn cuCtxGetCurrent(pctx: *mut Handle) {
        need(pctx)?;
        let p = process()?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pctx, hptr(context::current_handle(p))) }
    }

    fn cuCtxSetCurrent(ctx: Handle) {
        let p = process()?;
        let h = hval(ctx);
        if h != 0 {
            context::lookup(p, h)?;
        }
        context::set_current(p, h);
        Ok(())
    }

    fn cuCtxPushCurrent(ctx: Handle) {
        let p = process()?;
        let h = hval(ctx);
        context::lookup(p, h)?;
        context::push(p, h);
        Ok(())
    }

    fn cuCtxPushCurrent_v2(ctx: Handle) {
        let p = process()?;
        let h = hval(ctx);
        context::lookup(p, h)?;
        context::push(p, h);
        Ok(())
    }

    fn cuCtxPopCurrent(pctx: *mut Handle) {
        let p = process()?;
        let h = context::pop(p).ok_or(err::INVALID_CONTEXT)?;
        if !pctx.is_null() {
            // SAFETY: optional output pointer from the caller (non-null).
            unsafe { write_out(pctx, hptr(h))? };
        }
        Ok(())
    }

    fn cuCtxPopCurrent_v2(pctx: *mut Handle) {
        let p = process()?;
        let h = context::pop(p).ok_or(err::INVALID_CONTEXT)?;
        if !pctx.is_null() {
            // SAFETY: optional output pointer from the caller (non-null).
            unsafe { write_out(pctx, hptr(h))? };
        }
        Ok(())
    }

    fn cuCtxGetDevice(dev: *mut CUdevice) {
        need(dev)?;
        let (_, c) = context::require()?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(dev, c.device as CUdevice) }
    }

    fn cuCtxGetFlags(flags: *mut c_uint) {
        need(flags)?;
        let (_, c) = context::require()?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(flags, c.flags.load(Ordering::Acquire)) }
    }

    fn cuCtxSetFlags(flags: c_uint) {
        let (_, c) = context::require()?;
        check_flags(flags)?;
        c.flags.store(flags, Ordering::Release);
        Ok(())
    }

    fn cuCtxGetApiVersion(ctx: Handle, version: *mut c_uint) {
        need(version)?;
        let p = process()?;
        let h = if ctx.is_null() { context::current_handle(p) } else { hval(ctx) };
        context::lookup(p, h)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(version, 3020) }
    }

    fn cuCtxSynchronize() {
        let (p, c) = context::require()?;
        // Waiting for a capturing stream conflicts with its capture, from any thread.
        crate::graph::conflicts_context(p, c.handle)?;
        crate::graph::unsafe_call(p)?;
        c.synchronize()
    }

    fn cuCtxGetLimit(value: *mut usize, limit: c_uint) {
        need(value)?;
        let (_, c) = context::require()?;
        let v = *c.limits.lock().get(&limit).ok_or(err::UNSUPPORTED_LIMIT)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(value, v as usize) }
    }

    fn cuCtxSetLimit(limit: c_uint, value: usize) {
        let (_, c) = context::require()?;
        let mut l = c.limits.lock();
        let slot = l.get_mut(&limit).ok_or(err::UNSUPPORTED_LIMIT)?;
        *slot = value as u64;
        Ok(())
    }

    fn cuCtxGetCacheConfig(config: *mut c_uint) {
        need(config)?;
        let (_, c) = context::require()?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(config, c.cache_config.load(Ordering::Acquire)) }
    }

    fn cuCtxSetCacheConfig(config: c_uint) {
        let (_, c) = context::require()?;
        if config > 3 {
            return Err(err::INVALID_VALUE);
        }
        c.cache_config.store(config, Ordering::Release);
        Ok(())
    }

    fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) {
        context::require()?;
        if !least.is_null() {
            // SAFETY: optional output pointer from the caller (non-null).
            unsafe { write_out(least, 0)? };
        }
        if !greatest.is_null() {
            // SAFETY: optional output pointer from the caller (non-null).
            unsafe { write_out(greatest, -5)? };
        }
        Ok(())
    }
}
