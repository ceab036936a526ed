//! The runner's output: one row per measured figure, the machine it ran on, the table.
//!
//! This module owns the [`Row`] every scenario produces (a number, how it reads, the target,
//! whether it was met, notes), the [`Machine`] description (CPUs, CPU model, the driver, date)
//! and printing them as a Markdown table (pasteable into docs/BENCHMARKS.md) or as JSON.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Whether a figure met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Reported without a target.
    Info,
    /// The scenario could not produce the figure.
    Error,
}

impl Verdict {
    pub fn from_bool(ok: bool) -> Verdict {
        if ok { Verdict::Pass } else { Verdict::Fail }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "**FAIL**",
            Verdict::Info => "info",
            Verdict::Error => "**ERROR**",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name (a scenario with several figures names them `scenario/figure`).
    pub scenario: String,
    /// The figure the verdict is about (in `unit`); `None` when it could not be measured.
    pub value: Option<f64>,
    pub unit: String,
    /// How the figure reads in the table.
    pub measured: String,
    pub target: String,
    pub verdict: Verdict,
    pub notes: String,
    /// Every number behind the row, by name (for `--json`).
    pub figures: BTreeMap<String, f64>,
}

impl Row {
    /// A row for `scenario` with figure `value` (`unit`), read as `measured`.
    pub fn new(scenario: &str, value: f64, unit: &str, measured: String) -> Row {
        Row {
            scenario: scenario.to_string(),
            value: Some(value),
            unit: unit.to_string(),
            measured,
            target: "—".to_string(),
            verdict: Verdict::Info,
            notes: String::new(),
            figures: BTreeMap::new(),
        }
    }

    /// A row for a scenario that failed to run.
    pub fn error(scenario: &str, err: &anyhow::Error) -> Row {
        let msg = format!("{err:#}");
        let first: String = msg.lines().next().unwrap_or("").chars().take(300).collect();
        Row {
            scenario: scenario.to_string(),
            value: None,
            unit: String::new(),
            measured: "error".to_string(),
            target: "—".to_string(),
            verdict: Verdict::Error,
            notes: first,
            figures: BTreeMap::new(),
        }
    }

    /// Sets the target and the verdict.
    pub fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = target.into();
        self.verdict = Verdict::from_bool(met);
        self
    }

    /// Appends a note (`; `-separated).
    pub fn note(mut self, note: impl AsRef<str>) -> Row {
        if !self.notes.is_empty() {
            self.notes.push_str("; ");
        }
        self.notes.push_str(note.as_ref());
        self
    }

    /// Records a named number.
    pub fn fig(mut self, name: &str, v: f64) -> Row {
        self.figures.insert(name.to_string(), v);
        self
    }
}

/// Where the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// "fake GPU (…)" or the real device's name.
    pub gpu: String,
    /// UTC date, YYYY-MM-DD.
    pub date: String,
    /// Build profile of the runner (and of gpumuxd/shim next to it).
    pub profile: String,
}

impl Machine {
    pub fn detect(gpu: String, profile: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, m)| m.trim().to_string());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
            gpu,
            date: today_utc(),
            profile,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} CPUs ({}), Linux {}, {}, {} build, {}",
            self.cpus, self.cpu_model, self.kernel, self.gpu, self.profile, self.date
        )
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    pub rows: Vec<Row>,
}

impl Report {
    /// The Markdown table, preceded by the machine line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        writeln!(
            s,
            "Machine: {}{}\n",
            self.machine.line(),
            if self.quick { " (--quick)" } else { "" }
        )
        .ok();
        writeln!(s, "| scenario | measured | target | result | notes |").ok();
        writeln!(s, "|---|---|---|---|---|").ok();
        for r in &self.rows {
            writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.scenario,
                cell(&r.measured),
                cell(&r.target),
                r.verdict.label(),
                cell(&r.notes)
            )
            .ok();
        }
        s
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
