//! What NVIDIA's CUDA runtime (`libcudart.so.12`) answers on the driver it finds: the result
//! (and, on success, the value) of the runtime calls a program starts with, one line each
//! (`conformance-probe cudart`), so runs with and without an LD_PRELOAD shim can be compared.
//! Without a GPU every call that needs a device answers `cudaErrorNoDevice` (100).

use crate::probe::{Library, ProbeError};
use std::ffi::{c_int, c_void};
use std::path::Path;

/// The header line of the probe's cudart output.
pub const CUDART_HEADER: &str = "# call\tresult\tvalue";

type IntOut = unsafe extern "C" fn(*mut c_int) -> c_int;
type NoArgs = unsafe extern "C" fn() -> c_int;
type Malloc = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
type Free = unsafe extern "C" fn(*mut c_void) -> c_int;
type SetDevice = unsafe extern "C" fn(c_int) -> c_int;
type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;

/// Loads the runtime at `path` and makes the calls, in order.
pub fn cudart_lines(path: &Path) -> Result<Vec<String>, ProbeError> {
    let lib = Library::open(path, &[])?;
    let sym = |name: &'static str| -> Result<*mut c_void, ProbeError> {
        match lib.symbol(name) {
            p if p.is_null() => Err(ProbeError::Missing {
                path: path.display().to_string(),
                symbol: name,
            }),
            p => Ok(p),
        }
    };
    let mut lines = vec![CUDART_HEADER.to_owned()];
    let mut line = |call: &str, result: c_int, value: String| {
        let value = if result == 0 { value } else { "-".into() };
        lines.push(format!("{call}\t{result}\t{value}"));
    };
    // SAFETY: (every transmute and call below) the runtime exports each of these functions
    // with the C signature of its type (cuda_runtime_api.h); the out-pointers are valid locals.
    unsafe {
        let int_out = |p| std::mem::transmute::<*mut c_void, IntOut>(p);
        let mut v: c_int = -1;
        line(
            "cudaRuntimeGetVersion",
            int_out(sym("cudaRuntimeGetVersion")?)(&mut v),
            v.to_string(),
        );
        let mut v: c_int = -1;
        line(
            "cudaDriverGetVersion",
            int_out(sym("cudaDriverGetVersion")?)(&mut v),
            v.to_string(),
        );
        let mut v: c_int = -1;
        line(
            "cudaGetDeviceCount",
            int_out(sym("cudaGetDeviceCount")?)(&mut v),
            v.to_string(),
        );
        let set = std::mem::transmute::<*mut c_void, SetDevice>(sym("cudaSetDevice")?);
        line("cudaSetDevice(0)", set(0), String::new());
        let mut p: *mut c_void = std::ptr::null_mut();
        let malloc = std::mem::transmute::<*mut c_void, Malloc>(sym("cudaMalloc")?);
        let rc = malloc(&mut p, 1 << 20);
        line("cudaMalloc(1 MiB)", rc, String::new());
        if rc == 0 {
            let free = std::mem::transmute::<*mut c_void, Free>(sym("cudaFree")?);
            line("cudaFree", free(p), String::new());
        }
        let (mut free_b, mut total_b) = (0usize, 0usize);
        let info = std::mem::transmute::<*mut c_void, MemGetInfo>(sym("cudaMemGetInfo")?);
        line(
            "cudaMemGetInfo",
            info(&mut free_b, &mut total_b),
            format!("{free_b} {total_b}"),
        );
        let sync = std::mem::transmute::<*mut c_void, NoArgs>(sym("cudaDeviceSynchronize")?);
        line("cudaDeviceSynchronize", sync(), String::new());
        let last = std::mem::transmute::<*mut c_void, NoArgs>(sym("cudaGetLastError")?);
        line("cudaGetLastError", last(), String::new());
    }
    Ok(lines)
}
