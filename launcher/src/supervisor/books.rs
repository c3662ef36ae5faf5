//! A `command` job's own checkpoints in the run (`crate::commits`): the
//! ranks' commits fed to the bookkeeper, each commit recorded, and the
//! checkpoint an attempt resumes from.

use super::state::RunState;
use super::Supervisor;
use crate::commits::{Bookkeeper, Committed, Folder};
use proto::events::RunEvent;
use proto::spec::Workload;

impl Supervisor {
    /// The bookkeeper of a `command` job with a checkpoint folder.
    pub(super) fn bookkeeper(&self) -> Option<Bookkeeper> {
        let spec = &self.compiled.spec;
        let (Workload::Command(c), Some(dir)) = (&spec.workload, &spec.checkpoint.dir) else {
            return None;
        };
        Some(Bookkeeper::new(Folder {
            root: dir.into(),
            run_id: self.run_id.clone(),
            world_size: self.plan.world_size,
            identity: proto::checkpoint::Identity::command(c),
            keep: spec.checkpoint.keep,
        }))
    }

    /// Rank `rank` committed `steps`: commit what every rank has.
    pub(super) fn ranks_committed(&mut self, r: &mut RunState, rank: u32, steps: &[u64]) {
        if let Some(b) = r.books.as_mut() {
            b.commits.record(rank, steps);
            b.start_ready();
        }
    }

    /// A commit that finished on its thread (the tick looks).
    pub(super) fn poll_commits(&mut self, r: &mut RunState) {
        let done = r.books.as_mut().and_then(|b| b.poll());
        let n = r.attempt.as_ref().map(|a| a.n).unwrap_or_default();
        if let Some((step, res)) = done {
            self.commit_done(n, step, res);
        }
    }

    /// At an attempt's end: every commit the ranks asked for is done.
    pub(super) fn settle_commits(&mut self, r: &mut RunState, n: u32) {
        let done = r.books.as_mut().map(|b| b.settle()).unwrap_or_default();
        for (step, res) in done {
            self.commit_done(n, step, res);
        }
    }

    fn commit_done(&mut self, attempt: u32, step: u64, res: Result<Committed, String>) {
        match res {
            Ok(c) => {
                self.console.note(&format!(
                    "[ringmaster] checkpoint of step {step} committed ({} file(s), {} bytes, {:.2} s)",
                    c.files, c.bytes, c.seconds
                ));
                self.events.emit(RunEvent::CheckpointCommitted {
                    attempt,
                    step,
                    dir: c.dir.display().to_string(),
                    files: c.files,
                    bytes: c.bytes,
                    seconds: c.seconds,
                    removed: c.removed,
                });
            }
            Err(error) => {
                self.console.note(&format!(
                    "[ringmaster] warning: every rank committed step {step}, but its checkpoint cannot be committed: {error}"
                ));
                self.events.emit(RunEvent::CheckpointCommitFailed {
                    attempt,
                    step,
                    error,
                });
            }
        }
    }

    /// Before attempt `n` starts: unfinished folders removed, and the
    /// newest committed checkpoint that verifies is where its programs
    /// resume (`r.resume_from`).
    pub(super) fn choose_resume(&mut self, r: &mut RunState, n: u32) {
        let Some(b) = r.books.as_mut() else { return };
        b.new_attempt(self.plan.world_size);
        b.folder.clear_unfinished();
        let any = self.compiled.spec.checkpoint.allow_identity_mismatch;
        let (from, skipped) = b.folder.resume_point(any);
        for s in skipped {
            self.console.note(&format!("[ringmaster] warning: {s}"));
            self.events
                .emit(RunEvent::CheckpointSkipped(proto::events::Note {
                    attempt: n,
                    rank: 0,
                    message: s,
                    warning: true,
                    detail: serde_json::json!({"by": "launcher"}),
                }));
        }
        if let Some(f) = &from {
            self.events.emit(RunEvent::ResumingFrom {
                attempt: n,
                step: f.step,
                dir: f.dir.clone(),
            });
        }
        r.resume_from = from;
    }
}
