//! Faults a test injects into the fake NVML's process listing (what the daemon's footprint
//! measurement calls): NVML failing, or hanging as it does when a GPU falls off the bus or the
//! driver wedges. A file beside the state file names the fault; no file, no fault. Only the
//! compute-process lists look at it (one `stat` per call).

use std::io;
use std::path::{Path, PathBuf};

/// What the process listing does while the fault is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmlFault {
    /// Returns `NVML_ERROR_UNKNOWN`.
    Error,
    /// Blocks until the fault is cleared (or changed).
    Hang,
}

/// The fault file of the fake GPU whose state file is `state`.
pub fn nvml_fault_path(state: &Path) -> PathBuf {
    state.with_extension("nvml-fault")
}

/// The fault set for the fake GPU whose state file is `state`, if any.
pub fn nvml_fault(state: &Path) -> Option<NvmlFault> {
    match std::fs::read_to_string(nvml_fault_path(state)).ok()?.trim() {
        "error" => Some(NvmlFault::Error),
        "hang" => Some(NvmlFault::Hang),
        _ => None,
    }
}

/// Sets (or clears, with `None`) the fault of the fake GPU whose state file is `state`.
pub fn set_nvml_fault(state: &Path, fault: Option<NvmlFault>) -> io::Result<()> {
    let path = nvml_fault_path(state);
    match fault {
        Some(f) => {
            // Written whole, then renamed: a reader never sees half of it.
            let tmp = path.with_extension("nvml-fault.tmp");
            let text = match f {
                NvmlFault::Error => "error",
                NvmlFault::Hang => "hang",
            };
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        }
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_read_and_clear() {
        let state =
            std::env::temp_dir().join(format!("fakegpu-fault-{}.state", std::process::id()));
        assert_eq!(nvml_fault(&state), None);
        set_nvml_fault(&state, Some(NvmlFault::Hang)).unwrap();
        assert_eq!(nvml_fault(&state), Some(NvmlFault::Hang));
        set_nvml_fault(&state, Some(NvmlFault::Error)).unwrap();
        assert_eq!(nvml_fault(&state), Some(NvmlFault::Error));
        set_nvml_fault(&state, None).unwrap();
        set_nvml_fault(&state, None).unwrap();
        assert_eq!(nvml_fault(&state), None);
    }
}
