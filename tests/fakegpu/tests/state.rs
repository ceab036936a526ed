//! Behaviour of the shared device state: capacity across processes, dead-process reclaim, the
//! fair device lock and its recovery, the trace.

use fakegpu::{DeviceConfig, FakeGpuError, GpuState};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn create(tag: &str, devices: &[u64]) -> (TempDir, PathBuf, GpuState) {
    let dir = std::env::temp_dir().join(format!("fakegpu-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("state");
    std::fs::remove_file(&p).ok();
    let s = GpuState::open_or_create(&p, &DeviceConfig::new(devices).unwrap()).unwrap();
    (TempDir(dir), p, s)
}

/// Forks a child that runs `f` and then waits forever (until killed). Returns its pid once `f`
/// has returned in the child.
fn fork_child(f: impl FnOnce()) -> libc::pid_t {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only runs `f` (which uses the fakegpu API) and then sleeps/exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        f();
        // SAFETY: writing one byte from a valid buffer to the pipe's write end.
        unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        loop {
            std::thread::sleep(Duration::from_secs(1000));
        }
    }
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a valid buffer from the pipe's read end.
    unsafe {
        libc::close(fds[1]);
        assert_eq!(libc::read(fds[0], b.as_mut_ptr().cast(), 1), 1);
        libc::close(fds[0]);
    }
    pid
}

fn kill(pid: libc::pid_t) {
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

#[test]
fn config_is_fixed_by_creator() {
    let (_dir, p, s) = create("config", &[64 * MIB, 32 * MIB]);
    assert_eq!(s.device_count(), 2);
    let again = GpuState::open_or_create(&p, &DeviceConfig::new(&[1]).unwrap()).unwrap();
    assert_eq!(again.device_count(), 2);
    assert_eq!(again.total_memory(1).unwrap(), 32 * MIB);
    let snap = s.snapshot();
    assert_eq!(snap.devices[0].uuid, fakegpu::device_uuid_string(0));
    assert_eq!(snap.devices[1].name, "gpumux Fake GPU");
    assert!(matches!(
        GpuState::open_existing(&p.with_extension("missing")),
        Err(FakeGpuError::Io { .. })
    ));
    std::fs::write(p.with_extension("junk"), vec![7u8; 100_000]).unwrap();
    assert!(matches!(
        GpuState::open_existing(&p.with_extension("junk")),
        Err(FakeGpuError::InvalidState { .. })
    ));
}

#[test]
fn capacity_is_enforced_and_nothing_charged_on_failure() {
    let (_dir, _p, s) = create("capacity", &[100 * MIB, 10 * MIB]);
    s.charge(0, 60 * MIB).unwrap();
    let e = s.charge(0, 41 * MIB).unwrap_err();
    assert!(matches!(e, FakeGpuError::OutOfMemory { free, .. } if free == 40 * MIB));
    assert_eq!(s.mem_info(0).unwrap(), (40 * MIB, 100 * MIB));
    s.charge(0, 40 * MIB).unwrap();
    assert_eq!(s.mem_info(0).unwrap().0, 0);
    assert!(s.charge(0, 1).is_err());
    assert!(s.charge(0, u64::MAX).is_err());
    assert_eq!(s.mem_info(1).unwrap(), (10 * MIB, 10 * MIB));
    s.uncharge(0, 100 * MIB);
    assert_eq!(s.mem_info(0).unwrap().0, 100 * MIB);
    assert!(matches!(s.charge(2, 1), Err(FakeGpuError::NoDevice(2))));
    let snap = s.snapshot();
    let me = &snap.devices[0].processes;
    assert_eq!(me.len(), 1);
    assert_eq!(me[0].pid, std::process::id());
    assert_eq!(me[0].used_bytes, 0);
}

#[test]
fn concurrent_charges_never_exceed_capacity() {
    let (_dir, _p, s) = create("concurrent", &[1000 * MIB]);
    let s = Arc::new(s);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || (0..500).filter(|_| s.charge(0, 3 * MIB).is_ok()).count())
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 333);
    assert_eq!(s.mem_info(0).unwrap().0, MIB);
}

#[test]
fn dead_process_memory_is_reclaimed() {
    let (_dir, p, s) = create("reclaim", &[100 * MIB]);
    let child = fork_child(|| {
        let s = GpuState::open_existing(&p).unwrap();
        s.charge(0, 70 * MIB).unwrap();
    });
    let snap = s.snapshot();
    assert_eq!(snap.devices[0].used_bytes, 70 * MIB);
    assert_eq!(snap.devices[0].processes[0].pid, child as u32);
    assert!(s.charge(0, 50 * MIB).is_err());
    kill(child);
    // Reclaimed lazily when an allocation hits capacity.
    s.charge(0, 50 * MIB).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.devices[0].used_bytes, 50 * MIB);
    assert_eq!(snap.devices[0].processes.len(), 1);
    assert_eq!(snap.devices[0].processes[0].pid, std::process::id());
}

#[test]
fn zombie_counts_as_dead() {
    let (_dir, p, s) = create("zombie", &[100 * MIB]);
    let child = fork_child(|| {
        GpuState::open_existing(&p)
            .unwrap()
            .charge(0, 10 * MIB)
            .unwrap();
    });
    // SAFETY: killing our own child, not reaping it yet.
    unsafe { libc::kill(child, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(s.mem_info(0).unwrap().0, 100 * MIB);
    kill(child);
}

#[test]
fn lock_is_fair_between_threads() {
    let (_dir, _p, s) = create("fair-threads", &[MIB]);
    let s = Arc::new(s);
    let stop = Instant::now() + Duration::from_millis(600);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < stop {
                    s.run_kernel(0, 1_000_000).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let counts: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = (counts[0] + counts[1]) as f64;
    let share = counts[0] as f64 / total;
    assert!((0.45..=0.55).contains(&share), "{counts:?}");
    let snap = s.snapshot();
    assert_eq!(snap.devices[0].max_concurrent_kernels, 1);
    assert_eq!(snap.devices[0].kernels_completed, counts[0] + counts[1]);
    let trace = s.kernel_trace(0).unwrap();
    assert_eq!(trace.len() as u64, counts[0] + counts[1]);
    for w in trace.windows(2) {
        assert!(w[0].end_ns <= w[1].start_ns, "kernels overlap: {w:?}");
    }
}

#[test]
fn lock_is_fair_between_processes() {
    let (_dir, p, s) = create("fair-procs", &[MIB]);
    let mut children = Vec::new();
    for _ in 0..2 {
        let p = p.clone();
        children.push(fork_child(move || {
            let s = GpuState::open_existing(&p).unwrap();
            s.attach(0).unwrap();
            std::thread::spawn(move || {
                loop {
                    s.run_kernel(0, 2_000_000).unwrap();
                }
            });
        }));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let snap = s.snapshot();
    for c in &children {
        kill(*c);
    }
    let d = &snap.devices[0];
    assert_eq!(d.max_concurrent_kernels, 1);
    let busy: Vec<u64> = children
        .iter()
        .map(|c| {
            d.processes
                .iter()
                .find(|p| p.pid == *c as u32)
                .map_or(0, |p| p.busy_ns)
        })
        .collect();
    let share = busy[0] as f64 / (busy[0] + busy[1]) as f64;
    assert!((0.45..=0.55).contains(&share), "busy split {busy:?}");
    // The device was never idle while both were saturating it.
    assert!(busy[0] + busy[1] > 800_000_000, "{busy:?}");
}

#[test]
fn dead_holder_is_recovered_quickly() {
    let (_dir, p, s) = create("dead-holder", &[MIB]);
    let child = fork_child(|| {
        let s = GpuState::open_existing(&p).unwrap();
        std::thread::spawn(move || {
            // Holds the device "forever".
            s.run_kernel(0, 3_600_000_000_000).ok();
        });
        std::thread::sleep(Duration::from_millis(50));
    });
    let s = Arc::new(s);
    let s2 = s.clone();
    let waiter = std::thread::spawn(move || {
        s2.run_kernel(0, 1_000_000).unwrap();
        Instant::now()
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished());
    let killed = Instant::now();
    kill(child);
    let got = waiter.join().unwrap();
    let delay = got - killed;
    assert!(
        delay < Duration::from_millis(100),
        "recovery took {delay:?}"
    );
    s.run_kernel(0, 1_000_000).unwrap();
    assert_eq!(s.snapshot().devices[0].max_concurrent_kernels, 1);
}

#[test]
fn dead_waiter_is_skipped() {
    let (_dir, p, s) = create("dead-waiter", &[MIB]);
    let s = Arc::new(s);
    let guard_holder = {
        let s = s.clone();
        std::thread::spawn(move || s.run_kernel(0, 200_000_000).unwrap())
    };
    std::thread::sleep(Duration::from_millis(20));
    let child = fork_child(|| {
        let s = GpuState::open_existing(&p).unwrap();
        std::thread::spawn(move || {
            s.run_kernel(0, 1_000_000).ok();
        });
        std::thread::sleep(Duration::from_millis(20));
    });
    let s2 = s.clone();
    let after = std::thread::spawn(move || {
        s2.run_kernel(0, 1_000_000).unwrap();
        Instant::now()
    });
    kill(child);
    let held = guard_holder.join().unwrap();
    let got = after.join().unwrap();
    let _ = held;
    let t = s.kernel_trace(0).unwrap();
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(got.elapsed() < Duration::from_secs(1));
    let gap = t[1].start_ns - t[0].end_ns;
    assert!(gap < 100_000_000, "dead waiter cost {gap} ns");
}
