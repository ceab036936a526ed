//! `gpumuxctl top`: a live view of the node, refreshed from the status report.
//!
//! One row per tenant and device (weight, device-time share over the daemon's 10 s window
//! next to the share its weight entitles it to, memory and its overhead against the limit,
//! refusals, launches/s, p99 slice wait), and under each tenant one row per process (pid,
//! state, memory, launches/s, the part of the refresh interval it spent waiting for a slice);
//! then processes using a GPU without gpumux. Rates and the p99 are over the last refresh
//! interval, from the difference of two reports.
//!
//! On a terminal it is interactive (ratatui over crossterm: `q` quits, `s` changes the sort);
//! otherwise (a pipe, a file, CI) it prints the same table as text every interval.

use crate::status::{
    self, FetchError, ProcessState, ProcessStatus, StatusReport, TenantDeviceStatus, TenantStatus,
};
use crate::waits::Histogram;
use gpumux_common::size::format_size;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, Widget};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// How tenants are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Device-time share, highest first.
    Share,
    /// Memory used, highest first.
    Memory,
    /// Tenant name.
    Name,
}

impl SortBy {
    fn next(self) -> SortBy {
        match self {
            SortBy::Share => SortBy::Memory,
            SortBy::Memory => SortBy::Name,
            SortBy::Name => SortBy::Share,
        }
    }
    fn label(self) -> &'static str {
        match self {
            SortBy::Share => "share",
            SortBy::Memory => "memory",
            SortBy::Name => "name",
        }
    }
}

/// What `top` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
    pub sort: SortBy,
    /// Stop after this many refreshes (None: until `q`, or forever when not interactive).
    pub iterations: Option<u64>,
    /// Print text frames even on a terminal.
    pub batch: bool,
}

/// Per-interval figures of one process on one device.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ProcessRates {
    launches_per_s: f64,
    /// Fraction of the interval spent waiting for a slice (0..1).
    waiting: f64,
}

/// One screenful: a report, and the rates since the one before it.
#[derive(Debug, Clone)]
pub struct View {
    pub report: StatusReport,
    pub sort: SortBy,
    pub interval: Duration,
    /// Seconds between the two reports (None for the first).
    elapsed: Option<f64>,
    /// (tenant, device) → launches/s and the slice-wait histogram of the interval.
    tenants: HashMap<(String, u32), (f64, Histogram)>,
    /// (tenant, pid, device) → rates.
    processes: HashMap<(String, u32, u32), ProcessRates>,
    /// Set when the last refresh failed (the view shows the report before it).
    pub error: Option<String>,
}

fn diff_histogram(now: &Histogram, before: Option<&Histogram>) -> Histogram {
    let mut h = now.clone();
    if let Some(b) = before.filter(|b| b.le == now.le && b.count <= now.count) {
        for (c, p) in h.counts.iter_mut().zip(&b.counts) {
            *c = c.saturating_sub(*p);
        }
        h.count -= b.count;
        h.sum_seconds -= b.sum_seconds;
    }
    h
}

impl View {
    /// The view of `report`, with rates against `previous` (the report one interval before).
    pub fn new(
        report: StatusReport,
        previous: Option<&StatusReport>,
        sort: SortBy,
        interval: Duration,
    ) -> View {
        let prev = previous.filter(|p| p.pid == report.pid && p.generation == report.generation);
        let elapsed = prev
            .map(|p| report.uptime_s - p.uptime_s)
            .filter(|&e| e > 0.0);
        let mut tenants = HashMap::new();
        let mut processes = HashMap::new();
        if let (Some(p), Some(dt)) = (prev, elapsed) {
            let before: HashMap<(&str, u32), &TenantDeviceStatus> = p
                .tenants
                .iter()
                .flat_map(|t| {
                    t.devices
                        .iter()
                        .map(move |d| ((t.name.as_str(), d.index), d))
                })
                .collect();
            let before_procs: HashMap<(&str, u32, u32), (u64, u64)> = p
                .tenants
                .iter()
                .flat_map(|t| {
                    t.process_details.iter().flat_map(move |pr| {
                        pr.devices.iter().map(move |d| {
                            (
                                (t.name.as_str(), pr.pid, d.index),
                                (d.launches, d.slice_wait_ns),
                            )
                        })
                    })
                })
                .collect();
            for t in &report.tenants {
                for d in &t.devices {
                    let b = before.get(&(t.name.as_str(), d.index));
                    let launches = b.map_or(0, |b| d.launches.saturating_sub(b.launches));
                    let waits = diff_histogram(&d.waits.slice_wait, b.map(|b| &b.waits.slice_wait));
                    tenants.insert((t.name.clone(), d.index), (launches as f64 / dt, waits));
                }
                for pr in &t.process_details {
                    for d in &pr.devices {
                        let (l0, w0) = before_procs
                            .get(&(t.name.as_str(), pr.pid, d.index))
                            .copied()
                            .unwrap_or((d.launches, d.slice_wait_ns));
                        processes.insert(
                            (t.name.clone(), pr.pid, d.index),
                            ProcessRates {
                                launches_per_s: d.launches.saturating_sub(l0) as f64 / dt,
                                waiting: (d.slice_wait_ns.saturating_sub(w0) as f64 / 1e9 / dt)
                                    .min(1.0),
                            },
                        );
                    }
                }
            }
        }
        View {
            report,
            sort,
            interval,
            elapsed,
            tenants,
            processes,
            error: None,
        }
    }

    /// (tenant, device) rows in display order.
    fn rows(&self) -> Vec<(&TenantStatus, &TenantDeviceStatus)> {
        let mut rows: Vec<_> = self
            .report
            .tenants
            .iter()
            .flat_map(|t| t.devices.iter().map(move |d| (t, d)))
            .collect();
        match self.sort {
            SortBy::Share => rows.sort_by(|a, b| {
                let share = |d: &TenantDeviceStatus| d.device_time_share.unwrap_or(0.0);
                share(b.1)
                    .total_cmp(&share(a.1))
                    .then(a.0.name.cmp(&b.0.name))
            }),
            SortBy::Memory => rows.sort_by(|a, b| {
                b.1.memory_used
                    .cmp(&a.1.memory_used)
                    .then(a.0.name.cmp(&b.0.name))
            }),
            SortBy::Name => {
                rows.sort_by(|a, b| a.0.name.cmp(&b.0.name).then(a.1.index.cmp(&b.1.index)));
            }
        }
        rows
    }

    /// The share of `device` that `t`'s weight entitles it to among the tenants using it.
    fn weight_share(&self, t: &TenantStatus, device: u32) -> f64 {
        let total: u32 = self
            .report
            .tenants
            .iter()
            .filter(|o| o.devices.iter().any(|d| d.index == device))
            .map(|o| o.weight)
            .sum();
        t.weight as f64 / total.max(1) as f64
    }
}

const HEADER: [&str; 13] = [
    "TENANT / PID",
    "GPU",
    "WEIGHT",
    "SHARE 10s",
    "BY WEIGHT",
    "MEM USED",
    "OVERHEAD",
    "LIMIT",
    "USE",
    "REFUSED",
    "LAUNCH/s",
    "WAITING",
    "WAIT p99",
];

const WIDTHS: [Constraint; 13] = [
    Constraint::Min(16),
    Constraint::Length(3),
    Constraint::Length(6),
    Constraint::Length(9),
    Constraint::Length(9),
    Constraint::Length(10),
    Constraint::Length(10),
    Constraint::Length(10),
    Constraint::Length(5),
    Constraint::Length(7),
    Constraint::Length(9),
    Constraint::Length(7),
    Constraint::Length(9),
];

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn rate(x: Option<f64>) -> String {
    match x {
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
        None => "-".into(),
    }
}

fn millis(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2}s")
    } else {
        format!("{:.1}ms", s * 1e3)
    }
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).right_aligned())
}

fn tenant_row(view: &View, t: &TenantStatus, d: &TenantDeviceStatus) -> Row<'static> {
    let figures = view.tenants.get(&(t.name.clone(), d.index));
    let use_frac = (d.memory_limit > 0).then(|| d.memory_used as f64 / d.memory_limit as f64);
    let p99 = figures.and_then(|(_, h)| h.quantile(0.99));
    let near_limit = use_frac.is_some_and(|u| u >= 0.95);
    Row::new(vec![
        // A removed tenant's processes are still shown (held at weight 1, no new memory).
        Cell::from(if t.removed {
            format!("{} (removed)", t.name)
        } else {
            t.name.clone()
        })
        .bold(),
        right(d.index.to_string()),
        right(t.weight.to_string()),
        right(d.device_time_share.map_or_else(|| "-".into(), pct)),
        right(pct(view.weight_share(t, d.index))),
        right(format_size(d.memory_used)),
        right(format_size(d.memory_overhead)),
        right(format_size(d.memory_limit)),
        right(use_frac.map_or_else(|| "-".into(), |u| format!("{:.0}%", u * 100.0))).style(
            if near_limit {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            },
        ),
        right(d.allocations_refused.to_string()).style(if d.allocations_refused > 0 {
            Style::new().fg(Color::Yellow)
        } else {
            Style::new()
        }),
        right(rate(figures.map(|f| f.0))),
        right(String::new()),
        right(p99.map_or_else(|| "-".into(), millis)),
    ])
}

fn process_row(view: &View, t: &TenantStatus, p: &ProcessStatus, dev: u32) -> Option<Row<'static>> {
    let d = p.devices.iter().find(|d| d.index == dev)?;
    let rates = view.processes.get(&(t.name.clone(), p.pid, dev));
    let state = match p.state {
        ProcessState::Running if d.waiting => " waiting",
        ProcessState::Running => "",
        ProcessState::Stalled => " stalled",
        ProcessState::Orphaned => " orphaned",
    };
    Some(
        Row::new(vec![
            Cell::from(format!("  {}{state}", p.pid)),
            right(String::new()),
            right(String::new()),
            right(String::new()),
            right(String::new()),
            right(format_size(d.memory_used)),
            right(format_size(d.memory_overhead)),
            right(String::new()),
            right(String::new()),
            right(String::new()),
            right(rate(rates.map(|r| r.launches_per_s))),
            right(rates.map_or_else(|| "-".into(), |r| pct(r.waiting))),
            right(String::new()),
        ])
        .style(Style::new().add_modifier(Modifier::DIM)),
    )
}

/// Processes on a GPU without gpumux: a heading row, then one row each.
fn unmanaged_rows(view: &View) -> Vec<Row<'static>> {
    let procs = &view.report.unmanaged;
    if procs.is_empty() {
        return Vec::new();
    }
    let warn = Style::new().fg(Color::Yellow);
    let mut rows = vec![Row::new(vec![Cell::from("(unmanaged: no gpumux)")]).style(warn.bold())];
    for u in procs {
        let mut cells = vec![
            Cell::from(format!(
                "  {} {}",
                u.pid,
                u.tenant.as_deref().unwrap_or("unknown")
            )),
            right(u.device.to_string()),
        ];
        cells.extend((0..3).map(|_| right(String::new())));
        cells.push(right(format_size(u.memory)));
        rows.push(Row::new(cells).style(warn));
    }
    rows
}

/// The rows of the table: each tenant and device, its processes under it; then processes
/// using a GPU without gpumux.
fn table_rows(view: &View) -> Vec<Row<'static>> {
    let mut rows = Vec::new();
    for (t, d) in view.rows() {
        rows.push(tenant_row(view, t, d));
        let mut procs: Vec<&ProcessStatus> = t.process_details.iter().collect();
        let mem = |p: &ProcessStatus| {
            p.devices
                .iter()
                .find(|x| x.index == d.index)
                .map_or(0, |x| x.memory_used)
        };
        procs.sort_by(|a, b| mem(b).cmp(&mem(a)).then(a.pid.cmp(&b.pid)));
        rows.extend(
            procs
                .into_iter()
                .filter_map(|p| process_row(view, t, p, d.index)),
        );
    }
    rows.extend(unmanaged_rows(view));
    rows
}

fn header_lines(view: &View) -> Vec<Line<'static>> {
    let r = &view.report;
    let mut lines = vec![Line::from(vec![
        format!(
            "gpumuxd {} (pid {}), up {:.0}s, quantum {} ms",
            r.version, r.pid, r.uptime_s, r.quantum_ms
        )
        .bold(),
        format!(
            "   refresh {:.1}s, sort by {} · q quit · s sort",
            view.interval.as_secs_f64(),
            view.sort.label()
        )
        .into(),
    ])];
    for d in &r.devices {
        lines.push(Line::from(format!(
            "GPU {}  {}  {}  {}",
            d.index,
            d.name,
            d.uuid,
            format_size(d.total_bytes)
        )));
    }
    lines
}

fn footer_lines(view: &View) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    if view.elapsed.is_none() {
        lines.push(
            Line::from("LAUNCH/s, WAITING and WAIT p99 appear after the first refresh.").dim(),
        );
    } else {
        lines.push(
            Line::from(
                "SHARE 10s: the daemon's last 10 s. LAUNCH/s, WAITING (for a slice), WAIT p99: the last refresh interval.",
            )
            .dim(),
        );
    }
    if view.report.tenants.is_empty() {
        lines.push(Line::from(
            "(no tenants: add quota files to the tenants directory)",
        ));
    }
    for e in &view.report.config_errors {
        lines.push(Line::from(format!("config error: {e}")).red());
    }
    if let Some(e) = &view.error {
        lines.push(Line::from(format!("refresh failed: {e}")).red().bold());
    }
    lines
}

/// Lines the whole view needs at most (for text output).
pub fn height(view: &View) -> u16 {
    let rows = table_rows(view).len();
    (header_lines(view).len() + rows + 3 + footer_lines(view).len() + 1).min(u16::MAX as usize)
        as u16
}

/// Draws `view` into `area` of `buf` (the terminal's frame, or a buffer for text output).
pub fn draw(view: &View, area: Rect, buf: &mut Buffer) {
    let head = header_lines(view);
    let foot = footer_lines(view);
    let [top, middle, bottom] = Layout::vertical([
        Constraint::Length(head.len() as u16),
        Constraint::Min(3),
        Constraint::Length(foot.len() as u16),
    ])
    .areas(area);
    Paragraph::new(head).render(top, buf);
    let header = Row::new(HEADER.iter().enumerate().map(|(i, h)| {
        if i == 0 {
            Cell::from(*h)
        } else {
            right(h.to_string())
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    Table::new(table_rows(view), WIDTHS)
        .header(header)
        .column_spacing(1)
        .block(Block::bordered().title(" tenants "))
        .render(middle, buf);
    Paragraph::new(foot).render(bottom, buf);
}

/// The view as plain text `width` columns wide (trailing spaces trimmed).
pub fn to_text(view: &View, width: u16) -> String {
    let area = Rect::new(0, 0, width, height(view));
    let mut buf = Buffer::empty(area);
    draw(view, area, &mut buf);
    buffer_text(&buf)
}

/// A buffer's symbols as lines of text.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Runs `top` against the daemon with control socket in `state_dir`.
pub fn run(state_dir: &Path, opts: Options) -> Result<(), FetchError> {
    use std::io::IsTerminal;
    let interactive =
        !opts.batch && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    // Fail early, before touching the terminal, if the daemon cannot be reached.
    let first = status::fetch(state_dir)?;
    if interactive {
        interactive_loop(state_dir, opts, first).map_err(FetchError::Io)
    } else {
        batch_loop(state_dir, opts, first)
    }
}

fn batch_loop(state_dir: &Path, opts: Options, first: StatusReport) -> Result<(), FetchError> {
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(132u16)
        .max(80);
    let mut previous = first;
    let mut done = 0u64;
    // Rates need two reports: the first frame is printed one interval in.
    while opts.iterations.is_none_or(|n| done < n) {
        std::thread::sleep(opts.interval);
        let report = status::fetch(state_dir)?;
        let view = View::new(report, Some(&previous), opts.sort, opts.interval);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", to_text(&view, width))?;
        out.flush()?;
        previous = view.report;
        done += 1;
    }
    Ok(())
}

fn interactive_loop(
    state_dir: &Path,
    mut opts: Options,
    first: StatusReport,
) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut terminal = ratatui::try_init()?;
    let mut view = View::new(first, None, opts.sort, opts.interval);
    let mut done = 0u64;
    let mut next_refresh = Instant::now() + opts.interval;
    let result = loop {
        if let Err(e) = terminal.draw(|f| draw(&view, f.area(), f.buffer_mut())) {
            break Err(e);
        }
        let wait = next_refresh.saturating_duration_since(Instant::now());
        match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => break Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        break Ok(());
                    }
                    KeyCode::Char('s') => {
                        opts.sort = opts.sort.next();
                        view.sort = opts.sort;
                    }
                    _ => {}
                },
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + opts.interval;
            done += 1;
            if opts.iterations.is_some_and(|n| done >= n) {
                break Ok(());
            }
            match status::fetch(state_dir) {
                Ok(report) => {
                    view = View::new(report, Some(&view.report), opts.sort, opts.interval);
                }
                Err(e) => view.error = Some(e.to_string()),
            }
        }
    };
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests;
