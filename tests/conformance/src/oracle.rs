//! Where NVIDIA's real libraries are: the cache `scripts/fetch-nvidia-libs.sh` fills
//! (`<cache>/535/`, `<cache>/550/` with `libcuda.so.1`, `libnvidia-ml.so.1` and `VERSION`;
//! `<cache>/cudart/libcudart.so.12`).
//!
//! The cache is `$GPUMUX_NVIDIA_LIBS` (`scripts/test.sh` sets it to what the fetch script prints),
//! else the fetch script's default location. A test that needs a library calls [`require`]: when
//! it is missing, the test fails if `GPUMUX_REQUIRE_NVIDIA=1` (as `scripts/test.sh` sets) and is
//! skipped with a message saying how to fetch it otherwise.

use std::path::{Path, PathBuf};

/// The drivers the conformance tests compare against, oldest first.
pub const DRIVERS: [&str; 2] = ["535", "550"];

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GPUMUX_NVIDIA_LIBS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("GPUMUX_NVIDIA_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
            PathBuf::from,
        );
    cache.join("gpumux/nvidia")
}

/// One real driver's libraries.
#[derive(Debug, Clone)]
pub struct RealDriver {
    /// `535` or `550`.
    pub branch: String,
    /// Its directory in the cache.
    pub dir: PathBuf,
}

impl RealDriver {
    /// `libcuda.so.1`.
    pub fn libcuda(&self) -> PathBuf {
        self.dir.join("libcuda.so.1")
    }

    /// `libnvidia-ml.so.1`.
    pub fn libnvml(&self) -> PathBuf {
        self.dir.join("libnvidia-ml.so.1")
    }

    /// The driver's full version (`550.163.01`), from the package names in `VERSION`.
    pub fn version(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("VERSION")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("libcuda1_"))
            .and_then(|rest| rest.split(['-', '_']).next())
            .map_or_else(|| self.branch.clone(), str::to_owned)
    }
}

/// Whether a missing library fails the test (`GPUMUX_REQUIRE_NVIDIA=1`).
pub fn required() -> bool {
    std::env::var("GPUMUX_REQUIRE_NVIDIA").is_ok_and(|v| v == "1")
}

fn missing(what: &Path) -> Option<RealDriver> {
    let msg = format!(
        "NVIDIA's real driver library {} is missing: run scripts/fetch-nvidia-libs.sh \
         (scripts/test.sh does) or set GPUMUX_NVIDIA_LIBS to its cache directory",
        what.display()
    );
    assert!(!required(), "{msg} (GPUMUX_REQUIRE_NVIDIA=1)");
    eprintln!("skipped: {msg}");
    None
}

/// The real driver `branch` (`"550"`), or `None` (test skipped) when it is not fetched; panics
/// instead when [`required`].
pub fn require(branch: &str) -> Option<RealDriver> {
    let d = RealDriver {
        branch: branch.to_owned(),
        dir: cache_dir().join(branch),
    };
    for lib in [d.libcuda(), d.libnvml()] {
        if !lib.is_file() {
            return missing(&lib);
        }
    }
    Some(d)
}
