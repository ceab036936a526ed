//! Memory the application never asked for: each context and loaded module occupies device
//! memory that no allocation call returns. First the fake's model of it (what a real driver
//! does: visible in `cuMemGetInfo`, NVML and the ground truth, a context that does not fit is
//! `CUDA_ERROR_OUT_OF_MEMORY`), then gpumux holding a tenant's whole footprint — allocations
//! plus overhead — to its quota, and processes that use the GPU without gpumux (unmanaged).
//!
//! Ground truth is the fake's per-process record (`fakegpu` snapshot), never gpumux's figures.
//! Run after `cargo build --workspace`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fakegpu::DeviceConfig;
use fakegpu::fault::NvmlFault;
use fakegpu::testenv::FakeGpuEnv;
use gpumux_integration::client::{Client, Registered};
use gpumux_integration::gpumux::{Backend, Gpumux, wait_until};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, MIB, Running, c_workload, command, i, nvml_probe,
    run, spin_ptx_path, u,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// What each context occupies in these tests (the fake's realistic default is 300 MiB too).
const CTX: u64 = 300 * MIB;
/// Module memory per KiB of image: big enough that a loaded spin module is plainly visible.
const MODULE_PER_KIB: u64 = MIB;

/// Device memory the spin module (the C workload's `module:`/`library:` image) occupies.
fn module_bytes() -> u64 {
    let len = std::fs::metadata(spin_ptx_path()).expect("spin.ptx").len();
    fakegpu::module_bytes(len, MODULE_PER_KIB)
}

fn with_overhead(devices: &[u64]) -> DeviceConfig {
    DeviceConfig::new(devices)
        .expect("valid devices")
        .with_overhead(CTX, MODULE_PER_KIB)
}

fn frees(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|m| u(m, "free")).collect()
}

/// The fake's record of `pid` on device 0: `(used, overhead)` (0, 0 when not on the device).
fn truth(env: &FakeGpuEnv, pid: u32) -> (u64, u64) {
    env.snapshot().devices[0]
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .map_or((0, 0), |p| (p.used_bytes, p.overhead_bytes))
}

// ---- the fake ------------------------------------------------------------------------------

#[test]
fn fake_contexts_modules_and_libraries_occupy_device_memory() {
    let env = FakeGpuEnv::with_config(with_overhead(&[4 * GIB]));
    let m = module_bytes();
    assert!(m > 0);
    // Primary context at start; a created context; a module in the primary context; a library
    // (loaded into both contexts).
    let mut r = Running::spawn(&mut command(
        &env,
        &c_workload(),
        [
            "ops",
            "meminfo ctx:c meminfo module:m meminfo library:l meminfo sleep:60000",
        ],
    ))
    .unwrap();
    let infos = r.wait_for_count("meminfo", 4, T).unwrap();
    assert_eq!(
        frees(&infos),
        vec![
            4 * GIB - CTX,
            4 * GIB - 2 * CTX,
            4 * GIB - 2 * CTX - m,
            4 * GIB - 2 * CTX - 3 * m
        ],
        "{:?}",
        r.seen()
    );
    assert!(infos.iter().all(|l| u(l, "total") == 4 * GIB));
    // Ground truth and NVML: the process holds it all, though it allocated nothing.
    let held = 2 * CTX + 3 * m;
    assert_eq!(truth(&env, r.pid()), (held, held));
    assert_eq!(env.snapshot().devices[0].used_bytes, held);
    let probe = run(&mut command(&env, &nvml_probe(), [] as [&str; 0]), T).unwrap();
    probe.assert_success();
    let procs = probe.lines.one("processes");
    let mine = procs["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == r.pid())
        .unwrap_or_else(|| panic!("{} not listed by NVML: {procs}", r.pid()));
    assert_eq!(
        u(mine, "used"),
        held,
        "usedGpuMemory includes contexts and modules"
    );
    let dev = probe.lines.one("device");
    assert_eq!(u(&dev["mem_v1"], "used"), held, "{dev}");
    r.kill();
    assert_eq!(env.snapshot().devices[0].used_bytes, 0, "returned at exit");

    // Unloading and destroying give it back; destroying a context drops the libraries' copies.
    let mut r = Running::spawn(&mut command(
        &env,
        &c_workload(),
        [
            "ops",
            "library:l ctx:c meminfo drop:c meminfo module:m drop:l meminfo drop:m meminfo \
             alloc:a:100MiB meminfo sleep:60000",
        ],
    ))
    .unwrap();
    let infos = r.wait_for_count("meminfo", 5, T).unwrap();
    assert_eq!(
        frees(&infos),
        vec![
            4 * GIB - 2 * CTX - 2 * m,
            4 * GIB - CTX - m,
            4 * GIB - CTX - m,
            4 * GIB - CTX,
            4 * GIB - CTX - 100 * MIB
        ],
        "{:?}",
        r.seen()
    );
    assert!(
        r.seen()
            .iter()
            .filter(|l| l["op"] == "drop")
            .all(|l| i(l, "result") == CUDA_SUCCESS)
    );
    // An allocation is not overhead.
    assert_eq!(truth(&env, r.pid()), (CTX + 100 * MIB, CTX));
}

#[test]
fn fake_context_that_does_not_fit_is_out_of_memory() {
    let env = FakeGpuEnv::with_config(with_overhead(&[GIB]));
    // 300 MiB context + 424 MiB: 300 MiB left, exactly one more context.
    let mut holder = Running::spawn(&mut command(
        &env,
        &c_workload(),
        ["ops", "alloc:a:424MiB meminfo sleep:60000"],
    ))
    .unwrap();
    let m = holder.wait_for("meminfo", T).unwrap();
    assert_eq!(u(&m, "free"), GIB - CTX - 424 * MIB);
    // The second process's primary context fits (nothing left); a created context does not.
    let lines = run(
        &mut command(&env, &c_workload(), ["ops", "meminfo ctx:c meminfo"]),
        T,
    )
    .unwrap()
    .lines;
    assert_eq!(u(lines.ops("meminfo")[0], "free"), 0);
    assert_eq!(
        i(lines.named("ctx", "c"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY
    );
    assert_eq!(u(lines.ops("meminfo")[1], "free"), 0, "nothing charged");
    // That process exited: its context's memory is back. Another takes it; then a primary
    // context does not fit either.
    let mut second = Running::spawn(&mut command(
        &env,
        &c_workload(),
        ["ops", "meminfo sleep:60000"],
    ))
    .unwrap();
    second.wait_for("meminfo", T).unwrap();
    let lines = run(&mut command(&env, &c_workload(), ["ops", "meminfo"]), T)
        .unwrap()
        .lines;
    let dev = lines.one("device");
    assert_eq!(i(dev, "result"), CUDA_ERROR_OUT_OF_MEMORY, "{dev}");
    let snap = env.snapshot();
    assert_eq!(snap.devices[0].used_bytes, GIB, "{snap:?}");
    assert_eq!(snap.devices[0].processes.len(), 2, "{snap:?}");
    holder.kill();
    second.kill();
}

// ---- gpumux --------------------------------------------------------------------------------

/// Samples the fake's device-level use of every process on device 0 (all of them belong to the
/// tenant under test) until dropped; `max()` is the highest seen.
struct FootprintSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FootprintSampler {
    fn start(env: &FakeGpuEnv) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let path = env.state_path().to_path_buf();
        let thread = {
            let (stop, max) = (stop.clone(), max.clone());
            std::thread::spawn(move || {
                let gpu = fakegpu::GpuState::open_existing(&path).expect("open the fake GPU");
                while !stop.load(Ordering::Relaxed) {
                    let used: u64 = gpu.snapshot().devices[0]
                        .processes
                        .iter()
                        .map(|p| p.used_bytes)
                        .sum();
                    max.fetch_max(used, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        FootprintSampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for FootprintSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

fn device0(t: &Value) -> &Value {
    &t["devices"][0]
}

/// What a new process of `tenant` gets when it creates its (primary) context.
fn new_context_result(g: &Gpumux, tenant: &str) -> i64 {
    let lines = run(
        g.tenant_command(tenant, c_workload())
            .args(["ops", "meminfo"]),
        T,
    )
    .unwrap()
    .lines;
    match lines.0.iter().find(|l| l["op"] == "device") {
        Some(dev) => i(dev, "result"),
        None => i(lines.one("meminfo"), "result"),
    }
}

/// A process of `tenant` running the C workload's `ops`.
fn start_ops(g: &Gpumux, tenant: &str, ops: &str) -> Running {
    Running::spawn(g.tenant_command(tenant, c_workload()).args(["ops", ops])).unwrap()
}

/// A new process of `tenant` cannot get a context: `CUDA_ERROR_OUT_OF_MEMORY`.
fn assert_context_refused(g: &Gpumux, tenant: &str) {
    assert_eq!(new_context_result(g, tenant), CUDA_ERROR_OUT_OF_MEMORY);
}

/// What the fake says `pids` hold on device 0, together.
fn held(env: &FakeGpuEnv, pids: &[u32]) -> u64 {
    pids.iter().map(|&p| truth(env, p).0).sum()
}

#[test]
fn tenant_footprint_with_context_overhead_stays_within_the_quota() {
    let g = Gpumux::start_on(
        Backend::FakeConfig(with_overhead(&[16 * GIB])),
        &[("a", "memory_limit = \"2GiB\"\n")],
        "",
    );
    let env = g.fake().unwrap();
    let sampler = FootprintSampler::start(env);
    // Four processes, each a 300 MiB context and 200 MiB of allocations: 2000 MiB of 2048.
    let mut procs = Vec::new();
    for k in 1..=4u64 {
        let script = if k < 4 {
            "alloc:a:200MiB meminfo sleep:60000"
        } else {
            // The last one also probes the boundary: 49 MiB more is over, 48 MiB is exact.
            "alloc:a:200MiB meminfo alloc:b:49MiB alloc:c:48MiB meminfo alloc:d:1MiB \
             meminfo sleep:60000"
        };
        let mut r =
            Running::spawn(g.tenant_command("a", c_workload()).args(["ops", script])).unwrap();
        let m = r.wait_for("meminfo", T).unwrap();
        assert_eq!(
            i(
                r.seen().iter().find(|l| l["op"] == "alloc").unwrap(),
                "result"
            ),
            CUDA_SUCCESS,
            "{:?}",
            r.seen()
        );
        // cuMemGetInfo inside the tenant: total = quota, free net of every process's context.
        assert_eq!(u(&m, "total"), 2 * GIB);
        assert_eq!(
            u(&m, "free"),
            2 * GIB - k * (CTX + 200 * MIB),
            "{:?}",
            r.seen()
        );
        procs.push(r);
    }
    let last = procs.last_mut().unwrap();
    let infos = last.wait_for_count("meminfo", 3, T).unwrap();
    let result = |name: &str| {
        i(
            last.seen()
                .iter()
                .find(|l| l["op"] == "alloc" && l["name"] == name)
                .unwrap(),
            "result",
        )
    };
    assert_eq!(
        result("b"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "allocations + overhead over 2 GiB"
    );
    assert_eq!(result("c"), CUDA_SUCCESS, "exactly 2 GiB");
    assert_eq!(result("d"), CUDA_ERROR_OUT_OF_MEMORY);
    assert_eq!(frees(&infos[1..]), vec![0, 0]);

    // The daemon's view: footprint 2 GiB, of which 4 contexts.
    let t = g.tenant_status("a");
    assert_eq!(u(device0(&t), "memory_used"), 2 * GIB, "{t}");
    assert_eq!(u(device0(&t), "memory_overhead"), 4 * CTX, "{t}");
    let table = String::from_utf8(g.ctl().arg("status").output().unwrap().stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("2 GiB") && l.contains("1.17 GiB")),
        "status shows the overhead apart: {table}"
    );

    // A fifth process's context does not fit: refused, nothing held.
    assert_context_refused(&g, "a");

    // Ground truth: the tenant's processes never held more than 2 GiB on the device.
    let snap = env.snapshot();
    let held: u64 = snap.devices[0].processes.iter().map(|p| p.used_bytes).sum();
    assert_eq!(held, 2 * GIB, "{snap:?}");
    for p in &procs {
        assert_eq!(truth(env, p.pid()).1, CTX);
    }
    assert!(
        sampler.max() <= 2 * GIB,
        "the tenant's processes held {} bytes on the device",
        sampler.max()
    );
    drop(sampler);

    // A process that exits gives back its context's memory with its allocations.
    procs.remove(0).kill();
    g.wait_tenant_used("a", 2 * GIB - CTX - 200 * MIB, T);
    let t = g.tenant_status("a");
    assert_eq!(u(device0(&t), "memory_overhead"), 3 * CTX, "{t}");
}

#[test]
fn modules_libraries_and_recreated_contexts_are_charged_and_given_back() {
    let g = Gpumux::start_on(
        Backend::FakeConfig(with_overhead(&[16 * GIB])),
        &[("a", "memory_limit = \"4GiB\"\n")],
        "",
    );
    let m = module_bytes();
    let overhead = |g: &Gpumux| u(device0(&g.tenant_status("a")), "memory_overhead");
    // The primary context, a context of the application's own (`cuCtxCreate` through the
    // shim), a module in it, and a library (loaded into both contexts).
    let mut r = start_ops(
        &g,
        "a",
        "meminfo ctx:c meminfo module:m library:l meminfo sleep:60000",
    );
    let infos = r.wait_for_count("meminfo", 3, T).unwrap();
    assert!(
        r.seen()
            .iter()
            .filter(|l| ["ctx", "module", "library"].contains(&l["op"].as_str().unwrap_or("")))
            .all(|l| i(l, "result") == CUDA_SUCCESS),
        "{:?}",
        r.seen()
    );
    // Each context, module and library is measured before its creation or load returns.
    assert_eq!(
        frees(&infos),
        vec![4 * GIB - CTX, 4 * GIB - 2 * CTX, 4 * GIB - 2 * CTX - 3 * m],
        "{:?}",
        r.seen()
    );
    assert_eq!(overhead(&g), 2 * CTX + 3 * m);
    assert_eq!(
        truth(g.fake().unwrap(), r.pid()),
        (2 * CTX + 3 * m, 2 * CTX + 3 * m)
    );
    r.kill();
    g.wait_tenant_used("a", 0, T);

    // Destroying a context gives back its memory and the code loaded into it; unloads and
    // context resets are given back (after the daemon confirms the lower reading); the context
    // retained again after the reset is charged again.
    let mut r = start_ops(
        &g,
        "a",
        "ctx:c module:m library:l meminfo drop:c meminfo drop:l reset meminfo sleep:60000",
    );
    let infos = r.wait_for_count("meminfo", 3, T).unwrap();
    assert_eq!(i(&r.wait_for("reset", T).unwrap(), "result"), CUDA_SUCCESS);
    assert_eq!(u(&infos[0], "free"), 4 * GIB - 2 * CTX - 3 * m);
    assert!(
        r.seen()
            .iter()
            .filter(|l| l["op"] == "drop")
            .all(|l| i(l, "result") == CUDA_SUCCESS),
        "{:?}",
        r.seen()
    );
    wait_until(
        T,
        || overhead(&g) == CTX,
        || format!("overhead {} != {CTX}\n{}", overhead(&g), g.log()),
    );
    assert_eq!(truth(g.fake().unwrap(), r.pid()), (CTX, CTX));
    assert!(u(&infos[2], "free") <= 4 * GIB - CTX);
    let mut probe = start_ops(&g, "a", "meminfo sleep:60000");
    let m2 = probe.wait_for("meminfo", T).unwrap();
    assert_eq!(u(&m2, "free"), 4 * GIB - 2 * CTX, "{m2}");
}

#[test]
fn module_and_library_loads_are_held_to_the_limit() {
    // A module of the spin image takes 200 MiB here; the tenant has room for one beside its
    // context.
    const PER_KIB: u64 = 400 * MIB;
    let len = std::fs::metadata(spin_ptx_path()).expect("spin.ptx").len();
    let m = fakegpu::module_bytes(len, PER_KIB);
    assert_eq!(m, 200 * MIB, "the spin image is 512 bytes");
    let g = Gpumux::start_on(
        Backend::FakeConfig(
            DeviceConfig::new(&[16 * GIB])
                .unwrap()
                .with_overhead(CTX, PER_KIB),
        ),
        &[("a", "memory_limit = \"600MiB\"\n")],
        "",
    );
    let env = g.fake().unwrap();
    let mut r = start_ops(
        &g,
        "a",
        "module:m1 meminfo module:m2 sleep:1500 meminfo library:l sleep:1500 meminfo \
         alloc:x:100MiB meminfo sleep:60000",
    );
    let infos = r.wait_for_count("meminfo", 4, T).unwrap();
    let result = |op: &str, name: &str| {
        i(
            r.seen()
                .iter()
                .find(|l| l["op"] == op && l["name"] == name)
                .unwrap(),
            "result",
        )
    };
    assert_eq!(result("module", "m1"), CUDA_SUCCESS);
    // 300 MiB context + 200 MiB module + 200 MiB more is over 600 MiB: refused, not kept
    // (what the refused load measured is charged until the daemon confirms the lower reading,
    // tens of milliseconds: the sleeps).
    assert_eq!(
        result("module", "m2"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "{:?}",
        r.seen()
    );
    assert_eq!(
        result("library", "l"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "{:?}",
        r.seen()
    );
    // The last 100 MiB can be allocated.
    assert_eq!(result("alloc", "x"), CUDA_SUCCESS, "{:?}", r.seen());
    assert_eq!(
        frees(&infos),
        vec![100 * MIB, 100 * MIB, 100 * MIB, 0],
        "{:?}",
        r.seen()
    );
    // Ground truth: the process holds its context, one module and its allocation.
    assert_eq!(truth(env, r.pid()), (CTX + m + 100 * MIB, CTX + m));
    g.wait_tenant_used("a", 600 * MIB, T);
}

/// One tenant's contexts (here bigger: a library is loaded into each new context) never make
/// another tenant reserve more for its own; and within a tenant, one creation that measured
/// more than a context does not make its next contexts look bigger.
#[test]
fn context_estimates_are_per_tenant_and_the_smallest_recent() {
    // The spin image as a library takes 1 GiB per context here.
    const PER_KIB: u64 = 2 * GIB;
    let len = std::fs::metadata(spin_ptx_path()).expect("spin.ptx").len();
    let lib = fakegpu::module_bytes(len, PER_KIB);
    assert_eq!(lib, GIB);
    let g = Gpumux::start_on(
        Backend::FakeConfig(
            DeviceConfig::new(&[16 * GIB])
                .unwrap()
                .with_overhead(CTX, PER_KIB),
        ),
        &[
            ("a", "memory_limit = \"3GiB\"\n"),
            ("b", "memory_limit = \"1GiB\"\n"),
        ],
        "",
    );
    // Each tenant learns what its contexts take.
    assert_eq!(new_context_result(&g, "b"), CUDA_SUCCESS);
    assert_eq!(new_context_result(&g, "a"), CUDA_SUCCESS);
    g.wait_tenant_used("a", 0, T);
    g.wait_tenant_used("b", 0, T);
    // A process of `a` loads a library, then creates a context: the library is loaded into the
    // new context too, so that creation measures a context and a library (1.3 GiB).
    let mut big = start_ops(&g, "a", "library:l ctx:c meminfo sleep:60000");
    big.wait_for("meminfo", T).unwrap();
    assert!(
        big.seen()
            .iter()
            .filter(|l| l["op"] == "ctx" || l["op"] == "library")
            .all(|l| i(l, "result") == CUDA_SUCCESS),
        "{:?}",
        big.seen()
    );
    g.wait_tenant_used("a", 2 * (CTX + lib), T);
    // Tenant b (1 GiB, nothing in use) still gets a 300 MiB context.
    assert_eq!(
        new_context_result(&g, "b"),
        CUDA_SUCCESS,
        "tenant a's context sizes refused tenant b's context\n{}",
        g.log()
    );
    // And a's next context reserves what a context takes (409 MiB are left), not 1.3 GiB.
    assert_eq!(
        new_context_result(&g, "a"),
        CUDA_SUCCESS,
        "{}",
        g.tenant_status("a")
    );
    big.kill();
}

/// A process that loads many modules and then creates a context is charged exactly what it
/// holds, once the daemon has measured it: no reservation is left behind.
#[test]
fn modules_then_a_context_charge_exactly_what_the_process_holds() {
    let g = Gpumux::start_on(
        Backend::FakeConfig(with_overhead(&[16 * GIB])),
        &[("a", "memory_limit = \"12GiB\"\n")],
        "",
    );
    assert_eq!(new_context_result(&g, "a"), CUDA_SUCCESS);
    g.wait_tenant_used("a", 0, T);
    let mut ops: String = (0..40).map(|k| format!("module:m{k} ")).collect();
    ops.push_str("ctx:c meminfo sleep:60000");
    let mut r = Running::spawn(g.tenant_command("a", c_workload()).args(["ops", &ops])).unwrap();
    let c = r.wait_for("ctx", T).unwrap();
    assert_eq!(i(&c, "result"), CUDA_SUCCESS, "{c}");
    r.wait_for("meminfo", T).unwrap();
    let env = g.fake().unwrap();
    assert_eq!(held(env, &[r.pid()]), 2 * CTX + 40 * module_bytes());
    // After the daemon's next reconciliation (every 2 s), and still after another.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(2500));
        let t = g.tenant_status("a");
        assert_eq!(
            u(device0(&t), "memory_used"),
            held(env, &[r.pid()]),
            "charged beyond what the process holds: {t}"
        );
    }
}

/// A daemon serving tenant `a` (4 GiB) that has measured one of its contexts (its processes
/// reserve a context's size before creating one).
fn four_gib_tenant_knowing_its_contexts() -> Gpumux {
    let g = Gpumux::start_on(
        Backend::FakeConfig(with_overhead(&[16 * GIB])),
        &[("a", "memory_limit = \"4GiB\"\n")],
        "",
    );
    // The daemon learns a context's size from a creation it measures with the creation
    // announced and nothing else; one whose growth readings confirmed before the announcement
    // was read (a loaded machine) teaches nothing: create another.
    let known = || {
        let r = Client::register(&g.socket("a")).unwrap();
        r.control.devices[0]
            .context_overhead
            .load(std::sync::atomic::Ordering::Acquire)
            == CTX
    };
    wait_until(
        T,
        || {
            assert_eq!(new_context_result(&g, "a"), CUDA_SUCCESS);
            known()
        },
        || format!("no context size learned\n{}", g.log()),
    );
    g.wait_tenant_used("a", 0, T);
    g
}

/// After the daemon's next reconciliation (every 2 s), tenant `a`, whose `pids` each hold one
/// context, is charged exactly those contexts: no reservation left beside the measurements.
fn assert_settled(g: &Gpumux, pids: &[u32]) {
    std::thread::sleep(Duration::from_millis(3000));
    let contexts = pids.len() as u64 * CTX;
    assert_eq!(held(g.fake().unwrap(), pids), contexts);
    let t = g.tenant_status("a");
    assert_eq!(u(device0(&t), "memory_used"), contexts, "{t}\n{}", g.log());
    assert_eq!(u(device0(&t), "memory_overhead"), contexts, "{t}");
}

/// A context created while NVML fails is answered without a measurement: its reservation
/// stands as its size, and the next reading replaces it with the measurement (the tenant never
/// pays the estimate and the context both).
#[test]
fn a_reservation_answered_without_a_measurement_is_settled_by_the_next_one() {
    let g = four_gib_tenant_knowing_its_contexts();
    let env = g.fake().unwrap();
    let mut first = start_ops(&g, "a", "meminfo sleep:60000");
    first.wait_for("meminfo", T).unwrap();
    g.wait_tenant_used("a", CTX, T);
    env.set_nvml_fault(Some(NvmlFault::Error));
    let mut second = start_ops(&g, "a", "meminfo sleep:60000");
    let m = second.wait_for("meminfo", T).unwrap();
    // Not measured: the reservation (the estimate, one context) stands for the context.
    assert_eq!(u(&m, "free"), 4 * GIB - 2 * CTX, "{m}");
    let t = g.tenant_status("a");
    assert_eq!(u(device0(&t), "memory_used"), 2 * CTX, "{t}");
    env.set_nvml_fault(None);
    // The next reconciliation measures the second context and settles its reservation.
    assert_settled(&g, &[first.pid(), second.pid()]);
}

/// A tenant past its cap of waiting announcements (1024) gets its answers at once; a context
/// created then keeps its reservation only until the next reading, which settles it: the
/// tenant never pays the estimate and the measured context both.
#[test]
fn a_reservation_answered_at_the_cap_is_settled_by_the_next_reading() {
    use gpumux_common::protocol::{ClientMsg, ServerMsg};
    let g = four_gib_tenant_knowing_its_contexts();
    let env = g.fake().unwrap();
    // NVML hangs: a reading stays in flight, announcements wait for the next one.
    env.set_nvml_fault(Some(NvmlFault::Hang));
    // 17 connections of the tenant, 64 waiting announcements each (their cap): past the
    // tenant's 1024.
    let conns: Vec<Registered> = (0..17)
        .map(|_| {
            let r = Client::register(&g.socket("a")).unwrap();
            for seq in 1..=64 {
                let m = ClientMsg::Footprint {
                    device: 0,
                    reserved: 0,
                    seq,
                    context: Some(0),
                };
                r.client.send(&m).unwrap();
            }
            r
        })
        .collect();
    // The 17th connection's announcements are answered at once (the tenant's cap).
    let (answer, _) = conns[16].client.recv(T).unwrap();
    assert!(
        matches!(answer, ServerMsg::Measured { device: 0, .. }),
        "{answer:?}"
    );
    // A new process's context: answered at once too; its reservation (one context) stands.
    let mut second = start_ops(&g, "a", "meminfo sleep:60000");
    let m = second.wait_for("meminfo", T).unwrap();
    assert_eq!(u(&m, "free"), 4 * GIB - CTX, "{m}");
    // Until measured, the reservation stands for the context.
    let t = g.tenant_status("a");
    assert_eq!(u(device0(&t), "memory_used"), CTX, "{t}");
    env.set_nvml_fault(None);
    // The hung reading comes back, and the next reconciliation measures the context and
    // settles its reservation (a leak would show as 2 contexts charged).
    assert_settled(&g, &[second.pid()]);
    drop(conns);
}

/// NVML hanging (a GPU fallen off the bus, a wedged driver) delays measurements, nothing else:
/// processes register, allocate and get their slices, and status reports come, from the last
/// readings.
#[test]
fn a_hung_nvml_does_not_stall_the_daemon() {
    let g = Gpumux::start(
        &[8 * GIB],
        &[
            ("a", "memory_limit = \"1GiB\"\n"),
            ("b", "memory_limit = \"1GiB\"\n"),
        ],
    );
    let env = g.fake().unwrap();
    env.set_nvml_fault(Some(NvmlFault::Hang));
    let t0 = std::time::Instant::now();
    g.status().expect("a status report while NVML hangs");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "status took {:?}",
        t0.elapsed()
    );
    // Two tenants time-sliced on the device: each context creation waits for its measurement
    // at most the shim's 2 s; launches need the daemon's grants.
    let ops = "alloc:x:64MiB spin:2000000:20 meminfo";
    let mut procs: Vec<Running> = ["a", "b"]
        .iter()
        .map(|t| Running::spawn(g.tenant_command(t, c_workload()).args(["ops", ops])).unwrap())
        .collect();
    for r in &mut procs {
        let m = r.wait_for("meminfo", T).unwrap();
        assert_eq!(i(&m, "result"), CUDA_SUCCESS, "{:?}", r.seen());
        let spin = r
            .seen()
            .iter()
            .find(|l| l["op"] == "spin")
            .cloned()
            .unwrap();
        assert_eq!(i(&spin, "result"), CUDA_SUCCESS, "{spin}");
        // The spin module's reservation (its image's size) stands: nothing measured it.
        let image = std::fs::metadata(spin_ptx_path()).expect("spin.ptx").len();
        assert_eq!(u(&m, "free"), GIB - 64 * MIB - image);
    }
    let t0 = std::time::Instant::now();
    g.status().expect("status");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "status took {:?}",
        t0.elapsed()
    );
    // NVML back: the daemon measures again (an unmanaged process shows up).
    env.set_nvml_fault(None);
    let mut stray = Running::spawn(g.command(c_workload()).args([
        "hold",
        "--bytes",
        "1GiB",
        "--seconds",
        "60",
    ]))
    .unwrap();
    stray.wait_for("hold", T).unwrap();
    wait_until(
        T,
        || {
            g.status().unwrap()["unmanaged"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["pid"] == stray.pid()))
        },
        || format!("the stray is not listed once NVML is back\n{}", g.log()),
    );
}

/// Whether the status lists `pid` as unmanaged.
fn unmanaged_listed(g: &Gpumux, pid: u32) -> bool {
    g.status().is_ok_and(|s| {
        s["unmanaged"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["pid"] == pid))
    })
}

/// An unmanaged process holding 3 GiB (listed as such), and a registered process of tenant `a`
/// on a raw connection (it can write its slot).
fn stray_and_a_raw_process(g: &Gpumux) -> (Running, Registered) {
    let mut stray = Running::spawn(g.command(c_workload()).args([
        "hold",
        "--bytes",
        "3GiB",
        "--seconds",
        "60",
    ]))
    .unwrap();
    stray.wait_for("hold", T).unwrap();
    let r = Client::register(&g.socket("a")).unwrap();
    wait_until(
        T,
        || unmanaged_listed(g, stray.pid()),
        || "the stray is not listed as unmanaged".into(),
    );
    (stray, r)
}

/// The daemon matches NVML's list with the pid the kernel gave at registration: a tenant
/// writing another process's pid into its accounting slot does not make that process its own.
#[test]
fn a_pid_written_into_a_slot_hides_no_unmanaged_process() {
    let g = Gpumux::start(&[8 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let (stray, r) = stray_and_a_raw_process(&g);
    r.accounting.processes[r.slot]
        .pid
        .store(stray.pid(), std::sync::atomic::Ordering::Relaxed);
    // Readings after the write (a reconciliation, and the status report's own).
    std::thread::sleep(Duration::from_millis(2600));
    assert!(
        unmanaged_listed(&g, stray.pid()),
        "the stray vanished: {}",
        g.status().unwrap()
    );
    assert_eq!(
        g.tenant_used("a", 0),
        0,
        "its memory was not charged to the tenant"
    );
}

/// After a daemon restart the slots it adopts are checked too: a tenant that wrote another
/// process's pid and start time into its slot does not make that process its own (the pid
/// must map the tenant's accounting segment).
#[test]
fn a_pid_written_into_a_slot_is_not_adopted_after_a_restart() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut g = Gpumux::start(&[8 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let (stray, r) = stray_and_a_raw_process(&g);
    // The stray's identity as the daemon checks it: pid and start time (/proc/PID/stat 22).
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", stray.pid())).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let p = &r.accounting.processes[r.slot];
    p.start_time.store(start, Relaxed);
    p.pid.store(stray.pid(), Relaxed);
    g.kill_daemon();
    g.start_daemon();
    wait_until(
        T,
        || unmanaged_listed(&g, stray.pid()),
        || format!("the stray is not listed after the restart\n{}", g.log()),
    );
    let t = g.tenant_status("a");
    assert_eq!(u(device0(&t), "memory_used"), 0, "charged the stray: {t}");
    assert!(
        !t["processes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| *p == stray.pid())),
        "the stray was adopted: {t}"
    );
    assert_eq!(p.pid.load(Relaxed), 0, "the forged slot was not reclaimed");
    drop(r);
}

#[test]
fn a_context_bigger_than_expected_is_refused_after_measuring() {
    // Right after a daemon start no context has been measured yet: the first one is created
    // on no estimate, measured, and destroyed again when it does not fit.
    let mut g = Gpumux::start_on(
        Backend::FakeConfig(with_overhead(&[16 * GIB])),
        &[("a", "memory_limit = \"1GiB\"\n")],
        "",
    );
    let mut holder = start_ops(&g, "a", "alloc:a:600MiB meminfo sleep:60000");
    holder.wait_for("meminfo", T).unwrap();
    g.wait_tenant_used("a", CTX + 600 * MIB, T);
    g.kill_daemon();
    g.start_daemon();
    // The holder reattaches with its 900 MiB.
    wait_until(
        T,
        || {
            g.status().is_ok_and(|s| {
                s["tenants"][0]["processes"]
                    .as_array()
                    .is_some_and(|p| p.len() == 1)
            })
        },
        || format!("holder not back\n{}", g.log()),
    );
    g.wait_tenant_used("a", CTX + 600 * MIB, T);
    assert_context_refused(&g, "a");
    // Its context is gone (ground truth), and so is its charge.
    let snap = g.fake().unwrap().snapshot();
    assert_eq!(snap.devices[0].processes.len(), 1, "{snap:?}");
    g.wait_tenant_used("a", CTX + 600 * MIB, T);
    // Now the daemon knows what a context takes: the next one is refused before it exists.
    assert_context_refused(&g, "a");
    g.wait_tenant_used("a", CTX + 600 * MIB, T);
    holder.kill();
}

/// The cgroup the tests' processes share, or `None` at the root (no attribution then).
fn own_cgroup_attributes() -> bool {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    !text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(|l| l.rsplit_once(':').is_some_and(|(_, p)| p.trim() == "/"))
}

#[test]
fn unmanaged_process_is_reported_and_reduces_what_tenants_see_free() {
    let g = Gpumux::start_with(
        &[8 * GIB],
        &[("a", "memory_limit = \"8GiB\"\n")],
        "metrics_listen = \"127.0.0.1:0\"\n",
    );
    // A process on the GPU without the shim (no LD_PRELOAD): 3 GiB the daemon never granted.
    let mut stray = Running::spawn(g.command(c_workload()).args([
        "hold",
        "--bytes",
        "3GiB",
        "--seconds",
        "60",
    ]))
    .unwrap();
    assert_eq!(
        i(&stray.wait_for("hold", T).unwrap(), "result"),
        CUDA_SUCCESS
    );
    // A tenant process is told only what the device still has, and cannot get more.
    let mut r = start_ops(
        &g,
        "a",
        "meminfo alloc:big:5121MiB alloc:fit:4GiB meminfo sleep:60000",
    );
    let infos = r.wait_for_count("meminfo", 2, T).unwrap();
    assert_eq!(u(&infos[0], "total"), 8 * GIB);
    assert_eq!(u(&infos[0], "free"), 5 * GIB, "{:?}", r.seen());
    let alloc = |name: &str| {
        i(
            r.seen()
                .iter()
                .find(|l| l["op"] == "alloc" && l["name"] == name)
                .unwrap(),
            "result",
        )
    };
    assert_eq!(alloc("big"), CUDA_ERROR_OUT_OF_MEMORY);
    assert_eq!(alloc("fit"), CUDA_SUCCESS);
    assert_eq!(u(&infos[1], "free"), GIB);
    // NVML inside the tenant says the same.
    let probe = run(&mut g.tenant_command("a", nvml_probe()), T).unwrap();
    let dev = probe.lines.one("device");
    assert_eq!(u(&dev["mem_v1"], "total"), 8 * GIB, "{dev}");
    assert_eq!(u(&dev["mem_v1"], "free"), GIB, "{dev}");
    // The tenant was charged what it allocated, not the stray's memory.
    assert_eq!(g.tenant_used("a", 0), 4 * GIB);

    // Status and metrics show the stray, with its pid and memory.
    let expected = if own_cgroup_attributes() {
        "a"
    } else {
        "unknown"
    };
    let status = g.status().unwrap();
    let listed = status["unmanaged"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == stray.pid())
        .unwrap_or_else(|| panic!("{} not unmanaged in {status}", stray.pid()))
        .clone();
    assert_eq!(u(&listed, "memory"), 3 * GIB, "{listed}");
    assert_eq!(u(&listed, "device"), 0);
    assert_eq!(
        listed["tenant"].as_str().unwrap_or("unknown"),
        expected,
        "{listed}"
    );
    assert!(
        status["unmanaged"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != r.pid()),
        "a registered process is not unmanaged: {status}"
    );
    let body = g.metrics().unwrap();
    let line = format!(
        "gpumux_unmanaged_process_memory_bytes{{device=\"0\",pid=\"{}\",tenant=\"{expected}\"}} {}",
        stray.pid(),
        3 * GIB
    );
    assert!(
        body.lines().any(|l| l == line),
        "missing `{line}` in\n{body}"
    );
    let table = String::from_utf8(g.ctl().arg("status").output().unwrap().stdout).unwrap();
    assert!(
        table.contains("UNMANAGED")
            && table.lines().any(
                |l| l.trim_start().starts_with(&stray.pid().to_string()) && l.contains("3 GiB")
            ),
        "{table}"
    );
    // Gone when it exits.
    stray.kill();
    wait_until(
        T,
        || {
            g.status().unwrap()["unmanaged"]
                .as_array()
                .is_some_and(|a| a.is_empty())
        },
        || "the stray is still listed".into(),
    );
    r.kill();
}

#[test]
fn footprint_announcements_cannot_hurt_the_daemon() {
    use gpumux_common::protocol::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
    use gpumux_common::sock;
    use std::os::fd::{AsFd, AsRawFd};
    let g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let fd = sock::connect(&g.socket("a")).unwrap();
    let hello = ClientMsg::Hello {
        protocol: PROTOCOL_VERSION,
        pid: 1,
    };
    sock::send(fd.as_fd(), &hello.encode(), &[]).unwrap();
    let mut buf = [0u8; 256];
    let (n, _fds) = sock::recv(fd.as_fd(), &mut buf, 0).unwrap();
    assert!(matches!(
        ServerMsg::decode(&buf[..n]).unwrap(),
        ServerMsg::Welcome { .. }
    ));
    // A device that does not exist, and a reservation the process never made: answered,
    // nothing settled.
    let bad = ClientMsg::Footprint {
        device: 999,
        reserved: u64::MAX,
        seq: 7,
        context: Some(1),
    };
    sock::send(fd.as_fd(), &bad.encode(), &[]).unwrap();
    let (n, _) = sock::recv(fd.as_fd(), &mut buf, 0).unwrap();
    assert_eq!(
        ServerMsg::decode(&buf[..n]).unwrap(),
        ServerMsg::Measured {
            device: 999,
            seq: 7
        }
    );
    let odd = ClientMsg::Footprint {
        device: 0,
        reserved: u64::MAX,
        seq: 8,
        context: Some(1),
    };
    sock::send(fd.as_fd(), &odd.encode(), &[]).unwrap();
    let (n, _) = sock::recv(fd.as_fd(), &mut buf, 0).unwrap();
    assert_eq!(
        ServerMsg::decode(&buf[..n]).unwrap(),
        ServerMsg::Measured { device: 0, seq: 8 }
    );
    // A flood of announcements from a process that does not even read the answers (the
    // daemon never blocks on it): the daemon keeps serving (status, another process of the
    // tenant allocating), and what the flooder reads is well-formed.
    let flood = ClientMsg::Footprint {
        device: 0,
        reserved: 0,
        seq: 9,
        context: Some(0),
    }
    .encode();
    for _ in 0..2000 {
        // SAFETY: send(2) of a valid buffer on our own socket, without blocking.
        unsafe {
            libc::send(
                fd.as_raw_fd(),
                flood.as_ptr().cast(),
                flood.len(),
                libc::MSG_DONTWAIT,
            )
        };
    }
    let t = g.tenant_status("a");
    assert_eq!(u(device0(&t), "memory_used"), 0, "{t}");
    let out = run(
        g.tenant_command("a", c_workload())
            .args(["ops", "alloc:x:1GiB"]),
        T,
    )
    .unwrap();
    assert_eq!(i(out.lines.named("alloc", "x"), "result"), CUDA_SUCCESS);
    let mut answers = 0;
    // SAFETY: recv(2) into a valid buffer on our own socket, without blocking.
    while let n @ 1.. = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    } {
        assert_eq!(
            ServerMsg::decode(&buf[..n as usize]).unwrap(),
            ServerMsg::Measured { device: 0, seq: 9 }
        );
        answers += 1;
    }
    assert!(answers > 0);
}
