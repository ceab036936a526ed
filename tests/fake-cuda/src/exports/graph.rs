//! Graph entry points: graphs and nodes, instantiation, launch and upload (with `_ptsz`
//! variants), executable graph updates, graph memory, and stream capture. The semantics live in
//! [`crate::graph`]; this file reads and writes the C structures.

use crate::context;
use crate::driver::{Process, process};
use crate::graph::{self, KernelNode, Memcpy3d, MemsetNode, NodeKind};
use crate::stream::{self, Event, HostFn};
use crate::types::*;
use gpumux_common::cuda_abi::{
    CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE, GraphInstantiateParams,
    MemAllocNodeParams, MemLocation, MemPoolProps,
};
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Arc;

/// `CUDA_KERNEL_NODE_PARAMS` (v1; v2 adds `kern` and `ctx`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KernelNodeParams {
    func: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shmem: c_uint,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
}

/// `CUDA_KERNEL_NODE_PARAMS_v2`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KernelNodeParamsV2 {
    v1: KernelNodeParams,
    kern: Handle,
    ctx: Handle,
}

/// `CUDA_MEMSET_NODE_PARAMS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemsetNodeParams {
    dst: CUdeviceptr,
    pitch: usize,
    value: c_uint,
    elem: c_uint,
    width: usize,
    height: usize,
}

/// `CUDA_HOST_NODE_PARAMS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HostNodeParams {
    f: Option<HostFn>,
    data: *mut c_void,
}

/// `CUgraphExecUpdateResultInfo`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UpdateResultInfo {
    result: c_uint,
    error_node: Handle,
    error_from_node: Handle,
}

/// Reads a dependency array.
///
/// # Safety
/// `deps` is null or holds `n` node handles.
unsafe fn deps_in(deps: *const Handle, n: usize) -> Res<Vec<u64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if deps.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: per this function's contract.
    Ok(unsafe { std::slice::from_raw_parts(deps, n) }
        .iter()
        .map(|h| hval(*h))
        .collect())
}

/// Writes a list the CUDA way: with a null array only the count; otherwise up to `*count`
/// entries (the rest of the array nulled) and the number written.
///
/// # Safety
/// `out` is null or holds `*count` handles; `count` is valid for reads and writes.
unsafe fn list_out(items: &[u64], out: *mut Handle, count: *mut usize) -> Res<()> {
    need(count)?;
    if out.is_null() {
        // SAFETY: checked non-null output pointer.
        return unsafe { write_out(count, items.len()) };
    }
    // SAFETY: per this function's contract.
    let cap = unsafe { read_in(count)? };
    for i in 0..cap {
        // SAFETY: `out` holds `cap` entries.
        unsafe { *out.add(i) = items.get(i).map_or(std::ptr::null_mut(), |v| hptr(*v)) };
    }
    // SAFETY: as above.
    unsafe { write_out(count, items.len().min(cap)) }
}

/// Zeroed `CUgraphEdgeData` (8 bytes each) for `n` edges, when asked for.
///
/// # Safety
/// `data` is null or holds `n` entries.
unsafe fn default_edges(data: *mut u64, n: usize) {
    if !data.is_null() {
        for i in 0..n {
            // SAFETY: per this function's contract.
            unsafe { *data.add(i) = 0 };
        }
    }
}

/// Checks every edge's data is the default (other edge types are not simulated).
///
/// # Safety
/// `data` is null or holds `n` entries.
unsafe fn check_default_edges(data: *const u64, n: usize) -> Res<()> {
    if data.is_null() {
        return Ok(());
    }
    // SAFETY: per this function's contract.
    if unsafe { std::slice::from_raw_parts(data, n) }
        .iter()
        .any(|e| *e != 0)
    {
        return Err(err::NOT_SUPPORTED);
    }
    Ok(())
}

fn kernel_from(p: &Process, k: &KernelNodeParams, kern: Handle) -> Res<KernelNode> {
    let f = if k.func.is_null() { kern } else { k.func };
    let func = p.modules.function(hval(f))?;
    // SAFETY: kernelParams/extra follow the cuLaunchKernel conventions (the API contract).
    unsafe { KernelNode::copy(p, func, k.grid, k.block, k.shmem, k.params, k.extra) }
}

fn kernel_v1(p: &Process, params: *const KernelNodeParams) -> Res<KernelNode> {
    // SAFETY: input pointer from the caller (null checked).
    let k = unsafe { read_in(params)? };
    kernel_from(p, &k, std::ptr::null_mut())
}

fn kernel_v2(p: &Process, params: *const KernelNodeParamsV2) -> Res<KernelNode> {
    // SAFETY: input pointer from the caller (null checked).
    let k = unsafe { read_in(params)? };
    kernel_from(p, &k.v1, k.kern)
}

fn kernel_out(k: &KernelNode) -> KernelNodeParams {
    KernelNodeParams {
        func: hptr(k.func.handle),
        grid: k.grid,
        block: k.block,
        shmem: k.shmem,
        params: k.kernel_params(),
        extra: k.extra(),
    }
}

fn memset_from(p: &Process, params: *const MemsetNodeParams) -> Res<NodeKind> {
    // SAFETY: input pointer from the caller (null checked).
    let m = unsafe { read_in(params)? };
    let node = MemsetNode {
        dst: m.dst,
        pitch: m.pitch,
        value: m.value,
        elem: m.elem as usize,
        width: m.width,
        height: m.height,
    };
    node.check(p)?;
    Ok(NodeKind::Memset(node))
}

fn memcpy_from(p: &Process, params: *const Memcpy3d) -> Res<NodeKind> {
    // SAFETY: input pointer from the caller (null checked).
    let c = unsafe { read_in(params)? };
    c.check(p)?;
    Ok(NodeKind::Memcpy(c))
}

fn host_from(params: *const HostNodeParams) -> Res<NodeKind> {
    // SAFETY: input pointer from the caller (null checked).
    let h = unsafe { read_in(params)? };
    Ok(NodeKind::Host {
        f: h.f.ok_or(err::INVALID_VALUE)?,
        data: h.data as usize,
    })
}

fn event_of(p: &Process, ev: Handle) -> Res<Arc<Event>> {
    p.events
        .lock()
        .get(&hval(ev))
        .cloned()
        .ok_or(err::INVALID_HANDLE)
}

fn add_node(
    out: *mut Handle,
    graph: Handle,
    deps: *const Handle,
    n: usize,
    kind: impl FnOnce(&Process) -> Res<NodeKind>,
) -> Res<()> {
    need(out)?;
    let p = process()?;
    // SAFETY: dependency array from the caller.
    let deps = unsafe { deps_in(deps, n)? };
    let kind = kind(p)?;
    let h = graph::add(p, hval(graph), &deps, kind)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(out, hptr(h)) }
}

fn get_node<T>(node: Handle, out: *mut T, f: impl FnOnce(&NodeKind) -> Option<T>) -> Res<()> {
    need(out)?;
    let p = process()?;
    let v = graph::with_node(p, hval(node), f)?.ok_or(err::INVALID_VALUE)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(out, v) }
}

fn set_node(node: Handle, kind: impl FnOnce(&Process) -> Res<NodeKind>) -> Res<()> {
    let p = process()?;
    let kind = kind(p)?;
    graph::set_node_kind(p, hval(node), kind)
}

fn instantiate(out: *mut Handle, graph: Handle, flags: u64) -> Res<()> {
    need(out)?;
    let (p, c) = context::require()?;
    let h = graph::instantiate(p, &c, hval(graph), flags)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(out, hptr(h)) }
}

fn instantiate_with_params(
    out: *mut Handle,
    graph: Handle,
    prm: *mut GraphInstantiateParams,
    ptds: bool,
) -> Res<()> {
    need(out)?;
    // SAFETY: input/output pointer from the caller (null checked).
    let mut ip = unsafe { read_in(prm)? };
    let (p, c) = context::require()?;
    let flags = ip.flags;
    let upload = flags & graph::FLAG_UPLOAD != 0;
    let stream = if upload {
        Some(stream::resolve(p, ip.upload_stream, ptds)?)
    } else {
        None
    };
    let r = graph::instantiate(p, &c, hval(graph), flags & !graph::FLAG_UPLOAD);
    ip.err_node_out = std::ptr::null_mut();
    ip.result_out = match r {
        Ok(_) => 0,
        Err(err::INVALID_VALUE) => 2,
        Err(err::NOT_SUPPORTED) => 3,
        Err(_) => 1,
    };
    // SAFETY: as above.
    unsafe { prm.write_unaligned(ip) };
    let h = r?;
    if let Some((ctx, s)) = stream
        && let Err(e) = graph::upload(p, h, &ctx, &s)
    {
        graph::exec_destroy(p, h).ok();
        return Err(e);
    }
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(out, hptr(h)) }
}

fn instantiate_v1(
    out: *mut Handle,
    graph: Handle,
    err_node: *mut Handle,
    log: *mut c_char,
    len: usize,
) -> Res<()> {
    if !err_node.is_null() {
        // SAFETY: optional output pointer from the caller (non-null).
        unsafe { *err_node = std::ptr::null_mut() };
    }
    if !log.is_null() && len > 0 {
        // SAFETY: the log buffer holds `len` bytes.
        unsafe { *log = 0 };
    }
    instantiate(out, graph, 0)
}

fn launch(exec: Handle, h: Handle, ptds: bool) -> Res<()> {
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    graph::launch(p, hval(exec), &ctx, &s)
}

fn upload(exec: Handle, h: Handle, ptds: bool) -> Res<()> {
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    graph::upload(p, hval(exec), &ctx, &s)
}

fn begin_capture(h: Handle, mode: c_uint, ptds: bool, into: Option<(Handle, Vec<u64>)>) -> Res<()> {
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    graph::begin(p, &ctx, &s, mode, into.map(|(g, d)| (hval(g), d)))
}

fn end_capture(h: Handle, out: *mut Handle, ptds: bool) -> Res<()> {
    need(out)?;
    let p = process()?;
    let (_, s) = stream::resolve(p, h, ptds)?;
    match graph::end(p, &s) {
        Ok(g) => {
            // SAFETY: output pointer from the caller (null checked).
            unsafe { write_out(out, hptr(g)) }
        }
        Err(e) => {
            // SAFETY: as above.
            unsafe { write_out(out, std::ptr::null_mut())? };
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn capture_info(
    h: Handle,
    status: *mut c_uint,
    id: *mut u64,
    graph_out: *mut Handle,
    deps_out: *mut *const Handle,
    edges_out: *mut *const u64,
    n_out: *mut usize,
    ptds: bool,
) -> Res<()> {
    need(status)?;
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    let (st, cid, g, deps) = graph::status(p, &ctx, &s)?;
    // SAFETY: output pointers from the caller (each null checked or optional).
    unsafe {
        write_out(status, st)?;
        if !id.is_null() {
            write_out(id, cid)?;
        }
        if !graph_out.is_null() {
            write_out(graph_out, hptr(g))?;
        }
        let (dp, ep) = graph::info_buffers(p, &s, &deps);
        if !deps_out.is_null() {
            write_out(deps_out, dp as *const Handle)?;
        }
        if !edges_out.is_null() {
            write_out(edges_out, ep as *const u64)?;
        }
        if !n_out.is_null() {
            write_out(n_out, deps.len())?;
        }
    }
    Ok(())
}

fn update_capture_deps(
    h: Handle,
    deps: *const Handle,
    n: usize,
    flags: c_uint,
    ptds: bool,
) -> Res<()> {
    let p = process()?;
    let (_, s) = stream::resolve(p, h, ptds)?;
    // SAFETY: dependency array from the caller.
    let deps = unsafe { deps_in(deps, n)? };
    graph::update_dependencies(p, &s, &deps, flags)
}

fn edges_in(from: *const Handle, to: *const Handle, n: usize) -> Res<Vec<(u64, u64)>> {
    // SAFETY: both arrays hold `n` handles (the API contract).
    let (f, t) = unsafe { (deps_in(from, n)?, deps_in(to, n)?) };
    Ok(f.into_iter().zip(t).collect())
}

fn get_edges(
    graph: Handle,
    from: *mut Handle,
    to: *mut Handle,
    data: *mut u64,
    n: *mut usize,
) -> Res<()> {
    need(n)?;
    let p = process()?;
    let e = graph::edges(p, hval(graph))?;
    let froms: Vec<u64> = e.iter().map(|x| x.0).collect();
    let tos: Vec<u64> = e.iter().map(|x| x.1).collect();
    if from.is_null() != to.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: output arrays and count from the caller.
    unsafe {
        let cap = if from.is_null() { 0 } else { read_in(n)? };
        list_out(&froms, from, n)?;
        if !to.is_null() {
            let mut c = cap;
            list_out(&tos, to, &mut c)?;
        }
        default_edges(data, cap.min(e.len()));
    }
    Ok(())
}

fn node_list(list: Vec<u64>, out: *mut Handle, data: *mut u64, n: *mut usize) -> Res<()> {
    // SAFETY: output array and count from the caller.
    unsafe {
        let cap = if out.is_null() { 0 } else { read_in(n)? };
        list_out(&list, out, n)?;
        default_edges(data, cap.min(list.len()));
    }
    Ok(())
}

fn exec_update(exec: Handle, graph: Handle) -> (Res<()>, c_uint, Handle) {
    let p = match process() {
        Ok(p) => p,
        Err(e) => return (Err(e), graph::update::NOT_SUPPORTED, std::ptr::null_mut()),
    };
    match graph::exec_update(p, hval(exec), hval(graph)) {
        Ok(()) => (Ok(()), graph::update::SUCCESS, std::ptr::null_mut()),
        Err((r, node)) => (Err(err::GRAPH_EXEC_UPDATE_FAILURE), r, hptr(node)),
    }
}

fn mem_device(p: &Process, dev: CUdevice) -> Res<u32> {
    p.device(dev)
}

cuda_fn! {
    fn cuGraphCreate(out: *mut Handle, flags: c_uint) {
        need(out)?;
        if flags != 0 {
            return Err(err::INVALID_VALUE);
        }
        let p = process()?;
        let h = graph::create(p);
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(out, hptr(h)) }
    }
    fn cuGraphDestroy(g: Handle) {
        let p = process()?;
        graph::destroy(p, hval(g))
    }

    fn cuGraphAddKernelNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, params: *const KernelNodeParams) {
        add_node(out, g, deps, n, |p| kernel_v1(p, params).map(NodeKind::Kernel))
    }
    fn cuGraphAddKernelNode_v2(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, params: *const KernelNodeParamsV2) {
        add_node(out, g, deps, n, |p| kernel_v2(p, params).map(NodeKind::Kernel))
    }
    fn cuGraphKernelNodeGetParams(node: Handle, out: *mut KernelNodeParams) {
        get_node(node, out, |k| match k {
            NodeKind::Kernel(k) => Some(kernel_out(k)),
            _ => None,
        })
    }
    fn cuGraphKernelNodeGetParams_v2(node: Handle, out: *mut KernelNodeParamsV2) {
        let p = process()?;
        let ctx = context::current_handle(p);
        get_node(node, out, |k| match k {
            NodeKind::Kernel(k) => Some(KernelNodeParamsV2 {
                v1: kernel_out(k),
                kern: std::ptr::null_mut(),
                ctx: hptr(if k.func.ctx != 0 { k.func.ctx } else { ctx }),
            }),
            _ => None,
        })
    }
    fn cuGraphKernelNodeSetParams(node: Handle, params: *const KernelNodeParams) {
        set_node(node, |p| kernel_v1(p, params).map(NodeKind::Kernel))
    }
    fn cuGraphKernelNodeSetParams_v2(node: Handle, params: *const KernelNodeParamsV2) {
        set_node(node, |p| kernel_v2(p, params).map(NodeKind::Kernel))
    }

    fn cuGraphAddMemsetNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, params: *const MemsetNodeParams, _ctx: Handle) {
        add_node(out, g, deps, n, |p| memset_from(p, params))
    }
    fn cuGraphMemsetNodeGetParams(node: Handle, out: *mut MemsetNodeParams) {
        get_node(node, out, |k| match k {
            NodeKind::Memset(m) => Some(MemsetNodeParams {
                dst: m.dst,
                pitch: m.pitch,
                value: m.value,
                elem: m.elem as c_uint,
                width: m.width,
                height: m.height,
            }),
            _ => None,
        })
    }
    fn cuGraphMemsetNodeSetParams(node: Handle, params: *const MemsetNodeParams) {
        set_node(node, |p| memset_from(p, params))
    }

    fn cuGraphAddMemcpyNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, params: *const Memcpy3d, _ctx: Handle) {
        add_node(out, g, deps, n, |p| memcpy_from(p, params))
    }
    fn cuGraphMemcpyNodeGetParams(node: Handle, out: *mut Memcpy3d) {
        get_node(node, out, |k| match k {
            NodeKind::Memcpy(c) => Some(*c),
            _ => None,
        })
    }
    fn cuGraphMemcpyNodeSetParams(node: Handle, params: *const Memcpy3d) {
        set_node(node, |p| memcpy_from(p, params))
    }

    fn cuGraphAddHostNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, params: *const HostNodeParams) {
        add_node(out, g, deps, n, |_| host_from(params))
    }
    fn cuGraphHostNodeGetParams(node: Handle, out: *mut HostNodeParams) {
        get_node(node, out, |k| match k {
            NodeKind::Host { f, data } => Some(HostNodeParams { f: Some(*f), data: *data as *mut c_void }),
            _ => None,
        })
    }
    fn cuGraphHostNodeSetParams(node: Handle, params: *const HostNodeParams) {
        set_node(node, |_| host_from(params))
    }

    fn cuGraphAddEmptyNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize) {
        add_node(out, g, deps, n, |_| Ok(NodeKind::Empty))
    }

    fn cuGraphAddEventRecordNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, ev: Handle) {
        add_node(out, g, deps, n, |p| event_of(p, ev).map(NodeKind::EventRecord))
    }
    fn cuGraphEventRecordNodeGetEvent(node: Handle, out: *mut Handle) {
        get_node(node, out, |k| match k {
            NodeKind::EventRecord(e) => Some(hptr(e.handle)),
            _ => None,
        })
    }
    fn cuGraphEventRecordNodeSetEvent(node: Handle, ev: Handle) {
        set_node(node, |p| event_of(p, ev).map(NodeKind::EventRecord))
    }
    fn cuGraphAddEventWaitNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, ev: Handle) {
        add_node(out, g, deps, n, |p| event_of(p, ev).map(NodeKind::EventWait))
    }
    fn cuGraphEventWaitNodeGetEvent(node: Handle, out: *mut Handle) {
        get_node(node, out, |k| match k {
            NodeKind::EventWait(e) => Some(hptr(e.handle)),
            _ => None,
        })
    }
    fn cuGraphEventWaitNodeSetEvent(node: Handle, ev: Handle) {
        set_node(node, |p| event_of(p, ev).map(NodeKind::EventWait))
    }

    fn cuGraphAddMemAllocNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, params: *mut MemAllocNodeParams) {
        need(out)?;
        // SAFETY: input/output pointer from the caller (null checked).
        let mut prm = unsafe { read_in(params)? };
        if prm.pool_props.alloc_type != CU_MEM_ALLOCATION_TYPE_PINNED
            || prm.pool_props.location.kind != CU_MEM_LOCATION_TYPE_DEVICE
            || prm.bytesize == 0
        {
            return Err(err::INVALID_VALUE);
        }
        if prm.pool_props.handle_types != 0 {
            // Exportable graph memory is not simulated.
            return Err(err::NOT_SUPPORTED);
        }
        let p = process()?;
        let device = p.device(prm.pool_props.location.id).map_err(|_| err::INVALID_VALUE)?;
        // SAFETY: dependency array from the caller.
        let deps = unsafe { deps_in(deps, n)? };
        let (node, va) = graph::add_alloc(p, hval(g), &deps, device, prm.bytesize as u64)?;
        prm.dptr = va;
        // SAFETY: as above; output pointer from the caller (null checked).
        unsafe {
            params.write_unaligned(prm);
            write_out(out, hptr(node))
        }
    }
    fn cuGraphMemAllocNodeGetParams(node: Handle, out: *mut MemAllocNodeParams) {
        need(out)?;
        let p = process()?;
        let NodeKind::MemAlloc(va) = graph::node_kind(p, hval(node))? else {
            return Err(err::INVALID_VALUE);
        };
        let (device, size) = graph::alloc_info(p, va).ok_or(err::INVALID_VALUE)?;
        let prm = MemAllocNodeParams {
            pool_props: MemPoolProps {
                alloc_type: CU_MEM_ALLOCATION_TYPE_PINNED,
                handle_types: 0,
                location: MemLocation {
                    kind: CU_MEM_LOCATION_TYPE_DEVICE,
                    id: device as c_int,
                },
                win32_security_attributes: std::ptr::null_mut(),
                max_size: 0,
                usage: 0,
                reserved: [0; 54],
            },
            access_descs: std::ptr::null(),
            access_desc_count: 0,
            bytesize: size as usize,
            dptr: va,
        };
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(out, prm) }
    }
    fn cuGraphAddMemFreeNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, dptr: CUdeviceptr) {
        add_node(out, g, deps, n, |_| Ok(NodeKind::MemFree(dptr)))
    }
    fn cuGraphMemFreeNodeGetParams(node: Handle, out: *mut CUdeviceptr) {
        get_node(node, out, |k| match k {
            NodeKind::MemFree(va) => Some(*va),
            _ => None,
        })
    }

    fn cuDeviceGraphMemTrim(dev: CUdevice) {
        let p = process()?;
        let d = mem_device(p, dev)?;
        graph::trim(p, d);
        Ok(())
    }
    fn cuDeviceGetGraphMemAttribute(dev: CUdevice, attr: c_uint, value: *mut u64) {
        need(value)?;
        let p = process()?;
        let d = mem_device(p, dev)?;
        let v = graph::mem_attribute(p, d, attr)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(value, v) }
    }
    fn cuDeviceSetGraphMemAttribute(dev: CUdevice, attr: c_uint, value: *const u64) {
        let p = process()?;
        let d = mem_device(p, dev)?;
        // SAFETY: input pointer from the caller (null checked).
        let v = unsafe { read_in(value)? };
        graph::reset_high(p, d, attr, v)
    }

    fn cuGraphGetNodes(g: Handle, out: *mut Handle, n: *mut usize) {
        need(n)?;
        let p = process()?;
        node_list(graph::nodes(p, hval(g))?, out, std::ptr::null_mut(), n)
    }
    fn cuGraphGetRootNodes(g: Handle, out: *mut Handle, n: *mut usize) {
        need(n)?;
        let p = process()?;
        node_list(graph::roots(p, hval(g))?, out, std::ptr::null_mut(), n)
    }
    fn cuGraphGetEdges(g: Handle, from: *mut Handle, to: *mut Handle, n: *mut usize) {
        get_edges(g, from, to, std::ptr::null_mut(), n)
    }
    fn cuGraphGetEdges_v2(g: Handle, from: *mut Handle, to: *mut Handle, data: *mut u64, n: *mut usize) {
        get_edges(g, from, to, data, n)
    }
    fn cuGraphNodeGetDependencies(node: Handle, out: *mut Handle, n: *mut usize) {
        need(n)?;
        let p = process()?;
        node_list(graph::dependencies(p, hval(node))?, out, std::ptr::null_mut(), n)
    }
    fn cuGraphNodeGetDependencies_v2(node: Handle, out: *mut Handle, data: *mut u64, n: *mut usize) {
        need(n)?;
        let p = process()?;
        node_list(graph::dependencies(p, hval(node))?, out, data, n)
    }
    fn cuGraphNodeGetDependentNodes(node: Handle, out: *mut Handle, n: *mut usize) {
        need(n)?;
        let p = process()?;
        node_list(graph::dependents(p, hval(node))?, out, std::ptr::null_mut(), n)
    }
    fn cuGraphNodeGetDependentNodes_v2(node: Handle, out: *mut Handle, data: *mut u64, n: *mut usize) {
        need(n)?;
        let p = process()?;
        node_list(graph::dependents(p, hval(node))?, out, data, n)
    }
    fn cuGraphAddDependencies(g: Handle, from: *const Handle, to: *const Handle, n: usize) {
        let p = process()?;
        graph::change_dependencies(p, hval(g), &edges_in(from, to, n)?, true)
    }
    fn cuGraphAddDependencies_v2(g: Handle, from: *const Handle, to: *const Handle, data: *const u64, n: usize) {
        // SAFETY: edge data array from the caller.
        unsafe { check_default_edges(data, n)? };
        let p = process()?;
        graph::change_dependencies(p, hval(g), &edges_in(from, to, n)?, true)
    }
    fn cuGraphRemoveDependencies(g: Handle, from: *const Handle, to: *const Handle, n: usize) {
        let p = process()?;
        graph::change_dependencies(p, hval(g), &edges_in(from, to, n)?, false)
    }
    fn cuGraphRemoveDependencies_v2(g: Handle, from: *const Handle, to: *const Handle, data: *const u64, n: usize) {
        // SAFETY: edge data array from the caller.
        unsafe { check_default_edges(data, n)? };
        let p = process()?;
        graph::change_dependencies(p, hval(g), &edges_in(from, to, n)?, false)
    }
    fn cuGraphNodeGetType(node: Handle, out: *mut c_uint) {
        need(out)?;
        let p = process()?;
        let t = graph::node_type(p, hval(node))?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(out, t) }
    }
    fn cuGraphDestroyNode(node: Handle) {
        let p = process()?;
        graph::destroy_node(p, hval(node))
    }

    fn cuGraphInstantiate(out: *mut Handle, g: Handle, err_node: *mut Handle, log: *mut c_char, len: usize) {
        instantiate_v1(out, g, err_node, log, len)
    }
    fn cuGraphInstantiate_v2(out: *mut Handle, g: Handle, err_node: *mut Handle, log: *mut c_char, len: usize) {
        instantiate_v1(out, g, err_node, log, len)
    }
    fn cuGraphInstantiateWithFlags(out: *mut Handle, g: Handle, flags: u64) {
        if flags & graph::FLAG_UPLOAD != 0 {
            // Upload at instantiation needs a stream: only cuGraphInstantiateWithParams has one.
            return Err(err::INVALID_VALUE);
        }
        instantiate(out, g, flags)
    }
    fn cuGraphInstantiateWithParams(out: *mut Handle, g: Handle, prm: *mut GraphInstantiateParams) {
        instantiate_with_params(out, g, prm, false)
    }
    fn cuGraphInstantiateWithParams_ptsz(out: *mut Handle, g: Handle, prm: *mut GraphInstantiateParams) {
        instantiate_with_params(out, g, prm, true)
    }
    fn cuGraphExecGetFlags(exec: Handle, out: *mut u64) {
        need(out)?;
        let p = process()?;
        let f = graph::exec_flags(p, hval(exec))?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(out, f) }
    }
    fn cuGraphLaunch(exec: Handle, h: Handle) {
        launch(exec, h, false)
    }
    fn cuGraphLaunch_ptsz(exec: Handle, h: Handle) {
        launch(exec, h, true)
    }
    fn cuGraphUpload(exec: Handle, h: Handle) {
        upload(exec, h, false)
    }
    fn cuGraphUpload_ptsz(exec: Handle, h: Handle) {
        upload(exec, h, true)
    }
    fn cuGraphExecDestroy(exec: Handle) {
        let p = process()?;
        graph::exec_destroy(p, hval(exec))
    }
    fn cuGraphExecKernelNodeSetParams(exec: Handle, node: Handle, params: *const KernelNodeParams) {
        let p = process()?;
        let k = kernel_v1(p, params)?;
        graph::exec_set_kernel(p, hval(exec), hval(node), k)
    }
    fn cuGraphExecKernelNodeSetParams_v2(exec: Handle, node: Handle, params: *const KernelNodeParamsV2) {
        let p = process()?;
        let k = kernel_v2(p, params)?;
        graph::exec_set_kernel(p, hval(exec), hval(node), k)
    }
    fn cuGraphExecUpdate(exec: Handle, g: Handle, err_node: *mut Handle, result: *mut c_uint) {
        need(err_node)?;
        need(result)?;
        let (r, code, node) = exec_update(exec, g);
        // SAFETY: output pointers from the caller (null checked).
        unsafe {
            write_out(err_node, node)?;
            write_out(result, code)?;
        }
        r
    }
    fn cuGraphExecUpdate_v2(exec: Handle, g: Handle, info: *mut UpdateResultInfo) {
        need(info)?;
        let (r, code, node) = exec_update(exec, g);
        // SAFETY: output pointer from the caller (null checked).
        unsafe {
            write_out(info, UpdateResultInfo { result: code, error_node: node, error_from_node: std::ptr::null_mut() })?;
        }
        r
    }

    fn cuStreamBeginCapture(h: Handle) {
        begin_capture(h, graph::MODE_GLOBAL, false, None)
    }
    fn cuStreamBeginCapture_ptsz(h: Handle) {
        begin_capture(h, graph::MODE_GLOBAL, true, None)
    }
    fn cuStreamBeginCapture_v2(h: Handle, mode: c_uint) {
        begin_capture(h, mode, false, None)
    }
    fn cuStreamBeginCapture_v2_ptsz(h: Handle, mode: c_uint) {
        begin_capture(h, mode, true, None)
    }
    fn cuStreamBeginCaptureToGraph(h: Handle, g: Handle, deps: *const Handle, data: *const u64, n: usize, mode: c_uint) {
        // SAFETY: arrays from the caller.
        let deps = unsafe {
            check_default_edges(data, n)?;
            deps_in(deps, n)?
        };
        begin_capture(h, mode, false, Some((g, deps)))
    }
    fn cuStreamBeginCaptureToGraph_ptsz(h: Handle, g: Handle, deps: *const Handle, data: *const u64, n: usize, mode: c_uint) {
        // SAFETY: arrays from the caller.
        let deps = unsafe {
            check_default_edges(data, n)?;
            deps_in(deps, n)?
        };
        begin_capture(h, mode, true, Some((g, deps)))
    }
    fn cuStreamEndCapture(h: Handle, out: *mut Handle) {
        end_capture(h, out, false)
    }
    fn cuStreamEndCapture_ptsz(h: Handle, out: *mut Handle) {
        end_capture(h, out, true)
    }
    fn cuStreamGetCaptureInfo(h: Handle, status: *mut c_uint, id: *mut u64) {
        capture_info(h, status, id, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), false)
    }
    fn cuStreamGetCaptureInfo_ptsz(h: Handle, status: *mut c_uint, id: *mut u64) {
        capture_info(h, status, id, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), true)
    }
    fn cuStreamGetCaptureInfo_v2(h: Handle, status: *mut c_uint, id: *mut u64, g: *mut Handle, deps: *mut *const Handle, n: *mut usize) {
        capture_info(h, status, id, g, deps, std::ptr::null_mut(), n, false)
    }
    fn cuStreamGetCaptureInfo_v2_ptsz(h: Handle, status: *mut c_uint, id: *mut u64, g: *mut Handle, deps: *mut *const Handle, n: *mut usize) {
        capture_info(h, status, id, g, deps, std::ptr::null_mut(), n, true)
    }
    fn cuStreamGetCaptureInfo_v3(h: Handle, status: *mut c_uint, id: *mut u64, g: *mut Handle, deps: *mut *const Handle, edges: *mut *const u64, n: *mut usize) {
        capture_info(h, status, id, g, deps, edges, n, false)
    }
    fn cuStreamGetCaptureInfo_v3_ptsz(h: Handle, status: *mut c_uint, id: *mut u64, g: *mut Handle, deps: *mut *const Handle, edges: *mut *const u64, n: *mut usize) {
        capture_info(h, status, id, g, deps, edges, n, true)
    }
    fn cuStreamUpdateCaptureDependencies(h: Handle, deps: *const Handle, n: usize, flags: c_uint) {
        update_capture_deps(h, deps, n, flags, false)
    }
    fn cuStreamUpdateCaptureDependencies_ptsz(h: Handle, deps: *const Handle, n: usize, flags: c_uint) {
        update_capture_deps(h, deps, n, flags, true)
    }
    fn cuStreamUpdateCaptureDependencies_v2(h: Handle, deps: *const Handle, data: *const u64, n: usize, flags: c_uint) {
        // SAFETY: edge data array from the caller.
        unsafe { check_default_edges(data, n)? };
        update_capture_deps(h, deps, n, flags, false)
    }
    fn cuStreamUpdateCaptureDependencies_v2_ptsz(h: Handle, deps: *const Handle, data: *const u64, n: usize, flags: c_uint) {
        // SAFETY: edge data array from the caller.
        unsafe { check_default_edges(data, n)? };
        update_capture_deps(h, deps, n, flags, true)
    }
    fn cuThreadExchangeStreamCaptureMode(mode: *mut c_uint) {
        // SAFETY: input/output pointer from the caller (null checked).
        let new = unsafe { read_in(mode)? };
        let old = graph::exchange_mode(new)?;
        // SAFETY: as above.
        unsafe { write_out(mode, old) }
    }
}
