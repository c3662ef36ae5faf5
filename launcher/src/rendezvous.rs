//! The rendezvous server, hosted by the launcher (never by a worker, so
//! losing a node never loses the store). Length-delimited versioned JSON over
//! TCP. Join needs the run's secret token and the current round; ranks are
//! stable (node order, then local rank). Offers barrier, a round-scoped
//! key-value store, and heartbeats. Every connection runs in its own task and
//! a bad or oversized message closes only that connection.

use proto::wire::{ErrorKind, Heartbeat, Request, Response, MAX_FRAME_BYTES, PROTOCOL_VERSION};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// What the supervisor hears from the rendezvous.
#[derive(Debug, Clone)]
pub enum RdzvEvent {
    Joined {
        round: u64,
        rank: u32,
        pid: u32,
        /// The worker's preflight figures, when it ran the check.
        preflight: Option<proto::wire::PreflightFigures>,
    },
    AllJoined {
        round: u64,
    },
    HeartbeatStarted {
        round: u64,
        rank: u32,
    },
    Heartbeat {
        round: u64,
        rank: u32,
        beat: Heartbeat,
    },
    HeartbeatEnded {
        round: u64,
        rank: u32,
    },
    Result {
        round: u64,
        rank: u32,
        payload: proto::result::WorkerResult,
    },
    /// A rank stopped at a notice's step with its checkpoint committed and
    /// waits for `release`.
    Parked {
        round: u64,
        rank: u32,
    },
    /// A node agent connected (its commands go through `agent`).
    AgentJoined {
        node: u32,
    },
    /// A node agent's report (AgentStarted, AgentExited, AgentNotice).
    AgentReport {
        node: u32,
        report: Request,
    },
    /// A node agent's connection ended.
    AgentLost {
        node: u32,
    },
    Refused {
        peer: SocketAddr,
        kind: ErrorKind,
        message: String,
    },
    /// Refusals counted since the last summary (after the first
    /// REFUSALS_LOGGED, refusals are only counted), by kind; `total`: all
    /// refusals of the run so far.
    RefusedSummary {
        total: u64,
        by_kind: BTreeMap<String, u64>,
    },
}

/// The first message must arrive within this time, so idle connections
/// cannot pile up. (A worker connects only when its greeting is ready: its
/// preflight figures are measured before it connects.)
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(3);
/// Before a connection has shown the run's token, its frame may be this
/// large at most (a join is a few hundred bytes); after, MAX_FRAME_BYTES.
pub const MAX_GREETING_BYTES: u32 = 16 << 10;
/// Connections not yet authenticated, at most: in all, and from one
/// source address. More are closed at once (and counted as refused).
pub const MAX_UNAUTHENTICATED: usize = 1024;
pub const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 256;
/// Refusals written one by one to events.jsonl; after that they are
/// counted and summarised every REFUSAL_SUMMARY_EVERY.
pub const REFUSALS_LOGGED: u64 = 20;
const REFUSAL_SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Refusals beyond the first REFUSALS_LOGGED, not yet summarised.
#[derive(Default)]
struct Refusals {
    total: u64,
    pending: BTreeMap<String, u64>,
}

/// Connections that have not authenticated yet, by source.
#[derive(Default)]
struct Unauthenticated {
    total: usize,
    by_source: HashMap<std::net::IpAddr, usize>,
}

/// A slot among the unauthenticated connections, given back on drop.
struct Pending {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl Pending {
    fn take(shared: &Arc<Shared>, ip: std::net::IpAddr) -> Option<Pending> {
        let mut u = shared.unauth.lock().unwrap();
        let here = u.by_source.get(&ip).copied().unwrap_or(0);
        if u.total >= MAX_UNAUTHENTICATED || here >= MAX_UNAUTHENTICATED_PER_SOURCE {
            return None;
        }
        u.total += 1;
        *u.by_source.entry(ip).or_default() += 1;
        Some(Pending {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut u = self.shared.unauth.lock().unwrap();
        u.total -= 1;
        if let Some(n) = u.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                u.by_source.remove(&self.ip);
            }
        }
    }
}

#[derive(Default)]
struct Round {
    round: u64,
    nodes: u32,
    local: u32,
    joined: BTreeMap<u32, String>,
    waiting: Vec<oneshot::Sender<Response>>,
    barriers: HashMap<String, Vec<oneshot::Sender<Response>>>,
    kv: HashMap<String, String>,
    kv_waiters: HashMap<String, Vec<oneshot::Sender<Response>>>,
    /// A preemption notice to hand out in heartbeat replies.
    notice: Option<(u64, String, Option<u64>)>,
    /// The survivor that broadcasts the kept state in this round.
    state_from: Option<u32>,
    /// Welcomes wait for `release_welcomes` (the launcher compares the
    /// preflight figures first).
    hold: bool,
}

impl Round {
    fn world(&self) -> u32 {
        self.nodes * self.local
    }

    /// Welcome every waiting member: the same list for all; each
    /// connection fills in its own rank.
    fn welcome_all(&mut self) {
        let addrs: Vec<String> = self.joined.values().cloned().collect();
        let world = self.world();
        for w in self.waiting.drain(..) {
            let _ = w.send(Response::Welcome {
                version: PROTOCOL_VERSION,
                round: self.round,
                rank: u32::MAX,
                world_size: world,
                ring_addrs: addrs.clone(),
                state_from: self.state_from,
            });
        }
    }
}

struct Shared {
    token: String,
    round: Mutex<Round>,
    /// Parked ranks (of any round) waiting for their reply.
    parked: Mutex<BTreeMap<u32, oneshot::Sender<Response>>>,
    /// Connected node agents: where their commands go.
    agents: Mutex<BTreeMap<u32, mpsc::UnboundedSender<Response>>>,
    events: mpsc::UnboundedSender<RdzvEvent>,
    unauth: Mutex<Unauthenticated>,
    refusals: Mutex<Refusals>,
}

#[derive(Clone)]
pub struct Rendezvous {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// A run's secret: 128 random bits, hex.
pub fn random_token() -> String {
    (0..4)
        .map(|_| format!("{:08x}", rand::random::<u32>()))
        .collect()
}

fn member_name(node: u32, local: u32) -> String {
    format!("node-{node}/local-{local}")
}

impl Rendezvous {
    /// Bind and start serving. Events go to the returned receiver.
    pub async fn start(
        bind: &str,
        token: String,
    ) -> std::io::Result<(Rendezvous, mpsc::UnboundedReceiver<RdzvEvent>)> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            token,
            round: Mutex::new(Round::default()),
            parked: Mutex::new(BTreeMap::new()),
            agents: Mutex::new(BTreeMap::new()),
            events: tx,
            unauth: Mutex::default(),
            refusals: Mutex::default(),
        });
        let s2 = shared.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let Some(slot) = Pending::take(&s2, peer.ip()) else {
                            // Too many unauthenticated connections: close
                            // at once, read nothing.
                            count_refusal(
                                &s2,
                                peer,
                                ErrorKind::Protocol,
                                "too many unauthenticated connections".into(),
                            );
                            drop(stream);
                            continue;
                        };
                        stream.set_nodelay(true).ok();
                        let s = s2.clone();
                        tokio::spawn(async move { serve(s, stream, peer, slot).await });
                    }
                    Err(e) => {
                        tracing::warn!("rendezvous accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let s3 = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFUSAL_SUMMARY_EVERY).await;
                let (pending, total) = {
                    let mut r = s3.refusals.lock().unwrap();
                    (std::mem::take(&mut r.pending), r.total)
                };
                if !pending.is_empty() {
                    let ev = RdzvEvent::RefusedSummary {
                        total,
                        by_kind: pending,
                    };
                    if s3.events.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        Ok((Rendezvous { addr, shared }, rx))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Start round `round` for `nodes` x `local` workers. Everything of the
    /// previous round (joins, barriers, keys) is dropped; its waiters are
    /// told their round is over. The parked ranks in `kept` are told to
    /// rejoin (the lowest broadcasts its state), every other parked rank
    /// to exit.
    pub fn new_round(&self, round: u64, nodes: u32, local: u32, kept: &[u32]) {
        let mut r = self.shared.round.lock().unwrap();
        let old = std::mem::take(&mut *r);
        *r = Round {
            round,
            nodes,
            local,
            state_from: kept.iter().min().copied(),
            ..Round::default()
        };
        drop(r);
        for (rank, w) in std::mem::take(&mut *self.shared.parked.lock().unwrap()) {
            let _ = w.send(if kept.contains(&rank) {
                Response::Rejoin { round }
            } else {
                Response::Exit
            });
        }
        let stale = || Response::Error {
            kind: ErrorKind::StaleRound,
            message: format!("round {} is over", old.round),
        };
        for w in old
            .waiting
            .into_iter()
            .chain(old.barriers.into_values().flatten())
            .chain(old.kv_waiters.into_values().flatten())
        {
            let _ = w.send(stale());
        }
    }

    /// Hold this round's welcomes until `release_welcomes` (the members
    /// wait in their join, within the rendezvous timeout).
    pub fn hold_welcomes(&self) {
        self.shared.round.lock().unwrap().hold = true;
    }

    /// Send the held welcomes of round `round`, if it is still current.
    pub fn release_welcomes(&self, round: u64) {
        let mut r = self.shared.round.lock().unwrap();
        if r.round == round {
            r.hold = false;
            if r.joined.len() as u32 == r.world() {
                r.welcome_all();
            }
        }
    }

    /// Where node `node`'s agent takes commands, if it is connected.
    pub fn agent(&self, node: u32) -> Option<mpsc::UnboundedSender<Response>> {
        self.shared.agents.lock().unwrap().get(&node).cloned()
    }

    /// Tell parked ranks to exit (all of them when `ranks` is None).
    pub fn release(&self, ranks: Option<&[u32]>) {
        let mut parked = self.shared.parked.lock().unwrap();
        let chosen: Vec<u32> = parked
            .keys()
            .copied()
            .filter(|k| ranks.is_none_or(|r| r.contains(k)))
            .collect();
        for k in chosen {
            if let Some(w) = parked.remove(&k) {
                let _ = w.send(Response::Exit);
            }
        }
    }

    /// Hand a preemption notice to every worker of the current round in its
    /// next heartbeat reply.
    /// Every heartbeat of this round is answered with the notice from now
    /// on (with the agreed stop step for programs that report steps).
    pub fn notify(&self, deadline_unix_ms: u64, reason: &str, stop_step: Option<u64>) {
        self.shared.round.lock().unwrap().notice =
            Some((deadline_unix_ms, reason.to_string(), stop_step));
    }

    /// Members of the current round that have not joined, by name.
    pub fn missing(&self) -> (usize, usize, Vec<String>) {
        let r = self.shared.round.lock().unwrap();
        let mut missing = Vec::new();
        for node in 0..r.nodes {
            for local in 0..r.local {
                if !r.joined.contains_key(&(node * r.local + local)) {
                    missing.push(member_name(node, local));
                }
            }
        }
        (r.joined.len(), r.world() as usize, missing)
    }
}

async fn read_frame(stream: &mut TcpStream) -> Result<Request, (ErrorKind, String)> {
    read_frame_max(stream, MAX_FRAME_BYTES).await
}

/// A frame of at most `max` bytes (checked before anything is allocated).
async fn read_frame_max(stream: &mut TcpStream, max: u32) -> Result<Request, (ErrorKind, String)> {
    let len = stream
        .read_u32()
        .await
        .map_err(|e| (ErrorKind::Protocol, format!("read: {e}")))?;
    if len > max {
        return Err((
            ErrorKind::TooLarge,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| (ErrorKind::Protocol, format!("read: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| (ErrorKind::Malformed, e.to_string()))
}

async fn write(stream: &mut TcpStream, resp: &Response) -> bool {
    stream.write_all(&proto::wire::encode(resp)).await.is_ok()
}

/// Record a refusal: the first REFUSALS_LOGGED as events of their own,
/// the rest counted for the periodic summary (a flood must not grow
/// events.jsonl, or the event queue, without bound).
fn count_refusal(shared: &Shared, peer: SocketAddr, kind: ErrorKind, message: String) {
    let mut r = shared.refusals.lock().unwrap();
    r.total += 1;
    if r.total <= REFUSALS_LOGGED {
        drop(r);
        let _ = shared.events.send(RdzvEvent::Refused {
            peer,
            kind,
            message,
        });
    } else {
        let name = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{kind:?}"));
        *r.pending.entry(name).or_default() += 1;
    }
}

async fn refuse(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
    kind: ErrorKind,
    message: String,
) {
    count_refusal(shared, peer, kind, message.clone());
    let _ = write(stream, &Response::Error { kind, message }).await;
}

/// Check version, token and round of a greeting; returns the rank.
fn admit(
    shared: &Shared,
    version: u32,
    token: &str,
    round: u64,
    node: u32,
    local: u32,
) -> Result<(u64, u32), (ErrorKind, String)> {
    credentials(shared, version, token)?;
    let r = shared.round.lock().unwrap();
    if round != r.round {
        return Err((
            ErrorKind::StaleRound,
            format!("round {round} is not the current round {}", r.round),
        ));
    }
    if node >= r.nodes || local >= r.local {
        return Err((
            ErrorKind::UnknownMember,
            format!(
                "{} is not a member of a {}x{} job",
                member_name(node, local),
                r.nodes,
                r.local
            ),
        ));
    }
    Ok((r.round, node * r.local + local))
}

/// The protocol version and the run's token.
fn credentials(shared: &Shared, version: u32, token: &str) -> Result<(), (ErrorKind, String)> {
    if version != PROTOCOL_VERSION {
        return Err((
            ErrorKind::BadVersion,
            format!("protocol version {version} is not {PROTOCOL_VERSION}"),
        ));
    }
    // Constant-time comparison is not needed on loopback, but it is cheap.
    let ok = token.len() == shared.token.len()
        && token
            .bytes()
            .zip(shared.token.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0;
    if !ok {
        return Err((ErrorKind::BadToken, "wrong rendezvous token".into()));
    }
    Ok(())
}

async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, slot: Pending) {
    let greeting = read_frame_max(&mut stream, MAX_GREETING_BYTES);
    let first = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, greeting).await {
        Ok(Ok(req)) => req,
        Ok(Err((kind, msg))) => return refuse(&shared, &mut stream, peer, kind, msg).await,
        Err(_) => {
            return refuse(
                &shared,
                &mut stream,
                peer,
                ErrorKind::Timeout,
                "no greeting in time".into(),
            )
            .await
        }
    };
    let c = Conn {
        shared: &shared,
        peer,
    };
    match first {
        Request::Join {
            version,
            token,
            round,
            node_rank,
            local_rank,
            ring_addr,
            pid,
            preflight,
        } => {
            let (round, rank) = match admit(&shared, version, &token, round, node_rank, local_rank)
            {
                Ok(v) => v,
                Err((k, m)) => return refuse(&shared, &mut stream, peer, k, m).await,
            };
            // Authenticated: no longer counts against the limits.
            drop(slot);
            let member = Member {
                round,
                rank,
                node_rank,
                local_rank,
            };
            c.join(stream, member, ring_addr, pid, preflight).await
        }
        Request::HeartbeatHello {
            version,
            token,
            round,
            node_rank,
            local_rank,
        } => {
            let (round, rank) = match admit(&shared, version, &token, round, node_rank, local_rank)
            {
                Ok(v) => v,
                Err((k, m)) => return refuse(&shared, &mut stream, peer, k, m).await,
            };
            drop(slot);
            c.heartbeats(stream, round, rank).await
        }
        Request::AgentHello {
            version,
            token,
            node,
        } => {
            // Any round: an agent serves every attempt of the run.
            if let Err((k, m)) = credentials(&shared, version, &token) {
                return refuse(&shared, &mut stream, peer, k, m).await;
            }
            drop(slot);
            c.agent(stream, node).await
        }
        other => {
            let m = format!(
                "first message must be join or heartbeat_hello, got {}",
                kind_of(&other)
            );
            refuse(&shared, &mut stream, peer, ErrorKind::Protocol, m).await
        }
    }
}

/// An authenticated connection: what its kind of greeting leads to.
struct Conn<'a> {
    shared: &'a Arc<Shared>,
    peer: SocketAddr,
}

/// Who joined: the round and rank admitted, and the member's names.
struct Member {
    round: u64,
    rank: u32,
    node_rank: u32,
    local_rank: u32,
}

impl Conn<'_> {
    /// A worker joins the round: it waits for the welcome (when every rank
    /// is in, and the launcher released it), then the control loop.
    async fn join(
        &self,
        mut stream: TcpStream,
        m: Member,
        ring_addr: String,
        pid: u32,
        preflight: Option<proto::wire::PreflightFigures>,
    ) {
        let (shared, peer) = (self.shared, self.peer);
        let Member {
            round,
            rank,
            node_rank,
            local_rank,
        } = m;
        let joined = {
            let mut r = shared.round.lock().unwrap();
            if let std::collections::btree_map::Entry::Vacant(slot) = r.joined.entry(rank) {
                slot.insert(ring_addr);
                let (tx, rx) = oneshot::channel();
                r.waiting.push(tx);
                let _ = shared.events.send(RdzvEvent::Joined {
                    round,
                    rank,
                    pid,
                    preflight,
                });
                if r.joined.len() as u32 == r.world() {
                    if !r.hold {
                        r.welcome_all();
                    }
                    let _ = shared.events.send(RdzvEvent::AllJoined { round });
                }
                Some(rx)
            } else {
                None
            }
        };
        let Some(rx) = joined else {
            let m = format!(
                "{} already joined round {round}",
                member_name(node_rank, local_rank)
            );
            return refuse(shared, &mut stream, peer, ErrorKind::Duplicate, m).await;
        };
        let welcome = match rx.await {
            Ok(Response::Welcome {
                version,
                round,
                world_size,
                ring_addrs,
                state_from,
                ..
            }) => Response::Welcome {
                version,
                round,
                rank,
                world_size,
                ring_addrs,
                state_from,
            },
            Ok(other) => other,
            Err(_) => return,
        };
        let is_welcome = matches!(welcome, Response::Welcome { .. });
        if !write(&mut stream, &welcome).await || !is_welcome {
            return;
        }
        control_loop(shared, &mut stream, peer, round, rank).await;
    }

    /// A worker's heartbeat connection: each beat to the launcher, the
    /// round's notice (if any) back.
    async fn heartbeats(&self, mut stream: TcpStream, round: u64, rank: u32) {
        let (shared, peer) = (self.shared, self.peer);
        if !write(&mut stream, &Response::Ok).await {
            return;
        }
        let _ = shared
            .events
            .send(RdzvEvent::HeartbeatStarted { round, rank });
        loop {
            match read_frame(&mut stream).await {
                Ok(Request::Heartbeat(beat)) => {
                    // A survivor's beats name the round it rejoined.
                    let round = beat.round.unwrap_or(round);
                    let _ = shared
                        .events
                        .send(RdzvEvent::Heartbeat { round, rank, beat });
                    let reply = {
                        let r = shared.round.lock().unwrap();
                        match &r.notice {
                            Some((deadline, reason, stop_step)) if r.round == round => {
                                Response::Notice {
                                    deadline_unix_ms: *deadline,
                                    reason: reason.clone(),
                                    stop_step: *stop_step,
                                }
                            }
                            _ => Response::Ok,
                        }
                    };
                    if !write(&mut stream, &reply).await {
                        break;
                    }
                }
                Ok(other) => {
                    refuse(
                        shared,
                        &mut stream,
                        peer,
                        ErrorKind::Protocol,
                        format!("expected a heartbeat, got {}", kind_of(&other)),
                    )
                    .await;
                    break;
                }
                Err((ErrorKind::Protocol, _)) => break, // closed
                Err((k, m)) => {
                    refuse(shared, &mut stream, peer, k, m).await;
                    break;
                }
            }
        }
        let _ = shared
            .events
            .send(RdzvEvent::HeartbeatEnded { round, rank });
    }

    /// A node agent: the launcher's commands go out through a channel, its
    /// reports come in as events, until the connection ends.
    async fn agent(&self, mut stream: TcpStream, node: u32) {
        let shared = self.shared;
        let (tx, mut rx) = mpsc::unbounded_channel::<Response>();
        shared.agents.lock().unwrap().insert(node, tx);
        if !write(&mut stream, &Response::Ok).await {
            shared.agents.lock().unwrap().remove(&node);
            return;
        }
        let _ = shared.events.send(RdzvEvent::AgentJoined { node });
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                let frame = proto::wire::encode(&cmd);
                if wr.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        loop {
            let mut len = [0u8; 4];
            if rd.read_exact(&mut len).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes(len);
            if len > MAX_FRAME_BYTES {
                break;
            }
            let mut body = vec![0u8; len as usize];
            if rd.read_exact(&mut body).await.is_err() {
                break;
            }
            match serde_json::from_slice::<Request>(&body) {
                Ok(report) => {
                    let _ = shared.events.send(RdzvEvent::AgentReport { node, report });
                }
                Err(_) => break,
            }
        }
        writer.abort();
        shared.agents.lock().unwrap().remove(&node);
        let _ = shared.events.send(RdzvEvent::AgentLost { node });
    }
}

fn kind_of(r: &Request) -> &'static str {
    match r {
        Request::Join { .. } => "join",
        Request::HeartbeatHello { .. } => "heartbeat_hello",
        Request::Heartbeat(_) => "heartbeat",
        Request::Barrier { .. } => "barrier",
        Request::KvSet { .. } => "kv_set",
        Request::KvGet { .. } => "kv_get",
        Request::Result { .. } => "result",
        Request::Park => "park",
        Request::AgentHello { .. } => "agent_hello",
        Request::AgentStarted { .. } => "agent_started",
        Request::AgentExited { .. } => "agent_exited",
        Request::AgentNotice => "agent_notice",
        Request::AgentLog { .. } => "agent_log",
    }
}

/// Requests of a joined worker, answered in order.
async fn control_loop(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
    round: u64,
    rank: u32,
) {
    loop {
        let req = match read_frame(stream).await {
            Ok(r) => r,
            Err((ErrorKind::Protocol, _)) => return,
            Err((k, m)) => return refuse(shared, stream, peer, k, m).await,
        };
        let reply = match req {
            Request::Barrier { name } => {
                let rx = {
                    let mut r = shared.round.lock().unwrap();
                    if r.round != round {
                        Err(())
                    } else {
                        let world = r.world() as usize;
                        let (tx, rx) = oneshot::channel();
                        let waiters = r.barriers.entry(name.clone()).or_default();
                        waiters.push(tx);
                        if waiters.len() == world {
                            for w in r.barriers.remove(&name).unwrap_or_default() {
                                let _ = w.send(Response::Ok);
                            }
                        }
                        Ok(rx)
                    }
                };
                match rx {
                    Ok(rx) => rx.await.unwrap_or(Response::Error {
                        kind: ErrorKind::StaleRound,
                        message: "round over".into(),
                    }),
                    Err(()) => Response::Error {
                        kind: ErrorKind::StaleRound,
                        message: format!("round {round} is over"),
                    },
                }
            }
            Request::KvSet { key, value } => {
                let mut r = shared.round.lock().unwrap();
                if r.round != round {
                    Response::Error {
                        kind: ErrorKind::StaleRound,
                        message: format!("round {round} is over"),
                    }
                } else {
                    for w in r.kv_waiters.remove(&key).unwrap_or_default() {
                        let _ = w.send(Response::Value {
                            value: Some(value.clone()),
                        });
                    }
                    r.kv.insert(key, value);
                    Response::Ok
                }
            }
            Request::KvGet { key, wait_ms } => {
                let rx = {
                    let mut r = shared.round.lock().unwrap();
                    if r.round != round {
                        Err(Response::Error {
                            kind: ErrorKind::StaleRound,
                            message: format!("round {round} is over"),
                        })
                    } else if let Some(v) = r.kv.get(&key) {
                        Err(Response::Value {
                            value: Some(v.clone()),
                        })
                    } else if wait_ms == 0 {
                        Err(Response::Value { value: None })
                    } else {
                        let (tx, rx) = oneshot::channel();
                        r.kv_waiters.entry(key).or_default().push(tx);
                        Ok(rx)
                    }
                };
                match rx {
                    Err(resp) => resp,
                    Ok(rx) => {
                        match tokio::time::timeout(Duration::from_millis(wait_ms), rx).await {
                            Ok(Ok(resp)) => resp,
                            Ok(Err(_)) | Err(_) => Response::Value { value: None },
                        }
                    }
                }
            }
            Request::Result { payload } => {
                let _ = shared.events.send(RdzvEvent::Result {
                    round,
                    rank,
                    payload,
                });
                Response::Ok
            }
            Request::Park => {
                let (tx, rx) = oneshot::channel();
                shared.parked.lock().unwrap().insert(rank, tx);
                let _ = shared.events.send(RdzvEvent::Parked { round, rank });
                // The connection ends with the reply: a rejoining rank
                // greets the next round on a new one.
                let reply = rx.await.unwrap_or(Response::Exit);
                let _ = write(stream, &reply).await;
                return;
            }
            other => Response::Error {
                kind: ErrorKind::Protocol,
                message: format!("unexpected {} after join", kind_of(&other)),
            },
        };
        if !write(stream, &reply).await {
            return;
        }
    }
}
