//! The kubelet's gRPC APIs for DRA drivers, generated at build time from the vendored upstream
//! protos (`proto/`): the DRA plugin service `v1` and `v1beta1`, and plugin registration.

#![allow(missing_docs, clippy::all)]

/// DRA plugin API `v1` (`k8s.io/kubelet/pkg/apis/dra/v1`).
pub mod v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");

    /// How a plugin lists this service in `PluginInfo.supported_versions`.
    pub const SERVICE: &str = "v1.DRAPlugin";
}

/// DRA plugin API `v1beta1` (`k8s.io/kubelet/pkg/apis/dra/v1beta1`), still served by kubelets
/// of Kubernetes 1.32 to 1.35.
pub mod v1beta1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");

    /// How a plugin lists this service in `PluginInfo.supported_versions`.
    pub const SERVICE: &str = "v1beta1.DRAPlugin";
}

/// Plugin registration (`k8s.io/kubelet/pkg/apis/pluginregistration/v1`; upstream's proto
/// package is `pluginregistration`).
pub mod registration {
    tonic::include_proto!("pluginregistration");

    /// `PluginInfo.type` of a DRA driver.
    pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";
    /// The kubelet's default plugin registration directory.
    pub const DEFAULT_REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
}
