//! gpumux's Kubernetes DRA driver (`gpu.gpumux.dev`): each GPU of the node is published in a
//! ResourceSlice as a device that several claims share by consuming its `memory` and `shares`
//! capacity; a claim the kubelet prepares on the node becomes a gpumux tenant (memory limit =
//! consumed memory, weight = consumed shares, priority from the claim's configuration) handed
//! to its containers as a CDI device.
//!
//! It speaks the kubelet's DRA plugin API (`v1` and `v1beta1`) and plugin registration over
//! Unix sockets (tonic/prost, generated from the vendored upstream protos), and the API server
//! through kube-rs with the node's service account. Its own crate and binary keep tokio out of
//! the shim and the daemon.
//!
//! - [`api`]: the generated kubelet APIs.
//! - [`config`]: settings and paths.
//! - [`quantity`]: Kubernetes quantities as whole numbers.
//! - [`gpus`]: the node's GPUs and their device names.
//! - [`slices`]: the ResourceSlice devices (attributes, consumable capacity, request policies).
//! - [`claims`]: an allocated ResourceClaim → the tenant it becomes (validated config).
//! - [`store`]: prepared claims: quota files, CDI specs, the state file, crash recovery.
//! - [`publisher`]: keeping the node's ResourceSlice in step with the GPUs.
//! - [`plugin`]: the `DRAPlugin` services (`NodePrepareResources`, `NodeUnprepareResources`)
//!   and the `Registration` service.
//! - [`run`]: the driver's life: serving, (re-)registration, health, publishing.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod claims;
pub mod config;
pub mod gpus;
pub mod plugin;
pub mod publisher;
pub mod quantity;
pub mod run;
pub mod slices;
pub mod store;
