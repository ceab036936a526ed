//! Initialisation, devices, error strings, `cuGetProcAddress`, profiler control.

use crate::driver::{self, process};
use crate::types::*;
use std::ffi::{c_char, c_int, c_uint, c_void};

/// `CUDA_VERSION` of the API this driver implements: CUDA 12.4, that of NVIDIA's 550 driver, whose
/// `cuGetProcAddress` answers the fake gives (`procaddr`).
pub const DRIVER_VERSION: c_int = 12040;
/// Whether profiling is on (`cuProfilerStart`/`cuProfilerStop`; there is no profiler to tell).
static PROFILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Streaming multiprocessors of the simulated device.
pub const SM_COUNT: i32 = 132;

/// `cuDeviceGetAttribute` values of the simulated Hopper device (CC 9.0); `None` = invalid
/// attribute.
pub fn attribute(attr: c_int, dev: u32) -> Option<i32> {
    Some(match attr {
        1 => 1024,
        2 | 3 => 1024,
        4 => 64,
        5 => i32::MAX,
        6 | 7 => 65535,
        8 => 49152,
        9 => 65536,
        10 => 32,
        11 => i32::MAX,
        12 => 65536,
        13 => 1_980_000,
        14 => 512,
        15 => 1,
        16 => SM_COUNT,
        17 | 18 => 0,
        19 => 1,
        20 => 0,
        21 => 131072,
        22 => 131072,
        23 => 65536,
        24..=26 => 16384,
        27 | 28 => 32768,
        29 => 2048,
        30 => 512,
        31 | 32 => 1,
        33 => fakegpu::device_pci_bus(dev) as i32,
        34 | 35 => 0,
        36 => 2_619_000,
        37 => 5120,
        38 => 50 << 20,
        39 => 2048,
        40 => 3,
        41 => 1,
        42 => 32768,
        43 => 2048,
        44 => 0,
        45 | 46 => 32768,
        47 | 48 => 8192,
        49 => 32768,
        50 => 0,
        51 => 32,
        52 | 53 => 32768,
        54 => 2046,
        55 => 32768,
        56 => 131072,
        57 => 65536,
        58..=60 => 16384,
        61 => 32768,
        62 => 2048,
        63 | 64 => 32768,
        65 => 2048,
        66 | 67 => 32768,
        68 => 2046,
        69 => 268_435_456,
        70 => 131072,
        71 => 65000,
        72 => 2_097_120,
        73 | 74 => 32768,
        75 => fakegpu::COMPUTE_CAPABILITY.0,
        76 => fakegpu::COMPUTE_CAPABILITY.1,
        77 => 32768,
        78..=80 => 1,
        81 => 233_472,
        82 => 65536,
        83 => 1,
        84 => 0,
        85 => dev as i32,
        86 => 0,
        87 => 2,
        88 => 0,
        89..=91 => 1,
        92..=94 => 0,
        95 => 1,
        96 => 0,
        97 => 232_448,
        98 => 0,
        99 => 1,
        100 | 101 => 0,
        102 => 1,
        103..=105 => 0,
        106 => 32,
        107 => 0,
        108 => 30 << 20,
        109 => 134_213_632,
        110 => 0,
        111 => 1024,
        112 => 0,
        113 => 1,
        114 => 0,
        115 => 1,
        116..=119 => 0,
        120 => 1,
        121 => 0,
        122 | 123 => 1,
        124 | 125 => 0,
        126 => 4,
        127 => 1,
        128 => 0,
        129 => 1,
        130 => 0,
        131 => -1,
        132 | 133 => 0,
        134 => -1,
        135..=137 => 0,
        139 => 0x2330_10DE,
        140 => 0x16C1_10DE,
        143 => 0,
        _ => return None,
    })
}

cuda_fn! {
    fn cuInit(flags: c_uint) {
        if flags != 0 {
            return Err(err::INVALID_VALUE);
        }
        driver::init()
    }

    fn cuDriverGetVersion(version: *mut c_int) {
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(version, DRIVER_VERSION) }
    }

    fn cuDeviceGetCount(count: *mut c_int) {
        need(count)?;
        let p = process()?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(count, p.gpu.device_count() as c_int) }
    }

    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) {
        need(device)?;
        let p = process()?;
        let d = p.device(ordinal)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(device, d as CUdevice) }
    }

    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) {
        need(name)?;
        let p = process()?;
        p.device(dev)?;
        // SAFETY: the caller's buffer holds `len` bytes.
        unsafe { write_cstr(name, len, fakegpu::DEVICE_NAME) }
    }

    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) {
        need(bytes)?;
        let p = process()?;
        let d = p.device(dev)?;
        let total = p.gpu.total_memory(d).map_err(|_| err::INVALID_DEVICE)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(bytes, total as usize) }
    }

    fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) {
        need(bytes)?;
        let p = process()?;
        let d = p.device(dev)?;
        let total = p.gpu.total_memory(d).map_err(|_| err::INVALID_DEVICE)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(bytes, total.min(u64::from(u32::MAX)) as c_uint) }
    }

    fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CUdevice) {
        need(uuid)?;
        let p = process()?;
        let d = p.device(dev)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(uuid, fakegpu::device_uuid(d)) }
    }

    fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CUdevice) {
        need(uuid)?;
        let p = process()?;
        let d = p.device(dev)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(uuid, fakegpu::device_uuid(d)) }
    }

    fn cuDeviceGetAttribute(value: *mut c_int, attrib: c_int, dev: CUdevice) {
        need(value)?;
        let p = process()?;
        let d = p.device(dev)?;
        let v = attribute(attrib, d).ok_or(err::INVALID_VALUE)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(value, v) }
    }

    fn cuDeviceComputeCapability(major: *mut c_int, minor: *mut c_int, dev: CUdevice) {
        need(major)?;
        need(minor)?;
        let p = process()?;
        p.device(dev)?;
        // SAFETY: output pointers from the caller (null checked).
        unsafe {
            write_out(major, fakegpu::COMPUTE_CAPABILITY.0)?;
            write_out(minor, fakegpu::COMPUTE_CAPABILITY.1)
        }
    }

    fn cuDeviceGetPCIBusId(pci: *mut c_char, len: c_int, dev: CUdevice) {
        need(pci)?;
        let p = process()?;
        let d = p.device(dev)?;
        let id = format!("0000:{:02x}:00.0", fakegpu::device_pci_bus(d));
        // SAFETY: the caller's buffer holds `len` bytes.
        unsafe { write_cstr(pci, len, &id) }
    }

    fn cuDeviceGetByPCIBusId(dev: *mut CUdevice, pci: *const c_char) {
        need(dev)?;
        // SAFETY: C string argument from the caller (null checked).
        let s = unsafe { cstr(pci)? }.to_str().map_err(|_| err::INVALID_VALUE)?.to_ascii_lowercase();
        let p = process()?;
        for d in 0..p.gpu.device_count() {
            let bus = fakegpu::device_pci_bus(d);
            if s == format!("0000:{bus:02x}:00.0") || s == format!("00000000:{bus:02x}:00.0")
                || s == format!("{bus:02x}:00.0")
            {
                // SAFETY: output pointer from the caller (null checked).
                return unsafe { write_out(dev, d as CUdevice) };
            }
        }
        Err(err::INVALID_DEVICE)
    }

    fn cuDeviceCanAccessPeer(can: *mut c_int, dev: CUdevice, peer: CUdevice) {
        need(can)?;
        let p = process()?;
        p.device(dev)?;
        p.device(peer)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(can, 0) }
    }

    fn cuGetErrorString(error: CUresult, s: *mut *const c_char) {
        need(s)?;
        match crate::errors::lookup(error) {
            // SAFETY: output pointer from the caller (null checked); the string is static.
            Some((_, d)) => unsafe { write_out(s, d.as_ptr().cast()) },
            None => {
                // SAFETY: output pointer from the caller (null checked).
                unsafe { write_out(s, std::ptr::null())? };
                Err(err::INVALID_VALUE)
            }
        }
    }

    fn cuGetErrorName(error: CUresult, s: *mut *const c_char) {
        need(s)?;
        match crate::errors::lookup(error) {
            // SAFETY: output pointer from the caller (null checked); the string is static.
            Some((n, _)) => unsafe { write_out(s, n.as_ptr().cast()) },
            None => {
                // SAFETY: output pointer from the caller (null checked).
                unsafe { write_out(s, std::ptr::null())? };
                Err(err::INVALID_VALUE)
            }
        }
    }

    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) {
        need(pfn)?;
        // SAFETY: C string argument from the caller (null checked).
        let name = unsafe { cstr(symbol)? };
        let row = crate::procaddr::lookup(name.to_bytes(), version, flags)?;
        // The CUDA 11.3 entry point has no status: what `_v2` reports as a status is
        // CUDA_ERROR_NOT_FOUND here, with the pointer left as it was.
        if row.status != crate::procaddr::SYMBOL_SUCCESS as u8 {
            return Err(err::NOT_FOUND);
        }
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pfn, crate::procaddr::address(row))? };
        result(row.result)
    }

    fn cuGetProcAddress_v2(
        symbol: *const c_char,
        pfn: *mut *mut c_void,
        version: c_int,
        flags: u64,
        status: *mut c_int,
    ) {
        need(pfn)?;
        // SAFETY: C string argument from the caller (null checked).
        let name = unsafe { cstr(symbol)? };
        let row = crate::procaddr::lookup(name.to_bytes(), version, flags)?;
        if !status.is_null() {
            // SAFETY: optional output pointer from the caller (non-null).
            unsafe { write_out(status, c_int::from(row.status))? };
        }
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pfn, crate::procaddr::address(row))? };
        result(row.result)
    }

    fn cuProfilerStart() {
        process()?;
        PROFILING.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn cuProfilerStop() {
        process()?;
        PROFILING.store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn cuProfilerInitialize(_config: *const c_char, _out: *const c_char, _mode: c_int) {
        Err(err::NOT_SUPPORTED)
    }
}
