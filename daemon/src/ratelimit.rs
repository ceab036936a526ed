//! Rate limits the daemon applies to what tenants can make it do: a token bucket per
//! connection for `Demand` messages, and a log limiter so that a flood of bad input yields one
//! summary line per interval instead of a line per message. Pure logic, unit-tested.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Demands one connection may send per second (sustained); more are dropped. An honest shim
/// sends one per waiting episode plus one per waiting thread every 100 ms.
pub const DEMANDS_PER_SECOND: f64 = 2000.0;
/// Demands one connection may send in a burst.
pub const DEMAND_BURST: f64 = 200.0;
/// Messages read from one connection per readiness event before others get their turn.
pub const MESSAGES_PER_WAKEUP: usize = 64;
/// Warnings about one tenant's misbehaviour are logged at most once per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Allows one log line per key per interval and counts what it held back.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    keys: HashMap<String, (Instant, u64)>,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            keys: HashMap::new(),
        }
    }

    /// `Some(n)` when a line for `key` may be logged now, `n` being how many were held back
    /// since the last one (to say in the line); `None` when it is held back.
    pub fn check(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.keys.get_mut(key) {
            Some((last, held)) if now.saturating_duration_since(*last) < self.interval => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                self.keys.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// Forgets keys that have been quiet for an interval (bounded memory).
    pub fn forget_quiet(&mut self, now: Instant) {
        let interval = self.interval;
        self.keys
            .retain(|_, (last, held)| *held > 0 || now.saturating_duration_since(*last) < interval);
    }
}

/// ` (N similar held back)` when `n > 0`, for the end of a rate-limited line.
pub fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(
            " ({n} similar in the last {}s not logged)",
            WARN_INTERVAL.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 10.0, t0);
        assert_eq!((0..50).filter(|_| b.allow(t0)).count(), 10);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..50).filter(|_| b.allow(t1)).count(), 10);
        // Time going backwards (it cannot with Instant, but a saved `last` may be newer).
        assert!(!b.allow(t0));
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(
            (0..50).filter(|_| b.allow(t2)).count(),
            10,
            "burst caps savings"
        );
    }

    #[test]
    fn limiter_logs_once_per_interval_with_a_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(l.check("a", t0), Some(0));
        for _ in 0..999 {
            assert_eq!(l.check("a", t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.check("b", t0), Some(0), "keys are independent");
        assert_eq!(l.check("a", t0 + Duration::from_secs(11)), Some(999));
        l.forget_quiet(t0 + Duration::from_secs(30));
        assert_eq!(l.check("a", t0 + Duration::from_secs(30)), Some(0));
        assert!(held_back(3).contains('3') && held_back(0).is_empty());
    }
}
