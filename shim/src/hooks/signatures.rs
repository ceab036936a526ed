//! The table's C types against `cuda.h`: every driver symbol the table declares must take the
//! parameters `cuda.h` gives it, in number, size and alignment (what decides how a C function's
//! arguments are passed). A wrapper declared with a parameter too many or too few reads or
//! passes garbage: undefined behaviour no other test sees. `cuda.h` is read as cudarc's bindgen
//! of it (`cudarc::driver::sys`, the workspace's CUDA 12.9 feature), from cudarc's source.
//!
//! `_ptsz`/`_ptds` variants take what their default-stream variant takes. Variants `cuda.h` no
//! longer declares to bindgen (the pre-3.2 ABI and the first variant of a later-versioned
//! function, declared only under `__CUDA_API_VERSION_INTERNAL`) are checked against their
//! declarations there, written out below.

use super::{Layout, table::SIGNATURES};
use std::collections::HashMap;

/// Symbols declared in `cuda.h` only under `__CUDA_API_VERSION_INTERNAL` (bindgen does not see
/// them), with their parameters there.
const INTERNAL: &[(&str, &[&str])] = &[
    ("cuMemAlloc", &["*mut u32", "c_uint"]),
    (
        "cuMemAllocPitch",
        &["*mut u32", "*mut c_uint", "c_uint", "c_uint", "c_uint"],
    ),
    ("cuArrayCreate", &["*mut CUarray", "*const c_void"]),
    ("cuArray3DCreate", &["*mut CUarray", "*const c_void"]),
    ("cuMemFree", &["u32"]),
    ("cuMemGetInfo", &["*mut c_uint", "*mut c_uint"]),
    ("cuDeviceTotalMem", &["*mut c_uint", "CUdevice"]),
    ("cuCtxCreate", &["*mut CUcontext", "c_uint", "CUdevice"]),
    ("cuCtxDestroy", &["CUcontext"]),
    ("cuDevicePrimaryCtxRelease", &["CUdevice"]),
    ("cuDevicePrimaryCtxReset", &["CUdevice"]),
    (
        "cuGraphInstantiate",
        &[
            "*mut CUgraphExec",
            "CUgraph",
            "*mut CUgraphNode",
            "*mut c_char",
            "usize",
        ],
    ),
    ("cuStreamBeginCapture", &["CUstream"]),
    (
        "cuGraphInstantiate_v2",
        &[
            "*mut CUgraphExec",
            "CUgraph",
            "*mut CUgraphNode",
            "*mut c_char",
            "usize",
        ],
    ),
    (
        "cuGetProcAddress",
        &["*const c_char", "*mut *mut c_void", "c_int", "cuuint64_t"],
    ),
];

/// The feature of cudarc the workspace builds with (its `cuda.h` version).
const CUDA_FEATURE: &str = "\"cuda-12090\"";

/// What cudarc's bindgen says: functions (parameter and return types, as written), type
/// aliases (newtype structs included) and enums (with their representation's layout).
#[derive(Default)]
struct Bindings {
    functions: HashMap<String, (Vec<String>, String)>,
    aliases: HashMap<String, String>,
    enums: HashMap<String, Layout>,
}

const POINTER: Layout = Layout::of::<*mut u8>();

impl Bindings {
    fn parse(text: &str) -> Bindings {
        let mut b = Bindings::default();
        // Attributes of the next item: whether it is compiled for the workspace's CUDA version,
        // and an enum's representation.
        let mut applies = true;
        let mut repr = Layout::of::<u32>();
        for line in text.lines() {
            if let Some(cfg) = line.strip_prefix("#[cfg(") {
                applies = !cfg.contains("feature = \"cuda-") || cfg.contains(CUDA_FEATURE);
                continue;
            }
            if let Some(r) = line.strip_prefix("#[repr(") {
                repr = match r.trim_end_matches(")]") {
                    "u8" | "i8" => Layout::of::<u8>(),
                    "u16" | "i16" => Layout::of::<u16>(),
                    "u64" | "i64" => Layout::of::<u64>(),
                    _ => Layout::of::<u32>(),
                };
                continue;
            }
            if line.starts_with("#[") || line.starts_with(' ') || line.is_empty() {
                continue;
            }
            if applies {
                if let Some(rest) = line.strip_prefix("pub unsafe fn ")
                    && let Some((name, rest)) = rest.split_once('(')
                    && let Some((params, ret)) = rest.rsplit_once(") -> ")
                {
                    let params = split_top_level(params)
                        .into_iter()
                        .filter_map(|p| p.split_once(':').map(|(_, t)| t.trim().to_string()))
                        .collect();
                    let ret = ret.trim_end_matches('{').trim().to_string();
                    b.functions.insert(name.to_string(), (params, ret));
                } else if let Some(rest) = line.strip_prefix("pub type ")
                    && let Some((name, ty)) = rest.split_once(" = ")
                {
                    b.aliases
                        .insert(name.to_string(), ty.trim_end_matches(';').to_string());
                } else if let Some(rest) = line.strip_prefix("pub use self::")
                    && let Some((target, name)) = rest.trim_end_matches(';').split_once(" as ")
                {
                    b.aliases.insert(name.to_string(), target.to_string());
                } else if let Some(rest) = line.strip_prefix("pub struct ")
                    && let Some((name, inner)) = rest.split_once("(pub ")
                {
                    // A `#[repr(transparent)]` newtype (bindgen's "newtype enums").
                    b.aliases
                        .insert(name.to_string(), inner.trim_end_matches(");").to_string());
                } else if let Some(rest) = line.strip_prefix("pub enum ") {
                    let name = rest.trim_end_matches('{').trim();
                    b.enums.insert(name.to_string(), repr);
                }
            }
            applies = true;
            repr = Layout::of::<u32>();
        }
        b
    }

    /// The layout of a type as bindgen (or the `INTERNAL` list) writes it.
    fn layout(&self, ty: &str) -> Result<Layout, String> {
        let ty = ty.trim();
        if ty.starts_with("*mut ")
            || ty.starts_with("*const ")
            || ty.starts_with("::core::option::Option<unsafe extern \"C\" fn")
        {
            return Ok(POINTER);
        }
        let plain = ty
            .trim_start_matches("::core::ffi::")
            .trim_start_matches("::std::os::raw::");
        Ok(match plain {
            "c_char" | "c_uchar" | "c_schar" | "u8" | "i8" => Layout::of::<u8>(),
            "c_ushort" | "c_short" | "u16" | "i16" => Layout::of::<u16>(),
            "c_uint" | "c_int" | "u32" | "i32" => Layout::of::<u32>(),
            "c_ulonglong" | "c_longlong" | "c_ulong" | "c_long" | "u64" | "i64" => {
                Layout::of::<u64>()
            }
            "usize" | "isize" => Layout::of::<usize>(),
            _ => {
                if let Some(l) = self.enums.get(plain) {
                    *l
                } else if let Some(target) = self.aliases.get(plain) {
                    self.layout(target)?
                } else {
                    return Err(format!(
                        "type `{ty}` is passed by value and is neither an integer, an enum nor a \
                         pointer in cudarc's bindings"
                    ));
                }
            }
        })
    }
}

/// Splits a parameter list at its top-level commas.
fn split_top_level(params: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in params.char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !params[start..].trim().is_empty() {
        out.push(&params[start..]);
    }
    out
}

/// cudarc's `src/driver/sys/mod.rs`, found through `cargo metadata`.
fn cudarc_bindings() -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run `cargo metadata` to find cudarc's source");
    assert!(out.status.success(), "cargo metadata failed: {out:?}");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "cudarc"))
        .and_then(|p| p["manifest_path"].as_str())
        .expect("cudarc among the workspace's packages");
    let path = std::path::Path::new(manifest)
        .parent()
        .expect("cudarc's directory")
        .join("src/driver/sys/mod.rs");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `cu*` symbol of the table takes what `cuda.h` declares: same number of parameters,
/// each of the same size and alignment, and a `CUresult`.
#[test]
fn table_signatures_match_cuda_h() {
    let b = Bindings::parse(&cudarc_bindings());
    assert!(
        b.functions.len() > 400,
        "cudarc's bindings parsed to {} functions: has its source layout changed?",
        b.functions.len()
    );
    let result = b.layout("CUresult").expect("CUresult");
    let mut differences = Vec::new();
    let mut checked = 0;
    for s in SIGNATURES.iter().filter(|s| s.lib == "cuda") {
        let header = s
            .symbol
            .strip_suffix("_ptsz")
            .or_else(|| s.symbol.strip_suffix("_ptds"))
            .unwrap_or(s.symbol);
        let theirs: Result<Vec<Layout>, String> = match b.functions.get(header) {
            Some((params, ret)) => {
                if b.layout(ret) != Ok(result) {
                    differences.push(format!("{}: returns {ret} in cuda.h", s.symbol));
                }
                params.iter().map(|p| b.layout(p)).collect()
            }
            None => match INTERNAL.iter().find(|(n, _)| *n == header) {
                Some((_, params)) => params.iter().map(|p| b.layout(p)).collect(),
                None => Err("not in cuda.h (nor in the INTERNAL list)".into()),
            },
        };
        let theirs = match theirs {
            Ok(t) => t,
            Err(e) => {
                differences.push(format!("{}: {e}", s.symbol));
                continue;
            }
        };
        checked += 1;
        if s.ret != result {
            differences.push(format!("{}: does not return a CUresult", s.symbol));
        }
        if s.params.len() != theirs.len() {
            differences.push(format!(
                "{}: {} parameters declared, {} in cuda.h ({header})",
                s.symbol,
                s.params.len(),
                theirs.len()
            ));
            continue;
        }
        for (i, (ours, theirs)) in s.params.iter().zip(&theirs).enumerate() {
            if ours != theirs {
                differences.push(format!(
                    "{}: parameter {} is {ours:?}, {theirs:?} in cuda.h",
                    s.symbol,
                    i + 1
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} symbols checked");
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// The check itself: a cooperative launch declared with `cuLaunchKernel`'s 11 parameters
/// (cuda.h has 10) is caught; bindgen's aliases and enums resolve.
#[test]
fn the_check_catches_a_parameter_too_many() {
    let b = Bindings::parse(&cudarc_bindings());
    let (params, _) = &b.functions["cuLaunchCooperativeKernel"];
    assert_eq!(params.len(), 10);
    let (params, _) = &b.functions["cuLaunchKernel"];
    assert_eq!(params.len(), 11);
    assert_eq!(b.layout("CUstream"), Ok(POINTER));
    assert_eq!(b.layout("CUdeviceptr"), Ok(Layout::of::<u64>()));
    assert_eq!(b.layout("CUjit_option"), Ok(Layout::of::<u32>()));
    assert_eq!(b.layout("CUhostFn"), Ok(POINTER));
    assert!(b.layout("CUuuid").is_err(), "a struct by value is refused");
    let coop = SIGNATURES
        .iter()
        .find(|s| s.symbol == "cuLaunchCooperativeKernel")
        .expect("declared");
    assert_eq!(coop.params.len(), 10);
}
