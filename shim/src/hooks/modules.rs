//! Module and library loads: a loaded image occupies device memory no allocation call returns.
//! After a successful load or unload the shim asks the daemon to measure the process again
//! ([`crate::footprint::changed`]); nothing waits. A module lives in the current context's
//! device; a library (context-independent) is loaded into every context of the process, so
//! every device the process sees is measured.
//!
//! Handlers of the entry-point table (`Code`).

use super::table::sig;
use crate::cuda_types::*;
use crate::footprint;
use crate::registration;
use std::ffi::{c_char, c_int, c_uint, c_void};

/// After a module (un)load that succeeded: measure the current context's device.
fn module_changed(rc: CUresult) -> CUresult {
    if rc == CUDA_SUCCESS
        && let Some(reg) = registration::current()
        && let Ok(Some(device)) = super::init::current_device(reg)
    {
        footprint::changed(reg, device);
    }
    rc
}

/// After a library (un)load that succeeded: measure every device the process sees.
fn library_changed(rc: CUresult) -> CUresult {
    if rc == CUDA_SUCCESS
        && let Some(reg) = registration::current()
    {
        for device in 0..gpumux_common::shm::MAX_DEVICES {
            if reg.ordinals_of(device).next().is_some() {
                footprint::changed(reg, device);
            }
        }
    }
    rc
}

/// `cuModuleLoad`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_load(
    real: sig::cuModuleLoad,
    module: *mut *mut c_void,
    fname: *const c_char,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    module_changed(unsafe { real(module, fname) })
}

/// `cuModuleLoadData`, `cuModuleLoadFatBinary` (one signature).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_load_data(
    real: sig::cuModuleLoadData,
    module: *mut *mut c_void,
    image: *const c_void,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    module_changed(unsafe { real(module, image) })
}

/// `cuModuleLoadDataEx`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_load_data_ex(
    real: sig::cuModuleLoadDataEx,
    module: *mut *mut c_void,
    image: *const c_void,
    num_options: c_uint,
    options: *mut c_int,
    values: *mut *mut c_void,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    module_changed(unsafe { real(module, image, num_options, options, values) })
}

/// `cuModuleUnload`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_unload(real: sig::cuModuleUnload, module: *mut c_void) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    module_changed(unsafe { real(module) })
}

/// `cuLibraryLoadData`.
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn library_load_data(
    real: sig::cuLibraryLoadData,
    library: *mut *mut c_void,
    code: *const c_void,
    jit_options: *mut c_int,
    jit_values: *mut *mut c_void,
    num_jit: c_uint,
    library_options: *mut c_int,
    library_values: *mut *mut c_void,
    num_library: c_uint,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    library_changed(unsafe {
        real(
            library,
            code,
            jit_options,
            jit_values,
            num_jit,
            library_options,
            library_values,
            num_library,
        )
    })
}

/// `cuLibraryLoadFromFile`.
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn library_load_from_file(
    real: sig::cuLibraryLoadFromFile,
    library: *mut *mut c_void,
    file: *const c_char,
    jit_options: *mut c_int,
    jit_values: *mut *mut c_void,
    num_jit: c_uint,
    library_options: *mut c_int,
    library_values: *mut *mut c_void,
    num_library: c_uint,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    library_changed(unsafe {
        real(
            library,
            file,
            jit_options,
            jit_values,
            num_jit,
            library_options,
            library_values,
            num_library,
        )
    })
}

/// `cuLibraryUnload`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn library_unload(real: sig::cuLibraryUnload, library: *mut c_void) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    library_changed(unsafe { real(library) })
}
