//! Slurm: the allocation a run finds itself in (from Slurm's environment,
//! host list expanded natively), the provider that starts each worker as a
//! one-task job step on its node (`srun`), requeueing after a checkpointed
//! stop, and the batch script `ringmaster submit --scheduler slurm` writes.

pub mod hostlist;
pub mod submit;

use crate::provider::Provider;
use std::net::ToSocketAddrs;
use std::path::Path;

/// The Slurm job this launcher runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub job_id: String,
    /// SLURM_JOB_NODELIST, expanded.
    pub nodes: Vec<String>,
    /// SLURM_RESTART_COUNT: how often the job was requeued.
    pub restart_count: u32,
}

impl Allocation {
    /// From Slurm's environment (`get`: a variable's value), or why not.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Allocation, String> {
        let job_id =
            get("SLURM_JOB_ID").ok_or("not inside a Slurm allocation (SLURM_JOB_ID is not set)")?;
        let list = get("SLURM_JOB_NODELIST")
            .or_else(|| get("SLURM_NODELIST"))
            .ok_or("SLURM_JOB_NODELIST is not set")?;
        let nodes = hostlist::expand(&list).map_err(|e| format!("SLURM_JOB_NODELIST: {e}"))?;
        let restart_count = get("SLURM_RESTART_COUNT")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Allocation {
            job_id,
            nodes,
            restart_count,
        })
    }

    pub fn from_env() -> Result<Allocation, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

/// A node's address: its name resolved to IPv4; a name that does not
/// resolve (the nodes of a one-machine test cluster) is this machine.
pub fn node_addr(name: &str) -> String {
    (name, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|a| a.is_ipv4()))
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// Put a checkpointed job back in the queue (`scontrol requeue`); its next
/// run resumes from the checkpoint.
pub fn requeue(job_id: &str) -> Result<(), String> {
    let out = std::process::Command::new("scontrol")
        .args(["requeue", job_id])
        .output()
        .map_err(|e| format!("cannot run scontrol: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scontrol requeue {job_id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Workers as job steps of the allocation, one task each, on their node.
pub struct SlurmProvider {
    /// Node names in node-rank order.
    nodes: Vec<String>,
}

impl SlurmProvider {
    /// `nodes`: the allocation's node names, in node-rank order.
    pub fn new(nodes: Vec<String>) -> SlurmProvider {
        SlurmProvider { nodes }
    }
}

impl Provider for SlurmProvider {
    fn kind(&self) -> &'static str {
        "slurm"
    }
    fn signals_workers(&self) -> bool {
        true
    }
    fn spawn_worker(
        &self,
        node: u32,
        bin: &Path,
        c: &proto::contract::WorkerContract,
        env: &[(String, String)],
        log: &Path,
        tee: Option<(u32, crate::progress::Console)>,
    ) -> std::io::Result<crate::provider::Spawned> {
        let gpu = c.accelerator == proto::contract::Accelerator::Cuda;
        let args = step(&self.nodes[node as usize], bin, c.rank, gpu);
        crate::process::spawn_command(std::ffi::OsStr::new("srun"), &args, env, log, tee)
            .map(crate::provider::Spawned::Local)
    }
    /// A GPU worker's step gets its GPU from Slurm (`--gres=gpu:1`), which
    /// sets CUDA_VISIBLE_DEVICES for it: the launcher's is left out.
    fn worker_contract(
        &self,
        _node: u32,
        _local_rank: u32,
        c: &mut proto::contract::WorkerContract,
    ) {
        c.cuda_visible_devices = None;
    }
}

/// One worker as a job step: srun's arguments. srun carries its
/// environment to the task (--export=ALL), so the env contract travels as
/// it is; the step gets one task and one CPU of its node (--exact), ends
/// with its task, and passes SIGTERM/SIGKILL on. A GPU worker's step asks
/// for one GPU (--gres=gpu:1).
fn step(node: &str, bin: &Path, rank: u32, gpu: bool) -> Vec<std::ffi::OsString> {
    let mut args: Vec<String> = vec![
        "--nodes=1".into(),
        "--ntasks=1".into(),
        "--exact".into(),
        "--export=ALL".into(),
        "--kill-on-bad-exit=1".into(),
        "--quiet".into(),
        format!("--nodelist={node}"),
        format!("--job-name=ringmaster-rank-{rank}"),
    ];
    if gpu {
        args.push("--gres=gpu:1".into());
    }
    args.into_iter()
        .map(std::ffi::OsString::from)
        .chain([bin.as_os_str().to_owned()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocation_comes_from_slurms_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let a = Allocation::from_vars(vars(&[
            ("SLURM_JOB_ID", "42"),
            ("SLURM_JOB_NODELIST", "gpu[01-02],cpu5"),
            ("SLURM_RESTART_COUNT", "2"),
        ]))
        .unwrap();
        assert_eq!(
            a,
            Allocation {
                job_id: "42".into(),
                nodes: vec!["gpu01".into(), "gpu02".into(), "cpu5".into()],
                restart_count: 2
            }
        );
        assert!(Allocation::from_vars(vars(&[]))
            .unwrap_err()
            .contains("SLURM_JOB_ID is not set"));
        assert!(Allocation::from_vars(vars(&[
            ("SLURM_JOB_ID", "1"),
            ("SLURM_JOB_NODELIST", "n[2-1]")
        ]))
        .unwrap_err()
        .contains("SLURM_JOB_NODELIST: \"n[2-1]\": range \"2-1\" runs backwards"));
        assert_eq!(node_addr("localhost"), "127.0.0.1");
        // A CPU worker's step, and a GPU worker's: one GPU from Slurm.
        let args: Vec<String> = step("n2", Path::new("/bin/w"), 3, false)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--nodelist=n2".to_string()) && args.last().unwrap() == "/bin/w");
        assert!(args.contains(&"--job-name=ringmaster-rank-3".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--gres")));
        let args = step("n2", Path::new("/bin/w"), 3, true);
        assert!(args.iter().any(|a| a == "--gres=gpu:1"));
        assert_eq!(node_addr("no-such-host.invalid"), "127.0.0.1");
    }
}
