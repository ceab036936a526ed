//! The ABI pieces the shim touches: the CUDA driver's (declared once, in
//! [`gpumux_common::cuda_abi`], shared with the fake driver) and NVML's result codes and the
//! structs whose fields it rewrites. No CUDA headers, no libcuda link.

#![allow(non_camel_case_types)]

pub(crate) use gpumux_common::cuda_abi::*;
use std::ffi::{c_uint, c_void};

pub(crate) type nvmlReturn_t = c_uint;
pub(crate) type nvmlDevice_t = *mut c_void;
pub(crate) const NVML_SUCCESS: nvmlReturn_t = 0;
pub(crate) const NVML_ERROR_INVALID_ARGUMENT: nvmlReturn_t = 2;
pub(crate) const NVML_ERROR_NOT_FOUND: nvmlReturn_t = 6;
pub(crate) const NVML_ERROR_INSUFFICIENT_SIZE: nvmlReturn_t = 7;
pub(crate) const NVML_ERROR_DRIVER_NOT_LOADED: nvmlReturn_t = 9;
pub(crate) const NVML_ERROR_UNKNOWN: nvmlReturn_t = 999;

/// `nvmlMemory_t`.
#[repr(C)]
pub(crate) struct NvmlMemory {
    pub(crate) total: u64,
    pub(crate) free: u64,
    pub(crate) used: u64,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
pub(crate) struct NvmlMemoryV2 {
    pub(crate) version: c_uint,
    pub(crate) total: u64,
    pub(crate) reserved: u64,
    pub(crate) free: u64,
    pub(crate) used: u64,
}

/// Bytes an array of these extents occupies (levels > 1: a mipmap chain, each level halved).
pub(crate) fn array_bytes(
    width: u64,
    height: u64,
    depth: u64,
    format: c_uint,
    channels: c_uint,
    levels: u32,
) -> Option<u64> {
    let elem = array_format_bytes(format)?.checked_mul(channels as u64)?;
    let (mut w, mut h, mut d) = (width.max(1), height.max(1), depth.max(1));
    let mut total: u64 = 0;
    for _ in 0..levels.max(1) {
        total = total.checked_add(w.checked_mul(h)?.checked_mul(d)?.checked_mul(elem)?)?;
        w = (w / 2).max(1);
        h = (h / 2).max(1);
        d = (d / 2).max(1);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_sizes() {
        assert_eq!(array_bytes(1024, 0, 0, 0x20, 4, 1), Some(1024 * 16));
        assert_eq!(array_bytes(4, 4, 0, 0x01, 1, 3), Some(16 + 4 + 1));
        assert_eq!(array_bytes(4, 4, 0, 0x77, 1, 1), None);
        assert_eq!(array_bytes(u64::MAX, 2, 1, 0x20, 4, 1), None);
    }
}
