//! Tenant sockets and directories, and the control socket, created without path races.
//!
//! `state_dir/tenants/<tenant>/` is mounted into the tenant's containers, so whatever is
//! inside it may be swapped for a symlink at any moment. After creating the directory the
//! daemon only works through a descriptor of it (`O_NOFOLLOW`): the socket is unlinked with
//! `unlinkat` and bound through `/proc/self/fd/<dir>/`, and its mode is set before it exists
//! (`fchmod` on the socket, umask cleared around `bind`), never by a `chmod` of its path.

use anyhow::{Context, Result, bail};
use gpumux_common::config::DaemonConfig;
use gpumux_common::names::{SOCKET_NAME, control_socket, tenant_dir};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// A tenant's socket and the directory it lives in.
pub(super) struct Endpoint {
    pub(super) listener: OwnedFd,
    pub(super) listener_id: u64,
    /// `state_dir/tenants/<tenant>/`, opened `O_DIRECTORY | O_NOFOLLOW`.
    dir: OwnedFd,
}

/// Creates `state_dir/tenants` and the daemon's private `state_dir/segments` (0700), and
/// `tenants_dir`.
pub(super) fn prepare_state_dirs(cfg: &DaemonConfig) -> Result<()> {
    std::fs::create_dir_all(cfg.state_dir.join("tenants"))
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let segments = cfg.state_dir.join("segments");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&segments)
        .with_context(|| format!("creating {}", segments.display()))?;
    // Accounting files are the daemon's own: never readable by tenants.
    let dir = open_dir(&segments)?;
    fchmod(&dir, 0o700).with_context(|| format!("securing {}", segments.display()))?;
    std::fs::create_dir_all(&cfg.tenants_dir)
        .with_context(|| format!("creating {}", cfg.tenants_dir.display()))?;
    Ok(())
}

/// The operator's control socket (`state_dir/gpumuxd.sock`, 0600).
pub(super) fn control_listener(state_dir: &Path) -> Result<UnixListener> {
    let path = control_socket(state_dir);
    let dir = open_dir(state_dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("control socket name")?;
    let fd = listening_socket(&dir, name, SockType::Stream, 0o600, 128)
        .with_context(|| format!("binding {}", path.display()))?;
    Ok(UnixListener::from(fd))
}

impl Endpoint {
    /// Creates (or takes over) `state_dir/tenants/<tenant>/` and its socket.
    pub(super) fn create(state_dir: &Path, tenant: &str, listener_id: u64) -> Result<Endpoint> {
        let path = tenant_dir(state_dir, tenant);
        match std::fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        let dir = open_dir(&path)?;
        fchmod(&dir, 0o755).with_context(|| format!("setting the mode of {}", path.display()))?;
        // Containers may run as any uid: access is controlled by which directory is mounted.
        let listener = listening_socket(&dir, SOCKET_NAME, SockType::SeqPacket, 0o666, 1024)
            .with_context(|| format!("binding {}/{SOCKET_NAME}", path.display()))?;
        Ok(Endpoint {
            listener,
            listener_id,
            dir,
        })
    }

    /// Removes the socket file (the tenant is gone for good).
    pub(super) fn remove_socket(&self) {
        if let Err(e) = unlink_at(&self.dir, SOCKET_NAME)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove a tenant socket: {e}");
        }
    }
}

/// Opens a directory without following a symlink in its last component.
fn open_dir(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("path {}", path.display()))?;
    // SAFETY: open(2) with a valid C path; the result is checked and owned.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
            bail!(
                "{} is not a directory (a symlink?): refusing it",
                path.display()
            );
        }
        return Err(e).with_context(|| format!("opening {}", path.display()));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fchmod(fd: &OwnedFd, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: fchmod on our own descriptor.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unlink_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: unlinkat relative to our own directory descriptor, with a valid C name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking, close-on-exec Unix socket listening at `name` inside `dir`, created with
/// `mode`. It is bound under a temporary name and renamed into place once listening, so a
/// socket file that exists always accepts (whatever was at `name` before is replaced).
fn listening_socket(
    dir: &OwnedFd,
    name: &str,
    ty: SockType,
    mode: libc::mode_t,
    backlog: i32,
) -> Result<OwnedFd> {
    let tmp = format!(".{name}.new");
    match unlink_at(dir, &tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("removing an old socket"),
    }
    let fd = socket(
        AddressFamily::Unix,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("creating a socket")?;
    // The socket file takes the socket's mode, less the umask, when bound.
    fchmod(&fd, mode).context("setting the socket's mode")?;
    let addr = UnixAddr::new(format!("/proc/self/fd/{}/{tmp}", dir.as_raw_fd()).as_str())
        .context("socket address")?;
    // SAFETY: umask(2) only swaps the process's file mode mask; the daemon's other thread
    // (metrics) creates no files.
    let old = unsafe { libc::umask(0) };
    let bound = bind(fd.as_raw_fd(), &addr);
    // SAFETY: restores the mask swapped above.
    unsafe { libc::umask(old) };
    bound.context("bind")?;
    listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN)).context("listen")?;
    rename_at(dir, &tmp, name).context("putting the socket in place")?;
    Ok(fd)
}

fn rename_at(dir: &OwnedFd, from: &str, to: &str) -> io::Result<()> {
    let (f, t) = match (CString::new(from), CString::new(to)) {
        (Ok(f), Ok(t)) => (f, t),
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    // SAFETY: renameat within our own directory descriptor, with valid C names.
    if unsafe { libc::renameat(dir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
