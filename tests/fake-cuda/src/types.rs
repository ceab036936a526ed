//! C ABI types, `CUresult` codes, and the helpers every export uses: panic guard, checked reads of
//! input pointers and writes of output pointers.

use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// `CUresult`, as the shim sees it (one definition, checked against `cuda.h`).
pub use gpumux_common::cuda_abi::CUresult;
/// `CUdevice`.
pub type CUdevice = i32;
/// `CUdeviceptr`.
pub type CUdeviceptr = u64;
/// Any opaque handle (`CUcontext`, `CUstream`, `CUevent`, `CUmodule`, `CUfunction`, ...).
pub type Handle = *mut c_void;
/// Result of an internal operation: the error is the `CUresult` to return.
pub type Res<T> = Result<T, CUresult>;

/// `CUresult` codes (values as in cuda.h).
#[allow(missing_docs)]
pub mod err {
    use super::CUresult;
    pub const SUCCESS: CUresult = 0;
    pub const INVALID_VALUE: CUresult = 1;
    pub const OUT_OF_MEMORY: CUresult = 2;
    pub const NOT_INITIALIZED: CUresult = 3;
    pub const DEINITIALIZED: CUresult = 4;
    pub const PROFILER_DISABLED: CUresult = 5;
    pub const NO_DEVICE: CUresult = 100;
    pub const INVALID_DEVICE: CUresult = 101;
    pub const DEVICE_NOT_LICENSED: CUresult = 102;
    pub const INVALID_IMAGE: CUresult = 200;
    pub const INVALID_CONTEXT: CUresult = 201;
    pub const CONTEXT_ALREADY_CURRENT: CUresult = 202;
    pub const MAP_FAILED: CUresult = 205;
    pub const UNMAP_FAILED: CUresult = 206;
    pub const ARRAY_IS_MAPPED: CUresult = 207;
    pub const ALREADY_MAPPED: CUresult = 208;
    pub const NO_BINARY_FOR_GPU: CUresult = 209;
    pub const ALREADY_ACQUIRED: CUresult = 210;
    pub const NOT_MAPPED: CUresult = 211;
    pub const ECC_UNCORRECTABLE: CUresult = 214;
    pub const UNSUPPORTED_LIMIT: CUresult = 215;
    pub const CONTEXT_ALREADY_IN_USE: CUresult = 216;
    pub const PEER_ACCESS_UNSUPPORTED: CUresult = 217;
    pub const INVALID_PTX: CUresult = 218;
    pub const INVALID_SOURCE: CUresult = 300;
    pub const FILE_NOT_FOUND: CUresult = 301;
    pub const SHARED_OBJECT_SYMBOL_NOT_FOUND: CUresult = 302;
    pub const SHARED_OBJECT_INIT_FAILED: CUresult = 303;
    pub const OPERATING_SYSTEM: CUresult = 304;
    pub const INVALID_HANDLE: CUresult = 400;
    pub const ILLEGAL_STATE: CUresult = 401;
    pub const NOT_FOUND: CUresult = 500;
    pub const NOT_READY: CUresult = 600;
    pub const ILLEGAL_ADDRESS: CUresult = 700;
    pub const LAUNCH_OUT_OF_RESOURCES: CUresult = 701;
    pub const LAUNCH_TIMEOUT: CUresult = 702;
    pub const PEER_ACCESS_ALREADY_ENABLED: CUresult = 704;
    pub const PEER_ACCESS_NOT_ENABLED: CUresult = 705;
    pub const PRIMARY_CONTEXT_ACTIVE: CUresult = 708;
    pub const CONTEXT_IS_DESTROYED: CUresult = 709;
    pub const ASSERT: CUresult = 710;
    pub const LAUNCH_FAILED: CUresult = 719;
    pub const COOPERATIVE_LAUNCH_TOO_LARGE: CUresult = 720;
    pub const NOT_PERMITTED: CUresult = 800;
    pub const NOT_SUPPORTED: CUresult = 801;
    pub const STREAM_CAPTURE_UNSUPPORTED: CUresult = 900;
    pub const STREAM_CAPTURE_INVALIDATED: CUresult = 901;
    pub const STREAM_CAPTURE_MERGE: CUresult = 902;
    pub const STREAM_CAPTURE_UNMATCHED: CUresult = 903;
    pub const STREAM_CAPTURE_UNJOINED: CUresult = 904;
    pub const STREAM_CAPTURE_ISOLATION: CUresult = 905;
    pub const STREAM_CAPTURE_IMPLICIT: CUresult = 906;
    pub const STREAM_CAPTURE_WRONG_THREAD: CUresult = 908;
    pub const GRAPH_EXEC_UPDATE_FAILURE: CUresult = 910;
    pub const UNKNOWN: CUresult = 999;
}

/// Runs an export's body, turning a panic into `CUDA_ERROR_UNKNOWN` (a panic must never unwind
/// into C).
pub fn guard(f: impl FnOnce() -> Res<()>) -> CUresult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => err::SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => err::UNKNOWN,
    }
}

/// [`guard`] for the export `name` (what `cuda_fn!` uses): a panic is reported on stderr with the
/// entry point's name. Passing the name also keeps exports with identical bodies (`cuCtxCreate`
/// and `cuCtxCreate_v2`) distinct functions: merged into one address, a pointer could not tell
/// which export it is.
pub fn guard_named(name: &'static str, f: impl FnOnce() -> Res<()>) -> CUresult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => err::SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => {
            std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("fake libcuda: {name} panicked; returning CUDA_ERROR_UNKNOWN\n"),
            )
            .ok();
            err::UNKNOWN
        }
    }
}

/// A `CUresult` as a [`Res`].
pub fn result(r: CUresult) -> Res<()> {
    match r {
        err::SUCCESS => Ok(()),
        e => Err(e),
    }
}

/// Writes `v` through an output pointer; `CUDA_ERROR_INVALID_VALUE` if it is null.
///
/// # Safety
/// `p` is null or valid for a write of `T`.
pub unsafe fn write_out<T>(p: *mut T, v: T) -> Res<()> {
    if p.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: non-null and valid for writes per this function's contract.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Checks an output pointer is non-null (before doing the work whose result it will receive).
pub fn need<T>(p: *const T) -> Res<()> {
    if p.is_null() {
        Err(err::INVALID_VALUE)
    } else {
        Ok(())
    }
}

/// Reads a `T` through an input pointer; `CUDA_ERROR_INVALID_VALUE` if it is null.
///
/// # Safety
/// `p` is null or valid for a read of `T`.
pub unsafe fn read_in<T: Copy>(p: *const T) -> Res<T> {
    if p.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: non-null and valid for reads per this function's contract.
    Ok(unsafe { p.read_unaligned() })
}

/// Borrows a C string argument; `CUDA_ERROR_INVALID_VALUE` if it is null.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives `'a`.
pub unsafe fn cstr<'a>(p: *const c_char) -> Res<&'a CStr> {
    if p.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: non-null NUL-terminated string per this function's contract.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// Copies `s` (NUL-terminated, truncated to fit) into a caller buffer of `len` bytes.
///
/// # Safety
/// `buf` is null or valid for `len` bytes of writes.
pub unsafe fn write_cstr(buf: *mut c_char, len: i32, s: &str) -> Res<()> {
    if buf.is_null() || len <= 0 {
        return Err(err::INVALID_VALUE);
    }
    let n = s.len().min(len as usize - 1);
    // SAFETY: buf is valid for len bytes and n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    Ok(())
}

/// A handle value as the integer it encodes.
pub fn hval(h: Handle) -> u64 {
    h as usize as u64
}

/// An integer as a handle.
pub fn hptr(v: u64) -> Handle {
    v as usize as Handle
}
