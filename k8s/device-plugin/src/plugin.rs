//! The `DevicePlugin` gRPC service the kubelet calls: the share list and its health
//! (`ListAndWatch`), a packing hint (`GetPreferredAllocation`), and `Allocate`, which turns the
//! allocated shares into a gpumux tenant and tells the kubelet how to put the container in it.

use crate::api::v1beta1::device_plugin_server::DevicePlugin;
use crate::api::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, DevicePluginOptions, DeviceSpec, Empty,
    ListAndWatchResponse, Mount, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse,
};
use crate::config::{CONTAINER_SHIM_PATH, CONTAINER_STATE_DIR, PluginConfig};
use crate::shares::{Inventory, ShareQuota, preferred, quota_for};
use crate::tenants::TenantStore;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Annotation carrying the tenant's name to the container runtime (and to `crictl inspect`).
pub const TENANT_ANNOTATION: &str = "gpumux.dev/tenant";

/// Control device nodes every CUDA container needs, when the host has them.
const CONTROL_NODES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

/// The service. Cheap to clone; one per registration.
#[derive(Clone)]
pub struct SharePlugin {
    cfg: Arc<PluginConfig>,
    store: Arc<TenantStore>,
    inventory: watch::Receiver<Inventory>,
    stop: watch::Receiver<bool>,
}

impl SharePlugin {
    /// A service over the shared inventory and store; its `ListAndWatch` streams end when
    /// `stop` turns true (so the server can shut down while the kubelet still listens).
    pub fn new(
        cfg: Arc<PluginConfig>,
        store: Arc<TenantStore>,
        inventory: watch::Receiver<Inventory>,
        stop: watch::Receiver<bool>,
    ) -> SharePlugin {
        SharePlugin {
            cfg,
            store,
            inventory,
            stop,
        }
    }

    /// What the kubelet passes to the container runtime for this tenant.
    pub fn container_response(&self, q: &ShareQuota) -> ContainerAllocateResponse {
        let container_dir =
            gpumux_common::names::tenant_dir(Path::new(CONTAINER_STATE_DIR), &q.tenant);
        let container_socket =
            gpumux_common::names::tenant_socket(Path::new(CONTAINER_STATE_DIR), &q.tenant);
        let uuids: Vec<&str> = q.gpus.iter().map(|g| g.uuid.as_str()).collect();
        let envs = HashMap::from([
            ("LD_PRELOAD".to_string(), CONTAINER_SHIM_PATH.to_string()),
            (
                "GPUMUX_SOCKET".to_string(),
                container_socket.display().to_string(),
            ),
            // With the NVIDIA container runtime this injects the driver libraries, limited to
            // the allocated GPUs (it overrides an image's `NVIDIA_VISIBLE_DEVICES=all`).
            ("NVIDIA_VISIBLE_DEVICES".to_string(), uuids.join(",")),
        ]);
        let mounts = vec![
            Mount {
                container_path: CONTAINER_SHIM_PATH.to_string(),
                host_path: self.cfg.shim_path.display().to_string(),
                read_only: true,
            },
            // Read-only: connecting to a socket needs no write access to its file system, and
            // the tenant cannot plant anything next to its socket.
            Mount {
                container_path: container_dir.display().to_string(),
                host_path: self.store.tenant_dir(&q.tenant).display().to_string(),
                read_only: true,
            },
        ];
        let mut nodes: Vec<String> = q
            .gpus
            .iter()
            .map(|g| format!("nvidia{}", g.minor.unwrap_or(g.index)))
            .collect();
        nodes.extend(CONTROL_NODES.iter().map(|s| s.to_string()));
        // Looked for under `--dev-root` (the host's /dev as the plugin sees it), passed on
        // as the host's `/dev/<name>`.
        let devices = nodes
            .into_iter()
            .filter(|name| self.cfg.dev_root.join(name).exists())
            .map(|name| DeviceSpec {
                container_path: format!("/dev/{name}"),
                host_path: format!("/dev/{name}"),
                permissions: "rw".to_string(),
            })
            .collect();
        ContainerAllocateResponse {
            envs,
            mounts,
            devices,
            annotations: HashMap::from([(TENANT_ANNOTATION.to_string(), q.tenant.clone())]),
            cdi_devices: Vec::new(),
        }
    }

    /// Waits (up to `--socket-wait`) for gpumuxd to pick the new quota file up, so the
    /// container's first CUDA call finds its socket. Returns whether it appeared; a container
    /// started without it gets a clear refusal from the shim, never unlimited GPU use.
    async fn wait_for_socket(&self, tenant: &str) -> bool {
        let socket = self.store.tenant_socket(tenant);
        crate::kubelet::wait_for_socket(&socket, self.cfg.socket_wait).await
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tonic::async_trait]
impl DevicePlugin for SharePlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ReceiverStream<Result<ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut inventory = self.inventory.clone();
        let mut stop = self.stop.clone();
        let shares = self.cfg.shares_per_gpu;
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let devices = inventory.borrow_and_update().devices(shares);
                if last.as_ref() != Some(&devices) {
                    let healthy = devices
                        .iter()
                        .filter(|d| d.health == crate::api::v1beta1::HEALTHY)
                        .count();
                    tracing::info!(
                        devices = devices.len(),
                        healthy,
                        "ListAndWatch: sending devices"
                    );
                    let msg = ListAndWatchResponse {
                        devices: devices.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                    last = Some(devices);
                }
                tokio::select! {
                    changed = inventory.changed() => if changed.is_err() { break },
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|r| ContainerPreferredAllocationResponse {
                device_i_ds: preferred(
                    &r.available_device_i_ds,
                    &r.must_include_device_i_ds,
                    usize::try_from(r.allocation_size).unwrap_or(0),
                ),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        // A missing library would become an empty directory at the mount source, the dynamic
        // loader would skip the preload, and the container would run without limits.
        if !self.cfg.shim_path.is_file() {
            let msg = format!(
                "the gpumux shim {} is missing on this node; refusing to start containers without it",
                self.cfg.shim_path.display()
            );
            tracing::error!("Allocate: {msg}");
            return Err(Status::failed_precondition(msg));
        }
        let inventory = self.inventory.borrow().clone();
        let mut container_responses = Vec::new();
        for req in request.into_inner().container_requests {
            let q = quota_for(&req.devices_ids, &inventory, self.cfg.shares_per_gpu)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.store.ensure(&q, unix_now()).map_err(|e| {
                tracing::error!(tenant = %q.tenant, "Allocate failed: {e}");
                Status::internal(e.to_string())
            })?;
            let ready = self.wait_for_socket(&q.tenant).await;
            if !ready {
                tracing::warn!(
                    tenant = %q.tenant,
                    socket = %self.store.tenant_socket(&q.tenant).display(),
                    "gpumuxd has not opened the tenant's socket yet; is gpumuxd running?"
                );
            }
            tracing::info!(
                tenant = %q.tenant,
                shares = q.device_ids.len(),
                memory_limit = q.memory_limit,
                weight = q.weight,
                gpus = ?q.gpus.iter().map(|g| g.uuid.as_str()).collect::<Vec<_>>(),
                ready,
                "allocated"
            );
            container_responses.push(self.container_response(&q));
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// The options registered with the kubelet and answered by `GetDevicePluginOptions`.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}
