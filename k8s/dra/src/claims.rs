//! What an allocated ResourceClaim is worth on this node (pure): the gpumux tenant it becomes.
//!
//! All of a claim's devices from this driver form one tenant (the claim is what a pod's
//! containers share). Per GPU, the tenant gets the memory and shares its devices consumed
//! (summed when several requests landed on the same GPU); a device allocated without consumed
//! capacity (the `DRAConsumableCapacity` gate off: exclusive allocation) counts as the whole
//! GPU. Like the device plugin, a tenant spread over GPUs gets on each the smallest of its
//! per-GPU parts, never more of a GPU than it was given.
//!
//! The claim's (and its DeviceClass's) opaque configuration for the driver sets the rest:
//!
//! ```yaml
//! config:
//!   - opaque:
//!       driver: gpu.gpumux.dev
//!       parameters:
//!         apiVersion: gpu.gpumux.dev/v1alpha1
//!         kind: GpuConfig
//!         priority: latency       # latency | normal | batch (default normal)
//!         computeLimit: "50%"     # optional hard cap on device time
//! ```
//!
//! Entries apply in the order the allocation lists them (class configuration first, then the
//! claim's), a later entry overriding an earlier one's keys; an entry limited to `requests`
//! applies when one of this driver's devices was allocated for one of them. Anything else is
//! an error naming the claim, the entry and the problem, which the kubelet puts in the pod's
//! events.

use crate::gpus::Gpus;
use crate::quantity;
use crate::slices::{MEMORY, Policy, SHARES};
use gpumux_common::config::{MAX_WEIGHT, Priority, TenantOwner};
use k8s_openapi::api::resource::v1::{DeviceRequestAllocationResult, ResourceClaim};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// `apiVersion` of the driver's opaque configuration.
pub const CONFIG_API_VERSION: &str = "gpu.gpumux.dev/v1alpha1";
/// `kind` of the driver's opaque configuration.
pub const CONFIG_KIND: &str = "GpuConfig";

/// A claim cannot become a tenant.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error(
        "ResourceClaim {claim} has UID {found}, the kubelet asked for {wanted}: it was deleted and re-created"
    )]
    Uid {
        claim: String,
        found: String,
        wanted: String,
    },
    #[error("ResourceClaim {0} is not allocated")]
    NotAllocated(String),
    #[error(
        "ResourceClaim {claim}: device {device} of pool {pool} is not a GPU of this node ({node})"
    )]
    UnknownDevice {
        claim: String,
        pool: String,
        device: String,
        node: String,
    },
    #[error("ResourceClaim {claim}: consumed {key} `{value}` of device {device}: {reason}")]
    Capacity {
        claim: String,
        device: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("ResourceClaim {claim}: config #{index} ({source_kind}) for {driver}: {reason}")]
    Config {
        claim: String,
        index: usize,
        source_kind: String,
        driver: String,
        reason: String,
    },
    #[error("ResourceClaim {claim}: {reason}")]
    Invalid { claim: String, reason: String },
}

/// The driver's opaque configuration (`parameters` of an opaque config entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuConfig {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub compute_limit: Option<String>,
}

/// What a valid [`GpuConfig`] sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedConfig {
    pub priority: Option<Priority>,
    pub compute_limit_permille: Option<u32>,
}

impl GpuConfig {
    /// Checks opaque `parameters` meant for this driver; the error says what is wrong.
    pub fn parse(parameters: &serde_json::Value) -> Result<ParsedConfig, String> {
        let cfg: GpuConfig =
            serde_json::from_value(parameters.clone()).map_err(|e| format!("parameters: {e}"))?;
        if cfg.api_version != CONFIG_API_VERSION || cfg.kind != CONFIG_KIND {
            return Err(format!(
                "parameters are {}/{}, expected apiVersion: {CONFIG_API_VERSION}, kind: {CONFIG_KIND}",
                cfg.api_version, cfg.kind
            ));
        }
        Ok(ParsedConfig {
            priority: cfg.priority.as_deref().map(str::parse).transpose()?,
            compute_limit_permille: cfg
                .compute_limit
                .as_deref()
                .map(|c| {
                    gpumux_common::size::parse_percent_permille(c)
                        .map_err(|e| format!("computeLimit: {e}"))
                })
                .transpose()?,
        })
    }
}

/// One allocated device of the claim, as the kubelet wants it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimDevice {
    pub request: String,
    pub pool: String,
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
}

/// The tenant a claim becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimQuota {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The tenant's name ([`tenant_name`]).
    pub tenant: String,
    /// UUIDs of its GPUs, in index order.
    pub gpus: Vec<String>,
    /// `/dev/nvidia<minor>` numbers of those GPUs (index when NVML does not say).
    pub minors: Vec<u32>,
    /// Bytes on each of its GPUs.
    pub memory_limit: u64,
    /// Weight (1..=1000).
    pub weight: u32,
    pub priority: Priority,
    /// Hard cap on device time, per mille.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_limit_permille: Option<u32>,
    pub owner: TenantOwner,
    /// Its devices from this driver (empty: nothing to prepare here).
    pub devices: Vec<ClaimDevice>,
}

/// `<namespace>.<claim>` (cut to fit) and the first 8 hex digits of the claim's UID: a valid
/// tenant and CDI device name, readable, stable, unique per claim.
pub fn tenant_name(namespace: &str, name: &str, uid: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let hex: String = uid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .take(8)
        .collect();
    let hex = if hex.is_empty() { "0".into() } else { hex };
    let mut base = clean(&format!("{namespace}.{name}"));
    base.truncate(62 - hex.len());
    let base = base.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    if base.is_empty() {
        format!("c-{hex}")
    } else {
        format!("{base}-{hex}")
    }
}

fn owner_of(claim: &ResourceClaim, namespace: &str, name: &str) -> TenantOwner {
    let mut pods: Vec<&str> = claim
        .status
        .as_ref()
        .and_then(|s| s.reserved_for.as_ref())
        .into_iter()
        .flatten()
        .filter(|r| r.resource == "pods" && r.api_group.as_deref().unwrap_or("").is_empty())
        .map(|r| r.name.as_str())
        .collect();
    pods.sort_unstable();
    let owner = TenantOwner {
        namespace: Some(namespace.to_string()),
        pod: pods.first().map(|p| p.to_string()),
        container: None,
        claim: Some(name.to_string()),
    };
    // Kubernetes names are valid here; anything odd is left out, never written.
    let valid = |s: &Option<String>| {
        s.as_ref()
            .filter(|v| {
                TenantOwner {
                    pod: Some(v.to_string()),
                    ..TenantOwner::default()
                }
                .validate()
                .is_ok()
            })
            .cloned()
    };
    TenantOwner {
        namespace: valid(&owner.namespace),
        pod: valid(&owner.pod),
        container: None,
        claim: valid(&owner.claim),
    }
}

fn consumed(
    r: &DeviceRequestAllocationResult,
    driver: &str,
    key: &str,
    claim: &str,
) -> Result<Option<u64>, ClaimError> {
    let Some(map) = r.consumed_capacity.as_ref() else {
        return Ok(None);
    };
    let qualified = format!("{driver}/{key}");
    let Some(q) = map.get(key).or_else(|| map.get(&qualified)) else {
        return Ok(None);
    };
    quantity::parse(&q.0)
        .map(Some)
        .map_err(|e| ClaimError::Capacity {
            claim: claim.to_string(),
            device: r.device.clone(),
            key: key.to_string(),
            value: q.0.clone(),
            reason: e.to_string(),
        })
}

/// Whether a config entry limited to `requests` applies to a result for `request` (a
/// subrequest `main/sub` belongs to `main`).
fn applies(requests: &[String], request: &str) -> bool {
    requests.is_empty()
        || requests.iter().any(|r| {
            r == request
                || request
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// The tenant for `claim`, which the kubelet asked to prepare as `uid`, on `node`.
pub fn quota_for(
    claim: &ResourceClaim,
    uid: &str,
    driver: &str,
    node: &str,
    gpus: &Gpus,
    policy: &Policy,
) -> Result<ClaimQuota, ClaimError> {
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let shown = format!("{namespace}/{name}");
    let found = claim.metadata.uid.clone().unwrap_or_default();
    if found != uid {
        return Err(ClaimError::Uid {
            claim: shown,
            found,
            wanted: uid.to_string(),
        });
    }
    let allocation = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .ok_or_else(|| ClaimError::NotAllocated(shown.clone()))?;
    let results: Vec<&DeviceRequestAllocationResult> = allocation
        .results
        .iter()
        .flatten()
        .filter(|r| r.driver == driver)
        .collect();

    // Per GPU: memory and shares consumed.
    let mut per_gpu: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut devices = Vec::new();
    for r in &results {
        let gpu = gpus
            .by_device_name(&r.device)
            .filter(|_| r.pool == node)
            .ok_or_else(|| ClaimError::UnknownDevice {
                claim: shown.clone(),
                pool: r.pool.clone(),
                device: r.device.clone(),
                node: node.to_string(),
            })?;
        let memory = consumed(r, driver, MEMORY, &shown)?.unwrap_or(gpu.total_memory);
        let shares =
            consumed(r, driver, SHARES, &shown)?.unwrap_or(u64::from(policy.shares_per_gpu));
        let e = per_gpu.entry(gpu.uuid.clone()).or_default();
        e.0 = e.0.saturating_add(memory).min(gpu.total_memory);
        e.1 = e.1.saturating_add(shares);
        devices.push(ClaimDevice {
            request: r.request.clone(),
            pool: r.pool.clone(),
            device: r.device.clone(),
            share_id: r.share_id.clone(),
        });
    }
    if !per_gpu.is_empty() && per_gpu.values().any(|(m, _)| *m == 0) {
        return Err(ClaimError::Invalid {
            claim: shown,
            reason: "a device was allocated with no memory; request at least one memory granule"
                .into(),
        });
    }

    // Configuration, in order; later entries override.
    let mut priority = Priority::default();
    let mut compute_limit_permille = None;
    for (index, entry) in allocation.config.iter().flatten().enumerate() {
        let Some(opaque) = entry.opaque.as_ref() else {
            continue;
        };
        if opaque.driver != driver {
            continue;
        }
        let requests = entry.requests.clone().unwrap_or_default();
        if !results.iter().any(|r| applies(&requests, &r.request)) {
            continue;
        }
        let bad = |reason: String| ClaimError::Config {
            claim: shown.clone(),
            index,
            source_kind: entry.source.clone(),
            driver: driver.to_string(),
            reason,
        };
        let cfg = GpuConfig::parse(&opaque.parameters.0).map_err(bad)?;
        if let Some(p) = cfg.priority {
            priority = p;
        }
        if let Some(c) = cfg.compute_limit_permille {
            compute_limit_permille = Some(c);
        }
    }

    let mut gpu_infos: Vec<_> = per_gpu.keys().filter_map(|u| gpus.known.get(u)).collect();
    gpu_infos.sort_by_key(|g| g.index);
    let memory_limit = per_gpu.values().map(|(m, _)| *m).min().unwrap_or(0);
    let weight = per_gpu.values().map(|(_, s)| *s).min().unwrap_or(1);
    Ok(ClaimQuota {
        uid: uid.to_string(),
        tenant: tenant_name(&namespace, &name, uid),
        owner: owner_of(claim, &namespace, &name),
        namespace,
        name,
        gpus: gpu_infos.iter().map(|g| g.uuid.clone()).collect(),
        minors: gpu_infos
            .iter()
            .map(|g| g.minor.unwrap_or(g.index))
            .collect(),
        memory_limit,
        weight: weight.clamp(1, u64::from(MAX_WEIGHT)) as u32,
        priority,
        compute_limit_permille,
        devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpumux_common::nvml::GpuInfo;
    use serde_json::json;

    const NODE: &str = "node-1";
    const DRIVER: &str = "gpu.gpumux.dev";
    const UID: &str = "0b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const POLICY: Policy = Policy {
        shares_per_gpu: 100,
        memory_granularity: 256 << 20,
    };

    fn gpus() -> Gpus {
        let gpu = |index: u32| GpuInfo {
            index,
            uuid: format!("GPU-{index:08x}-1111-2222-3333-444444444444"),
            name: "GPU".into(),
            minor: Some(index + 10),
            total_memory: 16 << 30,
            healthy: true,
            compute_capability: None,
            driver_version: None,
        };
        let mut g = Gpus::default();
        g.merge(&Ok(vec![gpu(0), gpu(1)]));
        g
    }

    fn dev(index: u32) -> String {
        format!("gpu-{index:08x}-1111-2222-3333-444444444444")
    }

    /// A claim as the API server returns it.
    fn claim(results: serde_json::Value, config: serde_json::Value) -> ResourceClaim {
        serde_json::from_value(json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "train-gpu-x7k2p", "namespace": "team-a", "uid": UID},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}},
            "status": {
                "allocation": {"devices": {"results": results, "config": config}},
                "reservedFor": [{"resource": "pods", "name": "train-0", "uid": "p1"}]
            }
        }))
        .unwrap()
    }

    fn result(index: u32, memory: &str, shares: &str) -> serde_json::Value {
        json!({"request": "gpu", "driver": DRIVER, "pool": NODE, "device": dev(index),
               "shareID": "3f1e2d3c-0000-4000-8000-000000000001",
               "consumedCapacity": {"memory": memory, "shares": shares}})
    }

    fn params(p: serde_json::Value) -> serde_json::Value {
        json!({"source": "FromClaim", "opaque": {"driver": DRIVER, "parameters": p}})
    }

    fn quota(c: &ResourceClaim) -> Result<ClaimQuota, ClaimError> {
        quota_for(c, UID, DRIVER, NODE, &gpus(), &POLICY)
    }

    #[test]
    fn consumed_capacity_becomes_memory_and_weight() {
        let q = quota(&claim(json!([result(0, "6Gi", "3")]), json!([]))).unwrap();
        assert_eq!(q.memory_limit, 6 << 30);
        assert_eq!(q.weight, 3);
        assert_eq!(q.priority, Priority::Normal);
        assert_eq!(q.gpus, vec![gpus().published()[0].uuid.clone()]);
        assert_eq!(q.minors, vec![10]);
        assert_eq!(q.tenant, "team-a.train-gpu-x7k2p-0b1e2c3d");
        assert_eq!(
            q.owner,
            TenantOwner {
                namespace: Some("team-a".into()),
                pod: Some("train-0".into()),
                container: None,
                claim: Some("train-gpu-x7k2p".into()),
            }
        );
        assert_eq!(q.devices.len(), 1);
        assert_eq!(
            q.devices[0].share_id.as_deref(),
            Some("3f1e2d3c-0000-4000-8000-000000000001")
        );
    }

    #[test]
    fn several_requests_on_one_gpu_add_up_and_spread_gets_the_least() {
        let mut b = result(0, "2Gi", "1");
        b["request"] = json!("b");
        let q = quota(&claim(json!([result(0, "6Gi", "3"), b]), json!([]))).unwrap();
        assert_eq!((q.memory_limit, q.weight), (8 << 30, 4));
        let q = quota(&claim(
            json!([result(0, "6Gi", "3"), result(1, "2Gi", "5")]),
            json!([]),
        ))
        .unwrap();
        assert_eq!((q.memory_limit, q.weight, q.gpus.len()), (2 << 30, 3, 2));
    }

    #[test]
    fn without_consumed_capacity_the_gpu_is_whole() {
        let mut r = result(1, "", "");
        r.as_object_mut().unwrap().remove("consumedCapacity");
        let q = quota(&claim(json!([r]), json!([]))).unwrap();
        assert_eq!((q.memory_limit, q.weight), (16 << 30, 100));
    }

    #[test]
    fn other_drivers_devices_are_not_ours() {
        let mut r = result(0, "6Gi", "3");
        r["driver"] = json!("gpu.nvidia.com");
        let q = quota(&claim(json!([r]), json!([]))).unwrap();
        assert!(q.devices.is_empty());
    }

    #[test]
    fn config_sets_priority_and_cap_in_order() {
        let class = json!({"source": "FromClass", "opaque": {"driver": DRIVER, "parameters":
            {"apiVersion": CONFIG_API_VERSION, "kind": CONFIG_KIND, "priority": "latency", "computeLimit": "50%"}}});
        let q = quota(&claim(
            json!([result(0, "6Gi", "3")]),
            json!([class.clone()]),
        ))
        .unwrap();
        assert_eq!(
            (q.priority, q.compute_limit_permille),
            (Priority::Latency, Some(500))
        );
        // The claim's own entry comes later and wins; an entry for other requests does not apply.
        let other = json!({"source": "FromClaim", "requests": ["other"], "opaque": {"driver": DRIVER,
            "parameters": {"apiVersion": CONFIG_API_VERSION, "kind": CONFIG_KIND, "priority": "normal"}}});
        let mine = params(
            json!({"apiVersion": CONFIG_API_VERSION, "kind": CONFIG_KIND, "priority": "batch"}),
        );
        let q = quota(&claim(
            json!([result(0, "6Gi", "3")]),
            json!([class, other, mine]),
        ))
        .unwrap();
        assert_eq!(
            (q.priority, q.compute_limit_permille),
            (Priority::Batch, Some(500))
        );
        // Another driver's config is not ours to read.
        let foreign = json!({"source": "FromClaim", "opaque": {"driver": "gpu.nvidia.com", "parameters": {"x": 1}}});
        quota(&claim(json!([result(0, "6Gi", "3")]), json!([foreign]))).unwrap();
    }

    #[test]
    fn invalid_config_is_a_clear_error() {
        for (p, what) in [
            (
                json!({"apiVersion": CONFIG_API_VERSION, "kind": CONFIG_KIND, "priority": "urgent"}),
                "priority = \"urgent\" is not one of \"latency\", \"normal\", \"batch\"",
            ),
            (
                json!({"apiVersion": CONFIG_API_VERSION, "kind": CONFIG_KIND, "priorty": "latency"}),
                "unknown field `priorty`",
            ),
            (
                json!({"apiVersion": "v1", "kind": CONFIG_KIND}),
                "expected apiVersion: gpu.gpumux.dev/v1alpha1",
            ),
            (
                json!({"apiVersion": CONFIG_API_VERSION, "kind": CONFIG_KIND, "computeLimit": "0%"}),
                "computeLimit",
            ),
            (json!("latency"), "parameters"),
        ] {
            let e = quota(&claim(
                json!([result(0, "6Gi", "3")]),
                json!([params(p.clone())]),
            ))
            .unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(what), "{p}: {msg}");
            assert!(msg.starts_with("ResourceClaim team-a/train-gpu-x7k2p: config #0 (FromClaim) for gpu.gpumux.dev: "), "{msg}");
        }
    }

    #[test]
    fn wrong_claims_are_refused() {
        let c = claim(json!([result(0, "6Gi", "3")]), json!([]));
        assert!(matches!(
            quota_for(&c, "other-uid", DRIVER, NODE, &gpus(), &POLICY),
            Err(ClaimError::Uid { .. })
        ));
        assert!(matches!(
            quota_for(&c, UID, DRIVER, "node-2", &gpus(), &POLICY),
            Err(ClaimError::UnknownDevice { .. })
        ));
        let mut r = result(0, "6Gi", "3");
        r["device"] = json!("gpu-nope");
        assert!(matches!(
            quota(&claim(json!([r]), json!([]))),
            Err(ClaimError::UnknownDevice { .. })
        ));
        let r = result(0, "lots", "3");
        let e = quota(&claim(json!([r]), json!([]))).unwrap_err();
        assert!(e.to_string().contains("consumed memory `lots`"), "{e}");
        let mut c = claim(json!([]), json!([]));
        c.status.as_mut().unwrap().allocation = None;
        assert!(matches!(quota(&c), Err(ClaimError::NotAllocated(_))));
    }

    #[test]
    fn tenant_names_are_valid_and_readable() {
        let t = tenant_name("default", "pod-gpu-abcde", "1a2b3c4d-0000");
        assert_eq!(t, "default.pod-gpu-abcde-1a2b3c4d");
        let long = tenant_name(&"n".repeat(63), &"c".repeat(253), "ffffffff-1");
        assert_eq!(long.len(), 63);
        for t in [
            t,
            long,
            tenant_name("", "", ""),
            tenant_name("a", "B_c", "x"),
        ] {
            gpumux_common::names::validate_tenant_name(&t).unwrap();
            assert!(t.ends_with(|c: char| c.is_ascii_alphanumeric()), "{t}");
        }
    }
}
