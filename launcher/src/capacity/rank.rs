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

pub use proto::report::Buy;

/// Where a way of buying finds its price in the catalog.
pub trait Priced {
    fn price_field(self) -> &'static str;
    fn price(self, p: &Prices) -> Option<f64>;
}

impl Priced for Buy {
    fn price_field(self) -> &'static str {
        match self {
            Buy::Spot => "spot",
            Buy::OnDemand => "on_demand",
            Buy::Reserved1y => "reserved_1y",
            Buy::Reserved3y => "reserved_3y",
        }
    }
    fn price(self, p: &Prices) -> Option<f64> {
        match self {
            Buy::Spot => p.spot,
            Buy::OnDemand => Some(p.on_demand),
            Buy::Reserved1y => p.reserved_1y,
            Buy::Reserved3y => p.reserved_3y,
        }
    }
}

/// One way to buy the job's nodes, with its expected figures.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub offer: usize,
    pub cloud: String,
    pub region: String,
    pub instance_type: String,
    pub market: Buy,
    /// All nodes, USD per hour.
    pub price_per_hour: f64,
    pub expected_preemptions: f64,
    /// Lost work + recovery over the job, hours.
    pub expected_overhead_hours: f64,
    pub expected_hours: f64,
    pub expected_cost: f64,
    /// "pick", "fallback" (spot-then-on-demand: when spot runs out) or
    /// "alternative".
    pub role: &'static str,
    /// Which of this candidate's figures are estimates.
    pub estimated: Vec<String>,
    /// A 1- or 3-year reservation: what the whole term costs (all nodes).
    pub commitment_usd: Option<f64>,
    /// ... and how many hours of on-demand use a year that much money
    /// buys: below it, on-demand is cheaper.
    pub break_even_hours_per_year: Option<f64>,
    /// When the price was taken, and whether that is more than
    /// `STALE_AFTER_MONTHS` ago.
    pub price_as_of: String,
    pub price_stale: bool,
}

/// What buying `market` at `p` per node-hour (`job_price` for all nodes)
/// costs this job of `hours`: the expected cost, and for a reservation the
/// whole term's commitment and the use a year above which it beats
/// on-demand (`od` per node-hour). A reservation is bought for its whole
/// term: the job pays all of it, or (a fleet's yearly use given) its share.
fn what_it_costs(
    market: Buy,
    p: f64,
    job_price: f64,
    hours: f64,
    od: f64,
    c: &Capacity,
) -> (f64, Option<f64>, Option<f64>) {
    let Some(term) = term_hours(market) else {
        return (job_price * hours, None, None);
    };
    let commitment = job_price * term;
    let expected = match c.fleet_hours_per_year {
        Some(fleet) => commitment * hours / (fleet * term / 8760.0),
        None => commitment,
    };
    (expected, Some(commitment), Some(p * 8760.0 / od))
}

/// Hours in a reservation's term.
fn term_hours(m: Buy) -> Option<f64> {
    match m {
        Buy::Reserved1y => Some(8760.0),
        Buy::Reserved3y => Some(3.0 * 8760.0),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub instance_type: String,
    pub region: String,
    pub reason: String,
    /// It has the GPU model asked for (the better example in an error).
    #[serde(skip)]
    model_ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    pub request: String,
    pub market: Market,
    pub candidates: Vec<Candidate>,
    pub rejected: Vec<Rejected>,
    pub reason: String,
}

pub(super) fn markets(m: Market) -> &'static [Buy] {
    match m {
        Market::Spot => &[Buy::Spot],
        Market::OnDemand => &[Buy::OnDemand],
        Market::Reserved => &[Buy::Reserved1y, Buy::Reserved3y],
        Market::SpotThenOnDemand => &[Buy::Spot, Buy::OnDemand],
        Market::Cheapest => &[Buy::Spot, Buy::OnDemand, Buy::Reserved1y, Buy::Reserved3y],
    }
}

/// Expected preemptions, overhead hours and total hours for `nodes` nodes
/// bought in `market` for a job of `hours` uninterrupted hours.
pub fn expectations(o: &Offer, market: Buy, nodes: u32, c: &Capacity) -> (f64, f64, f64) {
    let rate = match market {
        Buy::Spot => o
            .spot_interruption
            .as_deref()
            .and_then(bracket_rate)
            .unwrap_or(0.0),
        _ => 0.0,
    };
    let preemptions = rate * nodes as f64 * c.expected_hours / HOURS_PER_MONTH;
    let per = (c.checkpoint_every_minutes / 2.0 + c.recovery_minutes) / 60.0;
    let overhead = preemptions * per;
    (preemptions, overhead, c.expected_hours + overhead)
}

/// Filter, price and rank the catalog's offers for a request.
pub fn rank(cat: &Catalog, r: &Request) -> Result<Ranking, String> {
    let c = &r.capacity;
    let mut rejected = Vec::new();
    let mut cands = Vec::new();
    for (i, o) in cat.offers.iter().enumerate() {
        let model_ok = r.gpu.as_ref().is_none_or(|g| o.gpu.eq_ignore_ascii_case(g));
        if let Some(reason) = misfit(o, r) {
            rejected.push(Rejected {
                instance_type: o.instance_type.clone(),
                region: o.region.clone(),
                reason,
                model_ok,
            });
            continue;
        }
        let mut priced = false;
        for &m in markets(c.market) {
            let Some(p) = m.price(&o.price_per_hour) else {
                continue;
            };
            let job_price = p * r.nodes as f64;
            if c.max_price_per_hour.is_some_and(|max| job_price > max) {
                continue;
            }
            priced = true;
            let (pre, over, hours) = expectations(o, m, r.nodes, c);
            let (expected_cost, commitment, break_even) =
                what_it_costs(m, p, job_price, hours, o.price_per_hour.on_demand, c);
            let field = m.price_field();
            let estimated = o
                .estimated
                .iter()
                .filter(|f| *f == field || (m == Buy::Spot && *f == "spot_interruption"))
                .cloned()
                .collect();
            cands.push(Candidate {
                offer: i,
                cloud: o.cloud.clone(),
                region: o.region.clone(),
                instance_type: o.instance_type.clone(),
                market: m,
                price_per_hour: job_price,
                expected_preemptions: pre,
                expected_overhead_hours: over,
                expected_hours: hours,
                expected_cost,
                role: "alternative",
                estimated,
                commitment_usd: commitment,
                break_even_hours_per_year: break_even,
                price_as_of: o.figure_as_of(field).to_string(),
                price_stale: months_old(o.figure_as_of(field), std::time::SystemTime::now())
                    .is_some_and(|m| m > STALE_AFTER_MONTHS),
            });
        }
        if !priced {
            rejected.push(Rejected {
                instance_type: o.instance_type.clone(),
                region: o.region.clone(),
                reason: match c.max_price_per_hour {
                    Some(max) => format!(
                        "no {} price at or under ${max}/h for {} node(s)",
                        market_words(c.market),
                        r.nodes
                    ),
                    None => format!("no {} price", market_words(c.market)),
                },
                model_ok,
            });
        }
    }
    if cands.is_empty() {
        let mut msg = format!("no offer has {}", r.describe());
        if let Some(near) = rejected.iter().find(|r| r.model_ok).or(rejected.first()) {
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
        tier(a.market)
            .cmp(&tier(b.market))
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
    let p = &cands[0];
    let o = &cat.offers[p.offer];
    let fitting = cands
        .iter()
        .map(|x| x.offer)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let mut reason = format!(
        "{} {} ({}) on {}: the lowest expected total cost (${:.2} over {:.1} h) of {} fitting offer(s)",
        p.instance_type,
        p.market.name(),
        o.region,
        o.cloud,
        p.expected_cost,
        p.expected_hours,
        fitting
    );
    if p.market == Buy::Spot {
        reason.push_str(&format!(
            "; {} interruptions a month: {:.2} expected preemptions costing {:.2} h",
            o.spot_interruption.as_deref().unwrap_or("?"),
            p.expected_preemptions,
            p.expected_overhead_hours
        ));
    }
    if let Some(fb) = cands.iter().find(|x| x.role == "fallback") {
        reason.push_str(&format!(
            "; when spot capacity runs out: {} on-demand (${:.2}/h)",
            fb.instance_type, fb.price_per_hour
        ));
    }
    Ok(Ranking {
        request: r.describe(),
        market: c.market,
        candidates: cands,
        rejected,
        reason,
    })
}

fn market_words(m: Market) -> &'static str {
    match m {
        Market::Spot => "spot",
        Market::OnDemand => "on-demand",
        Market::Reserved => "reserved",
        Market::SpotThenOnDemand => "spot or on-demand",
        Market::Cheapest => "",
    }
}

/// The ranked table, for people.
pub fn human(r: &Ranking) -> String {
    let policy = serde_json::to_value(r.market).expect("market serialises");
    let mut out = format!(
        "capacity for {} (market policy {})\n",
        r.request,
        policy.as_str().unwrap_or("?")
    );
    out.push_str(&format!(
        "{:>3}  {:<6} {:<12} {:<26} {:<12} {:>10} {:>8} {:>9} {:>8} {:>11}  {}\n",
        "#",
        "cloud",
        "region",
        "instance",
        "market",
        "$/h (all)",
        "preempt",
        "overhd h",
        "hours",
        "total $",
        ""
    ));
    for (i, c) in r.candidates.iter().enumerate() {
        let mut note = c.role.to_string();
        if let (Some(total), Some(be)) = (c.commitment_usd, c.break_even_hours_per_year) {
            note.push_str(&format!(
                " (a {} commitment of ${total:.0}; pays off above {be:.0} h/year of use)",
                c.market.name()
            ));
        }
        if !c.estimated.is_empty() {
            note.push_str(&format!(" (estimated: {})", c.estimated.join(", ")));
        }
        if c.price_stale {
            note.push_str(&format!(
                " STALE price (as of {}, over {STALE_AFTER_MONTHS} months old)",
                c.price_as_of
            ));
        }
        out.push_str(&format!(
            "{:>3}  {:<6} {:<12} {:<26} {:<12} {:>10.2} {:>8.3} {:>9.2} {:>8.1} {:>11.2}  {}\n",
            i + 1,
            c.cloud,
            c.region,
            c.instance_type,
            c.market.name(),
            c.price_per_hour,
            c.expected_preemptions,
            c.expected_overhead_hours,
            c.expected_hours,
            c.expected_cost,
            note
        ));
    }
    out.push_str(&format!("pick: {}\n", r.reason));
    let dates: std::collections::BTreeSet<&str> = r
        .candidates
        .iter()
        .map(|c| c.price_as_of.as_str())
        .collect();
    out.push_str(&format!(
        "prices as of {} (the catalog's dates; check the clouds' pages before buying)\n",
        dates.into_iter().collect::<Vec<_>>().join(", ")
    ));
    if !r.rejected.is_empty() {
        out.push_str("not considered:\n");
        for x in &r.rejected {
            out.push_str(&format!(
                "  {} ({}): {}\n",
                x.instance_type, x.region, x.reason
            ));
        }
    }
    out
}
