//! The fake driver's `cuGetProcAddress` table, generated from a real driver: for every API name
//! and flags value, the versions at which the answer (`CUresult`, symbol status, which export)
//! changes. Asked at every `cudaVersion` from 0 to [`MAX_VERSION`] in steps of [`STEP`] (CUDA
//! versions are `1000 * major + 10 * minor`), through `cuGetProcAddress_v2`.
//!
//! The fake's committed copy is `tests/fake-cuda/procaddr.tsv`; running the same generator on the
//! fake must reproduce it, and running it on the real driver must too (the tests keep both true).

use crate::probe::{Api, Driver, FLAGS, flags_name, status_name};
use std::ffi::c_int;

/// The highest version asked (answers stay the same above a driver's newest variant).
pub const MAX_VERSION: c_int = 13000;
/// The version step.
pub const STEP: c_int = 10;

/// The header line of the table.
pub const HEADER: &str = "# name\tflags\tfrom_version\tresult\tstatus\tsymbol";

/// Every change point of `names` (in the order given) at `0..=MAX_VERSION` by `step`, one TSV line
/// each (`name flags from_version result status symbol`).
pub fn generate(driver: &Driver, names: &[String], step: c_int) -> Vec<String> {
    let mut out = Vec::new();
    for name in names {
        for flags in FLAGS {
            let mut last: Option<(i32, Option<c_int>, String)> = None;
            for version in (0..=MAX_VERSION).step_by(step.max(1) as usize) {
                let r = driver.resolve(Api::V2, name, version, flags);
                let key = (r.result, r.status, r.symbol);
                if last.as_ref() != Some(&key) {
                    out.push(format!(
                        "{name}\t{}\t{version}\t{}\t{}\t{}",
                        flags_name(flags),
                        key.0,
                        key.1.map_or_else(|| "-".into(), status_name),
                        key.2
                    ));
                    last = Some(key);
                }
            }
        }
    }
    out
}
