//! `cuGetProcAddress`: answers exactly as NVIDIA's 550 driver does, from `procaddr.tsv` (generated
//! from that driver by `scripts/generate-procaddr-table.sh`, compiled in by `build.rs`).
//!
//! The table holds, for every API name and flags class, the versions at which the answer changes:
//! the `CUresult`, the symbol status and which export the pointer is. A request takes the last row
//! whose version is <= the requested one. What the driver does, and so the fake:
//! - `cuGetProcAddress_v2` returns `CUDA_SUCCESS` even for a name it lacks (status
//!   `SYMBOL_NOT_FOUND`) or a version older than the name (status `VERSION_NOT_SUFFICIENT`, also
//!   for a per-thread request below the `_ptsz`/`_ptds` variant's version), writing a null pointer;
//! - `cuGetProcAddress` (CUDA 11.3) returns `CUDA_ERROR_NOT_FOUND` in those cases and leaves the
//!   pointer untouched;
//! - flags: `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM` (bit 1) selects the per-thread class,
//!   else `LEGACY_STREAM` (1) or `DEFAULT` (0); any bit above is `CUDA_ERROR_INVALID_VALUE` with
//!   nothing written;
//! - the version is compared unsigned (a negative one is newer than every variant).
//!
//! Every pointer handed out is the fake's own export of the variant the driver hands out (the
//! library is linked `-Bsymbolic`); what the fake does not simulate is a
//! `CUDA_ERROR_NOT_SUPPORTED` stub of that name (`exports::unsupported`).

use crate::types::{CUresult, err};
use std::cmp::Ordering;
use std::ffi::{c_int, c_void};

/// `CU_GET_PROC_ADDRESS_SUCCESS`.
pub const SYMBOL_SUCCESS: c_int = 0;
/// `CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND`.
pub const SYMBOL_NOT_FOUND: c_int = 1;
/// `CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT`.
pub const VERSION_NOT_SUFFICIENT: c_int = 2;
/// `CU_GET_PROC_ADDRESS_LEGACY_STREAM`.
pub const FLAG_LEGACY: u64 = 1;
/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const FLAG_PTDS: u64 = 2;

/// Which variants a request's flags select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// `CU_GET_PROC_ADDRESS_DEFAULT`.
    Default,
    /// `CU_GET_PROC_ADDRESS_LEGACY_STREAM`.
    Legacy,
    /// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
    PerThread,
}

/// An export handed out.
#[derive(Debug)]
pub struct Symbol {
    /// Its name.
    pub name: &'static str,
    /// Its address.
    pub addr: *const (),
}

// SAFETY: `addr` is the address of a function of this library: immutable, valid for the life of
// the process, never dereferenced as data.
unsafe impl Sync for Symbol {}

/// One change point of the table.
#[derive(Debug)]
pub struct Row {
    /// The name asked for.
    pub name: &'static str,
    /// The flags class.
    pub class: Class,
    /// The first version this answer holds for.
    pub from: u32,
    /// The `CUresult` of `cuGetProcAddress_v2`.
    pub result: CUresult,
    /// The symbol status.
    pub status: u8,
    /// The pointer (`None`: null).
    pub symbol: Option<Symbol>,
}

include!(concat!(env!("OUT_DIR"), "/procaddr_table.rs"));

/// The answer to `name` at `version` with `flags`: the row, or `CUDA_ERROR_INVALID_VALUE` for
/// flags the driver rejects.
pub fn lookup(name: &[u8], version: c_int, flags: u64) -> Result<&'static Row, CUresult> {
    let class = match flags {
        f if f > 3 => return Err(err::INVALID_VALUE),
        f if f & FLAG_PTDS != 0 => Class::PerThread,
        FLAG_LEGACY => Class::Legacy,
        _ => Class::Default,
    };
    let known = rows(ROWS, |r| (r.name.as_bytes(), r.class).cmp(&(name, class)));
    let rows = match known {
        [] => rows(UNKNOWN, |r| r.class.cmp(&class)),
        known => known,
    };
    let version = version as u32;
    rows.iter()
        .take_while(|r| r.from <= version)
        .last()
        .ok_or(err::UNKNOWN)
}

/// The rows of a sorted `table` that `cmp` finds equal.
fn rows(table: &'static [Row], cmp: impl Fn(&Row) -> Ordering) -> &'static [Row] {
    let start = table.partition_point(|r| cmp(r) == Ordering::Less);
    let end = table.partition_point(|r| cmp(r) != Ordering::Greater);
    &table[start..end]
}

/// The address a row hands out (null for none).
pub fn address(row: &Row) -> *mut c_void {
    row.symbol
        .as_ref()
        .map_or(std::ptr::null_mut(), |s| s.addr as *mut c_void)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, v: c_int, flags: u64) -> (CUresult, u8, Option<&'static str>) {
        let r = lookup(name.as_bytes(), v, flags).unwrap();
        (r.result, r.status, r.symbol.as_ref().map(|s| s.name))
    }

    #[test]
    fn answers_like_the_550_driver() {
        let ok = |s| (0, SYMBOL_SUCCESS as u8, Some(s));
        let vns = (0, VERSION_NOT_SUFFICIENT as u8, None);
        assert_eq!(answer("cuMemAlloc", 3020, 0), ok("cuMemAlloc_v2"));
        assert_eq!(answer("cuMemAlloc", 2000, 1), ok("cuMemAlloc"));
        assert_eq!(answer("cuMemAlloc", 1000, 0), vns);
        assert_eq!(answer("cuMemAlloc", -5, 0), ok("cuMemAlloc_v2"));
        assert_eq!(answer("cuCtxCreate", 12090, 0), ok("cuCtxCreate_v3"));
        assert_eq!(answer("cuGetProcAddress", 11030, 0), ok("cuGetProcAddress"));
        assert_eq!(
            answer("cuGetProcAddress", 12000, 0),
            ok("cuGetProcAddress_v2")
        );
        assert_eq!(answer("cuLaunchKernel", 7000, 2), ok("cuLaunchKernel_ptsz"));
        assert_eq!(answer("cuLaunchKernel", 7000, 3), ok("cuLaunchKernel_ptsz"));
        assert_eq!(answer("cuLaunchKernel", 4000, 2), vns);
        assert_eq!(answer("cuLaunchKernel", 4000, 1), ok("cuLaunchKernel"));
        assert_eq!(answer("cuMemcpyHtoD", 3020, 2), vns);
        assert_eq!(answer("cuMemcpyHtoD", 3020, 0), ok("cuMemcpyHtoD_v2"));
        assert_eq!(answer("cuMemcpyHtoD", 7000, 2), ok("cuMemcpyHtoD_v2_ptds"));
        assert_eq!(answer("cuCtxSynchronize", 2000, 2), ok("cuCtxSynchronize"));
        let not_found = (0, SYMBOL_NOT_FOUND as u8, None);
        assert_eq!(answer("cuNoSuchThing", 12000, 0), not_found);
        assert_eq!(answer("cuMemAlloc_v2", 12000, 0), not_found);
        assert_eq!(answer("", 12000, 0), not_found);
        assert_eq!(lookup(b"cuInit", 2000, 4).unwrap_err(), err::INVALID_VALUE);
    }

    #[test]
    fn every_row_has_its_own_export() {
        for r in ROWS.iter().chain(UNKNOWN) {
            if let Some(s) = &r.symbol {
                assert!(!s.addr.is_null(), "{}", s.name);
                assert_eq!(r.status, SYMBOL_SUCCESS as u8, "{}", r.name);
            }
        }
    }
}
