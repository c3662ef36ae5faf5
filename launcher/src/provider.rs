//! The provider the supervisor talks to: where nodes come from, what their
//! workers need to know, how a worker is started on a node, and a stream of
//! node events (a node preempting with a deadline, a node lost, a
//! replacement ready, a zone's capacity changing). `Local` (this machine's
//! loopback "nodes", never replaced) and `sim::SimNodes` (the spot-market
//! simulator) implement it; ssh, Slurm and Kubernetes are to fit the same
//! shape.

use proto::report::Cost;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// The checkpoint write speed the default grace assumes: about a third of
/// the 0.7 GB/s measured for fsync'd shards on a 2-core VM
/// (docs/benchmarks.md), for slower shared filesystems.
const ASSUMED_WRITE_BYTES_PER_S: f64 = 250e6;

/// How long a scheduler should leave between its warning (Slurm's USR1,
/// Kubernetes' SIGTERM) and the kill: enough to finish a step and write the
/// checkpoint: 30 s plus the training state (weights and momentum, float32)
/// at 250 MB/s, at most 600.
pub fn checkpoint_grace_s(spec: &proto::spec::JobSpec) -> u32 {
    let state_bytes = match &spec.workload {
        proto::spec::Workload::Train(t) => t.param_count() as f64 * 8.0,
        _ => 0.0,
    };
    (30.0 + state_bytes / ASSUMED_WRITE_BYTES_PER_S)
        .ceil()
        .min(600.0) as u32
}

/// A worker just started: a local child process, or one started elsewhere
/// (a node agent: its exit comes back as an agent report).
pub enum Spawned {
    Local(tokio::process::Child),
    /// Started by node agent `agent` (its serial: its loss names it), or
    /// elsewhere (None).
    Remote {
        agent: Option<u64>,
    },
}

/// Something that happened to a node or its market.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// A zone's spot capacity changed (None: unlimited).
    Capacity {
        zone: String,
        spot_capacity: Option<u32>,
    },
    /// The node will be taken at `deadline`; its notice is published where
    /// its workers' watchers look.
    Preempting {
        node: u32,
        deadline: SystemTime,
        /// "scheduled", "random", "capacity", "deadline".
        cause: &'static str,
        zone: String,
    },
    /// The node is gone now: whatever runs on it is to be killed.
    Lost { node: u32 },
    /// A new VM for `node` is up.
    Ready {
        node: u32,
        vm: String,
        zone: String,
        market: &'static str,
    },
    /// The provider wants the group to stop at an agreed step (with a
    /// checkpoint) so it can move these nodes: deadline mode moving off
    /// spot. The nodes are then replaced like lost ones.
    Migrate { nodes: Vec<u32>, reason: String },
    /// A cloud API request for `node`'s machine and how it went.
    Requested {
        node: u32,
        call: &'static str,
        instance_type: String,
        zone: String,
        market: &'static str,
        reservation: Option<String>,
        /// "ok" or the cloud's error code.
        outcome: String,
        machine: Option<String>,
        api_s: f64,
    },
    /// A machine's state as the cloud reported it, when it was seen.
    MachineState {
        node: u32,
        machine: String,
        state: String,
        reason: Option<String>,
        seen: SystemTime,
    },
}

/// How far the run is, for providers that plan with it (deadline mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunProgress {
    /// The slowest rank's step.
    pub step: u64,
    pub total_steps: u64,
    /// Steps per real second in the current attempt (None: not known yet).
    pub steps_per_s: Option<f64>,
}

/// The defaults are a fixed set of nodes that are never lost or replaced,
/// nothing to add to the environment, nothing billed: `Local`, `ssh` and
/// `slurm` keep them; the simulator overrides them all.
pub trait Provider: Send {
    fn kind(&self) -> &'static str;

    /// Whether lost nodes are replaced (a preemption then restarts the
    /// group instead of ending the run).
    fn replaces_nodes(&self) -> bool {
        false
    }

    /// What this provider tells worker `local_rank` of `node` beyond the
    /// plan (its node's address, the notice watcher to run).
    fn worker_contract(
        &self,
        _node: u32,
        _local_rank: u32,
        _c: &mut proto::contract::WorkerContract,
    ) {
    }

    /// Environment outside the contract for worker `local_rank` of `node`
    /// (the cloud SDKs' own variables, e.g. where the metadata service is).
    fn worker_env(&self, _node: u32, _local_rank: u32) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Start one worker process on `node` (its own process group). Not
    /// asked for the `agent_nodes`: the launcher asks their agents.
    fn spawn_worker(
        &self,
        _node: u32,
        bin: &Path,
        _c: &proto::contract::WorkerContract,
        env: &[(String, String)],
        log: &Path,
        tee: Option<(u32, crate::progress::Console)>,
    ) -> std::io::Result<Spawned> {
        crate::process::spawn_worker(bin, env, log, tee).map(Spawned::Local)
    }

    /// Whether the scheduler signals every process of the job (Slurm):
    /// then `train` workers take SIGTERM as a notice rather than dying.
    fn signals_workers(&self) -> bool {
        false
    }

    /// Nodes whose workers a node agent starts (it must be connected
    /// before a launch).
    fn agent_nodes(&self) -> Vec<u32> {
        Vec::new()
    }

    /// Events due at `now`.
    fn poll(&mut self, _now: Instant, _progress: Option<RunProgress>) -> Vec<NodeEvent> {
        Vec::new()
    }

    /// Whether `node` is going away (and is to be replaced).
    fn is_lost(&self, _node: u32) -> bool {
        false
    }

    /// Whether nodes wait for replacements.
    fn has_lost(&self) -> bool {
        false
    }

    /// Take `node` out of service (the preflight check found it slow);
    /// true where it will be replaced like a lost node.
    fn retire(&mut self, _node: u32) -> bool {
        false
    }

    /// New nodes for the lost ones: the `Ready` events, and the nodes still
    /// waiting for capacity (ask again later).
    fn replace_lost(&mut self) -> Result<(Vec<NodeEvent>, Vec<u32>), crate::error::LaunchError> {
        Ok((Vec::new(), Vec::new()))
    }

    /// A worker on `node` saw its cloud's preemption notice: the node is
    /// going (a cloud provider replaces it before the next attempt).
    fn node_notice(&mut self, _node: u32) {}

    /// `node`'s agent disconnected: its machine is gone or broken.
    fn agent_lost(&mut self, _node: u32) {}

    /// A launch waits for `node`'s agent: start it again if what runs it
    /// has ended (an ssh session, a Slurm step), whether or not the
    /// agent's loss was heard yet.
    fn ensure_agent(&mut self, _node: u32) {}

    /// Processes of this machine the provider runs for the run (an ssh
    /// session per host): not strays between attempts.
    fn processes(&self) -> Vec<u32> {
        Vec::new()
    }

    /// How long to wait for node agents to connect (None: the rendezvous
    /// timeout); a cloud's machines take minutes to boot.
    fn agent_wait(&self) -> Option<Duration> {
        None
    }

    /// Give back every machine the run holds (the run is over): the
    /// machines given back, or what could not be and why.
    fn release(&mut self) -> Released {
        Released::default()
    }

    /// From asking for a node to its being up.
    fn provisioning_delay(&self) -> Duration {
        Duration::ZERO
    }

    /// How long to wait for capacity before giving up.
    fn capacity_wait(&self) -> Duration {
        Duration::ZERO
    }

    /// How often an elastic run short of nodes asks for them again while
    /// it runs (each ask is a `replace_lost`: a cloud API call).
    fn capacity_retry(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// The market's clock (simulated seconds), where it has one.
    fn market_time_s(&self) -> Option<f64> {
        None
    }

    /// Every cloud machine the run had, for the report.
    fn machines(&self) -> Vec<proto::report::MachineReport> {
        Vec::new()
    }

    /// The nodes' bill with `useful_s` real seconds of useful work (None:
    /// not billed).
    fn cost(&self, _useful_s: f64) -> Option<Cost> {
        None
    }
}

/// What `release` did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Released {
    pub machines: Vec<String>,
    /// Machines that may still run, and the error (`ringmaster down`
    /// retries).
    pub failed: Option<(Vec<String>, String)>,
}

/// Start a worker, under the launcher's id `worker`, through node
/// `node`'s agent (connected to `rdzv`).
pub fn spawn_by_agent(
    rdzv: &crate::rendezvous::Rendezvous,
    node: u32,
    worker: u32,
    env: &[(String, String)],
) -> std::io::Result<Spawned> {
    let (serial, agent) = rdzv.agent_link(node).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("the agent of node {node} is not connected"),
        )
    })?;
    agent
        .send(proto::wire::Response::Spawn {
            worker,
            env: env.to_vec(),
        })
        .map_err(|_| std::io::Error::other(format!("the agent of node {node} is gone")))?;
    Ok(Spawned::Remote {
        agent: Some(serial),
    })
}

/// This machine: nodes are loopback addresses, never lost or replaced.
pub struct Local;

impl Provider for Local {
    fn kind(&self) -> &'static str {
        "local"
    }
}
