//! How much device time this process's work used in its current slice, per device, measured
//! with CUDA events (the device's own clock), reported to the daemon with `Drained` so that a
//! tenant is charged what the device did for it, not the switch around it.
//!
//! A busy period opens with an event recorded before the first launch on a stream in a slice
//! and closes with one recorded where the stream may run dry: before the application
//! synchronizes that stream or its context, and before the watcher's drain. Their elapsed time
//! is what the device spent from the first kernel to the end of the last one; the device idle
//! while the application waited for its work and then launched again falls between periods
//! and is charged to no one. One stream and one context per device are measured in a slice: a
//! launch on another makes the slice unmeasured (`None`: the daemon charges its wall time, the
//! pre-measurement behaviour). The bound on a holder's queued work ([`crate::bound`]) records
//! its own checkpoints on the launch streams.
//!
//! **Idle within a period** (the application's thread late between two launches with no
//! synchronize between them, e.g. descheduled on a busy host) is excluded too, once it is seen
//! to happen. A launch that comes more than [`LATE`] after the previous one on the device is
//! *late*: it turns on *precise* mode for [`PRECISE_HOLD`] (renewed by every late launch, and
//! by a period's end recorded more than [`LATE`] after its last launch), in
//! which an event is (re-)recorded after every launch, where the device will finish the work
//! queued so far. A late launch in precise mode first records a *gap* event: the device's time
//! from the previous launch's after-event to it is what it spent idle waiting for this launch
//! (zero if the queue had not run dry), and it is subtracted when the period closes. The gap
//! of the late launch that turned precise mode on is not measured (it is charged, as before).
//! So is the tail: the device idle from the last launch's work to the period's end event (a
//! drain recorded by a watcher thread that woke late, a synchronize after host work).
//! Device work between launches that is not a launch (an async copy) falls in a measured gap
//! and is not charged: it is not compute.
//!
//! Launches cost, while the period is open, one relaxed atomic load, a host clock read and one
//! relaxed swap here; in precise mode also a lock and one `cuEventRecord` after the launch.
//! Everything else runs at the first launch of a period, at synchronize calls and in the drain.

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
/// A launch this long (host time) after the previous one on its device is late.
const LATE: u64 = 200_000;
/// How long precise mode lasts after a late launch or end, host ns.
const PRECISE_HOLD: u64 = 2_000_000_000;
/// Gaps kept unresolved in a period before completed ones are folded into its idle time (and
/// most kept: a gap beyond it is not measured).
const MAX_GAPS: usize = 64;
/// Host time (CLOCK_MONOTONIC ns) of the last launch into each device's open period.
static LAST_LAUNCH: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];
/// Until when (host ns) launches on each device are measured precisely (0: not).
static PRECISE_UNTIL: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];

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
    /// Precise mode: the event recorded after the last launch (0: none yet).
    after: u64,
    /// Precise mode: (after-event of the launch before a late one, event recorded just before
    /// the late one): the device's idle time between them, to subtract.
    gaps: Vec<(u64, u64)>,
    /// Idle time of gaps already resolved in the open period, ns.
    idle_ns: u64,
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
            after: 0,
            gaps: Vec::new(),
            idle_ns: 0,
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
#[inline]
pub(crate) fn resolve(stream: CUstream, ptsz: bool) -> (u64, u64, bool) {
    match stream as u64 {
        0 if !ptsz => (1, 0, false),
        0 | STREAM_PER_THREAD => (THREAD_KEY.with(|k| *k), STREAM_PER_THREAD, true),
        s => (s, s, false),
    }
}

/// Host CLOCK_MONOTONIC, ns.
#[inline]
fn host_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists (a vDSO call, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A launch measured in precise mode: pass it to [`launched`] once the launch succeeded.
#[must_use]
pub(crate) struct Precise(usize);

/// A launch on `device` (a time-sliced one, while holding the slice) on `stream`, before the
/// driver sees it. `Some` in precise mode: give it to [`launched`] after a successful launch.
#[inline]
pub(crate) fn launch(device: usize, stream: CUstream, ptsz: bool) -> Option<Precise> {
    let open = OPEN[device].load(Relaxed);
    if open == UNMEASURED {
        return None;
    }
    if open == 0 || open != resolve(stream, ptsz).0 {
        return open_period(device, stream, ptsz);
    }
    let now = host_ns();
    let last = LAST_LAUNCH[device].swap(now, Relaxed);
    if now.saturating_sub(last) > LATE {
        return late_launch(device, now);
    }
    (now < PRECISE_UNTIL[device].load(Relaxed)).then_some(Precise(device))
}

/// Whether the calling thread may record on the tracked stream: a legacy or per-thread stream
/// is the current context's.
fn in_context(t: &Tracker) -> bool {
    !(t.key == 1 || t.thread_bound) || crate::hooks::current_context() == t.ctx
}

/// A period's end is recorded (`before_sync`, `drain_begin`): if it comes late after the last
/// launch, the device may have idled in the period's tail, which only precise mode can tell
/// (from the next period on).
fn note_end(device: usize) {
    let now = host_ns();
    if now.saturating_sub(LAST_LAUNCH[device].load(Relaxed)) > LATE {
        PRECISE_UNTIL[device].store(now + PRECISE_HOLD, Relaxed);
    }
}

/// A late launch into the open period: renews precise mode and, if the previous launch's
/// after-event exists, records the gap's end.
#[cold]
fn late_launch(device: usize, now: u64) -> Option<Precise> {
    PRECISE_UNTIL[device].store(now + PRECISE_HOLD, Relaxed);
    let mut t = TRACKERS[device].lock();
    if t.open == 0 || t.unmeasured || !in_context(&t) {
        return None;
    }
    if t.after != 0 {
        if t.gaps.len() >= MAX_GAPS {
            fold_gaps(&mut t);
        }
        if t.gaps.len() < MAX_GAPS
            && let Some(gap_end) = take_event(&mut t)
        {
            if record(gap_end, t.stream) {
                let after = std::mem::replace(&mut t.after, 0);
                t.gaps.push((after, gap_end));
            } else {
                t.spare.push(gap_end);
            }
        }
    }
    Some(Precise(device))
}

/// Precise mode, after a successful launch: (re-)records the after-event behind it.
#[cold]
pub(crate) fn launched(p: Precise) {
    let mut t = TRACKERS[p.0].lock();
    if t.open == 0 || t.unmeasured || !in_context(&t) {
        return;
    }
    let ev = match t.after {
        0 => match take_event(&mut t) {
            Some(ev) => ev,
            None => return,
        },
        ev => ev,
    };
    if record(ev, t.stream) {
        t.after = ev;
    } else {
        t.after = 0;
        t.spare.push(ev);
    }
}

/// Resolves the gaps whose end the device has reached into `idle_ns`, recycling their events.
fn fold_gaps(t: &mut Tracker) {
    let gaps = std::mem::take(&mut t.gaps);
    for (start, end) in gaps {
        match elapsed(start, end) {
            Some(ms) => {
                t.idle_ns += (ms * 1e6) as u64;
                t.spare.extend([start, end]);
            }
            None => t.gaps.push((start, end)),
        }
    }
}

/// Ends precise mode's bookkeeping of the open period (its events back to the spares).
fn reset_gaps(t: &mut Tracker) {
    let gaps = std::mem::take(&mut t.gaps);
    t.spare.extend(gaps.into_iter().flat_map(|(a, b)| [a, b]));
    let after = std::mem::replace(&mut t.after, 0);
    if after != 0 {
        t.spare.push(after);
    }
    t.idle_ns = 0;
}

#[cold]
fn open_period(device: usize, stream: CUstream, ptsz: bool) -> Option<Precise> {
    let now = host_ns();
    LAST_LAUNCH[device].store(now, Relaxed);
    open_period_at(device, stream, ptsz)?;
    (now < PRECISE_UNTIL[device].load(Relaxed)).then_some(Precise(device))
}

/// Opens a period on `stream`'s key (None: not measured; the slice may have become
/// unmeasured).
fn open_period_at(device: usize, stream: CUstream, ptsz: bool) -> Option<()> {
    let (key, handle, thread_bound) = resolve(stream, ptsz);
    let ctx = crate::hooks::current_context();
    let mut t = TRACKERS[device].lock();
    if t.unmeasured {
        return None;
    }
    if t.open != 0 && t.key == key {
        return Some(());
    }
    if t.ctx == 0 || (t.open == 0 && t.key == 0) {
        if t.ctx != ctx {
            t.spare.clear();
        }
        (t.ctx, t.key, t.stream, t.thread_bound) = (ctx, key, handle, thread_bound);
    } else if t.ctx != ctx || t.key != key {
        give_up(device, &mut t);
        return None;
    }
    match take_event(&mut t).filter(|&ev| record(ev, handle)) {
        Some(ev) => {
            t.open = ev;
            OPEN[device].store(key, Relaxed);
            Some(())
        }
        None => {
            give_up(device, &mut t);
            None
        }
    }
}

fn give_up(device: usize, t: &mut Tracker) {
    t.unmeasured = true;
    OPEN[device].store(UNMEASURED, Relaxed);
}

fn take_event(t: &mut Tracker) -> Option<u64> {
    t.spare.pop().or_else(new_event)
}

/// A new timing event in the current context.
pub(crate) fn new_event() -> Option<u64> {
    let create = real!(cuEventCreate, None);
    let mut ev: CUevent = std::ptr::null_mut();
    // SAFETY: valid out-pointer; default flags (timing enabled) in the current context.
    (unsafe { create(&mut ev, 0) } == CUDA_SUCCESS).then_some(ev as u64)
}

/// Records event `ev` on `stream` (a handle value); false if the driver refused.
pub(crate) fn record(ev: u64, stream: u64) -> bool {
    let rec = real!(cuEventRecord, false);
    // SAFETY: an event of the stream's context and a stream handle the application launched on
    // (or a special handle).
    unsafe { rec(ev as CUevent, stream as CUstream) == CUDA_SUCCESS }
}

/// Device ms from `start` to `end` if `end` has completed.
pub(crate) fn elapsed(start: u64, end: u64) -> Option<f64> {
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
    note_end(device);
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
    // The end completed, so every gap recorded before it has too; and in precise mode, the
    // device idle from the last launch's work to the end (a drain or synchronize recorded late)
    // is a gap as well.
    fold_gaps(t);
    let after = std::mem::replace(&mut t.after, 0);
    if after != 0 {
        t.idle_ns += elapsed(after, end).map_or(0, |ms| (ms * 1e6) as u64);
        t.spare.push(after);
    }
    t.busy_ns += ((ms * 1e6) as u64).saturating_sub(t.idle_ns);
    reset_gaps(t);
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
    note_end(device);
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
    reset_gaps(&mut t);
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
    crate::fork::lock_all(&TRACKERS);
}

/// Fork support: release the trackers; in the child, forget the parent's (not its contexts).
///
/// # Safety
/// Only after [`lock_for_fork`] on this thread (the atfork handlers), once.
pub(crate) unsafe fn unlock_after_fork(child: bool) {
    let forget: fn(usize, &mut Tracker) = |device, t| {
        *t = Tracker::new();
        OPEN[device].store(0, Relaxed);
    };
    // SAFETY: `lock_for_fork` locked them on this thread (the caller's contract).
    unsafe { crate::fork::unlock_all(&TRACKERS, child.then_some(forget)) };
}
