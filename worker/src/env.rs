//! The contract the launcher set for this worker (`proto::contract`, read
//! from the process environment) and the drills' fault hooks, as the
//! worker's modules use them. No module reads the environment itself.

use crate::WorkerError;
use proto::contract::{Accelerator, Faults, Transport, WorkerContract};
use proto::spec::{Checkpoint, Collective, Notices, Workload};

#[derive(Debug, Clone)]
pub struct WorkerEnv {
    pub rank: u32,
    pub local_rank: u32,
    pub world_size: u32,
    pub local_world_size: u32,
    pub node_rank: u32,
    pub run_id: String,
    pub restart_count: u64,
    pub rdzv_endpoint: String,
    pub token: String,
    pub node_addr: String,
    pub workload: Workload,
    pub collective: Collective,
    pub heartbeat_interval_ms: u64,
    pub threads: usize,
    /// Resolved by the launcher: run on the GPU (CUDA) rather than the CPU.
    pub cuda: bool,
    /// Resolved by the launcher: NCCL rather than the TCP ring.
    pub nccl: bool,
    pub checkpoint: Checkpoint,
    /// Notice watchers this worker runs (local rank 0 of each node only).
    pub notices: Option<Notices>,
    /// Fault injection (tests, drills): exit at this step on the first attempt.
    pub fault_at_step: Option<(u64, u32)>,
    /// In how many attempts (from the first) the injected fault fires.
    pub fault_attempts: u64,
    /// The fault is a SIGKILL halfway through a checkpoint write.
    pub fault_mid_checkpoint: bool,
    /// Test hook: this node's preflight figures are reported at a tenth.
    pub fault_preflight_slow_node: Option<u32>,
    /// After a notice's checkpoint, park and wait to rejoin.
    pub keep_survivors: bool,
    /// Take SIGTERM as a preemption notice (`train`).
    pub sigterm_is_notice: bool,
    /// Run the preflight check before joining.
    pub preflight: bool,
    /// Where this worker's error file goes.
    pub attempt_dir: Option<String>,
    /// A command job's program gets this signal on a notice.
    pub program_signal: Option<i32>,
    /// A command job's attempt resumes from this committed checkpoint.
    pub resume: Option<proto::contract::ResumeFrom>,
}

impl WorkerEnv {
    pub fn from_env() -> Result<Self, WorkerError> {
        let get = |k: &str| std::env::var(k).ok();
        let c = WorkerContract::from_env(get).map_err(|e| WorkerError::Env(e.0))?;
        let f = Faults::from_env(get).map_err(|e| WorkerError::Env(e.0))?;
        Ok(Self::from_parts(c, f))
    }

    pub fn from_parts(c: WorkerContract, f: Faults) -> Self {
        WorkerEnv {
            rank: c.rank,
            local_rank: c.local_rank,
            world_size: c.world_size,
            local_world_size: c.local_world_size,
            node_rank: c.node_rank,
            run_id: c.run_id,
            restart_count: c.restart_count,
            rdzv_endpoint: c.rdzv_endpoint,
            token: c.rdzv_token,
            node_addr: c.node_addr,
            workload: c.workload,
            collective: c.collective,
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            threads: c.threads as usize,
            cuda: c.accelerator == Accelerator::Cuda,
            nccl: c.transport == Transport::Nccl,
            checkpoint: c.checkpoint,
            notices: c.notices,
            fault_at_step: f.at_step,
            fault_attempts: f.attempts,
            fault_mid_checkpoint: f.mid_checkpoint,
            fault_preflight_slow_node: f.preflight_slow_node,
            keep_survivors: c.keep_survivors,
            sigterm_is_notice: c.sigterm_is_notice,
            preflight: c.preflight,
            attempt_dir: c.attempt_dir,
            program_signal: c.program_signal,
            resume: c.resume,
        }
    }
}
