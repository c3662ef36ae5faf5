//! Capacity planning: the offer catalog (configs/catalog.json, built in) and
//! the planner that filters offers by a job's needs, applies the market
//! policy and ranks what is left by expected total cost, preemptions and
//! their overhead included. Pure functions over data; `ringmaster plan`
//! prints the result.

use proto::spec::{Capacity, Market};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The catalog built into the binary.
pub const BUILT_IN: &str = include_str!("../../configs/catalog.json");
pub const CATALOG_FORMAT: u32 = 1;
/// Hours in an average month (interruption brackets are per month).
const HOURS_PER_MONTH: f64 = 730.0;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub format_version: u32,
    #[serde(default)]
    pub about: String,
    pub offers: Vec<Offer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    pub cloud: String,
    pub region: String,
    pub zones: Vec<String>,
    pub instance_type: String,
    pub gpu: String,
    pub gpus: u32,
    pub gpu_memory_gb: f64,
    pub gpu_bf16_tflops: f64,
    pub interconnect: Interconnect,
    pub price_per_hour: Prices,
    /// AWS Spot Instance Advisor bracket: "<5%", "5-10%", "10-15%",
    /// "15-20%", ">20%" of instances interrupted per month.
    pub spot_interruption: Option<String>,
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    /// Fields whose figures are estimates, not quoted prices.
    #[serde(default)]
    pub estimated: Vec<String>,
    /// When the catalog entry was written ("YYYY-MM").
    pub as_of: String,
    /// When a figure was taken, where it is older than `as_of`
    /// ({"on_demand": "2024-06"}).
    #[serde(default)]
    pub dates: BTreeMap<String, String>,
}

/// Months after which a price is flagged as stale.
pub const STALE_AFTER_MONTHS: i64 = 12;

impl Offer {
    /// When `field`'s figure was taken.
    pub fn figure_as_of(&self, field: &str) -> &str {
        self.dates
            .get(field)
            .map_or(self.as_of.as_str(), |d| d.as_str())
    }
}

/// Whole months from "YYYY-MM" to `now` (None: not a date).
pub fn months_old(date: &str, now: std::time::SystemTime) -> Option<i64> {
    let (y, m) = date.split_once('-')?;
    let (y, m): (i64, i64) = (y.parse().ok()?, m.get(..2).unwrap_or(m).parse().ok()?);
    let days = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64 / 86_400;
    // Months since 1970-01 for now (30.44-day months are close enough).
    let now_months = (days as f64 / 30.436_875) as i64;
    Some(now_months - ((y - 1970) * 12 + (m - 1)))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interconnect {
    /// Between the GPUs of one instance: NVSwitch, NVLink, PCIe.
    pub intra: String,
    pub intra_gb_per_s: f64,
    /// Between instances: InfiniBand, EFA, RoCE, GPUDirect-TCPX, Ethernet.
    pub inter: String,
    pub inter_gbit_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub on_demand: f64,
    pub spot: Option<f64>,
    pub reserved_1y: Option<f64>,
    pub reserved_3y: Option<f64>,
}

/// Monthly interruption rate for a bracket: its midpoint (25% for >20%).
pub fn bracket_rate(bracket: &str) -> Option<f64> {
    Some(match bracket {
        "<5%" => 0.025,
        "5-10%" => 0.075,
        "10-15%" => 0.125,
        "15-20%" => 0.175,
        ">20%" => 0.25,
        _ => return None,
    })
}

/// Parse and check a catalog; every problem names the offer and field.
pub fn parse_catalog(text: &str, origin: &str) -> Result<Catalog, String> {
    let cat: Catalog = serde_json::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    if cat.format_version != CATALOG_FORMAT {
        return Err(format!(
            "{origin}: format_version {} is not {CATALOG_FORMAT}",
            cat.format_version
        ));
    }
    let mut problems = Vec::new();
    for (i, o) in cat.offers.iter().enumerate() {
        let at = format!("{origin}: offers[{i}] ({})", o.instance_type);
        let p = &o.price_per_hour;
        for (field, v) in [
            ("on_demand", Some(p.on_demand)),
            ("spot", p.spot),
            ("reserved_1y", p.reserved_1y),
            ("reserved_3y", p.reserved_3y),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                problems.push(format!("{at}: price_per_hour.{field} must be > 0"));
            }
        }
        if o.gpus == 0 {
            problems.push(format!("{at}: gpus must be >= 1"));
        }
        if p.spot.is_some()
            && o.spot_interruption
                .as_deref()
                .and_then(bracket_rate)
                .is_none()
        {
            problems.push(format!(
                "{at}: spot_interruption must be one of <5%, 5-10%, 10-15%, 15-20%, >20% when there is a spot price, got {:?}",
                o.spot_interruption
            ));
        }
    }
    if problems.is_empty() {
        Ok(cat)
    } else {
        Err(problems.join("\n"))
    }
}

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

    fn describe(&self) -> String {
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
fn misfit(o: &Offer, r: &Request) -> Option<String> {
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

fn markets(m: Market) -> &'static [Buy] {
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

/// The work of one training step, for `plan --compare`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepWork {
    /// Over all GPUs, TFLOP.
    pub tflop: f64,
    /// All-reduced per step, GB.
    pub gradient_gb: f64,
}

/// One shape (an offer times a number of nodes) and its modelled step.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub cloud: String,
    pub region: String,
    pub instance_type: String,
    pub nodes: u32,
    pub gpus: u32,
    pub gpu: String,
    pub market: Buy,
    /// All nodes, USD per hour.
    pub price_per_hour: f64,
    pub compute_s: f64,
    pub allreduce_s: f64,
    pub step_s: f64,
    pub usd_per_1000_steps: f64,
}

/// The modelled time of one step on `nodes` nodes of offer `o`: compute at
/// `mfu` of the GPUs' peak BF16 rate, then a ring all-reduce of the
/// gradient (2(n-1)/n of it crosses the slowest link: NVLink/NVSwitch or
/// PCIe inside one node; between nodes the node's network, in GB/s), with no
/// overlap of the two. Deliberately simple, and documented as such.
pub fn model_step(o: &Offer, nodes: u32, work: StepWork, mfu: f64) -> (f64, f64) {
    let g = (nodes * o.gpus) as f64;
    let compute = work.tflop / (g * o.gpu_bf16_tflops * mfu);
    let bw = if nodes == 1 {
        o.interconnect.intra_gb_per_s
    } else {
        o.interconnect
            .intra_gb_per_s
            .min(o.interconnect.inter_gbit_per_s / 8.0)
    };
    let allreduce = if g > 1.0 {
        2.0 * (g - 1.0) / g * work.gradient_gb / bw
    } else {
        0.0
    };
    (compute, allreduce)
}

/// `plan --compare`: every shape of the offers that have the GPU model,
/// memory and region asked for and room for a data-parallel replica
/// (weights, gradient, momentum: 3 x the gradient) in each GPU's memory
/// (1..=max_nodes nodes of one offer; the interconnect requirement applies
/// to multi-node shapes), priced in the first market of the policy the
/// offer has, ranked by cost per step.
pub fn compare(cat: &Catalog, r: &Request, work: StepWork) -> Result<Vec<Shape>, String> {
    let c = &r.capacity;
    let mut shapes = Vec::new();
    for o in &cat.offers {
        for nodes in 1..=c.max_nodes {
            let probe = Request {
                nodes,
                gpus_per_node: o.gpus,
                gpu: r.gpu.clone(),
                capacity: c.clone(),
            };
            // Data parallel: every GPU holds weights, gradient and momentum
            // (3 x the gradient's size); shapes whose GPUs cannot are out.
            if misfit(o, &probe).is_some() || 3.0 * work.gradient_gb > o.gpu_memory_gb {
                continue;
            }
            let Some((market, price)) = markets(c.market)
                .iter()
                .find_map(|m| m.price(&o.price_per_hour).map(|p| (*m, p)))
            else {
                continue;
            };
            let job_price = price * nodes as f64;
            if c.max_price_per_hour.is_some_and(|max| job_price > max) {
                continue;
            }
            let (compute, allreduce) = model_step(o, nodes, work, c.mfu);
            let step = compute + allreduce;
            shapes.push(Shape {
                cloud: o.cloud.clone(),
                region: o.region.clone(),
                instance_type: o.instance_type.clone(),
                nodes,
                gpus: nodes * o.gpus,
                gpu: o.gpu.clone(),
                market,
                price_per_hour: job_price,
                compute_s: compute,
                allreduce_s: allreduce,
                step_s: step,
                usd_per_1000_steps: job_price * step / 3600.0 * 1000.0,
            });
        }
    }
    if shapes.is_empty() {
        return Err(format!(
            "no offer has {}",
            Request {
                gpus_per_node: 0,
                ..r.clone()
            }
            .describe()
            .replacen("x 0 x ", "x any number of ", 1)
        ));
    }
    shapes.sort_by(|a, b| {
        a.usd_per_1000_steps
            .total_cmp(&b.usd_per_1000_steps)
            .then(a.step_s.total_cmp(&b.step_s))
    });
    Ok(shapes)
}

/// The compare table, for people.
pub fn human_compare(shapes: &[Shape], work: StepWork, mfu: f64, top: usize) -> String {
    let mut out = format!(
        "shapes by cost per step ({:.3} TFLOP and {:.3} GB of gradient per step, {:.0}% MFU, compute then ring all-reduce, no overlap; GPUs with room for 3x the gradient)\n",
        work.tflop,
        work.gradient_gb,
        mfu * 100.0
    );
    out.push_str(&format!(
        "{:>3}  {:<6} {:<30} {:>5} {:<6} {:<10} {:>9} {:>9} {:>10} {:>9} {:>12}\n",
        "#",
        "cloud",
        "shape",
        "GPUs",
        "GPU",
        "market",
        "$/h",
        "step s",
        "allreduce",
        "steps/h",
        "$/1000 steps"
    ));
    for (i, s) in shapes.iter().take(top).enumerate() {
        out.push_str(&format!(
            "{:>3}  {:<6} {:<30} {:>5} {:<6} {:<10} {:>9.2} {:>9.4} {:>10.4} {:>9.0} {:>12.3}\n",
            i + 1,
            s.cloud,
            format!("{} x {}", s.nodes, s.instance_type),
            s.gpus,
            s.gpu,
            s.market.name(),
            s.price_per_hour,
            s.step_s,
            s.allreduce_s,
            3600.0 / s.step_s,
            s.usd_per_1000_steps
        ));
    }
    if shapes.len() > top {
        out.push_str(&format!(
            "... {} more (--json lists all)\n",
            shapes.len() - top
        ));
    }
    let fastest = shapes
        .iter()
        .min_by(|a, b| a.step_s.total_cmp(&b.step_s))
        .expect("not empty");
    out.push_str(&format!(
        "cheapest per step: {} x {} ({}); fastest: {} x {} ({:.4} s per step)\n",
        shapes[0].nodes,
        shapes[0].instance_type,
        shapes[0].market.name(),
        fastest.nodes,
        fastest.instance_type,
        fastest.step_s
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small fixed catalog: two H100 x8 offers (one with InfiniBand, one
    /// with EFA), an A100 x1 and an L4 x1 without spot.
    fn catalog() -> Catalog {
        let o = |it: &str,
                 region: &str,
                 gpu: &str,
                 n: u32,
                 mem: f64,
                 inter: &str,
                 od: f64,
                 spot: Option<f64>,
                 b: Option<&str>| Offer {
            cloud: "test".into(),
            region: region.into(),
            zones: vec![format!("{region}-a")],
            instance_type: it.into(),
            gpu: gpu.into(),
            gpus: n,
            gpu_memory_gb: mem,
            gpu_bf16_tflops: 100.0,
            interconnect: Interconnect {
                intra: "NVSwitch".into(),
                intra_gb_per_s: 900.0,
                inter: inter.into(),
                inter_gbit_per_s: 400.0,
            },
            price_per_hour: Prices {
                on_demand: od,
                spot,
                reserved_1y: Some(od * 0.6),
                reserved_3y: None,
            },
            spot_interruption: b.map(str::to_string),
            sources: BTreeMap::new(),
            estimated: vec!["spot".into()],
            as_of: "2026-11".into(),
            dates: BTreeMap::new(),
        };
        Catalog {
            format_version: 1,
            about: String::new(),
            offers: vec![
                o(
                    "ib8",
                    "r1",
                    "H100",
                    8,
                    80.0,
                    "InfiniBand",
                    100.0,
                    Some(45.0),
                    Some(">20%"),
                ),
                o(
                    "efa8",
                    "r2",
                    "H100",
                    8,
                    80.0,
                    "EFA",
                    90.0,
                    Some(45.0),
                    Some("<5%"),
                ),
                o(
                    "a100x1",
                    "r1",
                    "A100",
                    1,
                    40.0,
                    "Ethernet",
                    4.0,
                    Some(1.5),
                    Some("5-10%"),
                ),
                o("l4x1", "r2", "L4", 1, 24.0, "Ethernet", 0.7, None, None),
            ],
        }
    }

    fn req(nodes: u32, gpus: u32, accel: &str, f: impl FnOnce(&mut Capacity)) -> Request {
        let mut c = Capacity::default();
        f(&mut c);
        Request::new(nodes, gpus, accel, &c)
    }

    #[test]
    fn the_pick_the_fallback_and_the_misfits() {
        // (request, expected pick (instance, market), expected fallback)
        let table: Vec<(Request, (&str, Buy), Option<&str>)> = vec![
            // Spot first: the same spot price, but efa8 is interrupted far
            // less, so its expected total is lower; on-demand efa8 is the
            // cheaper fallback.
            (req(2, 8, "h100", |_| {}), ("efa8", Buy::Spot), Some("efa8")),
            // InfiniBand required between nodes: only ib8 fits.
            (
                req(2, 8, "h100", |c| c.interconnect = "infiniband".into()),
                ("ib8", Buy::Spot),
                Some("ib8"),
            ),
            // One node needs no interconnect; on-demand only.
            (
                req(1, 8, "h100", |c| c.market = Market::OnDemand),
                ("efa8", Buy::OnDemand),
                None,
            ),
            // Reserved: the 1-year price of the cheaper offer.
            (
                req(1, 8, "h100", |c| c.market = Market::Reserved),
                ("efa8", Buy::Reserved1y),
                None,
            ),
            // Cheapest across markets for one A100.
            (
                req(1, 1, "a100", |c| c.market = Market::Cheapest),
                ("a100x1", Buy::Spot),
                None,
            ),
            // No spot for L4: on-demand is the pick, with no fallback.
            (req(1, 1, "l4", |_| {}), ("l4x1", Buy::OnDemand), None),
            // A price cap leaves only what fits under it (2 x $100 > $190).
            (
                req(2, 8, "cuda", |c| {
                    c.max_price_per_hour = Some(190.0);
                    c.market = Market::OnDemand
                }),
                ("efa8", Buy::OnDemand),
                None,
            ),
        ];
        for (i, (r, (inst, market), fallback)) in table.into_iter().enumerate() {
            let got = rank(&catalog(), &r).unwrap_or_else(|e| panic!("row {i}: {e}"));
            let pick = &got.candidates[0];
            assert_eq!(
                (pick.instance_type.as_str(), pick.market, pick.role),
                (inst, market, "pick"),
                "row {i}: {}",
                got.reason
            );
            let fb = got
                .candidates
                .iter()
                .find(|c| c.role == "fallback")
                .map(|c| c.instance_type.as_str());
            assert_eq!(fb, fallback, "row {i}");
            assert!(got.reason.contains(inst), "row {i}: {}", got.reason);
        }
    }

    #[test]
    fn a_reservation_is_priced_as_the_commitment_it_is() {
        // (expected hours, fleet hours a year, pick's market, the 1-year
        // reservation's expected cost for 2 x ib8 at $60/h each)
        let table: &[(f64, Option<f64>, Buy, f64)] = &[
            // A 48 h job would buy a whole year: on-demand wins.
            (48.0, None, Buy::OnDemand, 120.0 * 8760.0),
            // A fleet busy 8000 h a year: the job pays its 48 h share.
            (
                48.0,
                Some(8000.0),
                Buy::Reserved1y,
                120.0 * 8760.0 * 48.0 / 8000.0,
            ),
        ];
        for (hours, fleet, pick, cost) in table {
            let r = rank(
                &catalog(),
                &req(2, 8, "h100", |c| {
                    c.market = Market::Cheapest;
                    c.interconnect = "infiniband".into();
                    c.expected_hours = *hours;
                    c.fleet_hours_per_year = *fleet;
                }),
            )
            .unwrap();
            let non_spot: Vec<_> = r
                .candidates
                .iter()
                .filter(|c| c.market != Buy::Spot)
                .collect();
            assert_eq!(non_spot[0].market, *pick, "{hours} h, fleet {fleet:?}");
            let res = r
                .candidates
                .iter()
                .find(|c| c.market == Buy::Reserved1y)
                .unwrap();
            assert!(
                (res.expected_cost - cost).abs() < 1e-6,
                "{}",
                res.expected_cost
            );
            assert_eq!(res.commitment_usd, Some(120.0 * 8760.0));
            // $60/h all year = $100/h on demand for 5256 h.
            assert!((res.break_even_hours_per_year.unwrap() - 5256.0).abs() < 1e-6);
        }
    }

    #[test]
    fn old_prices_are_flagged_with_their_date() {
        let mut cat = catalog();
        cat.offers[0]
            .dates
            .insert("on_demand".into(), "2024-06".into());
        let r = rank(
            &cat,
            &req(2, 8, "h100", |c| {
                c.market = Market::OnDemand;
                c.interconnect = "infiniband".into();
            }),
        )
        .unwrap();
        assert_eq!(r.candidates[0].price_as_of, "2024-06");
        assert!(r.candidates[0].price_stale);
        let text = human(&r);
        assert!(text.contains("STALE price (as of 2024-06"), "{text}");
        assert!(text.contains("not considered:\n  efa8 (r2): "), "{text}");
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_209_952);
        assert_eq!(months_old("2026-11", now), Some(1));
        assert_eq!(months_old("2024-06", now), Some(30));
        assert_eq!(months_old("junk", now), None);
    }

    #[test]
    fn offers_that_do_not_fit_are_rejected_with_their_reason() {
        let got = rank(
            &catalog(),
            &req(2, 8, "h100", |c| c.regions = vec!["r2".into()]),
        )
        .unwrap();
        let reasons: BTreeMap<_, _> = got
            .rejected
            .iter()
            .map(|r| (r.instance_type.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(reasons["ib8"], "region r1 is not allowed");
        assert_eq!(reasons["a100x1"], "A100 GPUs, not H100");
        assert!(got.candidates.iter().all(|c| c.instance_type == "efa8"));
    }

    #[test]
    fn impossible_requests_are_clear_errors() {
        let e = rank(
            &catalog(),
            &req(2, 8, "h100", |c| {
                c.interconnect = "infiniband".into();
                c.regions = vec!["r2".into()]
            }),
        )
        .unwrap_err();
        assert!(e.starts_with("no offer has 2 node(s) x 8 x H100 and InfiniBand between nodes in the allowed regions (r2)"), "{e}");
        let e = rank(&catalog(), &req(1, 4, "a100", |_| {})).unwrap_err();
        assert!(
            e.contains("no offer has 1 node(s) x 4 x A100")
                && e.contains("a100x1 in r1: 1 GPUs per instance, the job uses 4"),
            "{e}"
        );
        let e = rank(&catalog(), &req(1, 1, "l4", |c| c.market = Market::Spot)).unwrap_err();
        assert!(e.contains("no spot price"), "{e}");
    }

    #[test]
    fn expected_preemptions_follow_the_bracket() {
        let cat = catalog();
        let c = Capacity {
            expected_hours: 730.0,
            checkpoint_every_minutes: 60.0,
            recovery_minutes: 30.0,
            ..Capacity::default()
        };
        // >20% a month (25%) on 2 nodes for a month: 0.5 preemptions, each
        // losing half an hour of work and half an hour of recovery.
        let (pre, over, hours) = expectations(&cat.offers[0], Buy::Spot, 2, &c);
        assert!(
            (pre - 0.5).abs() < 1e-9 && (over - 0.5).abs() < 1e-9 && (hours - 730.5).abs() < 1e-9
        );
        assert_eq!(expectations(&cat.offers[0], Buy::OnDemand, 2, &c).0, 0.0);
    }

    #[test]
    fn the_step_model_and_the_compare_ranking() {
        let cat = catalog();
        let work = StepWork {
            tflop: 100.0,
            gradient_gb: 1.0,
        };
        // One node of 8 GPUs at 100 TFLOP/s, MFU 0.5: 100 / (8 x 100 x 0.5)
        // = 0.25 s; all-reduce 2 x 7/8 x 1 GB / 900 GB/s.
        let (compute, ar) = model_step(&cat.offers[0], 1, work, 0.5);
        assert!((compute - 0.25).abs() < 1e-12);
        assert!((ar - 2.0 * 7.0 / 8.0 / 900.0).abs() < 1e-12);
        // Two nodes: 16 GPUs, the 400 Gbit/s network (50 GB/s) is the link.
        let (compute, ar) = model_step(&cat.offers[0], 2, work, 0.5);
        assert!((compute - 0.125).abs() < 1e-12);
        assert!((ar - 2.0 * 15.0 / 16.0 / 50.0).abs() < 1e-12);
        // A single GPU all-reduces nothing.
        assert_eq!(model_step(&cat.offers[2], 1, work, 0.5).1, 0.0);

        let r = req(1, 8, "h100", |c| {
            c.market = Market::OnDemand;
            c.max_nodes = 2;
        });
        let shapes = compare(&cat, &r, work).unwrap();
        // H100 offers only, 1 and 2 nodes each, cost per step ascending.
        assert_eq!(shapes.len(), 4);
        assert!(shapes
            .windows(2)
            .all(|w| w[0].usd_per_1000_steps <= w[1].usd_per_1000_steps));
        // One node of the cheaper offer wins: the network makes two nodes
        // dearer per step.
        assert_eq!(
            (shapes[0].instance_type.as_str(), shapes[0].nodes),
            ("efa8", 1)
        );
        // A replica of 3 x 20 GB fits the 80 GB H100s, not the 40 GB A100.
        let big = StepWork {
            tflop: 1.0,
            gradient_gb: 20.0,
        };
        let shapes = compare(&cat, &req(1, 1, "cuda", |c| c.max_nodes = 1), big).unwrap();
        assert!(shapes.iter().all(|s| s.gpu == "H100"), "{shapes:?}");
        let e = compare(&cat, &req(1, 1, "v100", |_| {}), work).unwrap_err();
        assert!(
            e.starts_with("no offer has 1 node(s) x any number of V100"),
            "{e}"
        );
    }

    #[test]
    fn the_built_in_catalog_parses_and_covers_the_three_clouds() {
        let cat = parse_catalog(BUILT_IN, "configs/catalog.json").unwrap();
        for it in [
            "p5.48xlarge",
            "p4d.24xlarge",
            "g5.2xlarge",
            "g6e.4xlarge",
            "a3-highgpu-8g",
            "a2-highgpu-1g",
            "g2-standard-4",
            "Standard_ND96isr_H100_v5",
            "Standard_NC24ads_A100_v4",
        ] {
            let o = cat
                .offers
                .iter()
                .find(|o| o.instance_type == it)
                .unwrap_or_else(|| panic!("{it}"));
            assert!(o.sources.contains_key("on_demand"), "{it} names its source");
        }
        let bad = BUILT_IN.replace("\"<5%\"", "\"sometimes\"");
        let e = parse_catalog(&bad, "x").unwrap_err();
        assert!(
            e.contains("p5.48xlarge") && e.contains("spot_interruption"),
            "{e}"
        );
    }
}
