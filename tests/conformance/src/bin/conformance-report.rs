//! `conformance-report [RESULTS_DIR [OUTPUT]]`: renders the conformance results
//! (`target/conformance/*.json`, written by the conformance tests) into `docs/CONFORMANCE.md`.
//! `scripts/test.sh` runs it after the tests. With no results it leaves the page as it is.

use anyhow::{Context, Result, bail};
use gpumux_conformance::{oracle, report};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let default_out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/CONFORMANCE.md");
    let (dir, out) = match args.as_slice() {
        [] => (report::results_dir(), default_out),
        [d] => (PathBuf::from(d), default_out),
        [d, o] => (PathBuf::from(d), PathBuf::from(o)),
        _ => bail!("usage: conformance-report [RESULTS_DIR [OUTPUT]]"),
    };
    let results = report::read_all(&dir)?;
    if results.is_empty() {
        println!(
            "conformance-report: no results in {}: {} left as it is",
            dir.display(),
            out.display()
        );
        return Ok(());
    }
    let sources: Vec<String> = oracle::DRIVERS
        .iter()
        .filter_map(|b| {
            let v = std::fs::read_to_string(oracle::cache_dir().join(b).join("VERSION")).ok()?;
            Some(format!(
                "{b}: {}",
                v.split_whitespace().collect::<Vec<_>>().join(", ")
            ))
        })
        .collect();
    std::fs::write(&out, report::render(&results, &sources))
        .with_context(|| format!("write {}", out.display()))?;
    println!(
        "conformance-report: {} results rendered into {}",
        results.len(),
        out.display()
    );
    Ok(())
}
