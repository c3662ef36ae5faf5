//! The simulator's bill: each VM's simulated hours at its market's price
//! of the catalog offer the nodes are billed as, by market, against what
//! the useful work would have cost on demand, and the deadline's outcome.

use super::market::{Buy, Policy};
use super::{SimError, SimNodes};
use proto::report::{Cost, DeadlineReport, MarketCost, VmCost};
use std::time::Instant;

/// The catalog offer the nodes are billed as.
#[derive(Debug, Clone)]
pub(super) struct Billing {
    pub(super) offer: crate::capacity::Offer,
}

impl Billing {
    /// USD per node-hour in `market`.
    /// The offer's price per node-hour in `market` (the simulator buys
    /// spot, whose price was checked when it started, or on demand).
    pub(super) fn price(&self, market: Buy) -> f64 {
        use crate::capacity::Priced;
        market
            .price(&self.offer.price_per_hour)
            .expect("checked when the sim started")
    }
}

/// The bill's basis: `it` from the built-in catalog, which must have a
/// spot price unless the nodes are bought on demand.
pub(super) fn billing(it: &str, policy: Policy) -> Result<Billing, SimError> {
    let cat = crate::capacity::parse_catalog(crate::capacity::BUILT_IN, "built-in catalog")
        .map_err(|m| SimError::Spec("provider.offer".into(), m))?;
    let offer = cat
        .offers
        .into_iter()
        .find(|o| o.instance_type == it)
        .ok_or_else(|| {
            SimError::Spec(
                "provider.offer".into(),
                format!("{it:?} is not in the built-in catalog (ringmaster plan lists its offers)"),
            )
        })?;
    if policy != Policy::OnDemand && offer.price_per_hour.spot.is_none() {
        return Err(SimError::Spec(
            "provider.offer".into(),
            format!("{it} has no spot price"),
        ));
    }
    Ok(Billing { offer })
}

impl SimNodes {
    /// What the nodes cost so far, with `useful_s` real seconds of useful
    /// work priced on-demand for comparison (None without an offer).
    pub(super) fn bill(&self, useful_s: f64) -> Option<Cost> {
        let b = self.billing.as_ref()?;
        let now = Instant::now();
        let vms: Vec<VmCost> = self
            .vms
            .iter()
            .map(|v| {
                let real = v.to.unwrap_or(now).saturating_duration_since(v.from);
                let hours = real.as_secs_f64() * self.time_scale / 3600.0;
                let cost = hours * b.price(v.placement.market);
                VmCost {
                    node: v.node,
                    vm: v.name.clone(),
                    zone: self.zone_name(v.placement.zone).to_string(),
                    market: v.placement.market,
                    hours,
                    cost_usd: cost,
                }
            })
            .collect();
        let cost: f64 = vms.iter().map(|v| v.cost_usd).sum();
        let hours: f64 = vms.iter().map(|v| v.hours).sum();
        let od = self.addrs.len() as f64 * useful_s * self.time_scale / 3600.0
            * b.offer.price_per_hour.on_demand;
        let policy = self.policy;
        let finished = self.sim_now();
        Some(Cost {
            deadline: self.deadline.as_ref().map(|d| DeadlineReport {
                at_s: d.at_s,
                restart_cost_s: d.restart_cost_s,
                finished_at_s: finished,
                met: finished <= d.at_s,
                moved_to_on_demand_at_s: d.switched.map(|s| s.0),
                slack_at_move_s: d.switched.map(|s| s.1),
            }),
            offer: b.offer.instance_type.clone(),
            market: policy.name().into(),
            price_per_node_hour: b.price(if policy == Policy::OnDemand {
                Buy::OnDemand
            } else {
                Buy::Spot
            }),
            node_hours: hours,
            cost_usd: cost,
            by_market: MarketCost::by_market(&vms),
            vms,
            on_demand_equivalent_usd: od,
            savings_percent: if od > 0.0 {
                100.0 * (1.0 - cost / od)
            } else {
                0.0
            },
            time_scale: self.time_scale,
        })
    }
}
