//! Deliberate host CPU load: tests and benchmarks that must hold on a busy machine (a GPU node's
//! data loaders and tokenizers keep its CPUs busy) run beside CPU-bound processes started here.
//!
//! A hog is `sh -c 'while :; do :; done'`: pure user-space spinning, no system calls. Each is
//! killed (by its own pid) when the [`CpuHogs`] is dropped. `GPUMUX_TEST_CPU_HOGS=N` makes the
//! time-slicing and fake-timing integration tests run beside N hogs ([`CpuHogs::from_env`]).

use std::process::{Child, Command, Stdio};

/// The variable that asks the load-sensitive integration tests for N hogs.
pub const ENV: &str = "GPUMUX_TEST_CPU_HOGS";

/// Running CPU hogs; stopped on drop.
pub struct CpuHogs {
    children: Vec<Child>,
}

impl CpuHogs {
    /// Starts `n` CPU-bound processes.
    pub fn start(n: usize) -> CpuHogs {
        let children = (0..n)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a CPU hog (sh)")
            })
            .collect();
        CpuHogs { children }
    }

    /// `per_core` hogs for each CPU this process may run on.
    pub fn per_core(per_core: usize) -> CpuHogs {
        Self::start(per_core * cores())
    }

    /// As many hogs as [`ENV`] asks for (none when unset or not a number).
    pub fn from_env() -> CpuHogs {
        let n = std::env::var(ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n > 0 {
            eprintln!("running beside {n} CPU hogs ({ENV})");
        }
        Self::start(n)
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether none are running.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Their pids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Our own children, by handle: kill and reap each.
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), for reports.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hogs_start_spin_and_stop() {
        let pids = {
            let h = CpuHogs::start(2);
            assert_eq!(h.len(), 2);
            std::thread::sleep(std::time::Duration::from_millis(200));
            for pid in h.pids() {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
                let utime: u64 = stat
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .nth(11)
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(utime > 0, "hog {pid} used no CPU");
            }
            h.pids()
        };
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "hog {pid} still there"
            );
        }
    }
}
