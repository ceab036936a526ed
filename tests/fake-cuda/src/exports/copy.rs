//! Copies and memsets, synchronous and stream-ordered, with their per-thread-default-stream
//! (`_ptds`/`_ptsz`) variants. Copies from pageable host memory are staged at submission and
//! copies to pageable host memory complete before returning, like the real driver.

use crate::driver::{Process, process};
use crate::graph::{self, Memcpy3d, MemsetNode, NodeKind, Route};
use crate::stream::{self, Op};
use crate::types::*;
use std::ffi::{c_uint, c_void};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Device,
    Host,
    Unified,
}

fn check_side(p: &Process, ptr: u64, side: Side, n: usize) -> Res<bool> {
    if ptr == 0 {
        return Err(err::INVALID_VALUE);
    }
    let is_dev = match side {
        Side::Device => true,
        Side::Host => false,
        Side::Unified => p.mem.find(ptr).is_some(),
    };
    if is_dev {
        p.mem.check_range(ptr, n as u64)?;
    }
    Ok(is_dev)
}

fn copy(
    dst: u64,
    dst_side: Side,
    src: u64,
    src_side: Side,
    n: usize,
    stream_arg: Option<Handle>,
    ptds: bool,
) -> Res<()> {
    let p = process()?;
    let (ctx, s) = stream::resolve(p, stream_arg.unwrap_or(std::ptr::null_mut()), ptds)?;
    if n == 0 {
        return Ok(());
    }
    let dst_dev = check_side(p, dst, dst_side, n)?;
    let src_dev = check_side(p, src, src_side, n)?;
    if stream_arg.is_none() {
        graph::unsafe_call(p)?;
    }
    match graph::route(p, &ctx, &s)? {
        Route::Submit => {}
        Route::Capture(id) if stream_arg.is_some() => {
            let (dst_type, src_type) = (if dst_dev { 2 } else { 1 }, if src_dev { 2 } else { 1 });
            let c = Memcpy3d {
                src_type,
                src_host: src as usize,
                src_device: src,
                dst_type,
                dst_host: dst as usize,
                dst_device: dst,
                width: n,
                height: 1,
                depth: 1,
                ..Memcpy3d::default()
            };
            graph::capture_node(p, id, &s, NodeKind::Memcpy(c))?;
            return Ok(());
        }
        // A synchronous copy cannot be captured.
        Route::Capture(_) => return graph::conflicts_stream(p, &s),
    }
    match stream_arg {
        None => stream::submit_sync(&ctx, &s, Op::Copy { dst, src, n }),
        Some(_) => {
            let src_pageable = !src_dev && !p.mem.is_pinned(src, n as u64);
            let dst_pageable = !dst_dev && !p.mem.is_pinned(dst, n as u64);
            if dst_pageable {
                stream::submit_sync(&ctx, &s, Op::Copy { dst, src, n })
            } else if src_pageable {
                // SAFETY: the application passes `n` readable bytes at `src`.
                let data = unsafe { std::slice::from_raw_parts(src as *const u8, n) }.to_vec();
                stream::submit(&ctx, &s, Op::Staged { dst, data });
                Ok(())
            } else {
                stream::submit(&ctx, &s, Op::Copy { dst, src, n });
                Ok(())
            }
        }
    }
}

fn memset(
    dst: u64,
    value: u32,
    elem: usize,
    count: usize,
    stream_arg: Option<Handle>,
    ptds: bool,
) -> Res<()> {
    let p = process()?;
    let (ctx, s) = stream::resolve(p, stream_arg.unwrap_or(std::ptr::null_mut()), ptds)?;
    if !dst.is_multiple_of(elem as u64) {
        return Err(err::INVALID_VALUE);
    }
    if count == 0 {
        return Ok(());
    }
    let bytes = count.checked_mul(elem).ok_or(err::INVALID_VALUE)?;
    if stream_arg.is_none() {
        graph::unsafe_call(p)?;
    }
    if let Route::Capture(id) = graph::route(p, &ctx, &s)? {
        if stream_arg.is_none() {
            return graph::conflicts_stream(p, &s);
        }
        let m = MemsetNode {
            dst,
            pitch: bytes,
            value,
            elem,
            width: count,
            height: 1,
        };
        m.check(p)?;
        graph::capture_node(p, id, &s, NodeKind::Memset(m))?;
        return Ok(());
    }
    p.mem.check_range(dst, bytes as u64)?;
    stream::submit(
        &ctx,
        &s,
        Op::Memset {
            dst,
            value,
            elem,
            count,
        },
    );
    Ok(())
}

fn peer_ctx(p: &Process, c: Handle) -> Res<()> {
    crate::context::lookup(p, hval(c)).map(|_| ())
}

cuda_fn! {
    fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) {
        copy(dst, Side::Unified, src, Side::Unified, n, None, false)
    }
    fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) {
        copy(dst, Side::Unified, src, Side::Unified, n, None, true)
    }
    fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, n: usize, h: Handle) {
        copy(dst, Side::Unified, src, Side::Unified, n, Some(h), false)
    }
    fn cuMemcpyAsync_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, h: Handle) {
        copy(dst, Side::Unified, src, Side::Unified, n, Some(h), true)
    }
    fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) {
        copy(dst, Side::Device, src as u64, Side::Host, n, None, false)
    }
    fn cuMemcpyHtoD_v2_ptds(dst: CUdeviceptr, src: *const c_void, n: usize) {
        copy(dst, Side::Device, src as u64, Side::Host, n, None, true)
    }
    fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) {
        copy(dst as u64, Side::Host, src, Side::Device, n, None, false)
    }
    fn cuMemcpyDtoH_v2_ptds(dst: *mut c_void, src: CUdeviceptr, n: usize) {
        copy(dst as u64, Side::Host, src, Side::Device, n, None, true)
    }
    fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) {
        copy(dst, Side::Device, src, Side::Device, n, None, false)
    }
    fn cuMemcpyDtoD_v2_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) {
        copy(dst, Side::Device, src, Side::Device, n, None, true)
    }
    fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, n: usize, h: Handle) {
        copy(dst, Side::Device, src as u64, Side::Host, n, Some(h), false)
    }
    fn cuMemcpyHtoDAsync_v2_ptsz(dst: CUdeviceptr, src: *const c_void, n: usize, h: Handle) {
        copy(dst, Side::Device, src as u64, Side::Host, n, Some(h), true)
    }
    fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, n: usize, h: Handle) {
        copy(dst as u64, Side::Host, src, Side::Device, n, Some(h), false)
    }
    fn cuMemcpyDtoHAsync_v2_ptsz(dst: *mut c_void, src: CUdeviceptr, n: usize, h: Handle) {
        copy(dst as u64, Side::Host, src, Side::Device, n, Some(h), true)
    }
    fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize, h: Handle) {
        copy(dst, Side::Device, src, Side::Device, n, Some(h), false)
    }
    fn cuMemcpyDtoDAsync_v2_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, h: Handle) {
        copy(dst, Side::Device, src, Side::Device, n, Some(h), true)
    }
    fn cuMemcpyPeer(dst: CUdeviceptr, dst_ctx: Handle, src: CUdeviceptr, src_ctx: Handle, n: usize) {
        let p = process()?;
        peer_ctx(p, dst_ctx)?;
        peer_ctx(p, src_ctx)?;
        copy(dst, Side::Device, src, Side::Device, n, None, false)
    }
    fn cuMemcpyPeer_ptds(dst: CUdeviceptr, dst_ctx: Handle, src: CUdeviceptr, src_ctx: Handle, n: usize) {
        let p = process()?;
        peer_ctx(p, dst_ctx)?;
        peer_ctx(p, src_ctx)?;
        copy(dst, Side::Device, src, Side::Device, n, None, true)
    }
    fn cuMemcpyPeerAsync(dst: CUdeviceptr, dst_ctx: Handle, src: CUdeviceptr, src_ctx: Handle, n: usize, h: Handle) {
        let p = process()?;
        peer_ctx(p, dst_ctx)?;
        peer_ctx(p, src_ctx)?;
        copy(dst, Side::Device, src, Side::Device, n, Some(h), false)
    }
    fn cuMemcpyPeerAsync_ptsz(dst: CUdeviceptr, dst_ctx: Handle, src: CUdeviceptr, src_ctx: Handle, n: usize, h: Handle) {
        let p = process()?;
        peer_ctx(p, dst_ctx)?;
        peer_ctx(p, src_ctx)?;
        copy(dst, Side::Device, src, Side::Device, n, Some(h), true)
    }
    fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) {
        memset(dst, u32::from(v), 1, n, None, false)
    }
    fn cuMemsetD8_v2_ptds(dst: CUdeviceptr, v: u8, n: usize) {
        memset(dst, u32::from(v), 1, n, None, true)
    }
    fn cuMemsetD16_v2(dst: CUdeviceptr, v: u16, n: usize) {
        memset(dst, u32::from(v), 2, n, None, false)
    }
    fn cuMemsetD16_v2_ptds(dst: CUdeviceptr, v: u16, n: usize) {
        memset(dst, u32::from(v), 2, n, None, true)
    }
    fn cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize) {
        memset(dst, v, 4, n, None, false)
    }
    fn cuMemsetD32_v2_ptds(dst: CUdeviceptr, v: c_uint, n: usize) {
        memset(dst, v, 4, n, None, true)
    }
    fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, h: Handle) {
        memset(dst, u32::from(v), 1, n, Some(h), false)
    }
    fn cuMemsetD8Async_ptsz(dst: CUdeviceptr, v: u8, n: usize, h: Handle) {
        memset(dst, u32::from(v), 1, n, Some(h), true)
    }
    fn cuMemsetD16Async(dst: CUdeviceptr, v: u16, n: usize, h: Handle) {
        memset(dst, u32::from(v), 2, n, Some(h), false)
    }
    fn cuMemsetD16Async_ptsz(dst: CUdeviceptr, v: u16, n: usize, h: Handle) {
        memset(dst, u32::from(v), 2, n, Some(h), true)
    }
    fn cuMemsetD32Async(dst: CUdeviceptr, v: c_uint, n: usize, h: Handle) {
        memset(dst, v, 4, n, Some(h), false)
    }
    fn cuMemsetD32Async_ptsz(dst: CUdeviceptr, v: c_uint, n: usize, h: Handle) {
        memset(dst, v, 4, n, Some(h), true)
    }
}
