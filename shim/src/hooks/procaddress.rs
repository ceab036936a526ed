//! `cuGetProcAddress` (the 11030 four-argument ABI) and `cuGetProcAddress_v2` (12000): how the
//! CUDA runtime reaches every driver entry point. The real driver answers first (so versions
//! and `CUDA_ERROR_NOT_FOUND` are its own); for a hooked name the shim hands back its wrapper
//! of the **same** ABI variant — the version and per-thread-default-stream flag select it —
//! and remembers the driver's address as that wrapper's real function.

#![allow(non_snake_case)]

use super::real;
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use std::ffi::{CStr, c_char, c_int, c_void};

/// One ABI variant of a driver function: available from `min_version`, `ptsz` when it is the
/// per-thread-default-stream variant.
struct Variant {
    min_version: c_int,
    ptsz: bool,
    symbol: &'static str,
}

const fn v(min_version: c_int, symbol: &'static str) -> Variant {
    Variant {
        min_version,
        ptsz: false,
        symbol,
    }
}
const fn p(min_version: c_int, symbol: &'static str) -> Variant {
    Variant {
        min_version,
        ptsz: true,
        symbol,
    }
}

/// Hooked names and their variants (a subset of the driver's own table, for what the shim
/// wraps).
const VARIANTS: &[(&str, &[Variant])] = &[
    ("cuInit", &[v(2000, "cuInit")]),
    (
        "cuGetProcAddress",
        &[
            v(11030, "cuGetProcAddress"),
            v(12000, "cuGetProcAddress_v2"),
        ],
    ),
    (
        "cuMemAlloc",
        &[v(2000, "cuMemAlloc"), v(3020, "cuMemAlloc_v2")],
    ),
    (
        "cuMemAllocPitch",
        &[v(2000, "cuMemAllocPitch"), v(3020, "cuMemAllocPitch_v2")],
    ),
    ("cuMemAllocManaged", &[v(6000, "cuMemAllocManaged")]),
    (
        "cuMemAllocAsync",
        &[
            v(11020, "cuMemAllocAsync"),
            p(11020, "cuMemAllocAsync_ptsz"),
        ],
    ),
    (
        "cuMemAllocFromPoolAsync",
        &[
            v(11020, "cuMemAllocFromPoolAsync"),
            p(11020, "cuMemAllocFromPoolAsync_ptsz"),
        ],
    ),
    (
        "cuMemFree",
        &[v(2000, "cuMemFree"), v(3020, "cuMemFree_v2")],
    ),
    (
        "cuMemFreeAsync",
        &[v(11020, "cuMemFreeAsync"), p(11020, "cuMemFreeAsync_ptsz")],
    ),
    ("cuMemCreate", &[v(10020, "cuMemCreate")]),
    ("cuMemRelease", &[v(10020, "cuMemRelease")]),
    (
        "cuArrayCreate",
        &[v(2000, "cuArrayCreate"), v(3020, "cuArrayCreate_v2")],
    ),
    (
        "cuArray3DCreate",
        &[v(2000, "cuArray3DCreate"), v(3020, "cuArray3DCreate_v2")],
    ),
    ("cuArrayDestroy", &[v(2000, "cuArrayDestroy")]),
    (
        "cuMipmappedArrayCreate",
        &[v(5000, "cuMipmappedArrayCreate")],
    ),
    (
        "cuMipmappedArrayDestroy",
        &[v(5000, "cuMipmappedArrayDestroy")],
    ),
    (
        "cuMemGetInfo",
        &[v(2000, "cuMemGetInfo"), v(3020, "cuMemGetInfo_v2")],
    ),
    (
        "cuDeviceTotalMem",
        &[v(2000, "cuDeviceTotalMem"), v(3020, "cuDeviceTotalMem_v2")],
    ),
    (
        "cuLaunchKernel",
        &[v(4000, "cuLaunchKernel"), p(7000, "cuLaunchKernel_ptsz")],
    ),
    (
        "cuLaunchKernelEx",
        &[
            v(11060, "cuLaunchKernelEx"),
            p(11060, "cuLaunchKernelEx_ptsz"),
        ],
    ),
    (
        "cuLaunchCooperativeKernel",
        &[
            v(9000, "cuLaunchCooperativeKernel"),
            p(9000, "cuLaunchCooperativeKernel_ptsz"),
        ],
    ),
    (
        "cuGraphLaunch",
        &[v(10000, "cuGraphLaunch"), p(10000, "cuGraphLaunch_ptsz")],
    ),
    (
        "cuCtxCreate",
        &[
            v(2000, "cuCtxCreate"),
            v(3020, "cuCtxCreate_v2"),
            v(11040, "cuCtxCreate_v3"),
            v(12050, "cuCtxCreate_v4"),
        ],
    ),
    ("cuCtxSynchronize", &[v(2000, "cuCtxSynchronize")]),
    (
        "cuStreamSynchronize",
        &[
            v(2000, "cuStreamSynchronize"),
            p(7000, "cuStreamSynchronize_ptsz"),
        ],
    ),
    ("cuEventSynchronize", &[v(2000, "cuEventSynchronize")]),
    (
        "cuCtxDestroy",
        &[v(2000, "cuCtxDestroy"), v(4000, "cuCtxDestroy_v2")],
    ),
    (
        "cuDevicePrimaryCtxReset",
        &[
            v(7000, "cuDevicePrimaryCtxReset"),
            v(11000, "cuDevicePrimaryCtxReset_v2"),
        ],
    ),
    (
        "cuDevicePrimaryCtxRelease",
        &[
            v(7000, "cuDevicePrimaryCtxRelease"),
            v(11000, "cuDevicePrimaryCtxRelease_v2"),
        ],
    ),
    (
        "cuDevicePrimaryCtxRetain",
        &[v(7000, "cuDevicePrimaryCtxRetain")],
    ),
    ("cuModuleLoad", &[v(2000, "cuModuleLoad")]),
    ("cuModuleLoadData", &[v(2000, "cuModuleLoadData")]),
    ("cuModuleLoadDataEx", &[v(2010, "cuModuleLoadDataEx")]),
    ("cuModuleLoadFatBinary", &[v(2000, "cuModuleLoadFatBinary")]),
    ("cuModuleUnload", &[v(2000, "cuModuleUnload")]),
    ("cuLibraryLoadData", &[v(12000, "cuLibraryLoadData")]),
    (
        "cuLibraryLoadFromFile",
        &[v(12000, "cuLibraryLoadFromFile")],
    ),
    ("cuLibraryUnload", &[v(12000, "cuLibraryUnload")]),
];

/// The exported symbol that answers `name` at `version` with `flags`, if `name` is hooked.
/// `None` for names the shim leaves alone (and for versions below every variant).
pub fn variant_for(name: &str, version: c_int, flags: u64) -> Option<&'static str> {
    let (_, variants) = VARIANTS.iter().find(|(n, _)| *n == name)?;
    let want_ptsz = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0;
    let best = |ptsz: bool| {
        variants
            .iter()
            .filter(|x| x.ptsz == ptsz && x.min_version <= version)
            .max_by_key(|x| x.min_version)
            .map(|x| x.symbol)
    };
    if want_ptsz {
        best(true).or_else(|| best(false))
    } else {
        best(false)
    }
}

/// After the real driver answered `*pfn` for `symbol`: swap in the shim's wrapper if hooked.
fn substitute(symbol: *const c_char, version: c_int, flags: u64, pfn: *mut *mut c_void) {
    if symbol.is_null() || pfn.is_null() {
        return;
    }
    // SAFETY: the driver accepted `symbol` as a C string and wrote `*pfn`.
    let (name, real_ptr) = unsafe { (CStr::from_ptr(symbol), *pfn) };
    let Ok(name) = name.to_str() else { return };
    let Some(variant) = variant_for(name, version, flags) else {
        return;
    };
    if let Some((slot, wrapper)) = super::lookup(variant.as_bytes()) {
        slot.offer(real_ptr);
        // SAFETY: `pfn` is the caller's valid out-pointer.
        unsafe { *pfn = wrapper };
    }
}

/// # Safety
/// C ABI entry point; `cuGetProcAddress` (CUDA 11.3 ABI: symbol, pfn, version, flags).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuGetProcAddress: unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CUresult, CUDA_ERROR_NOT_FOUND);
        // SAFETY: forwarding the caller's arguments.
        let rc = unsafe { f(symbol, pfn, version, flags) };
        if rc == CUDA_SUCCESS {
            substitute(symbol, version, flags, pfn);
        }
        rc
    })
}

/// # Safety
/// C ABI entry point; `cuGetProcAddress_v2` (CUDA 12.0 ABI, with the query-result out-param).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuGetProcAddress_v2: unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CUresult, CUDA_ERROR_NOT_FOUND);
        // SAFETY: forwarding the caller's arguments.
        let rc = unsafe { f(symbol, pfn, version, flags, status) };
        if rc == CUDA_SUCCESS {
            substitute(symbol, version, flags, pfn);
        }
        rc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_abi_variant_asked_for() {
        assert_eq!(variant_for("cuMemAlloc", 12090, 0), Some("cuMemAlloc_v2"));
        assert_eq!(variant_for("cuMemAlloc", 3020, 0), Some("cuMemAlloc_v2"));
        assert_eq!(variant_for("cuMemAlloc", 3010, 0), Some("cuMemAlloc"));
        assert_eq!(
            variant_for("cuGetProcAddress", 11030, 0),
            Some("cuGetProcAddress")
        );
        assert_eq!(
            variant_for("cuGetProcAddress", 12000, 0),
            Some("cuGetProcAddress_v2")
        );
        assert_eq!(
            variant_for("cuLaunchKernel", 12000, 2),
            Some("cuLaunchKernel_ptsz")
        );
        assert_eq!(
            variant_for("cuLaunchKernel", 12000, 1),
            Some("cuLaunchKernel")
        );
        assert_eq!(
            variant_for("cuMemAllocManaged", 12000, 2),
            Some("cuMemAllocManaged"),
            "no ptsz variant: default one"
        );
        assert_eq!(variant_for("cuMemcpy", 12000, 0), None);
        assert_eq!(variant_for("cuMemCreate", 9000, 0), None);
    }

    #[test]
    fn every_variant_is_hooked() {
        for (_, variants) in VARIANTS {
            for x in *variants {
                assert!(
                    crate::hooks::HOOKED_NAMES.contains(&x.symbol),
                    "{} has no export",
                    x.symbol
                );
            }
        }
    }
}
