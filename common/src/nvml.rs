//! The node's GPUs and their health, from NVML through `dlopen` (no link-time dependency on the
//! driver, so the daemon and the Kubernetes plugin start and say what is wrong on a node
//! without one).
//!
//! A probe lists every GPU NVML can name (by UUID). A GPU whose memory cannot be read is listed
//! as unhealthy; a GPU NVML no longer lists at all is for the caller to notice (the plugin
//! remembers the GPUs it has seen). The [`DeviceSource`] trait lets tests script what NVML
//! would say. [`Nvml::running_processes`] lists the processes holding a context on a GPU with
//! the device memory NVML attributes to each (the daemon's footprint measurement).

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;
use thiserror::Error;

/// NVML could not be used.
#[derive(Debug, Error, Clone)]
pub enum NvmlError {
    #[error("cannot load libnvidia-ml.so.1 ({0}); is the NVIDIA driver installed?")]
    Load(String),
    #[error("libnvidia-ml.so.1 lacks `{0}`; the driver is too old")]
    Symbol(&'static str),
    /// An NVML call returned an error: the message names the cause and what to do.
    #[error("{}", describe(call, *code))]
    Call { call: &'static str, code: u32 },
}

/// `nvmlReturn_t` codes by name (nvml.h).
const RETURN_NAMES: &[(u32, &str)] = &[
    (1, "NVML_ERROR_UNINITIALIZED"),
    (2, "NVML_ERROR_INVALID_ARGUMENT"),
    (3, "NVML_ERROR_NOT_SUPPORTED"),
    (4, "NVML_ERROR_NO_PERMISSION"),
    (5, "NVML_ERROR_ALREADY_INITIALIZED"),
    (6, "NVML_ERROR_NOT_FOUND"),
    (7, "NVML_ERROR_INSUFFICIENT_SIZE"),
    (8, "NVML_ERROR_INSUFFICIENT_POWER"),
    (9, "NVML_ERROR_DRIVER_NOT_LOADED"),
    (10, "NVML_ERROR_TIMEOUT"),
    (11, "NVML_ERROR_IRQ_ISSUE"),
    (12, "NVML_ERROR_LIBRARY_NOT_FOUND"),
    (13, "NVML_ERROR_FUNCTION_NOT_FOUND"),
    (14, "NVML_ERROR_CORRUPTED_INFOROM"),
    (15, "NVML_ERROR_GPU_IS_LOST"),
    (16, "NVML_ERROR_RESET_REQUIRED"),
    (17, "NVML_ERROR_OPERATING_SYSTEM"),
    (18, "NVML_ERROR_LIB_RM_VERSION_MISMATCH"),
    (19, "NVML_ERROR_IN_USE"),
    (20, "NVML_ERROR_MEMORY"),
    (21, "NVML_ERROR_NO_DATA"),
    (22, "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED"),
    (23, "NVML_ERROR_INSUFFICIENT_RESOURCES"),
    (24, "NVML_ERROR_FREQ_NOT_SUPPORTED"),
    (25, "NVML_ERROR_ARGUMENT_VERSION_MISMATCH"),
    (26, "NVML_ERROR_DEPRECATED"),
    (27, "NVML_ERROR_NOT_READY"),
    (28, "NVML_ERROR_GPU_NOT_FOUND"),
    (29, "NVML_ERROR_INVALID_STATE"),
    (999, "NVML_ERROR_UNKNOWN"),
];

/// The name of an `nvmlReturn_t` (`NVML_ERROR_DRIVER_NOT_LOADED`), or `code N` if unknown.
pub fn return_name(code: u32) -> String {
    RETURN_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| format!("code {code}"), |(_, n)| (*n).to_owned())
}

/// What went wrong and what to do, for the errors a node's setup causes.
fn cause_and_next_step(code: u32) -> Option<(&'static str, &'static str)> {
    Some(match code {
        9 => (
            "NVIDIA driver not loaded",
            "the nvidia kernel module is not loaded on this node: load it (`modprobe nvidia`) \
             or install the NVIDIA driver for this GPU; `nvidia-smi` must work before gpumux can",
        ),
        4 => (
            "no permission to use the GPUs",
            "run as root, or give this process access to /dev/nvidiactl and /dev/nvidia*",
        ),
        12 => (
            "NVML's own libraries are missing",
            "reinstall the NVIDIA driver's user-space libraries",
        ),
        15 => (
            "a GPU has fallen off the bus",
            "check `nvidia-smi` and the kernel log (`dmesg`); the node needs a GPU reset or reboot",
        ),
        18 => (
            "the NVIDIA user-space libraries do not match the loaded kernel module",
            "reboot after a driver upgrade, or reinstall the driver so both match",
        ),
        28 => (
            "no GPU found",
            "check that the GPU is visible (`lspci`, `nvidia-smi`) and the driver supports it",
        ),
        _ => return None,
    })
}

fn describe(call: &str, code: u32) -> String {
    let name = return_name(code);
    match cause_and_next_step(code) {
        Some((cause, next)) => format!("{cause} ({name} from {call}): {next}"),
        None => format!("NVML {call} failed: {name}"),
    }
}

/// One GPU as a probe saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// NVML index (the node's order).
    pub index: u32,
    /// `GPU-...`.
    pub uuid: String,
    /// Product name (empty when NVML would not say).
    pub name: String,
    /// Minor number of `/dev/nvidia<minor>`, when NVML reports it.
    pub minor: Option<u32>,
    /// Device memory in bytes (0 when it could not be read).
    pub total_memory: u64,
    /// NVML answered every query about this GPU.
    pub healthy: bool,
    /// CUDA compute capability `(major, minor)`, when NVML reports it.
    pub compute_capability: Option<(u32, u32)>,
    /// The NVIDIA driver's version (`nvmlSystemGetDriverVersion`, e.g. `550.54.15`), when known.
    pub driver_version: Option<String>,
}

/// Where the GPUs come from: NVML in production, a script in tests.
pub trait DeviceSource: Send + Sync + 'static {
    /// Lists the GPUs present now. An error means nothing could be learned (all unhealthy).
    fn probe(&self) -> Result<Vec<GpuInfo>, NvmlError>;
}

type Handle = *mut c_void;

#[repr(C)]
#[derive(Default)]
struct MemoryInfo {
    total: u64,
    free: u64,
    used: u64,
}

struct Api {
    init: unsafe extern "C" fn() -> u32,
    shutdown: unsafe extern "C" fn() -> u32,
    count: unsafe extern "C" fn(*mut c_uint) -> u32,
    handle_by_index: unsafe extern "C" fn(c_uint, *mut Handle) -> u32,
    uuid: unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> u32,
    memory: unsafe extern "C" fn(Handle, *mut MemoryInfo) -> u32,
    name: unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> u32,
    /// Optional: absent from some NVML builds (and from the test fake).
    minor: Option<unsafe extern "C" fn(Handle, *mut c_uint) -> u32>,
    /// Optional, like `minor`.
    compute_capability: Option<unsafe extern "C" fn(Handle, *mut c_int, *mut c_int) -> u32>,
    /// Optional, like `minor`.
    driver_version: Option<unsafe extern "C" fn(*mut c_char, c_uint) -> u32>,
    /// `nvmlDeviceGetComputeRunningProcesses_v3`, else `_v2` (same struct); absent from old
    /// drivers.
    processes: Option<unsafe extern "C" fn(Handle, *mut c_uint, *mut ProcessInfo) -> u32>,
}

/// `nvmlProcessInfo_t` (what `nvmlDeviceGetComputeRunningProcesses_v2`/`_v3` fill).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// NVML's `NVML_VALUE_NOT_AVAILABLE` for a 64-bit field.
const VALUE_NOT_AVAILABLE: u64 = u64::MAX;
/// `NVML_ERROR_INSUFFICIENT_SIZE`.
const ERROR_INSUFFICIENT_SIZE: u32 = 7;

/// A process holding a context on a GPU, as NVML sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Host pid.
    pub pid: u32,
    /// Device memory NVML attributes to the process (allocations, contexts, modules), `None`
    /// when NVML will not say (`NVML_VALUE_NOT_AVAILABLE`, e.g. without permission).
    pub used_bytes: Option<u64>,
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by the loader.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".to_string()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

fn load() -> Result<Api, NvmlError> {
    // SAFETY: dlopen with a valid C string. The handle is never closed: NVML stays loaded for
    // the process's lifetime, so the function pointers below stay valid.
    let lib = unsafe {
        libc::dlopen(
            c"libnvidia-ml.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        )
    };
    if lib.is_null() {
        return Err(NvmlError::Load(dl_error()));
    }
    let lookup = |name: &CStr| -> *mut c_void {
        // SAFETY: `lib` is a live handle and `name` a valid C string.
        unsafe { libc::dlsym(lib, name.as_ptr()) }
    };
    macro_rules! sym {
        ($name:literal : $ty:ty) => {{
            let p = lookup(CStr::from_bytes_with_nul(concat!($name, "\0").as_bytes()).unwrap());
            if p.is_null() {
                return Err(NvmlError::Symbol($name));
            }
            // SAFETY: NVML documents this symbol with the signature of the field it fills.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        }};
    }
    let minor_ptr = lookup(c"nvmlDeviceGetMinorNumber");
    let minor = if minor_ptr.is_null() {
        None
    } else {
        // SAFETY: `nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t, unsigned int *)`.
        Some(unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Handle, *mut c_uint) -> u32>(
                minor_ptr,
            )
        })
    };
    let cc_ptr = lookup(c"nvmlDeviceGetCudaComputeCapability");
    let compute_capability = (!cc_ptr.is_null()).then(|| {
        // SAFETY: `nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t, int *major,
        // int *minor)`.
        unsafe {
            std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Handle, *mut c_int, *mut c_int) -> u32,
            >(cc_ptr)
        }
    });
    let version_ptr = lookup(c"nvmlSystemGetDriverVersion");
    let driver_version = (!version_ptr.is_null()).then(|| {
        // SAFETY: `nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)`.
        unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_char, c_uint) -> u32>(
                version_ptr,
            )
        }
    });
    let processes = [
        c"nvmlDeviceGetComputeRunningProcesses_v3",
        c"nvmlDeviceGetComputeRunningProcesses_v2",
    ]
    .into_iter()
    .map(lookup)
    .find(|p| !p.is_null())
    .map(|p| {
        // SAFETY: `nvmlReturn_t f(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *)`, the
        // same signature and struct for `_v2` and `_v3`.
        unsafe {
            std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Handle, *mut c_uint, *mut ProcessInfo) -> u32,
            >(p)
        }
    });
    Ok(Api {
        init: sym!("nvmlInit_v2": unsafe extern "C" fn() -> u32),
        shutdown: sym!("nvmlShutdown": unsafe extern "C" fn() -> u32),
        count: sym!("nvmlDeviceGetCount_v2": unsafe extern "C" fn(*mut c_uint) -> u32),
        handle_by_index: sym!("nvmlDeviceGetHandleByIndex_v2": unsafe extern "C" fn(c_uint, *mut Handle) -> u32),
        uuid: sym!("nvmlDeviceGetUUID": unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> u32),
        memory: sym!("nvmlDeviceGetMemoryInfo": unsafe extern "C" fn(Handle, *mut MemoryInfo) -> u32),
        name: sym!("nvmlDeviceGetName": unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> u32),
        minor,
        compute_capability,
        driver_version,
        processes,
    })
}

fn check(call: &'static str, code: u32) -> Result<(), NvmlError> {
    if code == 0 {
        Ok(())
    } else {
        Err(NvmlError::Call { call, code })
    }
}

fn c_string(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The real NVML (`libnvidia-ml.so.1`, loaded on first use).
#[derive(Debug, Default, Clone, Copy)]
pub struct Nvml;

impl Nvml {
    fn api() -> Result<&'static Api, NvmlError> {
        static API: OnceLock<Result<Api, NvmlError>> = OnceLock::new();
        API.get_or_init(load).as_ref().map_err(Clone::clone)
    }
}

impl Nvml {
    /// The processes holding a context on the GPU with NVML index `index`, with their device
    /// memory. NVML stays initialised for the rest of the process's life after the first call
    /// (one `nvmlInit`, so each call costs only the query).
    pub fn running_processes(&self, index: u32) -> Result<Vec<ProcessMemory>, NvmlError> {
        let api = Self::api()?;
        static SESSION: OnceLock<Result<(), NvmlError>> = OnceLock::new();
        SESSION
            // SAFETY: NVML's contract: init before use. Never shut down: the session lives as
            // long as the process.
            .get_or_init(|| check("nvmlInit_v2", unsafe { (api.init)() }))
            .clone()?;
        let list = api
            .processes
            .ok_or(NvmlError::Symbol("nvmlDeviceGetComputeRunningProcesses_v3"))?;
        let mut h: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; NVML is initialised.
        check("nvmlDeviceGetHandleByIndex_v2", unsafe {
            (api.handle_by_index)(index, &mut h)
        })?;
        let mut capacity: c_uint = 64;
        // A process starting between the two calls makes the list grow: retry a few times.
        for _ in 0..4 {
            let mut infos = vec![ProcessInfo::default(); capacity as usize];
            let mut n = capacity;
            // SAFETY: handle from NVML; `infos` has room for `n` entries.
            let rc = unsafe { list(h, &mut n, infos.as_mut_ptr()) };
            if rc == ERROR_INSUFFICIENT_SIZE {
                capacity = n.max(capacity) + 16;
                continue;
            }
            check("nvmlDeviceGetComputeRunningProcesses", rc)?;
            return Ok(infos
                .iter()
                .take(n.min(capacity) as usize)
                .map(|p| ProcessMemory {
                    pid: p.pid,
                    used_bytes: (p.used_gpu_memory != VALUE_NOT_AVAILABLE)
                        .then_some(p.used_gpu_memory),
                })
                .collect());
        }
        Err(NvmlError::Call {
            call: "nvmlDeviceGetComputeRunningProcesses",
            code: ERROR_INSUFFICIENT_SIZE,
        })
    }
}

impl DeviceSource for Nvml {
    fn probe(&self) -> Result<Vec<GpuInfo>, NvmlError> {
        let api = Self::api()?;
        // SAFETY: NVML's contract: init before use; init/shutdown are reference counted, so
        // each probe balances its own init with a shutdown.
        check("nvmlInit_v2", unsafe { (api.init)() })?;
        let result = probe_devices(api);
        // SAFETY: balances the successful init above.
        unsafe { (api.shutdown)() };
        result
    }
}

fn probe_devices(api: &Api) -> Result<Vec<GpuInfo>, NvmlError> {
    let mut n: c_uint = 0;
    // SAFETY: valid out-pointer; NVML is initialised.
    check("nvmlDeviceGetCount_v2", unsafe { (api.count)(&mut n) })?;
    let driver_version = api.driver_version.and_then(|f| {
        let mut buf = [0 as c_char; 96];
        // SAFETY: buffer and its length; NVML is initialised.
        (unsafe { f(buf.as_mut_ptr(), buf.len() as c_uint) } == 0).then(|| c_string(&buf))
    });
    let mut out = Vec::with_capacity(n as usize);
    for index in 0..n {
        let mut h: Handle = std::ptr::null_mut();
        // SAFETY: index < count, valid out-pointer.
        if unsafe { (api.handle_by_index)(index, &mut h) } != 0 {
            // Without a handle there is no UUID: the GPU counts as gone.
            continue;
        }
        let mut uuid = [0 as c_char; 96];
        // SAFETY: handle from NVML, buffer and its length.
        if unsafe { (api.uuid)(h, uuid.as_mut_ptr(), uuid.len() as c_uint) } != 0 {
            continue;
        }
        let mut name = [0 as c_char; 96];
        // SAFETY: handle from NVML, buffer and its length.
        if unsafe { (api.name)(h, name.as_mut_ptr(), name.len() as c_uint) } != 0 {
            name[0] = 0;
        }
        let mut mem = MemoryInfo::default();
        // SAFETY: handle from NVML, valid out-pointer.
        let mem_ok = unsafe { (api.memory)(h, &mut mem) } == 0;
        let minor = api.minor.and_then(|f| {
            let mut m: c_uint = 0;
            // SAFETY: handle from NVML, valid out-pointer.
            (unsafe { f(h, &mut m) } == 0).then_some(m)
        });
        let compute_capability = api.compute_capability.and_then(|f| {
            let (mut major, mut minor): (c_int, c_int) = (0, 0);
            // SAFETY: handle from NVML, valid out-pointers.
            let ok = unsafe { f(h, &mut major, &mut minor) } == 0;
            (ok && major > 0 && minor >= 0).then_some((major as u32, minor as u32))
        });
        out.push(GpuInfo {
            index,
            uuid: c_string(&uuid),
            name: c_string(&name),
            minor,
            total_memory: if mem_ok { mem.total } else { 0 },
            healthy: mem_ok,
            compute_capability,
            driver_version: driver_version.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_cause_and_the_next_step() {
        let e = NvmlError::Call {
            call: "nvmlInit_v2",
            code: 9,
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "NVIDIA driver not loaded (NVML_ERROR_DRIVER_NOT_LOADED from nvmlInit_v2): "
            ),
            "{msg}"
        );
        assert!(msg.contains("modprobe nvidia"), "{msg}");
        let e = NvmlError::Call {
            call: "nvmlDeviceGetCount_v2",
            code: 3,
        };
        assert_eq!(
            e.to_string(),
            "NVML nvmlDeviceGetCount_v2 failed: NVML_ERROR_NOT_SUPPORTED"
        );
        assert_eq!(return_name(4242), "code 4242");
        assert_eq!(return_name(999), "NVML_ERROR_UNKNOWN");
    }
}
