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

/// Whether any process of the group is still running: a zombie (killed,
/// not yet reaped, perhaps by an init that never reaps) does not count.
/// Read from /proc (field 3 is the state, field 5 the process group).
pub fn group_running(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return alive(pgid);
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and
            // parentheses, so split after the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[0] != "Z" && f[0] != "X" && f[2] == pgid.to_string()
        })
}

/// Wait (up to `limit`) until no process of `groups` is running: a
/// SIGKILL takes effect a moment after it is sent, and nothing of a run may
/// outlive its launcher.
pub async fn wait_gone(groups: &[u32], limit: std::time::Duration) {
    let until = std::time::Instant::now() + limit;
    while groups.iter().any(|pg| group_running(*pg)) && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_killed_but_unreaped_group_is_not_running() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pg = child.id();
        assert!(group_running(pg));
        signal_group(pg, Signal::SIGKILL);
        // Not reaped yet: the group still exists (a zombie), but nothing
        // of it runs.
        let t0 = std::time::Instant::now();
        while group_running(pg) && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!group_running(pg));
        assert!(alive(pg), "the zombie keeps the group until it is reaped");
        child.wait().unwrap();
        assert!(!alive(pg));
    }
}
