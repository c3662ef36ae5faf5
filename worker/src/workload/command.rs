//! `command` workload: run the user's program under the env contract (it
//! inherits this worker's environment, process group and log), pass on a
//! SIGTERM, and exit with the program's own status.

use crate::progress::Progress;
use crate::WorkerError;
use proto::spec::CommandWorkload;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn run(cmd: &CommandWorkload, progress: &Progress) -> Result<i32, WorkerError> {
    progress.set_phase("command", "", 0);
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone())
            .map_err(|e| WorkerError::Workload(format!("cannot install signal handler: {e}")))?;
    }
    let mut c = Command::new(&cmd.argv[0]);
    c.args(&cmd.argv[1..]);
    if let Some(dir) = &cmd.cwd {
        c.current_dir(dir);
    }
    let mut child = c.spawn().map_err(|source| WorkerError::CommandNotStarted {
        program: cmd.argv[0].clone(),
        source,
    })?;
    let mut forwarded = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                return Err(WorkerError::Workload(format!(
                    "waiting for {}: {e}",
                    cmd.argv[0]
                )))
            }
        }
        if term.load(Ordering::Relaxed) && !forwarded {
            // The group signal usually reached the program too; a direct one
            // covers programs that moved to a group of their own.
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    })
}
