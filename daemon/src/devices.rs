//! The node's GPUs as the daemon knows them (from NVML), with identities in the form the
//! shared segments carry.

use gpumux_common::nvml::{DeviceSource, Nvml, NvmlError};
use gpumux_common::shm::{MAX_DEVICES, parse_gpu_uuid};
use serde::Serialize;

/// One GPU of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub index: u32,
    pub uuid: String,
    #[serde(skip)]
    pub uuid_bytes: [u8; 16],
    pub name: String,
    pub total_bytes: u64,
}

/// Discovers the node's GPUs through NVML.
pub fn discover() -> Result<Vec<Device>, NvmlError> {
    let mut out = Vec::new();
    for d in Nvml.probe()? {
        if !d.healthy {
            tracing::warn!(index = d.index, uuid = %d.uuid, "NVML cannot read this GPU's memory; not sharing it");
            continue;
        }
        if out.len() == MAX_DEVICES {
            tracing::warn!(
                index = d.index,
                "more than {MAX_DEVICES} GPUs; ignoring the rest"
            );
            break;
        }
        let Some(uuid_bytes) = parse_gpu_uuid(&d.uuid) else {
            tracing::warn!(index = d.index, uuid = %d.uuid, "GPU reports an unparseable UUID; skipping it");
            continue;
        };
        out.push(Device {
            index: d.index,
            uuid: d.uuid,
            uuid_bytes,
            name: d.name,
            total_bytes: d.total_memory,
        });
    }
    Ok(out)
}
