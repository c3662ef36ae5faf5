//! The `ssh` provider: machines you own, listed in a hostfile as
//! DeepSpeed's and MPI's (`host slots=N`), each worker started there over
//! ssh under the env contract. The remote side runs the worker under a
//! small shell guard that stops it when the ssh session ends (the launcher
//! stopping it, the launcher dying, the connection dropping): SIGTERM, then
//! SIGKILL five seconds later, so nothing is left behind on the host.

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

/// The command the remote shell runs: the worker with the env contract,
/// stopped when the session's stdin closes; the session ends with the
/// worker's exit code.
pub fn remote_command(cwd: &Path, worker: &str, env: &[(String, String)]) -> String {
    let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", sh(v))).collect();
    // fd 3 keeps the session's stdin for the guard (a background job's
    // own stdin is /dev/null); the worker is the background job itself, so
    // $w is its pid; the guard uses only builtins until the session ends,
    // so killing it leaves nothing behind.
    format!(
        "cd {cwd} || exit 70; exec 3<&0 0</dev/null; env {vars} {worker} & w=$!; \
         {{ while read -r _ <&3; do :; done; kill -TERM $w; sleep 5; kill -KILL $w; }} >/dev/null 2>&1 & g=$!; \
         exec 3<&-; wait $w; rc=$?; kill $g 2>/dev/null; exit $rc",
        cwd = sh(&cwd.display().to_string()),
        vars = vars.join(" "),
        worker = sh(worker),
    )
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
    ssh_args: Vec<String>,
    worker_path: Option<String>,
}

impl SshProvider {
    pub fn new(
        hosts: Vec<String>,
        spares: Vec<String>,
        ssh_args: Vec<String>,
        worker_path: Option<String>,
    ) -> Self {
        SshProvider {
            hosts,
            spares: spares.into(),
            retired: Vec::new(),
            addrs: Default::default(),
            ssh_args,
            worker_path,
        }
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
            ready.push(NodeEvent::Ready {
                node,
                vm: format!("{spare} (was {old})"),
                zone: String::new(),
                market: "owned",
            });
        }
        Ok((ready, Vec::new()))
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
    fn spawn_worker(
        &self,
        node: u32,
        bin: &Path,
        _c: &proto::contract::WorkerContract,
        env: &[(String, String)],
        log: &Path,
        tee: Option<(u32, crate::progress::Console)>,
    ) -> std::io::Result<crate::provider::Spawned> {
        let cwd = std::env::current_dir()?;
        let worker = self
            .worker_path
            .clone()
            .unwrap_or_else(|| bin.display().to_string());
        let mut args: Vec<std::ffi::OsString> = ["-T", "-o", "BatchMode=yes"]
            .iter()
            .map(std::ffi::OsString::from)
            .collect();
        args.extend(self.ssh_args.iter().map(std::ffi::OsString::from));
        args.push(self.hosts[node as usize].clone().into());
        args.push(remote_command(&cwd, &worker, env).into());
        // The contract travels in the remote command, not in ssh's own
        // environment; stdin stays open for the session's life.
        crate::process::spawn_remote(std::ffi::OsStr::new("ssh"), &args, log, tee)
            .map(crate::provider::Spawned::Local)
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
    fn the_remote_command_quotes_the_contract() {
        let c = remote_command(
            Path::new("/work dir"),
            "/opt/rm/ringmaster-worker",
            &[
                ("RANK".into(), "3".into()),
                (
                    "RINGMASTER_WORKLOAD".into(),
                    "{\"kind\":\"train\",\"x\":\"it's\"}".into(),
                ),
            ],
        );
        assert!(c.starts_with("cd '/work dir' || exit 70; exec 3<&0 0</dev/null; env RANK=3 RINGMASTER_WORKLOAD='{\"kind\":\"train\",\"x\":\"it'\\''s\"}' /opt/rm/ringmaster-worker & w=$!;"), "{c}");
        assert!(
            c.contains("while read -r _ <&3; do :; done; kill -TERM $w"),
            "{c}"
        );
        assert!(c.ends_with("exit $rc"), "{c}");
    }
}
