//! Stream and event entry points (with `_ptsz` variants).

use crate::context;
use crate::driver::{Process, process};
use crate::graph::{self, NodeKind, Route};
use crate::stream::{self, EVENT_DISABLE_TIMING, Event, EventStatus, Op, Stream, StreamKind};
use crate::types::*;
use std::ffi::{c_float, c_int, c_uint, c_void};
use std::sync::Arc;

fn create(ph: *mut Handle, flags: c_uint, priority: c_int) -> Res<()> {
    need(ph)?;
    if flags & !stream::STREAM_NON_BLOCKING != 0 {
        return Err(err::INVALID_VALUE);
    }
    let (p, c) = context::require()?;
    let h = p.new_handle();
    let s = Stream::spawn(
        h,
        c.handle,
        c.device,
        StreamKind::User,
        flags,
        priority.clamp(-5, 0),
    );
    c.streams.lock().push(s.clone());
    p.streams.lock().insert(h, s);
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(ph, hptr(h)) }
}

fn destroy(h: Handle) -> Res<()> {
    let p = process()?;
    let v = hval(h);
    let s = p.streams.lock().remove(&v).ok_or(err::INVALID_HANDLE)?;
    graph::forget_stream(p, &s);
    if let Ok(c) = context::lookup(p, s.ctx) {
        c.streams.lock().retain(|o| !Arc::ptr_eq(o, &s));
    }
    // Pending work still completes; the worker exits when drained.
    s.shutdown();
    Ok(())
}

fn sticky(p: &Process, ctx: u64) -> Res<()> {
    match context::lookup(p, ctx).map_or(0, |c| c.sticky.load(std::sync::atomic::Ordering::Acquire))
    {
        0 => Ok(()),
        e => Err(e),
    }
}

fn synchronize(h: Handle, ptds: bool) -> Res<()> {
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    graph::conflicts_stream(p, &s)?;
    if s.kind == StreamKind::Legacy {
        graph::unsafe_call(p)?;
        graph::route(p, &ctx, &s)?;
        // Synchronising the NULL stream waits for what an op submitted to it now would wait for.
        stream::submit_sync(&ctx, &s, Op::Nop)
    } else {
        s.wait_all();
        sticky(p, ctx.handle)
    }
}

fn query(h: Handle, ptds: bool) -> Res<()> {
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    graph::conflicts_stream(p, &s)?;
    graph::route(p, &ctx, &s)?;
    sticky(p, ctx.handle)?;
    if s.idle() {
        Ok(())
    } else {
        Err(err::NOT_READY)
    }
}

fn event(p: &Process, h: Handle) -> Res<Arc<Event>> {
    p.events
        .lock()
        .get(&hval(h))
        .cloned()
        .ok_or(err::INVALID_HANDLE)
}

fn wait_event(h: Handle, ev: Handle, flags: c_uint, ptds: bool) -> Res<()> {
    if flags & !1 != 0 {
        return Err(err::INVALID_VALUE);
    }
    let p = process()?;
    let e = event(p, ev)?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    if graph::capture_wait(p, &ctx, &s, &e, flags)? {
        return Ok(());
    }
    graph::route(p, &ctx, &s)?;
    stream::wait_event(&ctx, &s, &e);
    Ok(())
}

fn record(ev: Handle, h: Handle, flags: c_uint, ptds: bool) -> Res<()> {
    if flags & !1 != 0 {
        return Err(err::INVALID_VALUE);
    }
    let p = process()?;
    let e = event(p, ev)?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    match graph::route(p, &ctx, &s)? {
        // CU_EVENT_RECORD_EXTERNAL: an event record node.
        Route::Capture(id) if flags & 1 != 0 => {
            graph::capture_node(p, id, &s, NodeKind::EventRecord(e))?;
        }
        Route::Capture(id) => graph::capture_record(p, id, &s, e.handle)?,
        Route::Submit => {
            graph::forget_record(p, e.handle);
            e.record(&ctx, &s);
        }
    }
    Ok(())
}

fn elapsed(ms: *mut c_float, start: Handle, end: Handle) -> Res<()> {
    need(ms)?;
    let p = process()?;
    let (a, b) = (event(p, start)?, event(p, end)?);
    if a.flags & EVENT_DISABLE_TIMING != 0 || b.flags & EVENT_DISABLE_TIMING != 0 {
        return Err(err::INVALID_HANDLE);
    }
    let ta = a.time_ns()?;
    let tb = b.time_ns()?;
    match (ta, tb) {
        (Some(x), Some(y)) => {
            let v = (y as i128 - x as i128) as f64 / 1e6;
            // SAFETY: output pointer from the caller (null checked).
            unsafe { write_out(ms, v as c_float) }
        }
        _ => Err(err::NOT_READY),
    }
}

fn host_fn(h: Handle, f: Option<stream::HostFn>, data: *mut c_void, ptds: bool) -> Res<()> {
    let f = f.ok_or(err::INVALID_VALUE)?;
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    match graph::route(p, &ctx, &s)? {
        Route::Capture(id) => {
            graph::capture_node(
                p,
                id,
                &s,
                NodeKind::Host {
                    f,
                    data: data as usize,
                },
            )?;
        }
        Route::Submit => {
            stream::submit(
                &ctx,
                &s,
                Op::Host {
                    f,
                    data: data as usize,
                },
            );
        }
    }
    Ok(())
}

fn add_callback(
    h: Handle,
    f: Option<stream::StreamCallback>,
    data: *mut c_void,
    flags: c_uint,
    ptds: bool,
) -> Res<()> {
    let f = f.ok_or(err::INVALID_VALUE)?;
    if flags != 0 {
        return Err(err::INVALID_VALUE);
    }
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    if let Route::Capture(_) = graph::route(p, &ctx, &s)? {
        // Stream callbacks cannot be captured (host nodes can).
        graph::conflicts_stream(p, &s)?;
    }
    stream::submit(
        &ctx,
        &s,
        Op::Callback {
            f,
            stream: hval(h),
            data: data as usize,
        },
    );
    Ok(())
}

fn get_flags(h: Handle, flags: *mut c_uint, ptds: bool) -> Res<()> {
    need(flags)?;
    let p = process()?;
    let (_, s) = stream::resolve(p, h, ptds)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(flags, s.flags) }
}

fn get_priority(h: Handle, prio: *mut c_int, ptds: bool) -> Res<()> {
    need(prio)?;
    let p = process()?;
    let (_, s) = stream::resolve(p, h, ptds)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(prio, s.priority) }
}

fn get_ctx(h: Handle, pctx: *mut Handle, ptds: bool) -> Res<()> {
    need(pctx)?;
    let p = process()?;
    let (c, _) = stream::resolve(p, h, ptds)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(pctx, hptr(c.handle)) }
}

fn is_capturing(h: Handle, status: *mut c_int, ptds: bool) -> Res<()> {
    need(status)?;
    let p = process()?;
    let (ctx, s) = stream::resolve(p, h, ptds)?;
    let (st, ..) = graph::status(p, &ctx, &s)?;
    // SAFETY: output pointer from the caller (null checked).
    unsafe { write_out(status, st as c_int) }
}

cuda_fn! {
    fn cuStreamCreate(ph: *mut Handle, flags: c_uint) {
        create(ph, flags, 0)
    }
    fn cuStreamCreateWithPriority(ph: *mut Handle, flags: c_uint, priority: c_int) {
        create(ph, flags, priority)
    }
    fn cuStreamDestroy(h: Handle) {
        destroy(h)
    }
    fn cuStreamDestroy_v2(h: Handle) {
        destroy(h)
    }
    fn cuStreamSynchronize(h: Handle) {
        synchronize(h, false)
    }
    fn cuStreamSynchronize_ptsz(h: Handle) {
        synchronize(h, true)
    }
    fn cuStreamQuery(h: Handle) {
        query(h, false)
    }
    fn cuStreamQuery_ptsz(h: Handle) {
        query(h, true)
    }
    fn cuStreamWaitEvent(h: Handle, ev: Handle, flags: c_uint) {
        wait_event(h, ev, flags, false)
    }
    fn cuStreamWaitEvent_ptsz(h: Handle, ev: Handle, flags: c_uint) {
        wait_event(h, ev, flags, true)
    }
    fn cuStreamGetFlags(h: Handle, flags: *mut c_uint) {
        get_flags(h, flags, false)
    }
    fn cuStreamGetFlags_ptsz(h: Handle, flags: *mut c_uint) {
        get_flags(h, flags, true)
    }
    fn cuStreamGetPriority(h: Handle, prio: *mut c_int) {
        get_priority(h, prio, false)
    }
    fn cuStreamGetPriority_ptsz(h: Handle, prio: *mut c_int) {
        get_priority(h, prio, true)
    }
    fn cuStreamGetCtx(h: Handle, pctx: *mut Handle) {
        get_ctx(h, pctx, false)
    }
    fn cuStreamGetCtx_ptsz(h: Handle, pctx: *mut Handle) {
        get_ctx(h, pctx, true)
    }
    fn cuStreamIsCapturing(h: Handle, status: *mut c_int) {
        is_capturing(h, status, false)
    }
    fn cuStreamIsCapturing_ptsz(h: Handle, status: *mut c_int) {
        is_capturing(h, status, true)
    }
    fn cuStreamAddCallback(h: Handle, f: Option<stream::StreamCallback>, data: *mut c_void, flags: c_uint) {
        add_callback(h, f, data, flags, false)
    }
    fn cuStreamAddCallback_ptsz(h: Handle, f: Option<stream::StreamCallback>, data: *mut c_void, flags: c_uint) {
        add_callback(h, f, data, flags, true)
    }
    fn cuLaunchHostFunc(h: Handle, f: Option<stream::HostFn>, data: *mut c_void) {
        host_fn(h, f, data, false)
    }
    fn cuLaunchHostFunc_ptsz(h: Handle, f: Option<stream::HostFn>, data: *mut c_void) {
        host_fn(h, f, data, true)
    }

    fn cuEventCreate(ph: *mut Handle, flags: c_uint) {
        need(ph)?;
        if flags & !0x7 != 0 || (flags & 4 != 0 && flags & EVENT_DISABLE_TIMING == 0) {
            return Err(err::INVALID_VALUE);
        }
        let (p, c) = context::require()?;
        let h = p.new_handle();
        p.events.lock().insert(h, Arc::new(Event::new(h, c.handle, flags)));
        // SAFETY: output pointer from the caller (null checked).
        unsafe { write_out(ph, hptr(h)) }
    }
    fn cuEventDestroy(ev: Handle) {
        let p = process()?;
        p.events.lock().remove(&hval(ev)).map(|_| ()).ok_or(err::INVALID_HANDLE)
    }
    fn cuEventDestroy_v2(ev: Handle) {
        let p = process()?;
        p.events.lock().remove(&hval(ev)).map(|_| ()).ok_or(err::INVALID_HANDLE)
    }
    fn cuEventRecord(ev: Handle, h: Handle) {
        record(ev, h, 0, false)
    }
    fn cuEventRecord_ptsz(ev: Handle, h: Handle) {
        record(ev, h, 0, true)
    }
    fn cuEventRecordWithFlags(ev: Handle, h: Handle, flags: c_uint) {
        record(ev, h, flags, false)
    }
    fn cuEventRecordWithFlags_ptsz(ev: Handle, h: Handle, flags: c_uint) {
        record(ev, h, flags, true)
    }
    fn cuEventSynchronize(ev: Handle) {
        let p = process()?;
        let e = event(p, ev)?;
        graph::conflicts_event(p, e.handle)?;
        e.synchronize();
        sticky(p, e.ctx)
    }
    fn cuEventQuery(ev: Handle) {
        let p = process()?;
        graph::conflicts_event(p, hval(ev))?;
        match event(p, ev)?.status() {
            EventStatus::Pending(..) => Err(err::NOT_READY),
            _ => Ok(()),
        }
    }
    fn cuEventElapsedTime(ms: *mut c_float, start: Handle, end: Handle) {
        elapsed(ms, start, end)
    }
    fn cuEventElapsedTime_v2(ms: *mut c_float, start: Handle, end: Handle) {
        elapsed(ms, start, end)
    }
}
