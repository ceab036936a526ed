//! Per-process driver state ([`Process`]): created by `cuInit`, dropped (leaked, never touched
//! again) in a forked child so that the child is a new process for the fake and must call
//! `cuInit` itself. Owns the handle registries and the device-level objects (primary contexts,
//! memory pools).

use crate::context::{Context, Primary};
use crate::memory::MemState;
use crate::module::Modules;
use crate::stream::{Event, Stream};
use crate::types::{Res, err};
use fakegpu::GpuState;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Everything the fake driver knows about the calling process.
pub struct Process {
    /// Distinguishes this process incarnation (thread-locals of a forked parent are stale).
    pub generation: u64,
    /// The shared simulated devices.
    pub gpu: GpuState,
    /// Duration of a kernel that is not `spin` (`FAKEGPU_KERNEL_NS`).
    pub kernel_ns: u64,
    next_handle: AtomicU64,
    /// Live contexts by handle.
    pub contexts: Mutex<HashMap<u64, Arc<Context>>>,
    /// Primary context bookkeeping per device.
    pub primary: Vec<Mutex<Primary>>,
    /// User streams by handle.
    pub streams: Mutex<HashMap<u64, Arc<Stream>>>,
    /// Events by handle.
    pub events: Mutex<HashMap<u64, Arc<Event>>>,
    /// Modules, libraries, functions, kernels.
    pub modules: Modules,
    /// Allocations, host memory, VMM, pools, arrays.
    pub mem: MemState,
    /// Graphs, executable graphs, stream captures, graph memory pools.
    pub graphs: crate::graph::Graphs,
}

static PROCESS: AtomicPtr<Process> = AtomicPtr::new(std::ptr::null_mut());
static GENERATION: AtomicU64 = AtomicU64::new(1);
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

extern "C" fn atfork_child() {
    // The child is a new process: forget (leak) the parent's state without touching its locks.
    PROCESS.store(std::ptr::null_mut(), Ordering::SeqCst);
}

/// The initialised process state, or `CUDA_ERROR_NOT_INITIALIZED`.
pub fn process() -> Res<&'static Process> {
    let p = PROCESS.load(Ordering::Acquire);
    if p.is_null() {
        Err(err::NOT_INITIALIZED)
    } else {
        // SAFETY: a non-null pointer comes from Box::leak in `init` and is never freed.
        Ok(unsafe { &*p })
    }
}

/// `cuInit`: opens the shared state (creating it if needed). Idempotent.
pub fn init() -> Res<()> {
    if !PROCESS.load(Ordering::Acquire).is_null() {
        return Ok(());
    }
    let _g = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !PROCESS.load(Ordering::Acquire).is_null() {
        return Ok(());
    }
    static ATFORK: std::sync::Once = std::sync::Once::new();
    ATFORK.call_once(|| {
        // SAFETY: registering a child handler that only stores to an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
    });
    let gpu = match GpuState::open_default() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("fake libcuda: {e}");
            return Err(err::NO_DEVICE);
        }
    };
    let kernel_ns = std::env::var("FAKEGPU_KERNEL_NS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(5000);
    let n = gpu.device_count();
    let next_handle = AtomicU64::new(1);
    let new = |c: &AtomicU64| handle_value(c.fetch_add(1, Ordering::Relaxed));
    let primary = (0..n)
        .map(|d| Mutex::new(Primary::new(new(&next_handle), d)))
        .collect();
    let pools = (0..n).map(|_| new(&next_handle)).collect();
    let p = Process {
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        kernel_ns,
        contexts: Mutex::new(HashMap::new()),
        primary,
        streams: Mutex::new(HashMap::new()),
        events: Mutex::new(HashMap::new()),
        modules: Modules::default(),
        mem: MemState::new(pools),
        graphs: crate::graph::Graphs::new(n),
        gpu,
        next_handle,
    };
    PROCESS.store(Box::into_raw(Box::new(p)), Ordering::Release);
    Ok(())
}

fn handle_value(n: u64) -> u64 {
    // Looks like a heap pointer, 16-byte aligned, never 0/1/2 (the special stream handles).
    0x5f00_0000_0000 + n * 16
}

impl Process {
    /// A fresh handle value, unique in this process.
    pub fn new_handle(&self) -> u64 {
        handle_value(self.next_handle.fetch_add(1, Ordering::Relaxed))
    }

    /// Validates a `CUdevice` ordinal.
    pub fn device(&self, dev: i32) -> Res<u32> {
        if dev >= 0 && (dev as u32) < self.gpu.device_count() {
            Ok(dev as u32)
        } else {
            Err(err::INVALID_DEVICE)
        }
    }
}
