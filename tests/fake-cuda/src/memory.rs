//! Device memory: the allocation table (device pointers are host addresses of `MAP_NORESERVE`
//! mappings, so data really moves and an untouched 16 GiB device costs nothing), charging against
//! the shared device capacity, pinned host memory, stream-ordered pool allocations, virtual memory
//! management (physical memory backed by a memfd, mapped into reserved ranges), and arrays (charged
//! only). Range checks reject pointers outside live allocations like the real driver.

use crate::driver::Process;
use crate::types::{Res, err};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;

/// VMM allocation granularity (minimum and recommended).
pub const GRANULARITY: u64 = 2 << 20;

/// What backs an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `cuMemAlloc`/`cuMemAllocPitch`.
    Device,
    /// `cuMemAllocManaged`.
    Managed,
    /// Stream-ordered allocation from a pool.
    Pool(u64),
    /// A VMM mapping of a physical allocation handle.
    Mapped(u64),
    /// A graph allocation (memory node): the address range is reserved when the node is made,
    /// accessible only while the graph memory pool maps physical memory to it (`crate::graph`).
    Graph,
}

/// A live device allocation.
#[derive(Debug, Clone)]
pub struct Alloc {
    /// Base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Device.
    pub device: u32,
    /// Bytes charged to the device (0 for VMM mappings: the physical handle is charged).
    pub charged: u64,
    /// Owning context (0: none, e.g. VMM).
    pub ctx: u64,
    /// Backing.
    pub kind: Kind,
    /// Length of the anonymous mapping to unmap on free (0: not owned).
    pub map_len: usize,
    /// Whether the memory may be accessed (VMM mappings need `cuMemSetAccess`).
    pub accessible: bool,
    /// A stream-ordered free is pending.
    pub free_pending: bool,
}

/// A VMM physical allocation (`CUmemGenericAllocationHandle`).
#[derive(Debug)]
pub struct Physical {
    /// memfd backing it.
    pub fd: i32,
    /// Size.
    pub size: u64,
    /// Device charged.
    pub device: u32,
    /// Live mappings.
    pub mappings: u32,
    /// `cuMemRelease` was called.
    pub released: bool,
}

/// A memory pool.
#[derive(Debug)]
pub struct Pool {
    /// Device.
    pub device: u32,
    /// Whether it is the device's default pool.
    pub default: bool,
    /// `CU_MEMPOOL_ATTR_*` integer attributes 1..=3 and the release threshold (4).
    pub attrs: [u64; 5],
    /// Bytes allocated from the pool now.
    pub used: u64,
    /// High-water mark of `used`.
    pub used_high: u64,
}

/// An array (`cuArrayCreate` & co): charged, not backed.
#[derive(Debug, Clone, Copy)]
pub struct ArrayInfo {
    /// Device.
    pub device: u32,
    /// Bytes charged.
    pub bytes: u64,
    /// Owning context.
    pub ctx: u64,
    /// Mipmapped.
    pub mipmapped: bool,
}

/// All memory of the process.
pub struct MemState {
    table: RwLock<BTreeMap<u64, Alloc>>,
    host: Mutex<BTreeMap<u64, (u64, usize)>>,
    /// VMM physical allocations by handle.
    pub physical: Mutex<HashMap<u64, Physical>>,
    reservations: Mutex<BTreeMap<u64, u64>>,
    /// Pools by handle.
    pub pools: Mutex<HashMap<u64, Pool>>,
    /// Default pool handle per device.
    pub default_pools: Vec<u64>,
    /// Current pool per device (`cuDeviceSetMemPool`).
    pub current_pools: Vec<AtomicU64>,
    /// Arrays by handle.
    pub arrays: Mutex<HashMap<u64, ArrayInfo>>,
}

fn page_round(n: u64) -> Option<usize> {
    let page = 4096u64;
    n.checked_add(page - 1).map(|v| (v / page * page) as usize)
}

fn map_anon(len: usize, prot: i32) -> Res<u64> {
    map_anon_flags(len, prot, 0)
}

fn map_anon_flags(len: usize, prot: i32, extra: i32) -> Res<u64> {
    // SAFETY: anonymous mapping at a kernel-chosen address; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(err::OUT_OF_MEMORY)
    } else {
        Ok(p as u64)
    }
}

fn unmap(addr: u64, len: usize) {
    if len > 0 {
        // SAFETY: (addr, len) is a mapping this module created and no longer references.
        unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    }
}

impl MemState {
    /// Memory state with the given default pool handles (one per device).
    pub fn new(default_pools: Vec<u64>) -> Self {
        let pools = default_pools
            .iter()
            .enumerate()
            .map(|(d, &h)| {
                (
                    h,
                    Pool {
                        device: d as u32,
                        default: true,
                        attrs: [0, 1, 1, 1, 0],
                        used: 0,
                        used_high: 0,
                    },
                )
            })
            .collect();
        let current_pools = default_pools.iter().map(|&h| AtomicU64::new(h)).collect();
        Self {
            table: RwLock::new(BTreeMap::new()),
            host: Mutex::new(BTreeMap::new()),
            physical: Mutex::new(HashMap::new()),
            reservations: Mutex::new(BTreeMap::new()),
            pools: Mutex::new(pools),
            default_pools,
            current_pools,
            arrays: Mutex::new(HashMap::new()),
        }
    }

    /// Allocates `size` bytes of device memory (charged to `device`).
    pub fn alloc(&self, p: &Process, device: u32, ctx: u64, size: u64, kind: Kind) -> Res<u64> {
        self.alloc_flags(p, device, ctx, size, kind, 0)
    }

    /// Allocates device memory addressable with 32 bits (for the pre-3.2 `cuMemAlloc` ABI).
    pub fn alloc_low(&self, p: &Process, device: u32, ctx: u64, size: u64) -> Res<u64> {
        self.alloc_flags(p, device, ctx, size, Kind::Device, libc::MAP_32BIT)
    }

    fn alloc_flags(
        &self,
        p: &Process,
        device: u32,
        ctx: u64,
        size: u64,
        kind: Kind,
        extra: i32,
    ) -> Res<u64> {
        if size == 0 {
            return Err(err::INVALID_VALUE);
        }
        let len = page_round(size).ok_or(err::OUT_OF_MEMORY)?;
        p.gpu.charge(device, size).map_err(|_| err::OUT_OF_MEMORY)?;
        let base = match map_anon_flags(len, libc::PROT_READ | libc::PROT_WRITE, extra) {
            Ok(b) => b,
            Err(e) => {
                p.gpu.uncharge(device, size);
                return Err(e);
            }
        };
        self.table.write().insert(
            base,
            Alloc {
                base,
                size,
                device,
                charged: size,
                ctx,
                kind,
                map_len: len,
                accessible: true,
                free_pending: false,
            },
        );
        if let Kind::Pool(h) = kind
            && let Some(pool) = self.pools.lock().get_mut(&h)
        {
            pool.used += size;
            pool.used_high = pool.used_high.max(pool.used);
        }
        Ok(base)
    }

    /// The allocation containing `ptr`.
    pub fn find(&self, ptr: u64) -> Option<Alloc> {
        let t = self.table.read();
        find_in(&t, ptr).cloned()
    }

    /// Checks `[ptr, ptr + n)` lies in one accessible allocation.
    pub fn check_range(&self, ptr: u64, n: u64) -> Res<Alloc> {
        let t = self.table.read();
        check_in(&t, ptr, n).cloned()
    }

    // ---- graph allocations (the graph memory pool's state lives in `crate::graph`) ----

    /// Reserves the address range of a graph allocation (inaccessible, charged nothing).
    pub fn graph_reserve(&self, device: u32, size: u64) -> Res<u64> {
        if size == 0 {
            return Err(err::INVALID_VALUE);
        }
        let len = page_round(size).ok_or(err::OUT_OF_MEMORY)?;
        let base = map_anon(len, libc::PROT_NONE)?;
        self.table.write().insert(
            base,
            Alloc {
                base,
                size,
                device,
                charged: 0,
                ctx: 0,
                kind: Kind::Graph,
                map_len: len,
                accessible: false,
                free_pending: false,
            },
        );
        Ok(base)
    }

    /// Maps (accessible) or unmaps (contents dropped, inaccessible) a graph allocation.
    pub fn graph_set_mapped(&self, base: u64, mapped: bool) {
        let mut t = self.table.write();
        if let Some(a) = t.get_mut(&base)
            && a.kind == Kind::Graph
        {
            let prot = if mapped {
                libc::PROT_READ | libc::PROT_WRITE
            } else {
                // SAFETY: dropping the pages of a range this module owns (reads see zeros).
                unsafe { libc::madvise(base as *mut libc::c_void, a.map_len, libc::MADV_DONTNEED) };
                libc::PROT_NONE
            };
            // SAFETY: changing the protection of a mapping this module owns.
            unsafe { libc::mprotect(base as *mut libc::c_void, a.map_len, prot) };
            a.accessible = mapped;
        }
    }

    /// Gives a graph allocation's address range back.
    pub fn graph_release(&self, base: u64) {
        let gone = {
            let mut t = self.table.write();
            match t.get(&base) {
                Some(a) if a.kind == Kind::Graph => t.remove(&base),
                _ => None,
            }
        };
        if let Some(a) = gone {
            unmap(a.base, a.map_len);
        }
    }

    /// Marks an allocation for a stream-ordered free (rejecting double frees and non-bases).
    pub fn mark_free_pending(&self, ptr: u64) -> Res<()> {
        let mut t = self.table.write();
        match t.get_mut(&ptr) {
            Some(a) if !a.free_pending && !matches!(a.kind, Kind::Mapped(_) | Kind::Graph) => {
                a.free_pending = true;
                Ok(())
            }
            _ => Err(err::INVALID_VALUE),
        }
    }

    /// Frees an allocation now (`ptr` must be its base). The caller guarantees no pending work
    /// uses it.
    pub fn free_now(&self, p: &Process, ptr: u64) -> Res<()> {
        let a = {
            let mut t = self.table.write();
            match t.get(&ptr) {
                Some(a) if !matches!(a.kind, Kind::Mapped(_) | Kind::Graph) => {}
                _ => return Err(err::INVALID_VALUE),
            }
            t.remove(&ptr).ok_or(err::INVALID_VALUE)?
        };
        self.release(p, &a);
        Ok(())
    }

    fn release(&self, p: &Process, a: &Alloc) {
        unmap(a.base, a.map_len);
        p.gpu.uncharge(a.device, a.charged);
        if let Kind::Pool(h) = a.kind
            && let Some(pool) = self.pools.lock().get_mut(&h)
        {
            pool.used = pool.used.saturating_sub(a.size);
        }
    }

    /// Frees everything a destroyed context owned.
    pub fn free_context(&self, p: &Process, ctx: u64) {
        let gone: Vec<Alloc> = {
            let mut t = self.table.write();
            let keys: Vec<u64> = t
                .values()
                .filter(|a| a.ctx == ctx && a.ctx != 0)
                .map(|a| a.base)
                .collect();
            keys.iter().filter_map(|k| t.remove(k)).collect()
        };
        for a in &gone {
            self.release(p, a);
        }
        let arrays: Vec<ArrayInfo> = {
            let mut arr = self.arrays.lock();
            let keys: Vec<u64> = arr
                .iter()
                .filter(|(_, a)| a.ctx == ctx)
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| arr.remove(k)).collect()
        };
        for a in arrays {
            p.gpu.uncharge(a.device, a.bytes);
        }
    }

    /// Copies `n` bytes; every side that lies in the allocation table must be in range and
    /// accessible (checked under the table lock, so a concurrent free cannot unmap it).
    pub fn copy(&self, dst: u64, src: u64, n: usize) -> Res<()> {
        if n == 0 {
            return Ok(());
        }
        let t = self.table.read();
        for ptr in [dst, src] {
            if find_in(&t, ptr).is_some() {
                check_in(&t, ptr, n as u64).map_err(|_| err::ILLEGAL_ADDRESS)?;
            }
        }
        if dst == 0 || src == 0 {
            return Err(err::INVALID_VALUE);
        }
        // SAFETY: device sides are live, accessible mappings covering n bytes (checked above,
        // held by the table lock); host sides were provided by the application for n bytes.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
        Ok(())
    }

    /// Fills `count` elements of `elem` bytes at device address `dst`.
    pub fn memset(&self, dst: u64, value: u32, elem: usize, count: usize) -> Res<()> {
        let bytes = count.checked_mul(elem).ok_or(err::INVALID_VALUE)?;
        if bytes == 0 {
            return Ok(());
        }
        let t = self.table.read();
        check_in(&t, dst, bytes as u64).map_err(|_| err::ILLEGAL_ADDRESS)?;
        // SAFETY: [dst, dst + bytes) is a live, accessible, writable mapping (checked above,
        // held by the table lock); alignment of dst to elem was checked at submission.
        unsafe {
            match elem {
                1 => std::ptr::write_bytes(dst as *mut u8, value as u8, count),
                2 => std::slice::from_raw_parts_mut(dst as *mut u16, count).fill(value as u16),
                _ => std::slice::from_raw_parts_mut(dst as *mut u32, count).fill(value),
            }
        }
        Ok(())
    }

    /// Allocates pinned host memory (not charged to a device).
    pub fn host_alloc(&self, size: u64) -> Res<u64> {
        if size == 0 {
            return Err(err::INVALID_VALUE);
        }
        let len = page_round(size).ok_or(err::OUT_OF_MEMORY)?;
        let base = map_anon(len, libc::PROT_READ | libc::PROT_WRITE)?;
        self.host.lock().insert(base, (size, len));
        Ok(base)
    }

    /// Frees pinned host memory (`ptr` must be a base returned by [`Self::host_alloc`]).
    pub fn host_free(&self, ptr: u64) -> Res<()> {
        let (_, len) = self.host.lock().remove(&ptr).ok_or(err::INVALID_VALUE)?;
        unmap(ptr, len);
        Ok(())
    }

    /// Whether `[ptr, ptr + n)` lies in pinned host memory.
    pub fn is_pinned(&self, ptr: u64, n: u64) -> bool {
        let h = self.host.lock();
        h.range(..=ptr)
            .next_back()
            .is_some_and(|(&b, &(s, _))| ptr - b + n <= s)
    }

    /// The pinned host allocation containing `ptr`: `(base, size)`.
    pub fn pinned_base(&self, ptr: u64) -> Option<(u64, u64)> {
        let h = self.host.lock();
        h.range(..=ptr)
            .next_back()
            .filter(|(b, (s, _))| ptr < *b + *s)
            .map(|(&b, &(s, _))| (b, s))
    }

    // ---- VMM ----

    /// `cuMemCreate`: physical memory backed by a memfd, charged to `device`.
    pub fn vmm_create(&self, p: &Process, device: u32, size: u64) -> Res<u64> {
        if size == 0 || !size.is_multiple_of(GRANULARITY) {
            return Err(err::INVALID_VALUE);
        }
        p.gpu.charge(device, size).map_err(|_| err::OUT_OF_MEMORY)?;
        // SAFETY: memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"fakegpu-vmm".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: ftruncate on the fd just created.
        if fd < 0 || unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
            if fd >= 0 {
                // SAFETY: closing the fd we created.
                unsafe { libc::close(fd) };
            }
            p.gpu.uncharge(device, size);
            return Err(err::OUT_OF_MEMORY);
        }
        let h = p.new_handle();
        self.physical.lock().insert(
            h,
            Physical {
                fd,
                size,
                device,
                mappings: 0,
                released: false,
            },
        );
        Ok(h)
    }

    fn maybe_destroy_physical(&self, p: &Process, phys: &mut HashMap<u64, Physical>, h: u64) {
        if let Some(ph) = phys.get(&h)
            && ph.released
            && ph.mappings == 0
        {
            let ph = phys.remove(&h).expect("present");
            // SAFETY: closing the memfd this module owns; no mapping uses it any more.
            unsafe { libc::close(ph.fd) };
            p.gpu.uncharge(ph.device, ph.size);
        }
    }

    /// `cuMemRelease`: the memory is freed once the handle is released and unmapped.
    pub fn vmm_release(&self, p: &Process, h: u64) -> Res<()> {
        let mut phys = self.physical.lock();
        let ph = phys.get_mut(&h).ok_or(err::INVALID_VALUE)?;
        if ph.released {
            return Err(err::INVALID_VALUE);
        }
        ph.released = true;
        self.maybe_destroy_physical(p, &mut phys, h);
        Ok(())
    }

    /// `cuMemAddressReserve`.
    pub fn vmm_reserve(&self, size: u64, alignment: u64) -> Res<u64> {
        if size == 0 || !size.is_multiple_of(GRANULARITY) {
            return Err(err::INVALID_VALUE);
        }
        let align = if alignment == 0 {
            GRANULARITY
        } else {
            alignment
        };
        if !align.is_power_of_two() {
            return Err(err::INVALID_VALUE);
        }
        let len = size.checked_add(align).ok_or(err::OUT_OF_MEMORY)? as usize;
        let raw = map_anon(len, libc::PROT_NONE)?;
        let base = raw.div_ceil(align) * align;
        unmap(raw, (base - raw) as usize);
        let tail = raw + len as u64 - (base + size);
        unmap(base + size, tail as usize);
        self.reservations.lock().insert(base, size);
        Ok(base)
    }

    /// `cuMemAddressFree`: the range must be a whole reservation without mappings.
    pub fn vmm_free_address(&self, ptr: u64, size: u64) -> Res<()> {
        let mut r = self.reservations.lock();
        if r.get(&ptr) != Some(&size) {
            return Err(err::INVALID_VALUE);
        }
        let t = self.table.read();
        if t.range(ptr..ptr + size).next().is_some() {
            return Err(err::INVALID_VALUE);
        }
        r.remove(&ptr);
        unmap(ptr, size as usize);
        Ok(())
    }

    /// `cuMemMap`: maps `size` bytes of physical handle `h` at `offset` into a reserved range.
    pub fn vmm_map(&self, ptr: u64, size: u64, offset: u64, h: u64) -> Res<()> {
        if size == 0 || !ptr.is_multiple_of(GRANULARITY) || !size.is_multiple_of(GRANULARITY) {
            return Err(err::INVALID_VALUE);
        }
        let end = ptr.checked_add(size).ok_or(err::INVALID_VALUE)?;
        {
            let r = self.reservations.lock();
            let ok = r
                .range(..=ptr)
                .next_back()
                .is_some_and(|(&b, &s)| end <= b + s);
            if !ok {
                return Err(err::INVALID_VALUE);
            }
        }
        let mut phys = self.physical.lock();
        let ph = phys.get_mut(&h).ok_or(err::INVALID_HANDLE)?;
        if ph.released || offset.checked_add(size).is_none_or(|e| e > ph.size) {
            return Err(err::INVALID_VALUE);
        }
        let mut t = self.table.write();
        let overlaps = t
            .range(..end)
            .next_back()
            .is_some_and(|(_, a)| a.base + a.size > ptr);
        if overlaps {
            return Err(err::INVALID_VALUE);
        }
        // SAFETY: [ptr, end) lies inside a PROT_NONE reservation owned by this module with no
        // mapping in it (checked above); MAP_FIXED replaces only that range.
        let rc = unsafe {
            libc::mmap(
                ptr as *mut libc::c_void,
                size as usize,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                ph.fd,
                offset as libc::off_t,
            )
        };
        if rc == libc::MAP_FAILED {
            return Err(err::OUT_OF_MEMORY);
        }
        ph.mappings += 1;
        t.insert(
            ptr,
            Alloc {
                base: ptr,
                size,
                device: ph.device,
                charged: 0,
                ctx: 0,
                kind: Kind::Mapped(h),
                map_len: 0,
                accessible: false,
                free_pending: false,
            },
        );
        Ok(())
    }

    /// `cuMemUnmap`: the range must cover whole mappings.
    pub fn vmm_unmap(&self, p: &Process, ptr: u64, size: u64) -> Res<()> {
        let end = ptr.checked_add(size).ok_or(err::INVALID_VALUE)?;
        let mut phys = self.physical.lock();
        let mut t = self.table.write();
        let inside: Vec<u64> = t.range(ptr..end).map(|(&b, _)| b).collect();
        if inside.is_empty()
            || inside.iter().any(|b| {
                let a = &t[b];
                !matches!(a.kind, Kind::Mapped(_)) || a.base + a.size > end
            })
        {
            return Err(err::INVALID_VALUE);
        }
        for b in inside {
            let a = t.remove(&b).expect("present");
            // SAFETY: replaces the mapping with a PROT_NONE reservation again (the range stays
            // reserved until cuMemAddressFree).
            unsafe {
                libc::mmap(
                    a.base as *mut libc::c_void,
                    a.size as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if let Kind::Mapped(h) = a.kind {
                if let Some(ph) = phys.get_mut(&h) {
                    ph.mappings = ph.mappings.saturating_sub(1);
                }
                self.maybe_destroy_physical(p, &mut phys, h);
            }
        }
        Ok(())
    }

    /// `cuMemSetAccess`: `prot` for every mapping in `[ptr, ptr + size)`, which must be fully
    /// mapped.
    pub fn vmm_set_access(&self, ptr: u64, size: u64, prot: i32) -> Res<()> {
        let end = ptr.checked_add(size).ok_or(err::INVALID_VALUE)?;
        let mut t = self.table.write();
        let mut cursor = ptr;
        let keys: Vec<u64> = t.range(ptr..end).map(|(&b, _)| b).collect();
        for b in &keys {
            let a = &t[b];
            if a.base != cursor || !matches!(a.kind, Kind::Mapped(_)) || a.base + a.size > end {
                return Err(err::INVALID_VALUE);
            }
            cursor = a.base + a.size;
        }
        if cursor != end || keys.is_empty() {
            return Err(err::INVALID_VALUE);
        }
        for b in keys {
            let a = t.get_mut(&b).expect("present");
            // SAFETY: changing the protection of a mapping this module owns.
            unsafe { libc::mprotect(a.base as *mut libc::c_void, a.size as usize, prot) };
            a.accessible = prot & libc::PROT_WRITE != 0;
        }
        Ok(())
    }
}

fn find_in(t: &BTreeMap<u64, Alloc>, ptr: u64) -> Option<&Alloc> {
    t.range(..=ptr)
        .next_back()
        .map(|(_, a)| a)
        .filter(|a| ptr < a.base + a.size)
}

fn check_in(t: &BTreeMap<u64, Alloc>, ptr: u64, n: u64) -> Res<&Alloc> {
    let a = find_in(t, ptr).ok_or(err::INVALID_VALUE)?;
    let end = ptr.checked_add(n).ok_or(err::INVALID_VALUE)?;
    if end > a.base + a.size || !a.accessible {
        return Err(err::INVALID_VALUE);
    }
    Ok(a)
}

/// Bytes of an array (mipmap levels summed; a 0 height/depth is an absent dimension).
pub fn array_bytes(w: u64, h: u64, d: u64, format: u32, channels: u32, levels: u32) -> Res<u64> {
    let elem = gpumux_common::cuda_abi::array_format_bytes(format).ok_or(err::INVALID_VALUE)?;
    if w == 0 || !matches!(channels, 1 | 2 | 4) || (h == 0 && d != 0) || levels == 0 {
        return Err(err::INVALID_VALUE);
    }
    let mut total: u64 = 0;
    for l in 0..levels {
        let lw = (w >> l).max(1);
        let lh = if h == 0 { 1 } else { (h >> l).max(1) };
        let ld = if d == 0 { 1 } else { (d >> l).max(1) };
        let b = lw
            .checked_mul(lh)
            .and_then(|v| v.checked_mul(ld))
            .and_then(|v| v.checked_mul(u64::from(channels) * elem))
            .ok_or(err::OUT_OF_MEMORY)?;
        total = total.checked_add(b).ok_or(err::OUT_OF_MEMORY)?;
    }
    Ok(total)
}
