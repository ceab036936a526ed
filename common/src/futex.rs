//! Cross-process futex wait/wake on a 32-bit word in a shared mapping.
//!
//! `FUTEX_PRIVATE_FLAG` is deliberately absent: waiters and wakers live in different
//! processes (the shim's launch gate waits, the daemon wakes).

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout` (forever if `None`). Returns on wake,
/// value change, timeout, or signal; callers re-check their condition.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT only reads
    // it, and `ts_ptr` is null or points to a live timespec (relative timeout).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            0usize,
            0u32,
        );
    }
}

/// Wakes up to `count` waiters on `word` (in any process). Returns how many were woken.
pub fn wake(word: &AtomicU32, count: u32) -> usize {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not dereference other arguments.
    let woken = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count.min(i32::MAX as u32),
            0usize,
            0usize,
            0u32,
        )
    };
    woken.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn wait_times_out_and_wakes() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        wait(&w, 0, Some(Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(15));
        // A value mismatch returns at once.
        let t = Instant::now();
        wait(&w, 1, Some(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));

        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let h = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                wait(&w2, 0, Some(Duration::from_secs(5)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::Release);
        wake(&w, u32::MAX);
        h.join().unwrap();
    }
}
