//! Tenant names and the filesystem paths derived from them (SPEC: `tenants_dir/<tenant>.toml`,
//! `state_dir/tenants/<tenant>/gpumux.sock`).

use std::path::{Path, PathBuf};
use thiserror::Error;

/// A tenant name violates `[a-z0-9][a-z0-9_.-]{0,62}`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a valid tenant name: use 1-63 characters of a-z, 0-9, `_`, `.`, `-`, starting with a letter or digit"
)]
pub struct BadTenantName(pub String);

/// Checks a tenant name against the SPEC's pattern.
pub fn validate_tenant_name(name: &str) -> Result<(), BadTenantName> {
    let bytes = name.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .skip(1)
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && bytes.len() <= 63 {
        Ok(())
    } else {
        Err(BadTenantName(name.to_string()))
    }
}

/// `state_dir/tenants/<tenant>`: the directory mounted into the tenant's containers.
pub fn tenant_dir(state_dir: &Path, tenant: &str) -> PathBuf {
    state_dir.join("tenants").join(tenant)
}

/// The socket's file name inside a tenant's directory.
pub const SOCKET_NAME: &str = "gpumux.sock";

/// `state_dir/tenants/<tenant>/gpumux.sock`.
pub fn tenant_socket(state_dir: &Path, tenant: &str) -> PathBuf {
    tenant_dir(state_dir, tenant).join(SOCKET_NAME)
}

/// `state_dir/gpumuxd.sock`: the operator's control socket (root only).
pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("gpumuxd.sock")
}

/// The tenant a quota file configures: its file stem, if it is a `.toml` file with a valid name.
pub fn tenant_of_quota_file(path: &Path) -> Option<String> {
    if path.extension()? != "toml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    validate_tenant_name(stem).ok()?;
    Some(stem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "team-a", "pod_1.2", "0abc", &"x".repeat(63)] {
            assert!(validate_tenant_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a/b", "a b", ".a", &"x".repeat(64), "é"] {
            assert!(validate_tenant_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        let s = Path::new("/run/gpumux");
        assert_eq!(
            tenant_socket(s, "a"),
            Path::new("/run/gpumux/tenants/a/gpumux.sock")
        );
        assert_eq!(
            tenant_of_quota_file(Path::new("/x/team-a.toml")),
            Some("team-a".into())
        );
        assert_eq!(tenant_of_quota_file(Path::new("/x/.team-a.toml.swp")), None);
        assert_eq!(tenant_of_quota_file(Path::new("/x/Team.toml")), None);
        assert_eq!(tenant_of_quota_file(Path::new("/x/a.yaml")), None);
    }
}
