//! events.jsonl as types: one `Line` per lifecycle event, written by the
//! launcher and read back by whoever follows a run (the tests parse every
//! line into these types, so an event the launcher writes and no type names
//! is an error). Each line carries the wall-clock time (`ts`), the seconds
//! since the launcher started (`elapsed_s`) and the event under its name
//! (`event`), with its fields beside it.

use crate::result::WorkerResult;
use crate::wire::{ErrorKind, PreflightFigures};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub ts: String,
    pub elapsed_s: f64,
    pub event: RunEvent,
}

impl Line {
    /// The line as events.jsonl has it: one JSON object.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.event).expect("events serialise");
        if let Value::Object(m) = &mut v {
            m.insert("ts".into(), Value::String(self.ts.clone()));
            m.insert("elapsed_s".into(), Value::from(self.elapsed_s));
        }
        v
    }

    /// One line of events.jsonl, strictly: an unknown event or field is an
    /// error naming it.
    pub fn parse(text: &str) -> Result<Line, String> {
        let mut v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let m = v.as_object_mut().ok_or("an event is a JSON object")?;
        let ts = match m.remove("ts") {
            Some(Value::String(s)) => s,
            _ => return Err("no ts".into()),
        };
        let elapsed_s = m
            .remove("elapsed_s")
            .and_then(|e| e.as_f64())
            .ok_or("no elapsed_s")?;
        let event = serde_json::from_value(v).map_err(|e| format!("{e} in {text}"))?;
        Ok(Line {
            ts,
            elapsed_s,
            event,
        })
    }
}

/// A rank's note for the run's timeline (`WorkerNote`), under its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Note {
    pub attempt: u32,
    pub rank: u32,
    pub message: String,
    pub warning: bool,
    pub detail: Value,
}

/// How a failed attempt's root cause exited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureBrief {
    pub rank: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        name: String,
        world_size: u32,
        nodes: u32,
        devices_per_node: u32,
        workload: String,
        rendezvous: String,
        launcher_pid: u32,
    },
    /// The GPU libraries found for the workers (gpu::libs::Located).
    GpuLibraries {
        found: Value,
    },
    AttemptStarted {
        attempt: u32,
        master_port: u16,
        dir: String,
    },
    /// Survivors of a preemption (or of a stop to grow) rejoin with their
    /// state in memory: their ranks in this attempt, and the ranks they
    /// had (another where the world shrank or grew), in the same order.
    SurvivorsKept {
        attempt: u32,
        ranks: Vec<u32>,
        from_ranks: Vec<u32>,
        state_from: Option<u32>,
    },
    WorkerStarted {
        attempt: u32,
        rank: u32,
        node: u32,
        local_rank: u32,
        /// Its process here (None: a node agent starts it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        by_agent: bool,
    },
    WorkerSpawnFailed {
        attempt: u32,
        rank: u32,
        error: String,
    },
    /// Processes the workers' programs left behind, ended (between
    /// attempts: `attempt` is the one starting; None: at the run's end).
    StraysEnded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        processes: u64,
    },
    WaitingForCapacity {
        nodes: Vec<u32>,
        capacity_wait_s: f64,
        provider: String,
    },
    /// An elastic run (`resources.min_nodes`) starts attempt `attempt` on
    /// other nodes than the last: fewer where no replacement came within
    /// the capacity wait, all again once capacity returned.
    WorldResized {
        attempt: u32,
        /// The provider's nodes the attempt runs on.
        nodes: Vec<u32>,
        world_size: u32,
        from_world_size: u32,
    },
    /// An elastic run short of nodes got some back while it ran: once they
    /// are up (`ready_in_s`) the group stops at an agreed step,
    /// checkpointed, and the next attempt runs on them too.
    WorldGrowing {
        attempt: u32,
        /// The provider's nodes that came back.
        nodes: Vec<u32>,
        ready_in_s: f64,
    },
    WorkerJoined {
        attempt: u32,
        rank: u32,
        pid: u32,
        preflight: Option<PreflightFigures>,
    },
    /// The preflight check's verdict: every rank's figures and the slow
    /// ones ({rank, node, why}).
    Preflight {
        attempt: u32,
        /// By rank (a string: JSON keys are strings, and an internally
        /// tagged enum reads them back only as such).
        figures: BTreeMap<String, PreflightFigures>,
        slow: Vec<Value>,
        min_ratio: f64,
    },
    PreflightReplacing {
        attempt: u32,
        nodes: Vec<u32>,
    },
    RendezvousComplete {
        attempt: u32,
        launch_to_ready_s: f64,
        rendezvous_s: Option<f64>,
    },
    FirstStep {
        attempt: u32,
        rank: u32,
        step: u64,
        start_step: Option<u64>,
        since_launch_s: f64,
    },
    WorkerResult {
        attempt: u32,
        rank: u32,
        result: Box<WorkerResult>,
    },
    WorkerParked {
        attempt: u32,
        rank: u32,
        node: u32,
    },
    AgentWorkerStarted {
        attempt: u32,
        node: u32,
        rank: u32,
        pid: u32,
    },
    /// A node agent's pod got SIGTERM.
    AgentNotice {
        node: u32,
    },
    /// A node agent connected: where its workers listen, and when.
    AgentJoined {
        node: u32,
        addr: String,
        joined: String,
    },
    AgentLost {
        node: u32,
        /// The launcher had let it go already (its session ended, its
        /// machine was replaced) when its connection ended.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dismissed: bool,
    },
    RendezvousRefused {
        peer: String,
        kind: ErrorKind,
        message: String,
    },
    /// Refusals since the last summary (`count`) by kind, and in all.
    RendezvousRefusedSummary {
        count: u64,
        total: u64,
        by_kind: BTreeMap<String, u64>,
    },
    WorkerExited {
        attempt: u32,
        rank: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        description: String,
    },
    /// NVML samples of this machine's GPUs, and the ranks on each.
    GpuTelemetry {
        gpus: Value,
        ranks_by_gpu: Value,
    },
    Signal {
        signal: String,
    },
    WorkersTerminating {
        grace_period_s: f64,
    },
    NoticeSent {
        deadline: String,
        notice_grace_s: f64,
        source: Option<String>,
        /// The step a program that reports its steps stops after.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_step: Option<u64>,
    },
    GroupStopping {
        reason: String,
        message: String,
    },
    AttemptEnded {
        attempt: u32,
        outcome: String,
        message: Option<String>,
        restarting: bool,
        failure: Option<FailureBrief>,
        /// The restart budget it drew on: user, infrastructure,
        /// preemption, preflight, or resize (an elastic run's stop to grow,
        /// no budget; none for a success or an interrupt).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure_kind: Option<String>,
    },
    /// The Prometheus endpoint (`observability.metrics_addr`) listens here.
    MetricsListening {
        addr: String,
    },
    /// A `command` job's checkpoint of `step`: every rank's program
    /// committed it (`ringmaster.commit`), the launcher listed its files
    /// with their CRC-32C in a manifest and renamed the folder into place.
    CheckpointCommitted {
        attempt: u32,
        step: u64,
        dir: String,
        files: u64,
        bytes: u64,
        seconds: f64,
        /// Older checkpoints removed (checkpoint.keep).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<u64>,
    },
    /// Every rank committed `step`, but its folder could not be committed.
    CheckpointCommitFailed {
        attempt: u32,
        step: u64,
        error: String,
    },
    /// A `command` job's attempt starts from this committed checkpoint
    /// (RINGMASTER_RESUME_STEP, RINGMASTER_RESUME_DIR).
    ResumingFrom {
        attempt: u32,
        step: u64,
        dir: String,
    },
    NoticeHandled {
        stopped_at_step: Option<u64>,
        seconds_after_notice: f64,
        margin_s: f64,
        deadline_met: bool,
        checkpointed: bool,
        source: Option<String>,
    },
    NoticeReceived {
        attempt: u32,
        rank: u32,
        source: String,
        detail: String,
        seen: String,
        deadline: Option<String>,
    },
    EarlyWarning {
        attempt: u32,
        rank: u32,
        source: String,
        detail: String,
    },
    RunFinished {
        status: String,
        exit_code: i32,
        restarts: u32,
    },
    // The provider's node events.
    CapacityChanged {
        zone: String,
        spot_capacity: Option<u32>,
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        market_time_s: Option<f64>,
    },
    NodeNotice {
        node: u32,
        cause: String,
        zone: String,
        deadline: String,
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        market_time_s: Option<f64>,
    },
    NodeLost {
        node: u32,
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        market_time_s: Option<f64>,
    },
    NodeReplaced {
        node: u32,
        vm: String,
        zone: String,
        market: String,
        provisioning_delay_s: f64,
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        market_time_s: Option<f64>,
    },
    NodesMigrating {
        nodes: Vec<u32>,
        reason: String,
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        market_time_s: Option<f64>,
    },
    /// A cloud API request for a node's machine: the call, what it asked
    /// for, and "ok" or the cloud's error code.
    MachineRequested {
        node: u32,
        call: String,
        instance_type: String,
        zone: String,
        market: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reservation: Option<String>,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        machine: Option<String>,
        api_s: f64,
        provider: String,
    },
    /// A machine's state as the cloud reported it (pending, running,
    /// shutting-down, terminated), when it was seen.
    MachineState {
        node: u32,
        machine: String,
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        seen: String,
        provider: String,
    },
    /// Every machine of the run given back at its end.
    MachinesReleased {
        machines: Vec<String>,
        provider: String,
    },
    /// Machines that could not be given back: `ringmaster down` retries.
    MachinesLeft {
        machines: Vec<String>,
        error: String,
        provider: String,
    },
    // A rank's notes, under their kinds.
    CheckpointSkipped(Note),
    CheckpointNoneUsable(Note),
    WatcherOk(Note),
    WatcherFailing(Note),
    /// A note of a kind this launcher does not know (a newer worker's).
    WorkerNote {
        kind: String,
        attempt: u32,
        rank: u32,
        message: String,
        warning: bool,
        detail: Value,
    },
}

impl RunEvent {
    /// A rank's note under its kind.
    pub fn note(kind: &str, note: Note) -> RunEvent {
        match kind {
            "checkpoint_skipped" => RunEvent::CheckpointSkipped(note),
            "checkpoint_none_usable" => RunEvent::CheckpointNoneUsable(note),
            "watcher_ok" => RunEvent::WatcherOk(note),
            "watcher_failing" => RunEvent::WatcherFailing(note),
            _ => RunEvent::WorkerNote {
                kind: kind.to_string(),
                attempt: note.attempt,
                rank: note.rank,
                message: note.message,
                warning: note.warning,
                detail: note.detail,
            },
        }
    }

    /// The event's name, as events.jsonl has it.
    pub fn name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines round-trip through JSON, flattened fields included; a field
    /// the type does not know, or an unknown event, is an error.
    #[test]
    fn lines_round_trip_and_unknown_fields_are_refused() {
        let lines = [
            RunEvent::Signal {
                signal: "SIGUSR1".into(),
            },
            RunEvent::NodeLost {
                node: 1,
                provider: "sim".into(),
                market_time_s: Some(3.5),
            },
            RunEvent::note(
                "watcher_ok",
                Note {
                    attempt: 0,
                    rank: 1,
                    message: "aws answers".into(),
                    warning: false,
                    detail: serde_json::json!({"watcher": "aws"}),
                },
            ),
            RunEvent::StraysEnded {
                attempt: None,
                processes: 2,
            },
            // Map keys come back as strings only: figures by rank.
            RunEvent::Preflight {
                attempt: 0,
                figures: BTreeMap::from([(
                    "1".to_string(),
                    PreflightFigures {
                        device: "cpu".into(),
                        gemm_gflops: 1.5,
                        copy_gbps: 2.5,
                        error: None,
                    },
                )]),
                slow: vec![],
                min_ratio: 0.25,
            },
        ];
        for event in lines {
            let line = Line {
                ts: "2026-12-02T00:00:00.000Z".into(),
                elapsed_s: 1.25,
                event,
            };
            let v = line.to_json();
            assert_eq!(v["event"], line.event.name(), "{v}");
            assert_eq!(Line::parse(&v.to_string()).unwrap(), line);
            let mut extra = v.clone();
            extra["surprise"] = 1.into();
            let e = Line::parse(&extra.to_string()).unwrap_err();
            assert!(e.contains("surprise"), "{e}");
        }
        let v = serde_json::json!({"ts": "t", "elapsed_s": 0.0, "event": "no_such_event"});
        assert!(Line::parse(&v.to_string()).is_err());
        let v = serde_json::json!({"ts": "t", "elapsed_s": 0.0, "event": "node_lost", "node": 1, "provider": "sim"});
        assert!(Line::parse(&v.to_string()).is_ok());
    }
}
