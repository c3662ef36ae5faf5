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

use crate::error::LaunchError;
use crate::relay::{Relay, VirtualStream};
use proto::wire::{Request, Response, PROTOCOL_VERSION};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;

/// A node agent: connect to the leader's rendezvous, start the workers it
/// asks for (their output in `log_dir`), report their starts and exits,
/// pass a SIGTERM (the kubelet's, a shutdown's) on as a notice, and end
/// with the run's exit code when the leader says so (rendezvous-failed if
/// the leader goes away, or standard input closes with
/// `until_stdin_closes`: every worker here is ended first).
pub async fn run_agent(o: AgentOptions<'_>) -> Result<i32, LaunchError> {
    let node = o.node;
    std::fs::create_dir_all(o.log_dir).map_err(LaunchError::system(format!(
        "cannot create {}",
        o.log_dir.display()
    )))?;
    let (relay, control) = connect(&o).await?;
    let (endpoint, accept) = relay_workers(&relay).await?;
    eprintln!(
        "[ringmaster agent {node}] connected to {}; this node's workers reach it through {endpoint} (relayed on this one connection)",
        o.leader
    );
    let (mut rd, mut wr) = tokio::io::split(control);
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
    let gpus = std::env::var(proto::env::CUDA_VISIBLE_DEVICES).ok();
    let mut groups: std::collections::BTreeMap<u32, u32> = Default::default();
    let mut stdin_closed = Box::pin(stdin_closed(o.until_stdin_closes));
    let mut shut_down = false;
    let code = loop {
        tokio::select! {
            () = &mut stdin_closed => {
                eprintln!("[ringmaster agent {node}] standard input closed (the session is gone): ending this node's workers");
                for pg in groups.values() {
                    crate::process::signal_group(*pg, nix::sys::signal::Signal::SIGTERM);
                }
                let pids: Vec<u32> = groups.values().copied().collect();
                crate::process::wait_gone(&pids, Duration::from_secs(5)).await;
                break proto::exit::LauncherExit::Interrupted.code();
            }
            cmd = frame(&mut rd) => match cmd {
                Some(Response::Spawn { worker, mut env }) => {
                    worker_env(&mut env, &endpoint, gpus.as_deref());
                    if let Some(pid) = start_worker(&o, worker, &env, &out_tx) {
                        groups.insert(worker, pid);
                    }
                }
                Some(Response::Signal { worker, signal }) => {
                    if let (Some(pg), Ok(sig)) = (groups.get(&worker), nix::sys::signal::Signal::try_from(signal)) {
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
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    accept.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), relay.flush()).await;
    // Before the connection closes: the leader waits for its agents to go
    // before it ends, so nothing of the run is left once it has.
    if o.remove_logs && shut_down {
        let _ = std::fs::remove_dir_all(o.log_dir);
    }
    drop(relay);
    Ok(code)
}

/// One frame from the leader (None: the connection ended or spoke
/// nonsense).
async fn frame(rd: &mut (impl AsyncReadExt + Unpin)) -> Option<Response> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len).min(proto::wire::MAX_FRAME_BYTES) as usize];
    rd.read_exact(&mut body).await.ok()?;
    serde_json::from_slice(&body).ok()
}

/// Reach the leader (retrying until `wait`), greet it as a relaying agent:
/// admitted (a plain frame), then registered (on the relay's stream 0).
async fn connect(o: &AgentOptions<'_>) -> Result<(Relay, VirtualStream), LaunchError> {
    let until = std::time::Instant::now() + o.wait;
    let mut stream = loop {
        match tokio::net::TcpStream::connect(o.leader).await {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() >= until => {
                return Err(LaunchError::Io(format!(
                    "cannot reach the leader at {}: {e}",
                    o.leader
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let hello = proto::wire::encode(&Request::AgentHello {
        version: PROTOCOL_VERSION,
        token: o.token.to_string(),
        node: o.node,
        addr: o.addr.clone(),
        relay: true,
    });
    stream
        .write_all(&hello)
        .await
        .map_err(LaunchError::system(format!("leader {}", o.leader)))?;
    let refused = |r: Option<Response>| match r {
        Some(Response::Error { kind, message }) => LaunchError::Io(format!(
            "the leader refused this agent ({kind:?}): {message}"
        )),
        other => LaunchError::Io(format!("unexpected reply from the leader: {other:?}")),
    };
    match frame(&mut stream).await {
        Some(Response::Ok) => {}
        other => return Err(refused(other)),
    }
    let (relay, mut control, _) = Relay::start(stream, crate::relay::Side::Agent);
    match frame(&mut control).await {
        Some(Response::Ok) => Ok((relay, control)),
        other => Err(refused(other)),
    }
}

/// This node's workers reach the leader through this agent: a listener on
/// loopback whose every connection becomes a stream of the relay. Its
/// address, and the task accepting.
async fn relay_workers(
    relay: &Relay,
) -> Result<(String, tokio::task::JoinHandle<()>), LaunchError> {
    let local = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(LaunchError::system(
            "cannot listen for this node's workers".to_string(),
        ))?;
    let endpoint = local
        .local_addr()
        .map_err(|e| LaunchError::Internal(e.to_string()))?
        .to_string();
    let relay = relay.clone();
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = local.accept().await {
            match relay.open() {
                Ok(vs) => {
                    tokio::spawn(crate::relay::pipe(tcp, vs));
                }
                Err(_) => return,
            }
        }
    });
    Ok((endpoint, accept))
}

/// A worker's environment as this agent starts it: the rendezvous is the
/// agent's relay; where the launcher left the GPU to the scheduler (a
/// Slurm step's --gres), local rank k gets entry k of the agent's own
/// CUDA_VISIBLE_DEVICES (`gpus`).
fn worker_env(env: &mut Vec<(String, String)>, endpoint: &str, gpus: Option<&str>) {
    for (k, v) in env.iter_mut() {
        if k == proto::env::RDZV_ENDPOINT {
            *v = endpoint.to_string();
        }
    }
    if env
        .iter()
        .any(|(k, _)| k == proto::env::CUDA_VISIBLE_DEVICES)
    {
        return;
    }
    let local = env
        .iter()
        .find(|(k, _)| k == proto::env::LOCAL_RANK)
        .and_then(|(_, v)| v.parse::<u32>().ok());
    if let Some(gpu) = local.and_then(|l| crate::sessions::gpu_of_local_rank(gpus, l)) {
        env.push((proto::env::CUDA_VISIBLE_DEVICES.to_string(), gpu));
    }
}

/// Start the leader's worker `worker` (its id, not a rank: a survivor's
/// rank may change, its id does not): its start reported, its log shipped
/// to the leader as it grows (every 0.5 s, the rest at its end), then its
/// exit. Its process group, or None when it could not start (reported as
/// an exit).
fn start_worker(
    o: &AgentOptions<'_>,
    worker: u32,
    env: &[(String, String)],
    out: &UnboundedSender<Request>,
) -> Option<u32> {
    // Named by the rank it starts as (a pod's folder keeps these).
    let rank = env
        .iter()
        .find(|(k, _)| k == proto::env::RANK)
        .map_or_else(|| format!("worker-{worker}"), |(_, r)| format!("rank-{r}"));
    let log = o.log_dir.join(format!("{rank}.log"));
    let mut child = match crate::process::spawn_worker(o.worker_bin, env, &log, None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "[ringmaster agent {}] cannot start worker {worker}: {e}",
                o.node
            );
            let _ = out.send(Request::AgentExited {
                worker,
                code: Some(proto::exit::WorkerExit::Internal.code()),
                signal: None,
            });
            return None;
        }
    };
    let pid = child.id().unwrap_or(0);
    let _ = out.send(Request::AgentStarted { worker, pid });
    let tx = out.clone();
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        let mut sent = 0usize;
        let mut ship = |tx: &UnboundedSender<Request>| {
            let text = std::fs::read(&log).unwrap_or_default();
            let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if end > sent {
                let lines = String::from_utf8_lossy(&text[sent..end])
                    .lines()
                    .map(String::from)
                    .collect();
                sent = end;
                let _ = tx.send(Request::AgentLog { worker, lines });
            }
        };
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                _ = tokio::time::sleep(Duration::from_millis(500)) => ship(&tx),
            }
        };
        ship(&tx);
        let (code, signal) = match status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (Some(-1), None),
        };
        let _ = tx.send(Request::AgentExited {
            worker,
            code,
            signal,
        });
    });
    Some(pid)
}

/// Standard input's end (an ssh session or a Slurm step gone), when asked
/// to watch it; never otherwise. (A thread of its own, never joined: it
/// blocks in read until then.)
async fn stdin_closed(watch: bool) {
    if !watch {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_environment_points_at_the_relay_and_gets_its_gpu() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut e = env(&[
            ("RINGMASTER_RDZV_ENDPOINT", "10.0.0.1:4000"),
            ("LOCAL_RANK", "1"),
        ]);
        worker_env(&mut e, "127.0.0.1:5000", Some("4,5"));
        assert_eq!(
            e,
            env(&[
                ("RINGMASTER_RDZV_ENDPOINT", "127.0.0.1:5000"),
                ("LOCAL_RANK", "1"),
                ("CUDA_VISIBLE_DEVICES", "5")
            ])
        );
        // The launcher's own choice stands; no list, nothing added.
        let mut e = env(&[("LOCAL_RANK", "1"), ("CUDA_VISIBLE_DEVICES", "7")]);
        worker_env(&mut e, "x", Some("4,5"));
        assert_eq!(
            e,
            env(&[("LOCAL_RANK", "1"), ("CUDA_VISIBLE_DEVICES", "7")])
        );
        let mut e = env(&[("LOCAL_RANK", "1")]);
        worker_env(&mut e, "x", None);
        assert_eq!(e, env(&[("LOCAL_RANK", "1")]));
    }
}
