//! The daemon config (`gpumuxd.toml`) and per-tenant quota files (`tenants_dir/<tenant>.toml`).
//!
//! Parsing is strict: an unknown key, a malformed size, a weight out of range is an error that
//! names the file, the line and the reason, so `gpumuxctl check` and the daemon's log can say
//! exactly what to fix. Device selectors are resolved against real devices by the daemon.
//!
//! `priority` is a tenant's class (latency > normal > batch: see the daemon's scheduler); the
//! `[owner]` table is descriptive only (the Kubernetes pod or claim a tenant was created for,
//! shown in status and metrics).

use crate::names::{tenant_of_quota_file, validate_tenant_name};
use crate::size::{parse_percent_permille, parse_size};
use serde::Deserialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Default daemon config location (`gpumuxd --config` overrides).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gpumux/gpumuxd.toml";
/// Default quantum of device time granted to a tenant.
pub const DEFAULT_QUANTUM_MS: u32 = 50;
/// Default device time a lower-class tenant's process may have queued ahead beside a higher
/// class (`drain_budget_us`).
pub const DEFAULT_DRAIN_BUDGET_US: u32 = 2000;
/// Largest `drain_budget_us`, and the most a busy host may scale a tenant's budget up to.
pub const MAX_DRAIN_BUDGET_US: u32 = 100_000;
/// Largest config or quota file read; a larger one is rejected.
pub const MAX_CONFIG_FILE: u64 = 64 * 1024;
/// Default cap on a tenant's simultaneous connections (registered processes and connections
/// that have not said `Hello` yet).
pub const DEFAULT_MAX_CONNECTIONS_PER_TENANT: u32 = 1100;

/// A config file is wrong: which file, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem is at a place in the file.
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The daemon's own settings. Every key has a default; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Runtime state: sockets (`/run/gpumux`).
    pub state_dir: PathBuf,
    /// Where tenant quota files live (`/etc/gpumux/tenants.d`).
    pub tenants_dir: PathBuf,
    /// Length of a compute time slice.
    pub quantum_ms: u32,
    /// How much device time (µs) a process of a tenant may have queued on a device where a
    /// tenant of a higher `priority` class may run: what a revocation for that tenant waits
    /// for, beyond the kernel running.
    pub drain_budget_us: u32,
    /// Prometheus listen address (`host:port`); `None` when set to `""`.
    pub metrics_listen: Option<String>,
    /// tracing filter, e.g. `info` or `gpumux_daemon=debug`.
    pub log_level: String,
    /// Most simultaneous connections one tenant may hold; more are refused.
    pub max_connections_per_tenant: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: PathBuf::from("/run/gpumux"),
            tenants_dir: PathBuf::from("/etc/gpumux/tenants.d"),
            quantum_ms: DEFAULT_QUANTUM_MS,
            drain_budget_us: DEFAULT_DRAIN_BUDGET_US,
            metrics_listen: Some("127.0.0.1:9464".to_string()),
            log_level: "info".to_string(),
            max_connections_per_tenant: DEFAULT_MAX_CONNECTIONS_PER_TENANT,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemonConfig {
    state_dir: Option<PathBuf>,
    tenants_dir: Option<PathBuf>,
    quantum_ms: Option<Spanned<i64>>,
    drain_budget_us: Option<Spanned<i64>>,
    metrics_listen: Option<Spanned<String>>,
    log_level: Option<String>,
    max_connections_per_tenant: Option<Spanned<i64>>,
}

impl DaemonConfig {
    /// Reads and validates a daemon config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(path, &read_config_file(path)?)
    }

    /// Validates daemon config text (`path` is used in error messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |span: Option<Range<usize>>, reason: String| ConfigError {
            file: path.to_path_buf(),
            line: span.map(|s| line_of(text, s.start)),
            reason,
        };
        let raw: RawDaemonConfig =
            toml::from_str(text).map_err(|e| err(e.span(), e.message().to_string()))?;
        let mut cfg = DaemonConfig::default();
        if let Some(d) = raw.state_dir {
            cfg.state_dir = d;
        }
        if let Some(d) = raw.tenants_dir {
            cfg.tenants_dir = d;
        }
        if let Some(q) = raw.quantum_ms {
            let v = *q.get_ref();
            if !(1..=10_000).contains(&v) {
                return Err(err(
                    Some(q.span()),
                    format!("quantum_ms = {v} is out of range (1 to 10000)"),
                ));
            }
            cfg.quantum_ms = v as u32;
        }
        if let Some(b) = raw.drain_budget_us {
            let v = *b.get_ref();
            if !(100..=i64::from(MAX_DRAIN_BUDGET_US)).contains(&v) {
                return Err(err(
                    Some(b.span()),
                    format!("drain_budget_us = {v} is out of range (100 to {MAX_DRAIN_BUDGET_US})"),
                ));
            }
            cfg.drain_budget_us = v as u32;
        }
        if let Some(m) = raw.metrics_listen {
            cfg.metrics_listen = parse_metrics_listen(&m).map_err(|r| err(Some(m.span()), r))?;
        }
        if let Some(l) = raw.log_level {
            cfg.log_level = l;
        }
        if let Some(m) = raw.max_connections_per_tenant {
            let v = *m.get_ref();
            cfg.max_connections_per_tenant = u32::try_from(v)
                .ok()
                .filter(|v| (1..=1_000_000).contains(v))
                .ok_or_else(|| {
                    err(
                        Some(m.span()),
                        format!("max_connections_per_tenant = {v} is out of range (1 to 1000000)"),
                    )
                })?;
        }
        for (key, dir) in [
            ("state_dir", &cfg.state_dir),
            ("tenants_dir", &cfg.tenants_dir),
        ] {
            if !dir.is_absolute() {
                return Err(err(
                    None,
                    format!("{key} = \"{}\" must be an absolute path", dir.display()),
                ));
            }
        }
        Ok(cfg)
    }
}

/// `metrics_listen`: an address, or `""` for none.
fn parse_metrics_listen(m: &Spanned<String>) -> Result<Option<String>, String> {
    let v = m.get_ref().trim();
    if v.is_empty() {
        Ok(None)
    } else if v.parse::<std::net::SocketAddr>().is_err() {
        Err(format!(
            "metrics_listen = \"{v}\" is not an address like \"127.0.0.1:9464\" (use \"\" to disable)"
        ))
    } else {
        Ok(Some(v.to_string()))
    }
}

/// Which device a tenant may use: its index as the node sees it, or its UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceSelector {
    Index(u32),
    Uuid(String),
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelector::Index(i) => write!(f, "{i}"),
            DeviceSelector::Uuid(u) => write!(f, "{u}"),
        }
    }
}

/// A tenant's quota, as its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantQuota {
    pub name: String,
    /// Devices this tenant may use; empty means all devices.
    pub devices: Vec<DeviceSelector>,
    /// Hard limit per device, in bytes.
    pub memory_limit: u64,
    /// Relative compute share under contention (1..=1000).
    pub weight: u32,
    /// Hard cap on device time in per-mille (1..=1000), if any.
    pub compute_limit_permille: Option<u32>,
    /// Priority class (`priority` key; default [`Priority::Normal`]): a tenant of a higher
    /// class preempts lower ones on a shared device (within its weight plus a credit).
    pub priority: Priority,
    /// Who the tenant stands for (`[owner]` table), when an orchestrator created it.
    pub owner: Option<TenantOwner>,
}

/// A tenant's priority class (SPEC: `priority = "latency" | "normal" | "batch"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Interactive work that should preempt lower classes.
    Latency,
    /// The default.
    #[default]
    Normal,
    /// Throughput work that yields to the others.
    Batch,
}

impl Priority {
    /// Every class, in order of precedence.
    pub const ALL: [Priority; 3] = [Priority::Latency, Priority::Normal, Priority::Batch];

    /// Precedence: a tenant of a higher one preempts tenants of lower ones.
    pub fn precedence(self) -> u8 {
        match self {
            Priority::Latency => 2,
            Priority::Normal => 1,
            Priority::Batch => 0,
        }
    }

    /// The name used in quota files, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Latency => "latency",
            Priority::Normal => "normal",
            Priority::Batch => "batch",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    /// Parses a class name; the error says which names exist.
    fn from_str(s: &str) -> Result<Priority, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("priority = \"{s}\" is not one of \"latency\", \"normal\", \"batch\"")
            })
    }
}

/// The Kubernetes object a tenant was created for (`[owner]` in its quota file): written by
/// the device plugin (namespace, pod, container) and the DRA driver (namespace, pod, claim),
/// shown in status and metrics so an operator sees pods, not generated tenant names. Each
/// value is a Kubernetes object name: 1 to 253 characters of `a-z`, `0-9`, `-`, `.`, starting
/// and ending with a letter or digit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantOwner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

impl TenantOwner {
    /// The keys and their values, in the order they are written and shown.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 4] {
        [
            ("namespace", self.namespace.as_deref()),
            ("pod", self.pod.as_deref()),
            ("container", self.container.as_deref()),
            ("claim", self.claim.as_deref()),
        ]
    }

    /// No key set.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in self.fields() {
            if let Some(v) = value {
                validate_object_name(v).map_err(|why| format!("owner.{key} = \"{v}\" {why}"))?;
            }
        }
        Ok(())
    }

    /// The `[owner]` table as quota-file text (empty when no key is set).
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        if self.is_empty() {
            return s;
        }
        s.push_str("[owner]\n");
        for (key, value) in self.fields() {
            if let Some(v) = value {
                s.push_str(&format!("{key} = {}\n", toml::Value::String(v.to_string())));
            }
        }
        s
    }

    /// `namespace/pod[/container]`, or `namespace/claim:<claim>` without a pod; `-` if empty.
    pub fn display(&self) -> String {
        let ns = self.namespace.as_deref().unwrap_or("-");
        match (&self.pod, &self.container, &self.claim) {
            (Some(p), Some(c), _) => format!("{ns}/{p}/{c}"),
            (Some(p), None, _) => format!("{ns}/{p}"),
            (None, _, Some(c)) => format!("{ns}/claim:{c}"),
            (None, Some(c), None) => format!("{ns}/-/{c}"),
            (None, None, None) if self.namespace.is_some() => ns.to_string(),
            (None, None, None) => "-".to_string(),
        }
    }
}

/// A Kubernetes object name (DNS subdomain): what `[owner]` values must be.
fn validate_object_name(v: &str) -> Result<(), &'static str> {
    let b = v.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || b.len() > 253 {
        return Err("must be 1 to 253 characters long");
    }
    if !b.iter().all(|c| alnum(c) || matches!(c, b'-' | b'.')) {
        return Err("may only contain a-z, 0-9, `-` and `.`");
    }
    if !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDevice {
    Index(i64),
    Uuid(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    devices: Option<Spanned<Vec<Spanned<RawDevice>>>>,
    memory_limit: Spanned<RawSize>,
    weight: Option<Spanned<i64>>,
    compute_limit: Option<Spanned<String>>,
    priority: Option<Spanned<String>>,
    owner: Option<Spanned<TenantOwner>>,
}

/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 1000;

impl TenantQuota {
    /// Reads and validates `tenants_dir/<tenant>.toml`; the tenant is the file stem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config_file(path)?;
        let name = tenant_of_quota_file(path).ok_or_else(|| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            ConfigError {
                file: path.to_path_buf(),
                line: None,
                reason: validate_tenant_name(&stem).err().map_or_else(
                    || "a quota file must be named <tenant>.toml".to_string(),
                    |e| e.to_string(),
                ),
            }
        })?;
        Self::parse(path, &name, &text)
    }

    /// Validates quota-file text for tenant `name` (`path` is used in error messages).
    pub fn parse(path: &Path, name: &str, text: &str) -> Result<Self, ConfigError> {
        let at = Located { path, text };
        validate_tenant_name(name).map_err(|e| at.err(None, e.to_string()))?;
        let raw: RawTenant =
            toml::from_str(text).map_err(|e| at.err(e.span(), e.message().to_string()))?;
        Ok(TenantQuota {
            name: name.to_string(),
            devices: match raw.devices {
                Some(list) => parse_devices(&at, list)?,
                None => Vec::new(),
            },
            memory_limit: parse_memory_limit(&at, raw.memory_limit)?,
            weight: match raw.weight {
                Some(w) => parse_weight(&at, w)?,
                None => 1,
            },
            compute_limit_permille: match raw.compute_limit {
                Some(c) => Some(
                    parse_percent_permille(c.get_ref())
                        .map_err(|e| at.err(Some(c.span()), format!("compute_limit: {e}")))?,
                ),
                None => None,
            },
            priority: parse_priority(&at, raw.priority)?,
            owner: parse_owner(&at, raw.owner)?,
        })
    }

    /// The quota as quota-file text that [`TenantQuota::parse`] reads back as the same quota.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if !self.devices.is_empty() {
            let list: Vec<String> = self
                .devices
                .iter()
                .map(|d| match d {
                    DeviceSelector::Index(i) => i.to_string(),
                    DeviceSelector::Uuid(u) => toml::Value::String(u.clone()).to_string(),
                })
                .collect();
            out += &format!("devices = [{}]\n", list.join(", "));
        }
        out += &format!("memory_limit = \"{}B\"\n", self.memory_limit);
        out += &format!("weight = {}\n", self.weight);
        if let Some(p) = self.compute_limit_permille {
            out += &format!("compute_limit = \"{}.{}%\"\n", p / 10, p % 10);
        }
        out += &format!("priority = \"{}\"\n", self.priority);
        // A table: after every top-level key.
        if let Some(owner) = &self.owner {
            out += &owner.to_toml();
        }
        out
    }

    /// Whether this tenant may use the device with this index and UUID.
    pub fn allows(&self, index: u32, uuid: &str) -> bool {
        self.devices.is_empty()
            || self.devices.iter().any(|d| match d {
                DeviceSelector::Index(i) => *i == index,
                DeviceSelector::Uuid(u) => u.eq_ignore_ascii_case(uuid),
            })
    }
}

/// Where a value came from: the file (for messages) and its text (for line numbers).
struct Located<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Located<'_> {
    fn err(&self, span: Option<Range<usize>>, reason: String) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: span.map(|s| line_of(self.text, s.start)),
            reason,
        }
    }
}

/// `devices = [...]`: indexes or GPU UUIDs, at least one, none twice.
fn parse_devices(
    at: &Located<'_>,
    list: Spanned<Vec<Spanned<RawDevice>>>,
) -> Result<Vec<DeviceSelector>, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(at.err(Some(list.span()), "devices = [] leaves the tenant no device; list indexes or UUIDs, or omit the key for all devices".into()));
    }
    let mut devices = Vec::new();
    for d in list.into_inner() {
        let span = d.span();
        let sel = match d.into_inner() {
            RawDevice::Index(i) if (0..=u32::MAX as i64).contains(&i) => {
                DeviceSelector::Index(i as u32)
            }
            RawDevice::Index(i) => {
                return Err(at.err(
                    Some(span),
                    format!("device index {i} is negative or too large"),
                ));
            }
            RawDevice::Uuid(u) if u.starts_with("GPU-") && u.len() > 4 => DeviceSelector::Uuid(u),
            RawDevice::Uuid(u) => {
                return Err(at.err(
                    Some(span),
                    format!("device \"{u}\" is neither an index nor a GPU UUID (\"GPU-...\")"),
                ));
            }
        };
        if devices.contains(&sel) {
            return Err(at.err(Some(span), format!("device {sel} is listed twice")));
        }
        devices.push(sel);
    }
    Ok(devices)
}

/// `memory_limit`: bytes, or a size with a unit; positive.
fn parse_memory_limit(at: &Located<'_>, raw: Spanned<RawSize>) -> Result<u64, ConfigError> {
    let span = raw.span();
    match raw.into_inner() {
        RawSize::Bytes(b) if b > 0 => Ok(b as u64),
        RawSize::Bytes(b) => {
            Err(at.err(Some(span), format!("memory_limit = {b} must be positive")))
        }
        RawSize::Text(t) => match parse_size(&t) {
            Ok(0) => Err(at.err(Some(span), "memory_limit must be positive".into())),
            Ok(v) => Ok(v),
            Err(e) => Err(at.err(Some(span), format!("memory_limit: {e}"))),
        },
    }
}

/// `weight`: 1 to [`MAX_WEIGHT`].
fn parse_weight(at: &Located<'_>, w: Spanned<i64>) -> Result<u32, ConfigError> {
    let v = *w.get_ref();
    if (1..=MAX_WEIGHT as i64).contains(&v) {
        Ok(v as u32)
    } else {
        Err(at.err(
            Some(w.span()),
            format!("weight = {v} is out of range (1 to {MAX_WEIGHT})"),
        ))
    }
}

/// `priority`: one of the class names; [`Priority::Normal`] when absent.
fn parse_priority(at: &Located<'_>, p: Option<Spanned<String>>) -> Result<Priority, ConfigError> {
    match p {
        Some(p) => p
            .get_ref()
            .parse()
            .map_err(|why| at.err(Some(p.span()), why)),
        None => Ok(Priority::default()),
    }
}

/// `[owner]`: every value a Kubernetes object name; an empty table is no owner.
fn parse_owner(
    at: &Located<'_>,
    o: Option<Spanned<TenantOwner>>,
) -> Result<Option<TenantOwner>, ConfigError> {
    let Some(o) = o else { return Ok(None) };
    let span = o.span();
    let owner = o.into_inner();
    owner.validate().map_err(|why| at.err(Some(span), why))?;
    Ok((!owner.is_empty()).then_some(owner))
}

/// Reads a config or quota file, refusing anything but a regular file of at most
/// [`MAX_CONFIG_FILE`] bytes: a FIFO, a device (`/dev/zero`), a directory or a huge file in
/// a watched directory must neither block nor exhaust the reader. Symlinks are followed (to a
/// regular file: Kubernetes ConfigMaps are symlinks).
pub fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let fail = |reason: String| ConfigError {
        file: path.to_path_buf(),
        line: None,
        reason,
    };
    // O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(fail(format!(
            "is {kind}: only regular files are read as config"
        )));
    }
    if meta.len() > MAX_CONFIG_FILE {
        return Err(fail(format!(
            "is {} bytes, more than the {MAX_CONFIG_FILE} bytes a config file may have",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE {
        return Err(fail(format!(
            "grew past the {MAX_CONFIG_FILE} bytes a config file may have while being read"
        )));
    }
    String::from_utf8(bytes).map_err(|_| fail("is not UTF-8 text".into()))
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(text: &str) -> Result<TenantQuota, ConfigError> {
        TenantQuota::parse(Path::new("/t/a.toml"), "a", text)
    }

    #[test]
    fn full_tenant() {
        let q = tenant("devices = [0, \"GPU-abc\"]\nmemory_limit = \"10GiB\"\nweight = 2\ncompute_limit = \"50%\"\n").unwrap();
        assert_eq!(
            q.devices,
            vec![
                DeviceSelector::Index(0),
                DeviceSelector::Uuid("GPU-abc".into())
            ]
        );
        assert_eq!(q.memory_limit, 10 << 30);
        assert_eq!(q.weight, 2);
        assert_eq!(q.compute_limit_permille, Some(500));
        assert!(q.allows(0, "GPU-zzz") && q.allows(3, "gpu-ABC") && !q.allows(1, "GPU-x"));
    }

    #[test]
    fn defaults_and_bytes() {
        let q = tenant("memory_limit = 1048576").unwrap();
        assert_eq!(
            (q.weight, q.memory_limit, q.compute_limit_permille),
            (1, 1 << 20, None)
        );
        assert!(q.devices.is_empty() && q.allows(7, "GPU-any"));
    }

    #[test]
    fn errors_name_line_and_reason() {
        let e = tenant("memory_limit = \"1GiB\"\n\nweight = 0\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.reason.contains("weight = 0 is out of range"), "{e}");
        assert_eq!(e.to_string(), format!("/t/a.toml:3: {}", e.reason));

        let e = tenant("memory_limit = \"1GiB\"\nwieght = 2\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.reason.contains("unknown field `wieght`"), "{e}");

        let e = tenant("memory_limit = \"lots\"\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.reason.contains("memory_limit"), "{e}");

        let e = tenant("weight = 1\n").unwrap_err();
        assert!(e.reason.contains("memory_limit"), "{e}");

        for bad in [
            "memory_limit = \"1GiB\"\ncompute_limit = \"0%\"",
            "memory_limit = \"1GiB\"\ndevices = []",
            "memory_limit = \"1GiB\"\ndevices = [-1]",
            "memory_limit = \"1GiB\"\ndevices = [\"gpu0\"]",
            "memory_limit = \"1GiB\"\ndevices = [0, 0]",
            "memory_limit = 0",
            "memory_limit = \"1GiB\"\nweight = 1001",
            "memory_limit = [",
        ] {
            assert!(tenant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("gpumux-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.toml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_config_file(&fifo).unwrap_err();
        assert!(e.reason.contains("FIFO"), "{e}");
        let zero = dir.join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_config_file(&zero).unwrap_err();
        assert!(e.reason.contains("device"), "{e}");
        let e = read_config_file(&dir).unwrap_err();
        assert!(e.reason.contains("directory"), "{e}");
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_FILE as usize + 1]).unwrap();
        let e = read_config_file(&big).unwrap_err();
        assert!(e.reason.contains("more than"), "{e}");
        let ok = dir.join("ok.toml");
        std::fs::write(&ok, "memory_limit = \"1GiB\"\n").unwrap();
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert_eq!(TenantQuota::load(&link).unwrap().memory_limit, 1 << 30);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Any text: a quota or an error with a line inside the file, never a panic.
        #[test]
        fn quota_parser_never_panics(text in "(?s).{0,300}") {
            check_parse(&text);
        }

        /// Text made of the file's own keys and plausible values, so the validation paths run.
        #[test]
        fn quota_parser_validates_every_combination(
            lines in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "devices", "memory_limit", "weight", "compute_limit", "priority", "owner",
                        "bogus", "memory_limit.x",
                    ]),
                    proptest::sample::select(vec![
                        "0", "-1", "1", "1001", "9223372036854775807", "\"1GiB\"", "\"0\"", "\"16EiB\"",
                        "\"50%\"", "\"0%\"", "\"101%\"", "\"GPU-\"", "[0, 1]", "[0, 0]", "[]", "[\"GPU-ab\", 3]",
                        "[-5]", "[1.5]", "{ a = 1 }", "\"\"", "\"\\u0000\"", "1e400", "true",
                        "\"batch\"", "\"latency\"", "{ namespace = \"ns\", pod = \"p-0\" }",
                        "{ claim = \"gpu\" }", "{}", "{ pod = \"Bad\" }",
                    ]),
                ),
                0..6,
            )
        ) {
            let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            check_parse(&text);
        }
    }

    fn check_parse(text: &str) {
        match TenantQuota::parse(Path::new("/t/a.toml"), "a", text) {
            Ok(q) => {
                let again = TenantQuota::parse(Path::new("/t/a.toml"), "a", &q.to_toml());
                assert_eq!(again.as_ref(), Ok(&q), "{}", q.to_toml());
                assert!(q.memory_limit > 0);
                assert!((1..=MAX_WEIGHT).contains(&q.weight));
                assert!(
                    q.compute_limit_permille
                        .is_none_or(|c| (1..=1000).contains(&c))
                );
            }
            Err(e) => {
                let lines = text.lines().count().max(1) + 1;
                assert!(
                    e.line.is_none_or(|l| (1..=lines).contains(&l)),
                    "{e} in {text:?}"
                );
                assert!(!e.reason.is_empty());
            }
        }
    }

    #[test]
    fn priority_and_owner() {
        let q = tenant("memory_limit = \"1GiB\"\n").unwrap();
        assert_eq!((q.priority, q.owner), (Priority::Normal, None));
        for p in Priority::ALL {
            let q = tenant(&format!("memory_limit = 1\npriority = \"{p}\"\n")).unwrap();
            assert_eq!(q.priority, p);
        }
        let e = tenant("memory_limit = 1\n\npriority = \"urgent\"\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(
            e.reason.contains("\"latency\", \"normal\", \"batch\""),
            "{e}"
        );

        let owner = TenantOwner {
            namespace: Some("team-a".into()),
            pod: Some("train-0".into()),
            container: Some("main".into()),
            claim: None,
        };
        let text = format!("memory_limit = 1\n{}", owner.to_toml());
        assert_eq!(
            text,
            "memory_limit = 1\n[owner]\nnamespace = \"team-a\"\npod = \"train-0\"\ncontainer = \"main\"\n"
        );
        let q = tenant(&text).unwrap();
        assert_eq!(q.owner.as_ref(), Some(&owner));
        assert_eq!(owner.display(), "team-a/train-0/main");
        let claim = TenantOwner {
            namespace: Some("ns".into()),
            claim: Some("gpu".into()),
            ..TenantOwner::default()
        };
        assert_eq!(claim.display(), "ns/claim:gpu");
        assert_eq!(TenantOwner::default().to_toml(), "");
        // An empty table is no owner.
        assert_eq!(tenant("memory_limit = 1\n[owner]\n").unwrap().owner, None);

        for (bad, what) in [
            ("[owner]\npod = \"Train\"\n", "owner.pod"),
            ("[owner]\nnamespace = \"\"\n", "owner.namespace"),
            ("[owner]\nclaim = \"-x\"\n", "owner.claim"),
            ("[owner]\nnode = \"n1\"\n", "unknown field `node`"),
            ("[owner]\npod = 3\n", "invalid type"),
        ] {
            let e = tenant(&format!("memory_limit = 1\n{bad}")).unwrap_err();
            assert!(e.reason.contains(what), "{bad}: {e}");
            // The table's header, or the key itself.
            assert!(matches!(e.line, Some(2 | 3)), "{bad}: {e}");
        }
        let long = "a".repeat(254);
        tenant(&format!("memory_limit = 1\n[owner]\npod = \"{long}\"\n")).unwrap_err();
    }

    #[test]
    fn kept_quota_round_trips_priority_and_owner() {
        // What the daemon keeps as a tenant's last good quota reads back as the same quota.
        let q = tenant(
            "devices = [1, \"GPU-ab\"]\nmemory_limit = \"6GiB\"\nweight = 3\ncompute_limit = \"12.5%\"\n\
             priority = \"latency\"\n[owner]\nnamespace = \"team-a\"\npod = \"train-0\"\nclaim = \"gpu\"\n",
        )
        .unwrap();
        assert_eq!(q.priority, Priority::Latency);
        assert!(q.owner.is_some());
        assert_eq!(tenant(&q.to_toml()), Ok(q));
        let plain = tenant("memory_limit = 1\npriority = \"batch\"\n").unwrap();
        assert_eq!(plain.owner, None);
        assert_eq!(tenant(&plain.to_toml()), Ok(plain));
    }

    #[test]
    fn daemon_config() {
        let c = DaemonConfig::parse(Path::new("/c.toml"), "").unwrap();
        assert_eq!(c, DaemonConfig::default());
        let c = DaemonConfig::parse(
            Path::new("/c.toml"),
            "state_dir = \"/tmp/s\"\ntenants_dir = \"/tmp/t\"\nquantum_ms = 10\nmetrics_listen = \"\"\n",
        )
        .unwrap();
        assert_eq!(c.quantum_ms, 10);
        assert_eq!(c.drain_budget_us, DEFAULT_DRAIN_BUDGET_US);
        assert_eq!(c.metrics_listen, None);
        let c = DaemonConfig::parse(Path::new("/c.toml"), "drain_budget_us = 500\n").unwrap();
        assert_eq!(c.drain_budget_us, 500);
        let e = DaemonConfig::parse(Path::new("/c.toml"), "quantum_ms = 5\ndrain_budget_us = 50")
            .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(
            e.reason.contains("drain_budget_us = 50 is out of range"),
            "{e}"
        );
        let e =
            DaemonConfig::parse(Path::new("/c.toml"), "quantum_ms = 10\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        DaemonConfig::parse(Path::new("/c.toml"), "quantum_ms = 0").unwrap_err();
        DaemonConfig::parse(Path::new("/c.toml"), "metrics_listen = \"nope\"").unwrap_err();
        DaemonConfig::parse(Path::new("/c.toml"), "state_dir = \"rel\"").unwrap_err();
        let c =
            DaemonConfig::parse(Path::new("/c.toml"), "max_connections_per_tenant = 8").unwrap();
        assert_eq!(c.max_connections_per_tenant, 8);
        DaemonConfig::parse(Path::new("/c.toml"), "max_connections_per_tenant = 0").unwrap_err();
    }
}
