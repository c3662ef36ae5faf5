//! Provider `aws`: the run's nodes are EC2 instances ringmaster asks for
//! itself. Each node's instance is requested on the failover ladder
//! (`ladder`: a named capacity reservation, spot zone by zone, then
//! on-demand where the market allows), with user data that starts
//! `ringmaster agent` pointed at this launcher (`request`); the agents
//! start the workers. A poller thread reads the run's instances
//! (DescribeInstances by the run's tag) so a terminated instance is a lost
//! node; a worker's spot notice (its metadata service, through the usual
//! watchers) marks its node as going; both are replaced before the next
//! attempt, only those nodes. At the end every instance tagged with the
//! run is terminated (`release`, and `Drop` when the launcher fails);
//! `machines.json` in the run directory lets `ringmaster down` find them
//! after a crash.

pub mod creds;
mod down;
pub mod ec2;
pub mod ladder;
pub mod request;
mod settings;

pub use down::{down, Record};
pub use settings::{dry_run, plan_lines, settings, DryRunAnswer, Settings};

use crate::error::LaunchError;
use crate::provider::{NodeEvent, Released};
use ec2::{ApiError, Ec2, ErrorClass, Instance};
use ladder::Rung;
use proto::report::{Buy, Cost, MachineReport, MarketCost, VmCost};
use proto::spec::{JobSpec, NoticeSource, Notices, SimMarket};
use request::{NodeRequest, Template, RUN_TAG};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

/// How often the poller reads the run's instances.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// One instance the run has had.
#[derive(Debug, Clone)]
struct Held {
    node: u32,
    id: String,
    zone: String,
    buy: Buy,
    reservation: Option<String>,
    launched: SystemTime,
    ended: Option<SystemTime>,
    state: String,
}

pub struct AwsNodes {
    ec2: Arc<Ec2>,
    template: Template,
    zones: Vec<String>,
    market: SimMarket,
    /// A named capacity reservation: (id, its zone, how its instances are
    /// bought: on-demand, or a Capacity Block's).
    reservation: Option<(String, String, Buy)>,
    rdzv: crate::rendezvous::Rendezvous,
    /// Each node's current instance id and zone, and how many it had.
    current: Vec<(Option<String>, Option<String>, u32)>,
    /// Nodes without a usable instance (none yet, terminated, agent gone).
    lost: BTreeSet<u32>,
    /// Nodes whose instance got a spot notice: replaced at the next attempt.
    doomed: BTreeSet<u32>,
    held: Vec<Held>,
    polled: mpsc::Receiver<(SystemTime, Result<Vec<Instance>, ApiError>)>,
    stop: Arc<AtomicBool>,
    boot_timeout: Duration,
    capacity_wait: Duration,
    capacity_retry: Duration,
    offer: Option<crate::capacity::Offer>,
    /// The newest spot price per zone and its time
    /// (DescribeSpotPriceHistory), where fresh.
    spot_prices: BTreeMap<String, (f64, String)>,
    record: PathBuf,
    released: bool,
    /// A poll error already reported (said once, not every second).
    poll_error: Option<String>,
}

impl AwsNodes {
    pub fn new(
        spec: &JobSpec,
        rdzv: crate::rendezvous::Rendezvous,
        run_id: &str,
        run_dir: &Path,
    ) -> Result<AwsNodes, LaunchError> {
        let Settings {
            template,
            zones,
            market,
            region,
            endpoint,
            reservation_id,
            offer,
            boot_timeout,
            capacity_wait,
            capacity_retry,
        } = settings(spec, run_id, &rdzv.addr().port().to_string())?;
        let issue = |f: &str, m: String| LaunchError::Config(vec![proto::SpecIssue::new(f, m)]);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let creds = creds::credentials(&env).map_err(LaunchError::Cloud)?;
        let ec2 = Arc::new(Ec2::new(endpoint, region, creds));
        let instance_type = &template.instance_type;
        let reservation = match &reservation_id {
            Some(id) => {
                let r = ec2.capacity_reservation(id).map_err(|e| {
                    LaunchError::Cloud(format!("{e} (provider.capacity_reservation_id)"))
                })?;
                if r.instance_type != *instance_type {
                    return Err(issue(
                        "provider.capacity_reservation_id",
                        format!(
                            "{id} holds {} instances, the job asks for {instance_type}",
                            r.instance_type
                        ),
                    ));
                }
                let block = r.kind == "capacity-block";
                if r.state != "active" {
                    return Err(issue(
                        "provider.capacity_reservation_id",
                        if block && r.state == "scheduled" {
                            format!("{id} is a Capacity Block that has not started yet (scheduled): run the job once it is active")
                        } else {
                            format!("{id} is {}, not active", r.state)
                        },
                    ));
                }
                let buy = if block {
                    Buy::CapacityBlock
                } else {
                    Buy::OnDemand
                };
                Some((r.id, r.zone, buy))
            }
            None => None,
        };
        let spot_prices = if market == SimMarket::OnDemand {
            BTreeMap::new()
        } else {
            // For the bill; a failure here costs only the figure.
            ec2.spot_prices(instance_type)
                .map(|ps| {
                    ps.into_iter()
                        .filter(|p| zones.contains(&p.zone) && fresh(&p.timestamp))
                        .map(|p| (p.zone.clone(), (p.price, p.timestamp)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (tx, polled) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (ec2, stop, run) = (ec2.clone(), stop.clone(), run_id.to_string());
            std::thread::Builder::new()
                .name("aws-poller".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = ec2.describe_tagged(RUN_TAG, &run);
                        if tx.send((SystemTime::now(), r)).is_err() {
                            return;
                        }
                        std::thread::sleep(POLL_EVERY);
                    }
                })
                .map_err(LaunchError::system("cannot start the EC2 poller"))?;
        }
        let nodes = spec.resources.nodes;
        let p = AwsNodes {
            ec2,
            template,
            zones,
            market,
            reservation,
            rdzv,
            current: vec![(None, None, 0); nodes as usize],
            // No instance yet: the first attempt asks for every node's.
            lost: (0..nodes).collect(),
            doomed: BTreeSet::new(),
            held: Vec::new(),
            polled,
            stop,
            boot_timeout,
            capacity_wait,
            capacity_retry,
            offer,
            spot_prices,
            record: run_dir.join("machines.json"),
            released: false,
            poll_error: None,
        };
        p.write_record();
        Ok(p)
    }

    fn write_record(&self) {
        let r = Record {
            provider: "aws".into(),
            run_id: self.template.run_id.clone(),
            region: self.ec2.region.clone(),
            endpoint: self.ec2.endpoint.clone(),
            instances: self.held.iter().map(|h| h.id.clone()).collect(),
        };
        let tmp = self.record.with_extension("json.tmp");
        if std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&r).expect("record serialises"),
        )
        .is_ok()
        {
            let _ = std::fs::rename(&tmp, &self.record);
        }
    }

    /// Ask for `node`'s instance down the ladder: the instance, or None
    /// (every rung out of capacity), or the fatal error.
    fn request(
        &mut self,
        node: u32,
        out: &mut Vec<NodeEvent>,
    ) -> Result<Option<Held>, LaunchError> {
        let (_, last_zone, generation) = self.current[node as usize].clone();
        let rungs = ladder::ladder(
            &self.zones,
            self.market,
            self.reservation
                .as_ref()
                .map(|(i, z, b)| (i.as_str(), z.as_str(), *b)),
            last_zone.as_deref(),
        );
        let token = self.rdzv.enroll_agent(node);
        for rung in &rungs {
            let params = request::run_instances_params(
                &self.template,
                &NodeRequest {
                    node,
                    generation,
                    rung,
                    agent_token: &token,
                    dry_run: false,
                },
            );
            let t0 = Instant::now();
            let answer = self.ec2.run_instance(&params);
            let api_s = t0.elapsed().as_secs_f64();
            let event = |outcome: String, machine: Option<String>| NodeEvent::Requested {
                node,
                call: "RunInstances",
                instance_type: self.template.instance_type.clone(),
                zone: rung.zone.clone(),
                market: rung.buy.name(),
                reservation: rung.reservation.clone(),
                outcome,
                machine,
                api_s,
            };
            match answer {
                Ok(i) => {
                    out.push(event("ok".into(), Some(i.id.clone())));
                    return Ok(Some(self.hold(node, i, rung)));
                }
                Err(e) => {
                    out.push(event(e.code.clone(), None));
                    if ec2::classify(&e.code, e.status) != ErrorClass::Capacity {
                        return Err(LaunchError::Cloud(describe(
                            &e,
                            &self.template.instance_type,
                            rung,
                        )));
                    }
                }
            }
        }
        Ok(None)
    }

    fn hold(&mut self, node: u32, i: Instance, rung: &Rung) -> Held {
        let h = Held {
            node,
            id: i.id.clone(),
            zone: if i.zone.is_empty() {
                rung.zone.clone()
            } else {
                i.zone
            },
            buy: rung.buy,
            reservation: rung.reservation.clone(),
            launched: i
                .launch_time
                .as_deref()
                .and_then(ec2::parse_iso8601)
                .unwrap_or_else(SystemTime::now),
            ended: None,
            state: i.state,
        };
        self.held.push(h.clone());
        let slot = &mut self.current[node as usize];
        *slot = (Some(h.id.clone()), Some(h.zone.clone()), slot.2 + 1);
        self.write_record();
        h
    }

    /// Terminate `ids` (an error is returned, the caller decides).
    fn terminate(&self, ids: &[String]) -> Result<(), ApiError> {
        self.ec2.terminate(ids)
    }

    /// The price per hour of `h` and where it comes from: the zone's spot
    /// price from EC2's history, else the catalog's (spot or on-demand).
    fn price(&self, h: &Held) -> Option<(f64, String)> {
        if h.buy == Buy::Spot {
            if let Some((p, t)) = self.spot_prices.get(&h.zone) {
                return Some((*p, format!("DescribeSpotPriceHistory {}, {t}", h.zone)));
            }
        }
        let o = self.offer.as_ref()?;
        let on_demand = (o.price_per_hour.on_demand, o.figure_as_of("on_demand"));
        let (p, as_of) = match h.buy {
            Buy::Spot => (o.price_per_hour.spot?, o.figure_as_of("spot")),
            // A Capacity Block was paid up front: its hours at the
            // catalog's block rate (on-demand where it has none).
            Buy::CapacityBlock => o
                .short_term_of(Buy::CapacityBlock)
                .map_or(on_demand, |t| (t.price_per_hour, t.as_of.as_str())),
            _ => on_demand,
        };
        Some((p, format!("catalog, as of {as_of}")))
    }

    /// Hours billed: per second, at least a minute (EC2's Linux billing).
    fn hours(h: &Held, now: SystemTime) -> f64 {
        let end = h.ended.unwrap_or(now);
        end.duration_since(h.launched)
            .unwrap_or_default()
            .as_secs_f64()
            .max(60.0)
            / 3600.0
    }
}

/// Whether a price-history time is within the last 30 days (an emulator's
/// or a long-unchanged price is no figure for today's bill).
fn fresh(timestamp: &str) -> bool {
    ec2::parse_iso8601(timestamp)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < Duration::from_secs(30 * 86_400))
}

/// One line naming the call, the instance type, the zone and EC2's words.
fn describe(e: &ApiError, instance_type: &str, rung: &Rung) -> String {
    format!(
        "EC2 {} for {instance_type} ({}) in {} failed: {}: {}",
        e.call,
        rung.buy.name(),
        rung.zone,
        e.code,
        e.message
    )
}

impl crate::provider::Provider for AwsNodes {
    fn kind(&self) -> &'static str {
        "aws"
    }
    fn replaces_nodes(&self) -> bool {
        true
    }
    fn agent_nodes(&self) -> Vec<u32> {
        (0..self.current.len() as u32).collect()
    }
    fn agent_wait(&self) -> Option<Duration> {
        Some(self.boot_timeout)
    }
    fn worker_contract(&self, node: u32, local_rank: u32, c: &mut proto::contract::WorkerContract) {
        if let Some(a) = self.rdzv.agent_addr(node) {
            c.node_addr = a;
        }
        if let Some(a) = self.rdzv.agent_addr(0) {
            c.master_addr = a;
        }
        if local_rank == 0 {
            // The instance's own metadata service: the spot notice.
            let mut n = c.notices.clone().unwrap_or_default();
            if !n
                .watch
                .iter()
                .any(|w| matches!(w, NoticeSource::Aws { .. }))
            {
                n.watch.push(NoticeSource::Aws { endpoint: None });
            }
            c.notices = Some(Notices { ..n });
        }
    }
    fn poll(&mut self, _now: Instant, _p: Option<crate::provider::RunProgress>) -> Vec<NodeEvent> {
        let mut out = Vec::new();
        while let Ok((seen, answer)) = self.polled.try_recv() {
            let instances = match answer {
                Ok(i) => {
                    self.poll_error = None;
                    i
                }
                Err(e) => {
                    if self.poll_error.as_deref() != Some(&e.code) {
                        eprintln!("[ringmaster] aws: reading the run's instances failed: {e}");
                        self.poll_error = Some(e.code.clone());
                    }
                    continue;
                }
            };
            for i in instances {
                let Some(h) = self.held.iter_mut().find(|h| h.id == i.id) else {
                    continue;
                };
                if h.state == i.state {
                    continue;
                }
                h.state = i.state.clone();
                out.push(NodeEvent::MachineState {
                    node: h.node,
                    machine: h.id.clone(),
                    state: i.state.clone(),
                    reason: i.state_reason.clone(),
                    seen,
                });
                if i.is_gone() && h.ended.is_none() {
                    h.ended = Some(seen);
                }
                let node = h.node;
                let is_current = self.current[node as usize].0.as_deref() == Some(i.id.as_str());
                if i.is_gone() && is_current && !self.lost.contains(&node) {
                    self.lost.insert(node);
                    self.doomed.remove(&node);
                    out.push(NodeEvent::Lost { node });
                }
            }
        }
        out
    }
    fn node_notice(&mut self, node: u32) {
        if (node as usize) < self.current.len() {
            self.doomed.insert(node);
        }
    }
    fn agent_lost(&mut self, node: u32) {
        if !self.released && (node as usize) < self.current.len() {
            self.lost.insert(node);
        }
    }
    fn is_lost(&self, node: u32) -> bool {
        self.lost.contains(&node) || self.doomed.contains(&node)
    }
    fn has_lost(&self) -> bool {
        !self.lost.is_empty() || !self.doomed.is_empty()
    }
    fn retire(&mut self, node: u32) -> bool {
        self.lost.insert(node);
        true
    }
    fn replace_lost(&mut self) -> Result<(Vec<NodeEvent>, Vec<u32>), LaunchError> {
        let mut out = Vec::new();
        let mut waiting = Vec::new();
        let going: Vec<u32> = self.lost.union(&self.doomed).copied().collect();
        // Done with the old instances (their checkpoint is safe): stop
        // paying, and their agents no longer count.
        let old: Vec<String> = going
            .iter()
            .filter_map(|n| self.current[*n as usize].0.clone())
            .filter(|id| self.held.iter().any(|h| &h.id == id && h.ended.is_none()))
            .collect();
        if let Err(e) = self.terminate(&old) {
            eprintln!(
                "[ringmaster] aws: could not terminate {}: {e}",
                old.join(", ")
            );
        }
        let now = SystemTime::now();
        for h in self.held.iter_mut().filter(|h| old.contains(&h.id)) {
            h.ended.get_or_insert(now);
        }
        for node in going {
            self.rdzv.dismiss_agent(node);
            self.current[node as usize].0 = None;
            match self.request(node, &mut out)? {
                Some(h) => {
                    self.lost.remove(&node);
                    self.doomed.remove(&node);
                    out.push(NodeEvent::Ready {
                        node,
                        vm: h.id.clone(),
                        zone: h.zone.clone(),
                        market: h.buy.name(),
                    });
                }
                None => waiting.push(node),
            }
        }
        Ok((out, waiting))
    }
    fn capacity_wait(&self) -> Duration {
        self.capacity_wait
    }
    fn capacity_retry(&self) -> Duration {
        self.capacity_retry
    }
    fn release(&mut self) -> Released {
        self.released = true;
        self.stop.store(true, Ordering::Relaxed);
        // By the run's tag: also an instance whose RunInstances answer was
        // lost.
        let ids: Vec<String> = match self.ec2.describe_tagged(RUN_TAG, &self.template.run_id) {
            Ok(all) => all
                .into_iter()
                .filter(|i| i.state != "terminated")
                .map(|i| i.id)
                .collect(),
            Err(_) => self
                .held
                .iter()
                .filter(|h| h.ended.is_none())
                .map(|h| h.id.clone())
                .collect(),
        };
        let now = SystemTime::now();
        match self.terminate(&ids) {
            Ok(()) => {
                for h in self.held.iter_mut() {
                    h.ended.get_or_insert(now);
                    if ids.contains(&h.id) {
                        h.state = "terminated".into();
                    }
                }
                Released {
                    machines: ids,
                    failed: None,
                }
            }
            Err(e) => Released {
                machines: Vec::new(),
                failed: Some((ids, e.to_string())),
            },
        }
    }
    fn machines(&self) -> Vec<MachineReport> {
        let now = SystemTime::now();
        self.held
            .iter()
            .map(|h| MachineReport {
                node: h.node,
                id: h.id.clone(),
                zone: h.zone.clone(),
                market: h.buy,
                reservation: h.reservation.clone(),
                started: humantime::format_rfc3339_seconds(h.launched).to_string(),
                ended: h
                    .ended
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                state: h.state.clone(),
                price_per_hour: self.price(h).map(|p| p.0),
                price_source: self.price(h).map(|p| p.1),
                cost_usd: self.price(h).map(|p| p.0 * Self::hours(h, now)),
            })
            .collect()
    }
    fn cost(&self, useful_s: f64) -> Option<Cost> {
        let o = self.offer.as_ref()?;
        if self.held.is_empty() {
            return None;
        }
        let now = SystemTime::now();
        let vms: Vec<VmCost> = self
            .held
            .iter()
            .map(|h| {
                let hours = Self::hours(h, now);
                let cost = self.price(h).map_or(0.0, |p| p.0) * hours;
                VmCost {
                    node: h.node,
                    vm: h.id.clone(),
                    zone: h.zone.clone(),
                    market: h.buy,
                    hours,
                    cost_usd: cost,
                }
            })
            .collect();
        let cost: f64 = vms.iter().map(|v| v.cost_usd).sum();
        let hours: f64 = vms.iter().map(|v| v.hours).sum();
        let od = self.current.len() as f64 * useful_s / 3600.0 * o.price_per_hour.on_demand;
        let headline = if self.market == SimMarket::OnDemand {
            Some(o.price_per_hour.on_demand)
        } else {
            self.spot_prices
                .values()
                .map(|p| p.0)
                .reduce(f64::min)
                .or(o.price_per_hour.spot)
        };
        Some(Cost {
            offer: o.instance_type.clone(),
            market: self.market.name().into(),
            price_per_node_hour: headline.unwrap_or(0.0),
            node_hours: hours,
            cost_usd: cost,
            by_market: MarketCost::by_market(&vms),
            vms,
            on_demand_equivalent_usd: od,
            savings_percent: if od > 0.0 {
                (1.0 - cost / od) * 100.0
            } else {
                0.0
            },
            time_scale: 1.0,
            deadline: None,
        })
    }
}

impl Drop for AwsNodes {
    /// A launcher that fails or panics still gives the instances back.
    fn drop(&mut self) {
        use crate::provider::Provider;
        if !self.released {
            let r = self.release();
            if let Some((ids, e)) = r.failed {
                eprintln!(
                    "[ringmaster] aws: could not terminate {} ({e}); run `ringmaster down` on the run directory",
                    ids.join(", ")
                );
            }
        }
    }
}
