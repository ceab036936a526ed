//! The gRPC services the kubelet calls: `DRAPlugin` (`v1`, and `v1beta1` for older kubelets)
//! to prepare and unprepare claims, and `Registration` on the plugin registration socket.
//!
//! `NodePrepareResources` answers each claim on its own: a claim that cannot be prepared
//! (unknown, not allocated here, invalid configuration) gets its reason in the response's
//! `error`, which the kubelet reports in the pod's events, and the others go ahead. Preparing
//! a prepared claim answers the same devices again; unpreparing an unknown claim succeeds.

use crate::api::registration::registration_server::Registration;
use crate::api::registration::{
    DRA_PLUGIN_TYPE, InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use crate::api::{v1, v1beta1};
use crate::claims;
use crate::config::DriverConfig;
use crate::gpus::Gpus;
use crate::publisher;
use crate::slices::Policy;
use crate::store::{ClaimRecord, ClaimStore};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `DRAPlugin` service (both versions). Cheap to clone.
#[derive(Clone)]
pub struct Driver {
    cfg: Arc<DriverConfig>,
    store: Arc<ClaimStore>,
    gpus: watch::Receiver<Gpus>,
    client: kube::Client,
}

impl Driver {
    pub fn new(
        cfg: Arc<DriverConfig>,
        store: Arc<ClaimStore>,
        gpus: watch::Receiver<Gpus>,
        client: kube::Client,
    ) -> Driver {
        Driver {
            cfg,
            store,
            gpus,
            client,
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            shares_per_gpu: self.cfg.shares_per_gpu,
            memory_granularity: self.cfg.memory_granularity,
        }
    }

    /// Prepares one claim; the error is what the kubelet shows in the pod's events.
    async fn prepare(&self, c: &v1::Claim) -> Result<Vec<v1::Device>, String> {
        if let Some(r) = self.store.prepared(&c.uid) {
            return Ok(devices_of(&r));
        }
        // A missing library would become an empty directory at the mount source, the dynamic
        // loader would skip the preload, and the container would run without limits.
        if !self.cfg.shim_path.is_file() {
            return Err(format!(
                "the gpumux shim {} is missing on node {}; refusing to start containers without it",
                self.cfg.shim_path.display(),
                self.cfg.node_name
            ));
        }
        let claim = publisher::claim(&self.client, &c.namespace, &c.name)
            .await
            .map_err(|e| e.to_string())?;
        let gpus = self.gpus.borrow().clone();
        let q = claims::quota_for(
            &claim,
            &c.uid,
            &self.cfg.driver_name,
            &self.cfg.node_name,
            &gpus,
            &self.policy(),
        )
        .map_err(|e| e.to_string())?;
        if q.devices.is_empty() {
            return Ok(Vec::new());
        }
        let r = self
            .store
            .prepare(&q, unix_now())
            .map_err(|e| format!("preparing ResourceClaim {}/{}: {e}", c.namespace, c.name))?;
        let ready = self.wait_for_socket(&q.tenant).await;
        if !ready {
            tracing::warn!(
                tenant = %q.tenant,
                socket = %self.store.tenant_socket(&q.tenant).display(),
                "gpumuxd has not opened the tenant's socket yet; is gpumuxd running?"
            );
        }
        tracing::info!(
            claim = %format!("{}/{}", c.namespace, c.name),
            uid = %c.uid,
            tenant = %q.tenant,
            pod = %q.owner.pod.as_deref().unwrap_or("-"),
            memory_limit = q.memory_limit,
            weight = q.weight,
            priority = %q.priority,
            gpus = ?q.gpus,
            ready,
            "prepared"
        );
        Ok(devices_of(&r))
    }

    /// Waits (up to `--socket-wait`) for gpumuxd to pick the new quota file up, so the
    /// container's first CUDA call finds its socket. A container started without it gets a
    /// clear refusal from the shim, never unlimited GPU use.
    async fn wait_for_socket(&self, tenant: &str) -> bool {
        let socket = self.store.tenant_socket(tenant);
        gpumux_k8s::kubelet::wait_for_socket(&socket, self.cfg.socket_wait).await
    }

    async fn prepare_all(&self, claims: Vec<v1::Claim>) -> v1::NodePrepareResourcesResponse {
        let mut out = HashMap::new();
        for c in claims {
            let resp = match self.prepare(&c).await {
                Ok(devices) => v1::NodePrepareResourceResponse {
                    devices,
                    error: String::new(),
                },
                Err(error) => {
                    tracing::error!(claim = %format!("{}/{}", c.namespace, c.name), uid = %c.uid, "prepare failed: {error}");
                    v1::NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    }
                }
            };
            out.insert(c.uid, resp);
        }
        v1::NodePrepareResourcesResponse { claims: out }
    }

    fn unprepare_all(&self, claims: Vec<v1::Claim>) -> v1::NodeUnprepareResourcesResponse {
        let mut out = HashMap::new();
        for c in claims {
            let error = match self.store.unprepare(&c.uid, unix_now()) {
                Ok(Some(tenant)) => {
                    tracing::info!(claim = %format!("{}/{}", c.namespace, c.name), uid = %c.uid, tenant = %tenant, "unprepared: tenant removed");
                    String::new()
                }
                Ok(None) => String::new(),
                Err(e) => {
                    tracing::error!(claim = %format!("{}/{}", c.namespace, c.name), uid = %c.uid, "unprepare failed: {e}");
                    e.to_string()
                }
            };
            out.insert(c.uid, v1::NodeUnprepareResourceResponse { error });
        }
        v1::NodeUnprepareResourcesResponse { claims: out }
    }
}

/// The devices the kubelet gets for a prepared claim: each allocated device with the
/// tenant's CDI device.
fn devices_of(r: &ClaimRecord) -> Vec<v1::Device> {
    r.quota
        .devices
        .iter()
        .map(|d| v1::Device {
            request_names: vec![d.request.clone()],
            pool_name: d.pool.clone(),
            device_name: d.device.clone(),
            cdi_device_ids: r.cdi_devices.clone(),
            share_id: d.share_id.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for Driver {
    async fn node_prepare_resources(
        &self,
        request: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        Ok(Response::new(
            self.prepare_all(request.into_inner().claims).await,
        ))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        Ok(Response::new(
            self.unprepare_all(request.into_inner().claims),
        ))
    }
}

fn from_beta(claims: Vec<v1beta1::Claim>) -> Vec<v1::Claim> {
    claims
        .into_iter()
        .map(|c| v1::Claim {
            namespace: c.namespace,
            uid: c.uid,
            name: c.name,
        })
        .collect()
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for Driver {
    async fn node_prepare_resources(
        &self,
        request: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let r = self
            .prepare_all(from_beta(request.into_inner().claims))
            .await;
        let claims = r
            .claims
            .into_iter()
            .map(|(uid, c)| {
                let devices = c
                    .devices
                    .into_iter()
                    .map(|d| v1beta1::Device {
                        request_names: d.request_names,
                        pool_name: d.pool_name,
                        device_name: d.device_name,
                        cdi_device_ids: d.cdi_device_ids,
                    })
                    .collect();
                (
                    uid,
                    v1beta1::NodePrepareResourceResponse {
                        devices,
                        error: c.error,
                    },
                )
            })
            .collect();
        Ok(Response::new(v1beta1::NodePrepareResourcesResponse {
            claims,
        }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let r = self.unprepare_all(from_beta(request.into_inner().claims));
        let claims = r
            .claims
            .into_iter()
            .map(|(uid, c)| {
                (
                    uid,
                    v1beta1::NodeUnprepareResourceResponse { error: c.error },
                )
            })
            .collect();
        Ok(Response::new(v1beta1::NodeUnprepareResourcesResponse {
            claims,
        }))
    }
}

/// Both versions of the `DRAPlugin` service on one socket (the kubelet picks one at
/// registration), dispatched by the gRPC path's service name: what tonic's router does,
/// without its axum dependency.
#[derive(Clone)]
pub struct DraServices {
    v1: v1::dra_plugin_server::DraPluginServer<Driver>,
    v1beta1: v1beta1::dra_plugin_server::DraPluginServer<Driver>,
}

impl DraServices {
    pub fn new(driver: Driver) -> DraServices {
        DraServices {
            v1: v1::dra_plugin_server::DraPluginServer::new(driver.clone()),
            v1beta1: v1beta1::dra_plugin_server::DraPluginServer::new(driver),
        }
    }
}

type Body = tonic::body::Body;
type BoxResponse = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<http::Response<Body>, std::convert::Infallible>>
            + Send,
    >,
>;

impl tonic::codegen::Service<http::Request<Body>> for DraServices {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxResponse;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both generated servers are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        use tonic::server::NamedService;
        let beta = format!(
            "/{}/",
            <v1beta1::dra_plugin_server::DraPluginServer<Driver> as NamedService>::NAME
        );
        if req.uri().path().starts_with(&beta) {
            let mut s = self.v1beta1.clone();
            Box::pin(async move { s.call(req).await })
        } else {
            // v1, or unknown (v1 answers `unimplemented`).
            let mut s = self.v1.clone();
            Box::pin(async move { s.call(req).await })
        }
    }
}

/// The `Registration` service on the registration socket: tells the kubelet who the driver is
/// and where its DRA service listens, and counts the kubelet's acceptances (each one is a
/// kubelet that may have wiped the node's slices at start, so the publisher checks them).
#[derive(Clone)]
pub struct Registrar {
    info: PluginInfo,
    registered: Arc<watch::Sender<u64>>,
}

impl Registrar {
    pub fn new(cfg: &DriverConfig, registered: Arc<watch::Sender<u64>>) -> Registrar {
        Registrar {
            info: PluginInfo {
                r#type: DRA_PLUGIN_TYPE.to_string(),
                name: cfg.driver_name.clone(),
                endpoint: cfg.dra_socket().display().to_string(),
                // The kubelet takes the first it supports.
                supported_versions: vec![v1::SERVICE.to_string(), v1beta1::SERVICE.to_string()],
            },
            registered,
        }
    }
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let s = request.into_inner();
        if s.plugin_registered {
            tracing::info!(driver = %self.info.name, endpoint = %self.info.endpoint, "registered with the kubelet");
            self.registered.send_modify(|n| *n += 1);
        } else {
            tracing::error!(driver = %self.info.name, "the kubelet refused the registration: {}", s.error);
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
