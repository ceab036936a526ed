//! The latency scenarios: an interactive service beside batch work, and the consolidation of
//! several interactive services with a batch job on one GPU.
//!
//! This module owns both scenarios: the `interactive` workload's requests (Poisson arrivals,
//! each a burst of short kernels and a synchronize; latency from arrival to completion), the
//! phases they run in (alone, shared in class `normal`, shared in class `latency`), what the
//! batch tenant did meanwhile (device time by its reports, and on the fake its ground truth and
//! its deepest queue from the kernel trace), and the rows with their targets.

use super::*;

/// An interactive tenant's requests.
#[derive(Debug, Clone, Copy)]
struct Requests {
    /// Requests per second (Poisson arrivals).
    rate: u32,
    /// Kernels per request.
    kernels: u32,
    /// Each kernel's length.
    ns: u64,
    /// Seed of the arrivals (the same in every phase, so the requests are the same).
    seed: u64,
}

impl Requests {
    /// Device time of one request, ms.
    fn service_ms(&self) -> f64 {
        self.kernels as f64 * self.ns as f64 / 1e6
    }
}

/// What an `interactive` run reported.
struct Served {
    /// Latency of each request, ms, in arrival order.
    latencies: Vec<f64>,
    /// Each request's arrival (CLOCK_MONOTONIC ms).
    arrivals: Vec<f64>,
    start_ms: f64,
    end_ms: f64,
}

impl Served {
    fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies, q)
    }

    /// `p50 / p99 / p999 ms over N requests`.
    fn summary(&self) -> String {
        format!(
            "p50 {:.1} / p99 {:.1} / p999 {:.1} ms over {} requests",
            self.p(50.0),
            self.p(99.0),
            self.p(99.9),
            self.latencies.len()
        )
    }
}

/// One phase: the interactive tenants' results and what the batch tenant did meanwhile.
struct Phase {
    served: Vec<Served>,
    /// The batch tenant's device ms over the phase, by its reports.
    batch_ms: Option<f64>,
    /// The batch tenant's deepest queue on the device (ms), from the fake's trace.
    batch_queue_ms: Option<f64>,
    /// Device busy over the phase, by the fake's ground truth.
    fake_busy: Option<f64>,
    /// The batch tenant's slices preempted for a higher class.
    preemptions: u64,
    /// Phase length, ms.
    len_ms: f64,
}

impl Phase {
    /// Device ms the interactive tenants' requests used.
    fn interactive_ms(&self, req: &[Requests]) -> f64 {
        self.served
            .iter()
            .zip(req)
            .map(|(s, r)| s.latencies.len() as f64 * r.service_ms())
            .sum()
    }

    /// The batch tenant's share of the time the interactive ones left (by its reports).
    fn batch_of_leftover(&self, req: &[Requests]) -> Option<f64> {
        let leftover = self.len_ms - self.interactive_ms(req);
        self.batch_ms.map(|b| b / leftover)
    }

    /// Device busy over the phase: the fake's ground truth, else the workloads' reports.
    fn busy(&self, req: &[Requests]) -> f64 {
        self.fake_busy.unwrap_or_else(|| {
            (self.interactive_ms(req) + self.batch_ms.unwrap_or(0.0)) / self.len_ms
        })
    }
}

/// A quota file with a priority class.
fn classed(class: &str) -> String {
    format!("memory_limit = \"1GiB\"\nweight = 1\npriority = \"{class}\"\n")
}

/// A saturating batch tenant with a deep queue: 16 kernels of `ns` per synchronize.
fn deep(ns: u64) -> Spec {
    Spec {
        ns,
        batch: 16,
        pause_ms: 0,
        graph_kernels: 0,
    }
}

impl Ctx {
    /// How long each interactive run lasts.
    fn phase_secs(&self) -> u64 {
        if self.quick { 1 } else { 15 }
    }

    /// Starts an `interactive` run of `req` in `tenant` for `seconds`; returns once its
    /// requests are about to start.
    fn interactive(&self, g: &Gpumux, tenant: &str, req: Requests, seconds: u64) -> Result<Proc> {
        let mut cmd = g.tenant_command(tenant, c_workload());
        cmd.arg("interactive")
            .args(["--rate", &req.rate.to_string()])
            .args(["--kernels", &req.kernels.to_string()])
            .args(["--ns", &req.ns.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--seed", &req.seed.to_string()]);
        let p = Proc::spawn(
            &mut cmd,
            format!("interactive in {tenant}"),
            &self.stderr_log(),
        )?;
        p.wait_for("interactive-start", START_TIMEOUT)?;
        Ok(p)
    }

    /// Runs the interactive tenants `webs` (tenant, requests) at once on `g`, beside a batch
    /// tenant running `batch` (tenant, spec) if given, and collects the phase.
    fn phase(
        &self,
        g: &Gpumux,
        webs: &[(&str, Requests)],
        batch: Option<(&str, Spec)>,
    ) -> Result<Phase> {
        let secs = self.phase_secs();
        let load = match batch {
            Some((t, spec)) => {
                let l = self.load_with(g, t, spec, secs + 8, 0)?;
                std::thread::sleep(self.settle());
                Some(l)
            }
            None => None,
        };
        let procs: Vec<Proc> = webs
            .iter()
            .map(|(t, req)| self.interactive(g, t, *req, secs))
            .collect::<Result<_>>()?;
        let mut served = Vec::new();
        for (p, (t, _)) in procs.into_iter().zip(webs) {
            let (status, lines) = p.finish(Duration::from_secs(secs + 120))?;
            let l = lines
                .iter()
                .find(|v| v["op"] == "interactive")
                .with_context(|| format!("no interactive line from {t} ({status})"))?;
            if l["result"] != 0 {
                bail!("the interactive run in {t} failed: {l}");
            }
            let list = |k: &str| -> Vec<f64> {
                l[k].as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default()
            };
            let num = |k: &str| l[k].as_f64().with_context(|| format!("{k} in {l}"));
            served.push(Served {
                latencies: list("latencies_ms"),
                arrivals: list("arrivals_ms"),
                start_ms: num("start_ms")?,
                end_ms: num("end_ms")?,
            });
        }
        let t0 = served.iter().map(|s| s.start_ms).fold(f64::MAX, f64::min);
        let t1 = served.iter().map(|s| s.end_ms).fold(0.0, f64::max);
        let trace = measure::trace(g, t0, t1)?;
        let (batch_ms, batch_queue_ms, preemptions) = match (&load, batch) {
            (Some(l), Some((t, _))) => {
                l.wait_reported(t1, Duration::from_secs(20))?;
                check_loads(&[l])?;
                let queue = trace
                    .as_ref()
                    .map(|trace| deepest_queue(trace, l.proc.pid()) as f64 / 1e6);
                let preempted = g.tenant_status(t)["devices"][0]["preemptions"]
                    .as_u64()
                    .unwrap_or(0);
                (Some(l.device_ms(t0, t1)), queue, preempted)
            }
            _ => (None, None, 0),
        };
        // The device's busy time inside the phase, from the fake's trace.
        let (a, b) = ((t0 * 1e6) as u64, (t1 * 1e6) as u64);
        let fake_busy = trace.map(|trace| {
            let ns: u64 = trace
                .iter()
                .map(|k| k.end_ns.min(b).saturating_sub(k.start_ns.max(a)))
                .sum();
            ns as f64 / 1e6 / (t1 - t0)
        });
        Ok(Phase {
            served,
            batch_ms,
            batch_queue_ms,
            fake_busy,
            preemptions,
            len_ms: t1 - t0,
        })
    }
}

/// The most device time (ns) `pid` had submitted and not yet finished at any of its
/// submissions in `trace` (the running kernel counted in full): its queue as the device saw it.
fn deepest_queue(trace: &[fakegpu::KernelRecord], pid: u32) -> u64 {
    let mine: Vec<&fakegpu::KernelRecord> = trace.iter().filter(|k| k.pid == pid).collect();
    mine.iter()
        .map(|k| {
            mine.iter()
                .filter(|j| j.ready_ns <= k.ready_ns && j.end_ns > k.ready_ns)
                .map(|j| j.end_ns - j.start_ns)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

/// The p99 latency of the requests of all `served` runs (`service_ms` each) served first come,
/// first served by one device with nothing else on it: about the least any scheduler of one
/// device can give them together.
fn one_queue_p99(served: &[&Served], service_ms: f64) -> f64 {
    let mut arrivals: Vec<f64> = served.iter().flat_map(|s| s.arrivals.clone()).collect();
    arrivals.sort_by(f64::total_cmp);
    let mut free = f64::MIN;
    let waits: Vec<f64> = arrivals
        .iter()
        .map(|&a| {
            free = free.max(a) + service_ms;
            free - a
        })
        .collect();
    percentile(&waits, 99.0)
}

/// The batch tenant (16 × 2 ms kernels per sync) alone on a device it shares with `web` by
/// quota (registered by its quota file, launching nothing), for one window: its share of the
/// window by its reports, by the fake's ground truth, and its `queue_budget_us` meanwhile.
/// With `web` of a higher class its queue is bounded: the cost of the bound on its throughput.
fn batch_alone(ctx: &Ctx, tenants: &[(&str, String)]) -> Result<(f64, Option<f64>, u64)> {
    let g = ctx.start(tenants)?;
    let l = ctx.load(&g, "batch", deep(2_000_000))?;
    std::thread::sleep(ctx.settle());
    let w = Window::measure(&g, &[&l], ctx.window())?;
    check_loads(&[&l])?;
    let budget = g.tenant_status("batch")["devices"][0]["queue_budget_us"]
        .as_u64()
        .unwrap_or(0);
    let len = w.t1 - w.t0;
    Ok((
        w.reported_ms[0] / len,
        w.fake_ms.as_ref().map(|f| f[0] / len),
        budget,
    ))
}

/// An interactive service (Poisson requests of 20 × 0.5 ms) beside a batch tenant saturating
/// the device with a deep queue, in four phases on fresh daemons: alone; shared, both in class
/// `normal` (today's behaviour); shared, in classes `latency` and `batch`, with 2 ms and with
/// 8 ms batch kernels. Then the batch tenant alone with its queue bounded (the interactive one
/// idle) and unbounded: what the bound costs its throughput.
pub fn latency(ctx: &Ctx) -> Result<Vec<Row>> {
    let req = Requests {
        rate: 20,
        kernels: 20,
        ns: 500_000,
        seed: 7,
    };
    let classes = [("web", classed("latency")), ("batch", classed("batch"))];
    let g = ctx.start(&classes)?;
    let alone = ctx.phase(&g, &[("web", req)], None)?;
    drop(g);
    let g = ctx.start(&[("web", classed("normal")), ("batch", classed("normal"))])?;
    let normal = ctx.phase(&g, &[("web", req)], Some(("batch", deep(2_000_000))))?;
    drop(g);
    let g = ctx.start(&classes)?;
    let quantum = quantum_ms(&g)?;
    let shared = ctx.phase(&g, &[("web", req)], Some(("batch", deep(2_000_000))))?;
    drop(g);
    let g = ctx.start(&classes)?;
    let long = ctx.phase(&g, &[("web", req)], Some(("batch", deep(8_000_000))))?;
    drop(g);
    let bounded = batch_alone(ctx, &classes)?;
    let unbounded = batch_alone(
        ctx,
        &[("web", classed("normal")), ("batch", classed("normal"))],
    )?;

    let reqs = [req];
    let a = &alone.served[0];
    let p_alone = a.p(99.0);
    let leftover = |p: &Phase| p.batch_of_leftover(&reqs).unwrap_or(f64::NAN);
    let queue = |p: &Phase| {
        p.batch_queue_ms
            .map(|q| format!("; batch's deepest queue {q:.1} ms (fake trace)"))
            .unwrap_or_default()
    };
    let mut rows = vec![
        Row::new(
            "latency/alone",
            p_alone,
            "ms",
            format!("p99 {p_alone:.1} ms alone"),
        )
        .note(format!(
            "{} req/s of {} × {:.1} ms kernels (Poisson, seed {}), alone on the device: {}",
            req.rate,
            req.kernels,
            req.ns as f64 / 1e6,
            req.seed,
            a.summary()
        ))
        .fig("p50_ms", a.p(50.0))
        .fig("p99_ms", p_alone)
        .fig("p999_ms", a.p(99.9)),
    ];
    let n = &normal.served[0];
    rows.push(
        Row::new(
            "latency/normal",
            n.p(99.0),
            "ms",
            format!("p99 {:.1} ms, both in class normal", n.p(99.0)),
        )
        .note(format!(
            "today's behaviour (quantum {quantum:.0} ms) beside a batch tenant of 16 × 2 ms kernels per sync: {}; batch {} of the time left{}",
            n.summary(),
            pct(leftover(&normal)),
            queue(&normal)
        ))
        .fig("p50_ms", n.p(50.0))
        .fig("p99_ms", n.p(99.0))
        .fig("p999_ms", n.p(99.9))
        .fig("batch_of_leftover", leftover(&normal)),
    );
    for (name, phase, kernel_ms) in [
        ("latency/latency", &shared, 2.0),
        ("latency/latency-8ms", &long, 8.0),
    ] {
        let s = &phase.served[0];
        let p = s.p(99.0);
        let (bound, target) = if kernel_ms <= 2.0 {
            (p_alone + 2.0, "≤ alone + 2 ms")
        } else {
            (
                1.1 * p_alone + kernel_ms,
                "≤ 1.1 × alone + one batch kernel",
            )
        };
        rows.push(
            Row::new(
                name,
                p,
                "ms",
                format!("p99 {p:.1} ms in class latency (alone {p_alone:.1})"),
            )
            .target(format!("{target} ({bound:.1} ms)"), p <= bound)
            .note(format!(
                "beside a batch tenant of 16 × {kernel_ms:.0} ms kernels per sync: {}; {} preemptions; batch {} of the time left{}",
                s.summary(),
                phase.preemptions,
                pct(leftover(phase)),
                queue(phase)
            ))
            .fig("p50_ms", s.p(50.0))
            .fig("p99_ms", p)
            .fig("p999_ms", s.p(99.9))
            .fig("p99_over_alone_ms", p - p_alone)
            .fig("preemptions", phase.preemptions as f64)
            .fig("batch_of_leftover", leftover(phase)),
        );
    }
    let b = leftover(&shared);
    rows.push(
        Row::new(
            "latency/batch",
            b * 100.0,
            "%",
            format!("batch got {} of the time the latency tenant left", pct(b)),
        )
        .target("≥ 95%", b >= 0.95)
        .note(format!(
            "2 ms kernels; 8 ms kernels: {}; in class normal: {}; device busy {} (latency), {} (normal)",
            pct(leftover(&long)),
            pct(leftover(&normal)),
            pct(shared.busy(&reqs)),
            pct(normal.busy(&reqs))
        ))
        .fig("batch_of_leftover", b)
        .fig("batch_of_leftover_8ms", leftover(&long))
        .fig("busy", shared.busy(&reqs)),
    );
    let ((b_rep, b_fake, budget), (u_rep, u_fake, u_budget)) = (bounded, unbounded);
    let cost = b_rep / u_rep;
    let fake = match (b_fake, u_fake) {
        (Some(b), Some(u)) => format!(
            "; fake ground truth: {} bounded, {} unbounded ({} of it)",
            pct(b),
            pct(u),
            pct(b / u)
        ),
        _ => String::new(),
    };
    rows.push(
        Row::new(
            "latency/bound-cost",
            cost * 100.0,
            "%",
            format!(
                "bounded batch throughput {} of unbounded",
                pct(cost)
            ),
        )
        .note(format!(
            "the batch tenant alone (16 × 2 ms kernels per sync; the interactive tenant registered, idle), {} s window each: {} of the device with its queue bounded (queue_budget_us {budget}, web in class latency), {} unbounded (both normal, queue_budget_us {u_budget}){fake}",
            ctx.window().as_secs(),
            pct(b_rep),
            pct(u_rep),
        ))
        .fig("bounded_share", b_rep)
        .fig("unbounded_share", u_rep)
        .fig("bounded_of_unbounded", cost)
        .fig("queue_budget_us", budget as f64),
    );
    Ok(rows)
}

/// The reason to share a GPU: four interactive services, each about 15% of the device (30
/// requests/s of 10 × 0.5 ms kernels), consolidated with a batch job (2 ms kernels, deep queue)
/// on one GPU. Each service alone, then all five in classes `latency`/`batch`, then all in
/// class `normal` (today's behaviour).
pub fn consolidation(ctx: &Ctx) -> Result<Vec<Row>> {
    let names = ["web0", "web1", "web2", "web3"];
    let reqs: Vec<Requests> = (0..names.len() as u64)
        .map(|k| Requests {
            rate: 30,
            kernels: 10,
            ns: 500_000,
            seed: 100 + k,
        })
        .collect();
    let quotas = |web: &str| -> Vec<(&str, String)> {
        names
            .iter()
            .map(|n| (*n, classed(web)))
            .chain([(
                "batch",
                classed(if web == "latency" { "batch" } else { web }),
            )])
            .collect()
    };
    let g = ctx.start(&quotas("latency"))?;
    let mut alone = Vec::new();
    for (n, r) in names.iter().zip(&reqs) {
        alone.push(ctx.phase(&g, &[(n, *r)], None)?);
    }
    drop(g);
    let webs: Vec<(&str, Requests)> = names.iter().copied().zip(reqs.iter().copied()).collect();
    let g = ctx.start(&quotas("latency"))?;
    let shared = ctx.phase(&g, &webs, Some(("batch", deep(2_000_000))))?;
    drop(g);
    let g = ctx.start(&quotas("normal"))?;
    let normal = ctx.phase(&g, &webs, Some(("batch", deep(2_000_000))))?;
    drop(g);

    let busy = shared.busy(&reqs);
    let p_alone: Vec<f64> = alone.iter().map(|p| p.served[0].p(99.0)).collect();
    let p_shared: Vec<f64> = shared.served.iter().map(|s| s.p(99.0)).collect();
    let p_normal: Vec<f64> = normal.served.iter().map(|s| s.p(99.0)).collect();
    let one_queue = one_queue_p99(
        &shared.served.iter().collect::<Vec<_>>(),
        reqs[0].service_ms(),
    );
    // The worst tenant against its target.
    let (worst, _) = (0..names.len())
        .map(|k| (k, p_shared[k] / (1.5 * p_alone[k] + 2.0)))
        .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
    let met = (0..names.len()).all(|k| p_shared[k] <= 1.5 * p_alone[k] + 2.0);
    let each = |ps: &[f64]| {
        names
            .iter()
            .zip(ps)
            .map(|(n, p)| format!("{n} {p:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows = vec![
        Row::new(
            "consolidation/busy",
            busy * 100.0,
            "%",
            format!("device busy {}", pct(busy)),
        )
        .target("≥ 95%", busy >= 0.95)
        .note(format!(
            "4 × (30 req/s of 10 × 0.5 ms, class latency) + a batch tenant (16 × 2 ms kernels per sync, class batch); batch {} of the time left; {} preemptions; in class normal: busy {}{}",
            pct(shared.batch_of_leftover(&reqs).unwrap_or(f64::NAN)),
            shared.preemptions,
            pct(normal.busy(&reqs)),
            shared
                .batch_queue_ms
                .map(|q| format!("; batch's deepest queue {q:.1} ms (fake trace)"))
                .unwrap_or_default()
        ))
        .fig("busy", busy)
        .fig("busy_normal", normal.busy(&reqs))
        .fig("preemptions", shared.preemptions as f64),
    ];
    let mut p99 = Row::new(
        "consolidation/p99",
        p_shared[worst],
        "ms",
        format!(
            "worst p99 {:.1} ms ({}, alone {:.1})",
            p_shared[worst], names[worst], p_alone[worst]
        ),
    )
    .target("each ≤ 1.5 × alone + 2 ms", met)
    .note(format!(
        "p99 ms shared: {}; alone: {}; in class normal (today): {}; one first-come-first-served queue of the four services' requests with no batch work at all: {one_queue:.1}",
        each(&p_shared),
        each(&p_alone),
        each(&p_normal)
    ))
    .fig("one_queue_p99_ms", one_queue);
    for (k, n) in names.iter().enumerate() {
        p99 = p99
            .fig(&format!("{n}_p99_ms"), p_shared[k])
            .fig(&format!("{n}_alone_p99_ms"), p_alone[k])
            .fig(&format!("{n}_normal_p99_ms"), p_normal[k])
            .fig(&format!("{n}_p999_ms"), shared.served[k].p(99.9));
    }
    rows.push(p99);
    Ok(rows)
}
