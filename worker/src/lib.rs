//! The worker's engine, as a library so its parts are unit-tested in-process.

pub mod checkpoint;
pub mod client;
pub mod collective;
pub mod env;
pub mod matmul;
pub mod nccl_coll;
pub mod nccl_id;
pub mod notices;
pub mod preflight;
pub mod progress;
pub mod ring;
pub mod workload;

use proto::exit::WorkerExit;
use proto::spec::Workload;

/// Every way a worker can fail, each mapped to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("environment: {0}")]
    Env(String),
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    #[error("collective: {0}")]
    Collective(#[from] collective::CollectiveError),
    #[error("workload: {0}")]
    Workload(String),
    /// A checkpoint could not be written or committed (a workload error).
    #[error("workload: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The GPU failed under the workload (a workload error).
    #[error("workload: {0}")]
    Gpu(#[from] gpu::GpuError),
    #[error("could not start `{program}`: {source}")]
    CommandNotStarted {
        program: String,
        source: std::io::Error,
    },
}

impl WorkerError {
    pub fn exit(&self) -> WorkerExit {
        match self {
            WorkerError::Env(_) => WorkerExit::BadEnvironment,
            WorkerError::Rendezvous(_) => WorkerExit::Rendezvous,
            WorkerError::Collective(_) => WorkerExit::Collective,
            WorkerError::Workload(_) | WorkerError::Checkpoint(_) | WorkerError::Gpu(_) => {
                WorkerExit::Workload
            }
            WorkerError::CommandNotStarted { .. } => WorkerExit::CommandNotStarted,
        }
    }
}

/// Run the worker; returns the process exit code.
pub fn run() -> i32 {
    let env = match env::WorkerEnv::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ringmaster-worker: {e}");
            return WorkerExit::BadEnvironment.code();
        }
    };
    let tag = format!("[rank {}]", env.rank);
    let progress = progress::Progress::new();
    match std::panic::catch_unwind(|| run_with(&env, &progress)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("{tag} error: {e}");
            write_error_file(&env, &progress, e.exit().code(), &e.to_string());
            e.exit().code()
        }
        Err(_) => {
            eprintln!("{tag} internal error (panic)");
            write_error_file(&env, &progress, WorkerExit::Internal.code(), "panic");
            WorkerExit::Internal.code()
        }
    }
}

/// A failing worker's last words, `<attempt dir>/rank-<r>.error.json`
/// (as torch elastic's error files): exit code, message and the step it
/// failed at, which the launcher uses for the report and crash-loop checks.
pub fn write_error_file(
    env: &env::WorkerEnv,
    progress: &progress::Progress,
    code: i32,
    message: &str,
) {
    let Some(dir) = &env.attempt_dir else {
        return;
    };
    let beat = progress.snapshot();
    let body = serde_json::json!({
        "rank": env.rank,
        "exit_code": code,
        "message": message,
        "step": (beat.total_steps > 0).then_some(beat.step),
        "phase": beat.phase,
    });
    let path = std::path::Path::new(&dir).join(format!("rank-{}.error.json", env.rank));
    if let Err(e) = std::fs::write(&path, body.to_string()) {
        eprintln!("[rank {}] cannot write {}: {e}", env.rank, path.display());
    }
}

fn run_with(
    env: &env::WorkerEnv,
    progress: &std::sync::Arc<progress::Progress>,
) -> Result<i32, WorkerError> {
    // Measured before any connection (see client::preflight_figures).
    client::preflight_figures(env);
    client::start_heartbeat(env, progress.clone())?;
    let watchers = env
        .notices
        .as_ref()
        .map(|n| notices::start(n, env.rank, progress.clone()));
    if let Workload::Command(cmd) = &env.workload {
        let mut ctl = client::Control::connect(env)?;
        ctl.join(env, "")?;
        return workload::command::run(cmd, progress);
    }
    let train = matches!(env.workload, Workload::Train(_));
    // GPU work without the TCP ring: GEMM and the NCCL sweep. (`train` goes
    // round the loop below on the ring or on NCCL.)
    if !train && (env.nccl || env.cuda) {
        return run_gpu(env, progress);
    }
    // A survivor of a preemption goes round again: same process, state in
    // memory, a new round (and ring or NCCL communicator) with the
    // replacement node.
    let mut env = env.clone();
    let mut kept: Option<workload::train::TrainState> = None;
    let wait = std::time::Duration::from_secs_f64(env.collective.timeout_s);
    loop {
        let mut ctl = client::Control::connect(&env)?;
        let (welcome, mut coll) = if env.nccl {
            // Rank 0's unique id through this round's key-value store: a new
            // communicator each round.
            let welcome = ctl.join(&env, "")?;
            let id = nccl_id::share_new(&mut ctl, welcome.rank, wait)?;
            let dev =
                gpu::mlp_cuda::Device::open(0).map_err(|e| WorkerError::Workload(e.to_string()))?;
            let comm = gpu::nccl_comm::NcclComm::init(
                &dev,
                welcome.rank as usize,
                welcome.world_size as usize,
                id,
                wait,
            )
            .map_err(|e| collective::CollectiveError::Nccl(e.to_string()))?;
            (
                welcome,
                RoundCollective::Nccl(nccl_coll::NcclCollective { comm }),
            )
        } else {
            let listener = ring::bind_listener(&env.node_addr)?;
            let ring_addr = listener
                .local_addr()
                .map_err(|e| WorkerError::Rendezvous(e.to_string()))?;
            let welcome = ctl.join(&env, &ring_addr.to_string())?;
            let ring = ring::Ring::connect(
                listener,
                welcome.rank as usize,
                &welcome.ring_addrs,
                &env.token,
                &env.collective,
                progress.clone(),
            )?;
            (welcome, RoundCollective::Ring(ring))
        };
        let mut state = None;
        let payload = match (&env.workload, &mut coll) {
            (Workload::Gemm(g), _) => workload::gemm::run(g, &env, progress)?,
            (Workload::Allreduce(a), RoundCollective::Ring(ring)) => {
                workload::allreduce::run(a, ring, progress)?
            }
            (Workload::Train(t), coll) => {
                let (payload, s) = match coll {
                    RoundCollective::Ring(c) => {
                        workload::train::run(t, &env, c, progress, kept.take(), welcome.state_from)?
                    }
                    RoundCollective::Nccl(c) => {
                        workload::train::run(t, &env, c, progress, kept.take(), welcome.state_from)?
                    }
                };
                state = Some(s);
                payload
            }
            _ => unreachable!("command and GPU sweeps are handled above"),
        };
        // Everyone finishes together so no rank closes its ring sockets (or
        // communicator) while a peer still needs them.
        use collective::Collective;
        match &mut coll {
            RoundCollective::Ring(c) => c.barrier()?,
            RoundCollective::Nccl(c) => c.barrier()?,
        }
        drop(coll);
        let preempted = payload.train().is_some_and(|t| t.preempted);
        let committed = payload.stopped_with_checkpoint();
        ctl.send_result(with_notice(payload, progress))?;
        if let (true, Some(w)) = (committed, &watchers) {
            // Our share is safe on disk: the cloud need not wait any longer.
            w.acknowledge(env.rank);
        }
        if committed && env.keep_survivors && state.is_some() {
            if let client::Parked::Rejoin(round) = ctl.park()? {
                println!(
                    "[rank {}] survivor: rejoining in round {round} with the state in memory",
                    env.rank
                );
                env.restart_count = round;
                progress.rejoin(round, state.as_ref().map_or(0, |s| s.step));
                kept = state;
                continue;
            }
        }
        return Ok(if preempted {
            WorkerExit::Preempted
        } else {
            WorkerExit::Success
        }
        .code());
    }
}

/// This round's collective: the TCP ring, or NCCL (`train` on GPUs).
enum RoundCollective {
    Ring(ring::Ring),
    Nccl(nccl_coll::NcclCollective),
}

/// The result with the preemption notice this worker saw, if any (the run
/// may stop before the next heartbeat carries it).
fn with_notice(
    mut payload: proto::result::WorkerResult,
    progress: &progress::Progress,
) -> proto::result::WorkerResult {
    payload.notice = progress.snapshot().notice;
    payload
}

/// GPU workloads without a training state: GEMM on cuBLAS, the all-reduce
/// sweep on NCCL. No TCP ring; the rendezvous carries NCCL's unique id and
/// the final barrier.
fn run_gpu(
    env: &env::WorkerEnv,
    progress: &std::sync::Arc<progress::Progress>,
) -> Result<i32, WorkerError> {
    let mut ctl = client::Control::connect(env)?;
    let welcome = ctl.join(env, "")?;
    let wait = std::time::Duration::from_secs_f64(env.collective.timeout_s);
    let payload = match &env.workload {
        Workload::Gemm(g) if env.cuda => workload::gemm::run_cuda(g, env, progress)?,
        Workload::Allreduce(a) if env.nccl => {
            let id = nccl_id::share_new(&mut ctl, welcome.rank, wait)?;
            workload::allreduce::run_nccl(
                a,
                welcome.rank as usize,
                welcome.world_size as usize,
                id,
                wait,
                progress,
            )?
        }
        other => {
            return Err(WorkerError::Workload(format!(
                "the {} workload has no GPU implementation in this build",
                other.kind()
            )))
        }
    };
    ctl.barrier("done")?;
    ctl.send_result(with_notice(payload, progress))?;
    Ok(WorkerExit::Success.code())
}
