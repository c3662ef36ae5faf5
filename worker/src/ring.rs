//! TCP ring backend: each rank sends to rank+1 and receives from rank-1.
//! All-reduce is reduce-scatter then all-gather (2(n-1) steps); in each step
//! the send runs on a scoped thread while this thread receives and reduces in
//! chunks, so both directions of every link stay busy. Every socket operation
//! has the configured timeout: a dead peer is an error, not a hang.

use crate::collective::{Collective, CollectiveError, Elem, ReduceOp};
use crate::progress::Progress;
use crate::WorkerError;
use proto::spec::Collective as CollectiveSpec;
use socket2::SockRef;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELLO_MAGIC: &[u8; 8] = b"RMRING01";

pub fn bind_listener(node_addr: &str) -> Result<TcpListener, WorkerError> {
    TcpListener::bind((node_addr, 0))
        .map_err(|e| WorkerError::Rendezvous(format!("cannot listen on {node_addr}: {e}")))
}

pub struct Ring {
    rank: usize,
    world: usize,
    /// To rank+1. None when world_size == 1.
    next: Option<TcpStream>,
    /// From rank-1.
    prev: Option<TcpStream>,
    chunk_bytes: usize,
    /// Receive buffer of one chunk, reused by every reducing step (u64
    /// storage so it can be viewed as any element type).
    scratch: Vec<u64>,
    /// All-reduce works on slices of at most this many bytes at a time.
    slice_bytes: usize,
    timeout: Duration,
    progress: Arc<Progress>,
    /// Ring position -> global rank, for errors: (stride, offset). A ring
    /// across nodes (one per local rank) has members offset, offset +
    /// stride, ...; the ring through every rank is (1, 0).
    names: (usize, usize),
}

/// Bounds of segment `i` when `len` elements are split into `n` parts whose
/// sizes differ by at most one (the first `len % n` parts get the extra one).
pub fn segment(len: usize, n: usize, i: usize) -> Range<usize> {
    let base = len / n;
    let extra = len % n;
    let start = i * base + i.min(extra);
    let size = base + usize::from(i < extra);
    start..start + size
}

fn tune(s: &TcpStream, spec: &CollectiveSpec, timeout: Duration) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let sock = SockRef::from(s);
    sock.set_send_buffer_size(spec.socket_buffer_bytes as usize)?;
    sock.set_recv_buffer_size(spec.socket_buffer_bytes as usize)?;
    Ok(())
}

fn hello(token: &str, rank: usize) -> Vec<u8> {
    let mut h = HELLO_MAGIC.to_vec();
    h.extend_from_slice(&(rank as u32).to_be_bytes());
    let t = token.as_bytes();
    h.extend_from_slice(&(t.len() as u32).to_be_bytes());
    h.extend_from_slice(t);
    h
}

fn read_hello(s: &mut TcpStream, token: &str) -> std::io::Result<usize> {
    let mut head = [0u8; 16];
    s.read_exact(&mut head)?;
    if &head[..8] != HELLO_MAGIC {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "not a ring peer",
        ));
    }
    let rank = u32::from_be_bytes(head[8..12].try_into().unwrap()) as usize;
    let tlen = u32::from_be_bytes(head[12..16].try_into().unwrap()) as usize;
    if tlen != token.len() {
        return Err(std::io::Error::new(ErrorKind::InvalidData, "wrong token"));
    }
    let mut t = vec![0u8; tlen];
    s.read_exact(&mut t)?;
    if t != token.as_bytes() {
        return Err(std::io::Error::new(ErrorKind::InvalidData, "wrong token"));
    }
    Ok(rank)
}

impl Ring {
    /// Connect to rank+1 and accept rank-1 (checking its greeting: magic,
    /// rank and the run's token; anything else is dropped).
    pub fn connect(
        listener: TcpListener,
        rank: usize,
        world: usize,
        next_addr: &str,
        token: &str,
        spec: &CollectiveSpec,
        progress: Arc<Progress>,
    ) -> Result<Ring, WorkerError> {
        let timeout = Duration::from_secs_f64(spec.timeout_s);
        let mut ring = Ring {
            rank,
            world,
            next: None,
            prev: None,
            chunk_bytes: spec.chunk_bytes as usize,
            scratch: Vec::new(),
            slice_bytes: spec.slice_bytes as usize,
            timeout,
            progress,
            names: (1, 0),
        };
        if world <= 1 {
            return Ok(ring);
        }
        let setup = |m: String| WorkerError::Collective(CollectiveError::Setup(m));
        let next_rank = (rank + 1) % world;
        let prev_rank = (rank + world - 1) % world;
        let next_addr: SocketAddr = next_addr.parse().map_err(|e| {
            setup(format!(
                "bad address {next_addr:?} for rank {next_rank}: {e}"
            ))
        })?;
        let mut next = TcpStream::connect_timeout(&next_addr, timeout).map_err(|e| {
            setup(format!(
                "cannot connect to rank {next_rank} at {next_addr}: {e}"
            ))
        })?;
        tune(&next, spec, timeout).map_err(|e| setup(e.to_string()))?;
        next.write_all(&hello(token, rank))
            .map_err(|e| setup(format!("greeting rank {next_rank}: {e}")))?;

        let deadline = Instant::now() + timeout;
        listener
            .set_nonblocking(true)
            .map_err(|e| setup(e.to_string()))?;
        let prev = loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(|e| setup(e.to_string()))?;
                    s.set_read_timeout(Some(Duration::from_secs(5).min(timeout)))
                        .ok();
                    match read_hello(&mut s, token) {
                        Ok(r) if r == prev_rank => {
                            tune(&s, spec, timeout).map_err(|e| setup(e.to_string()))?;
                            break s;
                        }
                        // A stray or stale connection: drop it, keep waiting.
                        _ => continue,
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(setup(format!(
                            "rank {prev_rank} did not connect within {timeout:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(setup(format!("accept: {e}"))),
            }
        };
        ring.next = Some(next);
        ring.prev = Some(prev);
        Ok(ring)
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }
    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Errors name members by global rank: ring position `p` is rank
    /// `p * stride + offset`.
    pub fn name_members(&mut self, stride: usize, offset: usize) {
        self.names = (stride, offset);
    }

    fn io_err(&self, e: std::io::Error, pos: usize, op: &'static str) -> CollectiveError {
        let peer = pos * self.names.0 + self.names.1;
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => CollectiveError::Timeout {
                peer,
                timeout: self.timeout,
                op,
            },
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::BrokenPipe
            | ErrorKind::ConnectionAborted => CollectiveError::PeerClosed { peer, op },
            _ => CollectiveError::Io {
                peer,
                op,
                source: e,
            },
        }
    }

    /// One ring step: send `buf[send]` to next while receiving into
    /// `buf[recv]` from prev (adding when `reduce`). The ranges are disjoint.
    fn step<T: Elem>(
        &mut self,
        buf: &mut [T],
        send: Range<usize>,
        recv: Range<usize>,
        reduce: bool,
        op: &'static str,
    ) -> Result<(), CollectiveError> {
        debug_assert!(send.end <= recv.start || recv.end <= send.start);
        let (send_slice, recv_slice) = split_disjoint(buf, send, recv);
        let chunk = (self.chunk_bytes / std::mem::size_of::<T>()).max(1);
        let next_rank = self.next_rank();
        let prev_rank = self.prev_rank();
        let need = (chunk.min(recv_slice.len()) * std::mem::size_of::<T>()).div_ceil(8);
        if reduce && self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        let scratch: &mut [T] =
            bytemuck::cast_slice_mut(&mut self.scratch[..if reduce { need } else { 0 }]);
        let next = self.next.as_mut().expect("ring connected");
        let prev = self.prev.as_mut().expect("ring connected");
        let (sent, received) = std::thread::scope(|sc| {
            let sender = sc.spawn(move || next.write_all(bytemuck::cast_slice(send_slice)));
            let received = recv_into(prev, recv_slice, chunk, reduce, scratch);
            (sender.join().expect("sender thread"), received)
        });
        received.map_err(|e| self.io_err(e, prev_rank, op))?;
        sent.map_err(|e| self.io_err(e, next_rank, op))?;
        Ok(())
    }

    /// Reduce-scatter over `n` segments; afterwards this rank holds the full
    /// reduction of segment `(rank + 1 + shift) % n`.
    fn reduce_scatter_phase<T: Elem>(
        &mut self,
        buf: &mut [T],
        seg: &dyn Fn(usize) -> Range<usize>,
        shift: usize,
    ) -> Result<(), CollectiveError> {
        let n = self.world;
        for s in 0..n - 1 {
            let send_idx = (self.rank + shift + n - s) % n;
            let recv_idx = (self.rank + shift + 2 * n - s - 1) % n;
            self.step(buf, seg(send_idx), seg(recv_idx), true, "reduce-scatter")?;
        }
        Ok(())
    }

    /// All-gather: this rank starts owning segment `(rank + 1) % n`.
    fn all_gather_phase<T: Elem>(
        &mut self,
        buf: &mut [T],
        seg: &dyn Fn(usize) -> Range<usize>,
    ) -> Result<(), CollectiveError> {
        let n = self.world;
        for s in 0..n - 1 {
            let send_idx = (self.rank + 1 + n - s) % n;
            let recv_idx = (self.rank + n - s) % n;
            self.step(buf, seg(send_idx), seg(recv_idx), false, "all-gather")?;
        }
        Ok(())
    }
}

/// Receive exactly `dst.len()` elements; add them in when `reduce`.
fn recv_into<T: Elem>(
    s: &mut TcpStream,
    dst: &mut [T],
    chunk: usize,
    reduce: bool,
    scratch: &mut [T],
) -> std::io::Result<()> {
    if !reduce {
        return s.read_exact(bytemuck::cast_slice_mut(dst));
    }
    for block in dst.chunks_mut(chunk) {
        let tmp = &mut scratch[..block.len()];
        s.read_exact(bytemuck::cast_slice_mut(tmp))?;
        for (d, v) in block.iter_mut().zip(tmp.iter()) {
            *d += *v;
        }
    }
    Ok(())
}

/// Two disjoint sub-slices of one buffer, one shared and one mutable.
fn split_disjoint<T>(buf: &mut [T], a: Range<usize>, b: Range<usize>) -> (&[T], &mut [T]) {
    if a.end <= b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.end - b.start])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&hi[..a.end - a.start], &mut lo[b])
    }
}

impl Ring {
    /// The element-wise sum over the ring's members, in place, without
    /// the progress bookkeeping (a part of a larger collective uses it).
    pub fn sum_in_place<T: Elem>(&mut self, buf: &mut [T]) -> Result<(), CollectiveError> {
        let n = self.world;
        if n > 1 && !buf.is_empty() {
            // Large buffers go round the ring in cache-sized slices: a
            // segment reduced in the reduce-scatter is still in cache when
            // the all-gather sends it on, which saves a trip to memory per
            // byte (measured in docs/benchmarks.md).
            let slice = (self.slice_bytes / std::mem::size_of::<T>()).max(n);
            for part in buf.chunks_mut(slice) {
                let len = part.len();
                let seg = move |i| segment(len, n, i);
                self.reduce_scatter_phase(part, &seg, 0)?;
                self.all_gather_phase(part, &seg)?;
            }
        }
        Ok(())
    }

    /// Every member ends with the buffer of ring position `root` (without
    /// the progress bookkeeping).
    pub fn broadcast_from<T: Elem>(
        &mut self,
        buf: &mut [T],
        root: usize,
    ) -> Result<(), CollectiveError> {
        if root >= self.world {
            return Err(CollectiveError::Args(format!(
                "root {root} >= world size {}",
                self.world
            )));
        }
        if self.world > 1 && !buf.is_empty() {
            let chunk = (self.chunk_bytes / std::mem::size_of::<T>()).max(1);
            let forward = self.next_rank() != root;
            let (next_rank, prev_rank) = (self.next_rank(), self.prev_rank());
            for block in buf.chunks_mut(chunk) {
                if self.rank != root {
                    let prev = self.prev.as_mut().expect("ring connected");
                    prev.read_exact(bytemuck::cast_slice_mut(block))
                        .map_err(|e| self.io_err(e, prev_rank, "broadcast"))?;
                }
                if forward {
                    let next = self.next.as_mut().expect("ring connected");
                    next.write_all(bytemuck::cast_slice(block))
                        .map_err(|e| self.io_err(e, next_rank, "broadcast"))?;
                }
            }
        }
        Ok(())
    }

    /// `output` (members x input.len()) ends with every member's input in
    /// ring order (without the progress bookkeeping).
    pub fn gather_into<T: Elem>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), CollectiveError> {
        let n = self.world;
        let len = input.len();
        crate::collective::check_len("all_gather output", output.len(), len * n)?;
        output[self.rank * len..(self.rank + 1) * len].copy_from_slice(input);
        if n > 1 && len > 0 {
            // Block b is rank b's input; the gather phase expects this rank to
            // start owning block rank+1, so shift indices by one.
            let seg = move |i: usize| {
                let b = (i + n - 1) % n;
                b * len..(b + 1) * len
            };
            self.all_gather_phase(output, &seg)?;
        }
        Ok(())
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce<T: Elem>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), CollectiveError> {
        self.progress.collective_started();
        self.sum_in_place(buf)?;
        crate::collective::finish(buf, op, self.world);
        self.progress.collective_done();
        Ok(())
    }

    fn broadcast<T: Elem>(&mut self, buf: &mut [T], root: usize) -> Result<(), CollectiveError> {
        self.progress.collective_started();
        self.broadcast_from(buf, root)?;
        self.progress.collective_done();
        Ok(())
    }

    fn all_gather<T: Elem>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), CollectiveError> {
        self.progress.collective_started();
        self.gather_into(input, output)?;
        self.progress.collective_done();
        Ok(())
    }

    fn reduce_scatter<T: Elem>(
        &mut self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        self.progress.collective_started();
        let n = self.world;
        let len = output.len();
        crate::collective::check_len("reduce_scatter input", input.len(), len * n)?;
        let mut work = input.to_vec();
        if n > 1 && len > 0 {
            let seg = move |i: usize| i * len..(i + 1) * len;
            // shift n-1: this rank ends holding block (rank + 1 + n - 1) % n = rank.
            self.reduce_scatter_phase(&mut work, &seg, n - 1)?;
        }
        output.copy_from_slice(&work[self.rank * len..(self.rank + 1) * len]);
        crate::collective::finish(output, op, n);
        self.progress.collective_done();
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        // An all-reduce cannot finish on any rank before every rank entered
        // it; one element per rank makes every ring step carry data.
        let mut buf = vec![0.0f32; self.world];
        self.all_reduce(&mut buf, ReduceOp::Sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_everything_once() {
        for len in 0..40 {
            for n in 1..9 {
                let mut next = 0;
                for i in 0..n {
                    let r = segment(len, n, i);
                    assert_eq!(r.start, next);
                    assert!(r.len() == len / n || r.len() == len / n + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn split_disjoint_both_orders() {
        let mut v: Vec<i32> = (0..10).collect();
        let (a, b) = split_disjoint(&mut v, 0..3, 5..8);
        assert_eq!(a, &[0, 1, 2]);
        assert_eq!(b, &[5, 6, 7]);
        let (a, b) = split_disjoint(&mut v, 7..9, 1..4);
        assert_eq!(a, &[7, 8]);
        assert_eq!(b, &[1, 2, 3]);
    }
}
