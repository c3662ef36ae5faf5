//! `train` workload: data-parallel SGD with momentum on a synthetic
//! regression task. An MLP (ReLU between layers) learns y = tanh(x·T) for a
//! fixed random teacher T. Each rank's batch comes from (seed, step, rank);
//! gradients (and the loss, in one extra slot) are averaged with one
//! all-reduce per step. With the same world size, seed and thread count every
//! run ends with bit-identical weights on every rank.

use crate::collective::{Collective, ReduceOp};
use crate::env::WorkerEnv;
use crate::matmul::{self, MatRef};
use crate::progress::Progress;
use crate::WorkerError;
use gemm::Parallelism;
use proto::spec::TrainWorkload;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::time::Instant;

/// Where each layer's weights and bias sit in the flat parameter vector.
pub struct Layout {
    pub dims: Vec<usize>,
    pub w: Vec<Range<usize>>,
    pub b: Vec<Range<usize>>,
    pub len: usize,
}

impl Layout {
    pub fn new(t: &TrainWorkload) -> Layout {
        let mut dims = vec![t.input_dim as usize];
        dims.extend(std::iter::repeat_n(
            t.hidden as usize,
            t.layers as usize - 1,
        ));
        dims.push(t.output_dim as usize);
        let (mut w, mut b, mut off) = (Vec::new(), Vec::new(), 0);
        for l in 0..dims.len() - 1 {
            w.push(off..off + dims[l] * dims[l + 1]);
            off += dims[l] * dims[l + 1];
            b.push(off..off + dims[l + 1]);
            off += dims[l + 1];
        }
        Layout {
            dims,
            w,
            b,
            len: off,
        }
    }
    fn layers(&self) -> usize {
        self.w.len()
    }
}

/// A seed for (seed, step, rank): splitmix64 finalisers over the three.
fn mix(seed: u64, step: u64, rank: u64) -> u64 {
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ rank.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn init_params(layout: &Layout, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, u64::MAX, u64::MAX));
    let mut p = vec![0f32; layout.len];
    for l in 0..layout.layers() {
        let bound = (3.0 / layout.dims[l] as f32).sqrt();
        for v in &mut p[layout.w[l].clone()] {
            *v = rng.gen_range(-bound..bound);
        }
    }
    p
}

fn teacher(t: &TrainWorkload) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(t.seed, u64::MAX - 1, 0));
    let bound = (3.0 / t.input_dim as f32).sqrt() * 1.5;
    (0..t.input_dim * t.output_dim)
        .map(|_| rng.gen_range(-bound..bound))
        .collect()
}

/// Uniform in [-1, 1) from the top 24 bits of one draw: exact in f32 and
/// several times faster than a generic range sampler.
fn uniform(rng: &mut ChaCha8Rng) -> f32 {
    ((rng.next_u32() >> 8) as f32) * (2.0 / 16_777_216.0) - 1.0
}

/// One rank's inputs for one step, written into `x` (b x d).
fn inputs_into(t: &TrainWorkload, step: u64, rank: u64, x: &mut [f32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(t.seed, step, rank));
    x.iter_mut().for_each(|v| *v = uniform(&mut rng));
}

/// One rank's batch for one step, written into `x` (b x d) and `y` (b x o):
/// y = tanh(x·T).
fn batch_into(
    t: &TrainWorkload,
    teacher: &[f32],
    step: u64,
    rank: u64,
    x: &mut [f32],
    y: &mut [f32],
    par: Parallelism,
) {
    let (b, d, o) = (
        t.batch_per_rank as usize,
        t.input_dim as usize,
        t.output_dim as usize,
    );
    inputs_into(t, step, rank, x);
    matmul::matmul(
        y,
        MatRef::new(x, b, d),
        MatRef::new(teacher, d, o),
        false,
        par,
    );
    y.iter_mut().for_each(|v| *v = v.tanh());
}

#[cfg(test)]
fn batch(
    t: &TrainWorkload,
    teacher: &[f32],
    step: u64,
    rank: u64,
    par: Parallelism,
) -> (Vec<f32>, Vec<f32>) {
    let mut x = vec![0f32; (t.batch_per_rank * t.input_dim) as usize];
    let mut y = vec![0f32; (t.batch_per_rank * t.output_dim) as usize];
    batch_into(t, teacher, step, rank, &mut x, &mut y, par);
    (x, y)
}

/// Buffers reused every step (activations and their gradients), so the hot
/// loop allocates nothing.
pub struct Workspace {
    /// acts[l] is the input of layer l (acts[0] is the batch); acts[L] the output.
    acts: Vec<Vec<f32>>,
    dz: Vec<f32>,
    da: Vec<f32>,
}

impl Workspace {
    pub fn new(layout: &Layout, batch: usize) -> Workspace {
        let acts = layout.dims.iter().map(|d| vec![0f32; batch * d]).collect();
        let widest = layout.dims.iter().max().copied().unwrap_or(0) * batch;
        Workspace {
            acts,
            dz: vec![0f32; widest],
            da: vec![0f32; widest],
        }
    }
}

#[cfg(test)]
/// Loss and gradient of 0.5·mean((f(x) - y)²) for one batch; the gradient
/// goes into `grad[..layout.len]`.
fn loss_and_grad(
    layout: &Layout,
    params: &[f32],
    x: &[f32],
    y: &[f32],
    grad: &mut [f32],
    par: Parallelism,
) -> f32 {
    let mut ws = Workspace::new(layout, x.len() / layout.dims[0]);
    ws.acts[0].copy_from_slice(x);
    loss_and_grad_ws(layout, params, &mut ws, y, grad, par)
}

/// As `loss_and_grad`, with the batch already in `ws.acts[0]`.
pub fn loss_and_grad_ws(
    layout: &Layout,
    params: &[f32],
    ws: &mut Workspace,
    y: &[f32],
    grad: &mut [f32],
    par: Parallelism,
) -> f32 {
    let dims = &layout.dims;
    let nb = ws.acts[0].len() / dims[0];
    let layers = layout.layers();
    // Forward.
    for l in 0..layers {
        let (inputs, outputs) = ws.acts.split_at_mut(l + 1);
        let z = &mut outputs[0];
        let bias = &params[layout.b[l].clone()];
        for row in z.chunks_mut(dims[l + 1]) {
            row.copy_from_slice(bias);
        }
        let w = MatRef::new(&params[layout.w[l].clone()], dims[l], dims[l + 1]);
        matmul::matmul(z, MatRef::new(&inputs[l], nb, dims[l]), w, true, par);
        if l + 1 < layers {
            z.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
    let out = &ws.acts[layers];
    let scale = 1.0 / out.len() as f32;
    let mut loss = 0f32;
    let dz = &mut ws.dz[..out.len()];
    for ((d, o), t) in dz.iter_mut().zip(out).zip(y) {
        let e = o - t;
        loss += e * e;
        *d = e * scale;
    }
    let loss = 0.5 * loss * scale;
    // Backward.
    for l in (0..layers).rev() {
        let (din, dout) = (dims[l], dims[l + 1]);
        let dz = &ws.dz[..nb * dout];
        let a = MatRef::new(&ws.acts[l], nb, din);
        matmul::matmul(
            &mut grad[layout.w[l].clone()],
            a.t(),
            MatRef::new(dz, nb, dout),
            false,
            par,
        );
        let gb = &mut grad[layout.b[l].clone()];
        gb.fill(0.0);
        for row in dz.chunks(dout) {
            gb.iter_mut().zip(row).for_each(|(g, v)| *g += v);
        }
        if l > 0 {
            let da = &mut ws.da[..nb * din];
            let w = MatRef::new(&params[layout.w[l].clone()], din, dout);
            matmul::matmul(da, MatRef::new(dz, nb, dout), w.t(), false, par);
            // ReLU': the gradient passes where the activation was positive.
            da.iter_mut().zip(&ws.acts[l]).for_each(|(d, a)| {
                if *a <= 0.0 {
                    *d = 0.0
                }
            });
            std::mem::swap(&mut ws.dz, &mut ws.da);
        }
    }
    loss
}

fn gpu_err(e: gpu::GpuError) -> WorkerError {
    WorkerError::Workload(e.to_string())
}

pub fn sha256_hex(params: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in params {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The training state a survivor keeps in memory between rounds.
pub struct TrainState {
    pub params: Vec<f32>,
    pub velocity: Vec<f32>,
    /// The step it is at (the next to train).
    pub step: u64,
}

/// Train to `t.steps` (or a notice's stop step). The state comes from
/// `state_from` (a survivor that kept it in memory: `kept` on that rank)
/// by broadcast, else rank 0 loads the newest checkpoint (or initialises)
/// and broadcasts it. Returns the result and the state at the end.
pub fn run<C: Collective>(
    t: &TrainWorkload,
    env: &WorkerEnv,
    coll: &mut C,
    progress: &Progress,
    kept: Option<TrainState>,
    state_from: Option<u32>,
) -> Result<(serde_json::Value, TrainState), WorkerError> {
    let layout = Layout::new(t);
    let par = matmul::parallelism(env.threads);
    let rank = coll.rank();
    let world = coll.world_size();
    let root = state_from.unwrap_or(0) as usize;
    let survivor = kept.is_some();
    // Only the root's state matters (the broadcast below gives it to
    // everyone): a survivor's kept state, or rank 0's initial state when no
    // checkpoint replaces it.
    let (mut params, mut velocity, kept_step) = match kept {
        Some(k) => (k.params, k.velocity, Some(k.step)),
        None => (vec![0f32; layout.len], vec![0f32; layout.len], None),
    };
    let t_load = Instant::now();
    // Resume from the newest checkpoint that verifies. The state is weights,
    // momentum and the step; batches are a function of (seed, step, rank),
    // so that is all a bit-identical continuation needs.
    let store = env.checkpoint.dir.as_ref().map(|d| {
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
    });
    // Which training this is: checked against the checkpoint loaded,
    // recorded in the ones written.
    let save_tag = crate::checkpoint::SaveTag {
        run_id: env.run_id.clone(),
        attempt: env.restart_count,
        identity: proto::checkpoint::Identity::train(t),
    };
    let mut start_step = kept_step.unwrap_or(0);
    // Rank 0 loads, straight into the model's buffers; the broadcast below
    // hands its state to the others (loading on every rank would only make
    // them compete for the disk). Nobody loads when a survivor has it.
    if survivor {
        println!("[rank {rank}] rejoined with its state in memory at step {start_step} (no checkpoint read)");
    } else if state_from.is_some() {
        // A survivor broadcasts it below.
    } else if let (Some(store), 0) = (&store, rank) {
        let (loaded, skipped) = crate::checkpoint::load_latest_into(
            store,
            &mut [("params", &mut params), ("velocity", &mut velocity)],
            crate::checkpoint::Expect {
                identity: &save_tag.identity,
                allow_mismatch: env.checkpoint.allow_identity_mismatch,
            },
        )
        .map_err(|e| WorkerError::Workload(e.to_string()))?;
        // On the run's timeline; a warning only for what the launcher could
        // not see before it started (a shard that fails its checksum: it
        // reads manifests only).
        for s in &skipped {
            println!("[rank {rank}] {s}");
            progress.note(
                "checkpoint_skipped",
                s.to_string(),
                !s.manifest,
                serde_json::json!({"checkpoint": s.dir, "manifest": s.manifest}),
            );
        }
        if loaded.is_none() && !skipped.is_empty() {
            progress.note(
                "checkpoint_none_usable",
                format!(
                    "no checkpoint in {} could be used ({} skipped): training starts from step 0",
                    env.checkpoint.dir.as_deref().unwrap_or("?"),
                    skipped.len()
                ),
                skipped.iter().any(|s| !s.manifest),
                serde_json::Value::Null,
            );
        }
        match loaded {
            Some(l) => {
                start_step = l.step.min(t.steps);
                println!(
                    "[rank {rank}] resumed from checkpoint at step {start_step} ({:.2} GB loaded and verified in {:.2} s)",
                    (8 * layout.len) as f64 / 1e9,
                    t_load.elapsed().as_secs_f64()
                );
                if !l.other_training.is_empty() {
                    // The launcher said so before it started anything.
                    println!(
                        "[rank {rank}] that checkpoint is of another training, loaded on purpose (checkpoint.allow_identity_mismatch): {}",
                        l.other_training.join("; ")
                    );
                }
            }
            None => {
                // (A broken checkpoint may have been read in part.)
                params = init_params(&layout, t.seed);
                velocity.fill(0.0);
            }
        }
    } else if rank == 0 {
        params = init_params(&layout, t.seed);
    }
    let t_bcast = Instant::now();
    // Like DDP: the root's state is the truth (also settles which
    // checkpoint every rank resumed from).
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
            "[rank 0] state broadcast to {world} ranks in {:.2} s",
            t_bcast.elapsed().as_secs_f64()
        );
    }
    // On a GPU the model lives in device memory from here on; `params` and
    // `velocity` are refreshed from it for checkpoints and at the end.
    let mut device = if env.cuda {
        let dev = match coll.nccl() {
            Some(comm) => comm.device().clone(),
            None => gpu::mlp_cuda::Device::open(0).map_err(gpu_err)?,
        };
        let mut m = gpu::mlp_cuda::DeviceMlp::new(&dev, &layout.dims, t.batch_per_rank as usize)
            .map_err(gpu_err)?;
        m.load_state(&params, &velocity).map_err(gpu_err)?;
        println!(
            "[rank {rank}] training on {} (cuBLAS FP32; gradients reduced {})",
            dev.name,
            if coll.nccl().is_some() {
                "by NCCL in device memory"
            } else {
                "on the TCP ring through host memory"
            }
        );
        Some(m)
    } else {
        None
    };
    let device_name = device.as_ref().map(|m| m.dev.name.clone());
    let mut checkpoints_written = 0u64;
    // How long the checkpoint at a notice's stop step took.
    let mut stop_checkpoint_s: Option<f64> = None;
    // The background checkpoint write in flight (async_write).
    // It hands back the buffers it copied this rank's segments into, so the
    // next save reuses them (fresh memory costs a page fault per 4 KiB).
    type Copies = (Vec<f32>, Vec<f32>);
    let mut inflight: Option<
        std::thread::JoinHandle<Result<Copies, crate::checkpoint::CheckpointError>>,
    > = None;
    let mut spare: Copies = (Vec::new(), Vec::new());
    let my_seg = crate::ring::segment(layout.len, world, rank);
    let mut checkpoint_s = 0f64;
    let teacher = teacher(t);
    if let Some(m) = device.as_mut() {
        m.set_teacher(&teacher).map_err(gpu_err)?;
    }
    // Gradient, then two slots: the loss, and the notice flag, which is how
    // every rank learns of a preemption notice at the same step.
    let mut grad = vec![0f32; layout.len + 2];
    // A notice may also reach this worker directly (SIGUSR1, e.g. from
    // Slurm's --signal or a cloud agent).
    let usr1 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, usr1.clone())
        .map_err(|e| WorkerError::Workload(format!("cannot install the SIGUSR1 handler: {e}")))?;
    if env.sigterm_is_notice {
        signal_hook::flag::register(signal_hook::consts::SIGTERM, usr1.clone()).map_err(|e| {
            WorkerError::Workload(format!("cannot install the SIGTERM handler: {e}"))
        })?;
    }
    let mut preempted_at = None;
    let mut checkpoint_committed = false;
    // Host activations only where the host computes.
    let mut ws = Workspace::new(
        &layout,
        if device.is_some() {
            0
        } else {
            t.batch_per_rank as usize
        },
    );
    progress.set_phase("train", "samples/s", t.steps);
    let (lr, mu) = (t.lr as f32, t.momentum as f32);
    let mut first_loss = None;
    let mut loss = f32::NAN;
    let start = Instant::now();
    let mut timed_from = (start, 0u64);
    // Seconds spent: waiting for the batch, forward+backward, all-reduce,
    // update. (Per-layer all-reduces, inline or overlapped on a second
    // thread, were slower on 2 cores: see docs/benchmarks.md.)
    let mut phase_s = [0f64; 4];
    // Batches depend only on (seed, step, rank), so a loader thread makes
    // step k+1's batch while step k trains, as a data loader would. Buffers
    // go back and forth so nothing is allocated per step.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<f32>, Vec<f32>)>(1);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<(Vec<f32>, Vec<f32>)>();
    let (b, d, o) = (
        t.batch_per_rank as usize,
        t.input_dim as usize,
        t.output_dim as usize,
    );
    for _ in 0..2 {
        empty_tx
            .send((vec![0f32; b * d], vec![0f32; b * o]))
            .expect("loader queue");
    }
    let loader_t = t.clone();
    let steps = t.steps;
    // On a GPU only the inputs cross from the host; the targets are made
    // there (the same recipe).
    let inputs_only = device.is_some();
    let loader = std::thread::Builder::new()
        .name("loader".into())
        .spawn(move || {
            for step in start_step..steps {
                let Ok((mut x, mut y)) = empty_rx.recv() else {
                    return;
                };
                if inputs_only {
                    inputs_into(&loader_t, step, rank as u64, &mut x);
                } else {
                    batch_into(
                        &loader_t,
                        &teacher,
                        step,
                        rank as u64,
                        &mut x,
                        &mut y,
                        Parallelism::None,
                    );
                }
                if full_tx.send((x, y)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| WorkerError::Workload(format!("cannot start the loader thread: {e}")))?;
    progress.set_start_step(start_step);
    let pace = std::time::Duration::from_secs_f64(t.pace_ms / 1000.0);
    for step in start_step..t.steps {
        if step == start_step + 1 {
            // The first step pays for page faults and thread start-up.
            timed_from = (Instant::now(), start_step + 1);
        }
        if env.fault_at_step == Some((step, rank as u32))
            && !env.fault_mid_checkpoint
            && env.restart_count < env.fault_attempts
        {
            let msg = format!(
                "injected fault at step {step} ({})",
                proto::contract::Faults::at_step_name()
            );
            // As a failing step would: the error (and its step) goes to
            // the worker's edge, which writes the error file and exits 74.
            progress.set_step(step);
            return Err(WorkerError::Workload(msg));
        }
        let t0 = Instant::now();
        let (x, y) = full_rx
            .recv()
            .map_err(|_| WorkerError::Workload("the loader thread stopped".into()))?;
        let t1 = Instant::now();
        // The loss and the notice flag ride along: one all-reduce per step.
        match device.as_mut() {
            None => {
                ws.acts[0].copy_from_slice(&x);
                grad[layout.len] =
                    loss_and_grad_ws(&layout, &params, &mut ws, &y, &mut grad[..layout.len], par);
            }
            Some(m) => m.forward_backward(&x).map_err(gpu_err)?,
        }
        let _ = empty_tx.send((x, y));
        if usr1.load(std::sync::atomic::Ordering::Relaxed) && !progress.notice() {
            eprintln!("[rank {rank}] preemption notice (SIGUSR1 or the scheduler's SIGTERM)");
            progress.set_notice();
        }
        let flag = if progress.notice() { 1.0 } else { 0.0 };
        match device.as_mut() {
            None => grad[layout.len + 1] = flag,
            Some(m) => m.set_flag(flag).map_err(gpu_err)?,
        }
        if let Some(left) = pace.checked_sub(t0.elapsed()) {
            // workload.pace_ms: stand in for a bigger model's compute.
            std::thread::sleep(left);
        }
        let t2 = Instant::now();
        let (group_loss, group_flag) = match device.as_mut() {
            None => {
                coll.all_reduce(&mut grad, ReduceOp::Avg)?;
                (grad[layout.len], grad[layout.len + 1])
            }
            Some(m) => {
                if let Some(comm) = coll.nccl() {
                    comm.all_reduce_device(m.grad_mut(), gpu::nccl_comm::Op::Avg)
                        .map_err(|e| crate::collective::CollectiveError::Nccl(e.to_string()))?;
                } else {
                    m.grad_to_host(&mut grad).map_err(gpu_err)?;
                    coll.all_reduce(&mut grad, ReduceOp::Avg)?;
                    m.grad_from_host(&grad).map_err(gpu_err)?;
                }
                m.slots().map_err(gpu_err)?
            }
        };
        let t3 = Instant::now();
        loss = group_loss;
        if !loss.is_finite() {
            return Err(WorkerError::Workload(format!(
                "loss became {loss} at step {step}; lower workload.lr"
            )));
        }
        first_loss.get_or_insert(loss);
        match device.as_mut() {
            None => {
                for ((p, v), g) in params
                    .iter_mut()
                    .zip(velocity.iter_mut())
                    .zip(&grad[..layout.len])
                {
                    *v = mu * *v + g;
                    *p -= lr * *v;
                }
            }
            Some(m) => m.update(lr, mu).map_err(gpu_err)?,
        }
        let t4 = Instant::now();
        for (acc, d) in phase_s.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3]) {
            *acc += d.as_secs_f64();
        }
        progress.set_step(step + 1);
        progress.set_loss(loss as f64);
        if step == start_step {
            // The launcher times recovery up to the first step done.
            progress.beat_now();
        }
        let elapsed = start.elapsed().as_secs_f64();
        progress.set_rate(
            (step + 1 - start_step) as f64 * (t.batch_per_rank as usize * world) as f64 / elapsed,
        );
        if rank == 0 && ((step + 1) % t.log_every == 0 || step + 1 == t.steps) {
            println!("[rank 0] step {}/{} loss {loss:.6}", step + 1, t.steps);
        }
        // Every rank sees the same flag sum after the all-reduce, so all stop
        // after this same step.
        let stop_now = group_flag > 0.0;
        let every = env.checkpoint.every_steps;
        let periodic = every > 0 && (step + 1) % every == 0;
        if let (Some(store), true) = (&store, periodic || stop_now) {
            let tc = Instant::now();
            if let Some(m) = &device {
                // From device memory: copy to host, then the normal writer.
                m.state(&mut params, &mut velocity).map_err(gpu_err)?;
            }
            let err = |e: crate::checkpoint::CheckpointError| WorkerError::Workload(e.to_string());
            // At most one write in flight: finish the previous one first.
            if let Some(h) = inflight.take() {
                spare = h.join().expect("checkpoint writer thread").map_err(err)?;
            }
            if env.checkpoint.async_write && !stop_now {
                // Copy this rank's segment of the state, write it in the
                // background; rank 0 commits once every rank's shards are
                // there.
                let (mut p, mut v) = std::mem::take(&mut spare);
                p.clear();
                p.extend_from_slice(&params[my_seg.clone()]);
                v.clear();
                v.extend_from_slice(&velocity[my_seg.clone()]);
                let (store, tag) = (store.clone(), save_tag.clone());
                let (len, keep, seed, done) =
                    (layout.len, env.checkpoint.keep as usize, t.seed, step + 1);
                let wait = std::time::Duration::from_secs_f64(env.collective.timeout_s.max(60.0));
                inflight = Some(std::thread::spawn(move || {
                    crate::checkpoint::write_segments(
                        &store,
                        &tag,
                        done,
                        rank,
                        &[("params", &p), ("velocity", &v)],
                    )?;
                    if rank == 0 {
                        crate::checkpoint::wait_for_shards(
                            &store,
                            &tag,
                            done,
                            world,
                            &["params", "velocity"],
                            wait,
                        )?;
                        let scalars = std::collections::BTreeMap::from([
                            ("step".to_string(), done),
                            ("seed".to_string(), seed),
                        ]);
                        crate::checkpoint::commit(
                            &store,
                            &tag,
                            done,
                            world,
                            &[("params", len), ("velocity", len)],
                            scalars,
                            keep,
                        )?;
                        println!("[rank 0] checkpoint committed at step {done} (async)");
                    }
                    Ok((p, v))
                }));
            } else {
                crate::checkpoint::write_shard(
                    store,
                    &save_tag,
                    step + 1,
                    rank,
                    world,
                    &[("params", &params), ("velocity", &velocity)],
                )
                .map_err(err)?;
                coll.barrier()?;
                if rank == 0 {
                    let scalars = std::collections::BTreeMap::from([
                        ("step".to_string(), step + 1),
                        ("seed".to_string(), t.seed),
                    ]);
                    crate::checkpoint::commit(
                        store,
                        &save_tag,
                        step + 1,
                        world,
                        &[("params", layout.len), ("velocity", layout.len)],
                        scalars,
                        env.checkpoint.keep as usize,
                    )
                    .map_err(err)?;
                    println!(
                        "[rank 0] checkpoint committed at step {} ({:.2} s)",
                        step + 1,
                        tc.elapsed().as_secs_f64()
                    );
                }
                checkpoint_committed = stop_now;
            }
            checkpoints_written += 1;
            checkpoint_s += tc.elapsed().as_secs_f64();
            if stop_now {
                stop_checkpoint_s = Some(tc.elapsed().as_secs_f64());
            }
        }
        if stop_now {
            preempted_at = Some(step + 1);
            println!(
                "[rank {rank}] stopping at step {} after a preemption notice ({})",
                step + 1,
                if checkpoint_committed {
                    "checkpoint committed"
                } else {
                    "no checkpoint.dir: nothing saved"
                }
            );
            break;
        }
    }
    drop(empty_tx);
    drop(full_rx);
    let _ = loader.join();
    if let Some(h) = inflight.take() {
        h.join()
            .expect("checkpoint writer thread")
            .map_err(|e| WorkerError::Workload(e.to_string()))?;
    }
    // A stop after a notice ends before t.steps.
    let done = preempted_at.unwrap_or(t.steps);
    let timed_steps = done.saturating_sub(timed_from.1);
    let timed_s = timed_from.0.elapsed().as_secs_f64();
    let ran = done.saturating_sub(start_step);
    // Figures only for what happened: no step, no rate and no loss.
    let steps_per_s = if timed_steps > 0 && timed_s > 0.0 {
        Some(timed_steps as f64 / timed_s)
    } else if ran > 0 {
        Some(ran as f64 / start.elapsed().as_secs_f64())
    } else {
        None
    };
    let final_loss = Some(loss).filter(|l| ran > 0 && l.is_finite());
    if let Some(m) = &device {
        m.state(&mut params, &mut velocity).map_err(gpu_err)?;
    }
    let checksum = sha256_hex(&params);
    match (final_loss, steps_per_s) {
        (Some(l), Some(r)) => println!("[rank {rank}] trained to step {done} of {}: final loss {l:.6}, {r:.2} steps/s, weights sha256 {checksum}", t.steps),
        _ => println!("[rank {rank}] at step {done} of {} (no step run in this attempt), weights sha256 {checksum}", t.steps),
    }
    let result = json!({
        "kind": "train",
        "device": device_name.unwrap_or_else(|| "cpu".into()),
        "steps": t.steps,
        "steps_done": done,
        "stop_checkpoint_s": stop_checkpoint_s,
        "params": layout.len,
        "world_size": world,
        "first_loss": first_loss,
        "final_loss": final_loss,
        "steps_per_s": steps_per_s,
        "samples_per_s": steps_per_s.map(|r| r * (t.batch_per_rank as usize * world) as f64),
        "weights_sha256": checksum,
        "resumed_from_step": start_step,
        // Where this round's state came from: a survivor's memory (this
        // rank's own, or broadcast from `state_from`), else a checkpoint
        // (or the initial weights).
        "state_in_memory": survivor,
        "state_from_rank": state_from,
        "preempted": preempted_at.is_some(),
        "preempted_at_step": preempted_at,
        "checkpoint_committed": checkpoint_committed,
        "checkpoints_written": checkpoints_written,
        "checkpoint_seconds": checkpoint_s,
        "checkpoint_async": env.checkpoint.async_write,
        // Time the training loop spent on checkpoints, per step (the stall).
        "checkpoint_stall_per_step_s": checkpoint_s / (t.steps - start_step).max(1) as f64,
        "seconds_per_step": {
            "data_wait": phase_s[0] / t.steps as f64,
            "forward_backward": phase_s[1] / t.steps as f64,
            "allreduce": phase_s[2] / t.steps as f64,
            "update": phase_s[3] / t.steps as f64,
        },
    });
    Ok((
        result,
        TrainState {
            params,
            velocity,
            step: done,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(
                host.bufs[&Buf::Act(1)].iter().any(|v| *v == 0.0),
                "{:?}",
                layout.dims
            );
        }
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
