//! How capacity is bought: the planner's inputs, owned capacity, markets.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How capacity is bought. Nodes and GPUs per node come from `resources`;
/// the GPU model from `resources.accelerator` unless `gpu` names one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Offers file; default: the catalog built into ringmaster
    /// (configs/catalog.json).
    pub catalog: Option<String>,
    pub market: Market,
    /// GPU model ("h100", "a100", "l4", ...); default from
    /// resources.accelerator when that names a model.
    pub gpu: Option<String>,
    pub min_gpu_memory_gb: Option<f64>,
    /// Allowed regions; empty: all.
    pub regions: Vec<String>,
    /// Most the whole job may cost per hour (all nodes), in USD.
    pub max_price_per_hour: Option<f64>,
    /// Between nodes (multi-node jobs): "any", "rdma" (InfiniBand, EFA,
    /// RoCE) or "infiniband".
    pub interconnect: String,
    /// How long the job runs without interruptions, in hours.
    pub expected_hours: f64,
    /// Checkpoint interval, for the work a preemption loses (half of it on
    /// average).
    pub checkpoint_every_minutes: f64,
    /// From a preemption to training again (new node, load, rendezvous).
    pub recovery_minutes: f64,
    /// `plan --compare`: the work of one training step over all GPUs, in
    /// TFLOP; default for `train`: 6 x parameters x global batch.
    pub step_tflop: Option<f64>,
    /// `plan --compare`: gradient bytes all-reduced per step, in GB;
    /// default for `train`: 4 x parameters (float32).
    pub gradient_gb: Option<f64>,
    /// `plan --compare`: the share of the GPUs' peak BF16 throughput the
    /// model reaches (model FLOP utilisation).
    pub mfu: f64,
    /// `plan --compare`: the most nodes a shape may have.
    pub max_nodes: u32,
    /// Hours a year the fleet these nodes would join runs (all jobs, not
    /// only this one): a 1- or 3-year reservation is then priced at that
    /// use, the job paying its share. Unset: a reservation is priced as
    /// the whole commitment this job would have to buy.
    pub fleet_hours_per_year: Option<f64>,
    /// Capacity already bought (a reservation, nodes already paid for):
    /// it costs this job nothing extra and comes first; nodes beyond it
    /// are bought in `market`.
    pub owned: Vec<Owned>,
    /// `plan` compares three answers to spot capacity that comes and goes
    /// (wait for spot, fall back to on-demand, shrink and grow back) on
    /// this trace of the pick's spot capacity in nodes: the `sim`
    /// provider's formats (a list of {"at_s", "capacity"} changes, or a
    /// skypilot-org/spot-traces file). Unset: no comparison.
    pub spot_trace: Option<String>,
    /// What the trace's values mean, as `provider.zones[].trace_values`.
    pub spot_trace_values: super::TraceValues,
}

/// Nodes of one instance type the user already has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Owned {
    /// A catalog offer's instance type.
    pub instance_type: String,
    /// The offer's region; unset: any region the catalog has it in.
    #[serde(default)]
    pub region: Option<String>,
    /// How many such nodes are owned.
    pub nodes: u32,
    /// The reservation's id ("cr-...", a GCP reservation name), shown in
    /// the plan.
    #[serde(default)]
    pub id: Option<String>,
    /// Its last day ("YYYY-MM-DD", UTC); after it, its nodes are bought
    /// in `market`. Unset: it lasts the whole job.
    #[serde(default)]
    pub until: Option<String>,
}

impl Owned {
    /// The end of `until`'s day (23:59:59 UTC), or why it is no date.
    pub fn until_time(&self) -> Option<Result<std::time::SystemTime, String>> {
        self.until.as_ref().map(|d| {
            humantime::parse_rfc3339(&format!("{d}T23:59:59Z"))
                .map_err(|_| format!("must be a date YYYY-MM-DD, got {d:?}"))
        })
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            catalog: None,
            market: Market::SpotThenOnDemand,
            gpu: None,
            min_gpu_memory_gb: None,
            regions: vec![],
            max_price_per_hour: None,
            interconnect: "any".into(),
            expected_hours: 24.0,
            checkpoint_every_minutes: 30.0,
            recovery_minutes: 5.0,
            step_tflop: None,
            gradient_gb: None,
            mfu: 0.4,
            max_nodes: 8,
            fleet_hours_per_year: None,
            owned: vec![],
            spot_trace: None,
            spot_trace_values: super::TraceValues::Count,
        }
    }
}

/// Which markets to buy in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    Spot,
    OnDemand,
    /// 1- or 3-year reservations.
    Reserved,
    /// Short-term reservations: EC2 Capacity Blocks, GCP flex-start and
    /// calendar mode, Azure capacity reservations (the catalog's
    /// `short_term` entries).
    ShortTerm,
    /// Spot first; on-demand offers are the fallback when spot runs out.
    SpotThenOnDemand,
    /// Whatever has the lowest expected total cost, overheads included.
    Cheapest,
}
