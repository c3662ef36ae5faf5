//! The supervisor's executor: one select! loop over the rendezvous'
//! events, worker exits, GPU telemetry, signals and a tick, each handed to
//! one handler (`handlers`) that turns it into the machine's events. The
//! decisions are made by the pure state machine in `machine`; `actions`
//! carries them out; `RunState` (`state`) is what a run carries between
//! events.

mod actions;
mod attempt;
mod books;
pub mod diagnose;
mod grow;
mod handlers;
mod launch;
pub mod machine;
mod notices;
mod observe;
mod outcome;
mod state;
#[cfg(test)]
mod tests;
mod waits;

use crate::error::LaunchError;
use crate::events::Events;
use crate::plan::Plan;
use crate::process;
use crate::progress::{Console, Display};
use crate::provider::Provider;
use crate::rendezvous::Rendezvous;
use crate::report::{self, Report};
use attempt::REMOTE_HANDLE;
use machine::{Budgets, Event, Machine};
use proto::events::RunEvent;
use proto::spec::{Compiled, Workload};
use state::{Exited, Flow, Inputs, Policy, RunState, Sig};
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
    /// Node 0 of a run started alike on every node (`--node-rank 0`): the
    /// rendezvous at its endpoint, the shared token, agents for the rest.
    pub node_rank: Option<crate::node_rank::NodeRank>,
}

/// Give every worker an LD_LIBRARY_PATH that loads the GPU libraries
/// found: `dir` with a `libnccl.so` link (cudarc's name for the wheel's
/// libnccl.so.2), then the libraries' folders, then the job's own
/// LD_LIBRARY_PATH (its `env`) or the launcher's.
fn library_path(plan: &mut Plan, libs: &gpu::libs::Located, dir: &Path) -> Result<(), LaunchError> {
    const LD: &str = proto::contract::WorkerContract::library_path_variable();
    // The job's own LD_LIBRARY_PATH goes after ours, in ours.
    let inherited = plan
        .env
        .iter()
        .find(|(k, _)| k == LD)
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var(LD).ok());
    let ld = libs.environment(dir, inherited.as_deref()).map_err(|e| {
        LaunchError::Io(format!(
            "cannot link the GPU libraries into {}: {e}",
            dir.display()
        ))
    })?;
    plan.env.retain(|(k, _)| k != LD);
    for w in &mut plan.workers {
        w.contract.library_path = Some(ld.clone());
    }
    Ok(())
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
    /// The current attempt's plan: `full_plan`, or (an elastic run short
    /// of nodes) `full_plan` on the nodes it has.
    plan: Plan,
    full_plan: Plan,
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
    /// The latest preflight figures of each place (provider node, local
    /// rank), kept across attempts, so a replacement is compared with the
    /// nodes that stayed, whatever their ranks are now.
    preflight_figures: BTreeMap<(u32, u32), proto::wire::PreflightFigures>,
    /// What the last preflight check found wanting.
    preflight_slow: Vec<crate::preflight::SlowRank>,
    /// The notice watchers' health over the run.
    watchers: crate::watchers::Ledger,
    /// The run's Prometheus metrics (fed by its events, heartbeats and
    /// tick), and their endpoint while the run is alive.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    endpoint: Option<crate::metrics::Endpoint>,
    /// When the tick last refreshed the metrics that are costly to compute.
    metrics_refreshed: Instant,
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
        std::fs::create_dir_all(&run_dir).map_err(LaunchError::system(format!(
            "cannot create {}",
            run_dir.display()
        )))?;
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
            events.emit(RunEvent::GpuLibraries {
                found: serde_json::to_value(libs).expect("libraries serialise"),
            });
        }
        // The pods of a multi-node Kubernetes job share their token (from
        // the job's Secret): their agents must present it.
        let pod_token = proto::contract::WorkerContract::token_from(|k| std::env::var(k).ok());
        let token: String = match (pod_token, &opts.node_rank) {
            (_, Some(nr)) => nr.token.clone(),
            (Some(t), _) if crate::kube::multi_node(&compiled.spec) => t,
            _ => crate::rendezvous::random_token(),
        };
        let metrics =
            std::sync::Arc::new(crate::metrics::Metrics::new(&run_id, &compiled.spec.name));
        metrics.shape(
            plan.world_size,
            compiled.spec.resources.nodes,
            if plan.gpus.is_some() {
                "per-node GPU telemetry is not collected yet"
            } else {
                "no GPU in this job"
            },
        );
        events.feed(metrics.clone());
        Ok(Supervisor {
            compiled,
            full_plan: plan.clone(),
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
            metrics,
            endpoint: None,
            metrics_refreshed: start,
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
        let plan = self.plan.clone();
        let (run_id, run_dir) = (self.run_id.clone(), self.run_dir.clone());
        let node_rank = self.opts.node_rank.clone();
        let worker_bin = self.opts.worker_bin.clone();
        let (mut r, mut inputs) = self
            .start(|rdzv, leader| match &node_rank {
                Some(nr) => Ok(Box::new(crate::node_rank::Leader::new(rdzv.clone(), nr))),
                None => crate::providers::build(
                    &spec,
                    &plan,
                    crate::providers::Reach {
                        rdzv,
                        leader,
                        run_id: &run_id,
                        run_dir: &run_dir,
                        worker_bin: &worker_bin,
                    },
                ),
            })
            .await?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            self.drain(&mut r).await?;
            if let Some(code) = r.finish {
                return Ok(self.conclude(r, code).await);
            }
            // Biased: a worker's result reaches the rendezvous channel
            // before the worker can exit, so reading that channel first
            // means no result is missed when the last exit ends the run.
            tokio::select! {
                biased;
                Some(ev) = inputs.rdzv.recv() => self.on_rendezvous(&mut r, ev),
                Some(x) = inputs.exits.recv() => self.on_worker_exit(&mut r, x),
                Some(s) = inputs.gpu.recv() => self.on_gpu(&mut r, &s),
                _ = inputs.sigusr1.recv() => self.on_signal(&mut r, Sig::Usr1),
                _ = inputs.sigint.recv() => self.on_signal(&mut r, Sig::Int),
                _ = inputs.sigterm.recv() => self.on_signal(&mut r, Sig::Term),
                _ = tick.tick() => self.on_tick(&mut r, Instant::now()),
            }
        }
    }

    /// Hand the queued events to the machine and carry out its actions
    /// (which may queue events of their own) until none is left.
    async fn drain(&mut self, r: &mut RunState) -> Result<(), LaunchError> {
        while let Some(ev) = r.queue.pop_front() {
            for action in r.machine.handle(ev) {
                if self.act(r, action).await? == Flow::Cut {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Everything a run needs before its first event: the rendezvous, the
    /// signal handlers, job.json, the provider (`provider` builds it), the
    /// machine with its budgets and policy, GPU telemetry.
    async fn start(
        &mut self,
        provider: impl FnOnce(&Rendezvous, &str) -> Result<Box<dyn Provider>, LaunchError>,
    ) -> Result<(RunState, Inputs), LaunchError> {
        let spec = self.compiled.spec.clone();
        let (rdzv, rdzv_rx) = self.start_rendezvous(&spec).await?;
        let handler = |k: SignalKind| signal(k).map_err(|e| LaunchError::Internal(e.to_string()));
        let (sigint, sigterm, sigusr1) = (
            handler(SignalKind::interrupt())?,
            handler(SignalKind::terminate())?,
            handler(SignalKind::user_defined1())?,
        );
        let (exit_tx, exit_rx) = mpsc::unbounded_channel::<Exited>();
        self.announce(&spec, &rdzv)?;
        let provider = provider(&rdzv, &self.rdzv_endpoint)?;
        let (machine, policy) = self.machine_and_policy(&spec, provider.as_ref());
        let (nodes, local) = (spec.resources.nodes, spec.resources.devices_per_node);
        let state = RunState {
            machine,
            policy,
            provider,
            rdzv,
            exit_tx,
            display: Display::new(&self.console, nodes, local),
            queue: VecDeque::from([Event::Start]),
            attempt: None,
            parked: BTreeMap::new(),
            leaving: Vec::new(),
            agent_workers: BTreeMap::new(),
            next_worker: 0,
            history: Vec::new(),
            last_results: BTreeMap::new(),
            rendezvous_deadline: None,
            grace_deadline: None,
            finish: None,
            final_message: None,
            notice: None,
            agreed_stop: None,
            seen_notice: None,
            warnings_seen: BTreeSet::new(),
            preemptions: Vec::new(),
            books: self.bookkeeper(),
            resume_from: None,
            grow: grow::Grow::default(),
        };
        let inputs = Inputs {
            rdzv: rdzv_rx,
            exits: exit_rx,
            gpu: self.gpu_telemetry(),
            sigint,
            sigterm,
            sigusr1,
        };
        Ok((state, inputs))
    }

    /// The rendezvous server, where the job's nodes reach it; sets
    /// `rdzv_endpoint`, the address workers and agents are given.
    async fn start_rendezvous(
        &mut self,
        spec: &proto::spec::JobSpec,
    ) -> Result<
        (
            Rendezvous,
            mpsc::UnboundedReceiver<crate::rendezvous::RdzvEvent>,
        ),
        LaunchError,
    > {
        let (bind, remote) = match &self.opts.node_rank {
            Some(nr) => (nr.bind(), true),
            None => crate::providers::rendezvous_bind(spec),
        };
        let (rdzv, rx) =
            Rendezvous::start(&bind, self.token.clone())
                .await
                .map_err(LaunchError::system(format!(
                    "cannot start the rendezvous server on {bind}"
                )))?;
        self.rdzv_endpoint = if let Some(nr) = &self.opts.node_rank {
            nr.endpoint()
        } else if remote {
            format!(
                "{}:{}",
                crate::providers::rendezvous_host(spec, &self.plan),
                rdzv.addr().port()
            )
        } else {
            rdzv.addr().to_string()
        };
        Ok((rdzv, rx))
    }

    /// The run begins: job.json written, `run_started`, the console's
    /// line, the metrics endpoint listening.
    fn announce(
        &mut self,
        spec: &proto::spec::JobSpec,
        rdzv: &Rendezvous,
    ) -> Result<(), LaunchError> {
        let (nodes, local) = (spec.resources.nodes, spec.resources.devices_per_node);
        let job_json = self.run_dir.join("job.json");
        std::fs::write(
            &job_json,
            serde_json::to_vec_pretty(spec).expect("spec serialises"),
        )
        .map_err(LaunchError::system(format!(
            "cannot write {}",
            job_json.display()
        )))?;
        self.events.emit(RunEvent::RunStarted {
            run_id: self.run_id.clone(),
            name: spec.name.clone(),
            world_size: nodes * local,
            nodes,
            devices_per_node: local,
            workload: spec.workload.kind().into(),
            rendezvous: rdzv.addr().to_string(),
            launcher_pid: std::process::id(),
        });
        self.console.note(&format!(
            "[ringmaster] run {} (launcher pid {}): {nodes} node(s) x {local} worker(s), {} workload, logs in {}",
            self.run_id,
            std::process::id(),
            spec.workload.kind(),
            self.run_dir.display()
        ));
        if let Some(addr) = spec.observability.metrics_addr.as_deref() {
            let e = crate::metrics::Endpoint::serve(addr, self.metrics.clone()).map_err(|e| {
                LaunchError::Io(format!(
                    "observability.metrics_addr {addr}: cannot listen there: {e}"
                ))
            })?;
            self.events.emit(RunEvent::MetricsListening {
                addr: e.addr.to_string(),
            });
            self.console.note(&format!(
                "[ringmaster] metrics on http://{}/metrics",
                e.addr
            ));
            self.endpoint = Some(e);
        }
        Ok(())
    }

    /// The state machine with the job's restart budgets, and the policy
    /// the executor applies (what the provider can do decides some).
    fn machine_and_policy(
        &self,
        spec: &proto::spec::JobSpec,
        provider: &dyn Provider,
    ) -> (Machine, Policy) {
        let rc = &spec.recovery;
        let world = spec.resources.nodes * spec.resources.devices_per_node;
        let checkpointing =
            matches!(spec.workload, Workload::Train(_)) && spec.checkpoint.dir.is_some();
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
        // Kubernetes and Slurm send SIGTERM before they kill: a notice for
        // a job that can act on one (a train job that checkpoints, a
        // command job whose program is told or keeps its checkpoints with
        // ringmaster), else an interrupt.
        let program_acts = matches!(spec.workload, Workload::Command(_))
            && (spec.notices.program_signal().is_some() || spec.checkpoint.dir.is_some());
        machine.sigterm_is_notice = checkpointing || program_acts;
        let policy = Policy {
            // Survivors kept through a preemption: where the provider
            // replaces lost nodes and the workload keeps its state in the
            // worker (`train`; on GPUs each round builds a new NCCL
            // communicator).
            keep_survivors: rc.keep_survivors && provider.replaces_nodes() && checkpointing,
            preflight: spec.preflight.enabled.unwrap_or(self.plan.gpus.is_some()),
            watch_hang: crate::plan::hang_detection(spec),
            heartbeat_timeout: Duration::from_secs_f64(rc.heartbeat_timeout_s),
            hang_timeout: Duration::from_secs_f64(rc.hang_timeout_s),
            rendezvous_timeout: Duration::from_secs_f64(rc.rendezvous_timeout_s),
            grace_period: Duration::from_secs_f64(rc.grace_period_s),
            end_strays: true,
        };
        (machine, policy)
    }

    /// GPU jobs: NVML samples every 5 s (NVML calls block, so they run on
    /// the blocking pool); other jobs: a channel that never speaks.
    fn gpu_telemetry(&self) -> mpsc::UnboundedReceiver<Vec<gpu::telemetry::GpuSample>> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.plan.gpus.is_some() {
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    let Ok(Ok(samples)) = tokio::task::spawn_blocking(gpu::telemetry::sample).await
                    else {
                        return;
                    };
                    if tx.send(samples).is_err() {
                        return;
                    }
                }
            });
        }
        rx
    }
}
