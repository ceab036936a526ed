//! What this process has charged, by driver handle: device pointers, VMM handles, arrays.
//! A free looks up how many bytes on which device to give back. Reset in a forked child (the
//! child owns none of its parent's allocations).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

/// What kind of driver handle a record is keyed by (the namespaces overlap numerically).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    DevicePtr,
    MemHandle,
    Array,
    MipmappedArray,
}

/// One charged allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub device: usize,
    pub bytes: u64,
    /// The context it was made in (0 when not context-bound, e.g. VMM handles): destroying
    /// the context frees it.
    pub context: u64,
    /// References to the handle the driver handed out beyond the first (a VMM handle handed
    /// out again by `cuMemRetainAllocationHandle` or a re-import): each release drops one;
    /// the bytes go back with the last.
    pub extra_refs: u32,
}

/// Hashing for driver handles: they are addresses or counters the driver chose, not attacker
/// input, so a multiply-shift hash (a few instructions) replaces SipHash on the hot path.
#[derive(Default, Clone, Copy)]
struct HandleHasher(u64);

impl std::hash::Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }
}

type Handles = std::hash::BuildHasherDefault<HandleHasher>;

struct Table {
    generation: u32,
    map: HashMap<(Kind, u64), Record, Handles>,
}

static TABLE: parking_lot::Mutex<Option<Table>> = parking_lot::const_mutex(None);
/// Bumped in a forked child: a table from an older generation belongs to the parent.
static GENERATION: AtomicU32 = AtomicU32::new(0);

fn with_table<R>(f: impl FnOnce(&mut HashMap<(Kind, u64), Record, Handles>) -> R) -> R {
    let mut guard = TABLE.lock();
    let generation = GENERATION.load(Ordering::Acquire);
    let table = guard.get_or_insert_with(|| Table {
        generation,
        map: HashMap::default(),
    });
    if table.generation != generation {
        table.map.clear();
        table.generation = generation;
    }
    f(&mut table.map)
}

/// Remembers a charged allocation.
pub fn insert(kind: Kind, key: u64, record: Record) {
    with_table(|m| m.insert((kind, key), record));
}

/// Drops one reference to an allocation: when it was the last, forgets the allocation and
/// returns what it charged (None while other references remain, or if this process never
/// charged it).
pub fn remove(kind: Kind, key: u64) -> Option<Record> {
    with_table(|m| match m.get_mut(&(kind, key)) {
        Some(r) if r.extra_refs > 0 => {
            r.extra_refs -= 1;
            None
        }
        Some(_) => m.remove(&(kind, key)),
        None => None,
    })
}

/// One more reference to `key`, if it is an allocation this process charged (returns whether
/// it was). A handle the process never charged (another process's, imported) stays unknown:
/// its release gives nothing back.
pub fn retain(kind: Kind, key: u64) -> bool {
    with_table(|m| match m.get_mut(&(kind, key)) {
        Some(r) => {
            r.extra_refs = r.extra_refs.saturating_add(1);
            true
        }
        None => false,
    })
}

/// Forgets every allocation made in `context` (which the driver just destroyed, freeing
/// them), returning what they charged.
pub fn remove_context(context: u64) -> Vec<Record> {
    if context == 0 {
        return Vec::new();
    }
    with_table(|m| {
        let keys: Vec<(Kind, u64)> = m
            .iter()
            .filter(|(_, r)| r.context == context)
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter().filter_map(|k| m.remove(&k)).collect()
    })
}

/// Fork support: hold the table across `fork` so the child never inherits it mid-update.
pub fn lock_for_fork() {
    std::mem::forget(TABLE.lock());
}

/// Fork support: release after `fork` (parent and child); in the child, also orphan the
/// parent's records.
///
/// # Safety
/// Only after [`lock_for_fork`] on this thread (the `pthread_atfork` prepare handler), once:
/// it unlocks the table that call left locked.
pub unsafe fn unlock_after_fork(child: bool) {
    if child {
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }
    // SAFETY: (the caller's contract) `lock_for_fork` locked the table on this thread and
    // forgot the guard.
    unsafe { TABLE.force_unlock() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_handles_are_given_back_with_their_last_release() {
        let rec = Record {
            device: 0,
            bytes: 64,
            context: 0,
            extra_refs: 0,
        };
        insert(Kind::MemHandle, 900, rec);
        assert!(retain(Kind::MemHandle, 900));
        assert!(retain(Kind::MemHandle, 900));
        assert!(!retain(Kind::MemHandle, 901), "a handle never charged here");
        assert!(!retain(Kind::DevicePtr, 900), "another namespace");
        assert_eq!(remove(Kind::MemHandle, 900), None, "two references left");
        assert_eq!(remove(Kind::MemHandle, 900), None, "one reference left");
        assert_eq!(remove(Kind::MemHandle, 900), Some(rec), "the last one");
        assert_eq!(remove(Kind::MemHandle, 900), None, "nothing twice");
        assert_eq!(
            remove(Kind::MemHandle, 901),
            None,
            "an import refunds nothing"
        );
    }

    #[test]
    fn insert_remove_and_fork_generation() {
        let rec = |device, bytes, context| Record {
            device,
            bytes,
            context,
            extra_refs: 0,
        };
        insert(Kind::DevicePtr, 7, rec(0, 100, 0));
        insert(Kind::MemHandle, 7, rec(1, 5, 0));
        insert(Kind::Array, 9, rec(1, 6, 42));
        insert(Kind::DevicePtr, 10, rec(1, 7, 42));
        let mut gone: Vec<u64> = remove_context(42).iter().map(|r| r.bytes).collect();
        gone.sort();
        assert_eq!(gone, vec![6, 7], "a destroyed context's allocations");
        assert!(remove_context(0).is_empty());
        assert_eq!(remove(Kind::DevicePtr, 7), Some(rec(0, 100, 0)));
        assert_eq!(remove(Kind::DevicePtr, 7), None);
        lock_for_fork();
        // SAFETY: right after `lock_for_fork` on this thread.
        unsafe { unlock_after_fork(true) };
        assert_eq!(
            remove(Kind::MemHandle, 7),
            None,
            "a child forgets its parent's records"
        );
    }
}
