//! The CUDA driver and NVML ABI pieces the shim touches: result codes, handles, the structs
//! whose sizes it must read. Declared here (no CUDA headers, no libcuda link).

#![allow(non_camel_case_types)]

use std::ffi::{c_int, c_uint, c_void};

pub type CUresult = c_int;
pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
pub type CUcontext = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUfunction = *mut c_void;
pub type CUarray = *mut c_void;
pub type CUmipmappedArray = *mut c_void;
pub type CUmemoryPool = *mut c_void;
pub type CUgraphExec = *mut c_void;
pub type CUgraph = *mut c_void;
pub type CUgraphNode = *mut c_void;
pub type CUmemGenericAllocationHandle = u64;

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
pub const CUDA_ERROR_OPERATING_SYSTEM: CUresult = 304;
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
pub const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CUresult = 901;
pub const CUDA_ERROR_STREAM_CAPTURE_UNJOINED: CUresult = 904;
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;

/// `cuGetProcAddress` flag: the per-thread-default-stream variant is wanted.
pub const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;

pub type nvmlReturn_t = c_uint;
pub type nvmlDevice_t = *mut c_void;
pub const NVML_SUCCESS: nvmlReturn_t = 0;
pub const NVML_ERROR_INVALID_ARGUMENT: nvmlReturn_t = 2;
pub const NVML_ERROR_DRIVER_NOT_LOADED: nvmlReturn_t = 9;
pub const NVML_ERROR_UNKNOWN: nvmlReturn_t = 999;

/// `nvmlMemory_t`.
#[repr(C)]
pub struct NvmlMemory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
pub struct NvmlMemoryV2 {
    pub version: c_uint,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// `CUDA_ARRAY_DESCRIPTOR` (v2: size_t extents).
#[repr(C)]
pub struct ArrayDescriptor {
    pub width: usize,
    pub height: usize,
    pub format: c_uint,
    pub num_channels: c_uint,
}

/// `CUDA_ARRAY_DESCRIPTOR_v1` (unsigned int extents).
#[repr(C)]
pub struct ArrayDescriptorV1 {
    pub width: c_uint,
    pub height: c_uint,
    pub format: c_uint,
    pub num_channels: c_uint,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (v2).
#[repr(C)]
pub struct Array3dDescriptor {
    pub width: usize,
    pub height: usize,
    pub depth: usize,
    pub format: c_uint,
    pub num_channels: c_uint,
    pub flags: c_uint,
}

/// `CUDA_ARRAY3D_DESCRIPTOR_v1`.
#[repr(C)]
pub struct Array3dDescriptorV1 {
    pub width: c_uint,
    pub height: c_uint,
    pub depth: c_uint,
    pub format: c_uint,
    pub num_channels: c_uint,
    pub flags: c_uint,
}

/// The head of `CUmemAllocationProp`: enough to find the target device.
#[repr(C)]
pub struct MemAllocationPropHead {
    pub kind: c_int,
    pub requested_handle_types: c_int,
    pub location_type: c_int,
    pub location_id: c_int,
}

/// `CU_MEM_LOCATION_TYPE_DEVICE`.
pub const CU_MEM_LOCATION_TYPE_DEVICE: c_int = 1;

/// `CU_GRAPH_NODE_TYPE_GRAPH` (a child graph node).
pub const CU_GRAPH_NODE_TYPE_GRAPH: c_uint = 4;
/// `CU_GRAPH_NODE_TYPE_MEM_ALLOC`.
pub const CU_GRAPH_NODE_TYPE_MEM_ALLOC: c_uint = 10;
/// `CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`: physical memory the driver holds for graph
/// allocations in this process.
pub const CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: c_uint = 2;
/// `CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD`.
pub const CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD: u64 = 2;
/// `CU_STREAM_CAPTURE_STATUS_NONE`.
pub const CU_STREAM_CAPTURE_STATUS_NONE: c_int = 0;

/// `CUDA_MEM_ALLOC_NODE_PARAMS` (v1; `CUmemPoolProps` is 88 bytes in every CUDA 11.2+
/// header): where and how much a graph allocation node allocates.
#[repr(C)]
pub struct MemAllocNodeParams {
    pub alloc_type: c_int,
    pub handle_types: c_int,
    pub location_type: c_int,
    pub location_id: c_int,
    pub pool_rest: [u8; 72],
    pub access_descs: *const c_void,
    pub access_desc_count: usize,
    pub bytesize: usize,
    pub dptr: CUdeviceptr,
}

/// `CUDA_GRAPH_INSTANTIATE_PARAMS`: the flags come first.
#[repr(C)]
pub struct GraphInstantiateParamsHead {
    pub flags: u64,
    pub upload_stream: CUstream,
}

/// Bytes per element of a `CUarray_format`, or `None` for an unknown format.
pub fn array_format_bytes(format: c_uint) -> Option<u64> {
    Some(match format {
        0x01 | 0x08 => 1,        // UNSIGNED_INT8, SIGNED_INT8
        0x02 | 0x09 | 0x10 => 2, // UNSIGNED_INT16, SIGNED_INT16, HALF
        0x03 | 0x0a | 0x20 => 4, // UNSIGNED_INT32, SIGNED_INT32, FLOAT
        _ => return None,
    })
}

/// Bytes an array of these extents occupies (levels > 1: a mipmap chain, each level halved).
pub fn array_bytes(
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

/// Placeholder so `c_void` pointers can be named in signatures uniformly.
pub type VoidPtr = *mut c_void;

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
