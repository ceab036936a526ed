//! Every device-allocation path and its free: charge the tenant first (atomically against the
//! limit), then allocate; on failure give the charge back. Frees give back what was charged,
//! after the real free succeeded. Over quota → `CUDA_ERROR_OUT_OF_MEMORY`, nothing charged.

#![allow(non_snake_case)]

use super::init::{device_of_ordinal, working_device};
use super::real;
use crate::allocations::{self, Kind, Record};
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use crate::registration::{self, Access, access};
use gpumux_common::accounting;
use std::ffi::c_uint;

/// Which device an allocation lands on.
enum Target {
    /// The current context's device.
    Current,
    /// A CUDA ordinal named by the call (VMM allocation properties).
    Ordinal(CUdevice),
}

/// Charges `bytes`, runs `alloc`, records the allocation under `key()` on success.
fn charged(
    bytes: u64,
    target: Target,
    kind: Kind,
    alloc: impl FnOnce() -> CUresult,
    key: impl FnOnce() -> u64,
) -> CUresult {
    let reg = match access() {
        Access::PassThrough => return alloc(),
        Access::Refused => return CUDA_ERROR_NOT_INITIALIZED,
        Access::Registered(r) => r,
    };
    if bytes == 0 {
        // The driver refuses 0-byte allocations itself; nothing to charge.
        return alloc();
    }
    let device = match target {
        // A process that sees one device allocates on it (without a context the driver call
        // fails and the charge is given back).
        Target::Current => match working_device(reg) {
            Ok(d) => d,
            Err(rc) => return rc,
        },
        Target::Ordinal(o) => device_of_ordinal(reg, o),
    };
    let Some(device) = device else {
        return CUDA_ERROR_OUT_OF_MEMORY;
    };
    if accounting::charge(reg.control(), &reg.accounting, reg.slot, device, bytes).is_err() {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    let rc = alloc();
    if rc == CUDA_SUCCESS {
        let context = match kind {
            // Physical VMM memory belongs to the device, not to a context.
            Kind::MemHandle => 0,
            _ => super::context::current_context(),
        };
        allocations::insert(
            kind,
            key(),
            Record {
                device,
                bytes,
                context,
            },
        );
    } else {
        accounting::uncharge(&reg.accounting, reg.slot, device, bytes).ok();
    }
    rc
}

/// Runs the real `free`; on success gives back what `key` charged.
fn freed(kind: Kind, key: u64, free: impl FnOnce() -> CUresult) -> CUresult {
    let rc = free();
    if rc == CUDA_SUCCESS {
        give_back(kind, key);
    }
    rc
}

fn give_back(kind: Kind, key: u64) {
    if let Some(reg) = registration::current()
        && let Some(r) = allocations::remove(kind, key)
    {
        accounting::uncharge(&reg.accounting, reg.slot, r.device, r.bytes).ok();
    }
}

/// Reads a driver out-parameter after a successful call.
fn out<T: Copy>(p: *const T) -> T {
    // SAFETY: only called after the driver returned CUDA_SUCCESS, which means it wrote a
    // value through this (non-null) pointer.
    unsafe { *p }
}

// ---- linear device memory --------------------------------------------------------------

/// # Safety
/// C ABI entry point; arguments as documented for `cuMemAlloc_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemAlloc_v2: unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        charged(
            bytesize as u64,
            Target::Current,
            Kind::DevicePtr,
            || unsafe { f(dptr, bytesize) },
            || out(dptr),
        )
    })
}

/// # Safety
/// C ABI entry point; `cuMemAlloc` (v1 ABI: 32-bit pointer and size).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc(dptr: *mut u32, bytesize: c_uint) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemAlloc: unsafe extern "C" fn(*mut u32, c_uint) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        charged(
            bytesize as u64,
            Target::Current,
            Kind::DevicePtr,
            || unsafe { f(dptr, bytesize) },
            || out(dptr) as u64,
        )
    })
}

/// Pitched allocation: charge the unpadded size first, then the padding the driver chose.
fn pitched(
    width: u64,
    height: u64,
    alloc: impl FnOnce() -> CUresult,
    result: impl Fn() -> (u64, u64),
    free: impl FnOnce(u64),
) -> CUresult {
    let Some(lower) = width.checked_mul(height) else {
        return CUDA_ERROR_OUT_OF_MEMORY;
    };
    let rc = charged(lower, Target::Current, Kind::DevicePtr, alloc, || {
        result().0
    });
    if rc != CUDA_SUCCESS {
        return rc;
    }
    let (ptr, pitch) = result();
    let actual = pitch.saturating_mul(height);
    if actual > lower {
        let Some(reg) = registration::current() else {
            return rc;
        };
        let Some(rec) = allocations::remove(Kind::DevicePtr, ptr) else {
            return rc;
        };
        if accounting::charge(
            reg.control(),
            &reg.accounting,
            reg.slot,
            rec.device,
            actual - lower,
        )
        .is_ok()
        {
            allocations::insert(
                Kind::DevicePtr,
                ptr,
                Record {
                    bytes: actual,
                    ..rec
                },
            );
        } else {
            free(ptr);
            accounting::uncharge(&reg.accounting, reg.slot, rec.device, rec.bytes).ok();
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    rc
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuMemAllocPitch_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemAllocPitch_v2: unsafe extern "C" fn(*mut CUdeviceptr, *mut usize, usize, usize, c_uint) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        let free = real!(cuMemFree_v2: unsafe extern "C" fn(CUdeviceptr) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        pitched(
            width as u64,
            height as u64,
            // SAFETY: forwarding the caller's arguments.
            || unsafe { f(dptr, pitch, width, height, elem) },
            || (out(dptr), out(pitch) as u64),
            // SAFETY: freeing the allocation just made.
            |p| unsafe {
                free(p);
            },
        )
    })
}

/// # Safety
/// C ABI entry point; `cuMemAllocPitch` (v1 ABI).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch(
    dptr: *mut u32,
    pitch: *mut c_uint,
    width: c_uint,
    height: c_uint,
    elem: c_uint,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemAllocPitch: unsafe extern "C" fn(*mut u32, *mut c_uint, c_uint, c_uint, c_uint) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        let free =
            real!(cuMemFree: unsafe extern "C" fn(u32) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        pitched(
            width as u64,
            height as u64,
            // SAFETY: forwarding the caller's arguments.
            || unsafe { f(dptr, pitch, width, height, elem) },
            || (out(dptr) as u64, out(pitch) as u64),
            // SAFETY: freeing the allocation just made.
            |p| unsafe {
                free(p as u32);
            },
        )
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuMemAllocManaged`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    flags: c_uint,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemAllocManaged: unsafe extern "C" fn(*mut CUdeviceptr, usize, c_uint) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's arguments.
        charged(
            bytesize as u64,
            Target::Current,
            Kind::DevicePtr,
            || unsafe { f(dptr, bytesize, flags) },
            || out(dptr),
        )
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuMemFree_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemFree_v2: unsafe extern "C" fn(CUdeviceptr) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's argument.
        freed(Kind::DevicePtr, dptr, || unsafe { f(dptr) })
    })
}

/// # Safety
/// C ABI entry point; `cuMemFree` (v1 ABI).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree(dptr: u32) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemFree: unsafe extern "C" fn(u32) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's argument.
        freed(Kind::DevicePtr, dptr as u64, || unsafe { f(dptr) })
    })
}

// ---- stream-ordered allocation -----------------------------------------------------------

macro_rules! alloc_async {
    ($name:ident) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuMemAllocAsync`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dptr: *mut CUdeviceptr, bytesize: usize, stream: CUstream) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                // SAFETY: forwarding the caller's arguments.
                charged(bytesize as u64, Target::Current, Kind::DevicePtr, || unsafe { f(dptr, bytesize, stream) }, || out(dptr))
            })
        }
    };
}
alloc_async!(cuMemAllocAsync);
alloc_async!(cuMemAllocAsync_ptsz);

macro_rules! alloc_from_pool {
    ($name:ident) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuMemAllocFromPoolAsync`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dptr: *mut CUdeviceptr, bytesize: usize, pool: CUmemoryPool, stream: CUstream) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                // SAFETY: forwarding the caller's arguments.
                charged(bytesize as u64, Target::Current, Kind::DevicePtr, || unsafe { f(dptr, bytesize, pool, stream) }, || out(dptr))
            })
        }
    };
}
alloc_from_pool!(cuMemAllocFromPoolAsync);
alloc_from_pool!(cuMemAllocFromPoolAsync_ptsz);

macro_rules! free_async {
    ($name:ident) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for `cuMemFreeAsync`. The tenant gets the
        /// bytes back when the free is enqueued: from then on the memory is the application's
        /// to reuse in stream order.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                // SAFETY: forwarding the caller's arguments.
                freed(Kind::DevicePtr, dptr, || unsafe { f(dptr, stream) })
            })
        }
    };
}
free_async!(cuMemFreeAsync);
free_async!(cuMemFreeAsync_ptsz);

// ---- virtual memory management (PyTorch expandable segments, NCCL) -----------------------

/// # Safety
/// C ABI entry point; arguments as documented for `cuMemCreate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const MemAllocationPropHead,
    flags: u64,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemCreate: unsafe extern "C" fn(*mut CUmemGenericAllocationHandle, usize, *const MemAllocationPropHead, u64) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        if prop.is_null() {
            // SAFETY: let the driver report the invalid argument itself.
            return unsafe { f(handle, size, prop, flags) };
        }
        // SAFETY: non-null properties supplied by the caller per the API contract.
        let p = unsafe { &*prop };
        // The target is the device the properties name, whether or not a context is current
        // (NCCL and vLLM create handles with no current context).
        let target = if p.location_type == CU_MEM_LOCATION_TYPE_DEVICE {
            Target::Ordinal(p.location_id)
        } else {
            Target::Current
        };
        // SAFETY: forwarding the caller's arguments.
        charged(
            size as u64,
            target,
            Kind::MemHandle,
            || unsafe { f(handle, size, prop, flags) },
            || out(handle),
        )
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuMemRelease`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMemRelease: unsafe extern "C" fn(CUmemGenericAllocationHandle) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's argument.
        freed(Kind::MemHandle, handle, || unsafe { f(handle) })
    })
}

// ---- arrays ----------------------------------------------------------------------------------

/// An array descriptor the shim can size (both ABI versions of the 2D and 3D descriptors).
trait ArrayShape {
    fn bytes(&self, levels: u32) -> Option<u64>;
}

macro_rules! array_shape {
    ($desc:ty, 2d) => {
        impl ArrayShape for $desc {
            fn bytes(&self, levels: u32) -> Option<u64> {
                let (w, h) = (self.width as u64, self.height as u64);
                array_bytes(w, h, 1, self.format, self.num_channels, levels)
            }
        }
    };
    ($desc:ty, 3d) => {
        impl ArrayShape for $desc {
            fn bytes(&self, levels: u32) -> Option<u64> {
                let (w, h, d) = (self.width as u64, self.height as u64, self.depth as u64);
                array_bytes(w, h, d, self.format, self.num_channels, levels)
            }
        }
    };
}
array_shape!(ArrayDescriptor, 2d);
array_shape!(ArrayDescriptorV1, 2d);
array_shape!(Array3dDescriptor, 3d);
array_shape!(Array3dDescriptorV1, 3d);

/// Bytes an array of this descriptor occupies. A null descriptor or an unknown format is
/// charged nothing: the driver refuses those itself.
fn shape_bytes<D: ArrayShape>(desc: *const D, levels: u32) -> u64 {
    if desc.is_null() {
        return 0;
    }
    // SAFETY: non-null descriptor supplied by the caller per the API contract.
    unsafe { &*desc }.bytes(levels).unwrap_or(0)
}

macro_rules! array_create {
    ($name:ident, $desc:ty) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for the array creation call.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(array: *mut CUarray, desc: *const $desc) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn(*mut CUarray, *const $desc) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                let bytes = shape_bytes(desc, 1);
                // SAFETY: forwarding the caller's arguments.
                charged(bytes, Target::Current, Kind::Array, || unsafe { f(array, desc) }, || out(array) as u64)
            })
        }
    };
}
array_create!(cuArrayCreate, ArrayDescriptorV1);
array_create!(cuArrayCreate_v2, ArrayDescriptor);
array_create!(cuArray3DCreate, Array3dDescriptorV1);
array_create!(cuArray3DCreate_v2, Array3dDescriptor);

/// # Safety
/// C ABI entry point; arguments as documented for `cuArrayDestroy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayDestroy(array: CUarray) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuArrayDestroy: unsafe extern "C" fn(CUarray) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's argument.
        freed(Kind::Array, array as u64, || unsafe { f(array) })
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuMipmappedArrayCreate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    array: *mut CUmipmappedArray,
    desc: *const Array3dDescriptor,
    levels: c_uint,
) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMipmappedArrayCreate: unsafe extern "C" fn(*mut CUmipmappedArray, *const Array3dDescriptor, c_uint) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        let bytes = shape_bytes(desc, levels);
        // SAFETY: forwarding the caller's arguments.
        charged(
            bytes,
            Target::Current,
            Kind::MipmappedArray,
            || unsafe { f(array, desc, levels) },
            || out(array) as u64,
        )
    })
}

/// # Safety
/// C ABI entry point; arguments as documented for `cuMipmappedArrayDestroy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayDestroy(array: CUmipmappedArray) -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f = real!(cuMipmappedArrayDestroy: unsafe extern "C" fn(CUmipmappedArray) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: forwarding the caller's argument.
        freed(Kind::MipmappedArray, array as u64, || unsafe { f(array) })
    })
}
