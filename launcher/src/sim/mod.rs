//! The spot-market simulator (provider `sim`): local nodes, each with its
//! own cloud metadata service (`metadata`), preemptions at scheduled times
//! (a notice on the node's service, then SIGKILL of the node's workers at
//! the deadline), and replacement of a lost node after the provisioning
//! delay. The supervisor drives it from its tick; this module keeps the
//! nodes' state.

mod bill;
mod draws;
pub mod market;
pub mod metadata;

pub use draws::{draw_preemptions, RandomDraws};

use crate::provider::{NodeEvent, RunProgress};
use bill::{billing, Billing};
use market::{Buy, Placement, Policy, SpotMarket};
use metadata::{Cloud, MetadataServer};
use proto::report::Cost;
use proto::spec::{JobSpec, NoticeSource, Notices, Provider};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A provider field names something unusable: (field, problem).
    #[error("{0}: {1}")]
    Spec(String, String),
    /// No spot capacity and no fallback allowed.
    #[error("{0}")]
    NoCapacity(String),
    #[error("cannot start a node's metadata service: {0}")]
    Io(std::io::Error),
}

pub struct SimNodes {
    cloud: Cloud,
    addrs: Vec<Ipv4Addr>,
    servers: Vec<MetadataServer>,
    /// Scheduled preemptions still to come: (real time from the start,
    /// node), soonest last.
    schedule: Vec<(Duration, u32)>,
    /// Random preemptions, drawn as time goes.
    random: Option<RandomDraws>,
    window: Duration,
    provisioning_delay: Duration,
    capacity_wait: Duration,
    /// Simulated seconds per real second.
    time_scale: f64,
    started: Instant,
    market: SpotMarket,
    /// Where each node's current VM runs (None: lost, not yet replaced).
    placed: Vec<Option<Placement>>,
    /// Nodes with a published notice and when they are killed.
    doomed: Vec<(u32, Instant)>,
    /// Nodes to replace before the next launch, with the zone they ran in.
    lost: BTreeMap<u32, usize>,
    /// Replacement count per node, for the VM names.
    generation: Vec<u32>,
    /// Every VM the run has had, for billing.
    vms: Vec<Vm>,
    /// Zone capacities last announced.
    capacity_seen: Vec<Option<u32>>,
    billing: Option<Billing>,
    /// The market policy the job asked for (deadline mode may move every
    /// node to on-demand later).
    policy: Policy,
    deadline: Option<Deadline>,
}

/// Deadline mode's state (`provider.deadline`).
#[derive(Debug, Clone)]
struct Deadline {
    at_s: f64,
    restart_cost_s: f64,
    /// When (simulated) the nodes moved to on-demand, and the slack then.
    switched: Option<(f64, f64)>,
}

/// One VM of the run: billed per second from `from` to `to` (now while it
/// runs), in simulated time.
#[derive(Debug, Clone)]
struct Vm {
    node: u32,
    name: String,
    placement: Placement,
    from: Instant,
    to: Option<Instant>,
}

/// Why a node gets a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `provider.preemptions`.
    Scheduled,
    /// `provider.random_preemptions`.
    Random,
    /// Its zone's spot capacity dropped below the spot nodes there.
    Capacity,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Scheduled => "scheduled",
            Cause::Random => "random",
            Cause::Capacity => "capacity",
        }
    }
}

/// A notice the simulator published.
#[derive(Debug, Clone)]
pub struct Published {
    pub node: u32,
    pub deadline: SystemTime,
    pub cause: Cause,
    pub zone: String,
}

/// A node given a new VM.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replaced {
    pub node: u32,
    pub vm: String,
    pub zone: String,
    pub market: Buy,
}

fn vm_name(node: u32, generation: u32) -> String {
    format!("sim-node-{node}-{generation}")
}

impl SimNodes {
    /// The simulator's state for a `sim` job (None for other providers):
    /// the market read (traces included), every node placed at time 0 and
    /// its metadata service started.
    pub fn new(spec: &JobSpec, addrs: &[String]) -> Result<Option<SimNodes>, SimError> {
        let Provider::Sim {
            provisioning_delay_s,
            notice_window_s,
            preemptions,
            offer,
            random_preemptions,
            time_scale,
            zones,
            failover,
            capacity_wait_s,
            deadline,
            ..
        } = &spec.provider
        else {
            return Ok(None);
        };
        let (kind, policy) = spec
            .provider
            .sim_cloud_and_market()
            .expect("compile checked the cloud and the market");
        let billing = offer.as_deref().map(|it| billing(it, policy)).transpose()?;
        let spot_market = SpotMarket::new(zones, policy, *failover, |p| std::fs::read_to_string(p))
            .map_err(|(field, m)| SimError::Spec(field, m))?;
        let window = notice_window_s.unwrap_or(match kind {
            Cloud::Aws => 120.0,
            Cloud::Gcp | Cloud::Azure => 30.0,
        });
        let addrs: Vec<Ipv4Addr> = addrs
            .iter()
            .map(|a| a.parse().expect("plan made IPv4 addresses"))
            .collect();
        let mut schedule: Vec<(Duration, u32)> = preemptions
            .iter()
            .map(|p| (Duration::from_secs_f64(p.at_s / time_scale), p.node))
            .collect();
        let mut random = None;
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
                            SimError::Spec(
                                "provider.random_preemptions.rate_per_month".into(),
                                format!("{} has no interruption bracket; set it", o.instance_type),
                            )
                        })?
                }
            };
            random = Some(RandomDraws::new(
                addrs.len() as u32,
                rate,
                *time_scale,
                rp.seed,
            ));
        }
        schedule.sort_by(|a, b| b.cmp(a));
        // Every node placed at time 0, in node order.
        let mut placed: Vec<Option<Placement>> = vec![None; addrs.len()];
        for node in 0..addrs.len() {
            let p = spot_market.place(0.0, &placed, None).ok_or_else(|| {
                SimError::NoCapacity(format!(
                    "no spot capacity for node {node} at the start in zones {} (provider.market is spot)",
                    spot_market.zones.iter().map(|z| z.name.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?;
            placed[node] = Some(p);
        }
        let servers = addrs
            .iter()
            .enumerate()
            .map(|(i, ip)| MetadataServer::start(kind, *ip, &vm_name(i as u32, 0)))
            .collect::<Result<_, _>>()
            .map_err(SimError::Io)?;
        let now = Instant::now();
        let vms = placed
            .iter()
            .enumerate()
            .map(|(n, p)| Vm {
                node: n as u32,
                name: vm_name(n as u32, 0),
                placement: p.expect("placed above"),
                from: now,
                to: None,
            })
            .collect();
        Ok(Some(SimNodes {
            cloud: kind,
            generation: vec![0; addrs.len()],
            addrs,
            servers,
            schedule,
            random,
            window: Duration::from_secs_f64(window),
            provisioning_delay: Duration::from_secs_f64(*provisioning_delay_s),
            capacity_wait: Duration::from_secs_f64(*capacity_wait_s),
            time_scale: *time_scale,
            started: now,
            capacity_seen: spot_market
                .zones
                .iter()
                .map(|z| z.capacity.at(0.0))
                .collect(),
            market: spot_market,
            placed,
            doomed: Vec::new(),
            lost: BTreeMap::new(),
            vms,
            billing,
            policy,
            deadline: deadline.as_ref().map(|d| Deadline {
                at_s: d.at_s,
                restart_cost_s: d
                    .restart_cost_s
                    .unwrap_or(3.0 * provisioning_delay_s * time_scale),
                switched: None,
            }),
        }))
    }

    /// Simulated seconds since the start.
    pub fn sim_now(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * self.time_scale
    }

    /// Environment for the workers of `node`: where the metadata service
    /// is (the cloud SDKs' variables).
    fn worker_env(&self, node: u32, _local_rank: u32) -> Vec<(String, String)> {
        self.servers[node as usize].env()
    }

    /// For the first worker of `node`: the watcher to run against the
    /// node's metadata service.
    fn worker_contract(&self, node: u32, local_rank: u32, c: &mut proto::contract::WorkerContract) {
        if local_rank != 0 {
            return;
        }
        let server = &self.servers[node as usize];
        let endpoint = Some(server.base_url());
        let source = match self.cloud {
            Cloud::Aws => NoticeSource::Aws { endpoint },
            Cloud::Gcp => NoticeSource::Gcp { endpoint },
            Cloud::Azure => NoticeSource::Azure {
                endpoint,
                vm_name: Some(server.vm_name().to_string()),
            },
        };
        c.notices = Some(Notices {
            watch: vec![source],
            ..Notices::default()
        });
    }

    pub fn zone_name(&self, zone: usize) -> &str {
        &self.market.zones[zone].name
    }

    /// Zone capacities that changed since last asked: (zone, capacity).
    fn capacity_changes(&mut self) -> Vec<(String, Option<u32>)> {
        let t = self.sim_now();
        let mut out = Vec::new();
        for (z, zone) in self.market.zones.iter().enumerate() {
            let c = zone.capacity.at(t);
            if self.capacity_seen[z] != c {
                self.capacity_seen[z] = c;
                out.push((zone.name.clone(), c));
            }
        }
        out
    }

    /// Publish the notices that are due now: scheduled and random
    /// preemptions of spot nodes, and spot nodes their zone's capacity can
    /// no longer hold. On-demand nodes are never preempted.
    fn publish_due(&mut self) -> Vec<Published> {
        let since_start = self.started.elapsed();
        let mut due: Vec<(u32, Cause)> = Vec::new();
        while self
            .schedule
            .last()
            .is_some_and(|(at, _)| *at <= since_start)
        {
            let (_, node) = self.schedule.pop().expect("checked");
            due.push((node, Cause::Scheduled));
        }
        if let Some(r) = self.random.as_mut() {
            due.extend(
                r.due(since_start.as_secs_f64())
                    .into_iter()
                    .map(|(_, n)| (n, Cause::Random)),
            );
        }
        let staying: Vec<Option<Placement>> = self
            .placed
            .iter()
            .enumerate()
            .map(|(n, p)| p.filter(|_| !self.doomed.iter().any(|(d, _)| *d == n as u32)))
            .collect();
        due.extend(
            self.market
                .reclaims(self.sim_now(), &staying)
                .into_iter()
                .map(|n| (n, Cause::Capacity)),
        );
        let mut out = Vec::new();
        for (node, cause) in due {
            let Some(p) = self.placed[node as usize] else {
                continue;
            };
            if p.market != Buy::Spot || self.doomed.iter().any(|(n, _)| *n == node) {
                continue;
            }
            let deadline = SystemTime::now() + self.window;
            self.servers[node as usize].preempt(deadline);
            self.doomed.push((node, Instant::now() + self.window));
            self.lost.insert(node, p.zone);
            out.push(Published {
                node,
                deadline,
                cause,
                zone: self.zone_name(p.zone).to_string(),
            });
        }
        out
    }

    /// Deadline mode: once the slack (deadline - now - remaining work at
    /// the current rate) is below twice the cost of a restart (one more
    /// preemption, then the move), every further VM is on-demand and the
    /// spot nodes move now. Returns the nodes to move (and why).
    fn deadline_check(&mut self, progress: Option<RunProgress>) -> Option<(Vec<u32>, String)> {
        let t = self.sim_now();
        let d = self.deadline.as_mut()?;
        if d.switched.is_some() {
            return None;
        }
        let p = progress?;
        let rate = p.steps_per_s?;
        let remaining = p.total_steps.saturating_sub(p.step) as f64 / rate * self.time_scale;
        let slack = d.at_s - t - remaining;
        if slack >= 2.0 * d.restart_cost_s {
            return None;
        }
        d.switched = Some((t, slack));
        let reason = format!(
            "deadline in {:.2} h with {:.2} h of work left: slack {:.2} h < 2 x restart cost {:.2} h; moving to on-demand",
            (d.at_s - t) / 3600.0,
            remaining / 3600.0,
            slack / 3600.0,
            d.restart_cost_s / 3600.0
        );
        self.market.policy = Policy::OnDemand;
        let spot: Vec<u32> = (0..self.placed.len() as u32)
            .filter(|n| {
                self.placed[*n as usize].is_some_and(|p| p.market == Buy::Spot)
                    && !self.lost.contains_key(n)
            })
            .collect();
        for &n in &spot {
            let zone = self.placed[n as usize].expect("placed").zone;
            self.lost.insert(n, zone);
        }
        Some((spot, reason))
    }

    /// Nodes whose deadline has come: their workers are to be killed.
    fn kills_due(&mut self, now: Instant) -> Vec<u32> {
        let (due, rest): (Vec<_>, Vec<_>) = self.doomed.iter().partition(|(_, at)| *at <= now);
        self.doomed = rest;
        let due: Vec<u32> = due.into_iter().map(|(n, _)| n).collect();
        for &n in &due {
            self.release(n);
        }
        due
    }

    /// The node's current VM is gone: stop billing it.
    fn release(&mut self, node: u32) {
        self.placed[node as usize] = None;
        if let Some(vm) = self
            .vms
            .iter_mut()
            .rev()
            .find(|v| v.node == node && v.to.is_none())
        {
            vm.to = Some(Instant::now().max(vm.from));
        }
    }

    /// Give every lost node a new VM where the market has room (a fresh
    /// metadata service on the same address, billed from when it is up,
    /// after the provisioning delay). Returns the nodes replaced and those
    /// still waiting: no spot capacity anywhere, and spot only (call again
    /// later).
    fn replace_lost(&mut self) -> std::io::Result<(Vec<Replaced>, Vec<u32>)> {
        let (mut done, mut waiting) = (Vec::new(), Vec::new());
        for (node, zone) in self.lost.clone() {
            // Done with the old VM (its checkpoint is safe): stop paying.
            self.release(node);
            self.doomed.retain(|(n, _)| *n != node);
            let Some(p) = self.market.place(self.sim_now(), &self.placed, Some(zone)) else {
                waiting.push(node);
                continue;
            };
            self.lost.remove(&node);
            self.generation[node as usize] += 1;
            let name = vm_name(node, self.generation[node as usize]);
            self.servers[node as usize] =
                MetadataServer::start(self.cloud, self.addrs[node as usize], &name)?;
            self.placed[node as usize] = Some(p);
            self.vms.push(Vm {
                node,
                name: name.clone(),
                placement: p,
                from: Instant::now() + self.provisioning_delay,
                to: None,
            });
            done.push(Replaced {
                node,
                vm: name,
                zone: self.zone_name(p.zone).to_string(),
                market: p.market,
            });
        }
        Ok((done, waiting))
    }
}

impl crate::provider::Provider for SimNodes {
    fn kind(&self) -> &'static str {
        "sim"
    }
    fn replaces_nodes(&self) -> bool {
        true
    }
    fn worker_env(&self, node: u32, local_rank: u32) -> Vec<(String, String)> {
        SimNodes::worker_env(self, node, local_rank)
    }
    fn worker_contract(&self, node: u32, local_rank: u32, c: &mut proto::contract::WorkerContract) {
        SimNodes::worker_contract(self, node, local_rank, c)
    }
    fn poll(&mut self, now: Instant, progress: Option<RunProgress>) -> Vec<NodeEvent> {
        let mut out: Vec<NodeEvent> = self
            .capacity_changes()
            .into_iter()
            .map(|(zone, spot_capacity)| NodeEvent::Capacity {
                zone,
                spot_capacity,
            })
            .collect();
        out.extend(
            self.publish_due()
                .into_iter()
                .map(|p| NodeEvent::Preempting {
                    node: p.node,
                    deadline: p.deadline,
                    cause: p.cause.name(),
                    zone: p.zone,
                }),
        );
        out.extend(
            self.kills_due(now)
                .into_iter()
                .map(|node| NodeEvent::Lost { node }),
        );
        if let Some((nodes, reason)) = self.deadline_check(progress) {
            out.push(NodeEvent::Migrate { nodes, reason });
        }
        out
    }
    fn retire(&mut self, node: u32) -> bool {
        match self.placed.get(node as usize).copied().flatten() {
            Some(p) => {
                // Replaced like a lost node: its VM is released and a new
                // one placed by the market.
                self.lost.insert(node, p.zone);
                true
            }
            None => false,
        }
    }
    fn is_lost(&self, node: u32) -> bool {
        self.lost.contains_key(&node)
    }
    fn has_lost(&self) -> bool {
        !self.lost.is_empty()
    }
    fn replace_lost(&mut self) -> Result<(Vec<NodeEvent>, Vec<u32>), crate::error::LaunchError> {
        let (done, waiting) = SimNodes::replace_lost(self).map_err(
            crate::error::LaunchError::system("sim: cannot start a node's metadata service"),
        )?;
        Ok((
            done.into_iter()
                .map(|r| NodeEvent::Ready {
                    node: r.node,
                    vm: r.vm,
                    zone: r.zone,
                    market: r.market.name(),
                })
                .collect(),
            waiting,
        ))
    }
    fn provisioning_delay(&self) -> Duration {
        self.provisioning_delay
    }
    fn capacity_wait(&self) -> Duration {
        self.capacity_wait
    }
    /// Every simulated quarter hour (at least every 50 ms of real time).
    fn capacity_retry(&self) -> Duration {
        Duration::from_secs_f64((900.0 / self.time_scale).max(0.05))
    }
    fn market_time_s(&self) -> Option<f64> {
        Some(self.sim_now())
    }
    fn cost(&self, useful_s: f64) -> Option<Cost> {
        self.bill(useful_s)
    }
}
