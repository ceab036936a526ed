//! Synchronize calls. A thread waiting for its own queued work tells the scheduler the tenant
//! is busy even though it launches nothing (a per-device counter in the accounting segment), so
//! a holder that synchronizes between batches keeps its slice instead of looking idle.

#![allow(non_snake_case)]

use super::real;
use crate::busy;
use crate::cuda_types::*;
use crate::ffi_guard::guard;
use crate::registration::{Access, access};
use std::ffi::c_void;
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
        let end = device.zip(scope).and_then(|(d, s)| busy::before_sync(d, s));
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

/// # Safety
/// C ABI entry point; `cuCtxSynchronize`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let f =
            real!(cuCtxSynchronize: unsafe extern "C" fn() -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
        let _s = Syncing::enter(Some(busy::Scope::Context));
        // SAFETY: no arguments.
        unsafe { f() }
    })
}

macro_rules! sync_on {
    ($name:ident, $handle:ty, $scope:expr) => {
        /// # Safety
        /// C ABI entry point; arguments as documented for the synchronize call.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(handle: $handle) -> CUresult {
            guard(CUDA_ERROR_UNKNOWN, || {
                let f = real!($name: unsafe extern "C" fn($handle) -> CUresult, CUDA_ERROR_NOT_INITIALIZED);
                #[allow(clippy::redundant_closure_call)]
                let _s = Syncing::enter(($scope)(handle));
                // SAFETY: forwarding the caller's argument.
                unsafe { f(handle) }
            })
        }
    };
}
sync_on!(cuStreamSynchronize, CUstream, |s| Some(
    busy::Scope::Stream(s, false)
));
sync_on!(cuStreamSynchronize_ptsz, CUstream, |s| Some(
    busy::Scope::Stream(s, true)
));
sync_on!(cuEventSynchronize, *mut c_void, |_| None);
