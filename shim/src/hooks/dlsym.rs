//! The `dlsym` override. `dlsym(handle, name)` on libcuda/libnvidia-ml bypasses LD_PRELOAD
//! interposition, so the shim must answer it: for a hooked name that the handle really
//! provides, it returns its wrapper (and records the real address); for anything else it
//! tail-jumps into the real `dlsym`, so glibc sees the original caller's return address and
//! `RTLD_NEXT` keeps meaning "after the caller", not "after the shim".

use crate::real::{REAL_DLSYM, real_dlsym, real_dlsym_ptr};
use std::ffi::{CStr, c_char, c_void};

/// Decides: the wrapper to return, or null to let the real `dlsym` answer. Also makes sure
/// the real `dlsym` is resolved before the trampoline jumps through it.
extern "C" fn gpumux_dlsym_decide(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    real_dlsym_ptr();
    if symbol.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: dlsym's contract: `symbol` is a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(symbol) };
    let bytes = name.to_bytes();
    if !(bytes.starts_with(b"cu") || bytes.starts_with(b"nvml")) {
        return std::ptr::null_mut();
    }
    let Some((slot, wrapper)) = super::lookup(bytes) else {
        warn_if_undeclared_variant(handle, name);
        return std::ptr::null_mut();
    };
    // Only hand out the wrapper if the handle really provides the symbol.
    // SAFETY: the caller passed `handle` to dlsym, so it is a handle dlsym accepts.
    let real = unsafe { real_dlsym(handle, name) };
    if real.is_null() {
        return std::ptr::null_mut();
    }
    slot.offer(real);
    wrapper
}

/// A driver symbol the table does not declare, of an entry point the shim must hook: warn
/// (once) if the handle really provides it.
fn warn_if_undeclared_variant(handle: *mut c_void, name: &CStr) {
    let Ok(text) = name.to_str() else { return };
    let lib = if text.starts_with("cu") {
        "cuda"
    } else if text.starts_with("nvml") {
        "nvml"
    } else {
        return;
    };
    if super::class_of(lib, super::base_name(text)).is_some_and(super::Class::hooked)
        // SAFETY: the caller passed `handle` to dlsym, so it is a handle dlsym accepts.
        && !unsafe { real_dlsym(handle, name) }.is_null()
    {
        super::warn_undeclared_variant(name.to_bytes());
    }
}

#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
/// # Safety
/// C ABI entry point with `dlsym`'s contract.
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {decide}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "jnz 2f",
        "jmp qword ptr [rip + {real}]",
        "2:",
        "ret",
        decide = sym gpumux_dlsym_decide,
        real = sym REAL_DLSYM,
    )
}

#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
/// # Safety
/// C ABI entry point with `dlsym`'s contract.
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "stp x29, x30, [sp, #-32]!",
        "mov x29, sp",
        "stp x0, x1, [sp, #16]",
        "bl {decide}",
        "cbz x0, 2f",
        "ldp x29, x30, [sp], #32",
        "ret",
        "2:",
        "ldp x0, x1, [sp, #16]",
        "ldp x29, x30, [sp], #32",
        "adrp x16, {real}",
        "ldr x16, [x16, :lo12:{real}]",
        "br x16",
        decide = sym gpumux_dlsym_decide,
        real = sym REAL_DLSYM,
    )
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the dlsym trampoline is written for x86_64 and aarch64 only");
