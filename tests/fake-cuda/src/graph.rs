//! CUDA graphs: graphs and their nodes, executable graphs (instantiation, a launch enqueued as one
//! unit of the ordinary stream operations in dependency order, parameter updates), stream capture
//! (capture sequences, the per-thread capture interaction mode, and the errors the driver gives for
//! operations that are illegal while a stream captures), and graph memory.
//!
//! Graph memory follows the CUDA programming guide ("Graph Memory Nodes"): an allocation node
//! reserves its address range when it is made (fixed for the node's lifetime, nothing charged);
//! physical memory comes from the device's graph memory pool and is mapped at launch or upload
//! (the pool grows, and the device is charged, only when it has too little unused memory); an
//! executable graph keeps its mappings between launches; an allocation not freed inside its graph
//! stays live after the launch until `cuMemFree*` or another graph's free node; destroying the
//! executable graph returns its mappings to the pool, not to the device; `cuDeviceGraphMemTrim`
//! releases what no allocation or scheduled graph uses.
//!
//! Everything here is under one mutex: graph objects are not thread-safe in CUDA either, and no
//! stream work runs under it.

use crate::context::Context;
use crate::driver::Process;
use crate::module::Function;
use crate::stream::{Event, HostFn, Op, Stream, StreamKind};
use crate::types::{Res, err};
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// `CUgraphNodeType` values.
#[allow(missing_docs)]
pub mod node_type {
    pub const KERNEL: u32 = 0;
    pub const MEMCPY: u32 = 1;
    pub const MEMSET: u32 = 2;
    pub const HOST: u32 = 3;
    pub const EMPTY: u32 = 5;
    pub const WAIT_EVENT: u32 = 6;
    pub const EVENT_RECORD: u32 = 7;
    pub const MEM_ALLOC: u32 = 10;
    pub const MEM_FREE: u32 = 11;
}

/// `CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH`.
pub const FLAG_AUTO_FREE_ON_LAUNCH: u64 = 1;
/// `CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD`.
pub const FLAG_UPLOAD: u64 = 2;
/// `CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH`.
pub const FLAG_DEVICE_LAUNCH: u64 = 4;
/// `CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY`.
pub const FLAG_USE_NODE_PRIORITY: u64 = 8;

/// `CUstreamCaptureMode`: global (the default).
pub const MODE_GLOBAL: u32 = 0;
/// `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`.
pub const MODE_THREAD_LOCAL: u32 = 1;
/// `CU_STREAM_CAPTURE_MODE_RELAXED`.
pub const MODE_RELAXED: u32 = 2;

/// `CUstreamCaptureStatus`: not capturing.
pub const STATUS_NONE: u32 = 0;
/// `CU_STREAM_CAPTURE_STATUS_ACTIVE`.
pub const STATUS_ACTIVE: u32 = 1;
/// `CU_STREAM_CAPTURE_STATUS_INVALIDATED`.
pub const STATUS_INVALIDATED: u32 = 2;

/// `CUgraphExecUpdateResult` values.
#[allow(missing_docs)]
pub mod update {
    pub const SUCCESS: u32 = 0;
    pub const TOPOLOGY_CHANGED: u32 = 2;
    pub const NODE_TYPE_CHANGED: u32 = 3;
    pub const FUNCTION_CHANGED: u32 = 4;
    pub const PARAMETERS_CHANGED: u32 = 5;
    pub const NOT_SUPPORTED: u32 = 6;
}

// ---- node parameters ----------------------------------------------------------------------

/// A kernel node: the function, its configuration and a copy of its arguments (taken when the
/// node is made or its parameters set, like the driver's).
pub struct KernelNode {
    /// Function.
    pub func: Arc<Function>,
    /// Grid dimensions.
    pub grid: [u32; 3],
    /// Block dimensions.
    pub block: [u32; 3],
    /// Dynamic shared memory.
    pub shmem: u32,
    args: Vec<Box<[u8]>>,
    extra: Option<Box<[u8]>>,
    /// `kernelParams` handed out by the node getters (addresses of `args`).
    ptrs: Box<[usize]>,
    /// `extra` array handed out by the node getters.
    extra_arr: Box<[usize; 5]>,
    /// The buffer size `extra_arr` points at (only read through that pointer).
    #[allow(dead_code)]
    extra_size: Box<usize>,
    /// Simulated duration.
    pub ns: u64,
}

impl KernelNode {
    fn build(
        func: Arc<Function>,
        grid: [u32; 3],
        block: [u32; 3],
        shmem: u32,
        args: Vec<Box<[u8]>>,
        extra: Option<Box<[u8]>>,
        ns: u64,
    ) -> Self {
        let ptrs: Box<[usize]> = args.iter().map(|a| a.as_ptr() as usize).collect();
        let extra_size = Box::new(extra.as_ref().map_or(0, |e| e.len()));
        let extra_arr = Box::new([
            1,
            extra.as_ref().map_or(0, |e| e.as_ptr() as usize),
            2,
            &*extra_size as *const usize as usize,
            0,
        ]);
        Self {
            func,
            grid,
            block,
            shmem,
            args,
            extra,
            ptrs,
            extra_arr,
            extra_size,
            ns,
        }
    }

    /// Copies a launch's arguments (checked like a launch).
    ///
    /// # Safety
    /// `params`/`extra` follow the `cuLaunchKernel` conventions.
    pub unsafe fn copy(
        p: &Process,
        func: Arc<Function>,
        grid: [u32; 3],
        block: [u32; 3],
        shmem: u32,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) -> Res<Self> {
        crate::exports::launch::check_config(&func, grid, block, shmem, params, extra, false)?;
        let mut args: Vec<Box<[u8]>> = Vec::new();
        let mut extra_buf: Option<Box<[u8]>> = None;
        if !params.is_null() {
            for (i, &size) in func.param_sizes.iter().enumerate() {
                // SAFETY: kernelParams holds one pointer per parameter of the function.
                let ptr = unsafe { *params.add(i) } as *const u8;
                if ptr.is_null() {
                    return Err(err::INVALID_VALUE);
                }
                // SAFETY: the parameter's value is `size` readable bytes.
                args.push(Box::from(unsafe { std::slice::from_raw_parts(ptr, size) }));
            }
        } else if !extra.is_null() {
            // SAFETY: per this function's contract.
            let (buf, size) = unsafe { crate::exports::launch::extra_buffer(extra)? };
            if size > 0 {
                // SAFETY: the argument buffer holds `size` bytes.
                extra_buf = Some(Box::from(unsafe { std::slice::from_raw_parts(buf, size) }));
            }
        }
        let first = args.first().or(extra_buf.as_ref());
        let ns = if func.name == "spin" {
            match first.and_then(|b| b.get(..8)) {
                Some(v) => u64::from_ne_bytes(v.try_into().expect("8 bytes")),
                None => return Err(err::INVALID_VALUE),
            }
        } else {
            p.kernel_ns
        };
        Ok(Self::build(func, grid, block, shmem, args, extra_buf, ns))
    }

    /// The `kernelParams` array of this node's copy (null when it was given `extra`).
    pub fn kernel_params(&self) -> *mut *mut c_void {
        if self.extra.is_some() || self.ptrs.is_empty() {
            std::ptr::null_mut()
        } else {
            self.ptrs.as_ptr() as *mut *mut c_void
        }
    }

    /// The `extra` array of this node's copy (null when it was given `kernelParams`).
    pub fn extra(&self) -> *mut *mut c_void {
        match &self.extra {
            Some(_) => self.extra_arr.as_ptr() as *mut *mut c_void,
            None => std::ptr::null_mut(),
        }
    }
}

impl Clone for KernelNode {
    fn clone(&self) -> Self {
        Self::build(
            self.func.clone(),
            self.grid,
            self.block,
            self.shmem,
            self.args.clone(),
            self.extra.clone(),
            self.ns,
        )
    }
}

/// A memcpy node (`CUDA_MEMCPY3D`, memory types host, device or unified).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Memcpy3d {
    pub src_x: usize,
    pub src_y: usize,
    pub src_z: usize,
    pub src_lod: usize,
    pub src_type: u32,
    pub src_host: usize,
    pub src_device: u64,
    pub src_array: usize,
    pub reserved0: usize,
    pub src_pitch: usize,
    pub src_height: usize,
    pub dst_x: usize,
    pub dst_y: usize,
    pub dst_z: usize,
    pub dst_lod: usize,
    pub dst_type: u32,
    pub dst_host: usize,
    pub dst_device: u64,
    pub dst_array: usize,
    pub reserved1: usize,
    pub dst_pitch: usize,
    pub dst_height: usize,
    pub width: usize,
    pub height: usize,
    pub depth: usize,
}

/// `CU_MEMORYTYPE_HOST`.
const MEMTYPE_HOST: u32 = 1;
/// `CU_MEMORYTYPE_DEVICE`.
const MEMTYPE_DEVICE: u32 = 2;
/// `CU_MEMORYTYPE_ARRAY`.
const MEMTYPE_ARRAY: u32 = 3;
/// `CU_MEMORYTYPE_UNIFIED`.
const MEMTYPE_UNIFIED: u32 = 4;

impl Memcpy3d {
    /// `(dst, src, bytes)` of every row.
    fn rows(&self) -> Vec<(u64, u64, usize)> {
        let (src, dst) = (self.src_base(), self.dst_base());
        let mut out = Vec::new();
        for z in 0..self.depth.max(1) {
            for y in 0..self.height.max(1) {
                let s = src
                    + ((self.src_z + z) * self.src_height + self.src_y + y) as u64
                        * self.src_pitch as u64
                    + self.src_x as u64;
                let d = dst
                    + ((self.dst_z + z) * self.dst_height + self.dst_y + y) as u64
                        * self.dst_pitch as u64
                    + self.dst_x as u64;
                out.push((d, s, self.width));
            }
        }
        out
    }

    fn src_base(&self) -> u64 {
        match self.src_type {
            MEMTYPE_HOST => self.src_host as u64,
            _ => self.src_device,
        }
    }

    fn dst_base(&self) -> u64 {
        match self.dst_type {
            MEMTYPE_HOST => self.dst_host as u64,
            _ => self.dst_device,
        }
    }

    /// Checks the description: arrays are not simulated; device sides lie in allocations.
    pub fn check(&self, p: &Process) -> Res<()> {
        if self.src_type == MEMTYPE_ARRAY || self.dst_type == MEMTYPE_ARRAY {
            return Err(err::NOT_SUPPORTED);
        }
        let known = |t| matches!(t, MEMTYPE_HOST | MEMTYPE_DEVICE | MEMTYPE_UNIFIED);
        if !known(self.src_type) || !known(self.dst_type) || self.width == 0 {
            return Err(err::INVALID_VALUE);
        }
        if (self.height > 1 || self.depth > 1)
            && (self.src_pitch < self.src_x + self.width
                || self.dst_pitch < self.dst_x + self.width)
        {
            return Err(err::INVALID_VALUE);
        }
        for (d, s, n) in self.rows() {
            for (ptr, t) in [(d, self.dst_type), (s, self.src_type)] {
                let device =
                    t == MEMTYPE_DEVICE || (t == MEMTYPE_UNIFIED && p.mem.find(ptr).is_some());
                if ptr == 0 {
                    return Err(err::INVALID_VALUE);
                }
                if device {
                    in_allocation(p, ptr, n as u64)?;
                }
            }
        }
        Ok(())
    }
}

/// A memset node (`CUDA_MEMSET_NODE_PARAMS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct MemsetNode {
    pub dst: u64,
    pub pitch: usize,
    pub value: u32,
    pub elem: usize,
    pub width: usize,
    pub height: usize,
}

impl MemsetNode {
    /// Checks the description against the allocation it writes.
    pub fn check(&self, p: &Process) -> Res<()> {
        if !matches!(self.elem, 1 | 2 | 4)
            || self.width == 0
            || self.height == 0
            || !self.dst.is_multiple_of(self.elem as u64)
        {
            return Err(err::INVALID_VALUE);
        }
        let row = self
            .width
            .checked_mul(self.elem)
            .ok_or(err::INVALID_VALUE)?;
        if self.height > 1 && self.pitch < row {
            return Err(err::INVALID_VALUE);
        }
        let span = (self.pitch as u64)
            .checked_mul(self.height as u64 - 1)
            .and_then(|v| v.checked_add(row as u64))
            .ok_or(err::INVALID_VALUE)?;
        in_allocation(p, self.dst, span)
    }
}

/// `[ptr, ptr + n)` lies in one device allocation (graph allocations count before they are
/// mapped: their addresses are fixed when the node is made).
fn in_allocation(p: &Process, ptr: u64, n: u64) -> Res<()> {
    let a = p.mem.find(ptr).ok_or(err::INVALID_VALUE)?;
    match ptr.checked_add(n) {
        Some(end) if end <= a.base + a.size => Ok(()),
        _ => Err(err::INVALID_VALUE),
    }
}

/// What a node does.
#[derive(Clone)]
pub enum NodeKind {
    /// A kernel.
    Kernel(KernelNode),
    /// A copy.
    Memcpy(Memcpy3d),
    /// A fill.
    Memset(MemsetNode),
    /// A host function.
    Host {
        /// Function.
        f: HostFn,
        /// User data.
        data: usize,
    },
    /// Nothing (a dependency point).
    Empty,
    /// Records an event.
    EventRecord(Arc<Event>),
    /// Waits for an event.
    EventWait(Arc<Event>),
    /// Allocates the graph allocation at this address.
    MemAlloc(u64),
    /// Frees the graph allocation at this address.
    MemFree(u64),
}

impl NodeKind {
    /// The `CUgraphNodeType`.
    pub fn type_code(&self) -> u32 {
        match self {
            NodeKind::Kernel(_) => node_type::KERNEL,
            NodeKind::Memcpy(_) => node_type::MEMCPY,
            NodeKind::Memset(_) => node_type::MEMSET,
            NodeKind::Host { .. } => node_type::HOST,
            NodeKind::Empty => node_type::EMPTY,
            NodeKind::EventRecord(_) => node_type::EVENT_RECORD,
            NodeKind::EventWait(_) => node_type::WAIT_EVENT,
            NodeKind::MemAlloc(_) => node_type::MEM_ALLOC,
            NodeKind::MemFree(_) => node_type::MEM_FREE,
        }
    }
}

// ---- state ----------------------------------------------------------------------------------

struct GraphData {
    /// Nodes in creation order.
    nodes: Vec<u64>,
    /// Has memory nodes (at most one executable graph at a time, nodes and edges stay).
    mem: bool,
    /// The live executable graph of a graph with memory nodes.
    exec: Option<u64>,
    /// Allocations freed by this graph's free nodes.
    frees: HashSet<u64>,
}

struct NodeData {
    graph: u64,
    kind: NodeKind,
    deps: Vec<u64>,
}

struct Exec {
    ctx: u64,
    device: u32,
    graph: u64,
    flags: u64,
    /// `(graph node, what it does)` in a topological order.
    nodes: Vec<(u64, NodeKind)>,
    /// Allocations made by the graph's allocation nodes.
    allocs: Vec<u64>,
    /// Those of them not freed inside the graph (live after a launch).
    escaping: Vec<u64>,
    /// Allocations of other graphs freed by this graph's free nodes.
    foreign_frees: Vec<u64>,
    /// The last launch: `(stream, sequence)`.
    last: Option<(Arc<Stream>, u64)>,
}

impl Exec {
    fn scheduled(&self) -> bool {
        self.last.as_ref().is_some_and(|(s, seq)| !s.is_done(*seq))
    }
}

struct AllocData {
    size: u64,
    device: u32,
    /// Physical memory of the pool is mapped to it.
    mapped: bool,
    /// Allocated (launched) and not freed yet.
    live: bool,
    /// The executable graph that maps it.
    exec: Option<u64>,
    /// Its allocation node still exists.
    node_alive: bool,
}

/// A device's graph memory pool (`CU_GRAPH_MEM_ATTR_*`).
#[derive(Default, Clone, Copy)]
struct Pool {
    reserved: u64,
    used: u64,
    reserved_high: u64,
    used_high: u64,
}

struct CaptureData {
    graph: u64,
    /// The graph was made by the capture (not `cuStreamBeginCaptureToGraph`).
    own_graph: bool,
    mode: u32,
    thread: u64,
    ctx: u64,
    invalid: bool,
    origin: usize,
    /// Streams in the capture: the stream and its current dependencies.
    streams: HashMap<usize, (Arc<Stream>, Vec<u64>)>,
}

/// The dependency and edge-data arrays of one `cuStreamGetCaptureInfo` answer.
type InfoBuffers = (Box<[usize]>, Box<[u64]>);

#[derive(Default)]
struct State {
    graphs: HashMap<u64, GraphData>,
    nodes: HashMap<u64, NodeData>,
    execs: HashMap<u64, Exec>,
    allocs: HashMap<u64, AllocData>,
    pools: Vec<Pool>,
    captures: HashMap<u64, CaptureData>,
    /// Capturing streams (by the address of their `Stream`) → capture id.
    stream_capture: HashMap<usize, u64>,
    /// Events recorded inside a capture → `(capture id, nodes the record stands for)`.
    event_capture: HashMap<u64, (u64, Vec<u64>)>,
    /// Buffers handed out by `cuStreamGetCaptureInfo` (valid until the next call on the stream).
    info_bufs: HashMap<usize, InfoBuffers>,
}

/// The process's graphs, executable graphs, captures and graph memory pools.
pub struct Graphs {
    st: Mutex<State>,
    /// Captures in progress (read without the lock on every stream operation).
    capturing: AtomicU64,
}

fn key(s: &Arc<Stream>) -> usize {
    Arc::as_ptr(s) as usize
}

thread_local! {
    static MODE: Cell<u32> = const { Cell::new(MODE_GLOBAL) };
    static THREAD: u64 = {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

fn thread_id() -> u64 {
    THREAD.with(|t| *t)
}

/// `cuThreadExchangeStreamCaptureMode`: sets the calling thread's mode, returns the old one.
pub fn exchange_mode(mode: u32) -> Res<u32> {
    if mode > MODE_RELAXED {
        return Err(err::INVALID_VALUE);
    }
    Ok(MODE.with(|m| m.replace(mode)))
}

/// Where a stream operation goes.
pub enum Route {
    /// To the stream.
    Submit,
    /// Into this capture's graph.
    Capture(u64),
}

impl Graphs {
    /// No graphs; one empty graph memory pool per device.
    pub fn new(devices: u32) -> Self {
        Self {
            st: Mutex::new(State {
                pools: vec![Pool::default(); devices as usize],
                ..State::default()
            }),
            capturing: AtomicU64::new(0),
        }
    }
}

// ---- graphs and nodes -------------------------------------------------------------------------

/// `cuGraphCreate`.
pub fn create(p: &Process) -> u64 {
    let h = p.new_handle();
    p.graphs.st.lock().graphs.insert(h, new_graph());
    h
}

fn new_graph() -> GraphData {
    GraphData {
        nodes: Vec::new(),
        mem: false,
        exec: None,
        frees: HashSet::new(),
    }
}

/// `cuGraphDestroy`: the graph and its nodes (an executable graph made from it lives on).
pub fn destroy(p: &Process, h: u64) -> Res<()> {
    let mut st = p.graphs.st.lock();
    if st.captures.values().any(|c| c.graph == h) {
        return Err(err::ILLEGAL_STATE);
    }
    let g = st.graphs.remove(&h).ok_or(err::INVALID_VALUE)?;
    for n in g.nodes {
        if let Some(NodeData {
            kind: NodeKind::MemAlloc(va),
            ..
        }) = st.nodes.remove(&n)
            && let Some(a) = st.allocs.get_mut(&va)
        {
            a.node_alive = false;
            maybe_release(p, &mut st, va);
        }
    }
    Ok(())
}

fn check_deps(st: &State, graph: u64, deps: &[u64]) -> Res<()> {
    let mut seen = HashSet::new();
    for d in deps {
        match st.nodes.get(d) {
            Some(n) if n.graph == graph && seen.insert(*d) => {}
            _ => return Err(err::INVALID_VALUE),
        }
    }
    Ok(())
}

fn insert_node(p: &Process, st: &mut State, graph: u64, deps: &[u64], kind: NodeKind) -> Res<u64> {
    check_deps(st, graph, deps)?;
    let g = st.graphs.get_mut(&graph).ok_or(err::INVALID_VALUE)?;
    match &kind {
        NodeKind::MemFree(va) => {
            if !g.frees.insert(*va) {
                return Err(err::INVALID_VALUE);
            }
            g.mem = true;
        }
        NodeKind::MemAlloc(_) => g.mem = true,
        _ => {}
    }
    let h = p.new_handle();
    g.nodes.push(h);
    st.nodes.insert(
        h,
        NodeData {
            graph,
            kind,
            deps: deps.to_vec(),
        },
    );
    Ok(h)
}

fn check_free(st: &State, va: u64) -> Res<()> {
    if st.allocs.contains_key(&va) {
        Ok(())
    } else {
        Err(err::INVALID_VALUE)
    }
}

/// Adds a node (not an allocation node: see [`add_alloc`]).
pub fn add(p: &Process, graph: u64, deps: &[u64], kind: NodeKind) -> Res<u64> {
    let mut st = p.graphs.st.lock();
    if let NodeKind::MemFree(va) = kind {
        check_free(&st, va)?;
    }
    insert_node(p, &mut st, graph, deps, kind)
}

/// `cuGraphAddMemAllocNode`: reserves the allocation's address range; returns `(node, address)`.
pub fn add_alloc(p: &Process, graph: u64, deps: &[u64], device: u32, size: u64) -> Res<(u64, u64)> {
    let mut st = p.graphs.st.lock();
    check_deps(&st, graph, deps)?;
    if !st.graphs.contains_key(&graph) {
        return Err(err::INVALID_VALUE);
    }
    let va = p.mem.graph_reserve(device, size)?;
    st.allocs.insert(
        va,
        AllocData {
            size,
            device,
            mapped: false,
            live: false,
            exec: None,
            node_alive: true,
        },
    );
    let node = insert_node(p, &mut st, graph, deps, NodeKind::MemAlloc(va))?;
    Ok((node, va))
}

/// A node's size and device if it is an allocation node.
pub fn alloc_info(p: &Process, va: u64) -> Option<(u32, u64)> {
    p.graphs
        .st
        .lock()
        .allocs
        .get(&va)
        .map(|a| (a.device, a.size))
}

/// What a node does.
pub fn node_kind(p: &Process, node: u64) -> Res<NodeKind> {
    let st = p.graphs.st.lock();
    st.nodes
        .get(&node)
        .map(|n| n.kind.clone())
        .ok_or(err::INVALID_VALUE)
}

/// Reads a node in place (pointers into its parameter copies stay valid while it is unchanged).
pub fn with_node<R>(p: &Process, node: u64, f: impl FnOnce(&NodeKind) -> R) -> Res<R> {
    let st = p.graphs.st.lock();
    st.nodes
        .get(&node)
        .map(|n| f(&n.kind))
        .ok_or(err::INVALID_VALUE)
}

/// Sets what a node does (same node type; memory nodes cannot change).
pub fn set_node_kind(p: &Process, node: u64, kind: NodeKind) -> Res<()> {
    let mut st = p.graphs.st.lock();
    let n = st.nodes.get_mut(&node).ok_or(err::INVALID_VALUE)?;
    if n.kind.type_code() != kind.type_code()
        || matches!(n.kind, NodeKind::MemAlloc(_) | NodeKind::MemFree(_))
    {
        return Err(err::INVALID_VALUE);
    }
    n.kind = kind;
    Ok(())
}

/// A graph's nodes in creation order.
pub fn nodes(p: &Process, graph: u64) -> Res<Vec<u64>> {
    let st = p.graphs.st.lock();
    st.graphs
        .get(&graph)
        .map(|g| g.nodes.clone())
        .ok_or(err::INVALID_VALUE)
}

/// A graph's nodes without dependencies.
pub fn roots(p: &Process, graph: u64) -> Res<Vec<u64>> {
    let st = p.graphs.st.lock();
    let g = st.graphs.get(&graph).ok_or(err::INVALID_VALUE)?;
    Ok(g.nodes
        .iter()
        .filter(|n| st.nodes.get(n).is_some_and(|d| d.deps.is_empty()))
        .copied()
        .collect())
}

/// A graph's edges `(from, to)`.
pub fn edges(p: &Process, graph: u64) -> Res<Vec<(u64, u64)>> {
    let st = p.graphs.st.lock();
    let g = st.graphs.get(&graph).ok_or(err::INVALID_VALUE)?;
    Ok(g.nodes
        .iter()
        .flat_map(|n| st.nodes[n].deps.iter().map(move |d| (*d, *n)))
        .collect())
}

/// A node's dependencies.
pub fn dependencies(p: &Process, node: u64) -> Res<Vec<u64>> {
    let st = p.graphs.st.lock();
    st.nodes
        .get(&node)
        .map(|n| n.deps.clone())
        .ok_or(err::INVALID_VALUE)
}

/// The nodes that depend on a node.
pub fn dependents(p: &Process, node: u64) -> Res<Vec<u64>> {
    let st = p.graphs.st.lock();
    let n = st.nodes.get(&node).ok_or(err::INVALID_VALUE)?;
    Ok(st.graphs[&n.graph]
        .nodes
        .iter()
        .filter(|m| st.nodes[m].deps.contains(&node))
        .copied()
        .collect())
}

/// `cuGraphAddDependencies` / `cuGraphRemoveDependencies`.
pub fn change_dependencies(p: &Process, graph: u64, edges: &[(u64, u64)], add: bool) -> Res<()> {
    let mut st = p.graphs.st.lock();
    let g = st.graphs.get(&graph).ok_or(err::INVALID_VALUE)?;
    if g.mem && !add {
        return Err(err::NOT_SUPPORTED);
    }
    for (from, to) in edges {
        let ok = |h: &u64| st.nodes.get(h).is_some_and(|n| n.graph == graph);
        if !ok(from) || !ok(to) || from == to {
            return Err(err::INVALID_VALUE);
        }
        let present = st.nodes[to].deps.contains(from);
        if present == add {
            return Err(err::INVALID_VALUE);
        }
    }
    for (from, to) in edges {
        let deps = &mut st.nodes.get_mut(to).expect("checked").deps;
        if add {
            deps.push(*from);
        } else {
            deps.retain(|d| d != from);
        }
    }
    Ok(())
}

/// `cuGraphDestroyNode` (not in graphs with memory nodes).
pub fn destroy_node(p: &Process, node: u64) -> Res<()> {
    let mut st = p.graphs.st.lock();
    let graph = st.nodes.get(&node).ok_or(err::INVALID_VALUE)?.graph;
    if st.graphs[&graph].mem {
        return Err(err::NOT_SUPPORTED);
    }
    st.nodes.remove(&node);
    st.graphs
        .get_mut(&graph)
        .expect("node's graph")
        .nodes
        .retain(|n| *n != node);
    for n in st.nodes.values_mut() {
        n.deps.retain(|d| *d != node);
    }
    Ok(())
}

/// The node's type.
pub fn node_type(p: &Process, node: u64) -> Res<u32> {
    node_kind(p, node).map(|k| k.type_code())
}

/// The nodes of `graph` in a topological order (creation order among ready nodes).
fn topological(st: &State, graph: u64) -> Res<Vec<u64>> {
    let g = st.graphs.get(&graph).ok_or(err::INVALID_VALUE)?;
    let index: HashMap<u64, usize> = g.nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut pending: Vec<usize> = g.nodes.iter().map(|n| st.nodes[n].deps.len()).collect();
    let mut ready: BTreeSet<usize> = (0..g.nodes.len()).filter(|i| pending[*i] == 0).collect();
    let mut out = Vec::with_capacity(g.nodes.len());
    while let Some(i) = ready.pop_first() {
        out.push(g.nodes[i]);
        for (j, m) in g.nodes.iter().enumerate() {
            let hits = st.nodes[m].deps.iter().filter(|d| index[d] == i).count();
            if hits > 0 {
                pending[j] -= hits;
                if pending[j] == 0 {
                    ready.insert(j);
                }
            }
        }
    }
    if out.len() != g.nodes.len() {
        // A cycle (cuGraphAddDependencies can make one).
        return Err(err::INVALID_VALUE);
    }
    Ok(out)
}

// ---- executable graphs ------------------------------------------------------------------------

/// `cuGraphInstantiate*`: an executable graph of `graph` in `ctx`.
pub fn instantiate(p: &Process, ctx: &Context, graph: u64, flags: u64) -> Res<u64> {
    if flags
        & !(FLAG_AUTO_FREE_ON_LAUNCH | FLAG_UPLOAD | FLAG_DEVICE_LAUNCH | FLAG_USE_NODE_PRIORITY)
        != 0
    {
        return Err(err::INVALID_VALUE);
    }
    if flags & FLAG_DEVICE_LAUNCH != 0 {
        // Device-side launches are not simulated.
        return Err(err::NOT_SUPPORTED);
    }
    let mut st = p.graphs.st.lock();
    if st.captures.values().any(|c| c.graph == graph) {
        return Err(err::ILLEGAL_STATE);
    }
    let order = topological(&st, graph)?;
    let g = &st.graphs[&graph];
    if g.mem && g.exec.is_some() {
        // Only one executable graph of a graph with memory nodes may exist at a time.
        return Err(err::INVALID_VALUE);
    }
    let mut exec = Exec {
        ctx: ctx.handle,
        device: ctx.device,
        graph,
        flags,
        nodes: Vec::with_capacity(order.len()),
        allocs: Vec::new(),
        escaping: Vec::new(),
        foreign_frees: Vec::new(),
        last: None,
    };
    for n in &order {
        let kind = st.nodes[n].kind.clone();
        if let NodeKind::MemAlloc(va) = kind {
            exec.allocs.push(va);
            if !g.frees.contains(&va) {
                exec.escaping.push(va);
            }
        }
        if let NodeKind::MemFree(va) = kind
            && !g
                .nodes
                .iter()
                .any(|m| matches!(st.nodes[m].kind, NodeKind::MemAlloc(a) if a == va))
        {
            exec.foreign_frees.push(va);
        }
        exec.nodes.push((*n, kind));
    }
    let mem = g.mem;
    let h = p.new_handle();
    for va in &exec.allocs {
        if let Some(a) = st.allocs.get_mut(va) {
            a.exec = Some(h);
        }
    }
    if mem {
        st.graphs.get_mut(&graph).expect("present").exec = Some(h);
    }
    st.execs.insert(h, exec);
    Ok(h)
}

/// The flags an executable graph was instantiated with.
pub fn exec_flags(p: &Process, exec: u64) -> Res<u64> {
    let st = p.graphs.st.lock();
    st.execs
        .get(&exec)
        .map(|e| e.flags)
        .ok_or(err::INVALID_VALUE)
}

/// Maps the pool's physical memory to every allocation of `exec` that has none, growing the pool
/// (charging the device) by what it lacks; all or nothing.
fn map_exec(p: &Process, st: &mut State, exec: u64) -> Res<()> {
    let e = &st.execs[&exec];
    let device = e.device as usize;
    let todo: Vec<u64> = e
        .allocs
        .iter()
        .filter(|va| st.allocs.get(va).is_some_and(|a| !a.mapped))
        .copied()
        .collect();
    let need: u64 = todo.iter().map(|va| st.allocs[va].size).sum();
    if need == 0 {
        return Ok(());
    }
    let pool = st.pools[device];
    let grow = (pool.used + need).saturating_sub(pool.reserved);
    if grow > 0 {
        p.gpu
            .charge(device as u32, grow)
            .map_err(|_| err::OUT_OF_MEMORY)?;
    }
    let pool = &mut st.pools[device];
    pool.reserved += grow;
    pool.used += need;
    pool.reserved_high = pool.reserved_high.max(pool.reserved);
    pool.used_high = pool.used_high.max(pool.used);
    for va in todo {
        st.allocs.get_mut(&va).expect("present").mapped = true;
        p.mem.graph_set_mapped(va, true);
    }
    Ok(())
}

/// Returns an allocation's physical memory to the pool.
fn unmap(p: &Process, st: &mut State, va: u64) {
    let Some(a) = st.allocs.get_mut(&va) else {
        return;
    };
    if a.mapped {
        a.mapped = false;
        let pool = &mut st.pools[a.device as usize];
        pool.used = pool.used.saturating_sub(a.size);
        p.mem.graph_set_mapped(va, false);
    }
    maybe_release(p, st, va);
}

/// Gives the address range back once nothing refers to the allocation.
fn maybe_release(p: &Process, st: &mut State, va: u64) {
    if let Some(a) = st.allocs.get(&va)
        && !a.node_alive
        && !a.mapped
        && !a.live
        && a.exec.is_none()
    {
        st.allocs.remove(&va);
        p.mem.graph_release(va);
    }
}

/// Ends a live graph allocation's lifetime (`cuMemFree*`, a free node): its memory stays mapped
/// for its executable graph, or returns to the pool when there is none.
fn end_lifetime(p: &Process, st: &mut State, va: u64) -> Res<()> {
    let a = st.allocs.get_mut(&va).ok_or(err::INVALID_VALUE)?;
    if !a.live {
        return Err(err::INVALID_VALUE);
    }
    a.live = false;
    if a.exec.is_none() {
        unmap(p, st, va);
    }
    Ok(())
}

/// Whether `ptr` is a graph allocation.
pub fn is_graph_alloc(p: &Process, ptr: u64) -> bool {
    p.graphs.st.lock().allocs.contains_key(&ptr)
}

/// `cuMemFree`/`cuMemFreeAsync` of a graph allocation (outside a capture).
pub fn free_alloc(p: &Process, ptr: u64) -> Res<()> {
    let mut st = p.graphs.st.lock();
    end_lifetime(p, &mut st, ptr)
}

/// Checks the stream of a launch or upload.
fn check_stream(st: &State, exec: u64, ctx: &Context) -> Res<()> {
    let e = st.execs.get(&exec).ok_or(err::INVALID_VALUE)?;
    if e.device != ctx.device {
        return Err(err::INVALID_VALUE);
    }
    Ok(())
}

/// `cuGraphUpload`: maps the executable graph's memory now.
pub fn upload(p: &Process, exec: u64, ctx: &Context, s: &Arc<Stream>) -> Res<()> {
    if let Route::Capture(_) = route(p, ctx, s)? {
        return Err(err::STREAM_CAPTURE_UNSUPPORTED);
    }
    let mut st = p.graphs.st.lock();
    check_stream(&st, exec, ctx)?;
    map_exec(p, &mut st, exec)
}

/// `cuGraphLaunch`: maps the graph's memory, then enqueues its nodes on `s` as one unit, in
/// dependency order; each kernel occupies the device like a launched kernel.
pub fn launch(p: &Process, exec: u64, ctx: &Context, s: &Arc<Stream>) -> Res<()> {
    if let Route::Capture(id) = route(p, ctx, s)? {
        // A graph launched into a capturing stream would become a child graph node: not
        // simulated.
        invalidate(&mut p.graphs.st.lock(), id);
        return Err(err::STREAM_CAPTURE_UNSUPPORTED);
    }
    let mut st = p.graphs.st.lock();
    check_stream(&st, exec, ctx)?;
    let e = &st.execs[&exec];
    let auto_free = e.flags & FLAG_AUTO_FREE_ON_LAUNCH != 0;
    let escaping = e.escaping.clone();
    let foreign = e.foreign_frees.clone();
    // Allocations a previous launch left live must have been freed (or be freed now).
    for va in &escaping {
        if st.allocs.get(va).is_some_and(|a| a.live) && !auto_free {
            return Err(err::INVALID_VALUE);
        }
    }
    for va in &foreign {
        if !st.allocs.get(va).is_some_and(|a| a.live) {
            return Err(err::INVALID_VALUE);
        }
    }
    map_exec(p, &mut st, exec)?;
    for va in &escaping {
        if let Some(a) = st.allocs.get_mut(va) {
            a.live = false;
        }
    }
    for va in &foreign {
        end_lifetime(p, &mut st, *va)?;
    }
    for va in &escaping {
        if let Some(a) = st.allocs.get_mut(va) {
            a.live = true;
        }
    }
    let mut ops = Vec::new();
    let mut records = Vec::new();
    for (_, kind) in &st.execs[&exec].nodes {
        match kind {
            NodeKind::Kernel(k) => ops.push(Op::Kernel { ns: k.ns }),
            NodeKind::Memcpy(c) => {
                for (dst, src, n) in c.rows() {
                    ops.push(Op::Copy { dst, src, n });
                }
            }
            NodeKind::Memset(m) => {
                for row in 0..m.height {
                    ops.push(Op::Memset {
                        dst: m.dst + (row * m.pitch) as u64,
                        value: m.value,
                        elem: m.elem,
                        count: m.width,
                    });
                }
            }
            NodeKind::Host { f, data } => ops.push(Op::Host { f: *f, data: *data }),
            NodeKind::EventRecord(ev) => {
                let (op, generation) = ev.record_op();
                records.push((ev.clone(), generation, ops.len()));
                ops.push(op);
            }
            NodeKind::EventWait(ev) => {
                if let Some((stream, seq)) = ev.dependency()
                    && !stream.is_done(seq)
                {
                    ops.push(Op::Wait { stream, seq });
                }
            }
            NodeKind::Empty | NodeKind::MemAlloc(_) | NodeKind::MemFree(_) => {}
        }
    }
    if ops.is_empty() {
        ops.push(Op::Nop);
    }
    let n = ops.len() as u64;
    drop(st);
    let last = crate::stream::submit_all(ctx, s, ops);
    for (ev, generation, i) in records {
        ev.recorded_at(generation, s, last - (n - 1 - i as u64));
    }
    if let Some(e) = p.graphs.st.lock().execs.get_mut(&exec) {
        e.last = Some((s.clone(), last));
    }
    Ok(())
}

/// `cuGraphExecDestroy`: waits for its launches (the driver frees an in-flight executable graph
/// when it completes), then returns its mappings to the pool (allocations still live keep
/// theirs until freed).
pub fn exec_destroy(p: &Process, exec: u64) -> Res<()> {
    let last = {
        let st = p.graphs.st.lock();
        st.execs.get(&exec).ok_or(err::INVALID_VALUE)?.last.clone()
    };
    if let Some((s, seq)) = last {
        s.wait_for(seq);
    }
    let mut st = p.graphs.st.lock();
    let e = st.execs.remove(&exec).ok_or(err::INVALID_VALUE)?;
    if let Some(g) = st.graphs.get_mut(&e.graph)
        && g.exec == Some(exec)
    {
        g.exec = None;
    }
    for va in e.allocs {
        let Some(a) = st.allocs.get_mut(&va) else {
            continue;
        };
        a.exec = None;
        if a.live {
            continue;
        }
        unmap(p, &mut st, va);
    }
    Ok(())
}

/// `cuGraphExecKernelNodeSetParams`: the executable graph's copy of `node` (a kernel node of the
/// graph it was made from) gets new parameters.
pub fn exec_set_kernel(p: &Process, exec: u64, node: u64, k: KernelNode) -> Res<()> {
    let mut st = p.graphs.st.lock();
    let e = st.execs.get_mut(&exec).ok_or(err::INVALID_VALUE)?;
    let slot = e
        .nodes
        .iter_mut()
        .find(|(n, _)| *n == node)
        .ok_or(err::INVALID_VALUE)?;
    match &slot.1 {
        NodeKind::Kernel(old) if old.func.ctx == k.func.ctx => {
            slot.1 = NodeKind::Kernel(k);
            Ok(())
        }
        _ => Err(err::INVALID_VALUE),
    }
}

/// `cuGraphExecUpdate`: takes `graph`'s node parameters if its topology matches the executable
/// graph's (nodes paired in creation order); otherwise `Err((result, error node))`.
pub fn exec_update(p: &Process, exec: u64, graph: u64) -> Result<(), (u32, u64)> {
    let mut st = p.graphs.st.lock();
    let (Some(e), Some(g)) = (st.execs.get(&exec), st.graphs.get(&graph)) else {
        return Err((update::NOT_SUPPORTED, 0));
    };
    let old_graph = st.graphs.get(&e.graph);
    let old_nodes: Vec<u64> = match old_graph {
        Some(og) => og.nodes.clone(),
        // The source graph is gone: pair by the executable graph's own order.
        None => e.nodes.iter().map(|(n, _)| *n).collect(),
    };
    let new_nodes = g.nodes.clone();
    if old_nodes.len() != new_nodes.len() || old_graph.is_none() {
        return Err((update::TOPOLOGY_CHANGED, 0));
    }
    let index_old: HashMap<u64, usize> =
        old_nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let index_new: HashMap<u64, usize> =
        new_nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut updates = Vec::new();
    for (o, n) in old_nodes.iter().zip(&new_nodes) {
        let (od, nd) = (&st.nodes[o], &st.nodes[n]);
        let mut a: Vec<usize> = od.deps.iter().map(|d| index_old[d]).collect();
        let mut b: Vec<usize> = nd.deps.iter().map(|d| index_new[d]).collect();
        a.sort_unstable();
        b.sort_unstable();
        if a != b {
            return Err((update::TOPOLOGY_CHANGED, *n));
        }
        if od.kind.type_code() != nd.kind.type_code() {
            return Err((update::NODE_TYPE_CHANGED, *n));
        }
        match (&od.kind, &nd.kind) {
            (NodeKind::Kernel(x), NodeKind::Kernel(y)) if x.func.ctx != y.func.ctx => {
                return Err((update::FUNCTION_CHANGED, *n));
            }
            (NodeKind::MemAlloc(x), NodeKind::MemAlloc(y))
            | (NodeKind::MemFree(x), NodeKind::MemFree(y))
                if x != y =>
            {
                return Err((update::PARAMETERS_CHANGED, *n));
            }
            _ => {}
        }
        updates.push((*o, nd.kind.clone()));
    }
    let e = st.execs.get_mut(&exec).expect("checked");
    for (node, kind) in updates {
        if let Some(slot) = e.nodes.iter_mut().find(|(n, _)| *n == node) {
            slot.1 = kind;
        }
    }
    Ok(())
}

// ---- graph memory pool ------------------------------------------------------------------------

/// `cuDeviceGraphMemTrim`: unmaps what idle executable graphs keep mapped (allocations still
/// live and graphs still scheduled keep theirs) and gives the pool's unused memory back.
pub fn trim(p: &Process, device: u32) {
    let mut st = p.graphs.st.lock();
    trim_locked(p, &mut st, device);
}

fn trim_locked(p: &Process, st: &mut State, device: u32) {
    let idle: Vec<u64> = st
        .execs
        .values()
        .filter(|e| e.device == device && !e.scheduled())
        .flat_map(|e| e.allocs.clone())
        .filter(|va| st.allocs.get(va).is_some_and(|a| a.mapped && !a.live))
        .collect();
    for va in idle {
        unmap(p, st, va);
    }
    let pool = &mut st.pools[device as usize];
    let release = pool.reserved - pool.used;
    if release > 0 {
        p.gpu.uncharge(device, release);
        pool.reserved = pool.used;
    }
}

/// `cuDeviceGetGraphMemAttribute`.
pub fn mem_attribute(p: &Process, device: u32, attr: u32) -> Res<u64> {
    let st = p.graphs.st.lock();
    let pool = st.pools[device as usize];
    Ok(match attr {
        0 => pool.used,
        1 => pool.used_high,
        2 => pool.reserved,
        3 => pool.reserved_high,
        _ => return Err(err::INVALID_VALUE),
    })
}

/// `cuDeviceSetGraphMemAttribute`: only the high-water marks, only reset (to 0).
pub fn reset_high(p: &Process, device: u32, attr: u32, value: u64) -> Res<()> {
    if value != 0 {
        return Err(err::INVALID_VALUE);
    }
    let mut st = p.graphs.st.lock();
    let pool = &mut st.pools[device as usize];
    match attr {
        1 => pool.used_high = pool.used,
        3 => pool.reserved_high = pool.reserved,
        _ => return Err(err::INVALID_VALUE),
    }
    Ok(())
}

/// A destroyed context takes its executable graphs, captures and graph memory with it.
pub fn drop_context(p: &Process, ctx: &Context) {
    let mut st = p.graphs.st.lock();
    let execs: Vec<u64> = st
        .execs
        .iter()
        .filter(|(_, e)| e.ctx == ctx.handle)
        .map(|(h, _)| *h)
        .collect();
    for h in execs {
        let e = st.execs.remove(&h).expect("present");
        if let Some(g) = st.graphs.get_mut(&e.graph)
            && g.exec == Some(h)
        {
            g.exec = None;
        }
        for va in e.allocs {
            if let Some(a) = st.allocs.get_mut(&va) {
                a.exec = None;
                a.live = false;
            }
            unmap(p, &mut st, va);
        }
    }
    let orphans: Vec<u64> = st
        .allocs
        .iter()
        .filter(|(_, a)| a.device == ctx.device && a.exec.is_none() && a.live)
        .map(|(va, _)| *va)
        .collect();
    for va in orphans {
        st.allocs.get_mut(&va).expect("present").live = false;
        unmap(p, &mut st, va);
    }
    let caps: Vec<u64> = st
        .captures
        .iter()
        .filter(|(_, c)| c.ctx == ctx.handle)
        .map(|(id, _)| *id)
        .collect();
    for id in caps {
        end_capture_state(p, &mut st, id);
    }
    trim_locked(p, &mut st, ctx.device);
}

// ---- stream capture ---------------------------------------------------------------------------

fn invalidate(st: &mut State, id: u64) {
    if let Some(c) = st.captures.get_mut(&id) {
        c.invalid = true;
    }
}

/// Forgets a capture's streams and events (its graph stays).
fn end_capture_state(p: &Process, st: &mut State, id: u64) -> Option<CaptureData> {
    let c = st.captures.remove(&id)?;
    p.graphs.capturing.fetch_sub(1, Ordering::Release);
    for k in c.streams.keys() {
        st.stream_capture.remove(k);
        st.info_bufs.remove(k);
    }
    st.event_capture.retain(|_, (cid, _)| *cid != id);
    Some(c)
}

/// Routes an operation for stream `s`: into its capture, or to the stream. The legacy stream
/// cannot take work while a blocking stream of its context captures (that would be an implicit
/// dependency on the capture): `CUDA_ERROR_STREAM_CAPTURE_IMPLICIT`, and the capture is
/// invalidated.
pub fn route(p: &Process, ctx: &Context, s: &Arc<Stream>) -> Res<Route> {
    if p.graphs.capturing.load(Ordering::Acquire) == 0 {
        return Ok(Route::Submit);
    }
    let mut st = p.graphs.st.lock();
    if st.captures.is_empty() {
        return Ok(Route::Submit);
    }
    if let Some(&id) = st.stream_capture.get(&key(s)) {
        return if st.captures[&id].invalid {
            Err(err::STREAM_CAPTURE_INVALIDATED)
        } else {
            Ok(Route::Capture(id))
        };
    }
    if s.kind == StreamKind::Legacy {
        let implicit: Vec<u64> = st
            .captures
            .iter()
            .filter(|(_, c)| {
                c.ctx == ctx.handle && c.streams.values().any(|(s, _)| s.is_blocking())
            })
            .map(|(id, _)| *id)
            .collect();
        if !implicit.is_empty() {
            for id in implicit {
                invalidate(&mut st, id);
            }
            return Err(err::STREAM_CAPTURE_IMPLICIT);
        }
    }
    Ok(Route::Submit)
}

fn capture_mut<'a>(st: &'a mut State, id: u64, s: &Arc<Stream>) -> Res<&'a mut CaptureData> {
    let c = st
        .captures
        .get_mut(&id)
        .ok_or(err::STREAM_CAPTURE_INVALIDATED)?;
    if c.invalid {
        return Err(err::STREAM_CAPTURE_INVALIDATED);
    }
    if !c.streams.contains_key(&key(s)) {
        return Err(err::ILLEGAL_STATE);
    }
    Ok(c)
}

/// Adds a node for an operation captured on `s`: it depends on the stream's current
/// dependencies and becomes them.
pub fn capture_node(p: &Process, id: u64, s: &Arc<Stream>, kind: NodeKind) -> Res<u64> {
    let mut st = p.graphs.st.lock();
    if let NodeKind::MemFree(va) = kind
        && check_free(&st, va).is_err()
    {
        invalidate(&mut st, id);
        return Err(err::INVALID_VALUE);
    }
    let c = capture_mut(&mut st, id, s)?;
    let graph = c.graph;
    let deps = c.streams[&key(s)].1.clone();
    let node = insert_node(p, &mut st, graph, &deps, kind)?;
    st.captures
        .get_mut(&id)
        .expect("present")
        .streams
        .get_mut(&key(s))
        .expect("present")
        .1 = vec![node];
    Ok(node)
}

/// `cuMemAllocAsync` on a capturing stream: an allocation node; returns its address.
pub fn capture_alloc(p: &Process, id: u64, s: &Arc<Stream>, device: u32, size: u64) -> Res<u64> {
    let (graph, deps) = {
        let mut st = p.graphs.st.lock();
        let c = capture_mut(&mut st, id, s)?;
        (c.graph, c.streams[&key(s)].1.clone())
    };
    let (node, va) = add_alloc(p, graph, &deps, device, size)?;
    let mut st = p.graphs.st.lock();
    if let Ok(c) = capture_mut(&mut st, id, s) {
        c.streams.get_mut(&key(s)).expect("present").1 = vec![node];
    }
    Ok(va)
}

/// `cuStreamBeginCapture*`: starts capturing `s` into a new graph, or into `into` after its
/// nodes `deps` (`cuStreamBeginCaptureToGraph`).
pub fn begin(
    p: &Process,
    ctx: &Context,
    s: &Arc<Stream>,
    mode: u32,
    into: Option<(u64, Vec<u64>)>,
) -> Res<()> {
    if mode > MODE_RELAXED {
        return Err(err::INVALID_VALUE);
    }
    if s.kind == StreamKind::Legacy {
        return Err(err::STREAM_CAPTURE_UNSUPPORTED);
    }
    let mut st = p.graphs.st.lock();
    if st.stream_capture.contains_key(&key(s)) {
        return Err(err::ILLEGAL_STATE);
    }
    let (graph, deps, own) = match into {
        Some((g, deps)) => {
            if !st.graphs.contains_key(&g) || st.captures.values().any(|c| c.graph == g) {
                return Err(err::INVALID_VALUE);
            }
            check_deps(&st, g, &deps)?;
            (g, deps, false)
        }
        None => {
            let g = p.new_handle();
            st.graphs.insert(g, new_graph());
            (g, Vec::new(), true)
        }
    };
    let id = p.new_handle();
    p.graphs.capturing.fetch_add(1, Ordering::Release);
    st.stream_capture.insert(key(s), id);
    st.captures.insert(
        id,
        CaptureData {
            graph,
            own_graph: own,
            mode,
            thread: thread_id(),
            ctx: ctx.handle,
            invalid: false,
            origin: key(s),
            streams: HashMap::from([(key(s), (s.clone(), deps))]),
        },
    );
    Ok(())
}

/// Every node that `nodes` depend on, directly or not, and `nodes`.
fn ancestors(st: &State, nodes: &[u64]) -> HashSet<u64> {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut todo: Vec<u64> = nodes.to_vec();
    while let Some(n) = todo.pop() {
        if seen.insert(n)
            && let Some(d) = st.nodes.get(&n)
        {
            todo.extend(d.deps.iter().copied());
        }
    }
    seen
}

/// `cuStreamEndCapture`: the captured graph. Ending from another thread than the one that began
/// (unless the capture is relaxed) is `CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD`; an invalidated
/// capture ends with `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED` and no graph; a stream that joined
/// and did not rejoin the origin stream ends it with `CUDA_ERROR_STREAM_CAPTURE_UNJOINED`.
pub fn end(p: &Process, s: &Arc<Stream>) -> Res<u64> {
    let mut st = p.graphs.st.lock();
    let id = *st.stream_capture.get(&key(s)).ok_or(err::ILLEGAL_STATE)?;
    let c = &st.captures[&id];
    if c.origin != key(s) {
        return Err(err::STREAM_CAPTURE_UNMATCHED);
    }
    if c.mode != MODE_RELAXED && c.thread != thread_id() {
        return Err(err::STREAM_CAPTURE_WRONG_THREAD);
    }
    let joined = ancestors(&st, &c.streams[&key(s)].1);
    let unjoined = c
        .streams
        .iter()
        .any(|(k, (_, deps))| *k != key(s) && deps.iter().any(|d| !joined.contains(d)));
    let c = end_capture_state(p, &mut st, id).expect("present");
    if c.invalid || unjoined {
        if c.own_graph {
            drop(st);
            destroy(p, c.graph).ok();
        }
        return Err(if c.invalid {
            err::STREAM_CAPTURE_INVALIDATED
        } else {
            err::STREAM_CAPTURE_UNJOINED
        });
    }
    Ok(c.graph)
}

/// Capture status of `s`: `(status, id, graph, dependencies)`. Querying the legacy stream while
/// a blocking stream of its context captures is `CUDA_ERROR_STREAM_CAPTURE_IMPLICIT`.
pub fn status(p: &Process, ctx: &Context, s: &Arc<Stream>) -> Res<(u32, u64, u64, Vec<u64>)> {
    let st = p.graphs.st.lock();
    if let Some(&id) = st.stream_capture.get(&key(s)) {
        let c = &st.captures[&id];
        let state = if c.invalid {
            STATUS_INVALIDATED
        } else {
            STATUS_ACTIVE
        };
        return Ok((state, id, c.graph, c.streams[&key(s)].1.clone()));
    }
    if s.kind == StreamKind::Legacy
        && st
            .captures
            .values()
            .any(|c| c.ctx == ctx.handle && c.streams.values().any(|(s, _)| s.is_blocking()))
    {
        return Err(err::STREAM_CAPTURE_IMPLICIT);
    }
    Ok((STATUS_NONE, 0, 0, Vec::new()))
}

/// Keeps the arrays `cuStreamGetCaptureInfo` hands out for `s` alive until its next call;
/// returns `(dependencies, edge data)` pointers.
pub fn info_buffers(p: &Process, s: &Arc<Stream>, deps: &[u64]) -> (usize, usize) {
    let mut st = p.graphs.st.lock();
    let nodes: Box<[usize]> = deps.iter().map(|d| *d as usize).collect();
    let edges: Box<[u64]> = vec![0u64; deps.len().max(1)].into_boxed_slice();
    let out = (nodes.as_ptr() as usize, edges.as_ptr() as usize);
    st.info_bufs.insert(key(s), (nodes, edges));
    out
}

/// `cuStreamUpdateCaptureDependencies`: flags 0 adds to, 1 replaces the stream's dependencies.
pub fn update_dependencies(p: &Process, s: &Arc<Stream>, deps: &[u64], flags: u32) -> Res<()> {
    let mut st = p.graphs.st.lock();
    let id = *st.stream_capture.get(&key(s)).ok_or(err::ILLEGAL_STATE)?;
    let graph = st.captures[&id].graph;
    if flags > 1 {
        return Err(err::INVALID_VALUE);
    }
    check_deps(&st, graph, deps)?;
    let c = capture_mut(&mut st, id, s)?;
    let cur = &mut c.streams.get_mut(&key(s)).expect("present").1;
    if flags == 1 {
        cur.clear();
    }
    for d in deps {
        if !cur.contains(d) {
            cur.push(*d);
        }
    }
    Ok(())
}

/// `cuEventRecord` on a capturing stream: the event stands for the stream's current nodes (for
/// other streams to join or wait on), no node is made.
pub fn capture_record(p: &Process, id: u64, s: &Arc<Stream>, event: u64) -> Res<()> {
    let mut st = p.graphs.st.lock();
    let deps = capture_mut(&mut st, id, s)?.streams[&key(s)].1.clone();
    st.event_capture.insert(event, (id, deps));
    Ok(())
}

/// An ordinary record of `event` ends its association with a capture.
pub fn forget_record(p: &Process, event: u64) {
    let mut st = p.graphs.st.lock();
    if !st.event_capture.is_empty() {
        st.event_capture.remove(&event);
    }
}

/// `cuStreamWaitEvent` where a capture is involved; `Ok(false)` when none is (an ordinary wait).
/// Waiting on an event recorded in a capture joins `s` to that capture (or adds the event's
/// nodes to its dependencies); a capturing stream waiting on an event recorded outside the
/// capture needs `CU_EVENT_WAIT_EXTERNAL` (then it is an event wait node), otherwise the
/// dependency would cross the capture's boundary: `CUDA_ERROR_STREAM_CAPTURE_ISOLATION`.
pub fn capture_wait(
    p: &Process,
    ctx: &Context,
    s: &Arc<Stream>,
    event: &Arc<Event>,
    flags: u32,
) -> Res<bool> {
    let mut st = p.graphs.st.lock();
    if st.captures.is_empty() {
        return Ok(false);
    }
    let mine = st.stream_capture.get(&key(s)).copied();
    let recorded = st.event_capture.get(&event.handle).cloned();
    match (mine, recorded) {
        (None, None) => Ok(false),
        (Some(id), None) => {
            if flags & 1 == 0 {
                invalidate(&mut st, id);
                return Err(err::STREAM_CAPTURE_ISOLATION);
            }
            drop(st);
            capture_node(p, id, s, NodeKind::EventWait(event.clone()))?;
            Ok(true)
        }
        (Some(id), Some((eid, nodes))) => {
            if id != eid {
                invalidate(&mut st, id);
                invalidate(&mut st, eid);
                return Err(err::STREAM_CAPTURE_MERGE);
            }
            let c = capture_mut(&mut st, id, s)?;
            let cur = &mut c.streams.get_mut(&key(s)).expect("present").1;
            for n in nodes {
                if !cur.contains(&n) {
                    cur.push(n);
                }
            }
            Ok(true)
        }
        (None, Some((eid, nodes))) => {
            if s.kind == StreamKind::Legacy || s.ctx != ctx.handle {
                invalidate(&mut st, eid);
                return Err(err::STREAM_CAPTURE_IMPLICIT);
            }
            let c = st
                .captures
                .get_mut(&eid)
                .ok_or(err::STREAM_CAPTURE_INVALIDATED)?;
            if c.invalid {
                return Err(err::STREAM_CAPTURE_INVALIDATED);
            }
            c.streams.insert(key(s), (s.clone(), nodes));
            st.stream_capture.insert(key(s), eid);
            Ok(true)
        }
    }
}

/// A "potentially unsafe" call (one that may synchronize implicitly: synchronous allocation,
/// free, copy) is prohibited, unless the calling thread's mode is relaxed, while the calling
/// thread has a capture of its own that is not relaxed, or, in global mode, while another thread
/// has a global-mode capture: `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`, and those captures are
/// invalidated.
pub fn unsafe_call(p: &Process) -> Res<()> {
    if p.graphs.capturing.load(Ordering::Acquire) == 0 {
        return Ok(());
    }
    let mut st = p.graphs.st.lock();
    if st.captures.is_empty() {
        return Ok(());
    }
    let mode = MODE.with(|m| m.get());
    if mode == MODE_RELAXED {
        return Ok(());
    }
    let me = thread_id();
    let hit: Vec<u64> = st
        .captures
        .iter()
        .filter(|(_, c)| {
            (c.thread == me && c.mode != MODE_RELAXED)
                || (mode == MODE_GLOBAL && c.thread != me && c.mode == MODE_GLOBAL)
        })
        .map(|(id, _)| *id)
        .collect();
    if hit.is_empty() {
        return Ok(());
    }
    for id in hit {
        invalidate(&mut st, id);
    }
    Err(err::STREAM_CAPTURE_UNSUPPORTED)
}

/// Synchronizing or querying a capturing stream conflicts with its capture in every mode:
/// `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`, the capture invalidated.
pub fn conflicts_stream(p: &Process, s: &Arc<Stream>) -> Res<()> {
    let mut st = p.graphs.st.lock();
    if let Some(&id) = st.stream_capture.get(&key(s)) {
        invalidate(&mut st, id);
        return Err(err::STREAM_CAPTURE_UNSUPPORTED);
    }
    Ok(())
}

/// Synchronizing a context conflicts with every capture in it (from any thread, in any mode).
pub fn conflicts_context(p: &Process, ctx: u64) -> Res<()> {
    let mut st = p.graphs.st.lock();
    let hit: Vec<u64> = st
        .captures
        .iter()
        .filter(|(_, c)| c.ctx == ctx)
        .map(|(id, _)| *id)
        .collect();
    if hit.is_empty() {
        return Ok(());
    }
    for id in hit {
        invalidate(&mut st, id);
    }
    Err(err::STREAM_CAPTURE_UNSUPPORTED)
}

/// Synchronizing or querying an event recorded inside a capture conflicts with that capture.
pub fn conflicts_event(p: &Process, event: u64) -> Res<()> {
    let mut st = p.graphs.st.lock();
    if let Some(&(id, _)) = st.event_capture.get(&event) {
        invalidate(&mut st, id);
        return Err(err::STREAM_CAPTURE_UNSUPPORTED);
    }
    Ok(())
}

/// Ends every capture `s` takes part in when it is destroyed.
pub fn forget_stream(p: &Process, s: &Arc<Stream>) {
    let mut st = p.graphs.st.lock();
    if let Some(&id) = st.stream_capture.get(&key(s)) {
        invalidate(&mut st, id);
        if st.captures[&id].origin == key(s) {
            if let Some(c) = end_capture_state(p, &mut st, id)
                && c.own_graph
            {
                drop(st);
                destroy(p, c.graph).ok();
            }
            return;
        }
        if let Some(c) = st.captures.get_mut(&id) {
            c.streams.remove(&key(s));
        }
        st.stream_capture.remove(&key(s));
    }
}
