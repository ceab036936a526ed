//! gpumux's Kubernetes device plugin: GPUs advertised as shares of the extended resource
//! `gpumux.dev/gpu-share` (configurable); a container that gets `k` of a GPU's `N` shares runs
//! as a gpumux tenant with `k/N` of its memory and weight `k`.
//!
//! The plugin speaks the kubelet's device plugin API `v1beta1` and reads its pod resources API
//! `v1`, both over the kubelet's Unix sockets (tonic/prost, generated from the vendored
//! upstream protos at build time). It lives in its own crate and binary so tokio stays out of
//! the shim and the daemon.
//!
//! - [`api`]: the generated kubelet APIs and their constants.
//! - [`config`]: settings and the container-side paths of the SPEC.
//! - [`shares`]: share IDs, the inventory, what an allocation is worth, tenant names.
//! - [`tenants`]: quota files and the plugin's record of the tenants it created.
//! - [`plugin`]: the `DevicePlugin` service (`ListAndWatch`, `Allocate`, ...).
//! - [`kubelet`]: registration, pod resources queries, serving on a Unix socket.
//! - [`run`]: the plugin's life: health polling, tenant collection, (re-)registration.
//! - [`process`]: logging and the signal-driven runtime (shared with the DRA driver).
//!
//! The node's GPUs and their health come from gpumux-common's NVML reader
//! ([`gpumux_common::nvml`]), shared with the daemon.

pub mod api;
pub mod config;
pub mod kubelet;
pub mod plugin;
pub mod process;
pub mod run;
pub mod shares;
pub mod tenants;
