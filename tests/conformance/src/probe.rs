//! The probe: loads a `libcuda.so.1` or `libnvidia-ml.so.1` with `dlopen` and records what it
//! hands out. Every exported name is looked up with `dlsym` through the same handle first, so an
//! address maps back to the export(s) it is; with an LD_PRELOAD shim that overrides `dlsym`, the
//! shim's wrappers map to the names they were handed out for.
//!
//! CUDA: every API base name, at [`VERSIONS`] × [`FLAGS`], through `cuGetProcAddress` (the
//! 4-argument one of CUDA 11.3) and `cuGetProcAddress_v2`: the `CUresult`, the symbol status and
//! which export the pointer is. NVML: which export `dlsym` hands out for each name.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fmt;
use std::path::Path;

/// The `cudaVersion`s a resolution is asked at.
pub const VERSIONS: [c_int; 9] = [3020, 4000, 7000, 11030, 12000, 12020, 12040, 12090, 13000];

/// `cuGetProcAddress` flags: `CU_GET_PROC_ADDRESS_DEFAULT`, `_LEGACY_STREAM`,
/// `_PER_THREAD_DEFAULT_STREAM`.
pub const FLAGS: [u64; 3] = [0, 1, 2];

/// A name no driver has, asked like the others (the "unknown symbol" answer).
pub const UNKNOWN_NAME: &str = "cuGpumuxNoSuchFunction";

/// What the pointer output holds before the call: a value no driver writes, so "left untouched"
/// shows as `unwritten`.
const SENTINEL: usize = usize::MAX - 0xfff;
/// The status output before the call (not a `CUdriverProcAddressQueryResult`).
const STATUS_SENTINEL: c_int = -1;

/// The name of a flags value.
pub fn flags_name(flags: u64) -> String {
    match flags {
        0 => "DEFAULT".into(),
        1 => "LEGACY_STREAM".into(),
        2 => "PER_THREAD_DEFAULT_STREAM".into(),
        f => format!("FLAGS_{f}"),
    }
}

/// The name of a `CUdriverProcAddressQueryResult`.
pub fn status_name(status: c_int) -> String {
    match status {
        0 => "SUCCESS".into(),
        1 => "SYMBOL_NOT_FOUND".into(),
        2 => "VERSION_NOT_SUFFICIENT".into(),
        STATUS_SENTINEL => "unwritten".into(),
        s => format!("STATUS_{s}"),
    }
}

/// Why the probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `dlopen` failed.
    #[error("dlopen {path}: {reason}")]
    Open {
        /// The library.
        path: String,
        /// `dlerror()`.
        reason: String,
    },
    /// A required entry point is missing.
    #[error("{path} has no {symbol}: is it a CUDA driver library?")]
    Missing {
        /// The library.
        path: String,
        /// The missing entry point.
        symbol: &'static str,
    },
    /// The export list could not be read.
    #[error(transparent)]
    Exports(#[from] crate::exports::ExportsError),
    /// The `conformance-probe` binary failed.
    #[error("{command} failed ({status}): {stderr}")]
    Run {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// Its stderr.
        stderr: String,
    },
}

/// Runs the `conformance-probe` binary `bin` in `mode` (`cuda`, `nvml`, `procaddr-table`) on
/// `lib`, asking the names `names_from` exports, with `envs` added to its environment (e.g.
/// `LD_PRELOAD` of a shim and its `GPUMUX_SOCKET`); returns its output lines.
pub fn run(
    bin: &Path,
    mode: &str,
    lib: &Path,
    names_from: &Path,
    envs: &[(&str, &std::ffi::OsStr)],
) -> Result<Vec<String>, ProbeError> {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(mode).arg(lib).arg("--names-from").arg(names_from);
    cmd.envs(envs.iter().copied());
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| ProbeError::Run {
        command: command.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ProbeError::Run {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The number of data lines (not `#` comments) of a probe output.
pub fn data_lines(lines: &[String]) -> usize {
    lines.iter().filter(|l| !l.starts_with('#')).count()
}

/// A library opened with `dlopen`, with every export's address looked up through the handle.
pub struct Library {
    path: String,
    handle: *mut c_void,
    names_by_addr: HashMap<usize, Vec<String>>,
}

impl Library {
    /// Opens `path` (`RTLD_NOW | RTLD_LOCAL`) and looks up each of `exports` through the handle.
    pub fn open(path: &Path, exports: &[String]) -> Result<Library, ProbeError> {
        let display = path.display().to_string();
        let c = CString::new(display.clone()).map_err(|_| ProbeError::Open {
            path: display.clone(),
            reason: "path contains a NUL byte".into(),
        })?;
        // SAFETY: a valid NUL-terminated path; the library is kept open for the process's life.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(ProbeError::Open {
                path: display,
                reason: dlerror(),
            });
        }
        let mut lib = Library {
            path: display,
            handle,
            names_by_addr: HashMap::new(),
        };
        for name in exports {
            let addr = lib.symbol(name) as usize;
            if addr != 0 {
                lib.names_by_addr
                    .entry(addr)
                    .or_default()
                    .push(name.clone());
            }
        }
        for names in lib.names_by_addr.values_mut() {
            names.sort();
        }
        Ok(lib)
    }

    /// `dlsym(handle, name)` (null if absent).
    pub fn symbol(&self, name: &str) -> *mut c_void {
        let Ok(c) = CString::new(name) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a live handle and a NUL-terminated name.
        unsafe { libc::dlsym(self.handle, c.as_ptr()) }
    }

    /// The export(s) an address is: `a|b` when several names share it, `null`, `unwritten` (the
    /// output was not written) or `unexported`.
    pub fn name_of(&self, addr: usize) -> String {
        match addr {
            0 => "null".into(),
            SENTINEL => "unwritten".into(),
            a => self
                .names_by_addr
                .get(&a)
                .map_or_else(|| "unexported".into(), |n| n.join("|")),
        }
    }

    fn required(&self, symbol: &'static str) -> Result<*mut c_void, ProbeError> {
        match self.symbol(symbol) {
            p if p.is_null() => Err(ProbeError::Missing {
                path: self.path.clone(),
                symbol,
            }),
            p => Ok(p),
        }
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated message owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// Which `cuGetProcAddress` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Api {
    /// `cuGetProcAddress` (CUDA 11.3, no status output).
    V1,
    /// `cuGetProcAddress_v2` (CUDA 12.0).
    V2,
}

/// One answer of `cuGetProcAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The name asked for.
    pub name: String,
    /// `cudaVersion`.
    pub version: c_int,
    /// `flags`.
    pub flags: u64,
    /// Which entry point was asked.
    pub api: Api,
    /// The `CUresult`.
    pub result: i32,
    /// `symbolStatus` (`None` for [`Api::V1`], which has none).
    pub status: Option<c_int>,
    /// The export(s) the pointer is (see [`Library::name_of`]).
    pub symbol: String,
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.name,
            self.version,
            flags_name(self.flags),
            match self.api {
                Api::V1 => "cuGetProcAddress",
                Api::V2 => "cuGetProcAddress_v2",
            },
            self.result,
            self.status.map_or_else(|| "-".into(), status_name),
            self.symbol
        )
    }
}

/// The header line of the probe's CUDA output.
pub const CUDA_HEADER: &str = "# name\tversion\tflags\tapi\tresult\tstatus\tsymbol";

type GetProcAddressV1 = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> i32;
type GetProcAddressV2 =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> i32;

/// The two `cuGetProcAddress` entry points of a driver library, as `dlsym` hands them out.
pub struct Driver {
    lib: Library,
    v1: GetProcAddressV1,
    v2: GetProcAddressV2,
}

impl Driver {
    /// Opens a driver library; `exports` are the names whose addresses identify pointers.
    pub fn open(path: &Path, exports: &[String]) -> Result<Driver, ProbeError> {
        let lib = Library::open(path, exports)?;
        let v1 = lib.required("cuGetProcAddress")?;
        let v2 = lib.required("cuGetProcAddress_v2")?;
        // SAFETY: the driver's `cuGetProcAddress` (CUDA 11.3 ABI) and `cuGetProcAddress_v2`
        // (CUDA 12.0 ABI) have exactly these C signatures.
        let (v1, v2) = unsafe {
            (
                std::mem::transmute::<*mut c_void, GetProcAddressV1>(v1),
                std::mem::transmute::<*mut c_void, GetProcAddressV2>(v2),
            )
        };
        Ok(Driver { lib, v1, v2 })
    }

    /// The library.
    pub fn library(&self) -> &Library {
        &self.lib
    }

    /// Asks `api` for `name` at `version` with `flags`.
    pub fn resolve(&self, api: Api, name: &str, version: c_int, flags: u64) -> Resolution {
        let c = CString::new(name).expect("API names contain no NUL");
        let mut pfn = SENTINEL as *mut c_void;
        let mut status = STATUS_SENTINEL;
        // SAFETY: valid name and output pointers; the functions have the transmuted signatures.
        let result = unsafe {
            match api {
                Api::V1 => (self.v1)(c.as_ptr(), &mut pfn, version, flags),
                Api::V2 => (self.v2)(c.as_ptr(), &mut pfn, version, flags, &mut status),
            }
        };
        Resolution {
            name: name.to_owned(),
            version,
            flags,
            api,
            result,
            status: (api == Api::V2).then_some(status),
            symbol: self.lib.name_of(pfn as usize),
        }
    }

    /// Calls `cuInit(0)`, as a program does before it uses the driver (with the shim preloaded
    /// in a tenant, this registers the process with gpumuxd), and returns its line:
    /// `cuInit - - cuInit RESULT - -`.
    pub fn init_line(&self) -> Result<String, ProbeError> {
        let init = self.lib.required("cuInit")?;
        // SAFETY: `CUresult cuInit(unsigned int Flags)`.
        let init =
            unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> i32>(init) };
        // SAFETY: the driver's cuInit with its only flag value.
        let result = unsafe { init(0) };
        Ok(format!("cuInit\t-\t-\tcuInit\t{result}\t-\t-"))
    }

    /// Every resolution of `names` (in the order given) at [`VERSIONS`] × [`FLAGS`] × both APIs.
    pub fn resolve_all(&self, names: &[String]) -> Vec<Resolution> {
        let mut out = Vec::with_capacity(names.len() * VERSIONS.len() * FLAGS.len() * 2);
        for name in names {
            for version in VERSIONS {
                for flags in FLAGS {
                    for api in [Api::V1, Api::V2] {
                        out.push(self.resolve(api, name, version, flags));
                    }
                }
            }
        }
        out
    }
}

/// The names the CUDA probe asks for: the API base names of `exports` and [`UNKNOWN_NAME`].
pub fn cuda_names(exports: &[String]) -> Vec<String> {
    let mut names = crate::exports::cuda_base_names(exports);
    names.push(UNKNOWN_NAME.to_owned());
    names.sort();
    names
}

/// The probe's NVML output for each of `names`: `name<TAB>export(s) dlsym hands out`.
pub fn nvml_lines(lib: &Library, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| format!("{n}\t{}", lib.name_of(lib.symbol(n) as usize)))
        .collect()
}

/// The header line of the probe's NVML output.
pub const NVML_HEADER: &str = "# name\tsymbol";

/// The differences between two probe outputs (`expected`: the driver's; `actual`: `subject`'s),
/// lines keyed by their first `key_fields` tab-separated fields, `#` lines ignored: one line per
/// key whose rest differs or that only one side has, in `expected`'s order.
pub fn diff_lines(
    expected: &[String],
    actual: &[String],
    key_fields: usize,
    subject: &str,
) -> Vec<String> {
    fn split(line: &str, n: usize) -> (String, String) {
        let fields: Vec<&str> = line.split('\t').collect();
        let n = n.min(fields.len());
        (fields[..n].join(" "), fields[n..].join(" "))
    }
    let data = |lines: &[String]| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| split(l, key_fields))
            .collect()
    };
    let (want, got) = (data(expected), data(actual));
    let got_map: HashMap<&str, &str> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let want_keys: std::collections::HashSet<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
    let mut out = Vec::new();
    for (k, v) in &want {
        match got_map.get(k.as_str()) {
            Some(g) if g == v => {}
            Some(g) => out.push(format!("{k}: driver {v}; {subject} {g}")),
            None => out.push(format!("{k}: driver {v}; {subject} has no answer")),
        }
    }
    for (k, g) in &got {
        if !want_keys.contains(k.as_str()) {
            out.push(format!("{k}: driver has no answer; {subject} {g}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_by_key() {
        let l = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let want = l(&["# h", "a\t1\tx", "b\t1\ty", "c\t1\tz"]);
        let got = l(&["# other", "a\t1\tx", "b\t1\tY", "d\t1\tw"]);
        assert_eq!(
            diff_lines(&want, &got, 2, "fake"),
            [
                "b 1: driver y; fake Y",
                "c 1: driver z; fake has no answer",
                "d 1: driver has no answer; fake w"
            ]
        );
        assert!(diff_lines(&want, &want, 2, "fake").is_empty());
    }

    #[test]
    fn names() {
        assert_eq!(flags_name(2), "PER_THREAD_DEFAULT_STREAM");
        assert_eq!(status_name(2), "VERSION_NOT_SUFFICIENT");
        assert_eq!(status_name(STATUS_SENTINEL), "unwritten");
    }
}
