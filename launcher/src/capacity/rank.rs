//! The planner: which offers fit a job, what each way of buying them is
//! expected to cost, in what order.

use super::*;
use proto::spec::{Capacity, Market};
use serde::Serialize;

/// What the job needs, from its spec.
#[derive(Debug, Clone)]
pub struct Request {
    pub nodes: u32,
    pub gpus_per_node: u32,
    /// GPU model, lower case; None: any.
    pub gpu: Option<String>,
    pub capacity: Capacity,
    /// When the job would start (owned reservations' end dates count from
    /// it).
    pub now: std::time::SystemTime,
}

impl Request {
    /// `accelerator` names a model unless it is cpu, cuda, gpu or auto.
    pub fn new(nodes: u32, gpus_per_node: u32, accelerator: &str, capacity: &Capacity) -> Self {
        let from_accel = Some(accelerator.to_ascii_lowercase())
            .filter(|a| !["cpu", "cuda", "gpu", "auto"].contains(&a.as_str()));
        Request {
            nodes,
            gpus_per_node,
            gpu: capacity
                .gpu
                .as_ref()
                .map(|g| g.to_ascii_lowercase())
                .or(from_accel),
            capacity: capacity.clone(),
            now: std::time::SystemTime::now(),
        }
    }

    pub(super) fn describe(&self) -> String {
        let c = &self.capacity;
        let mut s = format!(
            "{} node(s) x {} x {}",
            self.nodes,
            self.gpus_per_node,
            self.gpu
                .as_deref()
                .map(str::to_uppercase)
                .unwrap_or_else(|| "GPU".into())
        );
        if let Some(m) = c.min_gpu_memory_gb {
            s.push_str(&format!(" with >= {m} GB each"));
        }
        if self.nodes > 1 && c.interconnect != "any" {
            s.push_str(&format!(
                " and {} between nodes",
                if c.interconnect == "infiniband" {
                    "InfiniBand"
                } else {
                    "RDMA (InfiniBand, EFA, RoCE)"
                }
            ));
        }
        if c.regions.is_empty() {
            s.push_str(" in any region");
        } else {
            s.push_str(&format!(
                " in the allowed regions ({})",
                c.regions.join(", ")
            ));
        }
        if let Some(p) = c.max_price_per_hour {
            s.push_str(&format!(" for at most ${p}/h"));
        }
        s
    }
}

/// Why an offer does not fit, or None when it does (before price).
pub(super) fn misfit(o: &Offer, r: &Request) -> Option<String> {
    let c = &r.capacity;
    if let Some(g) = &r.gpu {
        if !o.gpu.eq_ignore_ascii_case(g) {
            return Some(format!("{} GPUs, not {}", o.gpu, g.to_uppercase()));
        }
    }
    if o.gpus != r.gpus_per_node {
        return Some(format!(
            "{} GPUs per instance, the job uses {} per node",
            o.gpus, r.gpus_per_node
        ));
    }
    if let Some(m) = c.min_gpu_memory_gb {
        if o.gpu_memory_gb < m {
            return Some(format!("{} GB per GPU, under {m} GB", o.gpu_memory_gb));
        }
    }
    if !c.regions.is_empty() && !c.regions.contains(&o.region) {
        return Some(format!("region {} is not allowed", o.region));
    }
    if r.nodes > 1 {
        let inter = o.interconnect.inter.to_ascii_lowercase();
        let ok = match c.interconnect.as_str() {
            "infiniband" => inter == "infiniband",
            "rdma" => ["infiniband", "efa", "roce"].contains(&inter.as_str()),
            _ => true,
        };
        if !ok {
            return Some(format!(
                "{} between instances, the job asks for {}",
                o.interconnect.inter, c.interconnect
            ));
        }
    }
    None
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub instance_type: String,
    pub region: String,
    pub reason: String,
    /// It has the GPU model asked for, and is sold in the policy's
    /// markets (the better examples in an error).
    #[serde(skip)]
    pub(super) model_ok: bool,
    #[serde(skip)]
    pub(super) sold: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    pub request: String,
    pub market: Market,
    pub candidates: Vec<Candidate>,
    pub rejected: Vec<Rejected>,
    pub reason: String,
    /// Where the pick's market fails over when a zone has no capacity:
    /// the offer's zones, then the same instance type in the other
    /// regions that fit, cheapest first.
    pub failover: Vec<String>,
}

pub(super) fn markets(m: Market) -> &'static [Buy] {
    match m {
        Market::Spot => &[Buy::Spot],
        Market::OnDemand => &[Buy::OnDemand],
        Market::Reserved => &[Buy::Reserved1y, Buy::Reserved3y],
        Market::ShortTerm => &Buy::SHORT_TERM,
        Market::SpotThenOnDemand => &[Buy::Spot, Buy::OnDemand],
        Market::Cheapest => &[
            Buy::Spot,
            Buy::OnDemand,
            Buy::Reserved1y,
            Buy::Reserved3y,
            Buy::CapacityBlock,
            Buy::FlexStart,
            Buy::Calendar,
            Buy::CapacityReservation,
        ],
    }
}

/// Filter, price and rank the catalog's offers for a request. Owned
/// capacity comes first (more owned nodes first), then (spot-then-on-demand)
/// spot before on-demand, then the expected total cost.
pub fn rank(cat: &Catalog, r: &Request) -> Result<Ranking, String> {
    let c = &r.capacity;
    for (i, e) in c.owned.iter().enumerate() {
        if !cat.offers.iter().any(|o| owns(e, o)) {
            return Err(format!(
                "capacity.owned[{i}]: no catalog offer is {}{}",
                e.instance_type,
                e.region
                    .as_ref()
                    .map(|r| format!(" in {r}"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut rejected = Vec::new();
    let mut cands = Vec::new();
    for (i, o) in cat.offers.iter().enumerate() {
        let model_ok = r.gpu.as_ref().is_none_or(|g| o.gpu.eq_ignore_ascii_case(g));
        let reject = |reason: String, sold: bool| Rejected {
            instance_type: o.instance_type.clone(),
            region: o.region.clone(),
            reason,
            model_ok,
            sold,
        };
        if let Some(reason) = misfit(o, r) {
            rejected.push(reject(reason, false));
            continue;
        }
        let own = owned_here(o, r);
        if own.nodes == r.nodes && own.hours >= c.expected_hours {
            cands.push(owned_candidate(i, o, r, &own));
            continue;
        }
        let mut why = Vec::new();
        let before = cands.len();
        for &m in markets(c.market) {
            let got = if Buy::SHORT_TERM.contains(&m) {
                short_term_candidate(i, o, m, r)
            } else {
                market_candidate(i, o, m, r, &own).map(Some)
            };
            match got {
                Ok(Some(x)) => cands.push(x),
                Ok(None) => {}
                Err(e) => why.push(e),
            }
        }
        if cands.len() == before {
            rejected.push(if why.is_empty() {
                reject(format!("not sold as {}", market_words(c.market)), false)
            } else {
                reject(why.join("; "), true)
            });
        }
    }
    if cands.is_empty() {
        let mut msg = format!("no offer has {}", r.describe());
        let near = (rejected.iter().find(|r| r.model_ok && r.sold))
            .or(rejected.iter().find(|r| r.model_ok))
            .or(rejected.first());
        if let Some(near) = near {
            msg.push_str(&format!(
                " (for example {} in {}: {})",
                near.instance_type, near.region, near.reason
            ));
        }
        return Err(msg);
    }
    // Spot-then-on-demand keeps spot first whatever the cost; otherwise
    // the expected total cost decides (ties: the lower hourly price).
    let tier = |m: Buy| match (c.market, m) {
        (Market::SpotThenOnDemand, Buy::Spot) => 0,
        (Market::SpotThenOnDemand, _) => 1,
        _ => 0,
    };
    cands.sort_by(|a, b| {
        b.owned_nodes
            .cmp(&a.owned_nodes)
            .then(tier(a.market).cmp(&tier(b.market)))
            .then(a.expected_cost.total_cmp(&b.expected_cost))
            .then(a.price_per_hour.total_cmp(&b.price_per_hour))
    });
    cands[0].role = "pick";
    if c.market == Market::SpotThenOnDemand {
        // (When nothing has spot, on-demand is the pick and has no fallback.)
        if let Some(fb) = cands.iter_mut().skip(1).find(|x| x.market == Buy::OnDemand) {
            fb.role = "fallback";
        }
    }
    let reason = why_the_pick(cat, &cands);
    let failover = failover(cat, &cands);
    Ok(Ranking {
        request: r.describe(),
        market: c.market,
        candidates: cands,
        rejected,
        reason,
        failover,
    })
}

/// The pick in words: what it is, why it comes first, what it risks.
fn why_the_pick(cat: &Catalog, cands: &[Candidate]) -> String {
    let p = &cands[0];
    let o = &cat.offers[p.offer];
    let fitting = cands
        .iter()
        .map(|x| x.offer)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let ids = if p.owned_ids.is_empty() {
        String::new()
    } else {
        format!(" ({})", p.owned_ids.join(", "))
    };
    let mut reason = if p.market == Buy::Owned {
        format!(
            "{} in {} on {}: all {} node(s) in capacity you own{ids}, at no extra cost",
            p.instance_type, o.region, o.cloud, p.owned_nodes
        )
    } else {
        let mut s = format!(
            "{} {} ({}) on {}: ",
            p.instance_type,
            p.market_label(),
            o.region,
            o.cloud
        );
        if p.owned_nodes > 0 {
            s.push_str(&format!(
                "{} node(s) in capacity you own{ids} come first, the other {} bought as {}; expected total ${:.2} over {:.1} h ({} fitting offer(s))",
                p.owned_nodes,
                p.bought_nodes,
                p.market.name(),
                p.expected_cost,
                p.expected_hours,
                fitting
            ));
        } else {
            s.push_str(&format!(
                "the lowest expected total cost (${:.2} over {:.1} h) of {} fitting offer(s)",
                p.expected_cost, p.expected_hours, fitting
            ));
        }
        s
    };
    if let Some(until) = &p.owned_until {
        reason.push_str(&format!(
            "; the owned capacity ends {until}, before the job would: its nodes are bought after that"
        ));
    }
    if p.market == Buy::Spot {
        reason.push_str(&format!(
            "; {} interruptions a month: {:.2} expected preemptions costing {:.2} h",
            o.spot_interruption.as_deref().unwrap_or("?"),
            p.expected_preemptions,
            p.expected_overhead_hours
        ));
    }
    if let (Some(term), Some(obtain)) = (p.term_hours, &p.obtain) {
        reason.push_str(&format!(
            "; {} instance(s) for {term:.0} h, not preempted ({obtain})",
            p.bought_nodes
        ));
    }
    if let Some(fb) = cands.iter().find(|x| x.role == "fallback") {
        reason.push_str(&format!(
            "; when spot capacity runs out: {} on-demand (${:.2}/h)",
            fb.instance_type, fb.price_per_hour
        ));
    }
    reason
}

/// Where the pick fails over: its offer's zones, then the same instance
/// type and market in other regions (in the ranking's order).
fn failover(cat: &Catalog, cands: &[Candidate]) -> Vec<String> {
    let p = &cands[0];
    let zones = &cat.offers[p.offer].zones;
    let mut out = Vec::new();
    if !zones.is_empty() {
        out.push(format!("{} zones {}", p.region, zones.join(", ")));
    }
    let mut seen = std::collections::BTreeSet::from([p.region.as_str()]);
    for x in cands.iter().skip(1) {
        if x.instance_type == p.instance_type && x.market == p.market && seen.insert(&x.region) {
            out.push(format!(
                "{} (${:.2}/h all nodes)",
                x.region, x.price_per_hour
            ));
        }
    }
    out
}

fn market_words(m: Market) -> &'static str {
    match m {
        Market::Spot => "spot",
        Market::OnDemand => "on-demand",
        Market::Reserved => "a 1- or 3-year reservation",
        Market::ShortTerm => "a short-term reservation",
        Market::SpotThenOnDemand => "spot or on-demand",
        Market::Cheapest => "anything",
    }
}
