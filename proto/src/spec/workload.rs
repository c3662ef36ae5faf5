//! What each worker runs: the built-in workloads and the user's command.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What each worker runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    Gemm(GemmWorkload),
    Allreduce(AllreduceWorkload),
    Train(TrainWorkload),
    Command(CommandWorkload),
}

impl Workload {
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Gemm(_) => "gemm",
            Workload::Allreduce(_) => "allreduce",
            Workload::Train(_) => "train",
            Workload::Command(_) => "command",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    F32,
    F64,
    /// f32 storage, TF32 tensor-core math (GPU only).
    Tf32,
    /// GPU only.
    Bf16,
    /// GPU only.
    F16,
}

impl Dtype {
    pub fn size_bytes(self) -> u64 {
        match self {
            Dtype::F32 | Dtype::Tf32 => 4,
            Dtype::F64 => 8,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::Tf32 => "tf32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
    pub fn gpu_only(self) -> bool {
        matches!(self, Dtype::Tf32 | Dtype::Bf16 | Dtype::F16)
    }
}

/// Whether an accelerator name asks for the CPU.
pub fn is_cpu_accelerator(acc: &str) -> bool {
    acc.eq_ignore_ascii_case("cpu")
}

/// C = A x B, timed per rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GemmWorkload {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub dtype: Dtype,
    /// Timed repetitions (after warm-up).
    pub iterations: u32,
    pub warmup: u32,
}

impl Default for GemmWorkload {
    fn default() -> Self {
        Self {
            m: 1024,
            n: 1024,
            k: 1024,
            dtype: Dtype::F32,
            iterations: 10,
            warmup: 2,
        }
    }
}

/// An all_reduce_perf-style sweep over message sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AllreduceWorkload {
    pub min_bytes: u64,
    pub max_bytes: u64,
    /// Each size is the previous one times this factor.
    pub step_factor: u64,
    pub iterations: u32,
    pub warmup: u32,
    /// Verify every result against the expected sum.
    pub check: bool,
}

impl Default for AllreduceWorkload {
    fn default() -> Self {
        Self {
            min_bytes: 1024,
            max_bytes: 16 << 20,
            step_factor: 4,
            iterations: 10,
            warmup: 3,
            check: true,
        }
    }
}

/// Data-parallel SGD with momentum on a synthetic regression task (an MLP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainWorkload {
    pub steps: u64,
    pub input_dim: u64,
    pub hidden: u64,
    /// Linear layers, at least 2 (input -> hidden ... -> output).
    pub layers: u32,
    pub output_dim: u64,
    pub batch_per_rank: u64,
    /// Rows of one step over all ranks, kept whatever the world size: the
    /// step's data is `global_batch / batch_per_rank` blocks of
    /// `batch_per_rank` rows, block j drawn from (seed, step, j), and each
    /// rank trains its share of the blocks (the gradient weighted so the
    /// step is the mean over all of them). A checkpoint resumed on another
    /// world size trains on the same data. Unset: `batch_per_rank` x world
    /// (one block a rank, the data changes with the world size). On a GPU
    /// each rank trains one block a step (global_batch = batch_per_rank x
    /// world).
    pub global_batch: Option<u64>,
    pub lr: f64,
    pub momentum: f64,
    pub seed: u64,
    /// Report loss every this many steps.
    pub log_every: u64,
    /// Each step takes at least this many milliseconds per block of
    /// `batch_per_rank` rows the rank trains (one, unless `global_batch`
    /// gives it more): a stand-in for a real model's compute time in
    /// drills and simulations, so that wall-clock events (preemption
    /// notices, kills) land mid-run on any machine, and a rank with twice
    /// the rows takes twice as long. 0 (default): as fast as the CPU goes.
    pub pace_ms: f64,
}

impl TrainWorkload {
    /// Host memory one worker of a `world`-rank job needs, in bytes, from
    /// what the trainer allocates: weights, momentum and gradient, the
    /// teacher matrix, activations and their gradients for one batch, the
    /// batch loader's double buffer, the ring's and an asynchronous
    /// checkpoint's segments, and 32 MiB for the process itself. An
    /// estimate to refuse what cannot fit, not a bound (measured: 226 MB
    /// peak RSS for a 285 MB estimate, hidden 4096, 4 workers).
    pub fn memory_per_worker(&self, world: u32) -> u64 {
        let p = self.param_count();
        let b = self.batch_per_rank;
        // The loader holds all of a rank's blocks.
        let lb = b.saturating_mul(self.blocks_per_rank_max(world));
        let dims =
            self.input_dim + self.hidden * (self.layers.saturating_sub(1) as u64) + self.output_dim;
        let f = 4u64; // float32
        let state = f.saturating_mul(p.saturating_mul(3));
        let teacher = f * self.input_dim.saturating_mul(self.output_dim);
        let activations = (2 * f).saturating_mul(b.saturating_mul(dims));
        let loader = (3 * f).saturating_mul(lb.saturating_mul(self.input_dim + self.output_dim));
        let segments = (2 * f).saturating_mul(p) / world.max(1) as u64;
        [state, teacher, activations, loader, segments, 32 << 20]
            .into_iter()
            .fold(0u64, u64::saturating_add)
    }

    /// Blocks of `batch_per_rank` rows in one step: `global_batch /
    /// batch_per_rank`, or one per rank.
    pub fn blocks(&self, world: u32) -> u64 {
        self.global_batch
            .map_or(world as u64, |g| g / self.batch_per_rank.max(1))
    }

    /// The blocks rank `rank` of `world` trains: a contiguous share, the
    /// first `blocks % world` ranks one more than the others.
    pub fn blocks_of(&self, rank: u32, world: u32) -> std::ops::Range<u64> {
        let (v, w, r) = (self.blocks(world), world.max(1) as u64, rank as u64);
        let (q, extra) = (v / w, v % w);
        let start = r * q + r.min(extra);
        start..start + q + u64::from(r < extra)
    }

    fn blocks_per_rank_max(&self, world: u32) -> u64 {
        self.blocks(world).div_ceil(world.max(1) as u64).max(1)
    }

    /// Parameters of the MLP: weights and biases of every layer.
    pub fn param_count(&self) -> u64 {
        let mut dims = vec![self.input_dim];
        dims.extend(std::iter::repeat_n(
            self.hidden,
            self.layers.saturating_sub(1) as usize,
        ));
        dims.push(self.output_dim);
        dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }
}

impl Default for TrainWorkload {
    fn default() -> Self {
        Self {
            steps: 200,
            input_dim: 64,
            hidden: 256,
            layers: 3,
            output_dim: 8,
            batch_per_rank: 64,
            global_batch: None,
            lr: 0.02,
            momentum: 0.9,
            seed: 0,
            log_every: 10,
            pace_ms: 0.0,
        }
    }
}

/// The user's own program, run once per device under the env contract.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandWorkload {
    pub argv: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
}
