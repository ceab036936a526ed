//! The device execution queue: one kernel at a time per device across all processes, in FIFO
//! order of arrival, on the device's own timeline.
//!
//! A ticket queue lives in the state file. Its short critical sections (enqueue, start, release,
//! skipping dead entries) are guarded by a process-shared *robust* pthread mutex, so a process
//! killed inside one cannot wedge the device. Waiters sleep on a shared (non-private) futex bumped
//! on every change, with a timeout: when the head of the queue has not moved for
//! [`RECOVERY_CHECK_NS`], a waiter checks the liveness (pid + start time) of the entries ahead of
//! it and skips the dead ones, so a holder or waiter that dies is recovered within about two check
//! periods; a dead holder's kernel is aborted there (the device is free from then on).
//! A releasing process that wants the device again queues behind the current waiters, which is
//! what makes two saturating processes split the device evenly.
//!
//! Like a real GPU, the device does not wait for the host. Each entry carries its kernel's
//! duration and the moment it was ready; a kernel starts at the later of that and the end of the
//! previous one (`last_end_ns`), not when its host thread got the lock. A stream queues its next
//! kernel while the current one runs ([`enqueue`] early), the device queues the stream's further
//! submitted kernels of the same duration itself as each starts ([`enqueue_after`]), and a head
//! entry that its owner has not started [`START_GRACE_NS`] after it became the head is started
//! by the next waiter on the owner's behalf; once a started kernel has ended (plus [`OVERRUN_GRACE_NS`]) and its holder has
//! not released (stopped, or descheduled), waiters take the device over. So queued kernels run
//! back to back whatever the host's threads do, and a late owner finds its kernel already run
//! ([`Turn::Passed`]).

use crate::layout::{LockQueue, QUEUE_CAP, QueueEntry};
use crate::procid;
use std::sync::atomic::{AtomicU32, Ordering};

/// How long the queue head may stay unchanged before waiters check the liveness of the entries
/// ahead of them.
pub const RECOVERY_CHECK_NS: u64 = 20_000_000;

/// How long past its kernel's end a holder may keep the device before waiters take over.
pub const OVERRUN_GRACE_NS: u64 = 2_000_000;

/// How long a head entry may stay unstarted (its owner's thread late) before a waiter starts its
/// kernel on the device on the owner's behalf.
pub const START_GRACE_NS: u64 = 1_000_000;

/// Initialises the queue's robust, process-shared mutex (creator only, under the file lock).
pub fn init(q: &LockQueue) -> std::io::Result<()> {
    crate::robust::init(&q.mutex)
}

/// Locks the queue. A holder that died inside a critical section left the queue consistent (every
/// critical section keeps it so at each store), so there is nothing to repair.
struct QueueMutex<'a> {
    _held: crate::robust::Guard<'a>,
}

impl<'a> QueueMutex<'a> {
    fn lock(q: &'a LockQueue) -> Self {
        Self {
            _held: crate::robust::lock(&q.mutex),
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT (shared: no FUTEX_PRIVATE_FLAG, so other processes can wake it) on an
    // aligned u32 in the shared mapping with a valid relative timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE (shared) on an aligned u32 in the shared mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Decrements without going below zero.
pub fn saturating_dec(a: &AtomicU32) {
    a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
        .ok();
}

/// Holding the device. Dropping it releases the device to the next waiter.
pub struct DeviceLockGuard<'a> {
    q: &'a LockQueue,
    ticket: u64,
}

impl DeviceLockGuard<'_> {
    /// Records that this holder counts itself in the device's `running` counter (so that the
    /// counter is corrected if the holder dies).
    pub fn mark_running(&self) {
        self.entry().running.store(1, Ordering::Release);
    }

    /// Starts this holder's kernel on the device timeline (unless a waiter already did on its
    /// behalf); returns its `(start, end)` there.
    pub fn start_kernel(&self) -> (u64, u64) {
        let _m = QueueMutex::lock(self.q);
        start_entry(self.q, self.entry())
    }

    /// Undoes [`Self::mark_running`], decrementing `running` unless a waiter that took the
    /// device over (the holder was late) already did.
    pub fn finish_running(&self, running: &AtomicU32) {
        if self.entry().running.swap(0, Ordering::AcqRel) == 1 {
            saturating_dec(running);
        }
    }

    fn entry(&self) -> &crate::layout::QueueEntry {
        &self.q.entries[(self.ticket % QUEUE_CAP as u64) as usize]
    }

    /// This holder's ticket.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }
}

impl Drop for DeviceLockGuard<'_> {
    fn drop(&mut self) {
        {
            let _m = QueueMutex::lock(self.q);
            if self.q.head.load(Ordering::Acquire) == self.ticket {
                // Hand over, skipping entries of processes that have certainly exited (cheap
                // check; zombies and the like are left to the waiters' timed check).
                let mut head = self.ticket + 1;
                let tail = self.q.tail.load(Ordering::Acquire);
                while head < tail {
                    let e = &self.q.entries[(head % QUEUE_CAP as u64) as usize];
                    if !procid::certainly_gone(e.pid.load(Ordering::Acquire)) {
                        break;
                    }
                    head += 1;
                }
                self.q.head.store(head, Ordering::Release);
            }
            self.q.seq.fetch_add(1, Ordering::AcqRel);
        }
        futex_wake_all(&self.q.seq);
    }
}

/// Takes the device from a holder whose kernel ended more than [`OVERRUN_GRACE_NS`] ago
/// (`head`/`end_ns` as observed). Returns whether it did.
fn expire_late_holder(q: &LockQueue, running: &AtomicU32, head: u64, end_ns: u64) -> bool {
    let expired = {
        let _m = QueueMutex::lock(q);
        let e = &q.entries[(head % QUEUE_CAP as u64) as usize];
        if q.head.load(Ordering::Acquire) != head || e.end_ns.load(Ordering::Acquire) != end_ns {
            false
        } else {
            if e.running.swap(0, Ordering::AcqRel) == 1 {
                saturating_dec(running);
            }
            q.head.store(head + 1, Ordering::Release);
            q.seq.fetch_add(1, Ordering::AcqRel);
            true
        }
    };
    if expired {
        futex_wake_all(&q.seq);
    }
    expired
}

/// Skips dead entries at the head of the queue, up to (not including) `limit`.
fn recover(q: &LockQueue, running: &AtomicU32, limit: u64) {
    let changed = {
        let _m = QueueMutex::lock(q);
        let mut changed = false;
        let mut last_dead: Option<(u32, u64)> = None;
        loop {
            let head = q.head.load(Ordering::Acquire);
            if head >= limit || head >= q.tail.load(Ordering::Acquire) {
                break;
            }
            let e = &q.entries[(head % QUEUE_CAP as u64) as usize];
            let id = (
                e.pid.load(Ordering::Acquire),
                e.start_time.load(Ordering::Acquire),
            );
            if last_dead != Some(id) && procid::is_alive(id.0, id.1) {
                break;
            }
            last_dead = Some(id);
            if e.running.swap(0, Ordering::AcqRel) == 1 {
                saturating_dec(running);
            }
            // A dead process's kernel is aborted: the device is free from now on.
            let now = procid::monotonic_ns();
            if e.end_ns.load(Ordering::Acquire) > now
                && q.last_end_ns.load(Ordering::Acquire) == e.end_ns.load(Ordering::Acquire)
            {
                q.last_end_ns.store(now, Ordering::Release);
                e.end_ns.store(now, Ordering::Release);
            }
            q.head.store(head + 1, Ordering::Release);
            changed = true;
        }
        if changed {
            q.seq.fetch_add(1, Ordering::AcqRel);
        }
        changed
    };
    if changed {
        futex_wake_all(&q.seq);
    }
}

/// Starts `e` (the head) on the device timeline if it has not started; returns `(start, end)`.
/// Caller holds the queue mutex.
fn start_entry(q: &LockQueue, e: &QueueEntry) -> (u64, u64) {
    let duration = e.duration_ns.load(Ordering::Acquire);
    let end = e.end_ns.load(Ordering::Acquire);
    if end != 0 {
        return (end.saturating_sub(duration), end);
    }
    let start = q
        .last_end_ns
        .load(Ordering::Acquire)
        .max(e.ready_ns.load(Ordering::Acquire));
    let end = start + duration;
    q.last_end_ns.store(end, Ordering::Release);
    e.end_ns.store(end, Ordering::Release);
    // The device has the stream's next kernel too (submitted, same duration, ready when this
    // one ends): it queues it now, whether or not the stream's thread is awake to.
    let more = e.more.load(Ordering::Acquire);
    if more > 0 && e.next.load(Ordering::Acquire) == 0 {
        let next = Kernel {
            pid: e.pid.load(Ordering::Acquire),
            start_time: e.start_time.load(Ordering::Acquire),
            duration_ns: duration,
            ready_ns: end,
            more: more - 1,
        };
        if let Some(ticket) = push_locked(q, next) {
            e.next.store(ticket + 1, Ordering::Release);
        }
    }
    (start, end)
}

/// Starts the head entry `head` on its late owner's behalf. Returns whether it did.
fn start_for_owner(q: &LockQueue, head: u64) -> bool {
    let started = {
        let _m = QueueMutex::lock(q);
        let e = &q.entries[(head % QUEUE_CAP as u64) as usize];
        if q.head.load(Ordering::Acquire) != head || e.end_ns.load(Ordering::Acquire) != 0 {
            false
        } else {
            start_entry(q, e);
            q.seq.fetch_add(1, Ordering::AcqRel);
            true
        }
    };
    if started {
        futex_wake_all(&q.seq);
    }
    started
}

/// A kernel to queue: its owner, duration, when it is ready, and how many kernels of the same
/// duration its stream has queued right behind it ([`QueueEntry::more`]).
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Owner pid.
    pub pid: u32,
    /// Owner start time.
    pub start_time: u64,
    /// Duration on the device.
    pub duration_ns: u64,
    /// When it is ready.
    pub ready_ns: u64,
    /// Same-duration kernels right behind it in its stream.
    pub more: u64,
}

/// Appends `k` at the tail (caller holds the queue mutex); None when the queue is full.
fn push_locked(q: &LockQueue, k: Kernel) -> Option<u64> {
    let head = q.head.load(Ordering::Acquire);
    let tail = q.tail.load(Ordering::Acquire);
    if tail - head >= QUEUE_CAP as u64 {
        return None;
    }
    let e = &q.entries[(tail % QUEUE_CAP as u64) as usize];
    e.pid.store(k.pid, Ordering::Release);
    e.start_time.store(k.start_time, Ordering::Release);
    e.running.store(0, Ordering::Release);
    e.end_ns.store(0, Ordering::Release);
    e.duration_ns.store(k.duration_ns, Ordering::Release);
    e.ready_ns.store(k.ready_ns, Ordering::Release);
    e.more.store(k.more, Ordering::Release);
    e.next.store(0, Ordering::Release);
    e.ticket.store(tail, Ordering::Release);
    q.tail.store(tail + 1, Ordering::Release);
    Some(tail)
}

/// Queues kernel `k` for the device; returns its ticket (pass it to [`wait`]). A stream may
/// queue its next kernel while the current one runs.
pub fn enqueue(q: &LockQueue, running: &AtomicU32, k: Kernel) -> u64 {
    enqueue_after(q, running, None, k)
}

/// [`enqueue`] for the kernel right behind ticket `prev` in its stream: if the device already
/// queued it on the stream's behalf (when `prev` started, see [`QueueEntry::more`]), that
/// ticket; otherwise a new one, remembered in `prev`'s entry so that the device does not queue
/// it again. So a stream's queued kernels keep their place in the device's FIFO however late
/// its host thread is, as on a GPU, whose queue holds the work once it is submitted.
pub fn enqueue_after(q: &LockQueue, running: &AtomicU32, prev: Option<u64>, k: Kernel) -> u64 {
    loop {
        let seq = q.seq.load(Ordering::Acquire);
        {
            let _m = QueueMutex::lock(q);
            let prev = prev
                .map(|t| (t, &q.entries[(t % QUEUE_CAP as u64) as usize]))
                .filter(|(t, e)| e.ticket.load(Ordering::Acquire) == *t);
            if let Some((_, e)) = prev {
                let next = e.next.load(Ordering::Acquire);
                if next != 0 {
                    let n = &q.entries[((next - 1) % QUEUE_CAP as u64) as usize];
                    if n.ticket.load(Ordering::Acquire) == next - 1 {
                        n.more.fetch_max(k.more, Ordering::AcqRel);
                    }
                    return next - 1;
                }
            }
            if let Some(ticket) = push_locked(q, k) {
                if let Some((_, e)) = prev {
                    e.next.store(ticket + 1, Ordering::Release);
                }
                return ticket;
            }
        }
        // Queue full: wait for progress, skipping dead entries.
        futex_wait(&q.seq, seq, RECOVERY_CHECK_NS);
        recover(q, running, u64::MAX);
    }
}

/// What waiting for a ticket came to.
pub enum Turn<'a> {
    /// The caller holds the device; its kernel is started with [`DeviceLockGuard::start_kernel`].
    Hold(DeviceLockGuard<'a>),
    /// The caller's thread came late: the device ran its kernel meanwhile, `(start, end)`, and
    /// moved on (or it was skipped as dead: `None`).
    Passed(Option<(u64, u64)>),
}

/// Waits until `ticket` is at the head of the queue (or the device ran it without its owner).
pub fn wait<'a>(q: &'a LockQueue, running: &'a AtomicU32, ticket: u64) -> Turn<'a> {
    let mut last_head = u64::MAX;
    let mut since = procid::monotonic_ns();
    loop {
        let seq = q.seq.load(Ordering::Acquire);
        let head = q.head.load(Ordering::Acquire);
        if head == ticket {
            return Turn::Hold(DeviceLockGuard { q, ticket });
        }
        if head > ticket {
            let e = &q.entries[(ticket % QUEUE_CAP as u64) as usize];
            let end = e.end_ns.load(Ordering::Acquire);
            let ran = (e.ticket.load(Ordering::Acquire) == ticket && end != 0).then(|| {
                (
                    end.saturating_sub(e.duration_ns.load(Ordering::Acquire)),
                    end,
                )
            });
            return Turn::Passed(ran);
        }
        let now = procid::monotonic_ns();
        if head != last_head {
            last_head = head;
            since = now;
        } else if now - since >= RECOVERY_CHECK_NS {
            recover(q, running, ticket);
            since = now;
            continue;
        }
        let e = &q.entries[(head % QUEUE_CAP as u64) as usize];
        let end_ns = e.end_ns.load(Ordering::Acquire);
        let mut wait = (since + RECOVERY_CHECK_NS).saturating_sub(now);
        if end_ns == 0 {
            // The head's owner has not started its kernel: the device does it after a grace.
            let at = since + START_GRACE_NS;
            if now >= at {
                start_for_owner(q, head);
                continue;
            }
            wait = wait.min(at - now);
        } else {
            // The holder's kernel is over on the device; if it has not released, take over.
            let deadline = end_ns + OVERRUN_GRACE_NS;
            if now >= deadline {
                expire_late_holder(q, running, head, end_ns);
                continue;
            }
            wait = wait.min(deadline - now);
        }
        futex_wait(&q.seq, seq, wait.max(100_000));
    }
}
