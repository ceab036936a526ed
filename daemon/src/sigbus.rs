//! Survives what a tenant can do to a shared file the daemon has mapped.
//!
//! A tenant's accounting segment is a file the tenant's processes map read-write, so they can
//! also `ftruncate` it through the descriptor they were given. Touching a mapped page past the
//! new end raises SIGBUS, which would kill the daemon. Every such mapping is registered here;
//! on a SIGBUS inside one, the handler restores the file's size and reserves its pages again
//! (`ftruncate` + `fallocate`, both plain system calls, async-signal-safe) and returns, so the
//! faulting access runs again on (zeroed) memory. If the file cannot be restored (the file
//! system is full), the daemon's view is replaced by private zero pages: the daemon never
//! faults on it again, the tenant's bookkeeping is lost to it. Either way the mapping is
//! flagged and the event loop repairs the tenant ([`Guard::take_damage`]).
//!
//! A SIGBUS anywhere else keeps its default action (the daemon dies, as it would have).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize};

/// Mappings guarded at once (one per tenant).
const SLOTS: usize = 4096;
/// Restore attempts before a mapping is detached (the tenant may keep truncating).
const RESTORE_TRIES: u32 = 16;

const CLEAN: u32 = 0;
/// The file was restored; its content past the truncation point is zero.
pub const RESTORED: u32 = 1;
/// The file could not be restored: the daemon's view is private zero pages.
pub const DETACHED: u32 = 2;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    fd: AtomicI32,
    faults: AtomicU32,
    damage: AtomicU32,
}

static SLOTS_TABLE: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        fd: AtomicI32::new(-1),
        faults: AtomicU32::new(0),
        damage: AtomicU32::new(CLEAN),
    }
}; SLOTS];

static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Set by the handler when it flagged a mapping: the loop's check is one load.
static DAMAGE_PENDING: AtomicBool = AtomicBool::new(false);

/// Installs the SIGBUS handler (once per process).
pub fn install() -> io::Result<()> {
    if INSTALLED.swap(true, AcqRel) {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is a valid starting value; the handler is an
    // `extern "C" fn(c_int, *mut siginfo_t, *mut c_void)` as SA_SIGINFO requires.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        INSTALLED.store(false, Release);
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A guarded mapping; unguarded on drop (drop it before unmapping).
#[derive(Debug)]
pub struct Guard(usize);

impl Guard {
    /// Guards `len` bytes mapped at `start` from the file `fd` (which must stay open while
    /// guarded). `None` when every slot is taken (the mapping is then unguarded).
    pub fn new(start: *const u8, len: usize, fd: RawFd) -> Option<Guard> {
        for (i, s) in SLOTS_TABLE.iter().enumerate() {
            if s.start
                .compare_exchange(0, start as usize, AcqRel, Relaxed)
                .is_ok()
            {
                s.fd.store(fd, Release);
                s.faults.store(0, Release);
                s.damage.store(CLEAN, Release);
                s.len.store(len, Release);
                return Some(Guard(i));
            }
        }
        None
    }

    /// What happened to the mapping since the last call: [`RESTORED`], [`DETACHED`] or
    /// `None`.
    pub fn take_damage(&self) -> Option<u32> {
        let s = &SLOTS_TABLE[self.0];
        match s.damage.swap(CLEAN, AcqRel) {
            CLEAN => None,
            d => {
                s.faults.store(0, Release);
                Some(d)
            }
        }
    }

    /// Whether the handler flagged a mapping since the last call (then check every guard
    /// with [`Guard::take_damage`]).
    pub fn any_damage() -> bool {
        DAMAGE_PENDING.swap(false, AcqRel)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = &SLOTS_TABLE[self.0];
        s.len.store(0, Release);
        s.fd.store(-1, Release);
        s.start.store(0, Release);
    }
}

extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &SLOTS_TABLE {
        let start = s.start.load(Acquire);
        let len = s.len.load(Acquire);
        if start == 0 || addr < start || addr >= start.saturating_add(len) {
            continue;
        }
        let fd = s.fd.load(Acquire);
        if s.faults.fetch_add(1, AcqRel) < RESTORE_TRIES {
            // SAFETY: plain system calls on the guarded file's descriptor (async-signal-safe).
            let restored = unsafe {
                libc::ftruncate(fd, len as libc::off_t) == 0
                    && libc::fallocate(fd, 0, 0, len as libc::off_t) == 0
            };
            if restored {
                s.damage.store(RESTORED, Release);
                DAMAGE_PENDING.store(true, Release);
                return;
            }
        }
        // SAFETY: replaces exactly the guarded range of our own mapping with private zero
        // pages (mmap is a plain system call); the daemon's references into it stay valid.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            s.damage.store(DETACHED, Release);
            DAMAGE_PENDING.store(true, Release);
            return;
        }
        break;
    }
    // Not a guarded mapping (or nothing could be done): the default action, on return.
    // SAFETY: signal(2) is async-signal-safe; returning re-raises the fault.
    unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::AtomicU64;

    fn memfd(len: usize) -> OwnedFd {
        // SAFETY: memfd_create with a valid name; the fd is owned here.
        let fd = unsafe {
            OwnedFd::from_raw_fd(libc::memfd_create(c"g".as_ptr(), libc::MFD_ALLOW_SEALING))
        };
        // SAFETY: sizing our own memfd.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
        assert_eq!(rc, 0);
        fd
    }

    fn map(fd: &OwnedFd, len: usize) -> *mut u8 {
        // SAFETY: a shared mapping of our own memfd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as *mut u8
    }

    #[test]
    fn a_truncated_mapping_is_restored_not_fatal() {
        install().unwrap();
        let len = 4 * 4096;
        let fd = memfd(len);
        let p = map(&fd, len);
        let guard = Guard::new(p, len, fd.as_raw_fd()).expect("a free slot");
        // SAFETY: in bounds of the mapping; u64-aligned (page-aligned base).
        let word = unsafe { &*(p.add(3 * 4096) as *const AtomicU64) };
        word.store(7, Relaxed);
        // What a hostile tenant does through its descriptor.
        // SAFETY: truncating our own memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }, 0);
        assert_eq!(word.load(Relaxed), 0, "restored, zeroed");
        assert_eq!(guard.take_damage(), Some(RESTORED));
        assert_eq!(guard.take_damage(), None);
        word.store(9, Relaxed);
        assert_eq!(word.load(Relaxed), 9);
        drop(guard);
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p as *mut libc::c_void, len) };
    }

    #[test]
    fn a_mapping_that_cannot_be_restored_is_detached_not_fatal() {
        install().unwrap();
        let len = 2 * 4096;
        let fd = memfd(len);
        let p = map(&fd, len);
        let guard = Guard::new(p, len, fd.as_raw_fd()).expect("a free slot");
        // SAFETY: in bounds of the mapping; u64-aligned.
        let word = unsafe { &*(p.add(4096) as *const AtomicU64) };
        word.store(5, Relaxed);
        // Shrunk, then sealed against growing: the file can no longer be restored.
        // SAFETY: truncating and sealing our own memfd.
        let rc = unsafe {
            libc::ftruncate(fd.as_raw_fd(), 0)
                | libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_GROW)
        };
        assert_eq!(rc, 0);
        assert_eq!(word.load(Relaxed), 0, "detached: private zero pages");
        assert_eq!(guard.take_damage(), Some(DETACHED));
        word.store(6, Relaxed);
        assert_eq!(word.load(Relaxed), 6);
        drop(guard);
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p as *mut libc::c_void, len) };
    }
}
