//! Ground truth read by tests, `fakegpu-state` and the fake NVML: per-device and per-process
//! memory, busy time and kernel counts, and the kernel trace.

use crate::FakeGpuError;
use crate::config::{DEVICE_NAME, device_uuid_string};
use crate::layout::MAX_PROCS;
use crate::state::GpuState;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::Ordering;

/// All devices of a state file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Devices in index order.
    pub devices: Vec<DeviceSnapshot>,
}

/// One device.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// Device index.
    pub index: u32,
    /// `GPU-...` UUID.
    pub uuid: String,
    /// Device name.
    pub name: String,
    /// Memory capacity.
    pub total_bytes: u64,
    /// Memory in use by all processes.
    pub used_bytes: u64,
    /// Total device time spent running kernels.
    pub busy_ns: u64,
    /// Kernels completed.
    pub kernels_completed: u64,
    /// Most kernels observed running at once (independent of the lock; must stay <= 1).
    pub max_concurrent_kernels: u32,
    /// Live processes that use the device.
    pub processes: Vec<ProcessSnapshot>,
}

/// One live process's use of a device.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcessSnapshot {
    /// Process id.
    pub pid: u32,
    /// Device memory charged to it: its allocations plus `overhead_bytes` (what NVML reports
    /// as the process's `usedGpuMemory`).
    pub used_bytes: u64,
    /// Device time its kernels used.
    pub busy_ns: u64,
    /// Kernels it completed.
    pub kernels: u64,
    /// The part of `used_bytes` that no allocation call returned: the driver's memory for the
    /// process's contexts and loaded modules.
    #[serde(default)]
    pub overhead_bytes: u64,
}

/// One kernel execution (CLOCK_MONOTONIC ns).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRecord {
    /// Process.
    pub pid: u32,
    /// Start.
    pub start_ns: u64,
    /// End.
    pub end_ns: u64,
    /// When it was ready to run (submitted, its stream's earlier work done): the device was
    /// never idle between this and `start_ns` (0 in records of an older fake).
    #[serde(default)]
    pub ready_ns: u64,
}

/// Snapshot of the state file at `state_path` (which must exist), after reclaiming dead processes.
pub fn snapshot(state_path: &Path) -> Result<Snapshot, FakeGpuError> {
    Ok(GpuState::open_existing(state_path)?.snapshot())
}

/// The last kernels (at most 65536) run on `device`, oldest first.
pub fn kernel_trace(state_path: &Path, device: u32) -> Result<Vec<KernelRecord>, FakeGpuError> {
    GpuState::open_existing(state_path)?.kernel_trace(device)
}

impl GpuState {
    /// Snapshot of all devices, after reclaiming dead processes.
    pub fn snapshot(&self) -> Snapshot {
        self.reclaim_dead();
        let devices = (0..self.device_count())
            .map(|i| {
                let d = self.block(i);
                let mut processes = Vec::new();
                for s in 0..MAX_PROCS {
                    let slot = self.slot(s);
                    let pid = slot.pid.load(Ordering::Acquire);
                    if pid == 0 || pid == crate::layout::PID_RECLAIMING {
                        continue;
                    }
                    let pd = &slot.dev[i as usize];
                    if pd.attached.load(Ordering::Acquire) == 0 {
                        continue;
                    }
                    processes.push(ProcessSnapshot {
                        pid,
                        used_bytes: pd.used.load(Ordering::Acquire),
                        busy_ns: pd.busy_ns.load(Ordering::Acquire),
                        kernels: pd.kernels.load(Ordering::Acquire),
                        overhead_bytes: pd.overhead.load(Ordering::Acquire),
                    });
                }
                processes.sort_by_key(|p| p.pid);
                DeviceSnapshot {
                    index: i,
                    uuid: device_uuid_string(i),
                    name: DEVICE_NAME.to_string(),
                    total_bytes: d.total.load(Ordering::Relaxed),
                    used_bytes: d.used.load(Ordering::Acquire),
                    busy_ns: d.busy_ns.load(Ordering::Acquire),
                    kernels_completed: d.kernels_completed.load(Ordering::Acquire),
                    max_concurrent_kernels: d.max_concurrent.load(Ordering::Acquire),
                    processes,
                }
            })
            .collect();
        Snapshot { devices }
    }

    /// The kernel trace of `device`.
    pub fn kernel_trace(&self, device: u32) -> Result<Vec<KernelRecord>, FakeGpuError> {
        if device >= self.device_count() {
            return Err(FakeGpuError::NoDevice(device));
        }
        Ok(crate::trace::read(self.block(device)))
    }
}
