//! A `command` job's checkpoints, written by the program itself (torch.save,
//! torch.distributed.checkpoint, anything) into `<checkpoint.dir>/step-<S>.tmp/`
//! (`ringmaster.checkpoint_dir(S)`), and committed by each rank's program
//! once its files are written (`ringmaster.commit(S)`). The workers carry
//! each rank's committed steps to the launcher with their heartbeats (and
//! results); once every rank of the attempt committed step S, the launcher
//! commits the folder as a `train` checkpoint is committed: every file
//! synced and listed with its size and CRC-32C in a sealed manifest (format
//! 3, the job's identity), the manifest written last, the folder renamed
//! to `step-<S>`, the parent synced; then only the newest `checkpoint.keep`
//! are kept. A folder not committed by every rank is never offered for
//! resume; an attempt resumes from the newest committed checkpoint whose
//! manifest and files verify (RINGMASTER_RESUME_STEP, _DIR).
//!
//! `Commits` (which step every rank committed) is pure; `Folder` does the
//! file work; `Bookkeeper` runs a commit on a thread of its own, so that a
//! large checkpoint's checksums do not hold up the supervisor's loop.

use proto::checkpoint::{self as ck, FileEntry, Identity, Manifest};
use proto::contract::ResumeFrom;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Which steps each rank of the attempt committed, and which the launcher
/// has dealt with (committed, or failed to).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commits {
    per_rank: Vec<BTreeSet<u64>>,
    /// The newest step committed in this run, and steps that failed.
    done: Option<u64>,
    failed: BTreeSet<u64>,
}

impl Commits {
    pub fn new(world: usize) -> Commits {
        Commits {
            per_rank: vec![BTreeSet::new(); world],
            ..Default::default()
        }
    }

    /// A new attempt of `world` ranks (an elastic run's may differ from
    /// the last): its ranks commit afresh (they resume from the newest
    /// committed checkpoint).
    pub fn new_attempt(&mut self, world: usize) {
        self.per_rank = vec![BTreeSet::new(); world];
    }

    /// Rank `rank` says it committed `steps` (the newest few).
    pub fn record(&mut self, rank: u32, steps: &[u64]) {
        if let Some(set) = self.per_rank.get_mut(rank as usize) {
            set.extend(steps.iter().copied());
        }
    }

    /// The newest step every rank committed that is newer than the last
    /// one committed and did not fail.
    pub fn ready(&self) -> Option<u64> {
        let (first, rest) = self.per_rank.split_first()?;
        first
            .iter()
            .rev()
            .copied()
            .filter(|s| self.done.is_none_or(|d| *s > d) && !self.failed.contains(s))
            .find(|s| rest.iter().all(|r| r.contains(s)))
    }

    pub fn committed(&mut self, step: u64) {
        self.done = Some(self.done.map_or(step, |d| d.max(step)));
    }

    pub fn failed(&mut self, step: u64) {
        self.failed.insert(step);
    }

    /// The newest step committed in this run.
    pub fn newest(&self) -> Option<u64> {
        self.done
    }

    /// Ranks that did not commit `step` (all committed: empty).
    pub fn missing(&self, step: u64) -> Vec<u32> {
        (0..self.per_rank.len() as u32)
            .filter(|r| !self.per_rank[*r as usize].contains(&step))
            .collect()
    }
}

/// One committed checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub step: u64,
    pub dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Older checkpoints removed (checkpoint.keep).
    pub removed: Vec<u64>,
}

/// The job's checkpoint folder and what its manifests say.
#[derive(Debug, Clone)]
pub struct Folder {
    pub root: PathBuf,
    pub run_id: String,
    pub world_size: u32,
    pub identity: Identity,
    pub keep: u32,
}

impl Folder {
    /// Commit the folder of `step`: sync and checksum its files, write the
    /// sealed manifest last, rename it into place, keep the newest `keep`.
    pub fn commit(&self, step: u64) -> Result<Committed, String> {
        let t0 = Instant::now();
        let tmp_name = ck::tmp_dir_name(step);
        let tmp = self.root.join(&tmp_name);
        if !tmp.is_dir() {
            return Err(format!(
                "{} does not exist: the program committed step {step} without writing into ringmaster.checkpoint_dir({step})",
                tmp.display()
            ));
        }
        let mut files = BTreeMap::new();
        list_files(&tmp, &tmp, &mut files).map_err(|e| format!("{}: {e}", tmp.display()))?;
        files.remove(ck::MANIFEST);
        if files.is_empty() {
            return Err(format!("{} holds no files", tmp.display()));
        }
        let mut manifest = Manifest {
            format_version: ck::FORMAT_VERSION,
            run_id: self.run_id.clone(),
            step,
            world_size: self.world_size,
            identity: self.identity.clone(),
            tensors: BTreeMap::new(),
            files,
            scalars: BTreeMap::from([("step".to_string(), step)]),
            checksum: String::new(),
        };
        let bytes: u64 = manifest.files.values().map(|f| f.bytes).sum();
        let n_files = manifest.files.len() as u64;
        let path = tmp.join(ck::MANIFEST);
        write_synced(&path, &manifest.seal()).map_err(|e| format!("{}: {e}", path.display()))?;
        sync_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let dir = self.root.join(ck::dir_name(step));
        if dir.exists() {
            // One that did not verify (it was skipped at resume): replaced.
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| format!("renaming {tmp_name}: {e}"))?;
        sync_dir(&self.root).map_err(|e| format!("{}: {e}", self.root.display()))?;
        let removed = self.prune(step)?;
        Ok(Committed {
            step,
            dir,
            files: n_files,
            bytes,
            seconds: t0.elapsed().as_secs_f64(),
            removed,
        })
    }

    /// Keep the newest `keep` checkpoints; drop unfinished folders of steps
    /// before `step` (every rank finished `step`, so none still writes one).
    fn prune(&self, step: u64) -> Result<Vec<u64>, String> {
        let steps = ck::committed_steps(&self.root).map_err(|e| e.to_string())?;
        let mut removed = Vec::new();
        for old in steps.iter().skip(self.keep.max(1) as usize) {
            let d = self.root.join(ck::dir_name(*old));
            std::fs::remove_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            removed.push(*old);
        }
        for name in self.entries() {
            if let Some(s) = name.strip_suffix(".tmp").and_then(ck::parse_dir_name) {
                if s < step {
                    let _ = std::fs::remove_dir_all(self.root.join(&name));
                }
            }
        }
        Ok(removed)
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Before an attempt starts (no program writes): folders no rank
    /// finished are removed, so that a step is written afresh. Returns the
    /// names removed.
    pub fn clear_unfinished(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for name in self.entries() {
            if name
                .strip_suffix(".tmp")
                .and_then(ck::parse_dir_name)
                .is_some()
                && std::fs::remove_dir_all(self.root.join(&name)).is_ok()
            {
                removed.push(name);
            }
        }
        removed
    }

    /// The newest committed checkpoint whose manifest and files verify
    /// (and which is this job's, unless `any_identity`), and why each newer
    /// one was skipped.
    pub fn resume_point(&self, any_identity: bool) -> (Option<ResumeFrom>, Vec<String>) {
        let mut skipped = Vec::new();
        let steps = match ck::committed_steps(&self.root) {
            Ok(s) => s,
            Err(e) => return (None, vec![format!("{}: {e}", self.root.display())]),
        };
        for step in steps {
            let name = ck::dir_name(step);
            let dir = self.root.join(&name);
            let verdict = std::fs::read(dir.join(ck::MANIFEST))
                .map_err(|e| format!("manifest: {e}"))
                .and_then(|b| Manifest::verify(&b, &name))
                .and_then(|m| {
                    let diff = self.identity.differences(&m.identity);
                    if !diff.is_empty() && !any_identity {
                        return Err(format!("another training's: {}", diff.join("; ")));
                    }
                    ck::verify_files(&dir, &m).map(|()| m.world_size)
                });
            match verdict {
                Ok(world_size) => {
                    return (
                        Some(ResumeFrom {
                            step,
                            dir: dir.display().to_string(),
                            world_size,
                        }),
                        skipped,
                    )
                }
                Err(e) => skipped.push(format!("skipping checkpoint {name}: {e}")),
            }
        }
        (None, skipped)
    }
}

/// Every regular file under `dir`, by its path relative to `base`, synced
/// and checksummed; folders synced too.
fn list_files(
    base: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, FileEntry>,
) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        let kind = e.file_type()?;
        if kind.is_dir() {
            list_files(base, &path, out)?;
            sync_dir(&path)?;
        } else if kind.is_file() {
            std::fs::File::open(&path)?.sync_all()?;
            let rel = path
                .strip_prefix(base)
                .map_err(std::io::Error::other)?
                .to_string_lossy()
                .into_owned();
            out.insert(rel, ck::file_entry(&path)?);
        }
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The run's bookkeeping: what the ranks committed, and a commit running
/// on its own thread (one at a time).
pub struct Bookkeeper {
    pub folder: Arc<Folder>,
    pub commits: Commits,
    in_flight: Option<(u64, std::thread::JoinHandle<Result<Committed, String>>)>,
}

impl Bookkeeper {
    pub fn new(folder: Folder) -> Bookkeeper {
        let world = folder.world_size as usize;
        Bookkeeper {
            folder: Arc::new(folder),
            commits: Commits::new(world),
            in_flight: None,
        }
    }

    /// A new attempt of `world` ranks: they commit afresh, and their
    /// manifests say their world size. (Called between attempts, when no
    /// commit runs.)
    pub fn new_attempt(&mut self, world: u32) {
        self.commits.new_attempt(world as usize);
        Arc::make_mut(&mut self.folder).world_size = world;
    }

    /// Start committing the newest step every rank committed, unless a
    /// commit is running.
    pub fn start_ready(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        if let Some(step) = self.commits.ready() {
            let folder = self.folder.clone();
            let handle = std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || folder.commit(step));
            match handle {
                Ok(h) => self.in_flight = Some((step, h)),
                Err(e) => {
                    self.commits.failed(step);
                    tracing::warn!("cannot start a thread to commit step {step}: {e}");
                }
            }
        }
    }

    /// The commit that finished since the last look, if one did.
    pub fn poll(&mut self) -> Option<(u64, Result<Committed, String>)> {
        if !self.in_flight.as_ref()?.1.is_finished() {
            return None;
        }
        self.join()
    }

    fn join(&mut self) -> Option<(u64, Result<Committed, String>)> {
        let (step, h) = self.in_flight.take()?;
        let r = h
            .join()
            .unwrap_or_else(|_| Err("the commit thread panicked".into()));
        match &r {
            Ok(_) => self.commits.committed(step),
            Err(_) => self.commits.failed(step),
        }
        Some((step, r))
    }

    /// At an attempt's end: the commit running finished, then whatever
    /// every rank committed since, committed here and now.
    pub fn settle(&mut self) -> Vec<(u64, Result<Committed, String>)> {
        let mut out: Vec<_> = self.join().into_iter().collect();
        while self.commits.ready().is_some() {
            self.start_ready();
            out.extend(self.join());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_the_newest_step_every_rank_committed() {
        // (each rank's committed steps, done, failed, ready)
        let table: Vec<(Vec<Vec<u64>>, Option<u64>, Vec<u64>, Option<u64>)> = vec![
            (vec![vec![], vec![]], None, vec![], None),
            (vec![vec![50], vec![]], None, vec![], None),
            (vec![vec![50], vec![50]], None, vec![], Some(50)),
            (vec![vec![50, 100], vec![50]], None, vec![], Some(50)),
            (vec![vec![50, 100], vec![50, 100]], None, vec![], Some(100)),
            (vec![vec![50, 100], vec![50, 100]], Some(100), vec![], None),
            (
                vec![vec![50, 100], vec![50, 100]],
                Some(50),
                vec![],
                Some(100),
            ),
            (
                vec![vec![50, 100], vec![50, 100]],
                None,
                vec![100],
                Some(50),
            ),
            // Ranks that saved at different steps share none.
            (vec![vec![40], vec![50]], None, vec![], None),
            (vec![vec![7]], None, vec![], Some(7)),
        ];
        for (ranks, done, failed, want) in table {
            let mut c = Commits::new(ranks.len());
            for (r, s) in ranks.iter().enumerate() {
                c.record(r as u32, s);
            }
            if let Some(d) = done {
                c.committed(d);
            }
            for f in &failed {
                c.failed(*f);
            }
            assert_eq!(c.ready(), want, "{ranks:?} done {done:?} failed {failed:?}");
        }
        let mut c = Commits::new(3);
        c.record(0, &[10]);
        c.record(2, &[10]);
        assert_eq!(c.missing(10), vec![1]);
        c.new_attempt(3);
        assert_eq!(c.missing(10), vec![0, 1, 2]);
        // An elastic run's next attempt on one rank: its commit alone is
        // every rank's.
        c.new_attempt(1);
        c.record(0, &[20]);
        assert_eq!(c.ready(), Some(20));
        c.new_attempt(2);
        c.record(1, &[30]);
        assert_eq!(c.ready(), None);
    }

    fn folder(name: &str, keep: u32) -> Folder {
        let root = std::env::temp_dir().join(format!("rm-commits-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Folder {
            root,
            run_id: "r".into(),
            world_size: 2,
            identity: Identity::command(&proto::spec::CommandWorkload {
                argv: vec!["python".into(), "train.py".into()],
                cwd: None,
            }),
            keep,
        }
    }

    fn write_step(f: &Folder, step: u64, content: &str) {
        let tmp = f.root.join(ck::tmp_dir_name(step));
        std::fs::create_dir_all(tmp.join("sub")).unwrap();
        std::fs::write(tmp.join("rank-0.pt"), content).unwrap();
        std::fs::write(tmp.join("sub/rank-1.pt"), content.repeat(2)).unwrap();
    }

    #[test]
    fn a_commit_lists_the_files_and_resume_takes_the_newest_that_verifies() {
        let f = folder("commit", 2);
        assert_eq!(f.resume_point(false), (None, vec![]));
        let err = f.commit(10).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        for step in [10, 20, 30] {
            write_step(&f, step, &format!("state {step}"));
            let c = f.commit(step).unwrap();
            assert_eq!(
                (c.files, c.bytes),
                (2, 3 * format!("state {step}").len() as u64)
            );
        }
        // keep = 2: step 10 went when 30 came.
        assert_eq!(ck::committed_steps(&f.root).unwrap(), vec![30, 20]);
        let m = Manifest::verify(
            &std::fs::read(f.root.join("step-0000000030/manifest.json")).unwrap(),
            "step-0000000030",
        )
        .unwrap();
        assert_eq!(
            m.files.keys().collect::<Vec<_>>(),
            vec!["rank-0.pt", "sub/rank-1.pt"]
        );
        assert_eq!(m.identity, f.identity);
        let (r, skipped) = f.resume_point(false);
        let r = r.unwrap();
        // The manifest says which world wrote it.
        assert_eq!((r.step, r.world_size, m.world_size), (30, 2, 2));
        assert!(skipped.is_empty());
        // A changed file: 30 is skipped, saying why; 20 is taken.
        std::fs::write(f.root.join("step-0000000030/rank-0.pt"), "state 3X").unwrap();
        let (r, skipped) = f.resume_point(false);
        assert_eq!(r.unwrap().step, 20);
        assert!(
            skipped[0].contains("rank-0.pt does not match"),
            "{skipped:?}"
        );
        // An unfinished folder is never offered, and goes before an attempt.
        write_step(&f, 40, "state 40");
        assert_eq!(f.resume_point(false).0.unwrap().step, 20);
        assert_eq!(f.clear_unfinished(), vec!["step-0000000040.tmp"]);
        // Another command line's checkpoint is skipped unless allowed.
        let other = Folder {
            identity: Identity::command(&proto::spec::CommandWorkload {
                argv: vec!["python".into(), "other.py".into()],
                cwd: None,
            }),
            ..f.clone()
        };
        let (r, skipped) = other.resume_point(false);
        assert!(r.is_none());
        assert!(
            skipped.iter().all(|s| s.contains("another training")),
            "{skipped:?}"
        );
        assert_eq!(other.resume_point(true).0.unwrap().step, 20);
        let _ = std::fs::remove_dir_all(&f.root);
    }

    #[test]
    fn the_bookkeeper_commits_once_every_rank_has() {
        let f = folder("keeper", 3);
        let root = f.root.clone();
        let mut b = Bookkeeper::new(f);
        write_step(&b.folder, 5, "five");
        b.commits.record(0, &[5]);
        b.start_ready();
        assert!(b.settle().is_empty(), "rank 1 has not committed");
        b.commits.record(1, &[5]);
        b.start_ready();
        let t0 = Instant::now();
        let done = loop {
            if let Some(d) = b.poll() {
                break d;
            }
            assert!(t0.elapsed().as_secs() < 10);
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(done.0, 5);
        assert!(done.1.is_ok());
        assert_eq!(b.commits.newest(), Some(5));
        // A step every rank committed but never wrote fails once, and is
        // not tried again.
        b.commits.record(0, &[6]);
        b.commits.record(1, &[6]);
        let settled = b.settle();
        assert_eq!(settled.len(), 1);
        assert!(settled[0].1.is_err());
        assert!(b.settle().is_empty());
        assert_eq!(b.commits.newest(), Some(5));
        let _ = std::fs::remove_dir_all(&root);
    }
}
