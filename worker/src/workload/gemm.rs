//! `gemm` workload: C = A·B timed per rank after warm-up, checked against
//! f64 dot products on sampled entries.

use crate::env::WorkerEnv;
use crate::matmul::{self, MatRef, Scalar};
use crate::progress::Progress;
use crate::WorkerError;
use proto::result::{Figures, GemmResult, WorkerResult};
use proto::spec::{Dtype, GemmWorkload};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

trait Sample: Scalar + Into<f64> {
    fn from_f64(v: f64) -> Self;
    /// Allowed relative error of a k-long dot product in this precision.
    fn tolerance(k: usize) -> f64;
}
impl Sample for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn tolerance(k: usize) -> f64 {
        1e-5 * (k as f64).sqrt().max(1.0) * 4.0
    }
}
impl Sample for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn tolerance(k: usize) -> f64 {
        1e-13 * (k as f64).sqrt().max(1.0) * 4.0
    }
}

/// GEMM on the GPU (cuBLAS), on the device CUDA_VISIBLE_DEVICES leaves first.
pub fn run_cuda(
    g: &GemmWorkload,
    env: &WorkerEnv,
    progress: &Progress,
) -> Result<WorkerResult, WorkerError> {
    use gpu::cuda_gemm::{self, GpuDtype};
    let dtype = match g.dtype {
        Dtype::F32 => GpuDtype::F32,
        Dtype::Tf32 => GpuDtype::Tf32,
        Dtype::Bf16 => GpuDtype::Bf16,
        Dtype::F16 => GpuDtype::F16,
        Dtype::F64 => {
            return Err(WorkerError::Workload(
                "f64 GEMM runs only on the CPU".into(),
            ))
        }
    };
    progress.set_phase("gemm (cuda)", "TFLOP/s", 1);
    let r = cuda_gemm::run(
        0,
        g.m as usize,
        g.n as usize,
        g.k as usize,
        dtype,
        g.warmup,
        g.iterations,
        0x6e6d ^ env.rank as u64,
    )
    .map_err(|e| WorkerError::Workload(e.to_string()))?;
    progress.set_rate(r.tflops_best);
    progress.set_step(1);
    println!(
        "[rank {}] gemm {}x{}x{} {} on {}: {:.1} TFLOP/s best, {:.1} mean, max rel err {:.2e}",
        env.rank,
        r.m,
        r.n,
        r.k,
        g.dtype.name(),
        r.device,
        r.tflops_best,
        r.tflops_mean,
        r.max_rel_error
    );
    Ok(WorkerResult::new(Figures::Gemm(GemmResult {
        device: Some(r.device),
        m: r.m as u64,
        n: r.n as u64,
        k: r.k as u64,
        dtype: g.dtype,
        threads: None,
        iterations: r.iterations as u64,
        seconds_best: r.ms_best / 1e3,
        seconds_mean: r.ms_mean / 1e3,
        gflops_best: r.tflops_best * 1e3,
        gflops_mean: r.tflops_mean * 1e3,
        max_rel_error: r.max_rel_error,
    })))
}

pub fn run(
    g: &GemmWorkload,
    env: &WorkerEnv,
    progress: &Progress,
) -> Result<WorkerResult, WorkerError> {
    match g.dtype {
        Dtype::F32 => run_typed::<f32>(g, env, progress),
        Dtype::F64 => run_typed::<f64>(g, env, progress),
        other => Err(WorkerError::Workload(format!(
            "{} GEMM needs a GPU (resources.accelerator)",
            other.name()
        ))),
    }
}

fn run_typed<T: Sample>(
    g: &GemmWorkload,
    env: &WorkerEnv,
    progress: &Progress,
) -> Result<WorkerResult, WorkerError> {
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    let mut rng = ChaCha8Rng::seed_from_u64(0x6e6d ^ env.rank as u64);
    let a: Vec<T> = (0..m * k)
        .map(|_| T::from_f64(rng.gen_range(-1.0..1.0)))
        .collect();
    let b: Vec<T> = (0..k * n)
        .map(|_| T::from_f64(rng.gen_range(-1.0..1.0)))
        .collect();
    let mut c = vec![T::ZERO; m * n];
    let par = matmul::parallelism(env.threads);
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    let total = (g.warmup + g.iterations) as u64;
    progress.set_phase("gemm", "GFLOP/s", total);
    let mut times = Vec::with_capacity(g.iterations as usize);
    for it in 0..total {
        let t0 = Instant::now();
        matmul::matmul(
            &mut c,
            MatRef::new(&a, m, k),
            MatRef::new(&b, k, n),
            false,
            par,
        );
        let dt = t0.elapsed().as_secs_f64();
        if it >= g.warmup as u64 {
            times.push(dt);
            progress.set_rate(flops / dt / 1e9);
        }
        progress.set_step(it + 1);
    }
    // Check sampled entries against an f64 dot product.
    let mut max_rel = 0.0f64;
    let samples = 64.min(m * n);
    for _ in 0..samples {
        let (i, j) = (rng.gen_range(0..m), rng.gen_range(0..n));
        let want: f64 = (0..k)
            .map(|p| a[i * k + p].into() * b[p * n + j].into())
            .sum();
        let scale: f64 = (0..k)
            .map(|p| (a[i * k + p].into() * b[p * n + j].into()).abs())
            .sum::<f64>()
            .max(1e-30);
        let got: f64 = c[i * n + j].into();
        max_rel = max_rel.max((got - want).abs() / scale);
    }
    let tol = T::tolerance(k);
    if max_rel > tol {
        return Err(WorkerError::Workload(format!(
            "GEMM result wrong: relative error {max_rel:e} > {tol:e}"
        )));
    }
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let gflops_best = flops / best / 1e9;
    let gflops_mean = flops / mean / 1e9;
    println!(
        "[rank {}] gemm {m}x{n}x{k} {:?}: {gflops_best:.1} GFLOP/s best, {gflops_mean:.1} mean over {} iterations ({} threads), max rel err {max_rel:.2e}",
        env.rank, g.dtype, g.iterations, env.threads
    );
    Ok(WorkerResult::new(Figures::Gemm(GemmResult {
        device: None,
        m: m as u64,
        n: n as u64,
        k: k as u64,
        dtype: g.dtype,
        threads: Some(env.threads as u64),
        iterations: g.iterations as u64,
        seconds_best: best,
        seconds_mean: mean,
        gflops_best,
        gflops_mean,
        max_rel_error: max_rel,
    })))
}
