//! The few NVML calls the daemon needs to learn the node's GPUs, through `dlopen` so the
//! daemon starts (and says why it cannot work) on a node without the NVIDIA driver.

use std::ffi::{CStr, c_char, c_uint, c_void};
use thiserror::Error;

/// NVML could not be used.
#[derive(Debug, Error)]
pub enum NvmlError {
    #[error("cannot load libnvidia-ml.so.1 ({0}); is the NVIDIA driver installed?")]
    Load(String),
    #[error("libnvidia-ml.so.1 lacks `{0}`; the driver is too old")]
    Symbol(&'static str),
    #[error("NVML {call} failed with code {code}")]
    Call { call: &'static str, code: u32 },
}

type Handle = *mut c_void;

#[repr(C)]
#[derive(Default)]
struct MemoryInfo {
    total: u64,
    free: u64,
    used: u64,
}

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub total_memory: u64,
}

struct Api {
    init: unsafe extern "C" fn() -> u32,
    count: unsafe extern "C" fn(*mut c_uint) -> u32,
    handle_by_index: unsafe extern "C" fn(c_uint, *mut Handle) -> u32,
    uuid: unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> u32,
    name: unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> u32,
    memory: unsafe extern "C" fn(Handle, *mut MemoryInfo) -> u32,
}

fn load() -> Result<Api, NvmlError> {
    // SAFETY: dlopen with a valid C string; the handle is intentionally never closed (NVML
    // stays loaded for the daemon's lifetime).
    let lib = unsafe {
        libc::dlopen(
            c"libnvidia-ml.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        )
    };
    if lib.is_null() {
        // SAFETY: dlerror returns a valid C string or null.
        let msg = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(NvmlError::Load(msg));
    }
    macro_rules! sym {
        ($name:literal : $ty:ty) => {{
            // SAFETY: `lib` is a live handle and the name a valid C string.
            let p = unsafe { libc::dlsym(lib, concat!($name, "\0").as_ptr() as *const c_char) };
            if p.is_null() {
                return Err(NvmlError::Symbol($name));
            }
            // SAFETY: NVML documents this symbol with the signature of the field it fills.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        }};
    }
    Ok(Api {
        init: sym!("nvmlInit_v2": unsafe extern "C" fn() -> u32),
        count: sym!("nvmlDeviceGetCount_v2": unsafe extern "C" fn(*mut c_uint) -> u32),
        handle_by_index: sym!("nvmlDeviceGetHandleByIndex_v2": unsafe extern "C" fn(c_uint, *mut Handle) -> u32),
        uuid: sym!("nvmlDeviceGetUUID": unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> u32),
        name: sym!("nvmlDeviceGetName": unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> u32),
        memory: sym!("nvmlDeviceGetMemoryInfo": unsafe extern "C" fn(Handle, *mut MemoryInfo) -> u32),
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

/// Lists the node's GPUs.
pub fn devices() -> Result<Vec<NvmlDevice>, NvmlError> {
    let api = load()?;
    // SAFETY: every call below follows NVML's documented contract: valid out-pointers and
    // buffer lengths, handles obtained from NVML itself.
    unsafe {
        check("nvmlInit_v2", (api.init)())?;
        let mut n: c_uint = 0;
        check("nvmlDeviceGetCount_v2", (api.count)(&mut n))?;
        let mut out = Vec::with_capacity(n as usize);
        for index in 0..n {
            let mut h: Handle = std::ptr::null_mut();
            check(
                "nvmlDeviceGetHandleByIndex_v2",
                (api.handle_by_index)(index, &mut h),
            )?;
            let mut uuid = [0 as c_char; 96];
            check(
                "nvmlDeviceGetUUID",
                (api.uuid)(h, uuid.as_mut_ptr(), uuid.len() as c_uint),
            )?;
            let mut name = [0 as c_char; 96];
            check(
                "nvmlDeviceGetName",
                (api.name)(h, name.as_mut_ptr(), name.len() as c_uint),
            )?;
            let mut mem = MemoryInfo::default();
            check("nvmlDeviceGetMemoryInfo", (api.memory)(h, &mut mem))?;
            out.push(NvmlDevice {
                index,
                uuid: c_string(&uuid),
                name: c_string(&name),
                total_memory: mem.total,
            });
        }
        Ok(out)
    }
}
