//! Creation of a tenant's two shared segments and writing its quota into them.
//!
//! The control segment is a memfd sealed with `F_SEAL_FUTURE_WRITE` once the daemon has mapped
//! it: the daemon keeps writing through its own mapping, while tenant processes can only map
//! it read-only. The accounting segment is tenant-writable by design (reservation without a
//! round trip); what a process can corrupt there is only its own tenant's bookkeeping. It is
//! a file in the daemon's private `state_dir/segments/` (never mounted into containers; tenants
//! receive its descriptor), so a restarted daemon finds the accounting of running processes.
//!
//! Beside it, `<tenant>.quota` keeps the tenant's last good quota, so a daemon started while
//! the tenant's file is malformed or gone still knows the limits of its running processes.
//!
//! What a tenant can do to the accounting file through its descriptor is survivable: its
//! pages are reserved at creation (`fallocate`: a full file system is an error at creation,
//! never a SIGBUS later), a truncation under the daemon's mapping is caught ([`crate::sigbus`])
//! and any size change or write through a descriptor is seen (inotify) and undone by
//! [`TenantSegments::repair`]. The tenant loses at worst its own bookkeeping.

use crate::devices::Device;
use crate::sigbus;
use gpumux_common::config::TenantQuota;
use gpumux_common::shm::{
    ACCOUNTING_MAGIC, AccountingSegment, ControlSegment, LAYOUT_VERSION, Segment, SegmentView,
    uuid_words,
};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// A tenant's segments, owned by the daemon.
pub struct TenantSegments {
    /// Catches a truncation of the accounting file under the daemon's mapping (declared
    /// first: unguarded before the mapping and the file go).
    guard: Option<sigbus::Guard>,
    /// The accounting segment was left by a previous daemon instance.
    pub recovered: bool,
    pub control_fd: OwnedFd,
    pub control: SegmentView<ControlSegment>,
    pub accounting_fd: OwnedFd,
    pub accounting: SegmentView<AccountingSegment>,
}

/// What [`TenantSegments::repair`] found and undid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The file's size or reserved space had been changed through a descriptor.
    pub resized: bool,
    /// The header (magic, layout, lock) had been overwritten or zeroed.
    pub header: bool,
    /// Process records that did not match the processes the daemon registered.
    pub slots: usize,
    /// The daemon's view had to be detached (the file could not be restored): the tenant's
    /// accounting must be started afresh.
    pub detached: bool,
}

impl Repair {
    pub fn anything(&self) -> bool {
        self.resized || self.header || self.slots > 0 || self.detached
    }
}

fn memfd(name: &str, sealable: bool) -> io::Result<OwnedFd> {
    let cname = CString::new(format!("gpumux-{name}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::MFD_CLOEXEC | if sealable { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: memfd_create with a valid C string; the fd is checked and owned.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the accounting file, adopting a valid existing one or creating a fresh one.
fn open_accounting(path: &Path) -> io::Result<(OwnedFd, SegmentView<AccountingSegment>, bool)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let fd: OwnedFd = file.into();
    let len = AccountingSegment::segment_len();
    if fd_len(&fd)? > 0 {
        match SegmentView::<AccountingSegment>::open(fd.as_fd(), true) {
            Ok(view) => {
                // Adopted: its pages are reserved (a file of an older daemon may be sparse).
                reserve(&fd, len)?;
                return Ok((fd, view, true));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "discarding an unusable accounting segment: {e}");
            }
        }
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Reserve every page before anything touches one: a full file system is an error now,
    // never a SIGBUS later.
    reserve(&fd, len)?;
    let view = SegmentView::<AccountingSegment>::create(fd.as_fd())?;
    // SAFETY: the segment was just created (truncated to zero and regrown) and not yet handed
    // to any process, so nobody uses the mutex.
    unsafe { view.lock.init() }
        .map_err(|e| io::Error::other(format!("initialising the accounting lock: {e}")))?;
    Ok((fd, view, false))
}

fn fd_len(fd: &OwnedFd) -> io::Result<u64> {
    Ok(fd_stat(fd)?.st_size as u64)
}

fn fd_stat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: libc::stat is plain old data; fstat fills it for our own descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Sizes the file to `len` and reserves its pages; ENOSPC says the file system is full.
fn reserve(fd: &OwnedFd, len: usize) -> io::Result<()> {
    // SAFETY: fallocate on our own descriptor.
    if unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len as libc::off_t) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("reserving {len} bytes for the accounting segment: {e}"),
        ));
    }
    Ok(())
}

impl TenantSegments {
    /// `(device, inode)` of the accounting segment's file: what a registered process's memory
    /// map shows ([`crate::procfs::maps_file`]).
    pub fn accounting_file_id(&self) -> io::Result<(u64, u64)> {
        let st = fd_stat(&self.accounting_fd)?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Creates both segments for `tenant` and writes the devices and quota into them.
    ///
    /// The accounting segment is the file `accounting_path` (in the daemon's private state
    /// directory): if it exists from a previous daemon instance and is valid, it is adopted as
    /// is — that is how running processes keep their accounting across a daemon restart — and
    /// `recovered` is set.
    pub fn create(
        tenant: &str,
        generation: u64,
        devices: &[Device],
        quota: &TenantQuota,
        accounting_path: &Path,
    ) -> io::Result<Self> {
        let control_fd = memfd(&format!("{tenant}-control"), true)?;
        let control = SegmentView::<ControlSegment>::create(control_fd.as_fd())?;
        let seals =
            libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own memfd.
        if unsafe { libc::fcntl(control_fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (accounting_fd, accounting, recovered) = open_accounting(accounting_path)?;
        control.generation.store(generation, Release);
        control.device_count.store(devices.len() as u32, Release);
        for (slot, d) in control.devices.iter().zip(devices) {
            let [a, b] = uuid_words(&d.uuid_bytes);
            slot.uuid[0].store(a, Release);
            slot.uuid[1].store(b, Release);
            slot.physical_total.store(d.total_bytes, Release);
        }
        let guard = sigbus::Guard::new(
            accounting.get() as *const AccountingSegment as *const u8,
            AccountingSegment::segment_len(),
            accounting_fd.as_raw_fd(),
        );
        let segs = TenantSegments {
            guard,
            recovered,
            control_fd,
            control,
            accounting_fd,
            accounting,
        };
        segs.apply_quota(devices, quota);
        Ok(segs)
    }

    /// Checks the accounting file against what a tenant may have done to it through its
    /// descriptor, and undoes it: the size and reserved space are restored (space written
    /// past the end is freed), a zeroed or overwritten header is rewritten, and each process
    /// record is made to name the process the daemon registered there (`registered`: slot →
    /// pid and start time; other slots are cleared). Charges lost to a truncation stay lost:
    /// that tenant's bookkeeping is what it damaged.
    pub fn repair(&self, registered: &[(usize, u32, u64)]) -> Repair {
        let mut r = Repair::default();
        if let Some(g) = &self.guard {
            r.detached = g.take_damage() == Some(sigbus::DETACHED);
        }
        if r.detached {
            return r;
        }
        let len = AccountingSegment::segment_len();
        match fd_stat(&self.accounting_fd) {
            Ok(st)
                if st.st_size as u64 == len as u64
                    && (st.st_blocks as u64) * 512 <= (len as u64) + 4096 => {}
            Ok(st) => {
                r.resized = true;
                tracing::debug!(
                    size = st.st_size,
                    blocks = st.st_blocks,
                    "restoring an accounting file"
                );
                let fd = self.accounting_fd.as_raw_fd();
                // SAFETY: resizing and reserving our own file.
                let ok = unsafe {
                    libc::ftruncate(fd, len as libc::off_t) == 0
                        && libc::fallocate(fd, 0, 0, len as libc::off_t) == 0
                };
                if !ok {
                    tracing::warn!(
                        "cannot restore an accounting file: {}",
                        io::Error::last_os_error()
                    );
                }
                // Frees space reserved past the end through a descriptor (FALLOC_FL_KEEP_SIZE);
                // nothing to do (and an error) when there is none.
                // SAFETY: punching a hole in our own file, past the segment.
                let punched = unsafe {
                    libc::fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        len as libc::off_t,
                        libc::off_t::MAX - len as libc::off_t,
                    )
                };
                if punched != 0 {
                    tracing::debug!("no space to free past an accounting file's end");
                }
            }
            Err(e) => tracing::warn!("cannot check an accounting file: {e}"),
        }
        let a = &self.accounting;
        if a.magic.load(Acquire) != ACCOUNTING_MAGIC
            || a.layout_version.load(Acquire) != LAYOUT_VERSION
        {
            r.header = true;
            a.layout_version.store(LAYOUT_VERSION, Release);
            a.magic.store(ACCOUNTING_MAGIC, Release);
            // The lock was zeroed or overwritten with the header: make it a robust,
            // process-shared mutex again.
            // SAFETY: no thread of the daemon holds or waits on this mutex (the daemon only
            // ever try-locks it, on this thread, and holds no guard now), and it lives in the
            // daemon's writable mapping. A tenant process that was inside it when its own
            // process truncated or overwrote the segment had its lock state destroyed by that
            // already: what its processes do with it affects only that tenant.
            if let Err(e) = unsafe { a.lock.init() } {
                tracing::warn!("cannot reinitialise an accounting lock: {e}");
            }
        }
        for (slot, p) in a.processes.iter().enumerate() {
            let want = registered
                .iter()
                .find(|(s, _, _)| *s == slot)
                .map_or((0, 0), |&(_, pid, start)| (pid, start));
            let have = (p.pid.load(Relaxed), p.start_time.load(Relaxed));
            if have.0 != want.0 || (want.0 != 0 && have.1 != want.1) {
                r.slots += 1;
                p.start_time.store(want.1, Relaxed);
                p.pid.store(want.0, Relaxed);
            }
        }
        r
    }

    /// Publishes a (new) quota to the tenant's running processes. Lowering a limit below
    /// current use blocks new allocations; it never frees anything.
    pub fn apply_quota(&self, devices: &[Device], quota: &TenantQuota) {
        let c = &self.control;
        for (slot, d) in c.devices.iter().zip(devices) {
            let allowed = quota.allows(d.index, &d.uuid);
            slot.memory_limit
                .store(if allowed { quota.memory_limit } else { 0 }, Release);
            slot.allowed.store(allowed as u32, Release);
        }
        c.weight.store(quota.weight, Release);
        c.compute_limit_permille
            .store(quota.compute_limit_permille.unwrap_or(0), Release);
        c.config_seq.fetch_add(1, AcqRel);
    }
}

/// Keeps `quota` as the tenant's last good quota beside its accounting file (written to a
/// temporary file and renamed: a crash leaves the old or the new one).
pub fn save_quota(path: &Path, quota: &TenantQuota) -> io::Result<()> {
    let tmp = path.with_extension("quota.tmp");
    std::fs::write(&tmp, quota.to_toml())?;
    std::fs::rename(&tmp, path)
}

/// The last good quota kept by [`save_quota`], if any and still valid.
pub fn load_quota(path: &Path, tenant: &str) -> Option<TenantQuota> {
    let text = gpumux_common::config::read_config_file(path).ok()?;
    match TenantQuota::parse(path, tenant, &text) {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!("ignoring a kept quota: {e}");
            None
        }
    }
}
