//! Checks made before anything starts, so that a run does not fail hours in
//! on something knowable up front: the checkpoint folder can be created and
//! written (a probe file, fsynced and removed), and its file system has room
//! for the checkpoints the job keeps; and, before the first step, the
//! devices' own figures (`spec.preflight`: each worker's short GEMM and
//! copy, compared here by `slow_ranks`).

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
pub fn gb(b: u64) -> String {
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
    if !matches!(spec.workload, Workload::Train(_) | Workload::Command(_)) {
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

/// Memory the workers of a `train` job need on this machine, against what
/// it has.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryFit {
    pub per_worker: u64,
    /// Workers on this machine (every one for local and sim nodes; one
    /// node's for providers whose nodes are other machines).
    pub workers_here: u32,
    pub needed: u64,
    pub total: Option<u64>,
    pub available: Option<u64>,
}

/// /proc/meminfo's MemTotal and MemAvailable, in bytes.
fn meminfo() -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

pub fn memory_fit(spec: &JobSpec) -> Option<MemoryFit> {
    let Workload::Train(t) = &spec.workload else {
        return None;
    };
    let r = &spec.resources;
    let here = spec.workers_per_machine();
    let per_worker = t.memory_per_worker(r.nodes * r.devices_per_node);
    let (total, available) = meminfo();
    Some(MemoryFit {
        per_worker,
        workers_here: here,
        needed: per_worker.saturating_mul(here as u64),
        total,
        available,
    })
}

/// Whether the job fits this machine's memory (pure): Err when it cannot
/// (more than all memory), a warning when it is close (more than 80% of
/// what is available now).
pub fn check_memory(m: &MemoryFit) -> Result<Option<String>, String> {
    let what = format!(
        "about {} per worker (weights, momentum, gradient, activations, buffers) x {} worker(s) on this machine = {}",
        gb(m.per_worker),
        m.workers_here,
        gb(m.needed)
    );
    if let Some(total) = m.total.filter(|t| m.needed > *t) {
        return Err(format!(
            "needs {what}, more than this machine's {} of memory; make the model smaller (workload.hidden, layers, batch_per_rank) or use fewer workers per machine",
            gb(total)
        ));
    }
    if let Some(avail) = m.available.filter(|a| m.needed as f64 > 0.8 * *a as f64) {
        return Ok(Some(format!(
            "needs {what}, close to the {} available now: the workers may be killed for memory",
            gb(avail)
        )));
    }
    Ok(None)
}

/// Where a job with a checkpoint folder will start, as far as the launcher
/// can tell before anything starts (a `train` job's loading rank verifies
/// the shards again; a `command` job's files are verified before each
/// attempt).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResumePoint {
    /// The newest checkpoint whose manifest verifies and is this job's.
    pub step: Option<u64>,
    /// The job's last step is already done: nothing to run.
    pub complete: bool,
    /// Checkpoints skipped (and why), and notes about the one taken.
    pub warnings: Vec<String>,
}

/// Read the checkpoint folder's manifests: skip the ones that do not
/// verify (saying why), refuse a checkpoint of another training (exit 7,
/// naming each differing field) unless the job allows it, and say when
/// the job is already complete.
pub fn resume_point(spec: &JobSpec) -> Result<ResumePoint, LaunchError> {
    let (Some(dir), Some(ours)) = (
        spec.checkpoint.dir.as_deref(),
        proto::checkpoint::Identity::of(&spec.workload),
    ) else {
        return Ok(ResumePoint::default());
    };
    let path = Path::new(dir);
    let scan = proto::checkpoint::scan(path).map_err(LaunchError::system(format!(
        "checkpoint.dir {dir}: cannot read it"
    )))?;
    let mut out = ResumePoint {
        warnings: scan
            .skipped
            .iter()
            .map(|s| format!("checkpoint.dir {dir}: {s}"))
            .collect(),
        ..Default::default()
    };
    let Some(m) = scan.newest else {
        if !out.warnings.is_empty() {
            out.warnings.push(format!(
                "checkpoint.dir {dir}: no checkpoint can be used; training starts from step 0"
            ));
        }
        return Ok(out);
    };
    let differences = ours.differences(&m.identity);
    if !differences.is_empty() {
        if !spec.checkpoint.allow_identity_mismatch {
            return Err(LaunchError::Io(format!(
                "checkpoint.dir {dir} holds step {} of another training (run {}, identity {}; this job's is {}): {}. Use a new checkpoint.dir, or --set checkpoint.allow_identity_mismatch=true to start from those weights on purpose",
                m.step,
                m.run_id,
                m.identity.hash,
                ours.hash,
                differences.join("; ")
            )));
        }
        out.warnings.push(format!(
            "checkpoint.dir {dir}: starting from step {} of another training on purpose (checkpoint.allow_identity_mismatch): {}",
            m.step,
            differences.join("; ")
        ));
    }
    let steps = match &spec.workload {
        Workload::Train(t) => Some(t.steps),
        _ => None,
    };
    if steps.is_some_and(|s| m.step >= s) && differences.is_empty() {
        let step_dir = path.join(proto::checkpoint::dir_name(m.step));
        match proto::checkpoint::verify_files(&step_dir, &m) {
            Ok(()) => out.complete = true,
            Err(e) => out.warnings.push(format!(
                "checkpoint.dir {dir}: the checkpoint at step {} does not verify ({e}); an older one is used",
                m.step
            )),
        }
    }
    out.step = Some(m.step);
    Ok(out)
}

/// A rank the preflight check found wanting.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlowRank {
    pub rank: u32,
    pub node: u32,
    pub why: String,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Ranks whose check failed, or whose GEMM rate or copy bandwidth is below
/// `min_ratio` of the median over all ranks. `figures`: each rank's node
/// (the provider's: an elastic world's rank 0 may be node 1) and figures
/// (pure).
pub fn slow_ranks(
    figures: &std::collections::BTreeMap<u32, (u32, proto::wire::PreflightFigures)>,
    min_ratio: f64,
) -> Vec<SlowRank> {
    let ok = || {
        figures
            .values()
            .map(|(_, f)| f)
            .filter(|f| f.error.is_none())
    };
    let gemm = median(ok().map(|f| f.gemm_gflops).collect());
    let copy = median(ok().map(|f| f.copy_gbps).collect());
    let mut out = Vec::new();
    for (&rank, (node, f)) in figures {
        let node = *node;
        let mut why = Vec::new();
        if let Some(e) = &f.error {
            why.push(format!("its check failed: {e}"));
        } else {
            for (what, v, m, unit) in [
                ("GEMM", f.gemm_gflops, gemm, "GFLOP/s"),
                ("copy", f.copy_gbps, copy, "GB/s"),
            ] {
                if let Some(m) = m.filter(|m| *m > 0.0 && v < min_ratio * m) {
                    why.push(format!(
                        "{what} {v:.1} {unit} is {:.0}% of the median {m:.1}",
                        100.0 * v / m
                    ));
                }
            }
        }
        if !why.is_empty() {
            out.push(SlowRank {
                rank,
                node,
                why: format!("{} ({}): {}", f.device, rank, why.join("; ")),
            });
        }
    }
    out
}

#[cfg(test)]
mod slow_tests {
    use super::*;
    use proto::wire::PreflightFigures;
    use std::collections::BTreeMap;

    fn f(gemm: f64, copy: f64, error: Option<&str>) -> PreflightFigures {
        PreflightFigures {
            device: "cpu".into(),
            gemm_gflops: gemm,
            copy_gbps: copy,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn ranks_far_below_the_median_or_failed_are_slow() {
        // (figures by rank, ranks per node, min_ratio, expected (rank, node, words))
        type Row = (
            Vec<PreflightFigures>,
            u32,
            f64,
            Vec<(u32, u32, &'static str)>,
        );
        let table: Vec<Row> = vec![
            (vec![], 1, 0.5, vec![]),
            (vec![f(100.0, 10.0, None)], 1, 0.5, vec![]),
            (
                vec![
                    f(100.0, 10.0, None),
                    f(98.0, 9.0, None),
                    f(30.0, 10.0, None),
                ],
                1,
                0.5,
                vec![(2, 2, "GEMM 30.0 GFLOP/s is 31% of the median 98.0")],
            ),
            (
                vec![
                    f(100.0, 10.0, None),
                    f(100.0, 10.0, None),
                    f(100.0, 1.0, None),
                    f(100.0, 10.0, None),
                ],
                2,
                0.5,
                vec![(2, 1, "copy 1.0 GB/s is 10% of the median 10.0")],
            ),
            (
                vec![f(100.0, 10.0, None), f(0.0, 0.0, Some("no GPU"))],
                1,
                0.5,
                vec![(1, 1, "its check failed: no GPU")],
            ),
            // A stricter ratio flags a milder shortfall.
            (
                vec![
                    f(100.0, 10.0, None),
                    f(100.0, 10.0, None),
                    f(80.0, 10.0, None),
                ],
                1,
                0.9,
                vec![(2, 2, "GEMM 80.0")],
            ),
            (
                vec![
                    f(100.0, 10.0, None),
                    f(100.0, 10.0, None),
                    f(80.0, 10.0, None),
                ],
                1,
                0.5,
                vec![],
            ),
        ];
        for (figs, local, ratio, want) in table {
            let figs: BTreeMap<u32, (u32, PreflightFigures)> = figs
                .into_iter()
                .enumerate()
                .map(|(i, f)| (i as u32, (i as u32 / local, f)))
                .collect();
            let got = slow_ranks(&figs, ratio);
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, (rank, node, words)) in got.iter().zip(&want) {
                assert_eq!((g.rank, g.node), (*rank, *node), "{g:?}");
                assert!(g.why.contains(words), "{} lacks {words}", g.why);
            }
        }
        // An elastic world on nodes 1 and 2: the slow rank 1 is node 2's
        // (the node retired is the provider's, not rank / ranks per node).
        let figs = BTreeMap::from([
            (0, (1, f(100.0, 10.0, None))),
            (1, (2, f(10.0, 10.0, None))),
        ]);
        let got = slow_ranks(&figs, 0.5);
        assert_eq!(
            got.iter().map(|g| (g.rank, g.node)).collect::<Vec<_>>(),
            [(1, 2)]
        );
    }

    #[test]
    fn memory_table() {
        let gib = 1u64 << 30;
        let fit = |needed: u64, total: u64, available: u64| MemoryFit {
            per_worker: needed,
            workers_here: 1,
            needed,
            total: Some(total),
            available: Some(available),
        };
        assert_eq!(check_memory(&fit(gib, 16 * gib, 12 * gib)), Ok(None));
        let w = check_memory(&fit(11 * gib, 16 * gib, 12 * gib))
            .unwrap()
            .unwrap();
        assert!(w.contains("close to the"), "{w}");
        let e = check_memory(&fit(70 * gib, 16 * gib, 12 * gib)).unwrap_err();
        assert!(e.contains("more than this machine's 17.18 GB"), "{e}");
        // The estimate grows with the model: hidden 65536 needs ~50 GB.
        let t = proto::spec::TrainWorkload {
            hidden: 65536,
            ..Default::default()
        };
        let per = t.memory_per_worker(1);
        assert!((40e9..90e9).contains(&(per as f64)), "{per}");
        let small = proto::spec::TrainWorkload::default().memory_per_worker(4);
        assert!(small < 200 << 20, "{small}");
    }
}
