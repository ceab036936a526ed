//! Simulated GPU state shared by every process that uses the fake GPU.
//!
//! The state lives in one memory-mapped file (`FAKEGPU_STATE`); every process mapping the same file
//! sees the same devices. This crate owns:
//! - [`config`]: device configuration (`FAKEGPU_DEVICES`, sizes, context and module overhead,
//!   names, UUIDs);
//! - [`layout`]: the byte layout of the state file;
//! - [`state`]: creating/opening the file and the per-process slots ([`GpuState`]);
//! - [`procid`]: process identity (pid + start time) and liveness;
//! - [`lock`]: the FIFO-fair cross-process device execution lock;
//! - [`trace`]: the per-device kernel trace ring;
//! - [`snapshot`]: the ground-truth read API used by tests and NVML;
//! - [`testenv`]: the helper that gives each test an isolated fake GPU;
//! - [`fault`]: faults a test injects into the fake NVML (failing or hanging).

pub mod config;
pub mod fault;
pub mod layout;
pub mod lock;
pub mod procid;
pub mod robust;
pub mod snapshot;
pub mod state;
pub mod testenv;
pub mod trace;

pub use config::{
    COMPUTE_CAPABILITY, DEFAULT_CONTEXT_BYTES, DEFAULT_DEVICE_BYTES, DEFAULT_MODULE_BYTES_PER_KIB,
    DEVICE_NAME, DeviceConfig, MAX_DEVICES, default_state_path, device_pci_bus, device_pci_bus_id,
    device_uuid, device_uuid_string, module_bytes, parse_size, parse_sizes,
};
pub use lock::DeviceLockGuard;
pub use snapshot::{
    DeviceSnapshot, KernelRecord, ProcessSnapshot, Snapshot, kernel_trace, snapshot,
};
pub use state::{GpuState, KernelRun, QueuedKernel};

use std::path::PathBuf;

/// Errors of the fake GPU library.
#[derive(Debug, thiserror::Error)]
pub enum FakeGpuError {
    /// An I/O error on the state file.
    #[error("fakegpu state file {path}: {source}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The state file exists but is not a valid fake GPU state file.
    #[error("fakegpu state file {path} is invalid: {reason}")]
    InvalidState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A size string could not be parsed.
    #[error("invalid size {0:?} (expected bytes or a KiB/MiB/GiB/TiB suffix)")]
    InvalidSize(String),
    /// A device configuration is invalid (no device, too many devices, zero size).
    #[error("invalid device configuration: {0}")]
    InvalidConfig(String),
    /// No such device index.
    #[error("no device {0}")]
    NoDevice(u32),
    /// The device has not enough free memory for the request.
    #[error("out of device memory on device {device}: requested {requested} bytes, {free} free")]
    OutOfMemory {
        /// Device index.
        device: u32,
        /// Requested bytes.
        requested: u64,
        /// Free bytes at the time of the request.
        free: u64,
    },
    /// The per-process slot table is full (too many live processes).
    #[error("too many processes use the fake GPU (slot table of {0} is full)")]
    TooManyProcesses(usize),
}
