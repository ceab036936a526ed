//! The API server side: a client with the node's identity (its service account, or a
//! kubeconfig), the node's ResourceSlice kept in step with the GPUs, and reading the
//! ResourceClaims the kubelet asks to prepare.
//!
//! [`reconcile`] makes what the API server holds match what the driver would publish: it lists
//! the slices of this node and driver (field selector `spec.nodeName`, `spec.driver`),
//! creates the slice when there is none, replaces it (next pool generation, optimistic
//! concurrency by `resourceVersion`) when its devices differ, and deletes extra slices. It is
//! called whenever the GPUs change, after each (re-)registration with the kubelet (a
//! restarting kubelet wipes the node's slices) and every `--resync-interval`.

use crate::slices;
use k8s_openapi::api::resource::v1::{Device, ResourceClaim, ResourceSlice};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use std::path::Path;
use thiserror::Error;

/// The API server cannot be reached or refused a request.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("cannot read the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error(
        "cannot configure the API client ({0}); is the service account token mounted (automountServiceAccountToken)?"
    )]
    Config(String),
    #[error("{what}: {source}")]
    Call {
        what: String,
        #[source]
        source: kube::Error,
    },
}

impl ApiError {
    /// The HTTP status the API server answered, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Call {
                source: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }
}

/// A client: from `kubeconfig` when given, else the usual inference (in-cluster service
/// account, `KUBECONFIG`, `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ApiError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|e| ApiError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ApiError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ApiError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ApiError::Config(e.to_string()))
}

/// What [`reconcile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    Unchanged { name: String, generation: i64 },
    Created { name: String, generation: i64 },
    Updated { name: String, generation: i64 },
}

/// Brings the node's slice in line with `devices` (see the module doc).
pub async fn reconcile(
    client: &Client,
    driver: &str,
    node: &str,
    devices: &[Device],
) -> Result<Reconciled, ApiError> {
    let api: Api<ResourceSlice> = Api::all(client.clone());
    let call = |what: String| move |source| ApiError::Call { what, source };
    let lp = ListParams::default().fields(&format!("spec.nodeName={node},spec.driver={driver}"));
    let list = api
        .list(&lp)
        .await
        .map_err(call("listing this node's ResourceSlices".into()))?;
    let mut mine: Vec<ResourceSlice> = list
        .items
        .into_iter()
        .filter(|s| s.spec.driver == driver && s.spec.node_name.as_deref() == Some(node))
        .collect();
    // Oldest first: the one kept.
    mine.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            &a.metadata.name,
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &b.metadata.name,
            ))
    });
    let top = mine
        .iter()
        .map(|s| s.spec.pool.generation)
        .max()
        .unwrap_or(0);
    let want = slices::normalized(devices);
    let outcome = match mine.first() {
        None => {
            let created = api
                .create(
                    &PostParams::default(),
                    &slices::slice(driver, node, devices.to_vec(), top + 1),
                )
                .await
                .map_err(call("creating this node's ResourceSlice".into()))?;
            Reconciled::Created {
                name: created.metadata.name.unwrap_or_default(),
                generation: top + 1,
            }
        }
        Some(current) => {
            let name = current.metadata.name.clone().unwrap_or_default();
            let same = mine.len() == 1
                && current.spec.pool.name == node
                && current.spec.pool.resource_slice_count == 1
                && current.spec.pool.generation == top
                && slices::normalized(current.spec.devices.as_deref().unwrap_or_default()) == want;
            if same {
                Reconciled::Unchanged {
                    name,
                    generation: top,
                }
            } else {
                let mut next = slices::slice(driver, node, devices.to_vec(), top + 1);
                next.metadata = current.metadata.clone();
                api.replace(&name, &PostParams::default(), &next)
                    .await
                    .map_err(call(format!("updating ResourceSlice {name}")))?;
                Reconciled::Updated {
                    name,
                    generation: top + 1,
                }
            }
        }
    };
    for extra in mine.iter().skip(1) {
        let name = extra.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(slice = %name, "deleted an extra ResourceSlice of this node"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(call(format!("deleting ResourceSlice {name}"))(e)),
        }
    }
    Ok(outcome)
}

/// Reads a ResourceClaim.
pub async fn claim(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<ResourceClaim, ApiError> {
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), namespace);
    api.get(name).await.map_err(|source| ApiError::Call {
        what: format!("reading ResourceClaim {namespace}/{name}"),
        source,
    })
}
