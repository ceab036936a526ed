//! `cudarc-workload`: a Rust CUDA workload built on cudarc 0.19 (driver API, dynamic loading),
//! the way a typical Rust program reaches the driver: cudarc `dlopen`s `libcuda.so` and resolves
//! every function with plain `dlsym`, and allocates with `cuMemAllocAsync` whenever the device
//! reports memory pools.
//!
//! Every result is printed as one JSON object per line on stdout (flushed per line). Driver
//! errors are data (`"result": <CUresult>`), never panics: the exit code is 0 when the command
//! ran, 1 when the driver could not even be initialised, 2 on usage errors (clap).
//!
//! The `spin` kernel is `tests/workloads/ptx/spin.ptx`, shared with the C workload.

use std::ffi::{CString, c_void};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::{CudaContext, CudaSlice, sys};
use serde_json::{Value, json};

/// The spin kernel: `.entry spin(.param .u64 ns)` busy-waits `ns` nanoseconds on `%globaltimer`.
pub const SPIN_PTX: &str = include_str!("../ptx/spin.ptx");

const MIB: usize = 1 << 20;

#[derive(Parser)]
#[command(
    name = "cudarc-workload",
    about = "CUDA workload on cudarc (JSON lines out)"
)]
struct Cli {
    /// Device ordinal to use.
    #[arg(long, global = true, default_value_t = 0)]
    device: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Devices, names, total memory, free/total from cuMemGetInfo.
    Info,
    /// Allocate `count` buffers of `mib` MiB each; report each success or failure.
    Alloc {
        #[arg(long)]
        mib: usize,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Keep the successful allocations this long before freeing them.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
    /// Copy a pattern host->device->host and compare bytes.
    Copy {
        #[arg(long)]
        mib: usize,
    },
    /// Launch `spin(ns)` `count` times on a stream, synchronize, report wall and event time.
    Spin {
        #[arg(long)]
        ns: u64,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
}

/// Prints one JSON object as a line and flushes (tests read lines while the process runs).
fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout is not worth a panic in a workload; the test will see the missing line.
    writeln!(out, "{v}").ok();
    out.flush().ok();
}

/// The numeric CUresult of a driver error.
fn code(e: &DriverError) -> i32 {
    e.0 as i32
}

/// The driver's name of a driver error (`CUDA_ERROR_OUT_OF_MEMORY`, ...).
fn name(e: &DriverError) -> String {
    e.error_name()
        .map_or_else(|_| "unknown".into(), |s| s.to_string_lossy().into_owned())
}

fn err_fields(op: &str, step: &str, e: &DriverError) -> Value {
    json!({"op": op, "step": step, "result": code(e), "error": name(e)})
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // cudarc panics when no driver library can be loaded; report that as data too
    match std::panic::catch_unwind(cu::init) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            emit(err_fields("init", "cuInit", &e));
            std::process::exit(1);
        }
        Err(_) => {
            emit(json!({"op": "init", "step": "load", "error": "driver library not loadable"}));
            std::process::exit(1);
        }
    }
    match cli.cmd {
        Cmd::Info => info(),
        cmd => {
            let ctx = match CudaContext::new(cli.device) {
                Ok(ctx) => ctx,
                Err(e) => {
                    emit(err_fields("context", "cuDevicePrimaryCtxRetain", &e));
                    std::process::exit(1);
                }
            };
            match cmd {
                Cmd::Info => unreachable!("handled above"),
                Cmd::Alloc {
                    mib,
                    count,
                    hold_ms,
                } => alloc(&ctx, mib, count, hold_ms),
                Cmd::Copy { mib } => copy(&ctx, mib),
                Cmd::Spin { ns, count } => spin(&ctx, ns, count),
            }
        }
    }
}

fn meminfo(ctx: &Arc<CudaContext>) -> Value {
    match ctx.mem_get_info() {
        Ok((free, total)) => json!({"free": free, "total": total, "result": 0}),
        Err(e) => json!({"result": code(&e), "error": name(&e)}),
    }
}

fn info() -> Result<()> {
    let count = match CudaContext::device_count() {
        Ok(n) => n,
        Err(e) => {
            emit(err_fields("info", "cuDeviceGetCount", &e));
            return Ok(());
        }
    };
    emit(json!({"op": "info", "devices": count, "result": 0}));
    for i in 0..usize::try_from(count).context("negative device count")? {
        match CudaContext::new(i) {
            Ok(ctx) => {
                let name = ctx.name().unwrap_or_default();
                let total_mem = ctx.total_mem().unwrap_or(0);
                emit(json!({
                    "op": "device", "index": i, "name": name, "total_mem": total_mem,
                    "async_alloc": ctx.has_async_alloc(), "meminfo": meminfo(&ctx), "result": 0,
                }));
            }
            Err(e) => {
                emit(json!({"op": "device", "index": i, "result": code(&e), "error": name(&e)}));
            }
        }
    }
    Ok(())
}

fn alloc(ctx: &Arc<CudaContext>, mib: usize, count: usize, hold_ms: u64) -> Result<()> {
    let stream = ctx.default_stream();
    let bytes = mib * MIB;
    let mut held: Vec<CudaSlice<u8>> = Vec::new();
    for i in 0..count {
        // SAFETY: the buffer is never read before being written; it is only held and freed.
        match unsafe { stream.alloc::<u8>(bytes) } {
            Ok(buf) => {
                emit(
                    json!({"op": "alloc", "index": i, "bytes": bytes, "async": ctx.has_async_alloc(), "result": 0}),
                );
                held.push(buf);
            }
            Err(e) => emit(json!({
                "op": "alloc", "index": i, "bytes": bytes, "async": ctx.has_async_alloc(),
                "result": code(&e), "error": name(&e),
            })),
        }
    }
    if let Err(e) = stream.synchronize() {
        emit(err_fields("sync", "cuStreamSynchronize", &e));
    }
    emit(
        json!({"op": "holding", "allocations": held.len(), "bytes": held.len() * bytes, "pid": std::process::id(), "meminfo": meminfo(ctx)}),
    );
    if hold_ms > 0 {
        std::thread::sleep(Duration::from_millis(hold_ms));
    }
    let n = held.len();
    drop(held); // frees (cuMemFreeAsync on the stream when pools are supported)
    let sync = stream.synchronize().err();
    // errors of the frees inside Drop are recorded in the context
    let free_err = ctx.check_err().err().or(sync);
    emit(json!({
        "op": "freed", "allocations": n,
        "result": free_err.as_ref().map_or(0, code),
        "meminfo": meminfo(ctx),
    }));
    Ok(())
}

fn copy(ctx: &Arc<CudaContext>, mib: usize) -> Result<()> {
    let stream = ctx.default_stream();
    let bytes = mib * MIB;
    let mut x: u32 = 0x2545_f491;
    let host: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let t0 = Instant::now();
    let dev = match stream.clone_htod(&host) {
        Ok(d) => d,
        Err(e) => {
            emit(
                json!({"op": "copy", "bytes": bytes, "step": "htod", "result": code(&e), "error": name(&e)}),
            );
            return Ok(());
        }
    };
    let back = match stream.clone_dtoh(&dev) {
        Ok(b) => b,
        Err(e) => {
            emit(
                json!({"op": "copy", "bytes": bytes, "step": "dtoh", "result": code(&e), "error": name(&e)}),
            );
            return Ok(());
        }
    };
    let elapsed = t0.elapsed();
    let mismatches =
        host.iter().zip(&back).filter(|(a, b)| a != b).count() + host.len().abs_diff(back.len());
    emit(json!({
        "op": "copy", "bytes": bytes, "wall_ms": ms(elapsed), "mismatches": mismatches,
        "match": mismatches == 0, "result": 0,
    }));
    Ok(())
}

fn spin(ctx: &Arc<CudaContext>, ns: u64, count: u32) -> Result<()> {
    let fail = |step: &str, e: DriverError| {
        emit(
            json!({"op": "spin", "ns": ns, "count": count, "step": step, "result": code(&e), "error": name(&e)}),
        );
        Ok(())
    };
    if let Err(e) = ctx.bind_to_thread() {
        return fail("cuCtxSetCurrent", e);
    }
    let image = CString::new(SPIN_PTX).context("PTX contains NUL")?;
    // SAFETY: `image` is a NUL-terminated PTX text that outlives the call.
    let module = match unsafe { cu::module::load_data(image.as_ptr().cast()) } {
        Ok(m) => m,
        Err(e) => return fail("cuModuleLoadData", e),
    };
    let fname = CString::new("spin").context("NUL in name")?;
    // SAFETY: `module` was just loaded in the current context.
    let func = match unsafe { cu::module::get_function(module, fname) } {
        Ok(f) => f,
        Err(e) => return fail("cuModuleGetFunction", e),
    };
    let stream = match ctx.new_stream() {
        Ok(s) => s,
        Err(e) => return fail("cuStreamCreate", e),
    };
    let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let (start, end) = match (ctx.new_event(timing), ctx.new_event(timing)) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return fail("cuEventCreate", e),
    };
    let t0 = Instant::now();
    if let Err(e) = start.record(&stream) {
        return fail("cuEventRecord", e);
    }
    let mut param = ns;
    let mut launched = 0u32;
    let mut launch_result = 0;
    for _ in 0..count {
        let mut params = [(&raw mut param).cast::<c_void>()];
        // SAFETY: `spin` takes exactly one .u64 parameter; `param` lives until the launch
        // returns (the driver copies kernel parameters at launch).
        let r = unsafe {
            cu::launch_kernel(
                func,
                (1, 1, 1),
                (1, 1, 1),
                0,
                stream.cu_stream(),
                &mut params,
            )
        };
        match r {
            Ok(()) => launched += 1,
            Err(e) => {
                launch_result = code(&e);
                break;
            }
        }
    }
    if let Err(e) = end.record(&stream) {
        return fail("cuEventRecord", e);
    }
    let launch_elapsed = t0.elapsed();
    if let Err(e) = stream.synchronize() {
        return fail("cuStreamSynchronize", e);
    }
    let wall = t0.elapsed();
    let event_ms = match start.elapsed_ms(&end) {
        Ok(v) => f64::from(v),
        Err(e) => return fail("cuEventElapsedTime", e),
    };
    // SAFETY: no launch on this module is pending (the stream was synchronized).
    let unload = unsafe { cu::module::unload(module) }
        .err()
        .map_or(0, |e| code(&e));
    emit(json!({
        "op": "spin", "ns": ns, "count": count, "launched": launched,
        "launch_ms": ms(launch_elapsed), "wall_ms": ms(wall), "event_ms": event_ms,
        "launch_result": launch_result, "unload_result": unload, "result": launch_result,
    }));
    Ok(())
}
