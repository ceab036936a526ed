//! The device plugin against a fake kubelet that speaks the real protocols (device plugin API
//! `v1beta1`: `Registration` on `kubelet.sock`, the plugin's `DevicePlugin` service; pod
//! resources API `v1`: `List`) over Unix sockets, with the real gpumuxd and shim on the fake
//! GPU.
//!
//! Run after `cargo build --workspace` (gpumuxd, libgpumux.so and the fake drivers are found
//! in this test binary's target directory; cargo builds the plugin binary itself).

use gpumux_common::config::{DeviceSelector, TenantQuota};
use gpumux_common::nvml::{DeviceSource, GpuInfo, NvmlError};
use gpumux_integration::gpumux::{Gpumux, artifact, wait_until};
use gpumux_integration::workloads::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, GIB, c_workload, i, run, u,
};
use gpumux_k8s::api::v1::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use gpumux_k8s::api::v1::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use gpumux_k8s::api::v1beta1::device_plugin_client::DevicePluginClient;
use gpumux_k8s::api::v1beta1::registration_server::{Registration, RegistrationServer};
use gpumux_k8s::api::v1beta1::{
    self, AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, Empty, ListAndWatchResponse, PreferredAllocationRequest,
    RegisterRequest,
};
use gpumux_k8s::config::PluginConfig;
use gpumux_k8s::shares::tenant_name;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

const RESOURCE: &str = "gpumux.dev/gpu-share";
const ENDPOINT: &str = "gpumux-gpu-share.sock";
const T: Duration = Duration::from_secs(20);

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

#[derive(Clone)]
struct Registrar(mpsc::UnboundedSender<RegisterRequest>);

#[tonic::async_trait]
impl Registration for Registrar {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        // What the kubelet checks before it accepts a plugin.
        if r.version != v1beta1::VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported version {}",
                r.version
            )));
        }
        if r.endpoint.is_empty() || r.endpoint.contains('/') {
            return Err(Status::invalid_argument("bad endpoint"));
        }
        self.0.send(r).ok();
        Ok(Response::new(Empty {}))
    }
}

#[derive(Clone, Default)]
struct Lister(Arc<Mutex<Vec<PodResources>>>);

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: self.0.lock().unwrap().clone(),
        }))
    }
    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn get(
        &self,
        _: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// `kubelet.sock` (Registration) in the device plugin directory and the pod resources socket.
struct FakeKubelet {
    dir: PathBuf,
    pod_resources_socket: PathBuf,
    registered: mpsc::UnboundedReceiver<RegisterRequest>,
    reg_tx: mpsc::UnboundedSender<RegisterRequest>,
    reg_stop: Option<watch::Sender<bool>>,
    pods: Lister,
    _podres_stop: watch::Sender<bool>,
}

impl FakeKubelet {
    fn start(rt: &Runtime, root: &Path) -> FakeKubelet {
        let dir = root.join("kubelet/device-plugins");
        let podres_dir = root.join("kubelet/pod-resources");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&podres_dir).unwrap();
        let pod_resources_socket = podres_dir.join("kubelet.sock");
        let (reg_tx, registered) = mpsc::unbounded_channel();
        let pods = Lister::default();
        let (podres_stop, rx) = watch::channel(false);
        let _guard = rt.enter();
        let listener = UnixListener::bind(&pod_resources_socket).unwrap();
        rt.spawn(gpumux_k8s::kubelet::serve(
            listener,
            PodResourcesListerServer::new(pods.clone()),
            rx,
        ));
        let mut k = FakeKubelet {
            dir,
            pod_resources_socket,
            registered,
            reg_tx,
            reg_stop: None,
            pods,
            _podres_stop: podres_stop,
        };
        k.start_registration(rt);
        k
    }

    fn start_registration(&mut self, rt: &Runtime) {
        let _guard = rt.enter();
        let listener = UnixListener::bind(self.dir.join(v1beta1::KUBELET_SOCKET)).unwrap();
        let (stop, rx) = watch::channel(false);
        rt.spawn(gpumux_k8s::kubelet::serve(
            listener,
            RegistrationServer::new(Registrar(self.reg_tx.clone())),
            rx,
        ));
        self.reg_stop = Some(stop);
    }

    /// What a kubelet restart does to the directory: its socket goes away, every plugin socket
    /// is removed (unless `keep_plugin_sockets`), and a new `kubelet.sock` appears.
    fn restart(&mut self, rt: &Runtime, keep_plugin_sockets: bool) {
        if let Some(stop) = self.reg_stop.take() {
            stop.send(true).ok();
        }
        let kubelet_sock = self.dir.join(v1beta1::KUBELET_SOCKET);
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let path = e.unwrap().path();
            if !keep_plugin_sockets || path == kubelet_sock {
                std::fs::remove_file(path).unwrap();
            }
        }
        self.start_registration(rt);
    }

    fn next_registration(&mut self, rt: &Runtime, log: &dyn Fn() -> String) -> RegisterRequest {
        rt.block_on(async {
            tokio::time::timeout(T, self.registered.recv())
                .await
                .unwrap_or_else(|_| panic!("no registration within {T:?}; plugin log:\n{}", log()))
                .expect("registration channel open")
        })
    }

    fn set_pods(&self, pods: Vec<PodResources>) {
        *self.pods.0.lock().unwrap() = pods;
    }

    fn plugin_client(&self, rt: &Runtime, endpoint: &str) -> DevicePluginClient<Channel> {
        let ch = rt
            .block_on(gpumux_k8s::kubelet::connect(&self.dir.join(endpoint)))
            .expect("connect to the plugin");
        DevicePluginClient::new(ch)
    }
}

fn pod(name: &str, container: &str, ids: &[String]) -> PodResources {
    PodResources {
        name: name.into(),
        namespace: "default".into(),
        containers: vec![ContainerResources {
            name: container.into(),
            devices: vec![ContainerDevices {
                resource_name: RESOURCE.into(),
                device_ids: ids.to_vec(),
                topology: None,
            }],
            ..Default::default()
        }],
    }
}

fn next_list(
    rt: &Runtime,
    stream: &mut Streaming<ListAndWatchResponse>,
    log: &dyn Fn() -> String,
) -> ListAndWatchResponse {
    rt.block_on(async { tokio::time::timeout(T, stream.message()).await })
        .unwrap_or_else(|_| panic!("no ListAndWatch message within {T:?}; log:\n{}", log()))
        .expect("ListAndWatch stream")
        .expect("ListAndWatch ended")
}

fn list_and_watch(
    rt: &Runtime,
    client: &mut DevicePluginClient<Channel>,
) -> Streaming<ListAndWatchResponse> {
    rt.block_on(client.list_and_watch(Empty {}))
        .expect("ListAndWatch")
        .into_inner()
}

fn allocate(
    rt: &Runtime,
    client: &mut DevicePluginClient<Channel>,
    ids: &[String],
) -> Result<ContainerAllocateResponse, Status> {
    let r = rt.block_on(client.allocate(AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: ids.to_vec(),
        }],
    }))?;
    let mut r = r.into_inner();
    assert_eq!(r.container_responses.len(), 1);
    Ok(r.container_responses.remove(0))
}

/// Where a container path lands on the host, through the response's mounts (as the runtime
/// would bind them).
fn host_path(resp: &ContainerAllocateResponse, container_path: &str) -> PathBuf {
    let m = resp
        .mounts
        .iter()
        .filter(|m| {
            container_path == m.container_path
                || container_path.starts_with(&format!("{}/", m.container_path))
        })
        .max_by_key(|m| m.container_path.len())
        .unwrap_or_else(|| panic!("{container_path} is under no mount of {resp:?}"));
    let rest = &container_path[m.container_path.len()..];
    if rest.is_empty() {
        PathBuf::from(&m.host_path)
    } else {
        Path::new(&m.host_path).join(rest.trim_start_matches('/'))
    }
}

// ---------------------------------------------------------------------------------------
// The plugin process
// ---------------------------------------------------------------------------------------

struct PluginProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl PluginProcess {
    fn spawn(g: &Gpumux, kubelet: &FakeKubelet, root: &Path, shares: u32) -> PluginProcess {
        let log = root.join("device-plugin.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd: Command = g.gpu.command(env!("CARGO_BIN_EXE_gpumux-device-plugin"));
        cmd.arg("--shares-per-gpu")
            .arg(shares.to_string())
            .arg("--kubelet-dir")
            .arg(&kubelet.dir)
            .arg("--pod-resources-socket")
            .arg(&kubelet.pod_resources_socket)
            .arg("--gpumux-config")
            .arg(&g.config_path)
            .arg("--state-dir")
            .arg(root.join("plugin-state"))
            .arg("--shim-path")
            .arg(artifact("libgpumux.so"))
            .arg("--dev-root")
            .arg(root.join("dev"))
            .args(["--gc-interval", "200ms", "--gc-grace", "2s"])
            .args(["--health-interval", "200ms", "--watch-interval", "50ms"])
            .args(["--socket-wait", "5s"])
            .env("GPUMUX_LOG", "debug,h2=info,tower=info,hyper=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        PluginProcess {
            child: Some(cmd.spawn().expect("spawn gpumux-device-plugin")),
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
        let mut c = self.child.take().expect("plugin running");
        // SAFETY: sending SIGTERM to our own child process, which has not been reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if std::time::Instant::now() > deadline {
                c.kill().ok();
                panic!("plugin ignored SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn quota_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    v.sort();
    v
}

fn state_tenants(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("plugin-state/tenants.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["tenants"].as_object().unwrap().keys().cloned().collect()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Registration, the share list, Allocate → a tenant the real daemon and shim hold to k/N of
/// the GPU, kubelet restart → re-registration, plugin restart → same tenant (no duplicate),
/// pod gone → tenant gone, SIGTERM → clean exit with tenants kept.
#[test]
fn shares_become_tenants_held_to_their_quota() {
    let rt = runtime();
    let g = Gpumux::start(&[16 * GIB], &[]);
    let root = g.dir.path().to_path_buf();
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    for node in ["nvidia0", "nvidiactl", "nvidia-uvm"] {
        std::fs::write(dev.join(node), b"").unwrap();
    }
    let mut kubelet = FakeKubelet::start(&rt, &root);
    let mut plugin = PluginProcess::spawn(&g, &kubelet, &root, 4);
    let plog = |p: &PluginProcess| format!("{}\ngpumuxd:\n{}", p.log(), g.log());

    // Registration.
    let reg = kubelet.next_registration(&rt, &|| plog(&plugin));
    assert_eq!(reg.version, "v1beta1");
    assert_eq!(reg.resource_name, RESOURCE);
    assert_eq!(reg.endpoint, ENDPOINT);
    assert!(reg.options.unwrap().get_preferred_allocation_available);

    // 1 GPU x 4 shares, healthy.
    let mut client = kubelet.plugin_client(&rt, &reg.endpoint);
    let opts = rt
        .block_on(client.get_device_plugin_options(Empty {}))
        .unwrap()
        .into_inner();
    assert!(!opts.pre_start_required && opts.get_preferred_allocation_available);
    let mut stream = list_and_watch(&rt, &mut client);
    let list = next_list(&rt, &mut stream, &|| plog(&plugin));
    let uuid = fakegpu::device_uuid_string(0);
    let ids: Vec<String> = (0..4).map(|i| format!("{uuid}::{i}")).collect();
    assert_eq!(
        list.devices
            .iter()
            .map(|d| d.id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert!(list.devices.iter().all(|d| d.health == v1beta1::HEALTHY));

    // The kubelet asks where 2 shares should come from, then allocates them.
    let pref = rt
        .block_on(client.get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: ids.iter().rev().cloned().collect(),
                must_include_device_i_ds: vec![],
                allocation_size: 2,
            }],
        }))
        .unwrap()
        .into_inner();
    assert_eq!(pref.container_responses[0].device_i_ds, ids[..2].to_vec());
    let mine = ids[..2].to_vec();
    // The kubelet records the allocation right after Allocate returns; recording it first
    // keeps the test independent of the collector's timing (--gc-grace covers the gap).
    kubelet.set_pods(vec![pod("train", "main", &mine)]);
    let resp = allocate(&rt, &mut client, &mine).expect("Allocate");

    // Env, mounts, devices.
    let tenant = tenant_name(&mine);
    assert_eq!(resp.envs["LD_PRELOAD"], "/usr/lib/gpumux/libgpumux.so");
    assert_eq!(
        resp.envs["GPUMUX_SOCKET"],
        format!("/run/gpumux/tenants/{tenant}/gpumux.sock")
    );
    assert_eq!(resp.envs["NVIDIA_VISIBLE_DEVICES"], uuid);
    assert_eq!(resp.annotations["gpumux.dev/tenant"], tenant);
    let shim = resp
        .mounts
        .iter()
        .find(|m| m.container_path == "/usr/lib/gpumux/libgpumux.so")
        .expect("shim mount");
    assert!(shim.read_only);
    assert_eq!(Path::new(&shim.host_path), artifact("libgpumux.so"));
    let tdir = resp
        .mounts
        .iter()
        .find(|m| m.container_path == format!("/run/gpumux/tenants/{tenant}"))
        .expect("tenant dir mount");
    assert_eq!(
        Path::new(&tdir.host_path),
        g.state_dir.join("tenants").join(&tenant)
    );
    let devices: Vec<(String, String, String)> = resp
        .devices
        .iter()
        .map(|d| {
            (
                d.container_path.clone(),
                d.host_path.clone(),
                d.permissions.clone(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = ["nvidia0", "nvidiactl", "nvidia-uvm"]
        .iter()
        .map(|n| (format!("/dev/{n}"), format!("/dev/{n}"), "rw".to_string()))
        .collect();
    assert_eq!(devices, want, "only the device nodes that exist");

    // The quota file: 2/4 of 16 GiB, weight 2, this GPU only.
    let quota_path = g.tenants_dir.join(format!("{tenant}.toml"));
    let q = TenantQuota::load(&quota_path).expect("quota file");
    assert_eq!(q.memory_limit, 8 * GIB);
    assert_eq!(q.weight, 2);
    assert_eq!(q.devices, vec![DeviceSelector::Uuid(uuid.clone())]);

    // A workload started with the container's env (paths resolved through the mounts) is held
    // to the tenant's quota by the real daemon and shim.
    g.wait_for_socket(&tenant);
    let mut cmd = g.gpu.command(c_workload());
    for key in ["LD_PRELOAD", "GPUMUX_SOCKET"] {
        cmd.env(key, host_path(&resp, &resp.envs[key]));
    }
    cmd.args(["ops", "meminfo alloc:big:9GiB alloc:fits:7GiB"]);
    let out = run(&mut cmd, T).expect("run workload");
    out.assert_success();
    assert_eq!(
        u(out.lines.one("meminfo"), "total"),
        8 * GIB,
        "total = quota"
    );
    assert_eq!(
        i(out.lines.named("alloc", "big"), "result"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "9 GiB exceeds 2 of 4 shares of 16 GiB"
    );
    assert_eq!(
        i(out.lines.named("alloc", "fits"), "result"),
        CUDA_SUCCESS,
        "7 GiB fits"
    );

    // The collector learns from the pod resources API which container holds the shares: the
    // tenant's quota file, status and metrics name the pod.
    wait_until(
        T,
        || {
            g.tenant_status(&tenant)["owner"]
                == serde_json::json!({"namespace": "default", "pod": "train", "container": "main"})
        },
        || {
            format!(
                "owner not in status: {}; log:\n{}",
                g.tenant_status(&tenant),
                plog(&plugin)
            )
        },
    );
    assert_eq!(g.tenant_status(&tenant)["priority"], "normal");
    let q = TenantQuota::load(&quota_path).expect("quota file with owner");
    assert_eq!((q.memory_limit, q.weight), (8 * GIB, 2), "limits unchanged");

    // Kubelet restart: sockets wiped, kubelet.sock recreated → the plugin registers again and
    // serves a fresh socket.
    drop(stream);
    drop(client);
    kubelet.restart(&rt, false);
    let reg = kubelet.next_registration(&rt, &|| plog(&plugin));
    assert_eq!(reg.resource_name, RESOURCE);
    let mut client = kubelet.plugin_client(&rt, &reg.endpoint);
    let mut stream = list_and_watch(&rt, &mut client);
    assert_eq!(
        next_list(&rt, &mut stream, &|| plog(&plugin)).devices.len(),
        4
    );
    drop(stream);
    drop(client);

    // Plugin restart (SIGKILL): it registers again and knows its tenant; a repeated Allocate
    // of the same shares gives the same tenant, no second file.
    plugin.kill();
    let mut plugin = PluginProcess::spawn(&g, &kubelet, &root, 4);
    let reg = kubelet.next_registration(&rt, &|| plog(&plugin));
    assert_eq!(state_tenants(&root), vec![tenant.clone()]);
    let mut client = kubelet.plugin_client(&rt, &reg.endpoint);
    let again = allocate(&rt, &mut client, &mine).expect("Allocate again");
    assert_eq!(again.envs["GPUMUX_SOCKET"], resp.envs["GPUMUX_SOCKET"]);
    // Several collection rounds while the pod still holds its shares: nothing is removed.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(quota_files(&g.tenants_dir), vec![format!("{tenant}.toml")]);
    assert_eq!(state_tenants(&root), vec![tenant.clone()]);

    // Bad allocations are refused with the reason.
    let err = allocate(&rt, &mut client, &["GPU-nope::0".to_string()]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // Pod deleted: the pod resources API no longer lists the container → tenant removed
    // (quota file, then, once the daemon dropped the socket, the plugin's record).
    g.write_tenant("team-a", "memory_limit = \"1GiB\"\n");
    kubelet.set_pods(vec![]);
    wait_until(
        T,
        || !quota_path.exists(),
        || format!("quota file still there; log:\n{}", plog(&plugin)),
    );
    wait_until(
        T,
        || state_tenants(&root).is_empty() && !g.state_dir.join("tenants").join(&tenant).exists(),
        || format!("tenant not forgotten; log:\n{}", plog(&plugin)),
    );
    assert_eq!(
        quota_files(&g.tenants_dir),
        vec!["team-a.toml".to_string()],
        "a file the plugin did not create is never touched"
    );

    // SIGTERM: clean exit, socket removed.
    let st = plugin.terminate();
    assert!(st.success(), "{st:?}; log:\n{}", plugin.log());
    assert!(!kubelet.dir.join(ENDPOINT).exists());
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

/// `ListAndWatch` follows GPU health: a GPU that disappears from NVML turns its shares
/// unhealthy, and healthy again when it is back; an NVML failure turns everything unhealthy.
/// The plugin also waits for a kubelet that is not up yet.
#[test]
fn list_and_watch_follows_gpu_health() {
    tracing_subscriber::fmt()
        .with_env_filter("debug,h2=info,hyper=info,tower=info")
        .with_test_writer()
        .try_init()
        .ok();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let source = Arc::new(Scripted(Mutex::new(Ok(vec![gpu(0), gpu(1)]))));
    let kubelet_dir = root.join("kubelet/device-plugins");
    std::fs::create_dir_all(&kubelet_dir).unwrap();
    let cfg = PluginConfig {
        resource_name: RESOURCE.into(),
        shares_per_gpu: 2,
        kubelet_dir: kubelet_dir.clone(),
        endpoint: ENDPOINT.into(),
        pod_resources_socket: root.join("kubelet/pod-resources/kubelet.sock"),
        state_dir: root.join("plugin-state"),
        tenants_dir: root.join("tenants.d"),
        gpumux_state_dir: root.join("run"),
        shim_path: root.join("libgpumux.so"),
        dev_root: root.join("dev"),
        health_interval: Duration::from_millis(20),
        gc_interval: Duration::from_millis(100),
        gc_grace: Duration::from_secs(60),
        watch_interval: Duration::from_millis(20),
        socket_wait: Duration::ZERO,
    };
    let (stop, stop_rx) = watch::channel(false);
    let plugin = rt.spawn(gpumux_k8s::run::run(cfg, source.clone(), stop_rx));
    // The kubelet comes up after the plugin.
    std::thread::sleep(Duration::from_millis(200));
    let mut kubelet = FakeKubelet::start(&rt, root);
    let no_log = || String::new();
    let reg = kubelet.next_registration(&rt, &no_log);
    let mut client = kubelet.plugin_client(&rt, &reg.endpoint);
    let mut stream = list_and_watch(&rt, &mut client);
    let health = |l: &ListAndWatchResponse| -> Vec<(String, String)> {
        l.devices
            .iter()
            .map(|d| (d.id.clone(), d.health.clone()))
            .collect()
    };
    let (a, b) = (
        fakegpu::device_uuid_string(0),
        fakegpu::device_uuid_string(1),
    );
    let expect = |ha: &str, hb: &str| -> Vec<(String, String)> {
        vec![
            (format!("{a}::0"), ha.into()),
            (format!("{a}::1"), ha.into()),
            (format!("{b}::0"), hb.into()),
            (format!("{b}::1"), hb.into()),
        ]
    };
    let (h, uh) = (v1beta1::HEALTHY, v1beta1::UNHEALTHY);
    assert_eq!(health(&next_list(&rt, &mut stream, &no_log)), expect(h, h));

    // No shim on this "node": Allocate refuses rather than start an unlimited container.
    let err = allocate(&rt, &mut client, &[format!("{a}::0")]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(!root.join("tenants.d").exists(), "nothing created");

    *source.0.lock().unwrap() = Ok(vec![gpu(0)]);
    assert_eq!(health(&next_list(&rt, &mut stream, &no_log)), expect(h, uh));

    *source.0.lock().unwrap() = Err(NvmlError::Call {
        call: "nvmlDeviceGetCount_v2",
        code: 999,
    });
    assert_eq!(
        health(&next_list(&rt, &mut stream, &no_log)),
        expect(uh, uh)
    );

    *source.0.lock().unwrap() = Ok(vec![gpu(0), gpu(1)]);
    assert_eq!(health(&next_list(&rt, &mut stream, &no_log)), expect(h, h));

    // A kubelet restart that only recreates kubelet.sock is noticed too.
    drop(stream);
    drop(client);
    kubelet.restart(&rt, true);
    let reg = kubelet.next_registration(&rt, &no_log);
    let mut client = kubelet.plugin_client(&rt, &reg.endpoint);
    let mut stream = list_and_watch(&rt, &mut client);
    assert_eq!(health(&next_list(&rt, &mut stream, &no_log)), expect(h, h));

    // Shutdown ends the stream and the plugin, and removes its socket.
    stop.send(true).ok();
    let ended = rt.block_on(async { tokio::time::timeout(T, stream.message()).await });
    assert!(
        matches!(ended, Ok(Ok(None)) | Ok(Err(_))),
        "stream should end: {ended:?}"
    );
    rt.block_on(async { tokio::time::timeout(T, plugin).await })
        .expect("plugin stops")
        .expect("plugin task")
        .expect("plugin run");
    assert!(!kubelet_dir.join(ENDPOINT).exists());
}
