//! Talking to the kubelet over its Unix sockets: registering the plugin, asking the pod
//! resources API which containers hold which shares, and serving a gRPC service on a socket.

use crate::api::v1::ListPodResourcesRequest;
use crate::api::v1::pod_resources_lister_client::PodResourcesListerClient;
use crate::api::v1beta1::registration_client::RegistrationClient;
use crate::api::v1beta1::{self, RegisterRequest};
use crate::config::PluginConfig;
use gpumux_common::config::TenantOwner;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::{Service, http};
use tonic::transport::{Channel, Endpoint};

/// Deadline of one call to the kubelet.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest pod resources answer accepted (the kubelet's own client allows 16 MiB).
pub const MAX_POD_RESOURCES_MESSAGE: usize = 16 << 20;

/// A call to the kubelet failed.
#[derive(Debug, Error)]
pub enum KubeletError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: tonic::transport::Error,
    },
    #[error("{call} on {path}: {status}")]
    Call {
        call: &'static str,
        path: String,
        status: Box<tonic::Status>,
    },
}

/// A gRPC channel over the Unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, KubeletError> {
    let shown = path.display().to_string();
    let endpoint = Endpoint::from_shared(format!("unix://{shown}"))
        .map_err(|source| KubeletError::Connect {
            path: shown.clone(),
            source,
        })?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    endpoint
        .connect()
        .await
        .map_err(|source| KubeletError::Connect {
            path: shown,
            source,
        })
}

/// Registers the plugin (its socket name, resource and options) with the kubelet.
pub async fn register(cfg: &PluginConfig) -> Result<(), KubeletError> {
    let socket = cfg.kubelet_socket();
    let mut client = RegistrationClient::new(connect(&socket).await?);
    client
        .register(RegisterRequest {
            version: v1beta1::VERSION.to_string(),
            endpoint: cfg.endpoint.clone(),
            resource_name: cfg.resource_name.clone(),
            options: Some(crate::plugin::options()),
        })
        .await
        .map_err(|status| KubeletError::Call {
            call: "Register",
            path: socket.display().to_string(),
            status: Box::new(status),
        })?;
    Ok(())
}

/// The device IDs of `resource_name` that containers hold now, by the pod resources API
/// (`List`).
pub async fn held_device_ids(
    socket: &Path,
    resource_name: &str,
) -> Result<HashSet<String>, KubeletError> {
    Ok(holders(socket, resource_name).await?.into_keys().collect())
}

/// The device IDs of `resource_name` that containers hold now, each with the container that
/// holds it (namespace, pod, container), by the pod resources API (`List`).
pub async fn holders(
    socket: &Path,
    resource_name: &str,
) -> Result<HashMap<String, TenantOwner>, KubeletError> {
    let mut client = PodResourcesListerClient::new(connect(socket).await?)
        .max_decoding_message_size(MAX_POD_RESOURCES_MESSAGE);
    let list = client
        .list(ListPodResourcesRequest {})
        .await
        .map_err(|status| KubeletError::Call {
            call: "List",
            path: socket.display().to_string(),
            status: Box::new(status),
        })?
        .into_inner();
    let mut out = HashMap::new();
    for pod in list.pod_resources {
        for container in pod.containers {
            // Names the kubelet gives are valid object names; anything else is left unnamed
            // rather than written into a quota file the daemon would reject.
            let owner = TenantOwner {
                namespace: Some(pod.namespace.clone()),
                pod: Some(pod.name.clone()),
                container: Some(container.name.clone()),
                claim: None,
            };
            let owner = owner.validate().map(|()| owner).unwrap_or_default();
            for d in container.devices {
                if d.resource_name == resource_name {
                    for id in d.device_ids {
                        out.insert(id, owner.clone());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Waits up to `timeout` for gpumuxd to open a new tenant's socket at `socket` (it does so
/// once it has read the tenant's quota file); whether it appeared.
pub async fn wait_for_socket(socket: &Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if socket.exists() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves `service` on `listener` until `stop` turns true (then waits for connections to end:
/// services must end their streams on `stop` too).
pub async fn serve<S>(
    listener: UnixListener,
    service: S,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(service, UnixListenerStream::new(listener), async move {
            stop.wait_for(|s| *s).await.ok();
        })
        .await
}
