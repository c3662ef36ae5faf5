//! `validate` and `plan` (with `--compare`): what a job asks and how it
//! would run, without running it.

use super::*;
use crate::capacity;
use crate::error::LaunchError;
use crate::load;
use crate::plan;
use crate::preflight;
use proto::exit::LauncherExit;
use serde_json::json;

pub(super) fn cmd_validate(a: &SpecCmd) -> Result<LauncherExit, LaunchError> {
    match load::load(Some(&a.job), &a.spec, &[]).and_then(|mut c| {
        for w in machine_checks(&c)? {
            c.warnings.push(proto::SpecIssue::new(
                "workload",
                w.trim_start_matches("workload: ").to_string(),
            ));
        }
        Ok(c)
    }) {
        Ok(c) => {
            // The spec is sound; would `run` start it here? Everything it
            // refuses before starting, all of it.
            let refusals = refusals(&c);
            if a.json {
                println!(
                    "{}",
                    json!({"valid": true, "world_size": c.world_size(), "warnings": c.warnings,
                           "runnable": refusals.is_empty(),
                           "refusals": refusals.iter().map(|e| json!({"exit_code": e.exit().code(), "exit_name": e.exit().name(), "message": e.chain()})).collect::<Vec<_>>()})
                );
            } else {
                print_warnings(&c);
                println!(
                    "{}: valid ({} workers, {} workload)",
                    a.job.display(),
                    c.world_size(),
                    c.spec.workload.kind()
                );
                if !refusals.is_empty() {
                    println!("but `ringmaster run` would refuse it on this machine:");
                    for e in &refusals {
                        println!(
                            "  exit {} ({}): {}",
                            e.exit().code(),
                            e.exit().name(),
                            e.chain()
                        );
                    }
                }
            }
            // The code `run` would exit with: its first refusal's.
            Ok(refusals.first().map_or(LauncherExit::Success, |e| e.exit()))
        }
        Err(LaunchError::Config(issues)) if a.json => {
            println!("{}", json!({"valid": false, "errors": issues}));
            Ok(LauncherExit::ConfigInvalid)
        }
        Err(e) => Err(e),
    }
}

/// What `run` refuses before starting a sound spec on this machine, in the
/// order it checks: a provider that only builds requests, GPU support, the
/// machines a provider names (a Slurm allocation, a hostfile), the
/// checkpoint folder, the checkpoint to resume from.
fn refusals(c: &proto::spec::Compiled) -> Vec<LaunchError> {
    let mut out = Vec::new();
    if matches!(
        c.spec.provider,
        proto::spec::Provider::Gcp { .. } | proto::spec::Provider::Azure { .. }
    ) {
        out.push(crate::providers::request_only(&c.spec));
    }
    if let Err(e) = load::resolve(c) {
        out.push(e);
    }
    if let Err(e) = crate::providers::machines(&c.spec) {
        out.push(e);
    }
    if let Err(e) = preflight::checkpoint_dir(&c.spec) {
        out.push(e);
    }
    if let Err(e) = preflight::resume_point(&c.spec) {
        out.push(e);
    }
    out
}

/// Rank rows `plan` lists without --ranks.
const RANK_ROWS: usize = 16;

pub(super) fn cmd_plan(p: &PlanCmd) -> Result<LauncherExit, LaunchError> {
    let a = &p.base;
    let list_ranks = p.ranks;
    let c = load::load(Some(&a.job), &a.spec, &[])?;
    if p.compare {
        return cmd_compare(&c, a.json);
    }
    let supported = load::resolve(&c);
    let (gpus, nccl, ids) = supported
        .as_ref()
        .map(|r| (r.gpus, r.nccl, r.device_ids.clone()))
        .unwrap_or((None, false, None));
    // Where the machines are not known here (no allocation, a bad
    // hostfile), the plan shows placeholders; `run` says what is wrong.
    let machines = crate::providers::machines(&c.spec).unwrap_or_default();
    let (hosts, spares) = (machines.hosts, machines.spares);
    let mut p = plan::plan(&c, cores(), gpus, ids.as_deref(), nccl, hosts.as_deref());
    p.spare_hosts = spares;
    if let Ok(r) = &supported {
        p.warnings.extend(r.notes.iter().cloned());
    }
    // A capacity question: the offers ranked, and the policies on a spot
    // trace, from one reading of the catalog.
    let (ranking, policies) = match &c.spec.capacity {
        Some(cap) => {
            let catalog = load_catalog(cap)?;
            let r = plan_capacity(&c, cap, &catalog)?;
            let p = plan_policies(&c, cap, &catalog, &r)?;
            (Some(r), p)
        }
        None => (None, None),
    };
    if a.json {
        let mut v = serde_json::to_value(&p).expect("plan serialises");
        v["runnable"] = json!(supported.is_ok());
        v["unsupported"] = json!(supported.as_ref().err().map(|e| e.to_string()));
        v["capacity"] = json!(ranking);
        v["policies"] = json!(policies);
        if matches!(c.spec.provider, proto::spec::Provider::Aws { .. }) {
            v["aws"] = json!(crate::aws::plan_lines(&c.spec)?);
        }
        if let Some(r) = crate::cloud_requests::requests(&c.spec, "<run-id>") {
            v["cloud_requests"] = json!(r);
        }
        println!("{v}");
        return Ok(LauncherExit::Success);
    }

    for w in &p.warnings {
        eprintln!("note: {w}");
    }
    println!(
        "job {}: {} workload on {} node(s) x {} device(s) = {} workers ({} provider, accelerator {}, {} thread(s) each)",
        c.spec.name, p.workload, c.spec.resources.nodes, c.spec.resources.devices_per_node, p.world_size, p.provider, p.accelerator, p.threads_per_worker
    );
    let (_, remote) = crate::providers::rendezvous_bind(&c.spec);
    let mut aws = crate::aws::plan_lines(&c.spec)?;
    aws.extend(crate::cloud_requests::plan_lines(&c.spec)?);
    let host = if !aws.is_empty() {
        format!(
            "every address, the instances reach it at {}",
            crate::providers::rendezvous_host(&c.spec, &p)
        )
    } else if remote {
        format!("{} (bound to every address, a free port)", p.master_addr)
    } else {
        "127.0.0.1 (a free port)".to_string()
    };
    println!(
        "rendezvous: hosted by the launcher on {host}; MASTER_ADDR={} with a free MASTER_PORT per attempt",
        if aws.is_empty() { p.master_addr.as_str() } else { "node 0's private IP" }
    );
    // A capacity question (a `capacity` section, nodes from no provider
    // here) is about clouds: its rank rows are the same 32 lines any job
    // of that shape has, and the table answers it; --ranks lists them.
    let capacity_question =
        ranking.is_some() && matches!(c.spec.provider, proto::spec::Provider::Local { .. });
    print_ranks(
        &c.spec,
        &p,
        !aws.is_empty(),
        list_ranks || (!capacity_question && p.workers.len() <= RANK_ROWS),
    );
    for l in &aws {
        println!("{l}");
    }
    print_guards(&c.spec, &p, gpus.is_some());
    match supported {
        Err(e) if capacity_question => println!(
            "this machine: not where it runs ({}); the offers below are where it can",
            e.to_string().lines().next().unwrap_or_default()
        ),
        Err(e) => println!("NOT RUNNABLE in this build: {e}"),
        Ok(_) => {}
    }
    if let Some(r) = &ranking {
        print!("\n{}", capacity::human(r));
    }
    if let Some(p) = &policies {
        print!("\n{}", capacity::policies::human_policies(p));
    }
    Ok(LauncherExit::Success)
}

/// `plan`'s three policies on `capacity.spot_trace` (None where it is
/// unset, or no fitting offer has a spot price): the first candidate's
/// offer with one, the job's hours on all its nodes.
fn plan_policies(
    c: &proto::spec::Compiled,
    cap: &proto::spec::Capacity,
    catalog: &capacity::Catalog,
    r: &capacity::Ranking,
) -> Result<Option<capacity::policies::Comparison>, LaunchError> {
    let Some(path) = &cap.spot_trace else {
        return Ok(None);
    };
    let issue =
        |e: String| LaunchError::Config(vec![proto::SpecIssue::new("capacity.spot_trace", e)]);
    let nodes = c.spec.resources.nodes;
    let text =
        std::fs::read_to_string(path).map_err(|e| issue(format!("cannot read {path}: {e}")))?;
    let trace = crate::sim::market::parse_trace(&text, cap.spot_trace_values, Some(nodes))
        .map_err(|e| issue(format!("{path}: {e}")))?;
    let Some((offer, spot)) = r.candidates.iter().find_map(|k| {
        let o = &catalog.offers[k.offer];
        o.price_per_hour.spot.map(|s| (o, s))
    }) else {
        eprintln!(
            "note: no fitting offer has a spot price: no policy comparison on capacity.spot_trace"
        );
        return Ok(None);
    };
    let mut assumed = Vec::new();
    let min_nodes = c.spec.resources.min_nodes.unwrap_or_else(|| {
        let m = nodes.div_ceil(2);
        assumed.push(format!(
            "shrinking down to {m} node(s) (resources.min_nodes is unset)"
        ));
        m
    });
    let shrink_after_s = match &c.spec.provider {
        proto::spec::Provider::Sim {
            capacity_wait_s,
            time_scale,
            ..
        } => capacity_wait_s * time_scale,
        proto::spec::Provider::Aws {
            capacity_wait_s, ..
        } => *capacity_wait_s,
        _ => {
            assumed.push("5 min of waiting for lost nodes before shrinking (the provider has no capacity_wait_s)".into());
            300.0
        }
    };
    assumed.push("every change of nodes costs capacity.recovery_minutes without progress, no work lost (the notice's checkpoint); a world of k of N nodes makes k/N of the progress (the global batch kept)".into());
    let s = capacity::policies::Scenario {
        nodes,
        min_nodes,
        work_h: cap.expected_hours,
        spot,
        on_demand: offer.price_per_hour.on_demand,
        recovery_h: cap.recovery_minutes / 60.0,
        shrink_after_h: shrink_after_s / 3600.0,
        capacity: trace,
    };
    let label = format!("{} {} {}", offer.instance_type, offer.cloud, offer.region);
    Ok(Some(capacity::policies::compare(
        &s,
        label,
        path.clone(),
        assumed,
    )))
}

/// The rank rows (`list`), or one line saying how ranks are laid out;
/// `cloud`: the nodes are cloud instances (their addresses come later).
fn print_ranks(spec: &proto::spec::JobSpec, p: &plan::Plan, cloud: bool, list: bool) {
    if list {
        println!(
            "{:>6} {:>6} {:>6}  {:<12} {:<10} log",
            "rank", "node", "local", "host", "node addr"
        );
        for w in &p.workers {
            println!(
                "{:>6} {:>6} {:>6}  {:<12} {:<10} {}/<run-id>/attempt-<n>/rank-{}.log",
                w.rank,
                w.node_rank,
                w.local_rank,
                p.nodes[w.node_rank as usize].name,
                if cloud {
                    "its private IP"
                } else {
                    w.node_addr.as_str()
                },
                spec.log_dir,
                w.rank
            );
        }
    } else {
        println!(
            "ranks: {} worker(s), {} per node, rank = node x {} + local rank; logs in {}/<run-id>/attempt-<n>/rank-<r>.log (--ranks lists them)",
            p.workers.len(),
            spec.resources.devices_per_node,
            spec.resources.devices_per_node,
            spec.log_dir
        );
    }
}

/// What keeps the run safe: restarts, heartbeats and hangs, memory, the
/// preflight check.
fn print_guards(spec: &proto::spec::JobSpec, p: &plan::Plan, gpus: bool) {
    println!(
        "restarts allowed: {}; heartbeat every {} s, lost after {} s; {}",
        spec.recovery.max_restarts,
        spec.recovery.heartbeat_interval_s,
        spec.recovery.heartbeat_timeout_s,
        match plan::hang_detection(spec) {
            plan::HangWatch::Always => format!("hang after {} s", spec.recovery.hang_timeout_s),
            plan::HangWatch::OnceReported => format!(
                "hang after {} s once the program reports its steps (the ringmaster package)",
                spec.recovery.hang_timeout_s
            ),
        }
    );
    if let Some(m) = preflight::memory_fit(spec) {
        println!(
            "memory: about {} per worker (weights, momentum, gradient, activations, buffers); {} on this machine for {} worker(s){}",
            preflight::gb(m.per_worker),
            preflight::gb(m.needed),
            m.workers_here,
            m.total
                .map(|t| format!(", which has {}", preflight::gb(t)))
                .unwrap_or_default()
        );
        match preflight::check_memory(&m) {
            Err(e) => println!("memory: DOES NOT FIT: {e}"),
            Ok(Some(w)) => println!("memory: warning: {w}"),
            Ok(None) => {}
        }
    }
    let pf = &spec.preflight;
    if pf.enabled.unwrap_or(gpus) {
        println!(
            "preflight: each worker checks its device before the first step; below {:.0}% of the median: {}",
            100.0 * pf.min_ratio,
            match pf.on_slow {
                proto::spec::OnSlow::Warn => "warn".to_string(),
                proto::spec::OnSlow::Fail => "stop (exit 10)".to_string(),
                proto::spec::OnSlow::Replace if p.spare_hosts.is_empty() => "replace where the provider can, else stop".to_string(),
                proto::spec::OnSlow::Replace => format!("replace with a spare host ({})", p.spare_hosts.join(", ")),
            }
        );
    }
}

/// `plan --compare`: shapes by modelled cost per step.
pub(super) fn cmd_compare(
    c: &proto::spec::Compiled,
    json_out: bool,
) -> Result<LauncherExit, LaunchError> {
    let cap = c.spec.capacity.clone().unwrap_or_default();
    let catalog = load_catalog(&cap)?;
    let r = &c.spec.resources;
    let world = (r.nodes * r.devices_per_node) as f64;
    let train = match &c.spec.workload {
        proto::spec::Workload::Train(t) => Some(t),
        _ => None,
    };
    let missing = |field: &str| {
        LaunchError::Config(vec![proto::SpecIssue::new(
            format!("capacity.{field}"),
            format!(
                "plan --compare needs it for a {} workload (only train's is derived)",
                c.spec.workload.kind()
            ),
        )])
    };
    let work = capacity::StepWork {
        tflop: match (cap.step_tflop, train) {
            (Some(v), _) => v,
            (None, Some(t)) => {
                // The global batch: batch_per_rank x world, or the one set.
                let rows = t.batch_per_rank * t.blocks(world as u32);
                6.0 * t.param_count() as f64 * rows as f64 / 1e12
            }
            (None, None) => return Err(missing("step_tflop")),
        },
        gradient_gb: match (cap.gradient_gb, train) {
            (Some(v), _) => v,
            (None, Some(t)) => 4.0 * t.param_count() as f64 / 1e9,
            (None, None) => return Err(missing("gradient_gb")),
        },
    };
    let req = capacity::Request::new(r.nodes, r.devices_per_node, &r.accelerator, &cap);
    let shapes = capacity::compare(&catalog, &req, work).map_err(LaunchError::Unsupported)?;
    if json_out {
        println!(
            "{}",
            json!({"step": work, "mfu": cap.mfu, "shapes": shapes})
        );
    } else {
        print!("{}", capacity::human_compare(&shapes, work, cap.mfu, 15));
    }
    Ok(LauncherExit::Success)
}

pub(super) fn load_catalog(cap: &proto::spec::Capacity) -> Result<capacity::Catalog, LaunchError> {
    match &cap.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(LaunchError::system(format!("capacity.catalog {path}")))?;
            capacity::parse_catalog(&text, path)
        }
        None => capacity::parse_catalog(capacity::BUILT_IN, "built-in catalog"),
    }
    .map_err(|e| LaunchError::Config(vec![proto::SpecIssue::new("capacity.catalog", e)]))
}

/// Rank the catalog's offers for a job with a `capacity` section.
pub(super) fn plan_capacity(
    c: &proto::spec::Compiled,
    cap: &proto::spec::Capacity,
    catalog: &capacity::Catalog,
) -> Result<capacity::Ranking, LaunchError> {
    let r = &c.spec.resources;
    let req = capacity::Request::new(r.nodes, r.devices_per_node, &r.accelerator, cap);
    capacity::rank(catalog, &req).map_err(LaunchError::Unsupported)
}
