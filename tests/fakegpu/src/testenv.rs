//! Test environment helper: an isolated fake GPU per test (fresh state file in a temporary
//! directory, and a library directory whose `libcuda.so.1`/`libnvidia-ml.so.1` point at the fakes
//! built in [`target_dir`]).
//!
//! [`FakeGpuEnv::new`] makes an *exact* device: contexts and modules occupy no device memory,
//! so a test that sizes allocations to a limit or to the device measures exactly what it
//! allocated. [`FakeGpuEnv::with_config`] gives a device with the driver's own overhead
//! ([`DeviceConfig::with_overhead`]), for the tests of that overhead.

use crate::config::DeviceConfig;
use crate::snapshot::Snapshot;
use crate::state::GpuState;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// An isolated fake GPU. The temporary directory is removed on drop.
pub struct FakeGpuEnv {
    dir: PathBuf,
    lib_dir: PathBuf,
    state_path: PathBuf,
    config: DeviceConfig,
}

/// `target/<profile>` of the running binary: the parent of `deps/` for test binaries, the
/// binary's own directory otherwise.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps"))
        || dir.file_name() == Some(OsStr::new("examples"))
    {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl FakeGpuEnv {
    /// New isolated fake GPU: fresh state file in a temp dir, `devices` = memory per device,
    /// no context or module overhead.
    ///
    /// # Panics
    /// On an invalid configuration or I/O failure (it is a test helper).
    pub fn new(devices: &[u64]) -> FakeGpuEnv {
        Self::with_config(DeviceConfig::new(devices).expect("valid fake GPU configuration"))
    }

    /// New isolated fake GPU with this configuration (e.g. with context and module overhead).
    ///
    /// # Panics
    /// On I/O failure (it is a test helper).
    pub fn with_config(config: DeviceConfig) -> FakeGpuEnv {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "fakegpu-{}-{}-{:08x}",
            std::process::id(),
            n,
            nanos
        ));
        std::fs::create_dir_all(&dir).expect("create fake GPU temp dir");
        let lib_dir = dir.join("lib");
        std::fs::create_dir_all(&lib_dir).expect("create fake GPU lib dir");
        let target = target_dir();
        for (link, lib) in [
            ("libcuda.so.1", "libcuda.so"),
            ("libcuda.so", "libcuda.so"),
            ("libnvidia-ml.so.1", "libnvidia_ml.so"),
            ("libnvidia-ml.so", "libnvidia_ml.so"),
        ] {
            std::os::unix::fs::symlink(target.join(lib), lib_dir.join(link))
                .expect("symlink fake library");
        }
        let state_path = dir.join("fakegpu.state");
        GpuState::open_or_create(&state_path, &config).expect("create fake GPU state file");
        FakeGpuEnv {
            dir,
            lib_dir,
            state_path,
            config,
        }
    }

    /// Directory with `libcuda.so.1`, `libcuda.so`, `libnvidia-ml.so.1`, `libnvidia-ml.so`.
    pub fn lib_dir(&self) -> &Path {
        &self.lib_dir
    }

    /// The state file.
    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// Makes the fake NVML's process listing fail or hang (`None`: work again), for every
    /// process of this fake GPU.
    pub fn set_nvml_fault(&self, fault: Option<crate::fault::NvmlFault>) {
        crate::fault::set_nvml_fault(&self.state_path, fault).expect("write the NVML fault file");
    }

    /// The configuration the state file was created with.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// `LD_LIBRARY_PATH`, `FAKEGPU_STATE`, `FAKEGPU_DEVICES`, `FAKEGPU_CONTEXT_BYTES`,
    /// `FAKEGPU_MODULE_BYTES_PER_KIB` for child processes (the state file already exists, so
    /// they only document what it holds).
    pub fn envs(&self) -> Vec<(String, String)> {
        let mut ld = self.lib_dir.display().to_string();
        if let Ok(old) = std::env::var("LD_LIBRARY_PATH")
            && !old.is_empty()
        {
            ld = format!("{ld}:{old}");
        }
        let devices: Vec<String> = self.config.memory.iter().map(|d| d.to_string()).collect();
        vec![
            ("LD_LIBRARY_PATH".into(), ld),
            (
                "FAKEGPU_STATE".into(),
                self.state_path.display().to_string(),
            ),
            ("FAKEGPU_DEVICES".into(), devices.join(",")),
            (
                "FAKEGPU_CONTEXT_BYTES".into(),
                self.config.context_bytes.to_string(),
            ),
            (
                "FAKEGPU_MODULE_BYTES_PER_KIB".into(),
                self.config.module_bytes_per_kib.to_string(),
            ),
        ]
    }

    /// A command for `program` with [`Self::envs`] applied.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.envs(self.envs());
        c
    }

    /// Snapshot of this fake GPU (reclaims dead processes first).
    ///
    /// # Panics
    /// If the state file cannot be read.
    pub fn snapshot(&self) -> Snapshot {
        GpuState::open_existing(&self.state_path)
            .expect("open fake GPU state")
            .snapshot()
    }
}

impl Drop for FakeGpuEnv {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
