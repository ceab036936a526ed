//! Finding the real driver functions behind the shim's exports.
//!
//! The real `dlsym` comes from `dlvsym(RTLD_NEXT, "dlsym", ...)` (the shim overrides `dlsym`
//! itself, never `dlvsym`). Real CUDA/NVML functions come from the shim's own handle on
//! `libcuda.so.1` / `libnvidia-ml.so.1`: a `dlsym` on a library handle searches that library,
//! not the preloaded shim. Addresses inside the shim are never accepted as "real" (a driver
//! linked without `-Bsymbolic`, or a lookup through the global scope, would hand back the
//! shim's own export and recursion would follow).

use std::ffi::{CStr, c_void};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const libc::c_char) -> *mut c_void;

/// A C function pointer type a real-function slot can hold: `unsafe extern "C" fn(..) -> R`
/// of up to 12 arguments (implemented below, nowhere else).
pub(crate) trait CFn: Copy + 'static {
    /// The function at `addr`.
    ///
    /// # Safety
    /// `addr` is the address of a function with exactly this C signature.
    unsafe fn from_addr(addr: usize) -> Self;
}

macro_rules! c_fn {
    ($($arg:ident),*) => {
        impl<R: 'static, $($arg: 'static),*> CFn for unsafe extern "C" fn($($arg),*) -> R {
            #[inline(always)]
            unsafe fn from_addr(addr: usize) -> Self {
                // SAFETY: a function pointer is an address; the caller vouches that the
                // function there has this signature. The shim's only address-to-function cast.
                unsafe { std::mem::transmute::<usize, Self>(addr) }
            }
        }
    };
}
c_fn!();
c_fn!(A);
c_fn!(A, B);
c_fn!(A, B, C);
c_fn!(A, B, C, D);
c_fn!(A, B, C, D, E);
c_fn!(A, B, C, D, E, F);
c_fn!(A, B, C, D, E, F, G);
c_fn!(A, B, C, D, E, F, G, H);
c_fn!(A, B, C, D, E, F, G, H, I);
c_fn!(A, B, C, D, E, F, G, H, I, J);
c_fn!(A, B, C, D, E, F, G, H, I, J, K);
c_fn!(A, B, C, D, E, F, G, H, I, J, K, L);

/// The real `dlsym`. The `dlsym` trampoline tail-jumps through this slot (an `AtomicPtr` has
/// the layout of a plain pointer).
pub(crate) static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Resolves (once) and returns the real `dlsym`. Aborts if glibc has none, which cannot happen
/// on a glibc system.
pub(crate) fn real_dlsym_ptr() -> *mut c_void {
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
pub(crate) unsafe fn real_dlsym(handle: *mut c_void, name: &CStr) -> *mut c_void {
    // SAFETY: the address is glibc's dlsym, whose signature is `DlsymFn`.
    let f = unsafe { DlsymFn::from_addr(real_dlsym_ptr() as usize) };
    // SAFETY: the caller vouches for `handle`, and `name` is a valid C string.
    unsafe { f(handle, name.as_ptr()) }
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
pub(crate) fn is_own(addr: *const c_void) -> bool {
    !addr.is_null() && object_base(addr) == own_base()
}

/// A lazily opened library handle.
pub(crate) struct Library {
    soname: &'static CStr,
    handle: AtomicPtr<c_void>,
}

impl Library {
    pub(crate) const fn new(soname: &'static CStr) -> Self {
        Library {
            soname,
            handle: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The library's handle, loading it if needed (it is normally loaded already: the program
    /// reached the shim through it).
    pub(crate) fn handle(&self) -> *mut c_void {
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

pub(crate) static LIBCUDA: Library = Library::new(c"libcuda.so.1");
pub(crate) static LIBNVML: Library = Library::new(c"libnvidia-ml.so.1");

/// Where the real function behind one symbol lives: resolved from its library on first use,
/// or taken from what the driver handed out through `dlsym`. Untyped: [`RealFn`] adds the type.
pub(crate) struct RawSlot {
    name: &'static CStr,
    lib: &'static Library,
    addr: AtomicUsize,
}

impl RawSlot {
    /// The real address, or `None` if the library or symbol is missing.
    #[inline]
    pub(crate) fn get(&self) -> Option<usize> {
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
    pub(crate) fn offer(&self, p: *mut c_void) {
        if !p.is_null() && !is_own(p) {
            // Losing the race means another thread recorded the same symbol first: either
            // address is the real function.
            let _lost_race =
                self.addr
                    .compare_exchange(0, p as usize, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

/// The real function behind one symbol, typed with its C signature `F`. The table in
/// [`crate::hooks::table`] declares each slot once, with the symbol's type; nothing else
/// casts addresses to functions.
pub(crate) struct RealFn<F> {
    raw: RawSlot,
    _type: PhantomData<F>,
}

impl<F: CFn> RealFn<F> {
    /// A slot for `name` in `lib`.
    ///
    /// # Safety
    /// Every function `lib` (or whatever handle `dlsym` is asked with) exports as `name` has
    /// exactly the C signature `F`.
    pub(crate) const unsafe fn new(name: &'static CStr, lib: &'static Library) -> Self {
        RealFn {
            raw: RawSlot {
                name,
                lib,
                addr: AtomicUsize::new(0),
            },
            _type: PhantomData,
        }
    }

    /// The real function, or `None` if the library or symbol is missing.
    #[inline]
    pub(crate) fn get(&self) -> Option<F> {
        // SAFETY: `new`'s contract: the symbol has the C type `F`; `RawSlot` never holds an
        // address inside the shim.
        self.raw.get().map(|a| unsafe { F::from_addr(a) })
    }

    /// The untyped slot (for `dlsym` and `cuGetProcAddress`, which handle addresses).
    pub(crate) fn raw(&'static self) -> &'static RawSlot {
        &self.raw
    }
}
