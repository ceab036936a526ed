//! Module and library loads: a loaded image occupies device memory no allocation call returns.
//! After a successful load or unload the shim asks the daemon to measure the process again
//! ([`crate::footprint::changed`]); nothing waits. A module lives in the current context's
//! device; a library (context-independent) is loaded into every context of the process, so
//! every device the process sees is measured.
//!
//! Handlers of the entry-point table (`Footprint`).

use super::table::sig;
use crate::cuda_types::*;
use crate::footprint;
use crate::registration;
use std::ffi::{c_uint, c_void};

/// `CUjit_option` / `CUlibraryOption`: C enums (`int`).
#[allow(non_camel_case_types)]
pub(super) type c_int_option = std::ffi::c_int;

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

/// `cuModuleLoad`, `cuModuleLoadData`, `cuModuleLoadFatBinary`: a module from a file name or
/// an image.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn module_load<S>(
    real: unsafe extern "C" fn(*mut *mut c_void, S) -> CUresult,
    module: *mut *mut c_void,
    source: S,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    module_changed(unsafe { real(module, source) })
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

/// `cuLibraryLoadData` / `cuLibraryLoadFromFile` (an image or a file name, then JIT and
/// library options).
///
/// # Safety
/// The C API's contract.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(super) unsafe fn library_load<S>(
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
    library: *mut *mut c_void,
    source: S,
    jit_options: *mut c_int_option,
    jit_values: *mut *mut c_void,
    num_jit: c_uint,
    library_options: *mut c_int_option,
    library_values: *mut *mut c_void,
    num_library: c_uint,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    library_changed(unsafe {
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
