//! The supervisor's executor: one select! loop over worker exits,
//! rendezvous events, signals and a tick for deadlines and progress. The
//! decisions are made by the pure state machine in `machine`; this file only
//! carries out its actions and turns the world into its events.

mod attempt;
pub mod diagnose;
pub mod machine;
mod outcome;
mod waits;

use crate::error::LaunchError;
use crate::events::Events;
use crate::plan::Plan;
use crate::process;
use crate::progress::{Console, Display};
use crate::provider::{NodeEvent, Provider, Spawned};
use attempt::{describe_exit, exit_kind, Attempt, REMOTE_HANDLE};
use outcome::reason_name;

use crate::rendezvous::{RdzvEvent, Rendezvous};
use crate::report::{self, AttemptReport, FailureReport, Report};
use machine::{Action, Budgets, Event, ExitKind, FailureKind, Machine, Phase, StopReason};
use nix::sys::signal::Signal;
use proto::exit::{LauncherExit, WorkerExit};
use proto::spec::{Compiled, Workload};
use proto::wire::{unix_ms, NoticeInfo};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

pub struct RunOptions {
    pub worker_bin: PathBuf,
    pub tee: bool,
    pub quiet: bool,
    pub run_id: Option<String>,
    /// The GPU libraries found (GPU jobs): the workers' LD_LIBRARY_PATH
    /// gets `<run dir>/lib` (a `libnccl.so` link) and their folders.
    pub gpu_libs: Option<gpu::libs::Located>,
}

/// Give every worker an LD_LIBRARY_PATH that loads the GPU libraries
/// found: `dir` with a `libnccl.so` link (cudarc's name for the wheel's
/// libnccl.so.2), then the libraries' folders, then the job's own
/// LD_LIBRARY_PATH (its `env`) or the launcher's.
fn library_path(plan: &mut Plan, libs: &gpu::libs::Located, dir: &Path) -> Result<(), LaunchError> {
    // The job's own LD_LIBRARY_PATH goes after ours, in ours.
    let inherited = plan
        .env
        .iter()
        .find(|(k, _)| k == "LD_LIBRARY_PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("LD_LIBRARY_PATH").ok());
    let ld = libs.environment(dir, inherited.as_deref()).map_err(|e| {
        LaunchError::Io(format!(
            "cannot link the GPU libraries into {}: {e}",
            dir.display()
        ))
    })?;
    plan.env.retain(|(k, _)| k != "LD_LIBRARY_PATH");
    for w in &mut plan.workers {
        w.contract.library_path = Some(ld.clone());
    }
    Ok(())
}

/// How a wait for replacement nodes ended.
enum Replaced {
    /// These nodes are back (Ready), after the provisioning delay.
    Nodes(Vec<u32>),
    /// No capacity within `capacity_wait_s`: the message for the report.
    NoCapacity(String),
    /// SIGINT or SIGTERM during the wait.
    Interrupted,
}

fn make_run_id(name: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stamp =
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .to_string()
            .replace(['-', ':'], "")
            .trim_end_matches('Z')
            .to_string();
    format!("{name}-{stamp}-{:04x}", rand::random::<u16>())
}

pub struct Supervisor {
    compiled: Compiled,
    plan: Plan,
    opts: RunOptions,
    console: Console,
    run_id: String,
    run_dir: PathBuf,
    token: String,
    events: Events,
    start: Instant,
    started_wall: SystemTime,
    /// Where workers reach the rendezvous (set when it starts).
    rdzv_endpoint: String,
    /// Each rank's latest preflight figures (kept across attempts, so a
    /// replacement is compared with the nodes that stayed).
    preflight_figures: BTreeMap<u32, proto::wire::PreflightFigures>,
    /// What the last preflight check found wanting.
    preflight_slow: Vec<crate::preflight::SlowRank>,
    /// The notice watchers' health over the run.
    watchers: crate::watchers::Ledger,
}

impl Supervisor {
    pub fn new(
        compiled: Compiled,
        plan: Plan,
        opts: RunOptions,
        console: Console,
    ) -> Result<Supervisor, LaunchError> {
        let run_id = opts
            .run_id
            .clone()
            .unwrap_or_else(|| make_run_id(&compiled.spec.name));
        let run_dir = Path::new(&compiled.spec.log_dir).join(&run_id);
        if run_dir.exists() {
            return Err(LaunchError::Io(format!(
                "run directory {} already exists; pick another --run-id",
                run_dir.display()
            )));
        }
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| LaunchError::Io(format!("cannot create {}: {e}", run_dir.display())))?;
        let start = Instant::now();
        let mut events = Events::create(&run_dir.join("events.jsonl"), start).map_err(|e| {
            LaunchError::Io(format!(
                "cannot create events.jsonl in {}: {e}",
                run_dir.display()
            ))
        })?;
        let mut plan = plan;
        if let Some(libs) = &opts.gpu_libs {
            library_path(&mut plan, libs, &run_dir.join("lib"))?;
            events.emit("gpu_libraries", json!({"found": libs}));
        }
        // The pods of a multi-node Kubernetes job share their token (from
        // the job's Secret): their agents must present it.
        let pod_token = proto::contract::WorkerContract::token_from(|k| std::env::var(k).ok());
        let token: String = match pod_token {
            Some(t) if crate::kube::multi_node(&compiled.spec) => t,
            _ => crate::rendezvous::random_token(),
        };
        Ok(Supervisor {
            compiled,
            plan,
            opts,
            console,
            run_id,
            run_dir,
            token,
            rdzv_endpoint: String::new(),
            preflight_figures: BTreeMap::new(),
            preflight_slow: Vec::new(),
            watchers: Default::default(),
            events,
            start,
            started_wall: SystemTime::now(),
        })
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub async fn run(mut self) -> Result<Report, LaunchError> {
        // Orphans of the workers' programs come back to the launcher, so
        // nothing of the run can outlive it unseen.
        process::become_subreaper();
        let spec = self.compiled.spec.clone();
        let rc = &spec.recovery;
        let (nodes, local) = (spec.resources.nodes, spec.resources.devices_per_node);
        let world = nodes * local;
        let (bind, remote) = crate::providers::rendezvous_bind(&spec);
        let bind = bind.as_str();
        let (rdzv, mut rdzv_rx) = Rendezvous::start(bind, self.token.clone())
            .await
            .map_err(|e| LaunchError::Io(format!("cannot start the rendezvous server: {e}")))?;
        self.rdzv_endpoint = if remote {
            format!("{}:{}", self.plan.master_addr, rdzv.addr().port())
        } else {
            rdzv.addr().to_string()
        };
        let mut sigint =
            signal(SignalKind::interrupt()).map_err(|e| LaunchError::Internal(e.to_string()))?;
        let mut sigterm =
            signal(SignalKind::terminate()).map_err(|e| LaunchError::Internal(e.to_string()))?;
        // (attempt launched in, pid (0: never started), rank, how it ended)
        let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(u32, u32, u32, ExitKind)>();
        std::fs::write(
            self.run_dir.join("job.json"),
            serde_json::to_vec_pretty(&spec).expect("spec serialises"),
        )
        .map_err(|e| LaunchError::Io(e.to_string()))?;
        self.events.emit(
            "run_started",
            json!({"run_id": self.run_id, "name": spec.name, "world_size": world, "nodes": nodes, "devices_per_node": local,
                   "workload": spec.workload.kind(), "rendezvous": rdzv.addr().to_string(), "launcher_pid": std::process::id()}),
        );
        self.console.note(&format!(
            "[ringmaster] run {}: {nodes} node(s) x {local} worker(s), {} workload, logs in {}",
            self.run_id,
            spec.workload.kind(),
            self.run_dir.display()
        ));

        let mut provider = crate::providers::build(&spec, &self.plan, &rdzv)?;
        let mut machine = Machine::with_budgets(
            world,
            Budgets {
                // Slow nodes (preflight) are replaced a few times at most
                // (where the provider can: `retire`).
                preflight: machine::MAX_PREFLIGHT_RETRIES,
                user: rc.max_restarts,
                infra: rc.max_infra_restarts.unwrap_or(rc.max_restarts),
                // Only a provider that replaces lost nodes restarts after a
                // preemption.
                preempt: if provider.replaces_nodes() {
                    rc.max_preemptions
                } else {
                    0
                },
            },
        );
        // Survivors kept through a preemption: where the provider replaces
        // lost nodes and the workload keeps its state in the worker
        // (`train`; on GPUs each round builds a new NCCL communicator).
        let keep_survivors = rc.keep_survivors
            && provider.replaces_nodes()
            && matches!(spec.workload, Workload::Train(_))
            && spec.checkpoint.dir.is_some();
        // Parked survivors (rank -> process group, log) between their stop
        // and the next round, and those told to exit since.
        let mut parked: BTreeMap<u32, (u32, PathBuf)> = BTreeMap::new();
        let mut leaving: Vec<u32> = Vec::new();
        let mut display = Display::new(&self.console, nodes, local);
        let mut attempt: Option<Attempt> = None;
        let mut history: Vec<AttemptReport> = Vec::new();
        let mut last_results = BTreeMap::new();
        let mut rdzv_deadline: Option<Instant> = None;
        let mut grace_deadline: Option<Instant> = None;
        let mut finish: Option<LauncherExit> = None;
        let mut final_message: Option<String> = None;
        // When a notice was sent, and its deadline.
        let mut notice: Option<(Instant, Instant)> = None;
        // The first preemption notice a worker's watcher saw, and the early
        // warnings already recorded.
        let mut seen_notice: Option<(u32, NoticeInfo)> = None;
        let mut warnings_seen: BTreeSet<(String, String)> = BTreeSet::new();
        // Each preemption's phases, and when its workers were all out.
        let mut preemptions: Vec<(report::PreemptionReport, Instant)> = Vec::new();
        let mut sigusr1 = signal(SignalKind::user_defined1())
            .map_err(|e| LaunchError::Internal(e.to_string()))?;
        let mut queue: VecDeque<Event> = VecDeque::from([Event::Start]);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        // GPU jobs: NVML telemetry every 5 s into events.jsonl (NVML calls
        // block, so they run on the blocking pool).
        let (gpu_tx, mut gpu_rx) = mpsc::unbounded_channel::<Vec<gpu::telemetry::GpuSample>>();
        if self.plan.gpus.is_some() {
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    let Ok(Ok(samples)) = tokio::task::spawn_blocking(gpu::telemetry::sample).await
                    else {
                        return;
                    };
                    if gpu_tx.send(samples).is_err() {
                        return;
                    }
                }
            });
        } else {
            drop(gpu_tx);
        }
        let hb_timeout = Duration::from_secs_f64(rc.heartbeat_timeout_s);
        let hang_timeout = Duration::from_secs_f64(rc.hang_timeout_s);
        let watch_hang = crate::plan::hang_detection(&spec).is_ok();
        let preflight_on = spec.preflight.enabled.unwrap_or(self.plan.gpus.is_some());

        loop {
            // Drain decisions first: every event may produce actions, and some
            // actions produce events of their own.
            while let Some(ev) = queue.pop_front() {
                for action in machine.handle(ev) {
                    match action {
                        Action::Launch { attempt: n, keep } => {
                            rdzv_deadline = Some(
                                Instant::now() + Duration::from_secs_f64(rc.rendezvous_timeout_s),
                            );
                            grace_deadline = None;
                            // Each attempt handles its own notice.
                            seen_notice = None;
                            notice = None;
                            let mut replaced = Vec::new();
                            if provider.has_lost() {
                                // Lost nodes come back as new VMs where the
                                // market has room, after the provisioning
                                // delay; with spot only and none anywhere,
                                // wait for capacity (bounded).
                                match self.replace_lost(provider.as_mut()).await? {
                                    Replaced::Nodes(nodes) => replaced = nodes,
                                    Replaced::NoCapacity(msg) => {
                                        final_message = Some(msg);
                                        finish = Some(LauncherExit::NoCapacity);
                                        queue.clear();
                                        break;
                                    }
                                    Replaced::Interrupted => {
                                        final_message = Some("interrupted while waiting for a replacement node; checkpoints are kept: run again with --resume".into());
                                        finish = Some(LauncherExit::Interrupted);
                                        queue.clear();
                                        break;
                                    }
                                }
                                if let Some((p, out)) = preemptions.last_mut() {
                                    p.out_to_replacement_s
                                        .get_or_insert(out.elapsed().as_secs_f64());
                                }
                            }
                            // A survivor whose node was replaced (it got a
                            // notice after it parked) is not kept after all.
                            let keep: Vec<u32> = keep
                                .into_iter()
                                .filter(|r| {
                                    !replaced.contains(&self.plan.workers[*r as usize].node_rank)
                                })
                                .collect();
                            // Parked ranks not kept are told to exit (by the
                            // new round).
                            for (rank, p) in std::mem::take(&mut parked) {
                                if keep.contains(&rank) {
                                    parked.insert(rank, p);
                                } else {
                                    leaving.push(p.0);
                                }
                            }
                            if n > 0 {
                                // What the last attempt's programs left
                                // behind (a setsid child of a worker that
                                // died) does not run on into this one.
                                let live: Vec<u32> = parked
                                    .values()
                                    .map(|p| p.0)
                                    .chain(leaving.iter().copied())
                                    .chain(
                                        attempt
                                            .iter()
                                            .flat_map(|a| a.pgids.iter().flatten().copied()),
                                    )
                                    .collect();
                                let strays = process::end_orphans(&live);
                                if strays > 0 {
                                    self.events.emit(
                                        "strays_ended",
                                        json!({"attempt": n, "processes": strays}),
                                    );
                                }
                            }
                            // Node agents (the other pods of a Kubernetes
                            // job) must be there to start their workers.
                            let waiting_for: Vec<u32> = provider.agent_nodes();
                            if !waiting_for.is_empty() {
                                let until = Instant::now()
                                    + Duration::from_secs_f64(rc.rendezvous_timeout_s);
                                let missing = |r: &Rendezvous| {
                                    waiting_for
                                        .iter()
                                        .copied()
                                        .filter(|k| r.agent(*k).is_none())
                                        .collect::<Vec<u32>>()
                                };
                                let mut waits = waits::Waits::new()
                                    .map_err(|e| LaunchError::Internal(e.to_string()))?;
                                let mut cut = false;
                                while !missing(&rdzv).is_empty() && Instant::now() < until {
                                    if waits.sleep(Duration::from_millis(50)).await.is_err() {
                                        cut = true;
                                        break;
                                    }
                                }
                                if cut {
                                    final_message = Some(
                                        "interrupted while waiting for the node agents".into(),
                                    );
                                    finish = Some(LauncherExit::Interrupted);
                                    queue.clear();
                                    break;
                                }
                                let gone = missing(&rdzv);
                                if !gone.is_empty() {
                                    final_message = Some(format!("the node agents of node(s) {gone:?} did not connect within {} s (recovery.rendezvous_timeout_s)", rc.rendezvous_timeout_s));
                                    finish = Some(LauncherExit::RendezvousFailed);
                                    queue.clear();
                                    break;
                                }
                            }
                            match self.launch(
                                n,
                                &rdzv,
                                &exit_tx,
                                provider.as_ref(),
                                keep_survivors,
                                &keep,
                                &mut parked,
                                // New nodes are checked: the first attempt's,
                                // and replacements.
                                preflight_on && (n == 0 || !replaced.is_empty()),
                            ) {
                                Ok(a) => attempt = Some(a),
                                Err(e) => {
                                    // Nothing half-started survives a launch error.
                                    if let Some(a) = &attempt {
                                        a.signal_all(Signal::SIGKILL);
                                    }
                                    return Err(e);
                                }
                            }
                            queue.push_back(Event::Launched);
                        }
                        Action::Terminate => {
                            if let Some(a) = &attempt {
                                a.signal_live(Signal::SIGTERM);
                            }
                            grace_deadline =
                                Some(Instant::now() + Duration::from_secs_f64(rc.grace_period_s));
                            self.events.emit(
                                "workers_terminating",
                                json!({"grace_period_s": rc.grace_period_s}),
                            );
                        }
                        Action::Notify => {
                            // The cloud's own deadline, when the notice has
                            // one and it comes before ours.
                            let mut grace = Duration::from_secs_f64(rc.notice_grace_s);
                            if let Some(d) =
                                seen_notice.as_ref().and_then(|(_, n)| n.deadline_unix_ms)
                            {
                                grace = grace.min(Duration::from_millis(
                                    d.saturating_sub(unix_ms(SystemTime::now())),
                                ));
                            }
                            let deadline_wall = SystemTime::now() + grace;
                            let deadline_ms = unix_ms(deadline_wall);
                            notice = Some((Instant::now(), Instant::now() + grace));
                            grace_deadline = Some(Instant::now() + grace);
                            if matches!(spec.workload, Workload::Train(_)) {
                                // In band: workers agree on the stop step
                                // through their own all-reduce.
                                rdzv.notify(deadline_ms, "preemption notice");
                            } else if let Some(a) = &attempt {
                                // Workloads without steps stop as torchrun
                                // would stop them: SIGTERM, then the deadline.
                                a.signal_live(Signal::SIGTERM);
                            }
                            self.events.emit("notice_sent", json!({"deadline": humantime::format_rfc3339_millis(deadline_wall).to_string(), "notice_grace_s": rc.notice_grace_s,
                                "source": seen_notice.as_ref().map(|(_, n)| n.source.clone())}));
                        }
                        Action::Kill => {
                            grace_deadline = None;
                            if let Some(a) = &attempt {
                                a.signal_all(Signal::SIGKILL);
                            }
                        }
                        Action::Stopping(reason) => {
                            rdzv_deadline = None;
                            let msg = self.reason_message(&reason, attempt.as_ref(), Some(&rdzv));
                            if let Some(a) = attempt.as_mut() {
                                a.message.get_or_insert(msg.clone());
                            }
                            self.events.emit(
                                "group_stopping",
                                json!({"reason": reason_name(&reason), "message": msg}),
                            );
                            self.console
                                .note(&format!("[ringmaster] stopping workers: {msg}"));
                            if reason == StopReason::Interrupted {
                                self.console
                                    .note("[ringmaster] press Ctrl-C again to kill them now");
                            }
                        }
                        Action::AttemptEnded {
                            attempt: n,
                            reason,
                            restarting,
                        } => {
                            if let (Some(sent), Some(StopReason::Preempted)) =
                                (notice.take(), reason.as_ref())
                            {
                                preemptions.push(self.preemption_handled(
                                    n,
                                    attempt.as_mut(),
                                    sent,
                                    seen_notice.as_ref(),
                                ));
                            }
                            if let Some(a) = attempt.take() {
                                let rep = self.attempt_report(&a, &machine, reason.as_ref());
                                self.events.emit(
                                    "attempt_ended",
                                    json!({"attempt": n, "outcome": rep.outcome, "message": rep.message, "restarting": restarting,
                                           "failure": rep.failure.as_ref().map(|f| json!({"rank": f.rank, "exit_code": f.exit_code, "signal": f.signal}))}),
                                );
                                if restarting && reason == Some(StopReason::Preempted) {
                                    self.console.note(&format!("[ringmaster] attempt {n} preempted; replacing the lost node(s) ({} of {} preemption restarts)",
                                        machine.used.preempt, machine.budgets.preempt));
                                } else if restarting {
                                    let kind = machine.last_kind.unwrap_or(FailureKind::User);
                                    self.console.note(&format!("[ringmaster] attempt {n} failed ({} failure); restarting ({} of {} {} restarts)",
                                        kind.name(), machine.used.of(kind), machine.budgets.of(kind), kind.name()));
                                } else if reason.is_some() {
                                    final_message = rep.message.clone();
                                }
                                last_results = a.results;
                                history.push(rep);
                            }
                        }
                        Action::Finish(code) => finish = Some(code),
                    }
                }
            }
            if let Some(code) = finish {
                display.finish();
                // Parked survivors of a run that ends here: told to exit,
                // then swept like every other process group.
                rdzv.release(None);
                // Node agents end with the run, with its exit code: wait
                // (briefly) until each has taken the word and gone.
                let agents = provider.agent_nodes();
                for k in &agents {
                    if let Some(agent) = rdzv.agent(*k) {
                        let _ = agent.send(proto::wire::Response::Shutdown { code: code.code() });
                    }
                }
                let until = Instant::now() + Duration::from_secs(5);
                while agents.iter().any(|k| rdzv.agent(*k).is_some()) && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                leaving.extend(std::mem::take(&mut parked).into_values().map(|p| p.0));
                sweep(&leaving, Duration::from_secs_f64(rc.grace_period_s)).await;
                // The last attempt's groups were killed (or ended): make
                // sure every process of them is gone before the launcher is.
                let ours: Vec<u32> = attempt
                    .iter()
                    .flat_map(|a| a.pgids.iter().flatten().copied())
                    .filter(|pg| *pg < REMOTE_HANDLE)
                    .chain(leaving.iter().copied())
                    .collect();
                process::wait_gone(&ours, Duration::from_secs(5)).await;
                // Whatever else the workers started and left behind (a
                // `setsid` child escapes its group; as the subreaper the
                // launcher still finds it): ended too.
                let strays = process::end_descendants(Duration::from_secs(5)).await;
                if strays > 0 {
                    self.events
                        .emit("strays_ended", json!({"processes": strays}));
                }
                let preemptions: Vec<report::PreemptionReport> =
                    preemptions.into_iter().map(|(p, _)| p).collect();
                // Useful time: the run less what the preemptions took.
                let lost: f64 = preemptions
                    .iter()
                    .map(|p| p.total_s.unwrap_or(p.notice_to_out_s))
                    .sum();
                let sim_cost = provider.cost((self.start.elapsed().as_secs_f64() - lost).max(0.0));
                return Ok(self.build_report(
                    code,
                    final_message,
                    history,
                    preemptions,
                    sim_cost,
                    last_results,
                    &machine,
                ));
            }

            // Biased: a worker's result reaches the rendezvous channel before
            // the worker can exit, so reading that channel first means no
            // result is missed when the last exit ends the run.
            tokio::select! {
                biased;
                Some(ev) = rdzv_rx.recv() => {
                    let Some(a) = attempt.as_mut() else { continue };
                    match ev {
                        RdzvEvent::Joined { round, rank, pid, preflight } if round == a.n as u64 => {
                            a.first_join.get_or_insert_with(Instant::now);
                            self.events.emit("worker_joined", json!({"attempt": a.n, "rank": rank, "pid": pid, "preflight": preflight}));
                            if let Some(f) = preflight {
                                self.preflight_figures.insert(rank, f);
                            }
                        }
                        RdzvEvent::AllJoined { round } if round == a.n as u64 => {
                            // With a preflight check: compare the figures
                            // before anyone starts (the welcomes wait).
                            if a.preflight && !self.preflight_verdict(a, round, &rdzv, provider.as_mut(), &mut queue) {
                                continue;
                            }
                            let now = Instant::now();
                            a.all_joined = Some(now);
                            a.progress_mark = (0, now);
                            rdzv_deadline = None;
                            self.events.emit("rendezvous_complete", json!({"attempt": a.n, "launch_to_ready_s": (now - a.launched_at).as_secs_f64(),
                                "rendezvous_s": a.first_join.map(|f| (now - f).as_secs_f64())}));
                            queue.push_back(Event::AllJoined);
                        }
                        RdzvEvent::HeartbeatStarted { round, rank } if round == a.n as u64 => {
                            a.last_beat[rank as usize] = Some(Instant::now());
                        }
                        RdzvEvent::Heartbeat { round, rank, mut beat } if round == a.n as u64 => {
                            a.last_beat[rank as usize] = Some(Instant::now());
                            for note in std::mem::take(&mut beat.notes) {
                                self.worker_note(a.n, rank, note);
                            }
                            if !a.first_step_seen && beat.total_steps > 0 && beat.step > beat.start_step.unwrap_or(0) {
                                // Recovery time: from this attempt's launch
                                // to its first step done.
                                a.first_step_seen = true;
                                a.first_step_at = Some((Instant::now(), beat.step));
                                if let Some((p, out)) = preemptions.last_mut().filter(|(p, _)| p.attempt + 1 == a.n && p.out_to_first_step_s.is_none()) {
                                    let back = out.elapsed().as_secs_f64();
                                    p.out_to_first_step_s = Some(back);
                                    p.total_s = Some(p.notice_to_out_s + back);
                                }
                                self.events.emit("first_step", json!({"attempt": a.n, "rank": rank, "step": beat.step,
                                    "start_step": beat.start_step, "since_launch_s": a.launched_at.elapsed().as_secs_f64()}));
                            }
                            if let Some(n) = beat.notice.as_ref() {
                                self.notice_seen(a.n, rank, n, &mut seen_notice, &mut warnings_seen, &mut queue);
                            }
                            a.beats[rank as usize] = Some(beat);
                        }
                        RdzvEvent::Result { round, rank, payload } if round == a.n as u64 => {
                            // A notice the workers acted on before a
                            // heartbeat could carry it.
                            if let Some(n) = payload.get("notice").and_then(|v| serde_json::from_value::<NoticeInfo>(v.clone()).ok()) {
                                self.notice_seen(a.n, rank, &n, &mut seen_notice, &mut warnings_seen, &mut queue);
                            }
                            self.events.emit("worker_result", json!({"attempt": a.n, "rank": rank, "result": payload}));
                            a.results.insert(rank, payload);
                        }
                        RdzvEvent::Parked { round, rank } if round == a.n as u64 => {
                            let node = self.plan.workers[rank as usize].node_rank;
                            let lost = provider.is_lost(node);
                            if keep_survivors && !lost {
                                // Out of this attempt, state in memory: it
                                // rejoins in the next round.
                                if let Some(pg) = a.pgids[rank as usize].take() {
                                    parked.insert(rank, (pg, a.logs[rank as usize].clone()));
                                }
                                self.events.emit("worker_parked", json!({"attempt": a.n, "rank": rank, "node": node}));
                                queue.push_back(Event::Parked { rank });
                            } else {
                                rdzv.release(Some(&[rank]));
                            }
                        }
                        RdzvEvent::AgentReport { node, report } => {
                            match report {
                                proto::wire::Request::AgentExited { rank, code, signal } => {
                                    let kind = match (code, signal) {
                                        (_, Some(s)) => ExitKind::Signal(s),
                                        (Some(c), None) => ExitKind::Code(c),
                                        (None, None) => ExitKind::Code(-1),
                                    };
                                    let _ = exit_tx.send((a.n, REMOTE_HANDLE + rank, rank, kind));
                                }
                                proto::wire::Request::AgentLog { rank, lines } => {
                                    // Into the rank's log in this run's folder.
                                    use std::io::Write;
                                    if let Some(path) = a.logs.get(rank as usize) {
                                        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                                            for l in lines {
                                                let _ = writeln!(f, "{l}");
                                            }
                                        }
                                    }
                                }
                                proto::wire::Request::AgentStarted { rank, pid } => {
                                    self.events.emit("agent_worker_started", json!({"attempt": a.n, "node": node, "rank": rank, "pid": pid}));
                                }
                                proto::wire::Request::AgentNotice => {
                                    self.events.emit("agent_notice", json!({"node": node}));
                                    if notice.is_none() && machine.phase == Phase::Healthy {
                                        queue.push_back(Event::Notice);
                                    }
                                }
                                _ => {}
                            }
                        }
                        RdzvEvent::AgentLost { node } => {
                            // Its pod is gone, and its workers with it.
                            self.events.emit("agent_lost", json!({"node": node}));
                            for w in self.plan.workers.iter().filter(|w| w.node_rank == node) {
                                if a.pgids[w.rank as usize] == Some(REMOTE_HANDLE + w.rank) && !a.exits.contains_key(&w.rank) {
                                    let _ = exit_tx.send((a.n, REMOTE_HANDLE + w.rank, w.rank, ExitKind::Signal(9)));
                                }
                            }
                        }
                        RdzvEvent::Refused { peer, kind, message } => {
                            self.events.emit("rendezvous_refused", json!({"peer": peer.to_string(), "kind": kind, "message": message}));
                        }
                        RdzvEvent::RefusedSummary { total, by_kind } => {
                            // count: refused since the last summary.
                            let count: u64 = by_kind.values().sum();
                            self.events.emit("rendezvous_refused_summary", json!({"count": count, "total": total, "by_kind": by_kind}));
                        }
                        _ => {}
                    }
                }
                Some((n, pid, rank, kind)) = exit_rx.recv() => {
                    // A survivor carried into this attempt exits as itself.
                    let ours = |a: &Attempt| match a.pgids[rank as usize] {
                        Some(pg) => pg == pid,
                        None => a.n == n && pid == 0,
                    };
                    if let Some(a) = attempt.as_mut().filter(|a| ours(a)) {
                        let n = a.n;
                        a.exits.insert(rank, kind);
                        self.events.emit("worker_exited", json!({"attempt": n, "rank": rank, "exit_code": match kind { ExitKind::Code(c) => Some(c), _ => None },
                            "signal": match kind { ExitKind::Signal(s) => Some(s), _ => None }, "description": describe_exit(kind)}));
                        // The step it failed at: from its error file when it
                        // wrote one, else its last heartbeat.
                        if let Some(e) = read_error_file(&a.dir, rank) {
                            a.errors.insert(rank, e);
                        }
                        let step = a.errors.get(&rank)
                            .and_then(|e| e.get("step"))
                            .and_then(Value::as_u64)
                            .or_else(|| a.beats[rank as usize].as_ref().filter(|b| b.total_steps > 0).map(|b| b.step));
                        queue.push_back(Event::WorkerExited { rank, exit: kind, step });
                    }
                }
                Some(samples) = gpu_rx.recv() => {
                    display.set_gpus(&samples);
                    // The workers on this machine's GPUs (local and
                    // simulated nodes are this machine).
                    let here: Vec<(u32, &str)> = if self.compiled.spec.nodes_on_one_machine() {
                        self.plan.workers.iter().filter_map(|w| w.contract.cuda_visible_devices.as_deref().map(|d| (w.rank, d))).collect()
                    } else {
                        Vec::new()
                    };
                    let ranks = gpu::telemetry::ranks_per_gpu(&samples, &here);
                    self.events.emit("gpu_telemetry", json!({"gpus": samples, "ranks_by_gpu": ranks}));
                }
                _ = sigusr1.recv() => {
                    self.events.emit("signal", json!({"signal": "SIGUSR1"}));
                    queue.push_back(Event::Notice);
                }
                _ = sigint.recv() => {
                    self.events.emit("signal", json!({"signal": "SIGINT"}));
                    queue.push_back(Event::Interrupt);
                }
                _ = sigterm.recv() => {
                    self.events.emit("signal", json!({"signal": "SIGTERM"}));
                    // Kubernetes and Slurm send SIGTERM before they kill: a
                    // checkpointing train job treats the first one as a
                    // preemption notice; otherwise (or a second time) it is
                    // an interrupt.
                    let checkpointing = matches!(spec.workload, Workload::Train(_)) && spec.checkpoint.dir.is_some();
                    if checkpointing && notice.is_none() && machine.phase == Phase::Healthy {
                        queue.push_back(Event::Notice);
                    } else {
                        queue.push_back(Event::Interrupt);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let progress = attempt.as_ref().and_then(|a| a.progress());
                    for ev in provider.poll(now, progress) {
                        self.emit_node_event(&ev, provider.as_ref());
                        match ev {
                            NodeEvent::Lost { node } => {
                                // The cloud takes the machine, whatever runs on it.
                                if let Some(a) = &attempt {
                                    a.signal_node(&self.plan, node, Signal::SIGKILL);
                                }
                            }
                            NodeEvent::Migrate { ref nodes, ref reason } if !nodes.is_empty() => {
                                // Stop at an agreed step, checkpointed, as
                                // for a notice; the nodes are then replaced
                                // (a stop already under way replaces them).
                                self.console.note(&format!("[ringmaster] {}: {reason}", provider.kind()));
                                if notice.is_none() && machine.phase == Phase::Healthy {
                                    seen_notice = Some((0, NoticeInfo {
                                        source: format!("{} deadline mode", provider.kind()),
                                        preempt: true,
                                        deadline_unix_ms: None,
                                        seen_unix_ms: unix_ms(SystemTime::now()),
                                        detail: reason.clone(),
                                    }));
                                    queue.push_back(Event::Notice);
                                }
                            }
                            _ => {}
                        }
                    }
                    if rdzv_deadline.is_some_and(|d| now >= d) {
                        rdzv_deadline = None;
                        queue.push_back(Event::RendezvousTimeout);
                    }
                    if grace_deadline.is_some_and(|d| now >= d) {
                        grace_deadline = None;
                        queue.push_back(Event::GraceExpired);
                    }
                    if let Some(a) = attempt.as_mut() {
                        if matches!(machine.phase, Phase::Rendezvous | Phase::Healthy) {
                            if let Some(rank) = a.silent_rank(now, hb_timeout) {
                                queue.push_back(Event::HeartbeatLost { rank });
                            }
                        }
                        if machine.phase == Phase::Healthy && watch_hang && a.stalled(now, hang_timeout) {
                            queue.push_back(Event::Hang);
                        }
                        display.update(a.n, &a.beats);
                    }
                }
            }
        }
    }

    /// A notice's stop is over (every worker out): how it went, into the
    /// attempt's message and events.jsonl; the preemption's first phase
    /// and when the workers were out. `sent`: when the notice went out and
    /// its deadline; a watcher's notice counts from when it was seen and
    /// against the cloud's deadline.
    fn preemption_handled(
        &mut self,
        n: u32,
        attempt: Option<&mut Attempt>,
        sent: (Instant, Instant),
        seen: Option<&(u32, NoticeInfo)>,
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
        let stopped: Vec<u64> = results
            .values()
            .filter_map(|r| r.get("preempted_at_step").and_then(Value::as_u64))
            .collect();
        let checkpointed = !results.is_empty()
            && results
                .values()
                .all(|r| r.get("checkpoint_committed") == Some(&Value::Bool(true)));
        let margin = deadline.saturating_duration_since(now).as_secs_f64();
        let met = now <= deadline;
        let source = seen
            .map(|(rank, n)| format!(" ({} via rank {rank})", n.source))
            .unwrap_or_default();
        let msg = format!(
            "preemption notice{source}: stopped {} {:.2} s after the notice, {:.2} s before the deadline; {}",
            stopped.first().map(|s| format!("at step {s}")).unwrap_or_else(|| "without an agreed step".into()),
            (now - at).as_secs_f64(),
            margin,
            if checkpointed && met { "checkpoint committed" } else { "no checkpoint at the stop step: the run resumes from the last periodic checkpoint" }
        );
        self.events.emit(
            "notice_handled",
            json!({"stopped_at_step": stopped.first(), "seconds_after_notice": (now - at).as_secs_f64(), "margin_s": margin, "deadline_met": met, "checkpointed": checkpointed,
                   "source": seen.map(|(_, n)| n.source.clone())}),
        );
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
    fn emit_node_event(&mut self, ev: &NodeEvent, provider: &dyn Provider) {
        let (name, mut body) = match ev {
            NodeEvent::Capacity {
                zone,
                spot_capacity,
            } => (
                "capacity_changed",
                json!({"zone": zone, "spot_capacity": spot_capacity}),
            ),
            NodeEvent::Preempting {
                node,
                deadline,
                cause,
                zone,
            } => (
                "node_notice",
                json!({"node": node, "cause": cause, "zone": zone,
                       "deadline": humantime::format_rfc3339_millis(*deadline).to_string()}),
            ),
            NodeEvent::Lost { node } => ("node_lost", json!({"node": node})),
            NodeEvent::Ready {
                node,
                vm,
                zone,
                market,
            } => (
                "node_replaced",
                json!({"node": node, "vm": vm, "zone": zone, "market": market,
                       "provisioning_delay_s": provider.provisioning_delay().as_secs_f64()}),
            ),
            NodeEvent::Migrate { nodes, reason } => {
                ("nodes_migrating", json!({"nodes": nodes, "reason": reason}))
            }
        };
        body["provider"] = json!(provider.kind());
        if let Some(t) = provider.market_time_s() {
            body["market_time_s"] = json!(t);
        }
        self.events.emit(name, body);
    }

    /// New nodes for the provider's lost ones, waiting up to its capacity
    /// wait where the market has no room and allows nothing else: the
    /// nodes replaced, or Err(message) when capacity never came.
    async fn replace_lost(&mut self, provider: &mut dyn Provider) -> Result<Replaced, LaunchError> {
        let t0 = Instant::now();
        let mut waits = waits::Waits::new().map_err(|e| LaunchError::Internal(e.to_string()))?;
        let mut waiting_logged = false;
        let mut nodes = Vec::new();
        loop {
            let (replaced, waiting) = provider.replace_lost().map_err(|e| {
                LaunchError::Io(format!("{}: cannot bring up a node: {e}", provider.kind()))
            })?;
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
            let wait = provider.capacity_wait();
            if !waiting_logged {
                waiting_logged = true;
                self.events.emit(
                    "waiting_for_capacity",
                    json!({"nodes": waiting, "capacity_wait_s": wait.as_secs_f64(), "provider": provider.kind()}),
                );
                self.console.note(&format!(
                    "[ringmaster] no spot capacity in any zone for node(s) {waiting:?}; waiting up to {:.0} s",
                    wait.as_secs_f64()
                ));
            }
            if t0.elapsed() >= wait {
                return Ok(Replaced::NoCapacity(format!(
                    "no spot capacity in any zone for node(s) {waiting:?} after waiting {:.1} s (provider.capacity_wait_s); provider.market \"spot\" allows no on-demand fallback. Checkpoints are kept: run again with --resume",
                    t0.elapsed().as_secs_f64()
                )));
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

    /// Start the workers of attempt `n` in a fresh rendezvous round; the
    /// parked survivors in `keep` rejoin it instead (they take their
    /// process groups from `parked` into the attempt).
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        n: u32,
        rdzv: &Rendezvous,
        exit_tx: &mpsc::UnboundedSender<(u32, u32, u32, ExitKind)>,
        provider: &dyn Provider,
        keep_survivors: bool,
        keep: &[u32],
        parked: &mut BTreeMap<u32, (u32, PathBuf)>,
        preflight: bool,
    ) -> Result<Attempt, LaunchError> {
        let spec = &self.compiled.spec;
        let dir = self.run_dir.join(format!("attempt-{n}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LaunchError::Io(format!("cannot create {}: {e}", dir.display())))?;
        rdzv.new_round(
            n as u64,
            spec.resources.nodes,
            spec.resources.devices_per_node,
            keep,
        );
        if preflight {
            rdzv.hold_welcomes();
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
            agents: rdzv.clone(),
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
        };
        self.events.emit(
            "attempt_started",
            json!({"attempt": n, "master_port": master_port, "dir": dir.display().to_string()}),
        );
        if !keep.is_empty() {
            self.events.emit(
                "survivors_kept",
                json!({"attempt": n, "ranks": keep, "state_from": keep.iter().min()}),
            );
        }
        for w in &self.plan.workers {
            if let Some((pg, log)) = keep
                .contains(&w.rank)
                .then(|| parked.remove(&w.rank))
                .flatten()
            {
                // The survivor goes on writing the log it started with;
                // this attempt's folder links to it.
                let link = dir.join(format!("rank-{}.log", w.rank));
                // Relative (../attempt-k/rank-r.log), so the run folder
                // can be moved.
                let target = match (log.parent().and_then(|p| p.file_name()), log.file_name()) {
                    (Some(d), Some(f)) => Path::new("..").join(d).join(f),
                    _ => log.clone(),
                };
                if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
                    tracing::warn!("cannot link {}: {e}", link.display());
                }
                a.pgids[w.rank as usize] = Some(pg);
                a.logs[w.rank as usize] = log;
                continue;
            }
            // This attempt's contract: the plan's, what changes per
            // attempt, and what the provider says of this node.
            let mut c = w.contract.clone();
            c.run_id = self.run_id.clone();
            c.restart_count = n as u64;
            c.rdzv_endpoint = self.rdzv_endpoint.clone();
            c.rdzv_token = self.token.clone();
            c.master_port = master_port;
            c.attempt_dir = Some(dir.display().to_string());
            c.keep_survivors = keep_survivors;
            c.preflight = preflight;
            c.sigterm_is_notice = provider.signals_workers();
            provider.worker_contract(w.node_rank, w.local_rank, &mut c);
            let mut env = self.plan.worker_env(&c);
            env.extend(provider.worker_env(w.node_rank, w.local_rank));
            let log = dir.join(format!("rank-{}.log", w.rank));
            let tee = self.opts.tee.then(|| (w.rank, self.console.clone()));
            match provider.spawn_worker(w.node_rank, &self.opts.worker_bin, &c, &env, &log, tee) {
                Ok(Spawned::Remote) => {
                    // A node agent starts it; its exit comes back as an
                    // agent report under this handle.
                    let handle = REMOTE_HANDLE + w.rank;
                    a.pgids[w.rank as usize] = Some(handle);
                    self.events.emit("worker_started", json!({"attempt": n, "rank": w.rank, "node": w.node_rank, "local_rank": w.local_rank, "by_agent": true}));
                }
                Ok(Spawned::Local(mut child)) => {
                    let pid = child.id().expect("a just-started child has a pid");
                    a.pgids[w.rank as usize] = Some(pid);
                    self.events.emit("worker_started", json!({"attempt": n, "rank": w.rank, "pid": pid, "node": w.node_rank, "local_rank": w.local_rank, "log": log.display().to_string()}));
                    let tx = exit_tx.clone();
                    let rank = w.rank;
                    tokio::spawn(async move {
                        let kind = match child.wait().await {
                            Ok(status) => exit_kind(status),
                            Err(_) => ExitKind::Code(-1),
                        };
                        let _ = tx.send((n, pid, rank, kind));
                    });
                }
                Err(e) => {
                    let msg = format!("cannot start {}: {e}", self.opts.worker_bin.display());
                    let _ = std::fs::write(&log, format!("{msg}\n"));
                    self.events.emit(
                        "worker_spawn_failed",
                        json!({"attempt": n, "rank": w.rank, "error": msg}),
                    );
                    let _ = exit_tx.send((n, 0, w.rank, ExitKind::SpawnFailed));
                }
            }
        }
        Ok(a)
    }

    /// A rank's note for the timeline: events.jsonl under its own name; a
    /// warning also on the console and in report.json (once per text).
    fn worker_note(&mut self, attempt: u32, rank: u32, n: proto::wire::WorkerNote) {
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
        self.events.emit(
            &n.kind,
            json!({"attempt": attempt, "rank": rank, "message": n.message, "warning": n.warning, "detail": n.detail}),
        );
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
    fn notice_seen(
        &mut self,
        attempt: u32,
        rank: u32,
        n: &NoticeInfo,
        seen: &mut Option<(u32, NoticeInfo)>,
        warnings: &mut BTreeSet<(String, String)>,
        queue: &mut VecDeque<Event>,
    ) {
        let rfc = |ms: u64| {
            humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        };
        if n.preempt && seen.is_none() {
            self.events.emit(
                "notice_received",
                json!({"attempt": attempt, "rank": rank, "source": n.source, "detail": n.detail,
                       "seen": rfc(n.seen_unix_ms), "deadline": n.deadline_unix_ms.map(rfc)}),
            );
            self.console.note(&format!(
                "[ringmaster] preemption notice from {} (rank {rank}): {}",
                n.source, n.detail
            ));
            *seen = Some((rank, n.clone()));
            queue.push_back(Event::Notice);
        } else if !n.preempt && warnings.insert((n.source.clone(), n.detail.clone())) {
            self.events.emit(
                "early_warning",
                json!({"attempt": attempt, "rank": rank, "source": n.source, "detail": n.detail}),
            );
            self.console.note(&format!(
                "[ringmaster] early warning from {} (rank {rank}): {}",
                n.source, n.detail
            ));
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
        let slow = crate::preflight::slow_ranks(
            &self.preflight_figures,
            spec.resources.devices_per_node,
            pf.min_ratio,
        );
        self.events.emit(
            "preflight",
            json!({"attempt": a.n, "figures": self.preflight_figures, "slow": slow, "min_ratio": pf.min_ratio}),
        );
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
                    self.preflight_figures.len(),
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
            self.events.emit(
                "preflight_replacing",
                json!({"attempt": a.n, "nodes": nodes}),
            );
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

/// Let the process groups end on their own for up to `grace`, then
/// SIGKILL whatever is left of them.
async fn sweep(groups: &[u32], grace: Duration) {
    let until = Instant::now() + grace;
    while groups.iter().any(|pg| process::alive(*pg)) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process::signal_groups(groups, Signal::SIGKILL);
}

/// A worker's error file, if it wrote one.
fn read_error_file(dir: &Path, rank: u32) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("rank-{rank}.error.json"))).ok()?;
    serde_json::from_str(&text).ok()
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
