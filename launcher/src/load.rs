//! Turns a job file (or the embedded quickstart), CLI overrides and `--set`
//! assignments into a compiled spec. Nothing starts unless this succeeds.

use crate::error::LaunchError;
use proto::spec::{self, Compiled};
use serde_json::{json, Value};
use std::path::Path;

/// The quickstart job, built into the binary: `ringmaster run` with no file.
pub const QUICKSTART: &str = include_str!("../../configs/quickstart.json");

/// Overrides in torchrun's spirit; each maps to one spec field.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct SpecArgs {
    /// Number of nodes (resources.nodes).
    #[arg(long, value_name = "N")]
    pub nnodes: Option<u32>,
    /// Workers per node (resources.devices_per_node).
    #[arg(long, value_name = "M")]
    pub nproc_per_node: Option<u32>,
    /// Restarts after a failure (recovery.max_restarts).
    #[arg(long, value_name = "R")]
    pub max_restarts: Option<u32>,
    /// Directory for run logs (log_dir).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<String>,
    /// Serve Prometheus metrics on this address while the run is alive
    /// (observability.metrics_addr), e.g. 127.0.0.1:9400.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Set any spec field: --set workload.steps=50 (value parsed as JSON, else a string).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

pub fn load(
    job: Option<&Path>,
    args: &SpecArgs,
    command: &[String],
) -> Result<Compiled, LaunchError> {
    let text = match job {
        Some(p) => match std::fs::read(p) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|e| {
                LaunchError::Config(vec![proto::SpecIssue::new(
                    "",
                    format!(
                        "{} is not UTF-8 text (invalid byte at offset {}); a job spec is JSON",
                        p.display(),
                        e.utf8_error().valid_up_to()
                    ),
                )])
            })?,
            Err(e) => {
                return Err(LaunchError::Io(format!(
                    "cannot read job file {}: {e}",
                    p.display()
                )))
            }
        },
        None if !command.is_empty() => {
            json!({"name": "command", "workload": {"kind": "command", "argv": []}}).to_string()
        }
        None => QUICKSTART.to_string(),
    };
    let mut tree = spec::parse_text(&text).map_err(|e| LaunchError::Config(e.issues().to_vec()))?;
    let mut issues = Vec::new();
    let mut set = |tree: &mut Value, path: &str, v: Value| {
        if let Err(i) = spec::set_path(tree, path, v) {
            issues.push(i);
        }
    };
    if !command.is_empty() {
        set(
            &mut tree,
            "workload",
            json!({"kind": "command", "argv": command}),
        );
    }
    if let Some(n) = args.nnodes {
        set(&mut tree, "resources.nodes", json!(n));
    }
    if let Some(n) = args.nproc_per_node {
        set(&mut tree, "resources.devices_per_node", json!(n));
    }
    if let Some(n) = args.max_restarts {
        set(&mut tree, "recovery.max_restarts", json!(n));
    }
    if let Some(d) = &args.log_dir {
        set(&mut tree, "log_dir", json!(d));
    }
    if let Some(a) = &args.metrics_addr {
        set(&mut tree, "observability.metrics_addr", json!(a));
    }
    for a in &args.set {
        if let Err(i) = spec::apply_set(&mut tree, a) {
            issues.push(i);
        }
    }
    if !issues.is_empty() {
        return Err(LaunchError::Config(issues));
    }
    spec::compile(tree).map_err(|e| LaunchError::Config(e.issues().to_vec()))
}

/// Where and how the workers run, as decided from the spec and what this
/// machine has.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// GPUs to use (CUDA), or None for the CPU.
    pub gpus: Option<usize>,
    /// NCCL rather than the TCP ring.
    pub nccl: bool,
    /// NCCL was found and answers (`nccl` may still be false: the job
    /// reduces on the TCP ring).
    pub nccl_found: bool,
    /// The GPU libraries found (GPU jobs): the workers' LD_LIBRARY_PATH is
    /// made from them (`gpu::libs::Located::environment`).
    pub libs: Option<gpu::libs::Located>,
    /// The devices workers are given one each, when ordinals will not do:
    /// the launcher's own CUDA_VISIBLE_DEVICES, else MIG instances' UUIDs.
    pub device_ids: Option<Vec<String>>,
    /// What the user should know (e.g. why `auto` chose the CPU).
    pub notes: Vec<String>,
}

/// Decide CPU or GPU, TCP ring or NCCL. GPU work that this build cannot do
/// (f64 GEMM on a GPU), or that this machine cannot do (no driver, no
/// cuBLAS, no NCCL where NCCL is asked for), is refused before anything
/// starts, naming what is missing; `auto` picks the GPU when it can and
/// says why not otherwise. `train` on GPUs reduces with NCCL when the
/// backend is `nccl`, or `auto` and NCCL is found; otherwise on the TCP
/// ring through host memory.
pub fn resolve(c: &Compiled) -> Result<Resolved, LaunchError> {
    use spec::{Backend, Workload};
    let acc = c.spec.resources.accelerator.to_ascii_lowercase();
    let backend = c.spec.collective.backend;
    let workload = &c.spec.workload;
    if acc == "cpu" {
        if backend == Backend::Nccl {
            return Err(LaunchError::Unsupported(
                "collective.backend: \"nccl\" needs GPUs; set resources.accelerator to \"cuda\" (or a GPU model) or use \"tcp\"".into(),
            ));
        }
        return Ok(Resolved::default());
    }
    let probe = gpu::probe::probe();
    let gpus = probe.require_cublas();
    // Present means it loaded and answered its version (the probe loads a
    // wheel's libnccl.so.2 by path; workers get a libnccl.so link to it).
    let nccl_found = probe.nccl.present;
    // Why the GPU cannot be used for this job, if it cannot.
    let blocker: Option<String> = match (&gpus, workload) {
        (Err(e), _) => Some(format!(
            "this machine has no usable GPU: {e} (see `ringmaster doctor`)"
        )),
        (Ok(_), Workload::Gemm(g)) if g.dtype == spec::Dtype::F64 => {
            Some("f64 GEMM runs only on the CPU".into())
        }
        (Ok(_), Workload::Allreduce(_)) if backend == Backend::Tcp => {
            Some("the all-reduce sweep on GPUs uses NCCL, and collective.backend is \"tcp\"".into())
        }
        (Ok(_), Workload::Allreduce(_)) if !nccl_found => Some(format!(
            "NCCL was not found ({})",
            gpu::libs::Lib::Nccl.install_hint()
        )),
        (Ok(_), _) if backend == Backend::Nccl && !nccl_found => Some(format!(
            "collective.backend is \"nccl\" and NCCL was not found ({})",
            gpu::libs::Lib::Nccl.install_hint()
        )),
        _ => None,
    };
    if acc == "auto" {
        if let Some(why) = blocker {
            if backend == Backend::Nccl {
                return Err(LaunchError::Unsupported(format!(
                    "collective.backend: \"nccl\": {why}"
                )));
            }
            return Ok(Resolved {
                notes: vec![format!("accelerator \"auto\": {why}; running on the CPU")],
                ..Resolved::default()
            });
        }
    } else if let Some(why) = blocker {
        return Err(LaunchError::Unsupported(format!(
            "resources.accelerator: {:?}: {why}",
            c.spec.resources.accelerator
        )));
    }
    let n = gpus.expect("no blocker means a usable GPU");
    let nccl = match workload {
        Workload::Allreduce(_) => true,
        Workload::Train(_) => backend != Backend::Tcp && nccl_found,
        _ => backend == Backend::Nccl && nccl_found,
    };
    // MIG and vGPU: what the set-up can give this job's workers here.
    let attach = gpu::virt::read().unwrap_or_default();
    let here = c.spec.workers_per_machine() as usize;
    gpu::virt::check_job(&attach, here, nccl).map_err(|why| {
        LaunchError::Unsupported(format!(
            "resources.accelerator: {:?}: {why}",
            c.spec.resources.accelerator
        ))
    })?;
    let device_ids = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .or_else(|| gpu::virt::device_ids(&attach));
    let mut notes: Vec<String> = gpu::virt::notes(&attach)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    notes.push(format!(
        "running on {n} GPU(s) with {}",
        match (nccl, workload) {
            (true, _) => "NCCL",
            (false, Workload::Train(_)) => "the TCP ring (gradients through host memory)",
            _ => "no collective",
        }
    ));
    if c.world_size() as usize > n {
        notes.push(format!("{} workers share {n} GPU(s) (NCCL_MULTI_RANK_GPU_ENABLE=1 is set unless the job's env sets it)", c.world_size()));
    }
    Ok(Resolved {
        gpus: Some(n),
        nccl,
        nccl_found,
        libs: Some(gpu::libs::located().clone()),
        device_ids,
        notes,
    })
}
