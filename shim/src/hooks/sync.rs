//! Synchronize calls. A thread waiting for its own queued work tells the scheduler the tenant
//! is busy even though it launches nothing (a per-device counter in the accounting segment), so
//! a holder that synchronizes between batches keeps its slice instead of looking idle.
//!
//! Handlers of the entry-point table (`Sync`).

use super::table::sig;
use crate::cuda_types::*;
use crate::registration::{Access, access};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;

/// Counts the calling thread as synchronizing on its device while alive.
struct Syncing(Option<&'static AtomicU32>);

impl Syncing {
    fn enter() -> Self {
        let Access::Registered(reg) = access() else {
            return Syncing(None);
        };
        let device = super::init::working_device(reg).ok().flatten();
        let counter = device.map(|d| &reg.accounting.devices[d].syncing);
        if let Some(c) = counter {
            c.fetch_add(1, SeqCst);
        }
        Syncing(counter)
    }
}

impl Drop for Syncing {
    fn drop(&mut self) {
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
    let _s = Syncing::enter();
    // SAFETY: no arguments.
    unsafe { real() }
}

/// `cuStreamSynchronize`/`_ptsz`, `cuEventSynchronize`: waits on one stream or event.
///
/// # Safety
/// The C API's contract.
pub(super) unsafe fn synchronize_on<H>(
    real: unsafe extern "C" fn(H) -> CUresult,
    handle: H,
) -> CUresult {
    let _s = Syncing::enter();
    // SAFETY: forwarding the caller's argument.
    unsafe { real(handle) }
}
