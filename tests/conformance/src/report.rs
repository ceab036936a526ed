//! Comparison results and `docs/CONFORMANCE.md`.
//!
//! Each conformance comparison (a test) writes one [`Comparison`] as JSON to
//! `target/conformance/<id>.json` ([`Comparison::write`]); after the tests, `scripts/test.sh` runs
//! `conformance-report`, which renders every result found there ([`render`]) into
//! `docs/CONFORMANCE.md`: one section per [`Comparison::section`], one table row per comparison
//! (driver, what was compared, count, differences) and the list of differences where there are
//! any. A new comparison adds a row by writing its own JSON; nothing else changes.
//!
//! Adding one (e.g. NVIDIA's driver with the shim preloaded against the driver alone): run the
//! probe both ways with [`crate::probe::run`] (its `envs` take `LD_PRELOAD` and `GPUMUX_SOCKET`),
//! compare with [`crate::probe::diff_lines`] (key fields: 4 for `cuda`, 1 for `nvml`), and
//! [`Comparison::record`] a result with its own `id` (`cuda-procaddr-550-shim-tenant`), the
//! `section` of the table it belongs to (`cuGetProcAddress`), the `driver`
//! ([`crate::oracle::RealDriver::version`]) and a `subject` naming what was compared with it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One comparison's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Comparison {
    /// File stem and sort key (`fake-cuda-550`); sections appear in the order of their first id.
    pub id: String,
    /// The section (table) the row belongs to (`cuGetProcAddress`).
    pub section: String,
    /// The driver compared against (`550.163.01`).
    pub driver: String,
    /// What was compared with the driver (`fake libcuda.so.1`).
    pub subject: String,
    /// How the comparison was made, one sentence (shown under the section's table).
    pub method: String,
    /// How many items were compared (resolutions, names, ...).
    pub compared: usize,
    /// The unit of `compared` (`resolutions`).
    pub unit: String,
    /// Every difference, one line each.
    pub differences: Vec<String>,
    /// Why the differences are expected, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why results could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A result file is not a [`Comparison`].
    #[error("{path} is not a conformance result: {source}")]
    Json {
        /// The file.
        path: String,
        /// The error.
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `target/conformance`: `$GPUMUX_CONFORMANCE_DIR`, else next to the profile directory of the
/// running executable (a test binary in `target/<profile>/deps/` or a binary in
/// `target/<profile>/`).
pub fn results_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GPUMUX_CONFORMANCE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.pop();
    dir.join("conformance")
}

impl Comparison {
    /// Writes the result to `dir/<id>.json`.
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("{}.json", self.id));
        let json = serde_json::to_string_pretty(self).expect("a Comparison serialises");
        std::fs::write(&path, json + "\n").map_err(io(&path))?;
        Ok(path)
    }

    /// Writes the result to [`results_dir`].
    pub fn write(&self) -> Result<PathBuf, ReportError> {
        self.write_to(&results_dir())
    }

    /// What a test does with its result: [`Comparison::write`] it and say so on stderr.
    ///
    /// # Panics
    /// When the result cannot be written.
    pub fn record(&self) {
        let path = self.write().expect("write the conformance result");
        eprintln!(
            "{}: {} {} compared, {} differences ({})",
            self.id,
            self.compared,
            self.unit,
            self.differences.len(),
            path.display()
        );
    }
}

/// Every result in `dir`, sorted by id (none if the directory does not exist).
pub fn read_all(dir: &Path) -> Result<Vec<Comparison>, ReportError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let c: Comparison = serde_json::from_str(&text).map_err(|source| ReportError::Json {
            path: path.display().to_string(),
            source,
        })?;
        out.push(c);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Most differences listed per comparison (the rest are in its JSON file).
pub const MAX_LISTED: usize = 400;

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `docs/CONFORMANCE.md` for `results` (sorted by id); `sources` lists where the real libraries
/// came from, one line each.
pub fn render(results: &[Comparison], sources: &[String]) -> String {
    let mut sections: Vec<(&str, Vec<&Comparison>)> = Vec::new();
    for c in results {
        match sections.iter_mut().find(|(s, _)| *s == c.section) {
            Some((_, v)) => v.push(c),
            None => sections.push((&c.section, vec![c])),
        }
    }
    let mut md = String::new();
    md.push_str("# Conformance with NVIDIA's driver libraries\n\n");
    md.push_str(
        "Produced by `./scripts/test.sh`, never edited by hand: the conformance tests \
         (`tests/conformance`) write `target/conformance/*.json`, then `conformance-report` \
         renders this page. The oracle is NVIDIA's user-space driver libraries, which answer \
         without a GPU, fetched by `scripts/fetch-nvidia-libs.sh`:\n\n",
    );
    for s in sources {
        writeln!(md, "- {s}").ok();
    }
    md.push('\n');
    let total: usize = results.iter().map(|c| c.differences.len()).sum();
    writeln!(
        md,
        "{} comparisons, {} differences in all.\n",
        results.len(),
        thousands(total)
    )
    .ok();
    for (section, rows) in sections {
        writeln!(md, "## {section}\n").ok();
        md.push_str("| driver | compared with the driver | compared | differences |\n");
        md.push_str("|---|---|---:|---:|\n");
        for c in &rows {
            writeln!(
                md,
                "| {} | {} | {} {} | {} |",
                c.driver,
                c.subject,
                thousands(c.compared),
                c.unit,
                thousands(c.differences.len())
            )
            .ok();
        }
        md.push('\n');
        let mut methods: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for c in &rows {
            methods.entry(&c.method).or_default().push(&c.subject);
        }
        for (method, _) in methods.into_iter().filter(|(m, _)| !m.is_empty()) {
            writeln!(md, "{method}\n").ok();
        }
        for c in rows.iter().filter(|c| !c.differences.is_empty()) {
            writeln!(
                md,
                "### {} vs {}: {} differences\n",
                c.subject,
                c.driver,
                thousands(c.differences.len())
            )
            .ok();
            if let Some(note) = &c.note {
                writeln!(md, "{note}\n").ok();
            }
            md.push_str("```text\n");
            for d in c.differences.iter().take(MAX_LISTED) {
                writeln!(md, "{d}").ok();
            }
            if c.differences.len() > MAX_LISTED {
                writeln!(
                    md,
                    "... {} more in target/conformance/{}.json",
                    c.differences.len() - MAX_LISTED,
                    c.id
                )
                .ok();
            }
            md.push_str("```\n\n");
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, section: &str, diffs: &[&str]) -> Comparison {
        Comparison {
            id: id.into(),
            section: section.into(),
            driver: "550.163.01".into(),
            subject: format!("subject {id}"),
            method: format!("method of {section}"),
            compared: 24354,
            unit: "resolutions".into(),
            differences: diffs.iter().map(|d| d.to_string()).collect(),
            note: None,
        }
    }

    #[test]
    fn renders_sections_rows_and_differences() {
        let dir = std::env::temp_dir().join(format!("conformance-report-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        c("b", "NVML", &[]).write_to(&dir).unwrap();
        c("a", "cuGetProcAddress", &["x differs"])
            .write_to(&dir)
            .unwrap();
        c("c", "cuGetProcAddress", &[]).write_to(&dir).unwrap();
        let results = read_all(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(results.len(), 3);
        let md = render(&results, &["550: libcuda1_550.163.01-2_amd64.deb".into()]);
        let cuda = md.find("## cuGetProcAddress").unwrap();
        let nvml = md.find("## NVML").unwrap();
        assert!(
            cuda < nvml,
            "sections in the order of their first id:\n{md}"
        );
        assert!(
            md.contains("| 550.163.01 | subject a | 24,354 resolutions | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("| 550.163.01 | subject c | 24,354 resolutions | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("### subject a vs 550.163.01: 1 differences\n\n```text\nx differs\n```"),
            "{md}"
        );
        assert!(!md.contains("### subject c"), "no list without differences");
        assert!(md.contains("3 comparisons, 1 differences in all."), "{md}");
        assert_eq!(read_all(&dir.join("absent")).unwrap(), vec![]);
    }
}
