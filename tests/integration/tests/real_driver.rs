//! gpumux on NVIDIA's real driver libraries (535 and 550, no GPU, no kernel module):
//! - the shim changes nothing `cuGetProcAddress`/`_v2` hands out: for every API base name the
//!   driver exports, at every version and flags value of the conformance probe, the same
//!   `CUresult`, the same symbol status, null exactly where the driver gives null, and for a
//!   hooked name the shim's wrapper of exactly the variant the driver returned; passed through
//!   (no `GPUMUX_SOCKET`) and registered in a tenant of a gpumuxd running on the fake GPU;
//! - NVIDIA's CUDA runtime on the driver answers the same with the shim as without it, and
//!   neither crashes nor hangs;
//! - gpumuxd and the device plugin started on the real NVML without a kernel driver exit
//!   non-zero naming the cause and the next step.
//!
//! Each comparison adds a row to `docs/CONFORMANCE.md` (via `target/conformance/`). Needs the
//! real libraries (`scripts/fetch-nvidia-libs.sh`; skipped without them unless
//! `GPUMUX_REQUIRE_NVIDIA=1`) and the workspace built (`cargo build --workspace`).

use gpumux_conformance::oracle::{self, RealDriver};
use gpumux_conformance::probe::{data_lines, diff_lines};
use gpumux_conformance::report::Comparison;
use gpumux_integration::gpumux::{Gpumux, artifact};
use gpumux_integration::workloads::{self, GIB};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const TENANT: &str = "conformance";

/// How the probe runs: on the driver alone, or with the shim preloaded (passed through, or in a
/// tenant).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Driver,
    PassThrough,
    Tenant,
}

impl Mode {
    fn id(self) -> &'static str {
        match self {
            Mode::Driver => "driver",
            Mode::PassThrough => "shim-pass-through",
            Mode::Tenant => "shim-tenant",
        }
    }

    fn subject(self, what: &str) -> String {
        match self {
            Mode::Driver => what.to_owned(),
            Mode::PassThrough => format!("{what} with the shim (pass-through)"),
            Mode::Tenant => format!("{what} with the shim (in a tenant)"),
        }
    }
}

/// gpumuxd on the fake GPU with one tenant, for the runs in a tenant.
fn daemon() -> Gpumux {
    Gpumux::start(
        &[4 * GIB],
        &[(TENANT, "devices = [0]\nmemory_limit = \"1GiB\"\n")],
    )
}

/// The environment of a run in `mode`, on top of `base`.
fn env(mode: Mode, g: &Gpumux, base: &[(&str, OsString)]) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = base
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    if mode != Mode::Driver {
        env.push(("LD_PRELOAD".into(), artifact("libgpumux.so").into()));
    }
    if mode == Mode::Tenant {
        env.push(("GPUMUX_SOCKET".into(), g.socket(TENANT).into()));
    }
    env
}

/// Runs the conformance probe (built by `cargo build --workspace`) with `args` and `env`;
/// returns its output lines. Fails on a crash, an error exit or a hang.
fn probe(args: &[&std::ffi::OsStr], env: &[(String, OsString)]) -> Vec<String> {
    let mut cmd = Command::new(artifact("conformance-probe"));
    cmd.args(args);
    // The probe's own process: no fake GPU environment, only what the mode adds.
    cmd.env_remove("LD_PRELOAD").env_remove("GPUMUX_SOCKET");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let (status, stdout, stderr) = workloads::run_text(&mut cmd, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("the probe did not finish: {e:#}"));
    assert!(status.success(), "{cmd:?} failed ({status}):\n{stderr}");
    stdout.lines().map(str::to_owned).collect()
}

const PROCADDR_METHOD: &str = "The shim preloaded over the driver (`LD_PRELOAD`; passed through \
    without `GPUMUX_SOCKET`, or registered in a tenant of a gpumuxd running on the fake GPU) \
    against the driver alone, both asked by `conformance-probe cuda --init` (`cuInit(0)`, then \
    every API base name at every cudaVersion and flags value above, through both \
    `cuGetProcAddress` entry points): the `CUresult`, the symbol status, null where the driver \
    gives null, and the export the pointer is must be the same (the probe names a pointer by the \
    export `dlsym` gives for it: for a hooked name, the shim's wrapper of that name).";

/// The shim over one real driver: every resolution the same as the driver's, passed through
/// and in a tenant.
fn shim_hands_out_what_the_driver_does(branch: &str) {
    let Some(real) = oracle::require(branch) else {
        return;
    };
    let g = daemon();
    let lib = real.libcuda();
    let args = [
        "cuda".as_ref(),
        lib.as_os_str(),
        "--names-from".as_ref(),
        lib.as_os_str(),
        "--init".as_ref(),
    ];
    let want = probe(&args, &env(Mode::Driver, &g, &[]));
    assert!(
        want.iter()
            .any(|l| l.starts_with("cuInit\t-\t-\tcuInit\t100\t")),
        "the driver's cuInit without a GPU answers CUDA_ERROR_NO_DEVICE"
    );
    let mut failures = Vec::new();
    for mode in [Mode::PassThrough, Mode::Tenant] {
        let got = probe(&args, &env(mode, &g, &[]));
        // In a tenant the shim registers at cuInit; had gpumuxd refused it, cuInit would answer
        // CUDA_ERROR_OPERATING_SYSTEM (304) instead of the driver's 100.
        assert!(
            got.iter()
                .any(|l| l.starts_with("cuInit\t-\t-\tcuInit\t100\t")),
            "{}: cuInit did not answer like the driver; log:\n{}",
            mode.subject("the probe"),
            g.log()
        );
        let c = Comparison {
            id: format!("cuda-procaddr-{branch}-{}", mode.id()),
            section: "cuGetProcAddress".into(),
            driver: real.version(),
            subject: mode.subject("NVIDIA's libcuda.so.1"),
            method: PROCADDR_METHOD.into(),
            compared: data_lines(&want),
            unit: "resolutions".into(),
            differences: diff_lines(&want, &got, 4, "shim"),
            note: None,
        };
        c.record();
        assert!(c.compared > 20_000, "too few resolutions: {}", c.compared);
        if !c.differences.is_empty() {
            failures.push(format!(
                "{}: {} of {} resolutions differ:\n{}",
                c.subject,
                c.differences.len(),
                c.compared,
                c.differences.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shim_hands_out_what_the_535_driver_does() {
    shim_hands_out_what_the_driver_does("535");
}

#[test]
fn shim_hands_out_what_the_550_driver_does() {
    shim_hands_out_what_the_driver_does("550");
}

/// NVIDIA's `libcudart.so.12` (cached by `scripts/fetch-nvidia-libs.sh`), or `None` (skipped).
fn cudart() -> Option<PathBuf> {
    let path = oracle::cache_dir().join("cudart/libcudart.so.12");
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "NVIDIA's CUDA runtime {} is missing: run scripts/fetch-nvidia-libs.sh",
        path.display()
    );
    assert!(!oracle::required(), "{msg} (GPUMUX_REQUIRE_NVIDIA=1)");
    eprintln!("skipped: {msg}");
    None
}

#[test]
fn real_cudart_answers_the_same_with_the_shim() {
    let Some(runtime) = cudart() else { return };
    let g = daemon();
    let mut failures = Vec::new();
    for branch in oracle::DRIVERS {
        let Some(real) = oracle::require(branch) else {
            return;
        };
        // The runtime finds the driver the way it does on a node: dlopen("libcuda.so.1").
        let base = [("LD_LIBRARY_PATH", real.dir.clone().into_os_string())];
        let args = ["cudart".as_ref(), runtime.as_os_str()];
        let want = probe(&args, &env(Mode::Driver, &g, &base));
        assert!(
            want.iter().any(|l| l == "cudaGetDeviceCount\t100\t-"),
            "without a GPU cudaGetDeviceCount answers cudaErrorNoDevice: {want:?}"
        );
        for mode in [Mode::PassThrough, Mode::Tenant] {
            let got = probe(&args, &env(mode, &g, &base));
            let c = Comparison {
                id: format!("cudart-{branch}-{}", mode.id()),
                section: "CUDA runtime".into(),
                driver: real.version(),
                subject: mode.subject(&format!("NVIDIA's libcudart.so.12 ({})", cudart_version())),
                method: "NVIDIA's CUDA runtime on the driver (`conformance-probe cudart`: \
                    `cudaRuntimeGetVersion`, `cudaDriverGetVersion`, `cudaGetDeviceCount`, \
                    `cudaSetDevice`, `cudaMalloc`, `cudaMemGetInfo`, `cudaDeviceSynchronize`, \
                    `cudaGetLastError`), with the shim against without it: the same results \
                    and values, no crash, no hang (3 minutes)."
                    .into(),
                compared: data_lines(&want),
                unit: "calls".into(),
                differences: diff_lines(&want, &got, 1, "shim"),
                note: None,
            };
            c.record();
            if !c.differences.is_empty() {
                failures.push(format!(
                    "{} on {branch}:\n{}",
                    c.subject,
                    c.differences.join("\n")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The cached runtime's version (the wheel's name).
fn cudart_version() -> String {
    let text =
        std::fs::read_to_string(oracle::cache_dir().join("cudart/VERSION")).unwrap_or_default();
    text.split('-')
        .nth(1)
        .map_or_else(|| "cached".into(), str::to_owned)
}

/// Runs `cmd` (gpumuxd or the device plugin) on NVIDIA's NVML of `real` and returns its exit
/// code and stderr.
fn start_on_real_nvml(real: &RealDriver, cmd: &mut Command) -> (Option<i32>, String) {
    cmd.env("LD_LIBRARY_PATH", &real.dir)
        .env_remove("LD_PRELOAD")
        .env("GPUMUX_LOG", "info");
    let (status, _, stderr) = workloads::run_text(cmd, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("did not exit on its own: {e:#}"));
    (status.code(), stderr)
}

fn assert_names_the_missing_driver(what: &str, code: Option<i32>, stderr: &str) {
    assert_eq!(code, Some(1), "{what} must fail; stderr:\n{stderr}");
    assert!(
        stderr.contains("NVIDIA driver not loaded (NVML_ERROR_DRIVER_NOT_LOADED from nvmlInit_v2)")
            && stderr.contains("modprobe nvidia"),
        "{what} must name the cause and the next step; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
}

#[test]
fn daemon_and_plugin_on_real_nvml_without_a_driver_name_the_cause() {
    let Some(real) = oracle::require("550") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gpumuxd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{0}/state\"\ntenants_dir = \"{0}/tenants.d\"\nmetrics_listen = \"\"\n",
            dir.path().display()
        ),
    )
    .expect("write config");
    std::fs::create_dir_all(dir.path().join("tenants.d")).expect("tenants dir");

    let mut daemon = Command::new(artifact("gpumuxd"));
    daemon.arg("--config").arg(&config);
    let (code, stderr) = start_on_real_nvml(&real, &mut daemon);
    assert_names_the_missing_driver("gpumuxd", code, &stderr);

    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).expect("kubelet dir");
    let mut plugin = Command::new(artifact("gpumux-device-plugin"));
    plugin
        .arg("--gpumux-config")
        .arg(&config)
        .arg("--kubelet-dir")
        .arg(&kubelet)
        .arg("--pod-resources-socket")
        .arg(kubelet.join("pod-resources.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("plugin"))
        .arg("--dev-root")
        .arg(dir.path());
    let (code, stderr) = start_on_real_nvml(&real, &mut plugin);
    assert_names_the_missing_driver("gpumux-device-plugin", code, &stderr);
}
