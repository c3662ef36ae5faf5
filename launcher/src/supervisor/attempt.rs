//! The attempt in flight: its workers' process groups, logs, exits,
//! heartbeats and results, with the liveness checks and signalling the
//! executor needs, and how a worker's exit is named.

use super::machine::ExitKind;
use crate::plan::Plan;
use crate::process;
use crate::rendezvous::Rendezvous;
use nix::sys::signal::Signal;
use proto::exit::WorkerExit;
use proto::wire::Heartbeat;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Process-group handles at and above this are workers a node agent runs
/// (handle = REMOTE_HANDLE + the worker id the launcher gave it, never
/// reused in a run); Linux pids stay far below it.
pub(super) const REMOTE_HANDLE: u32 = 1 << 30;

/// State of the attempt in flight.
pub(super) struct Attempt {
    pub(super) n: u32,
    pub(super) dir: PathBuf,
    pub(super) launched_at: Instant,
    pub(super) first_join: Option<Instant>,
    /// A heartbeat has shown a step done in this attempt.
    pub(super) first_step_seen: bool,
    /// When the first step was seen, and that step (the rate's origin).
    pub(super) first_step_at: Option<(Instant, u64)>,
    pub(super) all_joined: Option<Instant>,
    /// Each rank's process group (or agent handle), and the rank of each.
    pub(super) pgids: Vec<Option<u32>>,
    pub(super) by_handle: std::collections::HashMap<u32, u32>,
    /// The rendezvous, for the node agents' commands, and each rank's node.
    pub(super) agents: Rendezvous,
    pub(super) node_of: Vec<u32>,
    /// Each rank's log (a survivor's is in the attempt it started in).
    pub(super) logs: Vec<PathBuf>,
    pub(super) exits: BTreeMap<u32, ExitKind>,
    /// Each exited worker's error file (read once, at its exit).
    pub(super) errors: BTreeMap<u32, Value>,
    pub(super) beats: Vec<Option<Heartbeat>>,
    pub(super) last_beat: Vec<Option<Instant>>,
    pub(super) progress_mark: (u64, Instant),
    pub(super) results: BTreeMap<u32, proto::result::WorkerResult>,
    pub(super) message: Option<String>,
    /// This attempt's workers run the preflight check; the rendezvous holds
    /// their welcomes until the figures are compared.
    pub(super) preflight: bool,
    /// Survivors kept from an earlier attempt (their workers were started
    /// for it), by their rank in this one.
    pub(super) kept: std::collections::BTreeSet<u32>,
}

impl Attempt {
    /// Rank `rank` runs in the process group (or agent handle) `handle`.
    pub(super) fn set_handle(&mut self, rank: u32, handle: u32) {
        self.pgids[rank as usize] = Some(handle);
        self.by_handle.insert(handle, rank);
    }

    /// The rank whose worker runs under `handle` in this attempt (a parked
    /// one no longer counts).
    pub(super) fn rank_of(&self, handle: u32) -> Option<u32> {
        self.by_handle
            .get(&handle)
            .copied()
            .filter(|r| self.pgids[*r as usize] == Some(handle))
    }

    /// A live rank whose heartbeats stopped for longer than `timeout`.
    pub(super) fn silent_rank(&self, now: Instant, timeout: Duration) -> Option<u32> {
        self.last_beat.iter().enumerate().find_map(|(rank, t)| {
            (t.is_some_and(|t| now - t > timeout) && !self.exits.contains_key(&(rank as u32)))
                .then_some(rank as u32)
        })
    }

    /// The furthest step any rank reported, and the group's rate: the
    /// faster of the launcher's own measure since this attempt's first step
    /// (after half a second) and the fastest rank's as its worker measured
    /// it from the program's reports (known after a few steps). None: no
    /// steps, or no rate yet. Not `progress`'s rate: that one waits a
    /// second and for every rank's total, and an agreed stop step must
    /// count the steps made from the first moment on.
    pub(super) fn furthest_step(&self) -> Option<(u64, Option<f64>)> {
        let furthest = self.beats.iter().flatten().map(|b| b.step).max()?;
        let ours = self.first_step_at.and_then(|(t0, s0)| {
            let dt = t0.elapsed().as_secs_f64();
            (furthest > s0 && dt >= 0.5).then(|| (furthest - s0) as f64 / dt)
        });
        let workers = self
            .beats
            .iter()
            .flatten()
            .filter_map(|b| b.steps_per_s)
            .filter(|r| r.is_finite() && *r > 0.0)
            .reduce(f64::max);
        let rate = match (ours, workers) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Some((furthest, rate))
    }

    /// Whether any rank reported a step done in this attempt (a command
    /// program reports its own, through the `ringmaster` package; a
    /// resumed one starts at its checkpoint's step).
    pub(super) fn reports_steps(&self) -> bool {
        self.beats
            .iter()
            .flatten()
            .any(|b| b.step > b.start_step.unwrap_or(0))
    }

    /// Whether no rank's steps or collectives moved for longer than
    /// `timeout` (remembers the last movement).
    pub(super) fn stalled(&mut self, now: Instant, timeout: Duration) -> bool {
        let sum: u64 = self
            .beats
            .iter()
            .flatten()
            .map(|b| b.step + b.collectives)
            .sum();
        if sum != self.progress_mark.0 {
            self.progress_mark = (sum, now);
            false
        } else {
            now - self.progress_mark.1 > timeout
        }
    }

    /// How far the group is: the slowest rank's step, and the rate since
    /// the attempt's first step, both as of that rank's last heartbeat
    /// (None until every rank reported steps).
    pub(super) fn progress(&self) -> Option<crate::provider::RunProgress> {
        let beats: Vec<&Heartbeat> = self.beats.iter().flatten().collect();
        if beats.len() != self.beats.len() || beats.iter().any(|b| b.total_steps == 0) {
            return None;
        }
        let (slowest, step) = beats
            .iter()
            .enumerate()
            .map(|(r, b)| (r, b.step))
            .min_by_key(|(_, s)| *s)?;
        let steps_per_s =
            self.first_step_at
                .zip(self.last_beat[slowest])
                .and_then(|((t0, s0), t)| {
                    let dt = t.saturating_duration_since(t0).as_secs_f64();
                    (step > s0 && dt >= 1.0).then(|| (step - s0) as f64 / dt)
                });
        Some(crate::provider::RunProgress {
            step,
            total_steps: beats[0].total_steps,
            steps_per_s,
        })
    }

    /// Signal ranks' process groups: here (one read of /proc for all of
    /// them), or through their nodes' agents.
    fn signal_many(&self, ranks: impl IntoIterator<Item = u32>, sig: Signal) {
        let mut here = Vec::new();
        for rank in ranks {
            match self.pgids[rank as usize] {
                Some(pg) if pg >= REMOTE_HANDLE => {
                    if let Some(agent) = self.agents.agent(self.node_of[rank as usize]) {
                        let _ = agent.send(proto::wire::Response::Signal {
                            worker: pg - REMOTE_HANDLE,
                            signal: sig as i32,
                        });
                    }
                }
                Some(pg) => here.push(pg),
                None => {}
            }
        }
        process::signal_groups(&here, sig);
    }

    /// The ranks whose workers have not exited.
    fn live(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.pgids.len() as u32).filter(|rank| !self.exits.contains_key(rank))
    }

    /// Signal the process group of every worker that has not exited.
    pub(super) fn signal_live(&self, sig: Signal) {
        self.signal_many(self.live(), sig);
    }

    /// Signal the live workers of one node.
    pub(super) fn signal_node(&self, plan: &Plan, node: u32, sig: Signal) {
        let on_node: Vec<u32> = plan
            .workers
            .iter()
            .filter(|w| w.node_rank == node && !self.exits.contains_key(&w.rank))
            .map(|w| w.rank)
            .collect();
        self.signal_many(on_node, sig);
    }

    /// Signal every worker's process group, exited or not (a sweep for
    /// anything a worker left behind in its group).
    pub(super) fn signal_all(&self, sig: Signal) {
        self.signal_many(0..self.pgids.len() as u32, sig);
    }
}

pub(super) fn exit_kind(status: std::process::ExitStatus) -> ExitKind {
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitKind::Code(c),
        (None, Some(s)) => ExitKind::Signal(s),
        _ => ExitKind::Code(-1),
    }
}

pub(super) fn describe_exit(e: ExitKind) -> String {
    match e {
        ExitKind::Code(c) => match WorkerExit::from_code(c) {
            Some(w) => format!("exit code {c} ({})", w.name()),
            None => format!("exit code {c}"),
        },
        ExitKind::Signal(s) => {
            let name = Signal::try_from(s)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {s}"));
            format!("signal {s} ({name})")
        }
        ExitKind::SpawnFailed => "could not be started".into(),
    }
}
