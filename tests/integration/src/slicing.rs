//! Device-time shares measured from the fake GPU's ground truth (device busy time per
//! process), never from gpumux's own figures: what the time-slicing tests assert on.

use crate::gpumux::Gpumux;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Device busy ns per pid on device 0.
pub fn busy(g: &Gpumux) -> HashMap<u32, u64> {
    g.gpu.snapshot().devices[0]
        .processes
        .iter()
        .map(|p| (p.pid, p.busy_ns))
        .collect()
}

/// Device time each group of pids got over `window`, as fractions of the window.
pub fn shares(g: &Gpumux, groups: &[Vec<u32>], window: Duration) -> Vec<f64> {
    let before = busy(g);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after = busy(g);
    let elapsed = t0.elapsed().as_nanos() as f64;
    groups
        .iter()
        .map(|pids| {
            pids.iter()
                .map(|p| {
                    after
                        .get(p)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(before.get(p).copied().unwrap_or(0))
                })
                .sum::<u64>() as f64
                / elapsed
        })
        .collect()
}
