//! The claims this driver prepared: their tenants' quota files in gpumux's `tenants_dir`, their
//! CDI specs, and the driver's record of them (a state file keyed by claim UID), so that a
//! restarted driver knows which tenants are its own and what each claim was given.
//!
//! Crash safety comes from ordering, as in the device plugin: a claim is recorded (state file
//! written atomically) before its files are written, and its files are removed before the
//! record says so. A crash in between leaves a record whose files are missing or stale, which
//! [`ClaimStore::open`] repairs at start (rewrites an active claim's files, removes a released
//! one's); never a file the driver has forgotten. Files the driver did not create are never
//! touched.
//!
//! Life of a claim: [`ClaimStore::prepare`] (idempotent: a prepared UID answers what it was
//! given); [`ClaimStore::unprepare`] removes the quota file (gpumuxd then removes the
//! tenant's socket) and the CDI spec, and marks the record released; [`ClaimStore::sweep`]
//! forgets a released claim once the daemon has dropped its socket.

use crate::claims::ClaimQuota;
use crate::config::DriverConfig;
use gpumux_common::config::TenantQuota;
use gpumux_common::names::{tenant_dir, tenant_socket};
use gpumux_daemon::cdi;
use gpumux_k8s::tenants::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// Name of the state file in the driver's state directory.
pub const STATE_FILE: &str = "claims.json";
const STATE_VERSION: u32 = 1;
/// NVIDIA control device nodes every CUDA container needs, when the host has them.
const CONTROL_NODES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

/// The store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a gpumux DRA driver state file: {reason}")]
    BadState { path: PathBuf, reason: String },
    #[error(
        "{path} exists but this driver did not create it; refusing to overwrite tenant {tenant}"
    )]
    Foreign { path: PathBuf, tenant: String },
    #[error("tenant {tenant} already stands for ResourceClaim UID {existing}")]
    Collision { tenant: String, existing: String },
    #[error("generated an invalid quota file for {tenant}: {reason}")]
    Invalid { tenant: String, reason: String },
    #[error(transparent)]
    Write(#[from] gpumux_k8s::tenants::TenantError),
    #[error("CDI spec for {tenant}: {source}")]
    Cdi {
        tenant: String,
        source: cdi::CdiError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One claim the driver prepared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// What the claim was given (its tenant, limits, devices).
    pub quota: ClaimQuota,
    /// The CDI device IDs handed to the kubelet.
    pub cdi_devices: Vec<String>,
    /// When it was prepared (Unix seconds).
    pub prepared_unix: u64,
    /// When it was unprepared (Unix seconds); the record stays until the tenant's socket is
    /// gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_unix: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    claims: BTreeMap<String, ClaimRecord>,
}

/// What the store needs to know about where things live.
#[derive(Debug, Clone)]
pub struct StorePaths {
    pub driver_name: String,
    /// The driver's state directory (holds [`STATE_FILE`]).
    pub state_dir: PathBuf,
    pub tenants_dir: PathBuf,
    pub gpumux_state_dir: PathBuf,
    pub cdi_dir: PathBuf,
    pub shim_path: PathBuf,
    pub dev_root: PathBuf,
}

impl From<&DriverConfig> for StorePaths {
    fn from(c: &DriverConfig) -> StorePaths {
        StorePaths {
            driver_name: c.driver_name.clone(),
            state_dir: c.state_dir.clone(),
            tenants_dir: c.tenants_dir.clone(),
            gpumux_state_dir: c.gpumux_state_dir.clone(),
            cdi_dir: c.cdi_dir.clone(),
            shim_path: c.shim_path.clone(),
            dev_root: c.dev_root.clone(),
        }
    }
}

/// The prepared claims; safe to share between tasks (one lock around each operation).
#[derive(Debug)]
pub struct ClaimStore {
    paths: StorePaths,
    state: Mutex<BTreeMap<String, ClaimRecord>>,
}

/// What [`ClaimStore::open`] found and repaired.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Prepared claims whose files were rewritten.
    pub repaired: Vec<String>,
    /// Prepared claims, by tenant.
    pub active: Vec<String>,
}

impl ClaimStore {
    /// Opens (or starts) the state file and brings the files in line with it. A state file
    /// that cannot be parsed is an error: the driver would otherwise forget tenants.
    pub fn open(paths: StorePaths) -> Result<(ClaimStore, Recovered), StoreError> {
        std::fs::create_dir_all(&paths.state_dir).map_err(io(&paths.state_dir))?;
        let file = paths.state_dir.join(STATE_FILE);
        let claims = match std::fs::read(&file) {
            Ok(bytes) => {
                let s: StateFile =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::BadState {
                        path: file.clone(),
                        reason: e.to_string(),
                    })?;
                if s.version != STATE_VERSION {
                    return Err(StoreError::BadState {
                        path: file,
                        reason: format!("unsupported version {}", s.version),
                    });
                }
                s.claims
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(&file)(e)),
        };
        let store = ClaimStore {
            paths,
            state: Mutex::new(claims),
        };
        let mut rec = Recovered::default();
        for (_, r) in store.records() {
            if r.released_unix.is_some() {
                store.remove_files(&r.quota.tenant)?;
            } else {
                if store.write_files(&r)? {
                    rec.repaired.push(r.quota.tenant.clone());
                }
                rec.active.push(r.quota.tenant.clone());
            }
        }
        Ok((store, rec))
    }

    /// The records, by claim UID.
    pub fn records(&self) -> BTreeMap<String, ClaimRecord> {
        self.lock().clone()
    }

    /// A prepared (not released) claim's record.
    pub fn prepared(&self, uid: &str) -> Option<ClaimRecord> {
        self.lock()
            .get(uid)
            .filter(|r| r.released_unix.is_none())
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ClaimRecord>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `tenants_dir/<tenant>.toml`.
    pub fn quota_path(&self, tenant: &str) -> PathBuf {
        self.paths.tenants_dir.join(format!("{tenant}.toml"))
    }

    /// The claim's CDI spec: `cdi_dir/gpumux-dra_<tenant>.json`.
    pub fn cdi_path(&self, tenant: &str) -> PathBuf {
        self.paths.cdi_dir.join(format!("gpumux-dra_{tenant}.json"))
    }

    /// The tenant's socket on the host.
    pub fn tenant_socket(&self, tenant: &str) -> PathBuf {
        tenant_socket(&self.paths.gpumux_state_dir, tenant)
    }

    /// The CDI device ID of a tenant.
    pub fn cdi_device(tenant: &str) -> String {
        format!("{}={tenant}", cdi::CDI_KIND)
    }

    /// Makes sure the claim's tenant exists: recorded, quota file and CDI spec written,
    /// socket directory present. Idempotent: an already prepared UID gets its record back
    /// unchanged (what a claim was given does not change while it is prepared).
    pub fn prepare(&self, q: &ClaimQuota, now_unix: u64) -> Result<ClaimRecord, StoreError> {
        let mut state = self.lock();
        if let Some(r) = state.get(&q.uid).filter(|r| r.released_unix.is_none()) {
            let r = r.clone();
            drop(state);
            self.write_files(&r)?;
            return Ok(r);
        }
        if let Some((uid, _)) = state
            .iter()
            .find(|(uid, r)| **uid != q.uid && r.quota.tenant == q.tenant)
        {
            return Err(StoreError::Collision {
                tenant: q.tenant.clone(),
                existing: uid.clone(),
            });
        }
        let path = self.quota_path(&q.tenant);
        if !state.contains_key(&q.uid) && path.symlink_metadata().is_ok() {
            return Err(StoreError::Foreign {
                path,
                tenant: q.tenant.clone(),
            });
        }
        let record = ClaimRecord {
            quota: q.clone(),
            cdi_devices: vec![Self::cdi_device(&q.tenant)],
            prepared_unix: now_unix,
            released_unix: None,
        };
        // Checked before anything changes.
        self.quota_text(&record)?;
        let mut next = state.clone();
        next.insert(q.uid.clone(), record.clone());
        self.persist(&next)?;
        *state = next;
        drop(state);
        self.write_files(&record)?;
        Ok(record)
    }

    /// Removes the claim's tenant (quota file, CDI spec) and marks it released. Idempotent: an
    /// unknown or already released UID is fine. Returns the tenant it removed.
    pub fn unprepare(&self, uid: &str, now_unix: u64) -> Result<Option<String>, StoreError> {
        let mut state = self.lock();
        let Some(r) = state.get(uid).filter(|r| r.released_unix.is_none()) else {
            return Ok(None);
        };
        let tenant = r.quota.tenant.clone();
        self.remove_files(&tenant)?;
        let mut next = state.clone();
        if let Some(r) = next.get_mut(uid) {
            r.released_unix = Some(now_unix);
        }
        self.persist(&next)?;
        *state = next;
        Ok(Some(tenant))
    }

    /// Forgets released claims whose tenant socket gpumuxd has removed (and their tenant
    /// directories). Returns their tenants.
    pub fn sweep(&self) -> Result<Vec<String>, StoreError> {
        let mut state = self.lock();
        let gone: Vec<(String, String)> = state
            .iter()
            .filter(|(_, r)| r.released_unix.is_some())
            .filter(|(_, r)| {
                self.tenant_socket(&r.quota.tenant)
                    .symlink_metadata()
                    .is_err()
            })
            .map(|(uid, r)| (uid.clone(), r.quota.tenant.clone()))
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let mut next = state.clone();
        for (uid, tenant) in &gone {
            let dir = tenant_dir(&self.paths.gpumux_state_dir, tenant);
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "cannot remove tenant directory: {e}");
                }
            }
            next.remove(uid);
        }
        self.persist(&next)?;
        *state = next;
        Ok(gone.into_iter().map(|(_, t)| t).collect())
    }

    /// The quota file of a record, validated as gpumuxd will read it.
    fn quota_text(&self, r: &ClaimRecord) -> Result<String, StoreError> {
        let q = &r.quota;
        let devices: Vec<String> = q.gpus.iter().map(|u| format!("\"{u}\"")).collect();
        let mut text = format!(
            "# Managed by gpumux-dra-plugin ({driver}) for ResourceClaim {ns}/{name}\n\
             # (UID {uid}); removed when the claim is unprepared. Do not edit.\n\
             devices = [{devices}]\n\
             memory_limit = {limit}\n\
             weight = {weight}\n\
             priority = \"{priority}\"\n",
            driver = self.paths.driver_name,
            ns = q.namespace,
            name = q.name,
            uid = q.uid,
            devices = devices.join(", "),
            limit = q.memory_limit,
            weight = q.weight,
            priority = q.priority,
        );
        if let Some(p) = q.compute_limit_permille {
            text.push_str(&format!("compute_limit = \"{}.{}%\"\n", p / 10, p % 10));
        }
        text.push_str(&q.owner.to_toml());
        let path = self.quota_path(&q.tenant);
        TenantQuota::parse(&path, &q.tenant, &text).map_err(|e| StoreError::Invalid {
            tenant: q.tenant.clone(),
            reason: e.to_string(),
        })?;
        Ok(text)
    }

    /// The CDI spec of a record: one device, the tenant, with the shim and its socket
    /// (gpumuxd's CDI edits), the GPUs' device nodes and `NVIDIA_VISIBLE_DEVICES` (so the
    /// NVIDIA runtime injects the driver libraries), annotated with the pod it stands for.
    fn cdi_spec(&self, r: &ClaimRecord) -> Result<cdi::Spec, StoreError> {
        let q = &r.quota;
        let cdi_err = |source| StoreError::Cdi {
            tenant: q.tenant.clone(),
            source,
        };
        let inj = cdi::Injection {
            state_dir: self.paths.gpumux_state_dir.clone(),
            shim_path: self.paths.shim_path.clone(),
            device_nodes: Vec::new(),
        };
        let mut edits = cdi::tenant_edits(&q.tenant, &inj).map_err(cdi_err)?;
        edits
            .env
            .push(format!("NVIDIA_VISIBLE_DEVICES={}", q.gpus.join(",")));
        let mut nodes: Vec<String> = q.minors.iter().map(|m| format!("nvidia{m}")).collect();
        nodes.extend(CONTROL_NODES.iter().map(|s| s.to_string()));
        edits.device_nodes = nodes
            .into_iter()
            .filter(|n| self.paths.dev_root.join(n).exists())
            .map(|n| cdi::DeviceNode {
                path: format!("/dev/{n}"),
                host_path: None,
                permissions: None,
            })
            .collect();
        Ok(cdi::Spec {
            cdi_version: cdi::CDI_VERSION.to_string(),
            kind: cdi::CDI_KIND.to_string(),
            devices: vec![cdi::Device {
                name: q.tenant.clone(),
                annotations: cdi::owner_annotations(&q.tenant, Some(&q.owner)),
                container_edits: edits,
            }],
            container_edits: cdi::ContainerEdits::default(),
        })
    }

    /// Writes a record's files where they differ; true if anything was (re)written.
    fn write_files(&self, r: &ClaimRecord) -> Result<bool, StoreError> {
        let tenant = &r.quota.tenant;
        let mut wrote = false;
        let dir = tenant_dir(&self.paths.gpumux_state_dir, tenant);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
        let spec = cdi::to_json(&self.cdi_spec(r)?);
        let cdi_path = self.cdi_path(tenant);
        if std::fs::read_to_string(&cdi_path).ok().as_deref() != Some(spec.as_str()) {
            cdi::write_atomically(&cdi_path, &spec).map_err(|source| StoreError::Cdi {
                tenant: tenant.clone(),
                source,
            })?;
            wrote = true;
        }
        let text = self.quota_text(r)?;
        let path = self.quota_path(tenant);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::create_dir_all(&self.paths.tenants_dir)
                .map_err(io(&self.paths.tenants_dir))?;
            write_atomic(&path, text.as_bytes(), 0o644)?;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Removes a tenant's quota file, then its CDI spec (the container keeps running; new
    /// containers cannot start in it).
    fn remove_files(&self, tenant: &str) -> Result<(), StoreError> {
        for path in [self.quota_path(tenant), self.cdi_path(tenant)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(())
    }

    fn persist(&self, claims: &BTreeMap<String, ClaimRecord>) -> Result<(), StoreError> {
        let file = StateFile {
            version: STATE_VERSION,
            claims: claims.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("state serialises");
        bytes.push(b'\n');
        let path = self.paths.state_dir.join(STATE_FILE);
        Ok(write_atomic(&path, &bytes, 0o600)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::ClaimDevice;
    use gpumux_common::config::{Priority, TenantOwner};

    struct Fixture {
        dir: tempfile::TempDir,
        paths: StorePaths,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths {
            driver_name: "gpu.gpumux.dev".into(),
            state_dir: dir.path().join("state"),
            tenants_dir: dir.path().join("tenants.d"),
            gpumux_state_dir: dir.path().join("run"),
            cdi_dir: dir.path().join("cdi"),
            shim_path: "/usr/lib/gpumux/libgpumux.so".into(),
            dev_root: dir.path().join("dev"),
        };
        std::fs::create_dir_all(&paths.dev_root).unwrap();
        for n in ["nvidia3", "nvidiactl"] {
            std::fs::write(paths.dev_root.join(n), "").unwrap();
        }
        Fixture { dir, paths }
    }

    fn quota(uid: &str, tenant: &str) -> ClaimQuota {
        ClaimQuota {
            uid: uid.into(),
            namespace: "team-a".into(),
            name: "train-gpu".into(),
            tenant: tenant.into(),
            gpus: vec!["GPU-aaaa".into()],
            minors: vec![3],
            memory_limit: 6 << 30,
            weight: 3,
            priority: Priority::Latency,
            compute_limit_permille: Some(505),
            owner: TenantOwner {
                namespace: Some("team-a".into()),
                pod: Some("train-0".into()),
                container: None,
                claim: Some("train-gpu".into()),
            },
            devices: vec![ClaimDevice {
                request: "gpu".into(),
                pool: "node-1".into(),
                device: "gpu-aaaa".into(),
                share_id: None,
            }],
        }
    }

    fn open(f: &Fixture) -> (ClaimStore, Recovered) {
        ClaimStore::open(f.paths.clone()).unwrap()
    }

    #[test]
    fn prepare_writes_a_valid_quota_and_cdi_spec_idempotently() {
        let f = fixture();
        let (s, _) = open(&f);
        let q = quota("u1", "team-a.train-gpu-u1");
        let r = s.prepare(&q, 10).unwrap();
        assert_eq!(r.cdi_devices, ["gpumux.dev/tenant=team-a.train-gpu-u1"]);
        let t = TenantQuota::load(&s.quota_path(&q.tenant)).unwrap();
        assert_eq!(
            (t.memory_limit, t.weight, t.priority),
            (6 << 30, 3, Priority::Latency)
        );
        assert_eq!(t.compute_limit_permille, Some(505));
        assert_eq!(t.owner, Some(q.owner.clone()));
        let spec: cdi::Spec =
            serde_json::from_str(&std::fs::read_to_string(s.cdi_path(&q.tenant)).unwrap()).unwrap();
        let d = &spec.devices[0];
        assert_eq!(d.name, q.tenant);
        assert_eq!(d.annotations["gpumux.dev/pod"], "train-0");
        let nodes: Vec<&str> = d
            .container_edits
            .device_nodes
            .iter()
            .map(|n| n.path.as_str())
            .collect();
        assert_eq!(
            nodes,
            ["/dev/nvidia3", "/dev/nvidiactl"],
            "only nodes the host has"
        );
        assert!(
            d.container_edits
                .env
                .contains(&"NVIDIA_VISIBLE_DEVICES=GPU-aaaa".to_string())
        );
        assert!(
            d.container_edits
                .env
                .iter()
                .any(|e| e.starts_with("GPUMUX_SOCKET="))
        );
        assert!(
            f.paths
                .gpumux_state_dir
                .join("tenants")
                .join(&q.tenant)
                .is_dir()
        );
        // Again: same record, nothing duplicated, even with a changed view of the claim.
        let mut again = q.clone();
        again.weight = 7;
        assert_eq!(s.prepare(&again, 20).unwrap(), r);
        assert_eq!(s.records().len(), 1);
        assert_eq!(std::fs::read_dir(&f.paths.tenants_dir).unwrap().count(), 1);
    }

    #[test]
    fn unprepare_removes_then_sweep_forgets() {
        let f = fixture();
        let (s, _) = open(&f);
        let q = quota("u1", "t1");
        s.prepare(&q, 10).unwrap();
        std::fs::write(s.tenant_socket("t1"), "").unwrap(); // the daemon's socket
        assert_eq!(s.unprepare("u1", 20).unwrap().as_deref(), Some("t1"));
        assert!(!s.quota_path("t1").exists() && !s.cdi_path("t1").exists());
        assert_eq!(s.unprepare("u1", 21).unwrap(), None, "idempotent");
        assert_eq!(s.unprepare("never", 21).unwrap(), None);
        assert!(s.prepared("u1").is_none());
        assert!(s.sweep().unwrap().is_empty(), "socket still there");
        std::fs::remove_file(s.tenant_socket("t1")).unwrap();
        assert_eq!(s.sweep().unwrap(), ["t1"]);
        assert!(s.records().is_empty());
        assert!(!f.paths.gpumux_state_dir.join("tenants/t1").exists());
    }

    #[test]
    fn a_restarted_store_repairs_and_keeps_its_tenants() {
        let f = fixture();
        let (s, _) = open(&f);
        s.prepare(&quota("u1", "t1"), 10).unwrap();
        s.prepare(&quota("u2", "t2"), 10).unwrap();
        s.unprepare("u2", 11).unwrap();
        // A crash after the record, before the files.
        std::fs::remove_file(s.quota_path("t1")).unwrap();
        // A crash after a released claim's record was written but a file survived.
        std::fs::write(s.quota_path("t2"), "memory_limit = 1\n").unwrap();
        drop(s);
        let (s, rec) = open(&f);
        assert_eq!(rec.active, ["t1"]);
        assert_eq!(rec.repaired, ["t1"]);
        assert!(s.quota_path("t1").exists());
        assert!(!s.quota_path("t2").exists());
        assert_eq!(s.prepared("u1").unwrap().quota.tenant, "t1");
        let (_, rec) = open(&f);
        assert!(rec.repaired.is_empty(), "nothing to repair twice");
    }

    #[test]
    fn foreign_files_and_collisions_are_refused() {
        let f = fixture();
        let (s, _) = open(&f);
        std::fs::create_dir_all(&f.paths.tenants_dir).unwrap();
        std::fs::write(s.quota_path("hand"), "memory_limit = 1\n").unwrap();
        assert!(matches!(
            s.prepare(&quota("u1", "hand"), 1),
            Err(StoreError::Foreign { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(s.quota_path("hand")).unwrap(),
            "memory_limit = 1\n"
        );
        s.prepare(&quota("u1", "t1"), 1).unwrap();
        assert!(matches!(
            s.prepare(&quota("u2", "t1"), 1),
            Err(StoreError::Collision { .. })
        ));
        assert!(s.records().len() == 1);
        let _ = &f.dir;
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let f = fixture();
        std::fs::create_dir_all(&f.paths.state_dir).unwrap();
        std::fs::write(f.paths.state_dir.join(STATE_FILE), b"{nope").unwrap();
        assert!(matches!(
            ClaimStore::open(f.paths.clone()),
            Err(StoreError::BadState { .. })
        ));
    }
}
