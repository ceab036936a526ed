//! Synchronize calls. A thread waiting for its own queued work tells the scheduler the tenant
//! is busy even though it launches nothing (a per-device counter in the accounting segment), so
//! a holder that synchronizes between batches keeps its slice instead of looking idle.
//!
//! Handlers of the entry-point table (`Sync`).

use super::table::sig;
use crate::busy;
use crate::cuda_types::*;
use crate::registration::{Access, access};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;

/// Counts the calling thread as synchronizing on its device while alive, and brackets the
/// busy period the call may end (see `crate::busy`).
struct Syncing(Option<&'static AtomicU32>, Option<(usize, u64)>);

impl Syncing {
    fn enter(scope: Option<busy::Scope>) -> Self {
        let Access::Registered(reg) = access() else {
            return Syncing(None, None);
        };
        let device = super::init::working_device(reg).ok().flatten();
        let counter = device.map(|d| &reg.accounting.devices[d].syncing);
        if let Some(c) = counter {
            c.fetch_add(1, SeqCst);
        }
        let end = device
            .zip(scope)
            .filter(|_| !crate::captures::any())
            .and_then(|(d, s)| busy::before_sync(d, s));
        Syncing(counter, end)
    }
}

impl Drop for Syncing {
    fn drop(&mut self) {
        busy::after_sync(self.1.take());
        if let Some(c) = self.0 {
            c.fetch_sub(1, SeqCst);
        }
    }
}

/// `cuCtxSynchronize`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn ctx_synchronize(real: sig::cuCtxSynchronize) -> CUresult {
    let _s = Syncing::enter(Some(busy::Scope::Context));
    // SAFETY: no arguments.
    unsafe { real() }
}

/// `cuStreamSynchronize`; `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn stream_synchronize<const PTSZ: bool>(
    real: sig::cuStreamSynchronize,
    stream: CUstream,
) -> CUresult {
    let _s = Syncing::enter(Some(busy::Scope::Stream(stream, PTSZ)));
    // SAFETY: forwarding the caller's argument.
    unsafe { real(stream) }
}

/// `cuEventSynchronize`: waits for an event of some stream (the busy period stays open).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn event_synchronize(real: sig::cuEventSynchronize, event: CUevent) -> CUresult {
    let _s = Syncing::enter(None);
    // SAFETY: forwarding the caller's argument.
    unsafe { real(event) }
}
