//! What a monitoring client (pynvml, gpustat, nvitop, DCGM-style exporters) asks NVML beyond
//! memory and processes: PCI identity, temperature, power and energy, clocks and their event
//! reasons, BAR1, compute/MIG/ECC/persistence modes, per-process utilization, PCIe link, handles
//! by PCI bus id or serial.
//!
//! The simulated device is a Hopper board (compute capability 9.0, 132 SMs, like the fake CUDA
//! driver's), modelled on an H100 SXM5: values that follow the device's activity (temperature,
//! power, energy, clocks, P-state, event reasons) are derived from its utilization over the last
//! second (the kernel trace); the rest are the board's constants. What a passively cooled board
//! without a display has not (fans, encoder sessions, display) answers `NVML_ERROR_NOT_SUPPORTED`
//! from `unsupported`, as the real library does.

use crate::{
    DEVICES, MAX_DEVICES, NVML_ERROR_INSUFFICIENT_SIZE, NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_UNKNOWN, NVML_SUCCESS,
    UTILIZATION_WINDOW_NS, guard, monotonic_ns, nvmlDevice_t, nvmlReturn_t, with_device, with_gpu,
    write_cstr, write_out,
};
use fakegpu::{DeviceSnapshot, GpuState};
use std::ffi::{CStr, c_char, c_uint, c_ulonglong};

/// `pciDeviceId`: device 0x2330 (H100 SXM5) of vendor 0x10DE (NVIDIA).
const PCI_DEVICE_ID: c_uint = 0x2330_10DE;
/// `pciSubSystemId`.
const PCI_SUBSYSTEM_ID: c_uint = 0x16C1_10DE;
/// Board power when idle and at full utilization, and the lowest settable limit (milliwatts).
const POWER_IDLE_MW: u64 = 70_000;
const POWER_MAX_MW: c_uint = 700_000;
const POWER_MIN_LIMIT_MW: c_uint = 200_000;
/// GPU temperature idle and at full utilization (°C), and the thresholds
/// (`nvmlTemperatureThresholds_t`: shutdown, slowdown, memory max, GPU max).
const TEMP_IDLE_C: c_uint = 30;
const TEMP_FULL_C: c_uint = 70;
const TEMP_THRESHOLDS_C: [c_uint; 4] = [92, 89, 95, 87];
/// Clocks (MHz) by `nvmlClockType_t` (graphics, SM, memory, video): idle, and the maximum (also
/// the default application clocks and the customer boost maximum).
const CLOCK_IDLE_MHZ: [c_uint; 4] = [345, 345, 2619, 765];
const CLOCK_MAX_MHZ: [c_uint; 4] = [1980, 1980, 2619, 1755];
/// `nvmlClocksEventReasonGpuIdle`, and every reason the board reports (`...All`).
const EVENT_REASON_GPU_IDLE: c_ulonglong = 0x1;
const EVENT_REASONS_ALL: c_ulonglong = 0x1FF;
/// `NVML_DEVICE_ARCH_HOPPER`, `NVML_BRAND_NVIDIA`, `NVML_BUS_TYPE_PCIE`.
const ARCH_HOPPER: c_uint = 9;
const BRAND_NVIDIA: c_uint = 14;
const BUS_TYPE_PCIE: c_uint = 2;
/// `NVML_FEATURE_ENABLED` / `_DISABLED`.
const ENABLED: c_uint = 1;
const DISABLED: c_uint = 0;
/// PCIe generation and width of the link.
const PCIE_GEN: c_uint = 5;
const PCIE_WIDTH: c_uint = 16;
/// Memory bus width (bits), CUDA cores, MIG slices of the board.
const MEMORY_BUS_WIDTH: c_uint = 5120;
const GPU_CORES: c_uint = 16896;
const MAX_MIG_DEVICES: c_uint = 7;
/// BAR1 in use by the driver (bytes).
const BAR1_USED: c_ulonglong = 1 << 20;
/// Sampling period reported by the encoder/decoder utilization queries (µs).
const CODEC_SAMPLING_US: c_uint = 167_000;

/// Percent of the last second during which `pid`'s kernels (every process's with `None`) ran.
pub(crate) fn utilization_percent(gpu: &GpuState, index: u32, pid: Option<u32>) -> Option<c_uint> {
    let trace = gpu.kernel_trace(index).ok()?;
    let now = monotonic_ns();
    let from = now.saturating_sub(UTILIZATION_WINDOW_NS);
    let busy: u64 = trace
        .iter()
        .filter(|k| pid.is_none_or(|p| k.pid == p))
        .map(|k| k.end_ns.min(now).saturating_sub(k.start_ns.max(from)))
        .sum();
    let window = now - from;
    Some((busy.min(window) * 100).checked_div(window).unwrap_or(0) as c_uint)
}

/// Interpolates between the idle and the full-load value.
fn scale(idle: u64, full: u64, percent: c_uint) -> u64 {
    idle + (full.saturating_sub(idle)) * u64::from(percent.min(100)) / 100
}

fn busy(gpu: &GpuState, d: &DeviceSnapshot) -> Result<c_uint, nvmlReturn_t> {
    utilization_percent(gpu, d.index, None).ok_or(NVML_ERROR_UNKNOWN)
}

fn current_clock(gpu: &GpuState, d: &DeviceSnapshot, kind: c_uint) -> Result<c_uint, nvmlReturn_t> {
    let k = kind as usize;
    if k >= CLOCK_MAX_MHZ.len() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let u = busy(gpu, d)?;
    Ok(if u > 0 {
        CLOCK_MAX_MHZ[k]
    } else {
        CLOCK_IDLE_MHZ[k]
    })
}

fn max_clock(kind: c_uint) -> Result<c_uint, nvmlReturn_t> {
    CLOCK_MAX_MHZ
        .get(kind as usize)
        .copied()
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)
}

/// The board serial of device `index`.
fn serial(index: u32) -> String {
    format!("165{:010}", 2_300_000_000u64 + u64::from(index))
}

/// Defines exports `fn(device, out) -> nvmlReturn_t` that write the value of an expression of
/// the state (`gpu`) and the device's snapshot (`d`), or return its error.
macro_rules! device_value {
    ($($(#[$doc:meta])* fn $name:ident(*mut $ty:ty) = |$gpu:ident, $d:ident| $value:expr;)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// The output pointer must be null or valid for a write.
        #[unsafe(no_mangle)]
        #[allow(unused_variables)]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, out: *mut $ty) -> nvmlReturn_t {
            guard(|| {
                with_device(device, |$gpu, $d| {
                    let value: Result<$ty, nvmlReturn_t> = $value;
                    match value {
                        // SAFETY: forwarded caller contract.
                        Ok(v) => unsafe { write_out(out, v) },
                        Err(e) => e,
                    }
                })
            })
        }
    )*};
}

/// Defines exports `fn(device, selector, out) -> nvmlReturn_t` (a clock type, a sensor, ...).
macro_rules! device_selected_value {
    ($($(#[$doc:meta])* fn $name:ident($sel:ident, *mut $ty:ty) = |$gpu:ident, $d:ident| $value:expr;)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// The output pointer must be null or valid for a write.
        #[unsafe(no_mangle)]
        #[allow(unused_variables)]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, $sel: c_uint, out: *mut $ty) -> nvmlReturn_t {
            guard(|| {
                with_device(device, |$gpu, $d| {
                    let value: Result<$ty, nvmlReturn_t> = $value;
                    match value {
                        // SAFETY: forwarded caller contract.
                        Ok(v) => unsafe { write_out(out, v) },
                        Err(e) => e,
                    }
                })
            })
        }
    )*};
}

device_value! {
    /// `nvmlDeviceGetPowerUsage` (mW): idle power plus the load's share of the board's maximum.
    fn nvmlDeviceGetPowerUsage(*mut c_uint) = |gpu, d| {
        busy(gpu, d).map(|u| scale(POWER_IDLE_MW, u64::from(POWER_MAX_MW), u) as c_uint)
    };
    /// `nvmlDeviceGetTotalEnergyConsumption` (mJ since boot): idle power over the monotonic clock
    /// plus the load's share over the device's busy time.
    fn nvmlDeviceGetTotalEnergyConsumption(*mut c_ulonglong) = |gpu, d| {
        let idle_mj = POWER_IDLE_MW * (monotonic_ns() / 1_000_000) / 1000;
        let load_mj = (u64::from(POWER_MAX_MW) - POWER_IDLE_MW) * (d.busy_ns / 1_000_000) / 1000;
        Ok(idle_mj + load_mj)
    };
    /// `nvmlDeviceGetPowerManagementLimit`.
    fn nvmlDeviceGetPowerManagementLimit(*mut c_uint) = |gpu, d| Ok(POWER_MAX_MW);
    /// `nvmlDeviceGetPowerManagementDefaultLimit`.
    fn nvmlDeviceGetPowerManagementDefaultLimit(*mut c_uint) = |gpu, d| Ok(POWER_MAX_MW);
    /// `nvmlDeviceGetEnforcedPowerLimit`.
    fn nvmlDeviceGetEnforcedPowerLimit(*mut c_uint) = |gpu, d| Ok(POWER_MAX_MW);
    /// `nvmlDeviceGetPowerManagementMode`: enabled.
    fn nvmlDeviceGetPowerManagementMode(*mut c_uint) = |gpu, d| Ok(ENABLED);
    /// `nvmlDeviceGetPerformanceState`: P0.
    fn nvmlDeviceGetPerformanceState(*mut c_uint) = |gpu, d| Ok(0);
    /// `nvmlDeviceGetPowerState` (deprecated name of the P-state query).
    fn nvmlDeviceGetPowerState(*mut c_uint) = |gpu, d| Ok(0);
    /// `nvmlDeviceGetComputeMode`: `NVML_COMPUTEMODE_DEFAULT`.
    fn nvmlDeviceGetComputeMode(*mut c_uint) = |gpu, d| Ok(0);
    /// `nvmlDeviceGetPersistenceMode`: enabled (a server's daemon keeps the driver loaded).
    fn nvmlDeviceGetPersistenceMode(*mut c_uint) = |gpu, d| Ok(ENABLED);
    /// `nvmlDeviceGetDisplayMode`: no display.
    fn nvmlDeviceGetDisplayMode(*mut c_uint) = |gpu, d| Ok(DISABLED);
    /// `nvmlDeviceGetDisplayActive`: no display.
    fn nvmlDeviceGetDisplayActive(*mut c_uint) = |gpu, d| Ok(DISABLED);
    /// `nvmlDeviceGetArchitecture`: Hopper.
    fn nvmlDeviceGetArchitecture(*mut c_uint) = |gpu, d| Ok(ARCH_HOPPER);
    /// `nvmlDeviceGetBrand`: `NVML_BRAND_NVIDIA`.
    fn nvmlDeviceGetBrand(*mut c_uint) = |gpu, d| Ok(BRAND_NVIDIA);
    /// `nvmlDeviceGetBusType`: PCIe.
    fn nvmlDeviceGetBusType(*mut c_uint) = |gpu, d| Ok(BUS_TYPE_PCIE);
    /// `nvmlDeviceGetVirtualizationMode`: `NVML_GPU_VIRTUALIZATION_MODE_NONE`.
    fn nvmlDeviceGetVirtualizationMode(*mut c_uint) = |gpu, d| Ok(0);
    /// `nvmlDeviceGetMinorNumber`: `/dev/nvidia<index>`.
    fn nvmlDeviceGetMinorNumber(*mut c_uint) = |gpu, d| Ok(d.index);
    /// `nvmlDeviceGetBoardId`.
    fn nvmlDeviceGetBoardId(*mut c_uint) = |gpu, d| Ok(0x100 + d.index);
    /// `nvmlDeviceGetMultiGpuBoard`: one GPU per board.
    fn nvmlDeviceGetMultiGpuBoard(*mut c_uint) = |gpu, d| Ok(0);
    /// `nvmlDeviceGetCurrPcieLinkGeneration`.
    fn nvmlDeviceGetCurrPcieLinkGeneration(*mut c_uint) = |gpu, d| Ok(PCIE_GEN);
    /// `nvmlDeviceGetMaxPcieLinkGeneration`.
    fn nvmlDeviceGetMaxPcieLinkGeneration(*mut c_uint) = |gpu, d| Ok(PCIE_GEN);
    /// `nvmlDeviceGetCurrPcieLinkWidth`.
    fn nvmlDeviceGetCurrPcieLinkWidth(*mut c_uint) = |gpu, d| Ok(PCIE_WIDTH);
    /// `nvmlDeviceGetMaxPcieLinkWidth`.
    fn nvmlDeviceGetMaxPcieLinkWidth(*mut c_uint) = |gpu, d| Ok(PCIE_WIDTH);
    /// `nvmlDeviceGetMemoryBusWidth`.
    fn nvmlDeviceGetMemoryBusWidth(*mut c_uint) = |gpu, d| Ok(MEMORY_BUS_WIDTH);
    /// `nvmlDeviceGetNumGpuCores`.
    fn nvmlDeviceGetNumGpuCores(*mut c_uint) = |gpu, d| Ok(GPU_CORES);
    /// `nvmlDeviceGetMaxMigDeviceCount`.
    fn nvmlDeviceGetMaxMigDeviceCount(*mut c_uint) = |gpu, d| Ok(MAX_MIG_DEVICES);
    /// `nvmlDeviceIsMigDeviceHandle`: the handles are whole GPUs.
    fn nvmlDeviceIsMigDeviceHandle(*mut c_uint) = |gpu, d| Ok(0);
    /// `nvmlDeviceGetCurrentClocksEventReasons`: "GPU idle" while no kernel ran in the last
    /// second, none otherwise.
    fn nvmlDeviceGetCurrentClocksEventReasons(*mut c_ulonglong) = |gpu, d| {
        busy(gpu, d).map(|u| if u == 0 { EVENT_REASON_GPU_IDLE } else { 0 })
    };
    /// `nvmlDeviceGetCurrentClocksThrottleReasons` (the older name).
    fn nvmlDeviceGetCurrentClocksThrottleReasons(*mut c_ulonglong) = |gpu, d| {
        busy(gpu, d).map(|u| if u == 0 { EVENT_REASON_GPU_IDLE } else { 0 })
    };
    /// `nvmlDeviceGetSupportedClocksEventReasons`.
    fn nvmlDeviceGetSupportedClocksEventReasons(*mut c_ulonglong) = |gpu, d| Ok(EVENT_REASONS_ALL);
    /// `nvmlDeviceGetSupportedClocksThrottleReasons` (the older name).
    fn nvmlDeviceGetSupportedClocksThrottleReasons(*mut c_ulonglong) = |gpu, d| Ok(EVENT_REASONS_ALL);
}

device_selected_value! {
    /// `nvmlDeviceGetTemperature`: the GPU sensor (`NVML_TEMPERATURE_GPU`) only.
    fn nvmlDeviceGetTemperature(sensor, *mut c_uint) = |gpu, d| match sensor {
        0 => busy(gpu, d).map(|u| scale(u64::from(TEMP_IDLE_C), u64::from(TEMP_FULL_C), u) as c_uint),
        _ => Err(NVML_ERROR_INVALID_ARGUMENT),
    };
    /// `nvmlDeviceGetTemperatureThreshold`: shutdown, slowdown, memory and GPU maximum; the
    /// acoustic and GPS thresholds are not supported.
    fn nvmlDeviceGetTemperatureThreshold(kind, *mut c_uint) = |gpu, d| match kind {
        0..=3 => Ok(TEMP_THRESHOLDS_C[kind as usize]),
        4..=7 => Err(NVML_ERROR_NOT_SUPPORTED),
        _ => Err(NVML_ERROR_INVALID_ARGUMENT),
    };
    /// `nvmlDeviceGetClockInfo`: boost clocks while kernels run, idle clocks otherwise.
    fn nvmlDeviceGetClockInfo(kind, *mut c_uint) = |gpu, d| current_clock(gpu, d, kind);
    /// `nvmlDeviceGetMaxClockInfo`.
    fn nvmlDeviceGetMaxClockInfo(kind, *mut c_uint) = |gpu, d| max_clock(kind);
    /// `nvmlDeviceGetApplicationsClock`.
    fn nvmlDeviceGetApplicationsClock(kind, *mut c_uint) = |gpu, d| max_clock(kind);
    /// `nvmlDeviceGetDefaultApplicationsClock`.
    fn nvmlDeviceGetDefaultApplicationsClock(kind, *mut c_uint) = |gpu, d| max_clock(kind);
    /// `nvmlDeviceGetMaxCustomerBoostClock`.
    fn nvmlDeviceGetMaxCustomerBoostClock(kind, *mut c_uint) = |gpu, d| max_clock(kind);
}

/// `nvmlDeviceGetClock`: `clockId` current (0), application target (1), application default (2)
/// or customer boost maximum (3).
///
/// # Safety
/// `mhz` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClock(
    device: nvmlDevice_t,
    kind: c_uint,
    id: c_uint,
    mhz: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |gpu, d| {
            let v = match id {
                0 => current_clock(gpu, d, kind),
                1..=3 => max_clock(kind),
                _ => Err(NVML_ERROR_INVALID_ARGUMENT),
            };
            match v {
                // SAFETY: forwarded caller contract.
                Ok(v) => unsafe { write_out(mhz, v) },
                Err(e) => e,
            }
        })
    })
}

/// `nvmlDeviceGetPowerManagementLimitConstraints`.
///
/// # Safety
/// `min`/`max` must be null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    device: nvmlDevice_t,
    min: *mut c_uint,
    max: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, _| {
            // SAFETY: forwarded caller contract.
            unsafe { write_all(&[(min, POWER_MIN_LIMIT_MW), (max, POWER_MAX_MW)]) }
        })
    })
}

/// Writes each value through its output pointer; `NVML_ERROR_INVALID_ARGUMENT` (nothing written)
/// if any is null.
///
/// # Safety
/// Every pointer must be null or valid for a write.
unsafe fn write_all(outs: &[(*mut c_uint, c_uint)]) -> nvmlReturn_t {
    if outs.iter().any(|(p, _)| p.is_null()) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    for &(p, v) in outs {
        // SAFETY: non-null and valid per the caller contract.
        unsafe { p.write(v) };
    }
    NVML_SUCCESS
}

/// Defines exports `fn(device, a, b) -> nvmlReturn_t` that write two constants (both outputs
/// required).
macro_rules! device_pair {
    ($($(#[$doc:meta])* fn $name:ident($a:ident, $b:ident) = ($va:expr, $vb:expr);)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// Both output pointers must be null or valid for writes.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, $a: *mut c_uint, $b: *mut c_uint) -> nvmlReturn_t {
            guard(|| {
                with_device(device, |_, _| {
                    // SAFETY: forwarded caller contract.
                    unsafe { write_all(&[($a, $va), ($b, $vb)]) }
                })
            })
        }
    )*};
}

device_pair! {
    /// `nvmlDeviceGetMigMode`: MIG disabled, none pending.
    fn nvmlDeviceGetMigMode(current, pending) = (DISABLED, DISABLED);
    /// `nvmlDeviceGetEccMode`: ECC on, as on a data-centre board.
    fn nvmlDeviceGetEccMode(current, pending) = (ENABLED, ENABLED);
    /// `nvmlDeviceGetEncoderUtilization`: the simulated device encodes nothing (0 %).
    fn nvmlDeviceGetEncoderUtilization(util, period) = (0, CODEC_SAMPLING_US);
    /// `nvmlDeviceGetDecoderUtilization`: the simulated device decodes nothing (0 %).
    fn nvmlDeviceGetDecoderUtilization(util, period) = (0, CODEC_SAMPLING_US);
}

/// `nvmlDeviceGetTotalEccErrors`: no ECC error ever (corrected or not, volatile or aggregate).
///
/// # Safety
/// `count` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: nvmlDevice_t,
    error_type: c_uint,
    counter_type: c_uint,
    count: *mut c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, _| {
            if error_type > 1 || counter_type > 1 {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            // SAFETY: forwarded caller contract.
            unsafe { write_out(count, 0) }
        })
    })
}

/// `nvmlDeviceGetRemappedRows`: no row remapped, none pending, no failure.
///
/// # Safety
/// Every pointer must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: nvmlDevice_t,
    corrected: *mut c_uint,
    uncorrected: *mut c_uint,
    pending: *mut c_uint,
    failed: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, _| {
            // SAFETY: forwarded caller contract.
            unsafe { write_all(&[(corrected, 0), (uncorrected, 0), (pending, 0), (failed, 0)]) }
        })
    })
}

/// `nvmlBAR1Memory_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct nvmlBAR1Memory_t {
    pub bar1Total: c_ulonglong,
    pub bar1Free: c_ulonglong,
    pub bar1Used: c_ulonglong,
}

/// `nvmlDeviceGetBAR1MemoryInfo`: a BAR1 aperture of the device memory's size rounded up to a
/// power of two, of which the driver maps 1 MiB.
///
/// # Safety
/// `bar1` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetBAR1MemoryInfo(
    device: nvmlDevice_t,
    bar1: *mut nvmlBAR1Memory_t,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, d| {
            let total = d.total_bytes.next_power_of_two();
            let v = nvmlBAR1Memory_t {
                bar1Total: total,
                bar1Free: total - BAR1_USED,
                bar1Used: BAR1_USED,
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_out(bar1, v) }
        })
    })
}

/// `nvmlPciInfo_t` (`nvmlDeviceGetPciInfo_v2`/`_v3`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlPciInfo_t {
    pub busIdLegacy: [c_char; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pciDeviceId: c_uint,
    pub pciSubSystemId: c_uint,
    pub busId: [c_char; 32],
}

/// The NVML 1 layout `nvmlDeviceGetPciInfo` (no suffix) writes: a 16-byte bus id first and four
/// reserved words last.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlPciInfo_v1_t {
    pub busId: [c_char; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pciDeviceId: c_uint,
    pub pciSubSystemId: c_uint,
    pub reserved: [c_uint; 4],
}

fn c_chars<const N: usize>(s: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (o, b) in out.iter_mut().zip(s.bytes().take(N - 1)) {
        *o = b as c_char;
    }
    out
}

/// The PCI identity of device `index`: bus `index + 1` of domain 0.
fn pci_info(index: u32) -> nvmlPciInfo_t {
    let bus = index + 1;
    nvmlPciInfo_t {
        busIdLegacy: c_chars(&format!("0000:{bus:02X}:00.0")),
        domain: 0,
        bus,
        device: 0,
        pciDeviceId: PCI_DEVICE_ID,
        pciSubSystemId: PCI_SUBSYSTEM_ID,
        busId: c_chars(&fakegpu::device_pci_bus_id(index)),
    }
}

/// `nvmlDeviceGetPciInfo_v3`.
///
/// # Safety
/// `pci` must be null or valid for a write of `nvmlPciInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_device(device, |_, d| unsafe { write_out(pci, pci_info(d.index)) }))
}

/// `nvmlDeviceGetPciInfo_v2`.
///
/// # Safety
/// `pci` must be null or valid for a write of `nvmlPciInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_device(device, |_, d| unsafe { write_out(pci, pci_info(d.index)) }))
}

/// `nvmlDeviceGetPciInfo` (NVML 1 layout).
///
/// # Safety
/// `pci` must be null or valid for a write of `nvmlPciInfo_v1_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_v1_t,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, d| {
            let p = pci_info(d.index);
            let v = nvmlPciInfo_v1_t {
                busId: p.busIdLegacy,
                domain: p.domain,
                bus: p.bus,
                device: p.device,
                pciDeviceId: p.pciDeviceId,
                pciSubSystemId: p.pciSubSystemId,
                reserved: [0; 4],
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_out(pci, v) }
        })
    })
}

/// `nvmlDeviceGetSerial`.
///
/// # Safety
/// `buf` must be null or valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSerial(
    device: nvmlDevice_t,
    buf: *mut c_char,
    len: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, d| {
            // SAFETY: forwarded caller contract.
            unsafe { write_cstr(&serial(d.index), buf, len) }
        })
    })
}

/// `nvmlDeviceGetVbiosVersion`.
///
/// # Safety
/// `buf` must be null or valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetVbiosVersion(
    device: nvmlDevice_t,
    buf: *mut c_char,
    len: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |_, _| {
            // SAFETY: forwarded caller contract.
            unsafe { write_cstr("96.00.99.00.01", buf, len) }
        })
    })
}

/// Looks a device up by a property and writes its handle (`NVML_ERROR_NOT_FOUND` if none).
///
/// # Safety
/// `key` must be null or NUL-terminated; `device` null or valid for a write.
unsafe fn handle_by(
    key: *const c_char,
    device: *mut nvmlDevice_t,
    matches: impl Fn(u32, &str) -> bool,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(|gpu| {
            if key.is_null() || device.is_null() {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            // SAFETY: non-null and NUL-terminated per the caller contract.
            let key = unsafe { CStr::from_ptr(key) }.to_string_lossy();
            match (0..gpu.device_count().min(MAX_DEVICES as u32)).find(|&i| matches(i, &key)) {
                // SAFETY: `device` is non-null and valid for a write per the caller contract.
                Some(i) => unsafe { write_out(device, &raw const DEVICES[i as usize]) },
                None => NVML_ERROR_NOT_FOUND,
            }
        })
    })
}

/// Whether `key` names the PCI address of device `index` (`00000000:01:00.0` or `0000:01:00.0`,
/// any case).
fn pci_matches(index: u32, key: &str) -> bool {
    let p = pci_info(index);
    let as_str = |c: &[c_char]| {
        c.iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as u8 as char)
            .collect::<String>()
    };
    [as_str(&p.busId), as_str(&p.busIdLegacy)]
        .iter()
        .any(|id| id.eq_ignore_ascii_case(key.trim()))
}

/// `nvmlDeviceGetHandleByPciBusId_v2`.
///
/// # Safety
/// `bus_id` must be null or NUL-terminated; `device` null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    unsafe { handle_by(bus_id, device, pci_matches) }
}

/// `nvmlDeviceGetHandleByPciBusId` (v1): the same lookup as `_v2`.
///
/// # Safety
/// `bus_id` must be null or NUL-terminated; `device` null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    crate::guard_named("nvmlDeviceGetHandleByPciBusId", || {
        // SAFETY: forwarded caller contract.
        unsafe { handle_by(bus_id, device, pci_matches) }
    })
}

/// `nvmlDeviceGetHandleBySerial`.
///
/// # Safety
/// `serial` must be null or NUL-terminated; `device` null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleBySerial(
    key: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    unsafe { handle_by(key, device, |i, k| serial(i) == k) }
}

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct nvmlProcessUtilizationSample_t {
    pub pid: c_uint,
    pub timeStamp: c_ulonglong,
    pub smUtil: c_uint,
    pub memUtil: c_uint,
    pub encUtil: c_uint,
    pub decUtil: c_uint,
}

pub(crate) fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `nvmlDeviceGetProcessUtilization`: one sample per process using the device, its share of the
/// last second's kernel time (`smUtil`), stamped now (µs since the epoch); `NVML_ERROR_NOT_FOUND`
/// when there is no process or nothing newer than `last_seen`. Asked with a null buffer it
/// answers `NVML_ERROR_INSUFFICIENT_SIZE` with the number of samples, as the library does.
///
/// # Safety
/// `count` must be null or valid for reads and writes; `samples` null or valid for `*count`
/// writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    samples: *mut nvmlProcessUtilizationSample_t,
    count: *mut c_uint,
    last_seen: c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        with_device(device, |gpu, d| {
            if count.is_null() {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            let now = wall_us();
            if d.processes.is_empty() || last_seen >= now {
                return NVML_ERROR_NOT_FOUND;
            }
            let n = d.processes.len();
            // SAFETY: non-null and valid per the caller contract.
            let capacity = unsafe { *count } as usize;
            if samples.is_null() || capacity < n {
                // SAFETY: as above.
                unsafe { *count = n as c_uint };
                return NVML_ERROR_INSUFFICIENT_SIZE;
            }
            for (i, p) in d.processes.iter().enumerate() {
                let s = nvmlProcessUtilizationSample_t {
                    pid: p.pid,
                    timeStamp: now,
                    smUtil: utilization_percent(gpu, d.index, Some(p.pid)).unwrap_or(0),
                    ..Default::default()
                };
                // SAFETY: i < n <= capacity entries, valid per the caller contract.
                unsafe { samples.add(i).write(s) };
            }
            // SAFETY: as above.
            unsafe { *count = n as c_uint };
            NVML_SUCCESS
        })
    })
}

/// `nvmlSystemGetProcessName`: the process's command (`/proc/<pid>/cmdline`'s first word, else
/// its `comm`); `NVML_ERROR_NOT_FOUND` for no such process.
///
/// # Safety
/// `name` must be null or valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetProcessName(
    pid: c_uint,
    name: *mut c_char,
    len: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(|_| {
            let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
            let cmd = std::fs::read(proc_dir.join("cmdline"))
                .ok()
                .and_then(|c| {
                    let first = c.split(|&b| b == 0).next()?.to_vec();
                    (!first.is_empty()).then(|| String::from_utf8_lossy(&first).into_owned())
                })
                .or_else(|| {
                    std::fs::read_to_string(proc_dir.join("comm"))
                        .ok()
                        .map(|s| s.trim_end().to_owned())
                });
            match cmd {
                // SAFETY: forwarded caller contract.
                Some(c) => unsafe { write_cstr(&c, name, len) },
                None => NVML_ERROR_NOT_FOUND,
            }
        })
    })
}

/// `nvmlUnitGetCount`: no S-class units.
///
/// # Safety
/// `count` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlUnitGetCount(count: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_gpu(|_| unsafe { write_out(count, 0) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_nvml_h() {
        assert_eq!(std::mem::size_of::<nvmlPciInfo_t>(), 68);
        assert_eq!(std::mem::size_of::<nvmlPciInfo_v1_t>(), 52);
        assert_eq!(std::mem::size_of::<nvmlBAR1Memory_t>(), 24);
        assert_eq!(std::mem::size_of::<nvmlProcessUtilizationSample_t>(), 32);
    }

    #[test]
    fn pci_identity() {
        assert!(pci_matches(0, "00000000:01:00.0"));
        assert!(pci_matches(0, "0000:01:00.0"));
        assert!(pci_matches(15, "0000:10:00.0"));
        assert!(!pci_matches(1, "0000:01:00.0"));
        assert_eq!(scale(30, 70, 50), 50);
        assert_eq!(scale(30, 70, 250), 70);
    }
}
