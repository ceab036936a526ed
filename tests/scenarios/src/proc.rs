//! A workload process whose JSON lines are collected as they come.
//!
//! This module owns spawning a workload (stdout piped and parsed line by line on a reader
//! thread, stderr to a file so hundreds of processes stay quiet), waiting for a given line,
//! reading every line seen so far while the process still runs, signalling it, and reaping it
//! (SIGKILL on drop if still running).

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines seen so far and whether stdout reached EOF.
#[derive(Default)]
struct Seen {
    lines: Vec<Value>,
    eof: bool,
}

/// A running workload.
pub struct Proc {
    child: Child,
    label: String,
    stderr: PathBuf,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Proc {
    /// Spawns `cmd` (stdin null, stdout parsed, stderr appended to `stderr`); `label` names it
    /// in errors.
    pub fn spawn(cmd: &mut Command, label: impl Into<String>, stderr: &Path) -> Result<Proc> {
        let label = label.into();
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .with_context(|| format!("open {}", stderr.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {label}: {cmd:?}"))?;
        let out = child.stdout.take().context("stdout")?;
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let shared = Arc::clone(&seen);
        std::thread::Builder::new()
            .name(format!("read-{}", child.id()))
            .stack_size(64 << 10)
            .spawn(move || {
                let (m, cv) = &*shared;
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v = serde_json::from_str(&line)
                        .unwrap_or_else(|_| Value::String(format!("non-JSON line: {line}")));
                    lock(m).lines.push(v);
                    cv.notify_all();
                }
                lock(m).eof = true;
                cv.notify_all();
            })
            .context("spawn a reader thread")?;
        Ok(Proc {
            child,
            label,
            stderr: stderr.to_path_buf(),
            seen,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the first line whose `"op"` is `op`.
    pub fn wait_for(&self, op: &str, timeout: Duration) -> Result<Value> {
        self.wait_until(timeout, |lines| {
            lines.iter().find(|v| v["op"] == op).cloned()
        })
        .with_context(|| format!("{} printed no {op:?} line", self.label))
    }

    /// Waits up to `timeout` until `f` (over every line so far) returns something; an error
    /// when the timeout passes or the process closes its stdout first.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[Value]) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.seen;
        let mut g = lock(m);
        loop {
            if let Some(t) = f(&g.lines) {
                return Ok(t);
            }
            if g.eof {
                bail!(
                    "{} ended first; lines: {:?}; stderr: {}",
                    self.label,
                    g.lines,
                    self.stderr_text()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} timed out after {timeout:?}; lines: {:?}",
                    self.label,
                    g.lines
                );
            }
            g = cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Every line seen so far whose `"op"` is `op`.
    pub fn lines_of(&self, op: &str) -> Vec<Value> {
        lock(&self.seen.0)
            .lines
            .iter()
            .filter(|v| v["op"] == op)
            .cloned()
            .collect()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid (not yet reaped: `Child` reaps only in
        // wait/try_wait, which this type calls only once it stops using the pid).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        if rc != 0 {
            bail!(
                "signal {sig} to {}: {}",
                self.label,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGKILLs and reaps the process.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Waits up to `timeout` for the process to exit; returns its status and every line.
    pub fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<Value>)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{} did not exit within {timeout:?}", self.label);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The reader ends at EOF, right after the exit.
        self.wait_until(Duration::from_secs(5), |_| None::<()>).ok();
        let lines = std::mem::take(&mut lock(&self.seen.0).lines);
        Ok((status, lines))
    }

    /// Whatever the process wrote to stderr (for error messages).
    pub fn stderr_text(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: String = s.chars().rev().take(2000).collect();
        tail.chars().rev().collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
