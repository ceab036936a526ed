//! The tenants this plugin created: their quota files in gpumux's `tenants_dir`, and a record
//! of them in the plugin's own state file, so a restarted plugin knows which tenants are its
//! own. Files the plugin did not create are never touched.
//!
//! Crash safety comes from ordering: a tenant is recorded (state file written atomically)
//! before its quota file is written, and its quota file is removed before the record says so.
//! A crash in between leaves a record without a file, which the next allocation or collection
//! repairs; never a file the plugin has forgotten.
//!
//! Life of a tenant: [`TenantStore::ensure`] at `Allocate` (idempotent: the same IDs give the
//! same tenant and file); [`TenantStore::collect`] when the pod resources API lists none of its
//! IDs any more (after a grace period, since the kubelet records an allocation just after
//! `Allocate` returns): the quota file goes (the daemon then removes the tenant's socket), the
//! record is marked released; once the socket is gone, the tenant's directory and the record
//! go too.

use crate::shares::ShareQuota;
use gpumux_common::config::{TenantOwner, TenantQuota};
use gpumux_common::names::{tenant_dir, tenant_socket};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// Name of the state file in the plugin's state directory.
pub const STATE_FILE: &str = "tenants.json";

/// The store failed.
#[derive(Debug, Error)]
pub enum TenantError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a gpumux device plugin state file: {reason}")]
    BadState { path: PathBuf, reason: String },
    #[error(
        "{path} exists but this plugin did not create it; refusing to overwrite tenant {tenant}"
    )]
    Foreign { path: PathBuf, tenant: String },
    #[error("tenant {tenant} already stands for devices {existing:?}, not {wanted:?}")]
    Collision {
        tenant: String,
        existing: Vec<String>,
        wanted: Vec<String>,
    },
    #[error("generated an invalid quota file for {tenant}: {reason}")]
    Invalid { tenant: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TenantError + '_ {
    move |source| TenantError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One tenant the plugin created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// The device IDs it was allocated (sorted).
    pub device_ids: Vec<String>,
    /// When it was last allocated (Unix seconds).
    pub allocated_unix: u64,
    /// When its quota file was removed (Unix seconds); the record stays until the tenant's
    /// directory is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_unix: Option<u64>,
    /// The container that holds its shares, once the pod resources API has named it
    /// ([`TenantStore::identify`]); written to the quota file's `[owner]` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<TenantOwner>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    tenants: BTreeMap<String, TenantRecord>,
}

const STATE_VERSION: u32 = 1;

/// Where things live.
#[derive(Debug, Clone)]
pub struct StorePaths {
    /// The plugin's own state directory (holds [`STATE_FILE`]).
    pub plugin_state_dir: PathBuf,
    /// gpumux's `tenants_dir` (quota files).
    pub tenants_dir: PathBuf,
    /// gpumux's `state_dir` (tenant sockets).
    pub gpumux_state_dir: PathBuf,
}

/// The plugin's tenants; safe to share between tasks (one lock around each operation).
#[derive(Debug)]
pub struct TenantStore {
    paths: StorePaths,
    resource_name: String,
    state: Mutex<BTreeMap<String, TenantRecord>>,
}

/// What a collection did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Tenants whose quota file was removed.
    pub released: Vec<String>,
    /// Released tenants whose record (and directory) is now gone.
    pub forgotten: Vec<String>,
}

impl TenantStore {
    /// Opens (or starts) the state file. A state file that cannot be parsed is an error: the
    /// plugin would otherwise forget tenants it must clean up.
    pub fn open(paths: StorePaths, resource_name: &str) -> Result<TenantStore, TenantError> {
        std::fs::create_dir_all(&paths.plugin_state_dir).map_err(io(&paths.plugin_state_dir))?;
        let file = paths.plugin_state_dir.join(STATE_FILE);
        let tenants = match std::fs::read(&file) {
            Ok(bytes) => {
                let s: StateFile =
                    serde_json::from_slice(&bytes).map_err(|e| TenantError::BadState {
                        path: file.clone(),
                        reason: e.to_string(),
                    })?;
                if s.version != STATE_VERSION {
                    return Err(TenantError::BadState {
                        path: file,
                        reason: format!("unsupported version {}", s.version),
                    });
                }
                s.tenants
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(&file)(e)),
        };
        Ok(TenantStore {
            paths,
            resource_name: resource_name.to_string(),
            state: Mutex::new(tenants),
        })
    }

    /// The recorded tenants.
    pub fn records(&self) -> BTreeMap<String, TenantRecord> {
        self.lock().clone()
    }

    /// `tenants_dir/<tenant>.toml`.
    pub fn quota_path(&self, tenant: &str) -> PathBuf {
        self.paths.tenants_dir.join(format!("{tenant}.toml"))
    }

    /// The tenant's socket directory on the host.
    pub fn tenant_dir(&self, tenant: &str) -> PathBuf {
        tenant_dir(&self.paths.gpumux_state_dir, tenant)
    }

    /// The tenant's socket on the host.
    pub fn tenant_socket(&self, tenant: &str) -> PathBuf {
        tenant_socket(&self.paths.gpumux_state_dir, tenant)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TenantRecord>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the tenant for this allocation exists: recorded, quota file written, socket
    /// directory present (so the container's bind mount has a source before the daemon reacts).
    /// Idempotent.
    pub fn ensure(&self, q: &ShareQuota, now_unix: u64) -> Result<(), TenantError> {
        let owner = self.lock().get(&q.tenant).and_then(|r| r.owner.clone());
        let text = self.quota_text(q, owner.as_ref());
        let quota_path = self.quota_path(&q.tenant);
        // The daemon parses this file: check it as the daemon will, before anything changes.
        TenantQuota::parse(&quota_path, &q.tenant, &text).map_err(|e| TenantError::Invalid {
            tenant: q.tenant.clone(),
            reason: e.to_string(),
        })?;
        let mut state = self.lock();
        match state.get(&q.tenant) {
            Some(r) if r.device_ids != q.device_ids => {
                return Err(TenantError::Collision {
                    tenant: q.tenant.clone(),
                    existing: r.device_ids.clone(),
                    wanted: q.device_ids.clone(),
                });
            }
            Some(_) => {}
            None => {
                if quota_path.symlink_metadata().is_ok() {
                    return Err(TenantError::Foreign {
                        path: quota_path,
                        tenant: q.tenant.clone(),
                    });
                }
            }
        }
        let mut next = state.clone();
        next.insert(
            q.tenant.clone(),
            TenantRecord {
                device_ids: q.device_ids.clone(),
                allocated_unix: now_unix,
                released_unix: None,
                owner: state.get(&q.tenant).and_then(|r| r.owner.clone()),
            },
        );
        self.persist(&next)?;
        *state = next;
        let dir = self.tenant_dir(&q.tenant);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
        if std::fs::read_to_string(&quota_path).ok().as_deref() != Some(text.as_str()) {
            std::fs::create_dir_all(&self.paths.tenants_dir)
                .map_err(io(&self.paths.tenants_dir))?;
            write_atomic(&quota_path, text.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// Releases the tenants none of whose shares is in `held` (the device IDs containers hold
    /// now) that were allocated at least `grace_secs` ago, and forgets released tenants whose
    /// socket the daemon has removed.
    ///
    /// A tenant stays while *any* of its shares is held, not only while a container holds
    /// exactly its set: the pod resources API does not list ordinary init containers, whose
    /// shares the kubelet hands on to the pod's app containers; their tenant goes with the pod.
    pub fn collect(
        &self,
        held: &HashSet<String>,
        now_unix: u64,
        grace_secs: u64,
    ) -> Result<Collected, TenantError> {
        let mut state = self.lock();
        let mut next = state.clone();
        let mut done = Collected::default();
        let is_held = |rec: &TenantRecord| rec.device_ids.iter().any(|id| held.contains(id));
        for (name, rec) in next.iter_mut() {
            if is_held(rec) {
                continue;
            }
            if rec.released_unix.is_none()
                && now_unix.saturating_sub(rec.allocated_unix) >= grace_secs
            {
                let path = self.quota_path(name);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path)(e)),
                }
                rec.released_unix = Some(now_unix);
                done.released.push(name.clone());
            }
        }
        for (name, rec) in next.iter() {
            if rec.released_unix.is_none() || is_held(rec) {
                continue;
            }
            if self.tenant_socket(name).symlink_metadata().is_ok() {
                continue; // the daemon has not dropped the tenant yet
            }
            let dir = self.tenant_dir(name);
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "cannot remove tenant directory: {e}");
                }
            }
            done.forgotten.push(name.clone());
        }
        for name in &done.forgotten {
            next.remove(name);
        }
        if next != *state {
            self.persist(&next)?;
            *state = next;
        }
        Ok(done)
    }

    /// Records which container holds each tenant's shares (`holders`: device ID → the
    /// container holding it, from the pod resources API) and writes it into the tenant's quota
    /// file as its `[owner]` table, so status and metrics name the pod. Returns the tenants
    /// whose owner changed. Released tenants and tenants whose shares nobody holds are left
    /// as they are.
    pub fn identify(
        &self,
        holders: &HashMap<String, TenantOwner>,
    ) -> Result<Vec<String>, TenantError> {
        let mut state = self.lock();
        let mut updates = Vec::new();
        for (name, rec) in state.iter() {
            if rec.released_unix.is_some() {
                continue;
            }
            let Some(owner) = rec.device_ids.iter().find_map(|id| holders.get(id)) else {
                continue;
            };
            let path = self.quota_path(name);
            let current = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                // Repaired by the next Allocate; the owner is written then.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            let text = with_owner(&current, Some(owner));
            if rec.owner.as_ref() == Some(owner) && text == current {
                continue;
            }
            TenantQuota::parse(&path, name, &text).map_err(|e| TenantError::Invalid {
                tenant: name.clone(),
                reason: e.to_string(),
            })?;
            updates.push((name.clone(), owner.clone(), path, text));
        }
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut next = state.clone();
        for (name, owner, _, _) in &updates {
            if let Some(rec) = next.get_mut(name) {
                rec.owner = Some(owner.clone());
            }
        }
        // Recorded first: a crash before a file is written leaves a record whose owner the
        // file lacks, which the next call (or Allocate) writes.
        self.persist(&next)?;
        *state = next;
        let mut changed = Vec::new();
        for (name, _, path, text) in updates {
            write_atomic(&path, text.as_bytes(), 0o644)?;
            changed.push(name);
        }
        Ok(changed)
    }

    fn quota_text(&self, q: &ShareQuota, owner: Option<&TenantOwner>) -> String {
        let devices: Vec<String> = q.gpus.iter().map(|g| format!("\"{}\"", g.uuid)).collect();
        let text = format!(
            "# Managed by gpumux-device-plugin ({resource}); removed when the container's shares are\n\
             # released. Do not edit. Shares: {ids}\n\
             devices = [{devices}]\n\
             memory_limit = {limit}\n\
             weight = {weight}\n",
            resource = self.resource_name,
            ids = q.device_ids.join(", "),
            devices = devices.join(", "),
            limit = q.memory_limit,
            weight = q.weight,
        );
        with_owner(&text, owner)
    }

    fn persist(&self, tenants: &BTreeMap<String, TenantRecord>) -> Result<(), TenantError> {
        let file = StateFile {
            version: STATE_VERSION,
            tenants: tenants.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("state serialises");
        bytes.push(b'\n');
        write_atomic(&self.paths.plugin_state_dir.join(STATE_FILE), &bytes, 0o600)
    }
}

/// A quota file written by this plugin with its `[owner]` table (always the last part of the
/// file) replaced by `owner`'s, or removed.
fn with_owner(text: &str, owner: Option<&TenantOwner>) -> String {
    let base = match text.find("\n[owner]\n") {
        Some(i) => &text[..=i],
        None => text,
    };
    format!(
        "{base}{}",
        owner.map(TenantOwner::to_toml).unwrap_or_default()
    )
}

/// Writes `path` through a dot-prefixed temporary file in the same directory and a rename, so
/// readers (the daemon's watcher, a restarted plugin) see the old or the new file, never part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TenantError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            d.sync_all().ok();
        }
        Ok(())
    })();
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    result.map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shares::{Inventory, quota_for};
    use gpumux_common::nvml::GpuInfo;

    const A: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000000";

    struct Fixture {
        _dir: tempfile::TempDir,
        paths: StorePaths,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths {
            plugin_state_dir: dir.path().join("plugin"),
            tenants_dir: dir.path().join("tenants.d"),
            gpumux_state_dir: dir.path().join("run"),
        };
        Fixture { _dir: dir, paths }
    }

    fn quota(shares: &[u32]) -> ShareQuota {
        let mut inv = Inventory::default();
        inv.merge(&Ok(vec![GpuInfo {
            index: 0,
            uuid: A.into(),
            name: "GPU".into(),
            minor: Some(0),
            total_memory: 16 << 30,
            healthy: true,
            compute_capability: None,
            driver_version: None,
        }]));
        let ids: Vec<String> = shares.iter().map(|i| format!("{A}::{i}")).collect();
        quota_for(&ids, &inv, 4).unwrap()
    }

    fn open(f: &Fixture) -> TenantStore {
        TenantStore::open(f.paths.clone(), "gpumux.dev/gpu-share").unwrap()
    }

    /// The device IDs held by containers with these quotas.
    fn held(quotas: &[&ShareQuota]) -> HashSet<String> {
        quotas.iter().flat_map(|q| q.device_ids.clone()).collect()
    }

    #[test]
    fn ensure_writes_a_valid_quota_and_is_idempotent() {
        let f = fixture();
        let s = open(&f);
        let q = quota(&[0, 1]);
        s.ensure(&q, 100).unwrap();
        let parsed = TenantQuota::load(&s.quota_path(&q.tenant)).unwrap();
        assert_eq!(parsed.memory_limit, 8 << 30);
        assert_eq!(parsed.weight, 2);
        assert_eq!(
            parsed.devices,
            vec![gpumux_common::config::DeviceSelector::Uuid(A.into())]
        );
        assert!(s.tenant_dir(&q.tenant).is_dir());
        s.ensure(&q, 200).unwrap();
        assert_eq!(s.records().len(), 1);
        assert_eq!(s.records()[&q.tenant].allocated_unix, 200);
        let files: Vec<_> = std::fs::read_dir(&f.paths.tenants_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
    }

    #[test]
    fn foreign_files_are_never_touched() {
        let f = fixture();
        let s = open(&f);
        let q = quota(&[2]);
        std::fs::create_dir_all(&f.paths.tenants_dir).unwrap();
        std::fs::write(s.quota_path(&q.tenant), "memory_limit = 1\n").unwrap();
        std::fs::write(
            f.paths.tenants_dir.join("team-a.toml"),
            "memory_limit = 1\n",
        )
        .unwrap();
        assert!(matches!(s.ensure(&q, 1), Err(TenantError::Foreign { .. })));
        assert!(s.records().is_empty());
        let c = s.collect(&held(&[]), 1000, 0).unwrap();
        assert_eq!(c, Collected::default());
        assert_eq!(
            std::fs::read_to_string(s.quota_path(&q.tenant)).unwrap(),
            "memory_limit = 1\n"
        );
        assert!(f.paths.tenants_dir.join("team-a.toml").exists());
    }

    #[test]
    fn collect_respects_grace_and_liveness_then_forgets() {
        let f = fixture();
        let s = open(&f);
        let (a, b) = (quota(&[0]), quota(&[1, 2]));
        s.ensure(&a, 100).unwrap();
        s.ensure(&b, 100).unwrap();
        // Within the grace period nothing goes, listed or not.
        assert_eq!(
            s.collect(&held(&[]), 105, 10).unwrap(),
            Collected::default()
        );
        // b is still listed; a is not.
        let c = s.collect(&held(&[&b]), 200, 10).unwrap();
        assert_eq!(c.released, vec![a.tenant.clone()]);
        assert!(!s.quota_path(&a.tenant).exists());
        assert!(s.quota_path(&b.tenant).exists());
        // The socket dir had no socket (no daemon here): the record went in the same pass.
        assert_eq!(c.forgotten, vec![a.tenant.clone()]);
        assert!(!s.tenant_dir(&a.tenant).exists());
        assert!(!s.records().contains_key(&a.tenant));
    }

    #[test]
    fn a_tenant_stays_while_any_of_its_shares_is_held() {
        // An init container's shares {0, 1}, one of them handed on to the app container.
        let f = fixture();
        let s = open(&f);
        let (init, app) = (quota(&[0, 1]), quota(&[1]));
        s.ensure(&init, 0).unwrap();
        s.ensure(&app, 0).unwrap();
        let c = s.collect(&held(&[&app]), 100, 0).unwrap();
        assert_eq!(c, Collected::default(), "the pod still holds share 1");
        let c = s.collect(&held(&[]), 101, 0).unwrap();
        assert_eq!(c.released.len(), 2, "pod gone: both tenants go");
    }

    #[test]
    fn released_tenant_waits_for_the_daemon_to_drop_its_socket() {
        let f = fixture();
        let s = open(&f);
        let a = quota(&[3]);
        s.ensure(&a, 0).unwrap();
        std::fs::write(s.tenant_socket(&a.tenant), b"").unwrap();
        let c = s.collect(&held(&[]), 100, 0).unwrap();
        assert_eq!((c.released.len(), c.forgotten.len()), (1, 0));
        assert!(s.records()[&a.tenant].released_unix.is_some());
        // Reallocated before it was forgotten: back to normal, file rewritten.
        s.ensure(&a, 150).unwrap();
        assert!(s.quota_path(&a.tenant).exists());
        assert!(s.records()[&a.tenant].released_unix.is_none());
        s.collect(&held(&[]), 300, 0).unwrap();
        std::fs::remove_file(s.tenant_socket(&a.tenant)).unwrap();
        let c = s.collect(&held(&[]), 301, 0).unwrap();
        assert_eq!(c.forgotten, vec![a.tenant.clone()]);
        assert!(s.records().is_empty());
    }

    #[test]
    fn a_restarted_store_knows_its_tenants() {
        let f = fixture();
        let q = quota(&[0, 3]);
        open(&f).ensure(&q, 5).unwrap();
        let s = open(&f);
        assert_eq!(s.records()[&q.tenant].device_ids, q.device_ids);
        s.ensure(&q, 6).unwrap(); // ours: no Foreign error
        assert_eq!(
            s.collect(&held(&[]), 100, 0).unwrap().released,
            vec![q.tenant.clone()]
        );
        assert!(!s.quota_path(&q.tenant).exists());
    }

    #[test]
    fn a_record_without_its_file_is_repaired() {
        let f = fixture();
        let s = open(&f);
        let q = quota(&[1]);
        s.ensure(&q, 5).unwrap();
        std::fs::remove_file(s.quota_path(&q.tenant)).unwrap();
        s.ensure(&q, 6).unwrap();
        assert!(s.quota_path(&q.tenant).exists());
    }

    #[test]
    fn the_holding_container_becomes_the_owner() {
        let f = fixture();
        let s = open(&f);
        let (a, b) = (quota(&[0]), quota(&[1, 2]));
        s.ensure(&a, 0).unwrap();
        s.ensure(&b, 0).unwrap();
        let owner = |pod: &str| TenantOwner {
            namespace: Some("team-a".into()),
            pod: Some(pod.into()),
            container: Some("main".into()),
            claim: None,
        };
        let holders = HashMap::from([(b.device_ids[1].clone(), owner("train"))]);
        assert_eq!(s.identify(&holders).unwrap(), vec![b.tenant.clone()]);
        let q = TenantQuota::load(&s.quota_path(&b.tenant)).unwrap();
        assert_eq!(q.owner, Some(owner("train")));
        assert_eq!((q.memory_limit, q.weight), (8 << 30, 2), "limits kept");
        assert_eq!(
            TenantQuota::load(&s.quota_path(&a.tenant)).unwrap().owner,
            None
        );
        // Nothing changed: nothing written.
        assert!(s.identify(&holders).unwrap().is_empty());
        // A restarted plugin keeps the owner, also when Allocate repeats.
        let s = open(&f);
        s.ensure(&b, 10).unwrap();
        assert_eq!(s.records()[&b.tenant].owner, Some(owner("train")));
        let q = TenantQuota::load(&s.quota_path(&b.tenant)).unwrap();
        assert_eq!(q.owner, Some(owner("train")));
        // Another pod got the shares (the first is gone): the owner follows.
        let holders = HashMap::from([(b.device_ids[0].clone(), owner("serve"))]);
        assert_eq!(s.identify(&holders).unwrap(), vec![b.tenant.clone()]);
        let text = std::fs::read_to_string(s.quota_path(&b.tenant)).unwrap();
        assert_eq!(text.matches("[owner]").count(), 1, "{text}");
        assert!(text.contains("pod = \"serve\""), "{text}");
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let f = fixture();
        std::fs::create_dir_all(&f.paths.plugin_state_dir).unwrap();
        std::fs::write(f.paths.plugin_state_dir.join(STATE_FILE), b"{nope").unwrap();
        assert!(matches!(
            TenantStore::open(f.paths.clone(), "r"),
            Err(TenantError::BadState { .. })
        ));
    }
}
