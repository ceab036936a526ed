//! The Kubernetes manifests (packaging/kubernetes/) agree with the code: the device plugin's
//! flags exist, the readiness probe watches the plugin's socket, the gpumuxd config in the
//! ConfigMap is valid, and the host paths the plugin hands to the kubelet are mounted at the
//! same paths in its container.

use gpumux_common::config::DaemonConfig;
use gpumux_k8s::config::{CONTAINER_SHIM_PATH, DEFAULT_ENDPOINT};
use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/kubernetes/gpumux.yaml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The lines of the block that follows `header` (a line equal to it after trimming), as long
/// as they are indented deeper than it.
fn block<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let mut lines = text.lines();
    let start = lines
        .by_ref()
        .find(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("no `{header}` in the manifest"));
    let indent = start.len() - start.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .collect()
}

#[test]
fn plugin_flags_exist() {
    let text = manifest();
    // The command's items follow the program's at the same indentation.
    let flags: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "- /usr/bin/gpumux-device-plugin")
        .skip(1)
        .map(|l| l.trim())
        .take_while(|l| l.starts_with("- --"))
        .map(|l| l.trim_start_matches("- ").split('=').next().unwrap())
        .collect();
    assert!(flags.len() >= 3, "{flags:?}");
    let help = Command::new(env!("CARGO_BIN_EXE_gpumux-device-plugin"))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for f in flags {
        assert!(
            help.contains(&format!("{f} ")),
            "{f} is not a flag:\n{help}"
        );
    }
}

#[test]
fn probe_watches_the_plugin_socket() {
    let text = manifest();
    assert!(text.contains(&format!(
        "\"/var/lib/kubelet/device-plugins/{DEFAULT_ENDPOINT}\""
    )));
}

#[test]
fn gpumuxd_config_is_valid() {
    let text = manifest();
    let lines = block(&text, "gpumuxd.toml: |");
    let toml: String = lines.iter().map(|l| format!("{}\n", l.trim())).collect();
    let cfg = DaemonConfig::parse(Path::new("gpumux.yaml"), &toml).expect("valid config");
    assert_eq!(cfg.state_dir, PathBuf::from("/run/gpumux"));
    assert_eq!(cfg.tenants_dir, PathBuf::from("/etc/gpumux/tenants.d"));
}

#[test]
fn host_paths_are_mounted_where_they_are() {
    let text = manifest();
    // volume name → host path
    let mut volumes = std::collections::HashMap::new();
    let vol_lines = block(&text, "volumes:");
    for (i, l) in vol_lines.iter().enumerate() {
        if let Some(name) = l.trim().strip_prefix("- name: ")
            && let Some(path) = vol_lines[i + 1..]
                .iter()
                .take(3)
                .find_map(|l| l.trim().strip_prefix("path: "))
        {
            volumes.insert(name.to_string(), path.to_string());
        }
    }
    let plugin = block(&text, "- name: device-plugin");
    let mounts = plugin
        .iter()
        .skip_while(|l| l.trim() != "volumeMounts:")
        .collect::<Vec<_>>();
    let mut mounted = std::collections::HashMap::new();
    for (i, l) in mounts.iter().enumerate() {
        if let Some(name) = l.trim().strip_prefix("- name: ") {
            let at = mounts[i + 1].trim().strip_prefix("mountPath: ").unwrap();
            mounted.insert(name.to_string(), at.to_string());
        }
    }
    let shim_dir = Path::new(CONTAINER_SHIM_PATH).parent().unwrap();
    for host in [
        "/run/gpumux",
        "/etc/gpumux/tenants.d",
        shim_dir.to_str().unwrap(),
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet/pod-resources",
        "/var/lib/gpumux/device-plugin",
    ] {
        let (name, _) = volumes
            .iter()
            .find(|(_, p)| p.as_str() == host)
            .unwrap_or_else(|| panic!("no hostPath volume for {host}: {volumes:?}"));
        assert_eq!(
            mounted.get(name).map(String::as_str),
            Some(host),
            "{host} must be mounted at the same path in the plugin's container"
        );
    }
}
