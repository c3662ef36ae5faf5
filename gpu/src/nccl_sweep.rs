//! NCCL all-reduce sweep on device buffers, in the manner of nccl-tests'
//! all_reduce_perf: out-of-place and in-place, timed with CUDA events,
//! busbw = algbw x 2(n-1)/n, every result checked exactly (small integers).
//! The communicator is built from rank 0's unique id, which the worker got
//! through the rendezvous. The communicator has the watchdog of
//! `nccl_comm`: a peer that dies mid-sweep is an error after `timeout`.
//!
//! Untested on a GPU so far: scripts/gpu-check.sh exercises it on a lent
//! machine.

use crate::mlp_cuda::Device;
use crate::nccl_comm::{NcclComm, Op};
use crate::GpuError;
use cudarc::driver::sys as cu;
use std::time::Duration;

/// One message size's figures (nccl-tests' columns): the row a worker
/// reports in its result.
pub use proto::result::AllreduceRow as SweepRow;

fn err(what: &str, e: impl std::fmt::Debug) -> GpuError {
    GpuError::NoDevice(format!("{what}: {e:?}"))
}

fn fill(rank: usize, count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| ((rank + 1) * (i % 7 + 1)) as f32)
        .collect()
}

fn wrong(out: &[f32], world: usize) -> usize {
    let s = (world * (world + 1) / 2) as f32;
    out.iter()
        .enumerate()
        .filter(|(i, v)| **v != s * (i % 7 + 1) as f32)
        .count()
}

#[allow(clippy::too_many_arguments)]
pub fn allreduce_sweep(
    ordinal: usize,
    rank: usize,
    world: usize,
    id: [u8; 128],
    sizes: &[u64],
    warmup: u32,
    iterations: u32,
    timeout: Duration,
    mut on_row: impl FnMut(&SweepRow),
) -> Result<Vec<SweepRow>, GpuError> {
    let dev = Device::open(ordinal)?;
    let stream = dev.stream.clone();
    let mut comm = NcclComm::init(&dev, rank, world, id, timeout)?;
    let bus = if world > 1 {
        2.0 * (world as f64 - 1.0) / world as f64
    } else {
        1.0
    };
    let mut rows = Vec::new();
    for &size in sizes {
        let count = (size / 4) as usize;
        let host = fill(rank, count);
        let send = stream.clone_htod(&host).map_err(|e| err("copy", e))?;
        let mut recv = stream
            .alloc_zeros::<f32>(count)
            .map_err(|e| err("alloc", e))?;
        let time = |comm: &mut NcclComm,
                    f: &mut dyn FnMut(&mut NcclComm) -> Result<(), GpuError>|
         -> Result<f64, GpuError> {
            for _ in 0..warmup {
                f(comm)?;
            }
            comm.synchronize("warm-up")?;
            let start = stream
                .record_event(Some(cu::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| err("event", e))?;
            for _ in 0..iterations {
                f(comm)?;
            }
            let end = stream
                .record_event(Some(cu::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| err("event", e))?;
            // Waits with the watchdog: a dead peer is an error, not a hang.
            comm.synchronize("ncclAllReduce")?;
            Ok(
                start.elapsed_ms(&end).map_err(|e| err("event timing", e))? as f64 * 1e3
                    / iterations as f64,
            )
        };
        let oop_us = time(&mut comm, &mut |c| {
            c.all_reduce_device_oop(&send, &mut recv, Op::Sum)
        })?;
        let oop_wrong = wrong(
            &stream.clone_dtoh(&recv).map_err(|e| err("copy back", e))?,
            world,
        );
        // In place: refill before the check run, as the timed runs keep
        // summing into the buffer.
        let mut buf = stream.clone_htod(&host).map_err(|e| err("copy", e))?;
        let ip_us = time(&mut comm, &mut |c| {
            c.all_reduce_device_async(&mut buf, Op::Sum)
        })?;
        let mut check = stream.clone_htod(&host).map_err(|e| err("copy", e))?;
        comm.all_reduce_device(&mut check, Op::Sum)?;
        let ip_wrong = wrong(
            &stream.clone_dtoh(&check).map_err(|e| err("copy back", e))?,
            world,
        );
        let gb = size as f64 / 1e9;
        let row = SweepRow {
            size_bytes: size,
            count: count as u64,
            dtype: None,
            oop_time_us: oop_us,
            oop_algbw_gbps: gb / (oop_us * 1e-6),
            oop_busbw_gbps: gb / (oop_us * 1e-6) * bus,
            ip_time_us: ip_us,
            ip_algbw_gbps: gb / (ip_us * 1e-6),
            ip_busbw_gbps: gb / (ip_us * 1e-6) * bus,
            wrong: (oop_wrong + ip_wrong) as u64,
        };
        on_row(&row);
        if row.wrong > 0 {
            return Err(GpuError::NoDevice(format!(
                "NCCL all-reduce of {size} bytes gave {} wrong elements",
                row.wrong
            )));
        }
        rows.push(row);
    }
    Ok(rows)
}
