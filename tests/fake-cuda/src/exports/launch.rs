//! Module, library and function entry points, and kernel launches (with `_ptsz` variants).

use crate::context;
use crate::driver::{Process, process};
use crate::graph::{self, KernelNode, NodeKind, Route};
use crate::module::{Function, OPTIN_MAX_SHARED, image_bytes};
use crate::stream::{self, Op};
use crate::types::*;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::Ordering;

/// Loads an image as a module of context `ctx` (`Some((handle, device))`) or as a library
/// (`None`), charging its device memory.
fn load(p: &Process, ctx: Option<(u64, u32)>, image: *const c_void) -> Res<u64> {
    // SAFETY: the caller passes a valid image (NUL-terminated when text); null checked.
    let bytes = unsafe { image_bytes(image)? };
    p.modules.load_image(p, ctx, bytes)
}

fn module_load(out: *mut Handle, image: *const c_void) -> Res<()> {
    need(out)?;
    let (p, c) = context::require()?;
    let h = load(p, Some((c.handle, c.device)), image)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(out, hptr(h)) }
}

/// The argument buffer of an `extra` array: `(CU_LAUNCH_PARAM_BUFFER_POINTER,
/// CU_LAUNCH_PARAM_BUFFER_SIZE)`.
///
/// # Safety
/// `extra` is a non-null `(key, value)` array ending with `CU_LAUNCH_PARAM_END`.
pub(crate) unsafe fn extra_buffer(extra: *mut *mut c_void) -> Res<(*const u8, usize)> {
    let (mut buf, mut size) = (std::ptr::null::<u8>(), 0usize);
    let mut i = 0;
    loop {
        // SAFETY: per this function's contract.
        let key = unsafe { *extra.add(i) } as usize;
        match key {
            0 => break,
            1 => {
                // SAFETY: the value follows its key in the `extra` array.
                buf = unsafe { *extra.add(i + 1) } as *const u8;
            }
            2 => {
                // SAFETY: the value is a pointer to a size_t.
                size = unsafe { read_in(*extra.add(i + 1) as *const usize)? };
            }
            _ => return Err(err::INVALID_VALUE),
        }
        i += 2;
    }
    if buf.is_null() && size > 0 {
        return Err(err::INVALID_VALUE);
    }
    Ok((buf, size))
}

/// Reads the first `u64` kernel parameter from `kernelParams` or the `extra` buffer.
///
/// # Safety
/// `params`/`extra` follow the `cuLaunchKernel` conventions.
unsafe fn first_u64(params: *mut *mut c_void, extra: *mut *mut c_void) -> Res<u64> {
    if !params.is_null() {
        // SAFETY: kernelParams holds one pointer per parameter; the first points to a u64.
        let p0 = unsafe { *params };
        // SAFETY: as above (null checked by read_in).
        return unsafe { read_in(p0 as *const u64) };
    }
    if extra.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: per this function's contract.
    let (buf, size) = unsafe { extra_buffer(extra)? };
    if buf.is_null() || size < 8 {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: the argument buffer holds `size` >= 8 bytes.
    Ok(unsafe { (buf as *const u64).read_unaligned() })
}

/// Checks a launch configuration as the driver does (launches and graph kernel nodes).
pub(crate) fn check_config(
    func: &Function,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shmem: c_uint,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    cooperative: bool,
) -> Res<()> {
    let [gx, gy, gz] = grid;
    let [bx, by, bz] = block;
    if gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 {
        return Err(err::INVALID_VALUE);
    }
    if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 || bx > 1024 || by > 1024 || bz > 64 {
        return Err(err::INVALID_VALUE);
    }
    let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
    if threads > 1024 {
        return Err(err::INVALID_VALUE);
    }
    if shmem as i64 > i64::from(func.max_dynamic_shared.load(Ordering::Relaxed)) {
        return Err(err::INVALID_VALUE);
    }
    if !params.is_null() && !extra.is_null() {
        return Err(err::INVALID_VALUE);
    }
    if func.params > 0 && params.is_null() && extra.is_null() {
        return Err(err::INVALID_VALUE);
    }
    if cooperative {
        let per_sm = (2048 / threads).clamp(1, 32);
        let blocks = u64::from(gx) * u64::from(gy) * u64::from(gz);
        if blocks > per_sm * crate::exports::device::SM_COUNT as u64 {
            return Err(err::COOPERATIVE_LAUNCH_TOO_LARGE);
        }
    }
    Ok(())
}

/// How long a launch of `func` occupies the device: `spin` its first `u64` parameter, any other
/// kernel `FAKEGPU_KERNEL_NS`.
///
/// # Safety
/// `params`/`extra` follow the `cuLaunchKernel` conventions.
pub(crate) unsafe fn kernel_ns(
    p: &Process,
    func: &Function,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Res<u64> {
    if func.name == "spin" {
        // SAFETY: per this function's contract.
        unsafe { first_u64(params, extra) }
    } else {
        Ok(p.kernel_ns)
    }
}

#[allow(clippy::too_many_arguments)]
fn launch(
    f: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shmem: c_uint,
    h: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    ptds: bool,
    cooperative: bool,
) -> Res<()> {
    let p = process()?;
    let func = p.modules.function(hval(f))?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    if func.ctx != 0 && func.ctx != ctx.handle {
        return Err(err::INVALID_HANDLE);
    }
    check_config(&func, grid, block, shmem, params, extra, cooperative)?;
    match graph::route(p, &ctx, &s)? {
        Route::Submit => {
            // SAFETY: params/extra follow the cuLaunchKernel conventions.
            let ns = unsafe { kernel_ns(p, &func, params, extra)? };
            stream::submit(&ctx, &s, Op::Kernel { ns });
        }
        Route::Capture(id) => {
            // SAFETY: as above.
            let k = unsafe { KernelNode::copy(p, func, grid, block, shmem, params, extra)? };
            graph::capture_node(p, id, &s, NodeKind::Kernel(k))?;
        }
    }
    Ok(())
}

/// `CUlaunchConfig`.
#[repr(C)]
pub struct LaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shmem: c_uint,
    stream: Handle,
    attrs: *const LaunchAttribute,
    num_attrs: c_uint,
}

/// `CUlaunchAttribute`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LaunchAttribute {
    id: c_uint,
    pad: [u8; 4],
    value: [u8; 64],
}

fn launch_ex(
    config: *const LaunchConfig,
    f: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    ptds: bool,
) -> Res<()> {
    if config.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: non-null config from the caller.
    let cfg = unsafe { &*config };
    let mut cooperative = false;
    if cfg.num_attrs > 0 && cfg.attrs.is_null() {
        return Err(err::INVALID_VALUE);
    }
    for i in 0..cfg.num_attrs as usize {
        // SAFETY: the caller passes num_attrs attributes.
        let a = unsafe { read_in(cfg.attrs.add(i))? };
        match a.id {
            2 => {
                cooperative =
                    i32::from_ne_bytes([a.value[0], a.value[1], a.value[2], a.value[3]]) != 0;
            }
            0..=20 => {}
            _ => return Err(err::INVALID_VALUE),
        }
    }
    launch(
        f,
        cfg.grid,
        cfg.block,
        cfg.shmem,
        cfg.stream,
        params,
        extra,
        ptds,
        cooperative,
    )
}

cuda_fn! {
    fn cuModuleLoadData(module: *mut Handle, image: *const c_void) {
        module_load(module, image)
    }

    fn cuModuleLoadDataEx(
        module: *mut Handle,
        image: *const c_void,
        _num_options: c_uint,
        _options: *mut c_int,
        _values: *mut *mut c_void,
    ) {
        module_load(module, image)
    }

    fn cuModuleLoadFatBinary(module: *mut Handle, image: *const c_void) {
        module_load(module, image)
    }

    fn cuModuleLoad(module: *mut Handle, fname: *const c_char) {
        need(module)?;
        // SAFETY: C string argument from the caller (null checked).
        let path = unsafe { cstr(fname)? };
        let (p, c) = context::require()?;
        let path = std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()));
        let mut data = std::fs::read(path).map_err(|_| err::FILE_NOT_FOUND)?;
        data.push(0);
        let h = load(p, Some((c.handle, c.device)), data.as_ptr().cast())?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(module, hptr(h)) }
    }

    fn cuModuleUnload(module: Handle) {
        let p = process()?;
        p.modules.unload(p, hval(module), false)
    }

    fn cuModuleGetFunction(func: *mut Handle, module: Handle, name: *const c_char) {
        need(func)?;
        // SAFETY: C string argument from the caller (null checked).
        let name = unsafe { cstr(name)? };
        let p = process()?;
        let m = p.modules.module(hval(module), false)?;
        let name = name.to_str().map_err(|_| err::NOT_FOUND)?;
        let h = *m.entries.get(name).ok_or(err::NOT_FOUND)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(func, hptr(h)) }
    }

    fn cuModuleGetGlobal_v2(_dptr: *mut CUdeviceptr, _bytes: *mut usize, module: Handle, name: *const c_char) {
        // SAFETY: C string argument from the caller (null checked).
        unsafe { cstr(name)? };
        let p = process()?;
        p.modules.module(hval(module), false)?;
        // Module globals are not simulated.
        Err(err::NOT_SUPPORTED)
    }

    fn cuLibraryLoadData(
        library: *mut Handle,
        code: *const c_void,
        _jit_options: *mut c_int,
        _jit_values: *mut *mut c_void,
        _num_jit: c_uint,
        _lib_options: *mut c_int,
        _lib_values: *mut *mut c_void,
        _num_lib: c_uint,
    ) {
        need(library)?;
        let p = process()?;
        let h = load(p, None, code)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(library, hptr(h)) }
    }

    fn cuLibraryUnload(library: Handle) {
        let p = process()?;
        p.modules.unload(p, hval(library), true)
    }

    fn cuLibraryGetKernel(kernel: *mut Handle, library: Handle, name: *const c_char) {
        need(kernel)?;
        // SAFETY: C string argument from the caller (null checked).
        let name = unsafe { cstr(name)? };
        let p = process()?;
        let m = p.modules.module(hval(library), true)?;
        let name = name.to_str().map_err(|_| err::NOT_FOUND)?;
        let h = *m.entries.get(name).ok_or(err::NOT_FOUND)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(kernel, hptr(h)) }
    }

    fn cuKernelGetFunction(func: *mut Handle, kernel: Handle) {
        need(func)?;
        let (p, _) = context::require()?;
        let f = p.modules.function(hval(kernel))?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(func, hptr(f.handle)) }
    }

    fn cuFuncGetAttribute(value: *mut c_int, attrib: c_int, func: Handle) {
        need(value)?;
        let p = process()?;
        let f = p.modules.function(hval(func))?;
        let v = match attrib {
            0 => 1024,
            1..=3 => 0,
            4 => 32,
            5 | 6 => 90,
            7 => 0,
            8 => f.max_dynamic_shared.load(Ordering::Relaxed),
            9 => f.carveout.load(Ordering::Relaxed),
            10..=15 => 0,
            _ => return Err(err::INVALID_VALUE),
        };
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(value, v) }
    }

    fn cuFuncSetAttribute(func: Handle, attrib: c_int, value: c_int) {
        let p = process()?;
        let f = p.modules.function(hval(func))?;
        match attrib {
            8 if (0..=OPTIN_MAX_SHARED).contains(&value) => {
                f.max_dynamic_shared.store(value, Ordering::Relaxed);
            }
            9 if (-1..=100).contains(&value) => f.carveout.store(value, Ordering::Relaxed),
            10 | 14 | 15 => {}
            _ => return Err(err::INVALID_VALUE),
        }
        Ok(())
    }

    fn cuFuncSetCacheConfig(func: Handle, config: c_uint) {
        let p = process()?;
        p.modules.function(hval(func))?;
        if config > 3 {
            return Err(err::INVALID_VALUE);
        }
        Ok(())
    }

    fn cuLaunchKernel(
        f: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
        shmem: c_uint, h: Handle, params: *mut *mut c_void, extra: *mut *mut c_void,
    ) {
        launch(f, [gx, gy, gz], [bx, by, bz], shmem, h, params, extra, false, false)
    }

    fn cuLaunchKernel_ptsz(
        f: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
        shmem: c_uint, h: Handle, params: *mut *mut c_void, extra: *mut *mut c_void,
    ) {
        launch(f, [gx, gy, gz], [bx, by, bz], shmem, h, params, extra, true, false)
    }

    fn cuLaunchCooperativeKernel(
        f: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
        shmem: c_uint, h: Handle, params: *mut *mut c_void,
    ) {
        launch(f, [gx, gy, gz], [bx, by, bz], shmem, h, params, std::ptr::null_mut(), false, true)
    }

    fn cuLaunchCooperativeKernel_ptsz(
        f: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
        shmem: c_uint, h: Handle, params: *mut *mut c_void,
    ) {
        launch(f, [gx, gy, gz], [bx, by, bz], shmem, h, params, std::ptr::null_mut(), true, true)
    }

    fn cuLaunchKernelEx(config: *const LaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) {
        launch_ex(config, f, params, extra, false)
    }

    fn cuLaunchKernelEx_ptsz(config: *const LaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) {
        launch_ex(config, f, params, extra, true)
    }
}
