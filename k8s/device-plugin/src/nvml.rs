//! The node's GPUs and their health: gpumux-common's NVML reader, shared with the daemon.

pub use gpumux_common::nvml::*;
