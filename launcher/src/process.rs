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

/// Signal a worker's whole process group, and every descendant of its
/// leader that left the group (a program's `setsid` child: a group signal
/// misses it). A group that is already gone is not an error.
pub fn signal_group(pgid: u32, sig: Signal) {
    signal_groups(&[pgid], sig);
}

/// `signal_group` for several groups, with one read of /proc.
pub fn signal_groups(pgids: &[u32], sig: Signal) {
    if pgids.is_empty() {
        return;
    }
    let table = proc_table();
    for &pgid in pgids {
        let escaped: Vec<u32> = descendants_in(&table, pgid)
            .into_iter()
            .filter(|pid| table.iter().any(|p| p.pid == *pid && p.pgrp != pgid))
            .collect();
        match killpg(Pid::from_raw(pgid as i32), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!("killpg({pgid}, {sig}): {e}"),
        }
        for pid in escaped {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
        }
    }
}

/// One process as /proc shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    /// Running (not a zombie or dead).
    pub running: bool,
}

/// Every process of this machine (of this PID namespace) from /proc.
pub fn proc_table() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and
            // parentheses, so split after the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(ProcEntry {
                pid,
                ppid: f.get(1)?.parse().ok()?,
                pgrp: f.get(2)?.parse().ok()?,
                running: !matches!(*f.first()?, "Z" | "X"),
            })
        })
        .collect()
}

/// The descendants of `root` by parent links (not `root` itself), in
/// breadth-first order. Pure, tested by table.
pub fn descendants_in(table: &[ProcEntry], root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for e in table.iter().filter(|e| e.ppid == p && e.pid != root) {
            if !out.contains(&e.pid) {
                out.push(e.pid);
                frontier.push(e.pid);
            }
        }
    }
    out
}

/// Make this process the reaper of its orphaned descendants: a worker's
/// program that started a `setsid` child and died leaves that child to
/// us, not to init, so it can still be found (and ended) as ours.
pub fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Raise this process's open-file limit to its hard limit: the launcher
/// holds two connections per rank it reaches directly (its own node's,
/// and every node's when it starts the workers itself) and one per node
/// agent, which relays its node's ranks on that one connection (8,192
/// local ranks need about 16,600 descriptors, past the usual soft limit of
/// 1,024; 8,192 ranks on 1,024 agents' nodes about 1,300). A warning when
/// the world needs more than even the hard limit allows. `agents`:
/// whether nodes other than node 0 are reached through node agents.
pub fn raise_fd_limit(nodes: u32, per_node: u32, agents: bool) -> Option<String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let now = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let needed = fds_needed(nodes, per_node, agents);
    (needed > now).then(|| {
        let how = if agents {
            "two connections per rank of this node, one per node agent"
        } else {
            "two connections per rank"
        };
        format!(
            "this run needs about {needed} open files ({how}) but the limit is {now} (hard limit {hard}); raise it (`ulimit -Hn`, LimitNOFILE= in systemd, --ulimit in docker) or ranks will be refused"
        )
    })
}

/// Descriptors a launcher of `nodes` x `per_node` ranks holds: two
/// connections per rank it reaches directly, one per node agent, and a
/// fixed few hundred (logs, listeners, pipes).
pub fn fds_needed(nodes: u32, per_node: u32, agents: bool) -> u64 {
    let (nodes, per_node) = (u64::from(nodes), u64::from(per_node));
    if agents {
        2 * per_node + nodes + 256
    } else {
        2 * nodes * per_node + 256
    }
}

/// Between attempts: SIGKILL the orphans this process inherited as the
/// subreaper (a dead worker's program left a `setsid` child) and their
/// descendants, so they do not run on into the next attempt. Its own
/// children in `keep` (live worker groups: survivors, parked ranks) and in
/// its own process group (short commands it runs) are not orphans.
/// Returns how many processes were signalled.
pub fn end_orphans(keep: &[u32]) -> usize {
    let me = std::process::id();
    // SAFETY: getpgrp(2) has no preconditions.
    let my_group = unsafe { libc::getpgrp() } as u32;
    let table = proc_table();
    let mut ended = 0;
    for e in table.iter().filter(|e| {
        e.ppid == me
            && e.running
            && e.pgrp != my_group
            && !keep.contains(&e.pgrp)
            && !keep.contains(&e.pid)
    }) {
        for pid in std::iter::once(e.pid).chain(descendants_in(&table, e.pid)) {
            if nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                ended += 1;
            }
        }
    }
    ended
}

/// SIGKILL every running descendant of this process (the end of a run:
/// nothing it started may outlive it) and wait, up to `limit`, until none
/// runs. Returns how many there were.
pub async fn end_descendants(limit: std::time::Duration) -> usize {
    let me = std::process::id();
    let until = std::time::Instant::now() + limit;
    let mut first = None;
    loop {
        let t = proc_table();
        let running: Vec<u32> = descendants_in(&t, me)
            .into_iter()
            .filter(|pid| t.iter().any(|e| e.pid == *pid && e.running))
            .collect();
        first.get_or_insert(running.len());
        if running.is_empty() || std::time::Instant::now() >= until {
            break;
        }
        for pid in &running {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    first.unwrap_or(0)
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
    if std::fs::metadata("/proc/self/stat").is_err() {
        return alive(pgid);
    }
    proc_table().iter().any(|e| e.running && e.pgrp == pgid)
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

/// `s` in single quotes for sh, always.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Quote for a POSIX shell (batch scripts, remote commands).
pub fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        s.to_string()
    } else {
        quote(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// 10,240 ranks (1,280 nodes of 8) fit this VM's hard limit of 20,000
    /// only when agents relay their nodes' ranks.
    #[test]
    fn descriptors_a_world_needs() {
        for (nodes, per_node, agents, needed) in [
            (1, 8, false, 16 + 256),
            (128, 8, false, 2048 + 256),
            (128, 8, true, 16 + 128 + 256),
            (1280, 8, false, 20480 + 256),
            (1280, 8, true, 16 + 1280 + 256),
        ] {
            assert_eq!(
                fds_needed(nodes, per_node, agents),
                needed,
                "{nodes}x{per_node} {agents}"
            );
        }
    }

    #[test]
    fn descendants_table() {
        let e = |pid, ppid| ProcEntry {
            pid,
            ppid,
            pgrp: pid,
            running: true,
        };
        // 1 -> 10 -> 11 -> 12; 10 -> 13; 1 -> 20 (another tree); 12 -> 14
        let table = vec![
            e(10, 1),
            e(11, 10),
            e(12, 11),
            e(13, 10),
            e(20, 1),
            e(14, 12),
        ];
        let mut d = descendants_in(&table, 10);
        d.sort();
        assert_eq!(d, vec![11, 12, 13, 14]);
        assert_eq!(descendants_in(&table, 13), Vec::<u32>::new());
        let mut all = descendants_in(&table, 1);
        all.sort();
        assert_eq!(all, vec![10, 11, 12, 13, 14, 20]);
        // A cycle in a racy /proc read does not loop.
        let cyc = vec![e(2, 3), e(3, 2)];
        assert_eq!(descendants_in(&cyc, 2), vec![3]);
    }

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
