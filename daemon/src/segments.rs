//! Creation of a tenant's two shared segments and writing its quota into them.
//!
//! The control segment is a memfd sealed with `F_SEAL_FUTURE_WRITE` once the daemon has mapped
//! it: the daemon keeps writing through its own mapping, while tenant processes can only map
//! it read-only. The accounting segment is tenant-writable by design (reservation without a
//! round trip); what a process can corrupt there is only its own tenant's bookkeeping. It is
//! a file in the daemon's private `state_dir/segments/` (never mounted into containers; tenants
//! receive its descriptor), so a restarted daemon finds the accounting of running processes.

use crate::devices::Device;
use gpumux_common::config::TenantQuota;
use gpumux_common::shm::{AccountingSegment, ControlSegment, SegmentView, uuid_words};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering::{AcqRel, Release};

/// A tenant's segments, owned by the daemon.
pub struct TenantSegments {
    /// The accounting segment was left by a previous daemon instance.
    pub recovered: bool,
    pub control_fd: OwnedFd,
    pub control: SegmentView<ControlSegment>,
    pub accounting_fd: OwnedFd,
    pub accounting: SegmentView<AccountingSegment>,
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
    if fd_len(&fd)? > 0 {
        match SegmentView::<AccountingSegment>::open(fd.as_fd(), true) {
            Ok(view) => return Ok((fd, view, true)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "discarding an unusable accounting segment: {e}")
            }
        }
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let view = SegmentView::<AccountingSegment>::create(fd.as_fd())?;
    // SAFETY: the segment was just created (truncated to zero and regrown) and not yet handed
    // to any process, so nobody uses the mutex.
    unsafe { view.lock.init() }
        .map_err(|e| io::Error::other(format!("initialising the accounting lock: {e}")))?;
    Ok((fd, view, false))
}

fn fd_len(fd: &OwnedFd) -> io::Result<u64> {
    Ok(std::fs::File::from(fd.try_clone()?).metadata()?.len())
}

impl TenantSegments {
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
        let segs = TenantSegments {
            recovered,
            control_fd,
            control,
            accounting_fd,
            accounting,
        };
        segs.apply_quota(devices, quota);
        Ok(segs)
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
