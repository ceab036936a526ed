//! Contexts the application created itself (`cuCtxCreate`), by device: the watcher drains them
//! on revocation like the primary contexts. Destroying a context and draining it are serialized
//! (one lock), so the watcher never synchronizes a context being destroyed. Reset in a forked
//! child (its parent's contexts are not its own).

use std::sync::atomic::{AtomicU32, Ordering};

struct Registry {
    generation: u32,
    /// (context handle, segment device index)
    contexts: Vec<(u64, usize)>,
}

static REGISTRY: parking_lot::Mutex<Registry> = parking_lot::const_mutex(Registry {
    generation: 0,
    contexts: Vec::new(),
});
static GENERATION: AtomicU32 = AtomicU32::new(0);

fn with<R>(f: impl FnOnce(&mut Vec<(u64, usize)>) -> R) -> R {
    let mut r = REGISTRY.lock();
    let generation = GENERATION.load(Ordering::Acquire);
    if r.generation != generation {
        r.contexts.clear();
        r.generation = generation;
    }
    f(&mut r.contexts)
}

/// Records a context the application created on `device`.
pub fn created(ctx: u64, device: usize) {
    if ctx != 0 {
        with(|c| c.push((ctx, device)));
    }
}

/// The device of an application context, if it is one.
pub fn device_of(ctx: u64) -> Option<usize> {
    with(|c| c.iter().find(|(x, _)| *x == ctx).map(|&(_, d)| d))
}

/// Runs `destroy` (the real destroy) with the registry held, and forgets `ctx` if it succeeded.
pub fn destroy<R: PartialEq>(ctx: u64, ok: R, destroy: impl FnOnce() -> R) -> R {
    with(|c| {
        let rc = destroy();
        if rc == ok {
            c.retain(|(x, _)| *x != ctx);
        }
        rc
    })
}

/// Runs `f` on every application context of `device`, with the registry held.
pub fn for_each_on(device: usize, mut f: impl FnMut(u64)) {
    with(|c| {
        for &(ctx, d) in c.iter() {
            if d == device {
                f(ctx);
            }
        }
    });
}

/// Fork support: hold the registry across `fork`.
pub fn lock_for_fork() {
    std::mem::forget(REGISTRY.lock());
}

/// Fork support: release after `fork`; in the child, forget the parent's contexts.
pub fn unlock_after_fork(child: bool) {
    if child {
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }
    // SAFETY: `lock_for_fork` locked the registry on this thread and forgot the guard.
    unsafe { REGISTRY.force_unlock() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_destroys_and_forks() {
        created(10, 0);
        created(11, 1);
        created(12, 0);
        let mut seen = Vec::new();
        for_each_on(0, |c| seen.push(c));
        assert_eq!(seen, vec![10, 12]);
        assert_eq!(device_of(11), Some(1));
        assert_eq!(device_of(99), None);
        assert_eq!(
            destroy(10, 0, || 5),
            5,
            "a failed destroy keeps the context"
        );
        assert_eq!(destroy(10, 0, || 0), 0);
        seen.clear();
        for_each_on(0, |c| seen.push(c));
        assert_eq!(seen, vec![12]);
        lock_for_fork();
        unlock_after_fork(true);
        seen.clear();
        for_each_on(1, |c| seen.push(c));
        assert!(seen.is_empty(), "a child forgets its parent's contexts");
    }
}
