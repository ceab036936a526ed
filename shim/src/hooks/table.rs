//! The entry-point table: every driver and NVML entry point the shim knows, declared once.
//!
//! Per library, entries are grouped by [`Class`](super::Class). An entry is the base name (as
//! `cuGetProcAddress` is asked for it), optionally with its ABI variants: each variant is the
//! exported symbol with its C type (from `cuda.h` / `nvml.h`), and, when the shim hooks it,
//! `=> handler` (called with the real function and the caller's arguments; `missing = CODE`
//! overrides what the wrapper returns when the library lacks the symbol). A variant without a
//! handler is a real function the shim calls itself. See "How to add a hook" in
//! docs/ARCHITECTURE.md.

#![allow(non_snake_case)]

use super::{
    context, graph, init, launch, meminfo, memory, modules, nvml_procs, procaddress, sync,
};
use crate::cuda_types::*;
use crate::real::{LIBCUDA, LIBNVML};
use gpumux_common::nvml_abi::{
    ProcessDetailListV1, ProcessInfoV1, ProcessInfoV2, ProcessUtilizationSample,
    ProcessesUtilizationInfoV1, VgpuProcessUtilizationSample, VgpuProcessesUtilizationInfoV1,
};
use modules::c_int_option;
use std::ffi::{c_char, c_int, c_uint, c_void};

super::entry_points! {
    cuda(LIBCUDA, panic = CUDA_ERROR_UNKNOWN, missing = CUDA_ERROR_NOT_INITIALIZED) {
        Init: [
            cuInit {
                cuInit(flags: c_uint) -> CUresult => init::cu_init;
            },
        ],
        Resolve: [
            cuGetProcAddress {
                cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int,
                    flags: u64) -> CUresult
                    => procaddress::get_proc_address, missing = CUDA_ERROR_NOT_FOUND;
                cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int,
                    flags: u64, status: *mut c_int) -> CUresult
                    => procaddress::get_proc_address_v2, missing = CUDA_ERROR_NOT_FOUND;
            },
        ],
        Alloc: [
            cuMemAlloc {
                cuMemAlloc(dptr: *mut u32, bytesize: c_uint) -> CUresult => memory::mem_alloc_v1;
                cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult
                    => memory::mem_alloc;
            },
            cuMemAllocPitch {
                cuMemAllocPitch(dptr: *mut u32, pitch: *mut c_uint, width: c_uint, height: c_uint,
                    elem: c_uint) -> CUresult => memory::mem_alloc_pitch_v1;
                cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize,
                    height: usize, elem: c_uint) -> CUresult => memory::mem_alloc_pitch;
            },
            cuMemAllocManaged {
                cuMemAllocManaged(dptr: *mut CUdeviceptr, bytesize: usize, flags: c_uint)
                    -> CUresult => memory::mem_alloc_managed;
            },
            cuMemAllocAsync {
                cuMemAllocAsync(dptr: *mut CUdeviceptr, bytesize: usize, stream: CUstream)
                    -> CUresult => memory::mem_alloc_async::<false>;
                cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize, stream: CUstream)
                    -> CUresult => memory::mem_alloc_async::<true>;
            },
            cuMemAllocFromPoolAsync {
                cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytesize: usize,
                    pool: CUmemoryPool, stream: CUstream) -> CUresult
                    => memory::mem_alloc_from_pool::<false>;
                cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize,
                    pool: CUmemoryPool, stream: CUstream) -> CUresult
                    => memory::mem_alloc_from_pool::<true>;
            },
            cuMemCreate {
                cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize,
                    prop: *const MemAllocationProp, flags: u64) -> CUresult => memory::mem_create;
            },
            cuArrayCreate {
                cuArrayCreate(array: *mut CUarray, desc: *const ArrayDescriptorV1) -> CUresult
                    => memory::array_create;
                cuArrayCreate_v2(array: *mut CUarray, desc: *const ArrayDescriptor) -> CUresult
                    => memory::array_create;
            },
            cuArray3DCreate {
                cuArray3DCreate(array: *mut CUarray, desc: *const Array3dDescriptorV1) -> CUresult
                    => memory::array_create;
                cuArray3DCreate_v2(array: *mut CUarray, desc: *const Array3dDescriptor)
                    -> CUresult => memory::array_create;
            },
            cuMipmappedArrayCreate {
                cuMipmappedArrayCreate(array: *mut CUmipmappedArray, desc: *const Array3dDescriptor,
                    levels: c_uint) -> CUresult => memory::mipmapped_array_create;
            },
        ],
        Free: [
            cuMemFree {
                cuMemFree(dptr: u32) -> CUresult => memory::mem_free_v1;
                cuMemFree_v2(dptr: CUdeviceptr) -> CUresult => memory::mem_free;
            },
            cuMemFreeAsync {
                cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult
                    => memory::mem_free_async;
                cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) -> CUresult
                    => memory::mem_free_async;
            },
            cuMemRelease {
                cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult
                    => memory::mem_release;
            },
            cuArrayDestroy {
                cuArrayDestroy(array: CUarray) -> CUresult => memory::array_destroy;
            },
            cuMipmappedArrayDestroy {
                cuMipmappedArrayDestroy(array: CUmipmappedArray) -> CUresult
                    => memory::mipmapped_array_destroy;
            },
        ],
        MemReport: [
            cuMemGetInfo {
                cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) -> CUresult
                    => meminfo::mem_get_info;
                cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult
                    => meminfo::mem_get_info;
            },
            cuDeviceTotalMem {
                cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) -> CUresult
                    => meminfo::device_total_mem;
                cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult
                    => meminfo::device_total_mem;
            },
        ],
        Launch: [
            cuLaunchKernel {
                cuLaunchKernel(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint,
                    by: c_uint, bz: c_uint, shared: c_uint, stream: CUstream,
                    params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult
                    => launch::launch_kernel::<false>;
                cuLaunchKernel_ptsz(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint,
                    by: c_uint, bz: c_uint, shared: c_uint, stream: CUstream,
                    params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult
                    => launch::launch_kernel::<true>;
            },
            cuLaunchCooperativeKernel {
                cuLaunchCooperativeKernel(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint,
                    bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: CUstream,
                    params: *mut *mut c_void) -> CUresult
                    => launch::launch_cooperative_kernel::<false>;
                cuLaunchCooperativeKernel_ptsz(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint,
                    bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: CUstream,
                    params: *mut *mut c_void) -> CUresult
                    => launch::launch_cooperative_kernel::<true>;
            },
            cuLaunchKernelEx {
                cuLaunchKernelEx(config: *const c_void, f: CUfunction, params: *mut *mut c_void,
                    extra: *mut *mut c_void) -> CUresult
                    => launch::launch_kernel_ex::<false>;
                cuLaunchKernelEx_ptsz(config: *const c_void, f: CUfunction,
                    params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult
                    => launch::launch_kernel_ex::<true>;
            },
            cuGraphLaunch {
                cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult
                    => launch::graph_launch::<false>;
                cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult
                    => launch::graph_launch::<true>;
            },
            cuLaunchCooperativeKernelMultiDevice {
                cuLaunchCooperativeKernelMultiDevice(params: *mut c_void, num_devices: c_uint,
                    flags: c_uint) -> CUresult => launch::launch_multi_device;
            },
            // The pre-4.0 launch API (parameters set with cuParamSet*, cuFuncSetBlockShape).
            cuLaunch {
                cuLaunch(f: CUfunction) -> CUresult => launch::launch_legacy;
            },
            cuLaunchGrid {
                cuLaunchGrid(f: CUfunction, grid_width: c_int, grid_height: c_int) -> CUresult
                    => launch::launch_grid;
            },
            cuLaunchGridAsync {
                cuLaunchGridAsync(f: CUfunction, grid_width: c_int, grid_height: c_int,
                    stream: CUstream) -> CUresult => launch::launch_grid_async;
            },
        ],
        Sync: [
            cuCtxSynchronize {
                cuCtxSynchronize() -> CUresult => sync::ctx_synchronize;
            },
            cuStreamSynchronize {
                cuStreamSynchronize(stream: CUstream) -> CUresult
                    => sync::stream_synchronize::<false>;
                cuStreamSynchronize_ptsz(stream: CUstream) -> CUresult
                    => sync::stream_synchronize::<true>;
            },
            cuEventSynchronize {
                cuEventSynchronize(event: CUevent) -> CUresult => sync::event_synchronize;
            },
        ],
        Context: [
            cuCtxCreate {
                cuCtxCreate(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult
                    => context::ctx_create;
                cuCtxCreate_v2(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult
                    => context::ctx_create;
                cuCtxCreate_v3(pctx: *mut CUcontext, params: *mut c_void, num_params: c_int,
                    flags: c_uint, dev: CUdevice) -> CUresult => context::ctx_create_v3;
                cuCtxCreate_v4(pctx: *mut CUcontext, params: *mut c_void, flags: c_uint,
                    dev: CUdevice) -> CUresult => context::ctx_create_v4;
            },
            cuCtxDestroy {
                cuCtxDestroy(ctx: CUcontext) -> CUresult => context::ctx_destroy;
                cuCtxDestroy_v2(ctx: CUcontext) -> CUresult => context::ctx_destroy;
            },
            cuDevicePrimaryCtxReset {
                cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult => context::primary_reset;
                cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult => context::primary_reset;
            },
            cuDevicePrimaryCtxRelease {
                cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult => context::primary_release;
                cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult
                    => context::primary_release;
            },
            cuDevicePrimaryCtxRetain {
                cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult
                    => context::primary_retain;
            },
            cuGreenCtxCreate {
                cuGreenCtxCreate(pctx: *mut CUgreenCtx, desc: *mut c_void, dev: CUdevice,
                    flags: c_uint) -> CUresult => context::green_ctx_create;
            },
            cuGreenCtxDestroy {
                cuGreenCtxDestroy(ctx: CUgreenCtx) -> CUresult => context::green_ctx_destroy;
            },
        ],
        Footprint: [
            cuModuleLoad {
                cuModuleLoad(module: *mut *mut c_void, fname: *const c_char) -> CUresult
                    => modules::module_load_file;
            },
            cuModuleLoadData {
                cuModuleLoadData(module: *mut *mut c_void, image: *const c_void) -> CUresult
                    => modules::module_load_image;
            },
            cuModuleLoadDataEx {
                cuModuleLoadDataEx(module: *mut *mut c_void, image: *const c_void,
                    num_options: c_uint, options: *mut c_int_option, values: *mut *mut c_void)
                    -> CUresult => modules::module_load_ex;
            },
            cuModuleLoadFatBinary {
                cuModuleLoadFatBinary(module: *mut *mut c_void, fat_cubin: *const c_void)
                    -> CUresult => modules::module_load_image;
            },
            cuModuleUnload {
                cuModuleUnload(module: *mut c_void) -> CUresult => modules::module_unload;
            },
            cuLibraryLoadData {
                cuLibraryLoadData(library: *mut *mut c_void, image: *const c_void,
                    jit_options: *mut c_int_option, jit_values: *mut *mut c_void, num_jit: c_uint,
                    library_options: *mut c_int_option, library_values: *mut *mut c_void,
                    num_library: c_uint) -> CUresult => modules::library_load_data;
            },
            cuLibraryLoadFromFile {
                cuLibraryLoadFromFile(library: *mut *mut c_void, fname: *const c_char,
                    jit_options: *mut c_int_option, jit_values: *mut *mut c_void, num_jit: c_uint,
                    library_options: *mut c_int_option, library_values: *mut *mut c_void,
                    num_library: c_uint) -> CUresult => modules::library_load_file;
            },
            cuLibraryUnload {
                cuLibraryUnload(library: *mut c_void) -> CUresult => modules::library_unload;
            },
        ],
        Import: [
            // Another process's memory (CUDA IPC, exported pools): charged to its allocator.
            cuIpcOpenMemHandle, cuIpcCloseMemHandle, cuMemPoolImportFromShareableHandle,
            cuMemPoolImportPointer,
            // Another API's memory (external memory, OpenGL, EGL, VDPAU interop).
            cuImportExternalMemory, cuExternalMemoryGetMappedBuffer,
            cuExternalMemoryGetMappedMipmappedArray, cuDestroyExternalMemory,
            cuGLRegisterBufferObject, cuGLUnregisterBufferObject, cuGLMapBufferObject,
            cuGLMapBufferObjectAsync, cuGLUnmapBufferObject, cuGLUnmapBufferObjectAsync,
            cuGLSetBufferObjectMapFlags, cuGraphicsGLRegisterBuffer, cuGraphicsGLRegisterImage,
            cuGraphicsEGLRegisterImage, cuGraphicsVDPAURegisterOutputSurface,
            cuGraphicsVDPAURegisterVideoSurface, cuGraphicsUnregisterResource,
            cuGraphicsMapResources, cuGraphicsUnmapResources, cuGraphicsResourceGetMappedPointer,
            cuGraphicsResourceGetMappedMipmappedArray, cuGraphicsSubResourceGetMappedArray,
            cuGraphicsResourceGetMappedEglFrame, cuGraphicsResourceSetMapFlags,
            cuEGLStreamConsumerConnect, cuEGLStreamConsumerConnectWithFlags,
            cuEGLStreamConsumerDisconnect, cuEGLStreamConsumerAcquireFrame,
            cuEGLStreamConsumerReleaseFrame, cuEGLStreamProducerConnect,
            cuEGLStreamProducerDisconnect, cuEGLStreamProducerPresentFrame,
            cuEGLStreamProducerReturnFrame,
            // Multicast objects: the memory bound into one comes from cuMemCreate (charged
            // there); the object itself is an address range, not memory.
            cuMulticastCreate, cuMulticastBindMem, cuMulticastBindAddr,
            // The same handle again: a reference more to what cuMemCreate charged, if it was
            // this process's (its last cuMemRelease gives the bytes back, not the first).
            cuMemImportFromShareableHandle {
                cuMemImportFromShareableHandle(handle: *mut CUmemGenericAllocationHandle,
                    os_handle: *mut c_void, handle_type: c_uint) -> CUresult
                    => memory::mem_import_shareable;
            },
            cuMemRetainAllocationHandle {
                cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle,
                    addr: *mut c_void) -> CUresult => memory::mem_retain_handle;
            },
        ],
        GraphMemory: [
            cuGraphInstantiate {
                cuGraphInstantiate(out: *mut CUgraphExec, graph: CUgraph,
                    err_node: *mut CUgraphNode, log: *mut c_char, len: usize) -> CUresult
                    => graph::instantiate_v1;
                cuGraphInstantiate_v2(out: *mut CUgraphExec, graph: CUgraph,
                    err_node: *mut CUgraphNode, log: *mut c_char, len: usize) -> CUresult
                    => graph::instantiate_v1;
            },
            cuGraphInstantiateWithFlags {
                cuGraphInstantiateWithFlags(out: *mut CUgraphExec, graph: CUgraph, flags: u64)
                    -> CUresult => graph::instantiate_with_flags;
            },
            cuGraphInstantiateWithParams {
                cuGraphInstantiateWithParams(out: *mut CUgraphExec, graph: CUgraph,
                    params: *mut GraphInstantiateParams) -> CUresult
                    => graph::instantiate_with_params;
                cuGraphInstantiateWithParams_ptsz(out: *mut CUgraphExec, graph: CUgraph,
                    params: *mut GraphInstantiateParams) -> CUresult
                    => graph::instantiate_with_params;
            },
            cuGraphUpload {
                cuGraphUpload(exec: CUgraphExec, stream: CUstream) -> CUresult => graph::upload;
                cuGraphUpload_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult
                    => graph::upload;
            },
            cuGraphExecDestroy {
                cuGraphExecDestroy(exec: CUgraphExec) -> CUresult => graph::exec_destroy;
            },
            cuDeviceGraphMemTrim {
                cuDeviceGraphMemTrim(dev: CUdevice) -> CUresult => graph::mem_trim;
            },
        ],
        Capture: [
            cuStreamBeginCapture {
                cuStreamBeginCapture(stream: CUstream) -> CUresult
                    => graph::begin_capture_v1::<false>;
                cuStreamBeginCapture_ptsz(stream: CUstream) -> CUresult
                    => graph::begin_capture_v1::<true>;
                cuStreamBeginCapture_v2(stream: CUstream, mode: c_uint) -> CUresult
                    => graph::begin_capture::<false>;
                cuStreamBeginCapture_v2_ptsz(stream: CUstream, mode: c_uint) -> CUresult
                    => graph::begin_capture::<true>;
            },
            cuStreamBeginCaptureToGraph {
                cuStreamBeginCaptureToGraph(stream: CUstream, graph: CUgraph,
                    deps: *const CUgraphNode, edge_data: *const c_void, n: usize, mode: c_uint)
                    -> CUresult => graph::begin_capture_to_graph::<false>;
                cuStreamBeginCaptureToGraph_ptsz(stream: CUstream, graph: CUgraph,
                    deps: *const CUgraphNode, edge_data: *const c_void, n: usize, mode: c_uint)
                    -> CUresult => graph::begin_capture_to_graph::<true>;
            },
            cuStreamEndCapture {
                cuStreamEndCapture(stream: CUstream, graph: *mut CUgraph) -> CUresult
                    => graph::end_capture::<false>;
                cuStreamEndCapture_ptsz(stream: CUstream, graph: *mut CUgraph) -> CUresult
                    => graph::end_capture::<true>;
            },
        ],
        PassThrough: [
            // Graph memory nodes reserve addresses only (the driver commits memory at upload or
            // launch; GraphMemory charges it then); the high-water marks reset nothing.
            cuDeviceSetGraphMemAttribute, cuGraphAddMemAllocNode, cuGraphAddMemFreeNode,
            cuGraphAddNode, cuGraphDestroy, cuGraphExecNodeSetParams, cuGraphNodeSetParams,
            // Called by the graph memory and capture hooks.
            cuDeviceGetGraphMemAttribute {
                cuDeviceGetGraphMemAttribute(dev: CUdevice, attr: c_uint, value: *mut c_void)
                    -> CUresult;
            },
            cuGraphGetNodes {
                cuGraphGetNodes(graph: CUgraph, nodes: *mut CUgraphNode, n: *mut usize)
                    -> CUresult;
            },
            cuGraphNodeGetType {
                cuGraphNodeGetType(node: CUgraphNode, kind: *mut c_uint) -> CUresult;
            },
            cuGraphMemAllocNodeGetParams {
                cuGraphMemAllocNodeGetParams(node: CUgraphNode, params: *mut MemAllocNodeParams)
                    -> CUresult;
            },
            cuGraphChildGraphNodeGetGraph {
                cuGraphChildGraphNodeGetGraph(node: CUgraphNode, graph: *mut CUgraph) -> CUresult;
            },
            cuStreamIsCapturing {
                cuStreamIsCapturing(stream: CUstream, status: *mut c_int) -> CUresult;
                cuStreamIsCapturing_ptsz(stream: CUstream, status: *mut c_int) -> CUresult;
            },
            cuArray3DGetDescriptor, cuArrayGetDescriptor, cuArrayGetMemoryRequirements,
            cuArrayGetPlane, cuArrayGetSparseProperties, cuCoredumpGetAttribute,
            cuCoredumpGetAttributeGlobal, cuCoredumpSetAttribute, cuCoredumpSetAttributeGlobal,
            cuCtxAttach, cuCtxDetach, cuCtxDisablePeerAccess, cuCtxEnablePeerAccess,
            cuCtxGetApiVersion, cuCtxGetCacheConfig, cuCtxGetDevResource, cuCtxGetExecAffinity,
            cuCtxGetFlags, cuCtxGetId, cuCtxGetLimit, cuCtxGetSharedMemConfig,
            cuCtxGetStreamPriorityRange, cuCtxResetPersistingL2Cache, cuCtxSetCacheConfig,
            cuCtxSetCurrent, cuCtxSetFlags, cuCtxSetLimit, cuCtxSetSharedMemConfig,
            cuDestroyExternalSemaphore, cuDevResourceGenerateDesc, cuDevSmResourceSplitByCount,
            cuDeviceCanAccessPeer, cuDeviceComputeCapability, cuDeviceGetAttribute,
            cuDeviceGetByPCIBusId, cuDeviceGetDefaultMemPool, cuDeviceGetDevResource,
            cuDeviceGetExecAffinitySupport, cuDeviceGetLuid, cuDeviceGetMemPool, cuDeviceGetName,
            cuDeviceGetNvSciSyncAttributes, cuDeviceGetP2PAttribute, cuDeviceGetPCIBusId,
            cuDeviceGetProperties, cuDeviceGetTexture1DLinearMaxWidth, cuDevicePrimaryCtxSetFlags,
            cuDeviceRegisterAsyncNotification, cuDeviceSetMemPool,
            cuDeviceUnregisterAsyncNotification, cuDriverGetVersion, cuEGLApiInit,
            cuEventDestroy, cuEventRecordWithFlags,
            cuFlushGPUDirectRDMAWrites, cuFuncGetAttribute, cuFuncGetModule, cuFuncGetName,
            cuFuncGetParamInfo, cuFuncIsLoaded, cuFuncLoad, cuFuncSetAttribute, cuFuncSetBlockShape,
            cuFuncSetCacheConfig, cuFuncSetSharedMemConfig, cuFuncSetSharedSize, cuGLCtxCreate,
            cuGLGetDevices, cuGLInit, cuGetErrorName, cuGetErrorString, cuGetExportTable,
            cuGraphAddBatchMemOpNode, cuGraphAddChildGraphNode, cuGraphAddDependencies,
            cuGraphAddEmptyNode, cuGraphAddEventRecordNode, cuGraphAddEventWaitNode,
            cuGraphAddExternalSemaphoresSignalNode, cuGraphAddExternalSemaphoresWaitNode,
            cuGraphAddHostNode, cuGraphAddKernelNode, cuGraphAddMemcpyNode, cuGraphAddMemsetNode,
            cuGraphBatchMemOpNodeGetParams, cuGraphBatchMemOpNodeSetParams,
            cuGraphClone, cuGraphConditionalHandleCreate,
            cuGraphCreate, cuGraphDebugDotPrint, cuGraphDestroyNode, cuGraphEventRecordNodeGetEvent,
            cuGraphEventRecordNodeSetEvent, cuGraphEventWaitNodeGetEvent,
            cuGraphEventWaitNodeSetEvent, cuGraphExecBatchMemOpNodeSetParams,
            cuGraphExecChildGraphNodeSetParams, cuGraphExecEventRecordNodeSetEvent,
            cuGraphExecEventWaitNodeSetEvent, cuGraphExecExternalSemaphoresSignalNodeSetParams,
            cuGraphExecExternalSemaphoresWaitNodeSetParams, cuGraphExecGetFlags,
            cuGraphExecHostNodeSetParams, cuGraphExecKernelNodeSetParams,
            cuGraphExecMemcpyNodeSetParams, cuGraphExecMemsetNodeSetParams, cuGraphExecUpdate,
            cuGraphExternalSemaphoresSignalNodeGetParams,
            cuGraphExternalSemaphoresSignalNodeSetParams,
            cuGraphExternalSemaphoresWaitNodeGetParams, cuGraphExternalSemaphoresWaitNodeSetParams,
            cuGraphGetEdges, cuGraphGetRootNodes, cuGraphHostNodeGetParams,
            cuGraphHostNodeSetParams, cuGraphKernelNodeCopyAttributes,
            cuGraphKernelNodeGetAttribute, cuGraphKernelNodeGetParams,
            cuGraphKernelNodeSetAttribute, cuGraphKernelNodeSetParams,
            cuGraphMemFreeNodeGetParams, cuGraphMemcpyNodeGetParams, cuGraphMemcpyNodeSetParams,
            cuGraphMemsetNodeGetParams, cuGraphMemsetNodeSetParams, cuGraphNodeFindInClone,
            cuGraphNodeGetDependencies, cuGraphNodeGetDependentNodes, cuGraphNodeGetEnabled,
            cuGraphNodeSetEnabled, cuGraphReleaseUserObject,
            cuGraphRemoveDependencies, cuGraphRetainUserObject, cuGreenCtxGetDevResource,
            cuGreenCtxRecordEvent, cuGreenCtxWaitEvent, cuImportExternalSemaphore,
            cuIpcGetEventHandle, cuIpcGetMemHandle, cuIpcOpenEventHandle, cuKernelGetAttribute,
            cuKernelGetFunction, cuKernelGetName, cuKernelGetParamInfo, cuKernelSetAttribute,
            cuKernelSetCacheConfig, cuLaunchHostFunc, cuLibraryEnumerateKernels, cuLibraryGetGlobal,
            cuLibraryGetKernel, cuLibraryGetKernelCount, cuLibraryGetManaged, cuLibraryGetModule,
            cuLibraryGetUnifiedFunction, cuLinkAddData, cuLinkAddFile, cuLinkComplete, cuLinkCreate,
            cuLinkDestroy, cuMemAddressFree, cuMemAddressReserve, cuMemAdvise, cuMemAllocHost,
            cuMemExportToShareableHandle, cuMemFreeHost, cuMemGetAccess, cuMemGetAddressRange,
            cuMemGetAllocationGranularity, cuMemGetAllocationPropertiesFromHandle,
            cuMemGetAttribute, cuMemGetHandleForAddressRange, cuMemHostAlloc,
            cuMemHostGetDevicePointer, cuMemHostGetFlags, cuMemHostRegister, cuMemHostUnregister,
            cuMemMap, cuMemMapArrayAsync, cuMemPoolCreate, cuMemPoolDestroy, cuMemPoolExportPointer,
            cuMemPoolExportToShareableHandle, cuMemPoolGetAccess, cuMemPoolGetAttribute,
            cuMemPoolSetAccess, cuMemPoolSetAttribute, cuMemPoolTrimTo, cuMemPrefetchAsync,
            cuMemRangeGetAttribute, cuMemRangeGetAttributes, cuMemSetAccess, cuMemUnmap, cuMemcpy,
            cuMemcpy2D, cuMemcpy2DAsync, cuMemcpy2DUnaligned, cuMemcpy3D, cuMemcpy3DAsync,
            cuMemcpy3DPeer, cuMemcpy3DPeerAsync, cuMemcpyAsync, cuMemcpyAtoA, cuMemcpyAtoD,
            cuMemcpyAtoH, cuMemcpyAtoHAsync, cuMemcpyDtoA, cuMemcpyDtoD, cuMemcpyDtoDAsync,
            cuMemcpyDtoH, cuMemcpyDtoHAsync, cuMemcpyHtoA, cuMemcpyHtoAAsync, cuMemcpyHtoD,
            cuMemcpyHtoDAsync, cuMemcpyPeer, cuMemcpyPeerAsync, cuMemsetD16, cuMemsetD16Async,
            cuMemsetD2D16, cuMemsetD2D16Async, cuMemsetD2D32, cuMemsetD2D32Async, cuMemsetD2D8,
            cuMemsetD2D8Async, cuMemsetD32, cuMemsetD32Async, cuMemsetD8, cuMemsetD8Async,
            cuMipmappedArrayGetLevel, cuMipmappedArrayGetMemoryRequirements,
            cuMipmappedArrayGetSparseProperties, cuModuleEnumerateFunctions, cuModuleGetFunction,
            cuModuleGetFunctionCount, cuModuleGetGlobal, cuModuleGetLoadingMode, cuModuleGetSurfRef,
            cuModuleGetTexRef, cuMulticastAddDevice, cuMulticastGetGranularity, cuMulticastUnbind,
            cuOccupancyAvailableDynamicSMemPerBlock, cuOccupancyMaxActiveBlocksPerMultiprocessor,
            cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, cuOccupancyMaxActiveClusters,
            cuOccupancyMaxPotentialBlockSize, cuOccupancyMaxPotentialBlockSizeWithFlags,
            cuOccupancyMaxPotentialClusterSize, cuParamSetSize, cuParamSetTexRef, cuParamSetf,
            cuParamSeti, cuParamSetv, cuPointerGetAttribute, cuPointerGetAttributes,
            cuPointerSetAttribute, cuProfilerInitialize, cuProfilerStart, cuProfilerStop,
            cuSignalExternalSemaphoresAsync, cuStreamAddCallback, cuStreamAttachMemAsync,
            cuStreamBatchMemOp, cuStreamCopyAttributes, cuStreamCreate, cuStreamCreateWithPriority,
            cuStreamDestroy, cuStreamGetAttribute, cuStreamGetCaptureInfo, cuStreamGetCtx,
            cuStreamGetFlags, cuStreamGetGreenCtx, cuStreamGetId, cuStreamGetPriority,
            cuStreamQuery, cuStreamSetAttribute,
            cuStreamUpdateCaptureDependencies, cuStreamWaitEvent, cuStreamWaitValue32,
            cuStreamWaitValue64, cuStreamWriteValue32, cuStreamWriteValue64, cuSurfObjectCreate,
            cuSurfObjectDestroy, cuSurfObjectGetResourceDesc, cuSurfRefGetArray, cuSurfRefSetArray,
            cuTensorMapEncodeIm2col, cuTensorMapEncodeTiled, cuTensorMapReplaceAddress,
            cuTexObjectCreate, cuTexObjectDestroy, cuTexObjectGetResourceDesc,
            cuTexObjectGetResourceViewDesc, cuTexObjectGetTextureDesc, cuTexRefCreate,
            cuTexRefDestroy, cuTexRefGetAddress, cuTexRefGetAddressMode, cuTexRefGetArray,
            cuTexRefGetBorderColor, cuTexRefGetFilterMode, cuTexRefGetFlags, cuTexRefGetFormat,
            cuTexRefGetMaxAnisotropy, cuTexRefGetMipmapFilterMode, cuTexRefGetMipmapLevelBias,
            cuTexRefGetMipmapLevelClamp, cuTexRefGetMipmappedArray, cuTexRefSetAddress,
            cuTexRefSetAddress2D, cuTexRefSetAddressMode, cuTexRefSetArray, cuTexRefSetBorderColor,
            cuTexRefSetFilterMode, cuTexRefSetFlags, cuTexRefSetFormat, cuTexRefSetMaxAnisotropy,
            cuTexRefSetMipmapFilterMode, cuTexRefSetMipmapLevelBias, cuTexRefSetMipmapLevelClamp,
            cuTexRefSetMipmappedArray, cuThreadExchangeStreamCaptureMode, cuUserObjectCreate,
            cuUserObjectRelease, cuUserObjectRetain, cuVDPAUCtxCreate, cuVDPAUGetDevice,
            cuWaitExternalSemaphoresAsync, cudbgApiAttach, cudbgApiDetach, cudbgApiInit,
            cudbgGetAPI, cudbgGetAPIVersion, cudbgMain, cudbgReportDriverApiError,
            cudbgReportDriverInternalError,
            // Real functions the shim calls itself.
            cuCtxFromGreenCtx {
                cuCtxFromGreenCtx(pctx: *mut CUcontext, green: CUgreenCtx) -> CUresult;
            },
            cuCtxGetCurrent {
                cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult;
            },
            cuCtxGetDevice {
                cuCtxGetDevice(device: *mut CUdevice) -> CUresult;
            },
            cuCtxPopCurrent {
                cuCtxPopCurrent_v2(pctx: *mut CUcontext) -> CUresult;
            },
            cuCtxPushCurrent {
                cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult;
            },
            cuDeviceGet {
                cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult;
            },
            cuDeviceGetCount {
                cuDeviceGetCount(count: *mut c_int) -> CUresult;
            },
            cuDeviceGetUuid {
                cuDeviceGetUuid(uuid: *mut u8, dev: CUdevice) -> CUresult;
                cuDeviceGetUuid_v2(uuid: *mut u8, dev: CUdevice) -> CUresult;
            },
            cuDevicePrimaryCtxGetState {
                cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int)
                    -> CUresult;
            },
            // Busy-period events (`crate::busy`).
            cuEventCreate {
                cuEventCreate(event: *mut CUevent, flags: c_uint) -> CUresult;
            },
            cuEventElapsedTime {
                cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) -> CUresult;
            },
            cuEventQuery {
                cuEventQuery(event: CUevent) -> CUresult;
            },
            cuEventRecord {
                cuEventRecord(event: CUevent, stream: CUstream) -> CUresult;
            },
        ],
    }
    nvml(LIBNVML, panic = NVML_ERROR_UNKNOWN, missing = NVML_ERROR_DRIVER_NOT_LOADED) {
        Init: [
            nvmlInit {
                nvmlInit() -> nvmlReturn_t => meminfo::nvml_init;
                nvmlInit_v2() -> nvmlReturn_t => meminfo::nvml_init;
            },
            nvmlInitWithFlags {
                nvmlInitWithFlags(flags: c_uint) -> nvmlReturn_t => meminfo::nvml_init_with_flags;
            },
        ],
        MemReport: [
            nvmlDeviceGetMemoryInfo {
                nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut NvmlMemory)
                    -> nvmlReturn_t => meminfo::nvml_memory_info;
                nvmlDeviceGetMemoryInfo_v2(device: nvmlDevice_t, memory: *mut NvmlMemoryV2)
                    -> nvmlReturn_t => meminfo::nvml_memory_info;
            },
        ],
        ProcessList: [
            nvmlDeviceGetComputeRunningProcesses {
                nvmlDeviceGetComputeRunningProcesses(device: nvmlDevice_t, count: *mut c_uint,
                    infos: *mut ProcessInfoV1) -> nvmlReturn_t => nvml_procs::running_processes;
                nvmlDeviceGetComputeRunningProcesses_v2(device: nvmlDevice_t, count: *mut c_uint,
                    infos: *mut ProcessInfoV2) -> nvmlReturn_t => nvml_procs::running_processes;
                nvmlDeviceGetComputeRunningProcesses_v3(device: nvmlDevice_t, count: *mut c_uint,
                    infos: *mut ProcessInfoV2) -> nvmlReturn_t => nvml_procs::running_processes;
            },
            nvmlDeviceGetGraphicsRunningProcesses {
                nvmlDeviceGetGraphicsRunningProcesses(device: nvmlDevice_t, count: *mut c_uint,
                    infos: *mut ProcessInfoV1) -> nvmlReturn_t => nvml_procs::running_processes;
                nvmlDeviceGetGraphicsRunningProcesses_v2(device: nvmlDevice_t, count: *mut c_uint,
                    infos: *mut ProcessInfoV2) -> nvmlReturn_t => nvml_procs::running_processes;
                nvmlDeviceGetGraphicsRunningProcesses_v3(device: nvmlDevice_t, count: *mut c_uint,
                    infos: *mut ProcessInfoV2) -> nvmlReturn_t => nvml_procs::running_processes;
            },
            nvmlDeviceGetMPSComputeRunningProcesses {
                nvmlDeviceGetMPSComputeRunningProcesses(device: nvmlDevice_t,
                    count: *mut c_uint, infos: *mut ProcessInfoV1) -> nvmlReturn_t
                    => nvml_procs::running_processes;
                nvmlDeviceGetMPSComputeRunningProcesses_v2(device: nvmlDevice_t,
                    count: *mut c_uint, infos: *mut ProcessInfoV2) -> nvmlReturn_t
                    => nvml_procs::running_processes;
                nvmlDeviceGetMPSComputeRunningProcesses_v3(device: nvmlDevice_t,
                    count: *mut c_uint, infos: *mut ProcessInfoV2) -> nvmlReturn_t
                    => nvml_procs::running_processes;
            },
            nvmlDeviceGetRunningProcessDetailList {
                nvmlDeviceGetRunningProcessDetailList(device: nvmlDevice_t,
                    list: *mut ProcessDetailListV1) -> nvmlReturn_t
                    => nvml_procs::versioned_list;
            },
            nvmlDeviceGetProcessUtilization {
                nvmlDeviceGetProcessUtilization(device: nvmlDevice_t,
                    samples: *mut ProcessUtilizationSample, count: *mut c_uint, last_seen: u64)
                    -> nvmlReturn_t => nvml_procs::process_utilization;
            },
            nvmlDeviceGetProcessesUtilizationInfo {
                nvmlDeviceGetProcessesUtilizationInfo(device: nvmlDevice_t,
                    info: *mut ProcessesUtilizationInfoV1) -> nvmlReturn_t
                    => nvml_procs::versioned_list;
            },
            nvmlDeviceGetAccountingPids {
                nvmlDeviceGetAccountingPids(device: nvmlDevice_t, count: *mut c_uint,
                    pids: *mut c_uint) -> nvmlReturn_t => nvml_procs::running_processes;
            },
            nvmlDeviceGetAccountingStats {
                nvmlDeviceGetAccountingStats(device: nvmlDevice_t, pid: c_uint,
                    stats: *mut c_void) -> nvmlReturn_t => nvml_procs::accounting_stats;
            },
            // vGPU host: processes of the guests.
            nvmlDeviceGetVgpuProcessUtilization {
                nvmlDeviceGetVgpuProcessUtilization(device: nvmlDevice_t, last_seen: u64,
                    count: *mut c_uint, samples: *mut VgpuProcessUtilizationSample)
                    -> nvmlReturn_t => nvml_procs::vgpu_process_utilization;
            },
            nvmlDeviceGetVgpuProcessesUtilizationInfo {
                nvmlDeviceGetVgpuProcessesUtilizationInfo(device: nvmlDevice_t,
                    info: *mut VgpuProcessesUtilizationInfoV1) -> nvmlReturn_t
                    => nvml_procs::versioned_list;
            },
            nvmlVgpuInstanceGetAccountingPids {
                nvmlVgpuInstanceGetAccountingPids(instance: c_uint, count: *mut c_uint,
                    pids: *mut c_uint) -> nvmlReturn_t => nvml_procs::running_processes;
            },
            nvmlVgpuInstanceGetAccountingStats {
                nvmlVgpuInstanceGetAccountingStats(instance: c_uint, pid: c_uint,
                    stats: *mut c_void) -> nvmlReturn_t => nvml_procs::accounting_stats;
            },
        ],
        PassThrough: [
            nvmlDeviceGetUUID {
                nvmlDeviceGetUUID(device: nvmlDevice_t, uuid: *mut c_char, length: c_uint)
                    -> nvmlReturn_t;
            },
            // Neither lists processes nor reports memory (nvmlSystemGetProcessName reads the
            // caller's own /proc; clearing accounting data needs root).
            nvmlComputeInstanceDestroy, nvmlComputeInstanceGetInfo, nvmlDeviceClearAccountingPids,
            nvmlDeviceClearCpuAffinity, nvmlDeviceClearEccErrorCounts, nvmlDeviceClearFieldValues,
            nvmlDeviceCreateGpuInstance, nvmlDeviceCreateGpuInstanceWithPlacement,
            nvmlDeviceDiscoverGpus, nvmlDeviceFreezeNvLinkUtilizationCounter,
            nvmlDeviceGetAPIRestriction, nvmlDeviceGetAccountingBufferSize,
            nvmlDeviceGetAccountingMode, nvmlDeviceGetActiveVgpus,
            nvmlDeviceGetAdaptiveClockInfoStatus, nvmlDeviceGetApplicationsClock,
            nvmlDeviceGetArchitecture, nvmlDeviceGetAttributes,
            nvmlDeviceGetAutoBoostedClocksEnabled, nvmlDeviceGetBAR1MemoryInfo,
            nvmlDeviceGetBoardId, nvmlDeviceGetBoardPartNumber, nvmlDeviceGetBrand,
            nvmlDeviceGetBridgeChipInfo, nvmlDeviceGetBusType, nvmlDeviceGetC2cModeInfoV,
            nvmlDeviceGetClkMonStatus, nvmlDeviceGetClock, nvmlDeviceGetClockInfo,
            nvmlDeviceGetComputeInstanceId, nvmlDeviceGetComputeMode,
            nvmlDeviceGetConfComputeGpuAttestationReport, nvmlDeviceGetConfComputeGpuCertificate,
            nvmlDeviceGetConfComputeMemSizeInfo, nvmlDeviceGetConfComputeProtectedMemoryUsage,
            nvmlDeviceGetCount, nvmlDeviceGetCpuAffinity, nvmlDeviceGetCpuAffinityWithinScope,
            nvmlDeviceGetCreatableVgpus, nvmlDeviceGetCudaComputeCapability,
            nvmlDeviceGetCurrPcieLinkGeneration, nvmlDeviceGetCurrPcieLinkWidth,
            nvmlDeviceGetCurrentClocksEventReasons, nvmlDeviceGetCurrentClocksThrottleReasons,
            nvmlDeviceGetDecoderUtilization, nvmlDeviceGetDefaultApplicationsClock,
            nvmlDeviceGetDefaultEccMode, nvmlDeviceGetDetailedEccErrors,
            nvmlDeviceGetDeviceHandleFromMigDeviceHandle, nvmlDeviceGetDisplayActive,
            nvmlDeviceGetDisplayMode, nvmlDeviceGetDriverModel, nvmlDeviceGetDynamicPstatesInfo,
            nvmlDeviceGetEccMode, nvmlDeviceGetEncoderCapacity, nvmlDeviceGetEncoderSessions,
            nvmlDeviceGetEncoderStats, nvmlDeviceGetEncoderUtilization,
            nvmlDeviceGetEnforcedPowerLimit, nvmlDeviceGetFBCSessions, nvmlDeviceGetFBCStats,
            nvmlDeviceGetFanControlPolicy, nvmlDeviceGetFanSpeed, nvmlDeviceGetFieldValues,
            nvmlDeviceGetGpcClkMinMaxVfOffset, nvmlDeviceGetGpcClkVfOffset,
            nvmlDeviceGetGpuFabricInfo, nvmlDeviceGetGpuFabricInfoV, nvmlDeviceGetGpuInstanceById,
            nvmlDeviceGetGpuInstanceId, nvmlDeviceGetGpuInstancePossiblePlacements,
            nvmlDeviceGetGpuInstanceProfileInfo, nvmlDeviceGetGpuInstanceProfileInfoV,
            nvmlDeviceGetGpuInstanceRemainingCapacity, nvmlDeviceGetGpuInstances,
            nvmlDeviceGetGpuMaxPcieLinkGeneration, nvmlDeviceGetGpuOperationMode,
            nvmlDeviceGetGridLicensableFeatures, nvmlDeviceGetGspFirmwareMode,
            nvmlDeviceGetGspFirmwareVersion, nvmlDeviceGetHandleByIndex,
            nvmlDeviceGetHandleByPciBusId, nvmlDeviceGetHandleBySerial, nvmlDeviceGetHandleByUUID,
            nvmlDeviceGetHostVgpuMode, nvmlDeviceGetIndex,
            nvmlDeviceGetInforomConfigurationChecksum, nvmlDeviceGetInforomImageVersion,
            nvmlDeviceGetInforomVersion, nvmlDeviceGetIrqNum, nvmlDeviceGetJpgUtilization,
            nvmlDeviceGetLastBBXFlushTime, nvmlDeviceGetMaxClockInfo,
            nvmlDeviceGetMaxCustomerBoostClock, nvmlDeviceGetMaxMigDeviceCount,
            nvmlDeviceGetMaxPcieLinkGeneration, nvmlDeviceGetMaxPcieLinkWidth,
            nvmlDeviceGetMemClkMinMaxVfOffset, nvmlDeviceGetMemClkVfOffset,
            nvmlDeviceGetMemoryAffinity, nvmlDeviceGetMemoryBusWidth,
            nvmlDeviceGetMemoryErrorCounter, nvmlDeviceGetMigDeviceHandleByIndex,
            nvmlDeviceGetMigMode, nvmlDeviceGetMinMaxClockOfPState, nvmlDeviceGetMinMaxFanSpeed,
            nvmlDeviceGetMinorNumber, nvmlDeviceGetModuleId, nvmlDeviceGetMultiGpuBoard,
            nvmlDeviceGetName, nvmlDeviceGetNumFans, nvmlDeviceGetNumGpuCores,
            nvmlDeviceGetNumaNodeId, nvmlDeviceGetNvLinkCapability, nvmlDeviceGetNvLinkErrorCounter,
            nvmlDeviceGetNvLinkRemoteDeviceType, nvmlDeviceGetNvLinkRemotePciInfo,
            nvmlDeviceGetNvLinkState, nvmlDeviceGetNvLinkUtilizationControl,
            nvmlDeviceGetNvLinkUtilizationCounter, nvmlDeviceGetNvLinkVersion,
            nvmlDeviceGetOfaUtilization, nvmlDeviceGetP2PStatus, nvmlDeviceGetPciInfo,
            nvmlDeviceGetPciInfoExt, nvmlDeviceGetPcieLinkMaxSpeed, nvmlDeviceGetPcieReplayCounter,
            nvmlDeviceGetPcieSpeed, nvmlDeviceGetPcieThroughput, nvmlDeviceGetPerformanceState,
            nvmlDeviceGetPersistenceMode, nvmlDeviceGetPgpuMetadataString,
            nvmlDeviceGetPowerManagementDefaultLimit, nvmlDeviceGetPowerManagementLimit,
            nvmlDeviceGetPowerManagementLimitConstraints, nvmlDeviceGetPowerManagementMode,
            nvmlDeviceGetPowerSource, nvmlDeviceGetPowerState, nvmlDeviceGetPowerUsage,
            nvmlDeviceGetRemappedRows, nvmlDeviceGetRetiredPages,
            nvmlDeviceGetRetiredPagesPendingStatus, nvmlDeviceGetRowRemapperHistogram,
            nvmlDeviceGetSamples, nvmlDeviceGetSerial, nvmlDeviceGetSramEccErrorStatus,
            nvmlDeviceGetSupportedClocksEventReasons, nvmlDeviceGetSupportedClocksThrottleReasons,
            nvmlDeviceGetSupportedEventTypes, nvmlDeviceGetSupportedGraphicsClocks,
            nvmlDeviceGetSupportedMemoryClocks, nvmlDeviceGetSupportedPerformanceStates,
            nvmlDeviceGetSupportedVgpus, nvmlDeviceGetTargetFanSpeed, nvmlDeviceGetTemperature,
            nvmlDeviceGetTemperatureThreshold, nvmlDeviceGetThermalSettings,
            nvmlDeviceGetTopologyCommonAncestor, nvmlDeviceGetTopologyNearestGpus,
            nvmlDeviceGetTotalEccErrors, nvmlDeviceGetTotalEnergyConsumption,
            nvmlDeviceGetUtilizationRates, nvmlDeviceGetVbiosVersion, nvmlDeviceGetVgpuCapabilities,
            nvmlDeviceGetVgpuHeterogeneousMode, nvmlDeviceGetVgpuInstancesUtilizationInfo,
            nvmlDeviceGetVgpuMetadata, nvmlDeviceGetVgpuSchedulerCapabilities,
            nvmlDeviceGetVgpuSchedulerLog, nvmlDeviceGetVgpuSchedulerState,
            nvmlDeviceGetVgpuTypeCreatablePlacements, nvmlDeviceGetVgpuTypeSupportedPlacements,
            nvmlDeviceGetVgpuUtilization, nvmlDeviceGetViolationStatus,
            nvmlDeviceGetVirtualizationMode, nvmlDeviceIsMigDeviceHandle,
            nvmlDeviceModifyDrainState, nvmlDeviceOnSameBoard, nvmlDeviceQueryDrainState,
            nvmlDeviceRegisterEvents, nvmlDeviceRemoveGpu, nvmlDeviceResetApplicationsClocks,
            nvmlDeviceResetGpuLockedClocks, nvmlDeviceResetMemoryLockedClocks,
            nvmlDeviceResetNvLinkErrorCounters, nvmlDeviceResetNvLinkUtilizationCounter,
            nvmlDeviceSetAPIRestriction, nvmlDeviceSetAccountingMode,
            nvmlDeviceSetApplicationsClocks, nvmlDeviceSetAutoBoostedClocksEnabled,
            nvmlDeviceSetComputeMode, nvmlDeviceSetConfComputeUnprotectedMemSize,
            nvmlDeviceSetCpuAffinity, nvmlDeviceSetDefaultAutoBoostedClocksEnabled,
            nvmlDeviceSetDefaultFanSpeed, nvmlDeviceSetDriverModel, nvmlDeviceSetEccMode,
            nvmlDeviceSetFanControlPolicy, nvmlDeviceSetFanSpeed, nvmlDeviceSetGpcClkVfOffset,
            nvmlDeviceSetGpuLockedClocks, nvmlDeviceSetGpuOperationMode,
            nvmlDeviceSetMemClkVfOffset, nvmlDeviceSetMemoryLockedClocks, nvmlDeviceSetMigMode,
            nvmlDeviceSetNvLinkDeviceLowPowerThreshold, nvmlDeviceSetNvLinkUtilizationControl,
            nvmlDeviceSetPersistenceMode, nvmlDeviceSetPowerManagementLimit,
            nvmlDeviceSetTemperatureThreshold, nvmlDeviceSetVgpuCapabilities,
            nvmlDeviceSetVgpuHeterogeneousMode, nvmlDeviceSetVgpuSchedulerState,
            nvmlDeviceSetVirtualizationMode, nvmlDeviceValidateInforom, nvmlErrorString,
            nvmlEventSetCreate, nvmlEventSetFree, nvmlEventSetWait, nvmlGetBlacklistDeviceCount,
            nvmlGetBlacklistDeviceInfoByIndex, nvmlGetExcludedDeviceCount,
            nvmlGetExcludedDeviceInfoByIndex, nvmlGetVgpuCompatibility,
            nvmlGetVgpuDriverCapabilities, nvmlGetVgpuVersion, nvmlGpmMetricsGet,
            nvmlGpmMigSampleGet, nvmlGpmQueryDeviceSupport, nvmlGpmQueryIfStreamingEnabled,
            nvmlGpmSampleAlloc, nvmlGpmSampleFree, nvmlGpmSampleGet, nvmlGpmSetStreamingEnabled,
            nvmlGpuInstanceCreateComputeInstance, nvmlGpuInstanceCreateComputeInstanceWithPlacement,
            nvmlGpuInstanceDestroy, nvmlGpuInstanceGetComputeInstanceById,
            nvmlGpuInstanceGetComputeInstancePossiblePlacements,
            nvmlGpuInstanceGetComputeInstanceProfileInfo,
            nvmlGpuInstanceGetComputeInstanceProfileInfoV,
            nvmlGpuInstanceGetComputeInstanceRemainingCapacity, nvmlGpuInstanceGetComputeInstances,
            nvmlGpuInstanceGetInfo, nvmlInternalGetExportTable, nvmlSetVgpuVersion, nvmlShutdown,
            nvmlSystemGetConfComputeCapabilities, nvmlSystemGetConfComputeGpusReadyState,
            nvmlSystemGetConfComputeKeyRotationThresholdInfo, nvmlSystemGetConfComputeSettings,
            nvmlSystemGetConfComputeState, nvmlSystemGetCudaDriverVersion,
            nvmlSystemGetDriverVersion, nvmlSystemGetHicVersion, nvmlSystemGetNVMLVersion,
            nvmlSystemGetNvlinkBwMode, nvmlSystemGetProcessName, nvmlSystemGetTopologyGpuSet,
            nvmlSystemSetConfComputeGpusReadyState,
            nvmlSystemSetConfComputeKeyRotationThresholdInfo, nvmlSystemSetNvlinkBwMode,
            nvmlUnitGetCount, nvmlUnitGetDevices, nvmlUnitGetFanSpeedInfo, nvmlUnitGetHandleByIndex,
            nvmlUnitGetLedState, nvmlUnitGetPsuInfo, nvmlUnitGetTemperature, nvmlUnitGetUnitInfo,
            nvmlUnitSetLedState, nvmlVgpuInstanceClearAccountingPids,
            nvmlVgpuInstanceGetAccountingMode, nvmlVgpuInstanceGetEccMode,
            nvmlVgpuInstanceGetEncoderCapacity, nvmlVgpuInstanceGetEncoderSessions,
            nvmlVgpuInstanceGetEncoderStats, nvmlVgpuInstanceGetFBCSessions,
            nvmlVgpuInstanceGetFBCStats, nvmlVgpuInstanceGetFbUsage,
            nvmlVgpuInstanceGetFrameRateLimit, nvmlVgpuInstanceGetGpuInstanceId,
            nvmlVgpuInstanceGetGpuPciId, nvmlVgpuInstanceGetLicenseInfo,
            nvmlVgpuInstanceGetLicenseStatus, nvmlVgpuInstanceGetMdevUUID,
            nvmlVgpuInstanceGetMetadata, nvmlVgpuInstanceGetPlacementId, nvmlVgpuInstanceGetType,
            nvmlVgpuInstanceGetUUID, nvmlVgpuInstanceGetVmDriverVersion, nvmlVgpuInstanceGetVmID,
            nvmlVgpuInstanceSetEncoderCapacity, nvmlVgpuTypeGetCapabilities, nvmlVgpuTypeGetClass,
            nvmlVgpuTypeGetDeviceID, nvmlVgpuTypeGetFbReservation, nvmlVgpuTypeGetFrameRateLimit,
            nvmlVgpuTypeGetFramebufferSize, nvmlVgpuTypeGetGpuInstanceProfileId,
            nvmlVgpuTypeGetGspHeapSize, nvmlVgpuTypeGetLicense, nvmlVgpuTypeGetMaxInstances,
            nvmlVgpuTypeGetMaxInstancesPerVm, nvmlVgpuTypeGetName, nvmlVgpuTypeGetNumDisplayHeads,
            nvmlVgpuTypeGetResolution,
        ],
    }
}
