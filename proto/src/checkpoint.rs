//! The checkpoint manifest: written last, it is the commit marker of a
//! checkpoint directory. Shared so the launcher can read what workers wrote.
//!
//! A manifest is trusted only once it verifies on its own: it carries a
//! SHA-256 of its own content (`checksum`), its step must agree with its
//! folder's name and with the state's `step` scalar, and it names the
//! training it belongs to (`identity`: the spec fields that give the state
//! its meaning), so a checkpoint of another job in the same folder is
//! refused rather than resumed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// 3: the manifest's own checksum and the training identity.
pub const FORMAT_VERSION: u32 = 3;
pub const MANIFEST: &str = "manifest.json";

/// Where one tensor's elements live: consecutive pieces in shard files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// In order; each piece is the tensor of the same name in that file,
    /// holding elements offset..offset+len.
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    pub file: String,
    pub offset: usize,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// CRC-32C (Castagnoli) of the whole file, 8 hex digits.
    pub crc32c: String,
    pub bytes: u64,
}

/// What a checkpoint's state means: the fields in clear and their hash.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Field name -> value, e.g. "workload" -> "train", "seed" -> "42".
    pub fields: BTreeMap<String, String>,
    /// SHA-256 of the fields (`name=value` lines in name order), 16 hex
    /// digits: the short form messages quote.
    pub hash: String,
}

impl Identity {
    pub fn new(fields: BTreeMap<String, String>) -> Identity {
        let mut h = Sha256::new();
        for (k, v) in &fields {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        let hash = hex(&h.finalize()[..8]);
        Identity { fields, hash }
    }

    /// The identity of a `train` workload: the model's shape, the data
    /// recipe (seed, batch per rank, the global batch where set) and the
    /// optimizer. Not the step count
    /// (a run may be extended) nor the world size (a resume on another
    /// world size is a deliberate, elastic choice; the manifest records it).
    pub fn train(t: &crate::spec::TrainWorkload) -> Identity {
        let f = |k: &str, v: String| (k.to_string(), v);
        // A global batch is part of the data recipe; unset, the fields
        // (and the hash) are what they were before it existed.
        let global = t.global_batch.map(|g| f("global_batch", g.to_string()));
        Identity::new(BTreeMap::from_iter(global.into_iter().chain([
            f("workload", "train".into()),
            f("input_dim", t.input_dim.to_string()),
            f("hidden", t.hidden.to_string()),
            f("layers", t.layers.to_string()),
            f("output_dim", t.output_dim.to_string()),
            f("batch_per_rank", t.batch_per_rank.to_string()),
            f("seed", t.seed.to_string()),
            f("lr", t.lr.to_string()),
            f("momentum", t.momentum.to_string()),
        ])))
    }

    /// The identity of a `command` workload: its command line. What the
    /// program's state means is the program's business; another command
    /// line is taken for another training unless the job allows it
    /// (`checkpoint.allow_identity_mismatch`).
    pub fn command(c: &crate::spec::CommandWorkload) -> Identity {
        Identity::new(BTreeMap::from([
            ("workload".to_string(), "command".to_string()),
            (
                "argv".to_string(),
                serde_json::to_string(&c.argv).expect("strings serialise"),
            ),
        ]))
    }

    /// The identity of a workload that checkpoints (None: it does not).
    pub fn of(w: &crate::spec::Workload) -> Option<Identity> {
        match w {
            crate::spec::Workload::Train(t) => Some(Identity::train(t)),
            crate::spec::Workload::Command(c) => Some(Identity::command(c)),
            _ => None,
        }
    }

    /// How `self` (the job's) differs from `other` (a checkpoint's): one
    /// `field: job X, checkpoint Y` item per differing field.
    pub fn differences(&self, other: &Identity) -> Vec<String> {
        let keys: std::collections::BTreeSet<&String> =
            self.fields.keys().chain(other.fields.keys()).collect();
        keys.into_iter()
            .filter_map(|k| {
                let (a, b) = (self.fields.get(k), other.fields.get(k));
                (a != b).then(|| {
                    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(none)".into());
                    format!("{k}: job {}, checkpoint {}", show(a), show(b))
                })
            })
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub run_id: String,
    /// Steps completed: training resumes at this step.
    pub step: u64,
    pub world_size: u32,
    /// The training this state belongs to.
    pub identity: Identity,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub files: BTreeMap<String, FileEntry>,
    /// Small scalars (RNG/data cursor state as numbers).
    pub scalars: BTreeMap<String, u64>,
    /// "sha256:<hex>" of this manifest's compact JSON with this field set
    /// to "" (set by `seal`, checked by `verify`).
    pub checksum: String,
}

impl Manifest {
    fn digest(&self) -> String {
        let mut copy = self.clone();
        copy.checksum = String::new();
        let bytes = serde_json::to_vec(&copy).expect("manifest serialises");
        format!("sha256:{}", hex(&Sha256::digest(&bytes)))
    }

    /// Set the checksum over everything else; the bytes to write.
    pub fn seal(&mut self) -> Vec<u8> {
        self.checksum = self.digest();
        serde_json::to_vec_pretty(self).expect("manifest serialises")
    }

    /// Parse and check a manifest read from folder `dir` (its name, e.g.
    /// `step-0000000030`): format version, its own checksum, and that the
    /// folder, the manifest and the state's `step` scalar name one step.
    /// The error says which check failed.
    pub fn verify(bytes: &[u8], dir: &str) -> Result<Manifest, String> {
        // The version first, so an older format says so rather than
        // failing on a field it lacks.
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest: {e}"))?;
        let version = v.get("format_version").and_then(|v| v.as_u64());
        if version != Some(FORMAT_VERSION as u64) {
            return Err(format!(
                "manifest format version {} is not {FORMAT_VERSION} (written by another ringmaster version)",
                version.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into())
            ));
        }
        let m: Manifest = serde_json::from_value(v).map_err(|e| format!("manifest: {e}"))?;
        let want = m.digest();
        if m.checksum != want {
            return Err(format!(
                "manifest does not match its own checksum (it says {}, its content gives {want}): edited or corrupted",
                if m.checksum.is_empty() { "nothing" } else { &m.checksum }
            ));
        }
        if parse_dir_name(dir) != Some(m.step) {
            return Err(format!(
                "manifest says step {} but its folder is {dir}",
                m.step
            ));
        }
        if let Some(s) = m.scalars.get("step").filter(|s| **s != m.step) {
            return Err(format!(
                "manifest says step {} but the state's step scalar is {s}",
                m.step
            ));
        }
        Ok(m)
    }
}

/// Directory name of the checkpoint after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:010}")
}

/// The folder the checkpoint of `step` is written into before it is
/// committed (renamed to `dir_name(step)`).
pub fn tmp_dir_name(step: u64) -> String {
    format!("{}.tmp", dir_name(step))
}

/// The step of a committed checkpoint directory name.
pub fn parse_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix("step-")
        .filter(|s| s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}

/// The steps of the committed checkpoint folders among `names` (entries
/// of a checkpoint folder), newest first.
pub fn newest_first(names: impl IntoIterator<Item = String>) -> Vec<u64> {
    let mut steps: Vec<u64> = names
        .into_iter()
        .filter_map(|n| parse_dir_name(&n))
        .collect();
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps
}

/// The committed checkpoint folders of `dir`, newest first. A missing
/// folder has none.
pub fn committed_steps(dir: &std::path::Path) -> std::io::Result<Vec<u64>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(newest_first(
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
}

/// What the launcher finds in a checkpoint folder before it starts
/// anything: the newest checkpoint whose manifest verifies (its shards are
/// verified by the worker that loads them), and why each newer one was
/// skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub newest: Option<Manifest>,
    pub skipped: Vec<String>,
}

pub fn scan(dir: &std::path::Path) -> std::io::Result<Scan> {
    let mut skipped = Vec::new();
    for step in committed_steps(dir)? {
        let name = dir_name(step);
        let path = dir.join(&name).join(MANIFEST);
        let r = std::fs::read(&path)
            .map_err(|e| format!("manifest: {e}"))
            .and_then(|b| Manifest::verify(&b, &name));
        match r {
            Ok(m) => {
                return Ok(Scan {
                    newest: Some(m),
                    skipped,
                })
            }
            Err(e) => skipped.push(format!("skipping checkpoint {name}: {e}")),
        }
    }
    Ok(Scan {
        newest: None,
        skipped,
    })
}

/// Check every file a manifest lists against its size and CRC-32C (the
/// launcher's check of a checkpoint it will not load itself).
pub fn verify_files(dir: &std::path::Path, m: &Manifest) -> Result<(), String> {
    for (name, entry) in &m.files {
        let found = file_entry(&dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if found != *entry {
            return Err(format!("{name} does not match its checksum"));
        }
    }
    Ok(())
}

/// A file's size and CRC-32C, read in 1 MiB pieces.
pub fn file_entry(path: &std::path::Path) -> std::io::Result<FileEntry> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let (mut crc, mut bytes, mut buf) = (0u32, 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        bytes += n as u64;
    }
    Ok(FileEntry {
        crc32c: format!("{crc:08x}"),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(step: u64) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            run_id: "r".into(),
            step,
            world_size: 2,
            identity: Identity::train(&Default::default()),
            tensors: BTreeMap::new(),
            files: BTreeMap::new(),
            scalars: BTreeMap::from([("step".into(), step), ("seed".into(), 0)]),
            checksum: String::new(),
        }
    }

    #[test]
    fn a_sealed_manifest_verifies_and_every_edit_is_caught() {
        let bytes = manifest(30).seal();
        let m = Manifest::verify(&bytes, "step-0000000030").unwrap();
        assert_eq!(m.step, 30);
        let text = String::from_utf8(bytes).unwrap();
        // (edit, what the error must say)
        let cases: Vec<(String, &str, &str)> = vec![
            (
                text.replace("\"step\": 30", "\"step\": 31"),
                "step-0000000030",
                "own checksum",
            ),
            (
                text.replace("\"seed\": 0", "\"seed\": 1"),
                "step-0000000030",
                "own checksum",
            ),
            (
                text.replace("\"run_id\": \"r\"", "\"run_id\": \"x\""),
                "step-0000000030",
                "own checksum",
            ),
            (
                text.replace("\"format_version\": 3", "\"format_version\": 2"),
                "step-0000000030",
                "format version 2",
            ),
            (
                text.replace("sha256:", "sha256:0"),
                "step-0000000030",
                "own checksum",
            ),
            (
                text.clone(),
                "step-0000000031",
                "its folder is step-0000000031",
            ),
            ("{".into(), "step-0000000030", "manifest:"),
            ("[]".into(), "step-0000000030", "format version (none)"),
        ];
        for (edited, dir, want) in cases {
            let err = Manifest::verify(edited.as_bytes(), dir).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        // Whitespace is not content: a reformatted manifest still verifies.
        let compact =
            serde_json::to_vec(&Manifest::verify(text.as_bytes(), "step-0000000030").unwrap())
                .unwrap();
        assert!(Manifest::verify(&compact, "step-0000000030").is_ok());
    }

    #[test]
    fn the_step_scalar_must_agree() {
        let mut m = manifest(30);
        m.scalars.insert("step".into(), 29);
        let err = Manifest::verify(&m.seal(), "step-0000000030").unwrap_err();
        assert!(err.contains("step scalar is 29"), "{err}");
    }

    #[test]
    fn identity_names_each_difference() {
        let a = crate::spec::TrainWorkload::default();
        let b = crate::spec::TrainWorkload {
            seed: 7,
            hidden: 128,
            steps: 999,
            ..a.clone()
        };
        let (ia, ib) = (Identity::train(&a), Identity::train(&b));
        assert_ne!(ia.hash, ib.hash);
        assert_eq!(
            ia.differences(&ib),
            vec![
                "hidden: job 256, checkpoint 128",
                "seed: job 0, checkpoint 7"
            ]
        );
        // The step count is not identity.
        let c = crate::spec::TrainWorkload {
            steps: 5,
            ..a.clone()
        };
        assert_eq!(Identity::train(&c), ia);
        assert_eq!(ia.hash.len(), 16);
        // A global batch is identity; unset, the fields are those of
        // checkpoints written before it existed (so are their hashes).
        let names: Vec<&str> = ia.fields.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "batch_per_rank",
                "hidden",
                "input_dim",
                "layers",
                "lr",
                "momentum",
                "output_dim",
                "seed",
                "workload"
            ]
        );
        let g = crate::spec::TrainWorkload {
            global_batch: Some(256),
            ..a.clone()
        };
        assert_eq!(
            ia.differences(&Identity::train(&g)),
            vec!["global_batch: job (none), checkpoint 256"]
        );
    }

    #[test]
    fn dir_names_round_trip_and_reject_lookalikes() {
        assert_eq!(parse_dir_name(&dir_name(42)), Some(42));
        for bad in [
            "step-+000000042",
            "step-00000042",
            "step-0000000042.tmp",
            "x",
        ] {
            assert_eq!(parse_dir_name(bad), None, "{bad}");
        }
    }
}
