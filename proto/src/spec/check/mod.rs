//! The semantic checks `compile` runs after the strict parse: one function
//! per section of the spec, every problem collected with its JSON path.

use super::*;

mod providers;
use providers::check_provider;

pub(super) struct Checker<'a> {
    issues: &'a mut Vec<SpecIssue>,
}

impl Checker<'_> {
    fn fail(&mut self, path: &str, msg: String) {
        self.issues.push(SpecIssue::new(path, msg));
    }
    fn at_least<T: PartialOrd + fmt::Display + Copy>(&mut self, path: &str, v: T, min: T) {
        if v < min {
            self.fail(path, format!("must be >= {min}, got {v}"));
        }
    }
    fn at_most<T: PartialOrd + fmt::Display + Copy>(&mut self, path: &str, v: T, max: T) {
        if v > max {
            self.fail(path, format!("must be <= {max}, got {v}"));
        }
    }
    fn positive(&mut self, path: &str, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.fail(path, format!("must be a positive number, got {v}"));
        }
    }
    /// A duration in seconds: positive (or >= 0 with `zero_ok`) and at
    /// most MAX_SECONDS, so every timer built from it is representable.
    fn seconds(&mut self, path: &str, v: f64, zero_ok: bool) {
        let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
        if !(v.is_finite() && low_ok) {
            let want = if zero_ok { ">= 0" } else { "a positive number" };
            self.fail(path, format!("must be {want}, got {v}"));
        } else if v > MAX_SECONDS {
            self.fail(
                path,
                format!("must be at most {MAX_SECONDS} s (a year), got {v}"),
            );
        }
    }
}

/// The longest duration a spec may give (365 days): timers, deadlines and
/// sums of them stay far from the limits of the clock types.
pub const MAX_SECONDS: f64 = 31_536_000.0;

/// The largest world a spec may ask for. The launcher has been measured
/// to 8,192 ranks on a 2-core machine (docs/benchmarks.md, "Scale");
/// past that, its open-file limit is the first wall (two connections
/// per rank).
const MAX_WORLD: u64 = 65_536;
const MAX_GEMM_BYTES: u64 = 16 << 30;

/// The longest job name: the run folder's name adds a time stamp and a
/// random suffix, and a file name has at most 255 bytes.
pub const MAX_NAME_LEN: usize = 200;

/// The rules for a job's name, which also names run folders (and so for
/// `--run-id`): letters, digits, '-', '_', '.', not "." or "..", at most
/// MAX_NAME_LEN characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || "-_.".contains(*ch)))
    {
        return Err(format!(
            "may hold only letters, digits, '-', '_', '.'; found {bad:?} in {name:?}"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("must name a folder, not {name:?}"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    Ok(())
}

pub(super) fn check(s: &JobSpec, issues: &mut Vec<SpecIssue>, warnings: &mut Vec<SpecIssue>) {
    let mut c = Checker { issues };
    if let Err(m) = check_name(&s.name) {
        c.fail("name", m);
    }

    check_resources(&mut c, s);
    check_provider(&mut c, s);
    check_workload(&mut c, s);
    check_collective(&mut c, s);
    check_checkpoint(&mut c, s, warnings);
    check_recovery(&mut c, s);
    check_observability(&mut c, s);
    check_capacity(&mut c, s);
    check_notices(&mut c, s);
    check_process(&mut c, s);
    if let (Some(_), Workload::Train(t)) = (s.resources.min_nodes, &s.workload) {
        if t.global_batch.is_none() {
            warnings.push(SpecIssue::new(
                "workload.global_batch",
                "is unset: on fewer nodes each step trains on fewer rows (another model); set it to batch_per_rank x ranks to keep the step the same on any world size",
            ));
        }
    }
}

/// Resources: the world's shape and the accelerator's name.
pub(super) fn check_resources(c: &mut Checker, s: &JobSpec) {
    let r = &s.resources;
    if let Some(m) = r.min_nodes {
        c.at_least("resources.min_nodes", m, 1);
        c.at_most("resources.min_nodes", m, r.nodes);
        if !matches!(s.provider, Provider::Sim { .. } | Provider::Aws { .. }) {
            c.fail(
                "resources.min_nodes",
                format!(
                    "an elastic world needs a provider that replaces lost nodes (sim, aws), not {}",
                    s.provider.kind()
                ),
            );
        }
    }
    c.at_least("resources.nodes", r.nodes, 1);
    c.at_least("resources.devices_per_node", r.devices_per_node, 1);
    let world = r.nodes as u64 * r.devices_per_node as u64;
    if r.nodes >= 1 && r.devices_per_node >= 1 && world > MAX_WORLD {
        c.fail(
            "resources",
            format!("world size {world} (nodes x devices_per_node) exceeds {MAX_WORLD}"),
        );
    }
    let acc = r.accelerator.trim();
    if acc.is_empty() {
        c.fail(
            "resources.accelerator",
            "must not be empty (\"cpu\", \"auto\" or a GPU model)".into(),
        );
    } else if acc != r.accelerator || acc.chars().any(|ch| ch.is_whitespace()) {
        c.fail(
            "resources.accelerator",
            format!("must not contain spaces, got {:?}", r.accelerator),
        );
    } else if !is_accelerator_name(acc) {
        c.fail(
            "resources.accelerator",
            format!("must be \"cpu\", \"auto\", \"cuda\" or a GPU model (H100, A10G, L40S, ...), got {acc:?}"),
        );
    }
}

/// "cpu", "auto", "cuda", "gpu", or what a GPU model's name looks like:
/// letters, digits, '-' and '_', with a digit in it (H100, A10G, L40S,
/// RTX4090, MI300X).
fn is_accelerator_name(acc: &str) -> bool {
    ["cpu", "auto", "cuda", "gpu"]
        .iter()
        .any(|w| acc.eq_ignore_ascii_case(w))
        || (acc.bytes().any(|b| b.is_ascii_digit())
            && acc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// Workload: each kind's sizes.
pub(super) fn check_workload(c: &mut Checker, s: &JobSpec) {
    let r = &s.resources;
    match &s.workload {
        Workload::Gemm(g) => {
            c.at_least("workload.m", g.m, 1);
            c.at_least("workload.n", g.n, 1);
            c.at_least("workload.k", g.k, 1);
            c.at_least("workload.iterations", g.iterations, 1);
            if g.dtype.gpu_only() && is_cpu_accelerator(&r.accelerator) {
                c.fail("workload.dtype", format!("{} runs only on a GPU; set resources.accelerator to \"cuda\" (or a GPU model), or use f32/f64", g.dtype.name()));
            }
            if g.dtype == Dtype::F64
                && !is_cpu_accelerator(&r.accelerator)
                && !r.accelerator.eq_ignore_ascii_case("auto")
            {
                c.fail(
                    "workload.dtype",
                    "f64 GEMM runs only on the CPU; on a GPU use f32, tf32, bf16 or f16".into(),
                );
            }
            let bytes = (g.m.saturating_mul(g.k))
                .saturating_add(g.k.saturating_mul(g.n))
                .saturating_add(g.m.saturating_mul(g.n))
                .saturating_mul(g.dtype.size_bytes());
            if bytes > MAX_GEMM_BYTES {
                c.fail("workload", format!("matrices need {bytes} bytes per worker, more than the {MAX_GEMM_BYTES} allowed"));
            }
        }
        Workload::Allreduce(a) => {
            c.at_least("workload.min_bytes", a.min_bytes, 4);
            c.at_most("workload.max_bytes", a.max_bytes, 4 << 30);
            if a.min_bytes > a.max_bytes {
                c.fail(
                    "workload.max_bytes",
                    format!(
                        "must be >= min_bytes ({}), got {}",
                        a.min_bytes, a.max_bytes
                    ),
                );
            }
            c.at_least("workload.step_factor", a.step_factor, 2);
            c.at_least("workload.iterations", a.iterations, 1);
        }
        Workload::Train(t) => {
            c.at_least("workload.steps", t.steps, 1);
            c.at_least("workload.input_dim", t.input_dim, 1);
            c.at_least("workload.hidden", t.hidden, 1);
            c.at_least("workload.output_dim", t.output_dim, 1);
            c.at_least("workload.layers", t.layers, 2);
            c.at_most("workload.layers", t.layers, 64);
            c.at_least("workload.batch_per_rank", t.batch_per_rank, 1);
            if let Some(g) = t.global_batch {
                let world = r.nodes.saturating_mul(r.devices_per_node) as u64;
                let b = t.batch_per_rank.max(1);
                if g == 0 || g % b != 0 {
                    c.fail(
                        "workload.global_batch",
                        format!("must be a multiple of workload.batch_per_rank ({b}), got {g}"),
                    );
                } else if g / b < world {
                    c.fail(
                        "workload.global_batch",
                        format!(
                            "{g} rows are {} block(s) of batch_per_rank {b}: fewer than the {world} ranks (each trains at least one block)",
                            g / b
                        ),
                    );
                } else if g / b != world && !["cpu", "auto"].contains(&r.accelerator.as_str()) {
                    c.fail(
                        "workload.global_batch",
                        format!(
                            "on a GPU each rank trains one block a step: set it to batch_per_rank x ranks ({}), or leave it unset",
                            b * world
                        ),
                    );
                }
            }
            c.at_least("workload.log_every", t.log_every, 1);
            c.positive("workload.lr", t.lr);
            if !(t.pace_ms.is_finite() && (0.0..=60_000.0).contains(&t.pace_ms)) {
                c.fail(
                    "workload.pace_ms",
                    format!("must be in [0, 60000], got {}", t.pace_ms),
                );
            }
            if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
                c.fail(
                    "workload.momentum",
                    format!("must be in [0, 1), got {}", t.momentum),
                );
            }
            for (p, v) in [
                ("workload.input_dim", t.input_dim),
                ("workload.hidden", t.hidden),
                ("workload.output_dim", t.output_dim),
                ("workload.batch_per_rank", t.batch_per_rank),
            ] {
                c.at_most(p, v, 1 << 16);
            }
        }
        Workload::Command(cmd) => {
            if cmd.argv.is_empty() {
                c.fail(
                    "workload.argv",
                    "must name a program to run (e.g. [\"python\", \"train.py\"])".into(),
                );
            } else if cmd.argv[0].is_empty() {
                c.fail("workload.argv[0]", "must not be empty".into());
            }
            if let Some(cwd) = &cmd.cwd {
                if cwd.is_empty() {
                    c.fail("workload.cwd", "must not be empty when given".into());
                }
            }
        }
    }
}

/// Collective: timeouts and buffer sizes.
pub(super) fn check_collective(c: &mut Checker, s: &JobSpec) {
    let col = &s.collective;
    if col.backend == Backend::Nccl && is_cpu_accelerator(&s.resources.accelerator) {
        c.fail(
            "collective.backend",
            "\"nccl\" needs GPUs; set resources.accelerator to \"cuda\" (or a GPU model) or use \"tcp\"".into(),
        );
    }
    c.seconds("collective.timeout_s", col.timeout_s, false);
    c.at_least("collective.chunk_bytes", col.chunk_bytes, 4096);
    c.at_most("collective.chunk_bytes", col.chunk_bytes, 64 << 20);
    c.at_least("collective.slice_bytes", col.slice_bytes, 4096);
    c.at_least(
        "collective.socket_buffer_bytes",
        col.socket_buffer_bytes,
        64 << 10,
    );
    c.at_most(
        "collective.socket_buffer_bytes",
        col.socket_buffer_bytes,
        256 << 20,
    );
    c.at_least("collective.shm_chunk_bytes", col.shm_chunk_bytes, 4096);
    c.at_most("collective.shm_chunk_bytes", col.shm_chunk_bytes, 256 << 20);
    if !col.shm_chunk_bytes.is_multiple_of(8) {
        c.fail(
            "collective.shm_chunk_bytes",
            format!("{} is not a multiple of 8", col.shm_chunk_bytes),
        );
    }
}

/// Checkpoint: the folder, what is kept, which workloads checkpoint.
pub(super) fn check_checkpoint(c: &mut Checker, s: &JobSpec, warnings: &mut Vec<SpecIssue>) {
    let ck = &s.checkpoint;
    if let Some(dir) = &ck.dir {
        if dir.is_empty() {
            c.fail("checkpoint.dir", "must not be empty when given".into());
        }
    }
    c.at_least("checkpoint.keep", ck.keep, 1);
    if ck.every_steps > 0 && ck.dir.is_none() {
        c.fail(
            "checkpoint.dir",
            format!(
                "must be set when checkpoint.every_steps is {}",
                ck.every_steps
            ),
        );
    }
    if (ck.dir.is_some() || ck.every_steps > 0)
        && !matches!(s.workload, Workload::Train(_) | Workload::Command(_))
    {
        warnings.push(SpecIssue::new(
            "checkpoint",
            format!(
                "only the train and command workloads checkpoint; ignored for {}",
                s.workload.kind()
            ),
        ));
    }
}

/// Observability: the metrics address must be an IP address and a port.
pub(super) fn check_observability(c: &mut Checker, s: &JobSpec) {
    if let Some(a) = &s.observability.metrics_addr {
        if a.parse::<std::net::SocketAddr>().is_err() {
            c.fail(
                "observability.metrics_addr",
                format!("must be an IP address and port, e.g. \"127.0.0.1:9400\", got {a:?}"),
            );
        }
    }
}

/// Recovery and preflight: budgets, timeouts, the slow-node rule.
pub(super) fn check_recovery(c: &mut Checker, s: &JobSpec) {
    let rc = &s.recovery;
    let pf = &s.preflight;
    if !(pf.min_ratio > 0.0 && pf.min_ratio <= 1.0) {
        c.fail(
            "preflight.min_ratio",
            format!("must be in (0, 1], got {}", pf.min_ratio),
        );
    }
    c.seconds(
        "recovery.heartbeat_interval_s",
        rc.heartbeat_interval_s,
        false,
    );
    c.seconds(
        "recovery.heartbeat_timeout_s",
        rc.heartbeat_timeout_s,
        false,
    );
    c.seconds("recovery.hang_timeout_s", rc.hang_timeout_s, false);
    c.seconds(
        "recovery.rendezvous_timeout_s",
        rc.rendezvous_timeout_s,
        false,
    );
    c.seconds("recovery.notice_grace_s", rc.notice_grace_s, false);
    c.seconds("recovery.grace_period_s", rc.grace_period_s, true);
    if rc.heartbeat_interval_s.is_finite()
        && rc.heartbeat_timeout_s.is_finite()
        && rc.heartbeat_timeout_s < 2.0 * rc.heartbeat_interval_s
    {
        c.fail(
            "recovery.heartbeat_timeout_s",
            format!(
                "must be at least twice heartbeat_interval_s ({}), got {}",
                rc.heartbeat_interval_s, rc.heartbeat_timeout_s
            ),
        );
    }
    c.at_most("recovery.max_restarts", rc.max_restarts, 1000);
    if let Some(n) = rc.max_infra_restarts {
        c.at_most("recovery.max_infra_restarts", n, 1000);
    }
}

/// Capacity: what the planner may buy.
pub(super) fn check_capacity(c: &mut Checker, s: &JobSpec) {
    if let Some(cap) = &s.capacity {
        if !["any", "rdma", "infiniband"].contains(&cap.interconnect.as_str()) {
            c.fail(
                "capacity.interconnect",
                format!(
                    "must be any, rdma or infiniband, got {:?}",
                    cap.interconnect
                ),
            );
        }
        c.positive("capacity.expected_hours", cap.expected_hours);
        if let Some(h) = cap.fleet_hours_per_year {
            if !(h.is_finite() && h > 0.0 && h <= 8760.0) {
                c.fail(
                    "capacity.fleet_hours_per_year",
                    format!("must be hours in a year, in (0, 8760], got {h}"),
                );
            }
        }
        c.positive(
            "capacity.checkpoint_every_minutes",
            cap.checkpoint_every_minutes,
        );
        if !(cap.recovery_minutes.is_finite() && cap.recovery_minutes >= 0.0) {
            c.fail(
                "capacity.recovery_minutes",
                format!("must be >= 0, got {}", cap.recovery_minutes),
            );
        }
        if let Some(p) = cap.max_price_per_hour {
            c.positive("capacity.max_price_per_hour", p);
        }
        if let Some(m) = cap.min_gpu_memory_gb {
            c.positive("capacity.min_gpu_memory_gb", m);
        }
        if let Some(v) = cap.step_tflop {
            c.positive("capacity.step_tflop", v);
        }
        if let Some(v) = cap.gradient_gb {
            c.positive("capacity.gradient_gb", v);
        }
        if !(cap.mfu.is_finite() && cap.mfu > 0.0 && cap.mfu <= 1.0) {
            c.fail(
                "capacity.mfu",
                format!("must be in (0, 1], got {}", cap.mfu),
            );
        }
        c.at_least("capacity.max_nodes", cap.max_nodes, 1);
        c.at_most("capacity.max_nodes", cap.max_nodes, 1024);
        for (i, o) in cap.owned.iter().enumerate() {
            let at = format!("capacity.owned[{i}]");
            if o.instance_type.trim().is_empty() {
                c.fail(
                    &format!("{at}.instance_type"),
                    "must name an instance type".into(),
                );
            }
            c.at_least(&format!("{at}.nodes"), o.nodes, 1);
            if let Some(Err(e)) = o.until_time() {
                c.fail(&format!("{at}.until"), e);
            }
        }
    }
}

/// Notices: the watchers and their sources.
pub(super) fn check_notices(c: &mut Checker, s: &JobSpec) {
    let nt = &s.notices;
    if let Some(sig) = &nt.program_signal {
        if sig != "none" && !PROGRAM_SIGNALS.iter().any(|(n, _)| n == sig) {
            c.fail(
                "notices.program_signal",
                format!("must be SIGTERM, SIGUSR1, SIGUSR2, SIGINT or none, got {sig:?}"),
            );
        }
        if !matches!(s.workload, Workload::Command(_)) {
            c.fail(
                "notices.program_signal",
                format!(
                    "is for command jobs (a {} job agrees on its stop step in band)",
                    s.workload.kind()
                ),
            );
        }
    }
    if let Some(ms) = nt.poll_interval_ms {
        c.at_least("notices.poll_interval_ms", ms, 50);
        c.at_most("notices.poll_interval_ms", ms, 60_000);
    }
    let mut clouds = Vec::new();
    for (i, src) in nt.watch.iter().enumerate() {
        if clouds.contains(&src.cloud()) {
            c.fail(
                &format!("notices.watch[{i}].cloud"),
                format!("{} is listed twice", src.cloud().name()),
            );
        }
        clouds.push(src.cloud());
        if let Some(e) = src.endpoint() {
            let rest = e.strip_prefix("http://").unwrap_or("");
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                c.fail(
                    &format!("notices.watch[{i}].endpoint"),
                    format!(
                        "must be a plain http:// base URL like http://169.254.169.254, got {e:?}"
                    ),
                );
            }
        }
        if let NoticeSource::Azure {
            vm_name: Some(n), ..
        } = src
        {
            if n.is_empty() {
                c.fail(
                    &format!("notices.watch[{i}].vm_name"),
                    "must not be empty".into(),
                );
            }
        }
    }
}

/// The workers' process: env, log folder, threads.
pub(super) fn check_process(c: &mut Checker, s: &JobSpec) {
    for k in s.env.keys() {
        let path = format!("env.{k}");
        if k.is_empty()
            || k.contains('=')
            || k.contains('\0')
            || k.chars().next().is_some_and(|ch| ch.is_ascii_digit())
        {
            c.fail(&path, "is not a valid environment variable name".into());
        } else if crate::contract::WorkerContract::reserved().contains(&k.as_str()) {
            c.fail(
                &path,
                "is set by ringmaster for every worker and cannot be overridden".into(),
            );
        }
    }
    for (k, v) in &s.env {
        if v.contains('\0') {
            c.fail(
                &format!("env.{k}"),
                "contains a NUL byte, which no environment variable can hold".into(),
            );
        }
    }
    if s.log_dir.is_empty() {
        c.fail("log_dir", "must not be empty".into());
    }
    if let Some(t) = s.threads_per_worker {
        c.at_least("threads_per_worker", t, 1);
        c.at_most("threads_per_worker", t, 1024);
    }
}
