//! gpumuxd's one rate-limiting facility: per-key limits in fixed windows, and the limits the
//! daemon applies with it. Pure logic, no I/O, no clock (callers pass `now`).
//!
//! [`RateLimiter`]: the first `burst` events of a key in a window pass; the rest are counted,
//! not passed. When the window ends, the count is handed back once ([`RateLimiter::expired`],
//! or with the next event of that key), so the owner can say "N more suppressed" in one line
//! per interval. Two uses:
//! - **the log** ([`crate::logging`]): every warning and error, per log site and tenant:
//!   [`TENANT_WARN_BURST`] line per site per tenant (a tenant's misbehaviour) or [`WARN_BURST`]
//!   (the daemon's own trouble) per [`WARN_INTERVAL`], then one summary line;
//! - **`Demand` messages**, per connection ([`DEMAND_BURST`] per [`DEMAND_WINDOW`]): more are
//!   dropped (the server counts them).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Demands one connection may send per [`DEMAND_WINDOW`]; more are dropped. An honest shim
/// sends one per waiting episode plus one per waiting thread every 100 ms.
pub const DEMAND_BURST: u32 = 200;
/// The window of the per-connection demand limit: 200 per 100 ms is 2,000 per second.
pub const DEMAND_WINDOW: Duration = Duration::from_millis(100);
/// Messages read from one connection per readiness event before others get their turn.
pub const MESSAGES_PER_WAKEUP: usize = 64;
/// How long a log rate-limit window lasts.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Lines one log site may write per window when no tenant caused them.
pub const WARN_BURST: u32 = 10;
/// Lines one log site may write per window about one tenant (its misbehaviour cannot flood
/// the log, nor silence lines about other tenants).
pub const TENANT_WARN_BURST: u32 = 1;

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through. `suppressed_before` events of this key were held back in the window
    /// that ended just before this one (0 normally): report them once.
    Pass { suppressed_before: u64 },
    /// Over the limit in this window: drop it (it is counted).
    Suppress,
}

#[derive(Debug, Clone)]
struct Window {
    start: Instant,
    passed: u32,
    suppressed: u64,
}

/// Per-key fixed-window limiter.
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    interval: Duration,
    burst: u32,
    windows: HashMap<K, Window>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// At most `burst` events per key in each `interval` (burst 0 is taken as 1).
    pub fn new(interval: Duration, burst: u32) -> Self {
        RateLimiter {
            interval,
            burst: burst.max(1),
            windows: HashMap::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Decides about one event of `key` at `now`, at most the limiter's `burst` per window.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        self.check_up_to(key, self.burst, now)
    }

    /// Decides about one event of `key` at `now`, at most `burst` (at least 1) per window: for
    /// keys of a class with its own allowance.
    pub fn check_up_to(&mut self, key: &K, burst: u32, now: Instant) -> Verdict {
        if let Some(w) = self.windows.get_mut(key)
            && now.saturating_duration_since(w.start) < self.interval
        {
            if w.passed < burst.max(1) {
                w.passed += 1;
                return Verdict::Pass {
                    suppressed_before: 0,
                };
            }
            w.suppressed += 1;
            return Verdict::Suppress;
        }
        let before = self.windows.get(key).map_or(0, |w| w.suppressed);
        self.windows.insert(
            key.clone(),
            Window {
                start: now,
                passed: 1,
                suppressed: 0,
            },
        );
        Verdict::Pass {
            suppressed_before: before,
        }
    }

    /// Windows that have ended by `now`: forgotten, and those that held events back are
    /// returned with their counts (each count is returned once).
    pub fn expired(&mut self, now: Instant) -> Vec<(K, u64)> {
        let mut out = Vec::new();
        let interval = self.interval;
        self.windows.retain(|k, w| {
            if now.saturating_duration_since(w.start) < interval {
                return true;
            }
            if w.suppressed > 0 {
                out.push((k.clone(), w.suppressed));
            }
            false
        });
        out
    }

    /// Forgets `key` (e.g. its connection closed); what it held back is not reported.
    pub fn forget(&mut self, key: &K) {
        self.windows.remove(key);
    }

    /// When the earliest window that is holding events back ends (None if none is).
    pub fn next_report(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|w| w.suppressed > 0)
            .map(|w| w.start + self.interval)
            .min()
    }

    /// Whether `key` has a window open (ended or not) that has not been forgotten yet.
    pub fn tracks(&self, key: &K) -> bool {
        self.windows.contains_key(key)
    }

    /// Keys currently tracked (bounded by the distinct keys seen in one interval).
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: Verdict = Verdict::Pass {
        suppressed_before: 0,
    };

    #[test]
    fn passes_a_burst_then_counts_what_it_holds_back() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Duration::from_secs(10), 3);
        let k = "a";
        assert_eq!(r.check(&k, t0), PASS);
        assert_eq!(r.check(&k, t0), PASS);
        assert_eq!(r.check(&k, t0 + Duration::from_secs(1)), PASS);
        for i in 0..5 {
            assert_eq!(
                r.check(&k, t0 + Duration::from_secs(2 + i)),
                Verdict::Suppress
            );
        }
        // Another key is not affected.
        assert_eq!(r.check(&"b", t0 + Duration::from_secs(2)), PASS);
        assert_eq!(r.next_report(), Some(t0 + Duration::from_secs(10)));
        assert!(r.expired(t0 + Duration::from_secs(9)).is_empty());
        // The window ends: its count is reported once, the quiet key is forgotten silently.
        assert_eq!(r.expired(t0 + Duration::from_secs(12)), vec![("a", 5)]);
        assert!(r.is_empty());
        assert!(r.expired(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(r.next_report(), None);
    }

    #[test]
    fn the_next_event_after_a_window_carries_its_count_when_not_reported_yet() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Duration::from_secs(1), 1);
        assert_eq!(r.check(&1, t0), PASS);
        assert_eq!(r.check(&1, t0), Verdict::Suppress);
        assert_eq!(r.check(&1, t0), Verdict::Suppress);
        assert_eq!(
            r.check(&1, t0 + Duration::from_secs(1)),
            Verdict::Pass {
                suppressed_before: 2
            }
        );
        // Reported with the event: not again by `expired`.
        assert_eq!(
            r.check(&1, t0 + Duration::from_millis(1500)),
            Verdict::Suppress
        );
        assert_eq!(r.expired(t0 + Duration::from_secs(2)), vec![(1, 1)]);
    }

    #[test]
    fn a_zero_burst_still_lets_one_through() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Duration::from_secs(1), 0);
        assert_eq!(r.check(&(), t0), PASS);
        assert_eq!(r.check(&(), t0), Verdict::Suppress);
        assert_eq!(r.check_up_to(&(), 0, t0), Verdict::Suppress);
    }

    #[test]
    fn a_class_of_keys_may_have_its_own_allowance() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Duration::from_secs(10), 10);
        assert_eq!(r.check_up_to(&"tenant", 1, t0), PASS);
        assert_eq!(r.check_up_to(&"tenant", 1, t0), Verdict::Suppress);
        assert_eq!(
            (0..20).filter(|_| r.check(&"daemon", t0) == PASS).count(),
            10
        );
    }

    /// The demand limit: a burst of 200, then 200 per 100 ms (2,000/s) however long a flood
    /// lasts; a forgotten connection's key starts afresh.
    #[test]
    fn demands_pass_at_the_rate_and_no_faster() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(DEMAND_WINDOW, DEMAND_BURST);
        let passed = |r: &mut RateLimiter<u64>, at: Instant, n: usize| {
            (0..n)
                .filter(|_| r.check(&7, at) != Verdict::Suppress)
                .count()
        };
        assert_eq!(passed(&mut r, t0, 1000), 200);
        // A second of flooding, 100 messages per millisecond.
        let flood: usize = (1..=1000)
            .map(|ms| passed(&mut r, t0 + Duration::from_millis(ms), 100))
            .sum();
        assert!(
            (1800..=2200).contains(&flood),
            "{flood} demands passed in 1 s"
        );
        // An honest process (one demand per 100 ms) loses none.
        let mut honest = RateLimiter::new(DEMAND_WINDOW, DEMAND_BURST);
        assert!((0..100).all(|i| honest.check(&1, t0 + DEMAND_WINDOW * i) != Verdict::Suppress));
        r.forget(&7);
        assert!(!r.tracks(&7));
        assert_eq!(passed(&mut r, t0 + Duration::from_millis(1001), 1000), 200);
    }
}
