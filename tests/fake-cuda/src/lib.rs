//! Fake CUDA driver (`libcuda.so.1`) on the simulated GPU of the `fakegpu` crate.
//!
//! Modules, one job each:
//! - [`types`]: C ABI types, `CUresult` codes, pointer helpers, the panic guard;
//! - [`errors`]: error names and strings;
//! - [`driver`]: per-process state created by `cuInit` (reset in a forked child);
//! - [`context`]: contexts and the per-thread context stack;
//! - [`memory`]: allocations, host memory, pools, VMM, arrays;
//! - [`stream`]: streams (worker threads), legacy NULL-stream semantics, events;
//! - [`graph`]: graphs, executable graphs, stream capture, graph memory pools;
//! - [`module`]: modules/libraries (PTX `.entry` parsing) and functions;
//! - [`procaddr`]: the `cuGetProcAddress` table;
//! - `exports`: the exported `extern "C"` entry points.

/// Defines exported CUDA entry points: `extern "C"`, unmangled, panics caught, body returns
/// `Res<()>`.
macro_rules! cuda_fn {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block)*) => {$(
        #[doc = concat!("`", stringify!($name), "` of the CUDA driver API.\n\n# Safety\n",
            "Pointer arguments must be valid as the CUDA driver API documents.")]
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments, non_snake_case)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $crate::types::CUresult {
            $crate::types::guard_named(stringify!($name), move || -> $crate::types::Res<()> { $body })
        }
    )*};
}

pub mod context;
pub mod driver;
pub mod errors;
pub mod graph;
pub mod memory;
pub mod module;
pub mod procaddr;
pub mod stream;
pub mod types;

mod exports;

pub use exports::*;
