//! The functions a shared library exports (read from its ELF dynamic symbol table, not by loading
//! it), and the API base names a loader asks `cuGetProcAddress` for.

use object::{Object, ObjectSymbol, SymbolKind};
use std::path::Path;

/// Why a library's exports could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The library.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an ELF shared object `object` can parse.
    #[error("{path} is not an ELF shared library: {source}")]
    Parse {
        /// The library.
        path: String,
        /// The parse error.
        source: object::Error,
    },
}

/// Every function the library at `path` exports (defined, global, in `.dynsym`), sorted, without
/// duplicates.
pub fn exported_functions(path: &Path) -> Result<Vec<String>, ExportsError> {
    let data = std::fs::read(path).map_err(|source| ExportsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|source| ExportsError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    let mut names: Vec<String> = file
        .dynamic_symbols()
        .filter(|s| s.is_definition() && s.is_global() && s.kind() == SymbolKind::Text)
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Whether `name` is a CUDA driver API function name (`cu` + an upper-case letter: `cuMemAlloc`,
/// not the debugger's `cudbg*` data).
pub fn is_cuda_api(name: &str) -> bool {
    name.strip_prefix("cu")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_uppercase())
}

/// Whether `name` is an NVML function name.
pub fn is_nvml_api(name: &str) -> bool {
    name.strip_prefix("nvml")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_uppercase())
}

/// The name a loader asks `cuGetProcAddress` for: the export without its per-thread suffix
/// (`_ptsz`, `_ptds`) and ABI version suffix (`_v2`, `_v3`, ...).
pub fn base_name(export: &str) -> &str {
    let s = export
        .strip_suffix("_ptsz")
        .or_else(|| export.strip_suffix("_ptds"))
        .unwrap_or(export);
    match s.rsplit_once("_v") {
        Some((base, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => s,
    }
}

/// The sorted, distinct API base names of a set of `cu*` exports.
pub fn cuda_base_names(exports: &[String]) -> Vec<String> {
    let mut v: Vec<String> = exports
        .iter()
        .filter(|n| is_cuda_api(n))
        .map(|n| base_name(n).to_owned())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names() {
        assert_eq!(base_name("cuMemAlloc_v2"), "cuMemAlloc");
        assert_eq!(base_name("cuMemcpyHtoD_v2_ptds"), "cuMemcpyHtoD");
        assert_eq!(base_name("cuLaunchKernel_ptsz"), "cuLaunchKernel");
        assert_eq!(base_name("cuGetProcAddress_v2"), "cuGetProcAddress");
        assert_eq!(base_name("cuMemcpy3D_v2"), "cuMemcpy3D");
        assert_eq!(base_name("cuMemcpy3DPeer"), "cuMemcpy3DPeer");
        assert_eq!(base_name("cuInit"), "cuInit");
        assert_eq!(
            base_name("cuGraphExecKernelNodeSetParams_v2"),
            "cuGraphExecKernelNodeSetParams"
        );
        assert!(is_cuda_api("cuInit"));
        assert!(!is_cuda_api("cudbgApiInit"));
        assert!(is_nvml_api("nvmlInit_v2"));
        assert!(!is_nvml_api("nvml"));
    }
}
