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
    /// An operation on a file, socket or process failed: what was being
    /// done, and the system's error as the source (the CLI prints the
    /// chain: "cannot create runs/x: Permission denied (os error 13)").
    #[error("{what}")]
    System {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    NoCapacity(String),
    /// A cloud API refused a request (the call, type and zone named).
    #[error("{0}")]
    Cloud(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl LaunchError {
    /// For `map_err`: the system error `e` while doing `what`.
    pub fn system(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
        let what = what.into();
        move |source| LaunchError::System { what, source }
    }

    /// The message with its causes, as the user reads it.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    }

    pub fn exit(&self) -> LauncherExit {
        match self {
            LaunchError::Config(_) => LauncherExit::ConfigInvalid,
            LaunchError::Unsupported(_) => LauncherExit::Unsupported,
            LaunchError::Io(_) | LaunchError::System { .. } => LauncherExit::Io,
            LaunchError::NoCapacity(_) => LauncherExit::NoCapacity,
            LaunchError::Cloud(_) => LauncherExit::CloudError,
            LaunchError::Internal(_) => LauncherExit::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_error_keeps_its_cause_and_the_user_reads_the_chain() {
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        let e = LaunchError::system("cannot create runs/x")(io);
        assert_eq!(e.to_string(), "cannot create runs/x");
        let cause = std::error::Error::source(&e).expect("the io error is the source");
        assert!(cause.to_string().contains("os error 13"), "{cause}");
        assert!(
            e.chain().starts_with("cannot create runs/x: "),
            "{}",
            e.chain()
        );
        assert!(e.chain().ends_with("(os error 13)"), "{}", e.chain());
        assert_eq!(e.exit(), LauncherExit::Io);
        // Errors without a cause read as before.
        assert_eq!(LaunchError::Io("x".into()).chain(), "x");
    }
}
