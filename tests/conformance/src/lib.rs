//! Conformance with NVIDIA's real driver libraries (test-only, never packaged).
//!
//! - [`exports`]: a library's exported functions (from its ELF symbol table) and API base names;
//! - [`probe`]: what a loaded `libcuda.so.1` hands out through `cuGetProcAddress`/`_v2`, and a
//!   `libnvidia-ml.so.1` through `dlsym` (the `conformance-probe` binary prints it);
//! - [`cudart`]: what NVIDIA's CUDA runtime answers on a driver (`conformance-probe cudart`);
//! - [`table`]: the fake driver's `cuGetProcAddress` table generated from a real driver;
//! - [`oracle`]: where the real libraries are (`scripts/fetch-nvidia-libs.sh`);
//! - [`report`]: comparison results (`target/conformance/*.json`) and `docs/CONFORMANCE.md`
//!   (rendered by the `conformance-report` binary).

pub mod cudart;
pub mod exports;
pub mod oracle;
pub mod probe;
pub mod report;
pub mod table;
