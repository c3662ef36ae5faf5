//! report.json as types: what the launcher writes at the end of a run and
//! what its readers (the tests, a dashboard) parse. Every field is named
//! here; an unknown one is an error when it is read back.

use crate::result::WorkerResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureReport {
    pub rank: u32,
    pub node: String,
    pub local_rank: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Named meaning of the exit code, where it is one of the worker's own.
    pub exit_name: Option<String>,
    pub log: String,
    pub last_lines: Vec<String>,
    /// The worker's own error file (message, step), when it wrote one.
    pub worker_error: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptReport {
    pub attempt: u32,
    /// "succeeded", "failed", "rendezvous-timeout", "heartbeat-lost", "hang", "interrupted".
    pub outcome: String,
    pub message: Option<String>,
    pub launch_to_ready_s: Option<f64>,
    pub rendezvous_s: Option<f64>,
    pub duration_s: f64,
    pub failure: Option<FailureReport>,
    /// "user", "infrastructure" (which restart budget it drew on),
    /// "preemption", or "resize" (an elastic run's stop to grow, no
    /// budget); none for a success or an interrupt.
    pub failure_kind: Option<String>,
    /// The step this attempt started from (a checkpoint's), for stepped
    /// workloads.
    pub started_at_step: Option<u64>,
    /// The furthest step any rank reported in this attempt.
    pub reached_step: Option<u64>,
    /// Work redone because of this attempt's stop: `reached_step` minus the
    /// step the next attempt (or the resumed run) started from.
    pub steps_lost: Option<u64>,
    /// Ranks in this attempt: the job's world, or fewer in an elastic run
    /// short of nodes.
    #[serde(default)]
    pub world_size: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub run_id: String,
    pub name: String,
    pub status: String,
    pub exit_code: i32,
    pub exit_name: String,
    pub message: Option<String>,
    pub provider: String,
    pub workload: String,
    pub world_size: u32,
    pub nodes: u32,
    pub devices_per_node: u32,
    pub threads_per_worker: u32,
    pub run_dir: String,
    pub started: String,
    pub duration_s: f64,
    pub restarts: u32,
    /// Restarts per failure kind: {"user": n, "infrastructure": n}.
    pub restarts_by_kind: BTreeMap<String, u32>,
    pub attempts: Vec<AttemptReport>,
    /// Each preemption's cost in time, phase by phase.
    pub preemptions: Vec<PreemptionReport>,
    /// Useful steps / steps computed, for stepped workloads.
    pub goodput: Option<Goodput>,
    /// What the nodes cost (`sim` with an offer; `aws` with a catalog offer).
    pub cost: Option<Cost>,
    /// Every cloud machine the run had (`aws`): market, zone, start, end,
    /// cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<MachineReport>,
    /// Each rank's figures from the last attempt, keyed by rank.
    pub results: BTreeMap<u32, WorkerResult>,
    pub summary: Value,
    /// The notice watchers (notices.watch) per rank: whether each ever
    /// answered and for what share of the run it did.
    pub watchers: Vec<WatcherHealth>,
    pub warnings: Vec<String>,
}

/// Where the time of one preemption went: from the notice to every worker
/// out with the checkpoint committed, then to the replacement node being
/// ready (providers that replace nodes), then to the first step done again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreemptionReport {
    /// The attempt the preemption ended.
    pub attempt: u32,
    pub source: Option<String>,
    pub notice_to_out_s: f64,
    pub out_to_replacement_s: Option<f64>,
    pub out_to_first_step_s: Option<f64>,
    /// Notice to the first step done again.
    pub total_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goodput {
    /// Steps whose work the run kept: from where it started to where it
    /// got.
    pub steps_useful: u64,
    /// Steps computed in all attempts, redone ones included.
    pub steps_computed: u64,
    pub goodput: f64,
}

/// What the nodes cost (per-second billing, in simulated time).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    pub offer: String,
    /// The policy: spot, on-demand or spot-then-on-demand.
    pub market: String,
    /// The spot price (or the on-demand one for an on-demand policy).
    pub price_per_node_hour: f64,
    pub node_hours: f64,
    pub cost_usd: f64,
    /// Node-hours and cost by market.
    pub by_market: BTreeMap<String, MarketCost>,
    /// Every VM: node, name, zone, market, simulated hours, cost.
    pub vms: Vec<VmCost>,
    /// The useful work (run time less the time preemptions took) on the
    /// same nodes bought on-demand.
    pub on_demand_equivalent_usd: f64,
    pub savings_percent: f64,
    /// Simulated seconds per real second the bill was computed at.
    pub time_scale: f64,
    /// Deadline mode's outcome (when the job has a deadline).
    pub deadline: Option<DeadlineReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketCost {
    pub node_hours: f64,
    pub cost_usd: f64,
}

impl MarketCost {
    /// The machines' hours and cost summed by market (a bill's `by_market`).
    pub fn by_market(vms: &[VmCost]) -> BTreeMap<String, MarketCost> {
        let mut out: BTreeMap<String, MarketCost> = BTreeMap::new();
        for v in vms {
            let m = out.entry(v.market.name().to_string()).or_default();
            m.node_hours += v.hours;
            m.cost_usd += v.cost_usd;
        }
        out
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmCost {
    pub node: u32,
    pub vm: String,
    pub zone: String,
    pub market: Buy,
    pub hours: f64,
    pub cost_usd: f64,
}

/// One cloud machine of the run, in report.json's `machines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineReport {
    pub node: u32,
    /// The cloud's id (i-0abc...).
    pub id: String,
    pub zone: String,
    pub market: Buy,
    /// The capacity reservation it ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// RFC 3339: the cloud's launch time, and when it was seen gone or
    /// terminated by the run (None: still running when the report was
    /// written, which `ringmaster down` is for).
    pub started: String,
    pub ended: Option<String>,
    /// The last state the cloud reported.
    pub state: String,
    /// USD per hour (spot: the zone's price from the cloud's price history
    /// where it answered, else the catalog's); None: not in the catalog.
    pub price_per_hour: Option<f64>,
    /// Where the price comes from (the cloud's price history and its time,
    /// or the catalog and its date).
    pub price_source: Option<String>,
    /// Billed per second, a minute at least.
    pub cost_usd: Option<f64>,
}

/// Deadline mode in report.json's `cost`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineReport {
    pub at_s: f64,
    pub restart_cost_s: f64,
    /// Simulated seconds from the start to the end of the run.
    pub finished_at_s: f64,
    pub met: bool,
    /// When the nodes moved to on-demand (simulated), and the slack left
    /// then; None: spot all along.
    pub moved_to_on_demand_at_s: Option<f64>,
    pub slack_at_move_s: Option<f64>,
}

/// One watcher on one rank, as report.json shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherHealth {
    pub rank: u32,
    pub watcher: String,
    /// Ever had a good answer.
    pub answered: bool,
    /// Share of the run (from its start to the report) it was answering.
    pub healthy_share: f64,
    /// The error it reported failing with last, if it did.
    pub last_error: Option<String>,
}

/// How a node is bought: what the planner prices (`capacity`) and what
/// each of the simulator's VMs was bought as (report.json's bill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Buy {
    Spot,
    OnDemand,
    Reserved1y,
    Reserved3y,
    /// AWS EC2 Capacity Blocks for ML: a fixed number of instances for a
    /// fixed time, bought ahead, not preempted.
    CapacityBlock,
    /// GCP Dynamic Workload Scheduler flex-start: queued until the
    /// capacity is free, then up to 7 days, not preempted.
    FlexStart,
    /// GCP Dynamic Workload Scheduler calendar mode: a future reservation
    /// for fixed days.
    Calendar,
    /// An on-demand capacity reservation (Azure): billed by the hour
    /// whether used or not, no term.
    CapacityReservation,
    /// Capacity the user already owns (`capacity.owned`): no extra cost.
    Owned,
}

impl Buy {
    /// The short-term reservations (`Market::ShortTerm`).
    pub const SHORT_TERM: [Buy; 4] = [
        Buy::CapacityBlock,
        Buy::FlexStart,
        Buy::Calendar,
        Buy::CapacityReservation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Buy::Spot => "spot",
            Buy::OnDemand => "on-demand",
            Buy::Reserved1y => "reserved-1y",
            Buy::Reserved3y => "reserved-3y",
            Buy::CapacityBlock => "capacity-block",
            Buy::FlexStart => "flex-start",
            Buy::Calendar => "calendar",
            Buy::CapacityReservation => "capacity-reservation",
            Buy::Owned => "owned",
        }
    }
}
