//! C = A·B on one GPU through cuBLAS, in f32, tf32 (f32 storage, TF32 tensor
//! cores), bf16 and f16 (both accumulating in f32). Timed with CUDA events
//! around each iteration after warm-up; sampled entries checked against an
//! f64 dot product of the same (rounded) inputs.
//!
//! Untested on a GPU so far: scripts/gpu-check.sh exercises it on a lent
//! machine.

use crate::GpuError;
use cudarc::cublas::{sys as cb, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{sys as cu, CudaContext, DeviceRepr, ValidAsZeroBits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuDtype {
    F32,
    Tf32,
    Bf16,
    F16,
}

impl GpuDtype {
    /// Allowed error relative to sum |a_i b_i| (output rounding dominates
    /// for the 16-bit types; TF32 keeps 10 mantissa bits of each input).
    fn tolerance(self) -> f64 {
        match self {
            GpuDtype::F32 => 1e-5,
            GpuDtype::Tf32 => 4e-3,
            GpuDtype::Bf16 => 1.6e-2,
            GpuDtype::F16 => 2e-3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GemmResult {
    pub device: String,
    pub dtype: GpuDtype,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub iterations: u32,
    pub ms_best: f64,
    pub ms_mean: f64,
    pub tflops_best: f64,
    pub tflops_mean: f64,
    pub max_rel_error: f64,
}

fn err(what: &str, e: impl std::fmt::Debug) -> GpuError {
    GpuError::NoDevice(format!("{what}: {e:?}"))
}

trait Elem: DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin + 'static {
    fn from_f32(v: f32) -> Self;
    fn to_f64(self) -> f64;
}
impl Elem for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl Elem for half::bf16 {
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}
impl Elem for half::f16 {
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}

pub fn run(
    ordinal: usize,
    m: usize,
    n: usize,
    k: usize,
    dtype: GpuDtype,
    warmup: u32,
    iterations: u32,
    seed: u64,
) -> Result<GemmResult, GpuError> {
    crate::probe::cached().require_cublas()?;
    match dtype {
        GpuDtype::F32 | GpuDtype::Tf32 => {
            run_typed::<f32>(ordinal, m, n, k, dtype, warmup, iterations, seed)
        }
        GpuDtype::Bf16 => {
            run_typed::<half::bf16>(ordinal, m, n, k, dtype, warmup, iterations, seed)
        }
        GpuDtype::F16 => run_typed::<half::f16>(ordinal, m, n, k, dtype, warmup, iterations, seed),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_typed<T: Elem>(
    ordinal: usize,
    m: usize,
    n: usize,
    k: usize,
    dtype: GpuDtype,
    warmup: u32,
    iterations: u32,
    seed: u64,
) -> Result<GemmResult, GpuError>
where
    CudaBlas: Gemm<T>,
{
    let ctx = CudaContext::new(ordinal).map_err(|e| err("CUDA context", e))?;
    let device = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
    let stream = ctx.default_stream();
    let blas = crate::blas::Blas::new(stream.clone()).map_err(|e| err("cuBLAS handle", e))?;
    let mode = if dtype == GpuDtype::Tf32 {
        cb::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
    } else {
        cb::cublasMath_t::CUBLAS_DEFAULT_MATH
    };
    // SAFETY: the handle is live (owned by `blas`); the call sets one flag.
    let rc = unsafe { cb::cublasSetMathMode(*blas.handle(), mode) };
    if rc != cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(err("cublasSetMathMode", rc));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a: Vec<T> = (0..m * k)
        .map(|_| T::from_f32(rng.gen_range(-1.0..1.0)))
        .collect();
    let b: Vec<T> = (0..k * n)
        .map(|_| T::from_f32(rng.gen_range(-1.0..1.0)))
        .collect();
    let da = stream.clone_htod(&a).map_err(|e| err("copy A", e))?;
    let db = stream.clone_htod(&b).map_err(|e| err("copy B", e))?;
    let mut dc = stream
        .alloc_zeros::<T>(m * n)
        .map_err(|e| err("alloc C", e))?;
    // Row-major C = A·B is column-major C^T = B^T·A^T: swap the operands.
    let cfg = GemmConfig {
        transa: cb::cublasOperation_t::CUBLAS_OP_N,
        transb: cb::cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: T::from_f32(1.0),
        lda: n as i32,
        ldb: k as i32,
        beta: T::from_f32(0.0),
        ldc: n as i32,
    };
    let mut times = Vec::with_capacity(iterations as usize);
    for it in 0..warmup + iterations {
        let start = stream
            .record_event(Some(cu::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| err("event", e))?;
        // SAFETY: A, B and C were allocated with exactly the sizes the
        // config describes (n x k, k x m, n x m column-major).
        unsafe { blas.gemm(cfg, &db, &da, &mut dc) }.map_err(|e| err("cuBLAS gemm", e))?;
        let end = stream
            .record_event(Some(cu::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| err("event", e))?;
        end.synchronize().map_err(|e| err("synchronize", e))?;
        if it >= warmup {
            times.push(start.elapsed_ms(&end).map_err(|e| err("event timing", e))? as f64);
        }
    }
    let c = stream.clone_dtoh(&dc).map_err(|e| err("copy C", e))?;
    let mut max_rel = 0f64;
    for _ in 0..64.min(m * n) {
        let (i, j) = (rng.gen_range(0..m), rng.gen_range(0..n));
        let want: f64 = (0..k)
            .map(|p| a[i * k + p].to_f64() * b[p * n + j].to_f64())
            .sum();
        let scale: f64 = (0..k)
            .map(|p| (a[i * k + p].to_f64() * b[p * n + j].to_f64()).abs())
            .sum::<f64>()
            .max(1e-30);
        max_rel = max_rel.max((c[i * n + j].to_f64() - want).abs() / scale);
    }
    if max_rel > dtype.tolerance() {
        return Err(GpuError::NoDevice(format!(
            "GPU GEMM {dtype:?} result wrong: relative error {max_rel:e} > {:e}",
            dtype.tolerance()
        )));
    }
    let flop = 2.0 * m as f64 * n as f64 * k as f64;
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    Ok(GemmResult {
        device,
        dtype,
        m,
        n,
        k,
        iterations,
        ms_best: best,
        ms_mean: mean,
        tflops_best: flop / (best * 1e-3) / 1e12,
        tflops_mean: flop / (mean * 1e-3) / 1e12,
        max_rel_error: max_rel,
    })
}
