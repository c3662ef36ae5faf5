//! The preflight check a worker runs before it joins, when the launcher
//! asks (RINGMASTER_PREFLIGHT=1): a short GEMM and a copy on its device, so
//! the launcher can compare the ranks before the first step and find a node
//! far below the others (a throttled GPU, a degraded link, a busy host).

use crate::env::WorkerEnv;
use crate::matmul::{self, MatRef};
use proto::wire::PreflightFigures;
use std::time::Instant;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The CPU's check: 512³ f32 GEMM on the worker's threads, a 64 MiB copy;
/// the best of 7 of each (about 10 ms apiece), so that a moment of
/// contention on a shared machine (the other workers measuring at the same
/// time) does not make a healthy node look slow.
fn cpu(env: &WorkerEnv) -> PreflightFigures {
    let n = 512;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let par = matmul::parallelism(env.threads);
    let s = best_of(7, || {
        matmul::matmul(
            &mut c,
            MatRef::new(&a, n, n),
            MatRef::new(&a, n, n),
            false,
            par,
        )
    });
    let src = vec![1u8; 64 << 20];
    let mut dst = vec![0u8; 64 << 20];
    let copy_s = best_of(7, || dst.copy_from_slice(std::hint::black_box(&src)));
    PreflightFigures {
        device: "cpu".into(),
        gemm_gflops: 2.0 * (n * n * n) as f64 / s / 1e9,
        copy_gbps: src.len() as f64 / copy_s / 1e9,
        error: None,
    }
}

/// The GPU's check: 4096³ bf16 GEMM on cuBLAS, a 256 MiB host-to-device copy.
fn cuda(env: &WorkerEnv) -> Result<PreflightFigures, gpu::GpuError> {
    let n = 4096;
    let g = gpu::cuda_gemm::run(
        0,
        n,
        n,
        n,
        gpu::cuda_gemm::GpuDtype::Bf16,
        2,
        5,
        0x9f ^ env.rank as u64,
    )?;
    let dev = gpu::mlp_cuda::Device::open(0)?;
    let copy = gpu::mlp_cuda::host_to_device_gbps(&dev, 256 << 20, 3)?;
    Ok(PreflightFigures {
        device: g.device,
        gemm_gflops: g.tflops_best * 1e3,
        copy_gbps: copy,
        error: None,
    })
}

pub fn measure(env: &WorkerEnv) -> PreflightFigures {
    let mut f = if env.cuda {
        cuda(env).unwrap_or_else(|e| PreflightFigures {
            device: "cuda".into(),
            gemm_gflops: 0.0,
            copy_gbps: 0.0,
            error: Some(e.to_string()),
        })
    } else {
        cpu(env)
    };
    if env.fault_preflight_slow_node == Some(env.node_rank) && env.restart_count == 0 {
        // Test hook (first attempt only, so a replacement is fine): this
        // node stands in for a throttled one. A hundredth, not a tenth: with
        // two ranks the median lies between them, and on a 2-core machine
        // the two measure at the same moment, so a tenth came out above 0.25 of
        // the median once when node 0 was the one held up.
        f.gemm_gflops *= 0.01;
        f.copy_gbps *= 0.01;
    }
    println!(
        "[rank {}] preflight on {}: GEMM {:.1} GFLOP/s, copy {:.2} GB/s{}",
        env.rank,
        f.device,
        f.gemm_gflops,
        f.copy_gbps,
        f.error
            .as_ref()
            .map(|e| format!(" (failed: {e})"))
            .unwrap_or_default()
    );
    f
}
