//! The per-device kernel trace ring (last [`TRACE_CAP`] kernels: pid, start, end, ready).

use crate::layout::{DeviceBlock, TRACE_CAP};
use crate::snapshot::KernelRecord;
use std::sync::atomic::Ordering;

/// Appends a record.
pub fn append(d: &DeviceBlock, pid: u32, start_ns: u64, end_ns: u64, ready_ns: u64) {
    let n = d.trace_head.fetch_add(1, Ordering::AcqRel);
    let s = &d.trace[(n % TRACE_CAP as u64) as usize];
    s.seq.store(0, Ordering::Release);
    s.pid.store(u64::from(pid), Ordering::Relaxed);
    s.start_ns.store(start_ns, Ordering::Relaxed);
    s.end_ns.store(end_ns, Ordering::Relaxed);
    s.ready_ns.store(ready_ns, Ordering::Relaxed);
    s.seq.store(n + 1, Ordering::Release);
}

/// Complete records, oldest first, sorted by start time.
pub fn read(d: &DeviceBlock) -> Vec<KernelRecord> {
    let head = d.trace_head.load(Ordering::Acquire);
    let first = head.saturating_sub(TRACE_CAP as u64);
    let mut out = Vec::with_capacity((head - first) as usize);
    for n in first..head {
        let s = &d.trace[(n % TRACE_CAP as u64) as usize];
        if s.seq.load(Ordering::Acquire) != n + 1 {
            continue;
        }
        let r = KernelRecord {
            pid: s.pid.load(Ordering::Relaxed) as u32,
            start_ns: s.start_ns.load(Ordering::Relaxed),
            end_ns: s.end_ns.load(Ordering::Relaxed),
            ready_ns: s.ready_ns.load(Ordering::Relaxed),
        };
        if s.seq.load(Ordering::Acquire) == n + 1 {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.start_ns);
    out
}
