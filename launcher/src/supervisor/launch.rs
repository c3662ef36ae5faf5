//! Starting an attempt: new nodes for lost ones (waiting for capacity,
//! bounded, cut short by Ctrl-C), the node agents awaited, what the last
//! attempt left behind ended, then every worker spawned through the
//! provider with this attempt's contract.

use super::attempt::{exit_kind, Attempt, REMOTE_HANDLE};
use super::machine::{Event, ExitKind};
use super::state::{AgentWorker, Exited, Flow, Parked, RunState};
use super::{waits, Supervisor};
use crate::error::LaunchError;
use crate::plan::Plan;
use crate::process;
use crate::provider::{NodeEvent, Provider, Spawned};
use nix::sys::signal::Signal;
use proto::events::RunEvent;
use proto::exit::LauncherExit;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a wait for replacement nodes ended.
pub(super) enum Replaced {
    /// These nodes are back (Ready), after the provisioning delay.
    Nodes(Vec<u32>),
    /// No capacity within `capacity_wait_s`: the message for the report,
    /// and the nodes still without a machine.
    NoCapacity { message: String, waiting: Vec<u32> },
    /// SIGINT or SIGTERM during the wait.
    Interrupted,
}

impl Supervisor {
    /// The machine's Launch: everything an attempt needs, then its workers.
    pub(super) async fn begin_attempt(
        &mut self,
        r: &mut RunState,
        n: u32,
        keep: Vec<u32>,
    ) -> Result<Flow, LaunchError> {
        r.rendezvous_deadline = Some(Instant::now() + r.policy.rendezvous_timeout);
        r.grace_deadline = None;
        // Each attempt handles its own notice.
        r.seen_notice = None;
        r.notice = None;
        r.agreed_stop = None;
        // Nodes the run got back while it ran short (it stopped to grow
        // onto them): new nodes like replacements, and the others still
        // missing are not waited for (the run asks again as it goes).
        let grown = std::mem::take(&mut r.grow).nodes;
        let mut replaced = grown.clone();
        // The nodes this attempt runs on (None: all of them).
        let mut live: Option<Vec<u32>> = None;
        if r.provider.has_lost() {
            // Lost nodes come back as new VMs where the market has room,
            // after the provisioning delay; with spot only and none
            // anywhere, wait for capacity (bounded).
            let wait = if grown.is_empty() {
                r.provider.capacity_wait()
            } else {
                Duration::ZERO
            };
            let asked = match self.replace_lost(r.provider.as_mut(), wait).await {
                // The cloud refused for good: the run ends here, cleanly
                // (its machines given back, its report written).
                Err(LaunchError::Cloud(msg)) => {
                    r.end(LauncherExit::CloudError, msg);
                    return Ok(Flow::Cut);
                }
                other => other?,
            };
            match asked {
                Replaced::Nodes(nodes) => replaced.extend(nodes),
                Replaced::NoCapacity { message, waiting } => {
                    // An elastic run goes on with the nodes it has.
                    let all = self.full_plan.nodes.len() as u32;
                    let up: Vec<u32> = (0..all).filter(|k| !waiting.contains(k)).collect();
                    match self.compiled.spec.resources.min_nodes {
                        Some(min) if !up.is_empty() && up.len() as u32 >= min => live = Some(up),
                        _ => {
                            r.end(LauncherExit::NoCapacity, message);
                            return Ok(Flow::Cut);
                        }
                    }
                }
                Replaced::Interrupted => {
                    r.end(LauncherExit::Interrupted, "interrupted while waiting for a replacement node; checkpoints are kept: run again with --resume".into());
                    return Ok(Flow::Cut);
                }
            }
            if let Some((p, out)) = r.preemptions.last_mut() {
                p.out_to_replacement_s
                    .get_or_insert(out.elapsed().as_secs_f64());
            }
        }
        let before = self.resize(r, n, live.as_deref());
        let keep = seats(
            before.as_ref().unwrap_or(&self.plan),
            &self.plan,
            &keep,
            &replaced,
        );
        // Parked ranks not kept are told to exit (by the new round).
        let kept: std::collections::HashSet<u32> = keep.iter().map(|(was, _)| *was).collect();
        for (rank, p) in std::mem::take(&mut r.parked) {
            if kept.contains(&rank) {
                r.parked.insert(rank, p);
            } else {
                r.leaving.push(p.pgid);
            }
        }
        if n > 0 && r.policy.end_strays {
            self.end_strays(r, n);
        }
        if self.wait_for_agents(r).await? == Flow::Cut {
            return Ok(Flow::Cut);
        }
        self.choose_resume(r, n);
        // New nodes are checked: the first attempt's, and replacements.
        let preflight = r.policy.preflight && (n == 0 || !replaced.is_empty());
        match self.spawn_attempt(r, n, &keep, preflight) {
            Ok(a) => r.attempt = Some(a),
            Err(e) => {
                // Nothing half-started survives a launch error.
                if let Some(a) = &r.attempt {
                    a.signal_all(Signal::SIGKILL);
                }
                return Err(e);
            }
        }
        r.queue.push_back(Event::Launched);
        Ok(Flow::Go)
    }

    /// The plan of attempt `n`: on the nodes `live` (None: all), said
    /// when it differs from the last attempt's. The last attempt's plan
    /// when it does.
    fn resize(&mut self, r: &mut RunState, n: u32, live: Option<&[u32]>) -> Option<Plan> {
        let nodes = |p: &Plan| p.nodes.iter().map(|x| x.node_rank).collect::<Vec<u32>>();
        let now = live.map_or_else(|| nodes(&self.full_plan), <[u32]>::to_vec);
        if nodes(&self.plan) == now {
            // (The plan is built only when the nodes change.)
            return None;
        }
        let plan = match live {
            Some(up) => self.full_plan.on_nodes(up),
            None => self.full_plan.clone(),
        };
        self.events.emit(RunEvent::WorldResized {
            attempt: n,
            nodes: now.clone(),
            world_size: plan.world_size,
            from_world_size: self.plan.world_size,
        });
        self.console.note(&format!(
            "[ringmaster] attempt {n} runs on {} node(s) {now:?}: world size {} (was {})",
            now.len(),
            plan.world_size,
            self.plan.world_size
        ));
        r.machine.world = plan.world_size;
        Some(std::mem::replace(&mut self.plan, plan))
    }

    /// What the last attempt's programs left behind (a setsid child of a
    /// worker that died) does not run on into attempt `n`.
    fn end_strays(&mut self, r: &RunState, n: u32) {
        let live: Vec<u32> = r
            .parked
            .values()
            .map(|p| p.pgid)
            .chain(r.leaving.iter().copied())
            .chain(r.provider.processes())
            .chain(
                r.attempt
                    .iter()
                    .flat_map(|a| a.pgids.iter().flatten().copied()),
            )
            .collect();
        let strays = process::end_orphans(&live);
        if strays > 0 {
            self.events.emit(RunEvent::StraysEnded {
                attempt: Some(n),
                processes: strays as u64,
            });
        }
    }

    /// Node agents (the other pods of a Kubernetes job) must be there to
    /// start their workers: wait for them up to the rendezvous timeout.
    async fn wait_for_agents(&mut self, r: &mut RunState) -> Result<Flow, LaunchError> {
        // The agents of the nodes this attempt runs on (an elastic run
        // short of nodes has none on the others).
        let nodes: Vec<u32> = self.plan.nodes.iter().map(|n| n.node_rank).collect();
        // An ssh session or Slurm step that ended (before its agent's loss
        // reached the run, or while the agent is still on its way out) is
        // started again; its old agent does not count.
        for k in &nodes {
            r.provider.ensure_agent(*k);
        }
        let missing = |r: &RunState| agents_missing(r, &nodes);
        if missing(r).is_empty() {
            return Ok(Flow::Go);
        }
        let wait = r
            .provider
            .agent_wait()
            .unwrap_or(r.policy.rendezvous_timeout);
        let until = Instant::now() + wait;
        let mut waits = waits::Waits::new().map_err(|e| LaunchError::Internal(e.to_string()))?;
        loop {
            let now_missing = missing(r);
            if now_missing.is_empty() || Instant::now() >= until {
                break;
            }
            // (An ssh session or Slurm step that ended before its agent's
            // loss reached the run is started again here.)
            for k in now_missing {
                r.provider.ensure_agent(k);
            }
            if waits.sleep(Duration::from_millis(50)).await.is_err() {
                r.end(
                    LauncherExit::Interrupted,
                    "interrupted while waiting for the node agents".into(),
                );
                return Ok(Flow::Cut);
            }
        }
        let gone = missing(r);
        if !gone.is_empty() {
            let what = if r.provider.agent_wait().is_some() {
                "provider.boot_timeout_s"
            } else {
                "recovery.rendezvous_timeout_s"
            };
            let msg = format!(
                "the node agents of node(s) {gone:?} did not connect within {} s ({what})",
                wait.as_secs_f64()
            );
            r.end(LauncherExit::RendezvousFailed, msg);
            return Ok(Flow::Cut);
        }
        Ok(Flow::Go)
    }

    /// New nodes for the provider's lost ones, waiting up to `wait` (its
    /// capacity wait) where the market has no room and allows nothing
    /// else: the nodes replaced, or NoCapacity when capacity never came.
    pub(super) async fn replace_lost(
        &mut self,
        provider: &mut dyn Provider,
        wait: Duration,
    ) -> Result<Replaced, LaunchError> {
        let t0 = Instant::now();
        let mut waits = waits::Waits::new().map_err(|e| LaunchError::Internal(e.to_string()))?;
        let mut waiting_logged = false;
        let mut nodes = Vec::new();
        loop {
            let (replaced, waiting) = provider.replace_lost()?;
            for ev in &replaced {
                self.emit_node_event(ev, provider);
                if let NodeEvent::Ready { node, .. } = ev {
                    nodes.push(*node);
                }
            }
            if waiting.is_empty() {
                if waits.sleep(provider.provisioning_delay()).await.is_err() {
                    return Ok(Replaced::Interrupted);
                }
                return Ok(Replaced::Nodes(nodes));
            }
            if !waiting_logged && !wait.is_zero() {
                waiting_logged = true;
                self.events.emit(RunEvent::WaitingForCapacity {
                    nodes: waiting.clone(),
                    capacity_wait_s: wait.as_secs_f64(),
                    provider: provider.kind().into(),
                });
                self.console.note(&format!(
                    "[ringmaster] no spot capacity in any zone for node(s) {waiting:?}; waiting up to {:.0} s",
                    wait.as_secs_f64()
                ));
            }
            if t0.elapsed() >= wait {
                return Ok(Replaced::NoCapacity {
                    message: format!(
                        "no spot capacity in any zone for node(s) {waiting:?} after waiting {:.1} s (provider.capacity_wait_s); provider.market \"spot\" allows no on-demand fallback. Checkpoints are kept: run again with --resume",
                        t0.elapsed().as_secs_f64()
                    ),
                    waiting,
                });
            }
            for ev in provider.poll(Instant::now(), None) {
                // Only capacity news can come while no worker runs.
                self.emit_node_event(&ev, provider);
            }
            if waits.sleep(Duration::from_millis(100)).await.is_err() {
                return Ok(Replaced::Interrupted);
            }
        }
    }

    /// Worker `w`'s contract for attempt `n`: the plan's, what changes per
    /// attempt, and what the provider says of its node.
    fn attempt_contract(
        &self,
        r: &RunState,
        w: &crate::plan::WorkerPlan,
        n: u32,
        master_port: u16,
        dir: &Path,
        preflight: bool,
    ) -> proto::contract::WorkerContract {
        let mut c = w.contract.clone();
        c.run_id = self.run_id.clone();
        c.restart_count = n as u64;
        c.rdzv_endpoint = self.rdzv_endpoint.clone();
        c.rdzv_token = self.token.clone();
        c.master_port = master_port;
        c.attempt_dir = Some(dir.display().to_string());
        c.keep_survivors = r.policy.keep_survivors;
        c.preflight = preflight;
        c.sigterm_is_notice = r.provider.signals_workers();
        c.resume = r.resume_from.clone();
        r.provider
            .worker_contract(w.node_rank, w.local_rank, &mut c);
        c
    }

    /// Start the workers of attempt `n` in a fresh rendezvous round; the
    /// parked survivors in `keep` (their rank when they parked, their rank
    /// now) rejoin it instead (they take their process groups from
    /// `r.parked` into the attempt).
    pub(super) fn spawn_attempt(
        &mut self,
        r: &mut RunState,
        n: u32,
        keep: &[(u32, u32)],
        preflight: bool,
    ) -> Result<Attempt, LaunchError> {
        let spec = &self.compiled.spec;
        let dir = self.run_dir.join(format!("attempt-{n}"));
        std::fs::create_dir_all(&dir).map_err(LaunchError::system(format!(
            "cannot create {}",
            dir.display()
        )))?;
        r.rdzv.new_round(
            n as u64,
            self.plan.nodes.len() as u32,
            spec.resources.devices_per_node,
            keep,
        );
        if preflight {
            r.rdzv.hold_welcomes();
        }
        // A free port on rank 0's node for the user program's own store
        // (torch env:// initialisation), as torchrun does.
        let master_port = std::net::TcpListener::bind((self.plan.master_addr.as_str(), 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| {
                LaunchError::Io(format!(
                    "cannot find a free port on {}: {e}",
                    self.plan.master_addr
                ))
            })?;
        let world = self.plan.world_size as usize;
        let mut a = Attempt {
            n,
            dir: dir.clone(),
            launched_at: Instant::now(),
            first_join: None,
            first_step_seen: false,
            first_step_at: None,
            all_joined: None,
            pgids: vec![None; world],
            by_handle: Default::default(),
            agents: r.rdzv.clone(),
            node_of: self.plan.workers.iter().map(|w| w.node_rank).collect(),
            logs: (0..world)
                .map(|r| dir.join(format!("rank-{r}.log")))
                .collect(),
            exits: BTreeMap::new(),
            errors: BTreeMap::new(),
            beats: vec![None; world],
            last_beat: vec![None; world],
            progress_mark: (0, Instant::now()),
            results: BTreeMap::new(),
            message: None,
            preflight,
            kept: keep.iter().map(|(_, now)| *now).collect(),
        };
        self.events.emit(RunEvent::AttemptStarted {
            attempt: n,
            master_port,
            dir: dir.display().to_string(),
        });
        if !keep.is_empty() {
            self.events.emit(RunEvent::SurvivorsKept {
                attempt: n,
                ranks: keep.iter().map(|(_, now)| *now).collect(),
                from_ranks: keep.iter().map(|(was, _)| *was).collect(),
                state_from: a.kept.first().copied(),
            });
        }
        for (was, now) in keep {
            if let Some(Parked { pgid, log }) = r.parked.remove(was) {
                link_survivor_log(&dir, *now, &log);
                a.set_handle(*now, pgid);
                a.logs[*now as usize] = log;
            }
        }
        let by_agent: std::collections::HashSet<u32> =
            r.provider.agent_nodes().into_iter().collect();
        for w in &self.plan.workers {
            if a.kept.contains(&w.rank) {
                continue;
            }
            let c = self.attempt_contract(r, w, n, master_port, &dir, preflight);
            let mut env = self.plan.worker_env(&c);
            env.extend(r.provider.worker_env(w.node_rank, w.local_rank));
            let log = dir.join(format!("rank-{}.log", w.rank));
            let tee = self.opts.tee.then(|| (w.rank, self.console.clone()));
            let started = |pid, log, by_agent| RunEvent::WorkerStarted {
                attempt: n,
                rank: w.rank,
                node: w.node_rank,
                local_rank: w.local_rank,
                pid,
                log,
                by_agent,
            };
            // A node agent's worker gets an id of its own (its rank may
            // change if it survives into a world of another size).
            let worker = r.next_worker;
            let spawned = if by_agent.contains(&w.node_rank) {
                crate::provider::spawn_by_agent(&r.rdzv, w.node_rank, worker, &env)
            } else {
                r.provider
                    .spawn_worker(w.node_rank, &self.opts.worker_bin, &c, &env, &log, tee)
            };
            match spawned {
                Ok(Spawned::Remote { agent }) => {
                    // Its exit comes back as an agent report under this id
                    // (or as its agent's loss).
                    r.next_worker += 1;
                    r.agent_workers.insert(
                        worker,
                        AgentWorker {
                            agent,
                            attempt: n,
                            rank: w.rank,
                            log: log.clone(),
                        },
                    );
                    a.set_handle(w.rank, REMOTE_HANDLE + worker);
                    self.events.emit(started(None, None, true));
                }
                Ok(Spawned::Local(mut child)) => {
                    let pid = child.id().expect("a just-started child has a pid");
                    a.set_handle(w.rank, pid);
                    self.events
                        .emit(started(Some(pid), Some(log.display().to_string()), false));
                    let tx = r.exit_tx.clone();
                    let rank = w.rank;
                    tokio::spawn(async move {
                        let kind = match child.wait().await {
                            Ok(status) => exit_kind(status),
                            Err(_) => ExitKind::Code(-1),
                        };
                        let _ = tx.send(Exited {
                            attempt: n,
                            handle: pid,
                            rank,
                            kind,
                        });
                    });
                }
                Err(e) => {
                    let msg = format!("cannot start {}: {e}", self.opts.worker_bin.display());
                    let _ = std::fs::write(&log, format!("{msg}\n"));
                    self.events.emit(RunEvent::WorkerSpawnFailed {
                        attempt: n,
                        rank: w.rank,
                        error: msg,
                    });
                    let _ = r.exit_tx.send(Exited {
                        attempt: n,
                        handle: 0,
                        rank: w.rank,
                        kind: ExitKind::SpawnFailed,
                    });
                }
            }
        }
        Ok(a)
    }
}

/// The survivors parked in attempt `before` that `after` keeps, as (their
/// rank in `before`, their rank in `after`): each keeps its place, its node
/// and local rank, whose rank in `after` is another where the world shrank
/// or grew. One whose node is not in `after`, or was replaced (it got a
/// notice after it parked), is not kept.
pub(super) fn seats(
    before: &Plan,
    after: &Plan,
    parked: &[u32],
    replaced: &[u32],
) -> Vec<(u32, u32)> {
    let place: std::collections::HashMap<(u32, u32), u32> = after
        .workers
        .iter()
        .map(|w| ((w.node_rank, w.local_rank), w.rank))
        .collect();
    parked
        .iter()
        .filter_map(|was| {
            let w = before.workers.get(*was as usize)?;
            if replaced.contains(&w.node_rank) {
                return None;
            }
            place
                .get(&(w.node_rank, w.local_rank))
                .map(|now| (*was, *now))
        })
        .collect()
}

/// Which of `nodes` have their workers started by a node agent (a cloud
/// instance's, a pod's) that has not connected yet.
pub(super) fn agents_missing(r: &RunState, nodes: &[u32]) -> Vec<u32> {
    let agents = r.provider.agent_nodes();
    nodes
        .iter()
        .copied()
        .filter(|k| agents.contains(k) && r.rdzv.agent(*k).is_none())
        .collect()
}

/// A survivor goes on writing the log it started with; this attempt's
/// folder links to it, relatively (../attempt-k/rank-r.log), so the run
/// folder can be moved.
fn link_survivor_log(dir: &Path, rank: u32, log: &Path) {
    let link = dir.join(format!("rank-{rank}.log"));
    let target = match (log.parent().and_then(|p| p.file_name()), log.file_name()) {
        (Some(d), Some(f)) => Path::new("..").join(d).join(f),
        _ => log.to_path_buf(),
    };
    if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
        tracing::warn!("cannot link {}: {e}", link.display());
    }
}

#[cfg(test)]
mod tests {
    use super::seats;
    use serde_json::json;

    /// A survivor keeps its node and local rank; its rank is that place's
    /// in the next attempt's plan: the same, lower when a node before it
    /// is gone, higher when one before it is back.
    #[test]
    fn a_survivor_takes_its_places_rank_in_the_next_world() {
        let c = proto::compile(json!({"name": "p", "resources": {"nodes": 3, "devices_per_node": 2}, "workload": {"kind": "train"}})).unwrap();
        let full = crate::plan::plan(&c, 12, None, None, false, None);
        let without_1 = full.on_nodes(&[0, 2]);
        let without_0 = full.on_nodes(&[1, 2]);
        #[allow(clippy::type_complexity)]
        let table: [(
            &str,
            &crate::plan::Plan,
            &crate::plan::Plan,
            &[u32],
            &[u32],
            &[(u32, u32)],
        ); 6] = [
            (
                "node 1 replaced: the others as they were",
                &full,
                &full,
                &[0, 1, 4, 5],
                &[1],
                &[(0, 0), (1, 1), (4, 4), (5, 5)],
            ),
            (
                "node 1 gone: node 2's ranks move down",
                &full,
                &without_1,
                &[0, 1, 4, 5],
                &[],
                &[(0, 0), (1, 1), (4, 2), (5, 3)],
            ),
            (
                "node 0 gone: every rank moves down",
                &full,
                &without_0,
                &[2, 3, 4, 5],
                &[],
                &[(2, 0), (3, 1), (4, 2), (5, 3)],
            ),
            (
                "node 1 back: node 2's ranks move up",
                &without_1,
                &full,
                &[0, 1, 2, 3],
                &[1],
                &[(0, 0), (1, 1), (2, 4), (3, 5)],
            ),
            (
                "a node replaced as it came back is not kept",
                &without_1,
                &full,
                &[0, 1, 2, 3],
                &[1, 2],
                &[(0, 0), (1, 1)],
            ),
            (
                "a survivor whose node is not in the next world is not kept",
                &full,
                &without_1,
                &[2, 3],
                &[],
                &[],
            ),
        ];
        for (what, before, after, parked, replaced, want) in table {
            assert_eq!(seats(before, after, parked, replaced), want, "{what}");
        }
    }
}
