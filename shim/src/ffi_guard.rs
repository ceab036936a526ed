//! No panic crosses the C boundary: every export runs its body through [`guard`].

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`; if it panics, reports once on stderr and returns `on_panic`.
#[inline(always)]
pub fn guard<R: Copy>(on_panic: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            crate::diag::stderr(b"gpumux: internal error (panic) in the shim; the call failed\n");
            on_panic
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn catches() {
        assert_eq!(super::guard(7, || 1), 1);
        assert_eq!(super::guard(7, || panic!("boom")), 7);
    }
}
