//! Named exit codes of both binaries. These numbers are part of the public
//! contract (documented in README.md); never renumber one.

/// Exit codes of `ringmaster` (the launcher).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum LauncherExit {
    /// Every worker finished successfully.
    Success = 0,
    /// A bug or an environment problem inside the launcher itself.
    Internal = 1,
    /// The command line could not be parsed (clap's own code).
    Usage = 2,
    /// The job spec (file, overrides) is invalid; nothing was started.
    ConfigInvalid = 3,
    /// Workers failed and the restart budget is spent.
    WorkersFailed = 4,
    /// Rendezvous did not complete in time, on the last allowed attempt.
    RendezvousFailed = 5,
    /// The spec asks for something this build or machine cannot do
    /// (a GPU accelerator, the NCCL backend); nothing was started.
    Unsupported = 6,
    /// A file or binary the launcher needs is missing or unwritable.
    Io = 7,
    /// A preemption notice (SIGUSR1) stopped the run at an agreed step,
    /// checkpointed where the job has a checkpoint dir; run again to resume.
    Preempted = 8,
    /// No node could be had: spot capacity was gone in every allowed zone
    /// (longer than `provider.capacity_wait_s` mid-run) and the market
    /// allows no fallback. Checkpoints are kept; `--resume` continues.
    NoCapacity = 9,
    /// The preflight check found slow or broken nodes and the job says
    /// `preflight.on_slow: "fail"` (or "replace" where nodes cannot be
    /// replaced); no step was run.
    PreflightFailed = 10,
    /// The cloud refused a request for a machine for a reason no other
    /// zone or market fixes (permissions, a wrong image or subnet id, a
    /// quota); the message names the call, the instance type and the
    /// zone. Machines already started were terminated.
    CloudError = 11,
    /// Stopped by SIGINT/SIGTERM (Ctrl-C); workers were stopped.
    Interrupted = 130,
}

impl LauncherExit {
    pub fn code(self) -> i32 {
        self as i32
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Internal => "internal-error",
            Self::Usage => "usage",
            Self::ConfigInvalid => "config-invalid",
            Self::WorkersFailed => "workers-failed",
            Self::RendezvousFailed => "rendezvous-failed",
            Self::Unsupported => "unsupported",
            Self::Io => "io-error",
            Self::Preempted => "preempted",
            Self::NoCapacity => "no-capacity",
            Self::PreflightFailed => "preflight-failed",
            Self::CloudError => "cloud-error",
            Self::Interrupted => "interrupted",
        }
    }
    /// The exit with this code, if it is one of ours.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
    pub const ALL: [LauncherExit; 13] = [
        Self::Success,
        Self::Internal,
        Self::Usage,
        Self::ConfigInvalid,
        Self::WorkersFailed,
        Self::RendezvousFailed,
        Self::Unsupported,
        Self::Io,
        Self::Preempted,
        Self::NoCapacity,
        Self::PreflightFailed,
        Self::CloudError,
        Self::Interrupted,
    ];
}

/// Exit codes of `ringmaster-worker`. A `command` workload exits with its
/// program's own code instead (128+N when the program died of signal N).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum WorkerExit {
    Success = 0,
    /// The worker panicked or hit a bug.
    Internal = 70,
    /// The environment contract is incomplete or malformed.
    BadEnvironment = 71,
    /// The rendezvous refused the worker or could not be reached.
    Rendezvous = 72,
    /// A collective failed: a peer vanished or timed out.
    Collective = 73,
    /// The workload itself failed (bad result, invalid parameters).
    Workload = 74,
    /// The launcher went away; the worker stopped its process group.
    LauncherLost = 75,
    /// The user's program of a `command` workload could not be started.
    CommandNotStarted = 76,
    /// Stopped at an agreed step after a preemption notice (with a
    /// committed checkpoint when the job has a checkpoint dir).
    Preempted = 77,
}

impl WorkerExit {
    pub fn code(self) -> i32 {
        self as i32
    }
    pub fn from_code(code: i32) -> Option<Self> {
        [
            Self::Success,
            Self::Internal,
            Self::BadEnvironment,
            Self::Rendezvous,
            Self::Collective,
            Self::Workload,
            Self::LauncherLost,
            Self::CommandNotStarted,
            Self::Preempted,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Internal => "internal-error",
            Self::BadEnvironment => "bad-environment",
            Self::Rendezvous => "rendezvous-failed",
            Self::Collective => "collective-failed",
            Self::Workload => "workload-failed",
            Self::LauncherLost => "launcher-lost",
            Self::CommandNotStarted => "command-not-started",
            Self::Preempted => "preempted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_codes_are_distinct() {
        let mut codes: Vec<i32> = LauncherExit::ALL.iter().map(|e| e.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), LauncherExit::ALL.len());
    }

    #[test]
    fn worker_codes_round_trip() {
        for c in 0..256 {
            if let Some(e) = WorkerExit::from_code(c) {
                assert_eq!(e.code(), c);
            }
        }
        assert_eq!(WorkerExit::from_code(73), Some(WorkerExit::Collective));
        assert_eq!(WorkerExit::from_code(1), None);
    }
}
