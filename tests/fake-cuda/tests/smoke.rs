//! Builds the C checks in `c/` (`smoke.c`: the driver basics; `graphs.c`: CUDA graphs and stream
//! capture) with the system C compiler and runs them against the fake `libcuda.so.1` on an
//! isolated fake GPU.

use fakegpu::testenv::FakeGpuEnv;
use std::path::PathBuf;
use std::process::Command;

fn build(env: &FakeGpuEnv, name: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let exe = env.lib_dir().parent().unwrap().join(name);
    let cc = Command::new("cc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(cc.success(), "cc failed");
    exe
}

#[test]
fn c_smoke_test_passes() {
    let env = FakeGpuEnv::new(&[1 << 30]);
    let exe = build(&env, "smoke");
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

#[test]
fn two_saturating_processes_split_the_device_evenly() {
    let env = FakeGpuEnv::new(&[1 << 30]);
    let exe = build(&env, "smoke");
    let children: Vec<_> = (0..2)
        .map(|_| {
            env.command(&exe)
                .args(["spin", "2", "1500"])
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let trace = fakegpu::kernel_trace(env.state_path(), 0).unwrap();
    for w in trace.windows(2) {
        assert!(w[0].end_ns <= w[1].start_ns, "kernels overlap: {w:?}");
    }
    // Compare over the window where both ran (a busy host may start one well after the other):
    // from the later first start to the earlier last end.
    let span = |p: u32| {
        let mine = trace.iter().filter(|r| r.pid == p);
        let first = mine.clone().map(|r| r.start_ns).min().unwrap();
        (first, mine.map(|r| r.end_ns).max().unwrap())
    };
    let (last_start, first_end) = pids
        .iter()
        .map(|&p| span(p))
        .fold((0, u64::MAX), |(s, e), (first, last)| {
            (s.max(first), e.min(last))
        });
    let busy: Vec<u64> = pids
        .iter()
        .map(|p| {
            trace
                .iter()
                .filter(|r| r.pid == *p && r.start_ns >= last_start && r.end_ns <= first_end)
                .map(|r| r.end_ns - r.start_ns)
                .sum()
        })
        .collect();
    let share = busy[0] as f64 / (busy[0] + busy[1]) as f64;
    println!("busy split {busy:?} share {share:.3}");
    assert!((0.45..=0.55).contains(&share), "busy split {busy:?}");
    let snap = env.snapshot();
    assert_eq!(snap.devices[0].max_concurrent_kernels, 1);
}

#[test]
fn c_graph_checks_pass() {
    let env = FakeGpuEnv::new(&[1 << 30]);
    let exe = build(&env, "graphs");
    let out = env.command(&exe).output().expect("run graphs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "graph checks failed:\n{stdout}");
    let snap = env.snapshot();
    assert_eq!(snap.devices[0].max_concurrent_kernels, 1);
    assert_eq!(snap.devices[0].used_bytes, 0, "graph memory is reclaimed");
    let trace = fakegpu::kernel_trace(env.state_path(), 0).unwrap();
    let graph_kernels = trace
        .iter()
        .filter(|k| k.end_ns - k.start_ns >= 1_900_000)
        .count();
    assert!(
        graph_kernels >= 40,
        "replayed graph kernels on the device: {graph_kernels}"
    );
}
