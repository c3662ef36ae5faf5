//! The torchrun habit: the same `ringmaster run` started on every node by
//! whatever starts processes there (a cluster manager, a JobSet, a plain
//! script), told `--nnodes N --node-rank K --rdzv-endpoint HOST:PORT` and
//! a shared token. Node 0 leads: its launcher hosts the rendezvous at the
//! endpoint and supervises the run (`Leader` is its provider). Every other
//! node's `ringmaster run` is a node agent (`agent::run_agent`, as the
//! Kubernetes pods and EC2 instances run): it joins the leader with the
//! token and starts its node's workers on the leader's word.
//!
//! Token rules (as the pods'): every node presents the same secret, from
//! `--token-file` or RINGMASTER_RDZV_TOKEN, never from the command line;
//! the leader refuses agents and workers without it.

use crate::error::LaunchError;
use proto::SpecIssue;

/// The shortest token accepted: 128 bits of hex.
pub const MIN_TOKEN_CHARS: usize = 32;

/// This process's place in a run started alike on every node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRank {
    pub node_rank: u32,
    pub nnodes: u32,
    /// The leader's rendezvous, as every node reaches it.
    pub host: String,
    pub port: u16,
    pub token: String,
    /// Where this node's workers listen (an agent's; none: the address
    /// the leader sees it connect from).
    pub node_addr: Option<String>,
}

/// The flags as given.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub node_rank: Option<u32>,
    pub rdzv_endpoint: Option<String>,
    /// The token file's text, or why it could not be read.
    pub token_file: Option<Result<String, String>>,
    /// RINGMASTER_RDZV_TOKEN.
    pub env_token: Option<String>,
    pub node_addr: Option<String>,
}

fn issue(field: &str, m: impl Into<String>) -> LaunchError {
    LaunchError::Config(vec![SpecIssue::new(field, m.into())])
}

/// The mode the flags ask for (None: an ordinary run), checked against the
/// job: every problem names the flag or field.
pub fn resolve(f: &Flags, spec: &proto::spec::JobSpec) -> Result<Option<NodeRank>, LaunchError> {
    let (node_rank, endpoint) = match (f.node_rank, &f.rdzv_endpoint) {
        (None, None) => {
            if f.node_addr.is_some() {
                return Err(issue("--node-addr", "--node-addr goes with --node-rank"));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(issue(
                "--rdzv-endpoint",
                "--node-rank needs --rdzv-endpoint HOST:PORT, where node 0 hosts the rendezvous (torchrun's --rdzv-endpoint)",
            ))
        }
        (None, Some(_)) => {
            return Err(issue(
                "--node-rank",
                "--rdzv-endpoint needs --node-rank K (0 on the node that leads)",
            ))
        }
        (Some(k), Some(e)) => (k, e),
    };
    let (host, port) = endpoint
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| {
            issue(
                "--rdzv-endpoint",
                format!("{endpoint:?} is not HOST:PORT (e.g. node0.cluster:29400)"),
            )
        })?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        issue(
            "--rdzv-endpoint",
            format!("{port:?} in {endpoint:?} is not a port (1-65535; every node must know it, so not 0)"),
        )
    })?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let nnodes = spec.resources.nodes;
    if node_rank >= nnodes {
        return Err(issue(
            "--node-rank",
            format!("node rank {node_rank} is not below --nnodes {nnodes} (resources.nodes)"),
        ));
    }
    if !matches!(spec.provider, proto::spec::Provider::Local { .. }) {
        return Err(issue(
            "provider.kind",
            format!(
                "--node-rank starts a run on machines something else started: provider.kind local only; a {} job's nodes are started by ringmaster itself",
                spec.provider.kind()
            ),
        ));
    }
    let token = match (&f.token_file, &f.env_token) {
        (Some(Err(e)), _) => return Err(issue("--token-file", e.clone())),
        (Some(Ok(t)), _) => t.trim().to_string(),
        (None, Some(t)) => t.trim().to_string(),
        (None, None) => {
            return Err(issue(
                "--token-file",
                "--node-rank needs the run's shared token on every node: --token-file FILE or RINGMASTER_RDZV_TOKEN (e.g. `openssl rand -hex 16`); never on the command line",
            ))
        }
    };
    let field = if f.token_file.is_some() {
        "--token-file"
    } else {
        "RINGMASTER_RDZV_TOKEN"
    };
    if token.len() < MIN_TOKEN_CHARS || token.chars().any(|c| c.is_whitespace()) {
        return Err(issue(
            field,
            format!(
                "the shared token must be at least {MIN_TOKEN_CHARS} characters without spaces (got {}); `openssl rand -hex 16` makes one",
                token.len()
            ),
        ));
    }
    if let Some(a) = &f.node_addr {
        if a.parse::<std::net::IpAddr>().is_err() {
            return Err(issue("--node-addr", format!("{a:?} is not an IP address")));
        }
    }
    Ok(Some(NodeRank {
        node_rank,
        nnodes,
        host,
        port,
        token,
        node_addr: f.node_addr.clone(),
    }))
}

impl NodeRank {
    /// HOST:PORT as the nodes reach it.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Where the leader binds: the endpoint's own address when it is one
    /// (a loopback endpoint stays on loopback), else every address.
    pub fn bind(&self) -> String {
        match self.host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            Ok(ip) => format!("{ip}:{}", self.port),
            Err(_) => format!("0.0.0.0:{}", self.port),
        }
    }

    /// The leader's address for its own workers and MASTER_ADDR.
    pub fn leader_addr(&self) -> String {
        match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => crate::slurm::node_addr(&self.host),
        }
    }
}

/// The leading node's provider: node 0's workers here, every other node's
/// through its agent, each node's workers told the address its agent
/// listens on.
/// (A multi-node Kubernetes job's pod 0 leads the same way.)
pub struct Leader {
    rdzv: crate::rendezvous::Rendezvous,
    nodes: u32,
    addr: String,
    kind: &'static str,
}

impl Leader {
    pub fn new(rdzv: crate::rendezvous::Rendezvous, nr: &NodeRank) -> Self {
        Leader::of("node-rank", rdzv, nr.nnodes, nr.leader_addr())
    }

    /// A leader of `nodes` nodes whose own address (its workers' and
    /// MASTER_ADDR) is `addr`, reported as provider `kind`.
    pub fn of(
        kind: &'static str,
        rdzv: crate::rendezvous::Rendezvous,
        nodes: u32,
        addr: String,
    ) -> Self {
        Leader {
            rdzv,
            nodes,
            addr,
            kind,
        }
    }
}

impl crate::provider::Provider for Leader {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn agent_nodes(&self) -> Vec<u32> {
        (1..self.nodes).collect()
    }
    fn worker_contract(&self, node: u32, _local: u32, c: &mut proto::contract::WorkerContract) {
        c.master_addr = self.addr.clone();
        if node == 0 {
            c.node_addr = self.addr.clone();
        } else if let Some(a) = self.rdzv.agent_addr(node) {
            c.node_addr = a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: u32, provider: serde_json::Value) -> proto::spec::JobSpec {
        proto::spec::compile(serde_json::json!({
            "name": "t", "resources": {"nodes": nodes, "devices_per_node": 2},
            "workload": {"kind": "command", "argv": ["true"]},
            "provider": provider}))
        .unwrap()
        .spec
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn flags(k: Option<u32>, e: Option<&str>) -> Flags {
        Flags {
            node_rank: k,
            rdzv_endpoint: e.map(str::to_string),
            env_token: Some(TOKEN.into()),
            ..Flags::default()
        }
    }

    fn field(r: Result<Option<NodeRank>, LaunchError>) -> String {
        match r {
            Err(LaunchError::Config(v)) => v[0].path.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_table() {
        let local = spec(4, serde_json::json!({"kind": "local"}));
        assert_eq!(resolve(&Flags::default(), &local).unwrap(), None);
        let ok = resolve(&flags(Some(2), Some("10.0.0.1:29400")), &local)
            .unwrap()
            .unwrap();
        assert_eq!(
            (ok.node_rank, ok.nnodes, ok.host.as_str(), ok.port),
            (2, 4, "10.0.0.1", 29400)
        );
        assert_eq!(ok.bind(), "10.0.0.1:29400");
        let named = resolve(&flags(Some(0), Some("node0.cluster:29400")), &local)
            .unwrap()
            .unwrap();
        assert_eq!(named.bind(), "0.0.0.0:29400");
        let v6 = resolve(&flags(Some(0), Some("[::1]:29400")), &local)
            .unwrap()
            .unwrap();
        assert_eq!(
            (v6.bind(), v6.endpoint()),
            ("[::1]:29400".into(), "[::1]:29400".into())
        );
        // (flags, the field the error names)
        let table: Vec<(Flags, &str)> = vec![
            (flags(Some(1), None), "--rdzv-endpoint"),
            (flags(None, Some("h:1")), "--node-rank"),
            (flags(Some(4), Some("h:1")), "--node-rank"),
            (flags(Some(1), Some("h")), "--rdzv-endpoint"),
            (flags(Some(1), Some(":29400")), "--rdzv-endpoint"),
            (flags(Some(1), Some("h:0")), "--rdzv-endpoint"),
            (flags(Some(1), Some("h:70000")), "--rdzv-endpoint"),
            (
                Flags {
                    env_token: None,
                    ..flags(Some(1), Some("h:1"))
                },
                "--token-file",
            ),
            (
                Flags {
                    env_token: Some("short".into()),
                    ..flags(Some(1), Some("h:1"))
                },
                "RINGMASTER_RDZV_TOKEN",
            ),
            (
                Flags {
                    token_file: Some(Err("cannot read /x: No such file".into())),
                    ..flags(Some(1), Some("h:1"))
                },
                "--token-file",
            ),
            (
                Flags {
                    token_file: Some(Ok("a b".repeat(20))),
                    ..flags(Some(1), Some("h:1"))
                },
                "--token-file",
            ),
            (
                Flags {
                    node_addr: Some("nodeA".into()),
                    ..flags(Some(1), Some("h:1"))
                },
                "--node-addr",
            ),
            (
                Flags {
                    node_addr: Some("10.0.0.2".into()),
                    ..Flags::default()
                },
                "--node-addr",
            ),
        ];
        for (f, want) in table {
            assert_eq!(field(resolve(&f, &local)), want, "{f:?}");
        }
        let sim = spec(4, serde_json::json!({"kind": "sim", "cloud": "aws"}));
        assert_eq!(
            field(resolve(&flags(Some(1), Some("h:1")), &sim)),
            "provider.kind"
        );
        // The file's token wins over the environment's, trimmed.
        let f = Flags {
            token_file: Some(Ok(format!("{TOKEN}x\n"))),
            ..flags(Some(1), Some("h:1"))
        };
        assert_eq!(
            resolve(&f, &local).unwrap().unwrap().token,
            format!("{TOKEN}x")
        );
    }
}
