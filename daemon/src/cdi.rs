//! The Container Device Interface (CDI) spec that puts a container under a tenant's quota, so
//! that `podman run --device gpumux.dev/tenant=<tenant>` (or any CDI-aware runtime) injects
//! what `gpumuxctl env` prints: `LD_PRELOAD` of the shim, `GPUMUX_SOCKET`, the shim mounted
//! read-only and the tenant's socket directory.
//!
//! This module owns the spec's shape (a faithful subset of CDI 0.6.0: one device per tenant,
//! named after the tenant; spec-wide edits adding the host's NVIDIA device nodes), which
//! tenants get a device (tenant files in `tenants_dir`, or an explicit list), and writing the
//! spec atomically where runtimes read it (`/etc/cdi` or `/run/cdi`).

use gpumux_common::ENV_SOCKET;
use gpumux_common::config::TenantOwner;
use gpumux_common::names::{tenant_dir, tenant_of_quota_file, tenant_socket, validate_tenant_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The CDI specification version the generated spec declares.
pub const CDI_VERSION: &str = "0.6.0";
/// The CDI kind (`vendor/class`) of gpumux tenants: devices are `gpumux.dev/tenant=<tenant>`.
pub const CDI_KIND: &str = "gpumux.dev/tenant";
/// The vendor part of [`CDI_KIND`], also the prefix of the devices' annotations.
pub const CDI_VENDOR: &str = "gpumux.dev";
/// Where the packaged `gpumux-cdi.service` writes the spec (CDI's dynamic spec directory).
pub const DEFAULT_DYNAMIC_SPEC_PATH: &str = "/run/cdi/gpumux.json";

/// NVIDIA control device nodes injected when present (the per-GPU `/dev/nvidiaN` follow).
const NVIDIA_CONTROL_NODES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

/// The spec cannot be generated or written.
#[derive(Debug, Error)]
pub enum CdiError {
    /// No tenant to describe: CDI rejects a spec without devices.
    #[error("no tenants to describe (add quota files to {0} or pass --tenant)")]
    NoTenants(PathBuf),
    /// A tenant name is not a valid tenant name.
    #[error(transparent)]
    BadTenantName(#[from] gpumux_common::names::BadTenantName),
    /// A valid tenant name that CDI does not accept as a device name.
    #[error(
        "tenant `{0}` cannot be a CDI device: CDI device names must start and end with a letter or digit"
    )]
    NotADeviceName(String),
    /// A path that JSON cannot carry.
    #[error("{0}: the path is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    /// The tenants directory could not be read.
    #[error("cannot read the tenants directory {dir}")]
    ReadTenants {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The spec file could not be written or removed.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A CDI spec (the subset gpumux uses; field names as in the CDI JSON schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    /// Edits applied once for any device of this spec.
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One CDI device: a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub name: String,
    /// Who the tenant stands for ([`owner_annotations`]); runtimes pass device annotations on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub container_edits: ContainerEdits,
}

/// The annotations a tenant's CDI device carries: `gpumux.dev/tenant` and, for a tenant
/// created for Kubernetes, `gpumux.dev/<key>` for each `[owner]` key.
pub fn owner_annotations(tenant: &str, owner: Option<&TenantOwner>) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([(format!("{CDI_VENDOR}/tenant"), tenant.to_string())]);
    if let Some(o) = owner {
        for (key, value) in o.fields() {
            if let Some(v) = value {
                a.insert(format!("{CDI_VENDOR}/{key}"), v.to_string());
            }
        }
    }
    a
}

/// Changes a runtime makes to a container's OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    /// `KEY=VALUE` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

impl ContainerEdits {
    /// No edit at all (valid spec-wide, invalid for a device).
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.device_nodes.is_empty() && self.mounts.is_empty()
    }
}

/// A device node to create in the container (type and numbers are taken from the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// Path in the container (and on the host, unless `host_path` says otherwise).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// Cgroup access, a combination of `r`, `w`, `m` (default `rwm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub mount_type: Option<String>,
}

/// What the spec injects besides the tenant's name.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The daemon's `state_dir` (tenant sockets live under `state_dir/tenants/<tenant>/`).
    pub state_dir: PathBuf,
    /// The installed shim (mounted at the same path in the container).
    pub shim_path: PathBuf,
    /// Host device nodes every gpumux container gets (see [`nvidia_device_nodes`]).
    pub device_nodes: Vec<PathBuf>,
}

/// Tenants found in a tenants directory, and files that were passed over (with why).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantScan {
    /// Sorted tenant names.
    pub tenants: Vec<String>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Checks a name against CDI's rule for device names: letters, digits, `_`, `-`, `.`, `:`,
/// starting and ending with a letter or digit. (Every such tenant name is also a valid gpumux
/// tenant name except for upper case, which tenant names never have.)
pub fn validate_device_name(name: &str) -> Result<(), CdiError> {
    let bytes = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    let ok = match bytes {
        [] => false,
        [only] => alnum(only),
        [first, middle @ .., last] => {
            alnum(first)
                && alnum(last)
                && middle
                    .iter()
                    .all(|c| alnum(c) || matches!(c, b'_' | b'-' | b'.' | b':'))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(CdiError::NotADeviceName(name.to_string()))
    }
}

/// The tenants configured by quota files in `dir`: `<tenant>.toml` files whose stem is a valid
/// tenant name that CDI also accepts as a device name. Hidden files are ignored silently;
/// other files that do not qualify are listed in [`TenantScan::skipped`].
pub fn tenants_in(dir: &Path) -> Result<TenantScan, CdiError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CdiError::ReadTenants {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut scan = TenantScan::default();
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        match tenant_of_quota_file(&path) {
            None => scan.skipped.push((
                path.clone(),
                "the file name is not a valid tenant name".to_string(),
            )),
            Some(name) => match validate_device_name(&name) {
                Ok(()) => scan.tenants.push(name),
                Err(e) => scan.skipped.push((path.clone(), e.to_string())),
            },
        }
    }
    scan.tenants.sort();
    scan.skipped.sort();
    Ok(scan)
}

/// NVIDIA device nodes that exist under `dev` (normally `/dev`): the control nodes
/// (`nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`, `nvidia-modeset`), then `nvidiaN` in
/// numeric order. Nodes that do not exist are left out.
pub fn nvidia_device_nodes(dev: &Path) -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = NVIDIA_CONTROL_NODES
        .iter()
        .map(|n| dev.join(n))
        .filter(|p| p.exists())
        .collect();
    let mut gpus: Vec<(u32, PathBuf)> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let index = name.to_str()?.strip_prefix("nvidia")?;
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((index.parse().ok()?, e.path()))
        })
        .collect();
    gpus.sort();
    nodes.extend(gpus.into_iter().map(|(_, p)| p));
    nodes
}

fn utf8(path: &Path) -> Result<String, CdiError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| CdiError::NonUtf8Path(path.to_path_buf()))
}

/// The container edits that put a container under `tenant`'s quota.
pub fn tenant_edits(tenant: &str, inj: &Injection) -> Result<ContainerEdits, CdiError> {
    validate_tenant_name(tenant)?;
    validate_device_name(tenant)?;
    let shim = utf8(&inj.shim_path)?;
    let dir = utf8(&tenant_dir(&inj.state_dir, tenant))?;
    let socket = utf8(&tenant_socket(&inj.state_dir, tenant))?;
    let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(ContainerEdits {
        env: vec![
            format!("LD_PRELOAD={shim}"),
            format!("{ENV_SOCKET}={socket}"),
        ],
        device_nodes: Vec::new(),
        mounts: vec![
            Mount {
                host_path: shim.clone(),
                container_path: shim,
                options: opts(&["ro", "nosuid", "nodev", "bind"]),
                mount_type: None,
            },
            Mount {
                host_path: dir.clone(),
                container_path: dir,
                // Read-only: connecting to the socket needs no write access, and a container
                // must not fill or plant anything in the daemon's state directory.
                options: opts(&["ro", "nosuid", "nodev", "noexec", "bind"]),
                mount_type: None,
            },
        ],
    })
}

/// The spec with one device per tenant (sorted, duplicates dropped). `tenants_dir` only
/// names where tenants come from in the error for an empty list.
pub fn spec(tenants: &[String], inj: &Injection, tenants_dir: &Path) -> Result<Spec, CdiError> {
    let mut names: Vec<&String> = tenants.iter().collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(CdiError::NoTenants(tenants_dir.to_path_buf()));
    }
    let devices = names
        .into_iter()
        .map(|t| {
            Ok(Device {
                name: t.clone(),
                annotations: BTreeMap::new(),
                container_edits: tenant_edits(t, inj)?,
            })
        })
        .collect::<Result<Vec<_>, CdiError>>()?;
    let device_nodes = inj
        .device_nodes
        .iter()
        .map(|p| {
            Ok(DeviceNode {
                path: utf8(p)?,
                host_path: None,
                permissions: None,
            })
        })
        .collect::<Result<Vec<_>, CdiError>>()?;
    Ok(Spec {
        cdi_version: CDI_VERSION.to_string(),
        kind: CDI_KIND.to_string(),
        devices,
        container_edits: ContainerEdits {
            device_nodes,
            ..ContainerEdits::default()
        },
    })
}

/// The spec as pretty JSON, with a final newline.
pub fn to_json(spec: &Spec) -> String {
    let mut s = serde_json::to_string_pretty(spec).expect("a CDI spec always serializes");
    s.push('\n');
    s
}

/// Writes `contents` to `path` atomically (a temporary file in the same directory, renamed
/// over it), mode 0644, creating the directory if needed: a runtime never reads half a spec.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), CdiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CdiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let name = path
        .file_name()
        .ok_or_else(|| err(io::Error::new(io::ErrorKind::InvalidInput, "not a file")))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        // Whatever the umask: runtimes (and rootless users) must be able to read it.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        err(e)
    })
}

/// Removes a spec file that describes no tenant any more; a missing file is fine.
pub fn remove(path: &Path) -> Result<bool, CdiError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CdiError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpumux_common::SHIM_INSTALL_PATH;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpumux-cdi-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn injection(nodes: Vec<PathBuf>) -> Injection {
        Injection {
            state_dir: PathBuf::from("/run/gpumux"),
            shim_path: PathBuf::from(SHIM_INSTALL_PATH),
            device_nodes: nodes,
        }
    }

    #[test]
    fn one_device_per_tenant_with_env_and_mounts() {
        let inj = injection(vec![
            PathBuf::from("/dev/nvidiactl"),
            PathBuf::from("/dev/nvidia0"),
        ]);
        let s = spec(
            &["team-b".into(), "team-a".into(), "team-b".into()],
            &inj,
            Path::new("/etc/gpumux/tenants.d"),
        )
        .unwrap();
        assert_eq!(
            (s.cdi_version.as_str(), s.kind.as_str()),
            ("0.6.0", CDI_KIND)
        );
        let names: Vec<_> = s.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["team-a", "team-b"]);
        let a = &s.devices[0].container_edits;
        assert_eq!(
            a.env,
            [
                "LD_PRELOAD=/usr/lib/gpumux/libgpumux.so",
                "GPUMUX_SOCKET=/run/gpumux/tenants/team-a/gpumux.sock"
            ]
        );
        assert_eq!(a.mounts[0].host_path, SHIM_INSTALL_PATH);
        assert_eq!(a.mounts[0].container_path, SHIM_INSTALL_PATH);
        assert!(a.mounts[0].options.contains(&"ro".to_string()));
        assert_eq!(a.mounts[1].host_path, "/run/gpumux/tenants/team-a");
        assert_eq!(a.mounts[1].container_path, "/run/gpumux/tenants/team-a");
        assert!(a.device_nodes.is_empty());
        let nodes: Vec<_> = s
            .container_edits
            .device_nodes
            .iter()
            .map(|n| n.path.as_str())
            .collect();
        assert_eq!(nodes, ["/dev/nvidiactl", "/dev/nvidia0"]);

        // JSON round-trips and uses CDI's field names.
        let json = to_json(&s);
        assert!(json.contains("\"cdiVersion\": \"0.6.0\"") && json.contains("\"containerPath\""));
        assert_eq!(serde_json::from_str::<Spec>(&json).unwrap(), s);
    }

    #[test]
    fn owner_annotations_name_the_pod() {
        let owner = TenantOwner {
            namespace: Some("ns".into()),
            pod: Some("train".into()),
            claim: Some("gpu".into()),
            ..TenantOwner::default()
        };
        let a = owner_annotations("t", Some(&owner));
        let want: BTreeMap<String, String> = [
            ("gpumux.dev/tenant", "t"),
            ("gpumux.dev/namespace", "ns"),
            ("gpumux.dev/pod", "train"),
            ("gpumux.dev/claim", "gpu"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(a, want);
        assert_eq!(owner_annotations("t", None).len(), 1);
        let mut s = spec(&["t".into()], &injection(Vec::new()), Path::new("/t")).unwrap();
        s.devices[0].annotations = a;
        let json = to_json(&s);
        assert!(json.contains("\"annotations\""), "{json}");
        assert_eq!(serde_json::from_str::<Spec>(&json).unwrap(), s);
    }

    #[test]
    fn state_dir_is_honoured_and_no_nodes_means_no_spec_wide_edits() {
        let mut inj = injection(Vec::new());
        inj.state_dir = PathBuf::from("/var/lib/gpumux-test");
        let s = spec(&["a".into()], &inj, Path::new("/t")).unwrap();
        assert_eq!(
            s.devices[0].container_edits.env[1],
            "GPUMUX_SOCKET=/var/lib/gpumux-test/tenants/a/gpumux.sock"
        );
        assert!(s.container_edits.is_empty());
        let v: serde_json::Value = serde_json::from_str(&to_json(&s)).unwrap();
        assert!(v.get("containerEdits").is_none());
    }

    #[test]
    fn refuses_empty_lists_and_names_cdi_rejects() {
        let inj = injection(Vec::new());
        assert!(matches!(
            spec(&[], &inj, Path::new("/t")),
            Err(CdiError::NoTenants(_))
        ));
        assert!(matches!(
            spec(&["Bad".into()], &inj, Path::new("/t")),
            Err(CdiError::BadTenantName(_))
        ));
        // Valid tenant names that CDI refuses as device names.
        for t in ["a-", "a.", "a_"] {
            validate_tenant_name(t).unwrap();
            assert!(matches!(
                spec(&[t.into()], &inj, Path::new("/t")),
                Err(CdiError::NotADeviceName(_))
            ));
        }
        for ok in ["a", "0", "team-a", "pod_1.2", "a:b"] {
            assert!(validate_device_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b", "a b"] {
            assert!(validate_device_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scans_tenant_files() {
        let d = tmpdir("scan");
        for f in [
            "team-b.toml",
            "team-a.toml",
            ".team-c.toml.swp",
            ".hidden.toml",
            "README",
            "example.toml.sample",
            "Upper.toml",
            "trailing-.toml",
        ] {
            std::fs::write(d.join(f), "memory_limit = \"1GiB\"\n").unwrap();
        }
        let scan = tenants_in(&d).unwrap();
        assert_eq!(scan.tenants, ["team-a", "team-b"]);
        let skipped: Vec<_> = scan
            .skipped
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(skipped, ["Upper.toml", "trailing-.toml"]);
        assert!(matches!(
            tenants_in(&d.join("missing")),
            Err(CdiError::ReadTenants { .. })
        ));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn finds_only_existing_nvidia_nodes_in_order() {
        let d = tmpdir("dev");
        for f in [
            "nvidia10",
            "nvidia2",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-caps",
            "nvidiafoo",
            "null",
        ] {
            std::fs::write(d.join(f), "").unwrap();
        }
        let names: Vec<_> = nvidia_device_nodes(&d)
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["nvidiactl", "nvidia-uvm", "nvidia2", "nvidia10"]);
        assert!(nvidia_device_nodes(&d.join("missing")).is_empty());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn writes_atomically_and_removes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmpdir("write");
        let path = d.join("cdi").join("gpumux.json");
        write_atomically(&path, "{}\n").unwrap();
        write_atomically(&path, "{\"x\":1}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"x\":1}\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(std::fs::read_dir(d.join("cdi")).unwrap().count(), 1);
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        std::fs::remove_dir_all(&d).ok();
    }
}
