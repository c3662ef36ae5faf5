//! The spot-market simulator (provider `sim`): local nodes, each with its
//! own cloud metadata service (`metadata`), preemptions at scheduled times
//! (a notice on the node's service, then SIGKILL of the node's workers at
//! the deadline), and replacement of a lost node after the provisioning
//! delay. The supervisor drives it from its tick; this module keeps the
//! nodes' state.

pub mod metadata;

use metadata::{Cloud, MetadataServer};
use proto::spec::{JobSpec, NoticeSource, Notices, Provider};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// provider.offer names nothing usable.
    #[error("{0}")]
    Offer(String),
    #[error("cannot start a node's metadata service: {0}")]
    Io(std::io::Error),
}

pub struct SimNodes {
    cloud: Cloud,
    cloud_name: String,
    addrs: Vec<Ipv4Addr>,
    servers: Vec<MetadataServer>,
    /// Preemptions still to come: (time from the start, node), soonest last.
    schedule: Vec<(Duration, u32)>,
    window: Duration,
    pub provisioning_delay: Duration,
    /// Nodes with a published notice and when they are killed.
    doomed: Vec<(u32, Instant)>,
    /// Nodes to replace before the next launch.
    lost: BTreeSet<u32>,
    /// Replacement count per node, for the VM names.
    generation: Vec<u32>,
    /// Billing: since when each node's current VM runs (None: gone), and
    /// the seconds billed for its earlier VMs.
    alive_since: Vec<Option<Instant>>,
    billed_s: Vec<f64>,
    /// USD per node-hour in the chosen market, and on-demand.
    billing: Option<Billing>,
}

/// The catalog offer the nodes are billed as.
#[derive(Debug, Clone)]
struct Billing {
    offer: crate::capacity::Offer,
    /// "spot" or "on-demand"
    market: String,
    /// USD per node-hour in `market`.
    price: f64,
}

/// What the nodes cost (per-second billing).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cost {
    pub offer: String,
    pub market: String,
    pub price_per_node_hour: f64,
    pub node_hours: f64,
    pub cost_usd: f64,
    /// The useful work (run time less the time preemptions took) on the
    /// same nodes bought on-demand.
    pub on_demand_equivalent_usd: f64,
    pub savings_percent: f64,
}

/// Seconds in an average month.
const MONTH_S: f64 = 730.0 * 3600.0;

/// Random preemption times (real time from the start, node) within
/// `horizon`: for each node, exponential gaps with mean month/rate of
/// simulated time, divided by `time_scale`; a seeded ChaCha stream, so the
/// same inputs give the same times.
pub fn draw_preemptions(
    nodes: u32,
    rate_per_month: f64,
    time_scale: f64,
    seed: u64,
    horizon: Duration,
) -> Vec<(Duration, u32)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mean_real_s = MONTH_S / rate_per_month / time_scale;
    let mut out = Vec::new();
    for node in 0..nodes {
        let mut t = 0.0;
        loop {
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            t += -u.ln() * mean_real_s;
            if t > horizon.as_secs_f64() {
                break;
            }
            out.push((Duration::from_secs_f64(t), node));
        }
    }
    out
}

fn vm_name(node: u32, generation: u32) -> String {
    format!("sim-node-{node}-{generation}")
}

impl SimNodes {
    /// The simulator's state for a `sim` job (None for other providers).
    pub fn new(spec: &JobSpec, addrs: &[String]) -> Result<Option<SimNodes>, SimError> {
        let Provider::Sim {
            cloud,
            provisioning_delay_s,
            notice_window_s,
            preemptions,
            offer,
            market,
            random_preemptions,
            ..
        } = &spec.provider
        else {
            return Ok(None);
        };
        let billing = match offer {
            None => None,
            Some(it) => {
                let cat =
                    crate::capacity::parse_catalog(crate::capacity::BUILT_IN, "built-in catalog")
                        .map_err(SimError::Offer)?;
                let offer = cat
                    .offers
                    .into_iter()
                    .find(|o| o.instance_type == *it)
                    .ok_or_else(|| {
                        SimError::Offer(format!(
                            "{it:?} is not in the built-in catalog (configs/catalog.json)"
                        ))
                    })?;
                let market = market.clone().unwrap_or_else(|| "spot".into());
                let price = if market == "spot" {
                    offer
                        .price_per_hour
                        .spot
                        .ok_or_else(|| SimError::Offer(format!("{it} has no spot price")))?
                } else {
                    offer.price_per_hour.on_demand
                };
                Some(Billing {
                    offer,
                    market,
                    price,
                })
            }
        };
        let kind = Cloud::parse(cloud).expect("compile checked the cloud");
        let window = notice_window_s.unwrap_or(match kind {
            Cloud::Aws => 120.0,
            Cloud::Gcp | Cloud::Azure => 30.0,
        });
        let addrs: Vec<Ipv4Addr> = addrs
            .iter()
            .map(|a| a.parse().expect("plan made IPv4 addresses"))
            .collect();
        let servers = addrs
            .iter()
            .enumerate()
            .map(|(i, ip)| MetadataServer::start(kind, *ip, &vm_name(i as u32, 0)))
            .collect::<Result<_, _>>()
            .map_err(SimError::Io)?;
        let mut schedule: Vec<(Duration, u32)> = preemptions
            .iter()
            .map(|p| (Duration::from_secs_f64(p.at_s), p.node))
            .collect();
        if let Some(rp) = random_preemptions {
            let rate = match rp.rate_per_month {
                Some(r) => r,
                None => {
                    let o = &billing
                        .as_ref()
                        .expect("compile requires an offer here")
                        .offer;
                    o.spot_interruption
                        .as_deref()
                        .and_then(crate::capacity::bracket_rate)
                        .ok_or_else(|| {
                            SimError::Offer(format!(
                                "{} has no interruption bracket; set random_preemptions.rate_per_month",
                                o.instance_type
                            ))
                        })?
                }
            };
            schedule.extend(draw_preemptions(
                addrs.len() as u32,
                rate,
                rp.time_scale,
                rp.seed,
                Duration::from_secs(7 * 24 * 3600),
            ));
        }
        schedule.sort_by(|a, b| b.cmp(a));
        Ok(Some(SimNodes {
            cloud: kind,
            cloud_name: cloud.clone(),
            generation: vec![0; addrs.len()],
            addrs,
            servers,
            schedule,
            window: Duration::from_secs_f64(window),
            provisioning_delay: Duration::from_secs_f64(*provisioning_delay_s),
            doomed: Vec::new(),
            lost: BTreeSet::new(),
            alive_since: vec![Some(Instant::now()); spec.resources.nodes as usize],
            billed_s: vec![0.0; spec.resources.nodes as usize],
            billing,
        }))
    }

    /// Environment for the workers of `node`: where the metadata service
    /// is, and (for its first worker) the watcher to run against it.
    pub fn worker_env(&self, node: u32, local_rank: u32) -> Vec<(String, String)> {
        let server = &self.servers[node as usize];
        let mut env = server.env();
        if local_rank == 0 {
            let endpoint = Some(server.base_url());
            let source = match self.cloud {
                Cloud::Aws => NoticeSource::Aws { endpoint },
                Cloud::Gcp => NoticeSource::Gcp { endpoint },
                Cloud::Azure => NoticeSource::Azure {
                    endpoint,
                    vm_name: Some(server.vm_name().to_string()),
                },
            };
            let notices = Notices {
                watch: vec![source],
                poll_interval_ms: None,
            };
            env.push((
                proto::env::NOTICES.into(),
                serde_json::to_string(&notices).expect("notices serialise"),
            ));
        }
        env
    }

    pub fn cloud(&self) -> &str {
        &self.cloud_name
    }

    /// Publish the notices that are due `since_start`; returns (node,
    /// deadline) for each.
    pub fn publish_due(&mut self, since_start: Duration) -> Vec<(u32, SystemTime)> {
        let mut out = Vec::new();
        while self
            .schedule
            .last()
            .is_some_and(|(at, _)| *at <= since_start)
        {
            let (_, node) = self.schedule.pop().expect("checked");
            if self.doomed.iter().any(|(n, _)| *n == node) {
                continue;
            }
            let deadline = SystemTime::now() + self.window;
            self.servers[node as usize].preempt(deadline);
            self.doomed.push((node, Instant::now() + self.window));
            self.lost.insert(node);
            out.push((node, deadline));
        }
        out
    }

    /// Nodes whose deadline has come: their workers are to be killed.
    pub fn kills_due(&mut self, now: Instant) -> Vec<u32> {
        let (due, rest): (Vec<_>, Vec<_>) = self.doomed.iter().partition(|(_, at)| *at <= now);
        self.doomed = rest;
        let due: Vec<u32> = due.into_iter().map(|(n, _)| n).collect();
        for &n in &due {
            self.stop_billing(n);
        }
        due
    }

    fn stop_billing(&mut self, node: u32) {
        if let Some(t) = self.alive_since[node as usize].take() {
            self.billed_s[node as usize] += t.elapsed().as_secs_f64();
        }
    }

    /// What the nodes cost so far, with `useful_s` seconds of useful work
    /// priced on-demand for comparison (None without an offer).
    pub fn cost(&self, useful_s: f64) -> Option<Cost> {
        let b = self.billing.as_ref()?;
        let seconds: f64 = self
            .alive_since
            .iter()
            .zip(&self.billed_s)
            .map(|(a, b)| b + a.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0))
            .sum();
        let cost = seconds / 3600.0 * b.price;
        let od = self.addrs.len() as f64 * useful_s / 3600.0 * b.offer.price_per_hour.on_demand;
        Some(Cost {
            offer: b.offer.instance_type.clone(),
            market: b.market.clone(),
            price_per_node_hour: b.price,
            node_hours: seconds / 3600.0,
            cost_usd: cost,
            on_demand_equivalent_usd: od,
            savings_percent: if od > 0.0 {
                100.0 * (1.0 - cost / od)
            } else {
                0.0
            },
        })
    }

    /// Replace every node that got a notice with a fresh one (a new VM on
    /// the same address, with a clean metadata service); returns them.
    pub fn replace_lost(&mut self) -> std::io::Result<Vec<u32>> {
        let lost: Vec<u32> = std::mem::take(&mut self.lost).into_iter().collect();
        for &node in &lost {
            // Done with the old VM (its checkpoint is safe): stop paying.
            self.stop_billing(node);
            self.doomed.retain(|(n, _)| *n != node);
            self.generation[node as usize] += 1;
            let name = vm_name(node, self.generation[node as usize]);
            self.servers[node as usize] =
                MetadataServer::start(self.cloud, self.addrs[node as usize], &name)?;
            // Billed once it is up, after the provisioning delay.
            self.alive_since[node as usize] = Some(Instant::now() + self.provisioning_delay);
        }
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_preemptions_are_seeded_and_follow_the_rate() {
        let week = Duration::from_secs(7 * 24 * 3600);
        // 100 simulated weeks: about 4 x 0.25 x 23 = 23 preemptions.
        let a = draw_preemptions(4, 0.25, 100.0, 7, week);
        assert!(!a.is_empty());
        assert_eq!(
            a,
            draw_preemptions(4, 0.25, 100.0, 7, week),
            "same seed, same times"
        );
        assert_ne!(a, draw_preemptions(4, 0.25, 100.0, 8, week));
        assert!(a.iter().all(|(t, n)| *t <= week && *n < 4));
        // A time scale of 3600 runs an hour of market a second: 2 hours of
        // real time are 7200 simulated hours, about 9.9 months: 1000 nodes
        // x 0.25 a month x 9.86 months = about 2466 preemptions.
        let many = draw_preemptions(1000, 0.25, 3600.0, 1, Duration::from_secs(7200));
        let expected = 1000.0 * 0.25 * 7200.0 * 3600.0 / MONTH_S;
        let n = many.len() as f64;
        assert!(
            (n - expected).abs() < 4.0 * expected.sqrt(),
            "{n} vs {expected}"
        );
    }
}
