//! cudarc (which resolves every function lazily with `dlsym` and panics on a missing one) runs its
//! context, stream, async allocation, copy, memset, module, launch, event, multi-stream and CUDA
//! graph (capture, instantiate, upload, replay) paths on the fake driver. The test re-executes itself in a child process with the fake's library
//! directory on `LD_LIBRARY_PATH`.

use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg, sys};
use cudarc::nvrtc::Ptx;
use fakegpu::testenv::FakeGpuEnv;

const CHILD: &str = "FAKECUDA_CUDARC_CHILD";
const GRAPH_CHILD: &str = "FAKECUDA_CUDARC_GRAPH_CHILD";

const PTX: &str = ".version 8.0\n.target sm_90\n.address_size 64\n\
    .visible .entry spin(\n .param .u64 spin_param_0\n)\n{\n ret;\n}\n";

fn child() {
    let ctx = CudaContext::new(0).expect("context");
    assert!(ctx.has_async_alloc());
    assert_eq!(ctx.name().unwrap(), "gpumux Fake GPU");
    let stream = ctx.default_stream();
    let (free0, total) = ctx.mem_get_info().unwrap();
    let data: Vec<u32> = (0..4096).collect();
    let d = stream.clone_htod(&data).expect("clone_htod");
    let back = stream.clone_dtoh(&d).expect("clone_dtoh");
    assert_eq!(back, data);
    let z = stream.alloc_zeros::<u8>(1 << 20).expect("alloc_zeros");
    assert!(stream.clone_dtoh(&z).unwrap().iter().all(|&b| b == 0));
    let (free1, _) = ctx.mem_get_info().unwrap();
    assert_eq!(
        free0 - free1,
        4096 * 4 + (1 << 20),
        "free {free0} -> {free1} of {total}"
    );
    let empty = stream.null::<u8>().expect("null slice");
    drop(empty);

    let module = ctx.load_module(Ptx::from_src(PTX)).expect("load_module");
    let spin = module.load_function("spin").expect("load_function");
    // cudarc's default event flags disable timing: elapsed time must then be refused.
    let untimed = stream.record_event(None).unwrap();
    let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(timing).unwrap();
    for _ in 0..3 {
        let ns: u64 = 10_000_000;
        let mut b = stream.launch_builder(&spin);
        b.arg(&ns);
        // SAFETY: `spin` takes one u64 parameter.
        unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.expect("launch");
    }
    let end = stream.record_event(timing).unwrap();
    end.synchronize().unwrap();
    untimed.elapsed_ms(&end).unwrap_err();
    let ms = start.elapsed_ms(&end).unwrap();
    assert!(
        (29.5..33.0).contains(&ms),
        "3 x 10 ms kernels measured {ms} ms"
    );

    // Multi-stream mode: event tracking, joins, per-stream work.
    let s2 = ctx.new_stream().expect("new_stream");
    let d2 = s2.clone_htod(&data).unwrap();
    s2.join(&stream).unwrap();
    let ns: u64 = 1_000_000;
    let mut b = s2.launch_builder(&spin);
    b.arg(&ns);
    // SAFETY: `spin` takes one u64 parameter.
    unsafe { b.launch(LaunchConfig::for_num_elems(32)) }.unwrap();
    assert_eq!(stream.clone_dtoh(&d2).unwrap(), data);
    s2.synchronize().unwrap();
    drop((d, d2, z));
    stream.synchronize().unwrap();
    ctx.synchronize().unwrap();
    let (free2, _) = ctx.mem_get_info().unwrap();
    assert_eq!(free2, free0, "all memory returned");
    ctx.check_err().expect("no deferred error");
    println!("cudarc child OK ({ms:.3} ms for 30 ms of kernels)");
}

/// Runs this test binary's test `name` in a child process on a fresh fake GPU with `var` set
/// (the child runs the workload); returns the child's output and the GPU.
fn run_child(name: &str, var: &str) -> (String, FakeGpuEnv) {
    let env = FakeGpuEnv::new(&[1 << 30]);
    let out = env
        .command(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(var, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "cudarc child failed:\n{text}");
    (text, env)
}

#[test]
fn cudarc_runs_on_the_fake() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let (text, env) = run_child("cudarc_runs_on_the_fake", CHILD);
    assert!(text.contains("cudarc child OK"));
    let snap = env.snapshot();
    assert_eq!(snap.devices[0].kernels_completed, 4);
    assert_eq!(snap.devices[0].used_bytes, 0);
}

/// Captures 4 spin kernels with cudarc's graph API, uploads and replays the graph 3 times.
fn graph_child() {
    let ctx = CudaContext::new(0).expect("context");
    let stream = ctx.new_stream().expect("stream");
    let module = ctx.load_module(Ptx::from_src(PTX)).expect("load_module");
    let spin = module.load_function("spin").expect("load_function");
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .expect("begin_capture");
    assert_eq!(
        stream.capture_status().unwrap(),
        sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE
    );
    for _ in 0..4 {
        let ns: u64 = 1_000_000;
        let mut b = stream.launch_builder(&spin);
        b.arg(&ns);
        // SAFETY: `spin` takes one u64 parameter.
        unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.expect("captured launch");
    }
    let graph = stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .expect("end_capture")
        .expect("a graph");
    graph.upload().expect("upload");
    for _ in 0..3 {
        graph.launch().expect("graph launch");
    }
    stream.synchronize().unwrap();
    drop(graph);
    ctx.check_err().expect("no deferred error");
    println!("cudarc graph child OK");
}

#[test]
fn cudarc_replays_a_captured_graph_on_the_fake() {
    if std::env::var_os(GRAPH_CHILD).is_some() {
        graph_child();
        return;
    }
    let (text, env) = run_child("cudarc_replays_a_captured_graph_on_the_fake", GRAPH_CHILD);
    assert!(text.contains("cudarc graph child OK"));
    let snap = env.snapshot();
    assert_eq!(
        snap.devices[0].kernels_completed, 12,
        "3 replays of 4 captured kernels, none run at capture"
    );
}
