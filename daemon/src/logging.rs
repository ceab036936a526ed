//! gpumuxd's log: where it goes and how it looks, and rate limiting of repeated warnings.
//!
//! - **On a terminal**: colour and timestamps (tracing's usual format; `NO_COLOR` turns the
//!   colour off).
//! - **Into a file or pipe**: the same without colour codes.
//! - **Under systemd** (`$JOURNAL_STREAM` names stderr's device and inode): no timestamps of
//!   its own (the journal keeps them) and a syslog priority prefix (`<3>` error, `<4>` warning,
//!   `<6>` info, `<7>` debug) on every line, which journald turns into the entry's priority,
//!   so `journalctl -u gpumuxd -p warning` works.
//! - **Repeated warnings and errors** pass at most [`TENANT_WARN_BURST`] time per
//!   [`WARN_INTERVAL`] per log site and tenant (lines with a `tenant` field), or
//!   [`WARN_BURST`] times per log site (the daemon's own trouble); the rest are counted and
//!   reported in one summary line when the interval ends ([`RateLimitLayer`], on
//!   [`crate::ratelimit`]). Any `tracing::warn!`/`error!` in the daemon is covered: give it a
//!   `tenant` field when a tenant causes it, so one noisy tenant can neither flood the log nor
//!   silence the others' warnings.

use crate::ratelimit::{RateLimiter, TENANT_WARN_BURST, Verdict, WARN_BURST, WARN_INTERVAL};
use std::collections::HashMap;
use std::fmt;
use std::io::IsTerminal;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The shape of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A terminal: colour and timestamps.
    Terminal,
    /// A file or pipe: timestamps, no colour.
    Plain,
    /// systemd's journal: priority prefixes, no timestamps, no colour.
    Journal,
}

impl Output {
    /// Decides from the environment and what stderr is.
    pub fn detect() -> Output {
        let stderr = std::io::stderr();
        let journal = std::env::var("JOURNAL_STREAM").ok().is_some_and(|v| {
            nix::sys::stat::fstat(&stderr)
                .is_ok_and(|st| journal_stream_matches(&v, st.st_dev, st.st_ino))
        });
        if journal {
            Output::Journal
        } else if stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        {
            Output::Terminal
        } else {
            Output::Plain
        }
    }
}

/// Whether `$JOURNAL_STREAM` (`DEVICE:INODE`, decimal) names the file with `dev` and `ino`:
/// systemd's test that stderr is still the journal stream it set up (not redirected since).
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Formats events for the journal: `<N>` then tracing's format without time and level.
struct JournalFormat(format::Format<format::Full, ()>);

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The formatting layer for `output`, writing to `writer`.
pub fn fmt_layer<S, W>(output: Output, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match output {
        Output::Terminal => layer.with_ansi(true).boxed(),
        Output::Plain => layer.with_ansi(false).boxed(),
        Output::Journal => layer
            .with_ansi(false)
            .event_format(JournalFormat(
                format::format()
                    .without_time()
                    .with_level(false)
                    .with_ansi(false),
            ))
            .boxed(),
    }
}

/// Installs gpumuxd's logger on stderr: `filter`, the shape [`Output::detect`] picks, and
/// rate limiting of repeated warnings (with its reporter thread, which sleeps unless
/// something was held back). Returns the shape chosen.
pub fn init(filter: tracing_subscriber::EnvFilter) -> Output {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let output = Output::detect();
    let limit = RateLimitLayer::new(WARN_INTERVAL, WARN_BURST, TENANT_WARN_BURST);
    let reporter = limit.spawn_reporter();
    tracing_subscriber::registry()
        .with(filter)
        .with(limit)
        .with(fmt_layer(output, std::io::stderr))
        .init();
    if let Err(e) = reporter {
        tracing::warn!("cannot start the log rate limiter's reporter thread: {e}");
    }
    output
}

/// What a warning is counted under: its log site and the tenant it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    site: Identifier,
    tenant: Option<String>,
}

/// What is said about a site's held-back lines.
#[derive(Debug, Clone)]
struct Sample {
    message: String,
    location: String,
}

#[derive(Debug)]
struct State {
    limiter: RateLimiter<Key>,
    /// Lines per window of a key with a tenant (the limiter's own burst is for the others).
    tenant_burst: u32,
    samples: HashMap<Key, Sample>,
    /// Summaries due now (from an event that found its window ended).
    due: Vec<(Key, u64)>,
    /// Until when the reporter sleeps (None: until woken).
    reporter_until: Option<Instant>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// A tracing layer that rate-limits warnings and errors per log site and tenant.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Fields {
    tenant: Option<String>,
    message: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "tenant" => self.tenant = Some(value.to_string()),
            "message" => self.message = Some(value.to_string()),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "tenant" => self.tenant = Some(format!("{value:?}").trim_matches('"').to_string()),
            "message" => self.message = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl RateLimitLayer {
    /// At most `burst` lines per log site per `interval`, `tenant_burst` per log site and
    /// tenant for lines with a `tenant` field.
    pub fn new(interval: Duration, burst: u32, tenant_burst: u32) -> Self {
        RateLimitLayer {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    limiter: RateLimiter::new(interval, burst),
                    tenant_burst,
                    samples: HashMap::new(),
                    due: Vec::new(),
                    reporter_until: None,
                }),
                wake: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while logging leaves counts that are still counts: keep going.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Logs the summaries of windows that ended by `now`, on the calling thread; returns how
    /// many lines it wrote. The reporter thread calls this; tests may too.
    pub fn report(&self, now: Instant) -> usize {
        let (secs, lines): (u64, Vec<(Key, u64, Option<Sample>)>) = {
            let mut st = self.lock();
            let mut due = std::mem::take(&mut st.due);
            due.extend(st.limiter.expired(now));
            let lines = due
                .into_iter()
                .map(|(k, n)| {
                    let sample = st.samples.get(&k).cloned();
                    (k, n, sample)
                })
                .collect();
            // Forget samples of windows that are gone.
            let State {
                limiter, samples, ..
            } = &mut *st;
            samples.retain(|k, _| limiter.tracks(k));
            (limiter.interval().as_secs(), lines)
        };
        for (key, n, sample) in &lines {
            let (message, location) = sample.as_ref().map_or(("(message not kept)", "?"), |s| {
                (s.message.as_str(), s.location.as_str())
            });
            match &key.tenant {
                Some(tenant) => tracing::warn!(
                    tenant = %tenant,
                    "{n} more like this in the last {secs}s, not shown: {message} ({location})"
                ),
                None => tracing::warn!(
                    "{n} more like this in the last {secs}s, not shown: {message} ({location})"
                ),
            }
        }
        lines.len()
    }

    /// Starts the thread that writes summaries when windows end. It sleeps (no timer) while
    /// nothing is held back, and never receives signals (gpumuxd reads them from a signalfd,
    /// which needs them blocked in every thread).
    pub fn spawn_reporter(&self) -> std::io::Result<()> {
        use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
        let me = self.clone();
        let mut old = SigSet::empty();
        // The new thread inherits the mask in force when it is created: all blocked.
        pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut old),
        )
        .map_err(std::io::Error::from)?;
        let spawned = std::thread::Builder::new()
            .name("log-limit".into())
            .spawn(move || me.reporter_loop());
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).map_err(std::io::Error::from)?;
        spawned.map(|_| ())
    }

    fn reporter_loop(&self) {
        loop {
            self.report(Instant::now());
            let mut st = self.lock();
            if !st.due.is_empty() {
                continue;
            }
            let until = st.limiter.next_report();
            st.reporter_until = until;
            match until {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    let _unused = self.shared.wake.wait_timeout(st, wait);
                }
                None => {
                    let _unused = self.shared.wake.wait(st);
                }
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for RateLimitLayer {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let key = Key {
            site: meta.callsite(),
            tenant: fields.tenant,
        };
        let now = Instant::now();
        let mut st = self.lock();
        let verdict = match key.tenant {
            Some(_) => {
                let burst = st.tenant_burst;
                st.limiter.check_up_to(&key, burst, now)
            }
            None => st.limiter.check(&key, now),
        };
        match verdict {
            Verdict::Pass { suppressed_before } => {
                if suppressed_before > 0 {
                    st.due.push((key.clone(), suppressed_before));
                    self.shared.wake.notify_one();
                }
                st.samples.entry(key).or_insert_with(|| Sample {
                    message: fields.message.unwrap_or_default(),
                    location: format!(
                        "{}:{}",
                        meta.file().unwrap_or("?"),
                        meta.line().unwrap_or(0)
                    ),
                });
                true
            }
            Verdict::Suppress => {
                // Wake the reporter only if it would otherwise sleep past this window's end.
                let next = st.limiter.next_report();
                if next.is_some() && (st.reporter_until.is_none() || next < st.reporter_until) {
                    st.reporter_until = next;
                    self.shared.wake.notify_one();
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn log_some(output: Output) -> String {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with(fmt_layer(output, buf.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::error!(tenant = "a", "broken");
            tracing::warn!(pid = 7, "slow");
            tracing::info!("ready");
            tracing::debug!("detail");
        });
        buf.text()
    }

    #[test]
    fn journal_lines_carry_priorities_and_no_time_or_colour() {
        let text = log_some(Output::Journal);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for (line, prefix, word) in [
            (lines[0], "<3>", "broken"),
            (lines[1], "<4>", "slow"),
            (lines[2], "<6>", "ready"),
            (lines[3], "<7>", "detail"),
        ] {
            assert!(line.starts_with(prefix), "{line}");
            assert!(line.contains(word), "{line}");
            // Right after the priority comes the message's target: no timestamp, no level.
            assert!(
                line[3..].starts_with("gpumux_daemon::logging"),
                "a timestamp or level after the priority: {line}"
            );
        }
        assert!(lines[0].contains("tenant=\"a\"") || lines[0].contains("tenant=a"));
        assert!(
            !text.contains('\x1b'),
            "colour codes in the journal: {text:?}"
        );
    }

    #[test]
    fn plain_lines_have_timestamps_and_levels_but_no_colour() {
        let text = log_some(Output::Plain);
        let first = text.lines().next().unwrap();
        // RFC 3339 timestamp first (e.g. 2026-01-02T03:04:05.123456Z).
        let ts = first.split_whitespace().next().unwrap();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T'),
            "{first}"
        );
        assert!(first.contains("ERROR") && text.contains(" WARN "), "{text}");
        assert!(!text.contains('\x1b'), "colour codes in a file: {text:?}");
        assert!(!text.starts_with('<'));
    }

    #[test]
    fn terminal_lines_are_coloured() {
        assert!(log_some(Output::Terminal).contains('\x1b'));
    }

    #[test]
    fn journal_stream_must_name_this_file() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(journal_stream_matches("8:1234\n", 8, 1234));
        assert!(!journal_stream_matches("8:1235", 8, 1234));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        assert!(!journal_stream_matches("", 8, 1234));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("x:y", 8, 1234));
    }

    #[test]
    fn repeated_warnings_are_limited_per_site_and_tenant_then_summarised() {
        let buf = Buf::default();
        let limit = RateLimitLayer::new(Duration::from_secs(10), 5, 3);
        let sub = tracing_subscriber::registry()
            .with(limit.clone())
            .with(fmt_layer(Output::Journal, buf.clone()));
        tracing::subscriber::with_default(sub, || {
            for i in 0..50 {
                tracing::warn!(tenant = "noisy", i, "bad message from a tenant process");
            }
            tracing::warn!(tenant = "quiet", "bad message from a tenant process");
            for _ in 0..8 {
                tracing::warn!("the daemon's own trouble");
            }
            for _ in 0..5 {
                tracing::info!("info is never limited");
            }
            assert_eq!(limit.report(Instant::now()), 0, "nothing is due yet");
            // The window ends: one summary line for the noisy tenant, none for the quiet one,
            // one for the daemon's own site.
            assert_eq!(limit.report(Instant::now() + Duration::from_secs(11)), 2);
        });
        let text = buf.text();
        let noisy: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("bad message") && l.contains("noisy"))
            .collect();
        assert_eq!(noisy.len(), 4, "3 lines and one summary:\n{text}");
        let summary = noisy[3];
        assert!(
            summary.starts_with("<4>")
                && summary.contains("47 more like this in the last 10s")
                && summary.contains("logging.rs:"),
            "{summary}"
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("bad message") && l.contains("quiet"))
                .count(),
            1
        );
        assert_eq!(text.matches("info is never limited").count(), 5);
        // Lines no tenant caused have their own, larger allowance (5 here), then a summary.
        let own: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("the daemon's own trouble"))
            .collect();
        assert_eq!(own.len(), 6, "{text}");
        assert!(own[5].contains("3 more like this"), "{}", own[5]);
    }
}
