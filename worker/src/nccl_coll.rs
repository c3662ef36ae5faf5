//! The NCCL backend of the `Collective` interface: host buffers go through
//! the GPU (copy in, NCCL collective, copy out), with `nccl_comm`'s watchdog
//! (a dead or hung peer is an error after `collective.timeout_s`, and the
//! communicator is aborted). Workloads whose data already lies on the GPU
//! (`train` on CUDA) reach the communicator itself through
//! `Collective::nccl` and reduce in place on the device.

use crate::collective::{Collective, CollectiveError, Elem, ReduceOp};
use gpu::nccl_comm::{NcclComm, Op};

pub struct NcclCollective {
    pub comm: NcclComm,
}

fn op(o: ReduceOp) -> Op {
    match o {
        ReduceOp::Sum => Op::Sum,
        ReduceOp::Avg => Op::Avg,
    }
}

fn fail(e: gpu::GpuError) -> CollectiveError {
    CollectiveError::Nccl(e.to_string())
}

/// Run `f32` or `f64` code on a slice of the collective's element type.
macro_rules! by_type {
    ($T:ty, $buf:expr, |$b:ident| $body:expr) => {
        match <$T as Elem>::NAME {
            "float" => {
                let $b: &mut [f32] = bytemuck::cast_slice_mut($buf);
                $body
            }
            "double" => {
                let $b: &mut [f64] = bytemuck::cast_slice_mut($buf);
                $body
            }
            other => Err(CollectiveError::Args(format!("NCCL cannot reduce {other}"))),
        }
    };
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank
    }

    fn world_size(&self) -> usize {
        self.comm.world
    }

    fn all_reduce<T: Elem>(&mut self, buf: &mut [T], o: ReduceOp) -> Result<(), CollectiveError> {
        let comm = &mut self.comm;
        by_type!(T, buf, |b| comm.all_reduce_host(b, op(o)).map_err(fail))
    }

    fn broadcast<T: Elem>(&mut self, buf: &mut [T], root: usize) -> Result<(), CollectiveError> {
        if root >= self.comm.world {
            return Err(CollectiveError::Args(format!(
                "root {root} out of range for world size {}",
                self.comm.world
            )));
        }
        let comm = &mut self.comm;
        by_type!(T, buf, |b| comm.broadcast_host(b, root).map_err(fail))
    }

    fn all_gather<T: Elem>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), CollectiveError> {
        crate::collective::check_len(
            "all_gather output",
            output.len(),
            input.len() * self.comm.world,
        )?;
        let comm = &mut self.comm;
        by_type!(T, output, |out| comm
            .all_gather_host(bytemuck::cast_slice(input), out)
            .map_err(fail))
    }

    fn reduce_scatter<T: Elem>(
        &mut self,
        input: &[T],
        output: &mut [T],
        o: ReduceOp,
    ) -> Result<(), CollectiveError> {
        crate::collective::check_len(
            "reduce_scatter input",
            input.len(),
            output.len() * self.comm.world,
        )?;
        let comm = &mut self.comm;
        by_type!(T, output, |out| comm
            .reduce_scatter_host(bytemuck::cast_slice(input), out, op(o))
            .map_err(fail))
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.comm.barrier().map_err(fail)
    }

    fn nccl(&mut self) -> Option<&mut NcclComm> {
        Some(&mut self.comm)
    }
}
