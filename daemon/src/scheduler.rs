//! Weighted, work-conserving time-slicing of one device among tenants: pure logic, no I/O.
//!
//! The server feeds it what happened (a tenant wants the device, the holder's work drained and
//! how much device time it used, time passed) and carries out what it answers (grant a slice,
//! revoke one). Policy:
//! - **Virtual time** (stride scheduling): a tenant's virtual time advances by the device time
//!   it was charged divided by its weight; the wanting tenant with the least virtual time goes
//!   next, so shares converge to the weights. A tenant waking from a pause of a quantum or more
//!   starts at the least virtual time among the busy ones: idleness earns no credit.
//! - **Slices in proportion to weight**: while others wait, a holder's turn lasts
//!   `quantum × weight / heaviest wanting weight` (at least a quarter quantum), so tenants
//!   alternate and a light tenant waits about one quantum beside a heavy one, not several; a
//!   holder whose virtual time, its running turn counted, is still the least keeps the device
//!   for another turn without a switch.
//! - **A revoked holder keeps its place**: a holder revoked while busy counts as wanting for
//!   [`Scheduler::return_window`] after its drain, while its threads come back from the
//!   synchronize the drain completed. It may be granted before any of them is at the gate (they
//!   pass it when they arrive), so fairness does not depend on how fast a busy host runs them.
//! - **Honest charging**: the holder pays the device time its work used in the slice, as its
//!   processes measured it (reported with their drain), never more than the slice's wall time;
//!   the switch cost (device idle between slices, the drain's round trips) is overhead, charged
//!   to no one. Without a measurement (an older shim, a drain that timed out) it pays the
//!   slice's wall time, overrun included.
//! - **Work-conserving**: a lone tenant keeps the device with no timer at all; a holder that
//!   stops launching while others wait gives the device up after `idle_grace`, not a quantum
//!   (longer on a busy host: by four times how late the server's ticks come), unless a thread
//!   of it is runnable: a holder whose threads the host runs late is not taken for idle (nor,
//!   within its turn, one whose thread computes on the CPU before its next launches). A
//!   latency-class holder is not kept for a runnable thread (see Classes).
//! - **compute_limit**: a token bucket of device time refilled at the cap's rate; a capped
//!   tenant is granted when its bucket holds a quantum and runs until it is spent, even on an
//!   otherwise idle device. An idle tenant banks at most a quantum; one that waits for its
//!   budget or runs keeps what refills up to [`CAP_CARRY_QUANTA`], so neither a late grant nor
//!   a slice its host ran slowly (its kernels used less than the refill) costs it its cap.
//! - **Classes** (`priority`: latency > normal > batch). A tenant *entitled* to precedence
//!   ([`Scheduler::entitled`]: not batch, and not more than [`Scheduler::credit`] of its own
//!   device time ahead of the lower-class tenants' virtual times) that wants the device while a
//!   lower class holds it has the holder revoked at once (at the next kernel boundary: its
//!   queued work, which the shim bounds to the drain budget, drains), is granted before lower
//!   classes, and keeps the device past its turn while it has work and stays entitled.
//!   Entitled latency tenants go in the order they asked. A latency holder yields as soon as
//!   it has no work (the shim's hint after its synchronize, or a short idle check), so lower
//!   classes fill every gap, and no place is kept for it after a drain. Among tenants of one
//!   class, and whenever no tenant is entitled, the policy above is unchanged. The bound: a latency tenant waking from a pause keeps up to one credit of the
//!   time it left to the others, so over any window its device time exceeds its weighted
//!   share of the time contended with lower classes by at most two credits; one that keeps
//!   the device busy until its credit is spent gets plain stride order until it runs out of
//!   work (a saturating latency tenant is held to its weight).
//! - **No wedging**: a holder that does not drain within `drain_timeout` (stopped, stuck in a
//!   very long kernel, dead) is charged and passed over.

pub use gpumux_common::config::Priority;
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
    /// A thread of the tenant's processes is runnable (on a CPU or waiting for one): a holder
    /// whose launches stopped may just be run late by a busy host. Looked up only for the
    /// holder when nothing else shows it busy (no thread waiting or synchronizing).
    pub runnable: bool,
    /// Times a thread of the tenant came back late from waiting for its bounded queue to make
    /// room and found it empty (wrapping count): the device ran out of its work while the
    /// host ran the thread late.
    pub bound_dry: u32,
}

/// Shortest turn, as a fraction of the quantum, however light a tenant is beside the heaviest.
const MIN_TURN_FRACTION: f64 = 0.25;
/// A normal turn of the heaviest tenant, as a fraction of the quantum; a turn that works off a
/// lag may be longer by up to its inverse, so no turn exceeds the quantum while others wait.
const NORMAL_TURN_FRACTION: f64 = 0.9;
/// Most a bounded tenant's queue budget is scaled up when its host runs it too late to keep
/// the device fed from the configured budget ([`Scheduler::queue_scale`]).
const MAX_QUEUE_SCALE: f64 = 8.0;
/// A bounded holder's slice (busy throughout, at least two idle graces long) that kept the device
/// busy less than this fraction of its wall time doubles its queue budget's scale...
const QUEUE_STARVED_BELOW: f64 = 0.8;
/// ...and one that kept it busy at least this fraction brings it back by a quarter.
const QUEUE_FED_FROM: f64 = 0.9;
/// Most budget, in quanta, a capped tenant carries while it waits or runs: what a late grant or
/// a slowly run slice left unspent. It bounds how far its device time may run ahead of its cap
/// over a short window (two quanta), not over a long one.
const CAP_CARRY_QUANTA: f64 = 2.0;

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
    /// Wants the device (threads at the gate, or returning) and does not hold it.
    wants: bool,
    charged_ns: u64,
    /// Since when the tenant has not wanted the device (None while it wants or holds it).
    idle_since: Option<Instant>,
    /// Since when it has wanted the device (while it does).
    wants_since: Option<Instant>,
    /// Revoked while busy: until then it counts as wanting (its threads are coming back).
    returning_until: Option<Instant>,
    /// Device time charged ÷ wall time of its recent slices (moving average, 0.25..=1): how
    /// much of a turn its work keeps the device busy.
    efficiency: f64,
    /// Its class (`priority`).
    class: Priority,
    /// Multiplier (1..=[`MAX_QUEUE_SCALE`]) of the queue budget the shim holds it to while a
    /// higher class shares the device ([`Scheduler::queue_scale`]).
    queue_scale: f64,
    /// It kept the device busy until it was [`Scheduler::credit`] ahead of the others: it is
    /// saturating, and its class puts it ahead of lower ones only where plain stride order
    /// would (its virtual time not ahead of theirs) until a slice of its ends for want of work.
    spent: bool,
    /// Raised to the floor on waking during a slice: the holder's part of that floor was an
    /// estimate, settled when the slice is charged ([`Scheduler::settle_floors`]).
    floored: Option<Floored>,
}

/// How a tenant waking during a slice was floored.
#[derive(Debug, Clone, Copy)]
struct Floored {
    /// The slice's epoch.
    epoch: u32,
    /// When it woke.
    at: Instant,
    /// Its virtual time before.
    before: f64,
    /// What it was let keep below the floor (a latency tenant's credit).
    bank: f64,
}

/// Precedence of a class: a higher one preempts a lower one.
fn rank(class: Priority) -> u8 {
    class.precedence()
}

/// A granted slice.
#[derive(Debug, Clone, PartialEq)]
struct Slice {
    tenant: String,
    epoch: u32,
    /// When it was granted (what the wall-time charge counts from).
    since: Instant,
    /// When the current turn began (the turn deadline counts from it; a kept turn restarts it).
    turn_since: Instant,
    /// How long the current turn lasts while others want the device.
    turn: Duration,
    /// When the turn ends if others want the device, or the cap's budget runs out.
    deadline: Option<Instant>,
    /// Next idle check: when, and the launches seen at the previous one.
    idle_check: Option<(Instant, u64)>,
    /// The tenant's [`Activity::bound_dry`] at the grant.
    dry_at: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Idle,
    Granted(Slice),
    Draining {
        slice: Slice,
        timeout_at: Instant,
        /// Revoked while it still had work (turn over, cap, preempted), not for being idle.
        busy: bool,
        /// Revoked early for a tenant of a higher class.
        preempted: bool,
    },
    /// Nobody eligible now; a capped tenant becomes eligible at `until`.
    Throttled {
        until: Instant,
    },
    /// Kept free for a returning tenant, next by virtual time, whose threads are not back at
    /// the gate yet: granted when they are (its turn starts with its work), passed over at
    /// `until`.
    Reserved {
        tenant: String,
        until: Instant,
    },
}

/// A completed slice, for recent-share reporting.
#[derive(Debug, Clone)]
struct Past {
    tenant: String,
    start: Instant,
    end: Instant,
    charged_ns: u64,
}

/// Time-slicing state of one device.
#[derive(Debug, Clone)]
pub struct Scheduler {
    quantum: Duration,
    drain_timeout: Duration,
    idle_grace: Duration,
    return_window: Duration,
    /// How far ahead of the others' weighted shares (in its own device time) a tenant may be and
    /// still preempt a lower class.
    credit: Duration,
    /// Preemptions by class so far, per preempted tenant.
    preempted: BTreeMap<String, u64>,
    /// Slices a latency-class holder gave back at once on its idle hint, per tenant.
    hint_yields: BTreeMap<String, u64>,
    /// Shortest turn as a fraction of the quantum ([`MIN_TURN_FRACTION`]).
    min_turn: f64,
    /// Whether a holder still owed device time keeps the device for another turn.
    keep_turns: bool,
    tenants: BTreeMap<String, Tenant>,
    state: State,
    epoch: u32,
    history: VecDeque<Past>,
    /// Who held the last completed slice.
    last_holder: Option<String>,
    /// Slice wall time charged to no tenant (switch cost), ns.
    overhead_ns: u64,
    /// How late the server's ticks come (moving average): the host's scheduling latency as
    /// the daemon sees it. A busy host runs tenants' threads as late, so the idle check waits
    /// that much longer before calling a holder idle.
    host_latency: Duration,
    /// Bumped whenever a tenant's [`Scheduler::queue_scale`] changes, so the server knows to
    /// apply it.
    scale_generation: u64,
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
            return_window: (quantum / 2).clamp(Duration::from_millis(2), Duration::from_millis(50)),
            credit: quantum,
            preempted: BTreeMap::new(),
            hint_yields: BTreeMap::new(),
            min_turn: MIN_TURN_FRACTION,
            keep_turns: true,
            tenants: BTreeMap::new(),
            state: State::Idle,
            epoch: 0,
            history: VecDeque::new(),
            last_holder: None,
            overhead_ns: 0,
            host_latency: Duration::ZERO,
            scale_generation: 0,
            created: Instant::now(),
        }
    }

    pub fn quantum(&self) -> Duration {
        self.quantum
    }

    /// How late the server's ticks come (moving average): the host's scheduling latency as the
    /// daemon sees it.
    pub fn host_latency(&self) -> Duration {
        self.host_latency
    }

    /// By how much `tenant`'s queue budget (the bound on its queued work while a higher class
    /// shares the device) is scaled up: 1 unless its slices, busy throughout and measured, left
    /// the device idle (below [`QUEUE_STARVED_BELOW`] of their wall time) *and* its queue ran
    /// dry meanwhile ([`Activity::bound_dry`]: a thread came back from waiting for room to an
    /// empty queue): each refill of a bounded queue needs its thread to run, and a busy host
    /// runs it late. Each such slice doubles it (at most [`MAX_QUEUE_SCALE`]); each that kept
    /// the device fed, or never ran dry (its idle was its own), takes a quarter off; a slice
    /// with no higher class on the device, or a change of class, resets it. The higher class
    /// then waits for more queued work at a preemption (at most the scaled budget), on a host
    /// that already runs its own threads that late.
    pub fn queue_scale(&self, tenant: &str) -> f64 {
        self.tenants.get(tenant).map_or(1.0, |t| t.queue_scale)
    }

    /// Changes whenever a tenant's [`Self::queue_scale`] does.
    pub fn scale_generation(&self) -> u64 {
        self.scale_generation
    }

    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// How long a holder revoked while busy keeps its place after its drain.
    pub fn return_window(&self) -> Duration {
        self.return_window
    }

    /// How much device time a tenant may be ahead of its weighted share and still preempt a
    /// lower class (one quantum). A latency-class tenant waking from a pause also keeps up to
    /// a credit of the time it left to the others, so its longest burst ahead of lower classes,
    /// and the most its class can take from them over any window, is two credits.
    pub fn credit(&self) -> Duration {
        self.credit
    }

    /// Sets a tenant's class (`priority`); a tenant whose class changes starts with its credit.
    pub fn set_priority(&mut self, name: &str, class: Priority) {
        if let Some(t) = self.tenants.get_mut(name)
            && t.class != class
        {
            t.class = class;
            t.spent = false;
            if t.queue_scale != 1.0 {
                t.queue_scale = 1.0;
                self.scale_generation = self.scale_generation.wrapping_add(1);
            }
        }
    }

    /// How many times `tenant`'s slice was revoked early for a higher class.
    pub fn preemptions(&self, tenant: &str) -> u64 {
        self.preempted.get(tenant).copied().unwrap_or(0)
    }

    /// How many times `tenant` (latency class) gave its slice back at once on its idle hint.
    pub fn hint_yields(&self, tenant: &str) -> u64 {
        self.hint_yields.get(tenant).copied().unwrap_or(0)
    }

    /// The holder when others want the device (its turn is contended), with its class.
    pub fn contended_holder(&self) -> Option<(&str, Priority)> {
        let State::Granted(s) = &self.state else {
            return None;
        };
        let class = self.tenants.get(&s.tenant)?.class;
        self.tenants
            .iter()
            .any(|(n, t)| *n != s.tenant && t.wants)
            .then_some((s.tenant.as_str(), class))
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
                wants_since: None,
                returning_until: None,
                efficiency: 1.0,
                class: Priority::Normal,
                queue_scale: 1.0,
                spent: false,
                floored: None,
            });
        t.weight = weight.max(1);
        if t.cap != cap {
            // A carry was under the old cap; the new one starts from at most a burst.
            t.budget = t.budget.min(self.quantum.as_nanos() as f64);
        }
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
        if self.holder() == Some(name) {
            self.state = State::Idle;
            return self.schedule(now, activity);
        }
        Vec::new()
    }

    pub fn holder(&self) -> Option<&str> {
        self.slice().map(|s| s.tenant.as_str())
    }

    /// The tenant holding a granted slice (not being drained) and the slice's epoch.
    pub fn granted(&self) -> Option<(&str, u32)> {
        match &self.state {
            State::Granted(s) => Some((s.tenant.as_str(), s.epoch)),
            _ => None,
        }
    }

    fn slice(&self) -> Option<&Slice> {
        match &self.state {
            State::Granted(s) | State::Draining { slice: s, .. } => Some(s),
            _ => None,
        }
    }

    /// The least virtual time among tenants that want or hold the device; the holder counts
    /// with its running slice so far at its efficiency (it is charged only when the slice
    /// ends, and a long uncontended slice must not look like credit to a newcomer). That part
    /// is an estimate: a tenant floored against it is settled with the holder's charge
    /// ([`Self::settle_floors`]).
    fn min_vtime(&self, now: Instant) -> Option<f64> {
        let running = self
            .slice()
            .map(|s| (s.tenant.as_str(), now.saturating_duration_since(s.since)));
        self.tenants
            .iter()
            .filter_map(|(n, t)| match running {
                Some((h, ran)) if h == n => {
                    Some(t.vtime + ran.as_nanos() as f64 * t.efficiency / t.weight as f64)
                }
                _ => t.wants.then_some(t.vtime),
            })
            .reduce(f64::min)
    }

    /// `slice` ended at `now` and its holder, at virtual time `from` before, was charged
    /// `charged` (in virtual time): tenants that woke during it were floored against an
    /// estimate of the holder's virtual time then; they are floored again against the charge,
    /// spread evenly over the slice. Otherwise a holder charged less than the estimate (its
    /// work left the device idle; a process of it is gone and could not say) would be owed
    /// the difference and keep the device while they wait, and one charged more would owe them.
    fn settle_floors(&mut self, slice: &Slice, now: Instant, from: f64, charged: f64) {
        let wall = now.saturating_duration_since(slice.since).as_secs_f64();
        for t in self.tenants.values_mut() {
            if let Some(f) = t.floored.take()
                && f.epoch == slice.epoch
            {
                let part = if wall > 0.0 {
                    f.at.saturating_duration_since(slice.since).as_secs_f64() / wall
                } else {
                    1.0
                };
                t.vtime = f.before.max(from + charged * part.min(1.0) - f.bank);
            }
        }
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

    /// The holder's work for slice `epoch` drained (every process acknowledged); `device_time`
    /// is what its processes measured their work used on the device in the slice (None: not
    /// measured, the slice's wall time is charged).
    pub fn drained(
        &mut self,
        tenant: &str,
        epoch: u32,
        device_time: Option<Duration>,
        now: Instant,
        activity: &dyn Fn(&str) -> Activity,
    ) -> Vec<Action> {
        match &self.state {
            State::Draining { slice, .. } if slice.tenant == tenant && slice.epoch == epoch => {
                self.finish_slice(now, device_time, activity(tenant).bound_dry);
                self.schedule(now, activity)
            }
            _ => Vec::new(),
        }
    }

    /// Time passed: deadlines, idle checks, drain timeouts, throttling.
    pub fn tick(&mut self, now: Instant, activity: &dyn Fn(&str) -> Activity) -> Vec<Action> {
        if let Some(due) = self.next_deadline()
            && now >= due
        {
            let late = (now - due).min(self.quantum);
            self.host_latency = (self.host_latency * 7 + late) / 8;
        }
        self.schedule(now, activity)
    }

    /// The holder of slice `epoch`'s process says it has no work left: its synchronize returned
    /// and it launched nothing since (`quiet`: the server checked the process's launch count
    /// against the one it reported). A latency-class holder that others wait for then yields at
    /// once, unless the tenant still has threads in a synchronize or at the gate.
    pub fn idle_hint(
        &mut self,
        tenant: &str,
        quiet: bool,
        now: Instant,
        activity: &dyn Fn(&str) -> Activity,
    ) -> Vec<Action> {
        self.note_demand(now, activity);
        let Some((holder, class)) = self.contended_holder() else {
            return Vec::new();
        };
        let act = activity(tenant);
        if holder != tenant
            || class != Priority::Latency
            || !quiet
            || act.syncing != 0
            || act.waiting != 0
        {
            return Vec::new();
        }
        *self.hint_yields.entry(tenant.to_string()).or_default() += 1;
        self.revoke(now, false)
    }

    /// How long a holder may go without launching before it counts as idle: the idle grace
    /// plus four times the host's scheduling latency (at most half a quantum).
    fn grace(&self) -> Duration {
        (self.idle_grace + self.host_latency * 4).min(self.quantum / 2)
    }

    /// The idle grace of a latency-class holder, which yields as soon as it has no work: a
    /// quarter of the normal grace, plus the host's latency as for [`Self::grace`] (its own
    /// hint usually comes first).
    fn latency_grace(&self) -> Duration {
        (self.idle_grace / 4 + self.host_latency * 4).min(self.grace())
    }

    /// The least virtual time among the tenants of a lower class than `name`'s that want or
    /// hold the device, the holder counted with its running slice: what `name`'s precedence is
    /// measured against.
    fn lower_floor(&self, name: &str, now: Instant) -> Option<f64> {
        let mine = rank(self.tenants.get(name)?.class);
        let running = self
            .slice()
            .map(|s| (s.tenant.as_str(), now.saturating_duration_since(s.since)));
        self.tenants
            .iter()
            .filter(|(_, t)| rank(t.class) < mine)
            .filter_map(|(n, t)| match running {
                Some((h, ran)) if h == n => Some(t.vtime + ran.as_nanos() as f64 / t.weight as f64),
                _ => t.wants.then_some(t.vtime),
            })
            .reduce(f64::min)
    }

    /// `name`'s virtual time, counting its running slice if it holds the device.
    fn vtime_now(&self, name: &str, now: Instant) -> Option<f64> {
        let t = self.tenants.get(name)?;
        let ran = self
            .slice()
            .filter(|s| s.tenant == name)
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s.since));
        Some(t.vtime + ran.as_nanos() as f64 / t.weight as f64)
    }

    /// For a holder of a higher class than every tenant that wants the device, entitled to
    /// go first: how much longer it stays entitled (its credit left, as wall time).
    fn precedence_left(&self, holder: &str, now: Instant) -> Option<Duration> {
        let h = self.tenants.get(holder)?;
        let dominant = self
            .tenants
            .iter()
            .filter(|(n, t)| n.as_str() != holder && t.wants)
            .all(|(_, t)| rank(t.class) < rank(h.class));
        if !dominant || !self.entitled(holder, now) {
            return None;
        }
        let floor = self.lower_floor(holder, now)?;
        let credit = self.credit.as_nanos() as f64 / h.weight as f64;
        let left = (floor + credit - self.vtime_now(holder, now)?) * h.weight as f64;
        Some(Duration::from_nanos(left.max(0.0) as u64))
    }

    /// Whether `name` may go ahead of tenants of lower classes: it is not batch, and its virtual
    /// time (its running slice counted) is at most [`Self::credit`] of its own device time
    /// ahead of the least among the lower-class tenants who want or hold the device, or not
    /// ahead at all once it has spent its credit (see `Tenant::spent`). So over any window its
    /// device time exceeds its weighted share of the time contended with them by at most the
    /// credit, and a tenant that keeps the device busy gets its credit once, then plain stride
    /// order (its weight) until it runs out of work.
    pub fn entitled(&self, name: &str, now: Instant) -> bool {
        let Some(t) = self.tenants.get(name) else {
            return false;
        };
        if t.class == Priority::Batch {
            return false;
        }
        let credit = if t.spent {
            0.0
        } else {
            self.credit.as_nanos() as f64 / t.weight as f64
        };
        let mine = self.vtime_now(name, now).unwrap_or(t.vtime);
        self.lower_floor(name, now)
            .is_none_or(|floor| mine <= floor + credit)
    }

    /// A wanting tenant of a higher class than the holder's that is entitled to go first.
    fn preempts(&self, holder: &str, now: Instant) -> bool {
        let Some(h) = self.tenants.get(holder) else {
            return false;
        };
        self.tenants.iter().any(|(n, t)| {
            n.as_str() != holder
                && t.wants
                && rank(t.class) > rank(h.class)
                && t.cap.is_none_or(|_| t.budget >= self.min_budget())
                && self.entitled(n, now)
        })
    }

    /// When the server must call `tick` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Idle => None,
            State::Granted(s) => [s.deadline, s.idle_check.map(|(at, _)| at)]
                .into_iter()
                .flatten()
                .min(),
            State::Draining { timeout_at, .. } => Some(*timeout_at),
            State::Throttled { until } | State::Reserved { until, .. } => Some(*until),
        }
    }

    /// Refills a capped tenant's bucket up to `now`: to one quantum while it does not want the
    /// device (what an idle tenant banks), to [`CAP_CARRY_QUANTA`] while it waits for its
    /// budget or a grant, so that a grant the host runs late loses none of its cap.
    fn refill(t: &mut Tenant, now: Instant, quantum: Duration) {
        if let Some(cap) = t.cap {
            let dt = now.saturating_duration_since(t.budget_at).as_nanos() as f64;
            let quanta = if t.wants { CAP_CARRY_QUANTA } else { 1.0 };
            let limit = (quantum.as_nanos() as f64 * quanta).max(t.budget);
            t.budget = (t.budget + dt * cap).min(limit);
        }
        t.budget_at = now;
    }

    /// Ends the slice being drained: charges its device time (or, unmeasured, its wall time);
    /// `dry`: the holder's [`Activity::bound_dry`] now.
    fn finish_slice(&mut self, now: Instant, device_time: Option<Duration>, dry: u32) {
        let State::Draining {
            slice,
            busy,
            preempted,
            ..
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return;
        };
        let wall = now.saturating_duration_since(slice.since);
        let charge = device_time.map_or(wall, |d| d.min(wall));
        self.overhead_ns += (wall - charge).as_nanos() as u64;
        let (quantum, return_window) = (self.quantum, self.return_window);
        // Ran out of credit with work left (not preempted, not idle)? Judged against those who
        // want the device now, after this slice's charge.
        let spent = busy && !preempted && {
            let floor = self.lower_floor(&slice.tenant, now);
            self.tenants.get(&slice.tenant).is_some_and(|t| {
                let credit = self.credit.as_nanos() as f64 / t.weight as f64;
                let after = t.vtime + charge.as_nanos() as f64 / t.weight as f64;
                floor.is_some_and(|f| after >= f + credit * 0.95)
            })
        };
        if let Some(t) = self.tenants.get(&slice.tenant) {
            let (from, ns) = (t.vtime, charge.as_nanos() as f64);
            self.settle_floors(&slice, now, from, ns / t.weight as f64);
        }
        let bounded = self.tenants.get(&slice.tenant).is_some_and(|me| {
            self.tenants
                .values()
                .any(|t| rank(t.class) > rank(me.class))
        });
        // Long enough that the switch around it (a fraction of a millisecond on an idle host)
        // cannot make it look starved.
        let judged = busy && bounded && device_time.is_some() && wall >= self.idle_grace * 2;
        let ran_dry = dry != slice.dry_at;
        let scale_before = self.queue_scale(&slice.tenant);
        if let Some(t) = self.tenants.get_mut(&slice.tenant) {
            let ns = charge.as_nanos() as f64;
            t.vtime += ns / t.weight as f64;
            if let Some(cap) = t.cap {
                // What refilled while it ran counts, up to the carry: a slice its host ran
                // slowly (its kernels used less than the refill) leaves budget for the next.
                let ran = now.saturating_duration_since(t.budget_at).as_nanos() as f64;
                let carry = quantum.as_nanos() as f64 * CAP_CARRY_QUANTA;
                t.budget = (t.budget + ran * cap - ns).min(carry);
            }
            t.budget_at = now;
            t.charged_ns += charge.as_nanos() as u64;
            t.returning_until = busy.then_some(now + return_window);
            // Saturating until a slice of its ends for want of work.
            if spent {
                t.spent = true;
            } else if !busy {
                t.spent = false;
            }
            // Not coming back at once (idle, stopped, stuck): its pause starts now, however
            // long nothing else happens on the device (no credit for it either).
            if !busy {
                t.idle_since = Some(now);
            }
            if !wall.is_zero() {
                let sample = charge.as_secs_f64() / wall.as_secs_f64();
                t.efficiency = (0.8 * t.efficiency + 0.2 * sample).clamp(0.25, 1.0);
                if judged {
                    t.queue_scale = if sample < QUEUE_STARVED_BELOW && ran_dry {
                        (t.queue_scale * 2.0).min(MAX_QUEUE_SCALE)
                    } else if sample >= QUEUE_FED_FROM || !ran_dry {
                        (t.queue_scale * 0.75).max(1.0)
                    } else {
                        t.queue_scale
                    };
                }
            }
            if !bounded {
                t.queue_scale = 1.0;
            }
            if t.queue_scale != scale_before {
                self.scale_generation = self.scale_generation.wrapping_add(1);
            }
        }
        self.last_holder = Some(slice.tenant.clone());
        self.history.push_back(Past {
            tenant: slice.tenant,
            start: slice.since,
            end: now,
            charged_ns: charge.as_nanos() as u64,
        });
        while self
            .history
            .front()
            .is_some_and(|p| now.saturating_duration_since(p.end) > SHARE_WINDOW)
        {
            self.history.pop_front();
        }
    }

    /// Revokes the holder's slice; `busy`: it still had work (it will come back for more).
    fn revoke(&mut self, now: Instant, busy: bool) -> Vec<Action> {
        self.revoke_for(now, busy, false)
    }

    /// [`Self::revoke`]; `preempted`: early, for a tenant of a higher class.
    fn revoke_for(&mut self, now: Instant, busy: bool, preempted: bool) -> Vec<Action> {
        let State::Granted(slice) = std::mem::replace(&mut self.state, State::Idle) else {
            return Vec::new();
        };
        let action = Action::Revoke {
            tenant: slice.tenant.clone(),
            epoch: slice.epoch,
        };
        if preempted {
            *self.preempted.entry(slice.tenant.clone()).or_default() += 1;
        }
        self.state = State::Draining {
            slice,
            timeout_at: now + self.drain_timeout,
            busy,
            preempted,
        };
        vec![action]
    }

    /// Budget a capped tenant needs before it is granted: a quantum (what an idle tenant banks
    /// at most), so that its slices are long and the switch cost around them small beside
    /// their device time.
    fn min_budget(&self) -> f64 {
        self.quantum.as_nanos() as f64
    }

    /// The core: decide what happens now.
    fn schedule(&mut self, now: Instant, activity: &dyn Fn(&str) -> Activity) -> Vec<Action> {
        self.note_demand(now, activity);
        match &self.state {
            State::Granted(_) => self.check_holder(now, activity),
            State::Draining { timeout_at, .. } if now >= *timeout_at => {
                // Stopped or stuck: not a busy holder on its way back.
                if let State::Draining { busy, .. } = &mut self.state {
                    *busy = false;
                }
                let dry = self.slice().map(|s| activity(&s.tenant).bound_dry);
                self.finish_slice(now, None, dry.unwrap_or(0));
                self.grant_next(now, activity)
            }
            State::Draining { .. } => Vec::new(),
            State::Idle | State::Throttled { .. } | State::Reserved { .. } => {
                self.grant_next(now, activity)
            }
        }
    }

    /// Who wants the device: threads waiting at the gate (a thread counts itself before it
    /// sends `Demand`, so no demand is lost), or a busy holder's threads on their way back
    /// (the return window). A tenant that starts wanting again after a pause of a quantum or
    /// more (idle, stopped, stalled) starts at the busy ones' least virtual time: the pause
    /// earns no credit. A shorter gap keeps the tenant's place.
    fn note_demand(&mut self, now: Instant, activity: &dyn Fn(&str) -> Activity) {
        let holder = self.holder().map(str::to_string);
        let epoch = self.slice().map(|s| s.epoch);
        let floor = self.min_vtime(now);
        let quantum = self.quantum;
        let credit = self.credit.as_nanos() as f64;
        for (name, t) in self.tenants.iter_mut() {
            let is_holder = holder.as_deref() == Some(name.as_str());
            let waiting = !is_holder && activity(name).waiting > 0;
            if waiting || is_holder || t.returning_until.is_some_and(|u| now >= u) {
                t.returning_until = None;
            }
            let wants = waiting || t.returning_until.is_some();
            if wants && !t.wants {
                // What its bucket banked while it did not want the device (one quantum).
                Self::refill(t, now, quantum);
                let paused = t
                    .idle_since
                    .is_some_and(|s| now.saturating_duration_since(s) >= quantum);
                if paused && let Some(floor) = floor {
                    // A latency-class tenant keeps up to a credit of the time it left to the
                    // others (its requests come in bursts); everyone else starts at the floor.
                    let bank = match t.class {
                        Priority::Latency => credit / t.weight as f64,
                        _ => 0.0,
                    };
                    let before = t.vtime;
                    t.vtime = t.vtime.max(floor - bank);
                    t.floored = epoch.map(|epoch| Floored {
                        epoch,
                        at: now,
                        before,
                        bank,
                    });
                }
            }
            if wants || is_holder {
                t.idle_since = None;
            } else if t.idle_since.is_none() {
                t.idle_since = Some(now);
            }
            if !wants {
                t.wants_since = None;
            } else if t.wants_since.is_none() {
                t.wants_since = Some(now);
            }
            t.wants = wants;
        }
    }

    /// A tenant's claim on turn length: its weight per unit of device time a turn of its yields.
    fn claim(t: &Tenant) -> f64 {
        t.weight as f64 / t.efficiency
    }

    /// How long `tenant`'s turn lasts while others want the device: the largest claim among
    /// those who want or hold the device gets a quantum, the others in proportion (at least
    /// `min_turn`), so the device time of turns is proportional to weight and tenants
    /// alternate: nobody waits much more than a quantum.
    fn turn(&self, tenant: &str) -> Duration {
        let Some(me) = self.tenants.get(tenant) else {
            return self.quantum;
        };
        let largest = self
            .tenants
            .iter()
            .filter(|(n, t)| t.wants || n.as_str() == tenant)
            .map(|(_, t)| Self::claim(t))
            .fold(0.0, f64::max);
        let fraction = (Self::claim(me) / largest).clamp(self.min_turn, 1.0);
        self.quantum.mul_f64(fraction * NORMAL_TURN_FRACTION)
    }

    /// When a capped holder's budget runs out: it is spent at the holder's efficiency (device
    /// time per wall time) and refills at the cap's rate while it runs, so the slice can last
    /// budget / (efficiency - cap), at most four quanta (the charge at the drain settles the
    /// rest).
    fn cap_deadline(&self, slice: &Slice) -> Option<Instant> {
        let t = self.tenants.get(&slice.tenant)?;
        let cap = t.cap?;
        let run = (t.budget.max(0.0) / (t.efficiency - cap).max(1e-3))
            .min(self.quantum.as_nanos() as f64 * 4.0);
        Some(slice.since + Duration::from_nanos(run as u64))
    }

    /// The device time `tenant` is still owed before its virtual time, its running `ran`
    /// charged at its efficiency, passes the least of the others who want the device, as a
    /// turn of wall time (zero when it is not behind).
    fn owed(&self, tenant: &str, ran: Duration) -> Duration {
        let Some(me) = self.tenants.get(tenant) else {
            return Duration::ZERO;
        };
        let mine = me.vtime + ran.as_nanos() as f64 * me.efficiency / me.weight as f64;
        let next = self
            .tenants
            .iter()
            .filter(|(n, t)| t.wants && n.as_str() != tenant)
            .map(|(_, t)| t.vtime)
            .reduce(f64::min)
            .unwrap_or(mine);
        let ns = (next - mine).max(0.0) * me.weight as f64 / me.efficiency;
        Duration::from_nanos(ns.min(1e15) as u64)
    }

    /// Whether `tenant` may have two turns in a row while others wait: only when its weight is so
    /// far above another's that their turns cannot be in proportion (the other's is held at the
    /// minimum turn). Otherwise tenants alternate and a lag is worked off by the length of their
    /// turns, so nobody waits for more than about one turn of each other tenant.
    fn runs_again(&self, tenant: &str) -> bool {
        let Some(me) = self.tenants.get(tenant) else {
            return false;
        };
        // By weight, not by claim: a tenant that leaves much of its turns idle (its host runs it
        // late) gets longer turns, up to the quantum, but never several in a row.
        let mine = me.weight as f64;
        self.tenants.iter().any(|(n, t)| {
            t.wants && n.as_str() != tenant && (t.weight as f64) < mine * self.min_turn
        })
    }

    /// Whether `tenant` (having run `ran` of its slice) is owed so much that it takes another
    /// turn before the others: a whole turn when its weight is more than 4 times another's
    /// (`runs_again`), else two whole turns (a lag the turn lengths cannot work off, such as a
    /// tenant whose deep queues keep the device long after each revocation).
    fn owes_a_run(&self, tenant: &str, ran: Duration) -> bool {
        let turns = if self.runs_again(tenant) { 1 } else { 2 };
        self.owed(tenant, ran) >= self.turn(tenant) * turns
    }

    /// The turn of a tenant being granted: its normal turn, corrected by how far it is behind
    /// or ahead, within 50..=111% of normal. In a steady alternation a tenant is granted when
    /// it is owed about half a normal turn (the others ran since it did), so that is the mark:
    /// a lag either way (a turn's drain tail, a changing efficiency) is worked off over the next
    /// turns without anyone waiting much longer than a quantum.
    fn turn_at_grant(&self, tenant: &str) -> Duration {
        let normal = self.turn(tenant);
        (self.owed(tenant, Duration::ZERO) + normal / 2)
            .clamp(normal / 2, normal.div_f64(NORMAL_TURN_FRACTION))
    }

    /// The holder's slice: arms its turn and cap deadlines and idle checks while others want
    /// the device; revokes it when its turn or budget is over, or when it is idle.
    fn check_holder(&mut self, now: Instant, activity: &dyn Fn(&str) -> Activity) -> Vec<Action> {
        let State::Granted(slice) = &self.state else {
            return Vec::new();
        };
        let others_want = self
            .tenants
            .iter()
            .any(|(n, t)| *n != slice.tenant && t.wants);
        let act = activity(&slice.tenant);
        let cap_deadline = self.cap_deadline(slice);
        let (mut turn_since, mut turn) = (slice.turn_since, slice.turn);
        if others_want && now >= turn_since + turn && self.keep_turns {
            // Still owed enough (see `owes_a_run`): another turn, no switch.
            let ran = now.saturating_duration_since(slice.since);
            if self.owes_a_run(&slice.tenant, ran) {
                (turn_since, turn) = (now, self.turn(&slice.tenant));
            } else if let Some(left) = self.precedence_left(&slice.tenant, now) {
                // Above every class that waits and still entitled: it keeps the device while
                // it has work, until its credit is spent.
                (turn_since, turn) = (now, left.clamp(self.idle_grace, self.quantum));
            }
        }
        // A turn already over when others start wanting ends now.
        let turn_deadline = others_want.then(|| (turn_since + turn).max(now));
        // A tenant of a higher class, entitled to go first, wants the device: revoke now (the
        // holder's queued work drains; the shim keeps it within the drain budget).
        if others_want && self.preempts(&slice.tenant, now) {
            return self.revoke_for(now, true, true);
        }
        // A latency holder yields as soon as it has no work: a runnable thread of it does not
        // keep the device (its requests end with a synchronize, and it has its hint).
        let (grace, late_counts) = match self.tenants.get(&slice.tenant) {
            Some(t) if t.class == Priority::Latency => (self.latency_grace(), false),
            _ => (self.grace(), act.runnable),
        };
        let State::Granted(slice) = &mut self.state else {
            return Vec::new();
        };
        (slice.turn_since, slice.turn) = (turn_since, turn);
        slice.deadline = [turn_deadline, cap_deadline].into_iter().flatten().min();
        let idle = match slice.idle_check {
            _ if !others_want => {
                slice.idle_check = None;
                false
            }
            // No launch since the last check, nobody waiting for queued work, no thread
            // still on its way out of the gate (woken by the grant but not yet run by a busy
            // host) and, unless it is a latency holder, none runnable (a busy host running it
            // late; a thread at work on the CPU keeps the holder too, within its turn): the
            // holder has nothing for the device.
            Some((at, seen))
                if now >= at
                    && seen == act.launches
                    && act.syncing == 0
                    && act.waiting == 0
                    && !late_counts =>
            {
                true
            }
            Some((at, _)) if now < at => false,
            _ => {
                slice.idle_check = Some((now + grace, act.launches));
                false
            }
        };
        if idle {
            self.revoke(now, false)
        } else if slice.deadline.is_some_and(|d| now >= d) {
            self.revoke(now, true)
        } else {
            Vec::new()
        }
    }

    /// Who goes next: an entitled tenant of a higher class than the one [`Self::pick_by_vtime`]
    /// picks, else that one.
    fn pick_next(&self, now: Instant) -> Option<String> {
        let min_budget = self.min_budget();
        // Entitled latency-class tenants go first, in the order they asked, among those within
        // their credit of the least of them (so this cannot tilt their shares by more).
        let latency: Vec<(&String, &Tenant)> = self
            .tenants
            .iter()
            .filter(|(n, t)| {
                t.wants
                    && t.class == Priority::Latency
                    && t.cap.is_none_or(|_| t.budget >= min_budget)
                    && self.entitled(n, now)
            })
            .collect();
        if let Some(least) = latency.iter().map(|(_, t)| t.vtime).reduce(f64::min) {
            let credit = self.credit.as_nanos() as f64;
            return latency
                .iter()
                .filter(|(_, t)| t.vtime <= least + credit / t.weight as f64)
                .min_by_key(|(_, t)| t.wants_since)
                .map(|(n, _)| (*n).clone());
        }
        let next = self.pick_by_vtime()?;
        // An entitled tenant of a higher class goes first (the highest class, then the least
        // virtual time); among tenants of one class, the order above stands.
        let class = self
            .tenants
            .get(&next)
            .map_or(Priority::Normal, |t| t.class);
        self.tenants
            .iter()
            .filter(|(n, t)| {
                t.wants
                    && rank(t.class) > rank(class)
                    && t.cap.is_none_or(|_| t.budget >= min_budget)
                    && self.entitled(n, now)
            })
            .max_by(|a, b| {
                rank(a.1.class)
                    .cmp(&rank(b.1.class))
                    .then(b.1.vtime.total_cmp(&a.1.vtime))
            })
            .map(|(n, _)| n.clone())
            .or(Some(next))
    }

    /// The wanting tenant with the least virtual time (capped ones only with budget). The last
    /// holder goes again only when it is owed a whole turn: a smaller lead is carried into its
    /// next turns (see `turn_at_grant`) rather than making the others wait twice.
    fn pick_by_vtime(&self) -> Option<String> {
        let min_budget = self.min_budget();
        let eligible = |t: &Tenant| t.wants && t.cap.is_none_or(|_| t.budget >= min_budget);
        let mut order: Vec<(&String, f64)> = self
            .tenants
            .iter()
            .filter(|(_, t)| eligible(t))
            .map(|(n, t)| (n, t.vtime))
            .collect();
        order.sort_by(|a, b| a.1.total_cmp(&b.1));
        let again = |n: &str| self.last_holder.as_deref() == Some(n);
        let behind = |n: &str| self.owes_a_run(n, Duration::ZERO);
        match order.as_slice() {
            [(first, _), (second, _), ..] if again(first) && !behind(first) => {
                Some((*second).clone())
            }
            [(first, _), ..] => Some((*first).clone()),
            [] => None,
        }
    }

    /// Nobody holds the device: grants it to the wanting tenant with the least virtual time
    /// (capped ones only with budget), or waits for a cap's budget.
    fn grant_next(&mut self, now: Instant, activity: &dyn Fn(&str) -> Activity) -> Vec<Action> {
        let quantum = self.quantum;
        for t in self.tenants.values_mut() {
            Self::refill(t, now, quantum);
        }
        // A latency-class tenant on its way back from a drain needs no place kept: when (if)
        // its threads come back with more work, its class puts it first. Its work often all
        // completed in the drain (a request ends with a synchronize), and the device must not
        // idle waiting for it.
        let unreserved: Vec<String> = self
            .tenants
            .iter()
            .filter(|(n, t)| {
                t.wants
                    && t.returning_until.is_some()
                    && t.class == Priority::Latency
                    && activity(n).waiting == 0
                    && self.entitled(n, now)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in unreserved {
            if let Some(t) = self.tenants.get_mut(&n) {
                t.returning_until = None;
                t.wants = false;
            }
        }
        let Some(name) = self.pick_next(now) else {
            // Wanted but throttled by caps: wake when the first has budget.
            let min_budget = self.min_budget();
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
            self.state = until.map_or(State::Idle, |until| State::Throttled { until });
            return Vec::new();
        };
        if activity(&name).waiting == 0
            && let Some(until) = self.tenants.get(&name).and_then(|t| t.returning_until)
        {
            self.state = State::Reserved {
                tenant: name,
                until,
            };
            return Vec::new();
        }
        self.epoch = self.epoch.wrapping_add(1).max(1);
        let t = self.tenants.get_mut(&name).expect("present");
        t.wants = false;
        t.returning_until = None;
        let turn = self.turn_at_grant(&name);
        self.state = State::Granted(Slice {
            tenant: name.clone(),
            epoch: self.epoch,
            since: now,
            turn_since: now,
            turn,
            deadline: None,
            idle_check: None,
            dry_at: activity(&name).bound_dry,
        });
        let mut actions = vec![Action::Grant {
            tenant: name,
            epoch: self.epoch,
        }];
        // Arm deadlines (turn if others wait, cap budget).
        actions.extend(self.check_holder(now, activity));
        actions
    }

    /// Each tenant's share of the device over the last [`SHARE_WINDOW`]: device time charged
    /// for completed slices, plus the current slice so far.
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
        let mut add = |name: &str, start: Instant, end: Instant, charged: f64| {
            let s = start.max(window_start);
            let len = end.saturating_duration_since(start).as_secs_f64();
            if end > s && len > 0.0 {
                let inside = (end - s).as_secs_f64() / len;
                *out.entry(name.to_string()).or_default() += charged * inside / span;
            }
        };
        for p in &self.history {
            add(&p.tenant, p.start, p.end, p.charged_ns as f64 / 1e9);
        }
        if let Some(s) = self.slice() {
            let ran = now.saturating_duration_since(s.since).as_secs_f64();
            add(&s.tenant, s.since, now, ran);
        }
        out
    }

    /// Total device time charged to a tenant, ns.
    pub fn charged_ns(&self, tenant: &str) -> u64 {
        self.tenants.get(tenant).map_or(0, |t| t.charged_ns)
    }

    /// Slice time charged to no tenant (device idle between slices, drain round trips), ns.
    pub fn overhead_ns(&self) -> u64 {
        self.overhead_ns
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
                        pending.extend(s.drained(&tenant, epoch, None, now, &act));
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

    /// A lone holder's slice lasts 5 s of wall time but is charged 50 ms of device time (its
    /// work left the device idle, or the process that did the rest is gone and cannot say):
    /// a tenant that arrived meanwhile was floored against an estimate of the holder's charge,
    /// and must not end up behind the holder by the difference (it waited 5 s for that once).
    #[test]
    fn a_holder_charged_less_than_its_slice_does_not_keep_a_newcomer_waiting() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_millis(20));
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        let only_a = |n: &str| Activity {
            waiting: (n == "a") as u32,
            ..Default::default()
        };
        let granted = s.demand("a", t0, &only_a);
        assert!(matches!(&granted[..], [Action::Grant { tenant, .. }] if tenant == "a"));
        let both = |_: &str| Activity {
            waiting: 1,
            ..Default::default()
        };
        let t1 = t0 + Duration::from_secs(5);
        let revoked = s.demand("b", t1, &both);
        let [Action::Revoke { tenant, epoch }] = &revoked[..] else {
            panic!("a newcomer ends a long turn: {revoked:?}");
        };
        assert_eq!(tenant, "a");
        let t2 = t1 + Duration::from_millis(1);
        let next = s.drained("a", *epoch, Some(Duration::from_millis(50)), t2, &both);
        assert!(
            matches!(&next[..], [Action::Grant { tenant, .. }, ..] if tenant == "b"),
            "b goes next: {next:?}"
        );
        let shares = run(&mut s, t2, &["a", "b"], 2.0);
        assert!(
            (shares["b"] - 0.5).abs() < 0.05,
            "equal weights after the long slice: {shares:?}"
        );
    }

    /// A batch holder preempted by a latency tenant after 20 ms of its slice, having kept the
    /// device busy `used_ms` of them and, if `ran_dry`, come back to an empty bounded queue
    /// (`dry` is its [`Activity::bound_dry`] count); the latency tenant then serves a request
    /// and yields. Returns the batch tenant's queue scale after the slice.
    fn preempted_batch_slice(
        s: &mut Scheduler,
        t: &mut Instant,
        dry: &std::cell::Cell<u32>,
        used_ms: u64,
        ran_dry: bool,
    ) -> f64 {
        let batch_only = |n: &str| Activity {
            waiting: (n == "batch") as u32,
            bound_dry: dry.get(),
            ..Default::default()
        };
        let both = |_: &str| Activity {
            waiting: 1,
            bound_dry: dry.get(),
            ..Default::default()
        };
        if s.granted().map(|(h, _)| h) != Some("batch") {
            let granted = s.demand("batch", *t, &batch_only);
            assert!(
                matches!(&granted[..], [Action::Grant { tenant, .. }] if tenant == "batch"),
                "{granted:?}"
            );
        }
        *t += Duration::from_millis(20);
        if ran_dry {
            dry.set(dry.get().wrapping_add(3));
        }
        let revoked = s.demand("web", *t, &both);
        let [Action::Revoke { tenant, epoch }] = &revoked[..] else {
            panic!("the latency tenant preempts the batch one: {revoked:?}");
        };
        assert_eq!(tenant, "batch");
        *t += Duration::from_millis(1);
        let used = Some(Duration::from_millis(used_ms));
        let next = s.drained("batch", *epoch, used, *t, &both);
        let [Action::Grant { tenant, epoch }, ..] = &next[..] else {
            panic!("the latency tenant goes next: {next:?}");
        };
        assert_eq!(tenant, "web");
        let scale = s.queue_scale("batch");
        *t += Duration::from_millis(5);
        let yielded = s.idle_hint("web", true, *t, &batch_only);
        assert!(
            matches!(&yielded[..], [Action::Revoke { tenant, .. }] if tenant == "web"),
            "{yielded:?}"
        );
        *t += Duration::from_millis(1);
        let next = s.drained(
            "web",
            *epoch,
            Some(Duration::from_millis(5)),
            *t,
            &batch_only,
        );
        assert!(
            matches!(&next[..], [Action::Grant { tenant, .. }] if tenant == "batch"),
            "{next:?}"
        );
        scale
    }

    fn latency_and_batch(t: Instant) -> Scheduler {
        let mut s = Scheduler::new(Duration::from_millis(50));
        s.set_tenant("web", 1, None, t);
        s.set_tenant("batch", 1, None, t);
        s.set_priority("web", Priority::Latency);
        s.set_priority("batch", Priority::Batch);
        s
    }

    /// A batch tenant bounded beside a latency tenant whose slices leave the device idle while
    /// its bounded queue runs dry (each refill waits for its thread, which a busy host runs
    /// late) gets a larger queue budget, doubling per such slice up to the limit; slices that
    /// keep the device fed bring it back to the configured budget.
    #[test]
    fn a_starved_bounded_queue_widens_and_narrows_back() {
        let mut t = Instant::now();
        let mut s = latency_and_batch(t);
        let dry = std::cell::Cell::new(u32::MAX - 4);
        assert_eq!(s.queue_scale("batch"), 1.0);
        let generation = s.scale_generation();
        // Fed: 20 of 21 ms busy.
        assert_eq!(preempted_batch_slice(&mut s, &mut t, &dry, 20, false), 1.0);
        assert_eq!(s.scale_generation(), generation);
        // Starved, and its queue ran dry (the count wraps on the way): 8 of 21 ms.
        let widening: Vec<f64> = (0..5)
            .map(|_| preempted_batch_slice(&mut s, &mut t, &dry, 8, true))
            .collect();
        assert_eq!(widening, [2.0, 4.0, 8.0, MAX_QUEUE_SCALE, MAX_QUEUE_SCALE]);
        assert_ne!(s.scale_generation(), generation);
        // Neither starved nor fed (17 of 21 ms, dry): it stays.
        let kept = preempted_batch_slice(&mut s, &mut t, &dry, 17, true);
        assert_eq!(kept, MAX_QUEUE_SCALE);
        let narrowing: Vec<f64> = (0..8)
            .map(|_| preempted_batch_slice(&mut s, &mut t, &dry, 20, true))
            .collect();
        assert!(
            narrowing.windows(2).all(|w| w[1] < w[0] || w[1] == 1.0),
            "{narrowing:?}"
        );
        assert_eq!(*narrowing.last().unwrap(), 1.0, "{narrowing:?}");
        // The latency tenant itself is never bounded, so never scaled.
        assert_eq!(s.queue_scale("web"), 1.0);
    }

    /// A bounded tenant whose slices leave the device idle without its queue ever running dry
    /// (its threads compute on the CPU between launches: the bound is not what idles the
    /// device) is not widened; a change of class resets a widened one.
    #[test]
    fn idle_of_its_own_or_unmeasured_does_not_widen_the_queue() {
        let mut t = Instant::now();
        let mut s = latency_and_batch(t);
        let dry = std::cell::Cell::new(0);
        for _ in 0..5 {
            assert_eq!(preempted_batch_slice(&mut s, &mut t, &dry, 6, false), 1.0);
        }
        // Widened, then a class change (or no higher class left) resets it.
        for _ in 0..3 {
            preempted_batch_slice(&mut s, &mut t, &dry, 6, true);
        }
        assert_eq!(s.queue_scale("batch"), 8.0);
        s.set_priority("batch", Priority::Normal);
        assert_eq!(s.queue_scale("batch"), 1.0);
    }

    /// Without a higher class on the device a tenant's queue is not bounded: however idle its
    /// slices leave the device, its scale stays 1.
    #[test]
    fn an_unbounded_tenant_keeps_its_queue_scale() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_millis(50));
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        let both = |_: &str| Activity {
            waiting: 1,
            ..Default::default()
        };
        let mut actions = s.demand("a", t0, &both);
        actions.extend(s.demand("b", t0, &both));
        let mut t = t0;
        for _ in 0..10 {
            t += Duration::from_millis(60);
            for a in s.tick(t, &both) {
                if let Action::Revoke { tenant, epoch } = a {
                    let used = Some(Duration::from_millis(10));
                    s.drained(&tenant, epoch, used, t, &both);
                }
            }
        }
        assert_eq!(s.queue_scale("a"), 1.0);
        assert_eq!(s.queue_scale("b"), 1.0);
        assert!(s.charged_ns("a") > 0 && s.charged_ns("b") > 0);
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
        let actions = s.drained("a", 1, Some(Duration::ZERO), check, &idle_a);
        assert_eq!(
            actions,
            vec![Action::Grant {
                tenant: "b".into(),
                epoch: 2
            }]
        );
    }

    /// A holder that launches nothing while a thread of it is runnable (a busy host runs it
    /// late) keeps the device until its turn ends, not just an idle grace; a latency-class one
    /// does not (it yields as soon as its work is done).
    #[test]
    fn a_holder_with_a_runnable_thread_is_not_idle_unless_latency_class() {
        for class in [Priority::Normal, Priority::Latency] {
            let mut s = Scheduler::new(Duration::from_millis(50));
            let t0 = Instant::now();
            s.set_tenant("a", 1, None, t0);
            s.set_tenant("b", 1, None, t0);
            s.set_priority("a", class);
            s.demand("a", t0, &|n| Activity {
                waiting: (n == "a") as u32,
                launches: 7,
                ..Default::default()
            });
            // a launches nothing more, but its thread is runnable; b waits.
            let late_a = |n: &str| Activity {
                waiting: (n == "b") as u32,
                launches: 7,
                runnable: n == "a",
                ..Default::default()
            };
            let t1 = t0 + Duration::from_millis(1);
            assert!(s.demand("b", t1, &late_a).is_empty());
            let revoked_at = loop {
                let now = s.next_deadline().expect("a deadline while b waits");
                if !s.tick(now, &late_a).is_empty() {
                    break now;
                }
            };
            let held = revoked_at - t0;
            if class == Priority::Latency {
                assert!(held < Duration::from_millis(10), "latency: held {held:?}");
            } else {
                // Its turn (half a normal one when granted uncontended: 22.5 ms), not the idle
                // grace (5 ms).
                assert!(
                    held >= Duration::from_millis(20),
                    "a late holder keeps its turn: held {held:?}"
                );
            }
        }
    }

    #[test]
    fn late_ticks_lengthen_the_idle_grace() {
        let mut s = Scheduler::new(Duration::from_millis(200));
        let t0 = Instant::now();
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        let launches = std::cell::Cell::new(0u64);
        // a holds and keeps launching, b waits.
        let act = |n: &str| Activity {
            waiting: (n == "b") as u32,
            launches: if n == "a" { launches.get() } else { 0 },
            ..Default::default()
        };
        s.demand("a", t0, &|n| Activity {
            waiting: (n == "a") as u32,
            ..Default::default()
        });
        s.demand("b", t0, &act);
        let base = s.grace();
        // The server's ticks come 5 ms late, again and again (idle checks, inside one turn).
        for _ in 0..4 {
            launches.set(launches.get() + 1);
            let due = s.next_deadline().expect("an idle check is armed");
            assert!(s.tick(due + Duration::from_millis(5), &act).is_empty());
        }
        assert_eq!(base, Duration::from_millis(10));
        assert!(
            s.grace() >= Duration::from_millis(15),
            "grace {:?}",
            s.grace()
        );
        assert!(
            s.grace() <= Duration::from_millis(30),
            "grace {:?}",
            s.grace()
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

    /// A holder passed over after the drain timeout (stopped) banks no credit while the other
    /// runs alone (with no scheduling event at all meanwhile): when it comes back it gets its
    /// share, not the other's whole solo run.
    #[test]
    fn a_stalled_holder_banks_no_credit() {
        let q = Duration::from_millis(50);
        let mut s = Scheduler::new(q);
        let t0 = Instant::now();
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        let both = |_: &str| Activity {
            waiting: 1,
            ..Default::default()
        };
        s.demand("a", t0, &both);
        s.demand("b", t0, &both);
        // a's turn ends, it is revoked and never drains (stopped): passed over.
        for _ in 0..100 {
            let at = s.next_deadline().unwrap();
            if matches!(s.tick(at, &both)[..], [Action::Revoke { .. }]) {
                break;
            }
        }
        let only_b = |n: &str| Activity {
            waiting: (n == "b") as u32,
            ..Default::default()
        };
        let timeout = s.next_deadline().unwrap();
        let granted = s.tick(timeout, &only_b);
        assert!(matches!(&granted[..], [Action::Grant { tenant, .. }] if tenant == "b"));
        assert_eq!(s.next_deadline(), None, "b alone: no timer, no events");
        // Three seconds later a speaks again: b's turn ends, a gets the device for about a
        // turn, then b again.
        let back = timeout + Duration::from_secs(3);
        let revoked = s.demand("a", back, &both);
        assert!(matches!(&revoked[..], [Action::Revoke { tenant, .. }] if tenant == "b"));
        let (b_epoch, drained_at) = (s.epoch, back + Duration::from_millis(1));
        let granted = s.drained(
            "b",
            b_epoch,
            Some(Duration::from_secs(3)),
            drained_at,
            &both,
        );
        assert!(matches!(&granted[..], [Action::Grant { tenant, .. }] if tenant == "a"));
        let mut revoked_at = None;
        for _ in 0..100 {
            let at = s.next_deadline().unwrap();
            if let [Action::Revoke { tenant, .. }] = &s.tick(at, &both)[..] {
                assert_eq!(tenant, "a");
                revoked_at = Some(at);
                break;
            }
        }
        let turn = revoked_at.expect("a's turn ends") - drained_at;
        assert!(turn <= q, "a's turn lasted {turn:?}");
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

    /// `a` (batch) holds the device and has work; `b` of `class` then asks for it.
    fn batch_holds_then(class: Priority) -> (Scheduler, Instant, Vec<Action>) {
        let mut s = Scheduler::new(Duration::from_millis(50));
        let t0 = Instant::now();
        s.set_tenant("a", 1, None, t0);
        s.set_tenant("b", 1, None, t0);
        s.set_priority("a", Priority::Batch);
        s.set_priority("b", class);
        let only_a = |n: &str| Activity {
            waiting: (n == "a") as u32,
            launches: 1,
            syncing: (n == "a") as u32,
            runnable: false,
            bound_dry: 0,
        };
        assert_eq!(
            s.demand("a", t0, &only_a),
            vec![Action::Grant {
                tenant: "a".into(),
                epoch: 1
            }]
        );
        let t1 = t0 + Duration::from_millis(3);
        let both = |_: &str| Activity {
            waiting: 1,
            launches: 1,
            syncing: 1,
            runnable: false,
            bound_dry: 0,
        };
        let actions = s.demand("b", t1, &both);
        (s, t1, actions)
    }

    #[test]
    fn a_latency_demand_revokes_a_batch_holder_at_once() {
        let (mut s, t1, actions) = batch_holds_then(Priority::Latency);
        assert_eq!(
            actions,
            vec![Action::Revoke {
                tenant: "a".into(),
                epoch: 1
            }],
            "revoked at the demand, not at the turn's end"
        );
        let act = |_: &str| Activity {
            waiting: 1,
            ..Default::default()
        };
        let at = t1 + Duration::from_millis(2);
        assert_eq!(
            s.drained("a", 1, Some(Duration::from_millis(5)), at, &act),
            vec![Action::Grant {
                tenant: "b".into(),
                epoch: 2
            }]
        );
        assert_eq!(s.preemptions("a"), 1);
        // Normal preempts batch too.
        let (_, _, actions) = batch_holds_then(Priority::Normal);
        assert!(matches!(&actions[..], [Action::Revoke { tenant, .. }] if tenant == "a"));
    }

    /// Both in one class: the demand waits for the holder's turn (today's behaviour).
    #[test]
    fn one_class_waits_for_the_turn() {
        let (mut s, t1, actions) = batch_holds_then(Priority::Batch);
        assert!(actions.is_empty(), "{actions:?}");
        let launches = std::cell::Cell::new(1u64);
        let both = |_: &str| Activity {
            waiting: 1,
            launches: launches.get(),
            syncing: 1,
            runnable: false,
            bound_dry: 0,
        };
        let revoked_at = (0..100)
            .find_map(|_| {
                launches.set(launches.get() + 1);
                let at = s.next_deadline().expect("a deadline");
                (!s.tick(at, &both).is_empty()).then_some(at)
            })
            .expect("revoked at the turn's end");
        // At its turn's end (half a normal turn after the grant, 3 ms before the demand).
        assert!(
            revoked_at >= t1 + Duration::from_millis(15),
            "{:?}",
            revoked_at - t1
        );
        assert_eq!(s.preemptions("a"), 0);
    }

    #[test]
    fn a_latency_holder_yields_on_its_hint() {
        let mut s = Scheduler::new(Duration::from_millis(50));
        let t0 = Instant::now();
        s.set_tenant("web", 1, None, t0);
        s.set_tenant("batch", 1, None, t0);
        s.set_priority("web", Priority::Latency);
        s.set_priority("batch", Priority::Batch);
        let web_only = |n: &str| Activity {
            waiting: (n == "web") as u32,
            ..Default::default()
        };
        s.demand("web", t0, &web_only);
        assert_eq!(s.holder(), Some("web"));
        // Alone: a hint changes nothing (work-conserving, no switch).
        assert!(s.idle_hint("web", true, t0, &web_only).is_empty());
        let t1 = t0 + Duration::from_millis(1);
        let batch_waits = |n: &str| Activity {
            waiting: (n == "batch") as u32,
            ..Default::default()
        };
        assert!(s.demand("batch", t1, &batch_waits).is_empty());
        assert_eq!(s.contended_holder(), Some(("web", Priority::Latency)));
        // Still syncing, or launched since: not idle.
        let web_syncs = |n: &str| Activity {
            waiting: (n == "batch") as u32,
            syncing: (n == "web") as u32,
            ..Default::default()
        };
        assert!(s.idle_hint("web", true, t1, &web_syncs).is_empty());
        assert!(s.idle_hint("web", false, t1, &batch_waits).is_empty());
        assert_eq!(s.hint_yields("web"), 0);
        // Its synchronize returned and nothing since: it yields now, not after a grace.
        assert_eq!(
            s.idle_hint("web", true, t1, &batch_waits),
            vec![Action::Revoke {
                tenant: "web".into(),
                epoch: 1
            }]
        );
        assert_eq!(s.hint_yields("web"), 1);
        assert_eq!(
            s.drained("web", 1, Some(Duration::from_micros(900)), t1, &batch_waits),
            vec![Action::Grant {
                tenant: "batch".into(),
                epoch: 2
            }]
        );
    }

    /// A quota file's priority changes while the tenants run: it takes effect at the next
    /// demand.
    #[test]
    fn a_class_change_takes_effect_live() {
        let (mut s, t1, actions) = batch_holds_then(Priority::Batch);
        assert!(actions.is_empty());
        s.set_priority("b", Priority::Latency);
        let both = |_: &str| Activity {
            waiting: 1,
            launches: 1,
            syncing: 1,
            runnable: false,
            bound_dry: 0,
        };
        let actions = s.tick(t1 + Duration::from_millis(1), &both);
        assert!(matches!(&actions[..], [Action::Revoke { tenant, .. }] if tenant == "a"));
    }

    /// Adversarial timings: a discrete-event model of tenants' threads, the drain and the
    /// device around a [`Scheduler`], driven on a fake clock.
    mod adversarial {
        use super::*;
        use std::cell::RefCell;

        /// A saturating tenant and how slowly a busy host runs it.
        #[derive(Clone)]
        struct Spec {
            name: &'static str,
            weight: u32,
            cap: Option<u32>,
            /// After the drain completed its work, its threads come back to the gate after a
            /// delay drawn from this range (ms): a busy host runs them late.
            back_ms: (f64, f64),
            /// Fraction of its working time the device spends on its kernels (the rest is its
            /// own host latency between batches), drawn from this range for each slice.
            busy: (f64, f64),
            /// How long its queued kernels keep the device after a revocation (ms range).
            tail_ms: (f64, f64),
            /// How long after its work drained its `Drained` reaches the scheduler (ms range:
            /// the watcher thread and the daemon, run late by a busy host).
            ack_ms: (f64, f64),
            /// How long after a grant its threads at the gate start working (ms range: woken,
            /// then run late by a busy host).
            wake_ms: (f64, f64),
        }

        fn spec(name: &'static str, weight: u32, back_ms: (f64, f64), busy: f64) -> Spec {
            Spec {
                name,
                weight,
                cap: None,
                back_ms,
                busy: (busy, busy),
                tail_ms: (0.1, 5.0),
                ack_ms: (0.0, 3.0),
                wake_ms: (0.0, 0.0),
            }
        }

        #[derive(Default)]
        struct Threads {
            /// When its threads are (or will be) at the gate; None while they hold the device.
            back_at: Option<Instant>,
            /// When the holder's threads started working in the current slice.
            work_from: Option<Instant>,
            device_ns: f64,
            waits_ms: Vec<f64>,
            /// When its work last left the device (after a revocation's tail).
            last_end: Option<Instant>,
            /// Device time between the end of one of its runs and the start of the next, ms.
            run_gaps_ms: Vec<f64>,
        }

        /// What came out of a run.
        struct Outcome {
            /// Device time each tenant's kernels used (ground truth), ns.
            device_ns: Vec<f64>,
            /// Each tenant's waits at the gate for a grant, ms.
            waits_ms: Vec<Vec<f64>>,
            /// Each tenant's gaps between its runs on the device, ms (what a tenant's requests
            /// wait for, the scenario runner's measure).
            run_gaps_ms: Vec<Vec<f64>>,
            seconds: f64,
        }

        struct Rng(u64);
        impl Rng {
            fn unit(&mut self) -> f64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 11) as f64 / (1u64 << 53) as f64
            }
            fn ms(&mut self, (lo, hi): (f64, f64)) -> Duration {
                Duration::from_secs_f64((lo + (hi - lo) * self.unit()) / 1e3)
            }
        }

        /// Runs the tenants of `specs`, all saturating, for `seconds` of simulated time. A
        /// revoked holder's queued kernels run 0.1-5 ms more on the device (the drain waits for
        /// them), its acknowledgement reaches the scheduler 0-3 ms after that, and it reports
        /// the device time its kernels used; its threads come back to the gate after their
        /// `back_ms` delay. The others' threads wait at the gate.
        fn simulate(specs: &[Spec], seconds: f64, seed: u64) -> Outcome {
            simulate_with(specs, seconds, seed, |_| {})
        }

        fn simulate_with(
            specs: &[Spec],
            seconds: f64,
            seed: u64,
            configure: fn(&mut Scheduler),
        ) -> Outcome {
            simulate_late(specs, seconds, seed, configure, (0.0, 0.0))
        }

        /// [`simulate_with`], with the server's timer ticks coming `late_ms` late (a busy
        /// host runs the daemon late too).
        fn simulate_late(
            specs: &[Spec],
            seconds: f64,
            seed: u64,
            configure: fn(&mut Scheduler),
            late_ms: (f64, f64),
        ) -> Outcome {
            let quantum = Duration::from_millis(50);
            let t0 = Instant::now();
            let mut s = Scheduler::new(quantum);
            configure(&mut s);
            for sp in specs {
                s.set_tenant(sp.name, sp.weight, sp.cap, t0);
            }
            let mut rng = Rng(seed | 1);
            let th: RefCell<Vec<Threads>> = RefCell::new(
                specs
                    .iter()
                    .map(|_| Threads {
                        back_at: Some(t0),
                        ..Default::default()
                    })
                    .collect(),
            );
            let launches = std::cell::Cell::new(0u64);
            let now_cell = std::cell::Cell::new(t0);
            let idx = |n: &str| specs.iter().position(|sp| sp.name == n).expect("known");
            let act = |n: &str| {
                let t = &th.borrow()[idx(n)];
                let now = now_cell.get();
                // A thread woken by the grant but not run yet still counts itself waiting.
                let at_gate =
                    t.back_at.is_some_and(|b| b <= now) || t.work_from.is_some_and(|w| w > now);
                let working = t.work_from.is_some_and(|w| w <= now);
                Activity {
                    waiting: at_gate as u32,
                    launches: if working { launches.get() } else { 0 },
                    syncing: working as u32,
                    runnable: false,
                    bound_dry: 0,
                }
            };
            // (tenant index, epoch, ack at, device ns)
            let mut ack: Option<(usize, u32, Instant, f64)> = None;
            let mut holder: Option<(usize, u32)> = None;
            let mut now = t0;
            let end = t0 + Duration::from_secs_f64(seconds);
            let mut pending: Vec<Action> = Vec::new();
            for sp in specs {
                pending.extend(s.demand(sp.name, now, &act));
            }
            while now < end {
                while !pending.is_empty() {
                    match pending.remove(0) {
                        Action::Grant { tenant, epoch } => {
                            let i = idx(&tenant);
                            let mut tt = th.borrow_mut();
                            let t = &mut tt[i];
                            let back = t.back_at.take().expect("a holder's threads were away");
                            if back <= now {
                                t.waits_ms.push((now - back).as_secs_f64() * 1e3);
                            }
                            // Threads not back yet pass the gate when they come; those
                            // waiting there are woken (and run late by a busy host).
                            let from = if back <= now {
                                now + rng.ms(specs[i].wake_ms)
                            } else {
                                back
                            };
                            t.work_from = Some(from);
                            if let Some(end) = t.last_end {
                                t.run_gaps_ms.push((from - end).as_secs_f64() * 1e3);
                            }
                            holder = Some((i, epoch));
                        }
                        Action::Revoke { tenant, epoch } => {
                            let i = idx(&tenant);
                            assert_eq!(holder, Some((i, epoch)), "revoked the holder");
                            let tail = rng.ms(specs[i].tail_ms);
                            let mut tt = th.borrow_mut();
                            let t = &mut tt[i];
                            let from = t.work_from.take().unwrap_or(now).min(now + tail);
                            let (lo, hi) = specs[i].busy;
                            let busy = if hi > lo {
                                lo + (hi - lo) * rng.unit()
                            } else {
                                lo
                            };
                            let used = (now + tail - from).as_nanos() as f64 * busy;
                            t.device_ns += used;
                            t.back_at = Some(now + tail + rng.ms(specs[i].back_ms));
                            t.last_end = Some(now + tail);
                            ack = Some((i, epoch, now + tail + rng.ms(specs[i].ack_ms), used));
                            holder = None;
                        }
                    }
                }
                // Next event: a deadline, the acknowledgement, a return, or a launch (1 ms).
                let returns = th
                    .borrow()
                    .iter()
                    .filter_map(|t| t.back_at)
                    .filter(|b| *b > now)
                    .min();
                let deadline = s.next_deadline().map(|d| {
                    if late_ms.1 > 0.0 {
                        d + rng.ms(late_ms)
                    } else {
                        d
                    }
                });
                let next = [
                    deadline,
                    ack.map(|a| a.2),
                    returns,
                    Some(now + Duration::from_millis(1)),
                ]
                .into_iter()
                .flatten()
                .filter(|t| *t > now)
                .min()
                .expect("the launch step");
                now = next;
                now_cell.set(now);
                launches.set(launches.get() + 1);
                if let Some((i, epoch, at, used)) = ack
                    && at <= now
                {
                    ack = None;
                    let measured = Some(Duration::from_nanos(used as u64));
                    pending.extend(s.drained(specs[i].name, epoch, measured, now, &act));
                }
                for (i, sp) in specs.iter().enumerate() {
                    if th.borrow()[i].back_at == Some(now) {
                        pending.extend(s.demand(sp.name, now, &act));
                    }
                }
                pending.extend(s.tick(now, &act));
            }
            let th = th.into_inner();
            Outcome {
                device_ns: th.iter().map(|t| t.device_ns).collect(),
                waits_ms: th.iter().map(|t| t.waits_ms.clone()).collect(),
                run_gaps_ms: th.into_iter().map(|t| t.run_gaps_ms).collect(),
                seconds,
            }
        }

        fn fractions(o: &Outcome) -> Vec<f64> {
            let total: f64 = o.device_ns.iter().sum();
            o.device_ns.iter().map(|d| d / total).collect()
        }

        fn p99(xs: &[f64]) -> f64 {
            let mut v = xs.to_vec();
            v.sort_by(f64::total_cmp);
            v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
        }

        /// The weight-3 tenant's threads come back 2-20 ms after each drain (a busy host), the
        /// weight-1 tenant's wait at the gate, and the two use different fractions of their
        /// slices: device time still splits 75/25, and the weight-1 tenant waits about a
        /// quantum, not three.
        #[test]
        fn a_slowly_returning_heavy_tenant_keeps_its_share() {
            for seed in 1..=5 {
                let o = simulate(
                    &[
                        spec("a", 3, (2.0, 20.0), 0.8),
                        spec("b", 1, (0.0, 0.0), 0.95),
                    ],
                    30.0,
                    seed,
                );
                let f = fractions(&o);
                let wait = p99(&o.waits_ms[1]);
                eprintln!("seed {seed}: a {:.4}, b waits p99 {wait:.1} ms", f[0]);
                assert!(
                    (f[0] - 0.75).abs() <= 0.01,
                    "seed {seed}: a got {:.4}",
                    f[0]
                );
                assert!(
                    wait <= 75.0,
                    "seed {seed}: b's p99 wait {wait:.1} ms > 1.5 quanta"
                );
            }
        }

        /// A busy host: every hop of a switch comes late (the holder's `Drained` 0.5-10 ms after
        /// its work drained, the next holder's thread 0-10 ms after its grant, threads back at
        /// the gate 2-20 ms after a drain, drains of 0.1-8 ms): device time still splits 75/25.
        /// The weight-1 tenant's gaps between its runs are the weight-3 tenant's turn plus two
        /// switches' host delays (p50 about 69 ms, p99 about 81 ms with these), so the issue's
        /// 1.5 quanta at p99 holds only where the host's delays are shorter; cutting the heavy
        /// turn by the lateness instead was tried and made the gaps longer (the heavy tenant,
        /// behind, then took turns back to back). The bound asserted is 2 quanta.
        #[test]
        fn a_late_host_at_every_switch_keeps_weights_and_bounded_gaps() {
            for seed in 1..=5 {
                let late = |name, weight, busy| Spec {
                    tail_ms: (0.1, 8.0),
                    ack_ms: (0.5, 10.0),
                    wake_ms: (0.0, 10.0),
                    ..spec(name, weight, (2.0, 20.0), busy)
                };
                let o = simulate(&[late("a", 3, 0.6), late("b", 1, 0.6)], 30.0, seed);
                let f = fractions(&o);
                let gap = p99(&o.run_gaps_ms[1]);
                let mut g = o.run_gaps_ms[1].clone();
                g.sort_by(f64::total_cmp);
                let q = |p: f64| g[((g.len() as f64 * p) as usize).min(g.len() - 1)];
                eprintln!(
                    "seed {seed}: a {:.4}, b's gaps p50 {:.1} p90 {:.1} p99 {gap:.1} max {:.1} ms (n {})",
                    f[0],
                    q(0.5),
                    q(0.9),
                    q(1.0),
                    g.len()
                );
                assert!(
                    (f[0] - 0.75).abs() <= 0.015,
                    "seed {seed}: a got {:.4}",
                    f[0]
                );
                assert!(
                    gap <= 100.0,
                    "seed {seed}: b's p99 gap between runs {gap:.1} ms > 2 quanta"
                );
            }
        }

        /// Both tenants return slowly, with jitter, and the light one slower still.
        #[test]
        fn jittered_returns_on_both_sides_keep_the_weights() {
            for seed in 1..=5 {
                let o = simulate(
                    &[
                        spec("a", 3, (0.0, 15.0), 0.9),
                        spec("b", 1, (5.0, 30.0), 0.7),
                    ],
                    30.0,
                    seed,
                );
                let f = fractions(&o);
                assert!(
                    (f[0] - 0.75).abs() <= 0.01,
                    "seed {seed}: a got {:.4}",
                    f[0]
                );
            }
        }

        #[test]
        fn four_weights_with_slow_returns_stay_fair() {
            for seed in 1..=3 {
                let specs: Vec<Spec> = [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
                    .into_iter()
                    .map(|(n, w)| spec(n, w, (0.0, 25.0), 0.6 + 0.1 * w as f64))
                    .collect();
                let o = simulate(&specs, 30.0, seed);
                let f = fractions(&o);
                let norm: Vec<f64> = f
                    .iter()
                    .zip([1.0, 2.0, 3.0, 4.0])
                    .map(|(x, w)| x / w)
                    .collect();
                let sum: f64 = norm.iter().sum();
                let jain = sum * sum / (4.0 * norm.iter().map(|x| x * x).sum::<f64>());
                assert!(jain >= 0.999, "seed {seed}: Jain {jain:.5}, shares {f:?}");
            }
        }

        /// A tenant with deep queues (8 processes' kernels keep the device 50-70 ms after each
        /// revocation) beside one whose drain is short, equal weights: still 50/50 (the other
        /// gets an extra turn when it falls two turns behind).
        #[test]
        fn deep_queues_do_not_take_more_than_their_share() {
            let mut deep = spec("deep", 1, (0.0, 2.0), 1.0);
            deep.tail_ms = (50.0, 70.0);
            let o = simulate(&[deep, spec("one", 1, (0.0, 2.0), 1.0)], 30.0, 7);
            let f = fractions(&o);
            assert!((f[0] - 0.5).abs() <= 0.01, "deep got {:.4}", f[0]);
        }

        /// A capped tenant that leaves 30% of its slices idle (its own host latency) still gets
        /// its cap of device time: it is charged what its kernels used, not its slices' length.
        #[test]
        fn a_cap_is_device_time() {
            for seed in 1..=3 {
                let mut capped = spec("c", 1, (1.0, 15.0), 0.7);
                capped.cap = Some(300);
                let o = simulate(&[capped], 30.0, seed);
                let share = o.device_ns[0] / (o.seconds * 1e9);
                assert!(
                    (share - 0.30).abs() <= 0.01,
                    "seed {seed}: capped got {share:.4}"
                );
            }
        }

        /// A capped tenant whose grants and revocations come late (the server's timer fires
        /// 0-20 ms late, on a busy host) still gets its cap within a point.
        #[test]
        fn a_cap_holds_when_the_server_is_late() {
            for seed in 1..=3 {
                let mut capped = spec("c", 1, (1.0, 15.0), 0.5);
                capped.cap = Some(300);
                let o = simulate_late(&[capped], 30.0, seed, |_| {}, (0.0, 20.0));
                let share = o.device_ns[0] / (o.seconds * 1e9);
                assert!(
                    (share - 0.30).abs() <= 0.01,
                    "seed {seed}: capped got {share:.4}"
                );
            }
        }

        /// A capped tenant that a busy host runs late in some slices and not others (it keeps
        /// the device busy 15-100% of a slice, as beside CPU hogs on the fake) and whose grants
        /// come 0-10 ms late: the budget a slow slice leaves unspent carries over, so it still
        /// gets its cap within a point. A bucket clipped at one quantum at every drain lost it
        /// (28.1% here; 26-28% beside CPU hogs on the fake).
        #[test]
        fn a_cap_holds_when_the_tenant_is_late_in_some_slices() {
            for seed in [1, 3, 5, 7, 9] {
                let mut capped = spec("c", 1, (1.0, 15.0), 0.6);
                capped.busy = (0.15, 1.0);
                capped.cap = Some(300);
                let o = simulate_late(&[capped], 30.0, seed, |_| {}, (0.0, 10.0));
                let share = o.device_ns[0] / (o.seconds * 1e9);
                eprintln!("seed {seed}: capped got {share:.4}");
                assert!(
                    (share - 0.30).abs() <= 0.01,
                    "seed {seed}: capped got {share:.4}"
                );
            }
        }

        /// The model discriminates: with the old policy (no return window, every turn a full
        /// quantum) the same timings hand the light tenant turns it has not earned.
        #[test]
        fn the_old_policy_fails_these_timings() {
            let specs = [
                spec("a", 3, (2.0, 20.0), 1.0),
                spec("b", 1, (0.0, 0.0), 1.0),
            ];
            let o = simulate_with(&specs, 30.0, 1, |s| {
                s.return_window = Duration::ZERO;
                s.min_turn = 1.0;
                s.keep_turns = false;
            });
            let f = fractions(&o);
            let wait = p99(&o.waits_ms[1]);
            assert!(f[0] < 0.70, "a got {:.4} without the return window", f[0]);
            // With the return window but equal turns, the light tenant waits three quanta.
            let o = simulate_with(&specs, 30.0, 1, |s| {
                s.min_turn = 1.0;
                s.keep_turns = false;
            });
            let f2 = fractions(&o);
            let wait2 = p99(&o.waits_ms[1]);
            eprintln!(
                "old: a {:.4}, b p99 wait {wait:.1} ms; equal turns: a {:.4}, b p99 {wait2:.1} ms",
                f[0], f2[0]
            );
            assert!(wait2 > 100.0, "b's p99 wait {wait2:.1} ms with equal turns");
        }

        /// Classes under adversarial timings: a discrete-event model of a latency tenant's
        /// requests beside saturating tenants, on a fake clock.
        mod classes {
            use super::super::*;
            use super::Rng;
            use std::collections::VecDeque;

            /// What a member of the model does.
            #[derive(Clone)]
            enum Work {
                /// Always has work.
                Saturating,
                /// Requests arriving at these times (ms from the start), each `service_ms` of
                /// device time, served one after the other.
                Requests { arrivals: Vec<f64>, service_ms: f64 },
            }

            #[derive(Clone)]
            struct Member {
                name: &'static str,
                weight: u32,
                class: Priority,
                work: Work,
                /// Device time its queued work keeps running after a revocation (ms range):
                /// for a bounded batch tenant, what is left of its running kernel.
                tail_ms: (f64, f64),
            }

            fn member(name: &'static str, weight: u32, class: Priority, work: Work) -> Member {
                Member {
                    name,
                    weight,
                    class,
                    work,
                    tail_ms: (0.0, 2.0),
                }
            }

            /// Poisson arrivals at `rate` per second over `seconds` (ms).
            fn poisson(rate: f64, seconds: f64, seed: u64) -> Vec<f64> {
                let mut rng = Rng(seed | 1);
                let mut t = 0.0;
                let mut out = Vec::new();
                loop {
                    t += -(1.0 - rng.unit()).ln() / rate * 1e3;
                    if t >= seconds * 1e3 {
                        return out;
                    }
                    out.push(t);
                }
            }

            #[derive(Default)]
            struct Run {
                /// Holds the device's slice (`epoch`).
                holding: Option<u32>,
                /// When its threads work in the current slice (after a grant wakes them).
                work_from: Option<Instant>,
                /// Where its work on the device has got to in the current slice.
                cursor: Option<Instant>,
                /// Requests not yet completed: arrival, remaining device ns.
                queue: VecDeque<(Instant, f64)>,
                next_arrival: usize,
                /// When its threads are back at the gate after a drain.
                back_at: Option<Instant>,
                /// When it tells the scheduler it has no work (after its synchronize).
                hint_at: Option<Instant>,
                launches: u64,
                device_ns: f64,
                latencies_ms: Vec<f64>,
            }

            struct Outcome {
                device_ns: Vec<f64>,
                latencies_ms: Vec<Vec<f64>>,
                seconds: f64,
                preemptions: u64,
            }

            /// Runs the members for `seconds` of simulated time (quantum 50 ms). A grant wakes
            /// the holder's thread 0-0.2 ms later; a revoked holder's queued work runs its
            /// `tail_ms` more, its acknowledgement reaches the scheduler 0.05-0.3 ms after
            /// that and its threads come back 0-2 ms after the drain; a request's thread is at
            /// the gate 0-0.3 ms after the request arrived; a latency holder whose requests
            /// are done says so 0.02-0.5 ms after its last kernel (its synchronize returning).
            fn simulate(members: &[Member], seconds: f64, seed: u64) -> Outcome {
                let quantum = Duration::from_millis(50);
                let t0 = Instant::now();
                let ms = |x: f64| Duration::from_secs_f64(x / 1e3);
                let mut s = Scheduler::new(quantum);
                for m in members {
                    s.set_tenant(m.name, m.weight, None, t0);
                    s.set_priority(m.name, m.class);
                }
                let mut rng = Rng(seed | 1);
                let mut runs: Vec<Run> = members
                    .iter()
                    .map(|m| Run {
                        back_at: matches!(m.work, Work::Saturating).then_some(t0),
                        ..Default::default()
                    })
                    .collect();
                let idx = |n: &str| members.iter().position(|m| m.name == n).expect("known");
                let end = t0 + Duration::from_secs_f64(seconds);
                let mut now = t0;
                // (member, epoch, ack at, device ns)
                let mut ack: Option<(usize, u32, Instant)> = None;
                let mut pending: Vec<Action> = Vec::new();

                // Whether member i has work it is waiting to launch or running now.
                fn has_work(m: &Member, r: &Run, now: Instant) -> bool {
                    match m.work {
                        Work::Saturating => true,
                        Work::Requests { .. } => r.queue.front().is_some_and(|q| q.0 <= now),
                    }
                }
                // Advances member i's work on the device up to `now` (it holds the device).
                fn advance(m: &Member, r: &mut Run, now: Instant) {
                    let Some(from) = r.work_from.filter(|w| *w <= now) else {
                        return;
                    };
                    let mut cursor = r.cursor.unwrap_or(from).max(from);
                    match m.work {
                        Work::Saturating => {
                            r.device_ns += (now - cursor).as_nanos() as f64;
                            cursor = now;
                        }
                        Work::Requests { .. } => {
                            while let Some(&(arrival, left)) = r.queue.front() {
                                let start = cursor.max(arrival);
                                if start >= now {
                                    break;
                                }
                                let done = start + Duration::from_nanos(left as u64);
                                if done <= now {
                                    r.device_ns += left;
                                    r.latencies_ms.push((done - arrival).as_secs_f64() * 1e3);
                                    r.queue.pop_front();
                                    cursor = done;
                                } else {
                                    let ran = (now - start).as_nanos() as f64;
                                    r.device_ns += ran;
                                    r.queue.front_mut().expect("head").1 -= ran;
                                    cursor = now;
                                    break;
                                }
                            }
                        }
                    }
                    r.cursor = Some(cursor);
                }

                let runs_cell = std::cell::RefCell::new(&mut runs);
                let now_cell = std::cell::Cell::new(now);
                let act = |n: &str| {
                    let i = idx(n);
                    let r = &runs_cell.borrow()[i];
                    let now = now_cell.get();
                    let working = r.holding.is_some()
                        && r.work_from.is_some_and(|w| w <= now)
                        && has_work(&members[i], r, now);
                    let at_gate = r.holding.is_none()
                        && has_work(&members[i], r, now)
                        && r.back_at.is_none_or(|b| b <= now);
                    Activity {
                        waiting: at_gate as u32,
                        launches: r.launches,
                        syncing: working as u32,
                        runnable: false,
                        bound_dry: 0,
                    }
                };
                let mut steps = 0u64;
                while now < end {
                    steps += 1;
                    while !pending.is_empty() {
                        let action = pending.remove(0);
                        let mut rs = runs_cell.borrow_mut();
                        match action {
                            Action::Grant { tenant, epoch } => {
                                let i = idx(&tenant);
                                let r = &mut rs[i];
                                let back = r.back_at.take().unwrap_or(now).max(now);
                                r.holding = Some(epoch);
                                r.work_from = Some(back + ms(rng.unit() * 0.2));
                                r.cursor = None;
                            }
                            Action::Revoke { tenant, epoch } => {
                                let i = idx(&tenant);
                                let r = &mut rs[i];
                                assert_eq!(r.holding, Some(epoch), "revoked the holder");
                                advance(&members[i], r, now);
                                let (lo, hi) = members[i].tail_ms;
                                let working = r.work_from.is_some_and(|w| w <= now)
                                    && has_work(&members[i], r, now);
                                let tail = if working {
                                    ms(lo + (hi - lo) * rng.unit())
                                } else {
                                    Duration::ZERO
                                };
                                advance(&members[i], r, now + tail);
                                r.holding = None;
                                r.work_from = None;
                                r.hint_at = None;
                                r.back_at = Some(now + tail + ms(rng.unit() * 2.0));
                                ack = Some((i, epoch, now + tail + ms(0.05 + rng.unit() * 0.25)));
                            }
                        }
                    }
                    let next = {
                        let rs = runs_cell.borrow();
                        let mut c: Vec<Instant> = vec![now + ms(0.5)];
                        c.extend(s.next_deadline());
                        c.extend(ack.map(|a| a.2));
                        for (i, r) in rs.iter().enumerate() {
                            c.extend(r.back_at);
                            c.extend(r.hint_at);
                            if let Work::Requests { arrivals, .. } = &members[i].work
                                && let Some(a) = arrivals.get(r.next_arrival)
                            {
                                c.push(t0 + ms(*a));
                            }
                            if r.holding.is_some()
                                && let (Some(&(arrival, left)), Some(from)) =
                                    (r.queue.front(), r.work_from)
                            {
                                let start = r.cursor.unwrap_or(from).max(from).max(arrival);
                                c.push(start + Duration::from_nanos(left as u64));
                            }
                        }
                        c.into_iter().filter(|t| *t > now).min().expect("a step")
                    };
                    now = next;
                    now_cell.set(now);
                    // Arrivals, progress and hints.
                    let mut demands = Vec::new();
                    let mut hints = Vec::new();
                    {
                        let mut rs = runs_cell.borrow_mut();
                        for (i, m) in members.iter().enumerate() {
                            let r = &mut rs[i];
                            if let Work::Requests {
                                arrivals,
                                service_ms,
                            } = &m.work
                            {
                                while let Some(a) = arrivals.get(r.next_arrival)
                                    && t0 + ms(*a) <= now
                                {
                                    let arrival = t0 + ms(*a);
                                    r.queue.push_back((arrival, service_ms * 1e6));
                                    r.next_arrival += 1;
                                    r.hint_at = None;
                                    if r.holding.is_none() && r.back_at.is_none() {
                                        // Its thread reaches the gate a moment later.
                                        r.back_at = Some(arrival + ms(rng.unit() * 0.3));
                                    }
                                }
                            }
                            if r.holding.is_some() {
                                advance(m, r, now);
                                if has_work(m, r, now) {
                                    r.launches += 1;
                                } else if r.hint_at.is_none() {
                                    // Out of work: its synchronize returns, it says so.
                                    r.hint_at = Some(now + ms(0.02 + rng.unit() * 0.48));
                                }
                                if r.hint_at.is_some_and(|h| h <= now) {
                                    r.hint_at = Some(end + Duration::from_secs(1));
                                    hints.push((i, !has_work(m, r, now)));
                                }
                            } else if r.back_at.is_some_and(|b| b <= now) && has_work(m, r, now) {
                                demands.push(i);
                            }
                        }
                    }
                    if let Some((i, epoch, at)) = ack
                        && at <= now
                    {
                        ack = None;
                        pending.extend(s.drained(members[i].name, epoch, None, now, &act));
                    }
                    for i in demands {
                        pending.extend(s.demand(members[i].name, now, &act));
                    }
                    for (i, quiet) in hints {
                        pending.extend(s.idle_hint(members[i].name, quiet, now, &act));
                    }
                    pending.extend(s.tick(now, &act));
                    assert!(steps < 50_000_000, "the model is stuck");
                }
                let preemptions = members.iter().map(|m| s.preemptions(m.name)).sum();
                let runs = runs_cell.into_inner();
                Outcome {
                    device_ns: runs.iter().map(|r| r.device_ns).collect(),
                    latencies_ms: runs
                        .iter_mut()
                        .map(|r| std::mem::take(&mut r.latencies_ms))
                        .collect(),
                    seconds,
                    preemptions,
                }
            }

            fn percentile(xs: &[f64], p: f64) -> f64 {
                let mut v = xs.to_vec();
                v.sort_by(f64::total_cmp);
                v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
            }

            /// An interactive tenant (Poisson requests of 20 × 0.5 ms) beside a saturating
            /// batch tenant whose drain leaves up to one 2 ms kernel: in class `latency` its p99
            /// latency is within its isolated p99 + one batch kernel (+ the model's switch
            /// delays); in class `normal` (today's behaviour) it waits for the batch tenant's
            /// turns. The batch tenant gets ≥ 95% of the time the interactive one leaves.
            #[test]
            fn a_latency_tenant_waits_one_batch_kernel_not_a_turn() {
                for seed in 1..=5 {
                    let arrivals = poisson(20.0, 30.0, seed * 7);
                    let web = |class| {
                        member(
                            "web",
                            1,
                            class,
                            Work::Requests {
                                arrivals: arrivals.clone(),
                                service_ms: 10.0,
                            },
                        )
                    };
                    let batch = member("batch", 1, Priority::Batch, Work::Saturating);
                    let alone = simulate(&[web(Priority::Latency)], 30.0, seed);
                    let shared = simulate(&[web(Priority::Latency), batch.clone()], 30.0, seed);
                    let normal = simulate(
                        &[
                            web(Priority::Normal),
                            member("batch", 1, Priority::Normal, Work::Saturating),
                        ],
                        30.0,
                        seed,
                    );
                    let (p_alone, p_shared, p_normal) = (
                        percentile(&alone.latencies_ms[0], 0.99),
                        percentile(&shared.latencies_ms[0], 0.99),
                        percentile(&normal.latencies_ms[0], 0.99),
                    );
                    let web_ns = shared.device_ns[0];
                    let leftover = shared.seconds * 1e9 - web_ns;
                    let batch_of_leftover = shared.device_ns[1] / leftover;
                    eprintln!(
                        "seed {seed}: p99 alone {p_alone:.2} ms, latency class {p_shared:.2} ms, \
                         normal class {p_normal:.2} ms; batch {:.3} of the leftover; {} preemptions",
                        batch_of_leftover, shared.preemptions
                    );
                    // One batch kernel (2 ms) plus the model's switch: ack ≤ 0.3 ms, wake ≤
                    // 0.2 ms, the request's thread at the gate ≤ 0.3 ms.
                    assert!(
                        p_shared <= p_alone + 2.0 + 0.8,
                        "seed {seed}: p99 {p_shared:.2} ms against {p_alone:.2} ms alone"
                    );
                    assert!(
                        p_normal > p_alone + 10.0,
                        "seed {seed}: normal class p99 {p_normal:.2} ms (alone {p_alone:.2})"
                    );
                    assert!(
                        batch_of_leftover >= 0.95,
                        "seed {seed}: batch got {batch_of_leftover:.3} of what web left"
                    );
                }
            }

            /// A latency tenant that saturates the device is held to its weight: 1:1 and 1:3
            /// against a batch tenant, and the same with slow, jittered drains.
            #[test]
            fn a_saturating_latency_tenant_is_held_to_its_weight() {
                for (wl, wb) in [(1, 1), (1, 3), (3, 1)] {
                    for seed in 1..=3 {
                        let mut batch = member("batch", wb, Priority::Batch, Work::Saturating);
                        batch.tail_ms = (0.0, 6.0);
                        let o = simulate(
                            &[
                                member("lat", wl, Priority::Latency, Work::Saturating),
                                batch,
                            ],
                            20.0,
                            seed,
                        );
                        let total: f64 = o.device_ns.iter().sum();
                        let share = o.device_ns[0] / total;
                        let want = wl as f64 / (wl + wb) as f64;
                        assert!(
                            (share - want).abs() <= 0.01,
                            "seed {seed}, {wl}:{wb}: latency tenant got {share:.4}"
                        );
                    }
                }
            }

            /// The adversary: a latency tenant whose work comes in bursts of 8 ms with 1 ms
            /// pauses (each slice of its ends for want of work) never exceeds its weighted
            /// share by more than two credits over the run, beside a saturating batch tenant.
            #[test]
            fn bursts_cannot_take_more_than_the_credit() {
                let seconds = 20.0;
                let arrivals: Vec<f64> = (0..(seconds * 1e3 / 9.0) as usize)
                    .map(|k| k as f64 * 9.0)
                    .collect();
                for seed in 1..=3 {
                    let o = simulate(
                        &[
                            member(
                                "lat",
                                1,
                                Priority::Latency,
                                Work::Requests {
                                    arrivals: arrivals.clone(),
                                    service_ms: 8.0,
                                },
                            ),
                            member("batch", 1, Priority::Batch, Work::Saturating),
                        ],
                        seconds,
                        seed,
                    );
                    let total: f64 = o.device_ns.iter().sum();
                    let credit = Scheduler::new(Duration::from_millis(50))
                        .credit()
                        .as_nanos() as f64;
                    assert!(
                        o.device_ns[0] <= 0.5 * total + 2.0 * credit + 0.01 * total,
                        "seed {seed}: latency tenant {:.1} ms of {:.1} ms",
                        o.device_ns[0] / 1e6,
                        total / 1e6
                    );
                    assert!(o.device_ns[1] >= 0.49 * total, "seed {seed}: batch starved");
                }
            }

            /// Consolidation: four interactive tenants of 30 requests/s × 5 ms (60% of the
            /// device together) beside a batch tenant. Their requests contend with each other,
            /// so no scheduler gets each one's p99 near its p99 alone; against one shared
            /// first-come-first-served queue of their requests (with no batch work), each p99
            /// stays within 1.5 × + 2 ms, and the batch tenant fills the rest of the device.
            #[test]
            fn four_latency_tenants_and_a_batch_one_consolidate() {
                for seed in 1..=3 {
                    let names = ["w0", "w1", "w2", "w3"];
                    let mut ms_alone = Vec::new();
                    let mut members = Vec::new();
                    for (k, n) in names.iter().enumerate() {
                        let arrivals = poisson(30.0, 20.0, seed * 31 + k as u64);
                        let m = member(
                            n,
                            1,
                            Priority::Latency,
                            Work::Requests {
                                arrivals,
                                service_ms: 5.0,
                            },
                        );
                        let alone = simulate(std::slice::from_ref(&m), 20.0, seed);
                        ms_alone.push(percentile(&alone.latencies_ms[0], 0.99));
                        members.push(m);
                    }
                    // About the best a scheduler of one device can do: the four tenants'
                    // requests served first come, first served, with no batch work at all, each
                    // paying one switch (0.5 ms in this model).
                    let mut all: Vec<f64> = members
                        .iter()
                        .flat_map(|m| match &m.work {
                            Work::Requests { arrivals, .. } => arrivals.clone(),
                            Work::Saturating => Vec::new(),
                        })
                        .collect();
                    all.sort_by(f64::total_cmp);
                    let mut free = 0.0f64;
                    let fifo: Vec<f64> = all
                        .iter()
                        .map(|&a| {
                            free = free.max(a) + 5.5;
                            free - a
                        })
                        .collect();
                    let fifo_p99 = percentile(&fifo, 0.99);
                    eprintln!(
                        "seed {seed}: one queue, first come first served: p99 {fifo_p99:.2} ms"
                    );
                    members.push(member("batch", 1, Priority::Batch, Work::Saturating));
                    let o = simulate(&members, 20.0, seed);
                    let busy: f64 = o.device_ns.iter().sum::<f64>() / (o.seconds * 1e9);
                    for k in 0..4 {
                        let p = percentile(&o.latencies_ms[k], 0.99);
                        eprintln!(
                            "seed {seed}: {} p99 {p:.2} ms (alone {:.2}, one queue {fifo_p99:.2})",
                            names[k], ms_alone[k]
                        );
                        assert!(
                            p <= 1.5 * fifo_p99 + 2.0,
                            "seed {seed}: {} p99 {p:.2} ms, one queue {fifo_p99:.2}",
                            names[k]
                        );
                    }
                    // Each request costs the model about 0.8 ms of device idle in switches (the
                    // yield hint, acknowledgements, wake-ups: pessimistic delays).
                    assert!(busy >= 0.93, "seed {seed}: device busy {busy:.3}");
                }
            }
        }
    }
}
