//! `allreduce` workload: a size sweep in the manner of nccl-tests'
//! all_reduce_perf (out-of-place and in-place time, algbw, busbw =
//! algbw·2(n-1)/n), with every result checked against the exact sum.

use crate::collective::{Collective, ReduceOp};
use crate::progress::Progress;
use crate::WorkerError;
use proto::result::{AllreduceResult, AllreduceRow, Figures, WorkerResult};
use proto::spec::AllreduceWorkload;
use std::time::Instant;

/// Rank r holds (r+1)·((i % 7) + 1) at index i: small integers, so the sum
/// over ranks is exact in f32 and easy to check.
fn fill(buf: &mut [f32], rank: usize) {
    for (i, v) in buf.iter_mut().enumerate() {
        *v = ((rank + 1) * (i % 7 + 1)) as f32;
    }
}

fn errors(buf: &[f32], world: usize) -> usize {
    let ranks_sum = (world * (world + 1) / 2) as f32;
    buf.iter()
        .enumerate()
        .filter(|(i, v)| **v != ranks_sum * (i % 7 + 1) as f32)
        .count()
}

/// The all_reduce_perf-style table both backends print on rank 0.
fn print_header() {
    println!(
        "{:>12} {:>12} {:>6} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} {:>6}",
        "size(B)",
        "count",
        "type",
        "oop(us)",
        "algbw",
        "busbw",
        "ip(us)",
        "algbw",
        "busbw",
        "#wrong"
    );
}

#[allow(clippy::too_many_arguments)]
fn print_row(r: &AllreduceRow) {
    println!(
        "{:>12} {:>12} {:>6} | {:>10.1} {:>8.3} {:>8.3} | {:>10.1} {:>8.3} {:>8.3} {:>6}",
        r.size_bytes,
        r.count,
        "float",
        r.oop_time_us,
        r.oop_algbw_gbps,
        r.oop_busbw_gbps,
        r.ip_time_us,
        r.ip_algbw_gbps,
        r.ip_busbw_gbps,
        r.wrong
    );
}

pub fn sizes(a: &AllreduceWorkload) -> Vec<u64> {
    let mut out = Vec::new();
    let mut s = a.min_bytes;
    while s <= a.max_bytes {
        out.push(s / 4 * 4);
        match s.checked_mul(a.step_factor) {
            Some(n) => s = n,
            None => break,
        }
    }
    out
}

pub fn run<C: Collective>(
    a: &AllreduceWorkload,
    coll: &mut C,
    progress: &Progress,
) -> Result<WorkerResult, WorkerError> {
    let n = coll.world_size();
    let rank = coll.rank();
    let sizes = sizes(a);
    progress.set_phase("allreduce", "GB/s busbw", sizes.len() as u64);
    let bus_factor = if n > 1 {
        2.0 * (n as f64 - 1.0) / n as f64
    } else {
        1.0
    };
    let mut rows = Vec::new();
    if rank == 0 {
        print_header();
    }
    for (idx, &size) in sizes.iter().enumerate() {
        let count = (size / 4) as usize;
        let mut input = vec![0f32; count];
        fill(&mut input, rank);
        let mut out = vec![0f32; count];
        // Out-of-place: the input stays intact, the result lands in `out`.
        let mut oop = |coll: &mut C| -> Result<(), WorkerError> {
            out.copy_from_slice(&input);
            coll.all_reduce(&mut out, ReduceOp::Sum)?;
            Ok(())
        };
        for _ in 0..a.warmup {
            oop(coll)?;
        }
        coll.barrier()?;
        let t0 = Instant::now();
        for _ in 0..a.iterations {
            oop(coll)?;
        }
        let oop_s = t0.elapsed().as_secs_f64() / a.iterations as f64;
        let oop_wrong = if a.check { errors(&out, n) } else { 0 };
        // In-place: the buffer is refilled, reduced, checked after the last run.
        let mut buf = vec![0f32; count];
        coll.barrier()?;
        let mut ip_total = 0.0;
        for _ in 0..a.iterations {
            fill(&mut buf, rank);
            let t0 = Instant::now();
            coll.all_reduce(&mut buf, ReduceOp::Sum)?;
            ip_total += t0.elapsed().as_secs_f64();
        }
        let ip_s = ip_total / a.iterations as f64;
        let ip_wrong = if a.check { errors(&buf, n) } else { 0 };
        let gb = size as f64 / 1e9;
        let (oop_alg, ip_alg) = (gb / oop_s, gb / ip_s);
        let row = AllreduceRow {
            size_bytes: size,
            count: count as u64,
            dtype: Some("float".into()),
            oop_time_us: oop_s * 1e6,
            oop_algbw_gbps: oop_alg,
            oop_busbw_gbps: oop_alg * bus_factor,
            ip_time_us: ip_s * 1e6,
            ip_algbw_gbps: ip_alg,
            ip_busbw_gbps: ip_alg * bus_factor,
            wrong: (oop_wrong + ip_wrong) as u64,
        };
        if rank == 0 {
            print_row(&row);
        }
        progress.set_rate(oop_alg * bus_factor);
        progress.set_step(idx as u64 + 1);
        if oop_wrong + ip_wrong > 0 {
            return Err(WorkerError::Workload(format!(
                "all-reduce of {size} bytes gave {oop_wrong} wrong elements out-of-place and {ip_wrong} in-place"
            )));
        }
        rows.push(row);
    }
    Ok(WorkerResult::new(Figures::Allreduce(AllreduceResult {
        backend: None,
        world_size: n as u64,
        iterations: a.iterations as u64,
        rows,
    })))
}

/// The sweep on GPU buffers with NCCL; rank 0's unique id comes through the
/// rendezvous.
pub fn run_nccl(
    a: &AllreduceWorkload,
    rank: usize,
    world: usize,
    id: [u8; 128],
    timeout: std::time::Duration,
    progress: &Progress,
) -> Result<WorkerResult, WorkerError> {
    let sizes = sizes(a);
    progress.set_phase("allreduce (nccl)", "GB/s busbw", sizes.len() as u64);
    if rank == 0 {
        print_header();
    }
    let mut done = 0;
    let rows = gpu::nccl_sweep::allreduce_sweep(
        0,
        rank,
        world,
        id,
        &sizes,
        a.warmup,
        a.iterations,
        timeout,
        |r| {
            done += 1;
            progress.set_step(done);
            progress.set_rate(r.oop_busbw_gbps);
            if rank == 0 {
                print_row(r);
            }
        },
    )
    .map_err(|e| WorkerError::Workload(e.to_string()))?;
    Ok(WorkerResult::new(Figures::Allreduce(AllreduceResult {
        backend: Some("nccl".into()),
        world_size: world as u64,
        iterations: a.iterations as u64,
        rows,
    })))
}
