//! The `ssh` provider: machines you own, listed in a hostfile as
//! DeepSpeed's and MPI's (`host slots=N`). One ssh session per host runs
//! ringmaster's node agent there (`ringmaster agent --until-stdin-closes`,
//! with a single-use token), as DeepSpeed's pdsh runner starts one launcher
//! per node: the agent starts the host's workers on the leader's word and
//! relays their rendezvous connections on its one connection. When the
//! session ends (the launcher stopping it, the launcher dying, the
//! connection dropping) the agent's standard input closes and it ends its
//! workers (SIGTERM, then SIGKILL five seconds later), so nothing is left
//! behind on the host; a lost session is started again for the next
//! attempt.

use crate::process::sh;
use crate::provider::NodeEvent;
use crate::provider::Provider;
use std::path::Path;

/// One hostfile line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub slots: u32,
}

/// Parse a hostfile: `host [slots=N]` per line, `#` comments, blank lines;
/// errors name the line.
pub fn parse_hostfile(text: &str) -> Result<Vec<Host>, String> {
    let mut hosts: Vec<Host> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().expect("non-empty").to_string();
        let mut slots = 1;
        for w in words {
            match w.strip_prefix("slots=").map(str::parse::<u32>) {
                Some(Ok(n)) if n >= 1 => slots = n,
                _ => return Err(format!("line {}: {w:?} is not slots=N (N >= 1)", i + 1)),
            }
        }
        if hosts.iter().any(|h| h.name == name) {
            return Err(format!("line {}: host {name} is listed twice", i + 1));
        }
        hosts.push(Host { name, slots });
    }
    if hosts.is_empty() {
        return Err("no hosts".into());
    }
    Ok(hosts)
}

/// Apply DeepSpeed-style `include` / `exclude` ("host1@host2"); every name
/// must be in the hostfile.
pub fn select(
    hosts: Vec<Host>,
    include: Option<&str>,
    exclude: Option<&str>,
) -> Result<Vec<Host>, (&'static str, String)> {
    let names = |s: &str| -> Vec<String> {
        s.split('@')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect()
    };
    for (field, list) in [("provider.include", include), ("provider.exclude", exclude)] {
        for n in list.map(names).unwrap_or_default() {
            if !hosts.iter().any(|h| h.name == n) {
                return Err((field, format!("{n} is not in the hostfile")));
            }
        }
    }
    let inc = include.map(names);
    let exc = exclude.map(names).unwrap_or_default();
    Ok(hosts
        .into_iter()
        .filter(|h| inc.as_ref().is_none_or(|i| i.contains(&h.name)))
        .filter(|h| !exc.contains(&h.name))
        .collect())
}

/// The command the remote shell runs for node `node`'s agent: in the
/// launcher's working directory, its token read from the session's input,
/// its workers' logs in the host's temporary folder, ending with the
/// session.
pub fn agent_command(a: &AgentCommand) -> String {
    format!(
        "cd {cwd} || exit 70; exec {agent} agent --leader {leader} --node {node} --worker-bin {worker} --log-dir \"${{TMPDIR:-/tmp}}\"/{logs} --wait {wait} --token-stdin --until-stdin-closes --remove-logs",
        cwd = sh(&a.cwd.display().to_string()),
        agent = sh(&a.agent),
        leader = sh(&a.leader),
        node = a.node,
        worker = sh(&a.worker),
        logs = sh(&format!("ringmaster-{}-node-{}", a.run_id, a.node)),
        wait = a.wait_s,
    )
}

/// What node `node`'s agent session is started with.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    pub cwd: std::path::PathBuf,
    /// `ringmaster` on the host.
    pub agent: String,
    /// `ringmaster-worker` on the host.
    pub worker: String,
    /// The leader's rendezvous as the hosts reach it.
    pub leader: String,
    pub node: u32,
    pub run_id: String,
    /// How long the agent keeps trying to reach the leader.
    pub wait_s: f64,
}

/// What every host's session is started with: ssh's arguments, the paths
/// on the hosts, the leader, the run.
pub struct SshSettings {
    pub ssh_args: Vec<String>,
    /// `ringmaster-worker` on the hosts (provider.worker_path, else this
    /// machine's path).
    pub worker: String,
    /// `ringmaster` on the hosts: beside the worker.
    pub agent: String,
    pub leader: String,
    pub run_id: String,
    pub wait_s: f64,
}

pub struct SshProvider {
    /// The host of each node (a spare may have taken a node's place).
    hosts: Vec<String>,
    /// Hostfile hosts not in use, in hostfile order.
    spares: std::collections::VecDeque<String>,
    /// Nodes retired (slow in the preflight check), waiting for a spare.
    retired: Vec<u32>,
    /// The address of each node whose host was swapped.
    addrs: std::collections::BTreeMap<u32, String>,
    settings: SshSettings,
    sessions: crate::sessions::Sessions,
    rdzv: crate::rendezvous::Rendezvous,
}

impl SshProvider {
    /// The provider, with one agent session started on each host.
    pub fn new(
        hosts: Vec<String>,
        spares: Vec<String>,
        settings: SshSettings,
        rdzv: crate::rendezvous::Rendezvous,
        run_dir: &Path,
    ) -> Result<Self, crate::error::LaunchError> {
        let mut p = SshProvider {
            sessions: crate::sessions::Sessions::new(hosts.len(), rdzv.clone(), run_dir.into()),
            hosts,
            spares: spares.into(),
            retired: Vec::new(),
            addrs: Default::default(),
            settings,
            rdzv,
        };
        for node in 0..p.hosts.len() as u32 {
            p.start_session(node)
                .map_err(crate::error::LaunchError::system(format!(
                    "cannot start ssh to {}",
                    p.hosts[node as usize]
                )))?;
        }
        Ok(p)
    }

    /// Start node `node`'s agent session (ending one still there).
    fn start_session(&mut self, node: u32) -> std::io::Result<()> {
        let s = &self.settings;
        let remote = agent_command(&AgentCommand {
            cwd: std::env::current_dir()?,
            agent: s.agent.clone(),
            worker: s.worker.clone(),
            leader: s.leader.clone(),
            node,
            run_id: s.run_id.clone(),
            wait_s: s.wait_s,
        });
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(["-T", "-o", "BatchMode=yes"])
            .args(&s.ssh_args)
            .arg(&self.hosts[node as usize])
            .arg(remote);
        self.sessions.start(node, cmd)
    }
}

impl Provider for SshProvider {
    fn kind(&self) -> &'static str {
        "ssh"
    }
    /// A slow node gives its place to the next spare host, if one is left.
    fn retire(&mut self, node: u32) -> bool {
        if self.retired.contains(&node) {
            return true;
        }
        if self.retired.len() >= self.spares.len() {
            return false;
        }
        self.retired.push(node);
        true
    }
    fn is_lost(&self, node: u32) -> bool {
        self.retired.contains(&node)
    }
    fn has_lost(&self) -> bool {
        !self.retired.is_empty()
    }
    fn replace_lost(&mut self) -> Result<(Vec<NodeEvent>, Vec<u32>), crate::error::LaunchError> {
        let mut ready = Vec::new();
        for node in std::mem::take(&mut self.retired) {
            let Some(spare) = self.spares.pop_front() else {
                return Err(crate::error::LaunchError::Io(
                    "ssh: cannot bring up a node: no spare host left".into(),
                ));
            };
            let old = std::mem::replace(&mut self.hosts[node as usize], spare.clone());
            self.addrs.insert(node, crate::slurm::node_addr(&spare));
            // The old host's agent goes; the spare's session starts.
            self.rdzv.dismiss_agent(node);
            self.start_session(node)
                .map_err(crate::error::LaunchError::system(format!(
                    "cannot start ssh to {spare}"
                )))?;
            ready.push(NodeEvent::Ready {
                node,
                vm: format!("{spare} (was {old})"),
                zone: String::new(),
                market: "owned",
            });
        }
        Ok((ready, Vec::new()))
    }
    /// Every node's workers are started by its host's agent.
    fn agent_nodes(&self) -> Vec<u32> {
        (0..self.hosts.len() as u32).collect()
    }
    /// A node's agent went: a new session once the old one has ended
    /// (now, or while the next launch waits for the agent). Never one
    /// while the old still runs: a loss heard late must not end a new
    /// agent that already came.
    fn agent_lost(&mut self, node: u32) {
        self.ensure_agent(node);
    }
    fn ensure_agent(&mut self, node: u32) {
        if self.sessions.ended(node) {
            // Its agent, if the rendezvous still holds it, is on its way
            // out: no worker is to be sent to it.
            self.rdzv.dismiss_agent(node);
            if let Err(e) = self.start_session(node) {
                eprintln!(
                    "[ringmaster] ssh: cannot start a new session to {}: {e}",
                    self.hosts[node as usize]
                );
            }
        }
    }
    /// The sessions are the launcher's own children, not strays.
    fn processes(&self) -> Vec<u32> {
        self.sessions.processes()
    }
    /// The sessions end (each agent already had the leader's shutdown).
    fn release(&mut self) -> crate::provider::Released {
        self.sessions.release();
        crate::provider::Released::default()
    }
    /// A swapped node's workers listen on its new host's address (and rank
    /// 0's store moves with node 0).
    fn worker_contract(
        &self,
        node: u32,
        _local_rank: u32,
        c: &mut proto::contract::WorkerContract,
    ) {
        if let Some(a) = self.addrs.get(&node) {
            c.node_addr = a.clone();
        }
        if let Some(a) = self.addrs.get(&0) {
            c.master_addr = a.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, slots: u32) -> Host {
        Host {
            name: name.into(),
            slots,
        }
    }

    #[test]
    fn hostfiles_parse_and_select_like_deepspeeds() {
        let text = "# the lab\nnode1 slots=4\nnode2   slots=2  # half\n\nnode3\n";
        let hosts = parse_hostfile(text).unwrap();
        assert_eq!(hosts, vec![h("node1", 4), h("node2", 2), h("node3", 1)]);
        assert_eq!(
            select(hosts.clone(), Some("node1@node3"), None).unwrap(),
            vec![h("node1", 4), h("node3", 1)]
        );
        assert_eq!(
            select(hosts.clone(), None, Some("node2")).unwrap(),
            vec![h("node1", 4), h("node3", 1)]
        );
        assert_eq!(
            select(hosts, Some("node9"), None).unwrap_err(),
            ("provider.include", "node9 is not in the hostfile".into())
        );
        for (bad, want) in [
            ("node1 slots=0", "line 1: \"slots=0\" is not slots=N"),
            ("node1 gpus=2", "line 1: \"gpus=2\" is not slots=N"),
            ("a\na", "line 2: host a is listed twice"),
            ("# nothing\n", "no hosts"),
        ] {
            assert!(parse_hostfile(bad).unwrap_err().contains(want), "{bad}");
        }
    }

    #[test]
    fn the_agents_command_quotes_everything_and_has_no_token() {
        let a = AgentCommand {
            cwd: "/work dir".into(),
            agent: "/opt/rm/ringmaster".into(),
            worker: "/opt/rm/ringmaster-worker".into(),
            leader: "10.0.0.1:4000".into(),
            node: 3,
            run_id: "it's".into(),
            wait_s: 30.0,
        };
        let c = agent_command(&a);
        assert_eq!(
            c,
            "cd '/work dir' || exit 70; exec /opt/rm/ringmaster agent --leader 10.0.0.1:4000 --node 3 --worker-bin /opt/rm/ringmaster-worker --log-dir \"${TMPDIR:-/tmp}\"/'ringmaster-it'\\''s-node-3' --wait 30 --token-stdin --until-stdin-closes --remove-logs"
        );
    }
}
