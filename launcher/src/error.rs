//! One error type for the launcher; each variant has its exit code.

use proto::exit::LauncherExit;
use proto::SpecIssue;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("invalid job spec:\n{}", .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<SpecIssue>),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl LaunchError {
    pub fn exit(&self) -> LauncherExit {
        match self {
            LaunchError::Config(_) => LauncherExit::ConfigInvalid,
            LaunchError::Unsupported(_) => LauncherExit::Unsupported,
            LaunchError::Io(_) => LauncherExit::Io,
            LaunchError::NoCapacity(_) => LauncherExit::NoCapacity,
            LaunchError::Internal(_) => LauncherExit::Internal,
        }
    }
}
