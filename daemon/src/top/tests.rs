//! `top` rendered into ratatui's test backend, with assertions on what it shows.

use super::*;
use crate::status::{DeviceStatus, ProcessDeviceStatus, UnmanagedProcess};
use crate::waits::TenantWaits;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn process(pid: u32, state: ProcessState, mem: u64, launches: u64, wait_ms: u64) -> ProcessStatus {
    ProcessStatus {
        pid,
        slot: pid,
        state,
        devices: vec![ProcessDeviceStatus {
            index: 0,
            memory_used: mem,
            memory_overhead: mem.min(300 * MIB),
            launches,
            slice_wait_ns: wait_ms * 1_000_000,
            waiting: false,
        }],
    }
}

struct Tenant {
    name: &'static str,
    weight: u32,
    used: u64,
    limit: u64,
    refused: u64,
    share: f64,
    waits: Vec<Duration>,
    procs: Vec<ProcessStatus>,
}

fn report(uptime: f64, tenants: Vec<Tenant>) -> StatusReport {
    StatusReport {
        version: "0.1.0".into(),
        pid: 42,
        generation: 7,
        uptime_s: uptime,
        quantum_ms: 50,
        metrics_address: None,
        devices: vec![DeviceStatus {
            index: 0,
            uuid: "GPU-0000".into(),
            name: "Fake GPU".into(),
            total_bytes: 16 * GIB,
            host_latency_us: 0,
        }],
        tenants: tenants
            .into_iter()
            .map(|t| {
                let mut waits = TenantWaits::default();
                for w in &t.waits {
                    waits.slice_wait.observe(*w);
                }
                TenantStatus {
                    name: t.name.into(),
                    weight: t.weight,
                    compute_limit_percent: None,
                    processes: t.procs.iter().map(|p| p.pid).collect(),
                    socket: "/s".into(),
                    devices: vec![TenantDeviceStatus {
                        index: 0,
                        memory_used: t.used,
                        memory_overhead: t.procs.iter().map(|p| p.devices[0].memory_overhead).sum(),
                        memory_limit: t.limit,
                        memory_peak: t.used,
                        allocations_refused: t.refused,
                        launches: t.procs.iter().map(|p| p.devices[0].launches).sum(),
                        device_time_share: Some(t.share),
                        device_time_ns: 0,
                        slice_wait_ns: 0,
                        preemptions: 0,
                        queue_budget_us: 0,
                        hint_yields: 0,
                        waits,
                    }],
                    removed: false,
                    accounting_repairs: 0,
                    priority: Default::default(),
                    owner: None,
                    process_details: t.procs,
                }
            })
            .collect(),
        config_errors: vec!["/etc/gpumux/tenants.d/carol.toml:2: weight must be 1..=1000".into()],
        unmanaged: vec![UnmanagedProcess {
            device: 0,
            pid: 7921,
            memory: 1 << 30,
            tenant: None,
        }],
    }
}

/// Two reports two seconds apart: alice (weight 3) busy, bob (weight 1) waiting and refused.
fn two_reports() -> (StatusReport, StatusReport) {
    let alice = |share, launches, wait_ms| Tenant {
        name: "alice",
        weight: 3,
        used: 4 * GIB,
        limit: 6 * GIB,
        refused: 0,
        share,
        waits: vec![Duration::from_millis(20); 10],
        procs: vec![
            process(1001, ProcessState::Running, 4 * GIB, 1000, 0),
            process(1002, ProcessState::Running, 0, launches, wait_ms),
        ],
    };
    let bob = |used, refused, share, waits, procs| Tenant {
        name: "bob",
        weight: 1,
        used,
        limit: 2 * GIB,
        refused,
        share,
        waits,
        procs,
    };
    let early_waits = vec![Duration::from_millis(20); 10];
    let before = report(
        100.0,
        vec![
            alice(0.74, 5000, 100),
            bob(
                1536 * MIB,
                1,
                0.26,
                early_waits.clone(),
                vec![process(2001, ProcessState::Running, 1536 * MIB, 100, 1000)],
            ),
        ],
    );
    // In the interval: 10 more waits of bob, each 150 ms (p99 within (100, 250] ms).
    let mut after = report(
        102.0,
        vec![
            alice(0.75, 6000, 300),
            bob(
                1980 * MIB,
                2,
                0.25,
                [early_waits, vec![Duration::from_millis(150); 10]].concat(),
                vec![
                    process(2001, ProcessState::Running, 1536 * MIB, 300, 2500),
                    process(2002, ProcessState::Stalled, 444 * MIB, 0, 0),
                ],
            ),
        ],
    );
    after.tenants[1].process_details[0].devices[0].waiting = true;
    (before, after)
}

fn render(view: &View, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|f| draw(view, f.area(), f.buffer_mut()))
        .unwrap();
    buffer_text(terminal.backend().buffer())
        .lines()
        .map(str::to_string)
        .collect()
}

fn line_of<'a>(lines: &'a [String], starts: &str) -> (usize, &'a str) {
    let found = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.trim_start_matches('│').trim_start().starts_with(starts));
    let Some((i, l)) = found else {
        panic!("no line starting with {starts:?}:\n{}", lines.join("\n"))
    };
    (i, l.as_str())
}

#[test]
fn shows_tenants_with_their_processes_sorted_by_share() {
    let (before, after) = two_reports();
    let view = View::new(after, Some(&before), SortBy::Share, Duration::from_secs(2));
    let lines = render(&view, 140, 24);
    let screen = lines.join("\n");
    assert!(screen.contains("gpumuxd 0.1.0 (pid 42)"), "{screen}");
    assert!(
        screen.contains("GPU 0  Fake GPU  GPU-0000  16 GiB"),
        "{screen}"
    );
    // Columns say their window.
    for h in [
        "SHARE 10s",
        "BY WEIGHT",
        "LAUNCH/s",
        "WAITING",
        "WAIT p99",
        "MEM USED",
        "OVERHEAD",
        "LIMIT",
    ] {
        assert!(screen.contains(h), "no column {h}:\n{screen}");
    }
    let (a, alice) = line_of(&lines, "alice");
    let (b, bob) = line_of(&lines, "bob");
    assert!(a < b, "alice (75%) sorts before bob (25%):\n{screen}");
    assert!(
        alice.contains("75.0%") && alice.contains("4 GiB") && alice.contains("6 GiB"),
        "{alice}"
    );
    assert!(alice.contains("67%"), "memory use of the limit: {alice}");
    // Weight 3 of 4 on the device.
    assert!(alice.contains("75.0%") && bob.contains("25.0%"), "{screen}");
    // alice launched 1000 more in 2 s: 500/s.
    assert!(alice.contains(" 500 "), "{alice}");
    assert!(bob.contains("97%"), "bob is near his limit: {bob}");
    // p99 of bob's waits in the interval (all 150 ms: in the (100, 250] ms bucket).
    let p99 = bob.trim_end_matches('│').split_whitespace().last().unwrap();
    assert!(p99.ends_with("ms"), "{bob}");
    let ms: f64 = p99.trim_end_matches("ms").parse().unwrap();
    assert!((100.0..=250.0).contains(&ms), "{bob}");
    // Processes under their tenant, memory first.
    let (p1, l1001) = line_of(&lines, "1001");
    let (p2, l1002) = line_of(&lines, "1002");
    assert!(a < p1 && p1 < p2 && p2 < b, "{screen}");
    assert!(l1001.contains("4 GiB"), "{l1001}");
    assert!(
        l1002.contains(" 500 ") && l1002.contains("10.0%"),
        "1000 launches and 200 ms waited in 2 s: {l1002}"
    );
    let (p3, l2001) = line_of(&lines, "2001 waiting");
    assert!(b < p3, "{screen}");
    assert!(
        l2001.contains("1.50 GiB") && l2001.contains("75.0%") && l2001.contains(" 100 "),
        "{l2001}"
    );
    let (_, l2002) = line_of(&lines, "2002 stalled");
    assert!(l2002.contains("444 MiB"), "{l2002}");
    assert!(
        screen.contains("config error: /etc/gpumux/tenants.d/carol.toml:2"),
        "{screen}"
    );
    // Contexts' overhead, per tenant and process (alice: 300 MiB in each of her two processes
    // that hold memory; 1002 holds none).
    assert!(alice.contains("300 MiB"), "{alice}");
    assert!(
        l1001.contains("300 MiB") && !l1002.contains("MiB"),
        "{l1001}\n{l1002}"
    );
    // A process on the GPU without gpumux, after the tenants.
    let (u, _) = line_of(&lines, "(unmanaged");
    let (_, stray) = line_of(&lines, "7921 unknown");
    assert!(u > p3 && stray.contains("1 GiB"), "{screen}");
}

#[test]
fn a_removed_tenant_says_so() {
    let (before, mut after) = two_reports();
    after.tenants[1].removed = true;
    after.tenants[1].weight = 1;
    let view = View::new(after, Some(&before), SortBy::Share, Duration::from_secs(2));
    let lines = render(&view, 140, 24);
    let (_, bob) = line_of(&lines, "bob (removed)");
    assert!(bob.contains("1.93 GiB"), "its processes still count: {bob}");
    let (_, alice) = line_of(&lines, "alice");
    assert!(!alice.contains("removed"), "{alice}");
}

#[test]
fn sorting_by_memory_or_name() {
    let (before, mut after) = two_reports();
    after.tenants[1].devices[0].memory_used = 5 * GIB;
    let view = View::new(
        after.clone(),
        Some(&before),
        SortBy::Memory,
        Duration::from_secs(2),
    );
    let lines = render(&view, 140, 24);
    assert!(line_of(&lines, "bob").0 < line_of(&lines, "alice").0);
    assert!(lines.join("\n").contains("sort by memory"));
    let mut view = View::new(after, Some(&before), SortBy::Share, Duration::from_secs(2));
    view.sort = SortBy::Share.next().next();
    assert_eq!(view.sort, SortBy::Name);
    let lines = render(&view, 140, 24);
    assert!(line_of(&lines, "alice").0 < line_of(&lines, "bob").0);
}

#[test]
fn the_first_frame_has_no_rates_yet_and_a_failed_refresh_is_shown() {
    let (_, after) = two_reports();
    let mut view = View::new(after, None, SortBy::Share, Duration::from_secs(1));
    view.error = Some("cannot reach gpumuxd".into());
    let lines = render(&view, 140, 24);
    let (_, alice) = line_of(&lines, "alice");
    assert!(
        alice.trim_end_matches('│').trim_end().ends_with('-'),
        "{alice}"
    );
    let screen = lines.join("\n");
    assert!(
        screen.contains("appear after the first refresh"),
        "{screen}"
    );
    assert!(
        screen.contains("refresh failed: cannot reach gpumuxd"),
        "{screen}"
    );
}

#[test]
fn a_restarted_daemon_is_not_diffed_against_the_old_one() {
    let (before, mut after) = two_reports();
    after.generation += 1;
    let view = View::new(after, Some(&before), SortBy::Share, Duration::from_secs(2));
    assert!(view.elapsed.is_none());
    assert!(view.tenants.is_empty() && view.processes.is_empty());
}

#[test]
fn text_output_is_the_same_table() {
    let (before, after) = two_reports();
    let view = View::new(after, Some(&before), SortBy::Share, Duration::from_secs(2));
    let text = to_text(&view, 132);
    assert!(!text.contains('\x1b'));
    assert!(text.lines().all(|l| l.chars().count() <= 132));
    assert!(
        text.contains("SHARE 10s") && text.contains("alice") && text.contains("2002 stalled"),
        "{text}"
    );
    assert!(text.contains("config error"), "everything fits: {text}");
}
