//! The measuring thread: NVML readings of a device's processes, and the `/proc` reads that
//! attribute unmanaged processes to tenants, done off the event loop. NVML can be slow or hang
//! (a GPU falling off the bus, a driver reset), and tenants can cause readings; the loop, which
//! grants every tenant's slices, must never wait for one.
//!
//! The loop hands the thread one [`Job`] per device at a time ([`Measurer::start`]) and takes
//! the [`Outcome`]s when the thread's eventfd becomes readable ([`Measurer::take`]). The thread
//! sleeps on its channel otherwise (no polling); with at most one job per device in flight, its
//! backlog is bounded by the number of devices whatever tenants do.

use gpumux_common::nvml::{NvmlError, ProcessMemory};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

/// A reading to take.
#[derive(Debug, Clone)]
pub struct Job {
    /// The daemon's device number (handed back in the outcome).
    pub device: usize,
    /// NVML's index of the device.
    pub index: u32,
    /// Pids of the processes registered with tenants (trusted: from the kernel), whose cgroups
    /// attribute unmanaged processes.
    pub registered: Vec<u32>,
}

/// A reading taken.
#[derive(Debug)]
pub struct Outcome {
    pub device: usize,
    pub listing: Result<Vec<ProcessMemory>, NvmlError>,
    /// `/proc/PID/cgroup` of every unmanaged process listed and of every registered process
    /// (read only when an unmanaged process is listed).
    pub cgroups: HashMap<u32, Option<String>>,
}

/// What reads a device's processes (NVML in the daemon; scripted in tests).
pub type Source = Box<dyn Fn(u32) -> Result<Vec<ProcessMemory>, NvmlError> + Send>;
/// What reads a process's cgroup (`/proc` in the daemon).
pub type Cgroup = Box<dyn Fn(u32) -> Option<String> + Send>;

/// The measuring thread, from the loop's side.
pub struct Measurer {
    jobs: Sender<Job>,
    results: Receiver<Outcome>,
    ready: Arc<EventFd>,
}

impl Measurer {
    /// Starts the thread.
    pub fn spawn(source: Source, cgroup: Cgroup) -> std::io::Result<Measurer> {
        let ready = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(std::io::Error::from)?,
        );
        let (jobs, job_rx) = channel::<Job>();
        let (result_tx, results) = channel();
        let wake = ready.clone();
        std::thread::Builder::new()
            .name("gpumuxd-measure".into())
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    let outcome = measure(&job, &source, &cgroup);
                    if result_tx.send(outcome).is_err() {
                        return;
                    }
                    if let Err(e) = wake.write(1) {
                        tracing::warn!("measuring thread: cannot wake the event loop: {e}");
                    }
                }
            })?;
        Ok(Measurer {
            jobs,
            results,
            ready,
        })
    }

    /// The descriptor that becomes readable when outcomes wait ([`Measurer::take`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }

    /// Hands the thread a reading to take. False if the thread is gone (it panicked).
    pub fn start(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// The outcomes taken since the last call (never waits).
    pub fn take(&self) -> Vec<Outcome> {
        // Reset the eventfd before draining, so an outcome sent meanwhile wakes the loop again.
        if let Err(e) = self.ready.read()
            && e != nix::errno::Errno::EAGAIN
        {
            tracing::warn!("reading the measuring thread's eventfd: {e}");
        }
        self.results.try_iter().collect()
    }
}

fn measure(job: &Job, source: &Source, cgroup: &Cgroup) -> Outcome {
    let listing = source(job.index);
    let mut cgroups = HashMap::new();
    if let Ok(list) = &listing {
        let unmanaged: Vec<u32> = list
            .iter()
            .map(|p| p.pid)
            .filter(|pid| *pid != 0 && !job.registered.contains(pid))
            .collect();
        if !unmanaged.is_empty() {
            for &pid in unmanaged.iter().chain(&job.registered) {
                cgroups.entry(pid).or_insert_with(|| cgroup(pid));
            }
        }
    }
    Outcome {
        device: job.device,
        listing,
        cgroups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    fn pm(pid: u32, used: u64) -> ProcessMemory {
        ProcessMemory {
            pid,
            used_bytes: Some(used),
        }
    }

    /// Waits (bounded) until the eventfd says outcomes wait, then takes them.
    fn wait_take(m: &Measurer) -> Vec<Outcome> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = m.take();
            if !got.is_empty() || Instant::now() > deadline {
                return got;
            }
            let mut fds = [nix::poll::PollFd::new(m.fd(), nix::poll::PollFlags::POLLIN)];
            // A timeout or an interruption just loops (bounded by the deadline).
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).ok();
        }
    }

    #[test]
    fn a_hung_source_never_blocks_the_caller() {
        // NVML hangs until the test lets it go.
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = gate.clone();
        let m = Measurer::spawn(
            Box::new(move |index| {
                drop(g.lock());
                Ok(vec![pm(10 + index, 100), pm(99, 5)])
            }),
            Box::new(|pid| Some(format!("0::/pod{pid}"))),
        )
        .unwrap();
        let t0 = Instant::now();
        assert!(m.start(Job {
            device: 1,
            index: 3,
            registered: vec![13],
        }));
        assert!(m.take().is_empty(), "nothing yet, and no waiting for it");
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(held);
        let got = wait_take(&m);
        assert_eq!(got.len(), 1);
        let o = &got[0];
        assert_eq!(o.device, 1);
        assert_eq!(o.listing.as_ref().unwrap(), &vec![pm(13, 100), pm(99, 5)]);
        // An unmanaged process was listed: its cgroup and the registered ones', nothing else.
        let mut pids: Vec<u32> = o.cgroups.keys().copied().collect();
        pids.sort_unstable();
        assert_eq!(pids, vec![13, 99]);
        assert!(m.take().is_empty());
    }

    #[test]
    fn errors_come_back_and_no_unmanaged_means_no_proc_reads() {
        let m = Measurer::spawn(
            Box::new(|index| match index {
                0 => Err(NvmlError::Call {
                    call: "nvmlDeviceGetComputeRunningProcesses",
                    code: 15,
                }),
                _ => Ok(vec![pm(7, 1)]),
            }),
            Box::new(|_| panic!("no cgroup is read when every process is registered")),
        )
        .unwrap();
        for (device, index) in [(0, 0), (1, 1)] {
            assert!(m.start(Job {
                device,
                index,
                registered: vec![7],
            }));
        }
        let mut got = Vec::new();
        while got.len() < 2 {
            let more = wait_take(&m);
            assert!(!more.is_empty(), "outcomes come back");
            got.extend(more);
        }
        got.sort_by_key(|o| o.device);
        got[0].listing.as_ref().unwrap_err();
        assert!(got[1].cgroups.is_empty());
    }
}
