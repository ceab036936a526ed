//! Synchronize calls. A thread waiting for its own queued work tells the scheduler the tenant
//! is busy even though it launches nothing (a per-device counter in the accounting segment), so
//! a holder that synchronizes between batches keeps its slice instead of looking idle. A
//! synchronize that covered all queued work also empties the estimate of queued work
//! (`crate::bound`), and when it leaves a contended latency-class holder with nothing in flight
//! the daemon is told at once (`crate::gate::idle`).
//!
//! Handlers of the entry-point table (`Sync`).

use super::table::sig;
use crate::busy;
use crate::cuda_types::*;
use crate::registration::{Access, Registration, access};
use std::sync::atomic::Ordering::SeqCst;

/// Counts the calling thread as synchronizing on its device while alive, and brackets the
/// busy period the call may end (see `crate::busy`).
struct Syncing {
    /// The registration and the device the call waits on.
    on: Option<(&'static Registration, usize)>,
    /// The busy period's end event, for [`busy::after_sync`].
    end: Option<(usize, u64)>,
    /// What the call waits for: the whole context, or a stream (for `crate::bound`).
    scope: Option<(bool, Option<(CUstream, bool)>)>,
    /// `crate::bound`'s launch count before the call.
    launched: u64,
}

impl Syncing {
    fn enter(scope: Option<busy::Scope>) -> Self {
        let Access::Registered(reg) = access() else {
            return Syncing {
                on: None,
                end: None,
                scope: None,
                launched: 0,
            };
        };
        let device = super::init::working_device(reg).ok().flatten();
        if let Some(d) = device {
            reg.accounting.devices[d].syncing.fetch_add(1, SeqCst);
        }
        let covers = match &scope {
            Some(busy::Scope::Context) => Some((true, None)),
            Some(busy::Scope::Stream(s, ptsz)) => Some((false, Some((*s, *ptsz)))),
            None => None,
        };
        let end = device
            .zip(scope)
            .filter(|_| !crate::captures::any())
            .and_then(|(d, s)| busy::before_sync(d, s));
        Syncing {
            on: device.map(|d| (reg, d)),
            end,
            scope: covers,
            launched: device.map_or(0, crate::bound::before_sync),
        }
    }

    /// The call returned `rc`.
    fn done(self, rc: CUresult) -> CUresult {
        if rc == CUDA_SUCCESS
            && let (Some((_, d)), Some((context, stream))) = (self.on, self.scope)
        {
            crate::bound::synchronized(d, self.launched, context, stream);
        }
        rc
    }
}

impl Drop for Syncing {
    fn drop(&mut self) {
        busy::after_sync(self.end.take());
        if let Some((reg, d)) = self.on {
            let left = reg.accounting.devices[d].syncing.fetch_sub(1, SeqCst) - 1;
            if left == 0 {
                crate::gate::idle(reg, d);
            }
        }
    }
}

/// `cuCtxSynchronize`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn ctx_synchronize(real: sig::cuCtxSynchronize) -> CUresult {
    let s = Syncing::enter(Some(busy::Scope::Context));
    // SAFETY: no arguments.
    s.done(unsafe { real() })
}

/// `cuStreamSynchronize`; `PTSZ`: `_ptsz`.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn stream_synchronize<const PTSZ: bool>(
    real: sig::cuStreamSynchronize,
    stream: CUstream,
) -> CUresult {
    let s = Syncing::enter(Some(busy::Scope::Stream(stream, PTSZ)));
    // SAFETY: forwarding the caller's argument.
    s.done(unsafe { real(stream) })
}

/// `cuEventSynchronize`: waits for an event of some stream (the busy period stays open).
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn event_synchronize(real: sig::cuEventSynchronize, event: CUevent) -> CUresult {
    let s = Syncing::enter(None);
    // SAFETY: forwarding the caller's argument.
    s.done(unsafe { real(event) })
}
