//! How much device time this process's work used in its current slice, per device, measured
//! with CUDA events (the device's own clock), reported to the daemon with `Drained` so that a
//! tenant is charged what the device did for it, not the switch around it.
//!
//! A busy period opens with an event recorded before the first launch on a stream in a slice
//! and closes with one recorded where the stream may run dry: before the application
//! synchronizes that stream or its context, and before the watcher's drain. Their elapsed time
//! is what the device spent from the first kernel to the end of the last one; the device idle
//! while the application waited for its work and then launched again falls between periods
//! and is charged to no one. Idle *within* a period (the application's thread late between two
//! launches with no synchronize between them) is not seen: an event recorded when the late
//! launch comes lands after the gap, so only an event after every launch could exclude it. One stream and one context per device are
//! measured in a slice: a launch on another makes the slice unmeasured (`None`: the daemon
//! charges its wall time, the pre-measurement behaviour). The per-stream events are also
//! where a bound on a holder's queued work would put its checkpoints.
//!
//! Launches cost one relaxed atomic load here while the period is open; everything else runs
//! at the first launch of a period, at synchronize calls and in the drain.

use crate::cuda_types::*;
use crate::hooks::real;
use gpumux_common::shm::MAX_DEVICES;
use parking_lot::Mutex;
use std::ffi::c_float;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `CU_STREAM_PER_THREAD`.
const STREAM_PER_THREAD: u64 = 2;
/// `OPEN[d]`: the slice on `d` is not measured; launches skip the tracker.
const UNMEASURED: u64 = u64::MAX;

/// Key of the stream whose period is open on each device (0: none, [`UNMEASURED`]).
static OPEN: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];

struct Tracker {
    /// Context of the measured stream (0: nothing launched yet in this slice).
    ctx: u64,
    /// The measured stream: its key, and the handle events are recorded on.
    key: u64,
    stream: u64,
    /// Per-thread default stream of the launching thread: only that thread can name it.
    thread_bound: bool,
    /// The open period's start event.
    open: u64,
    /// Closed periods' device time, ns.
    busy_ns: u64,
    unmeasured: bool,
    /// Spare events of `ctx`.
    spare: Vec<u64>,
}

impl Tracker {
    const fn new() -> Self {
        Tracker {
            ctx: 0,
            key: 0,
            stream: 0,
            thread_bound: false,
            open: 0,
            busy_ns: 0,
            unmeasured: false,
            spare: Vec::new(),
        }
    }
}

static TRACKERS: [Mutex<Tracker>; MAX_DEVICES] =
    [const { Mutex::new(Tracker::new()) }; MAX_DEVICES];

thread_local! {
    static THREAD_KEY: u64 = {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        (NEXT.fetch_add(1, Relaxed) << 8) | STREAM_PER_THREAD
    };
}

/// The stream a launch named: (key, handle to record on, per-thread).
fn resolve(stream: CUstream, ptsz: bool) -> (u64, u64, bool) {
    match stream as u64 {
        0 if !ptsz => (1, 0, false),
        0 | STREAM_PER_THREAD => (THREAD_KEY.with(|k| *k), STREAM_PER_THREAD, true),
        s => (s, s, false),
    }
}

/// A launch on `device` (a time-sliced one, while holding the slice) on `stream`.
#[inline]
pub(crate) fn launch(device: usize, stream: CUstream, ptsz: bool) {
    let open = OPEN[device].load(Relaxed);
    if open == UNMEASURED || (open != 0 && open == resolve(stream, ptsz).0) {
        return;
    }
    open_period(device, stream, ptsz);
}

#[cold]
fn open_period(device: usize, stream: CUstream, ptsz: bool) {
    let (key, handle, thread_bound) = resolve(stream, ptsz);
    let ctx = crate::hooks::current_context();
    let mut t = TRACKERS[device].lock();
    if t.unmeasured || (t.open != 0 && t.key == key) {
        return;
    }
    if t.ctx == 0 || (t.open == 0 && t.key == 0) {
        if t.ctx != ctx {
            t.spare.clear();
        }
        (t.ctx, t.key, t.stream, t.thread_bound) = (ctx, key, handle, thread_bound);
    } else if t.ctx != ctx || t.key != key {
        give_up(device, &mut t);
        return;
    }
    match take_event(&mut t).filter(|&ev| record(ev, handle)) {
        Some(ev) => {
            t.open = ev;
            OPEN[device].store(key, Relaxed);
        }
        None => give_up(device, &mut t),
    }
}

fn give_up(device: usize, t: &mut Tracker) {
    t.unmeasured = true;
    OPEN[device].store(UNMEASURED, Relaxed);
}

fn take_event(t: &mut Tracker) -> Option<u64> {
    if let Some(ev) = t.spare.pop() {
        return Some(ev);
    }
    let create = real!(cuEventCreate, None);
    let mut ev: CUevent = std::ptr::null_mut();
    // SAFETY: valid out-pointer; default flags (timing enabled) in the current context.
    (unsafe { create(&mut ev, 0) } == CUDA_SUCCESS).then_some(ev as u64)
}

fn record(ev: u64, stream: u64) -> bool {
    let rec = real!(cuEventRecord, false);
    // SAFETY: an event of the stream's context and a stream handle the application launched on
    // (or a special handle).
    unsafe { rec(ev as CUevent, stream as CUstream) == CUDA_SUCCESS }
}

/// Device ms from `start` to `end` if `end` has completed.
fn elapsed(start: u64, end: u64) -> Option<f64> {
    let query = real!(cuEventQuery, None);
    let el = real!(cuEventElapsedTime, None);
    let mut ms: c_float = 0.0;
    // SAFETY: two events of one context; valid out-pointer.
    unsafe {
        (query(end as CUevent) == CUDA_SUCCESS
            && el(&mut ms, start as CUevent, end as CUevent) == CUDA_SUCCESS)
            .then_some(f64::from(ms).max(0.0))
    }
}

/// What a synchronize call waits for.
pub(crate) enum Scope {
    /// Every stream of the current context.
    Context,
    /// One stream.
    Stream(CUstream, bool),
}

/// Before a synchronize call on `device`: closes the open period with an end event if the call
/// covers its stream. Pass the result to [`after_sync`].
pub(crate) fn before_sync(device: usize, scope: Scope) -> Option<(usize, u64)> {
    let open = OPEN[device].load(Relaxed);
    if open == 0 || open == UNMEASURED {
        return None;
    }
    let covers = match scope {
        Scope::Context => true,
        Scope::Stream(s, ptsz) => resolve(s, ptsz).0 == open,
    };
    let mut t = TRACKERS[device].lock();
    if !covers || t.open == 0 || (t.thread_bound && THREAD_KEY.with(|k| *k) != t.key) {
        return None;
    }
    let ctx = crate::hooks::current_context();
    if ctx != t.ctx {
        return None;
    }
    let end = take_event(&mut t)?;
    if record(end, t.stream) {
        Some((device, end))
    } else {
        t.spare.push(end);
        None
    }
}

/// After the synchronize call: the period ends where its end event was reached.
pub(crate) fn after_sync(end: Option<(usize, u64)>) {
    let Some((device, end)) = end else { return };
    let mut t = TRACKERS[device].lock();
    close(device, &mut t, end);
}

/// Closes the open period at `end` if that completed (else the period stays open).
fn close(device: usize, t: &mut Tracker, end: u64) -> bool {
    if t.open == 0 {
        t.spare.push(end);
        return true;
    }
    let Some(ms) = elapsed(t.open, end) else {
        t.spare.push(end);
        return false;
    };
    t.busy_ns += (ms * 1e6) as u64;
    let start = std::mem::replace(&mut t.open, 0);
    t.spare.extend([start, end]);
    if !t.unmeasured {
        OPEN[device].store(0, Relaxed);
    }
    true
}

/// Drain, before synchronizing: records the end of the open period (in its context, on its
/// stream, or on the legacy stream for another thread's per-thread stream).
pub(crate) fn drain_begin(device: usize) -> Option<u64> {
    let mut t = TRACKERS[device].lock();
    if t.open == 0 || t.unmeasured {
        return None;
    }
    let push = real!(cuCtxPushCurrent_v2, None);
    let pop = real!(cuCtxPopCurrent_v2, None);
    // SAFETY: the tracked context is alive (its destruction resets the tracker under this
    // lock, see `forget_context`); the context pushed here is popped again.
    if unsafe { push(t.ctx as CUcontext) } != CUDA_SUCCESS {
        return None;
    }
    let stream = if t.thread_bound { 0 } else { t.stream };
    let end = take_event(&mut t).filter(|&ev| record(ev, stream));
    let mut popped: CUcontext = std::ptr::null_mut();
    // SAFETY: pops what was pushed above.
    unsafe { pop(&mut popped) };
    end
}

/// Drain, after synchronizing: the device time of the slice (None: not measured), and a fresh
/// start for the next one.
pub(crate) fn drain_finish(device: usize, end: Option<u64>) -> Option<u64> {
    let mut t = TRACKERS[device].lock();
    let closed = match end {
        Some(end) => close(device, &mut t, end),
        None => t.open == 0,
    };
    let busy = (!t.unmeasured && closed).then_some(t.busy_ns);
    if t.open != 0 {
        let open = std::mem::replace(&mut t.open, 0);
        t.spare.push(open);
    }
    (t.key, t.busy_ns, t.unmeasured) = (0, 0, false);
    OPEN[device].store(0, Relaxed);
    busy
}

/// A context was destroyed: forget what was tracked in it (its events went with it).
pub(crate) fn forget_context(ctx: u64) {
    for (device, m) in TRACKERS.iter().enumerate() {
        let mut t = m.lock();
        if t.ctx == ctx {
            let lost = t.open != 0 || t.busy_ns != 0;
            *t = Tracker {
                unmeasured: lost,
                ..Tracker::new()
            };
            OPEN[device].store(if lost { UNMEASURED } else { 0 }, Relaxed);
        }
    }
}

/// Fork support: hold every tracker across `fork`.
pub(crate) fn lock_for_fork() {
    for m in &TRACKERS {
        std::mem::forget(m.lock());
    }
}

/// Fork support: release the trackers; in the child, forget the parent's (not its contexts).
///
/// # Safety
/// Only after [`lock_for_fork`] on this thread (the atfork handlers), once.
pub(crate) unsafe fn unlock_after_fork(child: bool) {
    for (device, m) in TRACKERS.iter().enumerate() {
        // SAFETY: `lock_for_fork` locked every tracker on this thread and leaked the guards
        // (the caller's contract).
        unsafe { m.force_unlock() };
        if child {
            *m.lock() = Tracker::new();
            OPEN[device].store(0, Relaxed);
        }
    }
}
