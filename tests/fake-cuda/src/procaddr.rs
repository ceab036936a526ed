//! The `cuGetProcAddress` table: API name → variants `(minimum ABI version, exported symbol)`,
//! plus the per-thread-default-stream variants selected by
//! `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`. A request resolves to the newest variant whose
//! version is <= the requested one. Variants whose ABI the fake does not implement map to a
//! `CUDA_ERROR_NOT_SUPPORTED` stub so a caller never receives a function of another ABI. All
//! addresses are the fake's own functions (the library is linked `-Bsymbolic`).

use crate::exports::*;
use crate::types::{Res, err};
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

/// `CU_GET_PROC_ADDRESS_SUCCESS`.
pub const SYMBOL_SUCCESS: c_int = 0;
/// `CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND`.
pub const SYMBOL_NOT_FOUND: c_int = 1;
/// `CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT`.
pub const VERSION_NOT_SUFFICIENT: c_int = 2;
/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const FLAG_PTDS: u64 = 2;

/// One table row.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// API name as requested.
    pub name: &'static str,
    /// Minimum ABI version.
    pub version: c_int,
    /// Whether this is the per-thread-default-stream variant.
    pub ptds: bool,
    /// Exported symbol name (for tests and diagnostics).
    pub symbol: &'static str,
    /// Address.
    pub addr: usize,
}

macro_rules! rows {
    ($v:ident; $($name:literal @ $ver:literal => $sym:ident $(, ptds $psym:ident)?;)*) => {$(
        $v.push(Row { name: $name, version: $ver, ptds: false, symbol: stringify!($sym), addr: $sym as *const () as usize });
        $( $v.push(Row { name: $name, version: $ver, ptds: true, symbol: stringify!($psym), addr: $psym as *const () as usize }); )?
    )*};
}

/// The table.
#[allow(clippy::vec_init_then_push)]
pub fn table() -> &'static [Row] {
    static TABLE: OnceLock<Vec<Row>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut v = Vec::new();
        rows! { v;
            "cuGetProcAddress" @ 11030 => cuGetProcAddress;
            "cuGetProcAddress" @ 12000 => cuGetProcAddress_v2;
            "cuInit" @ 2000 => cuInit;
            "cuDriverGetVersion" @ 2020 => cuDriverGetVersion;
            "cuGetErrorString" @ 6000 => cuGetErrorString;
            "cuGetErrorName" @ 6000 => cuGetErrorName;
            "cuGetExportTable" @ 3000 => cuGetExportTable;
            "cuDeviceGet" @ 2000 => cuDeviceGet;
            "cuDeviceGetCount" @ 2000 => cuDeviceGetCount;
            "cuDeviceGetName" @ 2000 => cuDeviceGetName;
            "cuDeviceGetUuid" @ 9020 => cuDeviceGetUuid;
            "cuDeviceGetUuid" @ 11040 => cuDeviceGetUuid_v2;
            "cuDeviceGetLuid" @ 10000 => cuDeviceGetLuid;
            "cuDeviceTotalMem" @ 2000 => cuDeviceTotalMem;
            "cuDeviceTotalMem" @ 3020 => cuDeviceTotalMem_v2;
            "cuDeviceGetAttribute" @ 2000 => cuDeviceGetAttribute;
            "cuDeviceComputeCapability" @ 2000 => cuDeviceComputeCapability;
            "cuDeviceGetPCIBusId" @ 4010 => cuDeviceGetPCIBusId;
            "cuDeviceGetByPCIBusId" @ 4010 => cuDeviceGetByPCIBusId;
            "cuDeviceCanAccessPeer" @ 4000 => cuDeviceCanAccessPeer;
            "cuDeviceGetDefaultMemPool" @ 11020 => cuDeviceGetDefaultMemPool;
            "cuDeviceGetMemPool" @ 11020 => cuDeviceGetMemPool;
            "cuDeviceSetMemPool" @ 11020 => cuDeviceSetMemPool;
            "cuDevicePrimaryCtxRetain" @ 7000 => cuDevicePrimaryCtxRetain;
            "cuDevicePrimaryCtxRelease" @ 7000 => cuDevicePrimaryCtxRelease;
            "cuDevicePrimaryCtxRelease" @ 11000 => cuDevicePrimaryCtxRelease_v2;
            "cuDevicePrimaryCtxReset" @ 7000 => cuDevicePrimaryCtxReset;
            "cuDevicePrimaryCtxReset" @ 11000 => cuDevicePrimaryCtxReset_v2;
            "cuDevicePrimaryCtxSetFlags" @ 7000 => cuDevicePrimaryCtxSetFlags;
            "cuDevicePrimaryCtxSetFlags" @ 11000 => cuDevicePrimaryCtxSetFlags_v2;
            "cuDevicePrimaryCtxGetState" @ 7000 => cuDevicePrimaryCtxGetState;
            "cuCtxCreate" @ 2000 => cuCtxCreate;
            "cuCtxCreate" @ 3020 => cuCtxCreate_v2;
            "cuCtxCreate" @ 11040 => cuCtxCreate_v3;
            "cuCtxCreate" @ 12050 => cuCtxCreate_v4;
            "cuCtxDestroy" @ 2000 => cuCtxDestroy;
            "cuCtxDestroy" @ 4000 => cuCtxDestroy_v2;
            "cuCtxPushCurrent" @ 2000 => cuCtxPushCurrent;
            "cuCtxPushCurrent" @ 4000 => cuCtxPushCurrent_v2;
            "cuCtxPopCurrent" @ 2000 => cuCtxPopCurrent;
            "cuCtxPopCurrent" @ 4000 => cuCtxPopCurrent_v2;
            "cuCtxGetCurrent" @ 4000 => cuCtxGetCurrent;
            "cuCtxSetCurrent" @ 4000 => cuCtxSetCurrent;
            "cuCtxGetDevice" @ 2000 => cuCtxGetDevice;
            "cuCtxGetFlags" @ 7000 => cuCtxGetFlags;
            "cuCtxSetFlags" @ 12010 => cuCtxSetFlags;
            "cuCtxGetApiVersion" @ 3020 => cuCtxGetApiVersion;
            "cuCtxSynchronize" @ 2000 => cuCtxSynchronize;
            "cuCtxGetLimit" @ 3010 => cuCtxGetLimit;
            "cuCtxSetLimit" @ 3010 => cuCtxSetLimit;
            "cuCtxGetCacheConfig" @ 3020 => cuCtxGetCacheConfig;
            "cuCtxSetCacheConfig" @ 3020 => cuCtxSetCacheConfig;
            "cuCtxGetStreamPriorityRange" @ 5050 => cuCtxGetStreamPriorityRange;
            "cuCtxEnablePeerAccess" @ 4000 => cuCtxEnablePeerAccess;
            "cuCtxDisablePeerAccess" @ 4000 => cuCtxDisablePeerAccess;
            "cuMemGetInfo" @ 2000 => cuMemGetInfo;
            "cuMemGetInfo" @ 3020 => cuMemGetInfo_v2;
            "cuMemAlloc" @ 2000 => cuMemAlloc;
            "cuMemAlloc" @ 3020 => cuMemAlloc_v2;
            "cuMemAllocPitch" @ 3020 => cuMemAllocPitch_v2;
            "cuMemAllocManaged" @ 6000 => cuMemAllocManaged;
            "cuMemFree" @ 2000 => cuMemFree;
            "cuMemFree" @ 3020 => cuMemFree_v2;
            "cuMemGetAddressRange" @ 3020 => cuMemGetAddressRange_v2;
            "cuMemAllocHost" @ 2000 => cuMemAllocHost;
            "cuMemAllocHost" @ 3020 => cuMemAllocHost_v2;
            "cuMemHostAlloc" @ 2020 => cuMemHostAlloc;
            "cuMemFreeHost" @ 2000 => cuMemFreeHost;
            "cuMemHostGetDevicePointer" @ 3020 => cuMemHostGetDevicePointer_v2;
            "cuMemHostRegister" @ 6050 => cuMemHostRegister_v2;
            "cuMemHostUnregister" @ 4000 => cuMemHostUnregister;
            "cuPointerGetAttribute" @ 4000 => cuPointerGetAttribute;
            "cuMemAllocAsync" @ 11020 => cuMemAllocAsync, ptds cuMemAllocAsync_ptsz;
            "cuMemAllocFromPoolAsync" @ 11020 => cuMemAllocFromPoolAsync, ptds cuMemAllocFromPoolAsync_ptsz;
            "cuMemFreeAsync" @ 11020 => cuMemFreeAsync, ptds cuMemFreeAsync_ptsz;
            "cuMemPoolCreate" @ 11020 => cuMemPoolCreate;
            "cuMemPoolDestroy" @ 11020 => cuMemPoolDestroy;
            "cuMemPoolTrimTo" @ 11020 => cuMemPoolTrimTo;
            "cuMemPoolGetAttribute" @ 11020 => cuMemPoolGetAttribute;
            "cuMemPoolSetAttribute" @ 11020 => cuMemPoolSetAttribute;
            "cuMemGetAllocationGranularity" @ 10020 => cuMemGetAllocationGranularity;
            "cuMemCreate" @ 10020 => cuMemCreate;
            "cuMemRelease" @ 10020 => cuMemRelease;
            "cuMemAddressReserve" @ 10020 => cuMemAddressReserve;
            "cuMemAddressFree" @ 10020 => cuMemAddressFree;
            "cuMemMap" @ 10020 => cuMemMap;
            "cuMemUnmap" @ 10020 => cuMemUnmap;
            "cuMemSetAccess" @ 10020 => cuMemSetAccess;
            "cuMemExportToShareableHandle" @ 10020 => cuMemExportToShareableHandle;
            "cuMemImportFromShareableHandle" @ 10020 => cuMemImportFromShareableHandle;
            "cuArrayCreate" @ 3020 => cuArrayCreate_v2;
            "cuArray3DCreate" @ 3020 => cuArray3DCreate_v2;
            "cuArrayDestroy" @ 2000 => cuArrayDestroy;
            "cuMipmappedArrayCreate" @ 5000 => cuMipmappedArrayCreate;
            "cuMipmappedArrayDestroy" @ 5000 => cuMipmappedArrayDestroy;
            "cuMemPrefetchAsync" @ 8000 => not_supported_stub;
            "cuMemPrefetchAsync" @ 12020 => cuMemPrefetchAsync_v2;
            "cuMemAdvise" @ 8000 => not_supported_stub;
            "cuMemAdvise" @ 12020 => cuMemAdvise_v2;
            "cuStreamAttachMemAsync" @ 6000 => cuStreamAttachMemAsync;
            "cuMemcpy" @ 4000 => cuMemcpy, ptds cuMemcpy_ptds;
            "cuMemcpyAsync" @ 4000 => cuMemcpyAsync, ptds cuMemcpyAsync_ptsz;
            "cuMemcpyHtoD" @ 3020 => cuMemcpyHtoD_v2, ptds cuMemcpyHtoD_v2_ptds;
            "cuMemcpyDtoH" @ 3020 => cuMemcpyDtoH_v2, ptds cuMemcpyDtoH_v2_ptds;
            "cuMemcpyDtoD" @ 3020 => cuMemcpyDtoD_v2, ptds cuMemcpyDtoD_v2_ptds;
            "cuMemcpyHtoDAsync" @ 3020 => cuMemcpyHtoDAsync_v2, ptds cuMemcpyHtoDAsync_v2_ptsz;
            "cuMemcpyDtoHAsync" @ 3020 => cuMemcpyDtoHAsync_v2, ptds cuMemcpyDtoHAsync_v2_ptsz;
            "cuMemcpyDtoDAsync" @ 3020 => cuMemcpyDtoDAsync_v2, ptds cuMemcpyDtoDAsync_v2_ptsz;
            "cuMemcpyPeer" @ 4000 => cuMemcpyPeer, ptds cuMemcpyPeer_ptds;
            "cuMemcpyPeerAsync" @ 4000 => cuMemcpyPeerAsync, ptds cuMemcpyPeerAsync_ptsz;
            "cuMemcpy2D" @ 3020 => cuMemcpy2D_v2, ptds cuMemcpy2D_v2_ptds;
            "cuMemcpy2DUnaligned" @ 3020 => cuMemcpy2DUnaligned_v2, ptds cuMemcpy2DUnaligned_v2_ptds;
            "cuMemcpy2DAsync" @ 3020 => cuMemcpy2DAsync_v2, ptds cuMemcpy2DAsync_v2_ptsz;
            "cuMemcpy3D" @ 3020 => cuMemcpy3D_v2, ptds cuMemcpy3D_v2_ptds;
            "cuMemcpy3DAsync" @ 3020 => cuMemcpy3DAsync_v2, ptds cuMemcpy3DAsync_v2_ptsz;
            "cuMemcpyHtoA" @ 3020 => cuMemcpyHtoA_v2;
            "cuMemcpyAtoH" @ 3020 => cuMemcpyAtoH_v2;
            "cuMemcpyDtoA" @ 3020 => cuMemcpyDtoA_v2;
            "cuMemcpyAtoD" @ 3020 => cuMemcpyAtoD_v2;
            "cuMemsetD8" @ 3020 => cuMemsetD8_v2, ptds cuMemsetD8_v2_ptds;
            "cuMemsetD16" @ 3020 => cuMemsetD16_v2, ptds cuMemsetD16_v2_ptds;
            "cuMemsetD32" @ 3020 => cuMemsetD32_v2, ptds cuMemsetD32_v2_ptds;
            "cuMemsetD8Async" @ 3020 => cuMemsetD8Async, ptds cuMemsetD8Async_ptsz;
            "cuMemsetD16Async" @ 3020 => cuMemsetD16Async, ptds cuMemsetD16Async_ptsz;
            "cuMemsetD32Async" @ 3020 => cuMemsetD32Async, ptds cuMemsetD32Async_ptsz;
            "cuMemsetD2D8" @ 3020 => cuMemsetD2D8_v2, ptds cuMemsetD2D8_v2_ptds;
            "cuMemsetD2D16" @ 3020 => cuMemsetD2D16_v2, ptds cuMemsetD2D16_v2_ptds;
            "cuMemsetD2D32" @ 3020 => cuMemsetD2D32_v2, ptds cuMemsetD2D32_v2_ptds;
            "cuMemsetD2D8Async" @ 3020 => cuMemsetD2D8Async, ptds cuMemsetD2D8Async_ptsz;
            "cuMemsetD2D16Async" @ 3020 => cuMemsetD2D16Async, ptds cuMemsetD2D16Async_ptsz;
            "cuMemsetD2D32Async" @ 3020 => cuMemsetD2D32Async, ptds cuMemsetD2D32Async_ptsz;
            "cuIpcGetMemHandle" @ 4010 => cuIpcGetMemHandle;
            "cuIpcOpenMemHandle" @ 4010 => not_supported_stub;
            "cuIpcOpenMemHandle" @ 11000 => cuIpcOpenMemHandle_v2;
            "cuIpcCloseMemHandle" @ 4010 => cuIpcCloseMemHandle;
            "cuIpcGetEventHandle" @ 4010 => cuIpcGetEventHandle;
            "cuIpcOpenEventHandle" @ 4010 => cuIpcOpenEventHandle;
            "cuModuleLoad" @ 2000 => cuModuleLoad;
            "cuModuleLoadData" @ 2000 => cuModuleLoadData;
            "cuModuleLoadDataEx" @ 2010 => cuModuleLoadDataEx;
            "cuModuleLoadFatBinary" @ 2000 => cuModuleLoadFatBinary;
            "cuModuleUnload" @ 2000 => cuModuleUnload;
            "cuModuleGetFunction" @ 2000 => cuModuleGetFunction;
            "cuModuleGetGlobal" @ 3020 => cuModuleGetGlobal_v2;
            "cuLibraryLoadData" @ 12000 => cuLibraryLoadData;
            "cuLibraryUnload" @ 12000 => cuLibraryUnload;
            "cuLibraryGetKernel" @ 12000 => cuLibraryGetKernel;
            "cuLibraryGetModule" @ 12000 => cuLibraryGetModule;
            "cuKernelGetFunction" @ 12000 => cuKernelGetFunction;
            "cuFuncGetAttribute" @ 2020 => cuFuncGetAttribute;
            "cuFuncSetAttribute" @ 9000 => cuFuncSetAttribute;
            "cuFuncSetCacheConfig" @ 3000 => cuFuncSetCacheConfig;
            "cuFuncGetModule" @ 11000 => cuFuncGetModule;
            "cuLaunchKernel" @ 4000 => cuLaunchKernel, ptds cuLaunchKernel_ptsz;
            "cuLaunchKernelEx" @ 11060 => cuLaunchKernelEx, ptds cuLaunchKernelEx_ptsz;
            "cuLaunchCooperativeKernel" @ 9000 => cuLaunchCooperativeKernel, ptds cuLaunchCooperativeKernel_ptsz;
            "cuLaunchHostFunc" @ 10000 => cuLaunchHostFunc, ptds cuLaunchHostFunc_ptsz;
            "cuStreamCreate" @ 2000 => cuStreamCreate;
            "cuStreamCreateWithPriority" @ 5050 => cuStreamCreateWithPriority;
            "cuStreamDestroy" @ 2000 => cuStreamDestroy;
            "cuStreamDestroy" @ 4000 => cuStreamDestroy_v2;
            "cuStreamSynchronize" @ 2000 => cuStreamSynchronize, ptds cuStreamSynchronize_ptsz;
            "cuStreamQuery" @ 2000 => cuStreamQuery, ptds cuStreamQuery_ptsz;
            "cuStreamWaitEvent" @ 3020 => cuStreamWaitEvent, ptds cuStreamWaitEvent_ptsz;
            "cuStreamGetFlags" @ 5050 => cuStreamGetFlags, ptds cuStreamGetFlags_ptsz;
            "cuStreamGetPriority" @ 5050 => cuStreamGetPriority, ptds cuStreamGetPriority_ptsz;
            "cuStreamGetCtx" @ 9020 => cuStreamGetCtx, ptds cuStreamGetCtx_ptsz;
            "cuStreamGetCtx" @ 12050 => not_supported_stub, ptds not_supported_stub;
            "cuStreamIsCapturing" @ 10000 => cuStreamIsCapturing, ptds cuStreamIsCapturing_ptsz;
            "cuStreamAddCallback" @ 5000 => cuStreamAddCallback, ptds cuStreamAddCallback_ptsz;
            "cuStreamBeginCapture" @ 10000 => cuStreamBeginCapture, ptds cuStreamBeginCapture_ptsz;
            "cuStreamBeginCapture" @ 10010 => cuStreamBeginCapture_v2, ptds cuStreamBeginCapture_v2_ptsz;
            "cuStreamEndCapture" @ 10000 => cuStreamEndCapture, ptds cuStreamEndCapture_ptsz;
            "cuStreamGetCaptureInfo" @ 10010 => cuStreamGetCaptureInfo, ptds cuStreamGetCaptureInfo_ptsz;
            "cuStreamGetCaptureInfo" @ 11030 => cuStreamGetCaptureInfo_v2, ptds cuStreamGetCaptureInfo_v2_ptsz;
            "cuStreamGetCaptureInfo" @ 12030 => cuStreamGetCaptureInfo_v3, ptds cuStreamGetCaptureInfo_v3_ptsz;
            "cuEventCreate" @ 2000 => cuEventCreate;
            "cuEventDestroy" @ 2000 => cuEventDestroy;
            "cuEventDestroy" @ 4000 => cuEventDestroy_v2;
            "cuEventRecord" @ 2000 => cuEventRecord, ptds cuEventRecord_ptsz;
            "cuEventRecordWithFlags" @ 11010 => cuEventRecordWithFlags, ptds cuEventRecordWithFlags_ptsz;
            "cuEventSynchronize" @ 2000 => cuEventSynchronize;
            "cuEventQuery" @ 2000 => cuEventQuery;
            "cuEventElapsedTime" @ 2000 => cuEventElapsedTime;
            "cuEventElapsedTime" @ 12080 => cuEventElapsedTime_v2;
            "cuGraphCreate" @ 10000 => cuGraphCreate;
            "cuGraphDestroy" @ 10000 => cuGraphDestroy;
            "cuGraphExecDestroy" @ 10000 => cuGraphExecDestroy;
            "cuGraphInstantiate" @ 10000 => cuGraphInstantiate;
            "cuGraphInstantiate" @ 11000 => cuGraphInstantiate_v2;
            "cuGraphInstantiate" @ 12000 => cuGraphInstantiateWithFlags;
            "cuGraphInstantiateWithFlags" @ 11040 => cuGraphInstantiateWithFlags;
            "cuGraphInstantiateWithParams" @ 12000 => cuGraphInstantiateWithParams, ptds cuGraphInstantiateWithParams_ptsz;
            "cuGraphLaunch" @ 10000 => cuGraphLaunch, ptds cuGraphLaunch_ptsz;
            "cuGraphUpload" @ 11010 => cuGraphUpload, ptds cuGraphUpload_ptsz;
            "cuOccupancyMaxActiveBlocksPerMultiprocessor" @ 6050 => cuOccupancyMaxActiveBlocksPerMultiprocessor;
            "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags" @ 7000 => cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags;
            "cuOccupancyMaxPotentialBlockSize" @ 6050 => cuOccupancyMaxPotentialBlockSize;
            "cuOccupancyMaxPotentialBlockSizeWithFlags" @ 7000 => cuOccupancyMaxPotentialBlockSizeWithFlags;
            "cuOccupancyAvailableDynamicSMemPerBlock" @ 10020 => cuOccupancyAvailableDynamicSMemPerBlock;
            "cuOccupancyMaxPotentialClusterSize" @ 11070 => cuOccupancyMaxPotentialClusterSize;
            "cuOccupancyMaxActiveClusters" @ 11070 => cuOccupancyMaxActiveClusters;
            "cuImportExternalMemory" @ 10000 => cuImportExternalMemory;
            "cuExternalMemoryGetMappedBuffer" @ 10000 => cuExternalMemoryGetMappedBuffer;
            "cuDestroyExternalMemory" @ 10000 => cuDestroyExternalMemory;
            "cuProfilerStart" @ 4000 => cuProfilerStart;
            "cuProfilerStop" @ 4000 => cuProfilerStop;
            "cuProfilerInitialize" @ 4000 => cuProfilerInitialize;
        }
        v
    })
}

/// Resolves `name` at ABI `version` with `flags`; returns the address and the symbol name.
pub fn resolve(name: &[u8], version: c_int, flags: u64) -> Res<(*mut c_void, &'static str)> {
    if flags > 2 {
        return Err(err::INVALID_VALUE);
    }
    let ptds = flags & FLAG_PTDS != 0;
    let best = |want_ptds: bool| {
        table()
            .iter()
            .filter(|r| r.name.as_bytes() == name && r.ptds == want_ptds && r.version <= version)
            .max_by_key(|r| r.version)
    };
    let normal = best(false).ok_or(err::NOT_FOUND)?;
    let row = match ptds.then(|| best(true)).flatten() {
        // The per-thread variant of the same ABI version as the newest normal variant.
        Some(p) if p.version == normal.version => p,
        _ => normal,
    };
    Ok((row.addr as *mut c_void, row.symbol))
}

/// The `CUdriverProcAddressQueryResult` of a failed lookup.
pub fn symbol_status(name: &[u8], version: c_int) -> c_int {
    let mut known = table()
        .iter()
        .filter(|r| r.name.as_bytes() == name)
        .peekable();
    if known.peek().is_none() {
        SYMBOL_NOT_FOUND
    } else if known.all(|r| r.version > version) {
        VERSION_NOT_SUFFICIENT
    } else {
        SYMBOL_NOT_FOUND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, v: c_int, flags: u64) -> Option<&'static str> {
        resolve(name.as_bytes(), v, flags).ok().map(|(_, s)| s)
    }

    #[test]
    fn versions_and_flags() {
        assert_eq!(sym("cuMemAlloc", 3020, 0), Some("cuMemAlloc_v2"));
        assert_eq!(sym("cuMemAlloc", 12090, 0), Some("cuMemAlloc_v2"));
        assert_eq!(sym("cuMemAlloc", 2000, 0), Some("cuMemAlloc"));
        assert_eq!(
            sym("cuDevicePrimaryCtxRelease", 7000, 0),
            Some("cuDevicePrimaryCtxRelease")
        );
        assert_eq!(
            sym("cuDevicePrimaryCtxRelease", 11000, 0),
            Some("cuDevicePrimaryCtxRelease_v2")
        );
        assert_eq!(sym("cuGetProcAddress", 11030, 0), Some("cuGetProcAddress"));
        assert_eq!(
            sym("cuGetProcAddress", 12000, 0),
            Some("cuGetProcAddress_v2")
        );
        assert_eq!(sym("cuLaunchKernel", 4000, 2), Some("cuLaunchKernel_ptsz"));
        assert_eq!(sym("cuLaunchKernel", 4000, 1), Some("cuLaunchKernel"));
        assert_eq!(sym("cuMemcpyHtoD", 3020, 2), Some("cuMemcpyHtoD_v2_ptds"));
        assert_eq!(sym("cuCtxSynchronize", 2000, 2), Some("cuCtxSynchronize"));
        assert_eq!(sym("cuNoSuchThing", 12000, 0), None);
        assert_eq!(sym("cuMemAllocAsync", 11000, 0), None);
        assert_eq!(
            symbol_status(b"cuMemAllocAsync", 11000),
            VERSION_NOT_SUFFICIENT
        );
        assert_eq!(symbol_status(b"cuNoSuchThing", 11000), SYMBOL_NOT_FOUND);
        resolve(b"cuInit", 2000, 4).unwrap_err();
    }
}
