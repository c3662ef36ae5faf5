//! A live view of a run from another terminal: the launcher rewrites
//! `<run dir>/status.json` once a second (whole, then renamed into place),
//! and `ringmaster status RUN_DIR` shows it: world size, each rank's step,
//! rate, loss and heartbeat age, the newest checkpoint, notices, restarts
//! and the time left; once the run ended, its outcome from report.json.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub run_id: String,
    pub job_name: String,
    pub launcher_pid: u32,
    /// RFC 3339, when the launcher wrote this.
    pub updated: String,
    pub attempt: u32,
    pub world_size: u32,
    pub nodes: u32,
    pub ranks: Vec<RankStatus>,
    /// The slowest rank's step, the steps the run takes, and the group's
    /// rate (None until known).
    pub step: Option<u64>,
    pub total_steps: Option<u64>,
    pub steps_per_s: Option<f64>,
    pub eta_s: Option<f64>,
    /// The newest checkpoint the launcher committed (a command job's).
    pub checkpoint_step: Option<u64>,
    pub notices: u32,
    pub restarts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankStatus {
    pub rank: u32,
    pub node: u32,
    pub step: Option<u64>,
    pub steps_per_s: Option<f64>,
    pub loss: Option<f64>,
    pub heartbeat_age_s: Option<f64>,
    pub exited: bool,
}

pub const FILE: &str = "status.json";
/// One line a second while the run is alive (`Sample`): report.html's
/// charts over time.
pub const HISTORY: &str = "progress.jsonl";

/// The run's figures at one moment: seconds since the launcher started,
/// the attempt, each rank's figures (at most 64 ranks), the bill so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub t: f64,
    pub attempt: u32,
    pub ranks: Vec<RankStatus>,
    pub cost: Option<f64>,
}

/// Append `s` to `dir`'s progress.jsonl.
pub fn append(dir: &Path, s: &Sample) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(HISTORY))?;
    writeln!(
        f,
        "{}",
        serde_json::to_string(s).expect("sample serialises")
    )
}

/// Write `s` into `dir` (whole, then renamed: a reader never sees half).
pub fn write(dir: &Path, s: &Status) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.part"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(s).expect("status serialises"),
    )?;
    std::fs::rename(&tmp, dir.join(FILE))
}

pub fn read(dir: &Path) -> Result<Status, String> {
    let path = dir.join(FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The status as a few lines for people (pure).
pub fn human(s: &Status) -> String {
    let mut out = format!(
        "run {} ({}), launcher pid {}, updated {}\n  attempt {}, {} node(s), {} rank(s); restarts {}, notices {}; newest checkpoint: {}\n",
        s.run_id,
        s.job_name,
        s.launcher_pid,
        s.updated,
        s.attempt,
        s.nodes,
        s.world_size,
        s.restarts,
        s.notices,
        s.checkpoint_step.map(|c| format!("step {c}")).unwrap_or_else(|| "none".into()),
    );
    let total = s.total_steps.map(|t| format!("/{t}")).unwrap_or_default();
    out.push_str(&format!(
        "  step {}{total}, {} steps/s, ETA {}\n",
        opt(s.step),
        s.steps_per_s
            .map(|r| format!("{r:.1}"))
            .unwrap_or_else(|| "-".into()),
        s.eta_s
            .map(|e| format!("{e:.0} s"))
            .unwrap_or_else(|| "-".into()),
    ));
    out.push_str("  rank  node      step   steps/s      loss  heartbeat\n");
    for r in &s.ranks {
        out.push_str(&format!(
            "  {:>4}  {:>4}  {:>8}  {:>8}  {:>8}  {}\n",
            r.rank,
            r.node,
            opt(r.step),
            r.steps_per_s
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.loss
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into()),
            if r.exited {
                "exited".to_string()
            } else {
                r.heartbeat_age_s
                    .map(|a| format!("{a:.1} s ago"))
                    .unwrap_or_else(|| "-".into())
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_reads_as_a_table() {
        let s = Status {
            run_id: "r".into(),
            job_name: "j".into(),
            launcher_pid: 42,
            updated: "2026-12-02T09:00:00Z".into(),
            attempt: 1,
            world_size: 2,
            nodes: 2,
            ranks: vec![
                RankStatus {
                    rank: 0,
                    node: 0,
                    step: Some(120),
                    steps_per_s: Some(40.25),
                    loss: Some(0.5),
                    heartbeat_age_s: Some(0.2),
                    exited: false,
                },
                RankStatus {
                    rank: 1,
                    node: 1,
                    step: Some(118),
                    steps_per_s: None,
                    loss: None,
                    heartbeat_age_s: None,
                    exited: true,
                },
            ],
            step: Some(118),
            total_steps: Some(1000),
            steps_per_s: Some(40.0),
            eta_s: Some(22.05),
            checkpoint_step: Some(100),
            notices: 1,
            restarts: 1,
        };
        let dir = std::env::temp_dir().join(format!("rm-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, &s).unwrap();
        assert_eq!(read(&dir).unwrap(), s);
        let h = human(&s);
        assert!(h.contains("step 118/1000, 40.0 steps/s, ETA 22 s"), "{h}");
        assert!(h.contains("newest checkpoint: step 100"), "{h}");
        assert!(
            h.contains("     0     0       120      40.2    0.5000  0.2 s ago"),
            "{h}"
        );
        assert!(h.contains("exited"), "{h}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
