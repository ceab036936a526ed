//! The fake driver libraries (`tests/fake-cuda`, `tests/fake-nvml`) against NVIDIA's real ones:
//! the fake's `cuGetProcAddress` answers like the 550 driver at every (name, version, flags), its
//! committed table is the one the driver produces, and it exports every function the driver does.
//! Each test writes its result to `target/conformance/` for `docs/CONFORMANCE.md`.
//!
//! Needs the real libraries (`scripts/fetch-nvidia-libs.sh`; skipped without them unless
//! `GPUMUX_REQUIRE_NVIDIA=1`) and the fakes built (`cargo build --workspace`).

use gpumux_conformance::exports::{exported_functions, is_cuda_api, is_nvml_api};
use gpumux_conformance::oracle::{self, RealDriver};
use gpumux_conformance::probe::{self, data_lines, diff_lines};
use gpumux_conformance::report::Comparison;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const FAKE_CUDA: &str = "fake libcuda.so.1";
const FAKE_NVML: &str = "fake libnvidia-ml.so.1";

/// A library the workspace build produced (`libcuda.so`, `libnvidia_ml.so`).
fn fake(file: &str) -> PathBuf {
    let path = fakegpu::testenv::target_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// The probe's output lines for `mode` on `lib`, asking the names `names_from` exports.
fn probe(mode: &str, lib: &Path, names_from: &Path) -> Vec<String> {
    let bin = Path::new(env!("CARGO_BIN_EXE_conformance-probe"));
    probe::run(bin, mode, lib, names_from, &[]).unwrap_or_else(|e| panic!("{e}"))
}

const PROCADDR_METHOD: &str = "Every API base name the driver exports (the export without \
    `_v2`/`_v3`/`_ptsz`/`_ptds`, as cudart asks) and one name it lacks, at cudaVersion 3020, 4000, \
    7000, 11030, 12000, 12020, 12040, 12090, 13000 × flags DEFAULT, LEGACY_STREAM, \
    PER_THREAD_DEFAULT_STREAM, through `cuGetProcAddress` and `cuGetProcAddress_v2` \
    (`conformance-probe cuda`): the `CUresult`, the symbol status, and which export the pointer \
    is (or null, or untouched) must be the same.";

fn procaddr_comparison(id: &str, driver: &RealDriver, subject: &str) -> Comparison {
    Comparison {
        id: id.into(),
        section: "cuGetProcAddress".into(),
        driver: driver.version(),
        subject: subject.into(),
        method: PROCADDR_METHOD.into(),
        compared: 0,
        unit: "resolutions".into(),
        differences: Vec::new(),
        note: None,
    }
}

#[test]
fn fake_get_proc_address_answers_like_the_550_driver() {
    let Some(real) = oracle::require("550") else {
        return;
    };
    let want = probe("cuda", &real.libcuda(), &real.libcuda());
    let got = probe("cuda", &fake("libcuda.so"), &real.libcuda());
    let mut c = procaddr_comparison("cuda-procaddr-550-fake", &real, FAKE_CUDA);
    c.compared = data_lines(&want);
    c.differences = diff_lines(&want, &got, 4, "fake");
    c.record();
    assert!(c.compared > 20_000, "too few resolutions: {}", c.compared);
    assert!(
        c.differences.is_empty(),
        "the fake's cuGetProcAddress differs from the 550 driver's in {} of {} resolutions:\n{}",
        c.differences.len(),
        c.compared,
        c.differences.join("\n")
    );
}

#[test]
fn fake_differs_from_the_535_driver_only_where_550_does() {
    let (Some(old), Some(new)) = (oracle::require("535"), oracle::require("550")) else {
        return;
    };
    let want = probe("cuda", &old.libcuda(), &old.libcuda());
    let got = probe("cuda", &fake("libcuda.so"), &old.libcuda());
    let newer = probe("cuda", &new.libcuda(), &old.libcuda());
    let mut c = procaddr_comparison("cuda-procaddr-535-fake", &old, FAKE_CUDA);
    c.compared = data_lines(&want);
    c.differences = diff_lines(&want, &got, 4, "fake");
    let unexplained = diff_lines(&newer, &got, 4, "fake");
    let names: BTreeSet<&str> = c
        .differences
        .iter()
        .filter_map(|d| d.split(' ').next())
        .collect();
    c.note = Some(format!(
        "Expected: the fake answers like the 550 driver, and 550 answers each of these \
         resolutions exactly like the fake: {} resolutions at 12040 and later, where 550 hands \
         out the variants CUDA 12.3 introduced, which 535 (CUDA 12.2) lacks (names: {}).",
        c.differences.len(),
        names.into_iter().collect::<Vec<_>>().join(", ")
    ));
    c.record();
    assert!(
        unexplained.is_empty(),
        "asked 535's names, the fake and the 550 driver differ:\n{}",
        unexplained.join("\n")
    );
    assert!(
        c.differences.len() < c.compared / 20,
        "{} of {} differ from 535",
        c.differences.len(),
        c.compared
    );
}

/// The committed table without its comment lines.
fn committed_table() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fake-cuda/procaddr.tsv");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn fake_table_is_the_550_drivers_at_every_version() {
    let Some(real) = oracle::require("550") else {
        return;
    };
    let committed = committed_table();
    let method = "`tests/fake-cuda/procaddr.tsv`, the fake's committed table, against the table \
        generated from the driver and from the fake (`conformance-probe procaddr-table`: every \
        cudaVersion from 0 to 13000 in steps of 10, each flags value, through \
        `cuGetProcAddress_v2`; a row per change of answer).";
    let mut failures = Vec::new();
    for (id, subject, lib) in [
        (
            "cuda-table-550-committed",
            "committed table (tests/fake-cuda/procaddr.tsv)",
            real.libcuda(),
        ),
        ("cuda-table-550-fake", FAKE_CUDA, fake("libcuda.so")),
    ] {
        let generated = probe("procaddr-table", &lib, &real.libcuda());
        let (want, got) = if lib == real.libcuda() {
            (&generated, &committed)
        } else {
            (&committed, &generated)
        };
        let c = Comparison {
            id: id.into(),
            section: "cuGetProcAddress".into(),
            driver: real.version(),
            subject: subject.into(),
            method: method.into(),
            compared: data_lines(want),
            unit: "table rows".into(),
            differences: diff_lines(want, got, 3, "table"),
            note: None,
        };
        c.record();
        if !c.differences.is_empty() {
            failures.push(format!(
                "{subject}: {} rows differ (regenerate with scripts/generate-procaddr-table.sh if \
                 the driver changed):\n{}",
                c.differences.len(),
                c.differences.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Functions the fake exports beyond the driver (newer CUDA variants for `dlsym` loaders).
const FAKE_EXTRAS: &[&str] = &["cuCtxCreate_v4", "cuEventElapsedTime_v2"];

#[test]
fn fake_exports_every_function_of_the_550_driver() {
    let Some(real) = oracle::require("550") else {
        return;
    };
    let real_exports: BTreeSet<String> = exported_functions(&real.libcuda())
        .unwrap()
        .into_iter()
        .filter(|n| is_cuda_api(n))
        .collect();
    let fake_exports: BTreeSet<String> = exported_functions(&fake("libcuda.so"))
        .unwrap()
        .into_iter()
        .filter(|n| is_cuda_api(n))
        .collect();
    let extras: Vec<&String> = fake_exports.difference(&real_exports).collect();
    let c = Comparison {
        id: "exports-cuda-550-fake".into(),
        section: "Exported functions".into(),
        driver: real.version(),
        subject: FAKE_CUDA.into(),
        method: "Every `cu*` function the driver exports (its ELF dynamic symbol table; the \
            debugger's `cudbg*` interface is not part of the API and not compared) must be \
            exported by the fake; what the fake does not simulate returns \
            `CUDA_ERROR_NOT_SUPPORTED`."
            .into(),
        compared: real_exports.len(),
        unit: "functions".into(),
        differences: real_exports
            .difference(&fake_exports)
            .map(|n| format!("{n}: exported by the driver, not by the fake"))
            .collect(),
        note: None,
    };
    c.record();
    assert!(
        c.differences.is_empty(),
        "the fake lacks {} of the driver's functions:\n{}",
        c.differences.len(),
        c.differences.join("\n")
    );
    assert_eq!(
        extras,
        FAKE_EXTRAS.iter().collect::<Vec<_>>(),
        "functions the fake exports that the 550 driver does not"
    );
}

#[test]
fn fake_nvml_exports_every_function_of_the_550_driver() {
    let Some(real) = oracle::require("550") else {
        return;
    };
    let want = probe("nvml", &real.libnvml(), &real.libnvml());
    let got = probe("nvml", &fake("libnvidia_ml.so"), &real.libnvml());
    let c = Comparison {
        id: "exports-nvml-550-fake".into(),
        section: "Exported functions".into(),
        driver: real.version(),
        subject: FAKE_NVML.into(),
        method: "NVML: `dlsym` of every `nvml*` name the driver's `libnvidia-ml.so.1` exports \
            must find a function of that name alone in the fake (`conformance-probe nvml`); what \
            the fake does not simulate returns `NVML_ERROR_NOT_SUPPORTED`."
            .into(),
        compared: data_lines(&want),
        unit: "functions".into(),
        differences: diff_lines(&want, &got, 1, "fake"),
        note: None,
    };
    c.record();
    let nvml_names = exported_functions(&real.libnvml()).unwrap();
    assert_eq!(
        c.compared,
        nvml_names.iter().filter(|n| is_nvml_api(n)).count()
    );
    assert!(
        c.differences.is_empty(),
        "the fake NVML differs in {} of {} names:\n{}",
        c.differences.len(),
        c.compared,
        c.differences.join("\n")
    );
}

#[test]
fn probe_output_is_stable_and_complete() {
    let Some(real) = oracle::require("550") else {
        return;
    };
    let a = probe("cuda", &real.libcuda(), &real.libcuda());
    let b = probe("cuda", &real.libcuda(), &real.libcuda());
    assert_eq!(a, b, "two runs of the probe differ");
    assert_eq!(a[0], probe::CUDA_HEADER);
    let names = probe::cuda_names(&exported_functions(&real.libcuda()).unwrap());
    assert_eq!(
        data_lines(&a),
        names.len() * probe::VERSIONS.len() * probe::FLAGS.len() * 2
    );
    // What the field notes record about the driver without a GPU.
    let line = |name: &str, v: &str, flags: &str, api: &str| {
        a.iter()
            .find(|l| l.starts_with(&format!("{name}\t{v}\t{flags}\t{api}\t")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        line("cuMemAlloc", "3020", "DEFAULT", "cuGetProcAddress_v2")
            .ends_with("\t0\tSUCCESS\tcuMemAlloc_v2")
    );
    assert!(
        line("cuCtxCreate", "12090", "DEFAULT", "cuGetProcAddress_v2")
            .ends_with("\tcuCtxCreate_v3")
    );
    assert!(
        line(
            "cuLaunchKernel",
            "4000",
            "PER_THREAD_DEFAULT_STREAM",
            "cuGetProcAddress_v2"
        )
        .ends_with("\t0\tVERSION_NOT_SUFFICIENT\tnull")
    );
    assert!(
        line(probe::UNKNOWN_NAME, "12000", "DEFAULT", "cuGetProcAddress")
            .ends_with("\t500\t-\tunwritten")
    );
}
