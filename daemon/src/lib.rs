//! gpumuxd, the node daemon, and the library behind gpumuxctl.
//!
//! - [`devices`]: the node's GPUs (from `gpumux_common::nvml`) as the daemon and the segments
//!   describe them.
//! - [`procfs`]: process start times and exit notification (pidfd).
//! - [`segments`]: a tenant's shared segments (sealed control, tenant-writable accounting).
//! - [`sigbus`]: survives a tenant truncating a file the daemon has mapped.
//! - [`ratelimit`]: the one rate limiter (per-key fixed windows, pure logic) and the limits
//!   applied with it: per-connection demands, repeated warnings in the log.
//! - [`scheduler`]: weighted, work-conserving time-slicing of one device (pure logic).
//! - [`footprint`]: processes' memory beyond their allocations and unmanaged processes, from
//!   NVML readings (pure logic).
//! - [`measurer`]: the thread that takes those readings, off the event loop.
//! - [`server`]: the event loop: tenant sockets, process lifetimes, quota files, control socket.
//! - [`metrics`]: Prometheus text exposition of the status, served over HTTP.
//! - [`status`]: the status report and control requests (one schema for daemon and CLI).
//! - [`logging`]: the log's shape (terminal, file, systemd journal) and rate limiting of
//!   repeated warnings (on [`ratelimit`]).
//! - [`notify`]: systemd readiness notifications (`sd_notify` over `$NOTIFY_SOCKET`).
//! - [`waits`]: slice waits and grant latency as the daemon sees them (pure logic).
//! - [`top`]: `gpumuxctl top`, the live view (ratatui), and its text form.
//! - [`cdi`]: the CDI spec that injects a tenant into a container (`gpumuxctl cdi`).

pub mod cdi;
pub mod devices;
pub mod footprint;
pub mod logging;
pub mod measurer;
pub mod metrics;
pub mod notify;
pub mod procfs;
pub mod ratelimit;
pub mod scheduler;
pub mod segments;
pub mod server;
pub mod sigbus;
pub mod status;
pub mod top;
pub mod waits;
