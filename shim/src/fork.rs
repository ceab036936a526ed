//! `pthread_atfork` handlers: keep the shim's locks consistent across `fork`, and make a
//! forked child a fresh, unregistered process.

use parking_lot::Mutex;
use std::sync::Once;

/// Locks every one of `locks` and keeps them locked (the guards are leaked) across `fork`.
pub(crate) fn lock_all<T>(locks: &[Mutex<T>]) {
    for m in locks {
        std::mem::forget(m.lock());
    }
}

/// Releases what [`lock_all`] locked; `reset` runs on each (index, value) afterwards (in the
/// child, to forget the parent's state).
///
/// # Safety
/// Only after [`lock_all`] of the same locks on this thread (the atfork handlers), once.
pub(crate) unsafe fn unlock_all<T>(locks: &[Mutex<T>], reset: Option<fn(usize, &mut T)>) {
    for (i, m) in locks.iter().enumerate() {
        // SAFETY: `lock_all` locked every one on this thread and leaked the guards (the
        // caller's contract).
        unsafe { m.force_unlock() };
        if let Some(reset) = reset {
            reset(i, &mut m.lock());
        }
    }
}

// Lock order: contexts, then the graph memory table, then allocations, then captures, then the
// busy trackers, then the queued-work trackers (nothing holds a later one while taking an
// earlier one; context teardown takes the graph memory table).
extern "C" fn prepare() {
    crate::contexts::lock_for_fork();
    crate::graph_memory::lock_for_fork();
    crate::allocations::lock_for_fork();
    crate::captures::lock_for_fork();
    crate::busy::lock_for_fork();
    crate::bound::lock_for_fork();
}

extern "C" fn parent() {
    // SAFETY: the atfork parent handler runs once, on the forking thread, after `prepare`
    // locked them all.
    unsafe {
        crate::bound::unlock_after_fork(false);
        crate::busy::unlock_after_fork(false);
        crate::captures::unlock_after_fork(false);
        crate::allocations::unlock_after_fork(false);
        crate::graph_memory::unlock_after_fork(false);
        crate::contexts::unlock_after_fork(false);
    }
}

extern "C" fn child() {
    // SAFETY: the atfork child handler runs once, in the child's only thread (the copy of
    // the forking one), after `prepare` locked them all.
    unsafe {
        crate::bound::unlock_after_fork(true);
        crate::busy::unlock_after_fork(true);
        crate::captures::unlock_after_fork(true);
        crate::allocations::unlock_after_fork(true);
        crate::graph_memory::unlock_after_fork(true);
        crate::contexts::unlock_after_fork(true);
    }
    crate::registration::forget_after_fork();
}

/// Installs the handlers once (at first registration, never at load time).
pub fn install_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering three `extern "C" fn()` handlers that never unwind.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}
