//! A worker's rounds: join the rendezvous, build this round's collective
//! (the TCP ring or a new NCCL communicator), run the workload, send its
//! result; a survivor of a preemption parks with its state in memory and
//! goes round again with the replacement node. GPU workloads without a
//! training state (GEMM, the NCCL sweep) run once, without the ring.

use crate::{
    client, collective, env, hier, nccl_coll, nccl_id, notices, progress, ring, workload,
    WorkerError,
};
use proto::exit::WorkerExit;
use proto::spec::Workload;

pub(crate) fn run_with(
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
        let (code, result) = workload::command::run(cmd, env, progress)?;
        // Where the program stopped, for the launcher's report (the last
        // heartbeat may not have carried its last step).
        let result = proto::result::WorkerResult::new(proto::result::Figures::Command(result));
        if let Err(e) = ctl.send_result(with_notice(result, progress)) {
            eprintln!("[rank {}] cannot send the result: {e}", env.rank);
        }
        return Ok(code);
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
        let (welcome, mut coll) = join_round(&env, &mut ctl, progress, wait)?;
        let mut state = None;
        let payload = match (&env.workload, &mut coll) {
            (Workload::Gemm(g), _) => workload::gemm::run(g, &env, progress)?,
            (Workload::Allreduce(a), RoundCollective::Ring(ring)) => {
                workload::allreduce::run(a, ring, progress)?
            }
            (Workload::Allreduce(a), RoundCollective::Hier(h)) => {
                workload::allreduce::run(a, h, progress)?
            }
            (Workload::Train(t), coll) => {
                let (payload, s) = match coll {
                    RoundCollective::Ring(c) => {
                        workload::train::run(t, &env, c, progress, kept.take(), welcome.state_from)?
                    }
                    RoundCollective::Hier(c) => {
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
            RoundCollective::Hier(c) => c.barrier()?,
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
            if let client::Parked::Rejoin(seat) = ctl.park()? {
                let was = (env.rank, env.world_size);
                seat.take(&mut env);
                if was == (env.rank, env.world_size) {
                    println!(
                        "[rank {}] survivor: rejoining in round {} with the state in memory",
                        env.rank, seat.round
                    );
                } else {
                    println!(
                        "[rank {}] survivor: rejoining in round {} as rank {} of {} (was {} of {}) with the state in memory",
                        was.0, seat.round, env.rank, env.world_size, was.0, was.1
                    );
                }
                progress.rejoin(seat.round, env.rank, state.as_ref().map_or(0, |s| s.step));
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

/// Join this round and build its collective: a new NCCL communicator (rank
/// 0's unique id through the round's key-value store) or the TCP ring.
fn join_round(
    env: &env::WorkerEnv,
    ctl: &mut client::Control,
    progress: &std::sync::Arc<progress::Progress>,
    wait: std::time::Duration,
) -> Result<(client::Welcome, RoundCollective), WorkerError> {
    Ok(if env.nccl {
        // Rank 0's unique id through this round's key-value store: a new
        // communicator each round.
        let welcome = ctl.join(env, "")?;
        let id = nccl_id::share_new(ctl, welcome.rank, wait)?;
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
        let welcome = ctl.join(env, &ring_addr.to_string())?;
        if hier::applies(&env.collective, env.local_world_size) {
            let h = hier::Hier::connect(
                listener,
                ctl,
                &welcome,
                env.local_world_size as usize,
                &env.token,
                &env.collective,
                progress.clone(),
            )?;
            println!(
                "[rank {}] collective: shared memory with the {} ranks of node {}, a TCP ring across {} node(s); segment {} (removed once every rank of the node has mapped it)",
                welcome.rank,
                env.local_world_size,
                welcome.rank / env.local_world_size,
                welcome.world_size / env.local_world_size,
                h.segment.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
            );
            return Ok((welcome, RoundCollective::Hier(h)));
        }
        let ring = ring::Ring::connect(
            listener,
            welcome.rank as usize,
            welcome.world_size as usize,
            &welcome.ring_next,
            &env.token,
            &env.collective,
            progress.clone(),
        )?;
        (welcome, RoundCollective::Ring(ring))
    })
}

/// This round's collective: the TCP ring, shared memory within nodes and
/// TCP rings across them, or NCCL (`train` on GPUs).
enum RoundCollective {
    Ring(ring::Ring),
    Hier(hier::Hier),
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
