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
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| LaunchError::Io(format!("cannot read job file {}: {e}", p.display())))?,
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

/// What this build can run here. GPU workloads and the NCCL backend arrive
/// with the GPU path; until then GPU accelerators are refused before
/// anything starts, with what is missing on this machine, and `auto` runs on
/// the CPU and says why. Returns notes for the user.
pub fn check_supported(c: &Compiled) -> Result<Vec<String>, LaunchError> {
    let acc = c.spec.resources.accelerator.to_ascii_lowercase();
    let gpu_asked = acc != "cpu" && acc != "auto";
    let nccl_asked = c.spec.collective.backend == spec::Backend::Nccl;
    if !gpu_asked && !nccl_asked && acc == "cpu" {
        return Ok(vec![]);
    }
    let probe = gpu::probe::probe();
    let gpu = probe.require_cublas();
    if gpu_asked || nccl_asked {
        let what = if gpu_asked {
            format!("resources.accelerator: {:?}", c.spec.resources.accelerator)
        } else {
            "collective.backend: \"nccl\"".to_string()
        };
        return Err(LaunchError::Unsupported(match gpu {
            Err(e) => format!("{what} needs a GPU, and this machine has none usable: {e} (see `ringmaster doctor`)"),
            Ok(n) => format!("{what}: this machine has {n} GPU(s), but GPU workloads are not implemented in this build yet; use \"cpu\" or \"auto\""),
        }));
    }
    Ok(vec![match gpu {
        Err(e) => format!("accelerator \"auto\": no usable GPU ({e}); running on the CPU"),
        Ok(n) => format!("accelerator \"auto\": {n} GPU(s) found, but GPU workloads are not implemented in this build yet; running on the CPU"),
    }])
}
