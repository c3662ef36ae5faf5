//! The worker-group state machine, as a pure function: `handle(event)`
//! returns the actions to take. No processes, clocks or sockets here; the
//! executor (supervisor/mod.rs) feeds it events and carries out its actions.
//! Phases follow torch.distributed.elastic's worker-group states.

use proto::exit::LauncherExit;
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Init,
    /// Workers are being (re)launched.
    Restarting,
    /// Launched; waiting for every rank to join.
    Rendezvous,
    /// Every rank joined; the workload runs.
    Healthy,
    /// Workers are being stopped (SIGTERM sent, grace running).
    Stopping,
    Succeeded,
    Failed,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    Signal(i32),
    /// The process could not be started at all.
    SpawnFailed,
}

impl ExitKind {
    pub fn success(self) -> bool {
        self == ExitKind::Code(0)
    }
}

/// Why the group is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    WorkerFailed {
        rank: u32,
        exit: ExitKind,
    },
    RendezvousTimeout,
    HeartbeatLost {
        rank: u32,
    },
    Hang,
    Interrupted,
    /// A preemption notice: stop at an agreed step, checkpointed.
    Preempted,
    /// The same rank failed the same way at the same step in two attempts
    /// in a row: restarting again would only repeat it.
    CrashLoop {
        rank: u32,
        exit: ExitKind,
        step: u64,
    },
    /// The preflight check found slow nodes; `retry`: they are being
    /// replaced and the group starts again.
    Preflight {
        retry: bool,
    },
    /// Capacity came back for an elastic run short of nodes: stop at an
    /// agreed step, checkpointed, and start again on more nodes (no
    /// failure, no budget).
    Resize,
}

impl StopReason {
    /// The workers are told to stop at an agreed step with a checkpoint
    /// (a notice, a stop to grow), not terminated; parked survivors of
    /// such a stop may rejoin.
    pub fn at_agreed_step(&self) -> bool {
        matches!(self, StopReason::Preempted | StopReason::Resize)
    }

    /// Whether a restart may follow. A notice means this allocation is
    /// going away: the next run resumes from the checkpoint.
    fn restartable(&self) -> bool {
        !matches!(
            self,
            StopReason::Interrupted
                | StopReason::Preempted
                | StopReason::CrashLoop { .. }
                | StopReason::Preflight { retry: false }
        )
    }
}

/// Which restart budget a stop draws on. Preemptions draw on none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A worker exited non-zero on its own: the program's fault.
    User,
    /// The machine's fault: a worker killed by a signal, a lost heartbeat,
    /// a hang, a rendezvous that did not complete.
    Infrastructure,
}

impl FailureKind {
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::User => "user",
            FailureKind::Infrastructure => "infrastructure",
        }
    }
}

/// Restarts allowed (or used) per failure kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    /// Restarts on replacements for nodes the preflight check found slow
    /// (not failures).
    pub preflight: u32,
    pub user: u32,
    pub infra: u32,
    /// Restarts after a preemption, where the provider replaces the lost
    /// node; 0 where it cannot (the run ends, exit 8).
    pub preempt: u32,
}

impl Budgets {
    pub fn of(&self, kind: FailureKind) -> u32 {
        match kind {
            FailureKind::User => self.user,
            FailureKind::Infrastructure => self.infra,
        }
    }
    fn bump(&mut self, kind: FailureKind) {
        match kind {
            FailureKind::User => self.user += 1,
            FailureKind::Infrastructure => self.infra += 1,
        }
    }
}

/// The kind of failure a stop is, given the root-cause exit the machine
/// settled on (for worker failures). None: not a failure.
pub fn failure_kind(reason: &StopReason, root: Option<ExitKind>) -> Option<FailureKind> {
    match reason {
        StopReason::WorkerFailed { exit, .. } | StopReason::CrashLoop { exit, .. } => {
            match root.unwrap_or(*exit) {
                // Killed from outside: the OOM killer, a kill -9, a node
                // going down under it.
                ExitKind::Signal(_) => Some(FailureKind::Infrastructure),
                ExitKind::Code(_) | ExitKind::SpawnFailed => Some(FailureKind::User),
            }
        }
        StopReason::HeartbeatLost { .. } | StopReason::Hang | StopReason::RendezvousTimeout => {
            Some(FailureKind::Infrastructure)
        }
        StopReason::Interrupted
        | StopReason::Preempted
        | StopReason::Preflight { .. }
        | StopReason::Resize => None,
    }
}

/// Replacements of slow nodes (preflight) before the run gives up.
pub const MAX_PREFLIGHT_RETRIES: u32 = 3;

/// The worker exit code for "stopped at the agreed step after a notice".
const WORKER_PREEMPTED: i32 = proto::exit::WorkerExit::Preempted as i32;
/// Exit codes that echo another rank's failure rather than cause one.
const WORKER_COLLECTIVE: i32 = proto::exit::WorkerExit::Collective as i32;
const WORKER_LAUNCHER_LOST: i32 = proto::exit::WorkerExit::LauncherLost as i32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start,
    /// The executor started every worker of the current attempt.
    Launched,
    AllJoined,
    RendezvousTimeout,
    /// Every rank joined and the preflight check found slow nodes: stop
    /// before the first step; `retry` where they are being replaced.
    PreflightFailed {
        retry: bool,
    },
    /// `step`: the rank's last reported step, when it reports steps.
    WorkerExited {
        rank: u32,
        exit: ExitKind,
        step: Option<u64>,
    },
    HeartbeatLost {
        rank: u32,
    },
    Hang,
    GraceExpired,
    /// SIGINT reached the launcher (or a SIGTERM that is not a notice).
    Interrupt,
    /// SIGTERM reached the launcher: Kubernetes and Slurm send it before
    /// they kill, so a job that checkpoints (`sigterm_is_notice`) treats
    /// the first one while healthy as a preemption notice; otherwise (or a
    /// second time) it is an interrupt.
    Sigterm,
    /// A preemption notice reached the launcher (SIGUSR1, a worker's
    /// watcher).
    Notice,
    /// A node's own notice (its agent's pod got SIGTERM; the provider moves
    /// nodes before a deadline): acted on only while the group is healthy.
    NodeNotice,
    /// A rank stopped at the notice's agreed step with its checkpoint
    /// committed and waits, state in memory, to rejoin (a survivor: its
    /// node is not the one being lost).
    Parked {
        rank: u32,
    },
    /// An elastic run short of nodes has them back (booted): the group
    /// stops at an agreed step and starts again on them. Acted on only
    /// while the group is healthy.
    Grow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the workers of `attempt` (a fresh rendezvous round): every
    /// rank but those in `keep`, parked survivors that rejoin with their
    /// state.
    Launch {
        attempt: u32,
        keep: Vec<u32>,
    },
    /// SIGTERM every worker's process group and arm the grace timer.
    Terminate,
    /// SIGKILL every worker's process group of the current attempt.
    Kill,
    /// Record that the group is stopping and why.
    Stopping(StopReason),
    /// Tell every worker of the notice and arm the notice deadline.
    Notify,
    /// The attempt ended; `restarting` tells whether another follows.
    AttemptEnded {
        attempt: u32,
        reason: Option<StopReason>,
        restarting: bool,
    },
    Finish(LauncherExit),
}

#[derive(Debug, Clone)]
pub struct Machine {
    pub phase: Phase,
    pub attempt: u32,
    pub restarts_used: u32,
    pub budgets: Budgets,
    pub used: Budgets,
    /// The kind of the last stop that was a failure.
    pub last_kind: Option<FailureKind>,
    pub world: u32,
    alive: BTreeSet<u32>,
    /// Ranks parked in the attempt that is stopping.
    parked: BTreeSet<u32>,
    stop: Option<StopReason>,
    /// SIGKILL was sent to the stopping attempt (grace expired, a second
    /// Ctrl-C): a SIGKILL exit before that came from elsewhere.
    killed: bool,
    pub first_failure: Option<(u32, ExitKind)>,
    /// The step at which `first_failure`'s rank failed, if known.
    first_failure_step: Option<u64>,
    /// The previous attempt's failure: (rank, exit, step).
    previous_failure: Option<(u32, ExitKind, u64)>,
    /// A SIGTERM while healthy is a preemption notice (see Event::Sigterm).
    pub sigterm_is_notice: bool,
    /// The launcher itself got a SIGTERM in this attempt.
    sigterm_seen: bool,
}

/// The step every rank of a program that reports its steps stops after: the
/// furthest step reported, plus the steps the ranks can still make while
/// the word travels (`latency_s`: the reports' and the answer's delivery)
/// at the group's rate, plus one. Without a rate, the next step.
pub fn agreed_stop_step(furthest: u64, steps_per_s: Option<f64>, latency_s: f64) -> u64 {
    let travel = steps_per_s
        .filter(|r| r.is_finite() && *r > 0.0)
        .map_or(0, |r| (r * latency_s).ceil() as u64);
    furthest + travel + 1
}

/// How long the workers get after a notice: the job's `notice_grace_s`,
/// or less when the cloud's own deadline (ms since the epoch) comes first;
/// nothing when that deadline is already past.
pub fn notice_grace(notice_grace_s: f64, cloud_deadline_ms: Option<u64>, now_ms: u64) -> Duration {
    let ours = Duration::from_secs_f64(notice_grace_s);
    match cloud_deadline_ms {
        Some(d) => ours.min(Duration::from_millis(d.saturating_sub(now_ms))),
        None => ours,
    }
}

impl Machine {
    /// One budget for every kind of failure (torchrun's max_restarts).
    pub fn new(world: u32, max_restarts: u32) -> Self {
        Self::with_budgets(
            world,
            Budgets {
                user: max_restarts,
                infra: max_restarts,
                preempt: 0,
                preflight: MAX_PREFLIGHT_RETRIES,
            },
        )
    }

    pub fn with_budgets(world: u32, budgets: Budgets) -> Self {
        Machine {
            phase: Phase::Init,
            attempt: 0,
            restarts_used: 0,
            budgets,
            used: Budgets::default(),
            last_kind: None,
            world,
            alive: BTreeSet::new(),
            parked: BTreeSet::new(),
            stop: None,
            killed: false,
            first_failure: None,
            first_failure_step: None,
            previous_failure: None,
            sigterm_is_notice: false,
            sigterm_seen: false,
        }
    }

    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop.as_ref()
    }

    fn begin_stop(&mut self, reason: StopReason) -> Vec<Action> {
        self.phase = Phase::Stopping;
        self.killed = false;
        self.stop = Some(reason.clone());
        let notify = reason.at_agreed_step();
        let mut actions = vec![Action::Stopping(reason)];
        if self.alive.is_empty() {
            actions.extend(self.all_stopped());
        } else if notify {
            actions.push(Action::Notify);
        } else {
            actions.push(Action::Terminate);
        }
        actions
    }

    /// Every worker of the attempt has exited while stopping.
    fn all_stopped(&mut self) -> Vec<Action> {
        let mut reason = self.stop.take().expect("stopping has a reason");
        let parked = std::mem::take(&mut self.parked);
        let mut actions = vec![Action::Kill];
        if let (StopReason::WorkerFailed { .. }, Some((rank, exit)), Some(step)) =
            (&reason, self.first_failure, self.first_failure_step)
        {
            if self.previous_failure == Some((rank, exit, step)) {
                reason = StopReason::CrashLoop { rank, exit, step };
            }
            self.previous_failure = Some((rank, exit, step));
        } else {
            self.previous_failure = None;
        }
        let kind = failure_kind(&reason, self.first_failure.map(|(_, e)| e));
        self.last_kind = kind;
        let restart = match (&reason, kind) {
            (StopReason::Preempted, _) => self.used.preempt < self.budgets.preempt,
            (StopReason::Resize, _) => true,
            (StopReason::Preflight { retry }, _) => {
                *retry && self.used.preflight < self.budgets.preflight
            }
            (r, Some(k)) => r.restartable() && self.used.of(k) < self.budgets.of(k),
            (_, None) => false,
        };
        if restart {
            match (kind, &reason) {
                (Some(k), _) => self.used.bump(k),
                (None, StopReason::Preflight { .. }) => self.used.preflight += 1,
                (None, StopReason::Resize) => {}
                (None, _) => self.used.preempt += 1,
            }
            // Survivors rejoin only after a notice (they stopped at the
            // agreed step with the checkpoint committed); the launcher
            // drops them where the world changes size.
            let keep: Vec<u32> = if reason.at_agreed_step() {
                parked.into_iter().collect()
            } else {
                vec![]
            };
            actions.push(Action::AttemptEnded {
                attempt: self.attempt,
                reason: Some(reason),
                restarting: true,
            });
            self.restarts_used += 1;
            self.attempt += 1;
            self.sigterm_seen = false;
            self.phase = Phase::Restarting;
            actions.push(Action::Launch {
                attempt: self.attempt,
                keep,
            });
        } else {
            let exit = match reason {
                StopReason::Interrupted => LauncherExit::Interrupted,
                StopReason::Preempted => LauncherExit::Preempted,
                StopReason::RendezvousTimeout => LauncherExit::RendezvousFailed,
                StopReason::Preflight { .. } => LauncherExit::PreflightFailed,
                _ => LauncherExit::WorkersFailed,
            };
            actions.push(Action::AttemptEnded {
                attempt: self.attempt,
                reason: Some(reason),
                restarting: false,
            });
            self.phase = Phase::Failed;
            actions.push(Action::Finish(exit));
        }
        actions
    }

    /// A SIGTERM to the launcher. With `sigterm_is_notice`: while healthy,
    /// a preemption notice; while stopping for a notice the workers
    /// relayed first (Slurm signals every process at once), the same
    /// notice. Otherwise, and after one was taken, an interrupt (a second
    /// one kills).
    fn on_sigterm(&mut self) -> Vec<Action> {
        let notice = self.sigterm_is_notice && !self.sigterm_seen;
        match self.phase {
            Phase::Healthy if self.sigterm_is_notice => {
                self.sigterm_seen = true;
                self.begin_stop(StopReason::Preempted)
            }
            Phase::Stopping if notice && self.stop == Some(StopReason::Preempted) => {
                self.sigterm_seen = true;
                vec![]
            }
            Phase::Stopping if notice && self.stop == Some(StopReason::Resize) => {
                self.sigterm_seen = true;
                self.handle(Event::Notice)
            }
            _ => self.handle(Event::Interrupt),
        }
    }

    /// A worker of the attempt ended while the group runs.
    fn exited_running(&mut self, rank: u32, exit: ExitKind, step: Option<u64>) -> Vec<Action> {
        if !self.alive.remove(&rank) {
            return vec![];
        }
        if exit == ExitKind::Code(WORKER_PREEMPTED) {
            // A worker got a notice itself (SIGUSR1 to the worker)
            // and the group agreed to stop: the others follow.
            return self.begin_stop(StopReason::Preempted);
        }
        if exit.success() {
            if self.alive.is_empty() {
                self.phase = Phase::Succeeded;
                return vec![
                    Action::Kill,
                    Action::AttemptEnded {
                        attempt: self.attempt,
                        reason: None,
                        restarting: false,
                    },
                    Action::Finish(LauncherExit::Success),
                ];
            }
            vec![]
        } else {
            if self.first_failure.is_none() {
                self.first_failure = Some((rank, exit));
                self.first_failure_step = step;
            }
            self.begin_stop(StopReason::WorkerFailed { rank, exit })
        }
    }

    /// A worker ended while the group stops: the others' ends, or the root
    /// cause of a failure seen a moment late.
    fn exited_stopping(&mut self, rank: u32, exit: ExitKind, step: Option<u64>) -> Vec<Action> {
        if !exit.success() && exit != ExitKind::Code(WORKER_PREEMPTED) {
            // A peer's failure makes its neighbours fail too, often
            // a moment earlier than its own exit is seen: the root
            // cause is the first exit that is not such an echo (and
            // not a signal we sent while stopping).
            let echo = |e: ExitKind| matches!(e, ExitKind::Code(c) if c == WORKER_COLLECTIVE || c == WORKER_LAUNCHER_LOST);
            // SIGTERM is sent when a stop begins; SIGKILL only once
            // the grace period is over. A SIGKILL before that came
            // from outside (the OOM killer, a kill -9): a root cause.
            let ours = matches!(exit, ExitKind::Signal(s) if s == libc::SIGTERM || (s == libc::SIGKILL && self.killed));
            let replace = match self.first_failure {
                None => true,
                Some((_, first)) => echo(first) && !echo(exit) && !ours,
            };
            if replace {
                self.first_failure = Some((rank, exit));
                self.first_failure_step = step;
            }
        }
        if self.alive.remove(&rank) && self.alive.is_empty() {
            return self.all_stopped();
        }
        vec![]
    }

    /// SIGINT (or a SIGTERM that is no notice) before the group stops.
    fn interrupted(&mut self) -> Vec<Action> {
        if self.phase == Phase::Restarting {
            // Nothing launched yet in this attempt.
            self.phase = Phase::Failed;
            return vec![
                Action::AttemptEnded {
                    attempt: self.attempt,
                    reason: Some(StopReason::Interrupted),
                    restarting: false,
                },
                Action::Finish(LauncherExit::Interrupted),
            ];
        }
        self.begin_stop(StopReason::Interrupted)
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use Phase::*;
        match (self.phase, event) {
            (Init, Event::Start) => {
                self.phase = Restarting;
                vec![Action::Launch {
                    attempt: self.attempt,
                    keep: vec![],
                }]
            }
            (Rendezvous | Healthy, Event::Parked { rank }) => {
                if !self.alive.remove(&rank) {
                    return vec![];
                }
                // Like an exit after a notice: the others follow.
                self.parked.insert(rank);
                self.begin_stop(StopReason::Preempted)
            }
            (Stopping, Event::Parked { rank }) => {
                if self.alive.remove(&rank) {
                    self.parked.insert(rank);
                    if self.alive.is_empty() {
                        return self.all_stopped();
                    }
                }
                vec![]
            }
            (Restarting, Event::Launched) => {
                // The previous attempt's failure stays readable until the
                // executor reported it (AttemptEnded comes before Launch).
                self.first_failure = None;
                self.first_failure_step = None;
                self.phase = Rendezvous;
                self.alive = (0..self.world).collect();
                vec![]
            }
            (Rendezvous, Event::AllJoined) => {
                self.phase = Healthy;
                vec![]
            }
            (Rendezvous, Event::RendezvousTimeout) => {
                self.begin_stop(StopReason::RendezvousTimeout)
            }
            (Rendezvous, Event::PreflightFailed { retry }) => {
                self.begin_stop(StopReason::Preflight { retry })
            }
            (Healthy, Event::HeartbeatLost { rank })
            | (Rendezvous, Event::HeartbeatLost { rank }) => {
                self.begin_stop(StopReason::HeartbeatLost { rank })
            }
            (Healthy, Event::Hang) => self.begin_stop(StopReason::Hang),
            (Rendezvous | Healthy, Event::WorkerExited { rank, exit, step }) => {
                self.exited_running(rank, exit, step)
            }
            (Stopping, Event::WorkerExited { rank, exit, step }) => {
                self.exited_stopping(rank, exit, step)
            }
            (Stopping, Event::GraceExpired) => {
                self.killed = true;
                vec![Action::Kill]
            }
            (Rendezvous | Healthy, Event::Notice) | (Healthy, Event::NodeNotice) => {
                self.begin_stop(StopReason::Preempted)
            }
            (_, Event::Sigterm) => self.on_sigterm(),
            // A notice while stopping to grow: the ranks already stop at an
            // agreed step; the stop is a preemption now.
            (Stopping, Event::Notice | Event::NodeNotice)
                if self.stop == Some(StopReason::Resize) =>
            {
                self.stop = Some(StopReason::Preempted);
                vec![]
            }
            // A notice while already stopping otherwise changes nothing.
            (Stopping, Event::Notice) => vec![],
            (Healthy, Event::Grow) => self.begin_stop(StopReason::Resize),
            (Restarting | Rendezvous | Healthy, Event::Interrupt) => self.interrupted(),
            (Stopping, Event::Interrupt) => {
                // Second Ctrl-C: kill now, and do not restart.
                self.stop = Some(StopReason::Interrupted);
                self.killed = true;
                vec![Action::Kill]
            }
            // Anything else is stale (e.g. a join after a timeout) and ignored.
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Event::*;

    fn ex(rank: u32, code: i32) -> Event {
        WorkerExited {
            rank,
            exit: ExitKind::Code(code),
            step: None,
        }
    }

    #[test]
    fn an_outside_sigkill_seen_after_its_peers_echo_is_the_root_cause() {
        // Rank 1 is SIGKILLed from outside; rank 0's "peer closed" exit
        // (73) happens to be seen first. The SIGKILL came before the grace
        // period ended, so it is not ours: the stop is an infrastructure
        // failure and restarts on that budget.
        let budgets = Budgets {
            preflight: 0,
            user: 0,
            infra: 1,
            preempt: 0,
        };
        for (sigkill_after_grace, restarts) in [(false, true), (true, false)] {
            let mut m = Machine::with_budgets(2, budgets);
            for e in [Start, Launched, AllJoined] {
                m.handle(e);
            }
            m.handle(ex(0, WORKER_COLLECTIVE));
            if sigkill_after_grace {
                assert_eq!(m.handle(GraceExpired), vec![Kill]);
            }
            let a = m.handle(WorkerExited {
                rank: 1,
                exit: ExitKind::Signal(libc::SIGKILL),
                step: None,
            });
            assert_eq!(
                a.contains(&Launch {
                    attempt: 1,
                    keep: vec![]
                }),
                restarts,
                "{a:?}"
            );
            let root = if restarts {
                (1, ExitKind::Signal(libc::SIGKILL))
            } else {
                // Our own SIGKILL after the grace period is no root cause.
                (0, ExitKind::Code(WORKER_COLLECTIVE))
            };
            assert_eq!(m.first_failure, Some(root), "{a:?}");
        }
    }

    #[test]
    fn a_failed_preflight_ends_the_run_or_restarts_on_replacements() {
        // Fail: stop before the first step, exit preflight-failed.
        let mut m = Machine::new(2, 3);
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (
                    PreflightFailed { retry: false },
                    vec![Stopping(StopReason::Preflight { retry: false }), Terminate],
                    Phase::Stopping,
                ),
                (
                    WorkerExited {
                        rank: 0,
                        exit: ExitKind::Signal(libc::SIGTERM),
                        step: None,
                    },
                    vec![],
                    Phase::Stopping,
                ),
                (
                    WorkerExited {
                        rank: 1,
                        exit: ExitKind::Signal(libc::SIGTERM),
                        step: None,
                    },
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(StopReason::Preflight { retry: false }),
                            restarting: false,
                        },
                        Finish(LauncherExit::PreflightFailed),
                    ],
                    Phase::Failed,
                ),
            ],
        );
        // Replace: the group starts again, up to MAX_PREFLIGHT_RETRIES
        // times, without touching the failure budgets.
        let mut m = Machine::new(1, 0);
        m.handle(Start);
        let slow_again = |m: &mut Machine| {
            m.handle(Launched);
            m.handle(PreflightFailed { retry: true });
            m.handle(WorkerExited {
                rank: 0,
                exit: ExitKind::Signal(libc::SIGTERM),
                step: None,
            })
        };
        for attempt in 1..=MAX_PREFLIGHT_RETRIES {
            let a = slow_again(&mut m);
            assert!(
                a.contains(&Launch {
                    attempt,
                    keep: vec![]
                }),
                "{a:?}"
            );
            assert_eq!((m.used.preflight, m.used.infra), (attempt, 0));
        }
        // One more slow replacement and the run ends.
        let a = slow_again(&mut m);
        assert!(a.contains(&Finish(LauncherExit::PreflightFailed)), "{a:?}");
    }

    /// Run a table of (event, expected actions, expected phase after).
    fn play(m: &mut Machine, table: &[(Event, Vec<Action>, Phase)]) {
        for (i, (ev, want, phase)) in table.iter().enumerate() {
            let got = m.handle(ev.clone());
            assert_eq!(&got, want, "row {i}: {ev:?}");
            assert_eq!(m.phase, *phase, "row {i}: phase after {ev:?}");
        }
    }

    #[test]
    fn failure_kinds_have_their_own_budgets() {
        // One user-error restart, two infrastructure restarts.
        let mut m = Machine::with_budgets(
            1,
            Budgets {
                user: 1,
                infra: 2,
                preempt: 0,
                preflight: 0,
            },
        );
        let start = |m: &mut Machine| {
            m.handle(Launched);
            m.handle(AllJoined);
        };
        assert_eq!(
            m.handle(Start),
            vec![Launch {
                attempt: 0,
                keep: vec![]
            }]
        );
        let killed = |step| WorkerExited {
            rank: 0,
            exit: ExitKind::Signal(9),
            step: Some(step),
        };
        let crashed = |step| WorkerExited {
            rank: 0,
            exit: ExitKind::Code(74),
            step: Some(step),
        };
        // (event, kind, restarting): a SIGKILL is the machine's fault, an
        // exit code the program's; each kind spends only its own budget.
        let table = [
            (killed(10), FailureKind::Infrastructure, true),
            (crashed(20), FailureKind::User, true),
            (killed(30), FailureKind::Infrastructure, true),
            (Hang, FailureKind::Infrastructure, false),
        ];
        for (i, (ev, kind, restarting)) in table.into_iter().enumerate() {
            start(&mut m);
            let hang = ev == Hang;
            let acts = m.handle(ev);
            let acts = if hang {
                m.handle(WorkerExited {
                    rank: 0,
                    exit: ExitKind::Signal(15),
                    step: None,
                })
            } else {
                acts
            };
            assert_eq!(m.last_kind, Some(kind), "row {i}");
            let ended = acts
                .iter()
                .find_map(|a| match a {
                    AttemptEnded { restarting, .. } => Some(*restarting),
                    _ => None,
                })
                .expect("attempt ended");
            assert_eq!(ended, restarting, "row {i}: {acts:?}");
        }
        assert_eq!(
            m.used,
            Budgets {
                user: 1,
                infra: 2,
                preempt: 0,
                preflight: 0,
            }
        );
        assert_eq!(m.restarts_used, 3);
        assert_eq!(m.phase, Phase::Failed);
    }

    #[test]
    fn user_budget_spent_fails_even_with_infra_budget_left() {
        let mut m = Machine::with_budgets(
            1,
            Budgets {
                user: 0,
                infra: 5,
                preempt: 0,
                preflight: 0,
            },
        );
        m.handle(Start);
        m.handle(Launched);
        m.handle(AllJoined);
        let acts = m.handle(WorkerExited {
            rank: 0,
            exit: ExitKind::Code(1),
            step: None,
        });
        assert!(
            acts.contains(&Finish(LauncherExit::WorkersFailed)),
            "{acts:?}"
        );
        assert_eq!(failure_kind(&StopReason::Preempted, None), None);
        assert_eq!(
            failure_kind(&StopReason::HeartbeatLost { rank: 0 }, None),
            Some(FailureKind::Infrastructure)
        );
    }

    #[test]
    fn clean_run() {
        let mut m = Machine::new(2, 0);
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                (ex(1, 0), vec![], Phase::Healthy),
                (
                    ex(0, 0),
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: None,
                            restarting: false,
                        },
                        Finish(LauncherExit::Success),
                    ],
                    Phase::Succeeded,
                ),
            ],
        );
    }

    #[test]
    fn survivors_park_and_are_kept_through_a_preemption() {
        let budgets = Budgets {
            user: 0,
            infra: 0,
            preempt: 1,
            preflight: 0,
        };
        let mut m = Machine::with_budgets(3, budgets);
        let preempted = StopReason::Preempted;
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                // A survivor parks before the launcher heard of the notice:
                // the group stops as for a notice.
                (
                    Parked { rank: 0 },
                    vec![Stopping(preempted.clone()), Notify],
                    Phase::Stopping,
                ),
                (Parked { rank: 2 }, vec![], Phase::Stopping),
                // The lost node's rank exits (preempted-checkpointed).
                (
                    ex(1, WORKER_PREEMPTED),
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(preempted.clone()),
                            restarting: true,
                        },
                        Launch {
                            attempt: 1,
                            keep: vec![0, 2],
                        },
                    ],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                // The budget is spent: the next preemption ends the run, and
                // nobody is kept.
                (
                    Parked { rank: 1 },
                    vec![Stopping(preempted.clone()), Notify],
                    Phase::Stopping,
                ),
                (ex(0, WORKER_PREEMPTED), vec![], Phase::Stopping),
                (
                    ex(2, WORKER_PREEMPTED),
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 1,
                            reason: Some(preempted),
                            restarting: false,
                        },
                        Finish(LauncherExit::Preempted),
                    ],
                    Phase::Failed,
                ),
            ],
        );
        // Survivors of a stop that is not a notice's are not kept.
        let mut m = Machine::with_budgets(2, Budgets { user: 1, ..budgets });
        for e in [Start, Launched, AllJoined] {
            m.handle(e);
        }
        m.handle(ex(1, 3));
        assert_eq!(
            m.handle(Parked { rank: 0 }).last(),
            Some(&Launch {
                attempt: 1,
                keep: vec![]
            }),
            "a parked rank counts as out, and is not kept after a failure"
        );
        let mut m = Machine::with_budgets(2, Budgets { user: 1, ..budgets });
        for e in [Start, Launched, AllJoined] {
            m.handle(e);
        }
        m.handle(Parked { rank: 0 });
        assert_eq!(m.handle(Interrupt), vec![Kill]);
        assert_eq!(
            m.handle(ex(1, 130)).last(),
            Some(&Finish(LauncherExit::Interrupted))
        );
    }

    #[test]
    fn failure_restarts_then_succeeds() {
        let mut m = Machine::new(2, 1);
        let failed = StopReason::WorkerFailed {
            rank: 1,
            exit: ExitKind::Code(3),
        };
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                (
                    ex(1, 3),
                    vec![Stopping(failed.clone()), Terminate],
                    Phase::Stopping,
                ),
                (GraceExpired, vec![Kill], Phase::Stopping),
                (
                    WorkerExited {
                        rank: 0,
                        exit: ExitKind::Signal(9),
                        step: None,
                    },
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(failed),
                            restarting: true,
                        },
                        Launch {
                            attempt: 1,
                            keep: vec![],
                        },
                    ],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                (ex(0, 0), vec![], Phase::Healthy),
                (
                    ex(1, 0),
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 1,
                            reason: None,
                            restarting: false,
                        },
                        Finish(LauncherExit::Success),
                    ],
                    Phase::Succeeded,
                ),
            ],
        );
        assert_eq!(m.restarts_used, 1);
    }

    #[test]
    fn budget_exhausted_fails_and_names_first_failure() {
        let mut m = Machine::new(2, 0);
        let failed = StopReason::WorkerFailed {
            rank: 0,
            exit: ExitKind::Signal(11),
        };
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                (
                    WorkerExited {
                        rank: 0,
                        exit: ExitKind::Signal(11),
                        step: None,
                    },
                    vec![Stopping(failed.clone()), Terminate],
                    Phase::Stopping,
                ),
                (
                    ex(1, 73),
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(failed),
                            restarting: false,
                        },
                        Finish(LauncherExit::WorkersFailed),
                    ],
                    Phase::Failed,
                ),
            ],
        );
        assert_eq!(m.first_failure, Some((0, ExitKind::Signal(11))));
    }

    #[test]
    fn the_last_worker_failing_still_records_why() {
        let mut m = Machine::new(2, 0);
        let failed = StopReason::WorkerFailed {
            rank: 1,
            exit: ExitKind::Code(42),
        };
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                (ex(0, 0), vec![], Phase::Healthy),
                (
                    ex(1, 42),
                    vec![
                        Stopping(failed.clone()),
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(failed),
                            restarting: false,
                        },
                        Finish(LauncherExit::WorkersFailed),
                    ],
                    Phase::Failed,
                ),
            ],
        );
    }

    #[test]
    fn the_same_failure_at_the_same_step_twice_is_a_crash_loop() {
        let at = |rank, code, step| WorkerExited {
            rank,
            exit: ExitKind::Code(code),
            step: Some(step),
        };
        let mut m = Machine::new(1, 5);
        m.handle(Start);
        m.handle(Launched);
        m.handle(AllJoined);
        // Attempt 0 fails at step 40: restart.
        assert_eq!(
            m.handle(at(0, 74, 40)).last(),
            Some(&Launch {
                attempt: 1,
                keep: vec![]
            })
        );
        m.handle(Launched);
        m.handle(AllJoined);
        // Attempt 1 fails at step 41 (a different step): restart.
        assert_eq!(
            m.handle(at(0, 74, 41)).last(),
            Some(&Launch {
                attempt: 2,
                keep: vec![]
            })
        );
        m.handle(Launched);
        m.handle(AllJoined);
        // Attempt 2 fails at step 41 again: stop, whatever budget is left.
        let loop_reason = StopReason::CrashLoop {
            rank: 0,
            exit: ExitKind::Code(74),
            step: 41,
        };
        assert_eq!(
            m.handle(at(0, 74, 41)),
            vec![
                Stopping(StopReason::WorkerFailed {
                    rank: 0,
                    exit: ExitKind::Code(74)
                }),
                Kill,
                AttemptEnded {
                    attempt: 2,
                    reason: Some(loop_reason),
                    restarting: false
                },
                Finish(LauncherExit::WorkersFailed)
            ]
        );
        assert_eq!(m.restarts_used, 2);
    }

    #[test]
    fn the_root_cause_is_named_not_the_echo() {
        // Rank 2's collective fails because rank 1 died; rank 1's own exit
        // is seen a moment later. Rank 1 is the first failure.
        let mut m = Machine::new(4, 0);
        m.handle(Start);
        m.handle(Launched);
        m.handle(AllJoined);
        m.handle(ex(2, 73));
        m.handle(WorkerExited {
            rank: 0,
            exit: ExitKind::Signal(15),
            step: None,
        });
        m.handle(ex(1, 74));
        m.handle(ex(3, 73));
        assert_eq!(m.first_failure, Some((1, ExitKind::Code(74))));
        // Signals we sent while stopping are not a cause either (the
        // SIGKILL once the grace period is over).
        let mut m = Machine::new(2, 0);
        m.handle(Start);
        m.handle(Launched);
        m.handle(ex(0, 73));
        m.handle(GraceExpired);
        m.handle(WorkerExited {
            rank: 1,
            exit: ExitKind::Signal(9),
            step: None,
        });
        assert_eq!(m.first_failure, Some((0, ExitKind::Code(73))));
    }

    #[test]
    fn rendezvous_timeout_is_its_own_exit() {
        let mut m = Machine::new(1, 0);
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (
                    RendezvousTimeout,
                    vec![Stopping(StopReason::RendezvousTimeout), Terminate],
                    Phase::Stopping,
                ),
                (
                    ex(0, 143),
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(StopReason::RendezvousTimeout),
                            restarting: false,
                        },
                        Finish(LauncherExit::RendezvousFailed),
                    ],
                    Phase::Failed,
                ),
            ],
        );
    }

    #[test]
    fn interrupt_once_graceful_twice_kill_never_restart() {
        let mut m = Machine::new(2, 5);
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                (
                    Interrupt,
                    vec![Stopping(StopReason::Interrupted), Terminate],
                    Phase::Stopping,
                ),
                (Interrupt, vec![Kill], Phase::Stopping),
                (ex(0, 143), vec![], Phase::Stopping),
                (
                    WorkerExited {
                        rank: 1,
                        exit: ExitKind::Signal(9),
                        step: None,
                    },
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(StopReason::Interrupted),
                            restarting: false,
                        },
                        Finish(LauncherExit::Interrupted),
                    ],
                    Phase::Failed,
                ),
            ],
        );
    }

    #[test]
    fn a_second_interrupt_overrides_a_pending_restart() {
        let mut m = Machine::new(1, 5);
        m.handle(Start);
        m.handle(Launched);
        m.handle(AllJoined);
        m.handle(ex(0, 1));
        // Stopping with a worker failure, but the group is already empty:
        assert_eq!(m.phase, Phase::Restarting);
        let mut m = Machine::new(2, 5);
        m.handle(Start);
        m.handle(Launched);
        m.handle(ex(0, 1));
        assert_eq!(m.handle(Interrupt), vec![Kill]);
        let acts = m.handle(WorkerExited {
            rank: 1,
            exit: ExitKind::Signal(9),
            step: None,
        });
        assert_eq!(acts.last(), Some(&Finish(LauncherExit::Interrupted)));
    }

    #[test]
    fn a_notice_drains_the_group_and_does_not_restart() {
        let mut m = Machine::new(2, 5);
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                (
                    Notice,
                    vec![Stopping(StopReason::Preempted), Notify],
                    Phase::Stopping,
                ),
                (Notice, vec![], Phase::Stopping),
                (ex(0, 77), vec![], Phase::Stopping),
                (
                    ex(1, 77),
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(StopReason::Preempted),
                            restarting: false,
                        },
                        Finish(LauncherExit::Preempted),
                    ],
                    Phase::Failed,
                ),
            ],
        );
        assert_eq!(
            m.first_failure, None,
            "agreed preemption exits are not failures"
        );
        // A worker that got the notice itself leads the others.
        let mut m = Machine::new(2, 5);
        m.handle(Start);
        m.handle(Launched);
        m.handle(AllJoined);
        assert_eq!(
            m.handle(ex(1, 77)),
            vec![Stopping(StopReason::Preempted), Notify]
        );
        assert_eq!(m.handle(GraceExpired), vec![Kill]);
    }

    #[test]
    fn growing_stops_at_an_agreed_step_and_restarts_without_a_budget() {
        // No restarts allowed at all: growing is not a failure.
        let mut m = Machine::new(2, 0);
        play(
            &mut m,
            &[
                (
                    Start,
                    vec![Launch {
                        attempt: 0,
                        keep: vec![],
                    }],
                    Phase::Restarting,
                ),
                (Launched, vec![], Phase::Rendezvous),
                // Not before every rank joined.
                (Grow, vec![], Phase::Rendezvous),
                (AllJoined, vec![], Phase::Healthy),
                (
                    Grow,
                    vec![Stopping(StopReason::Resize), Notify],
                    Phase::Stopping,
                ),
                (Grow, vec![], Phase::Stopping),
                (Parked { rank: 1 }, vec![], Phase::Stopping),
                (
                    ex(0, 77),
                    vec![
                        Kill,
                        AttemptEnded {
                            attempt: 0,
                            reason: Some(StopReason::Resize),
                            restarting: true,
                        },
                        Launch {
                            attempt: 1,
                            keep: vec![1],
                        },
                    ],
                    Phase::Restarting,
                ),
            ],
        );
        assert_eq!(m.used, Budgets::default(), "no budget spent");
        assert_eq!(m.last_kind, None);
        // A notice while stopping to grow makes the stop a preemption
        // (here with no preemption restarts left: the run ends).
        let mut m = Machine::new(2, 0);
        for ev in [Start, Launched, AllJoined, Grow] {
            m.handle(ev);
        }
        assert_eq!(m.handle(Notice), vec![]);
        m.handle(ex(0, 77));
        assert_eq!(
            m.handle(ex(1, 77)).last(),
            Some(&Finish(LauncherExit::Preempted))
        );
    }

    #[test]
    fn heartbeat_loss_and_hang_stop_the_group() {
        for ev in [HeartbeatLost { rank: 1 }, Hang] {
            let mut m = Machine::new(2, 0);
            m.handle(Start);
            m.handle(Launched);
            m.handle(AllJoined);
            let acts = m.handle(ev.clone());
            assert_eq!(acts.last(), Some(&Terminate), "{ev:?}");
            assert_eq!(m.phase, Phase::Stopping);
        }
    }

    #[test]
    fn stale_and_duplicate_events_are_ignored() {
        let mut m = Machine::new(2, 0);
        assert_eq!(m.handle(AllJoined), vec![]);
        m.handle(Start);
        m.handle(Launched);
        assert_eq!(m.handle(ex(7, 1)), vec![]);
        assert_eq!(m.handle(ex(0, 0)), vec![]);
        assert_eq!(m.handle(ex(0, 0)), vec![]);
        assert_eq!(m.phase, Phase::Rendezvous);
    }

    /// Where each kind of notice and a SIGTERM lead, phase by phase: the
    /// policy the executor used to decide itself.
    #[test]
    fn notices_and_sigterm_by_phase_and_policy() {
        let preempted = vec![Stopping(StopReason::Preempted), Notify];
        let interrupted = vec![Stopping(StopReason::Interrupted), Terminate];
        // (event, sigterm_is_notice, phase reached first, expected actions)
        let table: Vec<(Event, bool, &[Event], Vec<Action>)> = vec![
            (
                Sigterm,
                true,
                &[Start, Launched, AllJoined],
                preempted.clone(),
            ),
            (
                Sigterm,
                false,
                &[Start, Launched, AllJoined],
                interrupted.clone(),
            ),
            // Not yet healthy: no step to agree on, so an interrupt.
            (Sigterm, true, &[Start, Launched], interrupted.clone()),
            // A second SIGTERM while stopping for the first: kill now.
            (
                Sigterm,
                true,
                &[Start, Launched, AllJoined, Sigterm],
                vec![Kill],
            ),
            // The scheduler's SIGTERM after a worker relayed the same one
            // (Slurm signals every process): nothing; a second kills.
            (Sigterm, true, &[Start, Launched, AllJoined, Notice], vec![]),
            (
                Sigterm,
                true,
                &[Start, Launched, AllJoined, Notice, Sigterm],
                vec![Kill],
            ),
            // Without the policy a SIGTERM while stopping is a second signal.
            (
                Sigterm,
                false,
                &[Start, Launched, AllJoined, Notice],
                vec![Kill],
            ),
            (Notice, false, &[Start, Launched], preempted.clone()),
            (
                Notice,
                false,
                &[Start, Launched, AllJoined],
                preempted.clone(),
            ),
            (Notice, false, &[Start, Launched, AllJoined, Notice], vec![]),
            (
                NodeNotice,
                false,
                &[Start, Launched, AllJoined],
                preempted.clone(),
            ),
            // A node's notice during the rendezvous or a stop: nothing.
            (NodeNotice, false, &[Start, Launched], vec![]),
            (
                NodeNotice,
                false,
                &[Start, Launched, AllJoined, Interrupt],
                vec![],
            ),
        ];
        for (ev, policy, before, want) in table {
            let mut m = Machine::new(2, 0);
            m.sigterm_is_notice = policy;
            for e in before {
                m.handle(e.clone());
            }
            assert_eq!(
                m.handle(ev.clone()),
                want,
                "{ev:?} after {before:?}, sigterm_is_notice {policy}"
            );
        }
        // Before anything launched, a SIGTERM ends the run as an interrupt.
        let mut m = Machine::new(2, 0);
        m.sigterm_is_notice = true;
        m.handle(Start);
        assert_eq!(
            m.handle(Sigterm).last(),
            Some(&Finish(LauncherExit::Interrupted))
        );
    }

    #[test]
    fn the_agreed_stop_step_leaves_room_for_the_word_to_travel() {
        // (furthest step reported, steps/s, latency s, stop step)
        let table = [
            (100, None, 1.05, 101),
            (100, Some(10.0), 1.05, 112),
            (100, Some(0.5), 1.05, 102),
            (0, Some(1000.0), 1.05, 1051),
            (100, Some(f64::NAN), 1.05, 101),
            (100, Some(-3.0), 1.05, 101),
        ];
        for (furthest, rate, latency, want) in table {
            assert_eq!(
                agreed_stop_step(furthest, rate, latency),
                want,
                "{furthest} {rate:?} {latency}"
            );
        }
    }

    #[test]
    fn the_notice_grace_is_the_earlier_of_ours_and_the_clouds() {
        let s = Duration::from_secs;
        // (notice_grace_s, cloud deadline ms, now ms, grace)
        let table = [
            (30.0, None, 1_000, s(30)),
            (30.0, Some(11_000), 1_000, s(10)),
            (30.0, Some(100_000), 1_000, s(30)),
            // The cloud's deadline already past: no time at all.
            (30.0, Some(500), 1_000, s(0)),
            (0.5, Some(2_000), 1_000, Duration::from_millis(500)),
        ];
        for (ours, cloud, now, want) in table {
            assert_eq!(
                notice_grace(ours, cloud, now),
                want,
                "{ours} {cloud:?} {now}"
            );
        }
    }
}
