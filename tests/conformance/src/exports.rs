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

/// The name a loader asks `cuGetProcAddress` for (one definition, shared with the shim).
pub use gpumux_common::cuda_abi::base_name;

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
    fn api_names() {
        assert!(is_cuda_api("cuInit"));
        assert!(!is_cuda_api("cudbgApiInit"));
        assert!(is_nvml_api("nvmlInit_v2"));
        assert!(!is_nvml_api("nvml"));
    }
}
