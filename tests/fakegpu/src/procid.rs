//! Process identity (pid + start time, which survives pid reuse) and liveness, read from `/proc`.

/// Start time of `pid` (clock ticks since boot, `/proc/<pid>/stat` field 22) and whether it is
/// still running (not a zombie). `None` if there is no such process.
pub fn stat(pid: u32) -> Option<(bool, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let state = fields.next()?;
    let start: u64 = fields.nth(18)?.parse().ok()?;
    let running = !matches!(state, "Z" | "X" | "x");
    Some((running, start))
}

/// Start time of `pid`, if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, s)| s)
}

/// Whether the process `pid` that started at `start_time` is still alive (a zombie is dead: the
/// driver frees a process's memory when it exits, before it is reaped). `start_time == 0` means
/// "unknown": only the pid is checked.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    match stat(pid) {
        Some((running, start)) => running && (start_time == 0 || start == start_time),
        None => false,
    }
}

/// Whether `pid` certainly no longer exists (`kill(pid, 0)` fails with `ESRCH`). Cheap; a zombie
/// or a reused pid still counts as existing here (use [`is_alive`] for the full check).
pub fn certainly_gone(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return true;
    }
    // SAFETY: signal 0 performs only the existence/permission check.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The calling process's pid.
pub fn current_pid() -> u32 {
    std::process::id()
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Margin before a deadline that [`sleep_until`] spends spinning instead of sleeping: timer
/// wake-ups (notably in VMs) arrive tens of microseconds late, which would inflate short simulated
/// kernels.
pub const SPIN_MARGIN_NS: u64 = 200_000;

/// Waits until CLOCK_MONOTONIC reaches `deadline_ns` (absolute): sleeps with
/// `clock_nanosleep(TIMER_ABSTIME)` (timer slack 1 ns) until [`SPIN_MARGIN_NS`] before the
/// deadline, then spins, so the wait ends within a few microseconds of the deadline.
pub fn sleep_until(deadline_ns: u64) {
    thread_local! {
        static SLACK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    SLACK_SET.with(|s| {
        if !s.get() {
            // SAFETY: PR_SET_TIMERSLACK only changes the calling thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
            s.set(true);
        }
    });
    let wake = deadline_ns.saturating_sub(SPIN_MARGIN_NS);
    if monotonic_ns() < wake {
        let ts = libc::timespec {
            tv_sec: (wake / 1_000_000_000) as libc::time_t,
            tv_nsec: (wake % 1_000_000_000) as libc::c_long,
        };
        loop {
            // SAFETY: `ts` is a valid timespec; a null remainder is allowed with TIMER_ABSTIME.
            let rc = unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &ts,
                    std::ptr::null_mut(),
                )
            };
            if rc != libc::EINTR {
                break;
            }
        }
    }
    while monotonic_ns() < deadline_ns {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_alive_and_start_time_is_stable() {
        let pid = current_pid();
        let st = start_time(pid).unwrap();
        assert!(st > 0);
        assert!(is_alive(pid, st));
        assert!(is_alive(pid, 0));
        assert!(!is_alive(pid, st + 1));
        assert!(!is_alive(u32::MAX - 1, 0));
    }

    #[test]
    fn sleep_until_never_returns_early() {
        // Never early; how late is the host's scheduling (the device timeline does not depend
        // on it: kernels are placed on it from when they were ready, not from when a thread
        // woke), so only a gross bound is checked.
        for _ in 0..20 {
            let t0 = monotonic_ns();
            sleep_until(t0 + 2_000_000);
            let d = monotonic_ns() - t0;
            assert!((2_000_000..200_000_000).contains(&d), "{d}");
        }
    }
}
