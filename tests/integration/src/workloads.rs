//! The test workloads as the integration tests use them.
//!
//! This module owns: compiling the C programs of `tests/workloads/c` (once per test binary,
//! into `<target>/gpumux-c/`, atomically so parallel test binaries can share them), locating the
//! `cudarc-workload` binary (built by `cargo build --workspace`), running any of them with a
//! timeout, streaming their JSON lines while they run ([`Running`]), and small accessors over
//! the parsed lines ([`Lines`]).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fakegpu::testenv::target_dir;
use serde_json::Value;

/// `CUDA_SUCCESS`.
pub const CUDA_SUCCESS: i64 = 0;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: i64 = 2;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `tests/workloads` in the source tree.
pub fn workloads_dir() -> PathBuf {
    workspace_root().join("tests/workloads")
}

/// The shared spin kernel's PTX file.
pub fn spin_ptx_path() -> PathBuf {
    workloads_dir().join("ptx/spin.ptx")
}

/// Compiles `tests/workloads/c/<source>` with `cc -O2 -Wall -Wextra <extra> -o OUT SRC
/// -ldl -pthread` into `<target>/gpumux-c/<output>`, once per process (and only when the source
/// is newer than the binary). Panics with the compiler's output on failure.
fn compile_c(source: &str, output: &str, extra: &[&str]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let src = workloads_dir().join("c").join(source);
    let dir = target_dir().join("gpumux-c");
    std::fs::create_dir_all(&dir).expect("create gpumux-c dir");
    let out = dir.join(output);
    let fresh = match (std::fs::metadata(&src), std::fs::metadata(&out)) {
        (Ok(s), Ok(o)) => match (s.modified(), o.modified()) {
            (Ok(s), Ok(o)) => o >= s,
            _ => false,
        },
        _ => false,
    };
    if fresh {
        return out;
    }
    let tmp = dir.join(format!("{output}.{}.tmp", std::process::id()));
    let res = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-Wall", "-Wextra", "-pthread"])
        .args(extra)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("run the C compiler (cc)");
    assert!(
        res.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    std::fs::rename(&tmp, &out).expect("install compiled workload");
    out
}

/// The C driver workload (`tests/workloads/c/driver_workload.c`), compiled.
pub fn c_workload() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| compile_c("driver_workload.c", "driver_workload", &[]))
        .clone()
}

/// The NVML probe (`tests/workloads/c/nvml_probe.c`), compiled.
pub fn nvml_probe() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| compile_c("nvml_probe.c", "nvml_probe", &[]))
        .clone()
}

/// The dlsym-logging LD_PRELOAD library (`tests/workloads/c/dlsym_logger.c`), compiled. It
/// appends `library<TAB>symbol` per `dlsym` call to `$DLSYM_LOG`.
pub fn dlsym_logger() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        compile_c(
            "dlsym_logger.c",
            "libdlsym_logger.so",
            &["-shared", "-fPIC"],
        )
    })
    .clone()
}

/// The bind-race LD_PRELOAD library for gpumuxd (`tests/workloads/c/bind_race.c`), compiled:
/// swaps a just-bound socket for a symlink to `$BIND_RACE_VICTIM`.
pub fn bind_race_lib() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| compile_c("bind_race.c", "libbind_race.so", &["-shared", "-fPIC"]))
        .clone()
}

/// The `cudarc-workload` binary of this build (`cargo build --workspace` builds it).
pub fn cudarc_workload() -> PathBuf {
    let p = target_dir().join("cudarc-workload");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// Parsed JSON lines of a workload.
#[derive(Debug, Clone, Default)]
pub struct Lines(pub Vec<Value>);

impl Lines {
    /// Every line whose `"op"` is `op`.
    pub fn ops(&self, op: &str) -> Vec<&Value> {
        self.0.iter().filter(|v| v["op"] == op).collect()
    }

    /// The only line whose `"op"` is `op`, panicking (with all lines) otherwise.
    pub fn one(&self, op: &str) -> &Value {
        let v = self.ops(op);
        assert_eq!(
            v.len(),
            1,
            "expected exactly one {op:?} line in {:#?}",
            self.0
        );
        v[0]
    }

    /// The line of op `op` with `"name": name` (the C workload's named allocations).
    pub fn named(&self, op: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|v| v["op"] == op && v["name"] == name)
            .unwrap_or_else(|| panic!("no {op:?} line named {name:?} in {:#?}", self.0))
    }
}

fn parse_lines(stdout: &str) -> Lines {
    Lines(
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("non-JSON line {l:?}: {e}")))
            .collect(),
    )
}

/// A finished workload run.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Parsed stdout.
    pub lines: Lines,
    /// Raw stderr.
    pub stderr: String,
}

impl Output {
    /// Panics unless the process exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "workload failed: {}\nstdout: {:#?}\nstderr: {}",
            self.status,
            self.lines.0,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion (killing it after `timeout`), capturing and parsing its output.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let (status, stdout, stderr) = run_text(cmd, timeout)?;
    Ok(Output {
        status,
        lines: parse_lines(&stdout),
        stderr,
    })
}

/// Runs `cmd` to completion (killing it after `timeout`): its exit status, stdout and stderr.
pub fn run_text(cmd: &mut Command, timeout: Duration) -> Result<(ExitStatus, String, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            let stdout = t_out.join().unwrap_or_default();
            let stderr = t_err.join().unwrap_or_default();
            bail!("{cmd:?} timed out after {timeout:?}\nstdout: {stdout}\nstderr: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// A workload running in the background whose JSON lines are read as they come. Killed
/// (SIGKILL) on drop if still running.
pub struct Running {
    child: Child,
    rx: Receiver<Value>,
    seen: Vec<Value>,
}

impl Running {
    /// Spawns `cmd` with piped stdout (stderr inherited, so it shows in test output).
    pub fn spawn(cmd: &mut Command) -> Result<Running> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let out = child.stdout.take().context("stdout")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| Value::String(format!("non-JSON line: {line}")));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Ok(Running {
            child,
            rx,
            seen: Vec::new(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a line with `"op": op`, returning it.
    pub fn wait_for(&mut self, op: &str, timeout: Duration) -> Result<Value> {
        if let Some(v) = self.seen.iter().find(|v| v["op"] == op) {
            return Ok(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["op"] == op {
                        return Ok(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no {op:?} line within {timeout:?}; saw {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("workload exited without a {op:?} line; saw {:?}", self.seen)
                }
            }
        }
    }

    /// Waits up to `timeout` until `count` lines with `"op": op` have been read; returns them.
    pub fn wait_for_count(
        &mut self,
        op: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Value> = self
                .seen
                .iter()
                .filter(|v| v["op"] == op)
                .cloned()
                .collect();
            if found.len() >= count {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "fewer than {count} {op:?} lines within {timeout:?}; saw {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "workload exited before {count} {op:?} lines; saw {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// The lines read so far (by [`Running::wait_for`]).
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Waits for the process to exit (up to `timeout`) and returns its status and every line.
    pub fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, Lines)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "workload did not exit within {timeout:?}; saw {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // the reader thread ends at EOF; collect what it has left
        while let Ok(v) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(v);
        }
        Ok((status, Lines(std::mem::take(&mut self.seen))))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// `env.command(program)` with `args`.
pub fn command<I, S>(env: &fakegpu::testenv::FakeGpuEnv, program: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = env.command(program);
    c.args(args);
    c
}

/// `v[key]` as u64, panicking with the line when absent.
pub fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key:?} missing or not an unsigned integer in {v}"))
}

/// `v[key]` as i64 (CUresult codes), panicking with the line when absent.
pub fn i(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key:?} missing or not an integer in {v}"))
}

/// `v[key]` as f64, panicking with the line when absent.
pub fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key:?} missing or not a number in {v}"))
}
