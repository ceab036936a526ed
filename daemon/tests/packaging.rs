//! Packaging checks: the CDI spec `gpumuxctl cdi` writes is valid CDI (checked against the CDI
//! JSON schema and the rules CDI runtimes enforce when they load a spec), the systemd units pass
//! `systemd-analyze verify`, the packaged config documents every default, and — opt-in with
//! `GPUMUX_TEST_DEB=1`, as it needs a release build — the .deb holds what it should and no fake.

use gpumux_common::config::{DaemonConfig, TenantQuota};
use gpumux_daemon::cdi;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("gpumux-pkg-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// A config whose state and tenants directories live in `dir`, with these tenant files.
fn config_with_tenants(dir: &Path, tenants: &[&str]) -> PathBuf {
    let tenants_dir = dir.join("tenants.d");
    std::fs::create_dir_all(&tenants_dir).unwrap();
    for t in tenants {
        std::fs::write(
            tenants_dir.join(format!("{t}.toml")),
            "memory_limit = \"1GiB\"\n",
        )
        .unwrap();
    }
    let config = dir.join("gpumuxd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\ntenants_dir = \"{}\"\n",
            dir.join("state").display(),
            tenants_dir.display()
        ),
    )
    .unwrap();
    config
}

fn gpumuxctl(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpumuxctl"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run gpumuxctl")
}

// --- A CDI schema check -------------------------------------------------------------------
//
// A faithful rendering of the CDI JSON schema (schema/schema.json + schema/defs.json of the
// container-device-interface repository) plus the checks CDI's Go package applies when a
// runtime loads a spec (strict field names, known version, vendor/class and device-name
// syntax, `KEY=VALUE` env, at least one device, non-empty device edits, unique names).

type Check = Result<(), String>;

const CDI_VERSIONS: [&str; 9] = [
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0",
];

fn object<'a>(v: &'a Value, at: &str, allowed: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let m = v
        .as_object()
        .ok_or_else(|| format!("{at}: must be an object"))?;
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!("{at}: unknown field `{k}`"));
        }
    }
    Ok(m)
}

fn required<'a>(m: &'a Map<String, Value>, at: &str, key: &str) -> Result<&'a Value, String> {
    m.get(key)
        .ok_or_else(|| format!("{at}: missing required field `{key}`"))
}

fn string<'a>(v: &'a Value, at: &str) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| format!("{at}: must be a string"))
}

fn array<'a>(v: &'a Value, at: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{at}: must be an array"))
}

fn strings(v: &Value, at: &str) -> Check {
    for (i, s) in array(v, at)?.iter().enumerate() {
        string(s, &format!("{at}[{i}]"))?;
    }
    Ok(())
}

fn uint32(v: &Value, at: &str) -> Check {
    v.as_u64()
        .filter(|n| *n <= u32::MAX as u64)
        .map(|_| ())
        .ok_or_else(|| format!("{at}: must be an integer in 0..=4294967295"))
}

fn annotations(v: &Value, at: &str) -> Check {
    let m = v
        .as_object()
        .ok_or_else(|| format!("{at}: must be an object"))?;
    for (k, val) in m {
        if k.is_empty() {
            return Err(format!("{at}: empty annotation key"));
        }
        string(val, &format!("{at}.{k}"))?;
    }
    Ok(())
}

/// `^[A-Za-z]` … `[A-Za-z0-9]$` with `extra` characters allowed in between (CDI's parser).
fn cdi_name(name: &str, first_letter_only: bool, extra: &[u8]) -> bool {
    let b = name.as_bytes();
    let Some((&first, rest)) = b.split_first() else {
        return false;
    };
    let first_ok = if first_letter_only {
        first.is_ascii_alphabetic()
    } else {
        first.is_ascii_alphanumeric()
    };
    let Some((&last, middle)) = rest.split_last() else {
        return first_ok;
    };
    first_ok
        && last.is_ascii_alphanumeric()
        && middle
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// The kind pattern `^[a-z0-9.-]+/[a-z0-9_.-]+$` and CDI's vendor/class rules.
fn kind(k: &str) -> Check {
    let (vendor, class) = k
        .split_once('/')
        .ok_or_else(|| format!("kind `{k}`: must be vendor/class"))?;
    let pattern_ok = !vendor.is_empty()
        && !class.is_empty()
        && vendor
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && class.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        });
    if !pattern_ok {
        return Err(format!(
            "kind `{k}`: does not match ^[a-z0-9.-]+/[a-z0-9_.-]+$"
        ));
    }
    for (what, part) in [("vendor", vendor), ("class", class)] {
        if !cdi_name(part, true, b"_-.") {
            return Err(format!(
                "kind `{k}`: invalid {what} `{part}` (letter first, letter or digit last)"
            ));
        }
    }
    Ok(())
}

fn container_edits(v: &Value, at: &str) -> Check {
    let m = object(
        v,
        at,
        &[
            "env",
            "deviceNodes",
            "hooks",
            "mounts",
            "intelRdt",
            "additionalGids",
            "netDevices",
        ],
    )?;
    if let Some(env) = m.get("env") {
        strings(env, &format!("{at}.env"))?;
        for e in env.as_array().unwrap() {
            let e = e.as_str().unwrap();
            if e.find('=').is_none_or(|i| i == 0) {
                return Err(format!("{at}.env: `{e}` is not KEY=VALUE"));
            }
        }
    }
    if let Some(nodes) = m.get("deviceNodes") {
        for (i, n) in array(nodes, &format!("{at}.deviceNodes"))?
            .iter()
            .enumerate()
        {
            let at = format!("{at}.deviceNodes[{i}]");
            let n = object(
                n,
                &at,
                &[
                    "path",
                    "hostPath",
                    "type",
                    "major",
                    "minor",
                    "fileMode",
                    "permissions",
                    "uid",
                    "gid",
                ],
            )?;
            let path = string(required(n, &at, "path")?, &format!("{at}.path"))?;
            if !path.starts_with('/') {
                return Err(format!("{at}.path: `{path}` is not an absolute path"));
            }
            if let Some(h) = n.get("hostPath") {
                string(h, &format!("{at}.hostPath"))?;
            }
            if let Some(t) = n.get("type") {
                let t = string(t, &format!("{at}.type"))?;
                if !["", "b", "c", "u", "p"].contains(&t) {
                    return Err(format!("{at}.type: invalid `{t}`"));
                }
            }
            if let Some(p) = n.get("permissions") {
                let p = string(p, &format!("{at}.permissions"))?;
                if p != "none" && !p.chars().all(|c| "rwm".contains(c)) {
                    return Err(format!("{at}.permissions: invalid `{p}`"));
                }
            }
            for k in ["uid", "gid", "fileMode"] {
                if let Some(x) = n.get(k) {
                    uint32(x, &format!("{at}.{k}"))?;
                }
            }
            for k in ["major", "minor"] {
                if let Some(x) = n.get(k) {
                    x.as_i64()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| format!("{at}.{k}: must be a non-negative integer"))?;
                }
            }
        }
    }
    if let Some(mounts) = m.get("mounts") {
        for (i, mnt) in array(mounts, &format!("{at}.mounts"))?.iter().enumerate() {
            let at = format!("{at}.mounts[{i}]");
            let mnt = object(mnt, &at, &["hostPath", "containerPath", "options", "type"])?;
            for k in ["hostPath", "containerPath"] {
                let p = string(required(mnt, &at, k)?, &format!("{at}.{k}"))?;
                if p.is_empty() {
                    return Err(format!("{at}.{k}: empty"));
                }
            }
            if let Some(o) = mnt.get("options") {
                strings(o, &format!("{at}.options"))?;
            }
            if let Some(t) = mnt.get("type") {
                string(t, &format!("{at}.type"))?;
            }
        }
    }
    if let Some(hooks) = m.get("hooks") {
        for (i, h) in array(hooks, &format!("{at}.hooks"))?.iter().enumerate() {
            let at = format!("{at}.hooks[{i}]");
            let h = object(h, &at, &["hookName", "path", "args", "env", "timeout"])?;
            string(required(h, &at, "hookName")?, &format!("{at}.hookName"))?;
            string(required(h, &at, "path")?, &format!("{at}.path"))?;
        }
    }
    Ok(())
}

/// Whether `v` is a CDI spec a runtime would load.
fn validate_cdi(v: &Value) -> Check {
    let m = object(
        v,
        "spec",
        &[
            "cdiVersion",
            "kind",
            "annotations",
            "devices",
            "containerEdits",
        ],
    )?;
    let version = string(required(m, "spec", "cdiVersion")?, "cdiVersion")?;
    if !CDI_VERSIONS.contains(&version) {
        return Err(format!("cdiVersion `{version}` is not a CDI version"));
    }
    kind(string(required(m, "spec", "kind")?, "kind")?)?;
    if let Some(a) = m.get("annotations") {
        annotations(a, "annotations")?;
    }
    if let Some(e) = m.get("containerEdits") {
        container_edits(e, "containerEdits")?;
    }
    let devices = array(required(m, "spec", "devices")?, "devices")?;
    if devices.is_empty() {
        return Err("devices: a spec needs at least one device".into());
    }
    let mut seen = std::collections::HashSet::new();
    for (i, d) in devices.iter().enumerate() {
        let at = format!("devices[{i}]");
        let d = object(d, &at, &["name", "annotations", "containerEdits"])?;
        let name = string(required(d, &at, "name")?, &format!("{at}.name"))?;
        if !cdi_name(name, false, b"_-.:") {
            return Err(format!(
                "{at}.name: `{name}` is not a valid CDI device name"
            ));
        }
        if !seen.insert(name) {
            return Err(format!("{at}.name: device `{name}` appears twice"));
        }
        if let Some(a) = d.get("annotations") {
            annotations(a, &format!("{at}.annotations"))?;
        }
        let edits = required(d, &at, "containerEdits")?;
        container_edits(edits, &format!("{at}.containerEdits"))?;
        if edits.as_object().is_none_or(|e| {
            e.values()
                .all(|v| v.as_array().is_some_and(|a| a.is_empty()) || v.is_null())
        }) {
            return Err(format!(
                "{at}.containerEdits: a device needs at least one edit"
            ));
        }
    }
    Ok(())
}

// --- CDI --------------------------------------------------------------------------------

#[test]
fn cdi_spec_from_gpumuxctl_validates_against_the_cdi_schema() {
    let dir = TempDir::new("cdi-schema");
    let config = config_with_tenants(&dir.0, &["team-a", "b.2"]);
    let out = gpumuxctl(&config, &["cdi"]);
    assert!(
        out.status.success(),
        "gpumuxctl cdi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec: Value = serde_json::from_slice(&out.stdout).expect("gpumuxctl cdi prints JSON");
    validate_cdi(&spec).unwrap_or_else(|e| panic!("invalid CDI spec: {e}\n{spec:#}"));

    assert_eq!(spec["cdiVersion"], "0.6.0");
    assert_eq!(spec["kind"], "gpumux.dev/tenant");
    let names: Vec<_> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.2", "team-a"]);
    let team_a = &spec["devices"][1]["containerEdits"];
    let state = dir.0.join("state");
    let env: Vec<_> = team_a["env"].as_array().unwrap().iter().collect();
    assert_eq!(env[0], "LD_PRELOAD=/usr/lib/gpumux/libgpumux.so");
    assert_eq!(
        env[1].as_str().unwrap(),
        format!(
            "GPUMUX_SOCKET={}",
            state.join("tenants/team-a/gpumux.sock").display()
        )
    );
    let mounts = team_a["mounts"].as_array().unwrap();
    assert_eq!(mounts[0]["hostPath"], "/usr/lib/gpumux/libgpumux.so");
    assert!(
        mounts[0]["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into())
    );
    assert_eq!(
        mounts[1]["hostPath"].as_str().unwrap(),
        state.join("tenants/team-a").to_str().unwrap()
    );
    assert_eq!(mounts[1]["containerPath"], mounts[1]["hostPath"]);

    // Only host nodes that exist, and the same list the library finds.
    let nodes = spec["containerEdits"]["deviceNodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let expected = cdi::nvidia_device_nodes(Path::new("/dev"));
    assert_eq!(nodes.len(), expected.len());
    for (n, e) in nodes.iter().zip(&expected) {
        assert_eq!(n["path"].as_str().unwrap(), e.to_str().unwrap());
        assert!(e.exists());
    }
}

#[test]
fn cdi_spec_with_device_nodes_validates() {
    let dev = TempDir::new("cdi-dev");
    for n in [
        "nvidiactl",
        "nvidia-uvm",
        "nvidia0",
        "nvidia1",
        "nvidia-caps",
    ] {
        std::fs::write(dev.0.join(n), "").unwrap();
    }
    let inj = cdi::Injection {
        state_dir: PathBuf::from("/run/gpumux"),
        shim_path: PathBuf::from(gpumux_common::SHIM_INSTALL_PATH),
        device_nodes: cdi::nvidia_device_nodes(&dev.0),
    };
    let spec = cdi::spec(&["a".into(), "team-b".into()], &inj, Path::new("/t")).unwrap();
    let v: Value = serde_json::from_str(&cdi::to_json(&spec)).unwrap();
    validate_cdi(&v).unwrap_or_else(|e| panic!("invalid CDI spec: {e}\n{v:#}"));
    let nodes: Vec<_> = v["containerEdits"]["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            Path::new(n["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(nodes, ["nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1"]);
}

#[test]
fn the_schema_check_rejects_invalid_specs() {
    let good = serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": "gpumux.dev/tenant",
        "devices": [{"name": "a", "containerEdits": {"env": ["A=1"]}}],
    });
    validate_cdi(&good).unwrap();
    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        edit(&mut v);
        assert!(validate_cdi(&v).is_err(), "accepted: {v}");
    };
    bad(&|v| v["cdiVersion"] = "6.0".into());
    bad(&|v| {
        v.as_object_mut().unwrap().remove("kind");
    });
    bad(&|v| v["kind"] = "Gpumux.dev/tenant".into());
    bad(&|v| v["kind"] = "gpumux.dev".into());
    bad(&|v| v["kind"] = "gpumux.dev/tenant-".into());
    bad(&|v| v["kind"] = "1gpumux.dev/tenant".into());
    bad(&|v| v["devices"] = serde_json::json!([]));
    bad(&|v| v["devices"][0]["name"] = "a-".into());
    bad(&|v| v["devices"][0]["name"] = "a/b".into());
    bad(&|v| v["devices"][0]["containerEdits"] = serde_json::json!({}));
    bad(&|v| v["devices"][0]["containerEdits"]["env"] = serde_json::json!(["NOVALUE"]));
    bad(&|v| v["devices"][0]["containerEdits"]["mounts"] = serde_json::json!([{"hostPath": "/x"}]));
    bad(&|v| {
        v["devices"][0]["containerEdits"]["deviceNodes"] = serde_json::json!([{"hostPath": "/x"}]);
    });
    bad(&|v| {
        v["devices"][0]["containerEdits"]["deviceNodes"] =
            serde_json::json!([{"path": "/dev/x", "permissions": "rx"}]);
    });
    bad(&|v| v["devices"][0]["bogus"] = 1.into());
    bad(&|v| v["bogus"] = 1.into());
    bad(&|v| {
        let d = v["devices"][0].clone();
        v["devices"].as_array_mut().unwrap().push(d);
    });
}

#[test]
fn gpumuxctl_cdi_exit_codes_and_output_file() {
    let dir = TempDir::new("cdi-cli");
    let config = config_with_tenants(&dir.0, &[]);
    let out_file = dir.0.join("cdi").join("gpumux.json");
    let out_arg = out_file.to_str().unwrap();

    // No tenants: nothing to describe (1); with --output, a stale file is removed (0).
    assert_eq!(gpumuxctl(&config, &["cdi"]).status.code(), Some(1));
    std::fs::create_dir_all(out_file.parent().unwrap()).unwrap();
    std::fs::write(&out_file, "stale").unwrap();
    assert_eq!(
        gpumuxctl(&config, &["cdi", "--output", out_arg])
            .status
            .code(),
        Some(0)
    );
    assert!(!out_file.exists());

    // Bad tenant names are usage errors (2), including valid tenant names CDI refuses.
    for bad in ["Team", "a/b", "a-"] {
        let out = gpumuxctl(&config, &["cdi", "--tenant", bad]);
        assert_eq!(out.status.code(), Some(2), "--tenant {bad}");
    }
    // An unreadable tenants dir is a config error (2).
    std::fs::remove_dir_all(dir.0.join("tenants.d")).unwrap();
    assert_eq!(gpumuxctl(&config, &["cdi"]).status.code(), Some(2));

    // Explicit tenants, written atomically to the output file (mode 0644).
    let out = gpumuxctl(
        &config,
        &["cdi", "--tenant", "x", "--tenant", "y", "--output", out_arg],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    validate_cdi(&spec).unwrap();
    assert_eq!(spec["devices"].as_array().unwrap().len(), 2);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // Files in tenants_dir that cannot be CDI devices are skipped with a note.
    let config = config_with_tenants(&dir.0, &["ok", "trailing-"]);
    let out = gpumuxctl(&config, &["cdi"]);
    assert!(out.status.success());
    let spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(spec["devices"].as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("trailing-.toml"));
}

// --- systemd ----------------------------------------------------------------------------

fn unit_files() -> Vec<PathBuf> {
    let mut units: Vec<_> = std::fs::read_dir(repo().join("packaging/systemd"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "service" || e == "path"))
        .collect();
    units.sort();
    units
}

#[test]
fn gpumuxd_unit_has_the_contract_directives() {
    let unit = std::fs::read_to_string(repo().join("packaging/systemd/gpumuxd.service")).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "Type=notify",
        "ExecStart=/usr/bin/gpumuxd --config /etc/gpumux/gpumuxd.toml",
        "Restart=on-failure",
        "RuntimeDirectory=gpumux",
        "RuntimeDirectoryPreserve=yes",
        "ReadWritePaths=/run/gpumux",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(lines.contains(&want), "gpumuxd.service lacks `{want}`");
    }
    // NVML needs the NVIDIA device nodes: PrivateDevices would hide them.
    assert!(!lines.iter().any(|l| l.starts_with("PrivateDevices=yes")));
    // NVML reads /proc/driver/nvidia.
    assert!(!lines.iter().any(|l| l.starts_with("ProcSubset=pid")));
    let names: Vec<_> = unit_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["gpumux-cdi.path", "gpumux-cdi.service", "gpumuxd.service"]
    );
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("note: systemd-analyze is not installed; skipping `systemd-analyze verify`");
        return;
    };
    assert!(probe.status.success());
    let dir = TempDir::new("units");
    // verify checks that ExecStart binaries exist: point them at the built ones.
    let mut paths = Vec::new();
    for unit in unit_files() {
        let text = std::fs::read_to_string(&unit)
            .unwrap()
            .replace("/usr/bin/gpumuxd", env!("CARGO_BIN_EXE_gpumuxd"))
            .replace("/usr/bin/gpumuxctl", env!("CARGO_BIN_EXE_gpumuxctl"));
        let copy = dir.0.join(unit.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        paths.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings about our units (unknown keys, bad values) name the unit; anything else is
    // about the machine running the test.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gpumuxd") || l.contains("gpumux-cdi"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify failed:\n{stderr}"
    );
}

// --- config files -----------------------------------------------------------------------

#[test]
fn packaged_config_documents_every_default() {
    let path = repo().join("packaging/gpumuxd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // As shipped (all commented out): the defaults.
    assert_eq!(
        DaemonConfig::parse(&path, &text).unwrap(),
        DaemonConfig::default()
    );
    // Every commented `#key = value` line, uncommented, is still exactly the defaults.
    let mut keys = Vec::new();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => {
                keys.push(rest.split(" = ").next().unwrap().to_string());
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        DaemonConfig::parse(&path, &uncommented).unwrap(),
        DaemonConfig::default()
    );
    keys.sort();
    assert_eq!(
        keys,
        [
            "drain_budget_us",
            "log_level",
            "max_connections_per_tenant",
            "metrics_listen",
            "quantum_ms",
            "state_dir",
            "tenants_dir"
        ]
    );
}

#[test]
fn example_tenant_sample_is_a_valid_quota() {
    let path = repo().join("packaging/tenants.d/example.toml.sample");
    let text = std::fs::read_to_string(&path).unwrap();
    let q = TenantQuota::parse(&path, "example", &text).unwrap();
    assert_eq!((q.memory_limit, q.weight), (10 << 30, 2));
    // With its optional key uncommented too.
    let all = text.replace("#compute_limit", "compute_limit");
    let q = TenantQuota::parse(&path, "example", &all).unwrap();
    assert_eq!(q.compute_limit_permille, Some(500));
    // `.sample` is not a quota file: the daemon and gpumuxctl pass over it.
    assert_eq!(gpumux_common::names::tenant_of_quota_file(&path), None);
}

// --- the Debian package (opt-in) ----------------------------------------------------------

/// Builds the .deb (or takes `GPUMUX_DEB`) and checks its contents with `dpkg-deb`. Opt-in with
/// `GPUMUX_TEST_DEB=1`: it needs a release build (scripts/test.sh runs it).
#[test]
fn deb_package_contents() {
    if std::env::var_os("GPUMUX_TEST_DEB").is_none_or(|v| v.is_empty() || v == "0") {
        println!("note: set GPUMUX_TEST_DEB=1 to build and check the .deb (needs a release build)");
        return;
    }
    let deb = match std::env::var_os("GPUMUX_DEB") {
        // Relative to the workspace root (cargo runs tests in daemon/).
        Some(p) if !p.is_empty() => repo().join(p),
        _ => {
            let out = Command::new(repo().join("packaging/build-deb.sh"))
                .output()
                .expect("run packaging/build-deb.sh");
            assert!(
                out.status.success(),
                "build-deb.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("build-deb.sh prints the .deb")
                    .trim(),
            )
        }
    };
    assert!(deb.exists(), "{} does not exist", deb.display());

    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .expect("dpkg-deb -c (install dpkg)");
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    // `-rw-r--r-- root/root 123 2024-01-01 00:00 ./usr/bin/gpumuxd` → (mode, path)
    let entries: Vec<(String, String)> = listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let mode = f.next()?.to_string();
            let path = f.last()?.trim_start_matches('.').to_string();
            Some((mode, path))
        })
        .collect();
    let mode_of = |p: &str| {
        entries
            .iter()
            .find(|(_, path)| path.trim_end_matches('/') == p)
            .map_or_else(
                || panic!("{p} is not in the package:\n{listing}"),
                |(m, _)| m.as_str(),
            )
    };
    assert_eq!(mode_of("/usr/bin/gpumuxd"), "-rwxr-xr-x");
    assert_eq!(mode_of("/usr/bin/gpumuxctl"), "-rwxr-xr-x");
    assert_eq!(mode_of("/usr/lib/gpumux/libgpumux.so"), "-rw-r--r--");
    assert_eq!(mode_of("/etc/gpumux/gpumuxd.toml"), "-rw-r--r--");
    assert!(mode_of("/etc/gpumux/tenants.d").starts_with('d'));
    mode_of("/etc/gpumux/tenants.d/example.toml.sample");
    mode_of("/usr/share/doc/gpumux/README.md");
    mode_of("/usr/share/gpumux/monitoring/gpumux-dashboard.json");
    mode_of("/usr/share/gpumux/monitoring/gpumux-alerts.yml");
    let unit_dir = if entries
        .iter()
        .any(|(_, p)| p == "/lib/systemd/system/gpumuxd.service")
    {
        "/lib/systemd/system"
    } else {
        "/usr/lib/systemd/system"
    };
    for unit in ["gpumuxd.service", "gpumux-cdi.service", "gpumux-cdi.path"] {
        assert_eq!(mode_of(&format!("{unit_dir}/{unit}")), "-rw-r--r--");
    }
    // Test substrate never ships.
    for (_, path) in &entries {
        let name = path.rsplit('/').next().unwrap_or("");
        for fake in [
            "libcuda",
            "libnvidia-ml",
            "libnvidia_ml",
            "fakegpu",
            "fake-cuda",
            "fake_cuda",
            "fake-nvml",
            "fake_nvml",
            "workload",
        ] {
            assert!(
                !name.contains(fake) && !path.contains("/tests/"),
                "{path} is test substrate"
            );
        }
    }

    let field = |f: &str| {
        let out = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg(f)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "gpumux");
    assert!(!field("Depends").is_empty());

    // Config files are conffiles; the units are enabled and started by the maintainer scripts.
    let ctrl = TempDir::new("deb-ctrl");
    let ok = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&ctrl.0)
        .status()
        .unwrap();
    assert!(ok.success());
    let conffiles = std::fs::read_to_string(ctrl.0.join("conffiles")).unwrap();
    assert!(conffiles.lines().any(|l| l == "/etc/gpumux/gpumuxd.toml"));
    let postinst = std::fs::read_to_string(ctrl.0.join("postinst")).unwrap();
    assert!(postinst.contains("gpumuxd.service") && postinst.contains("gpumux-cdi.path"));
}
