//! Waiting for compute slices, as the daemon sees it: pure logic, no I/O.
//!
//! A process starts waiting on a device when its first `Demand` for it arrives while its
//! tenant does not hold the device, and stops when the tenant is granted the device. The
//! daemon records, per tenant and device:
//! - **slice wait**: each process's wait, from its first `Demand` to the grant (histogram);
//! - **grant latency**: the tenant's wait, from the first `Demand` of any of its processes to
//!   the grant (histogram; one observation per grant that answered a demand);
//!
//! and per process the total time it waited (shown by `gpumuxctl top`). The shim's own count
//! of thread waits (`wait_ns` in the accounting segment) is kept apart: it sums threads.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the wait histograms' buckets: 1 ms to 10 s, roughly ×2.5 apart,
/// so quanta from 5 ms to 1 s and waits of several quanta fall inside.
pub const WAIT_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations: counts per bucket (not cumulative) and the sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Finite upper bounds in seconds, ascending.
    pub le: Vec<f64>,
    /// Observations per bucket: `counts[i]` in (le[i-1], le[i]]; the last entry (one more than
    /// `le`) counts those above every bound.
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            le: WAIT_BUCKETS.to_vec(),
            counts: vec![0; WAIT_BUCKETS.len() + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .le
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(self.le.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum_seconds += s;
        self.count += 1;
    }

    /// `(upper bound, count)` per bucket, the last bound `+Inf`; counts not cumulative.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.le
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }

    /// The `q` quantile (0..=1), linearly interpolated inside its bucket as Prometheus'
    /// `histogram_quantile` does; None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (seen + c) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.le[i - 1] };
                let Some(&upper) = self.le.get(i) else {
                    // Above every bound: the highest bound is all that is known.
                    return self.le.last().copied();
                };
                return Some(lower + (upper - lower) * (rank - seen as f64) / c as f64);
            }
            seen += c;
        }
        self.le.last().copied()
    }
}

/// The two histograms of one tenant on one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantWaits {
    pub slice_wait: Histogram,
    pub grant_latency: Histogram,
}

#[derive(Debug, Default)]
struct TenantState {
    first_demand: Option<Instant>,
    hist: TenantWaits,
}

#[derive(Debug)]
struct ProcessState {
    tenant: String,
    /// Device → since when the process waits.
    since: HashMap<usize, Instant>,
    /// Device → total waited (completed waits).
    total: HashMap<usize, Duration>,
}

/// Waits of every connected process and tenant.
#[derive(Debug, Default)]
pub struct Waits {
    tenants: HashMap<(String, usize), TenantState>,
    /// Connection id → process.
    processes: HashMap<u64, ProcessState>,
}

impl Waits {
    /// Process `conn` of `tenant` asked for device `dev` (its tenant not holding it).
    /// Repeated demands of a wait change nothing.
    pub fn demand(&mut self, conn: u64, tenant: &str, dev: usize, now: Instant) {
        let p = self.processes.entry(conn).or_insert_with(|| ProcessState {
            tenant: tenant.to_string(),
            since: HashMap::new(),
            total: HashMap::new(),
        });
        p.since.entry(dev).or_insert(now);
        self.tenants
            .entry((tenant.to_string(), dev))
            .or_default()
            .first_demand
            .get_or_insert(now);
    }

    /// `tenant` was granted device `dev`: every wait of it there ends and is recorded.
    pub fn granted(&mut self, tenant: &str, dev: usize, now: Instant) {
        let t = self.tenants.entry((tenant.to_string(), dev)).or_default();
        if let Some(first) = t.first_demand.take() {
            t.hist
                .grant_latency
                .observe(now.saturating_duration_since(first));
        }
        for p in self.processes.values_mut().filter(|p| p.tenant == tenant) {
            if let Some(since) = p.since.remove(&dev) {
                let waited = now.saturating_duration_since(since);
                t.hist.slice_wait.observe(waited);
                *p.total.entry(dev).or_default() += waited;
            }
        }
    }

    /// `tenant`'s waits on `dev` end without a grant (the device is no longer time-sliced
    /// for it, or it is gone): forgotten, not recorded.
    pub fn cancel(&mut self, tenant: &str, dev: usize) {
        if let Some(t) = self.tenants.get_mut(&(tenant.to_string(), dev)) {
            t.first_demand = None;
        }
        for p in self.processes.values_mut().filter(|p| p.tenant == tenant) {
            p.since.remove(&dev);
        }
    }

    /// The process behind `conn` is gone.
    pub fn closed(&mut self, conn: u64) {
        self.processes.remove(&conn);
    }

    /// A tenant is gone: its histograms too.
    pub fn forget_tenant(&mut self, tenant: &str) {
        self.tenants.retain(|(t, _), _| t != tenant);
        self.processes.retain(|_, p| p.tenant != tenant);
    }

    /// How long process `conn` has waited for `dev` in all (the wait in progress included),
    /// and whether it is waiting now.
    pub fn process(&self, conn: u64, dev: usize, now: Instant) -> (Duration, bool) {
        let Some(p) = self.processes.get(&conn) else {
            return (Duration::ZERO, false);
        };
        let done = p.total.get(&dev).copied().unwrap_or_default();
        match p.since.get(&dev) {
            Some(&since) => (done + now.saturating_duration_since(since), true),
            None => (done, false),
        }
    }

    /// The histograms of `tenant` on `dev`, if it ever waited there.
    pub fn tenant(&self, tenant: &str, dev: usize) -> Option<&TenantWaits> {
        self.tenants
            .get(&(tenant.to_string(), dev))
            .map(|t| &t.hist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_grant_ends_the_waits_of_every_process_of_the_tenant_on_that_device() {
        let t0 = Instant::now();
        let mut w = Waits::default();
        w.demand(1, "a", 0, t0);
        w.demand(1, "a", 0, t0 + 50 * MS); // a re-announcement: same wait
        w.demand(2, "a", 0, t0 + 20 * MS);
        w.demand(3, "b", 0, t0 + 10 * MS);
        w.demand(1, "a", 1, t0 + 10 * MS); // another device
        assert_eq!(w.process(1, 0, t0 + 30 * MS), (30 * MS, true));
        w.granted("a", 0, t0 + 120 * MS);
        assert_eq!(w.process(1, 0, t0 + 500 * MS), (120 * MS, false));
        assert_eq!(w.process(2, 0, t0 + 500 * MS), (100 * MS, false));
        assert_eq!(w.process(3, 0, t0 + 500 * MS), (490 * MS, true));
        assert_eq!(w.process(1, 1, t0 + 20 * MS), (10 * MS, true));
        let a = w.tenant("a", 0).unwrap();
        assert_eq!(a.slice_wait.count, 2);
        assert!((a.slice_wait.sum_seconds - 0.22).abs() < 1e-9);
        assert_eq!(a.grant_latency.count, 1);
        assert!((a.grant_latency.sum_seconds - 0.12).abs() < 1e-9);
        // 0.1 s and 0.12 s: the (0.05, 0.1] and (0.1, 0.25] buckets.
        assert_eq!(a.slice_wait.counts[6], 1);
        assert_eq!(a.slice_wait.counts[7], 1);
        // A second wait adds up.
        w.demand(1, "a", 0, t0 + 200 * MS);
        w.granted("a", 0, t0 + 210 * MS);
        assert_eq!(w.process(1, 0, t0 + 300 * MS), (130 * MS, false));
        // A grant without a demand records nothing.
        w.granted("a", 0, t0 + 400 * MS);
        assert_eq!(w.tenant("a", 0).unwrap().grant_latency.count, 2);
    }

    #[test]
    fn cancelled_and_closed_waits_are_not_recorded() {
        let t0 = Instant::now();
        let mut w = Waits::default();
        w.demand(1, "a", 0, t0);
        w.cancel("a", 0);
        w.granted("a", 0, t0 + 10 * MS);
        assert_eq!(w.tenant("a", 0).unwrap().slice_wait.count, 0);
        assert_eq!(w.tenant("a", 0).unwrap().grant_latency.count, 0);
        w.demand(2, "a", 0, t0);
        w.closed(2);
        w.granted("a", 0, t0 + 10 * MS);
        assert_eq!(w.tenant("a", 0).unwrap().slice_wait.count, 0);
        assert_eq!(w.process(2, 0, t0), (Duration::ZERO, false));
        w.forget_tenant("a");
        assert!(w.tenant("a", 0).is_none());
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.99), None);
        for _ in 0..99 {
            h.observe(Duration::from_millis(3)); // (2.5 ms, 5 ms]
        }
        h.observe(Duration::from_secs(60)); // above every bound
        let b = h.buckets();
        assert_eq!(b.len(), WAIT_BUCKETS.len() + 1);
        assert_eq!(b[2], (0.005, 99));
        assert_eq!(b.last().copied(), Some((f64::INFINITY, 1)));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), h.count);
        let p50 = h.quantile(0.5).unwrap();
        assert!((0.0025..=0.005).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), Some(10.0));
    }
}
