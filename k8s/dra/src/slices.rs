//! What the driver publishes (pure): one ResourceSlice per node, its pool named after the
//! node, one device per healthy GPU that several claims may share by consuming its capacity.
//!
//! Each device has
//! - attributes `uuid`, `productName`, `index`, `computeCapability` and `driverVersion`
//!   (semantic versions, so CEL can compare them: `device.attributes["gpu.gpumux.dev"]
//!   .computeCapability.isGreaterThan(semver("8.0.0"))`), those NVML reports;
//! - capacity `memory` (bytes): a request is rounded up to a multiple of the granularity, and
//!   a request that does not ask for memory gets the whole GPU (rounded down to the
//!   granularity), so nothing else fits beside it;
//! - capacity `shares` (`--shares-per-gpu`): a claim's weight when the GPU is contended is the
//!   number of shares it consumes (default 1).

use crate::gpus::{Gpus, device_name};
use crate::quantity;
use gpumux_common::nvml::GpuInfo;
use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Device, DeviceAttribute, DeviceCapacity,
    ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The capacity names (in the driver's domain).
pub const MEMORY: &str = "memory";
/// See [`MEMORY`].
pub const SHARES: &str = "shares";

/// How GPUs are divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The `shares` capacity of each GPU.
    pub shares_per_gpu: u32,
    /// Memory requests are rounded up to multiples of this.
    pub memory_granularity: u64,
}

impl Policy {
    /// The most memory a claim can get on a GPU of `total` bytes: `total` rounded down to the
    /// granularity. `None` when the GPU is too small to divide (under two granules).
    pub fn max_memory(&self, total: u64) -> Option<u64> {
        let g = self.memory_granularity.max(1);
        (total >= 2 * g).then(|| total / g * g)
    }
}

/// A semantic version from an NVIDIA version string: `550.54.15` stays, `535.104.05` becomes
/// `535.104.5` (no leading zeros in semver), `9.0` becomes `9.0.0`.
pub fn semver(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.trim().split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut nums: Vec<u64> = parts
        .iter()
        .map(|p| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    nums.resize(3, 0);
    Some(format!("{}.{}.{}", nums[0], nums[1], nums[2]))
}

fn string(s: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.chars().take(64).collect()),
        ..DeviceAttribute::default()
    }
}

/// The published device for one GPU (`None` if it is too small to divide).
pub fn device(gpu: &GpuInfo, policy: &Policy) -> Option<Device> {
    let max_memory = policy.max_memory(gpu.total_memory)?;
    let mut attributes = BTreeMap::from([
        ("uuid".to_string(), string(&gpu.uuid)),
        (
            "index".to_string(),
            DeviceAttribute {
                int: Some(i64::from(gpu.index)),
                ..DeviceAttribute::default()
            },
        ),
    ]);
    if !gpu.name.is_empty() {
        attributes.insert("productName".into(), string(&gpu.name));
    }
    if let Some((major, minor)) = gpu.compute_capability {
        attributes.insert(
            "computeCapability".into(),
            DeviceAttribute {
                version: Some(format!("{major}.{minor}.0")),
                ..DeviceAttribute::default()
            },
        );
    }
    if let Some(v) = gpu.driver_version.as_deref().and_then(semver) {
        attributes.insert(
            "driverVersion".into(),
            DeviceAttribute {
                version: Some(v),
                ..DeviceAttribute::default()
            },
        );
    }
    let granule = Quantity(quantity::format_binary(policy.memory_granularity));
    let capacity = BTreeMap::from([
        (
            MEMORY.to_string(),
            DeviceCapacity {
                value: Quantity(quantity::format_binary(gpu.total_memory)),
                request_policy: Some(CapacityRequestPolicy {
                    default: Some(Quantity(quantity::format_binary(max_memory))),
                    valid_range: Some(CapacityRequestPolicyRange {
                        min: granule.clone(),
                        max: Some(Quantity(quantity::format_binary(max_memory))),
                        step: Some(granule),
                    }),
                    valid_values: None,
                }),
            },
        ),
        (
            SHARES.to_string(),
            DeviceCapacity {
                value: Quantity(policy.shares_per_gpu.to_string()),
                request_policy: Some(CapacityRequestPolicy {
                    default: Some(Quantity("1".into())),
                    valid_range: Some(CapacityRequestPolicyRange {
                        min: Quantity("1".into()),
                        max: Some(Quantity(policy.shares_per_gpu.to_string())),
                        step: Some(Quantity("1".into())),
                    }),
                    valid_values: None,
                }),
            },
        ),
    ]);
    Some(Device {
        name: device_name(&gpu.uuid),
        allow_multiple_allocations: Some(true),
        attributes: Some(attributes),
        capacity: Some(capacity),
        ..Device::default()
    })
}

/// The devices to publish: one per healthy GPU that can be divided, in index order.
pub fn devices(gpus: &Gpus, policy: &Policy) -> Vec<Device> {
    gpus.published()
        .into_iter()
        .filter_map(|g| device(g, policy))
        .collect()
}

/// The node's slice for `devices`, pool generation `generation`.
pub fn slice(driver: &str, node: &str, devices: Vec<Device>, generation: i64) -> ResourceSlice {
    ResourceSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{node}-{driver}-")),
            ..ObjectMeta::default()
        },
        spec: ResourceSliceSpec {
            driver: driver.to_string(),
            node_name: Some(node.to_string()),
            pool: ResourcePool {
                name: node.to_string(),
                generation,
                resource_slice_count: 1,
            },
            devices: Some(devices),
            ..ResourceSliceSpec::default()
        },
    }
}

/// `devices` with every quantity in one form, so that what the API server hands back (it
/// rewrites quantities canonically) compares equal to what the driver would write.
pub fn normalized(devices: &[Device]) -> Vec<Device> {
    let q = |q: &Quantity| {
        Quantity(quantity::parse(&q.0).map_or_else(|_| q.0.clone(), |n| n.to_string()))
    };
    let mut out: Vec<Device> = devices
        .iter()
        .map(|d| {
            let mut d = d.clone();
            for cap in d.capacity.iter_mut().flat_map(|c| c.values_mut()) {
                cap.value = q(&cap.value);
                if let Some(p) = cap.request_policy.as_mut() {
                    p.default = p.default.as_ref().map(q);
                    if let Some(r) = p.valid_range.as_mut() {
                        r.min = q(&r.min);
                        r.max = r.max.as_ref().map(q);
                        r.step = r.step.as_ref().map(q);
                    }
                    if let Some(v) = p.valid_values.as_mut() {
                        *v = v.iter().map(q).collect();
                    }
                }
            }
            if d.attributes.as_ref().is_some_and(|a| a.is_empty()) {
                d.attributes = None;
            }
            d
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32) -> GpuInfo {
        GpuInfo {
            index,
            uuid: format!("GPU-{index:08x}-1111-2222-3333-444444444444"),
            name: "NVIDIA H100 80GB HBM3".into(),
            minor: Some(index),
            total_memory: 85_520_809_984, // 81559 MiB, as an H100 reports it
            healthy: true,
            compute_capability: Some((9, 0)),
            driver_version: Some("535.104.05".into()),
        }
    }

    const POLICY: Policy = Policy {
        shares_per_gpu: 100,
        memory_granularity: 256 << 20,
    };

    #[test]
    fn versions_become_semver() {
        assert_eq!(semver("550.54.15").as_deref(), Some("550.54.15"));
        assert_eq!(semver("535.104.05").as_deref(), Some("535.104.5"));
        assert_eq!(semver("9.0").as_deref(), Some("9.0.0"));
        assert_eq!(semver("575").as_deref(), Some("575.0.0"));
        for bad in ["", "a.b", "1.2.3.4", "1..2", "-1"] {
            assert_eq!(semver(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_gpu_is_shared_memory_and_shares() {
        let d = device(&gpu(0), &POLICY).unwrap();
        assert_eq!(d.name, "gpu-00000000-1111-2222-3333-444444444444");
        assert_eq!(d.allow_multiple_allocations, Some(true));
        let a = d.attributes.as_ref().unwrap();
        assert_eq!(a["uuid"].string.as_deref(), Some(gpu(0).uuid.as_str()));
        assert_eq!(
            a["productName"].string.as_deref(),
            Some("NVIDIA H100 80GB HBM3")
        );
        assert_eq!(a["index"].int, Some(0));
        assert_eq!(a["computeCapability"].version.as_deref(), Some("9.0.0"));
        assert_eq!(a["driverVersion"].version.as_deref(), Some("535.104.5"));
        let c = d.capacity.as_ref().unwrap();
        let mem = &c[MEMORY];
        assert_eq!(quantity::parse(&mem.value.0), Ok(85_520_809_984));
        let p = mem.request_policy.as_ref().unwrap();
        let r = p.valid_range.as_ref().unwrap();
        // 81559 MiB rounded down to 256 MiB: 81408 MiB; the default is all of it.
        assert_eq!(p.default.as_ref().unwrap().0, "81408Mi");
        assert_eq!(r.max.as_ref().unwrap().0, "81408Mi");
        assert_eq!(
            (r.min.0.as_str(), r.step.as_ref().unwrap().0.as_str()),
            ("256Mi", "256Mi")
        );
        let shares = &c[SHARES];
        assert_eq!(shares.value.0, "100");
        let p = shares.request_policy.as_ref().unwrap();
        assert_eq!(p.default.as_ref().unwrap().0, "1");
        assert_eq!(
            p.valid_range.as_ref().unwrap().max.as_ref().unwrap().0,
            "100"
        );
        // The API's rules: default and max multiples of step, min + step <= value.
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["allowMultipleAllocations"], true);
        assert_eq!(
            json["capacity"]["memory"]["requestPolicy"]["validRange"]["step"],
            "256Mi"
        );
    }

    #[test]
    fn unknown_facts_are_left_out_and_tiny_gpus_are_not_published() {
        let mut g = gpu(1);
        g.compute_capability = None;
        g.driver_version = Some("weird".into());
        g.name.clear();
        let d = device(&g, &POLICY).unwrap();
        let a = d.attributes.unwrap();
        assert!(!a.contains_key("computeCapability"));
        assert!(!a.contains_key("driverVersion"));
        assert!(!a.contains_key("productName"));
        g.total_memory = 300 << 20;
        assert!(device(&g, &POLICY).is_none());
    }

    #[test]
    fn the_slice_is_the_nodes_pool_and_normalizes() {
        let mut gpus = Gpus::default();
        gpus.merge(&Ok(vec![gpu(1), gpu(0)]));
        let devs = devices(&gpus, &POLICY);
        assert_eq!(devs.len(), 2);
        assert!(devs[0].name < devs[1].name);
        let s = slice("gpu.gpumux.dev", "node-1", devs.clone(), 7);
        assert_eq!(s.spec.pool.name, "node-1");
        assert_eq!(s.spec.pool.generation, 7);
        assert_eq!(s.spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(
            s.metadata.generate_name.as_deref(),
            Some("node-1-gpu.gpumux.dev-")
        );
        // The API server writes quantities its own way; the content is the same.
        let mut rewritten = devs.clone();
        rewritten.reverse();
        for d in &mut rewritten {
            let m = d.capacity.as_mut().unwrap().get_mut(MEMORY).unwrap();
            m.value = Quantity(quantity::parse(&m.value.0).unwrap().to_string());
        }
        assert_eq!(normalized(&rewritten), normalized(&devs));
        let mut other = devs.clone();
        other.pop();
        assert_ne!(normalized(&other), normalized(&devs));
    }
}
