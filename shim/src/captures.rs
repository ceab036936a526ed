//! Stream captures in progress in this process. While a stream captures, synchronizing its
//! context (the drain) would invalidate the capture (the driver refuses to synchronize a
//! capturing stream, from any thread, in any capture mode), and launches into it put nothing on
//! the device. So the watcher waits for captures to end before it drains, and the gate lets
//! captured launches through without a slice. Reset in a forked child.

use crate::cuda_types::{CU_STREAM_CAPTURE_STATUS_NONE, CUDA_SUCCESS, CUstream};
use crate::hooks::real;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A capturing stream: its handle, and whether it was named through a per-thread-default-stream
/// entry point. A per-thread default stream (a null handle through such an entry point, or
/// `CU_STREAM_PER_THREAD`) is the capturing thread's own: another thread cannot query it, so it is
/// told apart by the thread.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Capture {
    stream: u64,
    ptsz: bool,
    /// The capturing thread (kernel thread id) for a per-thread default stream, else 0.
    thread: i64,
}

/// `CU_STREAM_PER_THREAD`.
const STREAM_PER_THREAD: u64 = 2;

impl Capture {
    fn new(stream: CUstream, ptsz: bool) -> Self {
        let stream = stream as u64;
        let thread_bound = (ptsz && stream == 0) || stream == STREAM_PER_THREAD;
        let thread = if thread_bound {
            // SAFETY: gettid takes no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_gettid) }
        } else {
            0
        };
        Capture {
            stream,
            ptsz,
            thread,
        }
    }
}

struct Active {
    generation: u32,
    list: Vec<Capture>,
}

static ACTIVE: parking_lot::Mutex<Active> = parking_lot::const_mutex(Active {
    generation: 0,
    list: Vec::new(),
});
/// How many captures are recorded (read without the lock on the launch path).
static COUNT: AtomicU32 = AtomicU32::new(0);
static GENERATION: AtomicU32 = AtomicU32::new(0);

fn with<R>(f: impl FnOnce(&mut Vec<Capture>) -> R) -> R {
    let mut a = ACTIVE.lock();
    let generation = GENERATION.load(Ordering::Acquire);
    if a.generation != generation {
        a.list.clear();
        a.generation = generation;
    }
    let r = f(&mut a.list);
    COUNT.store(a.list.len() as u32, Ordering::Release);
    r
}

/// A capture began on `stream`.
pub(crate) fn begun(stream: CUstream, ptsz: bool) {
    let c = Capture::new(stream, ptsz);
    with(|l| {
        if !l.contains(&c) {
            l.push(c);
        }
    });
}

/// The capture on `stream` ended.
pub(crate) fn ended(stream: CUstream, ptsz: bool) {
    let c = Capture::new(stream, ptsz);
    with(|l| l.retain(|x| *x != c));
}

/// Whether any capture may be in progress (no lock, no driver call).
#[inline]
pub(crate) fn any() -> bool {
    COUNT.load(Ordering::Acquire) != 0
}

/// Asks the driver whether `stream` (a `CUstream` handle's value) captures (`ptsz`: through the
/// per-thread entry point).
pub(crate) fn is_capturing(stream: u64, ptsz: bool) -> bool {
    let stream = stream as CUstream;
    let f = if ptsz {
        real!(cuStreamIsCapturing_ptsz, false)
    } else {
        real!(cuStreamIsCapturing, false)
    };
    let mut status = CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: valid out-pointer.
    let rc = unsafe { f(stream, &mut status) };
    rc == CUDA_SUCCESS && status != CU_STREAM_CAPTURE_STATUS_NONE
}

/// Drain support: waits (up to `limit`) until no capture is in progress. Captures whose stream
/// the driver says no longer captures (it was destroyed, or the capture ended in a way the shim
/// did not see) are forgotten; a per-thread default stream is another thread's and is trusted to
/// end with `cuStreamEndCapture`. Returns whether none is left.
pub(crate) fn wait_until_none(limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let left = with(|l| {
            l.retain(|c| c.thread != 0 || is_capturing(c.stream, c.ptsz));
            l.len()
        });
        if left == 0 {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Fork support: hold the list across `fork`.
pub(crate) fn lock_for_fork() {
    std::mem::forget(ACTIVE.lock());
}

/// Fork support: release after `fork`; in the child, forget the parent's captures.
///
/// # Safety
/// Only after [`lock_for_fork`] on this thread (the atfork handlers).
pub(crate) unsafe fn unlock_after_fork(child: bool) {
    if child {
        GENERATION.fetch_add(1, Ordering::AcqRel);
        COUNT.store(0, Ordering::Release);
    }
    // SAFETY: `lock_for_fork` locked the list on this thread and forgot the guard.
    unsafe { ACTIVE.force_unlock() };
}
