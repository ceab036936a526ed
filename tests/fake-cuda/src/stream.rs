//! Streams and events. Each stream has a worker thread that executes its operations in order;
//! kernels take the shared device lock and occupy the device for their duration.
//!
//! Time is the device's, not the worker's: every operation is stamped when it is submitted, and
//! each stream keeps its device clock (when its last operation completed on the device). An
//! operation is ready at the later of the two; a kernel starts at the later of that and the end
//! of the device's previous kernel, and an event's timestamp is the moment its record was ready.
//! So a worker thread that wakes late on a busy host neither delays the device nor skews events.
//! Legacy NULL-stream
//! semantics are implemented by dependencies computed at submission: work on the NULL stream waits
//! for all prior work of the context's blocking streams, and work on a blocking stream waits for
//! prior NULL-stream work (`CU_STREAM_NON_BLOCKING` streams are exempt). The per-thread default
//! stream is a blocking stream per (thread, context).

use crate::context::{self, Context};
use crate::driver::{Process, process};
use crate::types::{Handle, Res, err, hval};
use parking_lot::{Condvar, Mutex};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// `CU_STREAM_NON_BLOCKING`.
pub const STREAM_NON_BLOCKING: u32 = 1;
/// `CU_STREAM_LEGACY` handle.
pub const HANDLE_LEGACY: u64 = 1;
/// `CU_STREAM_PER_THREAD` handle.
pub const HANDLE_PER_THREAD: u64 = 2;

/// What kind of stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The legacy NULL stream.
    Legacy,
    /// A per-thread default stream.
    PerThread,
    /// A stream created by `cuStreamCreate*`.
    User,
}

/// A host function (`CUhostFn`).
pub type HostFn = unsafe extern "C" fn(*mut c_void);
/// A stream callback (`CUstreamCallback`).
pub type StreamCallback = unsafe extern "C" fn(Handle, u32, *mut c_void);

/// A stream operation.
pub enum Op {
    /// A kernel occupying the device for `ns`.
    Kernel {
        /// Duration.
        ns: u64,
    },
    /// Copy `n` bytes (either side may be device or host memory; device ranges are re-validated).
    Copy {
        /// Destination address.
        dst: u64,
        /// Source address.
        src: u64,
        /// Bytes.
        n: usize,
    },
    /// Copy staged host data (pageable source copied at submission) to device memory.
    Staged {
        /// Destination.
        dst: u64,
        /// Data.
        data: Vec<u8>,
    },
    /// Fill `count` elements of `elem` bytes with `value`.
    Memset {
        /// Destination.
        dst: u64,
        /// Value (low `elem` bytes used).
        value: u32,
        /// Element size: 1, 2 or 4.
        elem: usize,
        /// Elements.
        count: usize,
    },
    /// Run a host function.
    Host {
        /// Function.
        f: HostFn,
        /// User data.
        data: usize,
    },
    /// Run a stream callback (`cuStreamAddCallback`).
    Callback {
        /// Function.
        f: StreamCallback,
        /// Stream handle passed back.
        stream: u64,
        /// User data.
        data: usize,
    },
    /// Record an event (timestamp when reached).
    Record {
        /// Event.
        event: Arc<Event>,
        /// Record generation.
        generation: u64,
    },
    /// Wait until `stream` completed op `seq`.
    Wait {
        /// Stream.
        stream: Arc<Stream>,
        /// Sequence number.
        seq: u64,
    },
    /// Stream-ordered free.
    Free {
        /// Device pointer.
        ptr: u64,
    },
    /// Nothing (a synchronisation point).
    Nop,
}

struct Queue {
    /// (sequence number, submission time, operation).
    ops: VecDeque<(u64, u64, Op)>,
    enqueued: u64,
    completed: u64,
    /// Device time at which the recently completed operations completed: (sequence, ns), the
    /// newest last, at most [`DONE_KEPT`] (what a `Wait` on this stream reads).
    done: VecDeque<(u64, u64)>,
    shutdown: bool,
}

/// Same-duration kernels right behind one that the device may queue on its stream's behalf
/// ([`fakegpu::GpuState::queue_kernel_after`]), at most.
const MAX_SAME_BEHIND: u64 = 64;

impl Queue {
    /// Kernels of duration `ns` from `ops[from]` on, with only event records between, up to
    /// [`MAX_SAME_BEHIND`].
    fn same_behind(&self, from: usize, ns: u64) -> u64 {
        let mut n = 0;
        for (_, _, op) in self.ops.iter().skip(from) {
            match op {
                Op::Record { .. } => {}
                Op::Kernel { ns: d } if *d == ns && n < MAX_SAME_BEHIND => n += 1,
                _ => break,
            }
        }
        n
    }
}

/// Kernels a stream keeps queued on the device ahead of the one running. The device's queue is
/// FIFO across processes, so this is also how many kernels of one process may run in a row
/// while another saturates the device: more would survive longer host stalls of a stream's
/// thread, but in longer runs.
const LOOKAHEAD: usize = 2;

/// Completion times a stream keeps for other streams' `Wait`s (an older operation completed
/// before all of these).
const DONE_KEPT: usize = 256;

/// A stream.
pub struct Stream {
    /// Handle value (0 for legacy, an id for others).
    pub handle: u64,
    /// Owning context.
    pub ctx: u64,
    /// Device.
    pub device: u32,
    /// Kind.
    pub kind: StreamKind,
    /// `CUstream_flags`.
    pub flags: u32,
    /// Priority.
    pub priority: i32,
    q: Mutex<Queue>,
    cv: Condvar,
}

/// Nice value of a stream's worker thread where the host permits it.
const WORKER_NICE: libc::c_int = -10;

/// Gives the calling stream worker the CPU weight of a device, where the host permits it: the
/// worker stands in for the GPU's own engines (it completes the stream's work and wakes those
/// waiting for it), which no host load delays on real hardware. At the default weight, a busy
/// host ran it late by about a millisecond per wake-up, and so every synchronize and event
/// wait (2.8 s of 7.4 s runnable-but-waiting beside 4 CPU hogs on 2 cores). A raised nice
/// value (not a real-time class) so that many streams spinning out their last 200 µs cannot
/// starve the host. Without the privilege (`EACCES`/`EPERM`) the worker keeps the default.
fn device_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: changes only this thread's nice value; failure is reported through errno.
    let _denied = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WORKER_NICE) };
}

impl Stream {
    /// Creates a stream and starts its worker.
    pub fn spawn(
        handle: u64,
        ctx: u64,
        device: u32,
        kind: StreamKind,
        flags: u32,
        priority: i32,
    ) -> Arc<Stream> {
        let s = Arc::new(Stream {
            handle,
            ctx,
            device,
            kind,
            flags,
            priority,
            q: Mutex::new(Queue {
                ops: VecDeque::new(),
                enqueued: 0,
                completed: 0,
                done: VecDeque::new(),
                shutdown: false,
            }),
            cv: Condvar::new(),
        });
        let w = s.clone();
        std::thread::Builder::new()
            .name("fakecuda-stream".into())
            .spawn(move || w.worker())
            .expect("spawn stream worker");
        s
    }

    /// Whether the stream synchronises with the legacy NULL stream.
    pub fn is_blocking(&self) -> bool {
        self.kind != StreamKind::Legacy && self.flags & STREAM_NON_BLOCKING == 0
    }

    fn worker(self: Arc<Self>) {
        device_priority();
        // When this stream's last operation completed, on the device's clock.
        let mut clock = 0u64;
        // The next kernel, queued for the device while the current one runs: (sequence, it).
        let mut next: VecDeque<(u64, fakegpu::QueuedKernel)> = VecDeque::new();
        // The ticket of the last kernel while only kernels and event records followed it: the
        // next kernel is queued right behind it (the device may have queued it already).
        let mut chain: Option<u64> = None;
        loop {
            let (seq, submitted, op, more) = {
                let mut q = self.q.lock();
                loop {
                    if let Some((seq, submitted, op)) = q.ops.pop_front() {
                        let more = match op {
                            Op::Kernel { ns } => q.same_behind(0, ns),
                            _ => 0,
                        };
                        break (seq, submitted, op, more);
                    }
                    if q.shutdown {
                        return;
                    }
                    self.cv.wait(&mut q);
                }
            };
            let ready = clock.max(submitted);
            let Ok(p) = process() else { return };
            let result = match op {
                Op::Kernel { ns } => {
                    let queued = match next.front() {
                        Some((s, _)) if *s == seq => Ok(next.pop_front().expect("front").1),
                        _ => p
                            .gpu
                            .queue_kernel_after(self.device, chain, ns, ready, more),
                    };
                    chain = queued.as_ref().ok().map(fakegpu::QueuedKernel::ticket);
                    queued
                        .and_then(|k| {
                            let ticket = k.ticket();
                            p.gpu.run_queued(k, |end| {
                                self.queue_next(p, ticket, end, &mut next);
                            })
                        })
                        .map(|run| run.end_ns)
                        .map_err(|_| err::LAUNCH_FAILED)
                }
                op => {
                    if !matches!(op, Op::Record { .. }) {
                        chain = None;
                    }
                    execute(p, &self, op, ready)
                }
            };
            match result {
                Ok(end) => clock = end,
                Err(e) => {
                    clock = ready;
                    if let Ok(p) = process()
                        && let Ok(c) = context::lookup(p, self.ctx)
                    {
                        // The first error sticks; a later one leaves it as it is.
                        c.sticky
                            .compare_exchange(0, e, Ordering::AcqRel, Ordering::Relaxed)
                            .ok();
                    }
                }
            }
            let mut q = self.q.lock();
            q.completed = seq;
            if q.done.len() == DONE_KEPT {
                q.done.pop_front();
            }
            q.done.push_back((seq, clock));
            self.cv.notify_all();
        }
    }

    /// While a kernel runs (it ends at `end`), does what the device would do next without
    /// waiting for this thread: event records right behind it get their timestamps (visible
    /// when the device reaches them), and the next [`LOOKAHEAD`] kernels (with only records
    /// between) are queued for the device, so that it starts them on time even if this thread
    /// wakes late. The first is ready when this one ends (or when submitted); later ones follow
    /// it in the device's FIFO, hence in stream order.
    fn queue_next(
        &self,
        p: &Process,
        ticket: u64,
        end: u64,
        next: &mut VecDeque<(u64, fakegpu::QueuedKernel)>,
    ) {
        let mut ready = end;
        let mut records = Vec::new();
        let mut kernels = Vec::new();
        {
            let q = self.q.lock();
            for (i, (seq, submitted, op)) in q.ops.iter().enumerate() {
                ready = ready.max(*submitted);
                match op {
                    Op::Record { event, generation } if kernels.is_empty() => {
                        records.push((event.clone(), *generation, ready));
                    }
                    Op::Record { .. } => {}
                    Op::Kernel { ns } => {
                        let at = if kernels.is_empty() {
                            ready
                        } else {
                            *submitted
                        };
                        kernels.push((*seq, *ns, at, q.same_behind(i + 1, *ns)));
                        if kernels.len() == LOOKAHEAD {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        // Outside the queue lock (recording takes the event's lock, then the queue's).
        for (event, generation, at) in records {
            event.complete(generation, at);
        }
        // Each right behind the one before it in this stream (the device may have queued it).
        let mut after = ticket;
        for (seq, ns, at, more) in kernels {
            if let Some((_, k)) = next.iter().find(|(s, _)| *s == seq) {
                after = k.ticket();
                continue;
            }
            match p
                .gpu
                .queue_kernel_after(self.device, Some(after), ns, at, more)
            {
                Ok(k) => {
                    after = k.ticket();
                    next.push_back((seq, k));
                }
                Err(_) => break,
            }
        }
    }

    /// When op `seq` (completed) completed on the device; 0 when it is too old to be known (it
    /// completed before every op this stream remembers, long ago).
    fn completed_at(&self, seq: u64) -> u64 {
        let q = self.q.lock();
        q.done
            .iter()
            .rev()
            .find(|(s, _)| *s <= seq)
            .filter(|(s, _)| *s == seq)
            .map_or(0, |(_, t)| *t)
    }

    /// Appends operations; returns the sequence number of the last one.
    /// Enqueues `ops`, submitted at `submitted` (when the application made the call).
    fn push(&self, ops: Vec<Op>, submitted: u64) -> u64 {
        let mut q = self.q.lock();
        for op in ops {
            q.enqueued += 1;
            let seq = q.enqueued;
            q.ops.push_back((seq, submitted, op));
        }
        self.cv.notify_all();
        q.enqueued
    }

    /// If nothing is queued or running on the stream: its last op's sequence number, and the
    /// device time an op submitted at `submitted` is reached (its clock, or then if later).
    fn idle_at(&self, submitted: u64) -> Option<(u64, u64)> {
        let q = self.q.lock();
        (q.ops.is_empty() && q.completed == q.enqueued).then(|| {
            let clock = q.done.back().map_or(0, |d| d.1);
            (q.completed, clock.max(submitted))
        })
    }

    /// The sequence number of the last submitted op if it has not completed yet.
    pub fn pending_tail(&self) -> Option<u64> {
        let q = self.q.lock();
        (q.enqueued > q.completed).then_some(q.enqueued)
    }

    /// Whether op `seq` has completed.
    pub fn is_done(&self, seq: u64) -> bool {
        self.q.lock().completed >= seq
    }

    /// Waits until op `seq` has completed.
    pub fn wait_for(&self, seq: u64) {
        let mut q = self.q.lock();
        while q.completed < seq {
            self.cv.wait(&mut q);
        }
    }

    /// Waits for everything submitted so far.
    pub fn wait_all(&self) {
        let target = self.q.lock().enqueued;
        self.wait_for(target);
    }

    /// Whether all submitted work has completed.
    pub fn idle(&self) -> bool {
        let q = self.q.lock();
        q.completed >= q.enqueued
    }

    /// Lets the worker exit once the queue is drained.
    pub fn shutdown(&self) {
        let mut q = self.q.lock();
        q.shutdown = true;
        self.cv.notify_all();
    }
}

/// Executes `op`, ready at `ready` on the device's clock; returns when it completed there.
fn execute(p: &Process, s: &Stream, op: Op, ready: u64) -> Res<u64> {
    let now = fakegpu::procid::monotonic_ns;
    Ok(match op {
        Op::Kernel { ns } => {
            p.gpu
                .run_kernel_at(s.device, ns, ready)
                .map_err(|_| err::LAUNCH_FAILED)?
                .end_ns
        }
        Op::Copy { dst, src, n } => {
            p.mem.copy(dst, src, n)?;
            ready
        }
        Op::Staged { dst, data } => {
            p.mem.copy(dst, data.as_ptr() as u64, data.len())?;
            ready
        }
        Op::Memset {
            dst,
            value,
            elem,
            count,
        } => {
            p.mem.memset(dst, value, elem, count)?;
            ready
        }
        // Host work runs on a host thread: the stream waits for it, in host time.
        Op::Host { f, data } => {
            // SAFETY: the application passed this host function and its data for this purpose.
            unsafe { f(data as *mut c_void) };
            ready.max(now())
        }
        Op::Callback { f, stream, data } => {
            // SAFETY: the application passed this callback and its data for this purpose.
            unsafe { f(crate::types::hptr(stream), 0, data as *mut c_void) };
            ready.max(now())
        }
        Op::Record { event, generation } => {
            event.complete(generation, ready);
            ready
        }
        Op::Wait { stream, seq } => {
            stream.wait_for(seq);
            ready.max(stream.completed_at(seq))
        }
        Op::Free { ptr } => {
            p.mem.free_now(p, ptr)?;
            ready
        }
        Op::Nop => ready,
    })
}

/// Submits `op` to `s` in context `ctx` with legacy-stream dependencies; returns its sequence.
pub fn submit(ctx: &Context, s: &Arc<Stream>, op: Op) -> u64 {
    submit_all(ctx, s, vec![op])
}

/// Submits `batch` to `s` as one unit (nothing else is enqueued between its ops, e.g. a graph
/// launch) with legacy-stream dependencies; returns the sequence of its last op (the ops have
/// consecutive sequence numbers).
///
/// The work is stamped as submitted when the call was made, before the fake's own locks: a
/// device sees work when the application's thread hands it over, and the fake's stream threads
/// (which a GPU does not have) holding a lock on a busy host must not delay it.
pub fn submit_all(ctx: &Context, s: &Arc<Stream>, batch: Vec<Op>) -> u64 {
    let submitted = fakegpu::procid::monotonic_ns();
    let _g = ctx.submit.lock();
    let mut ops = dependencies(ctx, s);
    ops.extend(batch);
    s.push(ops, submitted)
}

/// The `Wait`s legacy-stream semantics put before new work on `s`. Caller holds `ctx.submit`.
fn dependencies(ctx: &Context, s: &Arc<Stream>) -> Vec<Op> {
    let mut ops = Vec::new();
    if s.kind == StreamKind::Legacy {
        for o in ctx.streams.lock().iter() {
            if o.is_blocking()
                && let Some(seq) = o.pending_tail()
            {
                ops.push(Op::Wait {
                    stream: o.clone(),
                    seq,
                });
            }
        }
    } else if s.is_blocking()
        && let Some(l) = ctx.legacy.get()
        && let Some(seq) = l.pending_tail()
    {
        ops.push(Op::Wait {
            stream: l.clone(),
            seq,
        });
    }
    ops
}

/// Submits `op` and waits for it (synchronous API calls).
pub fn submit_sync(ctx: &Context, s: &Arc<Stream>, op: Op) -> Res<()> {
    let seq = submit(ctx, s, op);
    s.wait_for(seq);
    match ctx.sticky.load(Ordering::Acquire) {
        0 => Ok(()),
        e => Err(e),
    }
}

thread_local! {
    static PER_THREAD: RefCell<PerThread> = RefCell::new(PerThread::default());
}

#[derive(Default)]
struct PerThread {
    generation: u64,
    streams: HashMap<u64, Arc<Stream>>,
}

impl Drop for PerThread {
    fn drop(&mut self) {
        for s in self.streams.values() {
            s.shutdown();
        }
    }
}

/// The calling thread's per-thread default stream in `ctx`.
pub fn per_thread(p: &Process, ctx: &Context) -> Arc<Stream> {
    PER_THREAD.with(|t| {
        let mut t = t.borrow_mut();
        if t.generation != p.generation {
            t.generation = p.generation;
            t.streams.clear();
        }
        t.streams
            .entry(ctx.handle)
            .or_insert_with(|| {
                let s = Stream::spawn(
                    HANDLE_PER_THREAD,
                    ctx.handle,
                    ctx.device,
                    StreamKind::PerThread,
                    0,
                    0,
                );
                ctx.streams.lock().push(s.clone());
                s
            })
            .clone()
    })
}

/// Forgets the calling thread's per-thread stream of a destroyed context.
pub fn forget_per_thread(ctx: u64) {
    PER_THREAD
        .try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                t.streams.remove(&ctx);
            }
        })
        .ok();
}

/// Resolves a `CUstream` argument: NULL is the legacy stream (or the per-thread stream for
/// `_ptsz`/`_ptds` entry points), `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` are the special
/// handles, anything else must be a live stream.
pub fn resolve(p: &Process, h: Handle, ptds: bool) -> Res<(Arc<Context>, Arc<Stream>)> {
    match hval(h) {
        0 | HANDLE_LEGACY | HANDLE_PER_THREAD => {
            let ctx = context::current(p)?;
            let per_thread_stream = hval(h) == HANDLE_PER_THREAD || (hval(h) == 0 && ptds);
            let s = if per_thread_stream {
                per_thread(p, &ctx)
            } else {
                ctx.legacy_stream()
            };
            Ok((ctx, s))
        }
        v => {
            let s = p
                .streams
                .lock()
                .get(&v)
                .cloned()
                .ok_or(err::INVALID_HANDLE)?;
            let ctx = context::lookup(p, s.ctx).map_err(|_| err::INVALID_HANDLE)?;
            Ok((ctx, s))
        }
    }
}

/// `CU_EVENT_DISABLE_TIMING`.
pub const EVENT_DISABLE_TIMING: u32 = 2;

/// An event.
pub struct Event {
    /// Handle.
    pub handle: u64,
    /// Context.
    pub ctx: u64,
    /// `CUevent_flags`.
    pub flags: u32,
    st: Mutex<EventState>,
}

#[derive(Default)]
struct EventState {
    generation: u64,
    recorded: Option<(Arc<Stream>, u64)>,
    time_ns: Option<u64>,
}

/// Event status.
pub enum EventStatus {
    /// Never recorded.
    NotRecorded,
    /// Recorded, not reached yet.
    Pending(Arc<Stream>, u64),
    /// Reached at this CLOCK_MONOTONIC time (on the device's clock).
    Done(u64),
}

impl Event {
    /// A new, unrecorded event.
    pub fn new(handle: u64, ctx: u64, flags: u32) -> Self {
        Self {
            handle,
            ctx,
            flags,
            st: Mutex::new(EventState::default()),
        }
    }

    /// Records the event on `s` (replacing a previous record).
    pub fn record(self: &Arc<Self>, ctx: &Context, s: &Arc<Stream>) {
        // Submitted when called, like other work (see `submit_all`).
        let submitted = fakegpu::procid::monotonic_ns();
        // Hold the event state while submitting so the record generation and sequence agree.
        let mut st = self.st.lock();
        st.generation += 1;
        st.time_ns = None;
        let generation = st.generation;
        let _g = ctx.submit.lock();
        let mut ops = dependencies(ctx, s);
        // On an idle stream the device reaches the record at once: no need to wake its thread
        // (which would cost a host wake-up before the work that follows).
        if ops.is_empty()
            && let Some((seq, at)) = s.idle_at(submitted)
        {
            st.time_ns = Some(at);
            st.recorded = Some((s.clone(), seq));
            return;
        }
        ops.push(Op::Record {
            event: self.clone(),
            generation,
        });
        let seq = s.push(ops, submitted);
        st.recorded = Some((s.clone(), seq));
    }

    /// Starts a record made as part of a larger submission (a graph's event record node): the
    /// returned op must be submitted, then [`Self::recorded_at`] called with its sequence.
    pub fn record_op(self: &Arc<Self>) -> (Op, u64) {
        let mut st = self.st.lock();
        st.generation += 1;
        st.time_ns = None;
        let generation = st.generation;
        (
            Op::Record {
                event: self.clone(),
                generation,
            },
            generation,
        )
    }

    /// Completes [`Self::record_op`]: the record of `generation` is op `seq` of `s` (ignored if
    /// the event was recorded again meanwhile).
    pub fn recorded_at(&self, generation: u64, s: &Arc<Stream>, seq: u64) {
        let mut st = self.st.lock();
        if st.generation == generation {
            st.recorded = Some((s.clone(), seq));
        }
    }

    /// The record of `generation` was reached at `device_ns` (the device's clock).
    fn complete(&self, generation: u64, device_ns: u64) {
        let mut st = self.st.lock();
        if st.generation == generation {
            st.time_ns = Some(device_ns);
        }
    }

    /// Current status: reached once the device's clock passed its timestamp (which the stream
    /// may know before its thread gets there).
    pub fn status(&self) -> EventStatus {
        let st = self.st.lock();
        let now = fakegpu::procid::monotonic_ns();
        match &st.recorded {
            None => EventStatus::NotRecorded,
            Some((s, seq)) => match st.time_ns {
                Some(t) if t <= now => EventStatus::Done(t),
                None if s.is_done(*seq) => EventStatus::Done(0),
                _ => EventStatus::Pending(s.clone(), *seq),
            },
        }
    }

    /// Waits for the last record to be reached: until its timestamp on the device when that is
    /// known, else until its stream gets there.
    pub fn synchronize(&self) {
        let known = self.st.lock().time_ns;
        match known {
            Some(t) => fakegpu::procid::sleep_until(t),
            None => {
                if let EventStatus::Pending(s, seq) = self.status() {
                    s.wait_for(seq);
                }
                // Its timestamp may have been set (in the future) meanwhile.
                if let Some(t) = self.st.lock().time_ns {
                    fakegpu::procid::sleep_until(t);
                }
            }
        }
    }

    /// The timestamp of the last record: `Err(CUDA_ERROR_INVALID_HANDLE)` if never recorded,
    /// `Ok(None)` if not reached yet.
    pub fn time_ns(&self) -> Res<Option<u64>> {
        let st = self.st.lock();
        let now = fakegpu::procid::monotonic_ns();
        match (&st.recorded, st.time_ns) {
            (None, _) => Err(err::INVALID_HANDLE),
            (Some(_), t) => Ok(t.filter(|&t| t <= now)),
        }
    }

    /// The `Wait` dependency a stream must take to wait for this event (`None` if unrecorded).
    pub fn dependency(&self) -> Option<(Arc<Stream>, u64)> {
        self.st.lock().recorded.clone()
    }
}

/// Submits a wait for `event` on `s`.
pub fn wait_event(ctx: &Context, s: &Arc<Stream>, event: &Event) {
    if let Some((stream, seq)) = event.dependency()
        && !stream.is_done(seq)
    {
        submit(ctx, s, Op::Wait { stream, seq });
    }
}
