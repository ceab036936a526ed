//! The compute launch gate.
//!
//! While the tenant holds the device's slice a launch passes with a few atomic operations and
//! no system call. Otherwise the launching thread tells the daemon it is waiting (a counter in
//! the accounting segment plus a one-way message) and sleeps on the slice word with a futex
//! until the daemon grants the slice — never spinning.
//!
//! Each passing launch is counted in flight (per device) until the real launch call returns, so
//! the watcher thread can drain safely on revocation: it waits for the in-flight count to reach
//! zero before synchronizing, and any launch that starts after the revocation sees it.
//!
//! While the daemon bounds the tenant's queued work on the device (a higher class shares it),
//! a launch holding the slice first waits until this process's work queued ahead is within the
//! budget ([`crate::bound`]), before it counts in flight (a revocation meanwhile is seen).

use crate::cuda_types::{CUDA_ERROR_NOT_INITIALIZED, CUresult, CUstream};
use crate::registration::{Access, Registration, access};
use gpumux_common::futex;
use gpumux_common::protocol::ClientMsg;
use gpumux_common::shm::{MAX_DEVICES, SLICE_GRANTED};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

/// Launch calls of this process currently between the gate and the driver, per device.
static IN_FLIGHT: [AtomicU32; MAX_DEVICES] = [const { AtomicU32::new(0) }; MAX_DEVICES];

/// Set when the daemon connection is lost: launches pass (memory limits stay enforced by the
/// shared segments; time-slicing resumes when a daemon is back).
pub static DAEMON_GONE: AtomicBool = AtomicBool::new(false);

/// How long a waiting thread sleeps before re-announcing itself (covers lost messages).
const REANNOUNCE: Duration = Duration::from_millis(100);

/// Proof that a launch passed the gate; leaves the in-flight count on drop.
pub struct Ticket {
    device: Option<usize>,
    /// Its queued work is bounded: count the launch once it succeeded ([`Ticket::launched`]).
    bounded: bool,
}

impl Ticket {
    const NONE: Ticket = Ticket {
        device: None,
        bounded: false,
    };

    /// The time-sliced device the launch goes to while holding its slice (None: not gated).
    #[inline]
    pub fn device(&self) -> Option<usize> {
        self.device
    }

    /// The launch succeeded (put work on the device).
    #[inline]
    pub fn launched(&self) {
        if let (Some(d), true) = (self.device, self.bounded) {
            crate::bound::launched(d);
        }
    }
}

impl Drop for Ticket {
    #[inline]
    fn drop(&mut self) {
        if let Some(d) = self.device {
            IN_FLIGHT[d].fetch_sub(1, SeqCst);
        }
    }
}

/// Where a launch goes: its stream (`ptsz`: a `_ptsz` entry point, where the null stream is
/// the thread's own).
#[derive(Clone, Copy)]
pub struct Launch {
    pub stream: CUstream,
    pub ptsz: bool,
}

/// Called before every kernel or graph launch; hold the ticket until the launch returned.
/// `captured` tells (asked only when the tenant does not hold the slice, or its queued work is
/// bounded) whether the launch goes into a capturing stream: it then puts nothing on the device
/// and passes without a slice.
#[inline]
pub fn enter(launch: Launch, captured: impl Fn() -> bool) -> Result<Ticket, CUresult> {
    match access() {
        Access::Refused => Err(CUDA_ERROR_NOT_INITIALIZED),
        Access::PassThrough => Ok(Ticket::NONE),
        Access::Registered(reg) => Ok(enter_registered(reg, launch, captured)),
    }
}

#[inline]
fn enter_registered(
    reg: &'static Registration,
    launch: Launch,
    captured: impl Fn() -> bool,
) -> Ticket {
    let device = match crate::hooks::init::working_device(reg) {
        Ok(Some(d)) => d,
        // No context or not a tenant device: the driver reports it on the launch.
        _ => return Ticket::NONE,
    };
    let counter = &reg.accounting.processes[reg.slot].launches[device];
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
    loop {
        let ctl = &reg.control().devices[device];
        if ctl.scheduled.load(Relaxed) == 0 {
            return Ticket::NONE;
        }
        let budget = ctl.queue_budget_us.load(Relaxed);
        let bounded = budget != 0 && !(crate::captures::any() && captured());
        if bounded && ctl.slice.load(Relaxed) & SLICE_GRANTED != 0 {
            let acct = &reg.accounting.devices[device];
            crate::bound::before_launch(device, budget, launch.stream, launch.ptsz, acct);
        }
        IN_FLIGHT[device].fetch_add(1, SeqCst);
        if ctl.slice.load(SeqCst) & SLICE_GRANTED != 0 || DAEMON_GONE.load(Relaxed) {
            return Ticket {
                device: Some(device),
                bounded,
            };
        }
        IN_FLIGHT[device].fetch_sub(1, SeqCst);
        if crate::captures::any() && captured() {
            return Ticket::NONE;
        }
        wait_for_slice(reg, device);
    }
}

/// Sleeps until the tenant holds the slice on `device` (or time-slicing is off for it).
#[cold]
fn wait_for_slice(reg: &Registration, device: usize) {
    let acct = &reg.accounting.devices[device];
    let start = Instant::now();
    acct.waiting.fetch_add(1, SeqCst);
    let demand = ClientMsg::Demand {
        device: device as u32,
    };
    reg.send(&demand);
    let mut announced = Instant::now();
    loop {
        // Re-read the control segment each time: a daemon restart replaces it.
        let ctl = &reg.control().devices[device];
        let word = ctl.slice.load(SeqCst);
        if word & SLICE_GRANTED != 0
            || DAEMON_GONE.load(Relaxed)
            || ctl.scheduled.load(Relaxed) == 0
        {
            break;
        }
        futex::wait(&ctl.slice, word, Some(REANNOUNCE));
        if announced.elapsed() >= REANNOUNCE {
            reg.send(&demand);
            announced = Instant::now();
        }
    }
    acct.waiting.fetch_sub(1, SeqCst);
    acct.wait_ns
        .fetch_add(start.elapsed().as_nanos() as u64, Relaxed);
}

/// Least time between two `Idle` messages of this process about one device, ns.
const IDLE_EVERY_NS: u64 = 100_000;
/// When this process last sent `Idle` per device ([`monotonic_ns`]).
static IDLE_SENT: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];

/// The last thread of the tenant in a synchronize on `device` returned: if the daemon wants to
/// know (`yield_hint`: a latency-class holder others wait for), this process holds the slice
/// and has no launch in flight, say so (`Idle`, with this process's launch count, which the
/// daemon checks has not moved since). At most one message per 100 µs per device.
pub fn idle(reg: &Registration, device: usize) {
    let ctl = &reg.control().devices[device];
    if ctl.yield_hint.load(Relaxed) == 0
        || ctl.slice.load(SeqCst) & SLICE_GRANTED == 0
        || IN_FLIGHT[device].load(SeqCst) != 0
    {
        return;
    }
    let now = monotonic_ns();
    let last = IDLE_SENT[device].load(Relaxed);
    if now.saturating_sub(last) < IDLE_EVERY_NS
        || IDLE_SENT[device]
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
    {
        return;
    }
    let launches = reg.accounting.processes[reg.slot].launches[device].load(Relaxed);
    reg.send(&ClientMsg::Idle {
        device: device as u32,
        launches,
    });
}

/// Nanoseconds on a clock of this process (for rate limits).
fn monotonic_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Drain support: waits until no launch call of this process is between the gate and the
/// driver on `device` (they are microseconds long).
pub fn wait_no_launch_in_flight(device: usize) {
    let mut spins = 0u32;
    while IN_FLIGHT[device].load(SeqCst) != 0 {
        spins += 1;
        if spins < 100 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}
