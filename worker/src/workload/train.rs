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
use rand::{Rng, SeedableRng};
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
        dims.extend(std::iter::repeat(t.hidden as usize).take(t.layers as usize - 1));
        dims.push(t.output_dim as usize);
        let (mut w, mut b, mut off) = (Vec::new(), Vec::new(), 0);
        for l in 0..dims.len() - 1 {
            w.push(off..off + dims[l] * dims[l + 1]);
            off += dims[l] * dims[l + 1];
            b.push(off..off + dims[l + 1]);
            off += dims[l + 1];
        }
        Layout { dims, w, b, len: off }
    }
    fn layers(&self) -> usize {
        self.w.len()
    }
}

/// A seed for (seed, step, rank): splitmix64 finalisers over the three.
fn mix(seed: u64, step: u64, rank: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ rank.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
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
    (0..t.input_dim * t.output_dim).map(|_| rng.gen_range(-bound..bound)).collect()
}

/// One rank's batch for one step.
fn batch(t: &TrainWorkload, teacher: &[f32], step: u64, rank: u64, par: Parallelism) -> (Vec<f32>, Vec<f32>) {
    let (b, d, o) = (t.batch_per_rank as usize, t.input_dim as usize, t.output_dim as usize);
    let mut rng = ChaCha8Rng::seed_from_u64(mix(t.seed, step, rank));
    let x: Vec<f32> = (0..b * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let mut y = vec![0f32; b * o];
    matmul::matmul(&mut y, MatRef::new(&x, b, d), MatRef::new(teacher, d, o), false, par);
    y.iter_mut().for_each(|v| *v = v.tanh());
    (x, y)
}

/// Loss and gradient of 0.5·mean((f(x) - y)²) for one batch; the gradient
/// goes into `grad[..layout.len]`.
pub fn loss_and_grad(layout: &Layout, params: &[f32], x: &[f32], y: &[f32], grad: &mut [f32], par: Parallelism) -> f32 {
    let dims = &layout.dims;
    let nb = x.len() / dims[0];
    let layers = layout.layers();
    // Forward, keeping every activation (acts[l] is the input to layer l).
    let mut acts: Vec<Vec<f32>> = vec![x.to_vec()];
    for l in 0..layers {
        let mut z = vec![0f32; nb * dims[l + 1]];
        let bias = &params[layout.b[l].clone()];
        for row in z.chunks_mut(dims[l + 1]) {
            row.copy_from_slice(bias);
        }
        let w = MatRef::new(&params[layout.w[l].clone()], dims[l], dims[l + 1]);
        matmul::matmul(&mut z, MatRef::new(&acts[l], nb, dims[l]), w, true, par);
        if l + 1 < layers {
            z.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        acts.push(z);
    }
    let out = acts.pop().expect("output layer");
    let scale = 1.0 / out.len() as f32;
    let mut dz: Vec<f32> = out.iter().zip(y).map(|(o, t)| (o - t) * scale).collect();
    let loss = 0.5 * out.iter().zip(y).map(|(o, t)| (o - t) * (o - t)).sum::<f32>() * scale;
    // Backward.
    for l in (0..layers).rev() {
        let (din, dout) = (dims[l], dims[l + 1]);
        let a = MatRef::new(&acts[l], nb, din);
        matmul::matmul(&mut grad[layout.w[l].clone()], a.t(), MatRef::new(&dz, nb, dout), false, par);
        let gb = &mut grad[layout.b[l].clone()];
        gb.fill(0.0);
        for row in dz.chunks(dout) {
            gb.iter_mut().zip(row).for_each(|(g, v)| *g += v);
        }
        if l > 0 {
            let mut da = vec![0f32; nb * din];
            let w = MatRef::new(&params[layout.w[l].clone()], din, dout);
            matmul::matmul(&mut da, MatRef::new(&dz, nb, dout), w.t(), false, par);
            da.iter_mut().zip(&acts[l]).for_each(|(d, a)| {
                if *a <= 0.0 {
                    *d = 0.0
                }
            });
            dz = da;
        }
    }
    loss
}

pub fn sha256_hex(params: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in params {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn run<C: Collective>(t: &TrainWorkload, env: &WorkerEnv, coll: &mut C, progress: &Progress) -> Result<serde_json::Value, WorkerError> {
    let layout = Layout::new(t);
    let par = matmul::parallelism(env.threads);
    let rank = coll.rank();
    let world = coll.world_size();
    let mut params = init_params(&layout, t.seed);
    // Like DDP: rank 0's initial weights are the truth.
    coll.broadcast(&mut params, 0)?;
    let teacher = teacher(t);
    let mut velocity = vec![0f32; layout.len];
    let mut grad = vec![0f32; layout.len + 1];
    progress.set_phase("train", "samples/s", t.steps);
    let (lr, mu) = (t.lr as f32, t.momentum as f32);
    let mut first_loss = None;
    let mut loss = f32::NAN;
    let start = Instant::now();
    let mut timed_from = (start, 0u64);
    for step in 0..t.steps {
        if step == 1 {
            // Step 0 pays for page faults and thread start-up.
            timed_from = (Instant::now(), 1);
        }
        let (x, y) = batch(t, &teacher, step, rank as u64, par);
        let local = loss_and_grad(&layout, &params, &x, &y, &mut grad[..layout.len], par);
        grad[layout.len] = local;
        coll.all_reduce(&mut grad, ReduceOp::Avg)?;
        loss = grad[layout.len];
        if !loss.is_finite() {
            return Err(WorkerError::Workload(format!("loss became {loss} at step {step}; lower workload.lr")));
        }
        first_loss.get_or_insert(loss);
        for ((p, v), g) in params.iter_mut().zip(velocity.iter_mut()).zip(&grad[..layout.len]) {
            *v = mu * *v + g;
            *p -= lr * *v;
        }
        progress.set_step(step + 1);
        progress.set_loss(loss as f64);
        let elapsed = start.elapsed().as_secs_f64();
        progress.set_rate((step + 1) as f64 * (t.batch_per_rank as usize * world) as f64 / elapsed);
        if rank == 0 && ((step + 1) % t.log_every == 0 || step + 1 == t.steps) {
            println!("[rank 0] step {}/{} loss {loss:.6}", step + 1, t.steps);
        }
    }
    let timed_steps = t.steps - timed_from.1;
    let timed_s = timed_from.0.elapsed().as_secs_f64();
    let steps_per_s = if timed_steps > 0 && timed_s > 0.0 { timed_steps as f64 / timed_s } else { t.steps as f64 / start.elapsed().as_secs_f64() };
    let checksum = sha256_hex(&params);
    println!("[rank {rank}] trained {} steps: final loss {loss:.6}, {steps_per_s:.2} steps/s, weights sha256 {checksum}", t.steps);
    Ok(json!({
        "kind": "train",
        "steps": t.steps,
        "params": layout.len,
        "world_size": world,
        "first_loss": first_loss,
        "final_loss": loss,
        "steps_per_s": steps_per_s,
        "samples_per_s": steps_per_s * (t.batch_per_rank as usize * world) as f64,
        "weights_sha256": checksum,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let t = TrainWorkload { input_dim: 5, hidden: 7, layers: 3, output_dim: 3, batch_per_rank: 4, ..Default::default() };
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
            assert!((num - grad[i] as f64).abs() < 2e-3, "param {i}: numeric {num} analytic {}", grad[i]);
        }
    }

    #[test]
    fn layout_counts_parameters() {
        // The benchmark model: 3 layers of width 1024 -> 3.1 M parameters.
        let t = TrainWorkload { input_dim: 1024, hidden: 1024, layers: 3, output_dim: 1024, ..Default::default() };
        assert_eq!(Layout::new(&t).len, 3 * (1024 * 1024 + 1024));
    }
}
