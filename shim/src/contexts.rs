//! Contexts the application created itself (`cuCtxCreate`, green contexts), by device: the
//! watcher drains them on revocation like the primary contexts. Destroying a context and
//! draining it are serialized (one lock), so the watcher never synchronizes a context being
//! destroyed. Reset in a forked child (its parent's contexts are not its own).
//!
//! A green context (`cuGreenCtxCreate`) is drained through the `CUcontext` it converts to; its
//! allocations belong to the device's primary context, whose memory it shares (it holds a
//! reference to it), so they are recorded under the primary context ([`memory_owner`]). That
//! lookup is on the allocation path, so it has a lock of its own ([`GREENS`]), never held
//! across a driver call: the registry's lock is held while the watcher synchronizes contexts
//! (a drain can take as long as the queued work), and an allocation must not wait for that.

use std::sync::atomic::{AtomicU32, Ordering};

/// A green context's identity besides the `CUcontext` it converts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Green {
    /// The `CUgreenCtx` handle.
    pub handle: u64,
    /// The CUDA ordinal it was created on.
    pub ordinal: i32,
    /// The primary context of that device (0 if it could not be learned).
    pub primary: u64,
}

#[derive(Clone, Copy)]
struct Created {
    /// The handle to push and synchronize.
    ctx: u64,
    /// Segment device index.
    device: usize,
    green: Option<Green>,
}

struct Registry {
    generation: u32,
    contexts: Vec<Created>,
}

static REGISTRY: parking_lot::Mutex<Registry> = parking_lot::const_mutex(Registry {
    generation: 0,
    contexts: Vec::new(),
});
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// Green contexts: their `CUcontext` → the primary context whose memory they use.
struct Greens {
    generation: u32,
    owners: Vec<(u64, u64)>,
}

static GREENS: parking_lot::Mutex<Greens> = parking_lot::const_mutex(Greens {
    generation: 0,
    owners: Vec::new(),
});
/// Green contexts registered (spares allocations the lookup while there are none).
static GREEN_COUNT: AtomicU32 = AtomicU32::new(0);

fn with<R>(f: impl FnOnce(&mut Vec<Created>) -> R) -> R {
    let mut r = REGISTRY.lock();
    let generation = GENERATION.load(Ordering::Acquire);
    if r.generation != generation {
        r.contexts.clear();
        r.generation = generation;
    }
    f(&mut r.contexts)
}

/// Runs `f` on the green contexts' owners (held only for `f`, which calls no driver function).
fn with_greens<R>(f: impl FnOnce(&mut Vec<(u64, u64)>) -> R) -> R {
    let mut g = GREENS.lock();
    let generation = GENERATION.load(Ordering::Acquire);
    if g.generation != generation {
        g.owners.clear();
        g.generation = generation;
        GREEN_COUNT.store(0, Ordering::Release);
    }
    let r = f(&mut g.owners);
    GREEN_COUNT.store(g.owners.len() as u32, Ordering::Release);
    r
}

/// Records a context the application created on `device`.
pub fn created(ctx: u64, device: usize) {
    if ctx != 0 {
        with(|c| {
            c.push(Created {
                ctx,
                device,
                green: None,
            });
        });
    }
}

/// Records a green context the application created on `device`, drained through `ctx`.
pub fn created_green(ctx: u64, device: usize, green: Green) {
    if ctx != 0 && green.handle != 0 {
        with(|c| {
            c.push(Created {
                ctx,
                device,
                green: Some(green),
            });
        });
        if green.primary != 0 {
            with_greens(|g| g.push((ctx, green.primary)));
        }
    }
}

/// The device of an application context, if it is one.
pub fn device_of(ctx: u64) -> Option<usize> {
    with(|c| {
        c.iter()
            .find(|x| x.ctx == ctx && x.green.is_none())
            .map(|x| x.device)
    })
}

/// Runs `destroy` (the real destroy) with the registry held, and forgets `ctx` if it succeeded.
pub fn destroy<R: PartialEq>(ctx: u64, ok: R, destroy: impl FnOnce() -> R) -> R {
    with(|c| {
        let rc = destroy();
        if rc == ok {
            c.retain(|x| x.ctx != ctx || x.green.is_some());
        }
        rc
    })
}

/// Runs `destroy` (the real green-context destroy) with the registry held; if it succeeded,
/// forgets the green context `handle` and returns what was known of it.
pub fn destroy_green<R: PartialEq>(
    handle: u64,
    ok: R,
    destroy: impl FnOnce() -> R,
) -> (R, Option<Green>) {
    with(|c| {
        let rc = destroy();
        if rc != ok {
            return (rc, None);
        }
        let pos = c
            .iter()
            .position(|x| x.green.is_some_and(|g| g.handle == handle));
        let gone = pos.map(|i| c.remove(i));
        if let Some(x) = gone {
            with_greens(|g| {
                if let Some(i) = g.iter().position(|&(ctx, _)| ctx == x.ctx) {
                    g.swap_remove(i);
                }
            });
        }
        (rc, gone.and_then(|x| x.green))
    })
}

/// The context whose memory an allocation made with `ctx` current belongs to: the primary
/// context for a green context's `CUcontext`, else `ctx` itself. One atomic load while the
/// process has no green context; never waits for a drain.
pub fn memory_owner(ctx: u64) -> u64 {
    if ctx == 0 || GREEN_COUNT.load(Ordering::Acquire) == 0 {
        return ctx;
    }
    with_greens(|g| {
        g.iter()
            .find(|&&(c, _)| c == ctx)
            .map_or(ctx, |&(_, primary)| primary)
    })
}

/// Runs `f` on every application context of `device`, with the registry held.
pub fn for_each_on(device: usize, mut f: impl FnMut(u64)) {
    with(|c| {
        for x in c.iter().filter(|x| x.device == device) {
            f(x.ctx);
        }
    });
}

/// Fork support: hold the registry and the green contexts' owners across `fork` (in the order
/// `destroy_green` takes them).
pub fn lock_for_fork() {
    std::mem::forget(REGISTRY.lock());
    std::mem::forget(GREENS.lock());
}

/// Fork support: release after `fork`; in the child, forget the parent's contexts.
///
/// # Safety
/// Only after [`lock_for_fork`] on this thread (the `pthread_atfork` prepare handler), once:
/// it unlocks the registry that call left locked.
pub unsafe fn unlock_after_fork(child: bool) {
    if child {
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }
    // SAFETY: (the caller's contract) `lock_for_fork` locked both on this thread and forgot
    // the guards.
    unsafe {
        GREENS.force_unlock();
        REGISTRY.force_unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test: the registry is process-wide.
    #[test]
    fn tracks_destroys_green_contexts_and_forks() {
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

        // A green context: drained through its CUcontext, its memory the primary's.
        assert_eq!(memory_owner(20), 20, "no green context yet");
        let green = Green {
            handle: 700,
            ordinal: 0,
            primary: 30,
        };
        created_green(20, 0, green);
        seen.clear();
        for_each_on(0, |c| seen.push(c));
        assert_eq!(seen, vec![12, 20]);
        assert_eq!(memory_owner(20), 30);
        assert_eq!(memory_owner(12), 12);
        assert_eq!(destroy(20, 0, || 0), 0, "cuCtxDestroy is not how it goes");
        assert_eq!(memory_owner(20), 30, "still registered");
        assert_eq!(destroy_green(700, 0, || 3), (3, None), "failed destroy");
        assert_eq!(destroy_green(700, 0, || 0), (0, Some(green)));
        assert_eq!(destroy_green(700, 0, || 0), (0, None), "gone already");
        assert_eq!(memory_owner(20), 20);

        // An allocation's lookup does not wait for a drain: the watcher holds the registry
        // while it synchronizes (as long as the queued work takes).
        created_green(
            21,
            0,
            Green {
                handle: 701,
                ..green
            },
        );
        let (inside, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (inside_tx, inside_rx) = inside;
        let (release_tx, release_rx) = release;
        let drain = std::thread::spawn(move || {
            for_each_on(0, |_| {
                inside_tx.send(()).expect("the test waits for the drain");
                // Released by a message or by the test dropping the sender: either ends it.
                release_rx.recv().ok();
            });
        });
        inside_rx.recv().expect("the drain runs");
        let (owner_tx, owner_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || owner_tx.send(memory_owner(21)));
        let owner = owner_rx.recv_timeout(std::time::Duration::from_secs(10));
        release_tx.send(()).unwrap();
        drop(release_tx);
        drain.join().unwrap();
        assert_eq!(owner, Ok(30), "memory_owner waited for the drain");
        assert_eq!(
            destroy_green(701, 0, || 0),
            (
                0,
                Some(Green {
                    handle: 701,
                    ..green
                })
            )
        );

        lock_for_fork();
        // SAFETY: right after `lock_for_fork` on this thread.
        unsafe { unlock_after_fork(true) };
        seen.clear();
        for_each_on(1, |c| seen.push(c));
        assert!(seen.is_empty(), "a child forgets its parent's contexts");
    }
}
