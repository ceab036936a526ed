//! Module and library loads: a loaded image occupies device memory no allocation call returns,
//! so a load is held to the tenant's limit like a context creation
//! ([`crate::footprint::load_code`]): the image's size (a file's, for the `*FromFile`/
//! `cuModuleLoad` paths) is reserved first (`CUDA_ERROR_OUT_OF_MEMORY` when it does not fit),
//! then the load is measured and undone if the tenant is over its limit after all. A module
//! lives in the current context's device; a library (context-independent) is loaded into every
//! context of the process, so it is reserved on the current context's device and measured on
//! every device the process sees. Unloads are announced without waiting.
//!
//! Handlers of the entry-point table (`Footprint`).

use super::real;
use super::table::sig;
use crate::cuda_types::*;
use crate::footprint;
use crate::registration;
use std::ffi::{CStr, c_char, c_uint, c_void};

/// `CUjit_option` / `CUlibraryOption`: C enums (`int`).
#[allow(non_camel_case_types)]
pub(super) type c_int_option = std::ffi::c_int;

/// After a module unload that succeeded: measure the current context's device.
fn module_changed(rc: CUresult) -> CUresult {
    if rc == CUDA_SUCCESS
        && let Some(reg) = registration::current()
        && let Ok(Some(device)) = super::init::current_device(reg)
    {
        footprint::changed(reg, device);
    }
    rc
}

/// After a library unload that succeeded: measure every device the process sees.
fn library_changed(rc: CUresult) -> CUresult {
    if rc == CUDA_SUCCESS
        && let Some(reg) = registration::current()
    {
        for device in seen_devices(reg) {
            footprint::changed(reg, device);
        }
    }
    rc
}

/// The tenant's devices this process sees.
fn seen_devices(reg: &registration::Registration) -> impl Iterator<Item = usize> + '_ {
    (0..gpumux_common::shm::MAX_DEVICES).filter(|&d| reg.ordinals_of(d).next().is_some())
}

/// Bytes of the file a load names (0 when it cannot be read: the driver will say why).
///
/// # Safety
/// `fname` is null or a NUL-terminated path.
unsafe fn file_size(fname: *const c_char) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    if fname.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract.
    let path = std::ffi::OsStr::from_bytes(unsafe { CStr::from_ptr(fname) }.to_bytes());
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Loads a module of `bytes` into the current context under the tenant's limit; `load` writes
/// the module to `*module`.
fn load_module(module: *mut *mut c_void, bytes: u64, load: impl FnOnce() -> CUresult) -> CUresult {
    let Some(reg) = registration::current() else {
        return load();
    };
    let Ok(Some(device)) = super::init::current_device(reg) else {
        // No current context (the driver refuses), or not one of the tenant's devices.
        return load();
    };
    let unload = || {
        let unload = real!(cuModuleUnload);
        // SAFETY: the load succeeded, so `*module` is the module it made; unloaded before the
        // application saw it.
        unsafe { unload(*module) };
    };
    footprint::load_code(
        reg,
        Some(device),
        std::iter::once(device),
        bytes,
        load,
        unload,
    )
}

/// Loads a library of `bytes` under the tenant's limit; `load` writes it to `*library`.
fn load_library(
    library: *mut *mut c_void,
    bytes: u64,
    load: impl FnOnce() -> CUresult,
) -> CUresult {
    let Some(reg) = registration::current() else {
        return load();
    };
    let current = super::init::current_device(reg).ok().flatten();
    let unload = || {
        let unload = real!(cuLibraryUnload);
        // SAFETY: the load succeeded, so `*library` is the library it made; unloaded before
        // the application saw it.
        unsafe { unload(*library) };
    };
    footprint::load_code(reg, current, seen_devices(reg), bytes, load, unload)
}

/// `cuModuleLoad`: a module from a file.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_load_file(
    real: sig::cuModuleLoad,
    module: *mut *mut c_void,
    fname: *const c_char,
) -> CUresult {
    // SAFETY: the caller's path.
    let bytes = unsafe { file_size(fname) };
    // SAFETY: forwarding the caller's arguments.
    load_module(module, bytes, || unsafe { real(module, fname) })
}

/// `cuModuleLoadData`, `cuModuleLoadFatBinary`: a module from an image.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_load_image(
    real: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> CUresult,
    module: *mut *mut c_void,
    image: *const c_void,
) -> CUresult {
    // SAFETY: the caller's image.
    let bytes = unsafe { crate::images::image_size(image) };
    // SAFETY: forwarding the caller's arguments.
    load_module(module, bytes, || unsafe { real(module, image) })
}

/// `cuModuleLoadDataEx`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_load_ex(
    real: sig::cuModuleLoadDataEx,
    module: *mut *mut c_void,
    image: *const c_void,
    num_options: c_uint,
    options: *mut c_int_option,
    values: *mut *mut c_void,
) -> CUresult {
    // SAFETY: the caller's image.
    let bytes = unsafe { crate::images::image_size(image) };
    // SAFETY: forwarding the caller's arguments.
    load_module(module, bytes, || unsafe {
        real(module, image, num_options, options, values)
    })
}

/// `cuModuleUnload`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_unload(real: sig::cuModuleUnload, module: *mut c_void) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    module_changed(unsafe { real(module) })
}

/// `cuLibraryLoadData` (an image) and `cuLibraryLoadFromFile` (a file name), then JIT and
/// library options: `bytes` is the image's or the file's size.
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
unsafe fn library_load<S: Copy>(
    real: unsafe extern "C" fn(
        *mut *mut c_void,
        S,
        *mut c_int_option,
        *mut *mut c_void,
        c_uint,
        *mut c_int_option,
        *mut *mut c_void,
        c_uint,
    ) -> CUresult,
    bytes: u64,
    library: *mut *mut c_void,
    source: S,
    jit_options: *mut c_int_option,
    jit_values: *mut *mut c_void,
    num_jit: c_uint,
    library_options: *mut c_int_option,
    library_values: *mut *mut c_void,
    num_library: c_uint,
) -> CUresult {
    load_library(library, bytes, || {
        // SAFETY: forwarding the caller's arguments.
        unsafe {
            real(
                library,
                source,
                jit_options,
                jit_values,
                num_jit,
                library_options,
                library_values,
                num_library,
            )
        }
    })
}

/// `cuLibraryLoadData`.
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn library_load_data(
    real: sig::cuLibraryLoadData,
    library: *mut *mut c_void,
    image: *const c_void,
    jit_options: *mut c_int_option,
    jit_values: *mut *mut c_void,
    num_jit: c_uint,
    library_options: *mut c_int_option,
    library_values: *mut *mut c_void,
    num_library: c_uint,
) -> CUresult {
    // SAFETY: the caller's image.
    let bytes = unsafe { crate::images::image_size(image) };
    // SAFETY: the caller's contract.
    unsafe {
        library_load(
            real,
            bytes,
            library,
            image,
            jit_options,
            jit_values,
            num_jit,
            library_options,
            library_values,
            num_library,
        )
    }
}

/// `cuLibraryLoadFromFile`.
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn library_load_file(
    real: sig::cuLibraryLoadFromFile,
    library: *mut *mut c_void,
    fname: *const c_char,
    jit_options: *mut c_int_option,
    jit_values: *mut *mut c_void,
    num_jit: c_uint,
    library_options: *mut c_int_option,
    library_values: *mut *mut c_void,
    num_library: c_uint,
) -> CUresult {
    // SAFETY: the caller's path.
    let bytes = unsafe { file_size(fname) };
    // SAFETY: the caller's contract.
    unsafe {
        library_load(
            real,
            bytes,
            library,
            fname,
            jit_options,
            jit_values,
            num_jit,
            library_options,
            library_values,
            num_library,
        )
    }
}

/// `cuLibraryUnload`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn library_unload(real: sig::cuLibraryUnload, library: *mut c_void) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    library_changed(unsafe { real(library) })
}
