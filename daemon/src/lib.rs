//! gpumuxd, the node daemon, and the library behind gpumuxctl.
//!
//! - [`nvml`]: the node's GPUs through NVML (dlopen, a handful of calls).
//! - [`devices`]: those GPUs as the daemon and the segments describe them.
//! - [`segments`]: a tenant's shared segments (sealed control, tenant-writable accounting).
//! - [`scheduler`]: weighted, work-conserving time-slicing of one device (pure logic).
//! - [`server`]: the event loop: tenant sockets, process lifetimes, quota files, control socket.
//! - [`status`]: the status report and control requests (one schema for daemon and CLI).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod devices;
pub mod nvml;
pub mod scheduler;
pub mod segments;
pub mod server;
pub mod status;
