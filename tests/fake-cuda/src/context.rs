//! Contexts: primary contexts (reference counted per device), created contexts, the per-thread
//! current-context stack, and context teardown (synchronise, then release the context's streams,
//! events, modules and memory).
//!
//! Like the real driver, a context occupies device memory of its own from its creation to its
//! destruction (`GpuState::context_bytes`, charged to the process as overhead, never returned by
//! an allocation call); a creation that does not fit fails with `CUDA_ERROR_OUT_OF_MEMORY` and
//! creates nothing. The libraries loaded in the process are loaded into each new context too.

use crate::driver::{Process, process};
use crate::stream::{self, Stream, StreamKind};
use crate::types::{Res, err};
use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

/// A CUDA context.
pub struct Context {
    /// Handle value.
    pub handle: u64,
    /// Device index.
    pub device: u32,
    /// Whether this is the device's primary context.
    pub primary: bool,
    /// `CUctx_flags`.
    pub flags: AtomicU32,
    /// Serialises enqueueing in this context (legacy-stream dependencies are computed under it).
    pub submit: Mutex<()>,
    /// The legacy NULL stream, created on first use.
    pub legacy: OnceLock<Arc<Stream>>,
    /// Every other stream of the context (user streams and per-thread default streams).
    pub streams: Mutex<Vec<Arc<Stream>>>,
    /// `cuCtxSetLimit` values.
    pub limits: Mutex<HashMap<u32, u64>>,
    /// `cuCtxSetCacheConfig` value.
    pub cache_config: AtomicU32,
    /// Sticky error of an asynchronous failure (0 = none).
    pub sticky: AtomicU32,
}

impl Context {
    fn new(handle: u64, device: u32, primary: bool, flags: u32) -> Self {
        let limits = HashMap::from([
            (LIMIT_STACK_SIZE, 1024),
            (LIMIT_PRINTF_FIFO_SIZE, 1 << 20),
            (LIMIT_MALLOC_HEAP_SIZE, 8 << 20),
            (LIMIT_DEV_RUNTIME_SYNC_DEPTH, 2),
            (LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT, 2048),
            (LIMIT_MAX_L2_FETCH_GRANULARITY, 64),
            (LIMIT_PERSISTING_L2_CACHE_SIZE, 0),
        ]);
        Self {
            handle,
            device,
            primary,
            flags: AtomicU32::new(flags),
            submit: Mutex::new(()),
            legacy: OnceLock::new(),
            streams: Mutex::new(Vec::new()),
            limits: Mutex::new(limits),
            cache_config: AtomicU32::new(0),
            sticky: AtomicU32::new(0),
        }
    }

    /// The legacy NULL stream.
    pub fn legacy_stream(&self) -> Arc<Stream> {
        self.legacy
            .get_or_init(|| Stream::spawn(0, self.handle, self.device, StreamKind::Legacy, 0, 0))
            .clone()
    }

    /// Every stream of the context, legacy first if it exists.
    pub fn all_streams(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<Arc<Stream>> = self.legacy.get().cloned().into_iter().collect();
        v.extend(self.streams.lock().iter().cloned());
        v
    }

    /// Waits for all work submitted to the context so far; returns the sticky error if any.
    pub fn synchronize(&self) -> Res<()> {
        for s in self.all_streams() {
            s.wait_all();
        }
        match self.sticky.load(Ordering::Acquire) {
            0 => Ok(()),
            e => Err(e),
        }
    }
}

/// `CUlimit` values.
pub const LIMIT_STACK_SIZE: u32 = 0;
/// `CU_LIMIT_PRINTF_FIFO_SIZE`.
pub const LIMIT_PRINTF_FIFO_SIZE: u32 = 1;
/// `CU_LIMIT_MALLOC_HEAP_SIZE`.
pub const LIMIT_MALLOC_HEAP_SIZE: u32 = 2;
/// `CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH`.
pub const LIMIT_DEV_RUNTIME_SYNC_DEPTH: u32 = 3;
/// `CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT`.
pub const LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT: u32 = 4;
/// `CU_LIMIT_MAX_L2_FETCH_GRANULARITY`.
pub const LIMIT_MAX_L2_FETCH_GRANULARITY: u32 = 5;
/// `CU_LIMIT_PERSISTING_L2_CACHE_SIZE`.
pub const LIMIT_PERSISTING_L2_CACHE_SIZE: u32 = 6;

/// A device's primary context bookkeeping. The handle is stable for the process's lifetime.
pub struct Primary {
    /// Handle value of the primary context.
    pub handle: u64,
    /// Device index.
    pub device: u32,
    /// Retain count.
    pub refcount: u32,
    /// Flags for the next activation (`cuDevicePrimaryCtxSetFlags`).
    pub flags: u32,
    /// Whether the context exists now.
    pub active: bool,
}

impl Primary {
    /// Inactive primary context bookkeeping.
    pub fn new(handle: u64, device: u32) -> Self {
        Self {
            handle,
            device,
            refcount: 0,
            flags: 0,
            active: false,
        }
    }
}

/// Valid `CUctx_flags` bits (scheduling 0..=4 | map host 8 | lmem resize 16 | coredump 32 |
/// user coredump 64 | sync memops 128).
pub const CTX_FLAGS_MASK: u32 = 0x07 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80;

/// Validates context flags.
pub fn check_flags(flags: u32) -> Res<()> {
    if flags & !CTX_FLAGS_MASK != 0 || (flags & 0x7) == 3 || (flags & 0x7) > 4 {
        return Err(err::INVALID_VALUE);
    }
    Ok(())
}

thread_local! {
    /// `(process generation, context stack)`; the top is the current context.
    static STACK: RefCell<(u64, Vec<u64>)> = const { RefCell::new((0, Vec::new())) };
}

/// Runs `f` on the calling thread's context stack. After the thread's stack was destroyed (a
/// thread-exit destructor that runs later, such as a C++ `thread_local` releasing the primary
/// context at process exit, as cuda.core does), the thread has no current context: `f` gets an
/// empty stack, and a driver never panics at exit.
fn with_stack<R>(p: &Process, f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
    let mut f = Some(f);
    let r = STACK.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.0 != p.generation {
            *s = (p.generation, Vec::new());
        }
        f.take().map(|f| f(&mut s.1))
    });
    match (r, f) {
        (Ok(Some(r)), _) => r,
        (_, Some(f)) => f(&mut Vec::new()),
        (_, None) => unreachable!("the stack closure ran but returned nothing"),
    }
}

/// The current context's handle (0 if none).
pub fn current_handle(p: &Process) -> u64 {
    with_stack(p, |s| s.last().copied().unwrap_or(0))
}

/// Sets the current context (replacing the top of the stack; 0 pops it).
pub fn set_current(p: &Process, h: u64) {
    with_stack(p, |s| {
        s.pop();
        if h != 0 {
            s.push(h);
        }
    });
}

/// Pushes a context.
pub fn push(p: &Process, h: u64) {
    with_stack(p, |s| s.push(h));
}

/// Pops the current context.
pub fn pop(p: &Process) -> Option<u64> {
    with_stack(p, |s| s.pop())
}

/// Looks up a live context.
pub fn lookup(p: &Process, h: u64) -> Res<Arc<Context>> {
    p.contexts
        .lock()
        .get(&h)
        .cloned()
        .ok_or(err::INVALID_CONTEXT)
}

/// The current context, or `CUDA_ERROR_INVALID_CONTEXT` (none, or destroyed).
pub fn current(p: &Process) -> Res<Arc<Context>> {
    match current_handle(p) {
        0 => Err(err::INVALID_CONTEXT),
        h => lookup(p, h),
    }
}

/// Initialised process and its current context.
pub fn require() -> Res<(&'static Process, Arc<Context>)> {
    let p = process()?;
    let c = current(p)?;
    Ok((p, c))
}

/// Brings a new context `h` into existence on `device`: charges its device memory, registers
/// it, loads the process's libraries into it. On failure nothing is left behind.
fn bring_up(p: &Process, h: u64, device: u32, primary: bool, flags: u32) -> Res<()> {
    p.gpu.attach(device).map_err(|_| err::INVALID_DEVICE)?;
    let bytes = p.gpu.context_bytes();
    if bytes > 0 {
        p.gpu
            .charge_overhead(device, bytes)
            .map_err(|_| err::OUT_OF_MEMORY)?;
    }
    p.contexts
        .lock()
        .insert(h, Arc::new(Context::new(h, device, primary, flags)));
    if let Err(e) = p.modules.context_created(p, h, device) {
        p.contexts.lock().remove(&h);
        p.gpu.uncharge_overhead(device, bytes);
        return Err(e);
    }
    Ok(())
}

/// Creates a (non-primary) context on `device` and pushes it.
pub fn create(p: &Process, device: u32, flags: u32) -> Res<u64> {
    check_flags(flags)?;
    let h = p.new_handle();
    bring_up(p, h, device, false, flags)?;
    push(p, h);
    Ok(h)
}

/// Retains the primary context of `device` (creating it on the first retain).
pub fn primary_retain(p: &Process, device: u32) -> Res<u64> {
    let mut pr = p.primary[device as usize].lock();
    if !pr.active {
        bring_up(p, pr.handle, device, true, pr.flags)?;
        pr.active = true;
    }
    pr.refcount += 1;
    Ok(pr.handle)
}

/// Releases the primary context; destroys it when the count reaches zero.
pub fn primary_release(p: &Process, device: u32) -> Res<()> {
    let mut pr = p.primary[device as usize].lock();
    if pr.refcount == 0 {
        return Err(err::INVALID_CONTEXT);
    }
    pr.refcount -= 1;
    if pr.refcount == 0 {
        pr.active = false;
        let h = pr.handle;
        drop(pr);
        destroy(p, h)?;
    }
    Ok(())
}

/// Destroys the primary context's resources now, keeping nothing retained.
pub fn primary_reset(p: &Process, device: u32) -> Res<()> {
    let mut pr = p.primary[device as usize].lock();
    pr.refcount = 0;
    pr.flags = 0;
    if pr.active {
        pr.active = false;
        let h = pr.handle;
        drop(pr);
        destroy(p, h)?;
    }
    Ok(())
}

/// Tears a context down: waits for its work, stops its streams, frees its events, modules,
/// memory and its own device memory. The calling thread pops it if it is current.
pub fn destroy(p: &Process, h: u64) -> Res<()> {
    let ctx = p.contexts.lock().remove(&h).ok_or(err::INVALID_CONTEXT)?;
    ctx.synchronize().ok();
    crate::graph::drop_context(p, &ctx);
    for s in ctx.all_streams() {
        s.shutdown();
    }
    ctx.streams.lock().clear();
    p.streams.lock().retain(|_, s| s.ctx != h);
    p.events.lock().retain(|_, e| e.ctx != h);
    p.modules.drop_context(p, h);
    p.mem.free_context(p, h);
    p.gpu.uncharge_overhead(ctx.device, p.gpu.context_bytes());
    stream::forget_per_thread(h);
    with_stack(p, |s| {
        if s.last() == Some(&h) {
            s.pop();
        }
    });
    Ok(())
}
