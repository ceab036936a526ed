//! A tenant cannot crash, hang or fool gpumuxd (issue #10): each test plays one attack of a
//! hostile tenant process (through its socket, the descriptors it receives, its directory) or
//! one mistake of an operator (in `tenants_dir`), and checks that the daemon survives, keeps
//! serving the others, and holds the limits. Each of these failed on the daemon before the
//! hardening (run them with `GPUMUX_TEST_BINARIES=<dir of old builds>` to see it).

use gpumux_common::protocol::ClientMsg;
use gpumux_common::shm::AccountingSegment;
use gpumux_common::shm::Segment;
use gpumux_integration::client::{
    Client, SliceUser, cpu_seconds, registration_latency, slice_handover_latency,
};
use gpumux_integration::gpumux::{Backend, Gpumux, wait_until};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, bind_race_lib, c_workload, i, run,
};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const ONE_GIB: &str = "memory_limit = \"1GiB\"\n";

/// The timing-sensitive tests here run one at a time.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn alive_and_answering(g: &mut Gpumux) {
    assert!(g.daemon_alive(), "gpumuxd died; log:\n{}", g.log());
    g.status()
        .unwrap_or_else(|e| panic!("status: {e:#}; log:\n{}", g.log()));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median registration latency of `tenant` over 15 tries spread over ~2 s (so that a loop
/// stalled part of the time is caught, whatever the phase).
fn spread_latency(g: &Gpumux, tenant: &str) -> f64 {
    median(
        (0..15)
            .map(|k| {
                std::thread::sleep(Duration::from_millis(97 + 13 * (k % 5)));
                registration_latency(&g.socket(tenant)).unwrap()
            })
            .collect(),
    )
}

/// Allocates in `tenant` with a real process: `(result of 900 MiB, result of 200 MiB more)`.
fn allocate_900_then_200(g: &Gpumux, tenant: &str) -> (i64, i64) {
    let out = run(
        g.tenant_command(tenant, c_workload())
            .args(["ops", "alloc:x:900MiB alloc:y:200MiB"]),
        T,
    )
    .unwrap();
    (
        i(out.lines.named("alloc", "x"), "result"),
        i(out.lines.named("alloc", "y"), "result"),
    )
}

/// Row 1: `ftruncate` on the accounting descriptor used to kill the daemon with SIGBUS.
#[test]
fn truncating_the_accounting_descriptor_cannot_crash_the_daemon() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB), ("b", ONE_GIB)]);
    let r = Client::register(&g.socket("a")).unwrap();
    // SAFETY: truncating a descriptor this process owns (what a hostile tenant does).
    let rc = unsafe { libc::ftruncate(r.accounting_fd.as_raw_fd(), 0) };
    assert_eq!(rc, 0);
    // The daemon touches the segment: another registration (its slot), status (all of it).
    let other = Client::register(&g.socket("a")).unwrap();
    drop(other);
    alive_and_answering(&mut g);
    wait_until(
        Duration::from_secs(5),
        || g.tenant_status("a")["accounting_repairs"].as_u64() >= Some(1),
        || format!("the damage was not repaired; log:\n{}", g.log()),
    );
    // Growing the file through the descriptor (to fill the daemon's file system) is undone.
    // SAFETY: as above.
    let rc = unsafe { libc::ftruncate(r.accounting_fd.as_raw_fd(), 1 << 30) };
    assert_eq!(rc, 0);
    let acct = g.state_dir.join("segments/a.acct");
    wait_until(
        Duration::from_secs(5),
        || {
            std::fs::metadata(&acct).map(|m| m.len()).ok()
                == Some(AccountingSegment::segment_len() as u64)
        },
        || format!("size not restored; log:\n{}", g.log()),
    );
    drop(r);
    // The tenant works again and its limit holds; the other tenant never noticed.
    assert_eq!(
        allocate_900_then_200(&g, "a"),
        (CUDA_SUCCESS, CUDA_ERROR_OUT_OF_MEMORY)
    );
    assert_eq!(
        allocate_900_then_200(&g, "b"),
        (CUDA_SUCCESS, CUDA_ERROR_OUT_OF_MEMORY)
    );
    alive_and_answering(&mut g);
}

/// Row 2: running out of descriptors used to make the daemon spin and stop answering.
#[test]
fn descriptor_exhaustion_backs_off_and_the_control_socket_answers() {
    let _serial = exclusive();
    let mut g = Gpumux::prepare(
        Backend::Fake(vec![16 * GIB]),
        &[("a", ONE_GIB), ("b", ONE_GIB)],
        "",
    );
    g.daemon_fd_limit = Some(128);
    g.start_daemon();
    g.wait_for_socket("a");
    g.wait_for_socket("b");
    let pid = g.daemon_pid().unwrap();
    // Idle connections: far more than the daemon may open.
    let mut idle: Vec<Client> = (0..200)
        .map_while(|_| Client::connect(&g.socket("a")).ok())
        .collect();
    assert!(idle.len() > 128, "only {} connections", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds(pid) - cpu0;
    assert!(
        cpu < 0.5,
        "gpumuxd used {cpu:.2} s of CPU in 2 s while out of descriptors"
    );
    let t = Instant::now();
    alive_and_answering(&mut g);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "status took {:?}",
        t.elapsed()
    );
    let warnings = g.log().matches("out of file descriptors").count();
    assert!(warnings <= 3, "{warnings} warnings about descriptors");
    // Descriptors come back: the other tenant registers again.
    idle.truncate(20);
    let mut registered = None;
    wait_until(
        Duration::from_secs(10),
        || {
            registered = Client::register(&g.socket("b")).ok();
            registered.is_some()
        },
        || {
            format!(
                "no registration after descriptors came back; log:\n{}",
                g.log()
            )
        },
    );
}

/// Row 2: one tenant's connections are capped, so they cannot take the others' descriptors.
#[test]
fn connections_per_tenant_are_capped() {
    let mut g = Gpumux::start_with(
        &[16 * GIB],
        &[("a", ONE_GIB), ("b", ONE_GIB)],
        "max_connections_per_tenant = 50\n",
    );
    let conns: Vec<Client> = (0..80)
        .map(|_| Client::connect(&g.socket("a")).unwrap())
        .collect();
    let mut refused = 0;
    for c in &conns[50..] {
        if let Ok((gpumux_common::protocol::ServerMsg::Refused { reason }, _)) =
            c.recv(Duration::from_secs(5))
        {
            assert!(reason.contains("max_connections_per_tenant"), "{reason}");
            refused += 1;
        }
    }
    assert_eq!(
        refused, 30,
        "connections over the cap are refused with the reason"
    );
    Client::register(&g.socket("b")).expect("the other tenant registers");
    alive_and_answering(&mut g);
}

/// A tmpfs mounted for one test, detached on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: &std::path::Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs (this test needs root)");
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("cannot unmount {}", self.0.display());
        }
    }
}

/// Row 3: a full file system used to kill the daemon with SIGBUS at the next registration.
#[test]
fn a_full_file_system_is_a_registration_error_not_a_crash() {
    let mut g = Gpumux::prepare(Backend::Fake(vec![16 * GIB]), &[("a", ONE_GIB)], "");
    let _fs = SmallFs::mount(&g.state_dir, "4m");
    g.start_daemon();
    g.wait_for_socket("a");
    // Fill the file system the daemon keeps its state on.
    let fill = g.state_dir.join("fill");
    let chunk = vec![0u8; 64 * 1024];
    let mut f = std::fs::File::create(&fill).unwrap();
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    // Registrations touch new pages of the accounting segment: they were reserved.
    let many: Vec<_> = (0..40)
        .map(|_| Client::register(&g.socket("a")).expect("register"))
        .collect();
    drop(many);
    alive_and_answering(&mut g);
    // A tenant added now cannot get its accounting: a clear refusal, for it only.
    g.write_tenant("b", ONE_GIB);
    g.wait_for_socket("b");
    let c = Client::connect(&g.socket("b")).unwrap();
    c.send(&ClientMsg::Hello {
        protocol: gpumux_common::protocol::PROTOCOL_VERSION,
        pid: 1,
    })
    .unwrap();
    match c.recv(Duration::from_secs(5)).unwrap().0 {
        gpumux_common::protocol::ServerMsg::Refused { reason } => {
            assert!(reason.contains("free space"), "{reason}");
        }
        other => panic!("registration on a full file system answered {other:?}"),
    }
    Client::register(&g.socket("a")).expect("the existing tenant still registers");
    // Truncated while the file system is full: what the truncation freed is reserved again.
    let r = Client::register(&g.socket("a")).unwrap();
    // SAFETY: truncating a descriptor this process owns (what a hostile tenant does).
    let rc = unsafe { libc::ftruncate(r.accounting_fd.as_raw_fd(), 0) };
    assert_eq!(rc, 0);
    wait_until(
        Duration::from_secs(5),
        || g.log().contains("damaged its accounting file"),
        || format!("the truncation was not repaired; log:\n{}", g.log()),
    );
    alive_and_answering(&mut g);
    drop(r);
    Client::register(&g.socket("a")).expect("the repaired tenant registers");
    // Space comes back: so do the tenants.
    std::fs::remove_file(&fill).unwrap();
    Client::register(&g.socket("b")).expect("registers once there is space");
    alive_and_answering(&mut g);
}

/// Row 4: a tenant holding its own accounting lock used to stall the daemon's loop.
#[test]
fn a_tenant_holding_its_lock_delays_no_one() {
    let _serial = exclusive();
    let mut g = Gpumux::start(
        &[16 * GIB],
        &[("a", ONE_GIB), ("b", ONE_GIB), ("c", ONE_GIB)],
    );
    let (b, c) = (
        SliceUser(Client::register(&g.socket("b")).unwrap()),
        SliceUser(Client::register(&g.socket("c")).unwrap()),
    );
    let slicing_before = slice_handover_latency(&b, &c, 12).unwrap();
    let baseline = spread_latency(&g, "b");
    let holder = Client::register(&g.socket("a")).unwrap();
    let guard = holder.accounting.lock.lock().unwrap();
    // Thirty registrations end while the lock is held: each needs a reclaim.
    for _ in 0..30 {
        drop(Client::register(&g.socket("a")).unwrap());
    }
    let during = spread_latency(&g, "b");
    let slicing_during = slice_handover_latency(&b, &c, 12).unwrap();
    eprintln!(
        "registration: {:.1} ms before, {:.1} ms while a tenant holds its lock; \
         slice hand-over: {:.1} ms before, {:.1} ms",
        baseline * 1e3,
        during * 1e3,
        slicing_before * 1e3,
        slicing_during * 1e3
    );
    assert!(
        slicing_during - slicing_before < 0.010,
        "a slice hand-over took {:.1} ms more while another tenant held its lock",
        (slicing_during - slicing_before) * 1e3
    );
    assert!(
        during - baseline < 0.010,
        "registration took {:.1} ms more while another tenant held its lock",
        (during - baseline) * 1e3
    );
    drop(guard);
    // The deferred reclaims complete once the lock is free.
    wait_until(
        Duration::from_secs(5),
        || g.tenant_status("a")["processes"].as_array().map(Vec::len) == Some(1),
        || format!("reclaims not retried: {}", g.tenant_status("a")),
    );
    drop(holder);
    g.wait_tenant_used("a", 0, Duration::from_secs(5));
    alive_and_answering(&mut g);
}

/// Row 6: a removed tenant's processes used to leave scheduling and launch un-gated.
#[test]
fn a_removed_tenants_processes_stay_gated_at_weight_one() {
    let mut g = Gpumux::start(
        &[16 * GIB],
        &[
            ("a", "memory_limit = \"1GiB\"\nweight = 3\n"),
            ("b", "memory_limit = \"1GiB\"\nweight = 3\n"),
            ("c", ONE_GIB),
        ],
    );
    let rb = Client::register(&g.socket("b")).unwrap();
    let _ra = Client::register(&g.socket("a")).unwrap();
    assert_eq!(rb.control.devices[0].scheduled.load(Relaxed), 1);
    std::fs::remove_file(g.tenants_dir.join("b.toml")).unwrap();
    wait_until(
        Duration::from_secs(5),
        || g.tenant_status("b")["removed"] == true,
        || format!("b not removed: {}", g.tenant_status("b")),
    );
    // Still gated by the scheduler, no new memory, shown at weight 1 with its process.
    assert_eq!(rb.control.devices[0].scheduled.load(Relaxed), 1, "un-gated");
    assert_eq!(rb.control.devices[0].memory_limit.load(Relaxed), 0);
    let b = g.tenant_status("b");
    assert_eq!(b["weight"], 1, "{b}");
    assert_eq!(b["processes"].as_array().map(Vec::len), Some(1), "{b}");
    drop(rb);
    g.wait_tenant_gone(
        "b",
        Duration::from_secs(5),
        "a removed tenant without processes lingers",
    );
    alive_and_answering(&mut g);
}

/// Rows 7 and 8: a FIFO used to block the loop forever; a symlink to `/dev/zero` or a huge
/// file used to eat memory.
#[test]
fn only_small_regular_files_are_read_from_tenants_dir() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB)]);
    let fifo = g.tenants_dir.join("x.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", g.tenants_dir.join("y.toml")).unwrap();
    std::fs::write(g.tenants_dir.join("z.toml"), vec![b'#'; 1 << 20]).unwrap();
    g.write_tenant("w", ONE_GIB);
    g.wait_for_socket("w");
    alive_and_answering(&mut g);
    let errors = g.status().unwrap()["config_errors"].to_string();
    for (file, why) in [
        ("x.toml", "FIFO"),
        ("y.toml", "device"),
        ("z.toml", "more than"),
    ] {
        assert!(
            errors.contains(file) && errors.contains(why),
            "{file}: {why} not in {errors}"
        );
    }
    Client::register(&g.socket("a")).expect("registration goes on");
}

/// Row 9: a removed and recreated (or replaced) `tenants_dir` used to be watched no more.
#[test]
fn a_replaced_tenants_dir_is_watched_again() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB)]);
    std::fs::remove_dir_all(&g.tenants_dir).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::create_dir(&g.tenants_dir).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    g.write_tenant("b", ONE_GIB);
    g.wait_for_socket("b");
    // Replaced by a rename: the new directory is the one watched.
    let new = g.dir.path().join("tenants.new");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("a.toml"), ONE_GIB).unwrap();
    std::fs::rename(&g.tenants_dir, g.dir.path().join("tenants.old")).unwrap();
    std::fs::rename(&new, &g.tenants_dir).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    g.write_tenant("c", ONE_GIB);
    g.wait_for_socket("c");
    g.wait_tenant_gone(
        "b",
        Duration::from_secs(5),
        "b's file went with the old directory, b did not",
    );
    alive_and_answering(&mut g);
}

/// Row 10: huge counters written into the accounting segment used to overflow the daemon's
/// sums (a panic in status, a crash loop at start).
#[test]
fn garbage_in_the_accounting_segment_is_harmless() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB)]);
    let r = Client::register(&g.socket("a")).unwrap();
    for p in r.accounting.processes.iter() {
        p.launches[0].store(u64::MAX - 7, Relaxed);
    }
    for slot in [r.slot, (r.slot + 1) % 1024, (r.slot + 2) % 1024] {
        r.accounting.processes[slot].used[0].store(u64::MAX / 2, Relaxed);
    }
    r.accounting.devices[0].wait_ns.store(u64::MAX, Relaxed);
    alive_and_answering(&mut g);
    // The next daemon audits this segment at start.
    g.kill_daemon();
    g.start_daemon();
    g.wait_for_socket("a");
    wait_until(
        Duration::from_secs(5),
        || g.status().is_ok(),
        || format!("restarted daemon does not answer; log:\n{}", g.log()),
    );
    alive_and_answering(&mut g);
}

/// Row 11: the daemon changed its socket's mode by path: a tenant swapping the socket for a
/// symlink redirected that change to any file.
#[test]
fn a_socket_swapped_for_a_symlink_redirects_nothing() {
    let mut g = Gpumux::prepare(Backend::Fake(vec![16 * GIB]), &[("a", ONE_GIB)], "");
    let victim = g.dir.path().join("victim");
    std::fs::write(&victim, "secret").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    g.daemon_env = vec![
        ("LD_PRELOAD".into(), bind_race_lib().display().to_string()),
        ("BIND_RACE_NAME".into(), "gpumux.sock".into()),
        ("BIND_RACE_VICTIM".into(), victim.display().to_string()),
    ];
    g.start_daemon();
    wait_until(
        Duration::from_secs(10),
        || g.log().contains("bind_race: swapped"),
        || format!("the race was not run; log:\n{}", g.log()),
    );
    std::thread::sleep(Duration::from_millis(200));
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode, 0o600,
        "the daemon changed the mode of a file a tenant pointed it to"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
    assert!(g.daemon_alive());
}

/// Row 12: a flood of demands or of bad messages used to cost others latency and flood the
/// log with a line per message.
#[test]
fn floods_are_rate_limited_and_logged_once_per_interval() {
    let _serial = exclusive();
    let mut g = Gpumux::start(
        &[16 * GIB],
        &[("a", ONE_GIB), ("b", ONE_GIB), ("c", ONE_GIB)],
    );
    let (b, c) = (
        SliceUser(Client::register(&g.socket("b")).unwrap()),
        SliceUser(Client::register(&g.socket("c")).unwrap()),
    );
    let slicing_before = slice_handover_latency(&b, &c, 12).unwrap();
    let baseline = spread_latency(&g, "b");
    let flooder = Client::register(&g.socket("a")).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (during, slicing_during) = std::thread::scope(|s| {
        s.spawn(|| {
            let msg = ClientMsg::Demand { device: 0 }.encode();
            while !stop.load(Relaxed) {
                let _full = gpumux_common::sock::send(
                    std::os::fd::AsFd::as_fd(&flooder.client.fd),
                    &msg,
                    &[],
                );
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let during = spread_latency(&g, "b");
        let slicing = slice_handover_latency(&b, &c, 12).unwrap();
        stop.store(true, Relaxed);
        (during, slicing)
    });
    eprintln!(
        "registration: {:.1} ms before, {:.1} ms during a demand flood; slice hand-over: {:.1} ms before, {:.1} ms",
        baseline * 1e3,
        during * 1e3,
        slicing_before * 1e3,
        slicing_during * 1e3
    );
    assert!(
        slicing_during - slicing_before < 0.010,
        "a demand flood added {:.1} ms to other tenants' slice hand-over",
        (slicing_during - slicing_before) * 1e3
    );
    assert!(
        during - baseline < 0.010,
        "a demand flood added {:.1} ms to another tenant's registration",
        (during - baseline) * 1e3
    );
    // A thousand malformed messages, each on its own connection: a few log lines.
    for _ in 0..1000 {
        let c = Client::connect(&g.socket("a")).unwrap();
        let _gone = gpumux_common::sock::send(
            std::os::fd::AsFd::as_fd(&c.fd),
            b"\xff\xff\xff\xffgarbage",
            &[],
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    alive_and_answering(&mut g);
    let lines = g.log().matches("bad message").count();
    assert!(lines <= 3, "{lines} log lines for 1000 bad messages");
}

/// What held and must keep holding: tenants cannot write their control segment.
#[test]
fn the_sealed_control_segment_resists_every_write() {
    let g = Gpumux::start(&[16 * GIB], &[("a", ONE_GIB)]);
    let r = Client::register(&g.socket("a")).unwrap();
    let fd = r.control_fd.as_raw_fd();
    let len = gpumux_common::shm::ControlSegment::segment_len();
    // SAFETY: system calls on a descriptor we own; results checked.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_eq!(p, libc::MAP_FAILED, "writable shared mapping");
        assert_eq!(libc::write(fd, b"x".as_ptr().cast(), 1), -1, "write(2)");
        assert_eq!(
            libc::pwrite(fd, b"x".as_ptr().cast(), 1, 0),
            -1,
            "pwrite(2)"
        );
        assert_ne!(libc::ftruncate(fd, 0), 0, "ftruncate");
        assert_ne!(libc::fallocate(fd, 0, 0, 1 << 20), 0, "fallocate");
        assert_ne!(libc::fcntl(fd, libc::F_ADD_SEALS, 0), 0, "more seals");
        let ro = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(ro, libc::MAP_FAILED);
        assert_ne!(
            libc::mprotect(ro, len, libc::PROT_READ | libc::PROT_WRITE),
            0,
            "mprotect"
        );
        libc::munmap(ro, len);
    }
    assert_eq!(r.control.devices[0].memory_limit.load(Relaxed), GIB);
}
