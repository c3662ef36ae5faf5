//! A training rank's checkpoint saves: synchronous (this rank's shard, a
//! barrier, rank 0 commits) or asynchronous (this rank's segment copied
//! and written on a background thread; rank 0 commits once every rank's
//! shards are there), at most one write in flight. A notice's stop is
//! always written synchronously: it must be committed before the rank
//! stops.

use super::{
    commit, wait_for_shards, write_segments, write_shard, CheckpointError, DirStore, SaveTag,
};
use crate::collective::Collective;
use crate::WorkerError;
use std::collections::BTreeMap;
use std::ops::Range;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The tensors a save holds, in this order.
const TENSORS: [&str; 2] = ["params", "velocity"];

/// The copies of this rank's segments an asynchronous save writes; handed
/// back so the next save reuses them (fresh memory costs a page fault per
/// 4 KiB).
type Copies = (Vec<f32>, Vec<f32>);

/// How saves are made (from the job's `checkpoint` section).
#[derive(Debug, Clone, Copy)]
pub struct Saving {
    /// Checkpoints kept after a commit.
    pub keep: usize,
    pub async_write: bool,
    /// How long rank 0's background commit waits for the others' shards.
    pub shard_wait: Duration,
}

pub struct Checkpointer {
    store: DirStore,
    tag: SaveTag,
    rank: usize,
    world: usize,
    /// Each tensor's whole length, and this rank's segment of it.
    len: usize,
    seg: Range<usize>,
    /// The training's seed, a scalar of every checkpoint.
    seed: u64,
    saving: Saving,
    inflight: Option<JoinHandle<Result<Copies, CheckpointError>>>,
    spare: Copies,
    /// Rank 0 tells the launcher of each commit (a note with the next
    /// heartbeat): its metrics and report.html's timeline count them.
    progress: Option<std::sync::Arc<crate::progress::Progress>>,
}

/// Rank 0's note of a committed checkpoint.
fn committed_note(p: &crate::progress::Progress, step: u64, seconds: f64, background: bool) {
    p.note(
        "checkpoint_committed",
        format!("checkpoint committed at step {step} ({seconds:.2} s)"),
        false,
        serde_json::json!({"step": step, "seconds": seconds, "async": background}),
    );
}

impl Checkpointer {
    pub fn new(
        store: DirStore,
        tag: SaveTag,
        rank: usize,
        world: usize,
        len: usize,
        seed: u64,
        saving: Saving,
    ) -> Checkpointer {
        Checkpointer {
            store,
            tag,
            rank,
            world,
            len,
            seg: crate::ring::segment(len, world, rank),
            seed,
            saving,
            inflight: None,
            spare: (Vec::new(), Vec::new()),
            progress: None,
        }
    }

    /// Rank 0 notes each commit for the launcher.
    pub fn with_progress(mut self, p: std::sync::Arc<crate::progress::Progress>) -> Checkpointer {
        self.progress = Some(p);
        self
    }

    /// Save the state after step `done` (`stop`: a notice's stop step).
    pub fn save<C: Collective>(
        &mut self,
        coll: &mut C,
        done: u64,
        params: &[f32],
        velocity: &[f32],
        stop: bool,
    ) -> Result<(), WorkerError> {
        let t0 = Instant::now();
        // At most one write in flight: finish the previous one first.
        self.finish()?;
        if self.saving.async_write && !stop {
            self.save_in_background(done, params, velocity);
            return Ok(());
        }
        write_shard(
            &self.store,
            &self.tag,
            done,
            self.rank,
            self.world,
            &[(TENSORS[0], params), (TENSORS[1], velocity)],
        )?;
        coll.barrier()?;
        if self.rank == 0 {
            commit(
                &self.store,
                &self.tag,
                done,
                self.world,
                &[(TENSORS[0], self.len), (TENSORS[1], self.len)],
                scalars(done, self.seed),
                self.saving.keep,
            )?;
            let seconds = t0.elapsed().as_secs_f64();
            println!("[rank 0] checkpoint committed at step {done} ({seconds:.2} s)");
            if let Some(p) = &self.progress {
                committed_note(p, done, seconds, false);
            }
        }
        Ok(())
    }

    /// Copy this rank's segments and write them on a thread; rank 0 then
    /// waits for every rank's shards and commits.
    fn save_in_background(&mut self, done: u64, params: &[f32], velocity: &[f32]) {
        let (mut p, mut v) = std::mem::take(&mut self.spare);
        p.clear();
        p.extend_from_slice(&params[self.seg.clone()]);
        v.clear();
        v.extend_from_slice(&velocity[self.seg.clone()]);
        let (store, tag) = (self.store.clone(), self.tag.clone());
        let (rank, world, len, seed, saving) =
            (self.rank, self.world, self.len, self.seed, self.saving);
        let progress = self.progress.clone();
        let t0 = Instant::now();
        self.inflight = Some(std::thread::spawn(move || {
            write_segments(
                &store,
                &tag,
                done,
                rank,
                &[(TENSORS[0], &p), (TENSORS[1], &v)],
            )?;
            if rank == 0 {
                wait_for_shards(&store, &tag, done, world, &TENSORS, saving.shard_wait)?;
                commit(
                    &store,
                    &tag,
                    done,
                    world,
                    &[(TENSORS[0], len), (TENSORS[1], len)],
                    scalars(done, seed),
                    saving.keep,
                )?;
                println!("[rank 0] checkpoint committed at step {done} (async)");
                if let Some(p) = &progress {
                    committed_note(p, done, t0.elapsed().as_secs_f64(), true);
                }
            }
            Ok((p, v))
        }));
    }

    /// Wait for the write in flight, if any.
    pub fn finish(&mut self) -> Result<(), WorkerError> {
        if let Some(h) = self.inflight.take() {
            self.spare = h.join().expect("checkpoint writer thread")?;
        }
        Ok(())
    }
}

/// The scalars every checkpoint records: its step and the training's seed.
fn scalars(step: u64, seed: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([("step".to_string(), step), ("seed".to_string(), seed)])
}
