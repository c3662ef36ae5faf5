//! What a run carries from one event to the next (`RunState`): the state
//! machine, the provider and rendezvous, the attempt in flight, survivors
//! parked between rounds, the timers, the notice being handled and what the
//! report will say; and the inputs the executor's select loop waits on.

use super::attempt::Attempt;
use super::machine::{Event, ExitKind, Machine};
use crate::progress::Display;
use crate::provider::Provider;
use crate::rendezvous::{RdzvEvent, Rendezvous};
use crate::report::{AttemptReport, PreemptionReport};
use proto::exit::LauncherExit;
use proto::wire::NoticeInfo;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::signal::unix::Signal as SignalStream;
use tokio::sync::mpsc;

/// A worker process ended (or could not start).
#[derive(Debug, Clone, Copy)]
pub(super) struct Exited {
    /// The attempt it was launched in.
    pub attempt: u32,
    /// Its process group (REMOTE_HANDLE + its worker id for a node agent's
    /// worker; 0: it never started).
    pub handle: u32,
    /// Its rank when it was started (a survivor's may have changed since:
    /// a worker that started is found by its handle).
    pub rank: u32,
    pub kind: ExitKind,
}

/// A survivor parked between its stop and the next round.
pub(super) struct Parked {
    pub pgid: u32,
    pub log: PathBuf,
}

/// A worker a node agent runs, under the id the launcher gave it (its
/// handle is REMOTE_HANDLE + that id): what its agent's reports need.
pub(super) struct AgentWorker {
    /// The agent that runs it (its serial; None: the fake provider's).
    pub agent: Option<u64>,
    /// The attempt it was started for, and its rank then.
    pub attempt: u32,
    pub rank: u32,
    /// Where its lines go in the run's folder.
    pub log: PathBuf,
}

/// The run's fixed choices, made once from the spec and the provider.
pub(super) struct Policy {
    /// Survivors are kept through a preemption (their state in memory).
    pub keep_survivors: bool,
    /// New nodes run the preflight check.
    pub preflight: bool,
    /// How progress is watched for hangs.
    pub watch_hang: crate::plan::HangWatch,
    pub heartbeat_timeout: Duration,
    pub hang_timeout: Duration,
    pub rendezvous_timeout: Duration,
    pub grace_period: Duration,
    /// End what the workers' programs left behind (between attempts and at
    /// the end): the processes are this launcher's children. Off only in
    /// the executor's tests, whose process has other tests' children.
    pub end_strays: bool,
}

pub(super) struct RunState {
    pub machine: Machine,
    pub policy: Policy,
    pub provider: Box<dyn Provider>,
    pub rdzv: Rendezvous,
    pub exit_tx: mpsc::UnboundedSender<Exited>,
    pub display: Display,
    /// Events for the machine, in order.
    pub queue: VecDeque<Event>,
    pub attempt: Option<Attempt>,
    pub parked: BTreeMap<u32, Parked>,
    /// Workers node agents run, by id (until their exit), and the next id.
    pub agent_workers: BTreeMap<u32, AgentWorker>,
    pub next_worker: u32,
    /// Process groups of parked ranks told to exit.
    pub leaving: Vec<u32>,
    pub history: Vec<AttemptReport>,
    pub last_results: BTreeMap<u32, proto::result::WorkerResult>,
    /// Timers the tick fires: the rendezvous' and the stop's grace.
    pub rendezvous_deadline: Option<Instant>,
    pub grace_deadline: Option<Instant>,
    /// How the run ends, once the machine said so, and its message.
    pub finish: Option<LauncherExit>,
    pub final_message: Option<String>,
    /// When this attempt's notice went out, and its deadline.
    pub notice: Option<(Instant, Instant)>,
    /// The step a program that reports its steps was told to stop after.
    pub agreed_stop: Option<u64>,
    /// The first preemption notice a worker's watcher (or the provider)
    /// saw in this attempt, and the early warnings already recorded.
    pub seen_notice: Option<(u32, NoticeInfo)>,
    pub warnings_seen: BTreeSet<(String, String)>,
    /// Each preemption's phases, and when its workers were all out.
    pub preemptions: Vec<(PreemptionReport, Instant)>,
    /// A `command` job's own checkpoints (with a checkpoint folder).
    pub books: Option<crate::commits::Bookkeeper>,
    /// The committed checkpoint this attempt's programs resume from.
    pub resume_from: Option<proto::contract::ResumeFrom>,
    /// An elastic run short of nodes getting them back while it runs.
    pub grow: super::grow::Grow,
}

impl RunState {
    /// Stop handling this round of events: the run ends with `code`.
    pub fn end(&mut self, code: LauncherExit, message: String) {
        self.final_message = Some(message);
        self.finish = Some(code);
        self.queue.clear();
    }
}

/// What the executor's select loop waits on besides the tick.
pub(super) struct Inputs {
    pub rdzv: mpsc::UnboundedReceiver<RdzvEvent>,
    pub exits: mpsc::UnboundedReceiver<Exited>,
    pub gpu: mpsc::UnboundedReceiver<Vec<gpu::telemetry::GpuSample>>,
    pub sigint: SignalStream,
    pub sigterm: SignalStream,
    pub sigusr1: SignalStream,
}

/// A signal the launcher handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sig {
    Int,
    Term,
    Usr1,
}

/// Whether the actions of the current event go on, or the run ended in
/// the middle of them (the rest are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Go,
    Cut,
}
