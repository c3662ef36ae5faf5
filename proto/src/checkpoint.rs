//! The checkpoint manifest: written last, it is the commit marker of a
//! checkpoint directory. Shared so the launcher can read what workers wrote.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const FORMAT_VERSION: u32 = 2;
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub run_id: String,
    /// Steps completed: training resumes at this step.
    pub step: u64,
    pub world_size: u32,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub files: BTreeMap<String, FileEntry>,
    /// Small scalars (RNG/data cursor state as numbers).
    pub scalars: BTreeMap<String, u64>,
}

/// Directory name of the checkpoint after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:010}")
}

/// The step of a committed checkpoint directory name.
pub fn parse_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix("step-")
        .filter(|s| s.len() == 10)
        .and_then(|s| s.parse().ok())
}
