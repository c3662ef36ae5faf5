//! Reads and checks the environment contract the launcher set for this worker.

use crate::WorkerError;
use proto::env as names;
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
    /// RINGMASTER_FAULT_MODE is "kill-mid-checkpoint".
    pub fault_mid_checkpoint: bool,
    /// After a notice's checkpoint, park and wait to rejoin
    /// (RINGMASTER_KEEP_SURVIVORS=1).
    pub keep_survivors: bool,
}

fn var(name: &str) -> Result<String, WorkerError> {
    std::env::var(name).map_err(|_| {
        WorkerError::Env(format!(
            "{name} is not set (start workers with `ringmaster run`)"
        ))
    })
}

fn num<T: std::str::FromStr>(name: &str) -> Result<T, WorkerError> {
    let v = var(name)?;
    v.parse()
        .map_err(|_| WorkerError::Env(format!("{name}={v:?} is not a valid number")))
}

impl WorkerEnv {
    pub fn from_env() -> Result<Self, WorkerError> {
        let workload: Workload = serde_json::from_str(&var(names::WORKLOAD)?).map_err(|e| {
            WorkerError::Env(format!("{} is not a valid workload: {e}", names::WORKLOAD))
        })?;
        let collective: Collective = serde_json::from_str(&var(names::COLLECTIVE)?)
            .map_err(|e| WorkerError::Env(format!("{} is not valid: {e}", names::COLLECTIVE)))?;
        let env = WorkerEnv {
            rank: num(names::RANK)?,
            local_rank: num(names::LOCAL_RANK)?,
            world_size: num(names::WORLD_SIZE)?,
            local_world_size: num(names::LOCAL_WORLD_SIZE)?,
            node_rank: num(names::GROUP_RANK)?,
            run_id: var(names::RUN_ID)?,
            restart_count: num(names::RESTART_COUNT)?,
            rdzv_endpoint: var(names::RDZV_ENDPOINT)?,
            token: var(names::RDZV_TOKEN)?,
            node_addr: var(names::NODE_ADDR)?,
            workload,
            collective,
            heartbeat_interval_ms: num(names::HEARTBEAT_INTERVAL_MS)?,
            checkpoint: match std::env::var(names::CHECKPOINT) {
                Ok(v) => serde_json::from_str(&v).map_err(|e| {
                    WorkerError::Env(format!("{} is not valid: {e}", names::CHECKPOINT))
                })?,
                Err(_) => Checkpoint::default(),
            },
            notices: match std::env::var(names::NOTICES) {
                Ok(v) => Some(serde_json::from_str(&v).map_err(|e| {
                    WorkerError::Env(format!("{} is not valid: {e}", names::NOTICES))
                })?),
                Err(_) => None,
            },
            fault_at_step: match (
                std::env::var(names::FAULT_AT_STEP),
                std::env::var(names::FAULT_RANK),
            ) {
                (Ok(s), Ok(r)) => Some((
                    s.parse().map_err(|_| {
                        WorkerError::Env(format!("{}={s:?} is not a number", names::FAULT_AT_STEP))
                    })?,
                    r.parse().map_err(|_| {
                        WorkerError::Env(format!("{}={r:?} is not a number", names::FAULT_RANK))
                    })?,
                )),
                _ => None,
            },
            fault_mid_checkpoint: match std::env::var(names::FAULT_MODE).as_deref() {
                Err(_) | Ok("exit") => false,
                Ok("kill-mid-checkpoint") => true,
                Ok(other) => {
                    return Err(WorkerError::Env(format!(
                        "{}={other:?}: expected exit or kill-mid-checkpoint",
                        names::FAULT_MODE
                    )))
                }
            },
            fault_attempts: std::env::var(names::FAULT_ATTEMPTS)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            keep_survivors: std::env::var(names::KEEP_SURVIVORS).is_ok_and(|v| v == "1"),
            cuda: std::env::var(names::ACCELERATOR).is_ok_and(|v| v == "cuda"),
            nccl: std::env::var(names::BACKEND).is_ok_and(|v| v == "nccl"),
            threads: std::env::var(names::OMP_NUM_THREADS)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .max(1),
        };
        if env.rank >= env.world_size {
            return Err(WorkerError::Env(format!(
                "RANK={} is not below WORLD_SIZE={}",
                env.rank, env.world_size
            )));
        }
        if env.local_rank >= env.local_world_size {
            return Err(WorkerError::Env(format!(
                "LOCAL_RANK={} is not below LOCAL_WORLD_SIZE={}",
                env.local_rank, env.local_world_size
            )));
        }
        if env.heartbeat_interval_ms == 0 {
            return Err(WorkerError::Env(format!(
                "{} must be > 0",
                names::HEARTBEAT_INTERVAL_MS
            )));
        }
        Ok(env)
    }
}
