//! The CUDA driver ABI pieces that both sides of the driver boundary read: the shim (which
//! looks into the arguments of the calls it hooks) and the fake driver (which implements them).
//! Declared once here, from the public `cuda.h` ABI (no CUDA headers, no libcuda link); the
//! tests check every struct against cudarc's bindgen of `cuda.h` (`size_of`/`offset_of`).
//!
//! Names are Rust-style; each item's doc gives its C name.

#![allow(non_camel_case_types)]

use std::ffi::{c_int, c_uint, c_void};

/// `CUresult` (a C enum: `int`-sized; bindgen, and so cudarc, make it `u32`).
pub type CUresult = u32;
/// `CUdevice` (a device ordinal).
pub type CUdevice = c_int;
/// `CUdeviceptr` (64-bit since the 3.2 ABI).
pub type CUdeviceptr = u64;
/// `CUmemGenericAllocationHandle` (VMM physical memory, multicast objects).
pub type CUmemGenericAllocationHandle = u64;
/// `CUcontext`.
pub type CUcontext = *mut c_void;
/// `CUgreenCtx`.
pub type CUgreenCtx = *mut c_void;
/// `CUstream`.
pub type CUstream = *mut c_void;
/// `CUevent`.
pub type CUevent = *mut c_void;
/// `CUfunction`.
pub type CUfunction = *mut c_void;
/// `CUarray`.
pub type CUarray = *mut c_void;
/// `CUmipmappedArray`.
pub type CUmipmappedArray = *mut c_void;
/// `CUmemoryPool`.
pub type CUmemoryPool = *mut c_void;
/// `CUgraphExec`.
pub type CUgraphExec = *mut c_void;
/// `CUgraph`.
pub type CUgraph = *mut c_void;
/// `CUgraphNode`.
pub type CUgraphNode = *mut c_void;

/// `CUDA_SUCCESS`.
pub const CUDA_SUCCESS: CUresult = 0;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
/// `CUDA_ERROR_NOT_INITIALIZED`.
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
/// `CUDA_ERROR_OPERATING_SYSTEM`.
pub const CUDA_ERROR_OPERATING_SYSTEM: CUresult = 304;
/// `CUDA_ERROR_NOT_FOUND`.
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
/// `CUDA_ERROR_UNKNOWN`.
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;
/// `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`.
pub const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CUresult = 901;
/// `CUDA_ERROR_STREAM_CAPTURE_UNJOINED`.
pub const CUDA_ERROR_STREAM_CAPTURE_UNJOINED: CUresult = 904;

/// `CU_STREAM_CAPTURE_STATUS_NONE` (`CUstreamCaptureStatus`).
pub const CU_STREAM_CAPTURE_STATUS_NONE: c_int = 0;
/// `CU_GRAPH_NODE_TYPE_GRAPH` (`CUgraphNodeType`: a child graph node).
pub const CU_GRAPH_NODE_TYPE_GRAPH: c_uint = 4;
/// `CU_GRAPH_NODE_TYPE_MEM_ALLOC`.
pub const CU_GRAPH_NODE_TYPE_MEM_ALLOC: c_uint = 10;
/// `CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT` (`CUgraphMem_attribute`): physical memory the driver
/// holds for graph allocations in this process.
pub const CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: c_uint = 2;
/// `CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD`.
pub const CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD: u64 = 2;

/// `cuGetProcAddress` flags (`CUdriverProcAddress_flags`): the default stream as compiled.
pub const CU_GET_PROC_ADDRESS_DEFAULT: u64 = 0;
/// `cuGetProcAddress` flags: the legacy default stream.
pub const CU_GET_PROC_ADDRESS_LEGACY_STREAM: u64 = 1;
/// `cuGetProcAddress` flags: the per-thread default stream variant (`_ptds`/`_ptsz`).
pub const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// `CU_MEM_LOCATION_TYPE_DEVICE` (`CUmemLocationType`).
pub const CU_MEM_LOCATION_TYPE_DEVICE: c_uint = 1;
/// `CU_MEM_ALLOCATION_TYPE_PINNED` (`CUmemAllocationType`).
pub const CU_MEM_ALLOCATION_TYPE_PINNED: c_uint = 1;

/// `CUDA_ARRAY_DESCRIPTOR` (the 3.2 ABI, `_v2`: `size_t` extents).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArrayDescriptor {
    pub width: usize,
    pub height: usize,
    /// `CUarray_format`.
    pub format: c_uint,
    pub num_channels: c_uint,
}

/// `CUDA_ARRAY_DESCRIPTOR_v1` (the pre-3.2 ABI: `unsigned int` extents).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArrayDescriptorV1 {
    pub width: c_uint,
    pub height: c_uint,
    pub format: c_uint,
    pub num_channels: c_uint,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (`_v2`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Array3dDescriptorV1 {
    pub width: c_uint,
    pub height: c_uint,
    pub depth: c_uint,
    pub format: c_uint,
    pub num_channels: c_uint,
    pub flags: c_uint,
}

/// `CUmemLocation` (passed by value to some calls).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemLocation {
    /// `CUmemLocationType` (`type` in C).
    pub kind: c_uint,
    pub id: c_int,
}

/// `CUmemAllocationProp` (VMM allocations, memory pools, granularity queries).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemAllocationProp {
    /// `CUmemAllocationType` (`type` in C).
    pub kind: c_uint,
    /// `CUmemAllocationHandleType` bitmask.
    pub requested_handle_types: c_uint,
    pub location: MemLocation,
    pub win32_handle_meta_data: *mut c_void,
    /// `allocFlags`: compressionType, gpuDirectRDMACapable, usage (u16), reserved[4].
    pub alloc_flags: [u8; 8],
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemAccessDesc {
    pub location: MemLocation,
    /// `CUmemAccess_flags`.
    pub flags: c_uint,
}

/// `CUmulticastObjectProp`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MulticastObjectProp {
    pub num_devices: c_uint,
    /// Memory that can be bound per device (bound memory comes from `cuMemCreate`).
    pub size: usize,
    pub handle_types: u64,
    pub flags: u64,
}

/// `CUmemPoolProps` (88 bytes in every CUDA 11.2+ header; the tail was `reserved` before 12.2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemPoolProps {
    /// `CUmemAllocationType` (`allocType` in C).
    pub alloc_type: c_uint,
    pub handle_types: c_uint,
    pub location: MemLocation,
    pub win32_security_attributes: *mut c_void,
    pub max_size: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

/// `CUDA_MEM_ALLOC_NODE_PARAMS` (v1): a graph allocation node's pool, size and address.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemAllocNodeParams {
    pub pool_props: MemPoolProps,
    pub access_descs: *const MemAccessDesc,
    pub access_desc_count: usize,
    pub bytesize: usize,
    pub dptr: CUdeviceptr,
}

/// `CUDA_GRAPH_INSTANTIATE_PARAMS`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GraphInstantiateParams {
    pub flags: u64,
    pub upload_stream: CUstream,
    pub err_node_out: CUgraphNode,
    /// `CUgraphInstantiateResult`.
    pub result_out: c_uint,
}

/// Bytes per element of a `CUarray_format` channel, or `None` for a format not listed here
/// (`UNSIGNED_INT8`/`SIGNED_INT8`: 1; `*_INT16`/`HALF`: 2; `*_INT32`/`FLOAT`: 4).
pub fn array_format_bytes(format: c_uint) -> Option<u64> {
    Some(match format {
        0x01 | 0x08 => 1,
        0x02 | 0x09 | 0x10 => 2,
        0x03 | 0x0a | 0x20 => 4,
        _ => return None,
    })
}

/// The API base name of an exported driver symbol, as a loader asks `cuGetProcAddress` for
/// it: without the per-thread-default-stream suffix (`_ptsz`/`_ptds`), then the ABI version
/// suffix (`_v2`, `_v3`, ...). `cuMemcpyHtoD_v2_ptds` → `cuMemcpyHtoD`.
pub fn base_name(symbol: &str) -> &str {
    let s = symbol
        .strip_suffix("_ptsz")
        .or_else(|| symbol.strip_suffix("_ptds"))
        .unwrap_or(symbol);
    match s.rsplit_once("_v") {
        Some((base, v))
            if !base.is_empty() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys;
    use std::mem::{offset_of, size_of};

    /// Same size and alignment as cudarc's bindgen type, and each listed field at the same
    /// offset.
    macro_rules! same_layout {
        ($ours:ty, $theirs:ty, { $($a:ident = $b:ident),* $(,)? }) => {
            assert_eq!(size_of::<$ours>(), size_of::<$theirs>(), "size of {}", stringify!($ours));
            assert_eq!(
                std::mem::align_of::<$ours>(),
                std::mem::align_of::<$theirs>(),
                "alignment of {}",
                stringify!($ours)
            );
            $(assert_eq!(
                offset_of!($ours, $a),
                offset_of!($theirs, $b),
                "offset of {}.{}",
                stringify!($ours),
                stringify!($a)
            );)*
        };
    }

    #[test]
    fn structs_match_cuda_h() {
        same_layout!(ArrayDescriptor, sys::CUDA_ARRAY_DESCRIPTOR, {
            width = Width, height = Height, format = Format, num_channels = NumChannels,
        });
        same_layout!(Array3dDescriptor, sys::CUDA_ARRAY3D_DESCRIPTOR, {
            width = Width, height = Height, depth = Depth, format = Format,
            num_channels = NumChannels, flags = Flags,
        });
        same_layout!(MemLocation, sys::CUmemLocation, { kind = type_, id = id });
        same_layout!(MemAllocationProp, sys::CUmemAllocationProp, {
            kind = type_, requested_handle_types = requestedHandleTypes, location = location,
            win32_handle_meta_data = win32HandleMetaData, alloc_flags = allocFlags,
        });
        same_layout!(MemAccessDesc, sys::CUmemAccessDesc, { location = location, flags = flags });
        same_layout!(MulticastObjectProp, sys::CUmulticastObjectProp, {
            num_devices = numDevices, size = size, handle_types = handleTypes, flags = flags,
        });
        same_layout!(MemPoolProps, sys::CUmemPoolProps, {
            alloc_type = allocType, handle_types = handleTypes, location = location,
            win32_security_attributes = win32SecurityAttributes, max_size = maxSize,
            usage = usage,
        });
        same_layout!(MemAllocNodeParams, sys::CUDA_MEM_ALLOC_NODE_PARAMS_v1, {
            pool_props = poolProps, access_descs = accessDescs,
            access_desc_count = accessDescCount, bytesize = bytesize, dptr = dptr,
        });
        same_layout!(GraphInstantiateParams, sys::CUDA_GRAPH_INSTANTIATE_PARAMS, {
            flags = flags, upload_stream = hUploadStream, err_node_out = hErrNode_out,
            result_out = result_out,
        });
    }

    #[test]
    fn scalars_match_cuda_h() {
        assert_eq!(size_of::<CUresult>(), size_of::<sys::CUresult>());
        assert_eq!(size_of::<CUdevice>(), size_of::<sys::CUdevice>());
        assert_eq!(size_of::<CUdeviceptr>(), size_of::<sys::CUdeviceptr>());
        assert_eq!(
            size_of::<CUmemGenericAllocationHandle>(),
            size_of::<sys::CUmemGenericAllocationHandle>()
        );
        assert_eq!(CUDA_SUCCESS, sys::CUresult::CUDA_SUCCESS as CUresult);
        assert_eq!(
            CUDA_ERROR_OUT_OF_MEMORY,
            sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY as CUresult
        );
        assert_eq!(
            CUDA_ERROR_NOT_INITIALIZED,
            sys::CUresult::CUDA_ERROR_NOT_INITIALIZED as CUresult
        );
        assert_eq!(
            CUDA_ERROR_OPERATING_SYSTEM,
            sys::CUresult::CUDA_ERROR_OPERATING_SYSTEM as CUresult
        );
        assert_eq!(
            CUDA_ERROR_NOT_FOUND,
            sys::CUresult::CUDA_ERROR_NOT_FOUND as CUresult
        );
        assert_eq!(
            CUDA_ERROR_UNKNOWN,
            sys::CUresult::CUDA_ERROR_UNKNOWN as CUresult
        );
        assert_eq!(
            CU_MEM_LOCATION_TYPE_DEVICE,
            sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE as c_uint
        );
        assert_eq!(
            CU_MEM_ALLOCATION_TYPE_PINNED,
            sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED as c_uint
        );
        assert_eq!(
            CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
            sys::CUdriverProcAddress_flags::CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM as u64
        );
        assert_eq!(
            CU_GET_PROC_ADDRESS_LEGACY_STREAM,
            sys::CUdriverProcAddress_flags::CU_GET_PROC_ADDRESS_LEGACY_STREAM as u64
        );
        assert_eq!(
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
            sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED as CUresult
        );
        assert_eq!(
            CUDA_ERROR_STREAM_CAPTURE_UNJOINED,
            sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_UNJOINED as CUresult
        );
        assert_eq!(
            CU_STREAM_CAPTURE_STATUS_NONE,
            sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE as c_int
        );
        assert_eq!(
            CU_GRAPH_NODE_TYPE_GRAPH,
            sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_GRAPH as c_uint
        );
        assert_eq!(
            CU_GRAPH_NODE_TYPE_MEM_ALLOC,
            sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_ALLOC as c_uint
        );
        assert_eq!(
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT,
            sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT as c_uint
        );
        assert_eq!(
            CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD,
            sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD.0 as u64
        );
    }

    /// The pre-3.2 descriptors are not in cudarc (its headers are newer): their layout is four
    /// (six) `unsigned int`s.
    #[test]
    fn v1_descriptors_are_plain_uints() {
        assert_eq!(size_of::<ArrayDescriptorV1>(), 4 * size_of::<c_uint>());
        assert_eq!(size_of::<Array3dDescriptorV1>(), 6 * size_of::<c_uint>());
        assert_eq!(offset_of!(Array3dDescriptorV1, flags), 20);
    }

    #[test]
    fn array_formats() {
        assert_eq!(
            array_format_bytes(sys::CUarray_format::CU_AD_FORMAT_FLOAT as c_uint),
            Some(4)
        );
        assert_eq!(
            array_format_bytes(sys::CUarray_format::CU_AD_FORMAT_HALF as c_uint),
            Some(2)
        );
        assert_eq!(
            array_format_bytes(sys::CUarray_format::CU_AD_FORMAT_SIGNED_INT8 as c_uint),
            Some(1)
        );
        assert_eq!(array_format_bytes(0x77), None);
    }

    #[test]
    fn base_names() {
        assert_eq!(base_name("cuMemAlloc_v2"), "cuMemAlloc");
        assert_eq!(base_name("cuMemcpyHtoD_v2_ptds"), "cuMemcpyHtoD");
        assert_eq!(
            base_name("cuStreamGetCaptureInfo_v3_ptsz"),
            "cuStreamGetCaptureInfo"
        );
        assert_eq!(base_name("cuLaunchKernel_ptsz"), "cuLaunchKernel");
        assert_eq!(base_name("cuGetProcAddress_v2"), "cuGetProcAddress");
        assert_eq!(base_name("cuMemcpy3DPeer"), "cuMemcpy3DPeer");
        assert_eq!(base_name("cuInit"), "cuInit");
        assert_eq!(base_name("cuFoo_vx"), "cuFoo_vx");
        assert_eq!(base_name("_v2"), "_v2");
        assert_eq!(
            base_name("nvmlDeviceGetComputeRunningProcesses_v3"),
            "nvmlDeviceGetComputeRunningProcesses"
        );
    }
}
