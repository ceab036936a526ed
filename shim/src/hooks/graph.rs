//! CUDA graph memory: instantiation (learn an executable graph's allocation bytes), upload and
//! launch (charge a cold graph's memory before the driver commits it), executable graph
//! destruction and `cuDeviceGraphMemTrim` (the charge follows what the driver's graph memory
//! pool still holds). The policy is in [`crate::graph_memory`]; graph launches also pass the
//! compute gate (`super::launch`). Stream capture begin/end are recorded for the drain
//! ([`crate::captures`]).
//!
//! Handlers of the entry-point table (`GraphMemory`, `Capture`).

use super::real;
use super::table::sig;
use crate::cuda_types::*;
use crate::graph_memory::{self, Part, TABLE, Table};
use crate::registration::{Access, Registration, access};
use gpumux_common::accounting;
use std::ffi::{c_char, c_uint, c_void};

/// Child graphs nest; a graph deeper than this is not walked further.
const MAX_DEPTH: u32 = 16;

/// `(ordinal, bytes)` of every allocation node of `graph`, child graphs included.
fn walk(graph: CUgraph, depth: u32, out: &mut Vec<(CUdevice, u64)>) {
    let get_nodes = real!(cuGraphGetNodes);
    let node_type = real!(cuGraphNodeGetType);
    let mut n = 0usize;
    if depth > MAX_DEPTH {
        return;
    }
    // SAFETY: a null array asks for the count only.
    if unsafe { get_nodes(graph, std::ptr::null_mut(), &mut n) } != CUDA_SUCCESS {
        return;
    }
    let mut nodes: Vec<CUgraphNode> = vec![std::ptr::null_mut(); n];
    // SAFETY: the array holds `n` entries.
    if n == 0 || unsafe { get_nodes(graph, nodes.as_mut_ptr(), &mut n) } != CUDA_SUCCESS {
        return;
    }
    for node in nodes.into_iter().take(n) {
        let mut t: c_uint = 0;
        // SAFETY: valid out-pointer; `node` was just listed by the driver.
        if unsafe { node_type(node, &mut t) } != CUDA_SUCCESS {
            continue;
        }
        match t {
            CU_GRAPH_NODE_TYPE_MEM_ALLOC => {
                let params = real!(cuGraphMemAllocNodeGetParams);
                // SAFETY: an all-zero MemAllocNodeParams is valid (integers and null pointers).
                let mut p: MemAllocNodeParams = unsafe { std::mem::zeroed() };
                // SAFETY: valid out-pointer of the documented struct.
                if unsafe { params(node, &mut p) } == CUDA_SUCCESS
                    && p.pool_props.location.kind == CU_MEM_LOCATION_TYPE_DEVICE
                {
                    out.push((p.pool_props.location.id, p.bytesize as u64));
                }
            }
            CU_GRAPH_NODE_TYPE_GRAPH => {
                let child = real!(cuGraphChildGraphNodeGetGraph);
                let mut g: CUgraph = std::ptr::null_mut();
                // SAFETY: valid out-pointer.
                if unsafe { child(node, &mut g) } == CUDA_SUCCESS {
                    walk(g, depth + 1, out);
                }
            }
            _ => {}
        }
    }
}

/// The graph memory of `graph`, per device.
fn graph_parts(reg: &Registration, graph: CUgraph) -> Vec<Part> {
    let mut found = Vec::new();
    walk(graph, 0, &mut found);
    let mut parts: Vec<Part> = Vec::new();
    for (ordinal, bytes) in found {
        let Some(device) = super::init::device_of_ordinal(reg, ordinal) else {
            continue;
        };
        match parts.iter_mut().find(|p| p.device == device) {
            Some(p) => p.bytes = p.bytes.saturating_add(bytes),
            None => parts.push(Part {
                ordinal,
                device,
                bytes,
            }),
        }
    }
    parts
}

/// Charges every part, or nothing.
fn charge_parts(reg: &Registration, parts: &[Part]) -> bool {
    for (i, p) in parts.iter().enumerate() {
        if accounting::charge(reg.control(), &reg.accounting, reg.slot, p.device, p.bytes).is_err()
        {
            uncharge_parts(reg, &parts[..i]);
            return false;
        }
    }
    true
}

fn uncharge_parts(reg: &Registration, parts: &[Part]) {
    for p in parts {
        super::memory::give_back_bytes(reg, p.device, p.bytes);
    }
}

/// Runs a launch or upload of `exec` (which makes the driver commit its graph memory): a cold
/// graph's memory is charged first; over the quota it fails with `CUDA_ERROR_OUT_OF_MEMORY`
/// and nothing is charged.
pub(super) fn committing(exec: CUgraphExec, run: impl FnOnce() -> CUresult) -> CUresult {
    let reg = match access() {
        Access::Registered(r) => r,
        Access::PassThrough => return run(),
        Access::Refused => return CUDA_ERROR_NOT_INITIALIZED,
    };
    let key = exec as u64;
    {
        let read = TABLE.read();
        match graph_memory::lookup(&read, key) {
            // No graph memory, or warm: the pool is not changed by this (held while it runs).
            None | Some(true) => return run(),
            Some(false) => {}
        }
    }
    let mut slot = TABLE.write();
    let table = graph_memory::current(&mut slot);
    let parts = match table.get(key) {
        Some(e) if !e.warm => e.parts.clone(),
        _ => return run(),
    };
    if !charge_parts(reg, &parts) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    let rc = run();
    if rc == CUDA_SUCCESS {
        table.warmed(key);
    } else {
        uncharge_parts(reg, &parts);
    }
    rc
}

/// Runs an instantiation of `graph` into `*out`: remembers the new executable graph's graph
/// memory; with `upload` the driver commits it at once, so it is charged first.
fn instantiating(
    out: *mut CUgraphExec,
    graph: CUgraph,
    upload: bool,
    run: impl FnOnce() -> CUresult,
) -> CUresult {
    let reg = match access() {
        Access::Registered(r) => r,
        Access::PassThrough => return run(),
        Access::Refused => return CUDA_ERROR_NOT_INITIALIZED,
    };
    let parts = graph_parts(reg, graph);
    if parts.is_empty() {
        return run();
    }
    let context = super::context::current_context();
    let mut slot = TABLE.write();
    let table = graph_memory::current(&mut slot);
    if upload && !charge_parts(reg, &parts) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    let rc = run();
    if rc == CUDA_SUCCESS && !out.is_null() {
        // SAFETY: the driver succeeded, so it wrote the new executable graph to `*out`.
        let exec = unsafe { *out } as u64;
        table.insert(exec, context, parts);
        if upload {
            table.warmed(exec);
        }
    } else if upload {
        uncharge_parts(reg, &parts);
    }
    rc
}

/// Sets the charge of `device`'s graph memory to what the driver holds now (after a trim).
fn reconcile(reg: &Registration, table: &mut Table, ordinal: CUdevice, device: usize) {
    let attr = real!(cuDeviceGetGraphMemAttribute);
    let mut reserved = 0u64;
    // SAFETY: valid out-pointer (a cuuint64_t for this attribute).
    let rc = unsafe {
        attr(
            ordinal,
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT,
            (&mut reserved as *mut u64).cast(),
        )
    };
    if rc != CUDA_SUCCESS {
        // Unknown: keep the charge (never below what the driver holds).
        return;
    }
    let (give, take) = table.reconcile(device, reserved);
    if give > 0 {
        super::memory::give_back_bytes(reg, device, give);
    }
    if take > 0
        && accounting::charge(reg.control(), &reg.accounting, reg.slot, device, take).is_err()
    {
        // Already held by the driver; the tenant is over its quota until it frees memory.
        table.reconcile(device, reserved - take);
    }
}

/// Trims `ordinal`'s graph memory pool (the driver returns what no graph uses).
fn trim(ordinal: CUdevice) {
    let f = real!(cuDeviceGraphMemTrim);
    // SAFETY: plain value argument.
    unsafe { f(ordinal) };
}

/// After a context was destroyed (with its graphs): its graphs' memory is gone from the pool.
pub(super) fn context_gone(context: u64) {
    let Some(reg) = crate::registration::current() else {
        return;
    };
    let mut slot = TABLE.write();
    let table = graph_memory::current(&mut slot);
    for (ordinal, device) in table.remove_context(context) {
        reconcile(reg, table, ordinal, device);
    }
}

/// `cuGraphInstantiate`/`_v2` (the 5-argument ABI).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn instantiate_v1(
    real: sig::cuGraphInstantiate,
    out: *mut CUgraphExec,
    graph: CUgraph,
    err_node: *mut CUgraphNode,
    log: *mut c_char,
    len: usize,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    instantiating(out, graph, false, || unsafe {
        real(out, graph, err_node, log, len)
    })
}

/// `cuGraphInstantiateWithFlags`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn instantiate_with_flags(
    real: sig::cuGraphInstantiateWithFlags,
    out: *mut CUgraphExec,
    graph: CUgraph,
    flags: u64,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    instantiating(out, graph, false, || unsafe { real(out, graph, flags) })
}

/// `cuGraphInstantiateWithParams`/`_ptsz` (`CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD` commits the
/// graph's memory at once).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn instantiate_with_params(
    real: sig::cuGraphInstantiateWithParams,
    out: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut GraphInstantiateParams,
) -> CUresult {
    let upload = !params.is_null()
        // SAFETY: non-null parameters supplied by the caller.
        && unsafe { (*params).flags } & CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD != 0;
    // SAFETY: forwarding the caller's arguments.
    instantiating(out, graph, upload, || unsafe { real(out, graph, params) })
}

/// `cuGraphUpload`/`_ptsz`: the driver commits the graph's memory.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn upload(
    real: sig::cuGraphUpload,
    exec: CUgraphExec,
    stream: CUstream,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    committing(exec, || unsafe { real(exec, stream) })
}

/// `cuGraphExecDestroy`. The driver keeps a destroyed graph's memory in its pool: the shim trims
/// the pool so it returns to the device, and the tenant's charge follows.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn exec_destroy(real: sig::cuGraphExecDestroy, exec: CUgraphExec) -> CUresult {
    let Some(reg) = crate::registration::current() else {
        // SAFETY: forwarding the caller's argument.
        return unsafe { real(exec) };
    };
    let mut slot = TABLE.write();
    // SAFETY: as above.
    let rc = unsafe { real(exec) };
    let table = graph_memory::current(&mut slot);
    if rc == CUDA_SUCCESS
        && let Some(e) = table.remove(exec as u64)
    {
        for p in e.parts {
            trim(p.ordinal);
            reconcile(reg, table, p.ordinal, p.device);
        }
    }
    rc
}

/// `cuDeviceGraphMemTrim`: the charge follows what the pool still holds.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_trim(real: sig::cuDeviceGraphMemTrim, dev: CUdevice) -> CUresult {
    let Some(reg) = crate::registration::current() else {
        // SAFETY: forwarding the caller's argument.
        return unsafe { real(dev) };
    };
    let mut slot = TABLE.write();
    // SAFETY: as above.
    let rc = unsafe { real(dev) };
    if rc == CUDA_SUCCESS
        && let Some(device) = super::init::device_of_ordinal(reg, dev)
    {
        reconcile(reg, graph_memory::current(&mut slot), dev, device);
    }
    rc
}

// ---- stream capture: recorded so the drain waits for captures to end ----------------------

/// Records a capture that began (`rc` is the driver's answer).
fn began(rc: CUresult, stream: CUstream, ptsz: bool) -> CUresult {
    if rc == CUDA_SUCCESS {
        crate::captures::begun(stream, ptsz);
    }
    rc
}

/// Records the end of the capture on `stream` (`rc` is `cuStreamEndCapture`'s answer).
fn ended(rc: CUresult, stream: CUstream, ptsz: bool) -> CUresult {
    // Success, an invalidated capture and unjoined work all end the capture.
    if matches!(
        rc,
        CUDA_SUCCESS | CUDA_ERROR_STREAM_CAPTURE_INVALIDATED | CUDA_ERROR_STREAM_CAPTURE_UNJOINED
    ) || !crate::captures::is_capturing(stream as u64, ptsz)
    {
        crate::captures::ended(stream, ptsz);
    }
    rc
}

/// `cuStreamBeginCapture` (the 10.0 ABI: global mode); `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn begin_capture_v1<const PTSZ: bool>(
    real: sig::cuStreamBeginCapture,
    stream: CUstream,
) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    began(unsafe { real(stream) }, stream, PTSZ)
}

/// `cuStreamBeginCapture_v2`; `PTSZ`: `_v2_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn begin_capture<const PTSZ: bool>(
    real: sig::cuStreamBeginCapture_v2,
    stream: CUstream,
    mode: c_uint,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    began(unsafe { real(stream, mode) }, stream, PTSZ)
}

/// `cuStreamBeginCaptureToGraph`; `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn begin_capture_to_graph<const PTSZ: bool>(
    real: sig::cuStreamBeginCaptureToGraph,
    stream: CUstream,
    graph: CUgraph,
    deps: *const CUgraphNode,
    edge_data: *const c_void,
    n: usize,
    mode: c_uint,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    began(
        unsafe { real(stream, graph, deps, edge_data, n, mode) },
        stream,
        PTSZ,
    )
}

/// `cuStreamEndCapture`; `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn end_capture<const PTSZ: bool>(
    real: sig::cuStreamEndCapture,
    stream: CUstream,
    graph: *mut CUgraph,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    ended(unsafe { real(stream, graph) }, stream, PTSZ)
}
