//! What one way of buying an offer costs a job: the markets (spot,
//! on-demand, 1- and 3-year reservations), short-term reservations and
//! capacity the user owns. Each makes one `Candidate`.

use super::*;
use proto::spec::Capacity;
use serde::Serialize;
use std::time::SystemTime;

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
            // Short-term reservations and owned capacity have no field in
            // `Prices` (a reservation's price is in its `short_term` entry).
            _ => "",
        }
    }
    /// Short-term reservations are priced by the offer's `short_term`
    /// entries (`Offer::hourly`), owned capacity costs nothing.
    fn price(self, p: &Prices) -> Option<f64> {
        match self {
            Buy::Spot => p.spot,
            Buy::OnDemand => Some(p.on_demand),
            Buy::Reserved1y => p.reserved_1y,
            Buy::Reserved3y => p.reserved_3y,
            _ => None,
        }
    }
}

impl Offer {
    /// The short-term reservation of kind `m` this offer is sold as.
    pub fn short_term_of(&self, m: Buy) -> Option<&ShortTerm> {
        self.short_term.iter().find(|t| t.kind == m)
    }

    /// The price per instance-hour of buying this offer as `m`.
    pub fn hourly(&self, m: Buy) -> Option<f64> {
        m.price(&self.price_per_hour)
            .or_else(|| self.short_term_of(m).map(|t| t.price_per_hour))
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
    /// All nodes bought (not the owned ones), USD per hour.
    pub price_per_hour: f64,
    pub expected_preemptions: f64,
    /// Lost work + recovery over the job, hours.
    pub expected_overhead_hours: f64,
    pub expected_hours: f64,
    pub expected_cost: f64,
    /// Spot: preemptions and cost at the bounds of the offer's monthly
    /// interruption bracket (the expected figures use its midpoint).
    pub preemptions_range: Option<[f64; 2]>,
    pub cost_range: Option<[f64; 2]>,
    /// When the interruption bracket was taken.
    pub interruption_as_of: Option<String>,
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
    /// Nodes that run in capacity the user owns (`capacity.owned`), and
    /// the owned reservations' ids.
    pub owned_nodes: u32,
    pub owned_ids: Vec<String>,
    /// Owned hours run out before the job ends (`until`).
    pub owned_until: Option<String>,
    /// Instances paid for (a short-term reservation sold only in certain
    /// counts may hold more than the job's nodes).
    pub bought_nodes: u32,
    /// A short-term reservation: the hours bought, and how it is obtained.
    pub term_hours: Option<f64>,
    pub obtain: Option<String>,
}

impl Candidate {
    fn new(i: usize, o: &Offer, market: Buy, nodes: u32, hours: f64, as_of: &str) -> Self {
        Candidate {
            offer: i,
            cloud: o.cloud.clone(),
            region: o.region.clone(),
            instance_type: o.instance_type.clone(),
            market,
            price_per_hour: 0.0,
            expected_preemptions: 0.0,
            expected_overhead_hours: 0.0,
            expected_hours: hours,
            expected_cost: 0.0,
            preemptions_range: None,
            cost_range: None,
            interruption_as_of: None,
            role: "alternative",
            estimated: vec![],
            commitment_usd: None,
            break_even_hours_per_year: None,
            price_as_of: as_of.to_string(),
            price_stale: months_old(as_of, SystemTime::now())
                .is_some_and(|m| m > STALE_AFTER_MONTHS),
            owned_nodes: 0,
            owned_ids: vec![],
            owned_until: None,
            bought_nodes: nodes,
            term_hours: None,
            obtain: None,
        }
    }

    /// The market column: "owned+spot" where owned nodes are topped up.
    pub fn market_label(&self) -> String {
        if self.owned_nodes > 0 && self.market != Buy::Owned {
            format!("owned+{}", self.market.name())
        } else {
            self.market.name().to_string()
        }
    }
}

/// The owned capacity (`capacity.owned`) an offer has for a job: nodes
/// (at most the job's), the reservations' ids, the hours it lasts of the
/// job's expected hours, and its last day where that cuts the job short.
#[derive(Debug, Clone, Default)]
pub struct OwnedHere {
    pub nodes: u32,
    pub ids: Vec<String>,
    pub hours: f64,
    pub until: Option<String>,
}

pub fn owned_here(o: &Offer, r: &Request) -> OwnedHere {
    let c = &r.capacity;
    let mut out = OwnedHere {
        hours: c.expected_hours,
        ..OwnedHere::default()
    };
    for e in &c.owned {
        if !owns(e, o) {
            continue;
        }
        let left = match e.until_time() {
            Some(Ok(end)) => end
                .duration_since(r.now)
                .map(|d| d.as_secs_f64() / 3600.0)
                .unwrap_or(0.0),
            _ => f64::INFINITY,
        };
        if left <= 0.0 {
            // Ended already: not capacity this job has.
            continue;
        }
        out.nodes += e.nodes;
        out.ids.extend(e.id.clone());
        if left < out.hours {
            out.hours = left;
            out.until = e.until.clone();
        }
    }
    out.nodes = out.nodes.min(r.nodes);
    out
}

/// Whether an owned entry is this offer.
pub fn owns(e: &proto::spec::Owned, o: &Offer) -> bool {
    e.instance_type.eq_ignore_ascii_case(&o.instance_type)
        && e.region.as_ref().is_none_or(|reg| *reg == o.region)
}

/// All of the job's nodes in owned capacity for all of its hours.
pub fn owned_candidate(i: usize, o: &Offer, r: &Request, own: &OwnedHere) -> Candidate {
    let mut c = Candidate::new(i, o, Buy::Owned, 0, r.capacity.expected_hours, "");
    c.owned_nodes = own.nodes;
    c.owned_ids = own.ids.clone();
    c
}

/// Buying the nodes the owned capacity does not hold (all of them where
/// there is none) in a market priced per hour (spot, on-demand, 1- or
/// 3-year reservation). Owned capacity tops up only spot and on-demand
/// (a reservation's term is bought for whole nodes): for the others it
/// is left out. Err: why there is no such price.
pub fn market_candidate(
    i: usize,
    o: &Offer,
    m: Buy,
    r: &Request,
    own: &OwnedHere,
) -> Result<Candidate, String> {
    let c = &r.capacity;
    let p = m
        .price(&o.price_per_hour)
        .ok_or_else(|| format!("no {} price", m.name()))?;
    let own = if matches!(m, Buy::Spot | Buy::OnDemand) {
        own.clone()
    } else {
        OwnedHere::default()
    };
    let rest = r.nodes - own.nodes;
    // Owned nodes whose reservation ends before the job are bought for
    // the rest of the job (at the market's price, never preempted in the
    // figures: a simplification the plan states).
    let after = if own.nodes > 0 {
        p * own.nodes as f64 * (c.expected_hours - own.hours).max(0.0)
    } else {
        0.0
    };
    let job_price = p * rest as f64;
    if let Some(max) = c.max_price_per_hour {
        if job_price > max {
            return Err(format!(
                "no {} price at or under ${max}/h for {} node(s)",
                m.name(),
                rest
            ));
        }
    }
    let field = m.price_field();
    let mut cand = Candidate::new(i, o, m, rest, c.expected_hours, o.figure_as_of(field));
    let (pre, over, hours) = expectations(o, m, rest, c);
    let (cost, commitment, break_even) =
        what_it_costs(m, p, job_price, hours, o.price_per_hour.on_demand, c);
    cand.price_per_hour = job_price;
    cand.expected_preemptions = pre;
    cand.expected_overhead_hours = over;
    cand.expected_hours = hours;
    cand.expected_cost = cost + after;
    cand.commitment_usd = commitment;
    cand.break_even_hours_per_year = break_even;
    if m == Buy::Spot {
        if let Some((lo, hi)) = o.spot_interruption.as_deref().and_then(bracket_range) {
            let at = |rate: f64| {
                let (pre, _, hours) = at_rate(rate, rest, c);
                (pre, job_price * hours + after)
            };
            let ((plo, clo), (phi, chi)) = (at(lo), at(hi));
            cand.preemptions_range = Some([plo, phi]);
            cand.cost_range = Some([clo, chi]);
            cand.interruption_as_of = Some(o.figure_as_of("spot_interruption").to_string());
        }
    }
    cand.estimated = o
        .estimated
        .iter()
        .filter(|f| *f == field || (m == Buy::Spot && *f == "spot_interruption"))
        .cloned()
        .collect();
    cand.owned_nodes = own.nodes;
    cand.owned_ids = own.ids;
    cand.owned_until = own.until;
    Ok(cand)
}

/// A short-term reservation of the job's nodes for its expected hours,
/// under the reservation's rules (durations and counts sold, the margin
/// at the end). Ok(None): the offer is not sold so; Err: why it does not
/// fit.
pub fn short_term_candidate(
    i: usize,
    o: &Offer,
    m: Buy,
    r: &Request,
) -> Result<Option<Candidate>, String> {
    let c = &r.capacity;
    let Some(t) = o.short_term_of(m) else {
        return Ok(None);
    };
    let need = c.expected_hours + t.end_margin_hours;
    let longest = t.durations.last().map_or(f64::INFINITY, |d| d.up_to_hours);
    let term = t.duration_for(need).ok_or_else(|| {
        format!(
            "a {} is sold for at most {longest} h, the job needs {need} h",
            m.name()
        )
    })?;
    let count = t.count_for(r.nodes).ok_or_else(|| {
        format!(
            "a {} holds at most {} instances, the job needs {}",
            m.name(),
            t.counts.iter().max().copied().unwrap_or(0),
            r.nodes
        )
    })?;
    let job_price = t.price_per_hour * count as f64;
    if let Some(max) = c.max_price_per_hour {
        if job_price > max {
            return Err(format!(
                "no {} at or under ${max}/h for {count} instance(s)",
                m.name()
            ));
        }
    }
    let billed = if t.billed == "term" {
        term
    } else {
        c.expected_hours
    };
    let mut cand = Candidate::new(i, o, m, count, c.expected_hours, &t.as_of);
    cand.price_per_hour = job_price;
    cand.expected_cost = job_price * billed;
    cand.term_hours = Some(term);
    cand.obtain = Some(t.obtain.clone());
    if t.estimated {
        cand.estimated = vec![format!("{} price", m.name())];
    }
    Ok(Some(cand))
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

/// Hours in a 1- or 3-year reservation's term.
pub(super) fn term_hours(m: Buy) -> Option<f64> {
    match m {
        Buy::Reserved1y => Some(8760.0),
        Buy::Reserved3y => Some(3.0 * 8760.0),
        _ => None,
    }
}

/// Expected preemptions, overhead hours and total hours for `nodes` nodes
/// bought in `market` for a job of `hours` uninterrupted hours (spot: at
/// the midpoint of the offer's interruption bracket).
pub fn expectations(o: &Offer, market: Buy, nodes: u32, c: &Capacity) -> (f64, f64, f64) {
    let rate = match market {
        Buy::Spot => o
            .spot_interruption
            .as_deref()
            .and_then(bracket_rate)
            .unwrap_or(0.0),
        _ => 0.0,
    };
    at_rate(rate, nodes, c)
}

/// The same at a monthly interruption rate.
fn at_rate(rate: f64, nodes: u32, c: &Capacity) -> (f64, f64, f64) {
    let preemptions = rate * nodes as f64 * c.expected_hours / HOURS_PER_MONTH;
    let per = (c.checkpoint_every_minutes / 2.0 + c.recovery_minutes) / 60.0;
    let overhead = preemptions * per;
    (preemptions, overhead, c.expected_hours + overhead)
}
