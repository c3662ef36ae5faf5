//! The job spec: raw serde types (strict: unknown fields are errors), `--set`
//! overrides on the JSON tree, and `compile`, which checks every field and
//! reports every problem at once with its JSON path before anything starts.

mod capacity;
mod check;
mod compile;
mod provider;
mod workload;
pub use capacity::*;
use check::check;
pub use check::check_name;
pub use compile::*;
pub use provider::*;
pub use workload::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

pub const SPEC_VERSION: u32 = 1;

/// One training or benchmark job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job name; used in run ids and directory names ([A-Za-z0-9_.-]).
    pub name: String,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub provider: Provider,
    pub workload: Workload,
    #[serde(default)]
    pub collective: Collective,
    #[serde(default)]
    pub checkpoint: Checkpoint,
    #[serde(default)]
    pub recovery: Recovery,
    /// Cloud metadata services to watch for preemption notices.
    #[serde(default)]
    pub notices: Notices,
    /// What capacity to buy: `ringmaster plan` ranks the catalog's offers
    /// for this job. Absent: no capacity planning.
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// A short check of every device before the rendezvous completes.
    #[serde(default)]
    pub preflight: Preflight,
    /// Prometheus metrics while the run is alive.
    #[serde(default)]
    pub observability: Observability,
    /// Extra environment variables for every worker.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where run directories go (`<log_dir>/<run-id>/attempt-<n>/rank-<r>.log`).
    #[serde(default = "default_log_dir")]
    pub log_dir: String,
    /// Compute threads per worker (OMP_NUM_THREADS and the GEMM pool).
    /// Default: the machine's cores divided by the workers on it, at least 1.
    #[serde(default)]
    pub threads_per_worker: Option<u32>,
}

impl JobSpec {
    /// Whether the job's nodes are processes on this one machine (local
    /// and simulated nodes): then its workers share this machine's cores,
    /// memory and GPUs.
    pub fn nodes_on_one_machine(&self) -> bool {
        matches!(self.provider, Provider::Local { .. } | Provider::Sim { .. })
    }

    /// The workers that run on one machine: all of them when the nodes are
    /// this machine, else one node's.
    pub fn workers_per_machine(&self) -> u32 {
        let r = &self.resources;
        if self.nodes_on_one_machine() {
            r.nodes * r.devices_per_node
        } else {
            r.devices_per_node
        }
    }
}

fn default_log_dir() -> String {
    "runs".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// Number of nodes (machines, or logical nodes for the local provider).
    pub nodes: u32,
    /// Workers per node: one per device.
    pub devices_per_node: u32,
    /// "cpu", "auto", or a GPU model ("cuda", "h100", "a100", ...).
    pub accelerator: String,
    /// Elastic world (`sim`, `aws`): when a lost node gets no replacement
    /// within `provider.capacity_wait_s` (no spot capacity), the run goes
    /// on with the nodes it has, down to this many, instead of ending with
    /// exit 9; it grows back at a later restart once capacity returns.
    /// Unset: `nodes` (a fixed world).
    pub min_nodes: Option<u32>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            nodes: 1,
            devices_per_node: 1,
            accelerator: "cpu".into(),
            min_nodes: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Auto,
    Tcp,
    Nccl,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Collective {
    pub backend: Backend,
    /// Limit on every socket operation; a dead peer is an error after this.
    pub timeout_s: f64,
    /// Pipelining unit of the ring.
    pub chunk_bytes: u64,
    /// Large all-reduces go round the ring in slices of this size, so data
    /// reduced in one phase is still in cache for the next.
    pub slice_bytes: u64,
    /// SO_SNDBUF / SO_RCVBUF of ring sockets.
    pub socket_buffer_bytes: u64,
    /// Ranks of one node exchange through shared memory (a file in
    /// /dev/shm): reduce within the node, one ring per local rank across
    /// the nodes, copy back within the node (hierarchical, as NCCL moves
    /// data within a node). False: one TCP ring through every rank.
    /// Only where a node has more than one rank on the TCP backend.
    pub shared_memory: bool,
    /// The unit the shared-memory path stages data in: each local rank's
    /// slot (two sets of them: /dev/shm holds 2 x ranks per node x this).
    pub shm_chunk_bytes: u64,
}

impl Default for Collective {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            timeout_s: 60.0,
            chunk_bytes: 256 << 10,
            slice_bytes: 4 << 20,
            socket_buffer_bytes: 4 << 20,
            shared_memory: true,
            shm_chunk_bytes: 2 << 20,
        }
    }
}

/// Before the first step, every worker runs a short GEMM and a copy on its
/// device (cuBLAS and a host-to-device copy on a GPU; the `gemm` crate and
/// a memory copy on the CPU) and reports the figures with its join; the
/// launcher holds the rendezvous until it has compared them. A rank far
/// below the median marks its node slow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Preflight {
    /// Absent: on for GPU jobs, off on the CPU.
    pub enabled: Option<bool>,
    /// A rank whose GEMM rate or copy bandwidth is below this fraction of
    /// the median over all ranks is slow.
    pub min_ratio: f64,
    pub on_slow: OnSlow,
}

impl Default for Preflight {
    fn default() -> Self {
        Self {
            enabled: None,
            min_ratio: 0.5,
            on_slow: OnSlow::Warn,
        }
    }
}

/// What the launcher serves for Prometheus while a run is alive.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Observability {
    /// Serve `/metrics` (Prometheus text format) on this address, e.g.
    /// "127.0.0.1:9400" or "0.0.0.0:9400" (port 0: any free port, said in
    /// events.jsonl). Absent: no endpoint.
    pub metrics_addr: Option<String>,
}

/// What a slow node (or one whose check failed) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnSlow {
    /// Say so (console, events.jsonl, report warnings) and run.
    #[default]
    Warn,
    /// Stop before the first step, exit 10 (preflight-failed), naming the nodes.
    Fail,
    /// Retire the node and start on a replacement, where the provider
    /// replaces nodes (`sim`); elsewhere as `fail`.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Checkpoint {
    pub dir: Option<String>,
    /// 0 disables periodic checkpoints.
    pub every_steps: u64,
    pub keep: u32,
    /// Periodic checkpoints copy the state and write it on a background
    /// thread while training goes on (at most one write in flight).
    pub async_write: bool,
    /// Resume from a checkpoint of another training (one whose model
    /// shape, seed, data recipe or optimizer differ: its manifest's
    /// `identity`), on purpose. Default false: such a checkpoint stops the
    /// run before anything starts (exit 7), naming both values.
    pub allow_identity_mismatch: bool,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self {
            dir: None,
            every_steps: 0,
            keep: 3,
            async_write: false,
            allow_identity_mismatch: false,
        }
    }
}

/// Preemption-notice watchers. On every node, the worker of local rank 0
/// polls each listed metadata service; a notice stops the group at an
/// agreed step with a checkpoint, as SIGUSR1 does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Notices {
    pub watch: Vec<NoticeSource>,
    /// How often the AWS and Azure services are polled (GCP long-polls).
    /// Default 500 ms, so a notice is seen within 1 s.
    pub poll_interval_ms: Option<u64>,
    /// The signal a `command` job's program gets on a notice, sent to the
    /// program's own process only (not its group: DataLoader workers and
    /// other children are left alone), once, with the notice's details in
    /// the file named by RINGMASTER_NOTICE_FILE: "SIGTERM" (default, what
    /// torchrun-style programs handle), "SIGUSR1", "SIGUSR2", "SIGINT", or
    /// "none" (the program is not told; it is stopped at the deadline).
    pub program_signal: Option<String>,
}

/// The signals a program may be told a notice with.
pub const PROGRAM_SIGNALS: [(&str, i32); 4] = [
    ("SIGTERM", 15),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGINT", 2),
];

impl Notices {
    pub const DEFAULT_POLL_MS: u64 = 500;
    pub fn poll_interval_ms(&self) -> u64 {
        self.poll_interval_ms.unwrap_or(Self::DEFAULT_POLL_MS)
    }
    /// The program's notice signal as a number (None: "none", or a name
    /// `compile` refused).
    pub fn program_signal(&self) -> Option<i32> {
        let name = self.program_signal.as_deref().unwrap_or("SIGTERM");
        PROGRAM_SIGNALS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
    }
}

/// One metadata service. `endpoint` is the base URL (plain http); by
/// default the standard one: AWS_EC2_METADATA_SERVICE_ENDPOINT or
/// http://169.254.169.254 (AWS), GCE_METADATA_HOST or
/// metadata.google.internal (GCP), http://169.254.169.254 (Azure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "cloud", rename_all = "lowercase", deny_unknown_fields)]
pub enum NoticeSource {
    /// EC2 IMDSv2: spot/instance-action (notice) and
    /// events/recommendations/rebalance (early warning).
    Aws {
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// Compute Engine: instance/preempted, long-polled.
    Gcp {
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// Azure Scheduled Events: Preempt/Terminate for this VM.
    Azure {
        #[serde(default)]
        endpoint: Option<String>,
        /// This VM's name as Scheduled Events lists it; default: asked of
        /// the instance metadata service.
        #[serde(default)]
        vm_name: Option<String>,
    },
}

impl NoticeSource {
    pub fn cloud(&self) -> Cloud {
        match self {
            NoticeSource::Aws { .. } => Cloud::Aws,
            NoticeSource::Gcp { .. } => Cloud::Gcp,
            NoticeSource::Azure { .. } => Cloud::Azure,
        }
    }
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            NoticeSource::Aws { endpoint }
            | NoticeSource::Gcp { endpoint }
            | NoticeSource::Azure { endpoint, .. } => endpoint.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Recovery {
    /// Restarts after user errors: a worker that exits non-zero on its own.
    pub max_restarts: u32,
    /// Restarts after infrastructure failures: a worker killed by a signal,
    /// a lost heartbeat, a hang, a rendezvous timeout. Default: the same
    /// number as max_restarts. Preemptions count against neither.
    pub max_infra_restarts: Option<u32>,
    /// Restarts after preemptions, where the provider replaces the lost
    /// node (`sim`); the local provider cannot, and ends the run (exit 8).
    pub max_preemptions: u32,
    pub heartbeat_interval_s: f64,
    /// A worker silent for this long is declared lost.
    pub heartbeat_timeout_s: f64,
    /// A group whose step counters do not move for this long is hung.
    pub hang_timeout_s: f64,
    pub rendezvous_timeout_s: f64,
    /// SIGTERM -> SIGKILL delay when stopping workers.
    pub grace_period_s: f64,
    /// After a preemption notice (SIGUSR1), how long workers have to reach
    /// the agreed step, checkpoint and exit before they are killed.
    pub notice_grace_s: f64,
    /// Where the provider replaces lost nodes (`sim`) and the workload is
    /// `train`: the nodes that got no notice stay up with their
    /// state in memory and rejoin with the replacement, which receives the
    /// state from them; false: the whole group restarts from the
    /// checkpoint.
    pub keep_survivors: bool,
}

impl Default for Recovery {
    fn default() -> Self {
        Self {
            max_restarts: 0,
            max_infra_restarts: None,
            max_preemptions: 10,
            heartbeat_interval_s: 0.5,
            heartbeat_timeout_s: 15.0,
            hang_timeout_s: 300.0,
            rendezvous_timeout_s: 30.0,
            grace_period_s: 5.0,
            notice_grace_s: 30.0,
            keep_survivors: true,
        }
    }
}

#[cfg(test)]
mod tests;
