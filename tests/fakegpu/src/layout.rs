//! Byte layout of the state file. Every field is an atomic (or the process-shared robust mutex of
//! a lock queue), so an all-zero file is a valid initial state apart from the mutexes and the
//! header fields the creator writes. The file is `size_of::<Header>()` followed by one
//! [`DeviceBlock`] per device.

use crate::config::MAX_DEVICES;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// `FAKEGPU` + layout version, written last by the creator.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FAKEGPU6");
/// Process slots in the table.
pub const MAX_PROCS: usize = 512;
/// Entries of a device's lock queue (kernels waiting for the device, all processes).
pub const QUEUE_CAP: usize = 1024;
/// Records kept in a device's kernel trace ring.
pub const TRACE_CAP: usize = 65536;
/// `ProcSlot::pid` value while a dead process's slot is being reclaimed.
pub const PID_RECLAIMING: u32 = u32::MAX;

/// File header: identity, device count and the process table.
#[repr(C)]
pub struct Header {
    /// [`MAGIC`] once the file is initialised.
    pub magic: AtomicU64,
    /// Number of devices.
    pub device_count: AtomicU32,
    /// Padding.
    pub _pad: AtomicU32,
    /// Total file size in bytes.
    pub file_size: AtomicU64,
    /// Device memory each context occupies ([`crate::DeviceConfig::context_bytes`]).
    pub context_bytes: AtomicU64,
    /// Device memory per KiB of a loaded module's image
    /// ([`crate::DeviceConfig::module_bytes_per_kib`]).
    pub module_bytes_per_kib: AtomicU64,
    /// Per-process ground truth.
    pub procs: [ProcSlot; MAX_PROCS],
}

/// One process using the fake GPU. `pid == 0`: free.
#[repr(C)]
pub struct ProcSlot {
    /// Owner pid, 0 when free, [`PID_RECLAIMING`] while reclaimed.
    pub pid: AtomicU32,
    /// Padding.
    pub _pad: AtomicU32,
    /// Start time of the owner (clock ticks since boot, `/proc/<pid>/stat` field 22); 0 while the
    /// slot is being claimed.
    pub start_time: AtomicU64,
    /// Per-device counters.
    pub dev: [ProcDevice; MAX_DEVICES],
}

/// A process's use of one device.
#[repr(C)]
pub struct ProcDevice {
    /// Non-zero once the process created a context on, allocated on or ran on the device.
    pub attached: AtomicU64,
    /// Device memory charged to the process: its allocations plus `overhead`.
    pub used: AtomicU64,
    /// Device time its kernels used.
    pub busy_ns: AtomicU64,
    /// Kernels it completed.
    pub kernels: AtomicU64,
    /// The part of `used` no allocation call returned: its contexts and loaded modules.
    pub overhead: AtomicU64,
}

/// One simulated device.
#[repr(C)]
pub struct DeviceBlock {
    /// Memory capacity.
    pub total: AtomicU64,
    /// Memory charged, all processes.
    pub used: AtomicU64,
    /// Device time spent running kernels.
    pub busy_ns: AtomicU64,
    /// Kernels completed.
    pub kernels_completed: AtomicU64,
    /// Kernels running now (independent of the lock).
    pub running: AtomicU32,
    /// High-water mark of `running`.
    pub max_concurrent: AtomicU32,
    /// Process-shared robust mutex guarding `used` together with the processes' per-device
    /// `used` (a process killed between the two stores is repaired by the next locker).
    pub mem_mutex: UnsafeCell<libc::pthread_mutex_t>,
    /// The execution lock.
    pub lock: LockQueue,
    /// Records appended so far (the ring index is `n % TRACE_CAP`).
    pub trace_head: AtomicU64,
    /// Kernel trace ring.
    pub trace: [TraceSlot; TRACE_CAP],
}

/// FIFO queue of kernels waiting for / holding the device. `head` is the holder.
#[repr(C)]
pub struct LockQueue {
    /// Process-shared robust mutex protecting `head`, `tail` and `entries`.
    pub mutex: UnsafeCell<libc::pthread_mutex_t>,
    /// Futex word: bumped on every change of `head`.
    pub seq: AtomicU32,
    /// Padding.
    pub _pad: AtomicU32,
    /// Ticket of the holder (or of the next holder when the queue is empty).
    pub head: AtomicU64,
    /// Next ticket to hand out.
    pub tail: AtomicU64,
    /// The device timeline: CLOCK_MONOTONIC ns at which the last kernel started on the device
    /// ends (under `mutex`). The next kernel starts at the later of this and the moment it was
    /// ready, whenever a host thread gets to it.
    pub last_end_ns: AtomicU64,
    /// Queue entries, ticket `t` at `t % QUEUE_CAP`.
    pub entries: [QueueEntry; QUEUE_CAP],
}

/// A queued kernel.
#[repr(C)]
pub struct QueueEntry {
    /// Owner pid.
    pub pid: AtomicU32,
    /// 1 while the holder counts itself in `DeviceBlock::running`.
    pub running: AtomicU32,
    /// Owner start time.
    pub start_time: AtomicU64,
    /// Ticket (for sanity checks).
    pub ticket: AtomicU64,
    /// CLOCK_MONOTONIC ns at which the holder's kernel ends on the device (0 until it starts).
    /// The device does not wait for the host: past this (plus a grace), waiters take over even
    /// if the holder's process is stopped or descheduled.
    pub end_ns: AtomicU64,
    /// The kernel's duration on the device.
    pub duration_ns: AtomicU64,
    /// When it was ready to run (submitted, its stream's earlier work done).
    pub ready_ns: AtomicU64,
    /// Kernels of the same duration its stream has queued right behind it (with only event
    /// records between): when it starts, the device queues the next of them itself, on the
    /// stream's behalf ([`crate::lock::enqueue_after`]).
    pub more: AtomicU64,
    /// Ticket + 1 of the kernel queued right behind it in its stream (0: none yet).
    pub next: AtomicU64,
}

/// One kernel trace record; `seq == n + 1` when record `n` is complete.
#[repr(C)]
pub struct TraceSlot {
    /// Record number + 1, 0 while written.
    pub seq: AtomicU64,
    /// Process.
    pub pid: AtomicU64,
    /// CLOCK_MONOTONIC ns.
    pub start_ns: AtomicU64,
    /// CLOCK_MONOTONIC ns.
    pub end_ns: AtomicU64,
    /// CLOCK_MONOTONIC ns at which the kernel was ready to run.
    pub ready_ns: AtomicU64,
}

/// Size of a state file with `devices` devices.
pub fn file_size(devices: u32) -> usize {
    std::mem::size_of::<Header>() + devices as usize * std::mem::size_of::<DeviceBlock>()
}

/// Offset of device `index`'s block.
pub fn device_offset(index: u32) -> usize {
    std::mem::size_of::<Header>() + index as usize * std::mem::size_of::<DeviceBlock>()
}
