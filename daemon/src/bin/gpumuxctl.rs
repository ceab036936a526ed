//! gpumuxctl: the operator's CLI. Exit codes: 0 ok, 1 operation failed, 2 usage/config error.

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand};
use gpumux_common::config::{DEFAULT_CONFIG_PATH, DaemonConfig, TenantQuota};
use gpumux_common::names::{tenant_dir, tenant_socket, validate_tenant_name};
use gpumux_common::size::format_size;
use gpumux_common::{ENV_SOCKET, SHIM_INSTALL_PATH};
use gpumux_daemon::cdi;
use gpumux_daemon::status::StatusReport;
use gpumux_daemon::top::{self, SortBy};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.1..=3600.0).contains(&x) => Ok(x),
        Ok(_) => Err("the interval is in seconds, from 0.1 to 3600".into()),
        Err(e) => Err(format!("{e}")),
    }
}

#[derive(Parser)]
#[command(
    version,
    about = "Operate gpumux: status, a live view (top), container injection (env, CDI), config checks"
)]
struct Args {
    /// Daemon config file (for state_dir and tenants_dir).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Devices and, per tenant: processes, memory used (of which overhead)/limit, weight,
    /// device-time share; processes on a GPU without gpumux (unmanaged).
    Status {
        /// Machine-readable JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live view: per tenant and device, share of device time (10 s window) against the
    /// share its weight entitles it to, memory against the limit, refusals, launches/s and
    /// slice waits, with each process under its tenant. `q` quits, `s` changes the sort.
    /// When stdout is not a terminal, prints the table as text every interval.
    Top {
        /// Seconds between refreshes.
        #[arg(long, short = 'd', default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
        /// Order of the tenants.
        #[arg(long, value_enum, default_value_t = SortBy::Share)]
        sort: SortBy,
        /// Stop after this many refreshes.
        #[arg(long, short = 'n', value_name = "N")]
        iterations: Option<u64>,
        /// Print text frames even on a terminal (as when stdout is a pipe or file).
        #[arg(long, short = 'b')]
        batch: bool,
    },
    /// The environment and mounts that put a container under a tenant's quota.
    Env {
        tenant: String,
        /// Print `docker run`/`podman run` arguments instead of KEY=VALUE lines.
        #[arg(long)]
        docker: bool,
    },
    /// Validate the daemon config and every tenant file (or just PATH).
    Check { path: Option<PathBuf> },
    /// A CDI spec with one device per tenant, for `podman run --device gpumux.dev/tenant=NAME`.
    Cdi {
        /// Write the spec to FILE atomically (e.g. /etc/cdi/gpumux.json) instead of stdout;
        /// with no tenant left, FILE is removed.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Describe only this tenant (repeatable); default: every tenant file in tenants_dir.
        #[arg(long = "tenant", value_name = "NAME")]
        tenants: Vec<String>,
    },
}

/// An error with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: e.into(),
    }
}
fn failed(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: e.into(),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            e.print().ok();
            return ExitCode::from(code);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("gpumuxctl: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn daemon_config(path: &Path) -> Result<DaemonConfig, Failure> {
    if !path.exists() && path.as_os_str() == DEFAULT_CONFIG_PATH {
        return Ok(DaemonConfig::default());
    }
    DaemonConfig::load(path).map_err(usage)
}

fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Command::Status { json } => {
            let cfg = daemon_config(&args.config)?;
            let report = gpumux_daemon::status::fetch(&cfg.state_dir).map_err(failed)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
            } else {
                print!("{}", render_status(&report));
            }
            Ok(())
        }
        Command::Top {
            interval,
            sort,
            iterations,
            batch,
        } => {
            let cfg = daemon_config(&args.config)?;
            let opts = top::Options {
                interval: Duration::from_secs_f64(interval),
                sort,
                iterations,
                batch,
            };
            top::run(&cfg.state_dir, opts).map_err(failed)
        }
        Command::Env { tenant, docker } => {
            validate_tenant_name(&tenant).map_err(usage)?;
            let cfg = daemon_config(&args.config)?;
            let socket = tenant_socket(&cfg.state_dir, &tenant);
            let dir = tenant_dir(&cfg.state_dir, &tenant);
            if docker {
                println!(
                    "-e LD_PRELOAD={SHIM_INSTALL_PATH} -e {ENV_SOCKET}={} -v {SHIM_INSTALL_PATH}:{SHIM_INSTALL_PATH}:ro -v {}:{}:ro",
                    socket.display(),
                    dir.display(),
                    dir.display()
                );
            } else {
                println!("LD_PRELOAD={SHIM_INSTALL_PATH}");
                println!("{ENV_SOCKET}={}", socket.display());
                println!(
                    "# mounts: {SHIM_INSTALL_PATH} (read-only) and {} (the tenant's socket directory, read-only)",
                    dir.display()
                );
            }
            if !socket.exists() {
                eprintln!(
                    "gpumuxctl: note: {} does not exist yet; is the tenant file in place and gpumuxd running?",
                    socket.display()
                );
            }
            Ok(())
        }
        Command::Check { path } => check(&args.config, path.as_deref()),
        Command::Cdi { output, tenants } => cdi_spec(&args.config, output.as_deref(), tenants),
    }
}

fn cdi_spec(config: &Path, output: Option<&Path>, tenants: Vec<String>) -> Result<(), Failure> {
    let cfg = daemon_config(config)?;
    let tenants = if tenants.is_empty() {
        let scan = cdi::tenants_in(&cfg.tenants_dir).map_err(usage)?;
        for (path, why) in &scan.skipped {
            eprintln!("gpumuxctl: note: skipping {}: {why}", path.display());
        }
        scan.tenants
    } else {
        for t in &tenants {
            validate_tenant_name(t).map_err(usage)?;
            cdi::validate_device_name(t).map_err(usage)?;
        }
        tenants
    };
    let injection = cdi::Injection {
        state_dir: cfg.state_dir.clone(),
        shim_path: PathBuf::from(SHIM_INSTALL_PATH),
        device_nodes: cdi::nvidia_device_nodes(Path::new("/dev")),
    };
    let mut spec = match cdi::spec(&tenants, &injection, &cfg.tenants_dir) {
        Ok(s) => s,
        Err(e @ cdi::CdiError::NoTenants(_)) => {
            // CDI rejects a spec without devices: a stale file would offer deleted tenants.
            if let Some(out) = output {
                if cdi::remove(out).map_err(failed)? {
                    eprintln!("gpumuxctl: {e}; removed {}", out.display());
                } else {
                    eprintln!("gpumuxctl: {e}; nothing written");
                }
                return Ok(());
            }
            return Err(failed(e));
        }
        Err(e) => return Err(usage(e)),
    };
    // Tenants created for Kubernetes say which pod (or claim) they stand for.
    for d in &mut spec.devices {
        let path = cfg.tenants_dir.join(format!("{}.toml", d.name));
        if let Ok(TenantQuota {
            owner: Some(owner), ..
        }) = TenantQuota::load(&path)
        {
            d.annotations = cdi::owner_annotations(&d.name, Some(&owner));
        }
    }
    if injection.device_nodes.is_empty() {
        eprintln!("gpumuxctl: note: no /dev/nvidia* device nodes on this host; the spec adds none");
    }
    let json = cdi::to_json(&spec);
    match output {
        Some(out) => {
            cdi::write_atomically(out, &json).map_err(failed)?;
            eprintln!(
                "gpumuxctl: wrote {} ({} tenant(s): {})",
                out.display(),
                spec.devices.len(),
                spec.devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        None => print!("{json}"),
    }
    Ok(())
}

fn check(config: &Path, only: Option<&Path>) -> Result<(), Failure> {
    let mut errors = Vec::new();
    let mut checked = 0;
    let mut check_tenant = |p: &Path, errors: &mut Vec<String>| {
        checked += 1;
        match TenantQuota::load(p) {
            Ok(q) => println!(
                "ok   {}: tenant {} memory_limit={} weight={}{}",
                p.display(),
                q.name,
                format_size(q.memory_limit),
                q.weight,
                q.compute_limit_permille
                    .map(|c| format!(" compute_limit={}%", c as f64 / 10.0))
                    .unwrap_or_default()
                    + &format!(" priority={}", q.priority)
                    + &q.owner
                        .map(|o| format!(" owner={}", o.display()))
                        .unwrap_or_default()
            ),
            Err(e) => errors.push(e.to_string()),
        }
    };
    match only {
        Some(p) if p.is_dir() => {
            for entry in std::fs::read_dir(p).map_err(usage)?.flatten() {
                if entry.path().extension().is_some_and(|e| e == "toml") {
                    check_tenant(&entry.path(), &mut errors);
                }
            }
        }
        Some(p) if looks_like_daemon_config(p) => match DaemonConfig::load(p) {
            Ok(_) => {
                checked += 1;
                println!("ok   {}: daemon config", p.display());
            }
            Err(e) => errors.push(e.to_string()),
        },
        Some(p) => check_tenant(p, &mut errors),
        None => {
            let cfg = match daemon_config(config) {
                Ok(c) => {
                    println!("ok   {}: daemon config", config.display());
                    c
                }
                Err(f) => {
                    errors.push(format!("{:#}", f.error));
                    DaemonConfig::default()
                }
            };
            match std::fs::read_dir(&cfg.tenants_dir) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let p = entry.path();
                        if p.extension().is_some_and(|e| e == "toml")
                            && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                        {
                            check_tenant(&p, &mut errors);
                        }
                    }
                }
                Err(e) => errors.push(format!(
                    "{}: cannot read tenants dir: {e}",
                    cfg.tenants_dir.display()
                )),
            }
        }
    }
    for e in &errors {
        eprintln!("bad  {e}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(usage(anyhow!(
            "{} of {} file(s) rejected",
            errors.len(),
            checked.max(errors.len())
        )))
    }
}

fn looks_like_daemon_config(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "gpumuxd.toml")
}

fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    writeln!(
        s,
        "gpumuxd {} (pid {}), up {:.0}s, quantum {} ms",
        r.version, r.pid, r.uptime_s, r.quantum_ms
    )
    .ok();
    for d in &r.devices {
        writeln!(
            s,
            "GPU {}  {}  {}  {}",
            d.index,
            d.name,
            d.uuid,
            format_size(d.total_bytes)
        )
        .ok();
    }
    writeln!(
        s,
        "\n{:<20} {:>4} {:>6} {:>5} {:>12} {:>12} {:>12} {:>8} {:>9} {:>10} {:>8}  OWNER",
        "TENANT",
        "GPU",
        "WEIGHT",
        "PROCS",
        "MEM USED",
        "OVERHEAD",
        "MEM LIMIT",
        "REFUSED",
        "SHARE 10s",
        "CAP",
        "PRIORITY"
    )
    .ok();
    for t in &r.tenants {
        // A removed tenant's processes are still shown (held at weight 1, no new memory).
        let name = if t.removed {
            format!("{} (removed)", t.name)
        } else {
            t.name.clone()
        };
        for d in &t.devices {
            writeln!(
                s,
                "{:<20} {:>4} {:>6} {:>5} {:>12} {:>12} {:>12} {:>8} {:>9} {:>10} {:>8}  {}",
                name,
                d.index,
                t.weight,
                t.processes.len(),
                format_size(d.memory_used),
                format_size(d.memory_overhead),
                format_size(d.memory_limit),
                d.allocations_refused,
                d.device_time_share
                    .map_or_else(|| "-".into(), |x| format!("{:.1}%", x * 100.0)),
                t.compute_limit_percent
                    .map_or_else(|| "-".into(), |c| format!("{c}%")),
                t.priority,
                t.owner.as_ref().map_or_else(|| "-".into(), |o| o.display()),
            )
            .ok();
        }
    }
    if r.tenants.is_empty() {
        writeln!(s, "(no tenants: add quota files to the tenants directory)").ok();
    }
    if !r.unmanaged.is_empty() {
        writeln!(
            s,
            "\nUNMANAGED (on the GPU without gpumux)\n{:>8} {:>4} {:>12} {:<20}",
            "PID", "GPU", "MEMORY", "TENANT"
        )
        .ok();
        for u in &r.unmanaged {
            writeln!(
                s,
                "{:>8} {:>4} {:>12} {:<20}",
                u.pid,
                u.device,
                format_size(u.memory),
                u.tenant.as_deref().unwrap_or("unknown")
            )
            .ok();
        }
    }
    for e in &r.config_errors {
        writeln!(s, "config error: {e}").ok();
    }
    s
}
