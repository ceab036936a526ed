//! A process-shared robust pthread mutex in the state file, for short critical sections whose
//! holder may be killed at any instruction (the next locker is told and repairs the data).

use std::cell::UnsafeCell;

/// Initialises a process-shared robust mutex in place (the state file's creator only).
pub fn init(m: &UnsafeCell<libc::pthread_mutex_t>) -> std::io::Result<()> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: attr is initialised by pthread_mutexattr_init before any other use; the mutex
    // storage lies in the shared mapping, is not in use yet (the creator holds the file lock)
    // and is initialised in place.
    unsafe {
        let a = attr.as_mut_ptr();
        check(libc::pthread_mutexattr_init(a))?;
        check(libc::pthread_mutexattr_setpshared(
            a,
            libc::PTHREAD_PROCESS_SHARED,
        ))?;
        check(libc::pthread_mutexattr_setrobust(
            a,
            libc::PTHREAD_MUTEX_ROBUST,
        ))?;
        check(libc::pthread_mutex_init(m.get(), a))?;
        libc::pthread_mutexattr_destroy(a);
    }
    Ok(())
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Holding a robust mutex; unlocks on drop.
pub struct Guard<'a> {
    m: &'a UnsafeCell<libc::pthread_mutex_t>,
    /// The previous holder died inside its critical section: repair the guarded data.
    pub owner_died: bool,
}

/// Locks `m`, waiting as long as it takes.
pub fn lock(m: &UnsafeCell<libc::pthread_mutex_t>) -> Guard<'_> {
    loop {
        // SAFETY: the mutex was initialised by the state file's creator and lives in the
        // mapping, which outlives the guard.
        match unsafe { libc::pthread_mutex_lock(m.get()) } {
            0 => {
                return Guard {
                    m,
                    owner_died: false,
                };
            }
            libc::EOWNERDEAD => {
                // SAFETY: EOWNERDEAD means we now own the mutex; the caller repairs the data
                // while holding the guard.
                unsafe { libc::pthread_mutex_consistent(m.get()) };
                return Guard {
                    m,
                    owner_died: true,
                };
            }
            libc::EINTR | libc::EAGAIN => continue,
            other => panic!("fakegpu: robust mutex failed: {other}"),
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard holds the mutex.
        unsafe { libc::pthread_mutex_unlock(self.m.get()) };
    }
}
