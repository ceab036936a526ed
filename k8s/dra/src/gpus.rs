//! The node's GPUs as the driver publishes them: which are healthy now (published in the
//! ResourceSlice), every GPU seen since start (so a claim allocated on a GPU that NVML
//! briefly failed to list can still be prepared or unprepared), and each GPU's device name.

use gpumux_common::nvml::{GpuInfo, NvmlError};
use std::collections::BTreeMap;

/// GPUs by UUID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gpus {
    /// Every GPU seen since start, with what was last learned about it.
    pub known: BTreeMap<String, GpuInfo>,
    /// The UUIDs of the GPUs NVML listed as healthy at the last probe.
    pub healthy: Vec<String>,
}

impl Gpus {
    /// Folds a probe in: listed healthy GPUs (with a memory size) are published; everything
    /// else, and every GPU when the probe failed, is not.
    pub fn merge(&mut self, probe: &Result<Vec<GpuInfo>, NvmlError>) {
        self.healthy.clear();
        let Ok(list) = probe else { return };
        let mut listed: Vec<&GpuInfo> = list.iter().collect();
        listed.sort_by_key(|g| (g.index, g.uuid.clone()));
        for g in listed {
            let entry = self
                .known
                .entry(g.uuid.clone())
                .or_insert_with(|| g.clone());
            let total = if g.total_memory > 0 {
                g.total_memory
            } else {
                entry.total_memory
            };
            *entry = GpuInfo {
                total_memory: total,
                ..g.clone()
            };
            if g.healthy && g.total_memory > 0 {
                self.healthy.push(g.uuid.clone());
            }
        }
    }

    /// The published GPUs, in index order.
    pub fn published(&self) -> Vec<&GpuInfo> {
        self.healthy
            .iter()
            .filter_map(|u| self.known.get(u))
            .collect()
    }

    /// The known GPU with this device name.
    pub fn by_device_name(&self, name: &str) -> Option<&GpuInfo> {
        self.known.values().find(|g| device_name(&g.uuid) == name)
    }
}

/// The device name of a GPU in the ResourceSlice: `gpu-` and its UUID without the `GPU-`
/// prefix, lower case (a DNS label, stable across reboots and index changes).
pub fn device_name(uuid: &str) -> String {
    let id = uuid
        .strip_prefix("GPU-")
        .or_else(|| uuid.strip_prefix("gpu-"))
        .unwrap_or(uuid);
    let mut name: String = format!("gpu-{id}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn gpu(index: u32, healthy: bool) -> GpuInfo {
        GpuInfo {
            index,
            uuid: format!("GPU-{index:08x}-1111-2222-3333-444444444444"),
            name: "NVIDIA H100 80GB HBM3".into(),
            minor: Some(index),
            total_memory: 80 << 30,
            healthy,
            compute_capability: Some((9, 0)),
            driver_version: Some("550.54.15".into()),
        }
    }

    #[test]
    fn device_names_are_dns_labels_from_the_uuid() {
        assert_eq!(
            device_name("GPU-8f0c1a2b-0000-4000-8000-0123456789AB"),
            "gpu-8f0c1a2b-0000-4000-8000-0123456789ab"
        );
        assert_eq!(device_name("weird_UUID!"), "gpu-weird-uuid");
        assert!(device_name(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn only_healthy_gpus_are_published_and_all_are_remembered() {
        let mut g = Gpus::default();
        g.merge(&Ok(vec![gpu(1, true), gpu(0, true)]));
        let idx: Vec<u32> = g.published().iter().map(|g| g.index).collect();
        assert_eq!(idx, [0, 1]);
        g.merge(&Ok(vec![gpu(0, true)]));
        assert_eq!(g.published().len(), 1);
        assert_eq!(g.known.len(), 2);
        let name = device_name(&gpu(1, true).uuid);
        assert_eq!(g.by_device_name(&name).map(|g| g.index), Some(1));
        g.merge(&Err(NvmlError::Load("gone".into())));
        assert!(g.published().is_empty());
        // Memory unreadable: not published, size remembered.
        let mut sick = gpu(0, false);
        sick.total_memory = 0;
        g.merge(&Ok(vec![sick]));
        assert!(g.published().is_empty());
        assert_eq!(g.known[&gpu(0, true).uuid].total_memory, 80 << 30);
    }
}
