//! Rate limiting of repeated events, per key, in fixed windows: pure logic, no I/O, no clock.
//!
//! The first `burst` events of a key in a window pass; the rest are counted, not passed. When
//! the window ends, the count is handed back once ([`RateLimiter::expired`], or with the next
//! event of that key), so the owner can say "N more suppressed" in one line per interval.
//!
//! gpumuxd uses it for its log (every warning and error site, per tenant: see
//! [`crate::logging`]); the same type serves any per-key limit (e.g. per connection).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

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

    /// Decides about one event of `key` at `now`.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        if let Some(w) = self.windows.get_mut(key)
            && now.saturating_duration_since(w.start) < self.interval
        {
            if w.passed < self.burst {
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
    }
}
