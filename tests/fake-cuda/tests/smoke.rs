//! Builds `c/smoke.c` with the system C compiler and runs it against the fake `libcuda.so.1` on an
//! isolated fake GPU.

use fakegpu::testenv::FakeGpuEnv;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn c_smoke_test_passes() {
    let env = FakeGpuEnv::new(&[1 << 30]);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/smoke.c");
    let exe = env.lib_dir().parent().unwrap().join("smoke");
    let cc = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(cc.success(), "cc failed");
    let out = env.command(&exe).output().expect("run smoke");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "smoke test failed:\n{stdout}");
    let snap = env.snapshot();
    assert_eq!(snap.devices[0].max_concurrent_kernels, 1);
    assert_eq!(
        snap.devices[0].used_bytes, 0,
        "the smoke process's memory is reclaimed"
    );
}
