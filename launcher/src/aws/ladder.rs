//! Where to ask for a node, in order: the failover ladder. Pure, and
//! tested by tables. The order is the simulator's (sim::market): a named
//! capacity reservation first (capacity already bought), then spot in each
//! allowed zone (the node's last zone first for a replacement, SkyPilot's
//! FAILOVER), then on-demand in each zone where the market allows it. A
//! capacity error on one rung moves to the next; at the bottom, a spot-only
//! job waits for capacity (`capacity_wait_s`) and ends with exit 9.

use proto::report::Buy;
use proto::spec::SimMarket;

/// One place to ask: a zone, a market, and the reservation to run in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rung {
    pub zone: String,
    pub buy: Buy,
    pub reservation: Option<String>,
}

/// The rungs for one node: `zones` in preference order, `last_zone` (a
/// replaced node's) moved first, `reservation` (id, zone, bought as
/// on-demand or a Capacity Block) on top.
pub fn ladder(
    zones: &[String],
    market: SimMarket,
    reservation: Option<(&str, &str, Buy)>,
    last_zone: Option<&str>,
) -> Vec<Rung> {
    let mut order: Vec<&String> = zones.iter().collect();
    if let Some(z) = last_zone {
        if let Some(i) = order.iter().position(|o| o.as_str() == z) {
            let first = order.remove(i);
            order.insert(0, first);
        }
    }
    let mut out = Vec::new();
    if let Some((id, zone, buy)) = reservation {
        out.push(Rung {
            zone: zone.to_string(),
            buy,
            reservation: Some(id.to_string()),
        });
    }
    let rung = |z: &String, buy| Rung {
        zone: z.clone(),
        buy,
        reservation: None,
    };
    if market != SimMarket::OnDemand {
        out.extend(order.iter().map(|z| rung(z, Buy::Spot)));
    }
    if market != SimMarket::Spot {
        out.extend(order.iter().map(|z| rung(z, Buy::OnDemand)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(r: &[Rung]) -> Vec<String> {
        r.iter()
            .map(|r| {
                format!(
                    "{}/{}{}",
                    r.zone,
                    r.buy.name(),
                    r.reservation
                        .as_deref()
                        .map(|c| format!("/{c}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn the_ladder_by_market_reservation_and_last_zone() {
        let zones: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        type Reservation<'a> = Option<(&'a str, &'a str, Buy)>;
        let table: &[(SimMarket, Reservation, Option<&str>, &[&str])] = &[
            (SimMarket::Spot, None, None, &["a/spot", "b/spot", "c/spot"]),
            (
                SimMarket::Spot,
                None,
                Some("b"),
                &["b/spot", "a/spot", "c/spot"],
            ),
            (
                SimMarket::Spot,
                None,
                Some("zz"),
                &["a/spot", "b/spot", "c/spot"],
            ),
            (
                SimMarket::OnDemand,
                None,
                None,
                &["a/on-demand", "b/on-demand", "c/on-demand"],
            ),
            (
                SimMarket::SpotThenOnDemand,
                None,
                Some("c"),
                &[
                    "c/spot",
                    "a/spot",
                    "b/spot",
                    "c/on-demand",
                    "a/on-demand",
                    "b/on-demand",
                ],
            ),
            (
                SimMarket::OnDemand,
                Some(("cr-1", "b", Buy::OnDemand)),
                None,
                &[
                    "b/on-demand/cr-1",
                    "a/on-demand",
                    "b/on-demand",
                    "c/on-demand",
                ],
            ),
            // A Capacity Block: its zone first, bought as the block.
            (
                SimMarket::Spot,
                Some(("cr-2", "c", Buy::CapacityBlock)),
                None,
                &["c/capacity-block/cr-2", "a/spot", "b/spot", "c/spot"],
            ),
        ];
        for (market, res, last, want) in table {
            assert_eq!(
                short(&ladder(&zones, *market, *res, *last)),
                *want,
                "{market:?} {res:?} {last:?}"
            );
        }
    }
}
