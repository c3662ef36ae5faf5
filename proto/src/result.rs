//! What a worker reports when its workload ends (the `result` message): one
//! type per workload, tagged by `kind`, written by the worker and read by
//! the launcher, which keeps them per rank in report.json's `results`.

use crate::spec::Dtype;
use crate::wire::NoticeInfo;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerResult {
    #[serde(flatten)]
    pub figures: Figures,
    /// The preemption notice this worker saw, if any (the run may stop
    /// before a heartbeat carries it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<NoticeInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Figures {
    Train(TrainResult),
    Gemm(GemmResult),
    Allreduce(AllreduceResult),
    Command(CommandResult),
}

impl WorkerResult {
    pub fn new(figures: Figures) -> WorkerResult {
        WorkerResult {
            figures,
            notice: None,
        }
    }

    /// A training's figures (None for other workloads).
    pub fn train(&self) -> Option<&TrainResult> {
        match &self.figures {
            Figures::Train(t) => Some(t),
            _ => None,
        }
    }

    /// The step the workload stopped at after a notice, if it did (a
    /// program: the last step it reported).
    pub fn preempted_at_step(&self) -> Option<u64> {
        match &self.figures {
            Figures::Train(t) => t.preempted_at_step,
            Figures::Command(c) if c.stopped_for_notice => c.last_step,
            _ => None,
        }
    }

    /// The step it reached: where it stopped, else its last.
    pub fn reached_step(&self) -> Option<u64> {
        match &self.figures {
            Figures::Train(t) => Some(t.preempted_at_step.unwrap_or(t.steps_done)),
            Figures::Command(c) => c.last_step,
            _ => None,
        }
    }

    /// A notice's stop with this rank's checkpoint committed.
    pub fn stopped_with_checkpoint(&self) -> bool {
        self.train()
            .is_some_and(|t| t.preempted && t.checkpoint_committed)
    }
}

/// `train`: one rank's figures for one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainResult {
    /// "cpu", or the GPU's name.
    pub device: String,
    pub steps: u64,
    pub steps_done: u64,
    /// How long the checkpoint at a notice's stop step took.
    pub stop_checkpoint_s: Option<f64>,
    pub params: u64,
    pub world_size: u32,
    /// Figures only for what happened: no step, no loss and no rate.
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub steps_per_s: Option<f64>,
    pub samples_per_s: Option<f64>,
    pub weights_sha256: String,
    pub resumed_from_step: u64,
    /// Where this round's state came from: a survivor's memory (this
    /// rank's own, or broadcast from `state_from_rank`), else a checkpoint
    /// (or the initial weights).
    pub state_in_memory: bool,
    pub state_from_rank: Option<u32>,
    pub preempted: bool,
    pub preempted_at_step: Option<u64>,
    pub checkpoint_committed: bool,
    pub checkpoints_written: u64,
    pub checkpoint_seconds: f64,
    pub checkpoint_async: bool,
    /// Time the training loop spent on checkpoints, per step (the stall).
    pub checkpoint_stall_per_step_s: f64,
    pub seconds_per_step: StepSeconds,
}

/// Where a step's time went, per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSeconds {
    pub data_wait: f64,
    pub forward_backward: f64,
    pub allreduce: f64,
    pub update: f64,
}

/// `command`: how the user's program ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// The program's own exit status (128+N for signal N).
    pub exit_code: i32,
    /// The last step it reported (the `ringmaster` package), if any.
    pub last_step: Option<u64>,
    /// It was told of a notice and then ended (exit 0, or by the signal
    /// it was told with).
    pub stopped_for_notice: bool,
    /// The steps whose checkpoint the program committed in this attempt
    /// (the newest few, oldest first).
    #[serde(default)]
    pub committed: Vec<u64>,
}

/// `gemm`: one rank's multiply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmResult {
    /// The GPU's name (GPU GEMM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub dtype: Dtype,
    /// The CPU threads used (CPU GEMM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u64>,
    pub iterations: u64,
    pub seconds_best: f64,
    pub seconds_mean: f64,
    pub gflops_best: f64,
    pub gflops_mean: f64,
    pub max_rel_error: f64,
}

/// `allreduce`: the sweep, one row per message size (nccl-tests' columns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllreduceResult {
    /// "nccl" on GPUs (the TCP ring otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub world_size: u64,
    pub iterations: u64,
    pub rows: Vec<AllreduceRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllreduceRow {
    pub size_bytes: u64,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    pub oop_time_us: f64,
    pub oop_algbw_gbps: f64,
    pub oop_busbw_gbps: f64,
    pub ip_time_us: f64,
    pub ip_algbw_gbps: f64,
    pub ip_busbw_gbps: f64,
    pub wrong: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON a result travels as keeps its `kind` and its notice, and
    /// comes back equal; a result of the wrong shape is an error.
    #[test]
    fn results_round_trip_and_are_checked() {
        let r = WorkerResult {
            figures: Figures::Allreduce(AllreduceResult {
                backend: None,
                world_size: 2,
                iterations: 3,
                rows: vec![AllreduceRow {
                    size_bytes: 1024,
                    count: 256,
                    dtype: Some("float".into()),
                    oop_time_us: 1.5,
                    oop_algbw_gbps: 0.7,
                    oop_busbw_gbps: 0.7,
                    ip_time_us: 1.25,
                    ip_algbw_gbps: 0.8,
                    ip_busbw_gbps: 0.8,
                    wrong: 0,
                }],
            }),
            notice: Some(NoticeInfo {
                source: "aws spot/instance-action".into(),
                preempt: true,
                deadline_unix_ms: Some(5),
                seen_unix_ms: 1,
                detail: "{}".into(),
            }),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "allreduce");
        assert_eq!(v["rows"][0]["size_bytes"], 1024);
        assert_eq!(v["notice"]["source"], "aws spot/instance-action");
        assert!(v.get("backend").is_none());
        assert_eq!(
            serde_json::from_value::<WorkerResult>(v.clone()).unwrap(),
            r
        );
        let mut bad = v.clone();
        bad["kind"] = "fft".into();
        assert!(serde_json::from_value::<WorkerResult>(bad).is_err());
        let mut bad = v;
        bad["rows"][0]["wrong"] = "none".into();
        assert!(serde_json::from_value::<WorkerResult>(bad).is_err());
        assert_eq!(r.preempted_at_step(), None);
        assert!(!r.stopped_with_checkpoint());
    }
}
