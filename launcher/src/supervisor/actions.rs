//! The executor carries out the machine's actions: launch an attempt,
//! terminate or kill its workers, send a notice with its deadline, record
//! a stop and an attempt's end, and at the end sweep every process of the
//! run and build the report.

use super::machine::{self, Action, FailureKind, StopReason};
use super::outcome::{notice_name, reason_name};
use super::state::{Flow, RunState};
use super::{report, Supervisor, REMOTE_HANDLE};
use crate::process;
use crate::report::Report;
use nix::sys::signal::Signal;
use proto::events::{FailureBrief, RunEvent};
use proto::exit::LauncherExit;
use proto::spec::Workload;
use proto::wire::unix_ms;
use std::time::{Duration, Instant, SystemTime};

impl Supervisor {
    pub(super) async fn act(
        &mut self,
        r: &mut RunState,
        action: Action,
    ) -> Result<Flow, crate::error::LaunchError> {
        match action {
            Action::Launch { attempt, keep } => return self.begin_attempt(r, attempt, keep).await,
            Action::Terminate => {
                if let Some(a) = &r.attempt {
                    a.signal_live(Signal::SIGTERM);
                }
                r.grace_deadline = Some(Instant::now() + r.policy.grace_period);
                self.events.emit(RunEvent::WorkersTerminating {
                    grace_period_s: self.compiled.spec.recovery.grace_period_s,
                });
            }
            Action::Notify => self.notify(r),
            Action::Kill => {
                r.grace_deadline = None;
                if let Some(a) = &r.attempt {
                    a.signal_all(Signal::SIGKILL);
                }
            }
            Action::Stopping(reason) => self.stopping(r, reason),
            Action::AttemptEnded {
                attempt,
                reason,
                restarting,
            } => self.attempt_ended(r, attempt, reason, restarting),
            Action::Finish(code) => r.finish = Some(code),
        }
        Ok(Flow::Go)
    }

    /// Tell every worker of the notice, with its deadline: the earlier of
    /// the job's `notice_grace_s` and the cloud's own.
    fn notify(&mut self, r: &mut RunState) {
        let rc = &self.compiled.spec.recovery;
        let cloud = r.seen_notice.as_ref().and_then(|(_, n)| n.deadline_unix_ms);
        let grace = machine::notice_grace(rc.notice_grace_s, cloud, unix_ms(SystemTime::now()));
        let deadline_wall = SystemTime::now() + grace;
        let now = Instant::now();
        r.notice = Some((now, now + grace));
        r.grace_deadline = Some(now + grace);
        // A program that reports its steps gets the step every rank stops
        // after, picked from their reports.
        r.agreed_stop = match (&self.compiled.spec.workload, &r.attempt) {
            (Workload::Command(_), Some(a)) if a.reports_steps() => {
                a.furthest_step().map(|(furthest, rate)| {
                    // The furthest report is up to a beat old, the answer
                    // goes out with the next beat; half a beat more for a
                    // rank faster than the rate says, and 0.1 s for the
                    // notice file and the program's look at it.
                    let latency = 2.5 * self.compiled.spec.recovery.heartbeat_interval_s + 0.1;
                    machine::agreed_stop_step(furthest, rate, latency)
                })
            }
            _ => None,
        };
        if matches!(
            self.compiled.spec.workload,
            Workload::Train(_) | Workload::Command(_)
        ) {
            // In band, with the next heartbeat's answer: train workers
            // agree on the stop step through their own all-reduce; a
            // command worker tells its program (`notices.program_signal`,
            // to the program's process only).
            let why = r.machine.stop_reason().and_then(notice_name);
            r.rdzv.notify(
                unix_ms(deadline_wall),
                why.unwrap_or("preemption notice"),
                r.agreed_stop,
            );
        } else if let Some(a) = &r.attempt {
            // Workloads without steps stop as torchrun would stop them:
            // SIGTERM, then the deadline.
            a.signal_live(Signal::SIGTERM);
        }
        self.events.emit(RunEvent::NoticeSent {
            deadline: humantime::format_rfc3339_millis(deadline_wall).to_string(),
            notice_grace_s: rc.notice_grace_s,
            source: r.seen_notice.as_ref().map(|(_, n)| n.source.clone()),
            stop_step: r.agreed_stop,
        });
    }

    fn stopping(&mut self, r: &mut RunState, reason: StopReason) {
        r.rendezvous_deadline = None;
        let msg = self.reason_message(&reason, r.attempt.as_ref(), Some(&r.rdzv));
        if let Some(a) = r.attempt.as_mut() {
            a.message.get_or_insert(msg.clone());
        }
        self.events.emit(RunEvent::GroupStopping {
            reason: reason_name(&reason).into(),
            message: msg.clone(),
        });
        self.console
            .note(&format!("[ringmaster] stopping workers: {msg}"));
        if reason == StopReason::Interrupted {
            self.console
                .note("[ringmaster] press Ctrl-C again to kill them now");
        }
    }

    fn attempt_ended(
        &mut self,
        r: &mut RunState,
        n: u32,
        reason: Option<StopReason>,
        restarting: bool,
    ) {
        // The program's checkpoints its ranks committed are committed
        // before anything is said of the stop.
        self.settle_commits(r, n);
        if let (Some(sent), Some(what)) = (r.notice.take(), reason.as_ref().and_then(notice_name)) {
            let newest = r.books.as_ref().and_then(|b| b.commits.newest());
            let p = self.preemption_handled(
                (n, what),
                r.attempt.as_mut(),
                sent,
                r.seen_notice.as_ref(),
                r.agreed_stop,
                newest,
            );
            // A stop to grow is no preemption (its figures are in its
            // events and attempt).
            if reason == Some(StopReason::Preempted) {
                r.preemptions.push(p);
            }
        }
        let Some(a) = r.attempt.take() else { return };
        let m = &r.machine;
        let rep = self.attempt_report(&a, m, reason.as_ref());
        self.events.emit(RunEvent::AttemptEnded {
            attempt: n,
            outcome: rep.outcome.clone(),
            message: rep.message.clone(),
            restarting,
            failure: rep.failure.as_ref().map(|f| FailureBrief {
                rank: f.rank,
                exit_code: f.exit_code,
                signal: f.signal,
            }),
            failure_kind: rep.failure_kind.clone(),
        });
        if restarting && reason == Some(StopReason::Preempted) {
            self.console.note(&format!("[ringmaster] attempt {n} preempted; replacing the lost node(s) ({} of {} preemption restarts)",
                m.used.preempt, m.budgets.preempt));
        } else if restarting && reason == Some(StopReason::Resize) {
            self.console.note(&format!(
                "[ringmaster] attempt {n} stopped at an agreed step to grow the world"
            ));
        } else if restarting {
            let kind = m.last_kind.unwrap_or(FailureKind::User);
            self.console.note(&format!(
                "[ringmaster] attempt {n} failed ({} failure); restarting ({} of {} {} restarts)",
                kind.name(),
                m.used.of(kind),
                m.budgets.of(kind),
                kind.name()
            ));
        } else if reason.is_some() {
            r.final_message = rep.message.clone();
        }
        r.last_results = a.results;
        r.history.push(rep);
        if let Some(g) = crate::report::goodput(&r.history) {
            self.metrics.goodput(g.goodput);
        }
    }

    /// The run ends with `code`: node agents told, parked survivors and
    /// every process of the run swept, the report built.
    pub(super) async fn conclude(&mut self, mut r: RunState, code: LauncherExit) -> Report {
        r.display.finish();
        // Parked survivors of a run that ends here: told to exit, then
        // swept like every other process group.
        r.rdzv.release(None);
        // Node agents end with the run, with its exit code: wait (briefly)
        // until each has taken the word and gone.
        let agents = r.provider.agent_nodes();
        for k in &agents {
            if let Some(agent) = r.rdzv.agent(*k) {
                let _ = agent.send(proto::wire::Response::Shutdown { code: code.code() });
            }
        }
        let until = Instant::now() + Duration::from_secs(5);
        while agents.iter().any(|k| r.rdzv.agent(*k).is_some()) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut leaving = std::mem::take(&mut r.leaving);
        leaving.extend(std::mem::take(&mut r.parked).into_values().map(|p| p.pgid));
        sweep(&leaving, r.policy.grace_period).await;
        // The last attempt's groups were killed (or ended): make sure every
        // process of them is gone before the launcher is.
        let ours: Vec<u32> = r
            .attempt
            .iter()
            .flat_map(|a| a.pgids.iter().flatten().copied())
            .filter(|pg| *pg < REMOTE_HANDLE)
            .chain(leaving.iter().copied())
            .collect();
        process::wait_gone(&ours, Duration::from_secs(5)).await;
        // Whatever else the workers started and left behind (a `setsid`
        // child escapes its group; as the subreaper the launcher still
        // finds it): ended too.
        let strays = if r.policy.end_strays {
            process::end_descendants(Duration::from_secs(5)).await
        } else {
            0
        };
        if strays > 0 {
            self.events.emit(RunEvent::StraysEnded {
                attempt: None,
                processes: strays as u64,
            });
        }
        // The cloud's machines go back, whatever the outcome.
        let released = r.provider.release();
        if !released.machines.is_empty() {
            self.events.emit(RunEvent::MachinesReleased {
                machines: released.machines.clone(),
                provider: r.provider.kind().into(),
            });
        }
        if let Some((machines, error)) = released.failed {
            self.console.note(&format!(
                "[ringmaster] could not terminate {} ({error}); run `ringmaster down {}`",
                machines.join(", "),
                self.run_dir.display()
            ));
            self.events.emit(RunEvent::MachinesLeft {
                machines,
                error,
                provider: r.provider.kind().into(),
            });
        }
        let preemptions: Vec<report::PreemptionReport> = std::mem::take(&mut r.preemptions)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        // Useful time: the run less what the preemptions took.
        let lost: f64 = preemptions
            .iter()
            .map(|p| p.total_s.unwrap_or(p.notice_to_out_s))
            .sum();
        let sim_cost = r
            .provider
            .cost((self.start.elapsed().as_secs_f64() - lost).max(0.0));
        self.build_report(code, r, preemptions, sim_cost)
    }
}

/// Let the process groups end on their own for up to `grace`, then
/// SIGKILL whatever is left of them.
async fn sweep(groups: &[u32], grace: Duration) {
    let until = Instant::now() + grace;
    while groups.iter().any(|pg| process::alive(*pg)) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process::signal_groups(groups, Signal::SIGKILL);
}
