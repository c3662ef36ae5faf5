//! The offer catalog: its format, its checks, the dates of its figures.

use proto::report::Buy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The catalog built into the binary.
pub const BUILT_IN: &str = include_str!("../../../configs/catalog.json");
pub const CATALOG_FORMAT: u32 = 1;
/// Hours in an average month (interruption brackets are per month).
pub(super) const HOURS_PER_MONTH: f64 = 730.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Short-term reservations this offer can be bought as.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub short_term: Vec<ShortTerm>,
}

/// A short-term reservation: capacity for a set time that is not
/// preempted (EC2 Capacity Blocks, GCP flex-start and calendar mode, Azure
/// capacity reservations), with the rules it is sold under.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortTerm {
    /// capacity-block, flex-start, calendar or capacity-reservation.
    pub kind: Buy,
    /// USD per instance-hour.
    pub price_per_hour: f64,
    /// The durations sold: steps of `step_hours` up to `up_to_hours`, each
    /// range starting where the one before ends (Capacity Blocks: by the
    /// day up to 14 days, then by the week up to 182). Empty: any number
    /// of whole hours.
    #[serde(default)]
    pub durations: Vec<DurationStep>,
    /// Instance counts one reservation may have (Capacity Blocks: 1, 2, 4,
    /// ..., 64); empty: any.
    #[serde(default)]
    pub counts: Vec<u32>,
    /// Hours at the end the instances cannot use (a Capacity Block's
    /// instances are terminated 30 minutes before it ends).
    #[serde(default)]
    pub end_margin_hours: f64,
    /// "term": the whole duration is paid (up front) whatever is used;
    /// "used": only the hours the nodes run.
    pub billed: String,
    /// How the capacity is obtained (lead time, queueing, cancellation).
    pub obtain: String,
    pub source: String,
    /// When the price was taken ("YYYY-MM").
    pub as_of: String,
    /// The price is an estimate, not a quoted figure.
    #[serde(default)]
    pub estimated: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationStep {
    pub up_to_hours: f64,
    pub step_hours: f64,
}

impl ShortTerm {
    /// The shortest duration sold that covers `need` hours (None: longer
    /// than the longest sold).
    pub fn duration_for(&self, need: f64) -> Option<f64> {
        if self.durations.is_empty() {
            return Some(need.ceil().max(1.0));
        }
        let mut from = 0.0;
        for s in &self.durations {
            if need <= s.up_to_hours + 1e-9 {
                let steps = ((need - from) / s.step_hours).ceil().max(1.0);
                return Some((from + steps * s.step_hours).min(s.up_to_hours));
            }
            from = s.up_to_hours;
        }
        None
    }

    /// The smallest instance count sold that holds `nodes` (None: more
    /// than one reservation may have).
    pub fn count_for(&self, nodes: u32) -> Option<u32> {
        if self.counts.is_empty() {
            return Some(nodes);
        }
        self.counts.iter().copied().filter(|&c| c >= nodes).min()
    }
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
    bracket_range(bracket).map(|(lo, hi)| (lo + hi) / 2.0)
}

/// The bracket's bounds as monthly rates. The Spot Instance Advisor gives
/// no upper bound for ">20%"; ringmaster assumes 30% (stated in the plan).
pub fn bracket_range(bracket: &str) -> Option<(f64, f64)> {
    Some(match bracket {
        "<5%" => (0.0, 0.05),
        "5-10%" => (0.05, 0.10),
        "10-15%" => (0.10, 0.15),
        "15-20%" => (0.15, 0.20),
        ">20%" => (0.20, 0.30),
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
        for (j, t) in o.short_term.iter().enumerate() {
            let at = format!("{at}: short_term[{j}]");
            if !Buy::SHORT_TERM.contains(&t.kind) {
                problems.push(format!(
                    "{at}: kind must be capacity-block, flex-start, calendar or capacity-reservation, got {}",
                    t.kind.name()
                ));
            }
            if !(t.price_per_hour.is_finite() && t.price_per_hour > 0.0) {
                problems.push(format!("{at}: price_per_hour must be > 0"));
            }
            if !["term", "used"].contains(&t.billed.as_str()) {
                problems.push(format!(
                    "{at}: billed must be term or used, got {:?}",
                    t.billed
                ));
            }
            let mut from = 0.0;
            for d in &t.durations {
                if !(d.step_hours > 0.0 && d.up_to_hours > from) {
                    problems.push(format!(
                        "{at}: durations must have step_hours > 0 and growing up_to_hours"
                    ));
                }
                from = d.up_to_hours;
            }
            if t.counts.contains(&0) {
                problems.push(format!("{at}: counts must be >= 1"));
            }
            if months_old(&t.as_of, std::time::UNIX_EPOCH).is_none() {
                problems.push(format!("{at}: as_of must be YYYY-MM, got {:?}", t.as_of));
            }
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
