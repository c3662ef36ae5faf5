//! Worker processes: each is started in a process group of its own (so a
//! signal reaches the worker and everything it started), with its output in
//! `attempt-<n>/rank-<r>.log`, optionally mirrored with a rank prefix.

use crate::progress::Console;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

pub fn spawn_worker(
    bin: &Path,
    env: &[(String, String)],
    log: &Path,
    tee: Option<(u32, Console)>,
) -> std::io::Result<Child> {
    spawn_command(bin.as_os_str(), &[], env, log, tee)
}

/// `program args...` as a worker: own process group, `env` added, output
/// to `log` (and mirrored when `tee`).
pub fn spawn_command(
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    env: &[(String, String)],
    log: &Path,
    tee: Option<(u32, Console)>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.stdin(Stdio::null());
    spawn_logged(cmd, log, tee)
}

/// A remote session (`ssh host cmd`) as a worker: like `spawn_command`,
/// but its stdin stays open while the session lives, so the remote side
/// can tell when the session (or this launcher) is gone.
pub fn spawn_remote(
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    log: &Path,
    tee: Option<(u32, Console)>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.stdin(Stdio::piped());
    let mut child = spawn_logged(cmd, log, tee)?;
    // Child::wait closes stdin; keep it here until the process is gone.
    if let (Some(stdin), Some(pid)) = (child.stdin.take(), child.id()) {
        tokio::spawn(async move {
            let _open = stdin;
            while alive(pid) {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
    }
    Ok(child)
}

fn spawn_logged(
    mut cmd: Command,
    log: &Path,
    tee: Option<(u32, Console)>,
) -> std::io::Result<Child> {
    cmd.process_group(0);
    cmd.kill_on_drop(false);
    let file = File::create(log)?;
    match tee {
        None => {
            cmd.stdout(file.try_clone()?);
            cmd.stderr(file);
            cmd.spawn()
        }
        Some((rank, console)) => {
            cmd.stdout(Stdio::piped());
            cmd.stderr(Stdio::piped());
            let mut child = cmd.spawn()?;
            let out = child.stdout.take().expect("piped");
            let err = child.stderr.take().expect("piped");
            let file = std::sync::Arc::new(std::sync::Mutex::new(file));
            for stream in [
                Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                Box::new(err),
            ] {
                let file = file.clone();
                let console = console.clone();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let _ = writeln!(file.lock().unwrap(), "{line}");
                        console.line(&format!("[rank {rank}] {line}"));
                    }
                });
            }
            Ok(child)
        }
    }
}

/// Signal a worker's whole process group. A group that is already gone is
/// not an error.
pub fn signal_group(pgid: u32, sig: Signal) {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("killpg({pgid}, {sig}): {e}"),
    }
}

/// Whether any process of the group is still there (zombies included
/// until reaped).
pub fn alive(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None::<Signal>).is_ok()
}

/// The last `n` lines of a log file (empty when unreadable).
pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(f) = File::open(path) else {
        return vec![];
    };
    let mut ring = std::collections::VecDeque::with_capacity(n + 1);
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        ring.push_back(line);
        if ring.len() > n {
            ring.pop_front();
        }
    }
    ring.into()
}

/// Quote for a POSIX shell (batch scripts, remote commands).
pub fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
