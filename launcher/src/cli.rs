//! Command line: `run`, `validate`, `plan`, `schema`. Maps every outcome to
//! a documented exit code (proto::exit::LauncherExit).

use crate::capacity;
use crate::error::LaunchError;
use crate::load::{self, SpecArgs};
use crate::plan;
use crate::preflight;
use crate::progress::Console;
use crate::report;
use crate::supervisor::{RunOptions, Supervisor};
use clap::{Parser, Subcommand};
use proto::exit::LauncherExit;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(name = "ringmaster", version, about = "Distributed multi-GPU training launcher", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: `ringmaster run job.json`, or `ringmaster run --nproc-per-node 2 -- python train.py`.
    /// With neither, runs the built-in quickstart (2 nodes x 2 CPU workers).
    Run(RunArgs),
    /// Check a job file; prints every problem with its JSON path.
    Validate(SpecCmd),
    /// Show what would be launched where, without launching.
    Plan(PlanCmd),
    /// Print the JSON Schema of job files (for editors).
    Schema,
    /// GPU software, GPUs, topology and compatibility verdicts on this machine.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Submit a job to a batch scheduler: `ringmaster submit --scheduler
    /// slurm job.json` writes the batch script and submits it.
    Submit(SubmitArgs),
    /// GPU telemetry from NVML.
    Gpus {
        /// nvidia-smi --query-gpu=timestamp,name,utilization.gpu,memory.used --format=csv
        #[arg(long)]
        csv: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct SpecCmd {
    /// Job spec (JSON).
    pub job: PathBuf,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    Slurm,
    Kubernetes,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Job spec (JSON); its provider becomes `slurm` if it is `local`.
    pub job: PathBuf,
    #[arg(long, value_enum)]
    pub scheduler: Scheduler,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Print the batch script; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the job until it ends (requeues included); exit with its code.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 1; the job goes on).
    #[arg(long, value_name = "S", default_value_t = 86400)]
    pub wait_timeout: u64,
    /// Slurm partition (overrides provider.partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm account (overrides provider.account).
    #[arg(long)]
    pub account: Option<String>,
    /// Time limit (overrides provider.time_limit).
    #[arg(long)]
    pub time: Option<String>,
    /// Kubernetes: where to write the manifests.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Kubernetes: the container image (overrides provider.image).
    #[arg(long)]
    pub image: Option<String>,
    /// Kubernetes: `kubectl apply` the manifests.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlanCmd {
    #[command(flatten)]
    pub base: SpecCmd,
    /// Rank shapes (one node of 8 GPUs or two of 4, one big GPU or several
    /// smaller) by modelled cost per training step.
    #[arg(long)]
    pub compare: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Job spec (JSON). Optional when a command follows `--`.
    #[arg(conflicts_with = "resume")]
    pub job: Option<PathBuf>,
    /// Continue an earlier run (its directory, e.g. runs/<run-id>): the same
    /// job, resuming from its newest valid checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Mirror every worker's output on stdout, prefixed with its rank.
    #[arg(long)]
    pub tee: bool,
    /// No progress display or notes (errors and --tee output still print).
    #[arg(long, short)]
    pub quiet: bool,
    /// Print report.json on stdout at the end instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// The worker binary (default: ringmaster-worker beside this binary).
    #[arg(long, value_name = "PATH", env = "RINGMASTER_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Name of the run directory (default: <name>-<time>-<random>).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// A program to run on every worker under the env contract (the `command` workload).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn worker_bin(explicit: Option<&Path>) -> Result<PathBuf, LaunchError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let me = std::env::current_exe()
                .map_err(|e| LaunchError::Io(format!("cannot find my own path: {e}")))?;
            me.with_file_name("ringmaster-worker")
        }
    };
    if !path.is_file() {
        return Err(LaunchError::Io(format!(
            "worker binary not found at {}; build it (`cargo build --release`) or pass --worker-bin",
            path.display()
        )));
    }
    Ok(path)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn print_warnings(c: &proto::spec::Compiled) {
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
}

/// What the spec asks of this machine that it cannot give (a `train`
/// model too big for its memory: a spec problem, exit 3, as validate says),
/// or warnings when it is close.
fn machine_checks(c: &proto::spec::Compiled) -> Result<Vec<String>, LaunchError> {
    match preflight::memory_fit(&c.spec).map(|m| preflight::check_memory(&m)) {
        Some(Err(e)) => Err(LaunchError::Config(vec![proto::SpecIssue::new(
            "workload", e,
        )])),
        Some(Ok(Some(w))) => Ok(vec![format!("workload: {w}")]),
        _ => Ok(vec![]),
    }
}

fn cmd_validate(a: &SpecCmd) -> Result<LauncherExit, LaunchError> {
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
            if a.json {
                println!(
                    "{}",
                    json!({"valid": true, "world_size": c.world_size(), "warnings": c.warnings})
                );
            } else {
                print_warnings(&c);
                println!(
                    "{}: valid ({} workers, {} workload)",
                    a.job.display(),
                    c.world_size(),
                    c.spec.workload.kind()
                );
            }
            Ok(LauncherExit::Success)
        }
        Err(LaunchError::Config(issues)) if a.json => {
            println!("{}", json!({"valid": false, "errors": issues}));
            Ok(LauncherExit::ConfigInvalid)
        }
        Err(e) => Err(e),
    }
}

fn cmd_plan(p: &PlanCmd) -> Result<LauncherExit, LaunchError> {
    let a = &p.base;
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
    let ranking = c
        .spec
        .capacity
        .as_ref()
        .map(|cap| plan_capacity(&c, cap))
        .transpose()?;
    if a.json {
        let mut v = serde_json::to_value(&p).expect("plan serialises");
        v["runnable"] = json!(supported.is_ok());
        v["unsupported"] = json!(supported.as_ref().err().map(|e| e.to_string()));
        v["capacity"] = json!(ranking);
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
    let remote = matches!(
        c.spec.provider,
        proto::spec::Provider::Slurm { .. } | proto::spec::Provider::Ssh { .. }
    );
    let host = if remote {
        format!("{} (bound to every address, a free port)", p.master_addr)
    } else {
        "127.0.0.1 (a free port)".to_string()
    };
    println!(
        "rendezvous: hosted by the launcher on {host}; MASTER_ADDR={} with a free MASTER_PORT per attempt",
        p.master_addr
    );
    println!(
        "{:>6} {:>6} {:>6}  {:<12} {:<10} {}",
        "rank", "node", "local", "host", "node addr", "log"
    );
    for w in &p.workers {
        println!(
            "{:>6} {:>6} {:>6}  {:<12} {:<10} {}/<run-id>/attempt-<n>/rank-{}.log",
            w.rank,
            w.node_rank,
            w.local_rank,
            p.nodes[w.node_rank as usize].name,
            w.node_addr,
            c.spec.log_dir,
            w.rank
        );
    }
    println!(
        "restarts allowed: {}; heartbeat every {} s, lost after {} s; {}",
        c.spec.recovery.max_restarts,
        c.spec.recovery.heartbeat_interval_s,
        c.spec.recovery.heartbeat_timeout_s,
        match plan::hang_detection(&c.spec) {
            Ok(s) => format!("hang after {s} s"),
            Err(_) => "hang detection off (a `command` program reports no steps)".into(),
        }
    );
    if let Some(m) = preflight::memory_fit(&c.spec) {
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
    let pf = &c.spec.preflight;
    if pf.enabled.unwrap_or(gpus.is_some()) {
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
    if let Err(e) = supported {
        println!("NOT RUNNABLE in this build: {e}");
    }
    if let Some(r) = &ranking {
        print!("\n{}", capacity::human(r));
    }
    Ok(LauncherExit::Success)
}

/// `plan --compare`: shapes by modelled cost per step.
fn cmd_compare(c: &proto::spec::Compiled, json_out: bool) -> Result<LauncherExit, LaunchError> {
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
                6.0 * t.param_count() as f64 * (t.batch_per_rank as f64 * world) / 1e12
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

fn load_catalog(cap: &proto::spec::Capacity) -> Result<capacity::Catalog, LaunchError> {
    match &cap.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LaunchError::Io(format!("capacity.catalog {path}: {e}")))?;
            capacity::parse_catalog(&text, path)
        }
        None => capacity::parse_catalog(capacity::BUILT_IN, "built-in catalog"),
    }
    .map_err(|e| LaunchError::Config(vec![proto::SpecIssue::new("capacity.catalog", e)]))
}

/// Rank the catalog's offers for a job with a `capacity` section.
fn plan_capacity(
    c: &proto::spec::Compiled,
    cap: &proto::spec::Capacity,
) -> Result<capacity::Ranking, LaunchError> {
    let catalog = load_catalog(cap)?;
    let r = &c.spec.resources;
    let req = capacity::Request::new(r.nodes, r.devices_per_node, &r.accelerator, cap);
    capacity::rank(&catalog, &req).map_err(LaunchError::Unsupported)
}

fn cmd_run(a: &RunArgs) -> Result<LauncherExit, LaunchError> {
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
    let memory_warnings = machine_checks(&c)?;
    if resume_job.is_some() && c.spec.checkpoint.dir.is_none() {
        return Err(LaunchError::Config(vec![proto::SpecIssue::new(
            "checkpoint.dir",
            "--resume needs a job with a checkpoint dir; this run kept no checkpoints",
        )]));
    }
    let resolved = load::resolve(&c)?;
    let bin = worker_bin(a.worker_bin.as_deref())?;
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
        tee: a.tee,
        quiet: a.quiet,
        run_id: a.run_id.clone(),
        gpu_libs: resolved.libs.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LaunchError::Internal(format!("cannot start the runtime: {e}")))?;
    let report_provider = c.spec.provider.clone();
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
    if let (
        LauncherExit::Preempted,
        Some(alloc),
        proto::spec::Provider::Slurm { requeue: true, .. },
    ) = (
        LauncherExit::from_code(report.exit_code).unwrap_or(LauncherExit::Internal),
        &alloc,
        &report_provider,
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

/// Whether a job names a GPU accelerator (a scheduler must allocate GPUs;
/// `auto` asks for none).
fn asks_for_gpus(spec: &proto::spec::JobSpec) -> bool {
    let acc = &spec.resources.accelerator;
    !proto::spec::is_cpu_accelerator(acc) && !acc.eq_ignore_ascii_case("auto")
}

/// `submit --scheduler kubernetes`: the manifests into --out, applied with
/// --apply.
fn cmd_submit_kube(a: &SubmitArgs) -> Result<LauncherExit, LaunchError> {
    use proto::spec::Provider;
    let mut c = load::load(Some(&a.job), &a.spec, &[])?;
    let issue = |f: &str, m: String| LaunchError::Config(vec![proto::SpecIssue::new(f, m)]);
    match &mut c.spec.provider {
        Provider::Kubernetes { image, .. } => {
            if let Some(i) = &a.image {
                image.clone_from(i);
            }
        }
        Provider::Local { .. } => {
            let image = a.image.clone().ok_or_else(|| {
                issue("provider.image", "a kubernetes job needs an image: set provider.image or pass --image".into())
            })?;
            c.spec.provider = Provider::Kubernetes {
                image,
                namespace: None,
                checkpoint_pvc: None,
                backoff_limit: None,
            };
        }
        other => {
            return Err(issue(
                "provider.kind",
                format!("a {} job cannot be submitted to Kubernetes; use kind \"kubernetes\" (or \"local\")", other.kind()),
            ))
        }
    }
    let c = proto::spec::compile(serde_json::to_value(&c.spec).expect("spec serialises"))
        .map_err(|e| LaunchError::Config(e.issues().to_vec()))?;
    let out = a.out.as_ref().ok_or_else(|| {
        LaunchError::Unsupported(
            "submit --scheduler kubernetes needs --out DIR for the manifests".into(),
        )
    })?;
    let gpus = asks_for_gpus(&c.spec);
    std::fs::create_dir_all(out)
        .map_err(|e| LaunchError::Io(format!("cannot create {}: {e}", out.display())))?;
    // The token the pods present to pod 0's rendezvous, in the job's Secret.
    let token = crate::rendezvous::random_token();
    for (file, m) in crate::kube::manifests(&c.spec, gpus, &token) {
        let p = out.join(file);
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&m).expect("manifest serialises"),
        )
        .map_err(|e| LaunchError::Io(format!("cannot write {}: {e}", p.display())))?;
        println!("{}", p.display());
    }
    if a.apply {
        let r = std::process::Command::new("kubectl")
            .args(["apply", "-f"])
            .arg(out)
            .status()
            .map_err(|e| LaunchError::Unsupported(format!("--apply: cannot run kubectl: {e}")))?;
        if !r.success() {
            return Err(LaunchError::Unsupported(format!(
                "kubectl apply -f {} failed ({r})",
                out.display()
            )));
        }
    }
    Ok(LauncherExit::Success)
}

fn cmd_submit(a: &SubmitArgs) -> Result<LauncherExit, LaunchError> {
    use proto::spec::Provider;
    if a.scheduler == Scheduler::Kubernetes {
        return cmd_submit_kube(a);
    }
    let mut c = load::load(Some(&a.job), &a.spec, &[])?;
    let spec = &mut c.spec;
    match &spec.provider {
        Provider::Slurm { .. } => {}
        Provider::Local { .. } => {
            spec.provider = Provider::Slurm {
                partition: None,
                account: None,
                time_limit: None,
                signal_grace_s: None,
                requeue: true,
                sbatch_args: Vec::new(),
                rendezvous_host: None,
            }
        }
        other => {
            return Err(LaunchError::Config(vec![proto::SpecIssue::new(
                "provider.kind",
                format!(
                    "a {} job cannot be submitted to Slurm; use kind \"slurm\" (or \"local\")",
                    other.kind()
                ),
            )]))
        }
    }
    if let Provider::Slurm {
        partition,
        account,
        time_limit,
        ..
    } = &mut spec.provider
    {
        if a.partition.is_some() {
            partition.clone_from(&a.partition);
        }
        if a.account.is_some() {
            account.clone_from(&a.account);
        }
        if a.time.is_some() {
            time_limit.clone_from(&a.time);
        }
    }
    // Check the result as `run` will inside the allocation.
    let c = proto::spec::compile(serde_json::to_value(&c.spec).expect("spec serialises"))
        .map_err(|e| LaunchError::Config(e.issues().to_vec()))?;
    let gpus = asks_for_gpus(&c.spec);
    // The script, the job file, Slurm's output and the run folders go to
    // the job's log_dir (--log-dir).
    let log_dir = std::path::PathBuf::from(&c.spec.log_dir);
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| LaunchError::Io(format!("cannot create {}: {e}", log_dir.display())))?;
    let log_dir = std::fs::canonicalize(&log_dir)
        .map_err(|e| LaunchError::Io(format!("{}: {e}", log_dir.display())))?;
    let stem: String = c
        .spec
        .name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    let job_path = log_dir.join(format!("{stem}.slurm-job.json"));
    let script_path = log_dir.join(format!("{stem}.sbatch"));
    let me = std::env::current_exe()
        .map_err(|e| LaunchError::Io(format!("cannot find my own path: {e}")))?;
    let script = crate::slurm::submit::script(
        &c.spec,
        gpus,
        &crate::slurm::submit::ScriptArgs {
            ringmaster: &me,
            job: &job_path,
            log_dir: &log_dir,
        },
    );
    if a.dry_run {
        print!("{script}");
        return Ok(LauncherExit::Success);
    }
    let write = |p: &std::path::Path, s: &str| {
        std::fs::write(p, s)
            .map_err(|e| LaunchError::Io(format!("cannot write {}: {e}", p.display())))
    };
    write(
        &job_path,
        &serde_json::to_string_pretty(&c.spec).expect("spec serialises"),
    )?;
    write(&script_path, &script)?;
    let out = std::process::Command::new("sbatch")
        .arg("--parsable")
        .arg(&script_path)
        .output()
        .map_err(|e| {
            LaunchError::Unsupported(format!("cannot run sbatch (is Slurm installed?): {e}"))
        })?;
    if !out.status.success() {
        return Err(LaunchError::Unsupported(format!(
            "sbatch refused {}: {}",
            script_path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let job_id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    println!("{job_id}");
    eprintln!(
        "[ringmaster] submitted Slurm job {job_id} ({}); output in {}",
        script_path.display(),
        log_dir.join(format!("slurm-{job_id}.out")).display()
    );
    if !a.wait {
        return Ok(LauncherExit::Success);
    }
    crate::slurm::submit::wait(
        &job_id,
        &log_dir,
        std::time::Duration::from_secs(a.wait_timeout),
    )
}

/// Pod `k` > 0 of a multi-node Kubernetes job: the node agent.
fn run_kube_agent(
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LaunchError::Internal(format!("cannot start the runtime: {e}")))?;
    let code = rt.block_on(crate::kube::run_agent(
        &leader,
        &token,
        k,
        bin,
        &log_dir,
        std::time::Duration::from_secs_f64(c.spec.recovery.rendezvous_timeout_s),
    ))?;
    Ok(LauncherExit::from_code(code).unwrap_or(LauncherExit::Internal))
}

fn cmd_gpus(csv: bool, json: bool) -> Result<LauncherExit, LaunchError> {
    let gpus = gpu::telemetry::sample().map_err(|e| LaunchError::Unsupported(format!("{e}")))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&gpus).expect("samples serialise")
        );
    } else if csv {
        let now = std::time::SystemTime::now();
        println!("{}", gpu::telemetry::CSV_HEADER);
        for g in &gpus {
            println!("{}", gpu::telemetry::csv_row(now, g));
        }
    } else {
        for g in &gpus {
            println!("{}", g.summary());
        }
    }
    Ok(LauncherExit::Success)
}

pub fn main() -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGMASTER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                LauncherExit::Usage.code()
            } else {
                LauncherExit::Success.code()
            };
        }
    };
    if !matches!(cli.command, Command::Run(_) | Command::Submit(_)) {
        // Commands that only print: a closed pipe (`plan job.json | head -1`)
        // ends them quietly as it ends other CLIs, by SIGPIPE. `run` and
        // `submit` keep ignoring it: they write to sockets and children.
        // SAFETY: signal(2) with SIG_DFL before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match &cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Validate(a) => cmd_validate(a),
        Command::Plan(a) => cmd_plan(a),
        Command::Doctor { json } => {
            let mut r = gpu::doctor::run(std::path::Path::new("/sys/class/infiniband"));
            // Ask a worker what it can load under a run's environment:
            // found is not enough, the workers must load it.
            match worker_bin(None) {
                Ok(bin) => match crate::gpu_env::worker_check(&bin, &r.located) {
                    Ok(checks) => {
                        r.verdicts
                            .extend(gpu::doctor::worker_verdicts(&r.located, &checks));
                        r.worker_libs = Some(checks);
                    }
                    Err(e) => r.verdicts.push(gpu::doctor::Verdict {
                        level: gpu::doctor::Level::Warn,
                        what: format!("could not ask a worker what it loads: {e}"),
                        fix: None,
                    }),
                },
                Err(e) => r.verdicts.push(gpu::doctor::Verdict {
                    level: gpu::doctor::Level::Warn,
                    what: format!("could not ask a worker what it loads: {e}"),
                    fix: None,
                }),
            }
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("doctor report serialises")
                );
            } else {
                println!("{}", gpu::doctor::human(&r));
            }
            Ok(LauncherExit::Success)
        }
        Command::Gpus { csv, json } => cmd_gpus(*csv, *json),
        Command::Submit(a) => cmd_submit(a),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&proto::spec::json_schema())
                    .expect("schema serialises")
            );
            Ok(LauncherExit::Success)
        }
    };
    match result {
        Ok(code) => code.code(),
        Err(e) => {
            eprintln!("ringmaster: error: {e}");
            e.exit().code()
        }
    }
}
