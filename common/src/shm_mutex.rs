//! A process-shared, robust mutex that lives inside a shared segment.
//!
//! It guards a tenant's memory accounting. Robustness is the point: if a process dies holding
//! it (SIGKILL between two stores), the next locker is told (`EOWNERDEAD`), repairs the data
//! from the per-process records, and marks the mutex consistent. Nothing stays wedged and no
//! quota leaks. glibc's robust futex list does the bookkeeping in the kernel.

use std::cell::UnsafeCell;
use std::time::Duration;
use thiserror::Error;

/// Locking failed for a reason other than a dead owner (which is recovered).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LockError {
    #[error("timed out waiting for the accounting lock")]
    TimedOut,
    #[error("the accounting lock is held by another process")]
    Busy,
    #[error("the accounting lock is unrecoverable (errno {0})")]
    Failed(i32),
}

/// A `pthread_mutex_t` configured `PTHREAD_PROCESS_SHARED` + `PTHREAD_MUTEX_ROBUST`.
#[repr(C, align(64))]
pub struct ShmMutex {
    inner: UnsafeCell<libc::pthread_mutex_t>,
}

// SAFETY: the pthread mutex is designed for concurrent use from many threads (and processes).
unsafe impl Sync for ShmMutex {}
// SAFETY: the mutex has no thread affinity until locked; it lives in shared memory anyway.
unsafe impl Send for ShmMutex {}

/// Proof of holding the lock; unlocks on drop.
pub struct ShmMutexGuard<'a> {
    mutex: &'a ShmMutex,
    /// The previous owner died holding the lock: the caller must repair the guarded data.
    pub owner_died: bool,
}

impl ShmMutex {
    /// Initialises the mutex in place.
    ///
    /// # Safety
    /// Only the segment's creator calls this, once, before the segment is shared: no thread or
    /// process may use (or hold) the mutex during or before the call, and it lives in writable
    /// memory. Initialising a mutex someone holds or waits on is undefined behaviour.
    pub unsafe fn init(&self) -> Result<(), LockError> {
        // SAFETY: `attr` is initialised by pthread_mutexattr_init before use and destroyed
        // after; `self.inner` is valid writable memory, and (the caller's contract) nobody
        // else uses the mutex yet.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            let mut rc = libc::pthread_mutexattr_init(&mut attr);
            if rc == 0 {
                rc = libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            }
            if rc == 0 {
                rc = libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            }
            if rc == 0 {
                rc = libc::pthread_mutex_init(self.inner.get(), &attr);
            }
            libc::pthread_mutexattr_destroy(&mut attr);
            if rc == 0 {
                Ok(())
            } else {
                Err(LockError::Failed(rc))
            }
        }
    }

    /// Locks, waiting as long as it takes.
    pub fn lock(&self) -> Result<ShmMutexGuard<'_>, LockError> {
        // SAFETY: the mutex was initialised by the segment's creator (`init`).
        let rc = unsafe { libc::pthread_mutex_lock(self.inner.get()) };
        self.finish(rc)
    }

    /// Locks if nobody holds the mutex, without waiting (the daemon's event loop never waits
    /// on a lock tenant processes can hold).
    pub fn try_lock(&self) -> Result<ShmMutexGuard<'_>, LockError> {
        // SAFETY: the mutex was initialised by the segment's creator (`init`).
        let rc = unsafe { libc::pthread_mutex_trylock(self.inner.get()) };
        self.finish(rc)
    }

    /// Locks, giving up after `timeout`, measured on the monotonic clock: a step of the wall
    /// clock neither lengthens nor shortens the wait.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ShmMutexGuard<'_>, LockError> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let deadline = deadline_after(now, timeout);
        // SAFETY: the mutex was initialised by the segment's creator; `deadline` is a valid
        // absolute CLOCK_MONOTONIC time (glibc >= 2.30 has pthread_mutex_clocklock, robust
        // mutexes included).
        let rc =
            unsafe { pthread_mutex_clocklock(self.inner.get(), libc::CLOCK_MONOTONIC, &deadline) };
        self.finish(rc)
    }

    fn finish(&self, rc: i32) -> Result<ShmMutexGuard<'_>, LockError> {
        match rc {
            0 => Ok(ShmMutexGuard {
                mutex: self,
                owner_died: false,
            }),
            libc::EOWNERDEAD => Ok(ShmMutexGuard {
                mutex: self,
                owner_died: true,
            }),
            libc::ETIMEDOUT => Err(LockError::TimedOut),
            libc::EBUSY => Err(LockError::Busy),
            other => Err(LockError::Failed(other)),
        }
    }
}

unsafe extern "C" {
    /// POSIX 2024 / glibc 2.30: `pthread_mutex_timedlock` on a chosen clock (not in `libc`).
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// `now + timeout` as a normalised timespec, saturating far in the future.
fn deadline_after(now: libc::timespec, timeout: Duration) -> libc::timespec {
    let nanos = now.tv_nsec as u64 + u64::from(timeout.subsec_nanos());
    let secs = i64::try_from(timeout.as_secs())
        .unwrap_or(i64::MAX)
        .saturating_add(now.tv_sec)
        .saturating_add((nanos / 1_000_000_000) as i64);
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    }
}

impl Drop for ShmMutexGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard proves the calling thread holds the mutex. A recovered mutex is
        // marked consistent first (the caller repaired the data while holding the guard),
        // otherwise unlocking would make it permanently unusable.
        unsafe {
            if self.owner_died {
                libc::pthread_mutex_consistent(self.mutex.inner.get());
            }
            libc::pthread_mutex_unlock(self.mutex.inner.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mutex in an anonymous shared mapping, visible to forked children.
    fn shared_mutex() -> &'static ShmMutex {
        // SAFETY: anonymous shared mapping of the right size; zeroed memory is a valid
        // starting point for `init`; leaked for the test's lifetime.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<ShmMutex>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let m = &*(p as *const ShmMutex);
            // Fresh private-to-this-test mapping: nobody uses the mutex yet.
            m.init().unwrap();
            m
        }
    }

    #[test]
    fn recovers_from_dead_owner() {
        let m = shared_mutex();
        // SAFETY: the child only locks the mutex and exits without unlocking (simulating a
        // SIGKILL while holding it); it calls nothing that is unsafe after fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let g = m.lock();
            std::mem::forget(g);
            // SAFETY: terminate the child immediately, without running atexit handlers.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let g = m
            .lock_timeout(Duration::from_secs(5))
            .expect("lock after owner died");
        assert!(g.owner_died);
        drop(g);
        let g = m.lock().unwrap();
        assert!(!g.owner_died, "consistent after recovery");
        drop(g);
    }

    #[test]
    fn timed_lock_times_out() {
        let m = shared_mutex();
        let _g = m.lock().unwrap();
        let r = std::thread::scope(|s| {
            s.spawn(|| m.lock_timeout(Duration::from_millis(20)).map(|_| ()))
                .join()
                .unwrap()
        });
        assert_eq!(r, Err(LockError::TimedOut));
        let r = std::thread::scope(|s| s.spawn(|| m.try_lock().map(|_| ())).join().unwrap());
        assert_eq!(r, Err(LockError::Busy));
    }

    #[test]
    fn try_lock_takes_a_free_mutex_and_recovers_a_dead_owner() {
        let m = shared_mutex();
        drop(m.try_lock().expect("free mutex"));
        // SAFETY: as in `recovers_from_dead_owner`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            std::mem::forget(m.lock());
            // SAFETY: terminate the child immediately.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(m.try_lock().expect("dead owner recovered").owner_died);
    }

    #[test]
    fn deadlines_normalise_and_saturate() {
        let now = libc::timespec {
            tv_sec: 10,
            tv_nsec: 999_999_999,
        };
        let d = deadline_after(now, Duration::from_nanos(2));
        assert_eq!((d.tv_sec, d.tv_nsec), (11, 1));
        let d = deadline_after(now, Duration::MAX);
        assert_eq!(d.tv_sec, i64::MAX);
    }
}
