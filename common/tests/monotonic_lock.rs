//! The accounting lock's timed wait is measured on the monotonic clock: a step of the wall
//! clock does not stretch it (issue #10, row 13).
//!
//! This test binary interposes `clock_gettime`: the wall clock (`CLOCK_REALTIME`) reads an
//! hour ahead of the kernel's, which is what a lock computing its deadline from the wall clock
//! sees after the clock was stepped back by an hour. The monotonic clock is untouched.

use gpumux_common::shm_mutex::{LockError, ShmMutex};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The wall clock as this process sees it: an hour ahead of the kernel's.
///
/// # Safety
/// As `clock_gettime(2)`: `ts` points to a writable `timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn clock_gettime(
    clock: libc::clockid_t,
    ts: *mut libc::timespec,
) -> libc::c_int {
    // SAFETY: the raw system call with the caller's arguments, as libc's wrapper would make.
    let rc = unsafe { libc::syscall(libc::SYS_clock_gettime, clock, ts) } as libc::c_int;
    if rc == 0 && clock == libc::CLOCK_REALTIME {
        // SAFETY: the kernel just filled `*ts`.
        unsafe { (*ts).tv_sec += 3600 };
    }
    rc
}

fn shared_mutex() -> &'static ShmMutex {
    // SAFETY: anonymous shared mapping of the right size; zeroed memory is a valid starting
    // point for `init`; leaked for the test's lifetime.
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
        m.init().unwrap();
        m
    }
}

#[test]
fn a_wall_clock_step_does_not_stretch_a_timed_lock() {
    let m = shared_mutex();
    let _held = m.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    // Detached: with a wall-clock deadline the attempt would block for an hour.
    std::thread::spawn(move || {
        let start = Instant::now();
        let r = m.lock_timeout(Duration::from_millis(50)).map(|_| ());
        let _ignored = tx.send((r, start.elapsed()));
    });
    let (r, took) = rx.recv_timeout(Duration::from_secs(10)).expect(
        "a 50 ms timed lock was still waiting after 10 s: its deadline follows the wall clock",
    );
    assert_eq!(r, Err(LockError::TimedOut));
    assert!(took >= Duration::from_millis(50), "gave up early: {took:?}");
}
