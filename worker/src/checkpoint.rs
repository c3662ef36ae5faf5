//! Sharded, atomic checkpoints. Each rank writes its share of every tensor
//! as one safetensors file into `<dir>/step-<n>.tmp/`, fsynced; after a
//! barrier, rank 0 hashes every shard (sha256), writes manifest.json last,
//! fsyncs, renames the folder to `step-<n>` and fsyncs the parent: a
//! checkpoint exists only once its manifest does. Loading takes the newest
//! checkpoint whose manifest and checksums verify; a torn or corrupted one
//! is skipped with a message. Storage sits behind `Store` so an object store
//! can be added later.

use crate::ring::segment;
use proto::checkpoint::{self as ck, FileEntry, Manifest, Piece, TensorEntry};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint i/o at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("checkpoint {0}: {1}")]
    Invalid(String, String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where checkpoints are kept. Names are relative, '/'-separated.
pub trait Store: Send + Sync {
    /// Write a file durably (data on stable storage when this returns).
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError>;
    fn get(&self, name: &str) -> Result<Vec<u8>, CheckpointError>;
    /// Atomically make folder `from` visible as `to`.
    fn commit(&self, from: &str, to: &str) -> Result<(), CheckpointError>;
    /// Top-level entries.
    fn list(&self) -> Result<Vec<String>, CheckpointError>;
    fn remove(&self, name: &str) -> Result<(), CheckpointError>;
}

/// A local or shared-filesystem directory.
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }
}

fn fsync_dir(p: &Path) -> Result<(), CheckpointError> {
    File::open(p).and_then(|f| f.sync_all()).map_err(io(p))
}

impl Store for DirStore {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let path = self.root.join(name);
        let parent = path
            .parent()
            .expect("a file name has a parent")
            .to_path_buf();
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        let mut f = File::create(&path).map_err(io(&path))?;
        f.write_all(bytes).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        fsync_dir(&parent)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let path = self.root.join(name);
        fs::read(&path).map_err(io(&path))
    }
    fn commit(&self, from: &str, to: &str) -> Result<(), CheckpointError> {
        let (a, b) = (self.root.join(from), self.root.join(to));
        fs::rename(&a, &b).map_err(io(&b))?;
        fsync_dir(&self.root)
    }
    fn list(&self) -> Result<Vec<String>, CheckpointError> {
        match fs::read_dir(&self.root) {
            Ok(rd) => Ok(rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(io(&self.root)(e)),
        }
    }
    fn remove(&self, name: &str) -> Result<(), CheckpointError> {
        let p = self.root.join(name);
        fs::remove_dir_all(&p).map_err(io(&p))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn shard_name(rank: usize) -> String {
    format!("shard-{rank:05}.safetensors")
}

/// Step 1 of a save, on every rank: write this rank's share (segment `rank`
/// of `world`) of every tensor.
pub fn write_shard(
    store: &dyn Store,
    step: u64,
    rank: usize,
    world: usize,
    tensors: &[(&str, &[f32])],
) -> Result<(), CheckpointError> {
    let mut views = Vec::new();
    for (name, data) in tensors {
        let seg = segment(data.len(), world, rank);
        let bytes: &[u8] = bytemuck::cast_slice(&data[seg.clone()]);
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![seg.len()], bytes)
                .map_err(|e| CheckpointError::Invalid(name.to_string(), e.to_string()))?;
        views.push((name.to_string(), view));
    }
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| CheckpointError::Invalid("serialize".into(), e.to_string()))?;
    store.put(
        &format!("{}.tmp/{}", ck::dir_name(step), shard_name(rank)),
        &bytes,
    )
}

/// Step 2, on rank 0 after a barrier: hash the shards, write the manifest
/// last, commit, and keep only the newest `keep` checkpoints.
pub fn commit(
    store: &dyn Store,
    run_id: &str,
    step: u64,
    world: usize,
    tensors: &[(&str, usize)],
    scalars: BTreeMap<String, u64>,
    keep: usize,
) -> Result<(), CheckpointError> {
    let tmp = format!("{}.tmp", ck::dir_name(step));
    let mut files = BTreeMap::new();
    for r in 0..world {
        let name = shard_name(r);
        let bytes = store.get(&format!("{tmp}/{name}"))?;
        files.insert(
            name,
            FileEntry {
                sha256: sha256_hex(&bytes),
                bytes: bytes.len() as u64,
            },
        );
    }
    let tensors = tensors
        .iter()
        .map(|(name, len)| {
            let pieces = (0..world)
                .map(|r| {
                    let s = segment(*len, world, r);
                    Piece {
                        file: shard_name(r),
                        offset: s.start,
                        len: s.len(),
                    }
                })
                .collect();
            (
                name.to_string(),
                TensorEntry {
                    dtype: "F32".into(),
                    shape: vec![*len],
                    pieces,
                },
            )
        })
        .collect();
    let manifest = Manifest {
        format_version: ck::FORMAT_VERSION,
        run_id: run_id.into(),
        step,
        world_size: world as u32,
        tensors,
        files,
        scalars,
    };
    store.put(
        &format!("{tmp}/{}", ck::MANIFEST),
        &serde_json::to_vec_pretty(&manifest).expect("manifest serialises"),
    )?;
    let final_name = ck::dir_name(step);
    if store.list()?.contains(&final_name) {
        store.remove(&final_name)?;
    }
    store.commit(&tmp, &final_name)?;
    let mut steps: Vec<u64> = store
        .list()?
        .iter()
        .filter_map(|n| ck::parse_dir_name(n))
        .collect();
    steps.sort_unstable();
    for old in steps.iter().rev().skip(keep.max(1)) {
        store.remove(&ck::dir_name(*old))?;
    }
    Ok(())
}

/// A verified checkpoint, tensors reassembled.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub step: u64,
    pub tensors: BTreeMap<String, Vec<f32>>,
    pub scalars: BTreeMap<String, u64>,
}

fn load_one(store: &dyn Store, dir: &str) -> Result<Loaded, CheckpointError> {
    let bad = |m: String| CheckpointError::Invalid(dir.to_string(), m);
    let m: Manifest = serde_json::from_slice(&store.get(&format!("{dir}/{}", ck::MANIFEST))?)
        .map_err(|e| bad(format!("manifest: {e}")))?;
    if m.format_version != ck::FORMAT_VERSION {
        return Err(bad(format!(
            "format version {} is not {}",
            m.format_version,
            ck::FORMAT_VERSION
        )));
    }
    let mut shards = BTreeMap::new();
    for (name, entry) in &m.files {
        let bytes = store.get(&format!("{dir}/{name}"))?;
        if bytes.len() as u64 != entry.bytes || sha256_hex(&bytes) != entry.sha256 {
            return Err(bad(format!("{name} does not match its checksum")));
        }
        shards.insert(name.clone(), bytes);
    }
    let mut tensors = BTreeMap::new();
    for (name, t) in &m.tensors {
        let total: usize = t.shape.iter().product();
        let mut out = vec![0f32; total];
        for p in &t.pieces {
            let file = shards
                .get(&p.file)
                .ok_or_else(|| bad(format!("{} is not in the manifest's files", p.file)))?;
            let st = safetensors::SafeTensors::deserialize(file)
                .map_err(|e| bad(format!("{}: {e}", p.file)))?;
            let view = st
                .tensor(name)
                .map_err(|e| bad(format!("{}: {e}", p.file)))?;
            if view.dtype() != safetensors::Dtype::F32
                || view.shape() != [p.len]
                || p.offset + p.len > total
            {
                return Err(bad(format!(
                    "{name} in {} has the wrong type or shape",
                    p.file
                )));
            }
            for (o, chunk) in out[p.offset..p.offset + p.len]
                .iter_mut()
                .zip(view.data().chunks_exact(4))
            {
                *o = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
            }
        }
        tensors.insert(name.clone(), out);
    }
    Ok(Loaded {
        step: m.step,
        tensors,
        scalars: m.scalars,
    })
}

/// The newest checkpoint that verifies; messages name each one skipped.
pub fn load_latest(store: &dyn Store) -> Result<(Option<Loaded>, Vec<String>), CheckpointError> {
    let mut steps: Vec<u64> = store
        .list()?
        .iter()
        .filter_map(|n| ck::parse_dir_name(n))
        .collect();
    steps.sort_unstable_by(|a, b| b.cmp(a));
    let mut skipped = Vec::new();
    for s in steps {
        match load_one(store, &ck::dir_name(s)) {
            Ok(l) => return Ok((Some(l), skipped)),
            Err(e) => skipped.push(format!("skipping checkpoint {}: {e}", ck::dir_name(s))),
        }
    }
    Ok((None, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rm-ckpt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn save(store: &DirStore, step: u64, world: usize, a: &[f32], b: &[f32], keep: usize) {
        for r in 0..world {
            write_shard(store, step, r, world, &[("a", a), ("b", b)]).unwrap();
        }
        commit(
            store,
            "run",
            step,
            world,
            &[("a", a.len()), ("b", b.len())],
            BTreeMap::from([("step".to_string(), step)]),
            keep,
        )
        .unwrap();
    }

    #[test]
    fn round_trip_keep_and_skip_corrupt() {
        let root = tmp("rt");
        let store = DirStore::new(&root);
        let a: Vec<f32> = (0..103).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..7).map(|i| -(i as f32)).collect();
        for step in [10, 20, 30, 40] {
            save(&store, step, 3, &a, &b, 2);
        }
        let mut names = store.list().unwrap();
        names.sort();
        assert_eq!(names, vec!["step-0000000030", "step-0000000040"]);
        let (l, skipped) = load_latest(&store).unwrap();
        let l = l.unwrap();
        assert!(skipped.is_empty());
        assert_eq!((l.step, &l.tensors["a"], &l.tensors["b"]), (40, &a, &b));
        // Corrupt the newest: one flipped byte in a shard.
        let shard = root.join("step-0000000040").join(shard_name(1));
        let mut bytes = fs::read(&shard).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&shard, bytes).unwrap();
        // And a torn one (no manifest) that is newer still.
        write_shard(&store, 50, 0, 3, &[("a", &a), ("b", &b)]).unwrap();
        fs::rename(
            root.join("step-0000000050.tmp"),
            root.join("step-0000000050"),
        )
        .unwrap();
        let (l, skipped) = load_latest(&store).unwrap();
        assert_eq!(l.unwrap().step, 30);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].contains("step-0000000050") && skipped[0].contains("manifest"),
            "{skipped:?}"
        );
        assert!(
            skipped[1].contains("does not match its checksum"),
            "{skipped:?}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_empty_or_missing_dir_has_no_checkpoint() {
        let store = DirStore::new(tmp("none"));
        assert_eq!(load_latest(&store).unwrap(), (None, vec![]));
    }
}
