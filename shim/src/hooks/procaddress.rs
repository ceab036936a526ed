//! `cuGetProcAddress` (the 11030 four-argument ABI) and `cuGetProcAddress_v2` (12000): how the
//! CUDA runtime reaches every driver entry point. The real driver answers first, so the
//! result code, the symbol status and any null pointer are its own. When it hands out a
//! function, the shim identifies which exported ABI variant that is (by the address: each
//! declared variant's real slot holds the library's own symbol address) and, for a hooked
//! variant, substitutes its wrapper of exactly that variant. It never picks a variant itself.
//!
//! Handlers of the entry-point table (`Resolve`).

use super::table::sig;
use crate::cuda_types::*;
use std::ffi::{CStr, c_char, c_int, c_void};

/// The shim's wrapper of the function `real` the driver resolved `name` to, if `real` is one
/// of `name`'s hooked variants.
fn wrapper_of(name: &str, real: *mut c_void) -> Option<*mut c_void> {
    super::variants_of(name).iter().find_map(|variant| {
        let (slot, wrapper) = super::lookup(variant.as_bytes())?;
        (slot.get() == Some(real as usize)).then_some(wrapper)
    })
}

/// After the real driver succeeded: swap the function it wrote to `*pfn` for the shim's
/// wrapper of the same variant, if hooked.
///
/// # Safety
/// `symbol` and `pfn` are the arguments of a `cuGetProcAddress` call that succeeded.
unsafe fn substitute(symbol: *const c_char, pfn: *mut *mut c_void) {
    if symbol.is_null() || pfn.is_null() {
        return;
    }
    // SAFETY: the driver accepted `symbol` as a C string and wrote `*pfn`.
    let (name, real) = unsafe { (CStr::from_ptr(symbol), *pfn) };
    if real.is_null() {
        return;
    }
    let Ok(name) = name.to_str() else { return };
    if let Some(wrapper) = wrapper_of(name, real) {
        // SAFETY: `pfn` is the caller's valid out-pointer.
        unsafe { *pfn = wrapper };
    } else if super::class_of("cuda", name).is_some_and(super::Class::hooked) {
        super::warn_undeclared_variant(&exported_name(real));
    }
}

/// The exported symbol at `addr` (for a diagnostic), or its address in hex.
fn exported_name(addr: *mut c_void) -> Vec<u8> {
    // SAFETY: Dl_info is plain old data; dladdr fills it or returns 0.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address.
    if unsafe { libc::dladdr(addr, &mut info) } != 0 && !info.dli_sname.is_null() {
        // SAFETY: dladdr set a NUL-terminated symbol name of a loaded object.
        return unsafe { CStr::from_ptr(info.dli_sname) }
            .to_bytes()
            .to_vec();
    }
    format!("a function at {addr:p}").into_bytes()
}

/// `cuGetProcAddress` (11030 ABI).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn get_proc_address(
    real: sig::cuGetProcAddress,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    let rc = unsafe { real(symbol, pfn, version, flags) };
    if rc == CUDA_SUCCESS {
        // SAFETY: the arguments of the call that just succeeded.
        unsafe { substitute(symbol, pfn) };
    }
    rc
}

/// `cuGetProcAddress_v2` (12000 ABI, with the symbol-status out-parameter).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn get_proc_address_v2(
    real: sig::cuGetProcAddress_v2,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    let rc = unsafe { real(symbol, pfn, version, flags, status) };
    if rc == CUDA_SUCCESS {
        // SAFETY: the arguments of the call that just succeeded.
        unsafe { substitute(symbol, pfn) };
    }
    rc
}
