pub mod api {
    pub mod v1beta1 { tonic::include_proto!("v1beta1"); }
    pub mod v1 { tonic::include_proto!("v1"); }
}
