//! The `Collective` interface every backend implements (the TCP ring,
//! NCCL in `nccl_coll`), and the element types it moves.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("peer rank {peer} did not answer within {timeout:?} ({op})")]
    Timeout {
        peer: usize,
        timeout: Duration,
        op: &'static str,
    },
    #[error("peer rank {peer} closed the connection ({op})")]
    PeerClosed { peer: usize, op: &'static str },
    #[error("ring setup: {0}")]
    Setup(String),
    #[error("i/o with peer rank {peer} ({op}): {source}")]
    Io {
        peer: usize,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("bad arguments: {0}")]
    Args(String),
    #[error("shared memory ({op}): {detail}")]
    Shm { op: &'static str, detail: String },
    #[error("NCCL: {0}")]
    Nccl(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Avg,
}

/// Element types the collectives reduce.
pub trait Elem:
    bytemuck::Pod + Default + Send + Sync + std::ops::AddAssign + PartialEq + std::fmt::Debug
{
    fn div_usize(self, n: usize) -> Self;
    const NAME: &'static str;
}

impl Elem for f32 {
    fn div_usize(self, n: usize) -> Self {
        self / n as f32
    }
    const NAME: &'static str = "float";
}

impl Elem for f64 {
    fn div_usize(self, n: usize) -> Self {
        self / n as f64
    }
    const NAME: &'static str = "double";
}

/// A buffer whose length does not fit the world: one error naming the
/// buffer, its length and the length wanted.
pub fn check_len(what: &str, got: usize, want: usize) -> Result<(), CollectiveError> {
    if got == want {
        return Ok(());
    }
    Err(CollectiveError::Args(format!(
        "{what} has {got} elements, need {want}"
    )))
}

/// `ReduceOp::Avg` after a sum over `n` ranks: divide in place.
pub fn finish<T: Elem>(buf: &mut [T], op: ReduceOp, n: usize) {
    if op == ReduceOp::Avg && n > 1 {
        for v in buf.iter_mut() {
            *v = v.div_usize(n);
        }
    }
}

pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// In place: every rank ends with the element-wise reduction.
    fn all_reduce<T: Elem>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), CollectiveError>;
    /// Every rank ends with root's buffer.
    fn broadcast<T: Elem>(&mut self, buf: &mut [T], root: usize) -> Result<(), CollectiveError>;
    /// `output` (world_size x input.len()) ends with every rank's input, in rank order.
    fn all_gather<T: Elem>(&mut self, input: &[T], output: &mut [T])
        -> Result<(), CollectiveError>;
    /// `input` (world_size x output.len()) is summed across ranks; rank r keeps block r.
    fn reduce_scatter<T: Elem>(
        &mut self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<(), CollectiveError>;
    fn barrier(&mut self) -> Result<(), CollectiveError>;
    /// The NCCL communicator behind this collective, for data that already
    /// lies on the GPU (None: a host-side backend such as the TCP ring).
    fn nccl(&mut self) -> Option<&mut gpu::nccl_comm::NcclComm> {
        None
    }
}
