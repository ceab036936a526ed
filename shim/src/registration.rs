//! This process's registration with gpumuxd: the tenant socket connection (kept open for the
//! process's life: its closing is how the daemon learns the process is gone), the two mapped
//! segments, and the process's accounting slot.
//!
//! Modes: no `GPUMUX_SOCKET` → pass-through; registered → quotas apply; refused (daemon
//! unreachable or refusing) → GPU use is refused with a message, never unlimited.
//!
//! A daemon restart does not end a registration: the accounting segment outlives the daemon
//! (the process keeps its mapping, the daemon keeps the file), limits stay enforced through
//! it, and the watcher reattaches to the new daemon, which hands over a new control segment.
//! After `fork`, the child drops the parent's registration (it is another process for the
//! daemon and for the driver) and registers again on its next driver call.

use gpumux_common::protocol::{ClientMsg, MAX_MESSAGE, PROTOCOL_VERSION, ServerMsg};
use gpumux_common::shm::{AccountingSegment, ControlSegment, MAX_DEVICES, SegmentView};
use gpumux_common::{ENV_SOCKET, sock};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI8, AtomicI32, AtomicPtr, AtomicU8, Ordering};

/// Most CUDA device ordinals mapped.
pub const MAX_ORDINALS: usize = 64;

/// `ordinals` entry not yet matched against the daemon's devices.
const NOT_LOOKED_UP: i8 = -2;

const UNINIT: u8 = 0;
const PASS_THROUGH: u8 = 1;
const REGISTERED: u8 = 2;
const REFUSED: u8 = 3;

static MODE: AtomicU8 = AtomicU8::new(UNINIT);
static REG: AtomicPtr<Registration> = AtomicPtr::new(std::ptr::null_mut());
static INIT_LOCK: parking_lot::Mutex<()> = parking_lot::const_mutex(());

/// A live registration. Leaked on creation: hooks hold `&'static` references to it.
pub struct Registration {
    /// The tenant socket path (for reattaching after a daemon restart).
    path: PathBuf,
    /// The current connection to the daemon (-1 while the daemon is away).
    socket: AtomicI32,
    /// The current control segment. Replaced on reattach; old ones are leaked, never
    /// unmapped, so references handed out earlier stay valid.
    control: AtomicPtr<SegmentView<ControlSegment>>,
    pub accounting: SegmentView<AccountingSegment>,
    pub slot: usize,
    /// CUDA device ordinal → index in the segments' device table (-1: not a device the
    /// daemon knows, treated as not allowed; -2: not looked up yet).
    ordinals: [AtomicI8; MAX_ORDINALS],
    /// The device every launch goes to when the process sees exactly one (-1 otherwise):
    /// spares the launch gate a driver call.
    single_device: AtomicI8,
}

/// What the shim may do for this process.
#[derive(Clone, Copy)]
pub enum Access {
    /// Not in a gpumux container: call through untouched.
    PassThrough,
    /// Quotas apply.
    Registered(&'static Registration),
    /// The daemon could not be reached: GPU use is refused.
    Refused,
}

impl Registration {
    /// The current control segment.
    #[inline]
    pub fn control(&self) -> &'static SegmentView<ControlSegment> {
        // SAFETY: the pointer always refers to a leaked (never freed) SegmentView.
        unsafe { &*self.control.load(Ordering::Acquire) }
    }

    /// Segment device index of a CUDA ordinal: `Some(None)` when the ordinal is not a device
    /// the daemon knows, `None` when it has not been looked up yet.
    #[inline]
    pub fn device_index(&self, ordinal: i32) -> Option<Option<usize>> {
        let i = self
            .ordinals
            .get(usize::try_from(ordinal).ok()?)?
            .load(Ordering::Relaxed);
        match i {
            NOT_LOOKED_UP => None,
            i if (0..MAX_DEVICES as i8).contains(&i) => Some(Some(i as usize)),
            _ => Some(None),
        }
    }

    /// Records which segment device a CUDA ordinal is (matched by GPU UUID).
    pub fn map_ordinal(&self, ordinal: i32, uuid: &[u8; 16]) {
        let found = self.device_by_uuid(uuid);
        if let Some(slot) = usize::try_from(ordinal)
            .ok()
            .and_then(|o| self.ordinals.get(o))
        {
            slot.store(found.map_or(-1, |i| i as i8), Ordering::Relaxed);
        }
    }

    /// Records how many CUDA ordinals the process sees, after mapping them all.
    pub fn set_ordinal_count(&self, count: i32) {
        let single = match count {
            1 => self.device_index(0).flatten().map_or(-1, |d| d as i8),
            _ => -1,
        };
        self.single_device.store(single, Ordering::Relaxed);
    }

    /// The only device this process can launch on, if it sees exactly one.
    #[inline]
    pub fn single_device(&self) -> Option<usize> {
        usize::try_from(self.single_device.load(Ordering::Relaxed)).ok()
    }

    /// Ordinals mapped to segment device `device`.
    pub fn ordinals_of(&self, device: usize) -> impl Iterator<Item = i32> + '_ {
        (0..MAX_ORDINALS as i32).filter(move |&o| self.device_index(o) == Some(Some(device)))
    }

    /// Segment device index for an NVML/CUDA UUID.
    pub fn device_by_uuid(&self, uuid: &[u8; 16]) -> Option<usize> {
        let words = gpumux_common::shm::uuid_words(uuid);
        let control = self.control();
        let count = (control.device_count.load(Ordering::Acquire) as usize).min(MAX_DEVICES);
        (0..count).find(|&i| {
            let d = &control.devices[i];
            d.uuid[0].load(Ordering::Relaxed) == words[0]
                && d.uuid[1].load(Ordering::Relaxed) == words[1]
        })
    }

    /// The current daemon connection, if any.
    pub fn socket_fd(&self) -> Option<RawFd> {
        Some(self.socket.load(Ordering::Acquire)).filter(|&fd| fd >= 0)
    }

    /// Sends a message to the daemon (best effort, never blocks).
    pub fn send(&self, msg: &ClientMsg) -> bool {
        let Some(fd) = self.socket_fd() else {
            return false;
        };
        let bytes = msg.encode();
        // SAFETY: send(2) of a valid buffer; MSG_DONTWAIT so a full socket buffer never blocks
        // a launching thread. The number always names our connection (a reattach replaces it
        // in place with dup3; only a forked child, where this registration is dead, closes it).
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        n == bytes.len() as isize
    }

    /// Reattaches to a (restarted) daemon: presents this process's slot, receives the new
    /// control segment. On success the old connection is closed and replaced. A daemon that
    /// answers with a refusal tells the process to stop using the GPU
    /// ([`HandshakeError::Refused`]).
    pub fn reattach(&self) -> Result<(), HandshakeError> {
        let msg = ClientMsg::Reattach {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            slot: self.slot as u32,
        };
        let (fd, (control, slot), _) = handshake(&self.path, &msg)?;
        if slot != self.slot {
            return Err(HandshakeError::Refused(format!(
                "the daemon moved this process from slot {} to {slot}",
                self.slot
            )));
        }
        let control: &'static SegmentView<ControlSegment> = Box::leak(Box::new(control));
        self.control.store(
            control as *const _ as *mut SegmentView<ControlSegment>,
            Ordering::Release,
        );
        // Keep the descriptor number: the new connection replaces the dead one in place
        // (dup3 is atomic), so a thread sending concurrently can never hit a number the
        // application has reused meanwhile.
        let new = fd.into_raw_fd();
        let current = self.socket.load(Ordering::Acquire);
        if current >= 0 {
            // SAFETY: dup3 onto our own (dead) connection's number, then close the spare.
            unsafe {
                libc::dup3(new, current, libc::O_CLOEXEC);
                libc::close(new);
            }
        } else {
            self.socket.store(new, Ordering::Release);
        }
        Ok(())
    }
}

/// Why a registration or reattachment did not happen.
#[derive(Debug)]
pub enum HandshakeError {
    /// The daemon could not be reached or answered nonsense (it may come back).
    Failed(String),
    /// The daemon answered with a refusal.
    Refused(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Failed(e) => f.write_str(e),
            HandshakeError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

/// The daemon refused this registered process's reattachment: from now on GPU use is
/// refused, as if the daemon had been unreachable at registration (never unlimited).
pub fn stop(reason: &str) {
    crate::diag::stderr(
        format!(
            "gpumux: gpumuxd refused to take this process back after a restart ({reason}); GPU access is stopped for this process: restart it\n"
        )
        .as_bytes(),
    );
    MODE.store(REFUSED, Ordering::Release);
}

/// The current access mode, registering first if this process has not tried yet.
#[inline]
pub fn access() -> Access {
    match MODE.load(Ordering::Acquire) {
        REGISTERED => {
            // SAFETY: REG is set (to a leaked, never-freed Registration) before MODE becomes
            // REGISTERED, with release ordering.
            Access::Registered(unsafe { &*REG.load(Ordering::Acquire) })
        }
        PASS_THROUGH => Access::PassThrough,
        REFUSED => Access::Refused,
        _ => register(),
    }
}

/// The registration, if this process has one (never registers).
#[inline]
pub fn current() -> Option<&'static Registration> {
    if MODE.load(Ordering::Acquire) == REGISTERED {
        // SAFETY: see `access`.
        Some(unsafe { &*REG.load(Ordering::Acquire) })
    } else {
        None
    }
}

#[cold]
fn register() -> Access {
    let guard = INIT_LOCK.lock();
    if MODE.load(Ordering::Acquire) != UNINIT {
        drop(guard);
        return access();
    }
    let Some(path) = std::env::var_os(ENV_SOCKET)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
    else {
        MODE.store(PASS_THROUGH, Ordering::Release);
        return Access::PassThrough;
    };
    crate::fork::install_handlers();
    let hello = ClientMsg::Hello {
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
    };
    let result = handshake(&path, &hello).and_then(|(fd, control, fds)| {
        let accounting = SegmentView::<AccountingSegment>::open(fds.as_fd(), true)
            .map_err(|e| HandshakeError::Failed(format!("accounting segment: {e}")))?;
        Ok((fd, control, accounting))
    });
    match result {
        Ok((fd, control, accounting)) => {
            let slot = control.1;
            let reg = Registration {
                path,
                socket: AtomicI32::new(fd.into_raw_fd()),
                control: AtomicPtr::new(Box::leak(Box::new(control.0))),
                accounting,
                slot,
                ordinals: [const { AtomicI8::new(NOT_LOOKED_UP) }; MAX_ORDINALS],
                single_device: AtomicI8::new(-1),
            };
            let reg: &'static Registration = Box::leak(Box::new(reg));
            REG.store(
                reg as *const Registration as *mut Registration,
                Ordering::Release,
            );
            MODE.store(REGISTERED, Ordering::Release);
            crate::watcher::start(reg);
            Access::Registered(reg)
        }
        Err(reason) => {
            crate::diag::stderr(
                format!(
                    "gpumux: cannot register with the gpumux daemon at {} ({reason}); GPU access is refused for this process (cuInit fails). \
                     On the host, check that gpumuxd is running (`systemctl status gpumuxd`, `gpumuxctl status`) and that the tenant's directory is mounted into the container (`gpumuxctl env <tenant>`).\n",
                    path.display()
                )
                .as_bytes(),
            );
            MODE.store(REFUSED, Ordering::Release);
            Access::Refused
        }
    }
}

fn set_recv_timeout(fd: BorrowedFd<'_>, seconds: libc::time_t) {
    let timeout = libc::timeval {
        tv_sec: seconds,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval of the stated size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// Why connecting to the tenant socket failed, with the likely cause.
fn connect_failure(e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ENOENT) => {
            "no such socket: the tenant's directory is not mounted into this container, the tenant has no quota file, or gpumuxd is not running"
        }
        Some(libc::ECONNREFUSED) => "nothing listens there: gpumuxd is not running",
        Some(libc::EACCES) => "permission denied on the socket or its directory",
        _ => "",
    };
    if hint.is_empty() {
        format!("connect: {e}")
    } else {
        format!("connect: {e}; {hint}")
    }
}

/// Connects, sends `msg` (Hello or Reattach), and returns the connection, the mapped control
/// segment with the slot the daemon assigned, and the accounting segment's descriptor.
#[allow(clippy::type_complexity)]
fn handshake(
    path: &Path,
    msg: &ClientMsg,
) -> Result<(OwnedFd, (SegmentView<ControlSegment>, usize), OwnedFd), HandshakeError> {
    use HandshakeError::Failed;
    let fd = sock::connect(path).map_err(|e| Failed(connect_failure(&e)))?;
    set_recv_timeout(fd.as_fd(), 10);
    let mut buf = [0u8; MAX_MESSAGE];
    if let Err(e) = sock::send(fd.as_fd(), &msg.encode(), &[]) {
        // The daemon may have refused the connection before reading anything (a tenant over
        // its connection limit): its reason is waiting.
        return match sock::recv(fd.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
            Ok((n, _)) if n > 0 => match ServerMsg::decode(&buf[..n]) {
                Ok(ServerMsg::Refused { reason }) => Err(HandshakeError::Refused(reason)),
                _ => Err(Failed(format!("send: {e}"))),
            },
            _ => Err(Failed(format!("send: {e}"))),
        };
    }
    let (n, mut fds) =
        sock::recv(fd.as_fd(), &mut buf, 0).map_err(|e| Failed(format!("no answer: {e}")))?;
    if n == 0 {
        return Err(Failed("the daemon closed the connection".into()));
    }
    match ServerMsg::decode(&buf[..n]).map_err(|e| Failed(format!("bad answer: {e}")))? {
        ServerMsg::Welcome { protocol, slot, .. } => {
            if protocol != PROTOCOL_VERSION {
                return Err(Failed(format!(
                    "daemon speaks protocol {protocol}, shim {PROTOCOL_VERSION}"
                )));
            }
            if fds.len() != 2 {
                return Err(Failed("the daemon sent no segments".into()));
            }
            // From now on the socket is the watcher's to block on.
            set_recv_timeout(fd.as_fd(), 0);
            let accounting_fd = fds.pop().expect("two fds");
            let control_fd = fds.pop().expect("two fds");
            let control = SegmentView::<ControlSegment>::open(control_fd.as_fd(), false)
                .map_err(|e| Failed(format!("control segment: {e}")))?;
            Ok((fd, (control, slot as usize), accounting_fd))
        }
        ServerMsg::Refused { reason } => Err(HandshakeError::Refused(reason)),
        other => Err(Failed(format!("unexpected answer {other:?}"))),
    }
}

/// In a forked child: forget the parent's registration without touching its resources beyond
/// closing our copy of its socket (so the daemon sees the parent's lifetime, not ours).
/// Async-signal-safe: atomics and close(2) only.
pub fn forget_after_fork() {
    let p = REG.swap(std::ptr::null_mut(), Ordering::AcqRel);
    if !p.is_null() {
        // SAFETY: `p` is the leaked registration; we only take its fd and close our copy. The
        // struct itself is deliberately leaked.
        let fd = unsafe { (*p).socket.swap(-1, Ordering::AcqRel) };
        if fd >= 0 {
            // SAFETY: closing the child's copy of the parent's connection.
            unsafe { libc::close(fd) };
        }
    }
    if MODE.load(Ordering::Acquire) != PASS_THROUGH {
        MODE.store(UNINIT, Ordering::Release);
    }
    if INIT_LOCK.is_locked() {
        // SAFETY: in a forked child only the forking thread exists: a holder of INIT_LOCK at
        // fork time is gone, and the lock must be usable again.
        unsafe { INIT_LOCK.force_unlock() };
    }
}
