//! `pthread_atfork` handlers: keep the shim's locks consistent across `fork`, and make a
//! forked child a fresh, unregistered process.

use std::sync::Once;

// Lock order: contexts, then the graph memory table, then allocations, then captures, then the
// busy trackers (nothing holds a later one while taking an earlier one; context teardown takes
// the graph memory table).
extern "C" fn prepare() {
    crate::contexts::lock_for_fork();
    crate::graph_memory::lock_for_fork();
    crate::allocations::lock_for_fork();
    crate::captures::lock_for_fork();
    crate::busy::lock_for_fork();
}

extern "C" fn parent() {
    // SAFETY: the atfork parent handler runs once, on the forking thread, after `prepare`
    // locked them all.
    unsafe {
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
