//! Releasing the primary context from a thread-exit destructor that runs after the driver's own
//! thread-locals are destroyed (cuda.core does it from a C++ `thread_local` at process exit): the
//! fake answers like a driver, it does not panic ("cannot access a Thread Local Storage value
//! during or after destruction") or crash. Builds `c/thread_exit.c` with the system C compiler.

use fakegpu::testenv::FakeGpuEnv;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn primary_context_released_from_thread_exit_destructors() {
    let env = FakeGpuEnv::new(&[1 << 30]);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/thread_exit.c");
    let exe = env.lib_dir().parent().unwrap().join("thread_exit");
    let cc = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(["-ldl", "-pthread"])
        .status()
        .expect("run cc");
    assert!(cc.success(), "cc failed");
    let out = env.command(&exe).output().expect("run thread_exit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "thread_exit failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked"),
        "the driver panicked:\n{stderr}"
    );
    // Both destructors ran and every call succeeded; the thread's current context is gone with
    // its thread-locals.
    for who in ["thread", "main"] {
        let line = format!("{who} retain=0 current=0 release=0 ctx=0");
        assert!(
            stdout.lines().any(|l| l == line),
            "no `{line}` in:\n{stdout}\n{stderr}"
        );
    }
    assert_eq!(env.snapshot().devices[0].used_bytes, 0);
}
