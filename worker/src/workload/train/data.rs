//! The data: a step's batch is blocks of `batch_per_rank` rows, block j a
//! function of (seed, step, j) alone, y = tanh(x·T) for a fixed random
//! teacher T; a rank trains its share of the blocks (one, block = rank,
//! unless `workload.global_batch` is set), made ahead of time on a loader
//! thread.

use crate::matmul::{self, MatRef};
use gemm::Parallelism;
use proto::spec::TrainWorkload;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seed for (seed, step, rank): splitmix64 finalisers over the three.
pub(super) fn mix(seed: u64, step: u64, rank: u64) -> u64 {
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ rank.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn teacher(t: &TrainWorkload) -> Vec<f32> {
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
pub(super) fn inputs_into(t: &TrainWorkload, step: u64, rank: u64, x: &mut [f32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(t.seed, step, rank));
    x.iter_mut().for_each(|v| *v = uniform(&mut rng));
}

/// One rank's batch for one step, written into `x` (b x d) and `y` (b x o):
/// y = tanh(x·T).
pub(super) fn batch_into(
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
pub(super) fn batch(
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

/// One batch: inputs and targets.
type Batch = (Vec<f32>, Vec<f32>);

/// A thread that makes step k+1's batch while step k trains, as a data
/// loader would. Buffers go back and forth, so nothing is allocated per
/// step.
pub(super) struct Loader {
    full: std::sync::mpsc::Receiver<Batch>,
    empty: std::sync::mpsc::Sender<Batch>,
    thread: std::thread::JoinHandle<()>,
}

impl Loader {
    /// Batches for steps `from..t.steps` of `blocks` (one after the other
    /// in a batch); `inputs_only`: the targets are made elsewhere (on the
    /// GPU, by the same recipe).
    pub fn start(
        t: &TrainWorkload,
        teacher: Vec<f32>,
        from: u64,
        blocks: std::ops::Range<u64>,
        inputs_only: bool,
    ) -> std::io::Result<Loader> {
        let (full_tx, full) = std::sync::mpsc::sync_channel::<Batch>(1);
        let (empty, empty_rx) = std::sync::mpsc::channel::<Batch>();
        let k = (blocks.end - blocks.start) as usize;
        let (b, d, o) = (
            k * t.batch_per_rank as usize,
            t.input_dim as usize,
            t.output_dim as usize,
        );
        for _ in 0..2 {
            empty
                .send((vec![0f32; b * d], vec![0f32; b * o]))
                .expect("loader queue");
        }
        let t = t.clone();
        let thread = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                for step in from..t.steps {
                    let Ok((mut x, mut y)) = empty_rx.recv() else {
                        return;
                    };
                    let (xb, yb) = (x.len() / k, y.len() / k);
                    for (i, j) in blocks.clone().enumerate() {
                        let xs = &mut x[i * xb..(i + 1) * xb];
                        if inputs_only {
                            inputs_into(&t, step, j, xs);
                        } else {
                            let ys = &mut y[i * yb..(i + 1) * yb];
                            batch_into(&t, &teacher, step, j, xs, ys, Parallelism::None);
                        }
                    }
                    if full_tx.send((x, y)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Loader {
            full,
            empty,
            thread,
        })
    }

    /// The next step's batch (None: the loader stopped).
    pub fn next(&self) -> Option<Batch> {
        self.full.recv().ok()
    }

    /// A used batch's buffers, for the loader to fill again.
    pub fn recycle(&self, b: Batch) {
        let _ = self.empty.send(b);
    }

    pub fn stop(self) {
        drop(self.empty);
        drop(self.full);
        let _ = self.thread.join();
    }
}
