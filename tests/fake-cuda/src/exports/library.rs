//! Context-independent loading (`cuLibrary*`, `cuKernel*`) beyond load/get/unload, and the
//! module/function queries of CUDA 12.3-12.4 that cuda.core and cuda-bindings call: loading a
//! library from a PTX file, enumerating kernels and functions, their names and attributes.
//!
//! A library's kernel handles are also function handles in the fake (`Modules::load`), so the
//! kernel queries are the function queries of `launch.rs` for a device that must exist.

use crate::driver::process;
use crate::exports::launch::{
    cuFuncGetAttribute, cuFuncSetAttribute, cuFuncSetCacheConfig, cuLibraryLoadData,
};
use crate::types::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};

/// `CU_FUNCTION_LOADING_STATE_LOADED`.
const FUNCTION_LOADED: c_int = 1;
/// `CU_MODULE_EAGER_LOADING`: the fake loads every function when the image is loaded.
const MODULE_EAGER_LOADING: c_int = 1;

/// The names handed out by `cuKernelGetName`/`cuFuncGetName`, by handle: the driver's pointer
/// stays valid while the kernel exists, so each is kept for the life of the process (handles are
/// never reused).
static NAMES: Mutex<Option<HashMap<u64, CString>>> = Mutex::new(None);

fn name_of(h: Handle, out: *mut *const c_char) -> Res<()> {
    need(out)?;
    let p = process()?;
    let f = p.modules.function(hval(h))?;
    let mut names = NAMES.lock();
    let ptr = names
        .get_or_insert_with(HashMap::new)
        .entry(f.handle)
        .or_insert_with(|| CString::new(f.name.clone()).unwrap_or_default())
        .as_ptr();
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(out, ptr) }
}

/// The entries of a module or library in load (PTX) order: their handles ascend.
fn entries(h: Handle, library: bool) -> Res<Vec<u64>> {
    let p = process()?;
    let m = p.modules.module(hval(h), library)?;
    let mut v: Vec<u64> = m.entries.values().copied().collect();
    v.sort_unstable();
    Ok(v)
}

/// Writes up to `n` of `handles` into `out`.
fn write_handles(out: *mut Handle, n: c_uint, handles: &[u64]) -> Res<()> {
    if n > 0 {
        need(out)?;
    }
    for (i, &h) in handles.iter().take(n as usize).enumerate() {
        // SAFETY: the caller's array holds `n` handles (non-null when n > 0).
        unsafe { write_out(out.add(i), hptr(h))? };
    }
    Ok(())
}

fn count(out: *mut c_uint, handles: &[u64]) -> Res<()> {
    // SAFETY: output pointer from the caller (null checked by write_out).
    unsafe { write_out(out, handles.len() as c_uint) }
}

/// Checks `dev` names a device.
fn device(dev: CUdevice) -> Res<()> {
    process()?.device(dev).map(drop)
}

cuda_fn! {
    fn cuLibraryLoadFromFile(
        library: *mut Handle,
        file: *const c_char,
        jit_options: *mut c_int,
        jit_values: *mut *mut c_void,
        num_jit: c_uint,
        lib_options: *mut c_int,
        lib_values: *mut *mut c_void,
        num_lib: c_uint,
    ) {
        need(library)?;
        // SAFETY: C string argument from the caller (null checked).
        let path = unsafe { cstr(file)? };
        process()?;
        let path = std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()));
        let mut data = std::fs::read(path).map_err(|_| err::FILE_NOT_FOUND)?;
        data.push(0);
        // SAFETY: a NUL-terminated image and the caller's arguments.
        result(unsafe {
            cuLibraryLoadData(library, data.as_ptr().cast(), jit_options, jit_values, num_jit, lib_options, lib_values, num_lib)
        })
    }

    fn cuLibraryGetKernelCount(n: *mut c_uint, library: Handle) {
        count(n, &entries(library, true)?)
    }

    fn cuLibraryEnumerateKernels(kernels: *mut Handle, n: c_uint, library: Handle) {
        write_handles(kernels, n, &entries(library, true)?)
    }

    fn cuModuleGetFunctionCount(n: *mut c_uint, module: Handle) {
        count(n, &entries(module, false)?)
    }

    fn cuModuleEnumerateFunctions(functions: *mut Handle, n: c_uint, module: Handle) {
        write_handles(functions, n, &entries(module, false)?)
    }

    fn cuModuleGetLoadingMode(mode: *mut c_int) {
        process()?;
        // SAFETY: output pointer from the caller (null checked by write_out).
        unsafe { write_out(mode, MODULE_EAGER_LOADING) }
    }

    fn cuKernelGetName(name: *mut *const c_char, kernel: Handle) {
        name_of(kernel, name)
    }

    fn cuFuncGetName(name: *mut *const c_char, func: Handle) {
        name_of(func, name)
    }

    fn cuFuncIsLoaded(state: *mut c_int, func: Handle) {
        need(state)?;
        process()?.modules.function(hval(func))?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(state, FUNCTION_LOADED) }
    }

    fn cuFuncLoad(func: Handle) {
        process()?.modules.function(hval(func)).map(drop)
    }

    fn cuKernelGetAttribute(value: *mut c_int, attrib: c_int, kernel: Handle, dev: CUdevice) {
        device(dev)?;
        // SAFETY: the caller's arguments, forwarded.
        result(unsafe { cuFuncGetAttribute(value, attrib, kernel) })
    }

    fn cuKernelSetAttribute(attrib: c_int, value: c_int, kernel: Handle, dev: CUdevice) {
        device(dev)?;
        // SAFETY: no pointer argument.
        result(unsafe { cuFuncSetAttribute(kernel, attrib, value) })
    }

    fn cuKernelSetCacheConfig(kernel: Handle, config: c_uint, dev: CUdevice) {
        device(dev)?;
        // SAFETY: no pointer argument.
        result(unsafe { cuFuncSetCacheConfig(kernel, config) })
    }
}
