//! Rendezvous wire format: frames of a 4-byte big-endian length followed by a
//! JSON message. Every message carries the protocol version. This module has
//! the message types and a blocking codec (the worker's); the launcher reads
//! the same frames with tokio.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

pub const PROTOCOL_VERSION: u32 = 1;
/// Frames larger than this are refused without reading them.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// What a worker's preflight check measured on its device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightFigures {
    /// "cpu" or the GPU's name.
    pub device: String,
    /// A short GEMM's rate, GFLOP/s.
    pub gemm_gflops: f64,
    /// A copy's bandwidth, GB/s (host to device on a GPU, memory on the CPU).
    pub copy_gbps: f64,
    /// Why the check could not run, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Worker -> launcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First message on a control connection: join the round.
    Join {
        version: u32,
        token: String,
        round: u64,
        node_rank: u32,
        local_rank: u32,
        /// host:port where this worker accepts its ring predecessor.
        ring_addr: String,
        pid: u32,
        /// The preflight check's figures, when the launcher asked for one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preflight: Option<PreflightFigures>,
    },
    /// First message on a heartbeat connection.
    HeartbeatHello {
        version: u32,
        token: String,
        round: u64,
        node_rank: u32,
        local_rank: u32,
    },
    Heartbeat(Heartbeat),
    /// Wait until every rank of the round has reached the barrier `name`.
    Barrier {
        name: String,
    },
    KvSet {
        key: String,
        value: String,
    },
    /// Get a key, waiting up to `wait_ms` for it to be set.
    KvGet {
        key: String,
        wait_ms: u64,
    },
    /// The workload's figures, sent once before a clean exit (or before
    /// parking).
    Result {
        payload: crate::result::WorkerResult,
    },
    /// First message of a node agent (a Kubernetes pod other than the
    /// first): it starts that node's workers on the launcher's word.
    AgentHello {
        version: u32,
        /// The run's token, or the node's single-use agent token (an EC2
        /// instance's, from its user data).
        token: String,
        node: u32,
        /// The address the node's workers listen on (an instance's private
        /// IP); none: the agent's side of this connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
        /// After the launcher's `ok`, this connection carries relay frames
        /// (the launcher's `relay` module): the agent's own messages on
        /// stream 0 and each of its workers' rendezvous connections on a
        /// stream of its own, so the launcher holds one connection per
        /// node.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relay: bool,
    },
    /// Agent -> launcher: a worker it started (the launcher's id for it,
    /// from `Spawn`), and its pid there.
    AgentStarted {
        worker: u32,
        pid: u32,
    },
    /// Agent -> launcher: a worker ended (exit code, or the signal).
    AgentExited {
        worker: u32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Agent -> launcher: its pod got the scheduler's SIGTERM.
    AgentNotice,
    /// Agent -> launcher: lines a worker wrote (for its log in the
    /// launcher's run folder).
    AgentLog {
        worker: u32,
        lines: Vec<String>,
    },
    /// Stopped at a notice's agreed step with the checkpoint committed,
    /// state still in memory: wait for the launcher's word. Answered with
    /// `Rejoin` (this node survives: join the next round and continue) or
    /// `Exit` (this node is lost, or the group restarts in full).
    Park,
}

/// Progress of one rank, sent every heartbeat interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub step: u64,
    pub total_steps: u64,
    /// Collective operations completed (hang diagnosis).
    pub collectives: u64,
    pub loss: Option<f64>,
    /// Throughput of the current phase, in `rate_unit`.
    pub rate: Option<f64>,
    pub rate_unit: Option<String>,
    /// Short phase name ("gemm", "allreduce 64 MiB", "train", "command").
    pub phase: String,
    /// Inside a collective (waiting on peers) right now.
    #[serde(default)]
    pub in_collective: bool,
    /// The step this attempt started from (a resumed checkpoint's step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_step: Option<u64>,
    /// Steps per second as the worker measured them from the program's
    /// reports (since its first report): known within a few steps, long
    /// before the launcher can tell from heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_s: Option<f64>,
    /// This node's GPUs as NVML saw them, from the worker of local rank 0
    /// of a GPU job, every few seconds (sent once each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<crate::telemetry::GpuSample>,
    /// The steps whose checkpoint this rank's program committed in this
    /// attempt (`ringmaster.commit`), the newest few, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub committed: Vec<u64>,
    /// The round this rank is in, when it differs from the one its
    /// heartbeat connection greeted with (a survivor that rejoined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// This worker's rank in that round, when it differs from the one its
    /// heartbeat connection greeted with (a survivor renumbered as the
    /// world shrank or grew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// A notice this rank's watchers saw: the first preemption notice, else
    /// the latest early warning. Sent with every beat until the run ends;
    /// the launcher acts on the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<NoticeInfo>,
    /// What this rank wants on the run's timeline since its last beat (a
    /// skipped checkpoint, a watcher's health); each is sent once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<WorkerNote>,
}

/// Something a rank wants on the run's timeline: the launcher writes it to
/// events.jsonl (as `kind`), and a warning also to the console and to
/// report.json's warnings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerNote {
    /// An event name: "checkpoint_skipped", "watcher_ok", "watcher_failing", ...
    pub kind: String,
    pub message: String,
    pub warning: bool,
    /// Figures for the record (events.jsonl).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// Milliseconds since the Unix epoch (the wire's wall-clock times).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A preemption notice or early warning as a watcher saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeInfo {
    /// Where it came from: "aws spot/instance-action", "gcp instance/preempted", ...
    pub source: String,
    /// A notice to stop (true), or an early warning (false: AWS's rebalance
    /// recommendation, an Azure event that is not a preemption).
    pub preempt: bool,
    /// When the cloud will take the machine, if the notice says.
    pub deadline_unix_ms: Option<u64>,
    /// When the watcher saw it (wall clock of the worker's node).
    pub seen_unix_ms: u64,
    /// The notice's own words (body), for the record.
    pub detail: String,
}

/// Launcher -> worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Welcome {
        version: u32,
        round: u64,
        rank: u32,
        world_size: u32,
        /// Where the next rank (rank + 1 mod world) accepts its ring
        /// predecessor: all a ring member needs, so a welcome's size does
        /// not grow with the world (every rank's list made 10k welcomes
        /// 2 GB of JSON at 10k ranks). Empty where the rank joined without
        /// a ring (a `command` job).
        ring_next: String,
        /// Where the same local rank of the next node (rank + ranks per
        /// node) accepts: the successor in this rank's ring across nodes
        /// when the ranks of a node share memory. Empty where there is
        /// one node or one rank per node.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        lane_next: String,
        /// The rank that holds the training state in memory (a survivor
        /// of the previous round) and broadcasts it; None: rank 0 loads
        /// the newest checkpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state_from: Option<u32>,
    },
    Ok,
    /// Reply to `Park`: join round `round` with the state kept, as rank
    /// `rank` of `world_size` on node `node_rank` (another seat than the
    /// last round's where the world shrank or grew).
    Rejoin {
        round: u64,
        rank: u32,
        node_rank: u32,
        world_size: u32,
    },
    /// Reply to `Park`: exit (preempted-checkpointed).
    Exit,
    /// Launcher -> agent: start a worker with this environment. `worker`
    /// is the launcher's id for it, never reused in the run (a survivor
    /// keeps its process, and its id, when its rank changes).
    Spawn {
        worker: u32,
        env: Vec<(String, String)>,
    },
    /// Launcher -> agent: signal this worker's process group.
    Signal {
        worker: u32,
        signal: i32,
    },
    /// Launcher -> agent: the run is over; stop everything, exit `code`.
    Shutdown {
        code: i32,
    },
    /// A preemption notice, in reply to a heartbeat: stop at the next step
    /// all ranks agree on, checkpoint, and exit before `deadline_unix_ms`.
    Notice {
        deadline_unix_ms: u64,
        reason: String,
        /// For a program that reports its steps: the step every rank stops
        /// after (the launcher's pick from the ranks' reported steps).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_step: Option<u64>,
    },
    Value {
        value: Option<String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadToken,
    BadVersion,
    StaleRound,
    Duplicate,
    UnknownMember,
    Malformed,
    TooLarge,
    Protocol,
    Timeout,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(u32),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Encode one message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("wire messages serialise");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg))?;
    w.flush()?;
    Ok(())
}

pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    // Grown as the bytes arrive: a peer that announces 1 MiB and sends
    // ten bytes costs ten bytes, not a megabyte.
    let mut body = Vec::new();
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len as usize {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let msgs = vec![
            Request::Join {
                version: PROTOCOL_VERSION,
                token: "t".into(),
                round: 0,
                node_rank: 1,
                local_rank: 0,
                ring_addr: "127.0.0.3:4000".into(),
                pid: 7,
                preflight: None,
            },
            Request::Join {
                version: PROTOCOL_VERSION,
                token: "t".into(),
                round: 1,
                node_rank: 0,
                local_rank: 1,
                ring_addr: String::new(),
                pid: 8,
                preflight: Some(PreflightFigures {
                    device: "NVIDIA H200".into(),
                    gemm_gflops: 650_000.0,
                    copy_gbps: 24.5,
                    error: None,
                }),
            },
            Request::Heartbeat(Heartbeat {
                step: 3,
                total_steps: 9,
                loss: Some(0.5),
                ..Default::default()
            }),
            Request::Barrier { name: "b".into() },
        ];
        for m in msgs {
            let bytes = encode(&m);
            let back: Request = read_frame(&mut &bytes[..]).unwrap();
            assert_eq!(back, m);
        }
        // A join without the check's figures leaves the field out.
        let plain = serde_json::to_string(&Request::Join {
            version: PROTOCOL_VERSION,
            token: "t".into(),
            round: 0,
            node_rank: 0,
            local_rank: 0,
            ring_addr: String::new(),
            pid: 1,
            preflight: None,
        })
        .unwrap();
        assert!(!plain.contains("preflight"), "{plain}");
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut big = (MAX_FRAME_BYTES + 1).to_be_bytes().to_vec();
        big.extend_from_slice(b"xx");
        assert!(matches!(
            read_frame::<Request>(&mut &big[..]),
            Err(FrameError::TooLarge(_))
        ));
        let mut bad = 3u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{{{");
        assert!(matches!(
            read_frame::<Request>(&mut &bad[..]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            read_frame::<Request>(&mut &[][..]),
            Err(FrameError::Closed)
        ));
    }
}
