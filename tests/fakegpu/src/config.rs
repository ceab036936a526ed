//! Device configuration: memory sizes (`FAKEGPU_DEVICES`), the driver's own memory overhead
//! (`FAKEGPU_CONTEXT_BYTES`, `FAKEGPU_MODULE_BYTES_PER_KIB`), names and UUIDs, state file
//! location.

use crate::FakeGpuError;
use std::path::PathBuf;

/// Memory of the default single device: 16 GiB.
pub const DEFAULT_DEVICE_BYTES: u64 = 16 << 30;
/// Name of every simulated device.
pub const DEVICE_NAME: &str = "gpumux Fake GPU";
/// CUDA compute capability `(major, minor)` of every simulated device (an H100's), as both the
/// fake driver and the fake NVML report it.
pub const COMPUTE_CAPABILITY: (i32, i32) = (9, 0);
/// Most devices a state file can hold.
pub const MAX_DEVICES: usize = 16;
/// Device memory a context occupies when `FAKEGPU_CONTEXT_BYTES` is unset: 300 MiB, about what
/// a CUDA 12 context takes on a data-centre GPU (its local memory, printf and heap buffers,
/// the driver's internal allocations).
pub const DEFAULT_CONTEXT_BYTES: u64 = 300 << 20;
/// Device memory per KiB of module image when `FAKEGPU_MODULE_BYTES_PER_KIB` is unset: the
/// image's own size (code, constants and globals land on the device).
pub const DEFAULT_MODULE_BYTES_PER_KIB: u64 = 1024;
/// A loaded module's device memory is rounded up to this (the driver places code in pages).
pub const MODULE_GRANULARITY: u64 = 64 << 10;

/// Configuration fixed by the process that creates a state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Memory capacity in bytes of each device, in index order.
    pub memory: Vec<u64>,
    /// Device memory each context occupies from its creation to its destruction (charged to
    /// the creating process, never returned by an allocation call). 0: contexts are free.
    pub context_bytes: u64,
    /// Device memory a loaded module or library occupies per KiB of its image (rounded up to
    /// [`MODULE_GRANULARITY`]). 0: modules are free.
    pub module_bytes_per_kib: u64,
}

impl DeviceConfig {
    /// Configuration with these device sizes and no driver overhead (contexts and modules
    /// occupy nothing: every byte of the device is what allocations asked for); rejects zero
    /// devices, too many, or zero-sized ones.
    pub fn new(memory: &[u64]) -> Result<Self, FakeGpuError> {
        if memory.is_empty() {
            return Err(FakeGpuError::InvalidConfig("no device".into()));
        }
        if memory.len() > MAX_DEVICES {
            return Err(FakeGpuError::InvalidConfig(format!(
                "{} devices (at most {MAX_DEVICES})",
                memory.len()
            )));
        }
        if memory.contains(&0) {
            return Err(FakeGpuError::InvalidConfig("a device has 0 bytes".into()));
        }
        Ok(Self {
            memory: memory.to_vec(),
            context_bytes: 0,
            module_bytes_per_kib: 0,
        })
    }

    /// The same devices with the driver's own memory overhead: `context_bytes` per context,
    /// `module_bytes_per_kib` per KiB of a loaded module's image.
    pub fn with_overhead(mut self, context_bytes: u64, module_bytes_per_kib: u64) -> Self {
        self.context_bytes = context_bytes;
        self.module_bytes_per_kib = module_bytes_per_kib;
        self
    }

    /// Configuration from `FAKEGPU_DEVICES` (default: one 16 GiB device),
    /// `FAKEGPU_CONTEXT_BYTES` (a size, default [`DEFAULT_CONTEXT_BYTES`]) and
    /// `FAKEGPU_MODULE_BYTES_PER_KIB` (a size, default [`DEFAULT_MODULE_BYTES_PER_KIB`]).
    pub fn from_env() -> Result<Self, FakeGpuError> {
        let size_var = |name: &str, default: u64| match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => parse_size(&v),
            _ => Ok(default),
        };
        let devices = match std::env::var("FAKEGPU_DEVICES") {
            Ok(v) if !v.trim().is_empty() => Self::new(&parse_sizes(&v)?)?,
            _ => Self::new(&[DEFAULT_DEVICE_BYTES])?,
        };
        Ok(devices.with_overhead(
            size_var("FAKEGPU_CONTEXT_BYTES", DEFAULT_CONTEXT_BYTES)?,
            size_var("FAKEGPU_MODULE_BYTES_PER_KIB", DEFAULT_MODULE_BYTES_PER_KIB)?,
        ))
    }
}

/// Device memory a module image of `image_len` bytes occupies at `bytes_per_kib`: proportional
/// to the image, rounded up to [`MODULE_GRANULARITY`] (0 when `bytes_per_kib` is 0).
pub fn module_bytes(image_len: u64, bytes_per_kib: u64) -> u64 {
    if bytes_per_kib == 0 {
        return 0;
    }
    let raw = (u128::from(image_len) * u128::from(bytes_per_kib)).div_ceil(1024);
    let rounded = raw.div_ceil(u128::from(MODULE_GRANULARITY)) * u128::from(MODULE_GRANULARITY);
    u64::try_from(rounded.max(u128::from(MODULE_GRANULARITY))).unwrap_or(u64::MAX)
}

/// Parses a size: plain bytes, or a number with a `KiB`, `MiB`, `GiB` or `TiB` suffix
/// (`B` is accepted too). Surrounding whitespace is ignored.
pub fn parse_size(s: &str) -> Result<u64, FakeGpuError> {
    let t = s.trim();
    let err = || FakeGpuError::InvalidSize(s.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// Parses a comma-separated list of sizes (`16GiB,8GiB`).
pub fn parse_sizes(s: &str) -> Result<Vec<u64>, FakeGpuError> {
    s.split(',').map(parse_size).collect()
}

/// The state file used when `FAKEGPU_STATE` is unset: `/dev/shm/fakegpu-<uid>.state`.
pub fn default_state_path() -> PathBuf {
    match std::env::var_os("FAKEGPU_STATE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            PathBuf::from(format!("/dev/shm/fakegpu-{uid}.state"))
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The 16 UUID bytes of device `index` (deterministic, RFC 4122 version-4 layout).
pub fn device_uuid(index: u32) -> [u8; 16] {
    let a = splitmix64(0x6770_756d_7578_0000 ^ u64::from(index));
    let b = splitmix64(a ^ 0x4641_4b45);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// The UUID of device `index` as NVIDIA prints it: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn device_uuid_string(index: u32) -> String {
    let u = device_uuid(index);
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// PCI bus number of device `index` (domain 0, device 0, function 0).
pub fn device_pci_bus(index: u32) -> u32 {
    index + 1
}

/// NVML-style PCI bus id of device `index`: `00000000:BB:00.0` (CUDA prints the domain with 4
/// digits: `0000:BB:00.0`).
pub fn device_pci_bus_id(index: u32) -> String {
    format!("00000000:{:02X}:00.0", device_pci_bus(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size(" 16GiB ").unwrap(), 16 << 30);
        assert_eq!(parse_size("2 MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_sizes("16GiB,8GiB").unwrap(), vec![16 << 30, 8 << 30]);
        for bad in [
            "",
            "GiB",
            "1.5GiB",
            "12GB",
            "-1",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn module_bytes_are_proportional_and_rounded() {
        assert_eq!(module_bytes(10_000, 0), 0);
        assert_eq!(module_bytes(1, 1024), MODULE_GRANULARITY);
        assert_eq!(module_bytes(64 << 10, 1024), 64 << 10);
        assert_eq!(module_bytes((64 << 10) + 1, 1024), 128 << 10);
        assert_eq!(module_bytes(2048, 1 << 20), 2 << 20);
        assert_eq!(module_bytes(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn overhead_defaults() {
        let c = DeviceConfig::new(&[1]).unwrap();
        assert_eq!((c.context_bytes, c.module_bytes_per_kib), (0, 0));
        let c = c.with_overhead(5, 6);
        assert_eq!((c.context_bytes, c.module_bytes_per_kib), (5, 6));
    }

    #[test]
    fn config_rejects_bad() {
        DeviceConfig::new(&[]).unwrap_err();
        DeviceConfig::new(&[0]).unwrap_err();
        DeviceConfig::new(&[1; MAX_DEVICES + 1]).unwrap_err();
        DeviceConfig::new(&[1; MAX_DEVICES]).unwrap();
    }

    #[test]
    fn uuids_are_deterministic_and_distinct() {
        let a = device_uuid_string(0);
        assert_eq!(a, device_uuid_string(0));
        assert_ne!(a, device_uuid_string(1));
        assert_eq!(a.len(), 4 + 36);
        assert!(a.starts_with("GPU-"));
        let parts: Vec<&str> = a[4..].split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12]
        );
    }
}
