//! The DRA manifests (packaging/kubernetes/dra/) agree with the code: the driver's flags
//! exist, its node name comes from the downward API, the readiness probe watches its socket,
//! the host paths it hands on are mounted at the same paths, the gpumuxd config is valid, the
//! DeviceClasses select the driver with valid configuration, the example claims ask for
//! capacities the driver publishes, and RBAC grants only what the driver uses.

use gpumux_common::config::{DaemonConfig, Priority};
use gpumux_dra::claims::GpuConfig;
use gpumux_dra::config::{DEFAULT_CDI_DIR, DEFAULT_PLUGINS_DIR, DRA_SOCKET, DRIVER_NAME};
use gpumux_dra::quantity;
use gpumux_dra::slices::{MEMORY, SHARES};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/kubernetes/dra")
}

/// Every document of a manifest file.
fn docs(file: &str) -> Vec<Value> {
    let p = dir().join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn daemonset() -> Value {
    kind(&docs("gpumux-dra.yaml"), "DaemonSet")[0].clone()
}

fn container(ds: &Value, name: &str) -> Value {
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
        .clone()
}

#[test]
fn kustomization_lists_files_that_exist() {
    let k = &docs("kustomization.yaml")[0];
    let resources = k["resources"].as_array().unwrap();
    assert!(resources.len() >= 4);
    for r in resources {
        let f = r.as_str().unwrap();
        assert!(dir().join(f).is_file(), "{f}");
        assert!(!docs(f).is_empty(), "{f}");
    }
}

#[test]
fn driver_flags_exist_and_the_node_name_comes_from_the_pod() {
    let c = container(&daemonset(), "dra-plugin");
    let cmd: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd[0], "/usr/bin/gpumux-dra-plugin");
    let help = Command::new(env!("CARGO_BIN_EXE_gpumux-dra-plugin"))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in &cmd[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")),
            "{flag} is not a flag:\n{help}"
        );
    }
    let node = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert!(help.contains("NODE_NAME"), "--node-name reads NODE_NAME");
    let probe = &c["readinessProbe"]["exec"]["command"];
    assert_eq!(
        probe[2],
        format!("{DEFAULT_PLUGINS_DIR}/{DRIVER_NAME}/{DRA_SOCKET}")
    );
}

#[test]
fn host_paths_are_mounted_where_they_are() {
    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    let volumes: Vec<(String, String)> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_string(),
                v["hostPath"]["path"].as_str()?.to_string(),
            ))
        })
        .collect();
    let c = container(&ds, "dra-plugin");
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for host in [
        "/run/gpumux",
        "/etc/gpumux/tenants.d",
        "/usr/lib/gpumux",
        "/var/lib/gpumux/dra",
        gpumux_dra::api::registration::DEFAULT_REGISTRY_DIR,
        DEFAULT_PLUGINS_DIR,
        DEFAULT_CDI_DIR,
    ] {
        let (name, _) = volumes
            .iter()
            .find(|(_, p)| p == host)
            .unwrap_or_else(|| panic!("no hostPath volume for {host}: {volumes:?}"));
        let at = mounts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_str());
        assert_eq!(at, Some(host), "{host} must be mounted at the same path");
    }
    assert_eq!(spec["hostPID"], true, "gpumuxd follows host pids");
    assert_eq!(spec["nodeSelector"]["gpumux.dev/dra"], "true");
}

#[test]
fn gpumuxd_config_is_valid() {
    let cm = kind(&docs("gpumux-dra.yaml"), "ConfigMap")[0].clone();
    let toml = cm["data"]["gpumuxd.toml"].as_str().unwrap();
    let cfg = DaemonConfig::parse(Path::new("gpumux-dra.yaml"), toml).expect("valid config");
    assert_eq!(cfg.state_dir, PathBuf::from("/run/gpumux"));
    assert_eq!(cfg.tenants_dir, PathBuf::from("/etc/gpumux/tenants.d"));
}

#[test]
fn device_classes_select_the_driver_with_valid_config() {
    let docs = docs("deviceclasses.yaml");
    let classes: Vec<DeviceClass> = kind(&docs, "DeviceClass")
        .into_iter()
        .map(|d| serde_json::from_value((*d).clone()).expect("a DeviceClass"))
        .collect();
    let names: Vec<&str> = classes
        .iter()
        .map(|c| c.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, [DRIVER_NAME, "latency.gpu.gpumux.dev"]);
    for c in &classes {
        let sel = c.spec.selectors.as_ref().unwrap();
        let expr = &sel[0].cel.as_ref().unwrap().expression;
        assert_eq!(expr, &format!("device.driver == \"{DRIVER_NAME}\""));
    }
    let cfg = &classes[1].spec.config.as_ref().unwrap()[0];
    let opaque = cfg.opaque.as_ref().unwrap();
    assert_eq!(opaque.driver, DRIVER_NAME);
    let parsed = GpuConfig::parse(&opaque.parameters.0).expect("valid GpuConfig");
    assert_eq!(parsed.priority, Some(Priority::Latency));
}

#[test]
fn example_claims_ask_for_what_the_driver_publishes() {
    let docs = docs("example-claims.yaml");
    let classes: Vec<String> = kind(&self::docs("deviceclasses.yaml"), "DeviceClass")
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let templates: Vec<ResourceClaimTemplate> = kind(&docs, "ResourceClaimTemplate")
        .into_iter()
        .map(|d| serde_json::from_value((*d).clone()).expect("a ResourceClaimTemplate"))
        .collect();
    let names: Vec<&str> = templates
        .iter()
        .map(|t| t.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["gpu-share-by-memory", "gpu-whole", "gpu-latency"]);
    for t in &templates {
        let devices = t.spec.spec.devices.as_ref().unwrap();
        for r in devices.requests.as_ref().unwrap() {
            let exact = r.exactly.as_ref().unwrap();
            assert!(
                classes.contains(&exact.device_class_name),
                "{}",
                exact.device_class_name
            );
            for (k, v) in exact
                .capacity
                .as_ref()
                .and_then(|c| c.requests.as_ref())
                .into_iter()
                .flatten()
            {
                let n = quantity::parse(&v.0).unwrap();
                match k.as_str() {
                    MEMORY => assert!(n > 0 && n.is_multiple_of(256 << 20), "{k}={}", v.0),
                    SHARES => assert!((1..=100).contains(&n), "{k}={}", v.0),
                    other => panic!("the driver publishes no capacity {other}"),
                }
            }
        }
        for c in devices.config.iter().flatten() {
            let opaque = c.opaque.as_ref().unwrap();
            assert_eq!(opaque.driver, DRIVER_NAME);
            GpuConfig::parse(&opaque.parameters.0).expect("valid GpuConfig");
        }
    }
    let pod = kind(&docs, "Pod")[0];
    assert_eq!(
        pod["spec"]["resourceClaims"][0]["resourceClaimTemplateName"],
        "gpu-share-by-memory"
    );
}

#[test]
fn rbac_grants_only_what_the_driver_uses() {
    let rbac = docs("rbac.yaml");
    let sa = kind(&rbac, "ServiceAccount")[0];
    let (ns, name) = (
        sa["metadata"]["namespace"].as_str().unwrap(),
        sa["metadata"]["name"].as_str().unwrap(),
    );
    let role = kind(&rbac, "ClusterRole")[0];
    let mut rules: Vec<(String, Vec<String>)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["apiGroups"], serde_json::json!(["resource.k8s.io"]));
            let res = r["resources"].as_array().unwrap();
            assert_eq!(res.len(), 1);
            (
                res[0].as_str().unwrap().to_string(),
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules[0],
        ("resourceclaims".to_string(), vec!["get".to_string()])
    );
    // What publisher::reconcile calls: list (with field selectors), create, update, delete.
    let verbs = ["list", "create", "update", "delete"]
        .map(String::from)
        .to_vec();
    assert_eq!(rules[1], ("resourceslices".to_string(), verbs));
    let binding = kind(&rbac, "ClusterRoleBinding")[0];
    assert_eq!(binding["subjects"][0]["name"], name);
    assert_eq!(binding["subjects"][0]["namespace"], ns);
    assert_eq!(
        daemonset()["spec"]["template"]["spec"]["serviceAccountName"],
        name
    );
    assert_eq!(daemonset()["metadata"]["namespace"], ns);
    // The admission policy holds exactly this account to its own node's slices.
    let policy = kind(&docs("admission-policy.yaml"), "ValidatingAdmissionPolicy")[0].clone();
    let cond = policy["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        cond.contains(&format!("system:serviceaccount:{ns}:{name}")),
        "{cond}"
    );
    let binding = kind(
        &docs("admission-policy.yaml"),
        "ValidatingAdmissionPolicyBinding",
    )[0]
    .clone();
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
}
