//! What the run records of notices and of what the ranks and the provider
//! report: a watcher's notice or early warning, a rank's note, a node
//! event, and how a notice's stop went (the preemption's first phase).

use super::attempt::Attempt;
use super::machine::{Event, ExitKind};
use super::state::RunState;
use super::Supervisor;
use crate::provider::{NodeEvent, Provider};
use crate::report;
use proto::events::{Note, RunEvent};
use proto::result::WorkerResult;
use proto::spec::Workload;
use proto::wire::{unix_ms, NoticeInfo};
use std::time::{Duration, Instant, SystemTime};

impl Supervisor {
    /// A notice's stop is over (every worker out): how it went, into the
    /// attempt's message and events.jsonl; the preemption's first phase
    /// and when the workers were out. `sent`: when the notice went out and
    /// its deadline; a watcher's notice counts from when it was seen and
    /// against the cloud's deadline. `committed`: the newest checkpoint a
    /// `command` job's programs committed in the run. `what`: the stop's
    /// name in the message ("preemption notice", "stop to grow").
    pub(super) fn preemption_handled(
        &mut self,
        (n, what): (u32, &str),
        attempt: Option<&mut Attempt>,
        sent: (Instant, Instant),
        seen: Option<&(u32, NoticeInfo)>,
        agreed: Option<u64>,
        committed: Option<u64>,
    ) -> (report::PreemptionReport, Instant) {
        let now = Instant::now();
        let (mut at, mut deadline) = sent;
        if let Some((_, n)) = seen {
            at = at.min(wall_to_instant(n.seen_unix_ms));
            if let Some(d) = n.deadline_unix_ms {
                deadline = deadline.min(wall_to_instant(d));
            }
        }
        let results = attempt
            .as_ref()
            .map(|a| a.results.clone())
            .unwrap_or_default();
        // Train results say where each rank stopped; a program that
        // reports its steps, its last report.
        let mut stopped: Vec<u64> = results
            .values()
            .filter_map(WorkerResult::preempted_at_step)
            .collect();
        // Each rank's last step: from its result, else its last heartbeat.
        let reported: Vec<(u32, u64)> = attempt
            .as_ref()
            .map(|a| {
                a.beats
                    .iter()
                    .enumerate()
                    .filter_map(|(r, b)| {
                        let from_result = results
                            .get(&(r as u32))
                            .and_then(WorkerResult::reached_step);
                        from_result
                            .or(b.as_ref().map(|b| b.step))
                            .map(|s| (r as u32, s))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let (Some(s), true) = (agreed, stopped.is_empty()) {
            stopped.push(s);
        }
        let checkpointed = match &self.compiled.spec.workload {
            Workload::Command(_) => agreed.is_some() && committed == agreed,
            _ => {
                !results.is_empty()
                    && results
                        .values()
                        .all(|r| r.train().is_some_and(|t| t.checkpoint_committed))
            }
        };
        let has_books = self.compiled.spec.checkpoint.dir.is_some();
        // What a command job resumes from, when its stop step's checkpoint
        // is not the one.
        let fallback = match committed {
            Some(s) => {
                format!("the run resumes from step {s}, the last checkpoint every rank committed")
            }
            None if has_books => "no checkpoint was committed: the run starts over".into(),
            None => "its checkpoint, if it writes one, is its own".into(),
        };
        let margin = deadline.saturating_duration_since(now).as_secs_f64();
        let met = now <= deadline;
        let source = seen
            .map(|(rank, n)| format!(" ({} via rank {rank})", n.source))
            .unwrap_or_default();
        // Ranks still running at the deadline, and killed then.
        let missed: Vec<u32> = attempt
            .as_ref()
            .map(|a| {
                a.exits
                    .iter()
                    .filter(|(_, e)| **e == ExitKind::Signal(libc::SIGKILL))
                    .map(|(r, _)| *r)
                    .collect()
            })
            .unwrap_or_default();
        let off: Vec<(u32, u64)> = match agreed {
            Some(s) => reported
                .iter()
                .copied()
                .filter(|(_, step)| *step != s)
                .collect(),
            None => vec![],
        };
        let s = agreed.unwrap_or_default();
        let outcome = match &self.compiled.spec.workload {
            Workload::Command(_) if checkpointed && missed.is_empty() && off.is_empty() => {
                format!("every program stopped at the agreed step {s}; checkpoint of step {s} committed")
            }
            Workload::Command(_) if agreed.is_some() && missed.is_empty() && off.is_empty() && has_books => {
                format!("every program stopped at the agreed step {s}, but not every rank committed its checkpoint; {fallback}")
            }
            Workload::Command(_) if agreed.is_some() && missed.is_empty() && off.is_empty() => {
                format!("every program stopped at the agreed step {s}")
            }
            Workload::Command(_) if agreed.is_some() && missed.is_empty() => format!(
                "rank(s) did not stop at the agreed step {s}: (rank, last step reported) {off:?}; {fallback}"
            ),
            Workload::Command(_) if missed.is_empty() => {
                format!("every program stopped after it was told; {fallback}")
            }
            Workload::Command(_) => format!(
                "the program(s) of rank(s) {missed:?} did not stop by the deadline and were killed; {fallback}"
            ),
            _ if checkpointed && met => "checkpoint committed".into(),
            _ => "no checkpoint at the stop step: the run resumes from the last periodic checkpoint".into(),
        };
        let msg = format!(
            "{what}{source}: stopped {} {:.2} s after the notice, {:.2} s before the deadline; {outcome}",
            stopped.first().map(|s| format!("at step {s}")).unwrap_or_else(|| "without an agreed step".into()),
            (now - at).as_secs_f64(),
            margin,
        );
        self.events.emit(RunEvent::NoticeHandled {
            stopped_at_step: stopped.first().copied(),
            seconds_after_notice: (now - at).as_secs_f64(),
            margin_s: margin,
            deadline_met: met,
            checkpointed,
            source: seen.map(|(_, n)| n.source.clone()),
        });
        if let Some(a) = attempt {
            a.message = Some(msg);
        }
        (
            report::PreemptionReport {
                attempt: n,
                source: seen.map(|(_, n)| n.source.clone()),
                notice_to_out_s: (now - at).as_secs_f64(),
                out_to_replacement_s: None,
                out_to_first_step_s: None,
                total_s: None,
            },
            now,
        )
    }

    /// A provider's node event, into events.jsonl.
    pub(super) fn emit_node_event(&mut self, ev: &NodeEvent, provider: &dyn Provider) {
        let provider_kind = provider.kind().to_string();
        let market_time_s = provider.market_time_s();
        let event = match ev {
            NodeEvent::Capacity {
                zone,
                spot_capacity,
            } => RunEvent::CapacityChanged {
                zone: zone.clone(),
                spot_capacity: *spot_capacity,
                provider: provider_kind,
                market_time_s,
            },
            NodeEvent::Preempting {
                node,
                deadline,
                cause,
                zone,
            } => RunEvent::NodeNotice {
                node: *node,
                cause: cause.to_string(),
                zone: zone.clone(),
                deadline: humantime::format_rfc3339_millis(*deadline).to_string(),
                provider: provider_kind,
                market_time_s,
            },
            NodeEvent::Lost { node } => RunEvent::NodeLost {
                node: *node,
                provider: provider_kind,
                market_time_s,
            },
            NodeEvent::Ready {
                node,
                vm,
                zone,
                market,
            } => RunEvent::NodeReplaced {
                node: *node,
                vm: vm.clone(),
                zone: zone.clone(),
                market: market.to_string(),
                provisioning_delay_s: provider.provisioning_delay().as_secs_f64(),
                provider: provider_kind,
                market_time_s,
            },
            NodeEvent::Migrate { nodes, reason } => RunEvent::NodesMigrating {
                nodes: nodes.clone(),
                reason: reason.clone(),
                provider: provider_kind,
                market_time_s,
            },
            NodeEvent::Requested {
                node,
                call,
                instance_type,
                zone,
                market,
                reservation,
                outcome,
                machine,
                api_s,
            } => RunEvent::MachineRequested {
                node: *node,
                call: call.to_string(),
                instance_type: instance_type.clone(),
                zone: zone.clone(),
                market: market.to_string(),
                reservation: reservation.clone(),
                outcome: outcome.clone(),
                machine: machine.clone(),
                api_s: *api_s,
                provider: provider_kind,
            },
            NodeEvent::MachineState {
                node,
                machine,
                state,
                reason,
                seen,
            } => RunEvent::MachineState {
                node: *node,
                machine: machine.clone(),
                state: state.clone(),
                reason: reason.clone(),
                seen: humantime::format_rfc3339_millis(*seen).to_string(),
                provider: provider_kind,
            },
        };
        self.events.emit(event);
    }

    /// A rank's note for the timeline: events.jsonl under its own name; a
    /// warning also on the console and in report.json (once per text).
    pub(super) fn worker_note(&mut self, attempt: u32, rank: u32, n: proto::wire::WorkerNote) {
        if let (Some(w), true) = (
            n.detail.get("watcher").and_then(|w| w.as_str()),
            n.kind.starts_with("watcher_"),
        ) {
            let error = (n.kind == "watcher_failing").then(|| {
                n.detail
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("?")
                    .to_string()
            });
            self.watchers.record(rank, w, error, Instant::now());
        }
        self.events.emit(RunEvent::note(
            &n.kind,
            Note {
                attempt,
                rank,
                message: n.message.clone(),
                warning: n.warning,
                detail: n.detail.clone(),
            },
        ));
        if n.warning {
            let text = format!("rank {rank}: {}", n.message);
            if !self.plan.warnings.contains(&text) {
                self.console.note(&format!("[ringmaster] warning: {text}"));
                self.plan.warnings.push(text);
            }
        }
    }

    /// A worker's watcher saw a notice (or an early warning): record the
    /// first preemption notice and act on it; record each warning once.
    pub(super) fn notice_seen(
        &mut self,
        r: &mut RunState,
        attempt: u32,
        rank: u32,
        n: &NoticeInfo,
    ) {
        let rfc = |ms: u64| {
            humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        };
        if n.preempt {
            // The node is going: a cloud provider replaces it.
            if let Some(w) = self.plan.workers.get(rank as usize) {
                r.provider.node_notice(w.node_rank);
            }
        }
        if n.preempt && r.seen_notice.is_none() {
            self.events.emit(RunEvent::NoticeReceived {
                attempt,
                rank,
                source: n.source.clone(),
                detail: n.detail.clone(),
                seen: rfc(n.seen_unix_ms),
                deadline: n.deadline_unix_ms.map(rfc),
            });
            self.console.note(&format!(
                "[ringmaster] preemption notice from {} (rank {rank}): {}",
                n.source, n.detail
            ));
            r.seen_notice = Some((rank, n.clone()));
            r.queue.push_back(Event::Notice);
        } else if !n.preempt && r.warnings_seen.insert((n.source.clone(), n.detail.clone())) {
            self.events.emit(RunEvent::EarlyWarning {
                attempt,
                rank,
                source: n.source.clone(),
                detail: n.detail.clone(),
            });
            self.console.note(&format!(
                "[ringmaster] early warning from {} (rank {rank}): {}",
                n.source, n.detail
            ));
        }
    }
}

/// A wall-clock time (ms since the epoch) on the monotonic clock.
fn wall_to_instant(ms: u64) -> Instant {
    let now = Instant::now();
    let now_ms = unix_ms(SystemTime::now());
    if ms <= now_ms {
        now.checked_sub(Duration::from_millis(now_ms - ms))
            .unwrap_or(now)
    } else {
        now + Duration::from_millis(ms - now_ms)
    }
}
