//! A node agent (a Kubernetes pod k > 0, an EC2 instance's `ringmaster
//! agent`, a `run --node-rank K>0`, an `ssh` host's session): the leader's
//! commands in, its workers' starts, exits, logs and the node's SIGTERM
//! out, and its workers' rendezvous connections relayed on its one
//! connection.

/// What an agent is told.
pub struct AgentOptions<'a> {
    /// The leader's rendezvous, host:port.
    pub leader: &'a str,
    /// The run's token or the node's single-use one.
    pub token: &'a str,
    pub node: u32,
    /// Where this node's workers listen (none: this side of the
    /// connection).
    pub addr: Option<String>,
    pub worker_bin: &'a std::path::Path,
    /// Where the workers' logs go.
    pub log_dir: &'a std::path::Path,
    /// How long to keep trying to reach the leader.
    pub wait: std::time::Duration,
    /// End (the workers first: SIGTERM, SIGKILL 5 s later) when standard
    /// input closes: an `ssh` session's agent, so that a dropped session
    /// leaves nothing running on its host.
    pub until_stdin_closes: bool,
    /// Remove `log_dir` once the leader ends the run (every line was
    /// shipped to it): an ssh host's or a Slurm node's temporary folder.
    pub remove_logs: bool,
}

/// A node agent: connect to the leader's rendezvous, start the workers it
/// asks for (their output in `log_dir`), report their starts and exits,
/// pass a SIGTERM (the kubelet's, a shutdown's) on as a notice, and end
/// with the run's exit code when the leader says so (rendezvous-failed if
/// the leader goes away, or standard input closes with
/// `until_stdin_closes`: every worker here is ended first).
pub async fn run_agent(o: AgentOptions<'_>) -> Result<i32, crate::error::LaunchError> {
    let AgentOptions {
        leader,
        token,
        node,
        addr,
        worker_bin,
        log_dir,
        wait,
        until_stdin_closes,
        remove_logs,
    } = o;
    use crate::error::LaunchError;
    use proto::wire::{Request, Response, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    std::fs::create_dir_all(log_dir).map_err(LaunchError::system(format!(
        "cannot create {}",
        log_dir.display()
    )))?;
    let until = std::time::Instant::now() + wait;
    let stream = loop {
        match tokio::net::TcpStream::connect(leader).await {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() >= until => {
                return Err(LaunchError::Io(format!(
                    "cannot reach the leader at {leader}: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    };
    let mut stream = stream;
    let hello = proto::wire::encode(&Request::AgentHello {
        version: PROTOCOL_VERSION,
        token: token.to_string(),
        node,
        addr,
        relay: true,
    });
    stream
        .write_all(&hello)
        .await
        .map_err(LaunchError::system(format!("leader {leader}")))?;
    async fn frame(rd: &mut (impl AsyncReadExt + Unpin)) -> Option<Response> {
        let mut len = [0u8; 4];
        rd.read_exact(&mut len).await.ok()?;
        let mut body =
            vec![0u8; u32::from_be_bytes(len).min(proto::wire::MAX_FRAME_BYTES) as usize];
        rd.read_exact(&mut body).await.ok()?;
        serde_json::from_slice(&body).ok()
    }
    let refused = |r: Option<Response>| match r {
        Some(Response::Error { kind, message }) => LaunchError::Io(format!(
            "the leader refused this agent ({kind:?}): {message}"
        )),
        other => LaunchError::Io(format!("unexpected reply from the leader: {other:?}")),
    };
    // Admitted (a plain frame), then registered (on the relay's stream 0).
    match frame(&mut stream).await {
        Some(Response::Ok) => {}
        other => return Err(refused(other)),
    }
    let (relay, control, _) = crate::relay::Relay::start(stream, crate::relay::Side::Agent);
    let (mut rd, mut wr) = tokio::io::split(control);
    match frame(&mut rd).await {
        Some(Response::Ok) => {}
        other => return Err(refused(other)),
    }
    // This node's workers reach the leader through this agent: each of
    // their connections is a stream of the agent's one connection.
    let local = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(LaunchError::system(
            "cannot listen for this node's workers".to_string(),
        ))?;
    let endpoint = local
        .local_addr()
        .map_err(|e| LaunchError::Internal(e.to_string()))?
        .to_string();
    let relay2 = relay.clone();
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = local.accept().await {
            match relay2.open() {
                Ok(vs) => {
                    tokio::spawn(crate::relay::pipe(tcp, vs));
                }
                Err(_) => return,
            }
        }
    });
    eprintln!(
        "[ringmaster agent {node}] connected to {leader}; this node's workers reach it through {endpoint} (relayed on this one connection)"
    );
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
    let writer = tokio::spawn(async move {
        while let Some(r) = out_rx.recv().await {
            if wr.write_all(&proto::wire::encode(&r)).await.is_err() {
                return;
            }
        }
    });
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| LaunchError::Internal(e.to_string()))?;
    let mut groups: std::collections::BTreeMap<u32, u32> = Default::default();
    // Standard input's end (an ssh session gone), when asked to watch it.
    // (A thread of its own, never joined: it blocks in read until then.)
    let mut stdin_closed = Box::pin(async move {
        if !until_stdin_closes {
            return std::future::pending().await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        let _ = rx.await;
    });
    let mut shut_down = false;
    let code = loop {
        tokio::select! {
            () = &mut stdin_closed => {
                eprintln!("[ringmaster agent {node}] standard input closed (the session is gone): ending this node's workers");
                for pg in groups.values() {
                    crate::process::signal_group(*pg, nix::sys::signal::Signal::SIGTERM);
                }
                let pids: Vec<u32> = groups.values().copied().collect();
                crate::process::wait_gone(&pids, std::time::Duration::from_secs(5)).await;
                break proto::exit::LauncherExit::Interrupted.code();
            }
            cmd = frame(&mut rd) => match cmd {
                Some(Response::Spawn { rank, mut env }) => {
                    for (k, v) in env.iter_mut() {
                        if k == proto::env::RDZV_ENDPOINT {
                            v.clone_from(&endpoint);
                        }
                    }
                    // The launcher left the GPU to the scheduler (a Slurm
                    // step's --gres): local rank k gets this agent's k-th.
                    if !env.iter().any(|(k, _)| k == proto::env::CUDA_VISIBLE_DEVICES) {
                        let local = env
                            .iter()
                            .find(|(k, _)| k == proto::env::LOCAL_RANK)
                            .and_then(|(_, v)| v.parse::<u32>().ok());
                        let mine = std::env::var(proto::env::CUDA_VISIBLE_DEVICES).ok();
                        if let Some(gpu) = local.and_then(|l| crate::sessions::gpu_of_local_rank(mine.as_deref(), l)) {
                            env.push((proto::env::CUDA_VISIBLE_DEVICES.to_string(), gpu));
                        }
                    }
                    let log = log_dir.join(format!("rank-{rank}.log"));
                    let attempt = env
                        .iter()
                        .find(|(k, _)| k == proto::env::RESTART_COUNT)
                        .and_then(|(_, v)| v.parse::<u64>().ok());
                    match crate::process::spawn_worker(worker_bin, &env, &log, None) {
                        Ok(mut child) => {
                            let pid = child.id().unwrap_or(0);
                            groups.insert(rank, pid);
                            let _ = out_tx.send(Request::AgentStarted { rank, pid });
                            let tx = out_tx.clone();
                            tokio::spawn(async move {
                                use std::os::unix::process::ExitStatusExt;
                                // The worker's log goes to the leader as
                                // it grows, the rest when it ends, then the
                                // exit.
                                let mut sent = 0usize;
                                let mut ship = |tx: &tokio::sync::mpsc::UnboundedSender<Request>| {
                                    let text = std::fs::read(&log).unwrap_or_default();
                                    let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                                    if end > sent {
                                        let lines = String::from_utf8_lossy(&text[sent..end])
                                            .lines()
                                            .map(String::from)
                                            .collect();
                                        sent = end;
                                        let _ = tx.send(Request::AgentLog { rank, lines });
                                    }
                                };
                                let status = loop {
                                    tokio::select! {
                                        s = child.wait() => break s,
                                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => ship(&tx),
                                    }
                                };
                                ship(&tx);
                                let (code, signal) = match status {
                                    Ok(s) => (s.code(), s.signal()),
                                    Err(_) => (Some(-1), None),
                                };
                                let _ = tx.send(Request::AgentExited { rank, code, signal, attempt });
                            });
                        }
                        Err(e) => {
                            eprintln!("[ringmaster agent {node}] cannot start rank {rank}: {e}");
                            let _ = out_tx.send(Request::AgentExited { rank, code: Some(proto::exit::WorkerExit::Internal.code()), signal: None, attempt });
                        }
                    }
                }
                Some(Response::Signal { rank, signal }) => {
                    if let (Some(pg), Ok(sig)) = (groups.get(&rank), nix::sys::signal::Signal::try_from(signal)) {
                        crate::process::signal_group(*pg, sig);
                    }
                }
                Some(Response::Shutdown { code }) => {
                    shut_down = true;
                    break code;
                }
                Some(_) => {}
                None => {
                    eprintln!("[ringmaster agent {node}] the leader is gone");
                    break proto::exit::LauncherExit::RendezvousFailed.code();
                }
            },
            _ = sigterm.recv() => {
                eprintln!("[ringmaster agent {node}] SIGTERM: asking the leader for a checkpoint");
                let _ = out_tx.send(Request::AgentNotice);
            }
        }
    };
    for pg in groups.values() {
        crate::process::signal_group(*pg, nix::sys::signal::Signal::SIGKILL);
    }
    drop(out_tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    accept.abort();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), relay.flush()).await;
    // Before the connection closes: the leader waits for its agents to go
    // before it ends, so nothing of the run is left once it has.
    if remove_logs && shut_down {
        let _ = std::fs::remove_dir_all(log_dir);
    }
    drop(relay);
    Ok(code)
}
