//! `conformance-probe`: prints what a CUDA driver or NVML library hands out, one line per
//! resolution in a stable order, so two libraries (or one with and without an LD_PRELOAD shim) can
//! be compared with `diff`.
//!
//! ```text
//! conformance-probe cuda LIBCUDA [--names-from LIB] [--init]   # cuGetProcAddress/_v2 resolutions
//! conformance-probe nvml LIBNVML [--names-from LIB]            # what dlsym hands out per nvml* name
//! conformance-probe procaddr-table LIBCUDA [--names-from LIB]  # the fake's cuGetProcAddress table
//! conformance-probe cudart LIBCUDART                           # the CUDA runtime's first answers
//! ```
//! `--names-from` takes the names to ask from another library's exports (e.g. ask the fake the real
//! driver's names); by default the probed library's own exports. `--init` calls `cuInit(0)` first
//! (a line of its own): with the shim preloaded in a tenant, that registers the process.

use anyhow::{Context, Result, bail};
use gpumux_conformance::exports::{exported_functions, is_nvml_api};
use gpumux_conformance::probe::{self, Driver, Library};
use gpumux_conformance::table;
use std::io::Write;
use std::path::PathBuf;

const USAGE: &str = "usage: conformance-probe {cuda|nvml|procaddr-table|cudart} LIBRARY \
    [--names-from LIBRARY] [--init]";

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let init = match args.iter().position(|a| a == "--init") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    if let [mode, lib] = args.as_slice()
        && mode == "cudart"
    {
        return print(gpumux_conformance::cudart::cudart_lines(&PathBuf::from(
            lib,
        ))?);
    }
    let (mode, lib, names_from) = match args.as_slice() {
        [m, l] => (m.as_str(), PathBuf::from(l), PathBuf::from(l)),
        [m, l, flag, n] if flag == "--names-from" => {
            (m.as_str(), PathBuf::from(l), PathBuf::from(n))
        }
        _ => bail!("{USAGE}"),
    };
    let exports = exported_functions(&lib)?;
    let asked = exported_functions(&names_from)?;
    let mut lines = Vec::new();
    match mode {
        "cuda" => {
            let driver = Driver::open(&lib, &exports)?;
            lines.push(probe::CUDA_HEADER.to_owned());
            if init {
                lines.push(driver.init_line()?);
            }
            let names = probe::cuda_names(&asked);
            lines.extend(driver.resolve_all(&names).iter().map(ToString::to_string));
        }
        "procaddr-table" => {
            let driver = Driver::open(&lib, &exports)?;
            lines.push(table::HEADER.to_owned());
            let names = probe::cuda_names(&asked);
            lines.extend(table::generate(&driver, &names, table::STEP));
        }
        "nvml" => {
            let library = Library::open(&lib, &exports)?;
            lines.push(probe::NVML_HEADER.to_owned());
            let names: Vec<String> = asked.into_iter().filter(|n| is_nvml_api(n)).collect();
            lines.extend(probe::nvml_lines(&library, &names));
        }
        _ => bail!("{USAGE}"),
    }
    print(lines)
}

fn print(lines: Vec<String>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "{l}").context("write to stdout")?;
    }
    Ok(())
}
