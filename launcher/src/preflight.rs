//! Checks made before anything starts, so that a run does not fail hours in
//! on something knowable up front. Today: the checkpoint folder can be
//! created and written (a probe file, fsynced and removed), and its file
//! system has room for the checkpoints the job keeps.

use crate::error::LaunchError;
use proto::spec::{JobSpec, Workload};
use std::io::Write;
use std::path::Path;

/// Bytes one checkpoint of this job takes, when the workload says.
pub fn checkpoint_bytes(spec: &JobSpec) -> Option<u64> {
    match &spec.workload {
        // Weights and momentum, float32; headers and manifest are small.
        Workload::Train(t) => Some(8 * t.param_count()),
        _ => None,
    }
}

/// What the checkpoint folder's file system must hold, and what it should.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// One checkpoint being written.
    pub needed: u64,
    /// The `keep` newest plus one being written.
    pub wanted: u64,
}

pub fn room(spec: &JobSpec) -> Option<Room> {
    let one = checkpoint_bytes(spec)?;
    Some(Room {
        needed: one,
        wanted: one * (spec.checkpoint.keep.max(1) as u64 + 1),
    })
}

/// Bytes for people: "2.2 MB", "1.05 GB".
fn gb(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// Check the checkpoint folder; returns warnings, or the error that stops
/// the run before it starts (exit 7).
pub fn checkpoint_dir(spec: &JobSpec) -> Result<Vec<String>, LaunchError> {
    let Some(dir) = spec.checkpoint.dir.as_deref() else {
        return Ok(vec![]);
    };
    if !matches!(spec.workload, Workload::Train(_)) {
        return Ok(vec![]);
    }
    let path = Path::new(dir);
    let fail = |what: String| LaunchError::Io(format!("checkpoint.dir {dir}: {what}"));
    std::fs::create_dir_all(path).map_err(|e| fail(format!("cannot create it: {e}")))?;
    let probe = path.join(format!(".ringmaster-probe-{}", std::process::id()));
    let written = std::fs::File::create(&probe)
        .and_then(|mut f| {
            f.write_all(b"probe")?;
            f.sync_all()
        })
        .map_err(|e| fail(format!("cannot write in it: {e}")));
    let _ = std::fs::remove_file(&probe);
    written?;
    let mut warnings = Vec::new();
    if let (Some(room), Ok(st)) = (room(spec), nix::sys::statvfs::statvfs(path)) {
        let free = st.blocks_available() * st.fragment_size();
        if free < room.needed {
            return Err(fail(format!(
                "{} free, but one checkpoint of this job takes {}",
                gb(free),
                gb(room.needed)
            )));
        }
        if free < room.wanted {
            warnings.push(format!(
                "checkpoint.dir {dir}: {} free; keeping {} checkpoints and writing one more takes {}",
                gb(free),
                spec.checkpoint.keep,
                gb(room.wanted)
            ));
        }
    }
    Ok(warnings)
}
