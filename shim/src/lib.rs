//! libgpumux.so: the LD_PRELOAD shim that holds a process to its container's GPU quota.
//!
//! - [`hooks`]: the exported driver/NVML entry points (`dlsym`, `cuGetProcAddress`, memory,
//!   memory queries, launches) and the real functions behind them.
//! - [`real`]: finding real functions without ever mistaking the shim's own for them.
//! - [`registration`]: this process's registration with gpumuxd and its mapped segments.
//! - [`allocations`]: what this process has charged, by handle.
//! - [`busy`]: the device time its work used in the current slice, measured with events.
//! - [`contexts`]: the contexts the application created, for draining on revocation.
//! - [`graph_memory`]: CUDA graph memory as charged (executable graphs, graph memory pools).
//! - [`captures`]: stream captures in progress (the drain waits for them to end).
//! - [`footprint`]: memory beyond allocations (contexts, modules): reserving a context's or an
//!   image's size, announcing changes for the daemon to measure, refusing what does not fit.
//! - [`images`]: the size of a module image passed by pointer.
//! - [`quota_view`]: memory figures as the process is told them.
//! - [`gate`]: the compute-slice launch gate.
//! - [`watcher`]: the thread that drains this process's work when the daemon revokes a slice.
//! - [`fork`], [`ffi_guard`], [`diag`]: fork safety, no panics across FFI, stderr messages.
//! - [`cuda_types`]: the ABI pieces (no CUDA headers needed).
//!
//! Nothing runs at load time: no constructor, no thread. Everything starts on the first
//! driver call (normally `cuInit`); the watcher thread starts with the registration.

mod allocations;
mod bound;
mod busy;
mod captures;
mod contexts;
mod cuda_types;
mod diag;
mod ffi_guard;
mod footprint;
mod fork;
mod gate;
mod graph_memory;
mod hooks;
mod images;
mod quota_view;
mod real;
mod registration;
mod watcher;
