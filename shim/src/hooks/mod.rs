//! The shim's driver-facing surface: one table ([`table`]) declares every driver and NVML
//! entry point the shim knows, once: its base name, its class (what the shim does with it),
//! and, for the ones the shim hooks or calls, each ABI variant's symbol with its C type and
//! the handler behind the shim's export. The submodules hold the handlers, one job each.
//!
//! From the table, [`entry_points!`] generates:
//! - a typed real-function slot per declared symbol (`table::slots::NAME`, a
//!   [`RealFn`](crate::real::RealFn) of the symbol's `unsafe extern "C" fn` type), read with
//!   [`real!`];
//! - the exported wrapper of each hooked symbol: panic-guarded, it fetches the real function
//!   and calls the handler with it and the caller's arguments (the compiler checks the
//!   handler's signature against the declared C type);
//! - [`lookup`] (symbol → real slot and wrapper) for `dlsym`, [`variants_of`] (base name →
//!   declared variants) for `cuGetProcAddress`, and [`ENTRY_POINTS`], the classification.
//!
//! A unit test rejects a base name or a symbol declared twice.

#![allow(non_snake_case)]

mod context;
#[cfg(not(test))]
mod dlsym;
mod graph;
pub(crate) mod init;
mod launch;
mod meminfo;
mod memory;
mod modules;
mod nvml_procs;
mod procaddress;
#[cfg(test)]
mod signatures;
mod sync;
pub(crate) mod table;

pub(crate) use context::current_context;
pub(crate) use gpumux_common::cuda_abi::base_name;
pub(crate) use table::{ENTRY_POINTS, lookup, variants_of};

use std::sync::atomic::{AtomicBool, Ordering};

/// What the shim does with a driver or NVML entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Initialisation: registers the process with gpumuxd (or refuses GPU use) first.
    Init,
    /// `cuGetProcAddress`: the driver resolves; the shim substitutes its wrapper of the variant
    /// the driver returned.
    Resolve,
    /// Allocates device memory: charged to the tenant first, `CUDA_ERROR_OUT_OF_MEMORY` over
    /// its quota.
    Alloc,
    /// Frees device memory an `Alloc` entry point charged: the tenant gets the bytes back.
    Free,
    /// Launches device work: waits for the tenant's compute slice (gated).
    Launch,
    /// Waits for device work: the tenant counts as busy while a thread waits.
    Sync,
    /// Reports device memory: the tenant's quota as the device's size.
    MemReport,
    /// Creates or destroys a context: tracked for draining; created under the tenant's limit
    /// (its own memory reserved, then measured); a teardown returns the memory it frees.
    Context,
    /// Loads or unloads code into device memory (modules, libraries): a load is held to the
    /// tenant's limit (the image's size reserved, then measured by the daemon); an unload is
    /// measured after it.
    Footprint,
    /// Lists the device's processes (NVML): filtered to the tenant's own.
    ProcessList,
    /// Maps memory allocated elsewhere (another process, another API, a handle charged
    /// already): not charged again; its release or close refunds nothing (only what this
    /// process charged is ever given back). Called through untouched, except where the
    /// driver may hand back a handle this process charged (one more reference to it).
    Import,
    /// Commits or releases graph memory (the driver's graph memory pool): instantiation learns
    /// an executable graph's allocation bytes, upload charges them (launch too, as `Launch`),
    /// destruction and trims give back what the pool returns to the device.
    GraphMemory,
    /// Begins or ends a stream capture: recorded, so the drain waits for captures to end
    /// (synchronizing a capturing stream's context would invalidate the capture).
    Capture,
    /// Neither allocates, frees, launches, waits for nor reports device memory: called
    /// through untouched.
    PassThrough,
}

impl Class {
    /// Whether the shim must wrap every ABI variant the driver exports (a variant left out
    /// would be a way around the quota or the gate; checked against the real driver's
    /// exports by the tests, and at run time by [`warn_undeclared_variant`]).
    pub(crate) fn hooked(self) -> bool {
        !matches!(self, Class::Import | Class::PassThrough)
    }
}

/// One entry point of the table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryPoint {
    /// `"cuda"` or `"nvml"`.
    pub(crate) lib: &'static str,
    /// The base name, as `cuGetProcAddress` is asked for it.
    pub(crate) name: &'static str,
    pub(crate) class: Class,
}

/// Size and alignment of a parameter or return type: what decides how a C function's argument
/// is passed (every parameter of the driver API is an integer, an enum or a pointer).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) size: usize,
    pub(crate) align: usize,
}

#[cfg(test)]
impl Layout {
    pub(crate) const fn of<T>() -> Layout {
        Layout {
            size: std::mem::size_of::<T>(),
            align: std::mem::align_of::<T>(),
        }
    }
}

/// A declared symbol's C type, as the table gives it.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Signature {
    pub(crate) lib: &'static str,
    pub(crate) symbol: &'static str,
    pub(crate) params: &'static [Layout],
    pub(crate) ret: Layout,
}

/// The class of a base name in `lib` (`"cuda"`/`"nvml"`), `None` when the table does not
/// know it.
pub(crate) fn class_of(lib: &str, base: &str) -> Option<Class> {
    ENTRY_POINTS
        .iter()
        .find(|e| e.lib == lib && e.name == base)
        .map(|e| e.class)
}

/// Says once per process that the application reached `symbol`, a variant of an entry point
/// the shim must hook, that this build's table does not declare (a driver newer than the
/// shim): calls through it bypass the quota or the compute gate.
pub(crate) fn warn_undeclared_variant(symbol: &[u8]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let mut msg = Vec::with_capacity(256);
    msg.extend_from_slice(b"gpumux: the driver hands out ");
    msg.extend_from_slice(symbol);
    msg.extend_from_slice(
        b", a variant this gpumux does not know; calls through it are not held to the quota \
          or the compute share: upgrade gpumux to one that supports this driver\n",
    );
    crate::diag::stderr(&msg);
}

/// Declares the entry points: see the module doc and [`table`].
macro_rules! entry_points {
    ($(
        $lib:ident ($library:path, panic = $panic:expr, missing = $missing:expr) {
            $($class:ident : [
                $($base:ident $({
                    $($sym:ident ( $($arg:ident : $ty:ty),* $(,)? ) -> $ret:ty
                        $(=> $handler:path $(, missing = $miss:expr)?)? ;)*
                })?),* $(,)?
            ]),* $(,)?
        }
    )*) => {
        /// The C type of every declared symbol, named like the symbol.
        #[allow(non_camel_case_types)]
        pub(crate) mod sig {
            use super::*;
            $($($($($(
                pub(crate) type $sym = unsafe extern "C" fn($($ty),*) -> $ret;
            )*)?)*)*)*
        }

        /// The real function behind every declared symbol, named like the symbol.
        #[allow(non_upper_case_globals)]
        pub(crate) mod slots {
            use super::*;
            use crate::real::RealFn;
            $($($($($(
                pub(crate) static $sym: RealFn<super::sig::$sym> =
                    // SAFETY: the table gives each symbol the C type its library's header
                    // declares for it.
                    unsafe { RealFn::new(
                        match std::ffi::CStr::from_bytes_with_nul(
                            concat!(stringify!($sym), "\0").as_bytes(),
                        ) {
                            Ok(name) => name,
                            Err(_) => panic!("a symbol name has an interior NUL"),
                        },
                        &$library,
                    ) };
            )*)?)*)*)*
        }

        $($($($($(
            $crate::hooks::export! {
                $sym ($($arg : $ty),*) -> $ret, panic = $panic, missing = $missing;
                $($handler $(, $miss)?)?
            }
        )*)?)*)*)*

        /// The real slot and the shim's wrapper of a hooked symbol (`None` for symbols the
        /// shim does not hook).
        pub(crate) fn lookup(
            name: &[u8],
        ) -> Option<(&'static $crate::real::RawSlot, *mut std::ffi::c_void)> {
            let name = std::str::from_utf8(name).ok()?;
            match name {
                $($($($($(
                    stringify!($sym) =>
                        $crate::hooks::wrapper!(slots::$sym, $sym $(, $handler)?),
                )*)?)*)*)*
                _ => None,
            }
        }

        /// The declared ABI variants (exported symbols) of a base name.
        pub(crate) fn variants_of(base: &str) -> &'static [&'static str] {
            match base {
                $($($(
                    stringify!($base) => &[$($(stringify!($sym),)*)?],
                )*)*)*
                _ => &[],
            }
        }

        /// Every declared symbol's C type as layouts (for the test that compares the table
        /// with `cuda.h`, [`signatures`]).
        #[cfg(test)]
        pub(crate) const SIGNATURES: &[$crate::hooks::Signature] = &[
            $($($($($(
                $crate::hooks::Signature {
                    lib: stringify!($lib),
                    symbol: stringify!($sym),
                    params: &[$($crate::hooks::Layout::of::<$ty>()),*],
                    ret: $crate::hooks::Layout::of::<$ret>(),
                },
            )*)?)*)*)*
        ];

        /// Every entry point, classified.
        pub(crate) const ENTRY_POINTS: &[$crate::hooks::EntryPoint] = &[
            $($($(
                $crate::hooks::EntryPoint {
                    lib: stringify!($lib),
                    name: stringify!($base),
                    class: $crate::hooks::Class::$class,
                },
            )*)*)*
        ];
    };
}
pub(crate) use entry_points;

/// The exported wrapper of one hooked symbol (nothing for a symbol the shim only calls).
macro_rules! export {
    ($sym:ident ($($arg:ident : $ty:ty),*) -> $ret:ty, panic = $panic:expr, missing = $missing:expr;) => {};
    ($sym:ident ($($arg:ident : $ty:ty),*) -> $ret:ty, panic = $panic:expr, missing = $missing:expr;
        $handler:path $(, $miss:expr)?) => {
        #[doc = concat!("`", stringify!($sym), "`: the shim's wrapper (see the entry-point table).")]
        ///
        /// # Safety
        /// C ABI entry point: the caller keeps the driver API's contract for this function.
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $sym($($arg: $ty),*) -> $ret {
            $crate::ffi_guard::guard($panic, || {
                let Some(real) = slots::$sym.get() else {
                    return $crate::hooks::first!($($miss,)? $missing);
                };
                // SAFETY: the caller keeps the C API's contract for these arguments, which is
                // the handler's precondition; `real` is the driver's function of this symbol.
                unsafe { $handler(real, $($arg),*) }
            })
        }
    };
}
pub(crate) use export;

/// `Some((slot, wrapper))` for a hooked symbol, `None` for one the shim only calls.
macro_rules! wrapper {
    ($slot:path, $sym:ident) => {
        None
    };
    ($slot:path, $sym:ident, $handler:path) => {
        Some(($slot.raw(), $sym as *mut std::ffi::c_void))
    };
}
pub(crate) use wrapper;

/// The first of its arguments (a per-symbol override, else the library's default).
macro_rules! first {
    ($e:expr $(, $rest:expr)*) => {
        $e
    };
}
pub(crate) use first;

/// The real function behind a declared symbol (typed by the table), or `return` (with
/// `$missing`, if given) from the enclosing function when the library lacks it.
macro_rules! real {
    ($name:ident) => {
        match $crate::hooks::table::slots::$name.get() {
            Some(f) => f,
            None => return,
        }
    };
    ($name:ident, $missing:expr) => {
        match $crate::hooks::table::slots::$name.get() {
            Some(f) => f,
            None => return $missing,
        }
    };
}
pub(crate) use real;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The table's own consistency: one entry per base name, each variant named after its
    /// base, hooked classes hook, pass-through and graph-memory entries hook nothing, and
    /// `lookup` answers exactly the hooked symbols.
    #[test]
    fn table_is_consistent() {
        let mut seen = HashSet::new();
        let mut symbols = HashSet::new();
        for e in ENTRY_POINTS {
            assert!(seen.insert((e.lib, e.name)), "{} declared twice", e.name);
            assert_eq!(base_name(e.name), e.name, "{} is not a base name", e.name);
            let variants = variants_of(e.name);
            for v in variants {
                assert_eq!(base_name(v), e.name, "{v} declared under {}", e.name);
                assert!(symbols.insert(*v), "{v} declared twice");
            }
            let hooked = variants
                .iter()
                .filter(|v| lookup(v.as_bytes()).is_some())
                .count();
            if e.class.hooked() {
                assert!(
                    hooked > 0,
                    "{}: class {:?} but nothing hooked",
                    e.name,
                    e.class
                );
            } else if matches!(e.class, Class::PassThrough) {
                assert_eq!(hooked, 0, "{}: class {:?} but hooked", e.name, e.class);
            }
            assert_eq!(class_of(e.lib, e.name), Some(e.class));
        }
        assert!(lookup(b"cuMemAlloc_v2").is_some());
        assert!(lookup(b"cuCtxGetDevice").is_none(), "called, not hooked");
        assert!(lookup(b"cuMemcpy").is_none());
        assert_eq!(class_of("cuda", "cuMemcpy"), Some(Class::PassThrough));
        assert_eq!(class_of("cuda", "cuNoSuchFunction"), None);
    }

    /// Every function NVIDIA's drivers and NVML libraries export is classified by the table,
    /// and every exported variant of an entry point the shim hooks is wrapped (a variant left
    /// out would be a way around the quota, the gate or the process-list filter). A row of
    /// docs/CONFORMANCE.md per driver.
    #[test]
    fn table_knows_every_export_of_nvidias_drivers() {
        use gpumux_conformance::{exports::exported_functions, oracle, report::Comparison};
        let mut failures = Vec::new();
        for branch in oracle::DRIVERS {
            let Some(driver) = oracle::require(branch) else {
                return;
            };
            let cuda = exported_functions(&driver.libcuda()).expect("read the driver's exports");
            let nvml = exported_functions(&driver.libnvml()).expect("read NVML's exports");
            let exports: Vec<(&str, &String)> = cuda
                .iter()
                .filter(|n| n.starts_with("cu"))
                .map(|n| ("cuda", n))
                .chain(
                    nvml.iter()
                        .filter(|n| gpumux_conformance::exports::is_nvml_api(n))
                        .map(|n| ("nvml", n)),
                )
                .collect();
            let mut differences = Vec::new();
            for &(lib, export) in &exports {
                let base = base_name(export);
                let Some(class) = class_of(lib, base) else {
                    differences.push(format!("{export}: {base} is not in the entry-point table"));
                    continue;
                };
                let hooked = class.hooked()
                    || variants_of(base)
                        .iter()
                        .any(|v| lookup(v.as_bytes()).is_some());
                if hooked && lookup(export.as_bytes()).is_none() {
                    differences.push(format!(
                        "{export}: a variant of {base} ({class:?}) the shim does not wrap"
                    ));
                }
            }
            let c = Comparison {
                id: format!("shim-table-{branch}"),
                section: "The shim's entry-point table".into(),
                driver: driver.version(),
                subject: "shim/src/hooks/table.rs".into(),
                method: "Every `cu*` function the driver exports and every `nvml*` function its \
                    libnvidia-ml exports (their ELF dynamic symbol tables) must have its base name \
                    in the shim's table, which says what the shim does with it (charged \
                    allocation, free, gated launch, synchronize, memory report, context \
                    lifecycle, footprint, process list filtered to the tenant's own, import, \
                    graph memory, capture, pass-through); every exported variant of an entry \
                    point the shim hooks must have the shim's wrapper."
                    .into(),
                compared: exports.len(),
                unit: "exports".into(),
                differences,
                note: None,
            };
            c.record();
            if !c.differences.is_empty() {
                failures.push(format!("{branch}:\n{}", c.differences.join("\n")));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
