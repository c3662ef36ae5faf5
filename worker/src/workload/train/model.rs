//! The model: an MLP's parameters in one flat vector (`Layout`), their
//! initialisation, and the CPU's forward and backward pass over reused
//! buffers (`Workspace`).

use super::data::mix;
use crate::matmul::{self, MatRef};
use gemm::Parallelism;
use proto::spec::TrainWorkload;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::ops::Range;

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

/// Buffers reused every step (activations and their gradients), so the hot
/// loop allocates nothing.
pub struct Workspace {
    /// acts[l] is the input of layer l (acts[0] is the batch); acts[L] the output.
    pub(super) acts: Vec<Vec<f32>>,
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
pub(super) fn loss_and_grad(
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

pub fn sha256_hex(params: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in params {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
