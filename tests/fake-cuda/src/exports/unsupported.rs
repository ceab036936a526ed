//! Entry points that exist so that loaders resolving them (cudarc, the CUDA runtime) find them,
//! but whose behaviour is not simulated: each returns `CUDA_ERROR_NOT_SUPPORTED`, never a silent
//! success. Every driver API function returns `CUresult`, and the C calling convention lets a
//! callee ignore its arguments, so one argument-less body serves every signature.

use crate::types::{CUresult, err};

macro_rules! unsupported {
    ($($name:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: not simulated, returns `CUDA_ERROR_NOT_SUPPORTED`.")]
        #[unsafe(no_mangle)]
        #[allow(non_snake_case)]
        pub extern "C" fn $name() -> CUresult {
            err::NOT_SUPPORTED
        }
    )*};
}

/// The body of every unsupported entry point (used by `cuGetProcAddress` for variants that have no
/// export of their own).
pub extern "C" fn not_supported_stub() -> CUresult {
    err::NOT_SUPPORTED
}

unsupported!(
    cuOccupancyMaxActiveBlocksPerMultiprocessor,
    cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags,
    cuOccupancyMaxPotentialBlockSize,
    cuOccupancyMaxPotentialBlockSizeWithFlags,
    cuOccupancyAvailableDynamicSMemPerBlock,
    cuOccupancyMaxPotentialClusterSize,
    cuOccupancyMaxActiveClusters,
    cuImportExternalMemory,
    cuExternalMemoryGetMappedBuffer,
    cuDestroyExternalMemory,
    cuMemsetD2D8_v2,
    cuMemsetD2D8_v2_ptds,
    cuMemsetD2D16_v2,
    cuMemsetD2D16_v2_ptds,
    cuMemsetD2D32_v2,
    cuMemsetD2D32_v2_ptds,
    cuMemsetD2D8Async,
    cuMemsetD2D8Async_ptsz,
    cuMemsetD2D16Async,
    cuMemsetD2D16Async_ptsz,
    cuMemsetD2D32Async,
    cuMemsetD2D32Async_ptsz,
    cuMemcpy2D_v2,
    cuMemcpy2D_v2_ptds,
    cuMemcpy2DUnaligned_v2,
    cuMemcpy2DUnaligned_v2_ptds,
    cuMemcpy2DAsync_v2,
    cuMemcpy2DAsync_v2_ptsz,
    cuMemcpy3D_v2,
    cuMemcpy3D_v2_ptds,
    cuMemcpy3DAsync_v2,
    cuMemcpy3DAsync_v2_ptsz,
    cuMemcpyHtoA_v2,
    cuMemcpyAtoH_v2,
    cuMemcpyDtoA_v2,
    cuMemcpyAtoD_v2,
    cuMemHostRegister_v2,
    cuMemHostUnregister,
    cuIpcGetMemHandle,
    cuIpcOpenMemHandle_v2,
    cuIpcCloseMemHandle,
    cuIpcGetEventHandle,
    cuIpcOpenEventHandle,
    cuMemExportToShareableHandle,
    cuMemImportFromShareableHandle,
    cuCtxEnablePeerAccess,
    cuCtxDisablePeerAccess,
    cuLibraryGetModule,
    cuFuncGetModule,
    cuDeviceGetLuid,
    cuGetExportTable,
);
