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
}

fn vm_name(node: u32, generation: u32) -> String {
    format!("sim-node-{node}-{generation}")
}

impl SimNodes {
    /// The simulator's state for a `sim` job (None for other providers).
    pub fn new(spec: &JobSpec, addrs: &[String]) -> std::io::Result<Option<SimNodes>> {
        let Provider::Sim {
            cloud,
            provisioning_delay_s,
            notice_window_s,
            preemptions,
            ..
        } = &spec.provider
        else {
            return Ok(None);
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
            .collect::<Result<_, _>>()?;
        let mut schedule: Vec<(Duration, u32)> = preemptions
            .iter()
            .map(|p| (Duration::from_secs_f64(p.at_s), p.node))
            .collect();
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
        due.into_iter().map(|(n, _)| n).collect()
    }

    /// Replace every node that got a notice with a fresh one (a new VM on
    /// the same address, with a clean metadata service); returns them.
    pub fn replace_lost(&mut self) -> std::io::Result<Vec<u32>> {
        let lost: Vec<u32> = std::mem::take(&mut self.lost).into_iter().collect();
        for &node in &lost {
            self.doomed.retain(|(n, _)| *n != node);
            self.generation[node as usize] += 1;
            let name = vm_name(node, self.generation[node as usize]);
            self.servers[node as usize] =
                MetadataServer::start(self.cloud, self.addrs[node as usize], &name)?;
        }
        Ok(lost)
    }
}
