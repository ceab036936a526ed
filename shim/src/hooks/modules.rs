//! Module and library loads: a loaded image occupies device memory no allocation call returns.
//! After a successful load or unload the shim asks the daemon to measure the process again
//! ([`crate::footprint::changed`]); nothing waits. A module lives in the current context's
//! device; a library (context-independent) is loaded into every context of the process, so
//! every device the process sees is measured.

#![allow(non_snake_case)]

use super::real;
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use crate::footprint;
use crate::registration;
use std::ffi::{c_char, c_uint, c_void};

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

/// # Safety
/// C ABI entry point; arguments as documented for `cuModuleLoad`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(module: *mut *mut c_void, fname: *const c_char) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuModuleLoad: unsafe extern "C" fn(*mut *mut c_void, *const c_char) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        module_changed(unsafe { f(module, fname) })
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuModuleLoadData`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(
    module: *mut *mut c_void,
    image: *const c_void,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuModuleLoadData: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        module_changed(unsafe { f(module, image) })
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuModuleLoadDataEx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut *mut c_void,
    image: *const c_void,
    num_options: c_uint,
    options: *mut c_int_option,
    values: *mut *mut c_void,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuModuleLoadDataEx: unsafe extern "C" fn(*mut *mut c_void, *const c_void, c_uint, *mut c_int_option, *mut *mut c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        module_changed(unsafe { f(module, image, num_options, options, values) })
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuModuleLoadFatBinary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadFatBinary(
    module: *mut *mut c_void,
    fat_cubin: *const c_void,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuModuleLoadFatBinary: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        module_changed(unsafe { f(module, fat_cubin) })
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuModuleUnload`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(module: *mut c_void) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuModuleUnload: unsafe extern "C" fn(*mut c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's argument.
        module_changed(unsafe { f(module) })
    })
}

macro_rules! library_load {
    ($name:ident, $source:ty) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuLibraryLoadData` /
        /// `cuLibraryLoadFromFile` (image or file name, then JIT and library options).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            library: *mut *mut c_void,
            source: $source,
            jit_options: *mut c_int_option,
            jit_values: *mut *mut c_void,
            num_jit: c_uint,
            library_options: *mut c_int_option,
            library_values: *mut *mut c_void,
            num_library: c_uint,
        ) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(*mut *mut c_void, $source, *mut c_int_option, *mut *mut c_void, c_uint, *mut c_int_option, *mut *mut c_void, c_uint) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                // SAFETY: forwarding the caller's arguments.
                library_changed(unsafe {
                    f(library, source, jit_options, jit_values, num_jit, library_options, library_values, num_library)
                })
            })
        }
    };
}
library_load!(cuLibraryLoadData, *const c_void);
library_load!(cuLibraryLoadFromFile, *const c_char);

/// # Safety
/// C ABI entry point; arguments as documented for `cuLibraryUnload`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryUnload(library: *mut c_void) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuLibraryUnload: unsafe extern "C" fn(*mut c_void) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's argument.
        library_changed(unsafe { f(library) })
    })
}

/// `CUjit_option` / `CUlibraryOption`: C enums (`int`).
#[allow(non_camel_case_types)]
type c_int_option = std::ffi::c_int;
