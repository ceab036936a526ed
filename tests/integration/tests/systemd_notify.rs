//! gpumuxd under systemd's readiness protocol (`Type=notify`): READY=1 arrives only once the
//! control socket and every tenant socket exist, and STOPPING=1 when SIGTERM stops it.

use fakegpu::testenv::FakeGpuEnv;
use gpumux_integration::gpumux::artifact;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification from gpumuxd");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_only_once_sockets_exist_and_stopping_on_sigterm() {
    let gpu = FakeGpuEnv::new(&[16 << 30]);
    let dir = tempfile::Builder::new()
        .prefix("gpumux-notify-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    let tenants = dir.path().join("tenants.d");
    std::fs::create_dir_all(&tenants).unwrap();
    std::fs::write(tenants.join("a.toml"), "memory_limit = \"1GiB\"\n").unwrap();
    let config = dir.path().join("gpumuxd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\ntenants_dir = \"{}\"\nmetrics_listen = \"\"\n",
            state.display(),
            tenants.display()
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log_path = dir.path().join("gpumuxd.log");
    let mut daemon = gpu
        .command(artifact("gpumuxd"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn gpumuxd");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let first = recv(&notify);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first notification is not READY=1: {first:?}\n{}",
        log()
    );
    // Checked the moment READY=1 arrives: units ordered after gpumuxd can rely on these.
    assert!(state.join("gpumuxd.sock").exists(), "{}", log());
    assert!(
        state.join("tenants/a/gpumux.sock").exists(),
        "tenant socket missing at READY=1\n{}",
        log()
    );

    let pid = daemon.id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let last = recv(&notify);
    assert!(
        last.lines().any(|l| l == "STOPPING=1"),
        "expected STOPPING=1, got {last:?}\n{}",
        log()
    );
    let status = daemon.wait().unwrap();
    assert!(status.success(), "gpumuxd exited with {status}\n{}", log());
}
