//! How an attempt and a run are told: the stop reason in words, each
//! attempt's report, and report.json at the end.

use super::attempt::{describe_exit, Attempt};
use super::machine::{self, ExitKind, FailureKind, Machine, StopReason};
use super::state::RunState;
use super::{diagnose, Supervisor};
use crate::process;
use crate::rendezvous::Rendezvous;
use crate::report::{self, AttemptReport, FailureReport, Report};
use proto::exit::{LauncherExit, WorkerExit};
use proto::result::WorkerResult;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

impl Supervisor {
    pub(super) fn reason_message(
        &self,
        reason: &StopReason,
        a: Option<&Attempt>,
        rdzv: Option<&Rendezvous>,
    ) -> String {
        let spec = &self.compiled.spec;
        let local = spec.resources.devices_per_node;
        match reason {
            StopReason::WorkerFailed { rank, exit } => failed_message(*rank, local, *exit),
            StopReason::CrashLoop { rank, exit, step } => format!(
                "crash loop: {} at step {step} in two attempts in a row; not restarting again",
                failed_message(*rank, local, *exit)
            ),
            StopReason::RendezvousTimeout => {
                let (joined, world, missing) = rdzv.map(|r| r.missing()).unwrap_or_default();
                let mut shown: Vec<String> = missing.iter().take(8).cloned().collect();
                if missing.len() > 8 {
                    shown.push(format!("and {} more", missing.len() - 8));
                }
                format!(
                    "rendezvous timed out after {} s: {joined}/{world} joined; missing {}",
                    spec.recovery.rendezvous_timeout_s,
                    shown.join(", ")
                )
            }
            StopReason::Preflight { retry } => format!(
                "preflight check: {}{}",
                self.preflight_slow
                    .iter()
                    .map(|s| format!("node-{} rank {}", s.node, s.why))
                    .collect::<Vec<_>>()
                    .join("; "),
                if *retry {
                    "; replacing the node(s)"
                } else {
                    ""
                }
            ),
            StopReason::HeartbeatLost { rank } => format!(
                "rank {rank} sent no heartbeat for {} s (heartbeat_timeout_s)",
                spec.recovery.heartbeat_timeout_s
            ),
            StopReason::Hang => {
                let steps = a
                    .map(|a| {
                        a.beats
                            .iter()
                            .map(|b| b.as_ref().map(|b| b.step.to_string()).unwrap_or("-".into()))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let culprit = a.and_then(|a| {
                    let ages: Vec<Option<Duration>> = a.last_beat.iter().map(|t| t.map(|t| t.elapsed())).collect();
                    diagnose::hang_culprit(&a.beats, &ages, Duration::from_secs_f64(spec.recovery.heartbeat_interval_s))
                });
                let first = culprit
                    .map(|c| format!("; rank {} (node-{}/local-{}) {}{}", c.rank, c.rank / local, c.rank % local, c.why, c.step.map(|s| format!(" at step {s}")).unwrap_or_default()))
                    .unwrap_or_default();
                format!(
                    "no rank made progress for {} s (hang_timeout_s){first}; steps by rank: [{steps}]",
                    spec.recovery.hang_timeout_s
                )
            }
            StopReason::Interrupted => "interrupted by signal".into(),
            StopReason::Preempted => format!(
                "preemption notice: workers stop at an agreed step and checkpoint, within {} s (notice_grace_s)",
                spec.recovery.notice_grace_s
            ),
            StopReason::Resize => format!(
                "capacity is back: workers stop at an agreed step and checkpoint, within {} s (notice_grace_s), to start again on more nodes",
                spec.recovery.notice_grace_s
            ),
        }
    }

    pub(super) fn attempt_report(
        &self,
        a: &Attempt,
        machine: &Machine,
        reason: Option<&StopReason>,
    ) -> AttemptReport {
        let local = self.compiled.spec.resources.devices_per_node;
        let outcome = match reason {
            None => "succeeded",
            Some(r) => reason_name(r),
        };
        let failure = machine
            .first_failure
            .filter(|_| reason.is_some())
            .map(|(rank, exit)| {
                let log = a.dir.join(format!("rank-{rank}.log"));
                FailureReport {
                    rank,
                    node: format!("node-{}", rank / local),
                    local_rank: rank % local,
                    exit_code: match exit {
                        ExitKind::Code(c) => Some(c),
                        _ => None,
                    },
                    signal: match exit {
                        ExitKind::Signal(s) => Some(s),
                        _ => None,
                    },
                    exit_name: match exit {
                        ExitKind::Code(c) => WorkerExit::from_code(c).map(|w| w.name().to_string()),
                        ExitKind::Signal(_) => None,
                        ExitKind::SpawnFailed => Some("spawn-failed".into()),
                    },
                    last_lines: process::last_lines(&log, 10),
                    worker_error: a.errors.get(&rank).cloned(),
                    log: log.display().to_string(),
                }
            });
        // For a worker failure, name the root cause the machine settled on
        // (it may be a later exit than the one that started the stop).
        let message = match (reason, machine.first_failure) {
            (Some(StopReason::CrashLoop { .. }), _) => {
                Some(self.reason_message(reason.expect("matched"), Some(a), None))
            }
            (Some(StopReason::WorkerFailed { .. }), Some((rank, exit))) => {
                Some(failed_message(rank, local, exit))
            }
            _ => a.message.clone(),
        };
        AttemptReport {
            attempt: a.n,
            world_size: Some(a.pgids.len() as u32),
            outcome: outcome.into(),
            message,
            launch_to_ready_s: a.all_joined.map(|t| (t - a.launched_at).as_secs_f64()),
            rendezvous_s: a
                .all_joined
                .zip(a.first_join)
                .map(|(t, f)| (t - f).as_secs_f64()),
            duration_s: a.launched_at.elapsed().as_secs_f64(),
            failure,
            failure_kind: match reason {
                Some(StopReason::Preempted) => Some("preemption".into()),
                Some(StopReason::Resize) => Some("resize".into()),
                Some(r) => machine::failure_kind(r, machine.first_failure.map(|(_, e)| e))
                    .map(|k| k.name().to_string()),
                None => None,
            },
            started_at_step: a.beats.iter().flatten().find_map(|b| b.start_step),
            reached_step: a
                .beats
                .iter()
                .flatten()
                .filter(|b| b.total_steps > 0)
                .map(|b| b.step)
                .chain(a.results.values().filter_map(WorkerResult::reached_step))
                .chain(a.errors.values().filter_map(|e| e.get("step")?.as_u64()))
                .max(),
            steps_lost: None,
        }
    }

    pub(super) fn build_report(
        &mut self,
        code: LauncherExit,
        r: RunState,
        preemptions: Vec<report::PreemptionReport>,
        sim_cost: Option<proto::report::Cost>,
    ) -> Report {
        let (message, attempts, results, machine) =
            (r.final_message, r.history, r.last_results, &r.machine);
        let attempts = report::with_steps_lost(attempts);
        let spec = &self.compiled.spec;
        let status = match code {
            LauncherExit::Success => "succeeded",
            LauncherExit::Interrupted => "interrupted",
            LauncherExit::Preempted => "preempted",
            _ => "failed",
        };
        let report = Report {
            run_id: self.run_id.clone(),
            name: spec.name.clone(),
            status: status.into(),
            exit_code: code.code(),
            exit_name: code.name().into(),
            message,
            provider: spec.provider.kind().into(),
            workload: spec.workload.kind().into(),
            world_size: self.full_plan.world_size,
            nodes: spec.resources.nodes,
            devices_per_node: spec.resources.devices_per_node,
            threads_per_worker: self.plan.threads_per_worker,
            run_dir: self.run_dir.display().to_string(),
            started: humantime::format_rfc3339_millis(self.started_wall).to_string(),
            duration_s: self.start.elapsed().as_secs_f64(),
            restarts: machine.restarts_used,
            restarts_by_kind: BTreeMap::from([
                (FailureKind::User.name().to_string(), machine.used.user),
                (
                    FailureKind::Infrastructure.name().to_string(),
                    machine.used.infra,
                ),
                ("preemption".to_string(), machine.used.preempt),
                ("preflight".to_string(), machine.used.preflight),
                // An elastic run's stops to grow (no budget).
                (
                    "resize".to_string(),
                    attempts
                        .iter()
                        .filter(|a| a.failure_kind.as_deref() == Some("resize"))
                        .count() as u32,
                ),
            ]),
            goodput: report::goodput(&attempts),
            cost: sim_cost,
            machines: r.provider.machines(),
            attempts,
            preemptions,
            summary: report::summarize(spec.workload.kind(), &results),
            results,
            watchers: self.watchers.summary(self.start, Instant::now()),
            warnings: self.plan.warnings.clone(),
        };
        self.events.emit(proto::events::RunEvent::RunFinished {
            status: status.to_string(),
            exit_code: code.code(),
            restarts: machine.restarts_used,
        });
        let path = self.run_dir.join("report.json");
        if let Err(e) = std::fs::write(
            &path,
            serde_json::to_vec_pretty(&report).expect("report serialises"),
        ) {
            self.console.note(&format!(
                "[ringmaster] cannot write {}: {e}",
                path.display()
            ));
        } else if let Err(e) = crate::html::write_for(&self.run_dir) {
            self.console
                .note(&format!("[ringmaster] cannot write report.html: {e}"));
        }
        report
    }
}

pub(super) fn failed_message(rank: u32, local: u32, exit: ExitKind) -> String {
    format!(
        "rank {rank} (node-{}/local-{}) failed: {}",
        rank / local,
        rank % local,
        describe_exit(exit)
    )
}

/// What a stop the workers are told of (to stop at an agreed step) is
/// called, in their notice and the attempt's message; None: they are not
/// told.
pub(super) fn notice_name(r: &StopReason) -> Option<&'static str> {
    match r {
        StopReason::Preempted => Some("preemption notice"),
        StopReason::Resize => Some("stop to grow"),
        _ => None,
    }
}

pub(super) fn reason_name(r: &StopReason) -> &'static str {
    match r {
        StopReason::WorkerFailed { .. } => "worker-failed",
        StopReason::CrashLoop { .. } => "crash-loop",
        StopReason::RendezvousTimeout => "rendezvous-timeout",
        StopReason::HeartbeatLost { .. } => "heartbeat-lost",
        StopReason::Hang => "hang",
        StopReason::Interrupted => "interrupted",
        StopReason::Preempted => "preempted",
        StopReason::Preflight { .. } => "preflight-failed",
        StopReason::Resize => "resized",
    }
}
