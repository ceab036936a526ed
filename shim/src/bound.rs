//! The bound on this process's queued work on a device: while a tenant of a higher class may use
//! the device, the daemon sets a budget of device time (`ControlDevice::queue_budget_us`) and the
//! launch gate keeps what this process has queued ahead on the device within it, so that a
//! revocation for that tenant drains within about the budget (plus the kernel running), not
//! after the whole queue. With no budget (0) none of this runs: a launch costs one more relaxed
//! load in the gate.
//!
//! How much is queued is estimated from checkpoints: CUDA events recorded on the launch's stream
//! every few launches (`EVERY`, more the shorter the kernels, at most 64 launches apart) and
//! queried when the estimate must be known. Queued device time = launches not known complete ×
//! device time per launch, a moving average measured from the checkpoints' own elapsed times
//! (between two checkpoints recorded back to back, or from a start event recorded before the
//! first launch on an empty queue: the device's clock, no host gaps). Before a launch, if the
//! estimate is at or over the budget, the thread waits for the oldest checkpoint (counted as
//! synchronizing, so the daemon does not take the holder for idle), without holding a launch
//! in flight. Until a first measurement, one launch at a time is queued. A kernel longer than
//! the budget runs alone. A thread that comes back from such a wait to an empty queue, and later
//! than the work queued when it began waiting could have lasted (the device ran out of this
//! process's work while the host ran the thread late), counts it in the tenant's `bound_dry`,
//! from which the daemon widens the budget on a busy host.
//!
//! Launches go in *runs*: consecutive launches on one stream. A launch on another stream first
//! closes the run with a checkpoint, so each checkpoint covers exactly the launches of its own
//! stream since the previous one (two threads launching on different streams at once may
//! miscount one launch; an estimate, not a promise). Nothing is recorded into a stream capture:
//! while the process captures, launches are not bounded. A launch in another context of the
//! same device waits for the queue first. Synchronize calls that cover all queued work, and the
//! drain, reset the estimate to empty.
//!
//! Launch path while bounded: one atomic add after the launch, a few relaxed loads before it;
//! a checkpoint (one `cuEventRecord`) every `EVERY` launches. Lock order: the context registry
//! (`crate::contexts`) is never taken while a tracker is held.

use crate::busy::{elapsed, new_event, record, resolve};
use crate::cuda_types::*;
use crate::hooks::real;
use gpumux_common::shm::{AccountingDevice, MAX_DEVICES};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// How much later than its queued work a thread may come back from waiting for room before
/// the empty queue it finds counts as run dry (`bound_dry`): an idle host wakes it within
/// tens of microseconds, a busy one milliseconds late.
const LATE_SLACK: Duration = Duration::from_micros(500);

/// Most launches between two checkpoints.
const MAX_EVERY: u64 = 64;

/// Per-device counters the launch path reads without a lock.
#[repr(align(64))]
struct Counters {
    /// Launches counted so far (bounded ones), monotonic.
    launched: AtomicU64,
    /// Launches known complete (covered by completed checkpoints, or by a synchronize).
    completed: AtomicU64,
    /// `launched` when the last checkpoint was recorded (later launches are not covered yet).
    checked_at: AtomicU64,
    /// Key of the current run's stream (0: none yet).
    run_key: AtomicU64,
    /// Device time per launch, ns (moving average; 0: not measured yet).
    ns_per_launch: AtomicU64,
    /// Launches between checkpoints.
    every: AtomicU64,
    /// The budget last seen, ns.
    budget_ns: AtomicU64,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            launched: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            checked_at: AtomicU64::new(0),
            run_key: AtomicU64::new(0),
            ns_per_launch: AtomicU64::new(0),
            every: AtomicU64::new(1),
            budget_ns: AtomicU64::new(0),
        }
    }
}

static COUNTERS: [Counters; MAX_DEVICES] = [const { Counters::new() }; MAX_DEVICES];

/// A recorded checkpoint, not yet known complete.
struct Checkpoint {
    event: u64,
    /// Its run's stream key.
    key: u64,
    /// Launches it covers (of its stream, since the previous checkpoint of the stream).
    count: u64,
    /// An event of the same stream recorded before these launches, while the queue was not
    /// empty (the previous checkpoint, or a start event): the elapsed time between the two is
    /// these launches' device time. Recycled when this checkpoint completes.
    since: Option<u64>,
    /// Its event is a later checkpoint's `since`: that one recycles it.
    referenced: bool,
}

struct Tracker {
    /// Context of the events (0: none yet).
    ctx: u64,
    /// The current run: its stream handle to record on, and whether that is the launching
    /// thread's per-thread stream (only that thread can name it).
    run_handle: u64,
    run_thread_bound: bool,
    queue: VecDeque<Checkpoint>,
    /// A start event recorded on an empty queue before a run's first launch: (key, event).
    start: Option<(u64, u64)>,
    spare: Vec<u64>,
}

impl Tracker {
    const fn new() -> Self {
        Tracker {
            ctx: 0,
            run_handle: 0,
            run_thread_bound: false,
            queue: VecDeque::new(),
            start: None,
            spare: Vec::new(),
        }
    }
}

static TRACKERS: [Mutex<Tracker>; MAX_DEVICES] =
    [const { Mutex::new(Tracker::new()) }; MAX_DEVICES];

/// Before a launch on `device` (holding its slice, not into a capture) with a budget of
/// `budget_us` (non-zero): waits until the work queued ahead is within the budget. `acct` is
/// the tenant's accounting of the device: a thread waiting here counts as synchronizing (it
/// waits for its own work), and one that comes back to an empty queue counts in `bound_dry`
/// (the daemon widens the budget of a tenant whose queue runs dry on a busy host).
#[inline]
pub(crate) fn before_launch(
    device: usize,
    budget_us: u32,
    stream: CUstream,
    ptsz: bool,
    acct: &AccountingDevice,
) {
    let c = &COUNTERS[device];
    let key = resolve(stream, ptsz).0;
    let out = c
        .launched
        .load(Relaxed)
        .wrapping_sub(c.completed.load(Relaxed));
    let ns = c.ns_per_launch.load(Relaxed);
    if c.run_key.load(Relaxed) == key
        && out != 0
        && ns != 0
        && out.saturating_mul(ns) < u64::from(budget_us) * 1000
    {
        return;
    }
    make_room(device, u64::from(budget_us) * 1000, stream, ptsz, acct);
}

/// After a launch counted by [`before_launch`] succeeded: counts it; records a checkpoint every
/// `EVERY` launches.
#[inline]
pub(crate) fn launched(device: usize) {
    let c = &COUNTERS[device];
    let n = c.launched.fetch_add(1, Relaxed).wrapping_add(1);
    if n.wrapping_sub(c.checked_at.load(Relaxed)) >= c.every.load(Relaxed) {
        checkpoint_now(device);
    }
}

#[cold]
fn checkpoint_now(device: usize) {
    if crate::captures::any() {
        return;
    }
    // The context first: the registry's lock is never taken while holding a tracker.
    let ctx = crate::hooks::current_context();
    let mut t = TRACKERS[device].lock();
    if t.ctx == ctx {
        checkpoint(device, &mut t);
    }
}

#[cold]
fn make_room(device: usize, budget_ns: u64, stream: CUstream, ptsz: bool, acct: &AccountingDevice) {
    let syncing = &acct.syncing;
    if crate::captures::any() {
        return;
    }
    let c = &COUNTERS[device];
    c.budget_ns.store(budget_ns, Relaxed);
    let (key, handle, thread_bound) = resolve(stream, ptsz);
    let ctx = crate::hooks::current_context();
    let mut t = TRACKERS[device].lock();
    if t.ctx != ctx {
        if t.ctx != 0 {
            // Another context of the device: let the queue empty first (its events belong to
            // the old context), then track this one.
            checkpoint_in_context(device, &mut t);
            let events: Vec<u64> = t.queue.iter().map(|q| q.event).collect();
            drop(t);
            for ev in events {
                wait_for(ev, syncing);
            }
            t = TRACKERS[device].lock();
            // Events of the old context are left to it (freed with it).
            *t = Tracker::new();
            let n = c.launched.load(Relaxed);
            c.completed.store(n, Relaxed);
            c.checked_at.store(n, Relaxed);
        }
        t.ctx = ctx;
    }
    if c.run_key.load(Relaxed) != key {
        checkpoint(device, &mut t);
        c.run_key.store(key, Relaxed);
        (t.run_handle, t.run_thread_bound) = (handle, thread_bound);
    }
    // Whether this thread came back from waiting for room later than the work queued when it
    // started waiting could have kept the device busy (by more than [`LATE_SLACK_NS`]).
    let mut late = false;
    loop {
        poll(device, &mut t);
        let out = c
            .launched
            .load(Relaxed)
            .wrapping_sub(c.completed.load(Relaxed));
        if out == 0 {
            if late {
                acct.bound_dry.fetch_add(1, Relaxed);
            }
            // An empty queue: a start event before this launch measures the run's device time.
            if t.start.is_none_or(|(k, _)| k != key)
                && let Some(ev) = take_event(&mut t)
            {
                if record(ev, handle) {
                    if let Some((_, old)) = t.start.replace((key, ev)) {
                        t.spare.push(old);
                    }
                } else {
                    t.spare.push(ev);
                }
            }
            return;
        }
        let ns = c.ns_per_launch.load(Relaxed);
        if ns != 0 && out.saturating_mul(ns) < budget_ns {
            return;
        }
        if c.launched.load(Relaxed) != c.checked_at.load(Relaxed) {
            checkpoint(device, &mut t);
        }
        let Some(oldest) = t.queue.front().map(|q| q.event) else {
            // Nothing to wait for (a checkpoint could not be recorded): do not block.
            return;
        };
        drop(t);
        let queued = Duration::from_nanos(out.saturating_mul(ns));
        let started = Instant::now();
        wait_for(oldest, syncing);
        late = started.elapsed() > queued + LATE_SLACK;
        t = TRACKERS[device].lock();
        if t.ctx != ctx {
            return;
        }
    }
}

/// Waits for `event` as the application's synchronize would (counted as synchronizing).
fn wait_for(event: u64, syncing: &AtomicU32) {
    let sync = real!(cuEventSynchronize);
    syncing.fetch_add(1, SeqCst);
    // SAFETY: an event this module created; if it was recycled meanwhile the wait is for its
    // newer record (later), which only waits longer.
    let _ = unsafe { sync(event as CUevent) };
    syncing.fetch_sub(1, SeqCst);
}

/// Records a checkpoint on the current run covering its launches since the last one (in the
/// tracker's context, which is current).
fn checkpoint(device: usize, t: &mut Tracker) {
    let c = &COUNTERS[device];
    let launched = c.launched.load(Relaxed);
    let count = launched.wrapping_sub(c.checked_at.load(Relaxed));
    if count == 0 || crate::captures::any() {
        return;
    }
    let key = c.run_key.load(Relaxed);
    // Another thread's per-thread stream cannot be named here: the legacy stream waits for it
    // (and for the other blocking streams: a later point, which only overestimates).
    let own = !t.run_thread_bound || resolve(std::ptr::null_mut(), true).0 == key;
    let handle = if own { t.run_handle } else { 0 };
    let Some(ev) = take_event(t).filter(|&ev| {
        record(ev, handle) || {
            t.spare.push(ev);
            false
        }
    }) else {
        // Cannot be tracked (e.g. the stream was destroyed): counted done rather than queued
        // forever.
        c.completed.fetch_add(count, Relaxed);
        c.checked_at.store(launched, Relaxed);
        return;
    };
    let since = match t.queue.iter_mut().rev().find(|q| q.key == key) {
        Some(prev) if !prev.referenced => {
            prev.referenced = true;
            Some(prev.event)
        }
        Some(_) => None,
        None => match t.start {
            Some((k, start)) if k == key => {
                t.start = None;
                Some(start)
            }
            _ => None,
        },
    };
    t.queue.push_back(Checkpoint {
        event: ev,
        key,
        count,
        since,
        referenced: false,
    });
    c.checked_at.store(launched, Relaxed);
}

/// [`checkpoint`] with the tracker's context pushed (the current one is another).
fn checkpoint_in_context(device: usize, t: &mut Tracker) {
    let push = real!(cuCtxPushCurrent_v2);
    let pop = real!(cuCtxPopCurrent_v2);
    // SAFETY: the tracked context is alive (its destruction resets the tracker under this
    // lock, see `forget_context`); the context pushed here is popped again.
    if unsafe { push(t.ctx as CUcontext) } != CUDA_SUCCESS {
        return;
    }
    checkpoint(device, t);
    let mut popped: CUcontext = std::ptr::null_mut();
    // SAFETY: pops what was pushed above.
    unsafe { pop(&mut popped) };
}

/// Takes in the checkpoints that completed: counts their launches complete and measures the
/// device time per launch.
fn poll(device: usize, t: &mut Tracker) {
    let c = &COUNTERS[device];
    let query = real!(cuEventQuery);
    // Keys with an earlier checkpoint still pending: a later one of the same stream waits its
    // turn (its `since` is that one's event).
    let mut pending: Vec<u64> = Vec::new();
    let mut kept = VecDeque::with_capacity(t.queue.len());
    let queue = std::mem::take(&mut t.queue);
    for q in queue {
        // SAFETY: an event this module created and recorded.
        if pending.contains(&q.key) || unsafe { query(q.event as CUevent) } != CUDA_SUCCESS {
            pending.push(q.key);
            kept.push_back(q);
            continue;
        }
        c.completed.fetch_add(q.count, Relaxed);
        if let Some(since) = q.since {
            if let Some(ms) = elapsed(since, q.event) {
                sample(c, (ms * 1e6) as u64 / q.count.max(1));
            }
            t.spare.push(since);
        }
        if !q.referenced {
            t.spare.push(q.event);
        }
    }
    t.queue = kept;
}

/// A measured device time per launch; `EVERY` follows it (a quarter of the budget between
/// checkpoints).
fn sample(c: &Counters, ns: u64) {
    let ns = ns.max(1);
    let old = c.ns_per_launch.load(Relaxed);
    let avg = if old == 0 { ns } else { (3 * old + ns) / 4 };
    c.ns_per_launch.store(avg, Relaxed);
    let every = c.budget_ns.load(Relaxed) / 4 / avg;
    c.every.store(every.clamp(1, MAX_EVERY), Relaxed);
}

fn take_event(t: &mut Tracker) -> Option<u64> {
    t.spare.pop().or_else(new_event)
}

/// Takes `LAUNCHED` before a synchronize call, for [`synchronized`].
#[inline]
pub(crate) fn before_sync(device: usize) -> u64 {
    COUNTERS[device].launched.load(Relaxed)
}

/// A synchronize call on `device` succeeded: if it covered all the work counted (`context`: the
/// whole current context; else the stream `stream` when every queued launch was on it) and no
/// launch was counted meanwhile (`launched_before` from [`before_sync`]), the queue is empty.
pub(crate) fn synchronized(
    device: usize,
    launched_before: u64,
    context: bool,
    stream: Option<(CUstream, bool)>,
) {
    let c = &COUNTERS[device];
    if c.launched.load(Relaxed) == c.completed.load(Relaxed) {
        return;
    }
    let ctx = crate::hooks::current_context();
    let Some(mut t) = TRACKERS[device].try_lock() else {
        return;
    };
    if c.launched.load(Relaxed) != launched_before || t.ctx != ctx {
        return;
    }
    let covers = context
        || stream.is_some_and(|(s, ptsz)| {
            let key = resolve(s, ptsz).0;
            c.run_key.load(Relaxed) == key && t.queue.iter().all(|q| q.key == key)
        });
    if covers {
        empty(device, &mut t);
    }
}

/// Everything queued completed: checkpoints are taken in (measured), the rest counted done.
fn empty(device: usize, t: &mut Tracker) {
    let c = &COUNTERS[device];
    poll(device, t);
    // Whatever did not report complete (a failed query) is done too.
    for q in std::mem::take(&mut t.queue) {
        if let Some(since) = q.since {
            t.spare.push(since);
        }
        t.spare.push(q.event);
    }
    if let Some((_, ev)) = t.start.take() {
        t.spare.push(ev);
    }
    let n = c.launched.load(Relaxed);
    c.completed.store(n, Relaxed);
    c.checked_at.store(n, Relaxed);
}

/// The drain synchronized every context on `device`: nothing is queued.
pub(crate) fn drained(device: usize) {
    let mut t = TRACKERS[device].lock();
    if t.ctx != 0 {
        empty(device, &mut t);
    }
}

/// A context was destroyed: forget what was tracked in it (its events went with it).
pub(crate) fn forget_context(ctx: u64) {
    for (device, m) in TRACKERS.iter().enumerate() {
        let mut t = m.lock();
        if t.ctx == ctx && ctx != 0 {
            *t = Tracker::new();
            let c = &COUNTERS[device];
            let n = c.launched.load(Relaxed);
            c.completed.store(n, Relaxed);
            c.checked_at.store(n, Relaxed);
            c.run_key.store(0, Relaxed);
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
        let c = &COUNTERS[device];
        for a in [&c.launched, &c.completed, &c.checked_at, &c.run_key] {
            a.store(0, Relaxed);
        }
    };
    // SAFETY: `lock_for_fork` locked them on this thread (the caller's contract).
    unsafe { crate::fork::unlock_all(&TRACKERS, child.then_some(forget)) };
}
