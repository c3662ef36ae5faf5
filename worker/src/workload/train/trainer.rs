//! One training step, on the host or the GPU: forward and backward, the
//! gradient averaged over the group with the loss and the notice flag in
//! two extra slots (one all-reduce per step), the momentum update. The
//! host's `params` and `velocity` are the state; on a GPU they are
//! refreshed from device memory when asked (`sync_host`).

use super::model::{loss_and_grad_ws, Layout, Workspace};
use crate::collective::{Collective, CollectiveError, ReduceOp};
use crate::WorkerError;
use gemm::Parallelism;
use gpu::mlp_cuda::DeviceMlp;

pub(super) struct Trainer {
    pub layout: Layout,
    pub params: Vec<f32>,
    pub velocity: Vec<f32>,
    /// The gradient, then the loss and the notice flag.
    grad: Vec<f32>,
    /// Host activations (empty where the GPU computes).
    ws: Workspace,
    /// Blocks of the global batch this rank trains a step, and the weight
    /// of its gradient (world / blocks in all) so the group's average is
    /// the mean over every block; with one block a rank: 1 and 1.
    blocks: usize,
    weight: f32,
    /// A block's gradient, where there are more than one.
    scratch: Vec<f32>,
    pub device: Option<DeviceMlp>,
    par: Parallelism,
}

impl Trainer {
    pub fn new(
        layout: Layout,
        params: Vec<f32>,
        velocity: Vec<f32>,
        device: Option<DeviceMlp>,
        batch: usize,
        (blocks, weight): (usize, f32),
        par: Parallelism,
    ) -> Trainer {
        let ws = Workspace::new(&layout, if device.is_some() { 0 } else { batch });
        Trainer {
            grad: vec![0f32; layout.len + 2],
            blocks,
            weight,
            scratch: vec![0f32; if blocks > 1 { layout.len } else { 0 }],
            layout,
            params,
            velocity,
            ws,
            device,
            par,
        }
    }

    /// Forward and backward over one step's batch: this rank's blocks one
    /// after the other, their gradients and losses summed and weighted (on
    /// a GPU, one block; only `x` is used: the targets are made there).
    pub fn forward_backward(&mut self, x: &[f32], y: &[f32]) -> Result<(), WorkerError> {
        let n = self.layout.len;
        match self.device.as_mut() {
            None => {
                let (xb, yb) = (x.len() / self.blocks, y.len() / self.blocks);
                for i in 0..self.blocks {
                    self.ws.acts[0].copy_from_slice(&x[i * xb..(i + 1) * xb]);
                    let into = if i == 0 {
                        &mut self.grad[..n]
                    } else {
                        &mut self.scratch[..]
                    };
                    let loss = loss_and_grad_ws(
                        &self.layout,
                        &self.params,
                        &mut self.ws,
                        &y[i * yb..(i + 1) * yb],
                        into,
                        self.par,
                    );
                    if i == 0 {
                        self.grad[n] = loss;
                    } else {
                        for (g, s) in self.grad[..n].iter_mut().zip(&self.scratch) {
                            *g += s;
                        }
                        self.grad[n] += loss;
                    }
                }
                if self.weight != 1.0 {
                    self.grad[..=n].iter_mut().for_each(|g| *g *= self.weight);
                }
            }
            Some(m) => m.forward_backward(x)?,
        }
        Ok(())
    }

    /// Blocks of rows this rank trains a step.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// The weighted gradient and loss (before the group's average).
    #[cfg(test)]
    pub fn grad(&self) -> &[f32] {
        &self.grad[..=self.layout.len]
    }

    /// This rank's notice flag for the step's all-reduce.
    pub fn set_flag(&mut self, flag: f32) -> Result<(), WorkerError> {
        match self.device.as_mut() {
            None => self.grad[self.layout.len + 1] = flag,
            Some(m) => m.set_flag(flag)?,
        }
        Ok(())
    }

    /// Average the gradient over the group: the group's loss and flag sum.
    pub fn reduce<C: Collective>(&mut self, coll: &mut C) -> Result<(f32, f32), WorkerError> {
        let n = self.layout.len;
        match self.device.as_mut() {
            None => {
                coll.all_reduce(&mut self.grad, ReduceOp::Avg)?;
                Ok((self.grad[n], self.grad[n + 1]))
            }
            Some(m) => {
                if let Some(comm) = coll.nccl() {
                    comm.all_reduce_device(m.grad_mut(), gpu::nccl_comm::Op::Avg)
                        .map_err(|e| CollectiveError::Nccl(e.to_string()))?;
                } else {
                    m.grad_to_host(&mut self.grad)?;
                    coll.all_reduce(&mut self.grad, ReduceOp::Avg)?;
                    m.grad_from_host(&self.grad)?;
                }
                Ok(m.slots()?)
            }
        }
    }

    /// SGD with momentum: v = mu·v + g; p -= lr·v.
    pub fn update(&mut self, lr: f32, mu: f32) -> Result<(), WorkerError> {
        match self.device.as_mut() {
            None => {
                for ((p, v), g) in self
                    .params
                    .iter_mut()
                    .zip(self.velocity.iter_mut())
                    .zip(&self.grad[..self.layout.len])
                {
                    *v = mu * *v + g;
                    *p -= lr * *v;
                }
            }
            Some(m) => m.update(lr, mu)?,
        }
        Ok(())
    }

    /// Bring the host's state up to date (from device memory on a GPU).
    pub fn sync_host(&mut self) -> Result<(), WorkerError> {
        if let Some(m) = &self.device {
            m.state(&mut self.params, &mut self.velocity)?;
        }
        Ok(())
    }
}
