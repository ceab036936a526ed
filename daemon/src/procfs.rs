//! What the daemon reads about processes from /proc and pidfds: start times (to tell a
//! registered process from a later one that reused its pid), memory maps (whether a process
//! maps a tenant's accounting segment), cgroups (to tell which tenant an unmanaged GPU process
//! belongs to), whether a thread of a process is runnable (a holder the host runs late is not
//! idle) and exit notification.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/PID/stat` line (the command name, field 2, may contain spaces and
/// parentheses: fields are counted after its closing parenthesis).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether one of the first `threads` threads of process `pid` is runnable (state `R` in
/// `/proc/PID/task/TID/stat`: on a CPU, or waiting for one; the main thread is listed first).
/// False when the process is gone or cannot be read.
pub fn thread_runnable(pid: u32, threads: usize) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.take(threads).filter_map(Result::ok).any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .is_ok_and(|stat| parse_state(&stat) == Some('R'))
    })
}

/// Field 3 (the state letter) of a `/proc/PID/stat` line, after the command name's closing
/// parenthesis.
pub fn parse_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether `pid` is the process that started at `start_time` and has not exited.
pub fn same_process_alive(pid: u32, start: u64) -> bool {
    pid != 0 && start_time(pid) == Some(start)
}

/// Whether `pid` maps the file with device `dev` and inode `ino` (`/proc/PID/maps`): every
/// process a daemon registered maps its tenant's accounting segment, another process does not.
pub fn maps_file(pid: u32, dev: u64, ino: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|maps| maps.lines().any(|l| maps_line_is(l, dev, ino)))
}

/// Whether one `/proc/PID/maps` line (`address perms offset MAJ:MIN inode path`) maps the file
/// with device `dev` and inode `ino`.
pub fn maps_line_is(line: &str, dev: u64, ino: u64) -> bool {
    let mut fields = line.split_whitespace().skip(3);
    let (Some(device), Some(inode)) = (fields.next(), fields.next()) else {
        return false;
    };
    let Some((major, minor)) = device.split_once(':') else {
        return false;
    };
    let parsed = (
        u32::from_str_radix(major, 16),
        u32::from_str_radix(minor, 16),
        inode.parse::<u64>(),
    );
    let (Ok(major), Ok(minor), Ok(inode)) = parsed else {
        return false;
    };
    inode == ino && inode != 0 && libc::makedev(major, minor) == dev
}

/// The text of `/proc/PID/cgroup` (every hierarchy the process is in), trimmed.
pub fn cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// A pidfd for `pid`: readable once the process exits.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags; the result is checked and owned.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = start_time(std::process::id()).expect("own start time");
        assert!(same_process_alive(std::process::id(), me));
        assert!(!same_process_alive(std::process::id(), me + 1));
        pidfd_open(std::process::id()).unwrap();
        let line = "7f12a000-7f12b000 rw-s 00000000 fd:01 1234567  /var/lib/gpumux/segments/a.acct";
        assert!(maps_line_is(line, libc::makedev(0xfd, 1), 1_234_567));
        assert!(!maps_line_is(line, libc::makedev(0xfd, 1), 1_234_568));
        assert!(!maps_line_is(line, libc::makedev(0xfd, 2), 1_234_567));
        let anon = "7f12a000-7f12b000 rw-p 00000000 00:00 0 ";
        assert!(!maps_line_is(anon, libc::makedev(0, 0), 0));
        assert!(!maps_line_is("garbage", 0, 0));
        assert!(cgroup(std::process::id()).is_some_and(|c| c.contains(':')));
    }

    #[test]
    fn tells_runnable_threads_from_sleeping_ones() {
        let line = "1234 (a b) c)) R 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654";
        assert_eq!(parse_state(line), Some('R'));
        assert_eq!(parse_state("garbage"), None);
        // This thread reads its own state while it runs.
        assert!(thread_runnable(std::process::id(), 512));
        // A process that only sleeps.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let asleep = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !thread_runnable(pid, 8)
        });
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(asleep, "a sleeping process looked runnable");
        assert!(!thread_runnable(pid, 8), "a reaped process looked runnable");
    }
}
