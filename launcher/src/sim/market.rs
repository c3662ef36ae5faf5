//! The simulated spot market, as pure functions of simulated time: zones
//! whose spot capacity is static or follows a trace, where a node that
//! needs a VM gets one (zone order by failover strategy, spot first,
//! on-demand when the market policy allows it), and which spot nodes a
//! capacity drop takes back. `SimNodes` (mod.rs) drives it.

pub use proto::report::Buy;
use proto::spec::{Failover, SimZone, TraceValues};
use serde_json::Value;

/// Spot nodes a zone can hold over simulated time: a step function of
/// (from simulated second, capacity; None = unlimited), sorted by time.
/// The last value holds after the end of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    steps: Vec<(f64, Option<u32>)>,
}

impl Capacity {
    pub fn fixed(n: Option<u32>) -> Capacity {
        Capacity {
            steps: vec![(0.0, n)],
        }
    }

    pub fn at(&self, t: f64) -> Option<u32> {
        self.steps
            .iter()
            .take_while(|(from, _)| *from <= t)
            .last()
            .map(|(_, c)| *c)
            .unwrap_or(self.steps[0].1)
    }

    /// From (simulated second, capacity) steps, sorted by time.
    pub fn new(steps: Vec<(f64, Option<u32>)>) -> Capacity {
        Capacity { steps }
    }

    /// The simulated times at which the capacity changes.
    pub fn changes(&self) -> impl Iterator<Item = (f64, Option<u32>)> + '_ {
        self.steps
            .windows(2)
            .filter(|w| w[0].1 != w[1].1)
            .map(|w| w[1])
    }
}

/// Parse a capacity trace: a skypilot-org/spot-traces file
/// (`{"metadata": {"gap_seconds": G, ...}, "data": [v0, v1, ...]}`) whose
/// values mean what `values` says, or a list of `{"at_s": T, "capacity":
/// N}` changes (N null: unlimited). `cap` is the zone's static spot
/// capacity: the most any value can give.
pub fn parse_trace(text: &str, values: TraceValues, cap: Option<u32>) -> Result<Capacity, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let min_cap = |n: u32| Some(cap.map_or(n, |c| c.min(n)));
    let mut steps = Vec::new();
    match &v {
        Value::Object(o) => {
            let gap = o
                .get("metadata")
                .and_then(|m| m.get("gap_seconds"))
                .and_then(Value::as_f64)
                .filter(|g| g.is_finite() && *g > 0.0)
                .ok_or("metadata.gap_seconds: a positive number is needed")?;
            let data = o
                .get("data")
                .and_then(Value::as_array)
                .filter(|d| !d.is_empty())
                .ok_or("data: a non-empty list of numbers is needed")?;
            for (i, x) in data.iter().enumerate() {
                let x = x
                    .as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("data[{i}]: must be a number >= 0, got {x}"))?;
                let c = match values {
                    TraceValues::Count => min_cap(x as u32),
                    TraceValues::Available if x > 0.0 => cap,
                    TraceValues::Available => Some(0),
                    TraceValues::Preempted if x > 0.0 => Some(0),
                    TraceValues::Preempted => cap,
                };
                steps.push((i as f64 * gap, c));
            }
        }
        Value::Array(events) => {
            for (i, e) in events.iter().enumerate() {
                let at = e
                    .get("at_s")
                    .and_then(Value::as_f64)
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| format!("[{i}].at_s: must be a number >= 0"))?;
                if steps.last().is_some_and(|(t, _)| *t > at) {
                    return Err(format!("[{i}].at_s: events must be in time order"));
                }
                let c = match e.get("capacity") {
                    Some(Value::Null) => cap,
                    Some(n) => min_cap(
                        n.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| format!("[{i}].capacity: must be a count or null"))?,
                    ),
                    None => return Err(format!("[{i}].capacity: missing")),
                };
                steps.push((at, c));
            }
            if steps.is_empty() {
                return Err("an empty list of events".into());
            }
            if steps[0].0 > 0.0 {
                // Before the first event: the zone's static capacity.
                steps.insert(0, (0.0, cap));
            }
        }
        _ => {
            return Err(
                "must be a spot-traces object ({\"metadata\", \"data\"}) or a list of events"
                    .into(),
            )
        }
    }
    Ok(Capacity { steps })
}

/// Which markets a job may buy in (`provider.market`).
pub use proto::spec::SimMarket as Policy;

/// Where a node's VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub zone: usize,
    pub market: Buy,
}

#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    pub capacity: Capacity,
}

#[derive(Debug, Clone)]
pub struct SpotMarket {
    pub zones: Vec<Zone>,
    pub policy: Policy,
    pub failover: Failover,
}

impl SpotMarket {
    /// The market of a spec's zones, traces read with `read` (a path to
    /// its text); errors name the zone's field.
    pub fn new(
        zones: &[SimZone],
        policy: Policy,
        failover: Failover,
        read: impl Fn(&str) -> std::io::Result<String>,
    ) -> Result<SpotMarket, (String, String)> {
        let zones = if zones.is_empty() {
            vec![Zone {
                name: "zone-a".into(),
                capacity: Capacity::fixed(None),
            }]
        } else {
            zones
                .iter()
                .enumerate()
                .map(|(i, z)| {
                    let capacity = match &z.trace {
                        None => Capacity::fixed(z.spot_capacity),
                        Some(path) => {
                            let field = format!("provider.zones[{i}].trace");
                            let text = read(path)
                                .map_err(|e| (field.clone(), format!("cannot read {path}: {e}")))?;
                            parse_trace(&text, z.trace_values, z.spot_capacity)
                                .map_err(|e| (field, format!("{path}: {e}")))?
                        }
                    };
                    Ok::<Zone, (String, String)>(Zone {
                        name: z.name.clone(),
                        capacity,
                    })
                })
                .collect::<Result<_, _>>()?
        };
        Ok(SpotMarket {
            zones,
            policy,
            failover,
        })
    }

    fn spot_in(&self, zone: usize, others: &[Option<Placement>]) -> u32 {
        others
            .iter()
            .flatten()
            .filter(|p| p.zone == zone && p.market == Buy::Spot)
            .count() as u32
    }

    /// The zones to try, in order, for a node lost from `lost_from`.
    fn order(&self, lost_from: Option<usize>) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.zones.len()).collect();
        if let Some(z) = lost_from {
            order.retain(|&o| o != z);
            match self.failover {
                Failover::SameZoneFirst => order.insert(0, z),
                Failover::OtherZonesFirst => order.push(z),
            }
        }
        order
    }

    /// Where a node gets a VM at simulated time `t`, the other nodes being
    /// where `others` says; None: no spot capacity anywhere and the policy
    /// allows nothing else (wait for capacity).
    pub fn place(
        &self,
        t: f64,
        others: &[Option<Placement>],
        lost_from: Option<usize>,
    ) -> Option<Placement> {
        let order = self.order(lost_from);
        if self.policy == Policy::OnDemand {
            return Some(Placement {
                zone: order[0],
                market: Buy::OnDemand,
            });
        }
        for &z in &order {
            let free = match self.zones[z].capacity.at(t) {
                None => true,
                Some(c) => self.spot_in(z, others) < c,
            };
            if free {
                return Some(Placement {
                    zone: z,
                    market: Buy::Spot,
                });
            }
        }
        (self.policy == Policy::SpotThenOnDemand).then_some(Placement {
            zone: order[0],
            market: Buy::OnDemand,
        })
    }

    /// Spot nodes a zone can no longer hold at simulated time `t`: in each
    /// zone, the excess over its capacity, highest node first. `placed`
    /// holds the nodes still running (those already leaving are None).
    pub fn reclaims(&self, t: f64, placed: &[Option<Placement>]) -> Vec<u32> {
        let mut out = Vec::new();
        for (z, zone) in self.zones.iter().enumerate() {
            let Some(cap) = zone.capacity.at(t) else {
                continue;
            };
            let spot: Vec<u32> = placed
                .iter()
                .enumerate()
                .filter(|(_, p)| p.is_some_and(|p| p.zone == z && p.market == Buy::Spot))
                .map(|(n, _)| n as u32)
                .collect();
            let excess = spot.len().saturating_sub(cap as usize);
            out.extend(spot.iter().rev().take(excess));
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str, cap: Option<u32>) -> Zone {
        Zone {
            name: name.into(),
            capacity: Capacity::fixed(cap),
        }
    }

    fn market(caps: &[Option<u32>], policy: Policy, failover: Failover) -> SpotMarket {
        SpotMarket {
            zones: caps
                .iter()
                .enumerate()
                .map(|(i, c)| zone(&format!("z{i}"), *c))
                .collect(),
            policy,
            failover,
        }
    }

    const S: Buy = Buy::Spot;
    const OD: Buy = Buy::OnDemand;

    fn at(zone: usize, market: Buy) -> Option<Placement> {
        Some(Placement { zone, market })
    }

    #[test]
    fn placement_follows_capacity_strategy_and_policy() {
        use Failover::*;
        use Policy::*;
        // (zone capacities, policy, failover, others, lost from, expected)
        type Case = (
            Vec<Option<u32>>,
            Policy,
            Failover,
            Vec<Option<Placement>>,
            Option<usize>,
            Option<Placement>,
        );
        let cases: Vec<Case> = vec![
            // Room in the lost node's zone: same zone first stays there.
            (
                vec![Some(2), Some(2)],
                Spot,
                SameZoneFirst,
                vec![at(0, S)],
                Some(0),
                at(0, S),
            ),
            // ... other zones first moves on.
            (
                vec![Some(2), Some(2)],
                Spot,
                OtherZonesFirst,
                vec![at(0, S)],
                Some(0),
                at(1, S),
            ),
            // Own zone full: the next one.
            (
                vec![Some(1), Some(2)],
                Spot,
                SameZoneFirst,
                vec![at(0, S)],
                Some(0),
                at(1, S),
            ),
            // Other zones full: back to its own zone, last in order.
            (
                vec![Some(2), Some(0)],
                Spot,
                OtherZonesFirst,
                vec![at(0, S)],
                Some(0),
                at(0, S),
            ),
            // Spot gone everywhere: wait (spot) or on-demand in the first zone tried.
            (
                vec![Some(1), Some(0)],
                Spot,
                SameZoneFirst,
                vec![at(0, S)],
                Some(0),
                None,
            ),
            (
                vec![Some(1), Some(0)],
                SpotThenOnDemand,
                SameZoneFirst,
                vec![at(0, S)],
                Some(0),
                at(0, OD),
            ),
            (
                vec![Some(1), Some(0)],
                SpotThenOnDemand,
                OtherZonesFirst,
                vec![at(0, S)],
                Some(0),
                at(1, OD),
            ),
            // On-demand nodes take no spot capacity.
            (
                vec![Some(1)],
                Spot,
                SameZoneFirst,
                vec![at(0, OD)],
                None,
                at(0, S),
            ),
            // Unlimited capacity; on-demand policy never buys spot.
            (
                vec![None],
                Spot,
                SameZoneFirst,
                vec![at(0, S); 5],
                None,
                at(0, S),
            ),
            (vec![None], OnDemand, SameZoneFirst, vec![], None, at(0, OD)),
            // A first placement (nothing lost) goes in listed order.
            (
                vec![Some(0), Some(1)],
                Spot,
                OtherZonesFirst,
                vec![],
                None,
                at(1, S),
            ),
        ];
        for (i, (caps, policy, failover, others, lost, want)) in cases.into_iter().enumerate() {
            let m = market(&caps, policy, failover);
            assert_eq!(m.place(0.0, &others, lost), want, "case {i}");
        }
    }

    #[test]
    fn a_capacity_drop_reclaims_the_excess_highest_node_first() {
        let mut m = market(&[Some(3), Some(1)], Policy::Spot, Failover::SameZoneFirst);
        let placed = vec![at(0, S), at(0, S), at(1, S), at(0, S), at(0, OD)];
        assert_eq!(m.reclaims(0.0, &placed), Vec::<u32>::new());
        m.zones[0].capacity = Capacity {
            steps: vec![(0.0, Some(3)), (10.0, Some(1))],
        };
        m.zones[1].capacity = Capacity {
            steps: vec![(0.0, Some(1)), (5.0, Some(0))],
        };
        assert_eq!(m.reclaims(4.9, &placed), Vec::<u32>::new());
        assert_eq!(m.reclaims(5.0, &placed), vec![2]);
        // Zone 0 keeps node 0; nodes 1 and 3 go; on-demand node 4 stays.
        assert_eq!(m.reclaims(10.0, &placed), vec![1, 2, 3]);
        // Nodes already leaving (None) are not counted twice.
        let leaving = vec![at(0, S), None, None, at(0, S), at(0, OD)];
        assert_eq!(m.reclaims(10.0, &leaving), vec![3]);
    }

    #[test]
    fn traces_parse_in_both_shapes_and_errors_name_the_value() {
        let sky =
            r#"{"metadata": {"gap_seconds": 600, "region": "us-east-1a"}, "data": [1, 1, 0, 2]}"#;
        let c = parse_trace(sky, TraceValues::Count, None).unwrap();
        assert_eq!(
            (
                c.at(0.0),
                c.at(1199.0),
                c.at(1200.0),
                c.at(1800.0),
                c.at(1e9)
            ),
            (Some(1), Some(1), Some(0), Some(2), Some(2))
        );
        assert_eq!(
            c.changes().collect::<Vec<_>>(),
            vec![(1200.0, Some(0)), (1800.0, Some(2))]
        );
        // Count values are capped by the zone's static capacity.
        let c = parse_trace(sky, TraceValues::Count, Some(1)).unwrap();
        assert_eq!(c.at(1800.0), Some(1));
        // Binary availability (1: spot obtainable) and preemption (1: gone).
        let c = parse_trace(sky, TraceValues::Available, Some(4)).unwrap();
        assert_eq!((c.at(0.0), c.at(1200.0)), (Some(4), Some(0)));
        let c = parse_trace(sky, TraceValues::Preempted, None).unwrap();
        assert_eq!((c.at(0.0), c.at(1200.0)), (Some(0), None));
        let events = r#"[{"at_s": 100, "capacity": 0}, {"at_s": 400, "capacity": null}]"#;
        let c = parse_trace(events, TraceValues::Count, Some(3)).unwrap();
        assert_eq!(
            (c.at(0.0), c.at(100.0), c.at(400.0)),
            (Some(3), Some(0), Some(3))
        );
        for (bad, want) in [
            (r#"{"data": [1]}"#, "metadata.gap_seconds"),
            (
                r#"{"metadata": {"gap_seconds": 60}, "data": [1, -1]}"#,
                "data[1]: must be a number >= 0",
            ),
            (
                r#"[{"at_s": 5, "capacity": 1}, {"at_s": 1, "capacity": 1}]"#,
                "[1].at_s: events must be in time order",
            ),
            (r#"[{"at_s": 5}]"#, "[0].capacity: missing"),
            ("7", "spot-traces object"),
            ("{", "not JSON"),
        ] {
            let e = parse_trace(bad, TraceValues::Count, None).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
