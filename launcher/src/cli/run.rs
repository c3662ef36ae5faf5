//! `run`: a job (or `--resume` of one) under the supervisor; in a pod of a
//! multi-node Kubernetes job other than the first, the node agent.

use super::*;
use crate::error::LaunchError;
use crate::load;
use crate::plan;
use crate::preflight;
use crate::progress::Console;
use crate::report;
use crate::supervisor::{RunOptions, Supervisor};
use proto::exit::LauncherExit;
use serde_json::json;

pub(super) fn cmd_run(a: &RunArgs) -> Result<LauncherExit, LaunchError> {
    if let Some(id) = &a.run_id {
        // It names a folder under log_dir: the same rules as a job's name
        // (no '/', no "..", no newline, not too long).
        proto::spec::check_name(id)
            .map_err(|m| LaunchError::Config(vec![proto::SpecIssue::new("--run-id", m)]))?;
    }
    let resume_job = a.resume.as_ref().map(|d| d.join("job.json"));
    if let (Some(j), Some(d)) = (&resume_job, &a.resume) {
        if !j.is_file() {
            return Err(LaunchError::Io(format!(
                "--resume: {} is not a run directory (no job.json)",
                d.display()
            )));
        }
    }
    let c = load::load(
        resume_job.as_deref().or(a.job.as_deref()),
        &a.spec,
        &a.command,
    )?;
    if matches!(
        c.spec.provider,
        proto::spec::Provider::Gcp { .. } | proto::spec::Provider::Azure { .. }
    ) {
        return Err(crate::providers::request_only(&c.spec));
    }
    if a.dry_run {
        return dry_run(&c.spec);
    }
    let memory_warnings = machine_checks(&c)?;
    if resume_job.is_some() && c.spec.checkpoint.dir.is_none() {
        return Err(LaunchError::Config(vec![proto::SpecIssue::new(
            "checkpoint.dir",
            "--resume needs a job with a checkpoint dir; this run kept no checkpoints",
        )]));
    }
    let resolved = load::resolve(&c)?;
    let bin = worker_bin(a.worker_bin.as_deref())?;
    let node_rank = crate::node_rank::resolve(&node_rank_flags(a), &c.spec)?;
    if let Some(nr) = node_rank.as_ref().filter(|nr| nr.node_rank > 0) {
        return run_node_agent(&c, nr, &bin, a);
    }
    if let (true, Some(k)) = (crate::kube::multi_node(&c.spec), crate::kube::pod_index()) {
        if k > 0 {
            return run_kube_agent(&c, k, &bin, a);
        }
    }
    let machines = crate::providers::machines(&c.spec)?;
    let (hosts, spares, alloc) = (machines.hosts, machines.spares, machines.allocation);
    let mut p = plan::plan(
        &c,
        cores(),
        resolved.gpus,
        resolved.device_ids.as_deref(),
        resolved.nccl,
        hosts.as_deref(),
    );
    p.spare_hosts = spares;
    p.warnings.extend(resolved.notes.iter().cloned());
    // The checkpoint folder: writable, room for the checkpoints kept, and
    // what it holds (skipped checkpoints, another training's, a job that
    // is already done). Warnings, unlike notes, go on the console as such.
    let mut warnings = memory_warnings;
    let r = &c.spec.resources;
    // Nodes other than this one are relayed by their agents (their ranks'
    // connections ride on the agent's one) when this run leads agents.
    let agents = node_rank.is_some() || crate::providers::nodes_have_agents(&c.spec);
    warnings.extend(crate::process::raise_fd_limit(
        r.nodes,
        r.devices_per_node,
        agents,
    ));
    warnings.extend(preflight::checkpoint_dir(&c.spec)?);
    let resume = preflight::resume_point(&c.spec)?;
    warnings.extend(resume.warnings.iter().cloned());
    if !a.quiet {
        for w in &p.warnings {
            eprintln!("note: {w}");
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    p.warnings.extend(warnings);
    if let (true, Some(step)) = (resume.complete, resume.step) {
        let dir = c.spec.checkpoint.dir.as_deref().unwrap_or_default();
        if a.json {
            println!(
                "{}",
                json!({"status": "already-complete", "step": step, "checkpoint_dir": dir, "exit_code": 0})
            );
        }
        eprintln!(
            "[ringmaster] {}: already complete at step {step} (checkpoint.dir {dir}), nothing to do; use a new checkpoint.dir, or raise workload.steps, to train again",
            c.spec.name
        );
        return Ok(LauncherExit::Success);
    }
    let console = Console::new(a.quiet);
    let opts = RunOptions {
        worker_bin: bin,
        // A command job shows its program's output, rank-prefixed, as
        // torchrun does (--quiet turns it off); other jobs with --tee.
        tee: a.tee || (matches!(c.spec.workload, proto::spec::Workload::Command(_)) && !a.quiet),
        quiet: a.quiet,
        run_id: a.run_id.clone(),
        gpu_libs: resolved.libs.clone(),
        node_rank,
    };
    let rt = runtime()?;
    let requeues = crate::providers::requeues(&c.spec);
    let report = rt.block_on(async {
        let sup = Supervisor::new(c, p, opts, console.clone())?;
        sup.run().await
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        println!("{}", report::human(&report));
    }
    if let (LauncherExit::Preempted, Some(alloc), true) = (
        LauncherExit::from_code(report.exit_code).unwrap_or(LauncherExit::Internal),
        &alloc,
        requeues,
    ) {
        // Stopped at a committed checkpoint (a time-limit warning, a
        // preemption): back in the queue; the next run resumes.
        match crate::slurm::requeue(&alloc.job_id) {
            Ok(()) => eprintln!("[ringmaster] Slurm job {} requeued; it resumes from the checkpoint", alloc.job_id),
            // Slurm's own preemption or `scontrol requeue` got there first.
            Err(e) if e.contains("pending") => eprintln!("[ringmaster] Slurm job {} is already back in the queue; it resumes from the checkpoint", alloc.job_id),
            Err(e) => eprintln!("[ringmaster] could not requeue: {e}"),
        }
    }
    Ok(match report.exit_code {
        0 => LauncherExit::Success,
        c => LauncherExit::from_code(c).unwrap_or(LauncherExit::Internal),
    })
}

/// Pod `k` > 0 of a multi-node Kubernetes job: the node agent.
pub(super) fn run_kube_agent(
    c: &proto::spec::Compiled,
    k: u32,
    bin: &std::path::Path,
    a: &RunArgs,
) -> Result<LauncherExit, LaunchError> {
    use proto::contract::WorkerContract;
    let token = WorkerContract::token_from(|k| std::env::var(k).ok()).ok_or_else(|| {
        LaunchError::Unsupported(format!(
            "pod {k} of a multi-node kubernetes job needs {} (the job's Secret)",
            WorkerContract::token_variable()
        ))
    })?;
    let leader = std::env::var("RINGMASTER_KUBE_LEADER").unwrap_or_else(|_| {
        format!(
            "{}:{}",
            crate::kube::pod_host(&c.spec, 0),
            crate::kube::rdzv_port()
        )
    });
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| format!("agent-{k}"));
    let log_dir = std::path::Path::new(&c.spec.log_dir).join(a.run_id.as_deref().unwrap_or(&pod));
    serve_as_agent(crate::agent::AgentOptions {
        leader: &leader,
        token: &token,
        node: k,
        addr: None,
        worker_bin: bin,
        log_dir: &log_dir,
        wait: std::time::Duration::from_secs_f64(c.spec.recovery.rendezvous_timeout_s),
        until_stdin_closes: false,
        remove_logs: false,
    })
}

/// The launcher's runtime: two worker threads (the run's loop, the
/// rendezvous's connections).
fn runtime() -> Result<tokio::runtime::Runtime, LaunchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LaunchError::Internal(format!("cannot start the runtime: {e}")))
}

/// This process as node `node`'s agent (a pod, an instance, a node of a
/// node-rank run) until the leader ends the run: the run's exit code.
fn serve_as_agent(o: crate::agent::AgentOptions) -> Result<LauncherExit, LaunchError> {
    let code = runtime()?.block_on(crate::agent::run_agent(o))?;
    Ok(LauncherExit::from_code(code).unwrap_or(LauncherExit::Internal))
}

/// `run`'s node-rank flags as given (the token file read here).
fn node_rank_flags(a: &RunArgs) -> crate::node_rank::Flags {
    use proto::contract::WorkerContract;
    crate::node_rank::Flags {
        node_rank: a.node_rank,
        rdzv_endpoint: a.rdzv_endpoint.clone(),
        token_file: a.token_file.as_ref().map(|f| {
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))
        }),
        env_token: WorkerContract::token_from(|k| std::env::var(k).ok()),
        node_addr: a.node_addr.clone(),
    }
}

/// `run --node-rank K` with K > 0: this node's agent, joining node 0's
/// rendezvous (retrying until the rendezvous timeout: the nodes start in
/// any order).
fn run_node_agent(
    c: &proto::spec::Compiled,
    nr: &crate::node_rank::NodeRank,
    bin: &std::path::Path,
    a: &RunArgs,
) -> Result<LauncherExit, LaunchError> {
    // Beside the leader's run folder, never inside it (a shared log_dir).
    let log_dir = std::path::Path::new(&c.spec.log_dir).join(format!(
        "{}-node-{}",
        a.run_id.as_deref().unwrap_or(&c.spec.name),
        nr.node_rank
    ));
    serve_as_agent(crate::agent::AgentOptions {
        leader: &nr.endpoint(),
        token: &nr.token,
        node: nr.node_rank,
        addr: nr.node_addr.clone(),
        worker_bin: bin,
        log_dir: &log_dir,
        wait: std::time::Duration::from_secs_f64(c.spec.recovery.rendezvous_timeout_s),
        until_stdin_closes: false,
        remove_logs: false,
    })
}

pub(super) struct AgentArgs<'a> {
    pub leader: &'a str,
    pub node: u32,
    pub token_file: Option<&'a std::path::Path>,
    pub addr: Option<String>,
    pub log_dir: &'a std::path::Path,
    pub wait: f64,
    pub worker_bin: Option<&'a std::path::Path>,
    pub token_stdin: bool,
    pub until_stdin_closes: bool,
    pub remove_logs: bool,
}

/// `ringmaster agent`: this machine is node `node` of a run led elsewhere.
pub(super) fn cmd_agent(a: AgentArgs) -> Result<LauncherExit, LaunchError> {
    use proto::contract::WorkerContract;
    let token = match a.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(LaunchError::system(format!("cannot read {}", f.display())))?
            .trim()
            .to_string(),
        None if a.token_stdin => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(LaunchError::system(
                    "cannot read the token from standard input".to_string(),
                ))?;
            let t = line.trim().to_string();
            if t.is_empty() {
                return Err(LaunchError::Unsupported(
                    "--token-stdin: standard input had no token line".into(),
                ));
            }
            t
        }
        None => WorkerContract::token_from(|k| std::env::var(k).ok()).ok_or_else(|| {
            LaunchError::Unsupported(format!(
                "ringmaster agent needs --token-file, --token-stdin or {}",
                WorkerContract::token_variable()
            ))
        })?,
    };
    if !(a.wait.is_finite() && a.wait >= 0.0) {
        return Err(LaunchError::Unsupported(format!(
            "--wait must be seconds >= 0, got {}",
            a.wait
        )));
    }
    let bin = super::worker_bin(a.worker_bin)?;
    serve_as_agent(crate::agent::AgentOptions {
        leader: a.leader,
        token: &token,
        node: a.node,
        addr: a.addr,
        worker_bin: &bin,
        log_dir: a.log_dir,
        wait: std::time::Duration::from_secs_f64(a.wait),
        until_stdin_closes: a.until_stdin_closes,
        remove_logs: a.remove_logs,
    })
}

/// `run --dry-run`: the cloud's requests with its dry-run flag.
fn dry_run(spec: &proto::spec::JobSpec) -> Result<LauncherExit, LaunchError> {
    if !matches!(spec.provider, proto::spec::Provider::Aws { .. }) {
        return Err(LaunchError::Unsupported(format!(
            "--dry-run asks a cloud for machines with its dry-run flag: provider.kind aws only, this job's is {} (`ringmaster plan` shows what it would do)",
            spec.provider.kind()
        )));
    }
    let mut ok = true;
    for (what, outcome) in crate::aws::dry_run(spec)? {
        match outcome {
            Ok(()) => println!("{what}: would succeed (DryRunOperation)"),
            Err(e) => {
                ok = false;
                println!("{what}: {e}");
            }
        }
    }
    Ok(if ok {
        LauncherExit::Success
    } else {
        LauncherExit::CloudError
    })
}
