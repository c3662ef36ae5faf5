//! Every way a worker can fail, each mapped to a documented exit code, and
//! the error file a failing worker leaves for the launcher.

use crate::{checkpoint, collective, env, progress};
use proto::exit::WorkerExit;

/// Every way a worker can fail, each mapped to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("environment: {0}")]
    Env(String),
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    #[error("collective: {0}")]
    Collective(#[from] collective::CollectiveError),
    #[error("workload: {0}")]
    Workload(String),
    /// A checkpoint could not be written or committed (a workload error).
    #[error("workload: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The GPU failed under the workload (a workload error).
    #[error("workload: {0}")]
    Gpu(#[from] gpu::GpuError),
    #[error("could not start `{program}`: {source}")]
    CommandNotStarted {
        program: String,
        source: std::io::Error,
    },
}

impl WorkerError {
    pub fn exit(&self) -> WorkerExit {
        match self {
            WorkerError::Env(_) => WorkerExit::BadEnvironment,
            WorkerError::Rendezvous(_) => WorkerExit::Rendezvous,
            WorkerError::Collective(_) => WorkerExit::Collective,
            WorkerError::Workload(_) | WorkerError::Checkpoint(_) | WorkerError::Gpu(_) => {
                WorkerExit::Workload
            }
            WorkerError::CommandNotStarted { .. } => WorkerExit::CommandNotStarted,
        }
    }
}

/// A failing worker's last words, `<attempt dir>/rank-<r>.error.json`
/// (as torch elastic's error files): exit code, message and the step it
/// failed at, which the launcher uses for the report and crash-loop checks.
pub fn write_error_file(
    env: &env::WorkerEnv,
    progress: &progress::Progress,
    code: i32,
    message: &str,
) {
    let Some(dir) = &env.attempt_dir else {
        return;
    };
    let beat = progress.snapshot();
    let body = serde_json::json!({
        "rank": env.rank,
        "exit_code": code,
        "message": message,
        "step": (beat.total_steps > 0).then_some(beat.step),
        "phase": beat.phase,
    });
    let path = std::path::Path::new(&dir).join(format!("rank-{}.error.json", env.rank));
    if let Err(e) = std::fs::write(&path, body.to_string()) {
        eprintln!("[rank {}] cannot write {}: {e}", env.rank, path.display());
    }
}
