//! The watcher thread: started at registration (never at load time), it listens to the daemon.
//! On `Revoke` it drains this process's work on the device — waits out launch calls in flight
//! and stream captures in progress, then synchronizes the device's primary contexts — and
//! answers `Drained` with the device time the work used in the slice ([`crate::busy`]).
//! `Measured` answers wake the thread waiting for a footprint measurement
//! ([`crate::footprint`]). When the daemon connection ends it lets launches pass (see
//! [`crate::gate::DAEMON_GONE`]) and reattaches to the restarted daemon, retrying with backoff.
//! A daemon that refuses the reattachment tells the process to stop using the GPU
//! ([`crate::registration::stop`]).

use crate::cuda_types::*;
use crate::hooks::real;
use crate::registration::Registration;
use gpumux_common::protocol::{ClientMsg, MAX_MESSAGE, ServerMsg};
use gpumux_common::sock;
use std::ffi::{c_int, c_uint};
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Starts the watcher for a fresh registration.
pub fn start(reg: &'static Registration) {
    let spawned = std::thread::Builder::new()
        .name("gpumux-watch".into())
        .stack_size(256 * 1024)
        .spawn(move || run(reg));
    if spawned.is_err() {
        crate::diag::stderr(b"gpumux: cannot start the watcher thread; compute time-slicing is off for this process\n");
        crate::gate::DAEMON_GONE.store(true, Ordering::Relaxed);
    }
}

fn run(reg: &'static Registration) {
    loop {
        serve(reg);
        crate::gate::DAEMON_GONE.store(true, Ordering::Relaxed);
        crate::diag::stderr(b"gpumux: lost the connection to gpumuxd; memory limits stay in force, compute time-slicing is paused until it is back\n");
        let mut delay = Duration::from_millis(20);
        loop {
            std::thread::sleep(delay);
            match reg.reattach() {
                Ok(()) => {
                    crate::footprint::keep_unsettled(reg);
                    crate::gate::DAEMON_GONE.store(false, Ordering::Relaxed);
                    crate::diag::stderr(b"gpumux: reattached to gpumuxd\n");
                    break;
                }
                Err(crate::registration::HandshakeError::Refused(reason)) => {
                    return crate::registration::stop(&reason);
                }
                Err(crate::registration::HandshakeError::Failed(_)) => {
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Serves the current connection until it ends.
fn serve(reg: &'static Registration) {
    let mut buf = [0u8; MAX_MESSAGE];
    let Some(raw) = reg.socket_fd() else { return };
    // SAFETY: only this thread replaces (and closes) the registration's connection, after
    // this function returned; in a forked child this thread does not exist.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    loop {
        match sock::recv(fd, &mut buf, 0) {
            Ok((0, _)) => return,
            Ok((n, _)) => match ServerMsg::decode(&buf[..n]) {
                Ok(ServerMsg::Revoke { device, epoch }) => {
                    let busy_ns = drain(reg, device as usize);
                    reg.send(&ClientMsg::Drained {
                        device,
                        epoch,
                        busy_ns,
                    });
                }
                Ok(ServerMsg::Measured { seq, .. }) => crate::footprint::answered(seq),
                _ => {}
            },
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                continue;
            }
            Err(_) => return,
        }
    }
}

/// How long a drain waits for stream captures in progress to end.
const CAPTURE_WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Waits until this process's work on `device` is done; returns the device time it used in the
/// slice (see `crate::busy`; None when not measured).
fn drain(reg: &Registration, device: usize) -> Option<u64> {
    if device >= gpumux_common::shm::MAX_DEVICES {
        return None;
    }
    crate::gate::wait_no_launch_in_flight(device);
    // Synchronizing a context while one of its streams captures would invalidate the capture:
    // wait for captures to end first (captured launches do not wait for a slice, so they end).
    // A capture longer than this is broken rather than the device left undrained forever.
    let captured = crate::captures::any() && !crate::captures::wait_until_none(CAPTURE_WAIT_LIMIT);
    // The end of the busy period, recorded before the synchronize (not into a capture).
    let end = if captured {
        None
    } else {
        crate::busy::drain_begin(device)
    };
    for ordinal in reg.ordinals_of(device) {
        sync_primary_context(ordinal);
    }
    crate::contexts::for_each_on(device, |ctx| sync_context(ctx as CUcontext));
    crate::bound::drained(device);
    crate::busy::drain_finish(device, end)
}

/// Synchronizes an application-created context (the registry is held: it cannot be destroyed
/// meanwhile).
fn sync_context(ctx: CUcontext) {
    let push = real!(cuCtxPushCurrent_v2);
    let pop = real!(cuCtxPopCurrent_v2);
    let sync = real!(cuCtxSynchronize);
    // SAFETY: `ctx` is a live context (destroys wait for the registry); the context pushed on
    // this thread is popped again.
    unsafe {
        if push(ctx) == CUDA_SUCCESS {
            sync();
            let mut popped: CUcontext = std::ptr::null_mut();
            pop(&mut popped);
        }
    }
}

fn sync_primary_context(ordinal: c_int) {
    let get_state = real!(cuDevicePrimaryCtxGetState);
    let retain = real!(cuDevicePrimaryCtxRetain);
    let release = real!(cuDevicePrimaryCtxRelease_v2);
    let push = real!(cuCtxPushCurrent_v2);
    let pop = real!(cuCtxPopCurrent_v2);
    let sync = real!(cuCtxSynchronize);
    let (mut flags, mut active) = (0 as c_uint, 0 as c_int);
    // SAFETY: valid out-pointers; every call follows the driver API's documented contract,
    // and the context pushed on this thread is popped before the retain is released.
    unsafe {
        if get_state(ordinal, &mut flags, &mut active) != CUDA_SUCCESS || active == 0 {
            return;
        }
        let mut ctx: CUcontext = std::ptr::null_mut();
        if retain(&mut ctx, ordinal) != CUDA_SUCCESS {
            return;
        }
        if push(ctx) == CUDA_SUCCESS {
            sync();
            let mut popped: CUcontext = std::ptr::null_mut();
            pop(&mut popped);
        }
        release(ordinal);
    }
}
