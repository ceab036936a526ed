//! Weighted, work-conserving time-slicing of one device among tenants: pure logic, no I/O.
//!
//! The server feeds it what happened (a tenant wants the device, the holder's work drained,
//! time passed) and carries out what it answers (grant a slice, revoke one). Policy:
//! - **Virtual time** (stride scheduling): a tenant's virtual time advances by the device time
//!   it was charged divided by its weight; the waiting tenant with the least virtual time goes
//!   next, so shares converge to the weights. A tenant waking from idle starts at the least
//!   virtual time among the busy ones: idleness earns no credit to monopolise later.
//! - **Work-conserving**: a lone tenant keeps the device with no timer at all; a holder that
//!   stops launching while others wait gives the device up after `idle_grace`, not a quantum.
//! - **Honest charging**: the holder pays from grant until its work drained (or the drain timed
//!   out), overrun included.
//! - **compute_limit**: a token bucket refilled at the cap's rate; a capped tenant runs only
//!   with budget, even on an otherwise idle device.
//! - **No wedging**: a holder that does not drain within `drain_timeout` (stopped, stuck in a
//!   very long kernel, dead) is charged and passed over.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// What the server must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let `tenant` launch on the device for slice `epoch`.
    Grant { tenant: String, epoch: u32 },
    /// Stop `tenant` launching; it must drain and report `drained(epoch)`.
    Revoke { tenant: String, epoch: u32 },
}

/// What the server can observe about a tenant's activity on this device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Threads blocked at the launch gate.
    pub waiting: u32,
    /// Launches issued so far (monotonic).
    pub launches: u64,
    /// Threads waiting in a synchronize call for the tenant's own queued work.
    pub syncing: u32,
}

#[derive(Debug, Clone)]
struct Tenant {
    weight: u32,
    /// Fraction of device time allowed (None = uncapped).
    cap: Option<f64>,
    /// Charged ns / weight.
    vtime: f64,
    /// compute_limit token bucket, in ns of device time.
    budget: f64,
    budget_at: Instant,
    /// Asked for the device and not served since.
    wants: bool,
    charged_ns: u64,
    /// Since when the tenant has not wanted the device (None while it wants or holds it).
    idle_since: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Idle,
    Granted {
        tenant: String,
        epoch: u32,
        since: Instant,
        deadline: Option<Instant>,
        idle_check: Option<(Instant, u64)>,
    },
    Draining {
        tenant: String,
        epoch: u32,
        since: Instant,
        timeout_at: Instant,
    },
    /// Nobody eligible now; a capped tenant becomes eligible at `until`.
    Throttled {
        until: Instant,
    },
}

/// Time-slicing state of one device.
#[derive(Debug, Clone)]
pub struct Scheduler {
    quantum: Duration,
    drain_timeout: Duration,
    idle_grace: Duration,
    tenants: BTreeMap<String, Tenant>,
    state: State,
    epoch: u32,
    /// Completed slices (tenant, start, end) for recent-share reporting.
    history: VecDeque<(String, Instant, Instant)>,
    created: Instant,
}

/// How far back `recent_shares` looks.
pub const SHARE_WINDOW: Duration = Duration::from_secs(10);

impl Scheduler {
    pub fn new(quantum: Duration) -> Self {
        Scheduler {
            quantum,
            drain_timeout: (quantum * 4).max(Duration::from_millis(200)),
            idle_grace: (quantum / 10).clamp(Duration::from_millis(1), Duration::from_millis(10)),
            tenants: BTreeMap::new(),
            state: State::Idle,
            epoch: 0,
            history: VecDeque::new(),
            created: Instant::now(),
        }
    }

    pub fn quantum(&self) -> Duration {
        self.quantum
    }

    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// Adds or updates a tenant (weight 1..=1000, cap in per-mille or none).
    pub fn set_tenant(&mut self, name: &str, weight: u32, cap_permille: Option<u32>, now: Instant) {
        let cap = cap_permille
            .filter(|&c| c < 1000)
            .map(|c| c as f64 / 1000.0);
        let min_vtime = self.min_vtime(now);
        let t = self
            .tenants
            .entry(name.to_string())
            .or_insert_with(|| Tenant {
                weight,
                cap,
                vtime: min_vtime.unwrap_or(0.0),
                budget: 0.0,
                budget_at: now,
                wants: false,
                charged_ns: 0,
                idle_since: Some(now),
            });
        t.weight = weight.max(1);
        t.cap = cap;
    }

    /// Removes a tenant; if it held the device, the device is handed on.
    pub fn remove_tenant(
        &mut self,
        name: &str,
        now: Instant,
        activity: &dyn Fn(&str) -> Activity,
    ) -> Vec<Action> {
        self.tenants.remove(name);
        match &self.state {
            State::Granted { tenant, .. } | State::Draining { tenant, .. } if tenant == name => {
                self.state = State::Idle;
                self.schedule(now, activity)
            }
            _ => Vec::new(),
        }
    }

    pub fn holder(&self) -> Option<&str> {
        match &self.state {
            State::Granted { tenant, .. } | State::Draining { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// The least virtual time among tenants that want or hold the device; the holder counts
    /// with its running slice so far (it is charged only when the slice ends, and a long
    /// uncontended slice must not look like credit to a newcomer).
    fn min_vtime(&self, now: Instant) -> Option<f64> {
        let running = match &self.state {
            State::Granted { tenant, since, .. } | State::Draining { tenant, since, .. } => {
                Some((tenant.as_str(), now.saturating_duration_since(*since)))
            }
            _ => None,
        };
        self.tenants
            .iter()
            .filter_map(|(n, t)| match running {
                Some((h, ran)) if h == n => Some(t.vtime + ran.as_nanos() as f64 / t.weight as f64),
                _ => t.wants.then_some(t.vtime),
            })
            .reduce(f64::min)
    }

    /// `tenant` has threads waiting to launch.
    pub fn demand(
        &mut self,
        tenant: &str,
        now: Instant,
        activity: &dyn Fn(&str) -> Activity,
    ) -> Vec<Action> {
        if !self.tenants.contains_key(tenant) || self.holder() == Some(tenant) {
            return Vec::new();
        }
        // Who wants the device is read from `activity` (the demanding thread counted itself
        // waiting before it sent the demand).
        self.schedule(now, activity)
    }

    /// The holder's work for slice `epoch` drained (every process acknowledged).
    pub fn drained(
        &mut self,
        tenant: &str,
        epoch: u32,
        now: Instant,
        activity: &dyn Fn(&str) -> Activity,
    ) -> Vec<Action> {
        match &self.state {
            State::Draining {
                tenant: t,
                epoch: e,
                ..
            } if t == tenant && *e == epoch => {
                self.finish_slice(now);
                self.schedule(now, activity)
            }
            _ => Vec::new(),
        }
    }

    /// Time passed: deadlines, idle checks, drain timeouts, throttling.
    pub fn tick(&mut self, now: Instant, activity: &dyn Fn(&str) -> Activity) -> Vec<Action> {
        self.schedule(now, activity)
    }

    /// When the server must call `tick` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Idle => None,
            State::Granted {
                deadline,
                idle_check,
                ..
            } => match (deadline, idle_check) {
                (Some(d), Some((i, _))) => Some((*d).min(*i)),
                (Some(d), None) => Some(*d),
                (None, Some((i, _))) => Some(*i),
                (None, None) => None,
            },
            State::Draining { timeout_at, .. } => Some(*timeout_at),
            State::Throttled { until } => Some(*until),
        }
    }

    fn refill(t: &mut Tenant, now: Instant, quantum: Duration) {
        if let Some(cap) = t.cap {
            let dt = now.saturating_duration_since(t.budget_at).as_nanos() as f64;
            t.budget = (t.budget + dt * cap).min(quantum.as_nanos() as f64);
        }
        t.budget_at = now;
    }

    fn finish_slice(&mut self, now: Instant) {
        let State::Draining { tenant, since, .. } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return;
        };
        let used = now.saturating_duration_since(since);
        let quantum = self.quantum;
        if let Some(t) = self.tenants.get_mut(&tenant) {
            Self::refill(t, now, quantum);
            let ns = used.as_nanos() as f64;
            t.vtime += ns / t.weight as f64;
            if t.cap.is_some() {
                t.budget -= ns;
            }
            t.charged_ns += used.as_nanos() as u64;
        }
        self.history.push_back((tenant, since, now));
        while self
            .history
            .front()
            .is_some_and(|(_, _, end)| now.saturating_duration_since(*end) > SHARE_WINDOW)
        {
            self.history.pop_front();
        }
    }

    fn revoke(&mut self, now: Instant) -> Vec<Action> {
        let State::Granted {
            tenant,
            epoch,
            since,
            ..
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return Vec::new();
        };
        self.state = State::Draining {
            tenant: tenant.clone(),
            epoch,
            since,
            timeout_at: now + self.drain_timeout,
        };
        vec![Action::Revoke { tenant, epoch }]
    }

    /// Minimum budget a capped tenant needs before it is granted (avoids sliver slices).
    fn min_budget(&self) -> f64 {
        (self.quantum.as_nanos() as f64 / 4.0).max(1e6)
    }

    /// The core: decide what happens now.
    fn schedule(&mut self, now: Instant, activity: &dyn Fn(&str) -> Activity) -> Vec<Action> {
        let mut actions = Vec::new();
        // Who wants the device is what the server can see: threads waiting at the gate (a
        // thread counts itself before it sends `Demand`, so no demand is lost). A tenant that
        // starts wanting again after a pause of a quantum or more (idle, stopped, stalled)
        // starts at the busy ones' least virtual time: the pause earns no credit. A shorter
        // gap (a holder whose threads had not yet come back to the gate when its slice was
        // drained) keeps the tenant's place.
        let holder = self.holder().map(str::to_string);
        let floor = self.min_vtime(now);
        let quantum = self.quantum;
        for (name, t) in self.tenants.iter_mut() {
            let is_holder = holder.as_deref() == Some(name.as_str());
            let wants = !is_holder && activity(name).waiting > 0;
            if wants && !t.wants {
                let paused = t
                    .idle_since
                    .is_some_and(|s| now.saturating_duration_since(s) >= quantum);
                if paused && let Some(floor) = floor {
                    t.vtime = t.vtime.max(floor);
                }
            }
            if wants || is_holder {
                t.idle_since = None;
            } else if t.idle_since.is_none() {
                t.idle_since = Some(now);
            }
            t.wants = wants;
        }
        match self.state.clone() {
            State::Granted {
                tenant,
                epoch,
                since,
                idle_check,
                ..
            } => {
                let others_want = self.tenants.iter().any(|(n, t)| *n != tenant && t.wants);
                let cap_deadline = self
                    .tenants
                    .get(&tenant)
                    .and_then(|t| t.cap.map(|cap| (t.budget, cap)))
                    .map(|(budget, cap)| {
                        // Budget also refills while running: the slice can last budget / (1 - cap).
                        let run = (budget.max(0.0) / (1.0 - cap).max(1e-3))
                            .min(quantum.as_nanos() as f64 * 4.0);
                        since + Duration::from_nanos(run as u64)
                    });
                let quantum_deadline = others_want.then(|| (since + quantum).max(now));
                let new_deadline = match (quantum_deadline, cap_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let launches = activity(&tenant).launches;
                let idle = match idle_check {
                    Some((at, seen)) if now >= at => {
                        // No launch since the last check and nobody waiting for queued work:
                        // the holder has nothing for the device (a thread still counted as
                        // waiting after the grant is one that cannot run).
                        if seen == launches && activity(&tenant).syncing == 0 {
                            true
                        } else {
                            self.state = State::Granted {
                                tenant: tenant.clone(),
                                epoch,
                                since,
                                deadline: new_deadline,
                                idle_check: Some((now + self.idle_grace, launches)),
                            };
                            false
                        }
                    }
                    Some(_) => false,
                    None => {
                        if others_want {
                            self.state = State::Granted {
                                tenant: tenant.clone(),
                                epoch,
                                since,
                                deadline: new_deadline,
                                idle_check: Some((now + self.idle_grace, launches)),
                            };
                        }
                        false
                    }
                };
                if let State::Granted { deadline, .. } = &mut self.state {
                    *deadline = new_deadline;
                }
                if (others_want && idle) || new_deadline.is_some_and(|d| now >= d) {
                    actions.extend(self.revoke(now));
                } else if !others_want && let State::Granted { idle_check, .. } = &mut self.state {
                    *idle_check = None;
                }
            }
            State::Draining { timeout_at, .. } => {
                if now >= timeout_at {
                    self.finish_slice(now);
                    actions.extend(self.schedule(now, activity));
                }
            }
            State::Idle | State::Throttled { .. } => {
                for t in self.tenants.values_mut() {
                    Self::refill(t, now, quantum);
                }
                let min_budget = self.min_budget();
                let eligible = |t: &Tenant| t.wants && t.cap.is_none_or(|_| t.budget >= min_budget);
                let next = self
                    .tenants
                    .iter()
                    .filter(|(_, t)| eligible(t))
                    .min_by(|a, b| a.1.vtime.total_cmp(&b.1.vtime))
                    .map(|(n, _)| n.clone());
                match next {
                    Some(name) => {
                        self.epoch = self.epoch.wrapping_add(1).max(1);
                        let t = self.tenants.get_mut(&name).expect("present");
                        t.wants = false;
                        self.state = State::Granted {
                            tenant: name.clone(),
                            epoch: self.epoch,
                            since: now,
                            deadline: None,
                            idle_check: None,
                        };
                        actions.push(Action::Grant {
                            tenant: name,
                            epoch: self.epoch,
                        });
                        // Arm deadlines (quantum if others wait, cap budget).
                        actions.extend(self.schedule(now, activity));
                    }
                    None => {
                        // Wanted but throttled by caps: wake when the first has budget.
                        let until = self
                            .tenants
                            .values()
                            .filter(|t| t.wants)
                            .filter_map(|t| {
                                t.cap
                                    .map(|cap| ((min_budget - t.budget).max(0.0) / cap) as u64)
                            })
                            .min()
                            .map(|ns| now + Duration::from_nanos(ns.max(100_000)));
                        self.state = match until {
                            Some(until) => State::Throttled { until },
                            None => State::Idle,
                        };
                    }
                }
            }
        }
        actions
    }

    /// Each tenant's share of the device over the last [`SHARE_WINDOW`] (completed slices plus
    /// the current one).
    pub fn recent_shares(&self, now: Instant) -> BTreeMap<String, f64> {
        let window_start = now
            .checked_sub(SHARE_WINDOW)
            .unwrap_or(self.created)
            .max(self.created);
        let span = now
            .saturating_duration_since(window_start)
            .as_secs_f64()
            .max(1e-9);
        let mut out: BTreeMap<String, f64> =
            self.tenants.keys().map(|k| (k.clone(), 0.0)).collect();
        let mut add = |name: &str, start: Instant, end: Instant| {
            let s = start.max(window_start);
            if end > s {
                *out.entry(name.to_string()).or_default() += (end - s).as_secs_f64() / span;
            }
        };
        for (name, start, end) in &self.history {
            add(name, *start, *end);
        }
        if let State::Granted { tenant, since, .. } | State::Draining { tenant, since, .. } =
            &self.state
        {
            add(tenant, *since, now);
        }
        out
    }

    /// Total device time charged to a tenant, ns.
    pub fn charged_ns(&self, tenant: &str) -> u64 {
        self.tenants.get(tenant).map_or(0, |t| t.charged_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A simulated device: every tenant in `busy` always has work; the holder drains at once.
    fn simulate(
        weights: &[(&str, u32, Option<u32>)],
        busy: &[&str],
        seconds: f64,
    ) -> HashMap<String, f64> {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_millis(20));
        for (n, w, c) in weights {
            s.set_tenant(n, *w, *c, t0);
        }
        run(&mut s, t0, busy, seconds)
    }

    /// Drives `s` from `t0` for `seconds` with the tenants in `busy` always having work (the
    /// holder drains 1 ms after a revocation); returns each tenant's share of the time.
    fn run(s: &mut Scheduler, t0: Instant, busy: &[&str], seconds: f64) -> HashMap<String, f64> {
        let mut now = t0;
        let end = t0 + Duration::from_secs_f64(seconds);
        let busy: Vec<String> = busy.iter().map(|b| b.to_string()).collect();
        let launches = std::cell::Cell::new(0u64);
        let act = |n: &str| Activity {
            waiting: busy.iter().any(|b| b == n) as u32,
            launches: launches.get(),
            ..Default::default()
        };
        let mut pending: Vec<Action> = Vec::new();
        for b in &busy {
            pending.extend(s.demand(b, now, &act));
        }
        let mut held: HashMap<String, f64> = HashMap::new();
        let mut holder: Option<(String, Instant)> = s.holder().map(|h| (h.to_string(), t0));
        while now < end {
            while !pending.is_empty() {
                let a = pending.remove(0);
                match a {
                    Action::Grant { tenant, .. } => holder = Some((tenant, now)),
                    Action::Revoke { tenant, epoch } => {
                        // In-flight work drains for 1 ms (overrun, device still busy).
                        now += Duration::from_millis(1);
                        if let Some((h, since)) = holder.take() {
                            *held.entry(h).or_default() += (now - since).as_secs_f64();
                        }
                        pending.extend(s.drained(&tenant, epoch, now, &act));
                    }
                }
            }
            launches.set(launches.get() + 1);
            now = s
                .next_deadline()
                .unwrap_or(now + Duration::from_millis(1))
                .max(now + Duration::from_micros(100));
            pending.extend(s.tick(now, &act));
        }
        if let Some((h, since)) = holder {
            *held.entry(h).or_default() += (now.min(end) - since.min(end)).as_secs_f64();
        }
        let total: f64 = held.values().sum();
        held.into_iter()
            .map(|(k, v)| (k, v / seconds.max(total)))
            .collect()
    }

    #[test]
    fn a_long_uncontended_slice_is_no_credit_for_a_newcomer() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_millis(20));
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        // a has the device alone for 5 s (one slice, no timer), then b arrives.
        let alone = run(&mut s, t0, &["a"], 5.0);
        assert!(alone["a"] > 0.99, "{alone:?}");
        let t1 = t0 + Duration::from_secs(5);
        let both = run(&mut s, t1, &["a", "b"], 4.0);
        let b = both.get("b").copied().unwrap_or(0.0);
        assert!(
            (b - 0.5).abs() < 0.05,
            "b must neither be starved nor monopolise: {both:?}"
        );
    }

    #[test]
    fn weights_split_device_time() {
        let shares = simulate(&[("a", 3, None), ("b", 1, None)], &["a", "b"], 10.0);
        let (a, b) = (shares["a"], shares["b"]);
        assert!((a / (a + b) - 0.75).abs() < 0.02, "{shares:?}");
    }

    #[test]
    fn four_tenants_jain_index() {
        let shares = simulate(
            &[
                ("a", 1, None),
                ("b", 2, None),
                ("c", 3, None),
                ("d", 4, None),
            ],
            &["a", "b", "c", "d"],
            10.0,
        );
        let norm: Vec<f64> = ["a", "b", "c", "d"]
            .iter()
            .zip([1.0, 2.0, 3.0, 4.0])
            .map(|(n, w)| shares[*n] / w)
            .collect();
        let sum: f64 = norm.iter().sum();
        let sq: f64 = norm.iter().map(|x| x * x).sum();
        let jain = sum * sum / (4.0 * sq);
        assert!(jain >= 0.99, "jain {jain}, shares {shares:?}");
    }

    #[test]
    fn lone_tenant_keeps_the_device_without_timers() {
        let mut s = Scheduler::new(Duration::from_millis(20));
        let now = Instant::now();
        s.set_tenant("a", 1, None, now);
        s.set_tenant("b", 1, None, now);
        let act = |n: &str| Activity {
            waiting: (n == "a") as u32,
            launches: 0,
            ..Default::default()
        };
        let actions = s.demand("a", now, &act);
        assert_eq!(
            actions,
            vec![Action::Grant {
                tenant: "a".into(),
                epoch: 1
            }]
        );
        assert_eq!(s.next_deadline(), None, "no timer while uncontended");
        assert!(s.tick(now + Duration::from_secs(5), &act).is_empty());
    }

    #[test]
    fn idle_holder_yields_early_when_others_wait() {
        let mut s = Scheduler::new(Duration::from_millis(50));
        let t0 = Instant::now();
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        let idle_a = |n: &str| Activity {
            waiting: (n == "b") as u32,
            launches: 7,
            ..Default::default()
        };
        s.demand("a", t0, &|n| Activity {
            waiting: (n == "a") as u32,
            launches: 7,
            ..Default::default()
        });
        let t1 = t0 + Duration::from_millis(5);
        assert!(s.demand("b", t1, &idle_a).is_empty());
        let check = s.next_deadline().unwrap();
        assert!(
            check < t0 + Duration::from_millis(50),
            "an idle check comes before the quantum ends"
        );
        let actions = s.tick(check, &idle_a);
        assert_eq!(
            actions,
            vec![Action::Revoke {
                tenant: "a".into(),
                epoch: 1
            }]
        );
        let actions = s.drained("a", 1, check, &idle_a);
        assert_eq!(
            actions,
            vec![Action::Grant {
                tenant: "b".into(),
                epoch: 2
            }]
        );
    }

    #[test]
    fn stuck_holder_is_passed_over_after_the_drain_timeout() {
        let mut s = Scheduler::new(Duration::from_millis(20));
        let t0 = Instant::now();
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        let act = |_: &str| Activity {
            waiting: 1,
            launches: 0,
            ..Default::default()
        };
        s.demand("a", t0, &act);
        s.demand("b", t0, &act);
        let mut revoke_at = t0;
        for _ in 0..100 {
            revoke_at = s.next_deadline().expect("contended holder has a deadline");
            if matches!(s.tick(revoke_at, &act)[..], [Action::Revoke { .. }]) {
                break;
            }
        }
        assert!(revoke_at - t0 <= s.quantum(), "revoked within a quantum");
        let timeout = s.next_deadline().unwrap();
        assert!(timeout - revoke_at <= s.drain_timeout());
        let actions = s.tick(timeout, &act);
        assert_eq!(
            actions,
            vec![Action::Grant {
                tenant: "b".into(),
                epoch: 2
            }],
            "no ack needed to move on"
        );
    }

    #[test]
    fn compute_limit_caps_a_lone_tenant() {
        let shares = simulate(&[("a", 1, Some(300))], &["a"], 10.0);
        assert!((shares["a"] - 0.30).abs() < 0.03, "{shares:?}");
    }

    #[test]
    fn removing_the_holder_hands_the_device_on() {
        let mut s = Scheduler::new(Duration::from_millis(20));
        let t0 = Instant::now();
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        let act = |_: &str| Activity {
            waiting: 1,
            launches: 0,
            ..Default::default()
        };
        s.demand("a", t0, &act);
        s.demand("b", t0, &act);
        let actions = s.remove_tenant("a", t0, &act);
        assert_eq!(
            actions,
            vec![Action::Grant {
                tenant: "b".into(),
                epoch: 2
            }]
        );
    }
}
