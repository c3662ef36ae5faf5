//! The rendezvous server, hosted by the launcher (never by a worker, so
//! losing a node never loses the store). Length-delimited versioned JSON over
//! TCP. Join needs the run's secret token and the current round; ranks are
//! stable (node order, then local rank). Offers barrier, a round-scoped
//! key-value store, and heartbeats. Every connection runs in its own task and
//! a bad or oversized message closes only that connection.

mod serve;
#[cfg(test)]
mod tests;

use proto::wire::{ErrorKind, Heartbeat, Request, Response, MAX_FRAME_BYTES, PROTOCOL_VERSION};
use serve::*;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
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
        /// Where its workers listen.
        addr: String,
        at: std::time::SystemTime,
    },
    /// A node agent's report (AgentStarted, AgentExited, AgentNotice).
    AgentReport {
        node: u32,
        report: Request,
    },
    /// A node agent's connection ended: agent `agent` (its serial, from
    /// `agent_link`) of node `node`, and the workers it ran with it.
    /// `dismissed`: the launcher had let it go already (`dismiss_agent`:
    /// its session ended, its machine was replaced), so it is no news of
    /// the node.
    AgentLost {
        node: u32,
        agent: u64,
        dismissed: bool,
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
/// Connections not yet authenticated, at most: in all (or, for a larger
/// world, as many as the round's ranks and agents may open at once: two
/// per rank and one per node, since they all connect in the same second),
/// and from one source address. More are closed at once (and counted as
/// refused).
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
    /// The limit in all (MAX_UNAUTHENTICATED, or the round's burst).
    limit: usize,
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
        if u.total >= u.limit.max(MAX_UNAUTHENTICATED) || here >= MAX_UNAUTHENTICATED_PER_SOURCE {
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
    /// Joined ranks waiting for their welcome.
    waiting: Vec<(u32, oneshot::Sender<Response>)>,
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

    /// Welcome every waiting member, each with its ring successor's
    /// address and its successor across nodes (O(1) per rank: no list of
    /// the world).
    fn welcome_all(&mut self) {
        let world = self.world();
        for (rank, w) in self.waiting.drain(..) {
            let next = (rank + 1) % world.max(1);
            let lane_next = (self.nodes > 1 && self.local > 1)
                .then(|| self.joined.get(&((rank + self.local) % world)).cloned())
                .flatten()
                .unwrap_or_default();
            let _ = w.send(Response::Welcome {
                version: PROTOCOL_VERSION,
                round: self.round,
                rank,
                world_size: world,
                ring_next: self.joined.get(&next).cloned().unwrap_or_default(),
                lane_next,
                state_from: self.state_from,
            });
        }
    }
}

/// A connected node agent.
struct Agent {
    tx: mpsc::UnboundedSender<Response>,
    addr: String,
    /// This connection's number in the run (agents of one node differ).
    serial: u64,
}

struct Shared {
    token: String,
    round: Mutex<Round>,
    /// Parked ranks (of any round) waiting for their reply.
    parked: Mutex<BTreeMap<u32, oneshot::Sender<Response>>>,
    /// Connected node agents: where their commands go, and where their
    /// workers listen.
    agents: Mutex<BTreeMap<u32, Agent>>,
    next_agent: std::sync::atomic::AtomicU64,
    /// Single-use agent tokens by node (an EC2 instance's user data holds
    /// its node's; taken when the agent first shows it).
    agent_tokens: Mutex<BTreeMap<u32, String>>,
    events: mpsc::UnboundedSender<RdzvEvent>,
    /// Bumped by `notify`: every heartbeat connection pushes the notice.
    notices: tokio::sync::watch::Sender<u64>,
    unauth: Mutex<Unauthenticated>,
    refusals: Mutex<Refusals>,
}

#[derive(Clone)]
pub struct Rendezvous {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// How many connections may wait to be accepted: a large world's ranks
/// connect in the same second (tokio's `bind` asks for 1,024; the kernel
/// caps this at net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 8192;

async fn listen(bind: &str) -> std::io::Result<TcpListener> {
    let Ok(addr) = bind.parse::<SocketAddr>() else {
        return TcpListener::bind(bind).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
        let listener = listen(bind).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            token,
            round: Mutex::new(Round::default()),
            parked: Mutex::new(BTreeMap::new()),
            agents: Mutex::new(BTreeMap::new()),
            next_agent: std::sync::atomic::AtomicU64::new(0),
            agent_tokens: Mutex::new(BTreeMap::new()),
            events: tx,
            notices: tokio::sync::watch::Sender::new(0),
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
                        tokio::spawn(async move { serve(s, stream, peer, Some(slot)).await });
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
    /// told their round is over. The parked ranks in `kept` (their rank
    /// when they parked, and their rank in this round: another where the
    /// world shrank or grew) are told to rejoin (the lowest broadcasts its
    /// state), every other parked rank to exit.
    pub fn new_round(&self, round: u64, nodes: u32, local: u32, kept: &[(u32, u32)]) {
        let mut r = self.shared.round.lock().unwrap();
        let old = std::mem::take(&mut *r);
        *r = Round {
            round,
            nodes,
            local,
            state_from: kept.iter().map(|(_, new)| *new).min(),
            ..Round::default()
        };
        drop(r);
        // Every rank's two connections and every agent's may arrive in the
        // same second (8,192 ranks met the fixed limit, measured).
        self.shared.unauth.lock().unwrap().limit =
            2 * (nodes as usize) * (local as usize) + nodes as usize;
        let seats: std::collections::HashMap<u32, u32> = kept.iter().copied().collect();
        for (rank, w) in std::mem::take(&mut *self.shared.parked.lock().unwrap()) {
            let _ = w.send(match seats.get(&rank) {
                Some(new) => Response::Rejoin {
                    round,
                    rank: *new,
                    node_rank: new / local.max(1),
                    world_size: nodes * local,
                },
                None => Response::Exit,
            });
        }
        let stale = || Response::Error {
            kind: ErrorKind::StaleRound,
            message: format!("round {} is over", old.round),
        };
        for w in old
            .waiting
            .into_iter()
            .map(|(_, w)| w)
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

    /// A new single-use token for node `node`'s agent (the one before it,
    /// if unused, no longer admits anyone).
    pub fn enroll_agent(&self, node: u32) -> String {
        let t = random_token();
        self.shared
            .agent_tokens
            .lock()
            .unwrap()
            .insert(node, t.clone());
        t
    }

    /// The address node `node`'s connected agent said its workers listen
    /// on.
    pub fn agent_addr(&self, node: u32) -> Option<String> {
        self.shared
            .agents
            .lock()
            .unwrap()
            .get(&node)
            .map(|a| a.addr.clone())
    }

    /// Node `node`'s agent no longer serves the run (its machine is being
    /// replaced): told to shut down, and forgotten, so the next agent of
    /// the node takes its place and nothing the old one says counts.
    pub fn dismiss_agent(&self, node: u32) {
        let old = self.shared.agents.lock().unwrap().remove(&node);
        if let Some(Agent { tx, .. }) = old {
            let _ = tx.send(Response::Shutdown {
                code: proto::exit::LauncherExit::Preempted.code(),
            });
        }
    }

    /// Where node `node`'s agent takes commands, if it is connected.
    pub fn agent(&self, node: u32) -> Option<mpsc::UnboundedSender<Response>> {
        self.agent_link(node).map(|(_, tx)| tx)
    }

    /// Node `node`'s agent, if connected: its serial (what its loss will
    /// name) and where it takes commands.
    pub fn agent_link(&self, node: u32) -> Option<(u64, mpsc::UnboundedSender<Response>)> {
        self.shared
            .agents
            .lock()
            .unwrap()
            .get(&node)
            .map(|a| (a.serial, a.tx.clone()))
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
        // Pushed on every heartbeat connection now, not at its next beat.
        self.shared.notices.send_modify(|n| *n += 1);
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
