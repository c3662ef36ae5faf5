//! Rendezvous client: a control connection for request/response calls and a
//! heartbeat thread on a second connection. The heartbeat connection doubles
//! as the launcher-liveness probe: when it closes, the launcher is gone and
//! the worker kills its own process group (no orphans, ever).

use crate::env::WorkerEnv;
use crate::progress::Progress;
use crate::WorkerError;
use proto::exit::WorkerExit;
use proto::wire::{self, Request, Response, PROTOCOL_VERSION};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(endpoint: &str) -> Result<TcpStream, WorkerError> {
    let addr = endpoint
        .to_socket_addrs()
        .map_err(|e| WorkerError::Rendezvous(format!("bad endpoint {endpoint}: {e}")))?
        .next()
        .ok_or_else(|| {
            WorkerError::Rendezvous(format!("endpoint {endpoint} resolves to nothing"))
        })?;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| WorkerError::Rendezvous(format!("cannot reach {endpoint}: {e}")))?;
    s.set_nodelay(true).ok();
    Ok(s)
}

/// The Welcome a joined worker gets.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub rank: u32,
    pub world_size: u32,
    /// Where the next rank accepts its ring predecessor.
    pub ring_next: String,
    /// Where the same local rank of the next node accepts (empty with one
    /// node or one rank per node).
    pub lane_next: String,
    /// The survivor that broadcasts the kept training state, if any.
    pub state_from: Option<u32>,
}

/// The launcher's word to a parked rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Join the next round with the state kept, in this seat.
    Rejoin(Seat),
    Exit,
}

/// A survivor's place in the round it rejoins: another rank than the last
/// round's where the world shrank or grew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    pub round: u64,
    pub rank: u32,
    pub node_rank: u32,
    pub world_size: u32,
}

impl Seat {
    /// `env` as this seat's: the round, rank, node and world it joins as.
    pub fn take(&self, env: &mut WorkerEnv) {
        env.restart_count = self.round;
        env.rank = self.rank;
        env.node_rank = self.node_rank;
        env.world_size = self.world_size;
    }
}

/// The preflight check's figures when the launcher asked for them,
/// measured once per process. Called before the first connection to the
/// rendezvous: a connection must greet within a few seconds, and the
/// check (a GEMM and a copy) may take longer on a cold GPU.
pub fn preflight_figures(env: &WorkerEnv) -> Option<proto::wire::PreflightFigures> {
    static FIGURES: std::sync::OnceLock<Option<proto::wire::PreflightFigures>> =
        std::sync::OnceLock::new();
    FIGURES
        .get_or_init(|| env.preflight.then(|| crate::preflight::measure(env)))
        .clone()
}

pub struct Control {
    stream: TcpStream,
    endpoint: String,
}

impl Control {
    pub fn connect(env: &WorkerEnv) -> Result<Self, WorkerError> {
        Ok(Control {
            stream: connect(&env.rdzv_endpoint)?,
            endpoint: env.rdzv_endpoint.clone(),
        })
    }

    fn call(&mut self, req: &Request) -> Result<Response, WorkerError> {
        let err = |e: wire::FrameError| WorkerError::Rendezvous(format!("{}: {e}", self.endpoint));
        wire::write_frame(&mut self.stream, req).map_err(err)?;
        let resp: Response = wire::read_frame(&mut self.stream).map_err(err)?;
        if let Response::Error { kind, message } = &resp {
            return Err(WorkerError::Rendezvous(format!(
                "refused ({kind:?}): {message}"
            )));
        }
        Ok(resp)
    }

    /// Join this round; blocks until every rank has joined (or the launcher
    /// gives up on the round).
    pub fn join(&mut self, env: &WorkerEnv, ring_addr: &str) -> Result<Welcome, WorkerError> {
        // The preflight check's figures go with the first join only (a
        // survivor rejoining a later round is not checked again).
        static SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let preflight = preflight_figures(env)
            .filter(|_| !SENT.swap(true, std::sync::atomic::Ordering::Relaxed));
        let req = Request::Join {
            version: PROTOCOL_VERSION,
            token: env.token.clone(),
            round: env.restart_count,
            node_rank: env.node_rank,
            local_rank: env.local_rank,
            ring_addr: ring_addr.to_string(),
            pid: std::process::id(),
            preflight,
        };
        match self.call(&req)? {
            Response::Welcome {
                rank,
                world_size,
                ring_next,
                lane_next,
                state_from,
                ..
            } => {
                if rank != env.rank || world_size != env.world_size {
                    return Err(WorkerError::Rendezvous(format!(
                        "rendezvous assigned rank {rank}/{world_size} but the environment says {}/{}",
                        env.rank, env.world_size
                    )));
                }
                Ok(Welcome {
                    rank,
                    world_size,
                    ring_next,
                    lane_next,
                    state_from,
                })
            }
            other => Err(WorkerError::Rendezvous(format!(
                "unexpected reply to join: {other:?}"
            ))),
        }
    }

    pub fn barrier(&mut self, name: &str) -> Result<(), WorkerError> {
        self.call(&Request::Barrier { name: name.into() })
            .map(|_| ())
    }

    pub fn kv_set(&mut self, key: &str, value: &str) -> Result<(), WorkerError> {
        self.call(&Request::KvSet {
            key: key.into(),
            value: value.into(),
        })
        .map(|_| ())
    }

    pub fn kv_get(&mut self, key: &str, wait: Duration) -> Result<Option<String>, WorkerError> {
        match self.call(&Request::KvGet {
            key: key.into(),
            wait_ms: wait.as_millis() as u64,
        })? {
            Response::Value { value } => Ok(value),
            other => Err(WorkerError::Rendezvous(format!(
                "unexpected reply to kv_get: {other:?}"
            ))),
        }
    }

    pub fn send_result(&mut self, payload: proto::result::WorkerResult) -> Result<(), WorkerError> {
        self.call(&Request::Result { payload }).map(|_| ())
    }

    /// Park after a notice's checkpoint and wait for the launcher's word
    /// (as long as it takes: a dead launcher ends this worker through the
    /// heartbeat connection). Ends this control connection.
    pub fn park(mut self) -> Result<Parked, WorkerError> {
        match self.call(&Request::Park)? {
            Response::Rejoin {
                round,
                rank,
                node_rank,
                world_size,
            } => Ok(Parked::Rejoin(Seat {
                round,
                rank,
                node_rank,
                world_size,
            })),
            Response::Exit => Ok(Parked::Exit),
            other => Err(WorkerError::Rendezvous(format!(
                "unexpected reply to park: {other:?}"
            ))),
        }
    }
}

/// Open the heartbeat connection (its greeting must be accepted before this
/// returns) and start the thread that sends this rank's progress.
pub fn start_heartbeat(env: &WorkerEnv, progress: Arc<Progress>) -> Result<(), WorkerError> {
    let mut stream = connect(&env.rdzv_endpoint)?;
    let interval = Duration::from_millis(env.heartbeat_interval_ms);
    // A launcher that does not answer for this long is treated as gone.
    let silence = (interval * 20).max(Duration::from_secs(10));
    stream.set_read_timeout(Some(silence)).ok();
    stream.set_write_timeout(Some(silence)).ok();
    let hello = Request::HeartbeatHello {
        version: PROTOCOL_VERSION,
        token: env.token.clone(),
        round: env.restart_count,
        node_rank: env.node_rank,
        local_rank: env.local_rank,
    };
    wire::write_frame(&mut stream, &hello).map_err(|e| WorkerError::Rendezvous(e.to_string()))?;
    match wire::read_frame::<Response>(&mut stream) {
        Ok(Response::Ok) => {}
        Ok(Response::Error { kind, message }) => {
            return Err(WorkerError::Rendezvous(format!(
                "heartbeat refused ({kind:?}): {message}"
            )))
        }
        Ok(other) => {
            return Err(WorkerError::Rendezvous(format!(
                "unexpected heartbeat reply {other:?}"
            )))
        }
        Err(e) => return Err(WorkerError::Rendezvous(format!("heartbeat greeting: {e}"))),
    }
    let rank = env.rank;
    // The launcher's answers (and a notice it pushes between beats) are
    // read on a thread of their own, so a notice is heeded the moment it
    // comes, not at the next beat.
    let mut answers = stream
        .try_clone()
        .map_err(|e| WorkerError::Rendezvous(format!("heartbeat connection: {e}")))?;
    let p2 = progress.clone();
    std::thread::Builder::new()
        .name("heartbeat-answers".into())
        .spawn(move || loop {
            match wire::read_frame::<Response>(&mut answers) {
                Ok(Response::Ok) => {}
                Ok(Response::Notice {
                    deadline_unix_ms,
                    reason,
                    stop_step,
                }) => {
                    if !p2.notice() {
                        eprintln!("[rank {rank}] preemption notice from the launcher");
                    }
                    p2.set_launcher_notice(deadline_unix_ms, reason, stop_step);
                }
                _ => launcher_lost(rank),
            }
        })
        .map_err(|e| WorkerError::Rendezvous(format!("cannot start heartbeat thread: {e}")))?;
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            let mut beat = progress.snapshot();
            beat.notes = progress.take_notes();
            if wire::write_frame(&mut stream, &Request::Heartbeat(beat)).is_err() {
                launcher_lost(rank);
            }
            progress.wait_beat(interval);
        })
        .map_err(|e| WorkerError::Rendezvous(format!("cannot start heartbeat thread: {e}")))?;
    Ok(())
}

/// The launcher is gone: take down this worker's whole process group (the
/// worker and any program it started), so nothing is left behind.
fn launcher_lost(rank: u32) -> ! {
    eprintln!(
        "[rank {rank}] launcher lost (heartbeat connection closed); stopping process group (exit {})",
        WorkerExit::LauncherLost.code()
    );
    // SAFETY: kill(2) with pid 0 signals our own process group; it has no
    // memory-safety preconditions.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
    std::process::exit(WorkerExit::LauncherLost.code())
}
