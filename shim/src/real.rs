//! Finding the real driver functions behind the shim's exports.
//!
//! The real `dlsym` comes from `dlvsym(RTLD_NEXT, "dlsym", ...)` (the shim overrides `dlsym`
//! itself, never `dlvsym`). Real CUDA/NVML functions come from the shim's own handle on
//! `libcuda.so.1` / `libnvidia-ml.so.1`: a `dlsym` on a library handle searches that library,
//! not the preloaded shim. Addresses inside the shim are never accepted as "real" (a driver
//! linked without `-Bsymbolic`, or a lookup through the global scope, would hand back the
//! shim's own export and recursion would follow).

use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const libc::c_char) -> *mut c_void;

/// The real `dlsym`. The `dlsym` trampoline tail-jumps through this slot (an `AtomicPtr` has
/// the layout of a plain pointer).
pub static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Resolves (once) and returns the real `dlsym`. Aborts if glibc has none, which cannot happen
/// on a glibc system.
pub fn real_dlsym_ptr() -> *mut c_void {
    let p = REAL_DLSYM.load(Ordering::Acquire);
    if !p.is_null() {
        return p;
    }
    let mut found = std::ptr::null_mut();
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: dlvsym with RTLD_NEXT and valid C strings; it does not call our dlsym.
        found = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !found.is_null() {
            break;
        }
    }
    if found.is_null() {
        crate::diag::fatal(b"gpumux: cannot find the real dlsym in libc; aborting\n");
    }
    REAL_DLSYM.store(found, Ordering::Release);
    found
}

/// Calls the real `dlsym`.
///
/// # Safety
/// `handle` must be a handle `dlsym` accepts (from `dlopen`, or `RTLD_DEFAULT`/`RTLD_NEXT`).
pub unsafe fn real_dlsym(handle: *mut c_void, name: &CStr) -> *mut c_void {
    let f = real_dlsym_ptr();
    // SAFETY: `f` is glibc's dlsym, whose signature is `DlsymFn`; the caller vouches for
    // `handle`, and `name` is a valid C string.
    unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(f)(handle, name.as_ptr()) }
}

/// The shim's own load base, to recognise its own addresses.
fn own_base() -> usize {
    static BASE: AtomicUsize = AtomicUsize::new(0);
    let b = BASE.load(Ordering::Relaxed);
    if b != 0 {
        return b;
    }
    let b = object_base(own_base as *const c_void);
    BASE.store(b, Ordering::Relaxed);
    b
}

fn object_base(addr: *const c_void) -> usize {
    // SAFETY: Dl_info is plain old data; dladdr fills it or returns 0.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(addr, &mut info) == 0 {
            0
        } else {
            info.dli_fbase as usize
        }
    }
}

/// Whether `addr` lies inside the shim itself.
pub fn is_own(addr: *const c_void) -> bool {
    !addr.is_null() && object_base(addr) == own_base()
}

/// A lazily opened library handle.
pub struct Library {
    soname: &'static CStr,
    handle: AtomicPtr<c_void>,
}

impl Library {
    pub const fn new(soname: &'static CStr) -> Self {
        Library {
            soname,
            handle: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The library's handle, loading it if needed (it is normally loaded already: the program
    /// reached the shim through it).
    pub fn handle(&self) -> *mut c_void {
        let h = self.handle.load(Ordering::Acquire);
        if !h.is_null() {
            return h;
        }
        // SAFETY: dlopen with a valid C string. The handle is kept for the process lifetime.
        let h = unsafe { libc::dlopen(self.soname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !h.is_null() {
            self.handle.store(h, Ordering::Release);
        }
        h
    }
}

pub static LIBCUDA: Library = Library::new(c"libcuda.so.1");
pub static LIBNVML: Library = Library::new(c"libnvidia-ml.so.1");

/// The real function behind one export: resolved from its library on first use, or taken from
/// what the driver handed out through `dlsym`/`cuGetProcAddress`.
pub struct RealFn {
    pub name: &'static CStr,
    lib: &'static Library,
    addr: AtomicUsize,
}

impl RealFn {
    pub const fn new(name: &'static CStr, lib: &'static Library) -> Self {
        RealFn {
            name,
            lib,
            addr: AtomicUsize::new(0),
        }
    }

    /// The real address, or `None` if the library or symbol is missing.
    #[inline]
    pub fn get(&self) -> Option<usize> {
        match self.addr.load(Ordering::Acquire) {
            0 => self.resolve(),
            a => Some(a),
        }
    }

    #[cold]
    fn resolve(&self) -> Option<usize> {
        let h = self.lib.handle();
        if h.is_null() {
            return None;
        }
        // SAFETY: `h` is a live handle from dlopen.
        let p = unsafe { real_dlsym(h, self.name) };
        self.offer(p);
        match self.addr.load(Ordering::Acquire) {
            0 => None,
            a => Some(a),
        }
    }

    /// Records `p` as the real function if none is known yet and `p` is not the shim's own.
    pub fn offer(&self, p: *mut c_void) {
        if !p.is_null() && !is_own(p) {
            self.addr
                .compare_exchange(0, p as usize, Ordering::AcqRel, Ordering::Acquire)
                .ok();
        }
    }
}
