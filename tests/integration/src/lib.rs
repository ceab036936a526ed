//! Shared helpers of gpumux's integration tests (real processes on the fake GPU).
//!
//! - [`workloads`]: building and locating the test workloads (the C driver workload, the cudarc
//!   workload, the NVML probe, the dlsym logger), running them under a
//!   [`fakegpu::testenv::FakeGpuEnv`] and parsing their JSON-lines output.
//! - [`gpumux`]: the real daemon and shim on the fake GPU (config, tenants, status).
//! - [`client`]: a tenant process speaking the socket protocol itself (hostile-tenant tests).
//! - [`hogs`]: deliberate host CPU load, for what must hold on a busy machine.
//! - [`conserving`]: work conservation against the bare driver under the same host load.

pub mod client;
pub mod conserving;
pub mod gpumux;
pub mod hogs;
pub mod workloads;
