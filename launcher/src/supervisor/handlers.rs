//! The executor's handlers, one per kind of input: the rendezvous' events
//! (joins, heartbeats, results, parked survivors, node agents' reports), a
//! worker's exit, GPU telemetry, a signal, and the tick that fires timers
//! and watches heartbeats, progress and the provider's nodes. Each turns
//! what happened into the machine's events; none decides policy.

use super::attempt::{describe_exit, Attempt, REMOTE_HANDLE};
use super::machine::{Event, ExitKind};
use super::state::{Exited, Parked, RunState, Sig};
use super::Supervisor;
use crate::provider::{NodeEvent, Provider};
use crate::rendezvous::{RdzvEvent, Rendezvous};
use nix::sys::signal::Signal;
use proto::events::RunEvent;
use proto::wire::{unix_ms, Heartbeat, NoticeInfo, Request};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::time::{Instant, SystemTime};

impl Supervisor {
    pub(super) fn on_rendezvous(&mut self, r: &mut RunState, ev: RdzvEvent) {
        // Node agents come and go between attempts too.
        match &ev {
            RdzvEvent::AgentJoined { node, addr, at } => {
                self.events.emit(RunEvent::AgentJoined {
                    node: *node,
                    addr: addr.clone(),
                    joined: humantime::format_rfc3339_millis(*at).to_string(),
                });
                return;
            }
            RdzvEvent::AgentLost {
                node,
                agent,
                dismissed,
            } => {
                self.events.emit(RunEvent::AgentLost {
                    node: *node,
                    dismissed: *dismissed,
                });
                self.agent_gone(r, *agent);
                // Its pod or instance is gone, unless the launcher had let
                // it go already or a newer agent holds the node (an ssh
                // session or Slurm step started again as the next launch
                // waited: the loss, heard late, is of an agent no worker
                // now runs on).
                if !*dismissed && r.rdzv.agent(*node).is_none() {
                    r.provider.agent_lost(*node);
                }
                return;
            }
            _ => {}
        }
        let Some(a) = r.attempt.as_mut() else { return };
        let this = a.n as u64;
        match ev {
            RdzvEvent::Joined {
                round,
                rank,
                pid,
                preflight,
            } if round == this => {
                a.first_join.get_or_insert_with(Instant::now);
                self.events.emit(RunEvent::WorkerJoined {
                    attempt: a.n,
                    rank,
                    pid,
                    preflight: preflight.clone(),
                });
                // By the rank's place (node, local rank), which outlives
                // its number in an elastic run.
                if let (Some(f), Some(w)) = (preflight, self.plan.workers.get(rank as usize)) {
                    self.preflight_figures
                        .insert((w.node_rank, w.local_rank), f);
                }
            }
            RdzvEvent::AllJoined { round } if round == this => {
                // With a preflight check: compare the figures before anyone
                // starts (the welcomes wait).
                if a.preflight
                    && !self.preflight_verdict(a, round, &r.rdzv, r.provider.as_mut(), &mut r.queue)
                {
                    return;
                }
                let now = Instant::now();
                a.all_joined = Some(now);
                a.progress_mark = (0, now);
                r.rendezvous_deadline = None;
                self.events.emit(RunEvent::RendezvousComplete {
                    attempt: a.n,
                    launch_to_ready_s: (now - a.launched_at).as_secs_f64(),
                    rendezvous_s: a.first_join.map(|f| (now - f).as_secs_f64()),
                });
                r.queue.push_back(Event::AllJoined);
            }
            RdzvEvent::HeartbeatStarted { round, rank } if round == this => {
                a.last_beat[rank as usize] = Some(Instant::now());
            }
            // (A survivor's beats name its rank in this round: one of it.)
            RdzvEvent::Heartbeat { round, rank, beat }
                if round == this && (rank as usize) < a.beats.len() =>
            {
                self.on_heartbeat(r, rank, beat);
            }
            RdzvEvent::Result {
                round,
                rank,
                payload,
            } if round == this => self.on_result(r, rank, payload),
            RdzvEvent::Parked { round, rank } if round == this => self.on_parked(r, rank),
            RdzvEvent::AgentReport { node, report } => self.on_agent_report(r, node, report),
            RdzvEvent::Refused {
                peer,
                kind,
                message,
            } => {
                self.events.emit(RunEvent::RendezvousRefused {
                    peer: peer.to_string(),
                    kind,
                    message,
                });
            }
            RdzvEvent::RefusedSummary { total, by_kind } => {
                // count: refused since the last summary.
                let count: u64 = by_kind.values().sum();
                self.events.emit(RunEvent::RendezvousRefusedSummary {
                    count,
                    total,
                    by_kind,
                });
            }
            _ => {}
        }
    }

    /// A rank's result: recorded, its command checkpoints' commits booked,
    /// a notice it acted on before a heartbeat could carry it.
    fn on_result(&mut self, r: &mut RunState, rank: u32, payload: proto::result::WorkerResult) {
        let Some(a) = r.attempt.as_mut() else { return };
        let (n, notice) = (a.n, payload.notice.clone());
        self.events.emit(RunEvent::WorkerResult {
            attempt: n,
            rank,
            result: Box::new(payload.clone()),
        });
        let committed = match &payload.figures {
            proto::result::Figures::Command(c) => c.committed.clone(),
            _ => vec![],
        };
        a.results.insert(rank, payload);
        if !committed.is_empty() {
            self.ranks_committed(r, rank, &committed);
        }
        if let Some(notice) = notice {
            self.notice_seen(r, n, rank, &notice);
        }
    }

    /// A rank parked after a notice: kept with its state in memory for the
    /// next round where its node stays, else released.
    fn on_parked(&mut self, r: &mut RunState, rank: u32) {
        let Some(a) = r.attempt.as_mut() else { return };
        let node = self.plan.workers[rank as usize].node_rank;
        if r.policy.keep_survivors && !r.provider.is_lost(node) {
            // Out of this attempt, state in memory: it rejoins in the next
            // round.
            if let Some(pgid) = a.pgids[rank as usize].take() {
                r.parked.insert(
                    rank,
                    Parked {
                        pgid,
                        log: a.logs[rank as usize].clone(),
                    },
                );
            }
            self.events.emit(RunEvent::WorkerParked {
                attempt: a.n,
                rank,
                node,
            });
            r.queue.push_back(Event::Parked { rank });
        } else {
            r.rdzv.release(Some(&[rank]));
        }
    }

    /// Node agent `agent` is gone: the workers it ran are gone with it
    /// (each as killed, under its own handle: the attempt that holds it,
    /// if any, counts its exit; a newer agent's workers are not touched).
    fn agent_gone(&mut self, r: &mut RunState, agent: u64) {
        let gone: Vec<u32> = r
            .agent_workers
            .iter()
            .filter(|(_, w)| w.agent == Some(agent))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(w) = r.agent_workers.remove(&id) {
                let _ = r.exit_tx.send(Exited {
                    attempt: w.attempt,
                    handle: REMOTE_HANDLE + id,
                    rank: w.rank,
                    kind: ExitKind::Signal(9),
                });
            }
        }
    }

    /// A rank's heartbeat: liveness, its notes, the attempt's first step
    /// (recovery time), a notice its watcher saw.
    fn on_heartbeat(&mut self, r: &mut RunState, rank: u32, mut beat: Heartbeat) {
        let Some(a) = r.attempt.as_mut() else { return };
        a.last_beat[rank as usize] = Some(Instant::now());
        self.metrics.beat(rank, a.node_of[rank as usize], &beat);
        let gpus = std::mem::take(&mut beat.gpus);
        if !gpus.is_empty() {
            self.node_gpus(a.node_of[rank as usize], &gpus);
        }
        for note in std::mem::take(&mut beat.notes) {
            self.worker_note(a.n, rank, note);
        }
        // (A program's reports may not say how many steps it will take.)
        if !a.first_step_seen && beat.step > beat.start_step.unwrap_or(0) {
            // Recovery time: from this attempt's launch to its first step.
            a.first_step_seen = true;
            a.first_step_at = Some((Instant::now(), beat.step));
            if let Some((p, out)) = r
                .preemptions
                .last_mut()
                .filter(|(p, _)| p.attempt + 1 == a.n && p.out_to_first_step_s.is_none())
            {
                let back = out.elapsed().as_secs_f64();
                p.out_to_first_step_s = Some(back);
                p.total_s = Some(p.notice_to_out_s + back);
                self.metrics.recovered(p.notice_to_out_s + back);
            }
            self.events.emit(RunEvent::FirstStep {
                attempt: a.n,
                rank,
                step: beat.step,
                start_step: beat.start_step,
                since_launch_s: a.launched_at.elapsed().as_secs_f64(),
            });
        }
        let (n, notice) = (a.n, beat.notice.clone());
        let committed = std::mem::take(&mut beat.committed);
        a.beats[rank as usize] = Some(beat);
        if !committed.is_empty() {
            self.ranks_committed(r, rank, &committed);
        }
        if let Some(notice) = notice {
            self.notice_seen(r, n, rank, &notice);
        }
    }

    /// What a node agent reports of the workers it runs.
    fn on_agent_report(&mut self, r: &mut RunState, node: u32, report: Request) {
        let Some(a) = r.attempt.as_ref() else { return };
        match report {
            Request::AgentExited {
                worker,
                code,
                signal,
            } => {
                let kind = match (code, signal) {
                    (_, Some(s)) => ExitKind::Signal(s),
                    (Some(c), None) => ExitKind::Code(c),
                    (None, None) => ExitKind::Code(-1),
                };
                // (Its last lines came before: one connection, in order.)
                if let Some(w) = r.agent_workers.remove(&worker) {
                    let _ = r.exit_tx.send(Exited {
                        attempt: w.attempt,
                        handle: REMOTE_HANDLE + worker,
                        rank: w.rank,
                        kind,
                    });
                }
            }
            Request::AgentLog { worker, lines } => {
                // Into the worker's log in this run's folder (a survivor's
                // is the one of the attempt it started in).
                use std::io::Write;
                if let Some(w) = r.agent_workers.get(&worker) {
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&w.log)
                    {
                        for l in lines {
                            let _ = writeln!(f, "{l}");
                        }
                    }
                }
            }
            Request::AgentStarted { worker, pid } => {
                if let Some(rank) = a.rank_of(REMOTE_HANDLE + worker) {
                    self.events.emit(RunEvent::AgentWorkerStarted {
                        attempt: a.n,
                        node,
                        rank,
                        pid,
                    });
                }
            }
            Request::AgentNotice => {
                self.events.emit(RunEvent::AgentNotice { node });
                r.queue.push_back(Event::NodeNotice);
            }
            _ => {}
        }
    }

    /// A worker process ended: recorded with the step it failed at (from
    /// its error file when it wrote one, else its last heartbeat).
    pub(super) fn on_worker_exit(&mut self, r: &mut RunState, x: Exited) {
        // This attempt's worker, or a survivor carried into it (started for
        // an earlier one, perhaps as another rank): found by its handle (a
        // pid could be reused in a later attempt; an agent's worker id is
        // not). A worker that never started, by its rank.
        let ours = |a: &Attempt| match x.handle {
            0 => (a.n == x.attempt && a.pgids[x.rank as usize].is_none()).then_some(x.rank),
            h => a
                .rank_of(h)
                .filter(|rank| x.attempt == a.n || a.kept.contains(rank)),
        };
        let Some((a, rank)) = r
            .attempt
            .as_mut()
            .and_then(|a| ours(a).map(|rank| (a, rank)))
        else {
            return;
        };
        let kind = x.kind;
        a.exits.insert(rank, kind);
        self.events.emit(RunEvent::WorkerExited {
            attempt: a.n,
            rank,
            exit_code: match kind {
                ExitKind::Code(c) => Some(c),
                _ => None,
            },
            signal: match kind {
                ExitKind::Signal(s) => Some(s),
                _ => None,
            },
            description: describe_exit(kind),
        });
        if let Some(e) = read_error_file(&a.logs[rank as usize]) {
            a.errors.insert(rank, e);
        }
        let step = a
            .errors
            .get(&rank)
            .and_then(|e| e.get("step"))
            .and_then(Value::as_u64)
            .or_else(|| {
                a.beats[rank as usize]
                    .as_ref()
                    .filter(|b| b.total_steps > 0)
                    .map(|b| b.step)
            });
        r.queue.push_back(Event::WorkerExited {
            rank,
            exit: kind,
            step,
        });
    }

    /// NVML samples of this machine's GPUs: under the progress bars and
    /// into events.jsonl, with the ranks on each GPU.
    pub(super) fn on_gpu(&mut self, r: &mut RunState, samples: &[gpu::telemetry::GpuSample]) {
        r.display.set_gpus(samples);
        // The workers on this machine's GPUs (local and simulated nodes are
        // this machine).
        let here: Vec<(u32, &str)> = if self.compiled.spec.nodes_on_one_machine() {
            self.plan
                .workers
                .iter()
                .filter_map(|w| {
                    w.contract
                        .cuda_visible_devices
                        .as_deref()
                        .map(|d| (w.rank, d))
                })
                .collect()
        } else {
            Vec::new()
        };
        let ranks = gpu::telemetry::ranks_per_gpu(samples, &here);
        self.events.emit(RunEvent::GpuTelemetry {
            gpus: serde_json::to_value(samples).expect("samples serialise"),
            ranks_by_gpu: serde_json::to_value(ranks).expect("ranks serialise"),
        });
    }

    pub(super) fn on_signal(&mut self, r: &mut RunState, sig: Sig) {
        let (name, ev) = match sig {
            Sig::Usr1 => ("SIGUSR1", Event::Notice),
            Sig::Int => ("SIGINT", Event::Interrupt),
            Sig::Term => ("SIGTERM", Event::Sigterm),
        };
        self.events.emit(RunEvent::Signal {
            signal: name.into(),
        });
        r.queue.push_back(ev);
    }

    /// Every 100 ms: the provider's node events, the timers, silent ranks,
    /// a stalled group, and the progress display.
    pub(super) fn on_tick(&mut self, r: &mut RunState, now: Instant) {
        self.poll_commits(r);
        if now.duration_since(self.metrics_refreshed) >= std::time::Duration::from_secs(1) {
            self.metrics_refreshed = now;
            self.refresh_metrics(r, now);
        }
        self.check_growth(r, now);
        let progress = r.attempt.as_ref().and_then(|a| a.progress());
        for ev in r.provider.poll(now, progress) {
            self.emit_node_event(&ev, r.provider.as_ref());
            match ev {
                NodeEvent::Lost { node } => {
                    // The cloud takes the machine, whatever runs on it.
                    if let Some(a) = &r.attempt {
                        a.signal_node(&self.plan, node, Signal::SIGKILL);
                    }
                }
                NodeEvent::Migrate {
                    ref nodes,
                    ref reason,
                } if !nodes.is_empty() => {
                    // Stop at an agreed step, checkpointed, as for a notice;
                    // the nodes are then replaced (a stop already under way
                    // replaces them).
                    self.console
                        .note(&format!("[ringmaster] {}: {reason}", r.provider.kind()));
                    if r.notice.is_none() {
                        r.seen_notice.get_or_insert((
                            0,
                            NoticeInfo {
                                source: format!("{} deadline mode", r.provider.kind()),
                                preempt: true,
                                deadline_unix_ms: None,
                                seen_unix_ms: unix_ms(SystemTime::now()),
                                detail: reason.clone(),
                            },
                        ));
                    }
                    r.queue.push_back(Event::NodeNotice);
                }
                _ => {}
            }
        }
        if r.rendezvous_deadline.is_some_and(|d| now >= d) {
            r.rendezvous_deadline = None;
            r.queue.push_back(Event::RendezvousTimeout);
        }
        if r.grace_deadline.is_some_and(|d| now >= d) {
            r.grace_deadline = None;
            r.queue.push_back(Event::GraceExpired);
        }
        if let Some(a) = r.attempt.as_mut() {
            // The machine heeds these only where they mean something (a
            // silent rank while it runs, a hang while healthy).
            if let Some(rank) = a.silent_rank(now, r.policy.heartbeat_timeout) {
                r.queue.push_back(Event::HeartbeatLost { rank });
            }
            let watched = match r.policy.watch_hang {
                crate::plan::HangWatch::Always => true,
                crate::plan::HangWatch::OnceReported => a.reports_steps(),
            };
            if watched && a.stalled(now, r.policy.hang_timeout) {
                r.queue.push_back(Event::Hang);
            }
            r.display.update(a.n, &a.beats);
        }
    }

    /// The preflight check's verdict once every rank joined: release the
    /// welcomes and go on (true), or stop the attempt (false), replacing
    /// the slow nodes where the job says so and the provider can.
    fn preflight_verdict(
        &mut self,
        a: &mut Attempt,
        round: u64,
        rdzv: &Rendezvous,
        provider: &mut dyn Provider,
        queue: &mut VecDeque<Event>,
    ) -> bool {
        use proto::spec::OnSlow;
        a.preflight = false;
        let spec = &self.compiled.spec;
        let pf = &spec.preflight;
        // The figures of this attempt's ranks (a survivor's from the round
        // it was checked in; a node no longer in the world's are not).
        let figures: BTreeMap<u32, (u32, proto::wire::PreflightFigures)> = self
            .plan
            .workers
            .iter()
            .filter_map(|w| {
                let f = self.preflight_figures.get(&(w.node_rank, w.local_rank))?;
                Some((w.rank, (w.node_rank, f.clone())))
            })
            .collect();
        let slow = crate::preflight::slow_ranks(&figures, pf.min_ratio);
        self.events.emit(RunEvent::Preflight {
            attempt: a.n,
            figures: figures
                .iter()
                .map(|(rank, (_, f))| (rank.to_string(), f.clone()))
                .collect(),
            slow: slow
                .iter()
                .map(|s| serde_json::to_value(s).expect("slow ranks serialise"))
                .collect(),
            min_ratio: pf.min_ratio,
        });
        let nodes: BTreeSet<u32> = slow.iter().map(|s| s.node).collect();
        for s in &slow {
            self.console.note(&format!(
                "[ringmaster] preflight: node-{} is slow: {}",
                s.node, s.why
            ));
        }
        self.preflight_slow = slow;
        if nodes.is_empty() || pf.on_slow == OnSlow::Warn {
            if nodes.is_empty() {
                self.console.note(&format!(
                    "[ringmaster] preflight: {} rank(s) checked, none below {:.0}% of the median",
                    figures.len(),
                    100.0 * pf.min_ratio
                ));
            }
            for s in &self.preflight_slow {
                self.plan
                    .warnings
                    .push(format!("preflight: node-{} is slow: {}", s.node, s.why));
            }
            rdzv.release_welcomes(round);
            return true;
        }
        let retry = pf.on_slow == OnSlow::Replace && nodes.iter().all(|n| provider.retire(*n));
        if retry {
            self.events.emit(RunEvent::PreflightReplacing {
                attempt: a.n,
                nodes: nodes.iter().copied().collect(),
            });
        } else if pf.on_slow == OnSlow::Replace {
            self.console.note(&format!(
                "[ringmaster] preflight: the {} provider cannot replace the node(s) (no spare host, or fixed nodes); stopping (leave the node out of the hostfile or allocation)",
                provider.kind()
            ));
        }
        queue.push_back(Event::PreflightFailed { retry });
        false
    }
}

/// A worker's error file, if it wrote one.
/// The error file a worker wrote next to its log (`rank-R.log` ->
/// `rank-R.error.json`): a survivor's is in the attempt folder it started
/// in, under the rank it started as, like its log.
fn read_error_file(log: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(log.with_extension("error.json")).ok()?;
    serde_json::from_str(&text).ok()
}
