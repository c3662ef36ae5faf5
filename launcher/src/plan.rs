//! Where each worker goes: nodes, addresses, ranks and the static part of
//! each worker's environment. Pure; `ringmaster plan` prints it and `run`
//! executes it.

use proto::contract::{Accelerator, Transport, WorkerContract};
use proto::spec::{Compiled, JobSpec};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub node_rank: u32,
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerPlan {
    pub rank: u32,
    pub node_rank: u32,
    pub local_rank: u32,
    pub node_addr: String,
    /// What the worker is told (`proto::contract`): the parts that do not
    /// change between attempts; the supervisor fills in the rest. Shown
    /// (plan --json) as the variables it sets.
    #[serde(rename = "env", serialize_with = "contract_env")]
    pub contract: WorkerContract,
}

fn contract_env<S: serde::Serializer>(c: &WorkerContract, s: S) -> Result<S::Ok, S::Error> {
    c.to_env().serialize(s)
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub provider: String,
    pub world_size: u32,
    pub threads_per_worker: u32,
    pub nodes: Vec<NodePlan>,
    pub workers: Vec<WorkerPlan>,
    pub master_addr: String,
    pub workload: String,
    pub accelerator: String,
    /// GPUs the workers share (None: CPU).
    pub gpus: Option<usize>,
    pub warnings: Vec<String>,
    /// `ssh`: hostfile hosts beyond the job's nodes, to stand in for slow ones.
    pub spare_hosts: Vec<String>,
    /// The job's own `env`, the same for every worker (kept once: a job
    /// may set thousands of variables for thousands of workers).
    pub env: Vec<(String, String)>,
}

impl Plan {
    /// A worker's environment for a contract: the contract's variables,
    /// then the job's own (which win over the defaults; the reserved ones
    /// the spec refuses to set).
    pub fn worker_env(&self, c: &WorkerContract) -> Vec<(String, String)> {
        c.with_user_env(&self.env)
    }

    /// The plan on the nodes `live` (the provider's node numbers, in
    /// order) only: a smaller world. `node_rank` stays the provider's
    /// node (what the supervisor asks the provider about); ranks are
    /// numbered again (node i of `live` has ranks i x L .. i x L + L - 1)
    /// and each worker's contract tells it the new rank, world size, node
    /// rank, node count and master address.
    pub fn on_nodes(&self, live: &[u32]) -> Plan {
        let per_node = self
            .workers
            .first()
            .map_or(1, |w| w.contract.local_world_size);
        let k = live.len() as u32;
        let nodes: Vec<NodePlan> = live
            .iter()
            .filter_map(|n| self.nodes.iter().find(|p| p.node_rank == *n).cloned())
            .collect();
        let master = nodes
            .first()
            .map_or(self.master_addr.clone(), |n| n.addr.clone());
        let mut workers = Vec::new();
        for (i, n) in live.iter().enumerate() {
            for w in self.workers.iter().filter(|w| w.node_rank == *n) {
                let mut w = w.clone();
                w.rank = i as u32 * per_node + w.local_rank;
                let c = &mut w.contract;
                c.rank = w.rank;
                c.world_size = k * per_node;
                c.node_rank = i as u32;
                c.nodes = k;
                c.master_addr = master.clone();
                workers.push(w);
            }
        }
        Plan {
            world_size: k * per_node,
            master_addr: master,
            nodes,
            workers,
            ..self.clone()
        }
    }
}

/// `gpus`: how many GPUs the workers share (None: CPU); `nccl`: use NCCL;
/// `hosts`: the machines of a `slurm` or `ssh` job in node order (the
/// allocation's nodes, the hostfile's hosts; None: placeholders).
pub fn plan(
    c: &Compiled,
    cores: usize,
    gpus: Option<usize>,
    device_ids: Option<&[String]>,
    nccl: bool,
    hosts: Option<&[String]>,
) -> Plan {
    let s = &c.spec;
    let r = &s.resources;
    let nodes = crate::providers::nodes(s, hosts);
    let world = r.nodes * r.devices_per_node;
    // Local nodes share this machine's cores.
    let threads = s
        .threads_per_worker
        .unwrap_or_else(|| ((cores as u32) / world.max(1)).max(1));
    let hb_ms = ((s.recovery.heartbeat_interval_s * 1000.0).round() as u64).max(1);
    // Nodes that are processes on this one machine (local, sim) share its
    // GPUs; any other node is a machine of its own.
    let one_machine = s.nodes_on_one_machine();
    let mut workers = Vec::new();
    for node in &nodes {
        for local in 0..r.devices_per_node {
            let rank = node.node_rank * r.devices_per_node + local;
            let sharing = s.workers_per_machine();
            let contract = WorkerContract {
                rank,
                local_rank: local,
                world_size: world,
                local_world_size: r.devices_per_node,
                node_rank: node.node_rank,
                nodes: r.nodes,
                max_restarts: s.recovery.max_restarts,
                master_addr: nodes[0].addr.clone(),
                node_addr: node.addr.clone(),
                threads,
                workload: s.workload.clone(),
                collective: s.collective.clone(),
                checkpoint: s.checkpoint.clone(),
                // One watcher per node: the node's first worker polls.
                notices: (local == 0 && !s.notices.watch.is_empty()).then(|| s.notices.clone()),
                heartbeat_interval_ms: hb_ms,
                accelerator: if gpus.is_some() {
                    Accelerator::Cuda
                } else {
                    Accelerator::Cpu
                },
                transport: if nccl {
                    Transport::Nccl
                } else {
                    Transport::Tcp
                },
                cuda_visible_devices: gpus
                    .map(|g| visible_device(rank, local, one_machine, g, device_ids)),
                gpu_shared: gpus.is_some_and(|g| sharing as usize > g),
                // Per attempt (the supervisor fills them in), or per run.
                master_port: 0,
                run_id: String::new(),
                restart_count: 0,
                rdzv_endpoint: String::new(),
                rdzv_token: String::new(),
                attempt_dir: None,
                library_path: None,
                keep_survivors: false,
                sigterm_is_notice: false,
                preflight: false,
                // A command job's program is told of a notice with this
                // signal (`notices.program_signal`).
                program_signal: match s.workload {
                    proto::spec::Workload::Command(_) => s.notices.program_signal(),
                    _ => None,
                },
                resume: None,
            };
            workers.push(WorkerPlan {
                rank,
                node_rank: node.node_rank,
                local_rank: local,
                node_addr: node.addr.clone(),
                contract,
            });
        }
    }
    Plan {
        provider: s.provider.kind().into(),
        world_size: world,
        threads_per_worker: threads,
        master_addr: nodes[0].addr.clone(),
        nodes,
        workers,
        workload: s.workload.kind().into(),
        accelerator: s.resources.accelerator.clone(),
        gpus,
        warnings: c
            .warnings
            .iter()
            .map(|w| w.to_string())
            .chain(match hang_detection(s) {
                HangWatch::OnceReported => Some("hang detection watches a `command` program once it reports its steps (the `ringmaster` Python package); until then a dead or silent worker is caught by its heartbeat".to_string()),
                HangWatch::Always => None,
            })
            .collect(),
        spare_hosts: Vec::new(),
        env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// The CUDA_VISIBLE_DEVICES of one worker. Nodes on this one machine share
/// its GPUs round-robin by global rank; a node that is a machine of its own
/// uses its GPUs by local rank. The index is into the launcher's own
/// CUDA_VISIBLE_DEVICES when it has one and the node is this machine (Slurm
/// gave it `2,3`: rank 0 gets 2, not 0; UUIDs pass through), or into the
/// MIG instances' UUIDs (`ids`, from `load::resolve`), else a device ordinal.
pub fn visible_device(
    rank: u32,
    local_rank: u32,
    one_machine: bool,
    gpus: usize,
    ids: Option<&[String]>,
) -> String {
    let i = if one_machine { rank } else { local_rank } as usize % gpus.max(1);
    match ids.filter(|_| one_machine).and_then(|l| l.get(i)) {
        Some(id) => id.clone(),
        None => i.to_string(),
    }
}

/// Whether the launcher can tell a hung job from a slow one: only for
/// workloads that report their steps (Err: why not).
pub fn hang_detection(s: &JobSpec) -> HangWatch {
    match s.workload {
        proto::spec::Workload::Command(_) => HangWatch::OnceReported,
        _ => HangWatch::Always,
    }
}

/// How a job is watched for hangs (no progress for `hang_timeout_s`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HangWatch {
    /// From the rendezvous on (workloads whose steps and collectives the
    /// worker counts).
    Always,
    /// A `command` program: once it reports steps (the `ringmaster`
    /// package); one that reports none is caught only by its heartbeat.
    OnceReported,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranks_follow_node_order_then_local_rank() {
        let c = proto::compile(json!({"name": "p", "resources": {"nodes": 3, "devices_per_node": 2}, "workload": {"kind": "train"}})).unwrap();
        let p = plan(&c, 12, None, None, false, None);
        assert_eq!(p.world_size, 6);
        assert_eq!(p.threads_per_worker, 2);
        let got: Vec<(u32, u32, u32, &str)> = p
            .workers
            .iter()
            .map(|w| (w.rank, w.node_rank, w.local_rank, w.node_addr.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 0, "127.0.0.2"),
                (1, 0, 1, "127.0.0.2"),
                (2, 1, 0, "127.0.0.3"),
                (3, 1, 1, "127.0.0.3"),
                (4, 2, 0, "127.0.0.4"),
                (5, 2, 1, "127.0.0.4")
            ]
        );
        let env: std::collections::HashMap<_, _> =
            p.workers[3].contract.to_env().into_iter().collect();
        assert_eq!(env["RANK"], "3");
        assert_eq!(env["LOCAL_RANK"], "1");
        assert_eq!(env["GROUP_RANK"], "1");
        assert_eq!(env["MASTER_ADDR"], "127.0.0.2");
        assert_eq!(env["LOCAL_WORLD_SIZE"], "2");
        assert_eq!(env["RINGMASTER_ACCELERATOR"], "cpu");
        assert!(!env.contains_key("CUDA_VISIBLE_DEVICES"));
    }

    #[test]
    fn a_plan_on_fewer_nodes_numbers_its_ranks_again() {
        let c = proto::compile(json!({"name": "p", "resources": {"nodes": 3, "devices_per_node": 2}, "workload": {"kind": "train"}})).unwrap();
        let full = plan(&c, 12, None, None, false, None);
        // Node 1 of 0..3 is gone: nodes 0 and 2 make a world of 4.
        let p = full.on_nodes(&[0, 2]);
        assert_eq!(p.world_size, 4);
        let got: Vec<(u32, u32, u32, u32, u32, u32)> = p
            .workers
            .iter()
            .map(|w| {
                (
                    w.rank,
                    w.node_rank,
                    w.local_rank,
                    w.contract.rank,
                    w.contract.node_rank,
                    w.contract.world_size,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, 0, 0, 0, 4),
                (1, 0, 1, 1, 0, 4),
                (2, 2, 0, 2, 1, 4),
                (3, 2, 1, 3, 1, 4)
            ]
        );
        assert!(p
            .workers
            .iter()
            .all(|w| w.contract.nodes == 2 && w.contract.master_addr == full.nodes[0].addr));
        // Node 2's workers keep node 2's address.
        assert_eq!(p.workers[2].node_addr, full.nodes[2].addr);
        // All nodes: the same plan.
        let same = full.on_nodes(&[0, 1, 2]);
        assert_eq!(format!("{:?}", same.workers), format!("{:?}", full.workers));
        // Without node 0: node 1 leads.
        assert_eq!(full.on_nodes(&[1, 2]).master_addr, full.nodes[1].addr);
    }

    #[test]
    fn gpus_are_shared_round_robin() {
        let c = proto::compile(json!({"name": "p", "resources": {"nodes": 1, "devices_per_node": 3, "accelerator": "cuda"}, "workload": {"kind": "allreduce"}})).unwrap();
        let p = plan(&c, 16, Some(2), None, true, None);
        let devs: Vec<String> = p
            .workers
            .iter()
            .map(|w| w.contract.cuda_visible_devices.clone().unwrap())
            .collect();
        assert_eq!(devs, vec!["0", "1", "0"]);
        let env: std::collections::HashMap<_, _> =
            p.workers[0].contract.to_env().into_iter().collect();
        assert_eq!(env["NCCL_MULTI_RANK_GPU_ENABLE"], "1");
        assert_eq!(env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
        assert_eq!(env["RINGMASTER_BACKEND"], "nccl");
    }

    #[test]
    fn visible_device_table() {
        // (rank, local rank, one machine, GPUs, the launcher's list) -> device
        let cases: Vec<(u32, u32, bool, usize, Option<&str>, &str)> = vec![
            (0, 0, true, 2, None, "0"),
            (3, 1, true, 2, None, "1"),
            (2, 0, true, 4, None, "2"),
            // A restricted view: index into it.
            (0, 0, true, 2, Some("2,3"), "2"),
            (1, 1, true, 2, Some("2,3"), "3"),
            (2, 0, true, 2, Some("2,3"), "2"),
            (1, 1, true, 2, Some("GPU-aa, GPU-bb"), "GPU-bb"),
            (0, 0, true, 1, Some("MIG-1234"), "MIG-1234"),
            // A node of its own: by local rank, the launcher's list is not its.
            (5, 1, false, 8, Some("2,3"), "1"),
            (8, 0, false, 8, None, "0"),
            // A list shorter than the GPUs counted: an ordinal.
            (1, 1, true, 2, Some("4"), "1"),
        ];
        for (rank, local, one, g, parent, want) in cases {
            let ids: Option<Vec<String>> =
                parent.map(|p| p.split(',').map(|s| s.trim().to_string()).collect());
            assert_eq!(
                visible_device(rank, local, one, g, ids.as_deref()),
                want,
                "{rank} {local} {one} {g} {parent:?}"
            );
        }
    }

    #[test]
    fn user_env_and_thread_override() {
        let c = proto::compile(json!({"name": "p", "threads_per_worker": 3, "env": {"OMP_NUM_THREADS": "7", "FOO": "1"}, "workload": {"kind": "train"}})).unwrap();
        let p = plan(&c, 2, None, None, false, None);
        let env: std::collections::HashMap<_, _> =
            p.worker_env(&p.workers[0].contract).into_iter().collect();
        assert_eq!(env["OMP_NUM_THREADS"], "7");
        assert_eq!(env["RAYON_NUM_THREADS"], "3");
        assert_eq!(env["FOO"], "1");
    }
}
