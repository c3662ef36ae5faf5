//! Serving one connection: its greeting read under the unauthenticated
//! limits, then a worker's join and control requests, its heartbeats, or a
//! node agent's reports; refusals counted and summarised.

use super::*;

pub(super) async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
) -> Result<Request, (ErrorKind, String)> {
    read_frame_max(stream, MAX_FRAME_BYTES).await
}

/// A frame of at most `max` bytes (checked before anything is allocated).
pub(super) async fn read_frame_max(
    stream: &mut (impl AsyncReadExt + Unpin),
    max: u32,
) -> Result<Request, (ErrorKind, String)> {
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

pub(super) async fn write(stream: &mut (impl AsyncWriteExt + Unpin), resp: &Response) -> bool {
    stream.write_all(&proto::wire::encode(resp)).await.is_ok()
}

/// Record a refusal: the first REFUSALS_LOGGED as events of their own,
/// the rest counted for the periodic summary (a flood must not grow
/// events.jsonl, or the event queue, without bound).
pub(super) fn count_refusal(shared: &Shared, peer: SocketAddr, kind: ErrorKind, message: String) {
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

pub(super) async fn refuse(
    shared: &Shared,
    stream: &mut (impl AsyncWriteExt + Unpin),
    peer: SocketAddr,
    kind: ErrorKind,
    message: String,
) {
    count_refusal(shared, peer, kind, message.clone());
    let _ = write(stream, &Response::Error { kind, message }).await;
}

/// Check version, token and round of a greeting; returns the rank.
pub(super) fn admit(
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
pub(super) fn credentials(
    shared: &Shared,
    version: u32,
    token: &str,
) -> Result<(), (ErrorKind, String)> {
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

/// Whether `token` is node `node`'s single-use agent token (then used up).
fn take_agent_token(shared: &Shared, node: u32, token: &str) -> bool {
    let mut tokens = shared.agent_tokens.lock().unwrap();
    if tokens.get(&node).is_some_and(|t| t == token) {
        tokens.remove(&node);
        return true;
    }
    false
}

/// A connection the rendezvous serves: a TCP connection, or a stream a
/// node agent relays (`crate::relay`).
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// Serve one connection. `slot`: its place among the unauthenticated
/// connections (none for a relayed stream: its agent's connection was
/// admitted; its own greeting is still checked).
pub(super) async fn serve(
    shared: Arc<Shared>,
    mut stream: impl Stream,
    peer: SocketAddr,
    slot: Option<Pending>,
) {
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
            addr,
            relay,
        } => {
            // Any round: an agent serves every attempt of the run. It
            // shows the run's token or its node's single-use one.
            if !(version == PROTOCOL_VERSION && take_agent_token(&shared, node, &token)) {
                if let Err((k, m)) = credentials(&shared, version, &token) {
                    return refuse(&shared, &mut stream, peer, k, m).await;
                }
            }
            if relay && slot.is_none() {
                let m = "a relay inside a relayed stream".to_string();
                return refuse(&shared, &mut stream, peer, ErrorKind::Protocol, m).await;
            }
            drop(slot);
            // None: the address the agent connected from.
            let addr = addr.unwrap_or_else(|| peer.ip().to_string());
            if relay {
                c.relay(stream, node, addr).await
            } else {
                c.agent(stream, node, addr).await
            }
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
        mut stream: impl Stream,
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
                r.waiting.push((rank, tx));
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
        let Ok(welcome) = rx.await else { return };
        let is_welcome = matches!(welcome, Response::Welcome { .. });
        if !write(&mut stream, &welcome).await || !is_welcome {
            return;
        }
        control_loop(shared, &mut stream, peer, round, rank).await;
    }

    /// A worker's heartbeat connection: each beat to the launcher, the
    /// round's notice back, in the beat's answer and also pushed the
    /// moment the launcher gives it (`notify`), so every rank has the
    /// agreed stop step within milliseconds, not a heartbeat interval.
    async fn heartbeats<S: Stream>(&self, stream: S, round: u64, rank: u32) {
        let (shared, peer) = (self.shared, self.peer);
        let (rd, mut wr) = tokio::io::split(stream);
        if !write(&mut wr, &Response::Ok).await {
            return;
        }
        let _ = shared
            .events
            .send(RdzvEvent::HeartbeatStarted { round, rank });
        // One read in flight at a time, kept across the loop's turns (a
        // read cut off by a notice would lose half a frame).
        async fn next<S: Stream>(
            mut rd: tokio::io::ReadHalf<S>,
        ) -> (tokio::io::ReadHalf<S>, Result<Request, (ErrorKind, String)>) {
            let f = read_frame(&mut rd).await;
            (rd, f)
        }
        let mut read = Box::pin(next(rd));
        let mut notices = shared.notices.subscribe();
        // The round this rank's beats are in and its rank there (a
        // survivor's name the round it rejoined, and its new rank where the
        // world resized), and whether this connection was told its notice.
        let (mut current, mut seat, mut told) = (round, rank, false);
        let notice_for = |current: u64| {
            let r = shared.round.lock().unwrap();
            match &r.notice {
                Some((deadline, reason, stop_step)) if r.round == current => {
                    Some(Response::Notice {
                        deadline_unix_ms: *deadline,
                        reason: reason.clone(),
                        stop_step: *stop_step,
                    })
                }
                _ => None,
            }
        };
        loop {
            tokio::select! {
                (rd, f) = &mut read => match f {
                    Ok(Request::Heartbeat(beat)) => {
                        read.set(next(rd));
                        let now_in = beat.round.unwrap_or(round);
                        if now_in != current {
                            // A survivor in its next round: its notice is new.
                            (current, told) = (now_in, false);
                        }
                        seat = beat.rank.unwrap_or(rank);
                        let _ = shared.events.send(RdzvEvent::Heartbeat {
                            round: current,
                            rank: seat,
                            beat,
                        });
                        let reply = notice_for(current);
                        told |= reply.is_some();
                        if !write(&mut wr, &reply.unwrap_or(Response::Ok)).await {
                            break;
                        }
                    }
                    Ok(other) => {
                        let m = format!("expected a heartbeat, got {}", kind_of(&other));
                        refuse(shared, &mut wr, peer, ErrorKind::Protocol, m).await;
                        break;
                    }
                    Err((ErrorKind::Protocol, _)) => break, // closed
                    Err((k, m)) => {
                        refuse(shared, &mut wr, peer, k, m).await;
                        break;
                    }
                },
                Ok(()) = notices.changed(), if !told => {
                    if let Some(n) = notice_for(current) {
                        told = true;
                        if !write(&mut wr, &n).await {
                            break;
                        }
                    }
                }
            }
        }
        let _ = shared.events.send(RdzvEvent::HeartbeatEnded {
            round: current,
            rank: seat,
        });
    }

    /// A node agent: the launcher's commands go out through a channel, its
    /// reports come in as events, until the connection ends.
    async fn agent(&self, mut stream: impl Stream, node: u32, addr: String) {
        let shared = self.shared;
        let (tx, mut rx) = mpsc::unbounded_channel::<Response>();
        let mine = tx.clone();
        // Whether this connection is still node `node`'s agent (a replaced
        // node's new agent takes the place; the old one was dismissed).
        let current = |mine: &mpsc::UnboundedSender<Response>| {
            shared
                .agents
                .lock()
                .unwrap()
                .get(&node)
                .is_some_and(|a| a.tx.same_channel(mine))
        };
        let serial = shared
            .next_agent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.agents.lock().unwrap().insert(
            node,
            Agent {
                tx,
                addr: addr.clone(),
                serial,
            },
        );
        if !write(&mut stream, &Response::Ok).await {
            if current(&mine) {
                shared.agents.lock().unwrap().remove(&node);
            }
            return;
        }
        let _ = shared.events.send(RdzvEvent::AgentJoined {
            node,
            addr,
            at: std::time::SystemTime::now(),
        });
        let (mut rd, mut wr) = tokio::io::split(stream);
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
                // A dismissed agent's reports are of workers no attempt
                // counts any more.
                Ok(report) if current(&mine) => {
                    let _ = shared.events.send(RdzvEvent::AgentReport { node, report });
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        writer.abort();
        let dismissed = !current(&mine);
        if !dismissed {
            shared.agents.lock().unwrap().remove(&node);
        }
        let _ = shared.events.send(RdzvEvent::AgentLost {
            node,
            agent: serial,
            dismissed,
        });
    }

    /// A node agent whose connection relays its workers' connections: its
    /// `ok` as a plain frame, then relay frames; the agent itself on stream
    /// 0, each stream it opens served as a connection of its own, until the
    /// agent's connection ends (then every relayed stream ends too).
    async fn relay(&self, mut stream: impl Stream, node: u32, addr: String) {
        if !write(&mut stream, &Response::Ok).await {
            return;
        }
        let (relay, control, mut opened) =
            crate::relay::Relay::start(stream, crate::relay::Side::Launcher);
        let (shared, peer) = (self.shared.clone(), self.peer);
        let streams = tokio::spawn(async move {
            while let Some(s) = opened.recv().await {
                tokio::spawn(serve_relayed(shared.clone(), s, peer));
            }
        });
        self.agent(control, node, addr).await;
        streams.abort();
        drop(relay);
    }
}

/// A relayed stream's `serve`, boxed: `serve` of a TCP connection leads
/// here (through `Conn::relay`), and an opaque future cannot contain
/// itself.
fn serve_relayed(
    shared: Arc<Shared>,
    s: crate::relay::VirtualStream,
    peer: SocketAddr,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(serve(shared, s, peer, None))
}

pub(super) fn kind_of(r: &Request) -> &'static str {
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
pub(super) async fn control_loop(
    shared: &Shared,
    stream: &mut impl Stream,
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
