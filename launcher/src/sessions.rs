//! One node agent per node, each started by a command the provider builds
//! (`ssh host 'ringmaster agent ...'`, `srun --nodelist=host ringmaster
//! agent ...`): the launcher's side of those sessions. Each agent gets a
//! single-use token (`Rendezvous::enroll_agent`, taken at its first
//! greeting) as the first line of its standard input (`--token-stdin`),
//! never in its arguments or environment, where other users of the host
//! could read it; that input is then held open, so an agent started with
//! `--until-stdin-closes` ends its node's workers when the session goes;
//! the session's output is appended to `agent-<node>.log` in the run
//! folder.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node's session.
struct Session {
    child: Child,
}

impl Drop for Session {
    /// Its input closed (the agent ends, if it has not already), then the
    /// session itself, within a second.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let until = Instant::now() + Duration::from_secs(1);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every node's agent session.
pub struct Sessions {
    rdzv: crate::rendezvous::Rendezvous,
    run_dir: PathBuf,
    running: Vec<Option<Session>>,
    released: bool,
}

impl Sessions {
    pub fn new(nodes: usize, rdzv: crate::rendezvous::Rendezvous, run_dir: PathBuf) -> Sessions {
        Sessions {
            rdzv,
            run_dir,
            running: (0..nodes).map(|_| None).collect(),
            released: false,
        }
    }

    /// Start node `node`'s session (ending the one before, if any): `cmd`,
    /// the node's single-use token written to its input.
    pub fn start(&mut self, node: u32, mut cmd: Command) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        self.running[node as usize] = None;
        let token = self.rdzv.enroll_agent(node);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.run_dir.join(format!("agent-{node}.log")))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group: the terminal's Ctrl-C is the launcher's to
            // handle, not the session's.
            .process_group(0)
            .spawn()?;
        if let Some(input) = child.stdin.as_mut() {
            // (A session that died at once fails here; its agent never
            // connects and the launch's wait for agents says so.)
            let _ = writeln!(input, "{token}");
        }
        self.running[node as usize] = Some(Session { child });
        Ok(())
    }

    /// Whether node `node`'s session should be there (started and not
    /// released).
    pub fn wanted(&self, node: u32) -> bool {
        !self.released && self.running.get(node as usize).is_some_and(Option::is_some)
    }

    /// Whether node `node`'s session should be there but has ended (its
    /// agent is gone and none is coming).
    pub fn ended(&mut self, node: u32) -> bool {
        let wanted = self.wanted(node);
        wanted
            && self.running[node as usize]
                .as_mut()
                .is_some_and(|s| !matches!(s.child.try_wait(), Ok(None)))
    }

    /// The sessions' processes (the launcher's children, not strays).
    pub fn processes(&self) -> Vec<u32> {
        self.running
            .iter()
            .flatten()
            .map(|s| s.child.id())
            .collect()
    }

    /// End every session (the agents had the leader's shutdown).
    pub fn release(&mut self) {
        self.released = true;
        for s in self.running.iter_mut() {
            *s = None;
        }
    }
}

/// The GPU a node agent gives worker `local_rank` when the launcher left
/// CUDA_VISIBLE_DEVICES to the scheduler (a Slurm step with
/// `--gres=gpu:N` sees its N GPUs): entry `local_rank` of the agent's own
/// list. None: the agent's list is absent or too short (the worker keeps
/// what it inherits).
pub fn gpu_of_local_rank(agents: Option<&str>, local_rank: u32) -> Option<String> {
    agents?
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .nth(local_rank as usize)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_gets_its_local_ranks_entry_of_the_agents_gpus() {
        for (agents, local, want) in [
            (Some("0,1,2,3"), 2, Some("2")),
            (Some("4,5"), 0, Some("4")),
            (Some("GPU-a1b2, GPU-c3d4"), 1, Some("GPU-c3d4")),
            (Some("0"), 1, None),
            (Some(""), 0, None),
            (None, 0, None),
        ] {
            assert_eq!(
                gpu_of_local_rank(agents, local).as_deref(),
                want,
                "{agents:?} {local}"
            );
        }
    }
}
