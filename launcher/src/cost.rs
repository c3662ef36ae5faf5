//! What a run's nodes cost, as report.json gives it: the bill per VM and
//! market, the on-demand comparison, deadline mode's outcome. Shared by the
//! providers that bill (the simulator today) and the report; it depends on
//! no provider.

use crate::sim::market::Market;
use std::collections::BTreeMap;

/// What the nodes cost (per-second billing, in simulated time).
#[derive(Debug, Clone, serde::Serialize)]
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

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MarketCost {
    pub node_hours: f64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VmCost {
    pub node: u32,
    pub vm: String,
    pub zone: String,
    pub market: Market,
    pub hours: f64,
    pub cost_usd: f64,
}

/// Deadline mode in report.json's `cost`.
#[derive(Debug, Clone, serde::Serialize)]
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
