//! GPU shares: how the node's GPUs are advertised to the kubelet and what an allocation of
//! shares is worth.
//!
//! Each GPU is advertised as `N` devices with IDs `<gpu-uuid>::<share-index>` (`N` =
//! `--shares-per-gpu`). A container that gets `k` shares of one GPU becomes a gpumux tenant
//! limited to that GPU with `memory_limit = k/N` of its memory and `weight = k`. The kubelet may
//! spread an allocation over several GPUs (when no single GPU has `k` free shares; the plugin's
//! preferred allocation packs shares onto one GPU otherwise): the tenant then may use each of
//! them and, since a quota file has one limit for all its devices, is held to the smallest
//! per-GPU part (memory and weight), so it never gets more of any GPU than it was given.
//!
//! The tenant's name is derived from the allocated IDs alone (the kubelet's `Allocate` carries
//! no pod identity): `k8s-` + 16 hex digits of a hash of the sorted IDs. The kubelet never hands
//! the same share to two live pods, so live tenants have distinct ID sets; the pod resources
//! API lists the IDs each container holds, which tells which tenants are still in use.

use crate::api::v1beta1::{self, Device};
use gpumux_common::nvml::{GpuInfo, NvmlError};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Separator between GPU UUID and share index in a device ID.
pub const SHARE_SEPARATOR: &str = "::";

/// A device ID or an allocation the plugin cannot honour.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShareError {
    #[error("device ID `{0}` is not `<gpu-uuid>::<share-index>`")]
    BadId(String),
    #[error("device ID `{0}` names a GPU this node does not have")]
    UnknownGpu(String),
    #[error("device ID `{0}` is listed twice")]
    Duplicate(String),
    #[error("an allocation needs at least one device ID")]
    Empty,
    #[error("GPU {0} reports no memory size; it cannot be shared")]
    NoMemory(String),
}

/// One share: a GPU UUID and an index below the shares per GPU.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShareId {
    pub uuid: String,
    pub index: u32,
}

impl ShareId {
    /// The device ID advertised to the kubelet.
    pub fn to_device_id(&self) -> String {
        format!("{}{SHARE_SEPARATOR}{}", self.uuid, self.index)
    }

    /// Parses `<gpu-uuid>::<share-index>`.
    pub fn parse(id: &str) -> Result<ShareId, ShareError> {
        let bad = || ShareError::BadId(id.to_string());
        let (uuid, index) = id.rsplit_once(SHARE_SEPARATOR).ok_or_else(bad)?;
        if uuid.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let index = index.parse().map_err(|_| bad())?;
        Ok(ShareId {
            uuid: uuid.to_string(),
            index,
        })
    }
}

/// A GPU the plugin has seen, with its current health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub minor: Option<u32>,
    pub total_memory: u64,
    pub healthy: bool,
}

/// Every GPU seen since start, by UUID. GPUs are never forgotten: one NVML stops listing
/// becomes unhealthy (its shares stay advertised as such, as the kubelet expects).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub gpus: BTreeMap<String, Gpu>,
}

impl Inventory {
    /// Folds a probe into the inventory: listed GPUs take the probe's health (and, when it is
    /// known, memory size and minor number); known GPUs the probe does not list, or every GPU
    /// when the probe failed, become unhealthy.
    pub fn merge(&mut self, probe: &Result<Vec<GpuInfo>, NvmlError>) {
        let seen: BTreeMap<&str, &GpuInfo> = match probe {
            Ok(list) => list.iter().map(|g| (g.uuid.as_str(), g)).collect(),
            Err(_) => BTreeMap::new(),
        };
        for gpu in self.gpus.values_mut() {
            gpu.healthy = seen.get(gpu.uuid.as_str()).is_some_and(|g| g.healthy);
        }
        for (uuid, info) in seen {
            let gpu = self.gpus.entry(uuid.to_string()).or_insert_with(|| Gpu {
                index: info.index,
                uuid: uuid.to_string(),
                minor: info.minor,
                total_memory: info.total_memory,
                healthy: info.healthy,
            });
            gpu.index = info.index;
            if info.minor.is_some() {
                gpu.minor = info.minor;
            }
            if info.total_memory > 0 {
                gpu.total_memory = info.total_memory;
            }
            // Without a memory size a GPU cannot be divided into shares.
            gpu.healthy = info.healthy && gpu.total_memory > 0;
        }
    }

    /// GPUs in NVML index order.
    pub fn ordered(&self) -> Vec<&Gpu> {
        let mut v: Vec<&Gpu> = self.gpus.values().collect();
        v.sort_by(|a, b| (a.index, &a.uuid).cmp(&(b.index, &b.uuid)));
        v
    }

    /// The devices to advertise: `shares` per GPU, with the GPU's health.
    pub fn devices(&self, shares: u32) -> Vec<Device> {
        self.ordered()
            .into_iter()
            .flat_map(|gpu| {
                (0..shares).map(move |index| Device {
                    id: ShareId {
                        uuid: gpu.uuid.clone(),
                        index,
                    }
                    .to_device_id(),
                    health: if gpu.healthy {
                        v1beta1::HEALTHY
                    } else {
                        v1beta1::UNHEALTHY
                    }
                    .to_string(),
                    topology: None,
                })
            })
            .collect()
    }
}

/// What an allocation of shares is worth, ready to become a quota file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareQuota {
    /// The tenant's name (from the IDs).
    pub tenant: String,
    /// The allocated device IDs, sorted.
    pub device_ids: Vec<String>,
    /// The GPUs involved, in index order.
    pub gpus: Vec<Gpu>,
    /// Bytes per device.
    pub memory_limit: u64,
    /// Relative compute share (1..=1000).
    pub weight: u32,
}

/// Parses the IDs of one container's allocation and computes its quota.
pub fn quota_for(
    ids: &[String],
    inventory: &Inventory,
    shares_per_gpu: u32,
) -> Result<ShareQuota, ShareError> {
    if ids.is_empty() {
        return Err(ShareError::Empty);
    }
    let mut per_gpu: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        let share = ShareId::parse(id)?;
        if !seen.insert(id.as_str()) {
            return Err(ShareError::Duplicate(id.clone()));
        }
        let (uuid, _) = inventory
            .gpus
            .get_key_value(share.uuid.as_str())
            .ok_or_else(|| ShareError::UnknownGpu(id.clone()))?;
        *per_gpu.entry(uuid.as_str()).or_default() += 1;
    }
    let n = u128::from(shares_per_gpu.max(1));
    let mut memory_limit = u64::MAX;
    let mut weight = u64::MAX;
    let mut gpus = Vec::new();
    for (uuid, &k) in &per_gpu {
        let gpu = &inventory.gpus[*uuid];
        if gpu.total_memory == 0 {
            return Err(ShareError::NoMemory(gpu.uuid.clone()));
        }
        // Never above the GPU (IDs beyond N survive a lowered --shares-per-gpu).
        let part = (u128::from(gpu.total_memory) * u128::from(k) / n)
            .min(u128::from(gpu.total_memory)) as u64;
        memory_limit = memory_limit.min(part);
        weight = weight.min(k);
        gpus.push(gpu.clone());
    }
    gpus.sort_by_key(|g| g.index);
    let mut device_ids: Vec<String> = ids.to_vec();
    device_ids.sort();
    Ok(ShareQuota {
        tenant: tenant_name(&device_ids),
        device_ids,
        gpus,
        memory_limit: memory_limit.max(1),
        weight: weight.clamp(1, u64::from(gpumux_common::config::MAX_WEIGHT)) as u32,
    })
}

/// `k8s-<16 hex digits>`: FNV-1a (64-bit) over the sorted IDs, each followed by a newline.
/// Stable across versions and restarts: it is how a restarted plugin finds its tenants again.
pub fn tenant_name(device_ids: &[String]) -> String {
    let mut sorted: Vec<&str> = device_ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in sorted {
        for b in id.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("k8s-{h:016x}")
}

/// A preferred allocation of `size` IDs out of `available`, including `must_include`: shares
/// packed onto as few GPUs as possible (GPUs already in `must_include` first, then the GPU
/// with the fewest free shares that still fits the rest, else the one with the most), lowest
/// share indexes first. Unparseable IDs are ignored; fewer than `size` are returned only when
/// `available` is too small.
pub fn preferred(available: &[String], must_include: &[String], size: usize) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    for id in must_include {
        if !chosen.contains(id) {
            chosen.push(id.clone());
        }
    }
    let mut free: BTreeMap<String, Vec<ShareId>> = BTreeMap::new();
    for id in available {
        if chosen.contains(id) {
            continue;
        }
        if let Ok(s) = ShareId::parse(id) {
            free.entry(s.uuid.clone()).or_default().push(s);
        }
    }
    for shares in free.values_mut() {
        shares.sort_by_key(|s| s.index);
        shares.dedup();
    }
    fn take_from(
        free: &mut BTreeMap<String, Vec<ShareId>>,
        uuid: &str,
        chosen: &mut Vec<String>,
        want: usize,
    ) {
        if let Some(shares) = free.get_mut(uuid) {
            let n = want.min(shares.len());
            chosen.extend(shares.drain(..n).map(|s| s.to_device_id()));
        }
    }
    let used: Vec<String> = chosen
        .iter()
        .filter_map(|id| ShareId::parse(id).ok().map(|s| s.uuid))
        .collect();
    for uuid in used {
        let want = size.saturating_sub(chosen.len());
        take_from(&mut free, &uuid, &mut chosen, want);
    }
    while chosen.len() < size {
        let want = size - chosen.len();
        let candidates: Vec<(usize, String)> = free
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(u, s)| (s.len(), u.clone()))
            .collect();
        let best_fit = candidates
            .iter()
            .filter(|(n, _)| *n >= want)
            .min_by(|a, b| a.cmp(b))
            .or_else(|| {
                candidates
                    .iter()
                    .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            });
        let Some((_, uuid)) = best_fit.cloned() else {
            break;
        };
        take_from(&mut free, &uuid, &mut chosen, want);
    }
    chosen.truncate(size.max(must_include.len()));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000000";
    const B: &str = "GPU-bbbbbbbb-0000-0000-0000-000000000000";

    fn info(index: u32, uuid: &str, total: u64, healthy: bool) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.into(),
            name: "GPU".into(),
            minor: Some(index),
            total_memory: total,
            healthy,
            compute_capability: Some((9, 0)),
            driver_version: None,
        }
    }

    fn inv() -> Inventory {
        let mut i = Inventory::default();
        i.merge(&Ok(vec![
            info(0, A, 16 << 30, true),
            info(1, B, 8 << 30, true),
        ]));
        i
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn share_ids_round_trip() {
        let s = ShareId::parse(&format!("{A}::7")).unwrap();
        assert_eq!((s.uuid.as_str(), s.index), (A, 7));
        assert_eq!(s.to_device_id(), format!("{A}::7"));
        assert!(s.to_device_id().len() <= 63, "kubelet's device ID limit");
        for bad in [
            "",
            "GPU-x",
            "GPU-x::",
            "::1",
            "GPU-x::-1",
            "GPU-x::1a",
            "GPU-x:1",
        ] {
            assert!(ShareId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn devices_are_n_shares_per_gpu_with_health() {
        let mut i = inv();
        let d = i.devices(4);
        assert_eq!(d.len(), 8);
        assert_eq!(d[0].id, format!("{A}::0"));
        assert_eq!(d[4].id, format!("{B}::0"));
        assert!(d.iter().all(|d| d.health == v1beta1::HEALTHY));

        // B disappears from NVML: its shares turn unhealthy, A's stay healthy.
        i.merge(&Ok(vec![info(0, A, 16 << 30, true)]));
        let d = i.devices(4);
        assert_eq!(d.len(), 8, "a vanished GPU stays advertised");
        assert!(d[..4].iter().all(|d| d.health == v1beta1::HEALTHY));
        assert!(d[4..].iter().all(|d| d.health == v1beta1::UNHEALTHY));

        // NVML fails altogether: everything is unhealthy.
        i.merge(&Err(NvmlError::Load("gone".into())));
        assert!(i.devices(4).iter().all(|d| d.health == v1beta1::UNHEALTHY));

        // Both come back (memory unreadable on B this time: unhealthy, size remembered).
        i.merge(&Ok(vec![info(0, A, 16 << 30, true), info(1, B, 0, false)]));
        let d = i.devices(4);
        assert!(d[..4].iter().all(|d| d.health == v1beta1::HEALTHY));
        assert!(d[4..].iter().all(|d| d.health == v1beta1::UNHEALTHY));
        assert_eq!(i.gpus[B].total_memory, 8 << 30);
        i.merge(&Ok(vec![info(0, A, 16 << 30, true), info(1, B, 0, true)]));
        assert!(i.gpus[B].healthy);
    }

    #[test]
    fn quota_is_k_over_n_of_the_gpu() {
        let q = quota_for(&ids(&[&format!("{A}::3"), &format!("{A}::1")]), &inv(), 4).unwrap();
        assert_eq!(q.memory_limit, 8 << 30);
        assert_eq!(q.weight, 2);
        assert_eq!(q.gpus.len(), 1);
        assert_eq!(q.gpus[0].uuid, A);
        assert_eq!(q.device_ids, ids(&[&format!("{A}::1"), &format!("{A}::3")]));
        assert_eq!(
            q.tenant,
            tenant_name(&ids(&[&format!("{A}::1"), &format!("{A}::3")]))
        );

        // Rounds down, never above the device.
        let q = quota_for(&ids(&[&format!("{A}::0")]), &inv(), 3).unwrap();
        assert_eq!(q.memory_limit, (16u64 << 30) / 3);
    }

    #[test]
    fn spread_allocations_get_the_smallest_part() {
        // 2 shares of A (8 GiB of 16) and 1 of B (2 GiB of 8).
        let q = quota_for(
            &ids(&[&format!("{A}::0"), &format!("{A}::1"), &format!("{B}::2")]),
            &inv(),
            4,
        )
        .unwrap();
        assert_eq!(q.memory_limit, 2 << 30);
        assert_eq!(q.weight, 1);
        assert_eq!(
            q.gpus.iter().map(|g| g.uuid.as_str()).collect::<Vec<_>>(),
            [A, B]
        );
    }

    #[test]
    fn bad_allocations_are_refused() {
        let i = inv();
        assert_eq!(quota_for(&[], &i, 4), Err(ShareError::Empty));
        assert!(matches!(
            quota_for(&ids(&["GPU-zzz::0"]), &i, 4),
            Err(ShareError::UnknownGpu(_))
        ));
        assert!(matches!(
            quota_for(&ids(&["nonsense"]), &i, 4),
            Err(ShareError::BadId(_))
        ));
        let a0 = format!("{A}::0");
        assert!(matches!(
            quota_for(&ids(&[&a0, &a0]), &i, 4),
            Err(ShareError::Duplicate(_))
        ));
    }

    #[test]
    fn weight_is_capped() {
        let v: Vec<String> = (0..1500).map(|i| format!("{A}::{i}")).collect();
        let q = quota_for(&v, &inv(), 2000).unwrap();
        assert_eq!(q.weight, 1000);
    }

    #[test]
    fn tenant_names_are_stable_valid_and_order_free() {
        let a = tenant_name(&ids(&["x::1", "x::0"]));
        assert_eq!(a, tenant_name(&ids(&["x::0", "x::1"])));
        assert_ne!(a, tenant_name(&ids(&["x::0"])));
        assert_ne!(a, tenant_name(&ids(&["x::0x::1"])));
        gpumux_common::names::validate_tenant_name(&a).unwrap();
        // Pinned: a change here would orphan every tenant of a running node on upgrade.
        assert_eq!(tenant_name(&ids(&["GPU-a::0"])), "k8s-1c2dd8840f8802c1");
    }

    #[test]
    fn preferred_packs_onto_one_gpu() {
        // A has 3 free, B has 2 free: 2 fit best on B.
        let avail = ids(&[
            &format!("{A}::1"),
            &format!("{B}::3"),
            &format!("{A}::0"),
            &format!("{B}::1"),
            &format!("{A}::2"),
        ]);
        assert_eq!(
            preferred(&avail, &[], 2),
            ids(&[&format!("{B}::1"), &format!("{B}::3")])
        );
        // 3 fit only on A.
        assert_eq!(
            preferred(&avail, &[], 3),
            ids(&[&format!("{A}::0"), &format!("{A}::1"), &format!("{A}::2")])
        );
        // A must-include on B pulls the rest onto B, then spills to A.
        let must = ids(&[&format!("{B}::3")]);
        assert_eq!(
            preferred(&avail, &must, 3),
            ids(&[&format!("{B}::3"), &format!("{B}::1"), &format!("{A}::0")])
        );
        // Too few available: all of them.
        assert_eq!(preferred(&avail, &[], 9).len(), 5);
    }
}
