//! The hierarchical CPU collective: the ranks of one node exchange through
//! shared memory (`shm`), and one TCP ring per local rank joins the nodes
//! (local rank i of every node; NCCL's shape, with shared memory where NCCL
//! has NVLink). An all-reduce of a chunk:
//!
//! 1. every local rank puts its chunk in its slot; barrier;
//! 2. local rank i sums segment i of every slot, in local-rank order;
//! 3. the ring of local rank i sums that segment across the nodes;
//! 4. local rank i puts the segment back in its slot; barrier; everyone
//!    copies the other segments out.
//!
//! The bytes that cross TCP per rank fall from 2(n-1)/n of the buffer
//! (one ring through all n ranks) to 2(N-1)/(N l) (N nodes of l ranks),
//! and the exchange within a node is two memory copies.
//!
//! Sums are added in another order than the ring through every rank's
//! (within a node by local rank, then round the node ring), so results
//! differ from that ring's in the last bits; with the same layout every
//! run is bit-identical, and every rank of a run holds the same bits.

use crate::client::{Control, Welcome};
use crate::collective::{Collective, CollectiveError, Elem, ReduceOp};
use crate::progress::Progress;
use crate::ring::{segment, Ring};
use crate::shm::{self, NodeGroup};
use crate::WorkerError;
use proto::spec::Collective as CollectiveSpec;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// Whether this round's ranks (on the TCP backend) use shared memory
/// within their node: the spec allows it and nodes have more than one
/// rank. Every rank of a round decides alike (the spec and the layout are
/// the round's; every node has the same number of ranks).
pub fn applies(spec: &CollectiveSpec, per_node: u32) -> bool {
    spec.shared_memory && per_node > 1
}

pub struct Hier {
    rank: usize,
    world: usize,
    /// Ranks per node, and this rank's index among them.
    per_node: usize,
    me: usize,
    nodes: usize,
    group: NodeGroup,
    /// The ring of this local rank across the nodes (position = node).
    lane: Ring,
    /// The slot set the next chunk uses (alternating: a rank may write a
    /// set again only after a barrier everyone entered after reading it).
    set: usize,
    progress: Arc<Progress>,
    /// The node's segment file (named in the rank's log; local rank 0
    /// unlinks it once every local rank has mapped it).
    pub segment: Option<std::path::PathBuf>,
}

fn setup(m: String) -> WorkerError {
    WorkerError::Collective(CollectiveError::Setup(m))
}

impl Hier {
    /// Build this round's collective: local rank 0 makes the node's
    /// segment and publishes its name in the round's key-value store, the
    /// others map it; then each joins its ring across the nodes.
    pub fn connect(
        listener: TcpListener,
        ctl: &mut Control,
        welcome: &Welcome,
        per_node: usize,
        token: &str,
        spec: &CollectiveSpec,
        progress: Arc<Progress>,
    ) -> Result<Hier, WorkerError> {
        let rank = welcome.rank as usize;
        let world = welcome.world_size as usize;
        let (node, me, nodes) = (rank / per_node, rank % per_node, world / per_node);
        if nodes > 1 && welcome.lane_next.is_empty() {
            return Err(setup(
                "the launcher named no ring across nodes (an older launcher?)".into(),
            ));
        }
        let timeout = Duration::from_secs_f64(spec.timeout_s);
        let slot = spec.shm_chunk_bytes as usize;
        let key = format!("shm-segment-node-{node}");
        let base = node * per_node;
        let segment;
        let mut group = if me == 0 {
            let (g, path) = NodeGroup::create(&shm::default_dir(), per_node, slot, timeout, base)?;
            ctl.kv_set(&key, &path.display().to_string())?;
            segment = path;
            g
        } else {
            let path = ctl.kv_get(&key, timeout)?.ok_or_else(|| {
                setup(format!(
                    "local rank 0 of node {node} published no shared-memory segment within {timeout:?}"
                ))
            })?;
            segment = path.into();
            NodeGroup::attach(&segment, me, per_node, slot, timeout, base)?
        };
        group.attached()?;
        let mut lane = Ring::connect(
            listener,
            node,
            nodes,
            &welcome.lane_next,
            token,
            spec,
            progress.clone(),
        )?;
        lane.name_members(per_node, me);
        let mut h = Hier::from_parts(rank, world, group, lane, progress);
        h.segment = Some(segment);
        Ok(h)
    }

    /// A rank's collective from its node's segment (every rank of the node
    /// attached) and its ring across the nodes (position = node).
    pub fn from_parts(
        rank: usize,
        world: usize,
        group: NodeGroup,
        lane: Ring,
        progress: Arc<Progress>,
    ) -> Hier {
        let per_node = group.size();
        Hier {
            rank,
            world,
            per_node,
            me: rank % per_node,
            nodes: world / per_node,
            group,
            lane,
            set: 0,
            progress,
            segment: None,
        }
    }

    fn next_set(&mut self) -> usize {
        self.set ^= 1;
        self.set
    }

    /// Steps 1-4 of the module comment for one chunk (at most a slot).
    fn sum_chunk<T: Elem>(&mut self, chunk: &mut [T]) -> Result<(), CollectiveError> {
        let set = self.next_set();
        let (l, me, len) = (self.per_node, self.me, chunk.len());
        let g = &self.group;
        g.put(set, me, 0, chunk);
        g.barrier("all-reduce")?;
        let mine = segment(len, l, me);
        {
            let dst = &mut chunk[mine.clone()];
            dst.copy_from_slice(g.get(set, 0, mine.clone()));
            for j in 1..l {
                for (d, v) in dst.iter_mut().zip(g.get::<T>(set, j, mine.clone())) {
                    *d += *v;
                }
            }
        }
        // (A lane of one node returns at once.)
        self.lane.sum_in_place(&mut chunk[mine.clone()])?;
        g.put(set, me, mine.start, &chunk[mine.clone()]);
        g.barrier("all-reduce")?;
        for j in (0..l).filter(|j| *j != me) {
            let r = segment(len, l, j);
            chunk[r.clone()].copy_from_slice(g.get(set, j, r));
        }
        Ok(())
    }

    fn sum_in_place<T: Elem>(&mut self, buf: &mut [T]) -> Result<(), CollectiveError> {
        let per = self.group.slot_len::<T>().max(1);
        for chunk in buf.chunks_mut(per) {
            self.sum_chunk(chunk)?;
        }
        Ok(())
    }
}

impl Collective for Hier {
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

    /// Root's node ring of root's local rank carries it across the nodes;
    /// on each node that rank puts it in its slot and the others copy it.
    fn broadcast<T: Elem>(&mut self, buf: &mut [T], root: usize) -> Result<(), CollectiveError> {
        if root >= self.world {
            return Err(CollectiveError::Args(format!(
                "root {root} >= world size {}",
                self.world
            )));
        }
        self.progress.collective_started();
        let (root_node, root_local) = (root / self.per_node, root % self.per_node);
        let per = self.group.slot_len::<T>().max(1);
        for chunk in buf.chunks_mut(per) {
            let set = self.next_set();
            if self.me == root_local {
                self.lane.broadcast_from(chunk, root_node)?;
                self.group.put(set, root_local, 0, chunk);
            }
            self.group.barrier("broadcast")?;
            if self.me != root_local {
                chunk.copy_from_slice(self.group.get(set, root_local, 0..chunk.len()));
            }
        }
        self.progress.collective_done();
        Ok(())
    }

    /// Each node ring gathers its local rank's inputs across the nodes; the
    /// node's ranks then read each other's through their slots.
    fn all_gather<T: Elem>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), CollectiveError> {
        let (n, l, len) = (self.nodes, self.per_node, input.len());
        crate::collective::check_len("all_gather output", output.len(), len * self.world)?;
        let per = self.group.slot_len::<T>() / n;
        if per == 0 {
            return Err(CollectiveError::Args(format!(
                "all_gather across {n} nodes needs collective.shm_chunk_bytes of at least {} bytes",
                n * std::mem::size_of::<T>()
            )));
        }
        self.progress.collective_started();
        let mut lane_out = vec![T::default(); n * per.min(len)];
        let mut start = 0;
        while start < len {
            let end = (start + per).min(len);
            let cl = end - start;
            let set = self.next_set();
            let out = &mut lane_out[..n * cl];
            self.lane.gather_into(&input[start..end], out)?;
            self.group.put(set, self.me, 0, out);
            self.group.barrier("all-gather")?;
            for j in 0..l {
                let s = self.group.get::<T>(set, j, 0..n * cl);
                for k in 0..n {
                    let r = k * l + j;
                    output[r * len + start..r * len + end]
                        .copy_from_slice(&s[k * cl..(k + 1) * cl]);
                }
            }
            start = end;
        }
        self.progress.collective_done();
        Ok(())
    }

    /// An all-reduce of the whole input, of which this rank keeps its
    /// block (the same sums, in the same order, as `all_reduce`).
    fn reduce_scatter<T: Elem>(
        &mut self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        let len = output.len();
        crate::collective::check_len("reduce_scatter input", input.len(), len * self.world)?;
        let mut work = input.to_vec();
        self.all_reduce(&mut work, op)?;
        output.copy_from_slice(&work[self.rank * len..(self.rank + 1) * len]);
        Ok(())
    }

    /// Everyone of the node, then every node (its ring), then the node
    /// again: no rank leaves before every rank of every node arrived.
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.group.barrier("barrier")?;
        self.lane.sum_in_place(&mut vec![0f32; self.nodes])?;
        self.group.barrier("barrier")
    }
}
