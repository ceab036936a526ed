//! Every device-allocation path and its free: charge the tenant first (atomically against the
//! limit), then allocate; on failure give the charge back. Frees give back what was charged,
//! after the real free succeeded. Over quota → `CUDA_ERROR_OUT_OF_MEMORY`, nothing charged.
//!
//! Handlers of the entry-point table (`Alloc` and `Free`): each gets the real function and the
//! caller's arguments.

use super::init::{device_of_ordinal, working_device};
use super::table::sig;
use crate::allocations::{self, Kind, Record};
use crate::cuda_types::*;
use crate::registration::{self, Access, access};
use gpumux_common::accounting;
use std::ffi::{c_uint, c_void};

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
                extra_refs: 0,
            },
        );
    } else {
        give_back_bytes(reg, device, bytes);
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
        give_back_bytes(reg, r.device, r.bytes);
    }
}

/// Returns `bytes` to the tenant. `uncharge` fails only when the accounting lock cannot be
/// taken; the slot then keeps the bytes, and the daemon returns them with the process.
pub(super) fn give_back_bytes(reg: &registration::Registration, device: usize, bytes: u64) {
    if accounting::uncharge(&reg.accounting, reg.slot, device, bytes).is_err() {
        crate::diag::stderr(
            b"gpumux: cannot take the accounting lock to return freed memory; it is returned when the process exits\n",
        );
    }
}

/// Reads a driver out-parameter after a successful call.
///
/// # Safety
/// `p` is valid for a read of `T`: call it only after the driver returned `CUDA_SUCCESS` for
/// a call that writes through this (caller-provided, so non-null on success) pointer.
unsafe fn out<T: Copy>(p: *const T) -> T {
    // SAFETY: the caller's contract.
    unsafe { *p }
}

/// Charges `bytes` on the current device for `alloc`, which returns a device pointer in
/// `*dptr`.
///
/// # Safety
/// `dptr` is the out-pointer `alloc` writes on success (the C API's contract).
unsafe fn charged_ptr(
    bytes: u64,
    dptr: *mut CUdeviceptr,
    alloc: impl FnOnce() -> CUresult,
) -> CUresult {
    // SAFETY: read after the driver succeeded (the caller's contract).
    charged(bytes, Target::Current, Kind::DevicePtr, alloc, || unsafe {
        out(dptr)
    })
}

// ---- linear device memory --------------------------------------------------------------

/// `cuMemAlloc_v2`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_alloc(
    real: sig::cuMemAlloc_v2,
    dptr: *mut CUdeviceptr,
    bytesize: usize,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    let alloc = || unsafe { real(dptr, bytesize) };
    // SAFETY: `dptr` is the out-pointer `alloc` writes.
    unsafe { charged_ptr(bytesize as u64, dptr, alloc) }
}

/// `cuMemAlloc` (v1 ABI: 32-bit pointer and size).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_alloc_v1(
    real: sig::cuMemAlloc,
    dptr: *mut u32,
    bytesize: c_uint,
) -> CUresult {
    charged(
        bytesize as u64,
        Target::Current,
        Kind::DevicePtr,
        // SAFETY: forwarding the caller's arguments.
        || unsafe { real(dptr, bytesize) },
        // SAFETY: read after the driver succeeded.
        || unsafe { out(dptr) } as u64,
    )
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
            give_back_bytes(reg, rec.device, rec.bytes);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    rc
}

/// `cuMemAllocPitch_v2`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_alloc_pitch(
    real: sig::cuMemAllocPitch_v2,
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    let free = super::real!(cuMemFree_v2, CUDA_ERROR_NOT_INITIALIZED);
    pitched(
        width as u64,
        height as u64,
        // SAFETY: forwarding the caller's arguments.
        || unsafe { real(dptr, pitch, width, height, elem) },
        // SAFETY: read after the driver succeeded.
        || unsafe { (out(dptr), out(pitch) as u64) },
        |p| {
            // SAFETY: freeing the allocation just made (its result is the driver's business:
            // the charge is given back either way).
            let _rc: CUresult = unsafe { free(p) };
        },
    )
}

/// `cuMemAllocPitch` (v1 ABI).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_alloc_pitch_v1(
    real: sig::cuMemAllocPitch,
    dptr: *mut u32,
    pitch: *mut c_uint,
    width: c_uint,
    height: c_uint,
    elem: c_uint,
) -> CUresult {
    let free = super::real!(cuMemFree, CUDA_ERROR_NOT_INITIALIZED);
    pitched(
        width as u64,
        height as u64,
        // SAFETY: forwarding the caller's arguments.
        || unsafe { real(dptr, pitch, width, height, elem) },
        // SAFETY: read after the driver succeeded.
        || unsafe { (out(dptr) as u64, out(pitch) as u64) },
        |p| {
            // SAFETY: freeing the allocation just made (see `mem_alloc_pitch`).
            let _rc: CUresult = unsafe { free(p as u32) };
        },
    )
}

/// `cuMemAllocManaged`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_alloc_managed(
    real: sig::cuMemAllocManaged,
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    flags: c_uint,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    let alloc = || unsafe { real(dptr, bytesize, flags) };
    // SAFETY: `dptr` is the out-pointer `alloc` writes.
    unsafe { charged_ptr(bytesize as u64, dptr, alloc) }
}

/// `cuMemFree_v2`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_free(real: sig::cuMemFree_v2, dptr: CUdeviceptr) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    freed(Kind::DevicePtr, dptr, || unsafe { real(dptr) })
}

/// `cuMemFree` (v1 ABI).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_free_v1(real: sig::cuMemFree, dptr: u32) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    freed(Kind::DevicePtr, dptr as u64, || unsafe { real(dptr) })
}

// ---- stream-ordered allocation -----------------------------------------------------------

/// `cuMemAllocAsync`; `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_alloc_async<const PTSZ: bool>(
    real: sig::cuMemAllocAsync,
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    stream: CUstream,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    let alloc = || unsafe { real(dptr, bytesize, stream) };
    // SAFETY: `dptr` is the out-pointer `alloc` writes.
    unsafe { stream_ordered(bytesize as u64, dptr, stream, PTSZ, alloc) }
}

/// A stream-ordered allocation: charged, unless `stream` captures: there it becomes a graph
/// allocation node, whose memory the driver commits only when the graph is launched (charged
/// then, by `super::graph`).
///
/// # Safety
/// `dptr` is the out-pointer `alloc` writes.
unsafe fn stream_ordered(
    bytes: u64,
    dptr: *mut CUdeviceptr,
    stream: CUstream,
    ptsz: bool,
    alloc: impl FnOnce() -> CUresult,
) -> CUresult {
    if crate::captures::any() && crate::captures::is_capturing(stream as u64, ptsz) {
        return alloc();
    }
    // SAFETY: per this function's contract.
    unsafe { charged_ptr(bytes, dptr, alloc) }
}

/// `cuMemAllocFromPoolAsync`; `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_alloc_from_pool<const PTSZ: bool>(
    real: sig::cuMemAllocFromPoolAsync,
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    let alloc = || unsafe { real(dptr, bytesize, pool, stream) };
    // SAFETY: `dptr` is the out-pointer `alloc` writes.
    unsafe { stream_ordered(bytesize as u64, dptr, stream, PTSZ, alloc) }
}

/// `cuMemFreeAsync` (and `_ptsz`). The tenant gets the bytes back when the free is enqueued:
/// from then on the memory is the application's to reuse in stream order.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_free_async(
    real: sig::cuMemFreeAsync,
    dptr: CUdeviceptr,
    stream: CUstream,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments.
    freed(Kind::DevicePtr, dptr, || unsafe { real(dptr, stream) })
}

// ---- virtual memory management (PyTorch expandable segments, NCCL) -----------------------

/// `cuMemCreate`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_create(
    real: sig::cuMemCreate,
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const MemAllocationProp,
    flags: u64,
) -> CUresult {
    if prop.is_null() {
        // SAFETY: let the driver report the invalid argument itself.
        return unsafe { real(handle, size, prop, flags) };
    }
    // SAFETY: non-null properties supplied by the caller per the API contract.
    let location = unsafe { (*prop).location };
    // The target is the device the properties name, whether or not a context is current
    // (NCCL and vLLM create handles with no current context).
    let target = if location.kind == CU_MEM_LOCATION_TYPE_DEVICE {
        Target::Ordinal(location.id)
    } else {
        Target::Current
    };
    charged(
        size as u64,
        target,
        Kind::MemHandle,
        // SAFETY: forwarding the caller's arguments.
        || unsafe { real(handle, size, prop, flags) },
        // SAFETY: read after the driver succeeded.
        || unsafe { out(handle) },
    )
}

/// `cuMemRelease`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_release(
    real: sig::cuMemRelease,
    handle: CUmemGenericAllocationHandle,
) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    freed(Kind::MemHandle, handle, || unsafe { real(handle) })
}

/// After the driver handed out a VMM handle again (`*handle`): if it is one this process
/// charged, one more reference to it.
///
/// # Safety
/// `handle` is the out-pointer of a call that returned `rc`.
unsafe fn handed_out_again(rc: CUresult, handle: *mut CUmemGenericAllocationHandle) -> CUresult {
    if rc == CUDA_SUCCESS && !handle.is_null() && registration::current().is_some() {
        // SAFETY: the caller's contract: the driver succeeded and wrote the handle.
        allocations::retain(Kind::MemHandle, unsafe { out(handle) });
    }
    rc
}

/// `cuMemRetainAllocationHandle`: the handle mapped at `addr`, one more reference to it (the
/// driver's documentation: "the same handle value used to map the memory", to be released
/// once more).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_retain_handle(
    real: sig::cuMemRetainAllocationHandle,
    handle: *mut CUmemGenericAllocationHandle,
    addr: *mut c_void,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments; then its out-pointer of that call.
    unsafe { handed_out_again(real(handle, addr), handle) }
}

/// `cuMemImportFromShareableHandle`: another process's memory is not charged here; re-importing
/// this process's own export may hand out a handle it charged, which then holds a reference
/// more.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mem_import_shareable(
    real: sig::cuMemImportFromShareableHandle,
    handle: *mut CUmemGenericAllocationHandle,
    os_handle: *mut c_void,
    handle_type: c_uint,
) -> CUresult {
    // SAFETY: forwarding the caller's arguments; then its out-pointer of that call.
    unsafe { handed_out_again(real(handle, os_handle, handle_type), handle) }
}

// ---- arrays ----------------------------------------------------------------------------------

/// An array descriptor the shim can size (both ABI versions of the 2D and 3D descriptors).
pub(super) trait ArrayShape {
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
///
/// # Safety
/// `desc` is null or valid for reads (the C API's contract).
unsafe fn shape_bytes<D: ArrayShape>(desc: *const D, levels: u32) -> u64 {
    if desc.is_null() {
        return 0;
    }
    // SAFETY: non-null descriptor supplied by the caller per the API contract.
    unsafe { &*desc }.bytes(levels).unwrap_or(0)
}

/// `cuArrayCreate`/`_v2`, `cuArray3DCreate`/`_v2`: one handler for the four descriptor ABIs.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn array_create<D: ArrayShape>(
    real: unsafe extern "C" fn(*mut CUarray, *const D) -> CUresult,
    array: *mut CUarray,
    desc: *const D,
) -> CUresult {
    // SAFETY: the caller's descriptor, per the API contract.
    let bytes = unsafe { shape_bytes(desc, 1) };
    charged(
        bytes,
        Target::Current,
        Kind::Array,
        // SAFETY: forwarding the caller's arguments.
        || unsafe { real(array, desc) },
        // SAFETY: read after the driver succeeded.
        || unsafe { out(array) } as u64,
    )
}

/// `cuArrayDestroy`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn array_destroy(real: sig::cuArrayDestroy, array: CUarray) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    freed(Kind::Array, array as u64, || unsafe { real(array) })
}

/// `cuMipmappedArrayCreate`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mipmapped_array_create(
    real: sig::cuMipmappedArrayCreate,
    array: *mut CUmipmappedArray,
    desc: *const Array3dDescriptor,
    levels: c_uint,
) -> CUresult {
    // SAFETY: the caller's descriptor, per the API contract.
    let bytes = unsafe { shape_bytes(desc, levels) };
    charged(
        bytes,
        Target::Current,
        Kind::MipmappedArray,
        // SAFETY: forwarding the caller's arguments.
        || unsafe { real(array, desc, levels) },
        // SAFETY: read after the driver succeeded.
        || unsafe { out(array) } as u64,
    )
}

/// `cuMipmappedArrayDestroy`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn mipmapped_array_destroy(
    real: sig::cuMipmappedArrayDestroy,
    array: CUmipmappedArray,
) -> CUresult {
    // SAFETY: forwarding the caller's argument.
    freed(Kind::MipmappedArray, array as u64, || unsafe {
        real(array)
    })
}
