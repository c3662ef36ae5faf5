//! Executor tests: the supervisor driven by a fake provider and fake
//! workers, as cargo-nextest tests its dispatcher by feeding it events. The
//! provider "starts" every worker through a node agent that does not exist
//! (`Spawned::Remote`), the tests play the workers' joins, results and
//! exits into the handlers, and read what the executor did: the actions
//! carried out (events.jsonl), the workers started per attempt, and how the
//! run ends. No process is started.

use super::attempt::REMOTE_HANDLE;
use super::state::{Exited, Inputs, RunState, Sig};
use super::{RunOptions, Supervisor};
use crate::progress::Console;
use crate::provider::{Provider, Spawned};
use crate::rendezvous::RdzvEvent;
use crate::report::tests::train_result;
use proto::exit::LauncherExit;
use proto::result::WorkerResult;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A provider whose workers are started "elsewhere": it records each start
/// as (attempt, rank).
struct Fake {
    replaces: bool,
    started: Arc<Mutex<Vec<(u64, u32)>>>,
    /// Refuse to start workers (as a missing binary would).
    refuse: Arc<AtomicBool>,
}

impl Provider for Fake {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn replaces_nodes(&self) -> bool {
        self.replaces
    }
    fn spawn_worker(
        &self,
        _node: u32,
        _bin: &Path,
        c: &proto::contract::WorkerContract,
        _env: &[(String, String)],
        _log: &Path,
        _tee: Option<(u32, Console)>,
    ) -> std::io::Result<Spawned> {
        self.started.lock().unwrap().push((c.restart_count, c.rank));
        if self.refuse.load(Ordering::SeqCst) {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        Ok(Spawned::Remote { agent: None })
    }
}

struct Harness {
    sup: Supervisor,
    r: RunState,
    inputs: Inputs,
    started: Arc<Mutex<Vec<(u64, u32)>>>,
    refuse: Arc<AtomicBool>,
    _dir: Scratch,
}

/// A 2-rank job (two nodes of one worker) from `spec`'s fields over a
/// small train job, started with the fake provider.
async fn harness(extra: Value, replaces: bool) -> Harness {
    let dir = Scratch::new();
    let mut spec = json!({
        "name": "exec",
        "resources": {"nodes": 2, "devices_per_node": 1},
        "workload": {"kind": "train", "steps": 100, "hidden": 8},
        "log_dir": dir.path().display().to_string(),
        "recovery": {"max_restarts": 1, "max_preemptions": 2, "notice_grace_s": 30, "grace_period_s": 5}
    });
    merge(&mut spec, extra);
    let c = proto::spec::compile(spec).expect("the test spec compiles");
    let plan = crate::plan::plan(&c, 2, None, None, false, None);
    let opts = RunOptions {
        worker_bin: "/nonexistent/ringmaster-worker".into(),
        tee: false,
        quiet: true,
        run_id: Some("t".into()),
        gpu_libs: None,
        node_rank: None,
    };
    let mut sup = Supervisor::new(c, plan, opts, Console::new(true)).unwrap();
    let started = Arc::new(Mutex::new(Vec::new()));
    let refuse = Arc::new(AtomicBool::new(false));
    let fake = Fake {
        replaces,
        started: started.clone(),
        refuse: refuse.clone(),
    };
    let (mut r, inputs) = sup
        .start(|_, _| Ok(Box::new(fake) as Box<dyn Provider>))
        .await
        .unwrap();
    r.policy.end_strays = false;
    Harness {
        sup,
        r,
        inputs,
        started,
        refuse,
        _dir: dir,
    }
}

/// A folder of this test's own, removed at the end.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("ringmaster-exec-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

impl Harness {
    async fn drain(&mut self) {
        self.sup.drain(&mut self.r).await.unwrap();
    }
    fn attempt(&self) -> u32 {
        self.r.attempt.as_ref().expect("an attempt runs").n
    }
    /// Every rank of the current attempt joins; the group is healthy.
    async fn all_join(&mut self) {
        let round = self.attempt() as u64;
        for rank in 0..2 {
            self.sup.on_rendezvous(
                &mut self.r,
                RdzvEvent::Joined {
                    round,
                    rank,
                    pid: 1000 + rank,
                    preflight: None,
                },
            );
        }
        self.sup
            .on_rendezvous(&mut self.r, RdzvEvent::AllJoined { round });
        self.drain().await;
    }
    async fn signal(&mut self, sig: Sig) {
        self.sup.on_signal(&mut self.r, sig);
        self.drain().await;
    }
    /// Rank `rank` of the current attempt reports `result`, then exits.
    async fn exit(&mut self, rank: u32, code: i32, result: Option<WorkerResult>) {
        let attempt = self.attempt();
        if let Some(payload) = result {
            self.sup.on_rendezvous(
                &mut self.r,
                RdzvEvent::Result {
                    round: attempt as u64,
                    rank,
                    payload,
                },
            );
        }
        // (The fake's workers are started elsewhere, under the handles
        // the attempt gave them.)
        let handle = self.r.attempt.as_ref().unwrap().pgids[rank as usize].unwrap();
        assert!(handle >= REMOTE_HANDLE);
        self.sup.on_worker_exit(
            &mut self.r,
            Exited {
                attempt,
                handle,
                rank,
                kind: super::machine::ExitKind::Code(code),
            },
        );
        self.drain().await;
    }
    /// events.jsonl's events (name, line), in order.
    fn events(&self) -> Vec<(String, Value)> {
        let text = std::fs::read_to_string(self.sup.run_dir().join("events.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                // Every line is a typed event.
                let line = proto::events::Line::parse(l).unwrap();
                (line.event.name(), serde_json::from_str(l).unwrap())
            })
            .collect()
    }
    fn named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }
}

const PREEMPTED: i32 = proto::exit::WorkerExit::Preempted as i32;

#[tokio::test]
async fn sigterm_to_a_checkpointing_train_job_is_a_notice_with_the_jobs_grace() {
    let mut h = harness(json!({"checkpoint": {"dir": "unused-ckpt"}}), false).await;
    h.drain().await;
    assert_eq!(*h.started.lock().unwrap(), vec![(0, 0), (0, 1)]);
    h.all_join().await;
    h.signal(Sig::Term).await;
    let sent = h.named("notice_sent");
    assert_eq!(sent.len(), 1, "{:?}", h.events());
    assert_eq!(sent[0]["notice_grace_s"], 30.0);
    assert!(h.named("workers_terminating").is_empty());
    // The workers stop at the agreed step; with a provider that does not
    // replace nodes the run ends as preempted (resume later).
    let stopped = train_result(None, None, "a", Some(40));
    h.exit(0, PREEMPTED, Some(stopped.clone())).await;
    assert_eq!(h.r.finish, None);
    h.exit(1, PREEMPTED, Some(stopped)).await;
    assert_eq!(h.r.finish, Some(LauncherExit::Preempted));
    let handled = h.named("notice_handled");
    assert_eq!(handled[0]["stopped_at_step"], 40, "{handled:?}");
    assert_eq!(handled[0]["checkpointed"], true, "{handled:?}");
}

#[tokio::test]
async fn sigterm_without_checkpoints_terminates_and_a_second_kills() {
    let mut h = harness(json!({}), false).await;
    h.drain().await;
    h.all_join().await;
    h.signal(Sig::Term).await;
    assert!(h.named("notice_sent").is_empty(), "{:?}", h.events());
    let term = h.named("workers_terminating");
    assert_eq!(term.len(), 1);
    assert_eq!(term[0]["grace_period_s"], 5.0);
    let deadline = h.r.grace_deadline.expect("the grace timer is armed");
    assert!(deadline > Instant::now() + Duration::from_secs(4));
    // A second SIGTERM: the kill comes now, the timer is off.
    h.signal(Sig::Term).await;
    assert_eq!(h.r.grace_deadline, None);
    h.exit(0, 143, None).await;
    h.exit(1, 143, None).await;
    assert_eq!(h.r.finish, Some(LauncherExit::Interrupted));
}

#[tokio::test]
async fn a_watchers_notice_with_an_earlier_cloud_deadline_shortens_the_grace() {
    let mut h = harness(json!({"checkpoint": {"dir": "unused-ckpt"}}), false).await;
    h.drain().await;
    h.all_join().await;
    let now_ms = proto::wire::unix_ms(std::time::SystemTime::now());
    let notice = json!({"source": "aws spot/instance-action", "preempt": true,
        "deadline_unix_ms": now_ms + 8_000, "seen_unix_ms": now_ms, "detail": "terminate"});
    // The notice arrives with a rank's result (before a heartbeat could
    // carry it).
    h.sup.on_rendezvous(
        &mut h.r,
        RdzvEvent::Result {
            round: 0,
            rank: 1,
            payload: WorkerResult {
                notice: Some(serde_json::from_value(notice).unwrap()),
                ..train_result(None, None, "a", None)
            },
        },
    );
    h.drain().await;
    let (at, deadline) = h.r.notice.expect("a notice went out");
    let grace = deadline - at;
    assert!(
        grace <= Duration::from_secs(8) && grace > Duration::from_secs(6),
        "the cloud's 8 s, not the job's 30 s: {grace:?}"
    );
    assert_eq!(
        h.named("notice_sent")[0]["source"],
        "aws spot/instance-action"
    );
}

#[tokio::test]
async fn a_preemption_where_nodes_are_replaced_starts_the_next_attempt() {
    let mut h = harness(json!({"checkpoint": {"dir": "unused-ckpt"}}), true).await;
    h.drain().await;
    h.all_join().await;
    h.signal(Sig::Usr1).await;
    h.exit(0, PREEMPTED, None).await;
    h.exit(1, PREEMPTED, None).await;
    assert_eq!(h.r.finish, None);
    assert_eq!(h.attempt(), 1);
    assert_eq!(
        *h.started.lock().unwrap(),
        vec![(0, 0), (0, 1), (1, 0), (1, 1)]
    );
    assert_eq!(h.r.machine.used.preempt, 1);
    // The new attempt runs to the end.
    h.all_join().await;
    h.exit(0, 0, None).await;
    h.exit(1, 0, None).await;
    assert_eq!(h.r.finish, Some(LauncherExit::Success));
    assert_eq!(h.r.history.len(), 2);
    assert_eq!(h.r.preemptions.len(), 1);
}

#[tokio::test]
async fn the_rendezvous_timer_and_a_silent_rank_become_the_machines_events() {
    // A rendezvous that never completes: the timer fires on a tick.
    let mut h = harness(
        json!({"recovery": {"rendezvous_timeout_s": 30, "max_restarts": 0}}),
        false,
    )
    .await;
    h.drain().await;
    h.sup.on_tick(&mut h.r, Instant::now());
    h.drain().await;
    assert!(h.named("group_stopping").is_empty());
    h.sup
        .on_tick(&mut h.r, Instant::now() + Duration::from_secs(31));
    h.drain().await;
    let stop = h.named("group_stopping");
    assert_eq!(stop[0]["reason"], "rendezvous-timeout", "{stop:?}");
    // Nothing started, so nothing to wait for: each exit is seen.
    h.exit(0, 143, None).await;
    h.exit(1, 143, None).await;
    assert_eq!(h.r.finish, Some(LauncherExit::RendezvousFailed));

    // A rank whose heartbeats stop while healthy.
    let mut h = harness(
        json!({"recovery": {"heartbeat_timeout_s": 10, "max_restarts": 0}}),
        false,
    )
    .await;
    h.drain().await;
    h.all_join().await;
    for rank in 0..2 {
        h.sup
            .on_rendezvous(&mut h.r, RdzvEvent::HeartbeatStarted { round: 0, rank });
    }
    h.sup
        .on_tick(&mut h.r, Instant::now() + Duration::from_secs(11));
    h.drain().await;
    let stop = h.named("group_stopping");
    assert_eq!(stop[0]["reason"], "heartbeat-lost", "{stop:?}");
}

#[tokio::test]
async fn workers_that_cannot_start_are_user_failures_within_the_budget() {
    let mut h = harness(json!({}), false).await;
    h.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    h.drain().await;
    // Each refused start comes back as an exit; play them in until the
    // run ends (max_restarts 1: two attempts).
    let mut rounds = 0;
    while h.r.finish.is_none() && rounds < 10 {
        rounds += 1;
        while let Ok(x) = h.inputs.exits.try_recv() {
            h.sup.on_worker_exit(&mut h.r, x);
            h.drain().await;
        }
    }
    assert_eq!(h.r.finish, Some(LauncherExit::WorkersFailed));
    assert_eq!(h.named("worker_spawn_failed").len(), 4);
    assert_eq!(h.r.history.len(), 2);
    assert_eq!(h.r.machine.used.user, 1);
    assert_eq!(h.r.machine.used.infra, 0);
}
