//! The kubelet's gRPC APIs, generated at build time from the vendored upstream protos
//! (`proto/`): the device plugin API `v1beta1` and the pod resources API `v1`.

#![allow(missing_docs, clippy::all)]

/// Device plugin API (`k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1`).
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");

    /// The API version a plugin registers with.
    pub const VERSION: &str = "v1beta1";
    /// `Device.health` of a usable device.
    pub const HEALTHY: &str = "Healthy";
    /// `Device.health` of a device that must not be handed out.
    pub const UNHEALTHY: &str = "Unhealthy";
    /// The kubelet's registration socket, in the device plugin directory.
    pub const KUBELET_SOCKET: &str = "kubelet.sock";
    /// The kubelet's default device plugin directory.
    pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
}

/// Pod resources API (`k8s.io/kubelet/pkg/apis/podresources/v1`).
pub mod v1 {
    tonic::include_proto!("v1");

    /// The kubelet's default pod resources socket.
    pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
}
