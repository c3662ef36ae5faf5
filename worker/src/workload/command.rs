//! `command` workload: run the user's program under the env contract (it
//! inherits this worker's environment, less the run's token, and its
//! process group and log) and exit with the program's own status. Its step
//! reports come in through `channel` (RINGMASTER_CHANNEL).
//!
//! On a preemption notice (the launcher's, with a heartbeat's answer; this
//! node's cloud watcher; SIGUSR1 to this worker; SIGTERM where the
//! scheduler signals every process of the job) the program is told once:
//! the notice's details go to the file named by RINGMASTER_NOTICE_FILE
//! (written whole, then renamed into place), then `notices.program_signal`
//! goes to the program's own process, not its group, so its DataLoader
//! workers and other children are left alone. A SIGTERM or SIGINT to this
//! worker that is not a notice (the launcher stopping the group) is passed
//! on only where the group's signal cannot have reached the program (it
//! moved to a group of its own): a program gets one SIGTERM, not two.
//! A program that ends after it was told (exit 0, or killed by the signal
//! it was told with) has stopped for the notice: the worker exits as
//! preempted (77), as a train worker does.

use crate::env::WorkerEnv;
use crate::progress::Progress;
use crate::WorkerError;
use proto::spec::CommandWorkload;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where this rank's program finds the notice's details.
fn notice_file(env: &WorkerEnv) -> PathBuf {
    let dir = env
        .attempt_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("rank-{}.notice.json", env.rank))
}

/// The notice file: source, deadline (epoch seconds and RFC 3339), the
/// signal the program gets, and the agreed stop step (none for a program
/// that does not report steps).
fn write_notice(
    path: &Path,
    n: &crate::progress::NoticeDetails,
    signal: Option<i32>,
) -> std::io::Result<()> {
    let deadline_ms = n.deadline_unix_ms;
    let deadline = deadline_ms.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    let body = serde_json::json!({
        "source": n.source,
        "deadline_unix_s": deadline_ms.map(|ms| ms as f64 / 1000.0),
        "deadline": deadline.map(|d| humantime::format_rfc3339_millis(d).to_string()),
        "signal": signal.map(signal_name),
        "stop_step": n.stop_step,
    });
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(&tmp, path)
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// The process group of `pid` (None: it is gone).
fn group_of(pid: u32) -> Option<i32> {
    // SAFETY: getpgid(2) reads a process's group; no memory involved.
    let g = unsafe { libc::getpgid(pid as i32) };
    (g >= 0).then_some(g)
}

/// The worker's own signals: SIGINT (and SIGTERM unless it is a notice
/// here) stop the program; SIGUSR1 (and SIGTERM where the scheduler
/// signals every process) is a notice. Returns (stop, notice) flags.
fn install_handlers(env: &WorkerEnv) -> Result<(Arc<AtomicBool>, Arc<AtomicBool>), WorkerError> {
    let (term, notice) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let sigterm = if env.sigterm_is_notice {
        &notice
    } else {
        &term
    };
    for (sig, flag) in [
        (signal_hook::consts::SIGINT, &term),
        (signal_hook::consts::SIGUSR1, &notice),
        (signal_hook::consts::SIGTERM, sigterm),
    ] {
        signal_hook::flag::register(sig, flag.clone())
            .map_err(|e| WorkerError::Workload(format!("cannot install signal handler: {e}")))?;
    }
    Ok((term, notice))
}

/// Start the program with the contract, less the run's token, plus the
/// notice file's and the channel's variables.
fn spawn(
    cmd: &CommandWorkload,
    checkpoint: &proto::spec::Checkpoint,
    file: &Path,
    channel: Option<&super::channel::Channel>,
) -> Result<std::process::Child, WorkerError> {
    let address = channel.map(|c| c.address());
    let (set, remove) = proto::contract::WorkerContract::program_env(
        &file.display().to_string(),
        address.as_deref(),
        checkpoint,
    );
    let mut c = Command::new(&cmd.argv[0]);
    c.args(&cmd.argv[1..]).envs(set);
    for k in remove {
        c.env_remove(k);
    }
    if let Some(dir) = &cmd.cwd {
        c.current_dir(dir);
    }
    c.spawn().map_err(|source| WorkerError::CommandNotStarted {
        program: cmd.argv[0].clone(),
        source,
    })
}

pub fn run(
    cmd: &CommandWorkload,
    env: &WorkerEnv,
    progress: &Arc<Progress>,
) -> Result<(i32, proto::result::CommandResult), WorkerError> {
    progress.set_phase("command", "samples/s", 0);
    let (term, notice) = install_handlers(env)?;
    let file = notice_file(env);
    let _ = std::fs::remove_file(&file);
    // The program's step reports (the `ringmaster` package); without the
    // channel it runs as before, unwatched by progress.
    let channel = super::channel::Channel::open(env.rank, progress.clone())
        .map_err(|e| eprintln!("[rank {}] no channel for step reports: {e}", env.rank))
        .ok();
    // A resumed attempt starts at its checkpoint's step (the launcher's
    // accounting of steps lost and redone).
    if let Some(r) = &env.resume {
        progress.set_start_step(r.step);
    }
    let mut child = spawn(cmd, &env.checkpoint, &file, channel.as_ref())?;
    let pid = child.id();
    // SAFETY: getpgrp(2) has no preconditions.
    let my_group = unsafe { libc::getpgrp() };
    let mut forwarded = false;
    // What the notice file says (None: no notice yet): written when the
    // notice comes, and again when the agreed stop step follows it.
    let mut written: Option<crate::progress::NoticeDetails> = None;
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
        if notice.swap(false, Ordering::Relaxed) && !progress.notice() {
            // The launcher hears of it with the next heartbeat (sent at
            // once) and tells the other ranks.
            eprintln!(
                "[rank {}] preemption notice (a signal to the worker)",
                env.rank
            );
            progress.record_notice(proto::wire::NoticeInfo {
                source: format!("signal to the worker of rank {}", env.rank),
                preempt: true,
                deadline_unix_ms: None,
                seen_unix_ms: proto::wire::unix_ms(SystemTime::now()),
                detail: String::new(),
            });
        }
        let wants_update = match &written {
            None => progress.notice(),
            Some(w) => w.stop_step.is_none(),
        };
        if wants_update {
            let n = progress.notice_details();
            if written.as_ref() != Some(&n) {
                if let Err(e) = write_notice(&file, &n, env.program_signal) {
                    eprintln!("[rank {}] cannot write {}: {e}", env.rank, file.display());
                }
                if written.is_none() {
                    tell(env, pid);
                }
                written = Some(n);
            }
        }
        if term.load(Ordering::Relaxed) && !forwarded {
            forwarded = true;
            if group_of(pid).is_some_and(|g| g != my_group) {
                // SAFETY: kill(2) on our own child's pid; no memory involved.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(channel); // every report the program sent is in
    Ok(outcome(env, status, written.is_some(), progress))
}

/// The program is told of the notice: `notices.program_signal` to its
/// process only.
fn tell(env: &WorkerEnv, pid: u32) {
    if let Some(sig) = env.program_signal {
        eprintln!(
            "[rank {}] telling the program of the notice: {} to pid {pid}",
            env.rank,
            signal_name(sig)
        );
        // SAFETY: kill(2) on our own child's pid; no memory involved.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// The worker's exit code and result. Told of a notice, the program
/// stopped: cleanly, or by the signal it was told with (no handler). That
/// is a stop after a notice, as a train worker's (exit 77), not a failure;
/// any other end is the program's own.
fn outcome(
    env: &WorkerEnv,
    status: std::process::ExitStatus,
    told: bool,
    progress: &Progress,
) -> (i32, proto::result::CommandResult) {
    let stopped = told
        && (status.code() == Some(0)
            || (status.signal().is_some() && status.signal() == env.program_signal));
    let own = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    let beat = progress.snapshot();
    let step = beat.step;
    let result = proto::result::CommandResult {
        exit_code: own,
        last_step: (step > 0).then_some(step),
        stopped_for_notice: stopped,
        committed: beat.committed,
    };
    if stopped {
        eprintln!(
            "[rank {}] the program stopped after the notice ({status})",
            env.rank
        );
        return (proto::exit::WorkerExit::Preempted.code(), result);
    }
    (own, result)
}
