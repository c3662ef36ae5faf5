//! Sharded, atomic checkpoints. Each rank writes its share of every tensor
//! as safetensors files into `<dir>/step-<n>.tmp/`, streaming the data in
//! 8 MiB writes (one huge write is several times slower here) while computing
//! each file's CRC-32C, fsyncs them, and leaves a small sidecar with the
//! checksum; after a barrier, rank 0 gathers the sidecars, writes
//! manifest.json last, fsyncs, renames the folder to `step-<n>` and fsyncs
//! the parent: a checkpoint exists only once its manifest does. Loading takes the newest
//! checkpoint whose manifest and checksums verify; a torn or corrupted one
//! is skipped with a message. Storage sits behind `Store` so an object store
//! can be added later.

mod checkpointer;
pub use checkpointer::{Checkpointer, Saving};

use crate::ring::segment;
use proto::checkpoint::{self as ck, FileEntry, Manifest, Piece, TensorEntry};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
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
    /// The newest checkpoint that verifies belongs to another training.
    #[error("checkpoint {dir} belongs to another training ({}); use a new checkpoint.dir, or set checkpoint.allow_identity_mismatch to start from its weights on purpose", differences.join("; "))]
    OtherTraining {
        dir: String,
        differences: Vec<String>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Streaming unit of checkpoint reads and writes.
const IO_CHUNK: usize = 8 << 20;

/// Where checkpoints are kept. Names are relative, '/'-separated.
pub trait Store: Send + Sync {
    /// Write a file made of `parts` durably (on stable storage when this
    /// returns); returns its CRC-32C and size.
    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<FileEntry, CheckpointError>;
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        self.put_parts(name, &[bytes]).map(|_| ())
    }
    fn get(&self, name: &str) -> Result<Vec<u8>, CheckpointError>;
    /// A file as a stream (loads read shards straight into their tensors).
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, CheckpointError> {
        Ok(Box::new(std::io::Cursor::new(self.get(name)?)))
    }
    /// Atomically make folder `from` visible as `to`.
    fn commit(&self, from: &str, to: &str) -> Result<(), CheckpointError>;
    /// Top-level entries.
    fn list(&self) -> Result<Vec<String>, CheckpointError>;
    fn remove(&self, name: &str) -> Result<(), CheckpointError>;
}

/// A local or shared-filesystem directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
    /// Drill: SIGKILL this process halfway through the first shard file it
    /// writes for this step (RINGMASTER_FAULT_MODE=kill-mid-checkpoint).
    kill_mid_write: Option<u64>,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore {
            root: root.into(),
            kill_mid_write: None,
        }
    }

    pub fn with_kill_mid_write(mut self, step: u64) -> Self {
        self.kill_mid_write = Some(step);
        self
    }
}

fn fsync_dir(p: &Path) -> Result<(), CheckpointError> {
    File::open(p).and_then(|f| f.sync_all()).map_err(io(p))
}

impl Store for DirStore {
    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<FileEntry, CheckpointError> {
        let path = self.root.join(name);
        let parent = path
            .parent()
            .expect("a file name has a parent")
            .to_path_buf();
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        // Written under a private name and renamed into place, so a reader
        // polling for `name` (rank 0 waiting for the shards' sidecars)
        // sees either nothing or the whole file, never a half-written one.
        let mut part_name = path.file_name().expect("a file name").to_os_string();
        part_name.push(".part");
        let staged = parent.join(part_name);
        let mut f = File::create(&staged).map_err(io(&staged))?;
        if let Some(step) = self.kill_mid_write {
            if name.starts_with(&format!("{}.tmp/", ck::dir_name(step)))
                && name.ends_with(".safetensors")
            {
                let all: Vec<u8> = parts.concat();
                f.write_all(&all[..all.len() / 2]).map_err(io(&staged))?;
                f.sync_all().map_err(io(&staged))?;
                eprintln!("[drill] killing this worker halfway through {name}");
                // SAFETY: kill(2) on our own pid; no memory involved.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
        }
        let (mut crc, mut bytes) = (0u32, 0u64);
        for part in parts {
            for chunk in part.chunks(IO_CHUNK) {
                f.write_all(chunk).map_err(io(&staged))?;
                crc = crc32c::crc32c_append(crc, chunk);
                bytes += chunk.len() as u64;
            }
        }
        f.sync_all().map_err(io(&staged))?;
        drop(f);
        fs::rename(&staged, &path).map_err(io(&path))?;
        fsync_dir(&parent)?;
        Ok(FileEntry {
            crc32c: format!("{crc:08x}"),
            bytes,
        })
    }
    fn get(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let path = self.root.join(name);
        let mut f = File::open(&path).map_err(io(&path))?;
        let len = f.metadata().map_err(io(&path))?.len() as usize;
        let mut out = vec![0u8; len];
        let mut at = 0;
        while at < len {
            let end = (at + IO_CHUNK).min(len);
            let n = f.read(&mut out[at..end]).map_err(io(&path))?;
            if n == 0 {
                out.truncate(at);
                break;
            }
            at += n;
        }
        Ok(out)
    }
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, CheckpointError> {
        let path = self.root.join(name);
        Ok(Box::new(File::open(&path).map_err(io(&path))?))
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

/// One tensor's piece from one rank lives in a safetensors file of its own.
fn shard_name(rank: usize, tensor: &str) -> String {
    format!("shard-{rank:05}-{tensor}.safetensors")
}

/// A tensor described to safetensors without its data: serializing it
/// yields exactly the file's header, and the data is streamed after it (no
/// copy of the whole tensor in memory).
struct HeaderOnly {
    shape: Vec<usize>,
    bytes: usize,
}

impl safetensors::View for &HeaderOnly {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&[])
    }
    fn data_len(&self) -> usize {
        self.bytes
    }
}

/// Which attempt of which run wrote a shard, and what training it is. A save of step S by attempt 2
/// may find the `.tmp` folder of step S left by attempt 1, which died
/// mid-save; its sidecars name attempt 1, so rank 0 neither counts those
/// shards as written nor commits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveTag {
    pub run_id: String,
    pub attempt: u64,
    /// Recorded in the manifest (`commit`).
    pub identity: ck::Identity,
}

impl SaveTag {
    fn stamp(&self) -> String {
        format!("{}#{}", self.run_id, self.attempt)
    }
}

/// What a rank leaves beside each shard file for rank 0.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Sidecar {
    attempt: String,
    #[serde(flatten)]
    entry: FileEntry,
}

/// Read a shard's sidecar if it exists and was written by attempt `tag`.
fn read_sidecar(
    store: &dyn Store,
    dir: &str,
    file: &str,
    stamp: &str,
) -> Result<Option<FileEntry>, CheckpointError> {
    let Ok(bytes) = store.get(&format!("{dir}/{file}.crc32c")) else {
        return Ok(None);
    };
    let side: Sidecar = serde_json::from_slice(&bytes)
        .map_err(|e| CheckpointError::Invalid(dir.to_string(), format!("{file}.crc32c: {e}")))?;
    Ok((side.attempt == stamp).then_some(side.entry))
}

/// Step 1 of a save, on every rank: write this rank's share (segment `rank`
/// of `world`) of every tensor, one safetensors file per tensor, each with a
/// `.crc32c` sidecar that rank 0 puts in the manifest.
pub fn write_shard(
    store: &dyn Store,
    tag: &SaveTag,
    step: u64,
    rank: usize,
    world: usize,
    tensors: &[(&str, &[f32])],
) -> Result<(), CheckpointError> {
    let segs: Vec<(&str, &[f32])> = tensors
        .iter()
        .map(|(name, data)| (*name, &data[segment(data.len(), world, rank)]))
        .collect();
    write_segments(store, tag, step, rank, &segs)
}

/// `write_shard` for a caller that already holds only its segment of each
/// tensor (an asynchronous save copies just that much).
pub fn write_segments(
    store: &dyn Store,
    tag: &SaveTag,
    step: u64,
    rank: usize,
    segments: &[(&str, &[f32])],
) -> Result<(), CheckpointError> {
    let dir = format!("{}.tmp", ck::dir_name(step));
    for (name, seg) in segments {
        let bytes: &[u8] = bytemuck::cast_slice(seg);
        let head = HeaderOnly {
            shape: vec![seg.len()],
            bytes: bytes.len(),
        };
        let header = safetensors::serialize([(name.to_string(), &head)], None)
            .map_err(|e| CheckpointError::Invalid(name.to_string(), e.to_string()))?;
        let file = shard_name(rank, name);
        let entry = store.put_parts(&format!("{dir}/{file}"), &[&header, bytes])?;
        let side = Sidecar {
            attempt: tag.stamp(),
            entry,
        };
        store.put(
            &format!("{dir}/{file}.crc32c"),
            &serde_json::to_vec(&side).expect("sidecar serialises"),
        )?;
    }
    Ok(())
}

/// Step 2, on rank 0 after a barrier: gather the shards' checksums, write
/// the manifest last, commit, and keep only the newest `keep` checkpoints.
pub fn commit(
    store: &dyn Store,
    tag: &SaveTag,
    step: u64,
    world: usize,
    tensors: &[(&str, usize)],
    scalars: BTreeMap<String, u64>,
    keep: usize,
) -> Result<(), CheckpointError> {
    let tmp = format!("{}.tmp", ck::dir_name(step));
    let stamp = tag.stamp();
    let mut files = BTreeMap::new();
    for r in 0..world {
        for (tensor, _) in tensors {
            let name = shard_name(r, tensor);
            let entry = read_sidecar(store, &tmp, &name, &stamp)?.ok_or_else(|| {
                CheckpointError::Invalid(
                    tmp.clone(),
                    format!("rank {r} has not written {name} in this attempt ({stamp})"),
                )
            })?;
            files.insert(name, entry);
        }
    }
    let tensors = tensors
        .iter()
        .map(|(name, len)| {
            let pieces = (0..world)
                .map(|r| {
                    let s = segment(*len, world, r);
                    Piece {
                        file: shard_name(r, name),
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
    let mut manifest = Manifest {
        format_version: ck::FORMAT_VERSION,
        run_id: tag.run_id.clone(),
        step,
        world_size: world as u32,
        identity: tag.identity.clone(),
        tensors,
        files,
        scalars,
        checksum: String::new(),
    };
    store.put(&format!("{tmp}/{}", ck::MANIFEST), &manifest.seal())?;
    let final_name = ck::dir_name(step);
    if store.list()?.contains(&final_name) {
        store.remove(&final_name)?;
    }
    store.commit(&tmp, &final_name)?;
    let names = store.list()?;
    let mut steps: Vec<u64> = names.iter().filter_map(|n| ck::parse_dir_name(n)).collect();
    steps.sort_unstable();
    for old in steps.iter().rev().skip(keep.max(1)) {
        store.remove(&ck::dir_name(*old))?;
    }
    // Saves of earlier steps that never committed (an attempt died in them)
    // are abandoned for good: every rank has finished writing this step, so
    // none is still writing an older one.
    for name in &names {
        if let Some(old) = name.strip_suffix(".tmp").and_then(ck::parse_dir_name) {
            if old < step {
                store.remove(name)?;
            }
        }
    }
    Ok(())
}

/// For asynchronous saves, on rank 0: wait until every rank's shards of
/// `step` are written (their sidecars exist), bounded by `timeout`.
pub fn wait_for_shards(
    store: &dyn Store,
    tag: &SaveTag,
    step: u64,
    world: usize,
    tensors: &[&str],
    timeout: std::time::Duration,
) -> Result<(), CheckpointError> {
    let tmp = format!("{}.tmp", ck::dir_name(step));
    let (t0, stamp) = (std::time::Instant::now(), tag.stamp());
    for r in 0..world {
        for tensor in tensors {
            let file = shard_name(r, tensor);
            while read_sidecar(store, &tmp, &file, &stamp)?.is_none() {
                if t0.elapsed() > timeout {
                    return Err(CheckpointError::Invalid(
                        tmp,
                        format!("rank {r} did not write its shards within {timeout:?}"),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
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

/// The manifest of `dir`, verified on its own (checksum, step agreement).
fn read_manifest(store: &dyn Store, dir: &str) -> Result<Manifest, CheckpointError> {
    let bytes = store
        .get(&format!("{dir}/{}", ck::MANIFEST))
        .map_err(|e| CheckpointError::Invalid(dir.to_string(), format!("manifest: {e}")))?;
    Manifest::verify(&bytes, dir).map_err(|e| CheckpointError::Invalid(dir.to_string(), e))
}

/// Fill `out` from `r`, feeding every byte to the running CRC.
fn read_exact_crc(r: &mut dyn Read, out: &mut [u8], crc: &mut u32) -> std::io::Result<()> {
    for chunk in out.chunks_mut(IO_CHUNK) {
        r.read_exact(chunk)?;
        *crc = crc32c::crc32c_append(*crc, chunk);
    }
    Ok(())
}

/// Read every shard of checkpoint `dir` straight into `dest` (tensor name
/// -> its full-length buffer), verifying each file's size and CRC-32C as it
/// streams: one pass over the data, no intermediate copies. On an error
/// `dest` may hold part of this checkpoint; the caller loads another or
/// starts fresh.
fn load_into(
    store: &dyn Store,
    dir: &str,
    m: &Manifest,
    dest: &mut BTreeMap<String, &mut [f32]>,
) -> Result<(), CheckpointError> {
    let bad = |m: String| CheckpointError::Invalid(dir.to_string(), m);
    // Which (tensor, offset, len) each file holds; every tensor covered
    // exactly once.
    let mut by_file: BTreeMap<&str, Vec<(&str, usize, usize)>> = BTreeMap::new();
    for (name, t) in &m.tensors {
        let total: usize = t.shape.iter().product();
        let have = dest.get(name.as_str()).map(|d| d.len());
        if have != Some(total) || t.dtype != "F32" {
            return Err(bad(format!(
                "tensor {name} ({} {:?}) does not match this model ({})",
                t.dtype,
                t.shape,
                have.map(|n| format!("{n} values"))
                    .unwrap_or_else(|| "no such tensor".into())
            )));
        }
        let mut pieces: Vec<_> = t.pieces.iter().map(|p| (p.offset, p.len)).collect();
        pieces.sort_unstable();
        let mut next = 0;
        for (off, len) in pieces {
            if off != next {
                return Err(bad(format!("the pieces of {name} do not cover it exactly")));
            }
            next += len;
        }
        if next != total {
            return Err(bad(format!("the pieces of {name} do not cover it exactly")));
        }
        for p in &t.pieces {
            by_file
                .entry(p.file.as_str())
                .or_default()
                .push((name.as_str(), p.offset, p.len));
        }
    }
    if let Some(extra) = dest.keys().find(|k| !m.tensors.contains_key(k.as_str())) {
        return Err(bad(format!("has no tensor {extra}")));
    }
    for (file, pieces) in by_file {
        let entry = m
            .files
            .get(file)
            .ok_or_else(|| bad(format!("{file} is not in the manifest's files")))?;
        let path = format!("{dir}/{file}");
        let ioerr = |e: std::io::Error| bad(format!("{file}: {e}"));
        let mut r = store.open(&path)?;
        let mut crc = 0u32;
        let mut len8 = [0u8; 8];
        read_exact_crc(&mut r, &mut len8, &mut crc).map_err(ioerr)?;
        let n = u64::from_le_bytes(len8);
        if n > entry.bytes {
            return Err(bad(format!("{file} has a header longer than the file")));
        }
        let mut header = vec![0u8; n as usize];
        read_exact_crc(&mut r, &mut header, &mut crc).map_err(ioerr)?;
        let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("{file}: safetensors header: {e}")))?;
        // Data in file order; bytes between tensors are read and checked.
        let mut infos: Vec<_> = pieces
            .iter()
            .map(|(name, off, len)| {
                let info = meta
                    .info(name)
                    .ok_or_else(|| bad(format!("{file} has no tensor {name}")))?;
                if info.dtype != safetensors::Dtype::F32
                    || info.shape != [*len]
                    || info.data_offsets.1 - info.data_offsets.0 != len * 4
                {
                    return Err(bad(format!("{name} in {file} has the wrong type or shape")));
                }
                Ok((info.data_offsets.0, *name, *off, *len))
            })
            .collect::<Result<_, _>>()?;
        infos.sort_unstable();
        let mut at = 0usize;
        for (start, name, off, len) in infos {
            if start < at {
                return Err(bad(format!("{file}: tensors overlap")));
            }
            let mut gap = vec![0u8; start - at];
            read_exact_crc(&mut r, &mut gap, &mut crc).map_err(ioerr)?;
            let dst = &mut dest.get_mut(name).expect("checked above")[off..off + len];
            read_exact_crc(&mut r, bytemuck::cast_slice_mut(dst), &mut crc).map_err(ioerr)?;
            if cfg!(target_endian = "big") {
                for x in dst.iter_mut() {
                    *x = f32::from_bits(u32::from_le(x.to_bits()));
                }
            }
            at = start + len * 4;
        }
        // Whatever follows the last tensor counts too, up to the size the
        // manifest recorded, and nothing may follow that.
        let read = 8 + n + at as u64;
        if read > entry.bytes {
            return Err(bad(format!("{file} does not match its checksum")));
        }
        let mut rest = vec![0u8; (entry.bytes - read) as usize];
        read_exact_crc(&mut r, &mut rest, &mut crc).map_err(ioerr)?;
        let mut probe = [0u8; 1];
        let trailing = r.read(&mut probe).map_err(ioerr)?;
        if trailing != 0 || format!("{crc:08x}") != entry.crc32c {
            return Err(bad(format!("{file} does not match its checksum")));
        }
    }
    Ok(())
}

/// A checkpoint a load passed over, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    /// Its folder, e.g. `step-0000000030`.
    pub dir: String,
    pub why: String,
    /// Its manifest did not verify (the launcher, which verifies every
    /// manifest before it starts anything, has said so already); else a
    /// shard did not (only the loading rank can see that).
    pub manifest: bool,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "skipping checkpoint {}: {}", self.dir, self.why)
    }
}

/// Why a checkpoint failed, without the folder name its error repeats.
fn why(e: CheckpointError) -> String {
    match e {
        CheckpointError::Invalid(_, m) => m,
        e => e.to_string(),
    }
}

/// What a loader expects of a checkpoint's training identity.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub identity: &'a ck::Identity,
    /// Load a checkpoint of another training anyway (on purpose).
    pub allow_mismatch: bool,
}

/// The steps of the committed checkpoints, newest first.
fn committed_steps(store: &dyn Store) -> Result<Vec<u64>, CheckpointError> {
    Ok(ck::newest_first(store.list()?))
}

/// What a load into the caller's buffers found: the step and the scalars.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedInto {
    pub step: u64,
    pub scalars: BTreeMap<String, u64>,
    /// How the checkpoint's training differs from the expected one, when
    /// it was loaded on purpose anyway (empty: it is the same training).
    pub other_training: Vec<String>,
}

/// Load the newest checkpoint that verifies straight into `dest` (tensor
/// name -> a buffer of the tensor's full length). Messages name each one
/// skipped. When none verifies, `dest` may hold parts of a broken one: the
/// caller must initialise it afresh. A verified checkpoint of another
/// training is an error (`OtherTraining`), never skipped past, unless the
/// caller allows it; then the returned messages say so.
pub fn load_latest_into(
    store: &dyn Store,
    dest: &mut [(&str, &mut [f32])],
    expect: Expect<'_>,
) -> Result<(Option<LoadedInto>, Vec<Skip>), CheckpointError> {
    let mut map: BTreeMap<String, &mut [f32]> = dest
        .iter_mut()
        .map(|(n, d)| (n.to_string(), &mut **d))
        .collect();
    let mut skipped = Vec::new();
    for s in committed_steps(store)? {
        let dir = ck::dir_name(s);
        let m = match read_manifest(store, &dir) {
            Ok(m) => m,
            Err(e) => {
                skipped.push(Skip {
                    dir,
                    why: why(e),
                    manifest: true,
                });
                continue;
            }
        };
        let differences = expect.identity.differences(&m.identity);
        if !differences.is_empty() && !expect.allow_mismatch {
            return Err(CheckpointError::OtherTraining { dir, differences });
        }
        match load_into(store, &dir, &m, &mut map) {
            Ok(()) => {
                let l = LoadedInto {
                    step: m.step,
                    scalars: m.scalars,
                    other_training: differences,
                };
                return Ok((Some(l), skipped));
            }
            Err(e) => skipped.push(Skip {
                dir,
                why: why(e),
                manifest: false,
            }),
        }
    }
    Ok((None, skipped))
}

fn load_one(store: &dyn Store, dir: &str) -> Result<Loaded, CheckpointError> {
    let m = read_manifest(store, dir)?;
    let mut bufs: BTreeMap<String, Vec<f32>> = m
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), vec![0f32; t.shape.iter().product()]))
        .collect();
    let mut dest: BTreeMap<String, &mut [f32]> = bufs
        .iter_mut()
        .map(|(n, v)| (n.clone(), v.as_mut_slice()))
        .collect();
    load_into(store, dir, &m, &mut dest)?;
    Ok(Loaded {
        step: m.step,
        tensors: bufs,
        scalars: m.scalars,
    })
}

/// The newest checkpoint that verifies, in buffers of its own; messages
/// name each one skipped.
pub fn load_latest(store: &dyn Store) -> Result<(Option<Loaded>, Vec<String>), CheckpointError> {
    let mut skipped = Vec::new();
    for s in committed_steps(store)? {
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

    fn identity(seed: u64) -> ck::Identity {
        ck::Identity::train(&proto::spec::TrainWorkload {
            seed,
            ..Default::default()
        })
    }

    fn tag(attempt: u64) -> SaveTag {
        SaveTag {
            run_id: "run".into(),
            attempt,
            identity: identity(0),
        }
    }

    fn save(store: &DirStore, step: u64, world: usize, a: &[f32], b: &[f32], keep: usize) {
        for r in 0..world {
            write_shard(store, &tag(0), step, r, world, &[("a", a), ("b", b)]).unwrap();
        }
        commit(
            store,
            &tag(0),
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
        let shard = root.join("step-0000000040").join(shard_name(1, "a"));
        let mut bytes = fs::read(&shard).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&shard, bytes).unwrap();
        // And a torn one (no manifest) that is newer still.
        write_shard(&store, &tag(0), 50, 0, 3, &[("a", &a), ("b", &b)]).unwrap();
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
    fn shards_left_by_a_dead_attempt_are_not_committed() {
        let root = tmp("stale");
        let store = DirStore::new(&root);
        let (a, b) = (vec![1.0f32; 10], vec![2.0f32; 10]);
        // Attempt 0 wrote every shard of step 30, then died before commit.
        for r in 0..2 {
            write_shard(&store, &tag(0), 30, r, 2, &[("a", &a), ("b", &b)]).unwrap();
        }
        // Attempt 1: only rank 0 has written step 30 so far.
        write_shard(&store, &tag(1), 30, 0, 2, &[("a", &a), ("b", &b)]).unwrap();
        let short = std::time::Duration::from_millis(50);
        let err = wait_for_shards(&store, &tag(1), 30, 2, &["a", "b"], short).unwrap_err();
        assert!(err.to_string().contains("rank 1 did not write"), "{err}");
        let tensors = [("a", 10), ("b", 10)];
        let err = commit(&store, &tag(1), 30, 2, &tensors, BTreeMap::new(), 2).unwrap_err();
        assert!(err.to_string().contains("rank 1 has not written"), "{err}");
        write_shard(&store, &tag(1), 30, 1, 2, &[("a", &a), ("b", &b)]).unwrap();
        wait_for_shards(&store, &tag(1), 30, 2, &["a", "b"], short).unwrap();
        // An older abandoned save goes once a newer step commits.
        write_shard(&store, &tag(0), 20, 0, 2, &[("a", &a)]).unwrap();
        commit(&store, &tag(1), 30, 2, &tensors, BTreeMap::new(), 2).unwrap();
        assert_eq!(store.list().unwrap(), vec!["step-0000000030"]);
        assert_eq!(load_latest(&store).unwrap().0.unwrap().step, 30);
        fs::remove_dir_all(&root).unwrap();
    }

    /// Load the newest checkpoint of `store` into buffers for `a` and `b`.
    fn load_expecting(
        store: &DirStore,
        seed: u64,
        allow: bool,
        len: (usize, usize),
    ) -> Result<(Option<LoadedInto>, Vec<Skip>), CheckpointError> {
        let (mut a, mut b) = (vec![0f32; len.0], vec![0f32; len.1]);
        let id = identity(seed);
        load_latest_into(
            store,
            &mut [("a", &mut a), ("b", &mut b)],
            Expect {
                identity: &id,
                allow_mismatch: allow,
            },
        )
    }

    #[test]
    fn an_edited_manifest_is_skipped_and_another_training_is_refused() {
        let root = tmp("ident");
        let store = DirStore::new(&root);
        let (a, b) = (vec![1.5f32; 10], vec![2.5f32; 3]);
        save(&store, 20, 2, &a, &b, 3);
        save(&store, 30, 2, &a, &b, 3);
        // Step 30's manifest edited to say 31: skipped, 20 loads.
        let path = root.join("step-0000000030").join(ck::MANIFEST);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replacen("\"step\": 30", "\"step\": 31", 1)).unwrap();
        let (l, skipped) = load_expecting(&store, 0, false, (10, 3)).unwrap();
        assert_eq!(l.unwrap().step, 20);
        assert!(
            skipped[0].to_string().contains("own checksum"),
            "{skipped:?}"
        );
        assert!(skipped[0].manifest);
        // A job of another seed: refused, naming the field and both values.
        let err = load_expecting(&store, 9, false, (10, 3)).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, CheckpointError::OtherTraining { .. }),
            "{msg}"
        );
        assert!(msg.contains("seed: job 9, checkpoint 0"), "{msg}");
        assert!(msg.contains("allow_identity_mismatch"), "{msg}");
        // Allowed on purpose: loads, and says how it differs.
        let (l, skipped) = load_expecting(&store, 9, true, (10, 3)).unwrap();
        let l = l.unwrap();
        assert_eq!(l.step, 20);
        assert_eq!(l.other_training, vec!["seed: job 9, checkpoint 0"]);
        assert_eq!(skipped.len(), 1, "only the edited manifest: {skipped:?}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_empty_or_missing_dir_has_no_checkpoint() {
        let store = DirStore::new(tmp("none"));
        assert_eq!(load_latest(&store).unwrap(), (None, vec![]));
    }
}
