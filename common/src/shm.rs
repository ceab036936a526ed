//! Layout of the two shared segments a tenant's processes map, and the mappings themselves.
//!
//! - The **control segment** is written by the daemon only: limits, weights, device identities,
//!   the compute-slice grant words. Tenants receive a read-only descriptor of a sealed memfd
//!   (`F_SEAL_FUTURE_WRITE`), so no tenant process can raise its own limit.
//! - The **accounting segment** is written by the tenant's processes (the shim reserves memory
//!   against the limit without a round trip) and read by the daemon. It holds per-device totals
//!   and one slot per registered process, so the daemon can return a dead process's memory.
//!
//! Both are plain `#[repr(C)]` structs of atomics: zeroed memory is a valid initial state.

use crate::shm_mutex::ShmMutex;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

/// Devices a segment describes at most.
pub const MAX_DEVICES: usize = 16;
/// Concurrently registered processes per tenant at most.
pub const MAX_PROCESSES: usize = 1024;
/// Bumped whenever a layout below changes; shim and daemon must agree.
pub const LAYOUT_VERSION: u32 = 2;
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"GMXCTRL1");
pub const ACCOUNTING_MAGIC: u64 = u64::from_le_bytes(*b"GMXACCT1");

/// Bit 0 of [`ControlDevice::slice`]: the tenant holds the device's compute slice.
pub const SLICE_GRANTED: u32 = 1;

/// Daemon-written, tenant-read state.
#[repr(C)]
pub struct ControlSegment {
    pub magic: AtomicU64,
    pub layout_version: AtomicU32,
    /// Devices described in `devices` (the node's devices, by physical index).
    pub device_count: AtomicU32,
    /// Identifies the daemon instance that created this segment.
    pub generation: AtomicU64,
    /// Bumped on every quota change, so processes can notice.
    pub config_seq: AtomicU64,
    pub weight: AtomicU32,
    /// 0 = no cap, else per-mille of device time.
    pub compute_limit_permille: AtomicU32,
    pub devices: [ControlDevice; MAX_DEVICES],
}

/// One device as the tenant may see it.
#[repr(C, align(64))]
pub struct ControlDevice {
    /// The GPU's 16-byte UUID (how the shim matches CUDA ordinals and NVML handles).
    pub uuid: [AtomicU64; 2],
    /// 1 if the tenant may use the device.
    pub allowed: AtomicU32,
    /// Compute-slice futex word: `SLICE_GRANTED` bit plus an epoch in the upper bits.
    pub slice: AtomicU32,
    /// Hard memory limit in bytes (0 when not allowed).
    pub memory_limit: AtomicU64,
    /// The device's physical memory.
    pub physical_total: AtomicU64,
    /// Whether the daemon time-slices this device (more than one tenant may use it).
    pub scheduled: AtomicU32,
    /// How much device time (µs) each of the tenant's processes may have queued ahead on the
    /// device (0: unbounded). Set while a tenant of a higher class may use the device, so a
    /// revocation for it drains within about this much ([`crate::config::DaemonConfig`]'s
    /// `drain_budget_us`).
    pub queue_budget_us: AtomicU32,
    /// 1 while the tenant, in the latency class, holds the slice and others wait: a process
    /// whose synchronize left it with nothing to do says so (`ClientMsg::Idle`), so the device
    /// passes on at once.
    pub yield_hint: AtomicU32,
    pub _reserved: AtomicU32,
    /// Device memory a new context is expected to occupy (the daemon's latest measurement on
    /// this device, 0 until it has one): what the shim reserves before creating a context.
    pub context_overhead: AtomicU64,
}

/// Tenant-written, daemon-read state.
#[repr(C)]
pub struct AccountingSegment {
    pub magic: AtomicU64,
    pub layout_version: AtomicU32,
    pub _pad: AtomicU32,
    /// Guards the consistency of `devices[*].used` with `processes[*].used`.
    pub lock: ShmMutex,
    pub devices: [AccountingDevice; MAX_DEVICES],
    pub processes: [ProcessSlot; MAX_PROCESSES],
}

/// Per-device totals of a tenant.
#[repr(C, align(64))]
pub struct AccountingDevice {
    /// The tenant's footprint on the device, what counts against its limit: the sum over its
    /// processes of `used + overhead + reserved` (see [`ProcessSlot`]).
    pub used: AtomicU64,
    /// Allocations refused for exceeding the limit.
    pub refused: AtomicU64,
    /// Highest `used` seen.
    pub peak: AtomicU64,
    /// Threads of the tenant inside a synchronize call on this device (work is outstanding:
    /// the holder is busy even though it launches nothing).
    pub syncing: AtomicU32,
    /// Times a thread of the tenant, back from waiting for its bounded queue to make room
    /// (`ControlDevice::queue_budget_us`) later than the queued work could have lasted, found
    /// the queue empty: the device ran out of its work while the host ran the thread late
    /// (wrapping count; a shim that does not count them leaves 0).
    pub bound_dry: AtomicU32,
    /// Threads currently blocked waiting for a compute slice.
    pub waiting: AtomicU32,
    pub _pad: AtomicU32,
    /// Total ns threads spent waiting for a slice.
    pub wait_ns: AtomicU64,
    /// The part of `used` that is not allocations: the sum over its processes of
    /// `overhead + reserved`.
    pub overhead: AtomicU64,
}

/// One registered process.
#[repr(C)]
pub struct ProcessSlot {
    /// 0 = free; written by the daemon at registration and reclaim.
    pub pid: AtomicU32,
    pub _pad: AtomicU32,
    /// The process's start time (clock ticks since boot, /proc/PID/stat field 22), so a
    /// restarted daemon can tell the registered process from a later one with its pid.
    pub start_time: AtomicU64,
    /// Bytes this process has charged, per device.
    pub used: [AtomicU64; MAX_DEVICES],
    /// Launches this process issued, per device (an activity indicator the scheduler reads;
    /// updated without read-modify-write, so concurrent launches may count once).
    pub launches: [AtomicU64; MAX_DEVICES],
    /// Device memory the process holds beyond its allocations (contexts, modules, libraries'
    /// workspaces), per device, as the daemon last measured it through NVML.
    pub overhead: [AtomicU64; MAX_DEVICES],
    /// Estimates the shim reserved before creating a context or loading code, per device, not
    /// yet replaced by a measurement (the daemon settles them with the first reading of the
    /// process after their announcement).
    pub reserved: [AtomicU64; MAX_DEVICES],
}

/// A shared mapping of a segment file descriptor. Unmapped on drop.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is just memory; all access goes through atomics / the shared mutex.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared references only expose atomics.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared; read-only unless `writable`.
    pub fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a caller-provided fd; the kernel validates fd, length and protection.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr as *const u8
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no references outlive `self` because
        // every view borrows from the Mapping.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Something that lives at the start of a segment.
///
/// # Safety
/// [`SegmentView`] hands out `&Self` over shared memory that other processes write and that
/// starts all-zero, so an implementor must be `#[repr(C)]`, made only of atomics (and
/// process-shared primitives such as [`ShmMutex`]) for which every bit pattern, all-zero
/// included, is a valid value, with no pointers, references or drop glue; and `magic` /
/// `layout_version` must return its own fields at offsets 0 and 8 (checked for the two
/// segments below), so a mismatched peer is recognised before anything else is read.
pub unsafe trait Segment: Sized {
    const MAGIC: u64;
    fn magic(&self) -> &AtomicU64;
    fn layout_version(&self) -> &AtomicU32;
    /// The segment's size in bytes, rounded up to pages.
    fn segment_len() -> usize {
        std::mem::size_of::<Self>().div_ceil(4096) * 4096
    }
}

// SAFETY: repr(C), atomics only, magic/layout_version at offsets 0/8 (asserted below).
unsafe impl Segment for ControlSegment {
    const MAGIC: u64 = CONTROL_MAGIC;
    fn magic(&self) -> &AtomicU64 {
        &self.magic
    }
    fn layout_version(&self) -> &AtomicU32 {
        &self.layout_version
    }
}

// SAFETY: repr(C), atomics and a process-shared robust mutex (valid once the creator ran
// `ShmMutex::init`, before sharing), magic/layout_version at offsets 0/8 (asserted below).
unsafe impl Segment for AccountingSegment {
    const MAGIC: u64 = ACCOUNTING_MAGIC;
    fn magic(&self) -> &AtomicU64 {
        &self.magic
    }
    fn layout_version(&self) -> &AtomicU32 {
        &self.layout_version
    }
}

// Compile-time checks of the shared layouts (shim and daemon of one build map the same bytes;
// peers of another build must be recognised by the header before anything else is read).
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    // The header every version keeps in place.
    assert!(offset_of!(ControlSegment, magic) == 0);
    assert!(offset_of!(ControlSegment, layout_version) == 8);
    assert!(offset_of!(AccountingSegment, magic) == 0);
    assert!(offset_of!(AccountingSegment, layout_version) == 8);
    // Per-device records are whole cache lines (no false sharing between devices), and the
    // robust mutex owns its line.
    assert!(size_of::<ControlDevice>().is_multiple_of(64) && align_of::<ControlDevice>() == 64);
    assert!(
        size_of::<AccountingDevice>().is_multiple_of(64) && align_of::<AccountingDevice>() == 64
    );
    assert!(size_of::<ShmMutex>() == 64 && offset_of!(AccountingSegment, lock).is_multiple_of(64));
    // Process slots pack without padding (the daemon scans them all).
    assert!(size_of::<ProcessSlot>().is_multiple_of(8));
    // A layout change must come with a LAYOUT_VERSION bump: update both together here.
    assert!(
        LAYOUT_VERSION == 2
            && size_of::<ControlSegment>() == 64 + 64 * MAX_DEVICES
            && size_of::<AccountingSegment>()
                == 128 + 64 * MAX_DEVICES + size_of::<ProcessSlot>() * MAX_PROCESSES
            && size_of::<ProcessSlot>() == 16 + 32 * MAX_DEVICES,
        "a shared segment layout changed: bump LAYOUT_VERSION and update these sizes"
    );
};

/// A mapped, validated segment.
pub struct SegmentView<T: Segment> {
    mapping: Mapping,
    _t: std::marker::PhantomData<T>,
}

impl<T: Segment> SegmentView<T> {
    /// Maps and validates (magic, layout version, size) a segment received from the daemon.
    pub fn open(fd: BorrowedFd<'_>, writable: bool) -> io::Result<Self> {
        let mut st: libc::stat = unsafe_zeroed_stat();
        // SAFETY: fstat on a borrowed fd into a valid stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (st.st_size as usize) < T::segment_len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment is smaller than its layout",
            ));
        }
        let mapping = Mapping::map(fd, T::segment_len(), writable)?;
        let view: SegmentView<T> = SegmentView {
            mapping,
            _t: std::marker::PhantomData,
        };
        let seg = view.get();
        use std::sync::atomic::Ordering::Acquire;
        if seg.magic().load(Acquire) != T::MAGIC
            || seg.layout_version().load(Acquire) != LAYOUT_VERSION
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment magic or layout version mismatch (shim and daemon versions differ?)",
            ));
        }
        Ok(view)
    }

    /// Maps a freshly created, zero-filled segment for its creator, stamping magic and version.
    pub fn create(fd: BorrowedFd<'_>) -> io::Result<Self> {
        // SAFETY: ftruncate on a borrowed fd owned by the creator.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), T::segment_len() as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mapping = Mapping::map(fd, T::segment_len(), true)?;
        let view: SegmentView<T> = SegmentView {
            mapping,
            _t: std::marker::PhantomData,
        };
        use std::sync::atomic::Ordering::Release;
        view.get().layout_version().store(LAYOUT_VERSION, Release);
        view.get().magic().store(T::MAGIC, Release);
        Ok(view)
    }

    /// The segment.
    pub fn get(&self) -> &T {
        // SAFETY: the mapping is at least `size_of::<T>()` bytes, page-aligned, lives as long
        // as `self`, and `T` is a repr(C) struct of atomics (and a process-shared mutex) for
        // which any bit pattern written through this API, including all-zero, is valid.
        unsafe { &*(self.mapping.as_ptr() as *const T) }
    }
}

impl<T: Segment> std::ops::Deref for SegmentView<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.get()
    }
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Encodes a 16-byte UUID into the two words of [`ControlDevice::uuid`].
pub fn uuid_words(uuid: &[u8; 16]) -> [u64; 2] {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&uuid[..8]);
    b.copy_from_slice(&uuid[8..]);
    [u64::from_le_bytes(a), u64::from_le_bytes(b)]
}

/// Parses `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (NVML's form) into 16 bytes.
pub fn parse_gpu_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text
        .trim()
        .strip_prefix("GPU-")?
        .bytes()
        .filter(|&c| c != b'-')
        .collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Formats 16 bytes as NVML does: `GPU-8-4-4-4-12` lowercase hex.
pub fn format_gpu_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip() {
        let b: [u8; 16] = std::array::from_fn(|i| (i * 17) as u8);
        let s = format_gpu_uuid(&b);
        assert_eq!(s.len(), 40);
        assert_eq!(parse_gpu_uuid(&s), Some(b));
        assert_eq!(parse_gpu_uuid("GPU-zz"), None);
        assert_eq!(parse_gpu_uuid("abc"), None);
        assert_ne!(uuid_words(&b), [0, 0]);
    }

    #[test]
    fn layouts_fit_pages() {
        assert_eq!(ControlSegment::segment_len() % 4096, 0);
        assert_eq!(std::mem::size_of::<ControlDevice>(), 64);
        assert_eq!(std::mem::size_of::<AccountingDevice>(), 64);
        assert!(AccountingSegment::segment_len() >= std::mem::size_of::<AccountingSegment>());
    }
}
