//! The mapped state file ([`GpuState`]): creation under `flock`, the per-process slot of the calling
//! process, memory accounting (capacity enforced across processes; allocations and the driver's
//! own overhead of contexts and modules), dead-process reclaim, and running kernels on the
//! device (lock + sleep + accounting + trace).

use crate::FakeGpuError;
use crate::config::DeviceConfig;
use crate::layout::{self, DeviceBlock, Header, MAGIC, MAX_PROCS, PID_RECLAIMING, ProcSlot};
use crate::lock;
use crate::procid;
use memmap2::MmapRaw;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A mapped fake GPU state file.
pub struct GpuState {
    path: PathBuf,
    map: MmapRaw,
    devices: u32,
    /// `(pid << 32) | (slot + 1)` of the calling process's slot, 0 if none yet.
    me: AtomicU64,
    register: Mutex<()>,
}

/// Timing of a simulated kernel (CLOCK_MONOTONIC ns, on the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRun {
    /// When the kernel started running on the device.
    pub start_ns: u64,
    /// When it finished.
    pub end_ns: u64,
}

struct FlockGuard<'a>(&'a File);

impl<'a> FlockGuard<'a> {
    fn lock(file: &'a File, path: &Path) -> Result<Self, FakeGpuError> {
        loop {
            // SAFETY: flock on a valid open fd.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self(file));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_err(path, e));
            }
        }
    }
}

impl Drop for FlockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: unlocking a flock we hold on a valid fd.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn io_err(path: &Path, source: std::io::Error) -> FakeGpuError {
    FakeGpuError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> FakeGpuError {
    FakeGpuError::InvalidState {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl GpuState {
    /// Opens the state file, creating it with the configuration from `FAKEGPU_DEVICES` if it does
    /// not exist (or is empty).
    pub fn open(path: &Path) -> Result<Self, FakeGpuError> {
        Self::open_inner(path, Some(&DeviceConfig::from_env()?))
    }

    /// Opens the state file, creating it with `config` if needed. An existing file keeps its
    /// own configuration.
    pub fn open_or_create(path: &Path, config: &DeviceConfig) -> Result<Self, FakeGpuError> {
        Self::open_inner(path, Some(config))
    }

    /// Opens an existing, initialised state file; never creates one.
    pub fn open_existing(path: &Path) -> Result<Self, FakeGpuError> {
        Self::open_inner(path, None)
    }

    /// Opens `FAKEGPU_STATE` (or the default path), creating it if needed.
    pub fn open_default() -> Result<Self, FakeGpuError> {
        Self::open(&crate::config::default_state_path())
    }

    fn open_inner(path: &Path, create: Option<&DeviceConfig>) -> Result<Self, FakeGpuError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create.is_some())
            .truncate(false)
            .mode(0o666)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let _flock = FlockGuard::lock(&file, path)?;
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        if len == 0 {
            let Some(config) = create else {
                return Err(invalid(path, "empty (not initialised)"));
            };
            let devices = config.memory.len() as u32;
            let size = layout::file_size(devices);
            file.set_len(size as u64).map_err(|e| io_err(path, e))?;
            let map = MmapRaw::map_raw(&file).map_err(|e| io_err(path, e))?;
            let state = Self::from_map(path, map, devices);
            state.initialise(config)?;
            return Ok(state);
        }
        if (len as usize) < std::mem::size_of::<Header>() {
            return Err(invalid(path, format!("too small ({len} bytes)")));
        }
        let map = MmapRaw::map_raw(&file).map_err(|e| io_err(path, e))?;
        // SAFETY: the mapping is at least size_of::<Header>() bytes, page aligned, and the
        // header consists of atomics valid for any bit pattern.
        let header = unsafe { &*(map.as_ptr() as *const Header) };
        if header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(invalid(
                path,
                "bad magic (not a fakegpu state file or other version)",
            ));
        }
        let devices = header.device_count.load(Ordering::Acquire);
        if devices == 0
            || devices as usize > crate::config::MAX_DEVICES
            || len as usize != layout::file_size(devices)
            || header.file_size.load(Ordering::Acquire) != len
        {
            return Err(invalid(
                path,
                format!("size {len} does not match {devices} devices"),
            ));
        }
        Ok(Self::from_map(path, map, devices))
    }

    fn from_map(path: &Path, map: MmapRaw, devices: u32) -> Self {
        Self {
            path: path.to_path_buf(),
            map,
            devices,
            me: AtomicU64::new(0),
            register: Mutex::new(()),
        }
    }

    fn initialise(&self, config: &DeviceConfig) -> Result<(), FakeGpuError> {
        for (i, &bytes) in config.memory.iter().enumerate() {
            let d = self.block(i as u32);
            d.total.store(bytes, Ordering::Relaxed);
            lock::init(&d.lock).map_err(|e| io_err(&self.path, e))?;
            crate::robust::init(&d.mem_mutex).map_err(|e| io_err(&self.path, e))?;
        }
        let h = self.header();
        h.context_bytes
            .store(config.context_bytes, Ordering::Relaxed);
        h.module_bytes_per_kib
            .store(config.module_bytes_per_kib, Ordering::Relaxed);
        h.device_count.store(self.devices, Ordering::Relaxed);
        h.file_size
            .store(layout::file_size(self.devices) as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(())
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least file_size(devices) >= size_of::<Header>() bytes, page
        // aligned, lives as long as self, and Header holds only atomics.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    pub(crate) fn block(&self, index: u32) -> &DeviceBlock {
        assert!(index < self.devices);
        // SAFETY: index < devices, so the block lies within the mapping; its offset is a multiple
        // of 8 (both struct sizes are) and it holds atomics and a mutex initialised by the creator.
        unsafe { &*(self.map.as_ptr().add(layout::device_offset(index)) as *const DeviceBlock) }
    }

    fn check_dev(&self, dev: u32) -> Result<&DeviceBlock, FakeGpuError> {
        if dev < self.devices {
            Ok(self.block(dev))
        } else {
            Err(FakeGpuError::NoDevice(dev))
        }
    }

    pub(crate) fn slot(&self, i: usize) -> &ProcSlot {
        &self.header().procs[i]
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of devices.
    pub fn device_count(&self) -> u32 {
        self.devices
    }

    /// Memory capacity of `dev`.
    pub fn total_memory(&self, dev: u32) -> Result<u64, FakeGpuError> {
        Ok(self.check_dev(dev)?.total.load(Ordering::Relaxed))
    }

    /// Device memory each context occupies (fixed by the state file's creator).
    pub fn context_bytes(&self) -> u64 {
        self.header().context_bytes.load(Ordering::Relaxed)
    }

    /// Device memory a module (or library) image of `image_len` bytes occupies.
    pub fn module_bytes(&self, image_len: u64) -> u64 {
        crate::config::module_bytes(
            image_len,
            self.header().module_bytes_per_kib.load(Ordering::Relaxed),
        )
    }

    /// `(free, total)` of `dev`, after reclaiming the memory of dead processes.
    pub fn mem_info(&self, dev: u32) -> Result<(u64, u64), FakeGpuError> {
        let d = self.check_dev(dev)?;
        self.reclaim_dead();
        let total = d.total.load(Ordering::Relaxed);
        let used = d.used.load(Ordering::Acquire);
        Ok((total.saturating_sub(used), total))
    }

    /// The calling process's slot index, registering it on first use (and again after `fork`).
    pub fn my_slot(&self) -> Result<usize, FakeGpuError> {
        let pid = procid::current_pid();
        let cached = self.me.load(Ordering::Acquire);
        if cached != 0 && (cached >> 32) as u32 == pid {
            return Ok((cached & 0xffff_ffff) as usize - 1);
        }
        let _g = self.register.lock().unwrap_or_else(|p| p.into_inner());
        let cached = self.me.load(Ordering::Acquire);
        if cached != 0 && (cached >> 32) as u32 == pid {
            return Ok((cached & 0xffff_ffff) as usize - 1);
        }
        let start = procid::start_time(pid).unwrap_or(0);
        for _ in 0..2 {
            for i in 0..MAX_PROCS {
                let s = self.slot(i);
                if s.pid
                    .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    s.start_time.store(start, Ordering::Release);
                    self.me
                        .store((u64::from(pid) << 32) | (i as u64 + 1), Ordering::Release);
                    return Ok(i);
                }
            }
            self.reclaim_dead();
        }
        Err(FakeGpuError::TooManyProcesses(MAX_PROCS))
    }

    /// Marks the calling process as a user of `dev` (it shows in the snapshot from now on).
    pub fn attach(&self, dev: u32) -> Result<(), FakeGpuError> {
        self.check_dev(dev)?;
        let s = self.my_slot()?;
        self.slot(s).dev[dev as usize]
            .attached
            .store(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reserves `bytes` of `dev`'s memory for the calling process. Fails with
    /// [`FakeGpuError::OutOfMemory`] (nothing charged) when the device's capacity, counting every
    /// process, would be exceeded; the memory of dead processes is reclaimed before failing.
    pub fn charge(&self, dev: u32, bytes: u64) -> Result<(), FakeGpuError> {
        self.charge_as(dev, bytes, false)
    }

    /// Reserves `bytes` of `dev`'s memory for the driver's own use on behalf of the calling
    /// process (a context, a loaded module): charged like an allocation (same capacity check,
    /// same [`FakeGpuError::OutOfMemory`]), and recorded as the process's overhead as well.
    pub fn charge_overhead(&self, dev: u32, bytes: u64) -> Result<(), FakeGpuError> {
        self.charge_as(dev, bytes, true)
    }

    fn charge_as(&self, dev: u32, bytes: u64, overhead: bool) -> Result<(), FakeGpuError> {
        let d = self.check_dev(dev)?;
        let s = self.my_slot()?;
        let total = d.total.load(Ordering::Relaxed);
        let pd = &self.slot(s).dev[dev as usize];
        for attempt in 0..2 {
            {
                let guard = crate::robust::lock(&d.mem_mutex);
                if guard.owner_died {
                    self.repair_used(dev);
                }
                let used = d.used.load(Ordering::Acquire);
                if used.checked_add(bytes).is_some_and(|n| n <= total) {
                    d.used.store(used + bytes, Ordering::Release);
                    pd.attached.store(1, Ordering::Relaxed);
                    pd.used.fetch_add(bytes, Ordering::AcqRel);
                    if overhead {
                        pd.overhead.fetch_add(bytes, Ordering::AcqRel);
                    }
                    return Ok(());
                }
                if attempt == 1 {
                    return Err(FakeGpuError::OutOfMemory {
                        device: dev,
                        requested: bytes,
                        free: total.saturating_sub(used),
                    });
                }
            }
            // Full: give back what dead processes held (like the real driver), then retry.
            self.reclaim_dead();
        }
        unreachable!("the second attempt returns")
    }

    /// Recomputes a device's `used` from the processes' records (the records are the truth).
    /// Caller holds the device's `mem_mutex`.
    fn repair_used(&self, dev: u32) {
        let sum: u64 = (0..MAX_PROCS)
            .map(|i| self.slot(i).dev[dev as usize].used.load(Ordering::Acquire))
            .sum();
        self.block(dev).used.store(sum, Ordering::Release);
    }

    /// Returns `bytes` of `dev`'s memory charged to the calling process.
    pub fn uncharge(&self, dev: u32, bytes: u64) {
        self.uncharge_as(dev, bytes, false);
    }

    /// Returns `bytes` of the calling process's overhead on `dev` (a context destroyed, a
    /// module unloaded).
    pub fn uncharge_overhead(&self, dev: u32, bytes: u64) {
        self.uncharge_as(dev, bytes, true);
    }

    fn uncharge_as(&self, dev: u32, bytes: u64, overhead: bool) {
        let Ok(d) = self.check_dev(dev) else { return };
        let Ok(s) = self.my_slot() else { return };
        let pd = &self.slot(s).dev[dev as usize];
        let guard = crate::robust::lock(&d.mem_mutex);
        if guard.owner_died {
            self.repair_used(dev);
        }
        let bytes = if overhead {
            saturating_sub(&pd.overhead, bytes)
        } else {
            bytes
        };
        let taken = saturating_sub(&pd.used, bytes);
        saturating_sub(&d.used, taken);
    }

    /// Reclaims the slots (and memory) of processes that no longer exist. Returns how many.
    pub fn reclaim_dead(&self) -> usize {
        let mut n = 0;
        for i in 0..MAX_PROCS {
            let s = self.slot(i);
            let pid = s.pid.load(Ordering::Acquire);
            if pid == 0 || pid == PID_RECLAIMING {
                continue;
            }
            let start = s.start_time.load(Ordering::Acquire);
            if procid::is_alive(pid, start) {
                continue;
            }
            if s.pid
                .compare_exchange(pid, PID_RECLAIMING, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            for (dev, pd) in s.dev.iter().enumerate().take(self.devices as usize) {
                let guard = crate::robust::lock(&self.block(dev as u32).mem_mutex);
                if guard.owner_died {
                    self.repair_used(dev as u32);
                }
                let used = pd.used.swap(0, Ordering::AcqRel);
                saturating_sub(&self.block(dev as u32).used, used);
            }
            for pd in s.dev.iter() {
                pd.used.store(0, Ordering::Relaxed);
                pd.attached.store(0, Ordering::Relaxed);
                pd.busy_ns.store(0, Ordering::Relaxed);
                pd.kernels.store(0, Ordering::Relaxed);
                pd.overhead.store(0, Ordering::Relaxed);
            }
            s.start_time.store(0, Ordering::Relaxed);
            s.pid.store(0, Ordering::Release);
            n += 1;
        }
        n
    }

    /// Queues a kernel of `duration_ns` on `dev`, ready to run at `ready_ns` (submitted, and its
    /// stream's earlier work done, on the device's clock). Run it with [`Self::run_queued`]; a
    /// stream queues its next kernel while the current one runs, so the device can start it on
    /// time even when the stream's thread is late.
    pub fn queue_kernel(
        &self,
        dev: u32,
        duration_ns: u64,
        ready_ns: u64,
    ) -> Result<QueuedKernel, FakeGpuError> {
        self.queue_kernel_after(dev, None, duration_ns, ready_ns, 0)
    }

    /// [`Self::queue_kernel`] for the kernel right behind `after` (a ticket) in its stream,
    /// with `more` kernels of the same duration queued right behind it (only event records
    /// between): the device queues those itself as each starts, so they keep their place
    /// however late the stream's thread is (see [`lock::enqueue_after`]).
    pub fn queue_kernel_after(
        &self,
        dev: u32,
        after: Option<u64>,
        duration_ns: u64,
        ready_ns: u64,
        more: u64,
    ) -> Result<QueuedKernel, FakeGpuError> {
        let d = self.check_dev(dev)?;
        let p = self.slot(self.my_slot()?);
        let kernel = lock::Kernel {
            pid: p.pid.load(Ordering::Relaxed),
            start_time: p.start_time.load(Ordering::Relaxed),
            duration_ns,
            ready_ns,
            more,
        };
        let ticket = lock::enqueue_after(&d.lock, &d.running, after, kernel);
        Ok(QueuedKernel {
            dev,
            ticket,
            duration_ns,
            ready_ns,
        })
    }

    /// Runs a kernel of `duration_ns` on `dev` that is ready now (see [`Self::run_queued`]).
    pub fn run_kernel(&self, dev: u32, duration_ns: u64) -> Result<KernelRun, FakeGpuError> {
        self.run_kernel_at(dev, duration_ns, procid::monotonic_ns())
    }

    /// Runs a kernel of `duration_ns` on `dev` that was ready at `ready_ns`.
    pub fn run_kernel_at(
        &self,
        dev: u32,
        duration_ns: u64,
        ready_ns: u64,
    ) -> Result<KernelRun, FakeGpuError> {
        let k = self.queue_kernel(dev, duration_ns, ready_ns)?;
        self.run_queued(k, |_| {})
    }

    /// Runs a queued kernel: waits for its turn on the device, which starts it at the later of
    /// the previous kernel's end and when it was ready (not when this thread got there: a busy
    /// host does not leave the device idle), calls `started` with its end, waits until it ends,
    /// and accounts busy time (process and device), the kernel count and a trace record. If this
    /// thread came so late that the device already ran the kernel, only the accounting is left.
    pub fn run_queued(
        &self,
        k: QueuedKernel,
        started: impl FnOnce(u64),
    ) -> Result<KernelRun, FakeGpuError> {
        let d = self.check_dev(k.dev)?;
        let s = self.my_slot()?;
        let (start_ns, end_ns) = match lock::wait(&d.lock, &d.running, k.ticket) {
            lock::Turn::Hold(guard) => {
                guard.mark_running();
                let prev = d.running.fetch_add(1, Ordering::AcqRel);
                d.max_concurrent.fetch_max(prev + 1, Ordering::AcqRel);
                // The device time is the kernel's duration, whatever happens to this host
                // thread (a stopped process's kernel still ends on time and the device moves on).
                let (start, end) = guard.start_kernel();
                started(end);
                procid::sleep_until(end);
                guard.finish_running(&d.running);
                (start, end)
            }
            lock::Turn::Passed(Some((start, end))) => {
                started(end);
                procid::sleep_until(end);
                (start, end)
            }
            // Skipped (its entry was taken for dead): nothing ran.
            lock::Turn::Passed(None) => {
                let now = procid::monotonic_ns();
                return Ok(KernelRun {
                    start_ns: now,
                    end_ns: now,
                });
            }
        };
        let busy = end_ns - start_ns;
        let pd = &self.slot(s).dev[k.dev as usize];
        pd.attached.store(1, Ordering::Relaxed);
        pd.busy_ns.fetch_add(busy, Ordering::AcqRel);
        pd.kernels.fetch_add(1, Ordering::AcqRel);
        d.busy_ns.fetch_add(busy, Ordering::AcqRel);
        d.kernels_completed.fetch_add(1, Ordering::AcqRel);
        crate::trace::append(d, procid::current_pid(), start_ns, end_ns, k.ready_ns);
        Ok(KernelRun { start_ns, end_ns })
    }
}

/// A kernel queued for the device ([`GpuState::queue_kernel`]), not run yet.
#[derive(Debug)]
pub struct QueuedKernel {
    dev: u32,
    ticket: u64,
    duration_ns: u64,
    ready_ns: u64,
}

impl QueuedKernel {
    /// Its duration on the device.
    pub fn duration_ns(&self) -> u64 {
        self.duration_ns
    }

    /// Its ticket in the device's queue (what the next kernel of its stream is queued after).
    pub fn ticket(&self) -> u64 {
        self.ticket
    }
}

fn saturating_sub(a: &AtomicU64, v: u64) -> u64 {
    let mut cur = a.load(Ordering::Acquire);
    loop {
        let take = v.min(cur);
        match a.compare_exchange_weak(cur, cur - take, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return take,
            Err(c) => cur = c,
        }
    }
}
