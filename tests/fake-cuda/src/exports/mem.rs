//! Memory management entry points: device, pitched, managed and host allocations, frees (also
//! stream-ordered), memory info, address ranges, pointer attributes, pools, VMM and arrays.

use crate::context::{self, Context};
use crate::driver::{Process, process};
use crate::graph::{self, Route};
use crate::memory::{GRANULARITY, Kind, array_bytes};
use crate::stream::{self, Op};
use crate::types::*;
use gpumux_common::cuda_abi::{
    Array3dDescriptor, ArrayDescriptor, CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE,
    MemAccessDesc, MemAllocationProp, MemLocation,
};
use std::ffi::{c_int, c_uint, c_void};
use std::sync::Arc;

fn alloc(dptr: *mut CUdeviceptr, size: usize, kind: Kind) -> Res<()> {
    need(dptr)?;
    let (p, c) = context::require()?;
    graph::unsafe_call(p)?;
    let ptr = p.mem.alloc(p, c.device, c.handle, size as u64, kind)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(dptr, ptr) }
}

/// Waits for all work of every context of the process (a synchronous free must not pull memory
/// from under queued work).
fn sync_all(p: &Process) {
    let ctxs: Vec<Arc<Context>> = p.contexts.lock().values().cloned().collect();
    for c in ctxs {
        c.synchronize().ok();
    }
}

fn free(ptr: CUdeviceptr) -> Res<()> {
    let p = process()?;
    context::current(p)?;
    graph::unsafe_call(p)?;
    if graph::is_graph_alloc(p, ptr) {
        // A graph allocation's lifetime ends now; its memory goes back to the graph pool.
        sync_all(p);
        return graph::free_alloc(p, ptr);
    }
    match p.mem.find(ptr) {
        Some(a) if a.base == ptr && !a.free_pending && !matches!(a.kind, Kind::Mapped(_)) => {}
        _ => return Err(err::INVALID_VALUE),
    }
    sync_all(p);
    p.mem.free_now(p, ptr)
}

fn mem_info(p: &Process, c: &Context) -> Res<(u64, u64)> {
    p.gpu.mem_info(c.device).map_err(|_| err::INVALID_DEVICE)
}

fn alloc_async(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: Option<Handle>,
    h: Handle,
    ptds: bool,
) -> Res<()> {
    need(dptr)?;
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    let pool_h = match pool {
        Some(ph) => hval(ph),
        None => p.mem.current_pools[ctx.device as usize].load(std::sync::atomic::Ordering::Acquire),
    };
    let device = p
        .mem
        .pools
        .lock()
        .get(&pool_h)
        .map(|pl| pl.device)
        .ok_or(err::INVALID_VALUE)?;
    if size == 0 {
        // A zero-byte stream-ordered allocation yields a null pointer (freed as a no-op).
        // SAFETY: output pointer from the caller (null checked).
        return unsafe { write_out(dptr, 0) };
    }
    if let Route::Capture(id) = graph::route(p, &ctx, &s)? {
        // Captured: an allocation node of the graph (its memory comes at launch).
        let va = graph::capture_alloc(p, id, &s, device, size as u64)?;
        // SAFETY: output pointer from the caller (null checked).
        return unsafe { write_out(dptr, va) };
    }
    let ptr = p
        .mem
        .alloc(p, device, ctx.handle, size as u64, Kind::Pool(pool_h))?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(dptr, ptr) }
}

fn free_async(ptr: CUdeviceptr, h: Handle, ptds: bool) -> Res<()> {
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    if ptr == 0 {
        return Ok(());
    }
    if let Route::Capture(id) = graph::route(p, &ctx, &s)? {
        graph::capture_node(p, id, &s, graph::NodeKind::MemFree(ptr))?;
        return Ok(());
    }
    if graph::is_graph_alloc(p, ptr) {
        // Simplification: the lifetime ends when the free is enqueued (the memory stays mapped
        // until the graph pool is trimmed or its executable graph destroyed).
        return graph::free_alloc(p, ptr);
    }
    p.mem.mark_free_pending(ptr)?;
    stream::submit(&ctx, &s, Op::Free { ptr });
    Ok(())
}

fn prop_device(p: &Process, prop: *const MemAllocationProp) -> Res<u32> {
    // SAFETY: input pointer from the caller (null checked).
    let prop = unsafe { read_in(prop)? };
    if prop.kind != CU_MEM_ALLOCATION_TYPE_PINNED
        || prop.location.kind != CU_MEM_LOCATION_TYPE_DEVICE
    {
        return Err(err::INVALID_VALUE);
    }
    if prop.requested_handle_types != 0 {
        // Exportable handles (fd, fabric) are not simulated.
        return Err(err::NOT_SUPPORTED);
    }
    p.device(prop.location.id).map_err(|_| err::INVALID_DEVICE)
}

fn array_create(out: *mut Handle, bytes: Res<u64>, mipmapped: bool) -> Res<()> {
    need(out)?;
    let (p, c) = context::require()?;
    let bytes = bytes?;
    p.gpu
        .charge(c.device, bytes)
        .map_err(|_| err::OUT_OF_MEMORY)?;
    let h = p.new_handle();
    p.mem.arrays.lock().insert(
        h,
        crate::memory::ArrayInfo {
            device: c.device,
            bytes,
            ctx: c.handle,
            mipmapped,
        },
    );
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(out, hptr(h)) }
}

fn array_destroy(h: Handle, mipmapped: bool) -> Res<()> {
    let p = process()?;
    let mut arrays = p.mem.arrays.lock();
    match arrays.get(&hval(h)) {
        Some(a) if a.mipmapped == mipmapped => {
            let a = arrays.remove(&hval(h)).expect("present");
            p.gpu.uncharge(a.device, a.bytes);
            Ok(())
        }
        _ => Err(err::INVALID_HANDLE),
    }
}

fn pool_attr(p: &Process, pool: Handle, attr: c_int, value: *mut c_void, set: bool) -> Res<()> {
    need(value)?;
    let mut pools = p.mem.pools.lock();
    let pl = pools.get_mut(&hval(pool)).ok_or(err::INVALID_VALUE)?;
    let int = value as *mut c_int;
    let u64p = value as *mut u64;
    // SAFETY: (for all reads/writes below) `value` points to an int for attributes 1..=3 and to
    // a cuuint64_t for 4..=8, as the API documents (null checked).
    unsafe {
        match (attr, set) {
            (1..=3, false) => write_out(int, pl.attrs[attr as usize - 1] as c_int),
            (1..=3, true) => {
                pl.attrs[attr as usize - 1] = u64::from(read_in(int)? != 0);
                Ok(())
            }
            (4, false) => write_out(u64p, pl.attrs[4]),
            (4, true) => {
                pl.attrs[4] = read_in(u64p)?;
                Ok(())
            }
            (5 | 7, false) => write_out(u64p, pl.used),
            (6 | 8, false) => write_out(u64p, pl.used_high),
            (6 | 8, true) => {
                if read_in(u64p)? != 0 {
                    return Err(err::INVALID_VALUE);
                }
                pl.used_high = pl.used;
                Ok(())
            }
            _ => Err(err::INVALID_VALUE),
        }
    }
}

cuda_fn! {
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) {
        alloc(dptr, size, Kind::Device)
    }

    fn cuMemAlloc(dptr: *mut c_uint, size: c_uint) {
        need(dptr)?;
        let (p, c) = context::require()?;
        graph::unsafe_call(p)?;
        let ptr = p.mem.alloc_low(p, c.device, c.handle, u64::from(size))?;
        if ptr > u64::from(u32::MAX) {
            p.mem.free_now(p, ptr).ok();
            return Err(err::OUT_OF_MEMORY);
        }
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(dptr, ptr as c_uint) }
    }

    fn cuMemAllocPitch_v2(
        dptr: *mut CUdeviceptr,
        pitch: *mut usize,
        width: usize,
        height: usize,
        elem: c_uint,
    ) {
        need(dptr)?;
        need(pitch)?;
        if width == 0 || height == 0 || !matches!(elem, 4 | 8 | 16) {
            return Err(err::INVALID_VALUE);
        }
        let pt = width.div_ceil(512).checked_mul(512).ok_or(err::INVALID_VALUE)?;
        let size = pt.checked_mul(height).ok_or(err::OUT_OF_MEMORY)?;
        alloc(dptr, size, Kind::Device)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pitch, pt) }
    }

    fn cuMemAllocManaged(dptr: *mut CUdeviceptr, size: usize, flags: c_uint) {
        if flags != 1 && flags != 2 {
            return Err(err::INVALID_VALUE);
        }
        alloc(dptr, size, Kind::Managed)
    }

    fn cuMemFree_v2(ptr: CUdeviceptr) {
        free(ptr)
    }

    fn cuMemFree(ptr: c_uint) {
        free(u64::from(ptr))
    }

    fn cuMemAllocHost_v2(pp: *mut *mut c_void, size: usize) {
        need(pp)?;
        let (p, _) = context::require()?;
        graph::unsafe_call(p)?;
        let ptr = p.mem.host_alloc(size as u64)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pp, ptr as *mut c_void) }
    }

    fn cuMemAllocHost(pp: *mut *mut c_void, size: c_uint) {
        need(pp)?;
        let (p, _) = context::require()?;
        graph::unsafe_call(p)?;
        let ptr = p.mem.host_alloc(u64::from(size))?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pp, ptr as *mut c_void) }
    }

    fn cuMemHostAlloc(pp: *mut *mut c_void, size: usize, flags: c_uint) {
        need(pp)?;
        if flags & !0x7 != 0 {
            return Err(err::INVALID_VALUE);
        }
        let (p, _) = context::require()?;
        graph::unsafe_call(p)?;
        let ptr = p.mem.host_alloc(size as u64)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pp, ptr as *mut c_void) }
    }

    fn cuMemFreeHost(ptr: *mut c_void) {
        let (p, _) = context::require()?;
        graph::unsafe_call(p)?;
        sync_all(p);
        p.mem.host_free(ptr as u64)
    }

    fn cuMemHostGetDevicePointer_v2(dptr: *mut CUdeviceptr, ptr: *mut c_void, flags: c_uint) {
        need(dptr)?;
        if flags != 0 {
            return Err(err::INVALID_VALUE);
        }
        let (p, _) = context::require()?;
        if !p.mem.is_pinned(ptr as u64, 1) {
            return Err(err::INVALID_VALUE);
        }
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(dptr, ptr as u64) }
    }

    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) {
        need(free)?;
        need(total)?;
        let (p, c) = context::require()?;
        let (f, t) = mem_info(p, &c)?;
        // SAFETY: output pointers from the caller (null checked).
        unsafe {
            write_out(free, f as usize)?;
            write_out(total, t as usize)
        }
    }

    fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) {
        need(free)?;
        need(total)?;
        let (p, c) = context::require()?;
        let (f, t) = mem_info(p, &c)?;
        let clamp = |v: u64| v.min(u64::from(u32::MAX)) as c_uint;
        // SAFETY: output pointers from the caller (null checked).
        unsafe {
            write_out(free, clamp(f))?;
            write_out(total, clamp(t))
        }
    }

    fn cuMemGetAddressRange_v2(base: *mut CUdeviceptr, size: *mut usize, ptr: CUdeviceptr) {
        let (p, _) = context::require()?;
        let a = p.mem.find(ptr).ok_or(err::NOT_FOUND)?;
        if !base.is_null() {
            // SAFETY: optional output pointer from the caller (non-null).
            unsafe { write_out(base, a.base)? };
        }
        if !size.is_null() {
            // SAFETY: optional output pointer from the caller (non-null).
            unsafe { write_out(size, a.size as usize)? };
        }
        Ok(())
    }

    fn cuPointerGetAttribute(data: *mut c_void, attr: c_int, ptr: CUdeviceptr) {
        need(data)?;
        let p = process()?;
        if let Some((b, s)) = p.mem.pinned_base(ptr) {
            // SAFETY: `data` points to storage of the attribute's documented type.
            return unsafe {
                match attr {
                    2 => write_out(data as *mut c_uint, 1),
                    3 | 4 => write_out(data as *mut u64, ptr),
                    8 => write_out(data as *mut c_uint, 0),
                    11 => write_out(data as *mut u64, b),
                    12 => write_out(data as *mut usize, s as usize),
                    13 => write_out(data as *mut c_uint, 1),
                    _ => Err(err::INVALID_VALUE),
                }
            };
        }
        let a = p.mem.find(ptr).ok_or(err::INVALID_VALUE)?;
        let managed = a.kind == Kind::Managed;
        // SAFETY: `data` points to storage of the attribute's documented type.
        unsafe {
            match attr {
                1 => write_out(data as *mut Handle, hptr(a.ctx)),
                2 => write_out(data as *mut c_uint, 2),
                3 => write_out(data as *mut u64, ptr),
                4 if managed => write_out(data as *mut u64, ptr),
                4 => Err(err::INVALID_VALUE),
                8 => write_out(data as *mut c_uint, c_uint::from(managed)),
                9 => write_out(data as *mut c_int, a.device as c_int),
                11 => write_out(data as *mut u64, a.base),
                12 => write_out(data as *mut usize, a.size as usize),
                13 => write_out(data as *mut c_uint, 1),
                17 => match a.kind {
                    Kind::Pool(h) => write_out(data as *mut Handle, hptr(h)),
                    _ => write_out(data as *mut Handle, std::ptr::null_mut()),
                },
                _ => Err(err::NOT_SUPPORTED),
            }
        }
    }

    fn cuMemAllocAsync(dptr: *mut CUdeviceptr, size: usize, h: Handle) {
        alloc_async(dptr, size, None, h, false)
    }

    fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, h: Handle) {
        alloc_async(dptr, size, None, h, true)
    }

    fn cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, size: usize, pool: Handle, h: Handle) {
        alloc_async(dptr, size, Some(pool), h, false)
    }

    fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, pool: Handle, h: Handle) {
        alloc_async(dptr, size, Some(pool), h, true)
    }

    fn cuMemFreeAsync(ptr: CUdeviceptr, h: Handle) {
        free_async(ptr, h, false)
    }

    fn cuMemFreeAsync_ptsz(ptr: CUdeviceptr, h: Handle) {
        free_async(ptr, h, true)
    }

    fn cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: CUdevice) {
        need(pool)?;
        let p = process()?;
        let d = p.device(dev)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pool, hptr(p.mem.default_pools[d as usize])) }
    }

    fn cuDeviceGetMemPool(pool: *mut Handle, dev: CUdevice) {
        need(pool)?;
        let p = process()?;
        let d = p.device(dev)?;
        let h = p.mem.current_pools[d as usize].load(std::sync::atomic::Ordering::Acquire);
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pool, hptr(h)) }
    }

    fn cuDeviceSetMemPool(dev: CUdevice, pool: Handle) {
        let p = process()?;
        let d = p.device(dev)?;
        match p.mem.pools.lock().get(&hval(pool)) {
            Some(pl) if pl.device == d => {}
            _ => return Err(err::INVALID_VALUE),
        }
        p.mem.current_pools[d as usize].store(hval(pool), std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn cuMemPoolCreate(pool: *mut Handle, props: *const MemAllocationProp) {
        need(pool)?;
        let p = process()?;
        let d = prop_device(p, props)?;
        let h = p.new_handle();
        p.mem.pools.lock().insert(
            h,
            crate::memory::Pool { device: d, default: false, attrs: [0, 1, 1, 1, 0], used: 0, used_high: 0 },
        );
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(pool, hptr(h)) }
    }

    fn cuMemPoolDestroy(pool: Handle) {
        let p = process()?;
        let h = hval(pool);
        let mut pools = p.mem.pools.lock();
        match pools.get(&h) {
            Some(pl) if !pl.default => {}
            _ => return Err(err::INVALID_VALUE),
        }
        pools.remove(&h);
        for (d, cur) in p.mem.current_pools.iter().enumerate() {
            cur.compare_exchange(
                h,
                p.mem.default_pools[d],
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Relaxed,
            ).ok();
        }
        Ok(())
    }

    fn cuMemPoolTrimTo(pool: Handle, _min_keep: usize) {
        let p = process()?;
        if !p.mem.pools.lock().contains_key(&hval(pool)) {
            return Err(err::INVALID_VALUE);
        }
        Ok(())
    }

    fn cuMemPoolGetAttribute(pool: Handle, attr: c_int, value: *mut c_void) {
        let p = process()?;
        pool_attr(p, pool, attr, value, false)
    }

    fn cuMemPoolSetAttribute(pool: Handle, attr: c_int, value: *mut c_void) {
        let p = process()?;
        pool_attr(p, pool, attr, value, true)
    }

    fn cuMemGetAllocationGranularity(gran: *mut usize, prop: *const MemAllocationProp, option: c_int) {
        need(gran)?;
        let p = process()?;
        prop_device(p, prop)?;
        if option != 0 && option != 1 {
            return Err(err::INVALID_VALUE);
        }
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(gran, GRANULARITY as usize) }
    }

    fn cuMemCreate(handle: *mut u64, size: usize, prop: *const MemAllocationProp, flags: u64) {
        need(handle)?;
        if flags != 0 {
            return Err(err::INVALID_VALUE);
        }
        let p = process()?;
        let d = prop_device(p, prop)?;
        let h = p.mem.vmm_create(p, d, size as u64)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(handle, h) }
    }

    fn cuMemRelease(handle: u64) {
        let p = process()?;
        p.mem.vmm_release(p, handle)
    }

    fn cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, alignment: usize, _addr: CUdeviceptr, flags: u64) {
        need(ptr)?;
        if flags != 0 {
            return Err(err::INVALID_VALUE);
        }
        let p = process()?;
        let base = p.mem.vmm_reserve(size as u64, alignment as u64)?;
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(ptr, base) }
    }

    fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) {
        let p = process()?;
        p.mem.vmm_free_address(ptr, size as u64)
    }

    fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: u64, flags: u64) {
        if flags != 0 {
            return Err(err::INVALID_VALUE);
        }
        let p = process()?;
        p.mem.vmm_map(ptr, size as u64, offset as u64, handle)
    }

    fn cuMemUnmap(ptr: CUdeviceptr, size: usize) {
        let p = process()?;
        sync_all(p);
        p.mem.vmm_unmap(p, ptr, size as u64)
    }

    fn cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: *const MemAccessDesc, count: usize) {
        if desc.is_null() || count == 0 {
            return Err(err::INVALID_VALUE);
        }
        let p = process()?;
        let mut prot = None;
        for i in 0..count {
            // SAFETY: the caller passes `count` descriptors.
            let d = unsafe { read_in(desc.add(i))? };
            if d.location.kind != CU_MEM_LOCATION_TYPE_DEVICE {
                return Err(err::INVALID_VALUE);
            }
            p.device(d.location.id).map_err(|_| err::INVALID_DEVICE)?;
            prot = Some(match d.flags {
                0 => libc::PROT_NONE,
                1 => libc::PROT_READ,
                3 => libc::PROT_READ | libc::PROT_WRITE,
                _ => return Err(err::INVALID_VALUE),
            });
        }
        p.mem.vmm_set_access(ptr, size as u64, prot.unwrap_or(libc::PROT_NONE))
    }

    fn cuArrayCreate_v2(array: *mut Handle, desc: *const ArrayDescriptor) {
        // SAFETY: input pointer from the caller (null checked).
        let d = unsafe { read_in(desc)? };
        array_create(array, array_bytes(d.width as u64, d.height as u64, 0, d.format, d.num_channels, 1), false)
    }

    fn cuArray3DCreate_v2(array: *mut Handle, desc: *const Array3dDescriptor) {
        // SAFETY: input pointer from the caller (null checked).
        let d = unsafe { read_in(desc)? };
        array_create(
            array,
            array_bytes(d.width as u64, d.height as u64, d.depth as u64, d.format, d.num_channels, 1),
            false,
        )
    }

    fn cuArrayDestroy(array: Handle) {
        array_destroy(array, false)
    }

    fn cuMipmappedArrayCreate(array: *mut Handle, desc: *const Array3dDescriptor, levels: c_uint) {
        // SAFETY: input pointer from the caller (null checked).
        let d = unsafe { read_in(desc)? };
        array_create(
            array,
            array_bytes(d.width as u64, d.height as u64, d.depth as u64, d.format, d.num_channels, levels),
            true,
        )
    }

    fn cuMipmappedArrayDestroy(array: Handle) {
        array_destroy(array, true)
    }

    fn cuMemPrefetchAsync_v2(ptr: CUdeviceptr, count: usize, _loc: MemLocation, _flags: c_uint, h: Handle) {
        let p = process()?;
        let a = p.mem.check_range(ptr, count as u64)?;
        if a.kind != Kind::Managed {
            return Err(err::INVALID_VALUE);
        }
        let (ctx, s) = stream::resolve(p, h, false)?;
        stream::submit(&ctx, &s, Op::Nop);
        Ok(())
    }

    fn cuMemAdvise_v2(ptr: CUdeviceptr, count: usize, advice: c_int, _loc: MemLocation) {
        let p = process()?;
        let a = p.mem.check_range(ptr, count as u64)?;
        if a.kind != Kind::Managed || !(1..=6).contains(&advice) {
            return Err(err::INVALID_VALUE);
        }
        Ok(())
    }

    fn cuStreamAttachMemAsync(h: Handle, ptr: CUdeviceptr, length: usize, flags: c_uint) {
        let p = process()?;
        let a = p.mem.find(ptr).ok_or(err::INVALID_VALUE)?;
        if a.kind != Kind::Managed || (length != 0 && length as u64 != a.size) || !matches!(flags, 1 | 2 | 4) {
            return Err(err::INVALID_VALUE);
        }
        let (ctx, s) = stream::resolve(p, h, false)?;
        stream::submit(&ctx, &s, Op::Nop);
        Ok(())
    }
}
