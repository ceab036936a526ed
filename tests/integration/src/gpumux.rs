//! The real gpumux on the fake GPU, for tests: a `gpumuxd` process with its own config, state
//! and tenants directories; commands that run a workload inside a tenant (LD_PRELOAD of the
//! real shim + the tenant's socket); status through the real `gpumuxctl`.
//!
//! [`Gpumux::start_on`] with [`Backend::Real`] runs the same daemon and shim on the machine's
//! own driver and NVML instead (a real GPU; used by the scenario runner's `--real`).

use anyhow::{Context, Result, bail};
use fakegpu::testenv::{FakeGpuEnv, target_dir};
use serde_json::Value;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which driver (and NVML) the daemon and the tenants' processes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A fresh fake GPU with these devices (memory in bytes, one entry per device), contexts
    /// and modules occupying no memory.
    Fake(Vec<u64>),
    /// A fresh fake GPU with this configuration (e.g. with context and module overhead).
    FakeConfig(fakegpu::DeviceConfig),
    /// The machine's own `libcuda.so.1` and `libnvidia-ml.so.1`, found the usual way (no fake
    /// library directory, no `FAKEGPU_*` variables).
    Real,
}

/// A running gpumuxd on a fresh fake GPU. The daemon is stopped on drop.
pub struct Gpumux {
    /// The fake GPU. With [`Backend::Real`] it is an unused stand-in that nothing started by
    /// this harness sees: use [`Gpumux::fake`] where both backends are possible.
    pub gpu: FakeGpuEnv,
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub tenants_dir: PathBuf,
    pub config_path: PathBuf,
    /// Soft and hard `RLIMIT_NOFILE` the daemon is started with (None: inherited).
    pub daemon_fd_limit: Option<u64>,
    /// Extra environment of the daemon.
    pub daemon_env: Vec<(String, String)>,
    daemon: Option<Child>,
    real: bool,
}

/// Where `GPUMUX_TEST_BINARIES` points, if set: a directory with other builds of `gpumuxd`,
/// `gpumuxctl` and `libgpumux.so` to run the tests against (e.g. an older version, to show
/// that a regression test fails on it).
pub const ENV_TEST_BINARIES: &str = "GPUMUX_TEST_BINARIES";

/// Path of a built workspace binary or library.
pub fn artifact(name: &str) -> PathBuf {
    let other = std::env::var_os(ENV_TEST_BINARIES)
        .map(PathBuf::from)
        .map(|d| d.join(name))
        .filter(|p| p.exists());
    let p = other.unwrap_or_else(|| target_dir().join(name));
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

impl Gpumux {
    /// A fake GPU with `devices` (bytes each), tenants `(name, quota-file text)`, and a daemon
    /// serving them (returns once every tenant socket exists).
    pub fn start(devices: &[u64], tenants: &[(&str, &str)]) -> Gpumux {
        Self::start_with(devices, tenants, "")
    }

    /// Like [`Gpumux::start`], with extra daemon config lines.
    pub fn start_with(devices: &[u64], tenants: &[(&str, &str)], extra_config: &str) -> Gpumux {
        Self::start_on(Backend::Fake(devices.to_vec()), tenants, extra_config)
    }

    /// Like [`Gpumux::start_with`], on `backend`: a fresh fake GPU, or the machine's real driver.
    pub fn start_on(backend: Backend, tenants: &[(&str, &str)], extra_config: &str) -> Gpumux {
        let mut g = Self::prepare(backend, tenants, extra_config);
        g.start_daemon();
        for (name, _) in tenants {
            g.wait_for_socket(name);
        }
        g
    }

    /// Like [`Gpumux::start_on`], without starting the daemon: adjust, then
    /// [`Gpumux::start_daemon`].
    pub fn prepare(backend: Backend, tenants: &[(&str, &str)], extra_config: &str) -> Gpumux {
        let (gpu, real) = match &backend {
            Backend::Fake(devices) => (FakeGpuEnv::new(devices), false),
            Backend::FakeConfig(config) => (FakeGpuEnv::with_config(config.clone()), false),
            // A minimal fake that nothing uses, so `gpu` keeps its type for existing callers.
            Backend::Real => (FakeGpuEnv::new(&[1 << 30]), true),
        };
        let dir = tempfile::Builder::new()
            .prefix("gpumux-test-")
            .tempdir()
            .expect("tempdir");
        let state_dir = dir.path().join("state");
        let tenants_dir = dir.path().join("tenants.d");
        std::fs::create_dir_all(&tenants_dir).expect("tenants dir");
        let config_path = dir.path().join("gpumuxd.toml");
        std::fs::write(
            &config_path,
            format!(
                "state_dir = \"{}\"\ntenants_dir = \"{}\"\nlog_level = \"debug\"\n{}{extra_config}",
                state_dir.display(),
                tenants_dir.display(),
                // Metrics off unless the test asks for them.
                if extra_config.contains("metrics_listen") {
                    ""
                } else {
                    "metrics_listen = \"\"\n"
                },
            ),
        )
        .expect("write config");
        let g = Gpumux {
            gpu,
            dir,
            state_dir,
            tenants_dir,
            config_path,
            daemon_fd_limit: None,
            daemon_env: Vec::new(),
            daemon: None,
            real,
        };
        for (name, text) in tenants {
            g.write_tenant(name, text);
        }
        g
    }

    /// Starts (or restarts) the daemon and waits for its control socket.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with_env(&[]);
    }

    /// Like [`Gpumux::start_daemon`], with extra environment variables for the daemon.
    pub fn start_daemon_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("daemon log");
        let control = self.state_dir.join("gpumuxd.sock");
        std::fs::remove_file(&control).ok();
        let mut cmd = self.command(artifact("gpumuxd"));
        cmd.envs(self.daemon_env.iter().map(|(k, v)| (k, v)));
        if let Some(limit) = self.daemon_fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
        let child = cmd
            .arg("--config")
            .arg(&self.config_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gpumuxd");
        self.daemon = Some(child);
        wait_until(
            Duration::from_secs(10),
            || control.exists(),
            || format!("gpumuxd did not start; log:\n{}", self.log()),
        );
    }

    /// SIGKILLs the daemon (no cleanup on its side).
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// The daemon's pid, if running.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// Whether the daemon process is still running (false once it died or was stopped).
    pub fn daemon_alive(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The file the daemon's stderr goes to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gpumuxd.log")
    }

    /// Writes `tenants_dir/<name>.toml` atomically (as editors do: write + rename).
    pub fn write_tenant(&self, name: &str, text: &str) {
        let tmp = self.tenants_dir.join(format!(".{name}.toml.tmp"));
        std::fs::write(&tmp, text).expect("write tenant file");
        std::fs::rename(&tmp, self.tenants_dir.join(format!("{name}.toml")))
            .expect("rename tenant file");
    }

    /// `state_dir/tenants/<name>/gpumux.sock`.
    pub fn socket(&self, tenant: &str) -> PathBuf {
        self.state_dir
            .join("tenants")
            .join(tenant)
            .join("gpumux.sock")
    }

    pub fn wait_for_socket(&self, tenant: &str) {
        let s = self.socket(tenant);
        wait_until(
            Duration::from_secs(10),
            || s.exists(),
            || format!("no socket for {tenant}; log:\n{}", self.log()),
        );
    }

    /// The fake GPU, unless this runs on the real driver.
    pub fn fake(&self) -> Option<&FakeGpuEnv> {
        (!self.real).then_some(&self.gpu)
    }

    /// A command that runs `program` on this instance's driver, outside any tenant: with the
    /// fake GPU's environment, or (real driver) the environment as inherited.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        if self.real {
            Command::new(program)
        } else {
            self.gpu.command(program)
        }
    }

    /// A command that runs `program` as a process of `tenant` on this instance's GPU.
    pub fn tenant_command(&self, tenant: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = self.command(program);
        c.env("LD_PRELOAD", artifact("libgpumux.so"));
        c.env("GPUMUX_SOCKET", self.socket(tenant));
        c
    }

    /// Starts a process of `tenant` that allocates `bytes` and holds them (up to a minute),
    /// and waits until it holds them.
    pub fn hold(&self, tenant: &str, bytes: u64) -> crate::workloads::Running {
        let mut r = crate::workloads::Running::spawn(
            self.tenant_command(tenant, crate::workloads::c_workload())
                .args(["hold", "--bytes", &bytes.to_string(), "--seconds", "60"]),
        )
        .expect("spawn a holder");
        let line = r
            .wait_for("hold", Duration::from_secs(60))
            .expect("holder ran");
        assert_eq!(
            line["result"], 0,
            "holding {bytes} bytes in {tenant}: {line}"
        );
        r
    }

    /// Starts `load --seconds S ARGS` (kernels on the device, see the C workload) in `tenant`
    /// and waits until it runs.
    pub fn load(&self, tenant: &str, seconds: u64, args: &[&str]) -> crate::workloads::Running {
        self.start_load(tenant, "load", seconds, args)
    }

    /// The device time one `MODE ARGS` process of the C workload (`load`, `graph`) gets on this
    /// instance's device with no shim and no daemon (the bare driver), over `window` after a
    /// short settle, as a fraction of it: the most a time-slicer can give one process at a time
    /// under the host's current load (a busy host runs the process's thread late between its
    /// synchronize and its next launches, and the device idles meanwhile, with or without
    /// gpumux; see [`crate::conserving`]). Nothing else may run on the device.
    pub fn bare_busy(&self, mode: &str, args: &[&str], window: Duration) -> f64 {
        let settle = Duration::from_millis(300);
        let seconds = (settle + window).as_secs() + 2;
        let mut cmd = self.command(crate::workloads::c_workload());
        cmd.env_remove("LD_PRELOAD")
            .env_remove("GPUMUX_SOCKET")
            .arg(mode)
            .args(["--seconds", &seconds.to_string()])
            .args(args);
        let mut r = crate::workloads::Running::spawn(&mut cmd).expect("spawn a bare load");
        if let Err(e) = r.wait_for("load-start", Duration::from_secs(60)) {
            panic!("the bare load did not start: {e:#}");
        }
        std::thread::sleep(settle);
        let busy = self.device_shares(&[vec![r.pid()]], window)[0];
        r.kill();
        busy
    }

    /// Starts `graph --seconds S ARGS` (a captured CUDA graph replayed in a loop, see the C
    /// workload) in `tenant` and waits until it runs.
    pub fn graph(&self, tenant: &str, seconds: u64, args: &[&str]) -> crate::workloads::Running {
        self.start_load(tenant, "graph", seconds, args)
    }

    fn start_load(
        &self,
        tenant: &str,
        mode: &str,
        seconds: u64,
        args: &[&str],
    ) -> crate::workloads::Running {
        let mut r = crate::workloads::Running::spawn(
            self.tenant_command(tenant, crate::workloads::c_workload())
                .arg(mode)
                .args(["--seconds", &seconds.to_string()])
                .args(args),
        )
        .expect("spawn a load");
        r.wait_for("load-start", Duration::from_secs(60))
            .expect("load started");
        r
    }

    /// `gpumuxctl --config <ours> ARGS`.
    pub fn ctl(&self) -> Command {
        let mut c = Command::new(artifact("gpumuxctl"));
        c.arg("--config").arg(&self.config_path);
        c
    }

    /// `gpumuxctl status --json`, parsed.
    pub fn status(&self) -> Result<Value> {
        let out = self
            .ctl()
            .args(["status", "--json"])
            .output()
            .context("run gpumuxctl")?;
        if !out.status.success() {
            bail!(
                "gpumuxctl status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `GET /metrics` from the daemon's metrics endpoint (the config must set
    /// `metrics_listen`), the body.
    pub fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let status = self.status()?;
        let addr = status["metrics_address"]
            .as_str()
            .context("no metrics address in the status (metrics_listen unset?)")?;
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        match reply.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => bail!("metrics request failed: {reply}"),
        }
    }

    /// A tenant's entry in the status report.
    pub fn tenant_status(&self, tenant: &str) -> Value {
        let s = self.status().expect("status");
        s["tenants"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == tenant).cloned())
            .unwrap_or_else(|| panic!("tenant {tenant} not in status {s}"))
    }

    /// Memory the daemon's accounting says `tenant` uses on device `index`.
    pub fn tenant_used(&self, tenant: &str, index: u64) -> u64 {
        let t = self.tenant_status(tenant);
        t["devices"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["index"] == index))
            .and_then(|d| d["memory_used"].as_u64())
            .unwrap_or_else(|| panic!("no device {index} for {tenant}: {t}"))
    }

    /// Waits until the daemon's accounting for `tenant` on device 0 is `bytes`.
    pub fn wait_tenant_used(&self, tenant: &str, bytes: u64, timeout: Duration) {
        wait_until(
            timeout,
            || self.tenant_used(tenant, 0) == bytes,
            || {
                format!(
                    "{tenant} uses {} bytes, expected {bytes}; log:\n{}",
                    self.tenant_used(tenant, 0),
                    self.log()
                )
            },
        );
    }

    /// Waits until `tenant` is no longer in the daemon's status, failing with `why` after
    /// `timeout`.
    pub fn wait_tenant_gone(&self, tenant: &str, timeout: Duration, why: &str) {
        wait_until(
            timeout,
            || {
                self.status().unwrap()["tenants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|t| t["name"] != tenant)
            },
            || format!("{why}; log:\n{}", self.log()),
        );
    }

    pub fn state_path(&self) -> &Path {
        self.gpu.state_path()
    }

    /// Runs the C workload's `ops SCRIPT` in `tenant` to completion (it must exit 0).
    pub fn ops(&self, tenant: &str, script: &str) -> crate::workloads::Output {
        let mut c = self.tenant_command(tenant, crate::workloads::c_workload());
        c.args(["ops", script]);
        let out = crate::workloads::run(&mut c, Duration::from_secs(60)).expect("run workload");
        assert!(
            out.status.success(),
            "workload failed: {:?}\n{}\nlog:\n{}",
            out.status,
            out.stderr,
            self.log()
        );
        out
    }

    /// Device busy ns per pid on device 0 (the fake's ground truth).
    pub fn busy_ns(&self) -> HashMap<u32, u64> {
        self.gpu.snapshot().devices[0]
            .processes
            .iter()
            .map(|p| (p.pid, p.busy_ns))
            .collect()
    }

    /// Device time each group of pids got over `window` (from now), as fractions of it.
    pub fn device_shares(&self, groups: &[Vec<u32>], window: Duration) -> Vec<f64> {
        let before = self.busy_ns();
        let t0 = Instant::now();
        std::thread::sleep(window);
        let after = self.busy_ns();
        let elapsed = t0.elapsed().as_nanos() as f64;
        let got = |p: &u32| {
            let a = after.get(p).copied().unwrap_or(0);
            a.saturating_sub(before.get(p).copied().unwrap_or(0))
        };
        groups
            .iter()
            .map(|pids| pids.iter().map(got).sum::<u64>() as f64 / elapsed)
            .collect()
    }
}

/// One test at a time in this test binary among those that hold it: shares are measured over
/// wall-clock windows, so such tests must not compete for the machine's CPUs with each other.
/// With `GPUMUX_TEST_CPU_HOGS=N` the caller also runs beside N CPU-bound processes (what is
/// measured must hold on a busy host too; [`crate::hogs`]).
pub fn exclusive() -> (std::sync::MutexGuard<'static, ()>, crate::hogs::CpuHogs) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    (guard, crate::hogs::CpuHogs::from_env())
}

/// A quota file: 1 GiB and `weight`.
pub fn weighted_tenant(weight: u32) -> String {
    format!("memory_limit = \"1GiB\"\nweight = {weight}\n")
}

impl Drop for Gpumux {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: sending SIGTERM to our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// Polls `cond` every 5 ms until true, panicking with `msg()` after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool, msg: impl FnOnce() -> String) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("{}", msg());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
