//! The DRA driver against a fake kubelet that speaks the real protocols (plugin registration
//! `v1`: `GetInfo`, `NotifyRegistrationStatus`; the DRA plugin API `v1` and `v1beta1`:
//! `NodePrepareResources`, `NodeUnprepareResources`) over Unix sockets, and a fake API server
//! (HTTP; ResourceSlices and ResourceClaims), with the real gpumuxd and shim on the fake GPU.
//!
//! Run after `cargo build --workspace` (gpumuxd, libgpumux.so and the fake drivers are found
//! in this test binary's target directory; cargo builds the driver binary itself).

mod fake_apiserver;

use fake_apiserver::FakeApiServer;
use gpumux_common::config::{Priority, TenantQuota};
use gpumux_common::nvml::{DeviceSource, GpuInfo, NvmlError};
use gpumux_daemon::cdi::Spec;
use gpumux_dra::api::registration::registration_client::RegistrationClient;
use gpumux_dra::api::registration::{InfoRequest, PluginInfo, RegistrationStatus};
use gpumux_dra::api::{v1, v1beta1};
use gpumux_dra::config::{DRIVER_NAME, DriverConfig};
use gpumux_dra::quantity;
use gpumux_integration::gpumux::{Gpumux, artifact, exclusive, wait_until};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, Running, c_workload, i, nvml_probe, run, u,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tonic::transport::Channel;

const NODE: &str = "node-1";
const TOKEN: &str = "node-1-token";
const T: Duration = Duration::from_secs(30);
/// Saturating: batches of 4 x 2 ms kernels, back to back (as the time-slicing tests).
const SATURATE: &[&str] = &["--ns", "2000000", "--batch", "4", "--pause-ms", "0"];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------
// The fake kubelet
// ---------------------------------------------------------------------------------------

/// A prepared device as the kubelet gets it: device name, CDI device IDs, share ID.
type Prepared = (String, Vec<String>, Option<String>);

/// A DRA client of the version the kubelet chose.
enum DraClient {
    V1(v1::dra_plugin_client::DraPluginClient<Channel>),
    V1beta1(v1beta1::dra_plugin_client::DraPluginClient<Channel>),
}

/// What the kubelet's plugin watcher and DRA manager do with a driver: find its registration
/// socket, ask for its info, check it, pick the first DRA service version both support, say
/// it is registered, and call the DRA service at the endpoint it named.
struct FakeKubelet {
    registry: PathBuf,
    /// Services this kubelet implements, in its order of preference.
    supported: Vec<&'static str>,
    client: Option<DraClient>,
    info: Option<PluginInfo>,
}

impl FakeKubelet {
    fn new(registry: &Path, supported: Vec<&'static str>) -> FakeKubelet {
        std::fs::create_dir_all(registry).unwrap();
        FakeKubelet {
            registry: registry.to_path_buf(),
            supported,
            client: None,
            info: None,
        }
    }

    fn reg_socket(&self) -> PathBuf {
        self.registry.join(format!("{DRIVER_NAME}-reg.sock"))
    }

    /// Registers the driver (waiting for its socket); returns the chosen service.
    fn register(&mut self, rt: &Runtime, log: &dyn Fn() -> String) -> String {
        let sock = self.reg_socket();
        wait_until(
            T,
            || sock.exists(),
            || format!("no registration socket; log:\n{}", log()),
        );
        rt.block_on(async {
            // The driver may be replacing its socket right now: retry for a while.
            let mut last = String::new();
            for _ in 0..100 {
                match self.try_register().await {
                    Ok(s) => return s,
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("registration failed: {last}; log:\n{}", log())
        })
    }

    async fn try_register(&mut self) -> Result<String, String> {
        let ch = gpumux_k8s::kubelet::connect(&self.reg_socket())
            .await
            .map_err(|e| e.to_string())?;
        let mut reg = RegistrationClient::new(ch);
        let info = reg
            .get_info(InfoRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        // What the kubelet validates.
        assert_eq!(info.r#type, "DRAPlugin");
        assert_eq!(info.name, DRIVER_NAME);
        assert!(Path::new(&info.endpoint).is_absolute(), "{info:?}");
        let chosen = info
            .supported_versions
            .iter()
            .find(|v| self.supported.contains(&v.as_str()))
            .cloned();
        let Some(chosen) = chosen else {
            // Told as a kubelet would; the test fails here either way.
            reg.notify_registration_status(RegistrationStatus {
                plugin_registered: false,
                error: "no supported version".into(),
            })
            .await
            .ok();
            panic!("no common version in {:?}", info.supported_versions);
        };
        let ch = gpumux_k8s::kubelet::connect(Path::new(&info.endpoint))
            .await
            .map_err(|e| e.to_string())?;
        self.client = Some(match chosen.as_str() {
            v1::SERVICE => DraClient::V1(v1::dra_plugin_client::DraPluginClient::new(ch)),
            v1beta1::SERVICE => {
                DraClient::V1beta1(v1beta1::dra_plugin_client::DraPluginClient::new(ch))
            }
            other => panic!("unexpected service {other}"),
        });
        reg.notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .map_err(|e| e.to_string())?;
        self.info = Some(info);
        Ok(chosen)
    }

    /// A kubelet restart: its connections go, and at start it wipes the node's slices.
    fn restart(&mut self, api: &FakeApiServer) {
        self.client = None;
        api.wipe(NODE);
    }

    /// `NodePrepareResources` for `(namespace, name, uid)` claims: per claim UID, the CDI
    /// device IDs and device names, or the error.
    fn prepare(
        &mut self,
        rt: &Runtime,
        claims: &[(&str, &str, &str)],
    ) -> HashMap<String, Result<Vec<Prepared>, String>> {
        let client = self.client.as_mut().expect("registered");
        rt.block_on(async {
            match client {
                DraClient::V1(c) => c
                    .node_prepare_resources(v1::NodePrepareResourcesRequest {
                        claims: claims
                            .iter()
                            .map(|(ns, name, uid)| v1::Claim {
                                namespace: ns.to_string(),
                                name: name.to_string(),
                                uid: uid.to_string(),
                            })
                            .collect(),
                    })
                    .await
                    .expect("NodePrepareResources")
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|(uid, r)| {
                        let v = if r.error.is_empty() {
                            Ok(r.devices
                                .into_iter()
                                .map(|d| (d.device_name, d.cdi_device_ids, d.share_id))
                                .collect())
                        } else {
                            Err(r.error)
                        };
                        (uid, v)
                    })
                    .collect(),
                DraClient::V1beta1(c) => c
                    .node_prepare_resources(v1beta1::NodePrepareResourcesRequest {
                        claims: claims
                            .iter()
                            .map(|(ns, name, uid)| v1beta1::Claim {
                                namespace: ns.to_string(),
                                name: name.to_string(),
                                uid: uid.to_string(),
                            })
                            .collect(),
                    })
                    .await
                    .expect("NodePrepareResources")
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|(uid, r)| {
                        let v = if r.error.is_empty() {
                            Ok(r.devices
                                .into_iter()
                                .map(|d| (d.device_name, d.cdi_device_ids, None))
                                .collect())
                        } else {
                            Err(r.error)
                        };
                        (uid, v)
                    })
                    .collect(),
            }
        })
    }

    /// `NodeUnprepareResources`: per claim UID, the error (empty: done).
    fn unprepare(
        &mut self,
        rt: &Runtime,
        claims: &[(&str, &str, &str)],
    ) -> HashMap<String, String> {
        let client = self.client.as_mut().expect("registered");
        rt.block_on(async {
            match client {
                DraClient::V1(c) => c
                    .node_unprepare_resources(v1::NodeUnprepareResourcesRequest {
                        claims: claims
                            .iter()
                            .map(|(ns, name, uid)| v1::Claim {
                                namespace: ns.to_string(),
                                name: name.to_string(),
                                uid: uid.to_string(),
                            })
                            .collect(),
                    })
                    .await
                    .expect("NodeUnprepareResources")
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|(uid, r)| (uid, r.error))
                    .collect(),
                DraClient::V1beta1(c) => c
                    .node_unprepare_resources(v1beta1::NodeUnprepareResourcesRequest {
                        claims: claims
                            .iter()
                            .map(|(ns, name, uid)| v1beta1::Claim {
                                namespace: ns.to_string(),
                                name: name.to_string(),
                                uid: uid.to_string(),
                            })
                            .collect(),
                    })
                    .await
                    .expect("NodeUnprepareResources")
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|(uid, r)| (uid, r.error))
                    .collect(),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Claims, slices, CDI
// ---------------------------------------------------------------------------------------

/// A ResourceClaim as the scheduler leaves it: allocated one device of this node, consuming
/// `memory` and `shares`, reserved for `pod`, with the given config entries.
fn claim(
    name: &str,
    uid: &str,
    device: &str,
    memory: &str,
    shares: &str,
    pod: &str,
    config: Value,
) -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": DRIVER_NAME,
            "capacity": {"requests": {"memory": memory, "shares": shares}}}}]}},
        "status": {
            "allocation": {"devices": {
                "results": [{"request": "gpu", "driver": DRIVER_NAME, "pool": NODE,
                             "device": device, "shareID": format!("{uid}-share"),
                             "consumedCapacity": {"memory": memory, "shares": shares}}],
                "config": config}},
            "reservedFor": [{"resource": "pods", "name": pod, "uid": format!("{pod}-uid")}]
        }
    })
}

fn gpu_config(params: Value) -> Value {
    json!({"source": "FromClaim", "requests": ["gpu"],
           "opaque": {"driver": DRIVER_NAME, "parameters": params}})
}

/// The device of GPU `uuid` in a slice.
fn slice_device<'a>(slice: &'a Value, uuid: &str) -> &'a Value {
    slice["spec"]["devices"]
        .as_array()
        .and_then(|ds| {
            ds.iter()
                .find(|d| d["attributes"]["uuid"]["string"] == uuid)
        })
        .unwrap_or_else(|| panic!("no device for {uuid} in {slice}"))
}

fn q(v: &Value) -> u64 {
    quantity::parse(v.as_str().unwrap_or_else(|| panic!("not a quantity: {v}"))).unwrap()
}

/// The CDI device `id` (`kind=name`) from the specs in `dir`, as a runtime resolves it.
fn cdi_device(dir: &Path, id: &str) -> gpumux_daemon::cdi::Device {
    let (kind, name) = id.split_once('=').unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let spec: Spec = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if spec.kind == kind
            && let Some(d) = spec.devices.into_iter().find(|d| d.name == name)
        {
            return d;
        }
    }
    panic!("no CDI device {id} in {}", dir.display())
}

/// A command that runs `program` in a container made from CDI device `d`: its env, with the
/// container paths resolved through its mounts (here the host and container paths agree).
fn cdi_command(g: &Gpumux, d: &gpumux_daemon::cdi::Device, program: &Path) -> Command {
    let mut cmd = g.command(program);
    for kv in &d.container_edits.env {
        let (k, v) = kv.split_once('=').unwrap();
        let m = d
            .container_edits
            .mounts
            .iter()
            .filter(|m| v == m.container_path || v.starts_with(&format!("{}/", m.container_path)))
            .max_by_key(|m| m.container_path.len());
        let host = match m {
            Some(m) => format!("{}{}", m.host_path, &v[m.container_path.len()..]),
            None => v.to_string(),
        };
        cmd.env(k, host);
    }
    cmd
}

fn plugin_quota_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml") && n.starts_with("default."))
        .collect();
    v.sort();
    v
}

fn state_claims(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("dra-state/claims.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["claims"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r.get("released_unix").is_none())
        .map(|(k, _)| k.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The driver process
// ---------------------------------------------------------------------------------------

struct DriverProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl DriverProcess {
    fn spawn(g: &Gpumux, root: &Path) -> DriverProcess {
        let log = root.join("dra.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd: Command = g.gpu.command(env!("CARGO_BIN_EXE_gpumux-dra-plugin"));
        cmd.args(["--node-name", NODE])
            .arg("--registry-dir")
            .arg(root.join("plugins_registry"))
            .arg("--plugin-dir")
            .arg(root.join("plugins").join(DRIVER_NAME))
            .arg("--kubeconfig")
            .arg(root.join("kubeconfig"))
            .arg("--gpumux-config")
            .arg(&g.config_path)
            .arg("--state-dir")
            .arg(root.join("dra-state"))
            .arg("--cdi-dir")
            .arg(root.join("cdi"))
            .arg("--shim-path")
            .arg(artifact("libgpumux.so"))
            .arg("--dev-root")
            .arg(root.join("dev"))
            .args(["--health-interval", "200ms", "--resync-interval", "300ms"])
            .args(["--watch-interval", "50ms", "--socket-wait", "5s"])
            .env_remove("KUBECONFIG")
            .env(
                "GPUMUX_LOG",
                "debug,h2=info,tower=info,hyper=info,kube=info,rustls=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        DriverProcess {
            child: Some(cmd.spawn().expect("spawn gpumux-dra-plugin")),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("driver running");
        // SAFETY: sending SIGTERM to our own child process, which has not been reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if std::time::Instant::now() > deadline {
                c.kill().ok();
                panic!("driver ignored SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The whole walk: registration, the node's slice, two claims (6 GiB and weight 3; 2 GiB and
/// weight 1) prepared into two tenants that the real daemon and shim hold to 6 GiB and 3:1
/// of the device, kubelet restart, driver restart, an invalid claim, unprepare, shutdown.
#[test]
fn claims_become_tenants_held_to_their_share() {
    let _serial = exclusive();
    let rt = runtime();
    let g = Gpumux::start(&[16 * GIB], &[]);
    let root = g.dir.path().to_path_buf();
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    for node in ["nvidia0", "nvidiactl", "nvidia-uvm"] {
        std::fs::write(dev.join(node), b"").unwrap();
    }
    let api = FakeApiServer::start();
    api.add_token(TOKEN, NODE);
    std::fs::write(root.join("kubeconfig"), api.kubeconfig(TOKEN)).unwrap();
    // Another node's slice: never the driver's to touch.
    api.put_slice(json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": "node-2-gpu.gpumux.dev-x"},
        "spec": {"driver": DRIVER_NAME, "nodeName": "node-2",
                 "pool": {"name": "node-2", "generation": 1, "resourceSliceCount": 1}, "devices": []}}));

    let mut kubelet = FakeKubelet::new(
        &root.join("plugins_registry"),
        vec![v1::SERVICE, v1beta1::SERVICE],
    );
    let mut driver = DriverProcess::spawn(&g, &root);
    let dlog = |d: &DriverProcess| format!("{}\ngpumuxd:\n{}", d.log(), g.log());

    // Registration: v1 chosen, the endpoint in the driver's plugin directory.
    assert_eq!(kubelet.register(&rt, &|| dlog(&driver)), v1::SERVICE);
    let info = kubelet.info.clone().unwrap();
    assert_eq!(info.supported_versions, [v1::SERVICE, v1beta1::SERVICE]);
    assert_eq!(
        Path::new(&info.endpoint),
        root.join("plugins").join(DRIVER_NAME).join("dra.sock")
    );

    // The node's slice: the fake GPU, its facts, consumable memory and shares.
    let uuid = fakegpu::device_uuid_string(0);
    wait_until(
        T,
        || api.slices_of(NODE).len() == 1,
        || format!("no slice; log:\n{}", dlog(&driver)),
    );
    let slice = api.slices_of(NODE).remove(0);
    assert_eq!(slice["spec"]["driver"], DRIVER_NAME);
    assert_eq!(slice["spec"]["pool"]["name"], NODE);
    assert_eq!(slice["spec"]["pool"]["resourceSliceCount"], 1);
    let d = slice_device(&slice, &uuid);
    let device = d["name"].as_str().unwrap().to_string();
    assert_eq!(device, format!("gpu-{}", uuid.trim_start_matches("GPU-")));
    assert_eq!(d["allowMultipleAllocations"], true);
    assert_eq!(d["attributes"]["productName"]["string"], "gpumux Fake GPU");
    assert_eq!(d["attributes"]["computeCapability"]["version"], "9.0.0");
    // The driver version NVML reports (`550.163.01` from the fake), as a semantic version.
    let nvml = run(&mut g.command(nvml_probe()), T).expect("nvml probe");
    let reported = nvml.lines.one("init")["driver_version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d["attributes"]["driverVersion"]["version"].as_str(),
        gpumux_dra::slices::semver(&reported).as_deref(),
        "NVML says {reported}"
    );
    let mem = &d["capacity"]["memory"];
    assert_eq!(q(&mem["value"]), 16 * GIB);
    assert_eq!(
        q(&mem["requestPolicy"]["default"]),
        16 * GIB,
        "no memory asked: the whole GPU"
    );
    assert_eq!(q(&mem["requestPolicy"]["validRange"]["step"]), 256 << 20);
    assert_eq!(q(&mem["requestPolicy"]["validRange"]["max"]), 16 * GIB);
    let shares_cap = &d["capacity"]["shares"];
    assert_eq!(q(&shares_cap["value"]), 100);
    assert_eq!(q(&shares_cap["requestPolicy"]["default"]), 1);
    assert_eq!(
        api.slices_of("node-2").len(),
        1,
        "another node's slice is left alone"
    );

    // Two claims share the GPU: 6 GiB weight 3 for `train`, 2 GiB weight 1 (latency class,
    // from the DeviceClass's config) for `serve`.
    let (ua, ub) = (
        "a1a1a1a1-0000-4000-8000-000000000001",
        "b2b2b2b2-0000-4000-8000-000000000002",
    );
    api.put_claim(claim(
        "train-gpu",
        ua,
        &device,
        "6Gi",
        "3",
        "train",
        json!([]),
    ));
    let latency = json!({"source": "FromClass", "opaque": {"driver": DRIVER_NAME, "parameters":
        {"apiVersion": "gpu.gpumux.dev/v1alpha1", "kind": "GpuConfig", "priority": "latency"}}});
    api.put_claim(claim(
        "serve-gpu",
        ub,
        &device,
        "2Gi",
        "1",
        "serve",
        json!([latency]),
    ));
    let both = [("default", "train-gpu", ua), ("default", "serve-gpu", ub)];
    let prepared = kubelet.prepare(&rt, &both);
    let ids = |uid: &str| -> Vec<String> {
        let devs = prepared[uid]
            .as_ref()
            .unwrap_or_else(|e| panic!("prepare {uid}: {e}"));
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].0, device);
        assert_eq!(
            devs[0].2.as_deref(),
            Some(format!("{uid}-share").as_str()),
            "share ID back"
        );
        devs[0].1.clone()
    };
    let (ta, tb) = ("default.train-gpu-a1a1a1a1", "default.serve-gpu-b2b2b2b2");
    assert_eq!(ids(ua), [format!("gpumux.dev/tenant={ta}")]);
    assert_eq!(ids(ub), [format!("gpumux.dev/tenant={tb}")]);

    // Two tenants: quota files as gpumuxd reads them, status naming the pods.
    let qa = TenantQuota::load(&g.tenants_dir.join(format!("{ta}.toml"))).unwrap();
    assert_eq!(
        (qa.memory_limit, qa.weight, qa.priority),
        (6 * GIB, 3, Priority::Normal)
    );
    let qb = TenantQuota::load(&g.tenants_dir.join(format!("{tb}.toml"))).unwrap();
    assert_eq!(
        (qb.memory_limit, qb.weight, qb.priority),
        (2 * GIB, 1, Priority::Latency)
    );
    g.wait_for_socket(ta);
    g.wait_for_socket(tb);
    let st = g.tenant_status(ta);
    assert_eq!(
        st["owner"],
        json!({"namespace": "default", "pod": "train", "claim": "train-gpu"})
    );
    assert_eq!(g.tenant_status(tb)["priority"], "latency");

    // A workload started with the CDI device's env is held to 6 GiB.
    let cdi = root.join("cdi");
    let da = cdi_device(&cdi, &format!("gpumux.dev/tenant={ta}"));
    let db = cdi_device(&cdi, &format!("gpumux.dev/tenant={tb}"));
    assert_eq!(da.annotations["gpumux.dev/pod"], "train");
    let nodes: Vec<&str> = da
        .container_edits
        .device_nodes
        .iter()
        .map(|n| n.path.as_str())
        .collect();
    assert_eq!(nodes, ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"]);
    assert!(
        da.container_edits
            .env
            .contains(&format!("NVIDIA_VISIBLE_DEVICES={uuid}"))
    );
    let out = run(
        cdi_command(&g, &da, &c_workload()).args(["ops", "meminfo alloc:big:7GiB alloc:fits:5GiB"]),
        T,
    )
    .expect("run workload");
    out.assert_success();
    assert_eq!(
        u(out.lines.one("meminfo"), "total"),
        6 * GIB,
        "total = consumed memory"
    );
    assert_eq!(
        i(out.lines.named("alloc", "big"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY
    );
    assert_eq!(i(out.lines.named("alloc", "fits"), "result"), CUDA_SUCCESS);

    // Beside the other, it gets ~75% of the device (3 shares of 4), measured on the fake's
    // ground truth. The tolerance is the time-slicing tests' plus a little: 3:1 against the
    // 1:1 of no weights is 0.75 against 0.5.
    let load = |d: &gpumux_daemon::cdi::Device| {
        let mut r = Running::spawn(
            cdi_command(&g, d, &c_workload())
                .arg("load")
                .args(["--seconds", "12"])
                .args(SATURATE),
        )
        .expect("spawn a load");
        r.wait_for("load-start", Duration::from_secs(60))
            .expect("load started");
        r
    };
    let (la, lb) = (load(&da), load(&db));
    std::thread::sleep(Duration::from_millis(500));
    let s = g.device_shares(&[vec![la.pid()], vec![lb.pid()]], Duration::from_secs(8));
    let total = s[0] + s[1];
    eprintln!(
        "DRA tenants: train {:.3}, serve {:.3}, device busy {total:.3}",
        s[0], s[1]
    );
    assert!(
        (s[0] / total - 0.75).abs() <= 0.05,
        "train (3 shares) got {:.3} of device time beside serve (1 share), want 0.75",
        s[0] / total
    );
    for r in [la, lb] {
        let (status, lines) = r.finish(Duration::from_secs(60)).unwrap();
        assert!(status.success());
        assert_eq!(i(lines.one("load"), "result"), 0);
    }

    // Kubelet restart: it wipes the node's slices and registers the driver again; the driver
    // publishes again, and preparing the claims again answers the same.
    kubelet.restart(&api);
    assert_eq!(kubelet.register(&rt, &|| dlog(&driver)), v1::SERVICE);
    wait_until(
        T,
        || api.slices_of(NODE).len() == 1,
        || format!("slice not republished; log:\n{}", dlog(&driver)),
    );
    let again = kubelet.prepare(&rt, &both);
    assert_eq!(again[ua].as_ref().unwrap()[0].1, ids(ua));

    // Driver restart (SIGKILL): it serves a fresh socket, the kubelet registers it again, and
    // it knows its tenants: same tenants, none duplicated.
    driver.kill();
    let mut driver = DriverProcess::spawn(&g, &root);
    std::thread::sleep(Duration::from_millis(300));
    kubelet.restart(&api);
    assert_eq!(kubelet.register(&rt, &|| dlog(&driver)), v1::SERVICE);
    let mut known = state_claims(&root);
    known.sort();
    assert_eq!(known, [ua, ub]);
    let again = kubelet.prepare(&rt, &both);
    assert_eq!(again[ub].as_ref().unwrap()[0].1, ids(ub));
    assert_eq!(
        plugin_quota_files(&g.tenants_dir),
        [format!("{tb}.toml"), format!("{ta}.toml")]
    );
    assert_eq!(std::fs::read_dir(&cdi).unwrap().count(), 2);
    wait_until(
        T,
        || api.slices_of(NODE).len() == 1,
        || format!("slice; log:\n{}", dlog(&driver)),
    );
    assert_eq!(api.slices_of(NODE).len(), 1, "one slice, not one per start");

    // An invalid claim config: a clear error for that claim only, nothing created.
    let uc = "c3c3c3c3-0000-4000-8000-000000000003";
    api.put_claim(claim("bad-gpu", uc, &device, "1Gi", "1", "bad", json!([gpu_config(
        json!({"apiVersion": "gpu.gpumux.dev/v1alpha1", "kind": "GpuConfig", "priority": "urgent"}))])));
    let r = kubelet.prepare(&rt, &[("default", "bad-gpu", uc), both[0]]);
    let err = r[uc].as_ref().unwrap_err();
    assert!(
        err.contains("ResourceClaim default/bad-gpu")
            && err
                .contains("priority = \"urgent\" is not one of \"latency\", \"normal\", \"batch\""),
        "{err}"
    );
    assert!(r[ua].is_ok(), "the other claim in the call is prepared");
    assert_eq!(
        plugin_quota_files(&g.tenants_dir).len(),
        2,
        "no tenant for the bad claim"
    );
    // A claim the API server does not know.
    let r = kubelet.prepare(&rt, &[("default", "gone", "d4d4d4d4-0000")]);
    assert!(
        r["d4d4d4d4-0000"]
            .as_ref()
            .unwrap_err()
            .contains("not found"),
        "{r:?}"
    );

    // Unprepare: tenants removed (quota files, CDI specs), then forgotten once gpumuxd dropped
    // their sockets; unpreparing again is fine.
    let r = kubelet.unprepare(&rt, &both);
    assert!(r.values().all(String::is_empty), "{r:?}");
    assert!(plugin_quota_files(&g.tenants_dir).is_empty());
    assert_eq!(std::fs::read_dir(&cdi).unwrap().count(), 0);
    wait_until(
        T,
        || !g.socket(ta).exists() && !g.socket(tb).exists(),
        || format!("gpumuxd kept the sockets; log:\n{}", dlog(&driver)),
    );
    wait_until(
        T,
        || {
            std::fs::read_to_string(root.join("dra-state/claims.json"))
                .unwrap()
                .contains("\"claims\": {}")
        },
        || format!("claims not forgotten; log:\n{}", dlog(&driver)),
    );
    let r = kubelet.unprepare(&rt, &both);
    assert!(r.values().all(String::is_empty), "{r:?}");

    // The API server saw only this node's identity write this node's slices.
    assert!(
        api.log()
            .iter()
            .any(|l| l.starts_with("GET /apis/resource.k8s.io/v1/resourceslices?"))
    );

    // SIGTERM: clean exit, sockets removed (the kubelet then knows the driver is gone).
    let st = driver.terminate();
    assert!(st.success(), "{st:?}; log:\n{}", driver.log());
    assert!(!kubelet.reg_socket().exists());
    assert!(!Path::new(&info.endpoint).exists());
}

/// A scripted NVML: which GPUs it lists right now.
struct Scripted(Mutex<Result<Vec<GpuInfo>, NvmlError>>);

impl DeviceSource for Scripted {
    fn probe(&self) -> Result<Vec<GpuInfo>, NvmlError> {
        self.0.lock().unwrap().clone()
    }
}

fn gpu(index: u32) -> GpuInfo {
    GpuInfo {
        index,
        uuid: fakegpu::device_uuid_string(index),
        name: "gpumux Fake GPU".into(),
        minor: Some(index),
        total_memory: 8 * GIB,
        healthy: true,
        compute_capability: Some((9, 0)),
        driver_version: Some("575.51.03".into()),
    }
}

/// The slice follows the GPUs (one disappears, NVML fails, they come back) and is
/// republished when someone deletes it; a kubelet that only speaks `v1beta1` gets the
/// `v1beta1` service.
#[test]
fn slices_follow_the_gpus_and_v1beta1_kubelets_are_served() {
    let _serial = exclusive();
    // Another test of this binary may have installed it already.
    tracing_subscriber::fmt()
        .with_env_filter("debug,h2=info,hyper=info,tower=info,kube=info,rustls=info")
        .with_test_writer()
        .try_init()
        .ok();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let api = FakeApiServer::start();
    api.add_token(TOKEN, NODE);
    std::fs::write(root.join("kubeconfig"), api.kubeconfig(TOKEN)).unwrap();
    std::fs::write(root.join("libgpumux.so"), b"").unwrap();
    let source = Arc::new(Scripted(Mutex::new(Ok(vec![gpu(0), gpu(1)]))));
    let cfg = DriverConfig {
        driver_name: DRIVER_NAME.into(),
        node_name: NODE.into(),
        registry_dir: root.join("plugins_registry"),
        plugin_dir: root.join("plugins").join(DRIVER_NAME),
        kubeconfig: Some(root.join("kubeconfig")),
        state_dir: root.join("dra-state"),
        tenants_dir: root.join("tenants.d"),
        gpumux_state_dir: root.join("run"),
        cdi_dir: root.join("cdi"),
        shim_path: root.join("libgpumux.so"),
        dev_root: root.join("dev"),
        shares_per_gpu: 10,
        memory_granularity: 1 << 30,
        health_interval: Duration::from_millis(20),
        resync_interval: Duration::from_millis(200),
        watch_interval: Duration::from_millis(20),
        socket_wait: Duration::ZERO,
    };
    let (stop, stop_rx) = watch::channel(false);
    let driver = rt.spawn(gpumux_dra::run::run(cfg, source.clone(), stop_rx));
    let no_log = || String::new();

    let devices = || -> Vec<String> {
        let s = api.slices_of(NODE);
        s.iter()
            .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
            .map(|d| {
                d["attributes"]["uuid"]["string"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let generation = || {
        api.slices_of(NODE)[0]["spec"]["pool"]["generation"]
            .as_i64()
            .unwrap()
    };
    let (a, b) = (
        fakegpu::device_uuid_string(0),
        fakegpu::device_uuid_string(1),
    );
    wait_until(
        T,
        || devices() == [a.clone(), b.clone()],
        || format!("{:?}", api.slices_of(NODE)),
    );
    let g0 = generation();
    let s = &api.slices_of(NODE)[0];
    let d = slice_device(s, &a);
    assert_eq!(q(&d["capacity"]["shares"]["value"]), 10);
    assert_eq!(
        q(&d["capacity"]["memory"]["requestPolicy"]["validRange"]["step"]),
        GIB
    );

    // A GPU disappears: the slice is updated (next pool generation) without it.
    *source.0.lock().unwrap() = Ok(vec![gpu(0)]);
    wait_until(
        T,
        || devices() == [a.clone()],
        || format!("{:?}", api.slices_of(NODE)),
    );
    assert!(generation() > g0);
    // NVML fails: nothing is published; it works again: both are back.
    *source.0.lock().unwrap() = Err(NvmlError::Call {
        call: "nvmlDeviceGetCount_v2",
        code: 999,
    });
    wait_until(
        T,
        || devices().is_empty(),
        || format!("{:?}", api.slices_of(NODE)),
    );
    assert_eq!(
        api.slices_of(NODE).len(),
        1,
        "an empty pool, still published"
    );
    *source.0.lock().unwrap() = Ok(vec![gpu(0), gpu(1)]);
    wait_until(
        T,
        || devices() == [a.clone(), b.clone()],
        || format!("{:?}", api.slices_of(NODE)),
    );

    // Someone deletes the slice: it comes back within the resync interval.
    api.wipe(NODE);
    wait_until(
        T,
        || devices().len() == 2,
        || format!("{:?}", api.slices_of(NODE)),
    );

    // A v1beta1-only kubelet.
    let mut kubelet = FakeKubelet::new(&root.join("plugins_registry"), vec![v1beta1::SERVICE]);
    assert_eq!(kubelet.register(&rt, &no_log), v1beta1::SERVICE);
    let device = format!("gpu-{}", b.trim_start_matches("GPU-"));
    let uid = "e5e5e5e5-0000-4000-8000-000000000005";
    api.put_claim(claim("beta-gpu", uid, &device, "3Gi", "2", "beta", json!([gpu_config(
        json!({"apiVersion": "gpu.gpumux.dev/v1alpha1", "kind": "GpuConfig", "computeLimit": "40%"}))])));
    let r = kubelet.prepare(&rt, &[("default", "beta-gpu", uid)]);
    let devs = r[uid].as_ref().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(devs[0].0, device);
    let tenant = "default.beta-gpu-e5e5e5e5";
    assert_eq!(devs[0].1, [format!("gpumux.dev/tenant={tenant}")]);
    let tq = TenantQuota::load(&root.join("tenants.d").join(format!("{tenant}.toml"))).unwrap();
    assert_eq!(
        (tq.memory_limit, tq.weight, tq.compute_limit_permille),
        (3 * GIB, 2, Some(400))
    );
    assert_eq!(
        tq.devices,
        [gpumux_common::config::DeviceSelector::Uuid(b.clone())]
    );
    let r = kubelet.unprepare(&rt, &[("default", "beta-gpu", uid)]);
    assert_eq!(r[uid], "");
    assert!(
        !root
            .join("tenants.d")
            .join(format!("{tenant}.toml"))
            .exists()
    );

    // The driver's sockets removed by someone: served again and found again.
    std::fs::remove_file(kubelet.reg_socket()).unwrap();
    assert_eq!(kubelet.register(&rt, &no_log), v1beta1::SERVICE);

    // Fails only if the driver stopped already: what it returned is checked next.
    stop.send(true).ok();
    rt.block_on(async { tokio::time::timeout(T, driver).await })
        .expect("driver stops")
        .expect("driver task")
        .expect("driver run");
    assert!(!kubelet.reg_socket().exists());
}
