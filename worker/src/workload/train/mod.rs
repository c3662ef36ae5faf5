//! `train` workload: data-parallel SGD with momentum on a synthetic
//! regression task. An MLP (ReLU between layers) learns y = tanh(x·T) for a
//! fixed random teacher T. Each rank's batch comes from (seed, step, rank);
//! gradients (and the loss, in one extra slot) are averaged with one
//! all-reduce per step. With the same world size, seed and thread count every
//! run ends with bit-identical weights on every rank.

use crate::checkpoint::Checkpointer;
use crate::collective::Collective;
use crate::env::WorkerEnv;
use crate::matmul;
use crate::progress::Progress;
use crate::WorkerError;
use proto::result::{Figures, StepSeconds, TrainResult, WorkerResult};
use proto::spec::TrainWorkload;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod data;
mod model;
mod trainer;

use data::{teacher, Loader};
pub use model::{init_params, loss_and_grad_ws, sha256_hex, Layout, Workspace};
use trainer::Trainer;

/// The training state a survivor keeps in memory between rounds.
pub struct TrainState {
    pub params: Vec<f32>,
    pub velocity: Vec<f32>,
    /// The step it is at (the next to train).
    pub step: u64,
}

/// What a training run is, fixed for the round.
struct Ctx<'a> {
    t: &'a TrainWorkload,
    env: &'a WorkerEnv,
    progress: &'a Progress,
    rank: usize,
    world: usize,
}

/// What the round did, for its result.
struct Tally {
    start_step: u64,
    /// This rank kept its state in memory; or it came from this rank.
    survivor: bool,
    state_from: Option<u32>,
    first_loss: Option<f32>,
    loss: f32,
    started: Instant,
    /// Steps are timed from the second one (the first pays for page faults
    /// and thread start-up).
    timed_from: (Instant, u64),
    /// Seconds spent waiting for the batch, in forward+backward, in the
    /// all-reduce, in the update. (Per-layer all-reduces, inline or
    /// overlapped on a second thread, were slower on 2 cores: see
    /// docs/benchmarks.md.)
    phase_s: [f64; 4],
    checkpoints_written: u64,
    checkpoint_s: f64,
    /// How long the checkpoint at a notice's stop step took.
    stop_checkpoint_s: Option<f64>,
    preempted_at: Option<u64>,
    checkpoint_committed: bool,
}

/// Train to `t.steps` (or a notice's stop step). The state comes from
/// `state_from` (a survivor that kept it in memory: `kept` on that rank)
/// by broadcast, else rank 0 loads the newest checkpoint (or initialises)
/// and broadcasts it. Returns the result and the state at the end.
pub fn run<C: Collective>(
    t: &TrainWorkload,
    env: &WorkerEnv,
    coll: &mut C,
    shared: &std::sync::Arc<Progress>,
    kept: Option<TrainState>,
    state_from: Option<u32>,
) -> Result<(WorkerResult, TrainState), WorkerError> {
    let progress: &Progress = shared;
    let cx = Ctx {
        t,
        env,
        progress,
        rank: coll.rank(),
        world: coll.world_size(),
    };
    let layout = Layout::new(t);
    // Which training this is: checked against the checkpoint loaded,
    // recorded in the ones written.
    let tag = crate::checkpoint::SaveTag {
        run_id: env.run_id.clone(),
        attempt: env.restart_count,
        identity: proto::checkpoint::Identity::train(t),
    };
    let store = checkpoint_store(env, cx.rank);
    let survivor = kept.is_some();
    let (params, velocity, start_step) =
        restore(&cx, coll, &layout, store.as_ref(), &tag, kept, state_from)?;
    let device = open_device(&cx, coll, &layout, &params, &velocity)?;
    let teacher = teacher(t);
    // This rank's blocks of the global batch (one, block = rank, unless
    // workload.global_batch spreads more blocks over fewer ranks).
    let (world, all) = (cx.world as u32, t.blocks(cx.world as u32));
    let blocks = t.blocks_of(cx.rank as u32, world);
    if device.is_some() && all != world as u64 {
        return Err(WorkerError::Workload(format!(
            "workload.global_batch: on a GPU each rank trains one block a step, and {all} blocks over {world} ranks is not one each"
        )));
    }
    let mut tr = Trainer::new(
        layout,
        params,
        velocity,
        device,
        t.batch_per_rank as usize,
        (
            (blocks.end - blocks.start) as usize,
            (world as f64 / all as f64) as f32,
        ),
        matmul::parallelism(env.threads),
    );
    if let Some(m) = tr.device.as_mut() {
        m.set_teacher(&teacher)?;
    }
    let mut ckpt = store.map(|s| {
        let saving = crate::checkpoint::Saving {
            keep: env.checkpoint.keep as usize,
            async_write: env.checkpoint.async_write,
            shard_wait: Duration::from_secs_f64(env.collective.timeout_s.max(60.0)),
        };
        Checkpointer::new(s, tag, cx.rank, cx.world, tr.layout.len, t.seed, saving)
            .with_progress(shared.clone())
    });
    let notice = notice_flag(env)?;
    progress.set_phase("train", "samples/s", t.steps);
    let now = Instant::now();
    let mut tally = Tally {
        start_step,
        survivor,
        state_from,
        first_loss: None,
        loss: f32::NAN,
        started: now,
        timed_from: (now, 0),
        phase_s: [0.0; 4],
        checkpoints_written: 0,
        checkpoint_s: 0.0,
        stop_checkpoint_s: None,
        preempted_at: None,
        checkpoint_committed: false,
    };
    let loader = Loader::start(t, teacher, start_step, blocks, tr.device.is_some())
        .map_err(|e| WorkerError::Workload(format!("cannot start the loader thread: {e}")))?;
    progress.set_start_step(start_step);
    let steps = train_steps(
        &cx,
        coll,
        &mut tr,
        &loader,
        ckpt.as_mut(),
        &notice,
        &mut tally,
    );
    loader.stop();
    steps?;
    if let Some(c) = ckpt.as_mut() {
        c.finish()?;
    }
    tr.sync_host()?;
    let result = result(&cx, &tr, &tally);
    let done = tally.preempted_at.unwrap_or(t.steps);
    Ok((
        result,
        TrainState {
            params: tr.params,
            velocity: tr.velocity,
            step: done,
        },
    ))
}

/// The checkpoint folder's store, with the drill's kill-mid-write hook
/// where the job's faults ask for it on this rank.
fn checkpoint_store(env: &WorkerEnv, rank: usize) -> Option<crate::checkpoint::DirStore> {
    env.checkpoint.dir.as_ref().map(|d| {
        let store = crate::checkpoint::DirStore::new(d);
        match env.fault_at_step {
            Some((step, r))
                if env.fault_mid_checkpoint
                    && r == rank as u32
                    && env.restart_count < env.fault_attempts =>
            {
                store.with_kill_mid_write(step)
            }
            _ => store,
        }
    })
}

/// A notice may also reach this worker directly (SIGUSR1, e.g. from
/// Slurm's --signal or a cloud agent; SIGTERM where the scheduler signals
/// every process of the job).
fn notice_flag(env: &WorkerEnv) -> Result<Arc<AtomicBool>, WorkerError> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, flag.clone())
        .map_err(|e| WorkerError::Workload(format!("cannot install the SIGUSR1 handler: {e}")))?;
    if env.sigterm_is_notice {
        signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone()).map_err(|e| {
            WorkerError::Workload(format!("cannot install the SIGTERM handler: {e}"))
        })?;
    }
    Ok(flag)
}

/// Where this round's state comes from: a survivor's memory (`kept`),
/// else rank 0 loads the newest checkpoint that verifies, else the initial
/// weights; the root's state is then broadcast to every rank, like DDP
/// (which also settles which checkpoint every rank resumed from).
fn restore<C: Collective>(
    cx: &Ctx,
    coll: &mut C,
    layout: &Layout,
    store: Option<&crate::checkpoint::DirStore>,
    tag: &crate::checkpoint::SaveTag,
    kept: Option<TrainState>,
    state_from: Option<u32>,
) -> Result<(Vec<f32>, Vec<f32>, u64), WorkerError> {
    let rank = cx.rank;
    let root = state_from.unwrap_or(0) as usize;
    let survivor = kept.is_some();
    // Only the root's state matters: a survivor's kept state, or rank 0's
    // initial state when no checkpoint replaces it.
    let (mut params, mut velocity, mut start_step) = match kept {
        Some(k) => (k.params, k.velocity, k.step),
        None => (vec![0f32; layout.len], vec![0f32; layout.len], 0),
    };
    // Rank 0 loads, straight into the model's buffers (loading on every
    // rank would only make them compete for the disk). Nobody loads when a
    // survivor has the state.
    if survivor {
        println!("[rank {rank}] rejoined with its state in memory at step {start_step} (no checkpoint read)");
    } else if state_from.is_some() {
        // A survivor broadcasts it below.
    } else if let (Some(store), 0) = (store, rank) {
        match load_newest(cx, layout, store, tag, &mut params, &mut velocity)? {
            Some(step) => start_step = step,
            None => {
                // (A broken checkpoint may have been read in part.)
                params = init_params(layout, cx.t.seed);
                velocity.fill(0.0);
            }
        }
    } else if rank == 0 {
        params = init_params(layout, cx.t.seed);
    }
    let t_bcast = Instant::now();
    coll.broadcast(&mut params, root)?;
    coll.broadcast(&mut velocity, root)?;
    let mut step_buf = [start_step as f64];
    coll.broadcast(&mut step_buf, root)?;
    let start_step = step_buf[0] as u64;
    if !survivor && state_from.is_some() {
        println!("[rank {rank}] received the state at step {start_step} from rank {root} (a survivor; no checkpoint read)");
    } else if rank != 0 && start_step > 0 && !survivor {
        println!("[rank {rank}] resumed from checkpoint at step {start_step} (loaded by rank 0)");
    }
    if rank == root && start_step > 0 {
        println!(
            "[rank 0] state broadcast to {} ranks in {:.2} s",
            cx.world,
            t_bcast.elapsed().as_secs_f64()
        );
    }
    Ok((params, velocity, start_step))
}

/// Rank 0 loads the newest checkpoint that verifies into the buffers: its
/// step (None: none usable). What was skipped goes on the run's timeline;
/// a warning only for what the launcher could not see before it started
/// (a shard that fails its checksum: it reads manifests only).
fn load_newest(
    cx: &Ctx,
    layout: &Layout,
    store: &crate::checkpoint::DirStore,
    tag: &crate::checkpoint::SaveTag,
    params: &mut [f32],
    velocity: &mut [f32],
) -> Result<Option<u64>, WorkerError> {
    let (rank, t0) = (cx.rank, Instant::now());
    let (loaded, skipped) = crate::checkpoint::load_latest_into(
        store,
        &mut [("params", params), ("velocity", velocity)],
        crate::checkpoint::Expect {
            identity: &tag.identity,
            allow_mismatch: cx.env.checkpoint.allow_identity_mismatch,
        },
    )?;
    for s in &skipped {
        println!("[rank {rank}] {s}");
        cx.progress.note(
            "checkpoint_skipped",
            s.to_string(),
            !s.manifest,
            json!({"checkpoint": s.dir, "manifest": s.manifest}),
        );
    }
    if loaded.is_none() && !skipped.is_empty() {
        cx.progress.note(
            "checkpoint_none_usable",
            format!(
                "no checkpoint in {} could be used ({} skipped): training starts from step 0",
                cx.env.checkpoint.dir.as_deref().unwrap_or("?"),
                skipped.len()
            ),
            skipped.iter().any(|s| !s.manifest),
            serde_json::Value::Null,
        );
    }
    let Some(l) = loaded else { return Ok(None) };
    let step = l.step.min(cx.t.steps);
    println!(
        "[rank {rank}] resumed from checkpoint at step {step} ({:.2} GB loaded and verified in {:.2} s)",
        (8 * layout.len) as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    if !l.other_training.is_empty() {
        // The launcher said so before it started anything.
        println!(
            "[rank {rank}] that checkpoint is of another training, loaded on purpose (checkpoint.allow_identity_mismatch): {}",
            l.other_training.join("; ")
        );
    }
    Ok(Some(step))
}

/// On a GPU the model lives in device memory from here on (the NCCL
/// communicator's device where there is one).
fn open_device<C: Collective>(
    cx: &Ctx,
    coll: &mut C,
    layout: &Layout,
    params: &[f32],
    velocity: &[f32],
) -> Result<Option<gpu::mlp_cuda::DeviceMlp>, WorkerError> {
    if !cx.env.cuda {
        return Ok(None);
    }
    let dev = match coll.nccl() {
        Some(comm) => comm.device().clone(),
        None => gpu::mlp_cuda::Device::open(0)?,
    };
    let mut m = gpu::mlp_cuda::DeviceMlp::new(&dev, &layout.dims, cx.t.batch_per_rank as usize)?;
    m.load_state(params, velocity)?;
    println!(
        "[rank {}] training on {} (cuBLAS FP32; gradients reduced {})",
        cx.rank,
        dev.name,
        if coll.nccl().is_some() {
            "by NCCL in device memory"
        } else {
            "on the TCP ring through host memory"
        }
    );
    Ok(Some(m))
}

/// The steps of this round, to the end or to a notice's agreed stop step
/// (every rank sees the same flag sum after the all-reduce, so all stop
/// after the same step), with the periodic checkpoints.
fn train_steps<C: Collective>(
    cx: &Ctx,
    coll: &mut C,
    tr: &mut Trainer,
    loader: &Loader,
    mut ckpt: Option<&mut Checkpointer>,
    notice: &AtomicBool,
    tally: &mut Tally,
) -> Result<(), WorkerError> {
    let (t, env, progress, rank) = (cx.t, cx.env, cx.progress, cx.rank);
    let (lr, mu) = (t.lr as f32, t.momentum as f32);
    // A floor per block of rows: a rank training two blocks stands in for
    // twice the compute.
    let pace = Duration::from_secs_f64(t.pace_ms * tr.blocks() as f64 / 1000.0);
    let start_step = tally.start_step;
    for step in start_step..t.steps {
        if step == start_step + 1 {
            tally.timed_from = (Instant::now(), start_step + 1);
        }
        if env.fault_at_step == Some((step, rank as u32))
            && !env.fault_mid_checkpoint
            && env.restart_count < env.fault_attempts
        {
            // As a failing step would: the error (and its step) goes to
            // the worker's edge, which writes the error file and exits 74.
            progress.set_step(step);
            return Err(WorkerError::Workload(format!(
                "injected fault at step {step} ({})",
                proto::contract::Faults::at_step_name()
            )));
        }
        let t0 = Instant::now();
        let (x, y) = loader
            .next()
            .ok_or_else(|| WorkerError::Workload("the loader thread stopped".into()))?;
        let t1 = Instant::now();
        tr.forward_backward(&x, &y)?;
        loader.recycle((x, y));
        if notice.load(Ordering::Relaxed) && !progress.notice() {
            eprintln!("[rank {rank}] preemption notice (SIGUSR1 or the scheduler's SIGTERM)");
            progress.set_notice();
        }
        tr.set_flag(if progress.notice() { 1.0 } else { 0.0 })?;
        if let Some(left) = pace.checked_sub(t0.elapsed()) {
            // workload.pace_ms: stand in for a bigger model's compute.
            std::thread::sleep(left);
        }
        let t2 = Instant::now();
        let (loss, flag) = tr.reduce(coll)?;
        let t3 = Instant::now();
        if !loss.is_finite() {
            return Err(WorkerError::Workload(format!(
                "loss became {loss} at step {step}; lower workload.lr"
            )));
        }
        tally.loss = loss;
        tally.first_loss.get_or_insert(loss);
        tr.update(lr, mu)?;
        let t4 = Instant::now();
        for (acc, d) in tally
            .phase_s
            .iter_mut()
            .zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3])
        {
            *acc += d.as_secs_f64();
        }
        stepped(cx, step, loss, tally);
        let stop = flag > 0.0;
        let every = env.checkpoint.every_steps;
        if let (Some(c), true) = (
            ckpt.as_deref_mut(),
            (every > 0 && (step + 1) % every == 0) || stop,
        ) {
            let tc = Instant::now();
            tr.sync_host()?;
            c.save(coll, step + 1, &tr.params, &tr.velocity, stop)?;
            tally.checkpoint_committed = stop;
            tally.checkpoints_written += 1;
            tally.checkpoint_s += tc.elapsed().as_secs_f64();
            if stop {
                tally.stop_checkpoint_s = Some(tc.elapsed().as_secs_f64());
            }
        }
        if stop {
            tally.preempted_at = Some(step + 1);
            println!(
                "[rank {rank}] stopping at step {} after a preemption notice ({})",
                step + 1,
                if tally.checkpoint_committed {
                    "checkpoint committed"
                } else {
                    "no checkpoint.dir: nothing saved"
                }
            );
            break;
        }
    }
    Ok(())
}

/// A step is done: the heartbeat's figures and rank 0's log line.
fn stepped(cx: &Ctx, step: u64, loss: f32, tally: &Tally) {
    let (t, progress) = (cx.t, cx.progress);
    progress.set_step(step + 1);
    progress.set_loss(loss as f64);
    if step == tally.start_step {
        // The launcher times recovery up to the first step done.
        progress.beat_now();
    }
    let elapsed = tally.started.elapsed().as_secs_f64();
    progress.set_rate(
        (step + 1 - tally.start_step) as f64
            * (t.batch_per_rank * t.blocks(cx.world as u32)) as f64
            / elapsed,
    );
    if cx.rank == 0 && ((step + 1).is_multiple_of(t.log_every) || step + 1 == t.steps) {
        println!("[rank 0] step {}/{} loss {loss:.6}", step + 1, t.steps);
    }
}

/// The round's result: figures only for what happened (no step, no rate
/// and no loss).
fn result(cx: &Ctx, tr: &Trainer, tally: &Tally) -> WorkerResult {
    let (t, rank, world) = (cx.t, cx.rank, cx.world);
    let start_step = tally.start_step;
    // A stop after a notice ends before t.steps.
    let done = tally.preempted_at.unwrap_or(t.steps);
    let timed_steps = done.saturating_sub(tally.timed_from.1);
    let timed_s = tally.timed_from.0.elapsed().as_secs_f64();
    let ran = done.saturating_sub(start_step);
    let steps_per_s = if timed_steps > 0 && timed_s > 0.0 {
        Some(timed_steps as f64 / timed_s)
    } else if ran > 0 {
        Some(ran as f64 / tally.started.elapsed().as_secs_f64())
    } else {
        None
    };
    let final_loss = Some(tally.loss).filter(|l| ran > 0 && l.is_finite());
    let checksum = sha256_hex(&tr.params);
    match (final_loss, steps_per_s) {
        (Some(l), Some(r)) => println!("[rank {rank}] trained to step {done} of {}: final loss {l:.6}, {r:.2} steps/s, weights sha256 {checksum}", t.steps),
        _ => println!("[rank {rank}] at step {done} of {} (no step run in this attempt), weights sha256 {checksum}", t.steps),
    }
    let phase_s = &tally.phase_s;
    let per_step = |s: f64| s / t.steps as f64;
    WorkerResult::new(Figures::Train(TrainResult {
        device: tr
            .device
            .as_ref()
            .map(|m| m.dev.name.clone())
            .unwrap_or_else(|| "cpu".into()),
        steps: t.steps,
        steps_done: done,
        stop_checkpoint_s: tally.stop_checkpoint_s,
        params: tr.layout.len as u64,
        world_size: world as u32,
        first_loss: tally.first_loss.map(f64::from),
        final_loss: final_loss.map(f64::from),
        steps_per_s,
        samples_per_s: steps_per_s.map(|r| r * (t.batch_per_rank * t.blocks(world as u32)) as f64),
        weights_sha256: checksum,
        resumed_from_step: start_step,
        state_in_memory: tally.survivor,
        state_from_rank: tally.state_from,
        preempted: tally.preempted_at.is_some(),
        preempted_at_step: tally.preempted_at,
        checkpoint_committed: tally.checkpoint_committed,
        checkpoints_written: tally.checkpoints_written,
        checkpoint_seconds: tally.checkpoint_s,
        checkpoint_async: cx.env.checkpoint.async_write,
        checkpoint_stall_per_step_s: tally.checkpoint_s / (t.steps - start_step).max(1) as f64,
        seconds_per_step: StepSeconds {
            data_wait: per_step(phase_s[0]),
            forward_backward: per_step(phase_s[1]),
            allreduce: per_step(phase_s[2]),
            update: per_step(phase_s[3]),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::data::batch;
    use super::model::loss_and_grad;
    use super::*;
    use gemm::Parallelism;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn gradient_matches_finite_differences() {
        let t = TrainWorkload {
            input_dim: 5,
            hidden: 7,
            layers: 3,
            output_dim: 3,
            batch_per_rank: 4,
            ..Default::default()
        };
        let layout = Layout::new(&t);
        let params = init_params(&layout, 3);
        let (x, y) = batch(&t, &teacher(&t), 0, 0, Parallelism::None);
        let mut grad = vec![0f32; layout.len];
        loss_and_grad(&layout, &params, &x, &y, &mut grad, Parallelism::None);
        let f = |p: &[f32]| {
            let mut g = vec![0f32; layout.len];
            loss_and_grad(&layout, p, &x, &y, &mut g, Parallelism::None) as f64
        };
        for i in (0..layout.len).step_by(5) {
            let h = 1e-2f32;
            let mut p1 = params.clone();
            p1[i] += h;
            let mut p2 = params.clone();
            p2[i] -= h;
            let num = (f(&p1) - f(&p2)) / (2.0 * h as f64);
            assert!(
                (num - grad[i] as f64).abs() < 2e-3,
                "param {i}: numeric {num} analytic {}",
                grad[i]
            );
        }
    }

    #[test]
    fn the_gpu_operation_list_computes_the_cpu_trainers_loss_and_gradient() {
        // The device MLP runs gpu::mlp::step_ops (cuBLAS's column-major
        // conventions); its reference interpreter must agree with this
        // trainer on the same batch, for several shapes.
        for (i, h, l, o, b) in [(6, 5, 3, 4, 3), (3, 8, 2, 2, 1), (7, 4, 4, 5, 6)] {
            let t = TrainWorkload {
                input_dim: i,
                hidden: h,
                layers: l,
                output_dim: o,
                batch_per_rank: b,
                ..Default::default()
            };
            let layout = Layout::new(&t);
            let mut params = init_params(&layout, 7);
            // Non-zero biases, so that some ReLUs are off and bias
            // gradients matter.
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            for r in &layout.b {
                for v in &mut params[r.clone()] {
                    *v = rng.gen_range(-0.5..0.5);
                }
            }
            let (x, y) = batch(&t, &teacher(&t), 2, 1, Parallelism::None);
            let mut grad = vec![0f32; layout.len];
            let loss = loss_and_grad(&layout, &params, &x, &y, &mut grad, Parallelism::None);

            use gpu::mlp::{reference::Host, step_ops, target_ops, Buf, Shapes};
            let shapes = Shapes::new(&layout.dims, b as usize);
            assert_eq!(shapes.len, layout.len);
            assert_eq!(
                shapes.w,
                layout.w.iter().map(|r| r.start).collect::<Vec<_>>()
            );
            assert_eq!(
                shapes.b,
                layout.b.iter().map(|r| r.start).collect::<Vec<_>>()
            );
            let mut host = Host::new(&shapes);
            host.bufs.insert(Buf::Params, params.clone());
            host.bufs.insert(Buf::Act(0), x.clone());
            // The targets made from the inputs, as on the GPU.
            host.bufs.insert(Buf::Teacher, teacher(&t));
            host.run(&target_ops(&shapes));
            for (k, (a, e)) in host.bufs[&Buf::Y].iter().zip(&y).enumerate() {
                assert!((a - e).abs() <= 1e-5, "y[{k}] {a} vs {e}");
            }
            host.bufs.insert(Buf::Y, y.clone());
            host.run(&step_ops(&shapes));
            let g = &host.bufs[&Buf::Grad];
            let scale = grad.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0);
            for (k, (a, e)) in g[..layout.len].iter().zip(&grad).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-5 * scale,
                    "shape {:?}: grad[{k}] {a} vs {e}",
                    layout.dims
                );
            }
            assert!(
                (g[layout.len] - loss).abs() <= 1e-6 * loss.abs().max(1.0),
                "loss {} vs {loss}",
                g[layout.len]
            );
            // Some ReLU is off somewhere (the mask was exercised).
            assert!(host.bufs[&Buf::Act(1)].contains(&0.0), "{:?}", layout.dims);
        }
    }

    /// The group's average of the ranks' weighted gradients, with 8
    /// blocks of the global batch over 8, 4, 3 and 1 rank(s): the same mean
    /// gradient and loss (sums in another order: within 1e-6 of the
    /// largest component), and with one block a rank exactly each rank's
    /// own block's gradient (the recipe without global_batch, bit for bit).
    #[test]
    fn a_global_batch_gives_the_same_step_on_any_world_size() {
        let t = TrainWorkload {
            input_dim: 6,
            hidden: 9,
            layers: 3,
            output_dim: 4,
            batch_per_rank: 5,
            global_batch: Some(40),
            ..Default::default()
        };
        let layout = Layout::new(&t);
        let params = init_params(&layout, 5);
        let teach = teacher(&t);
        let step = 3;
        let mean_over = |world: u32| -> Vec<f32> {
            let mut sum = vec![0f64; layout.len + 1];
            for rank in 0..world {
                let blocks = t.blocks_of(rank, world);
                let k = (blocks.end - blocks.start) as usize;
                let (mut x, mut y) = (Vec::new(), Vec::new());
                for j in blocks {
                    let (bx, by) = batch(&t, &teach, step, j, Parallelism::None);
                    x.extend(bx);
                    y.extend(by);
                }
                let mut tr = Trainer::new(
                    Layout::new(&t),
                    params.clone(),
                    vec![0f32; layout.len],
                    None,
                    t.batch_per_rank as usize,
                    (k, (world as f64 / t.blocks(world) as f64) as f32),
                    Parallelism::None,
                );
                tr.forward_backward(&x, &y).unwrap();
                if world == t.blocks(world) as u32 {
                    // One block: exactly the plain recipe's gradient.
                    let (bx, by) = batch(&t, &teach, step, rank as u64, Parallelism::None);
                    let mut g = vec![0f32; layout.len];
                    let loss = loss_and_grad(&layout, &params, &bx, &by, &mut g, Parallelism::None);
                    assert_eq!(&tr.grad()[..layout.len], &g[..]);
                    assert_eq!(tr.grad()[layout.len], loss);
                }
                for (s, g) in sum.iter_mut().zip(tr.grad()) {
                    *s += *g as f64;
                }
            }
            sum.iter().map(|s| (s / world as f64) as f32).collect()
        };
        let want = mean_over(8);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for world in [4, 3, 1] {
            let got = mean_over(world);
            for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-6 * scale,
                    "world {world}, [{i}]: {a} vs {e}"
                );
            }
        }
        // The blocks: contiguous shares, the first ranks one more.
        let shares: Vec<_> = (0..3).map(|r| t.blocks_of(r, 3)).collect();
        assert_eq!(shares, [0..3, 3..6, 6..8]);
        let plain = TrainWorkload {
            global_batch: None,
            ..t.clone()
        };
        assert_eq!((plain.blocks(4), plain.blocks_of(2, 4)), (4, 2..3));
    }

    #[test]
    fn layout_counts_parameters() {
        // The benchmark model: 3 layers of width 1024 -> 3.1 M parameters.
        let t = TrainWorkload {
            input_dim: 1024,
            hidden: 1024,
            layers: 3,
            output_dim: 1024,
            ..Default::default()
        };
        assert_eq!(Layout::new(&t).len, 3 * (1024 * 1024 + 1024));
        // The launcher's count (capacity planning) agrees, for any shape.
        for (i, h, l, o) in [(16, 32, 3, 4), (7, 5, 2, 3), (1024, 1024, 3, 1024)] {
            let t = TrainWorkload {
                input_dim: i,
                hidden: h,
                layers: l,
                output_dim: o,
                ..Default::default()
            };
            assert_eq!(Layout::new(&t).len as u64, t.param_count());
        }
    }
}
