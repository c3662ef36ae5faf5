//! The device MLP: `mlp::step_ops` run on one GPU, one cuBLAS call (FP32,
//! no TF32) or one element-wise kernel (kernels/mlp.ptx) per operation, all
//! on one stream, so NCCL can reduce the gradient where it lies. The host
//! sees the state only when it asks (checkpoints, the end of the run):
//! checkpoints from device memory are a copy to host, then the normal
//! writer.
//!
//! Untested on a GPU so far: scripts/gpu-check.sh runs `train` on a lent
//! machine and compares it with the CPU run.

use crate::mlp::{step_ops, target_ops, Buf, Op, Ref, Shapes};
use crate::GpuError;
use cudarc::cublas::{result as cbr, sys as cb};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::Arc;

const PTX: &str = include_str!("kernels/mlp.ptx");

/// Launch `kernel` over `len` elements (one thread each) with `args`.
/// Unsafe inside: the caller vouches that the arguments match the kernel's
/// PTX signature.
macro_rules! launch {
    ($stream:expr, $kernel:expr, $name:expr, $len:expr; $($arg:ident),*) => {{
        let mut b = $stream.launch_builder(&$kernel);
        $(b.arg(&$arg);)*
        unsafe { b.launch(grid($len)) }
            .map(|_| ())
            .map_err(|e| err($name, e))
    }};
}
const BLOCK: u32 = 256;

fn err(what: &str, e: impl std::fmt::Debug) -> GpuError {
    GpuError::NoDevice(format!("{what}: {e:?}"))
}

/// One GPU's context and the stream every operation of a worker goes on.
#[derive(Clone)]
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
}

impl Device {
    /// Open GPU `ordinal` (of those CUDA_VISIBLE_DEVICES leaves), after
    /// checking the driver and cuBLAS load (cudarc would panic otherwise).
    pub fn open(ordinal: usize) -> Result<Device, GpuError> {
        crate::probe::cached().require_cublas()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| err("CUDA context", e))?;
        let stream = ctx.new_stream().map_err(|e| err("CUDA stream", e))?;
        let name = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        Ok(Device { ctx, stream, name })
    }
}

/// Host-to-device bandwidth from pageable memory, GB/s, best of `reps`.
pub fn host_to_device_gbps(dev: &Device, bytes: usize, reps: usize) -> Result<f64, GpuError> {
    let host = vec![1u8; bytes];
    let mut d = dev
        .stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| err("device memory", e))?;
    let mut best = f64::INFINITY;
    for _ in 0..=reps {
        let t = std::time::Instant::now();
        dev.stream
            .memcpy_htod(&host, &mut d)
            .map_err(|e| err("copy to device", e))?;
        dev.stream
            .synchronize()
            .map_err(|e| err("synchronize", e))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(bytes as f64 / best / 1e9)
}

struct Kernels {
    bias_rows: CudaFunction,
    relu: CudaFunction,
    tanh: CudaFunction,
    relu_mask: CudaFunction,
    loss_grad: CudaFunction,
    sgd: CudaFunction,
    fill: CudaFunction,
}

pub struct DeviceMlp {
    pub dev: Device,
    blas: crate::blas::Blas,
    shapes: Shapes,
    ops: Vec<Op>,
    targets: Vec<Op>,
    bufs: HashMap<Buf, CudaSlice<f32>>,
    /// Each buffer's device address (the buffers live as long as `self`).
    ptrs: HashMap<Buf, u64>,
    k: Kernels,
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(BLOCK).max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl DeviceMlp {
    /// Layers `dims` (input, hidden..., output), `batch` rows per step.
    pub fn new(dev: &Device, dims: &[usize], batch: usize) -> Result<DeviceMlp, GpuError> {
        let shapes = Shapes::new(dims, batch);
        let largest = shapes
            .buffers()
            .iter()
            .map(|b| shapes.size(*b))
            .max()
            .unwrap_or(0);
        if largest > u32::MAX as usize {
            return Err(GpuError::NoDevice(format!(
                "a buffer of {largest} floats is beyond the kernels' 32-bit index"
            )));
        }
        let stream = dev.stream.clone();
        let module = dev
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(PTX))
            .map_err(|e| err("loading the MLP kernels (PTX JIT)", e))?;
        let f = |name: &str| module.load_function(name).map_err(|e| err(name, e));
        let k = Kernels {
            bias_rows: f("rm_bias_rows")?,
            relu: f("rm_relu")?,
            tanh: f("rm_tanh")?,
            relu_mask: f("rm_relu_mask")?,
            loss_grad: f("rm_loss_grad")?,
            sgd: f("rm_sgd")?,
            fill: f("rm_fill")?,
        };
        let blas = crate::blas::Blas::new(stream.clone()).map_err(|e| err("cuBLAS handle", e))?;
        let mut bufs = HashMap::new();
        let mut ptrs = HashMap::new();
        for b in shapes.buffers() {
            let s = stream
                .alloc_zeros::<f32>(shapes.size(b).max(1))
                .map_err(|e| err("device memory", e))?;
            let (p, _sync) = s.device_ptr(&stream);
            ptrs.insert(b, p);
            drop(_sync);
            bufs.insert(b, s);
        }
        let m = DeviceMlp {
            dev: dev.clone(),
            blas,
            ops: step_ops(&shapes),
            targets: target_ops(&shapes),
            shapes,
            bufs,
            ptrs,
            k,
        };
        let ones = Ref {
            buf: Buf::Ones,
            off: 0,
            len: batch,
        };
        let (p, one, n) = (m.ptr(ones), 1.0f32, batch as u32);
        // SAFETY: rm_fill(float*, f32, u32) over `batch` floats of Ones.
        launch!(m.dev.stream, m.k.fill, "rm_fill", batch; p, one, n)?;
        Ok(m)
    }

    fn ptr(&self, r: Ref) -> u64 {
        self.ptrs[&r.buf] + 4 * r.off as u64
    }

    fn copy_in(&mut self, buf: Buf, off: usize, host: &[f32]) -> Result<(), GpuError> {
        let s = self.bufs.get_mut(&buf).expect("buffer");
        let mut view = s.slice_mut(off..off + host.len());
        self.dev
            .stream
            .memcpy_htod(host, &mut view)
            .map_err(|e| err("copy to device", e))
    }

    fn copy_out(&self, buf: Buf, off: usize, host: &mut [f32]) -> Result<(), GpuError> {
        let view = self.bufs[&buf].slice(off..off + host.len());
        self.dev
            .stream
            .memcpy_dtoh(&view, host)
            .map_err(|e| err("copy to host", e))?;
        self.dev
            .stream
            .synchronize()
            .map_err(|e| err("synchronize", e))
    }

    /// Weights and momentum from the host (start, resume, a broadcast).
    pub fn load_state(&mut self, params: &[f32], velocity: &[f32]) -> Result<(), GpuError> {
        self.copy_in(Buf::Params, 0, params)?;
        self.copy_in(Buf::Velocity, 0, velocity)
    }

    /// Weights and momentum to the host (checkpoints, the end of a run).
    pub fn state(&self, params: &mut [f32], velocity: &mut [f32]) -> Result<(), GpuError> {
        self.copy_out(Buf::Params, 0, params)?;
        self.copy_out(Buf::Velocity, 0, velocity)
    }

    /// The teacher (input x output, row-major), once: the targets of each
    /// batch are made on the device from it.
    pub fn set_teacher(&mut self, teacher: &[f32]) -> Result<(), GpuError> {
        self.copy_in(Buf::Teacher, 0, teacher)
    }

    /// One batch (its inputs; the targets tanh(x·T) are made here): the
    /// local gradient into Grad[..len] and its loss into Grad[len]
    /// (enqueued; the all-reduce or `slots` waits for it).
    pub fn forward_backward(&mut self, x: &[f32]) -> Result<(), GpuError> {
        self.copy_in(Buf::Act(0), 0, x)?;
        for i in 0..self.targets.len() + self.ops.len() {
            let op = if i < self.targets.len() {
                self.targets[i].clone()
            } else {
                self.ops[i - self.targets.len()].clone()
            };
            self.apply(&op)?;
        }
        Ok(())
    }

    /// The notice flag into Grad[len + 1], reduced with the gradient.
    pub fn set_flag(&mut self, flag: f32) -> Result<(), GpuError> {
        let len = self.shapes.len;
        self.copy_in(Buf::Grad, len + 1, &[flag])
    }

    /// The gradient buffer (with the loss and flag slots), for NCCL.
    pub fn grad_mut(&mut self) -> &mut CudaSlice<f32> {
        self.bufs.get_mut(&Buf::Grad).expect("grad")
    }

    /// Gradient and slots to and from the host (a TCP-ring all-reduce).
    pub fn grad_to_host(&self, out: &mut [f32]) -> Result<(), GpuError> {
        self.copy_out(Buf::Grad, 0, out)
    }

    pub fn grad_from_host(&mut self, g: &[f32]) -> Result<(), GpuError> {
        self.copy_in(Buf::Grad, 0, g)
    }

    /// The loss and flag slots (after the all-reduce: the group's).
    pub fn slots(&self) -> Result<(f32, f32), GpuError> {
        let mut s = [0f32; 2];
        self.copy_out(Buf::Grad, self.shapes.len, &mut s)?;
        Ok((s[0], s[1]))
    }

    /// SGD with momentum on the device.
    pub fn update(&mut self, lr: f32, mu: f32) -> Result<(), GpuError> {
        let len = self.shapes.len;
        let (p, v, g, n) = (
            self.ptrs[&Buf::Params],
            self.ptrs[&Buf::Velocity],
            self.ptrs[&Buf::Grad],
            len as u32,
        );
        // SAFETY: rm_sgd(float* p, float* v, const float* g, f32, f32, u32)
        // over `len` floats of each buffer.
        launch!(self.dev.stream, self.k.sgd, "rm_sgd", len; p, v, g, lr, mu, n)
    }

    fn apply(&mut self, op: &Op) -> Result<(), GpuError> {
        let stream = self.dev.stream.clone();
        match *op {
            Op::Gemm {
                ta,
                tb,
                m,
                n,
                k,
                alpha,
                a,
                lda,
                b,
                ldb,
                beta,
                c,
                ldc,
            } => {
                let t = |x: bool| {
                    if x {
                        cb::cublasOperation_t::CUBLAS_OP_T
                    } else {
                        cb::cublasOperation_t::CUBLAS_OP_N
                    }
                };
                // SAFETY: the references lie inside live device buffers
                // (mlp.rs's tests check every shape fits), on the handle's stream.
                unsafe {
                    cbr::sgemm(
                        *self.blas.handle(),
                        t(ta),
                        t(tb),
                        m as i32,
                        n as i32,
                        k as i32,
                        &alpha,
                        self.ptr(a) as *const f32,
                        lda as i32,
                        self.ptr(b) as *const f32,
                        ldb as i32,
                        &beta,
                        self.ptr(c) as *mut f32,
                        ldc as i32,
                    )
                }
                .map_err(|e| err("cublasSgemm", e))
            }
            Op::Gemv {
                m,
                n,
                alpha,
                a,
                lda,
                x,
                beta,
                y,
            } => {
                // SAFETY: as for Gemm.
                unsafe {
                    cbr::sgemv(
                        *self.blas.handle(),
                        cb::cublasOperation_t::CUBLAS_OP_N,
                        m as i32,
                        n as i32,
                        &alpha,
                        self.ptr(a) as *const f32,
                        lda as i32,
                        self.ptr(x) as *const f32,
                        1,
                        &beta,
                        self.ptr(y) as *mut f32,
                        1,
                    )
                }
                .map_err(|e| err("cublasSgemv", e))
            }
            // SAFETY (each kernel below): the arguments follow the kernel's
            // PTX signature (kernels/mlp.ptx), pointers into live buffers
            // of at least `n` floats, on this model's stream.
            Op::BiasRows { z, bias, cols } => {
                let (pz, pb, n, c) = (self.ptr(z), self.ptr(bias), z.len as u32, cols as u32);
                launch!(stream, self.k.bias_rows, "rm_bias_rows", z.len; pz, pb, n, c)
            }
            Op::Relu { z } => {
                let (pz, n) = (self.ptr(z), z.len as u32);
                launch!(stream, self.k.relu, "rm_relu", z.len; pz, n)
            }
            Op::Tanh { z } => {
                let (pz, n) = (self.ptr(z), z.len as u32);
                launch!(stream, self.k.tanh, "rm_tanh", z.len; pz, n)
            }
            Op::ReluMask { d, a } => {
                let (pd, pa, n) = (self.ptr(d), self.ptr(a), d.len as u32);
                launch!(stream, self.k.relu_mask, "rm_relu_mask", d.len; pd, pa, n)
            }
            Op::LossGrad { dz, out, y, scale } => {
                let (pd, po, py, n) = (self.ptr(dz), self.ptr(out), self.ptr(y), dz.len as u32);
                launch!(stream, self.k.loss_grad, "rm_loss_grad", dz.len; pd, po, py, scale, n)
            }
        }
    }
}
