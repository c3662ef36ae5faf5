//! A load generator for the launcher at scale: it plays nodes 1..N of a
//! run led by a real `ringmaster run --node-rank 0` (its real rendezvous,
//! heartbeats, notice and agreed-step path and supervision), as node agents
//! that start no processes. Each node is one agent connection from a
//! source address of its own in 127.1.0.0/16; each rank it is asked to
//! start is a task that does what a `command` worker does on the wire: a
//! heartbeat connection and a control connection, relayed as streams of
//! its agent's connection as the real agent relays its workers'
//! (`launcher::relay`), or with `--direct` TCP connections of their own
//! from the node's address, `join`, a beat every heartbeat interval with its step (advancing every
//! --step-ms), the launcher's notice and agreed stop step heeded (it stops
//! there and exits 77, as a program told of a notice does), its result,
//! and the agent's `agent_exited`. `--silent-rank R --silent-at S`: rank
//! R stops beating at step S of the first attempt (a frozen process).
//!
//! Everything it saw goes to `--out` as JSON (wall-clock milliseconds,
//! so the bench can set them against the launcher's events.jsonl).
//! Bounded: it gives up after `--limit-s`.

use clap::Parser;
use launcher::relay::{Relay, Side};
use proto::wire::{Heartbeat, Request, Response, PROTOCOL_VERSION};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A rank's connection: TCP, or a stream of its agent's relay.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

/// How a node's ranks reach the leader.
#[derive(Clone)]
enum Route {
    Direct(Ipv4Addr, SocketAddr),
    Relay(Relay),
}

impl Route {
    async fn connect(&self) -> std::io::Result<Conn> {
        match self {
            Route::Direct(ip, to) => Ok(Box::new(connect_from(*ip, *to).await?)),
            Route::Relay(r) => Ok(Box::new(r.open()?)),
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "ringmaster-loadgen")]
struct Args {
    /// The leader's rendezvous, HOST:PORT.
    #[arg(long)]
    leader: SocketAddr,
    /// The run's shared token.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Play nodes FIRST..=LAST.
    #[arg(long, default_value_t = 1)]
    first: u32,
    #[arg(long)]
    last: u32,
    /// One step every this many milliseconds.
    #[arg(long, default_value_t = 20)]
    step_ms: u64,
    /// Steps in all (the run's end when no notice comes).
    #[arg(long, default_value_t = 1_000_000)]
    steps: u64,
    /// This rank stops beating at --silent-at (first attempt only).
    #[arg(long)]
    silent_rank: Option<u32>,
    #[arg(long, default_value_t = 50)]
    silent_at: u64,
    /// Where to write what it saw.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Give up after this long.
    #[arg(long, default_value_t = 300.0)]
    limit_s: f64,
    /// Each rank's two connections straight to the leader, not relayed by
    /// its node's agent (the launcher's shape before relays).
    #[arg(long)]
    direct: bool,
}

fn now_ms() -> u64 {
    proto::wire::unix_ms(SystemTime::now())
}

/// Node `k`'s address: 127.1.0.0 + k (distinct source addresses, so no
/// one address carries all connections).
fn node_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + k)
}

#[derive(Default)]
struct Stats {
    agents_connected_ms: Vec<u64>,
    agent_refusals: Vec<String>,
    /// (round, rank, ms) for each welcome got, notice got.
    welcomes: Vec<(u64, u32, u64)>,
    notices: Vec<(u64, u32, u64, Option<u64>)>,
    /// (round, rank, step) where each rank stopped after a notice.
    stops: Vec<(u64, u32, u64)>,
    silent: Option<(u32, u64)>,
    failures: Vec<String>,
    failures_total: u64,
    beats: u64,
    beat_answer_ms_total: f64,
    beat_answer_ms_max: f64,
}

type Shared = Arc<Mutex<Stats>>;

fn fail(stats: &Shared, m: String) {
    let mut s = stats.lock().unwrap();
    s.failures_total += 1;
    if s.failures.len() < 20 {
        s.failures.push(m);
    }
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    let c = s.connect(to).await?;
    c.set_nodelay(true)?;
    Ok(c)
}

async fn send<T: serde::Serialize, W: AsyncWriteExt + Unpin>(
    w: &mut W,
    m: &T,
) -> std::io::Result<()> {
    w.write_all(&proto::wire::encode(m)).await
}

async fn recv<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Response> {
    let len = r.read_u32().await?;
    if len > proto::wire::MAX_FRAME_BYTES {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

#[derive(Clone)]
struct Plan {
    leader: SocketAddr,
    step_ms: u64,
    steps: u64,
    silent: Option<(u32, u64)>,
    direct: bool,
}

/// One rank of node `node`: what a `command` worker does on the wire.
/// Returns its exit code.
async fn rank(
    plan: Plan,
    route: Route,
    c: proto::contract::WorkerContract,
    stats: Shared,
) -> Result<i32, String> {
    let round = c.restart_count;
    let mut hb = route
        .connect()
        .await
        .map_err(|e| format!("rank {}: heartbeat connect: {e}", c.rank))?;
    send(
        &mut hb,
        &Request::HeartbeatHello {
            version: PROTOCOL_VERSION,
            token: c.rdzv_token.clone(),
            round,
            node_rank: c.node_rank,
            local_rank: c.local_rank,
        },
    )
    .await
    .map_err(|e| format!("rank {}: heartbeat hello: {e}", c.rank))?;
    match recv(&mut hb).await {
        Ok(Response::Ok) => {}
        other => return Err(format!("rank {}: heartbeat greeting: {other:?}", c.rank)),
    }
    // Beats from the greeting on, as a worker's heartbeat thread does
    // (also while the join waits for the others).
    let state = Arc::new(RankState::default());
    let _beats = AbortOnDrop(tokio::spawn(beat(
        hb,
        state.clone(),
        plan.clone(),
        Duration::from_millis(c.heartbeat_interval_ms.max(1)),
        (round, c.rank),
        stats.clone(),
    )));
    let mut ctl = route
        .connect()
        .await
        .map_err(|e| format!("rank {}: control connect: {e}", c.rank))?;
    send(
        &mut ctl,
        &Request::Join {
            version: PROTOCOL_VERSION,
            token: c.rdzv_token.clone(),
            round,
            node_rank: c.node_rank,
            local_rank: c.local_rank,
            ring_addr: String::new(),
            pid: std::process::id(),
            preflight: None,
        },
    )
    .await
    .map_err(|e| format!("rank {}: join: {e}", c.rank))?;
    match recv(&mut ctl).await {
        Ok(Response::Welcome {
            rank, world_size, ..
        }) if rank == c.rank && world_size == c.world_size => {}
        other => return Err(format!("rank {}: join answered {other:?}", c.rank)),
    }
    stats
        .lock()
        .unwrap()
        .welcomes
        .push((round, c.rank, now_ms()));
    let mut tick = tokio::time::interval(Duration::from_millis(plan.step_ms.max(1)));
    loop {
        tick.tick().await;
        let step = state.step.fetch_add(1, Ordering::Relaxed) + 1;
        let stop = *state.stop.lock().unwrap();
        let ending = match stop {
            Some(s) if step >= s => Some((step, 77)),
            _ if step >= plan.steps => Some((step, 0)),
            _ => None,
        };
        if let Some((at, code)) = ending {
            if code == 77 {
                stats.lock().unwrap().stops.push((round, c.rank, at));
            }
            let result = proto::result::WorkerResult::new(proto::result::Figures::Command(
                proto::result::CommandResult {
                    exit_code: 0,
                    last_step: Some(at),
                    stopped_for_notice: code == 77,
                    committed: Vec::new(),
                },
            ));
            send(&mut ctl, &Request::Result { payload: result })
                .await
                .map_err(|e| format!("rank {}: result: {e}", c.rank))?;
            let _ = recv(&mut ctl).await;
            return Ok(code);
        }
        if round == 0 && plan.silent.is_some_and(|(r, at)| r == c.rank && step >= at) {
            // Frozen: connections open, nothing sent, until the launcher
            // ends this rank.
            state.frozen.store(true, Ordering::Relaxed);
            std::future::pending::<()>().await;
        }
    }
}

/// A rank's progress, shared by its step loop and its heartbeats.
#[derive(Default)]
struct RankState {
    step: AtomicU64,
    /// The step to stop after (the launcher's agreed step).
    stop: Mutex<Option<u64>>,
    frozen: AtomicBool,
}

/// Aborts the task when dropped (a rank ended: its heartbeats end too).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One rank's heartbeats: a beat every interval with its step; the
/// launcher's answers (and a notice it pushes between beats) read by a
/// task of their own, as the worker's answer thread does.
async fn beat(
    hb: Conn,
    state: Arc<RankState>,
    plan: Plan,
    interval: Duration,
    (round, rank): (u64, u32),
    stats: Shared,
) {
    let (mut rd, mut wr) = tokio::io::split(hb);
    let sent_at: Arc<Mutex<Option<Instant>>> = Default::default();
    let (state2, stats2, sent2) = (state.clone(), stats.clone(), sent_at.clone());
    let _answers = AbortOnDrop(tokio::spawn(async move {
        loop {
            let answer = match recv(&mut rd).await {
                Ok(a) => a,
                Err(e) => return fail(&stats2, format!("rank {rank}: heartbeat answer: {e}")),
            };
            if let Some(t) = sent2.lock().unwrap().take() {
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let mut s = stats2.lock().unwrap();
                s.beats += 1;
                s.beat_answer_ms_total += ms;
                s.beat_answer_ms_max = s.beat_answer_ms_max.max(ms);
            }
            if let Response::Notice { stop_step, .. } = answer {
                let mut stop = state2.stop.lock().unwrap();
                if stop.is_none() {
                    let step = state2.step.load(Ordering::Relaxed);
                    stats2
                        .lock()
                        .unwrap()
                        .notices
                        .push((round, rank, now_ms(), stop_step));
                    // Past the agreed step already: stop where it is.
                    *stop = Some(stop_step.unwrap_or(step + 1).max(step));
                }
            }
        }
    }));
    let rate = 1000.0 / plan.step_ms.max(1) as f64;
    let mut beat_at = Instant::now();
    let mut last_ms = now_ms();
    loop {
        tokio::time::sleep_until((beat_at + interval).into()).await;
        beat_at = Instant::now();
        if state.frozen.load(Ordering::Relaxed) {
            // Silent from its last beat on.
            stats.lock().unwrap().silent = Some((rank, last_ms));
            return std::future::pending().await;
        }
        last_ms = now_ms();
        let step = state.step.load(Ordering::Relaxed);
        let beat = Heartbeat {
            step,
            total_steps: plan.steps,
            loss: (step > 0).then(|| 1.0 / step as f64),
            phase: "command".into(),
            steps_per_s: (step > 0).then_some(rate),
            ..Heartbeat::default()
        };
        sent_at.lock().unwrap().get_or_insert_with(Instant::now);
        if let Err(e) = send(&mut wr, &Request::Heartbeat(beat)).await {
            return fail(&stats, format!("rank {rank}: heartbeat: {e}"));
        }
    }
}

/// Node `k`'s agent: hello, then the launcher's commands until shutdown.
async fn agent(plan: Plan, k: u32, token: String, stats: Shared) {
    let ip = node_ip(k);
    // The leader may not listen yet (nodes start in any order).
    let until = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match connect_from(ip, plan.leader).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return fail(&stats, format!("agent {k}: connect: {e}")),
        }
    };
    let mut stream = stream;
    let hello = Request::AgentHello {
        version: PROTOCOL_VERSION,
        token,
        node: k,
        addr: Some(ip.to_string()),
        relay: !plan.direct,
    };
    if let Err(e) = send(&mut stream, &hello).await {
        return fail(&stats, format!("agent {k}: hello: {e}"));
    }
    let refused = |other: std::io::Result<Response>| {
        stats
            .lock()
            .unwrap()
            .agent_refusals
            .push(format!("agent {k}: {other:?}"));
    };
    match recv(&mut stream).await {
        Ok(Response::Ok) => {}
        other => return refused(other),
    }
    // With a relay: registered on its stream 0; ranks open streams.
    let (route, conn): (Route, Conn) = if plan.direct {
        (Route::Direct(ip, plan.leader), Box::new(stream))
    } else {
        let (relay, mut control, _) = Relay::start(stream, Side::Agent);
        match recv(&mut control).await {
            Ok(Response::Ok) => {}
            other => return refused(other),
        }
        (Route::Relay(relay), Box::new(control))
    };
    stats.lock().unwrap().agents_connected_ms.push(now_ms());
    let (mut rd, mut wr) = tokio::io::split(conn);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
    let writer = tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            if send(&mut wr, &r).await.is_err() {
                return;
            }
        }
    });
    let live: Arc<Mutex<HashMap<u32, tokio::task::AbortHandle>>> = Default::default();
    loop {
        match recv(&mut rd).await {
            Ok(Response::Spawn { worker: r, env }) => {
                let vars: HashMap<String, String> = env.into_iter().collect();
                let c = match proto::contract::WorkerContract::from_env(|k| vars.get(k).cloned()) {
                    Ok(c) => c,
                    Err(e) => {
                        fail(&stats, format!("agent {k}: worker {r}: {e}"));
                        let _ = tx.send(Request::AgentExited {
                            worker: r,
                            code: Some(70),
                            signal: None,
                        });
                        continue;
                    }
                };
                let _ = tx.send(Request::AgentStarted {
                    worker: r,
                    pid: std::process::id(),
                });
                let (plan, route, stats2, tx2, live2) = (
                    plan.clone(),
                    route.clone(),
                    stats.clone(),
                    tx.clone(),
                    live.clone(),
                );
                let mut guard = live.lock().unwrap();
                let task = tokio::spawn(async move {
                    let code = match rank(plan, route, c, stats2.clone()).await {
                        Ok(code) => code,
                        Err(e) => {
                            fail(&stats2, e);
                            1
                        }
                    };
                    if live2.lock().unwrap().remove(&r).is_some() {
                        let _ = tx2.send(Request::AgentExited {
                            worker: r,
                            code: Some(code),
                            signal: None,
                        });
                    }
                });
                guard.insert(r, task.abort_handle());
            }
            Ok(Response::Signal { worker: r, signal }) => {
                // Any signal ends a played rank (it has no handler).
                if let Some(h) = live.lock().unwrap().remove(&r) {
                    h.abort();
                    let _ = tx.send(Request::AgentExited {
                        worker: r,
                        code: None,
                        signal: Some(signal),
                    });
                }
            }
            Ok(Response::Shutdown { .. }) => break,
            Ok(_) => {}
            Err(_) => {
                fail(&stats, format!("agent {k}: the leader is gone"));
                break;
            }
        }
    }
    for (_, h) in live.lock().unwrap().drain() {
        h.abort();
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    if let Route::Relay(r) = &route {
        let _ = tokio::time::timeout(Duration::from_secs(2), r.flush()).await;
    }
}

fn main() {
    let a = Args::parse();
    let token = match std::fs::read_to_string(&a.token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!(
                "ringmaster-loadgen: cannot read {}: {e}",
                a.token_file.display()
            );
            std::process::exit(2);
        }
    };
    if a.first == 0 || a.last < a.first || a.last >= 65_000 {
        eprintln!("ringmaster-loadgen: --first/--last must be 1 <= first <= last < 65000");
        std::process::exit(2);
    }
    // Two connections per rank (--direct): raise the open-file limit to the
    // hard one.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let plan = Plan {
        leader: a.leader,
        step_ms: a.step_ms,
        steps: a.steps,
        silent: a.silent_rank.map(|r| (r, a.silent_at)),
        direct: a.direct,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let stats: Shared = Default::default();
    let started = now_ms();
    let done = rt.block_on(async {
        let agents: Vec<_> = (a.first..=a.last)
            .map(|k| tokio::spawn(agent(plan.clone(), k, token.clone(), stats.clone())))
            .collect();
        let all = async {
            for h in agents {
                let _ = h.await;
            }
        };
        tokio::time::timeout(Duration::from_secs_f64(a.limit_s), all)
            .await
            .is_ok()
    });
    let s = stats.lock().unwrap();
    let out = json!({
        "started_ms": started,
        "ended_ms": now_ms(),
        "completed": done,
        "nodes": a.last - a.first + 1,
        "agents_connected_ms": s.agents_connected_ms,
        "agent_refusals": s.agent_refusals,
        "welcomes": s.welcomes,
        "notices": s.notices,
        "stops": s.stops,
        "silent": s.silent,
        "failures": s.failures,
        "failures_total": s.failures_total,
        "beats": s.beats,
        "beat_answer_ms_mean": if s.beats > 0 { s.beat_answer_ms_total / s.beats as f64 } else { 0.0 },
        "beat_answer_ms_max": s.beat_answer_ms_max,
    });
    std::fs::write(&a.out, serde_json::to_vec(&out).unwrap()).expect("write --out");
    // Leave now: tasks of ranks still frozen are not waited for.
    std::process::exit(if done { 0 } else { 1 });
}
