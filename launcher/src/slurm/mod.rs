//! Slurm: the allocation a run finds itself in (from Slurm's environment,
//! host list expanded natively), the provider that starts one job step per
//! node (`srun`) running ringmaster's node agent, which starts the node's
//! workers and relays their connections, requeueing after a checkpointed
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

/// What every node's agent step is started with.
pub struct SlurmSettings {
    /// `ringmaster` (the allocation's nodes share this machine's paths).
    pub agent: std::path::PathBuf,
    pub worker: std::path::PathBuf,
    /// The leader's rendezvous as the nodes reach it.
    pub leader: String,
    pub run_id: String,
    /// How long an agent keeps trying to reach the leader.
    pub wait_s: f64,
    /// GPUs a node's step asks for (`--gres=gpu:N`; None: a CPU job).
    pub gpus_per_node: Option<u32>,
}

/// One job step per node of the allocation, each running the node's
/// agent, which starts that node's workers.
pub struct SlurmProvider {
    /// Node names in node-rank order.
    nodes: Vec<String>,
    settings: SlurmSettings,
    sessions: crate::sessions::Sessions,
    rdzv: crate::rendezvous::Rendezvous,
}

impl SlurmProvider {
    /// `nodes`: the allocation's node names, in node-rank order; a step
    /// started on each.
    pub fn new(
        nodes: Vec<String>,
        settings: SlurmSettings,
        rdzv: crate::rendezvous::Rendezvous,
        run_dir: &Path,
    ) -> Result<SlurmProvider, crate::error::LaunchError> {
        let mut p = SlurmProvider {
            sessions: crate::sessions::Sessions::new(nodes.len(), rdzv.clone(), run_dir.into()),
            nodes,
            settings,
            rdzv,
        };
        for node in 0..p.nodes.len() as u32 {
            p.start_step(node)
                .map_err(crate::error::LaunchError::system(format!(
                    "cannot start srun on {}",
                    p.nodes[node as usize]
                )))?;
        }
        Ok(p)
    }

    fn start_step(&mut self, node: u32) -> std::io::Result<()> {
        let mut cmd = std::process::Command::new("srun");
        cmd.args(agent_step(&self.nodes[node as usize], node, &self.settings));
        self.sessions.start(node, cmd)
    }
}

impl Provider for SlurmProvider {
    fn kind(&self) -> &'static str {
        "slurm"
    }
    fn signals_workers(&self) -> bool {
        true
    }
    fn agent_nodes(&self) -> Vec<u32> {
        (0..self.nodes.len() as u32).collect()
    }
    /// A node's step asks Slurm for the node's GPUs (`--gres=gpu:N`),
    /// which sets CUDA_VISIBLE_DEVICES for it: the launcher's is left out,
    /// and the agent gives local rank k the step's k-th GPU.
    fn worker_contract(
        &self,
        _node: u32,
        _local_rank: u32,
        c: &mut proto::contract::WorkerContract,
    ) {
        c.cuda_visible_devices = None;
    }
    /// A node's agent went: a new step once the old one has ended
    /// (now, or while the next launch waits for the agent). Never one
    /// while the old still runs: a loss heard late must not end a new
    /// agent that already came.
    fn agent_lost(&mut self, node: u32) {
        self.ensure_agent(node);
    }
    fn ensure_agent(&mut self, node: u32) {
        if self.sessions.ended(node) {
            // Its agent, if the rendezvous still holds it, is on its way
            // out: no worker is to be sent to it.
            self.rdzv.dismiss_agent(node);
            if let Err(e) = self.start_step(node) {
                eprintln!(
                    "[ringmaster] slurm: cannot start a new step on {}: {e}",
                    self.nodes[node as usize]
                );
            }
        }
    }
    /// The sessions are the launcher's own children, not strays.
    fn processes(&self) -> Vec<u32> {
        self.sessions.processes()
    }
    fn release(&mut self) -> crate::provider::Released {
        self.sessions.release();
        crate::provider::Released::default()
    }
}

/// Node `node`'s agent as a job step: srun's arguments. The step gets one
/// task and, without `--exact`, every CPU the allocation has on the node
/// (its workers share them); a GPU job's step asks for the node's GPUs
/// (`--gres=gpu:N`); it ends with its task and passes SIGTERM/SIGKILL on.
/// srun's standard input reaches the task: the token's line, then open
/// until the launcher (or srun) goes.
fn agent_step(name: &str, node: u32, s: &SlurmSettings) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "--nodes=1".to_string(),
        "--ntasks=1".into(),
        "--export=ALL".into(),
        "--kill-on-bad-exit=1".into(),
        "--quiet".into(),
        format!("--nodelist={name}"),
        format!("--job-name=ringmaster-node-{node}"),
    ]
    .into_iter()
    .chain(s.gpus_per_node.map(|n| format!("--gres=gpu:{n}")))
    .map(std::ffi::OsString::from)
    .collect();
    args.push(s.agent.as_os_str().to_owned());
    let logs = std::env::temp_dir().join(format!("ringmaster-{}-node-{node}", s.run_id));
    for a in [
        "agent".into(),
        "--leader".into(),
        s.leader.clone(),
        "--node".into(),
        node.to_string(),
        "--worker-bin".into(),
        s.worker.display().to_string(),
        "--log-dir".into(),
        logs.display().to_string(),
        "--wait".into(),
        s.wait_s.to_string(),
        "--token-stdin".into(),
        "--until-stdin-closes".into(),
        "--remove-logs".into(),
    ] {
        args.push(std::ffi::OsString::from(a));
    }
    args
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
        // A CPU job's agent step, and a GPU job's: the node's GPUs from
        // Slurm.
        let mut set = SlurmSettings {
            agent: "/opt/rm/ringmaster".into(),
            worker: "/opt/rm/ringmaster-worker".into(),
            leader: "n1:4000".into(),
            run_id: "r".into(),
            wait_s: 60.0,
            gpus_per_node: None,
        };
        let args: Vec<String> = agent_step("n2", 1, &set)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--nodelist=n2".to_string()));
        assert!(args.contains(&"--job-name=ringmaster-node-1".to_string()));
        assert!(!args
            .iter()
            .any(|a| a.starts_with("--gres") || a == "--exact"));
        let agent_at = args.iter().position(|a| a == "/opt/rm/ringmaster").unwrap();
        assert_eq!(
            args[agent_at..].join(" "),
            format!(
                "/opt/rm/ringmaster agent --leader n1:4000 --node 1 --worker-bin /opt/rm/ringmaster-worker --log-dir {} --wait 60 --token-stdin --until-stdin-closes --remove-logs",
                std::env::temp_dir().join("ringmaster-r-node-1").display()
            )
        );
        set.gpus_per_node = Some(8);
        let args = agent_step("n2", 1, &set);
        assert!(args.iter().any(|a| a == "--gres=gpu:8"));
        assert_eq!(node_addr("no-such-host.invalid"), "127.0.0.1");
    }
}
