//! The one place a job's `provider` becomes code: which machines it runs
//! on where the provider names them (`machines`: a Slurm allocation's
//! nodes, an ssh hostfile's hosts and spares), which provider object
//! starts and watches its nodes (`build`), and where the rendezvous listens
//! for them (`rendezvous_bind`), the nodes' names and addresses (`nodes`),
//! whether a stop at a checkpoint goes back to the queue (`requeues`). The supervisor talks only to the
//! `provider::Provider` trait; the trait's module depends on no provider.

use crate::error::LaunchError;

/// The machines of a job whose provider names them.
#[derive(Debug, Default)]
pub struct Machines {
    /// Node hosts in node order (None: the plan places the nodes itself).
    pub hosts: Option<Vec<String>>,
    /// `ssh`: hostfile hosts beyond the job's nodes (stand-ins for slow ones).
    pub spares: Vec<String>,
    /// `slurm`: the allocation this run is inside.
    pub allocation: Option<crate::slurm::Allocation>,
}

/// The machines a job runs on: for `slurm`, the allocation it runs inside
/// (an error outside one, or when it has too few nodes); for `ssh`, the
/// hostfile's hosts; otherwise none to name.
pub fn machines(spec: &proto::spec::JobSpec) -> Result<Machines, LaunchError> {
    use proto::spec::Provider as P;
    match &spec.provider {
        P::Slurm { .. } => {
            let alloc = crate::slurm::Allocation::from_env().map_err(|e| {
                LaunchError::Unsupported(format!(
                    "provider.kind slurm: {e}; submit the job with `ringmaster submit --scheduler slurm`, or run it inside `salloc`/`sbatch`"
                ))
            })?;
            if (alloc.nodes.len() as u32) < spec.resources.nodes {
                return Err(LaunchError::Config(vec![proto::SpecIssue::new(
                    "resources.nodes",
                    format!(
                        "the Slurm allocation {} has {} node(s) ({}), the job asks for {}",
                        alloc.job_id,
                        alloc.nodes.len(),
                        alloc.nodes.join(","),
                        spec.resources.nodes
                    ),
                )]));
            }
            Ok(Machines {
                hosts: Some(alloc.nodes.clone()),
                spares: Vec::new(),
                allocation: Some(alloc),
            })
        }
        P::Ssh { .. } => {
            let (hosts, spares) = ssh_hosts(spec)?;
            Ok(Machines {
                hosts: Some(hosts),
                spares,
                allocation: None,
            })
        }
        _ => Ok(Machines::default()),
    }
}

/// The hosts of an `ssh` job: its hostfile, include/exclude applied, the
/// first `resources.nodes` of them, each with room for the workers; and
/// the spares (the later hosts with room), which stand in for nodes the
/// preflight check finds slow.
fn ssh_hosts(spec: &proto::spec::JobSpec) -> Result<(Vec<String>, Vec<String>), LaunchError> {
    let proto::spec::Provider::Ssh {
        hostfile,
        include,
        exclude,
        ..
    } = &spec.provider
    else {
        return Ok((Vec::new(), Vec::new()));
    };
    let issue = |f: &str, m: String| LaunchError::Config(vec![proto::SpecIssue::new(f, m)]);
    let text = std::fs::read_to_string(hostfile)
        .map_err(|e| issue("provider.hostfile", format!("cannot read {hostfile}: {e}")))?;
    let hosts = crate::ssh::parse_hostfile(&text)
        .map_err(|e| issue("provider.hostfile", format!("{hostfile}: {e}")))?;
    let hosts = crate::ssh::select(hosts, include.as_deref(), exclude.as_deref())
        .map_err(|(f, m)| issue(f, m))?;
    let r = &spec.resources;
    if (hosts.len() as u32) < r.nodes {
        return Err(issue(
            "resources.nodes",
            format!(
                "{hostfile} has {} host(s) left after include/exclude, the job asks for {}",
                hosts.len(),
                r.nodes
            ),
        ));
    }
    let mut hosts = hosts;
    let spares: Vec<String> = hosts
        .split_off(r.nodes as usize)
        .into_iter()
        .filter(|h| h.slots >= r.devices_per_node)
        .map(|h| h.name)
        .collect();
    if let Some(h) = hosts.iter().find(|h| h.slots < r.devices_per_node) {
        return Err(issue(
            "resources.devices_per_node",
            format!(
                "{} has slots={} in {hostfile}, the job asks for {} worker(s) per node",
                h.name, h.slots, r.devices_per_node
            ),
        ));
    }
    Ok((hosts.into_iter().map(|h| h.name).collect(), spares))
}

/// Whether a job's nodes (all, or every one but the leader's) are node
/// agents that relay their ranks' connections: Kubernetes pods past the
/// first, EC2 instances, ssh hosts, Slurm nodes. (`--node-rank` runs are
/// the same; the flag is not in the job.)
pub fn nodes_have_agents(spec: &proto::spec::JobSpec) -> bool {
    use proto::spec::Provider as P;
    crate::kube::multi_node(spec)
        || matches!(
            spec.provider,
            P::Aws { .. } | P::Ssh { .. } | P::Slurm { .. }
        )
}

/// Where the rendezvous listens for a job, and whether its workers reach
/// it from other machines (then on the first node's address). Local and
/// simulated nodes are this machine: loopback only.
pub fn rendezvous_bind(spec: &proto::spec::JobSpec) -> (String, bool) {
    use proto::spec::Provider as P;
    if crate::kube::multi_node(spec) {
        // The agents find it on the Service's port.
        return (format!("0.0.0.0:{}", crate::kube::rdzv_port()), true);
    }
    match spec.provider {
        P::Slurm { .. } | P::Ssh { .. } => ("0.0.0.0:0".into(), true),
        // The instances reach it at provider.rendezvous_host (0: any free
        // port; the user data names the one bound).
        P::Aws {
            rendezvous_port, ..
        } => (format!("0.0.0.0:{rendezvous_port}"), true),
        _ => ("127.0.0.1:0".into(), false),
    }
}

/// The provider a job names: the one place that turns `provider.kind`
/// into the code that starts and watches its nodes.
/// What a provider is built with besides the job and its plan.
pub struct Reach<'a> {
    pub rdzv: &'a crate::rendezvous::Rendezvous,
    /// The rendezvous as the nodes reach it (what agents are told).
    pub leader: &'a str,
    pub run_id: &'a str,
    pub run_dir: &'a std::path::Path,
    /// This machine's worker binary.
    pub worker_bin: &'a std::path::Path,
}

pub fn build(
    spec: &proto::spec::JobSpec,
    plan: &crate::plan::Plan,
    reach: Reach,
) -> Result<Box<dyn crate::provider::Provider>, crate::error::LaunchError> {
    use proto::spec::Provider as P;
    let Reach {
        rdzv,
        leader,
        run_id,
        run_dir,
        worker_bin,
    } = reach;
    let names = || {
        plan.nodes
            .iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
    };
    Ok(match &spec.provider {
        P::Sim { .. } => {
            let addrs: Vec<String> = plan.nodes.iter().map(|n| n.addr.clone()).collect();
            let sim = crate::sim::SimNodes::new(spec, &addrs).map_err(|e| match e {
                crate::sim::SimError::Spec(field, m) => {
                    LaunchError::Config(vec![proto::SpecIssue::new(&field, m)])
                }
                crate::sim::SimError::NoCapacity(m) => LaunchError::NoCapacity(m),
                e => LaunchError::Io(format!("sim: {e}")),
            })?;
            match sim {
                Some(sim) => Box::new(sim),
                None => Box::new(crate::provider::Local),
            }
        }
        // Pod 0 leads the other pods' agents as node 0 of a node-rank run.
        P::Kubernetes { .. } if crate::kube::multi_node(spec) => {
            Box::new(crate::node_rank::Leader::of(
                "kubernetes",
                rdzv.clone(),
                spec.resources.nodes,
                plan.master_addr.clone(),
            ))
        }
        P::Gcp { .. } | P::Azure { .. } => return Err(request_only(spec)),
        P::Aws { .. } => Box::new(crate::aws::AwsNodes::new(
            spec,
            rdzv.clone(),
            run_id,
            run_dir,
        )?),
        P::Slurm { .. } => {
            let settings = crate::slurm::SlurmSettings {
                agent: this_program()?,
                worker: worker_bin.to_path_buf(),
                leader: leader.to_string(),
                run_id: run_id.to_string(),
                wait_s: spec.recovery.rendezvous_timeout_s,
                gpus_per_node: plan.gpus.map(|_| spec.resources.devices_per_node),
            };
            Box::new(crate::slurm::SlurmProvider::new(
                names(),
                settings,
                rdzv.clone(),
                run_dir,
            )?)
        }
        P::Ssh {
            ssh_args,
            worker_path,
            ..
        } => {
            // The hosts have ringmaster where this machine has it, or
            // where provider.worker_path says (`ringmaster` beside it).
            let worker = worker_path
                .clone()
                .unwrap_or_else(|| worker_bin.display().to_string());
            let agent = match worker_path {
                Some(w) => std::path::Path::new(w)
                    .with_file_name("ringmaster")
                    .display()
                    .to_string(),
                None => this_program()?.display().to_string(),
            };
            let settings = crate::ssh::SshSettings {
                ssh_args: ssh_args.clone(),
                worker,
                agent,
                leader: leader.to_string(),
                run_id: run_id.to_string(),
                wait_s: spec.recovery.rendezvous_timeout_s,
            };
            Box::new(crate::ssh::SshProvider::new(
                names(),
                plan.spare_hosts.clone(),
                settings,
                rdzv.clone(),
                run_dir,
            )?)
        }
        _ => Box::new(crate::provider::Local),
    })
}

/// This `ringmaster`, which node agents run too (an allocation's nodes
/// and ssh hosts have it at the same path).
fn this_program() -> Result<std::path::PathBuf, LaunchError> {
    std::env::current_exe().map_err(LaunchError::system("cannot find this program".to_string()))
}

/// Each node's name and address: local and simulated nodes on loopback
/// addresses from `first_address`; a Kubernetes job's pods by their names
/// in the Service's domain; a Slurm allocation's or an ssh hostfile's
/// `hosts` in node order (the first node's address may be the job's
/// `rendezvous_host`).
pub fn nodes(s: &proto::spec::JobSpec, hosts: Option<&[String]>) -> Vec<crate::plan::NodePlan> {
    use crate::plan::NodePlan;
    use proto::spec::Provider as P;
    use std::net::Ipv4Addr;
    let r = &s.resources;
    match &s.provider {
        P::Kubernetes { .. } if r.nodes > 1 => (0..r.nodes)
            .map(|i| {
                // Pods reach each other by their names in the Service's
                // domain (which do not resolve outside a cluster: this
                // machine then).
                let name = crate::kube::pod_host(s, i);
                NodePlan {
                    node_rank: i,
                    addr: crate::slurm::node_addr(&name),
                    name,
                }
            })
            .collect(),
        P::Local { .. } | P::Sim { .. } | P::Kubernetes { .. } => {
            // A Kubernetes job is one pod: its nodes are the pod's loopback.
            let first_address = match &s.provider {
                P::Local { first_address } | P::Sim { first_address, .. } => first_address.as_str(),
                _ => "127.0.0.2",
            };
            let base: Ipv4Addr = first_address.parse().expect("compile checked the address");
            (0..r.nodes)
                .map(|i| NodePlan {
                    node_rank: i,
                    name: format!("node-{i}"),
                    addr: Ipv4Addr::from(u32::from(base) + i).to_string(),
                })
                .collect()
        }
        // An instance's address is known once its agent connects (the
        // provider puts it in its workers' contracts).
        P::Aws { .. } | P::Gcp { .. } | P::Azure { .. } => (0..r.nodes)
            .map(|i| NodePlan {
                node_rank: i,
                name: format!("{}-node-{i}", s.provider.kind()),
                addr: "0.0.0.0".into(),
            })
            .collect(),
        P::Slurm {
            rendezvous_host, ..
        }
        | P::Ssh {
            rendezvous_host, ..
        } => (0..r.nodes)
            .map(|i| {
                let name = hosts
                    .and_then(|h| h.get(i as usize).cloned())
                    .unwrap_or_else(|| format!("{}-node-{i}", s.provider.kind()));
                let addr = match (i, rendezvous_host) {
                    (0, Some(h)) => h.clone(),
                    _ => crate::slurm::node_addr(&name),
                };
                NodePlan {
                    node_rank: i,
                    addr,
                    name,
                }
            })
            .collect(),
    }
}

/// Why `run` refuses a gcp or azure job.
pub fn request_only(spec: &proto::spec::JobSpec) -> LaunchError {
    LaunchError::Unsupported(format!(
        "provider.kind {}: ringmaster builds its requests (`ringmaster plan` shows them) but does not send them; this provider is not exercised end to end (docs/aws.md, \"GCP and Azure\"); provider aws runs",
        spec.provider.kind()
    ))
}

/// The host workers and agents reach a remote rendezvous at: an aws
/// job's `provider.rendezvous_host`, else the first node's address.
pub fn rendezvous_host(spec: &proto::spec::JobSpec, plan: &crate::plan::Plan) -> String {
    match &spec.provider {
        proto::spec::Provider::Aws {
            rendezvous_host, ..
        } => rendezvous_host.clone(),
        _ => plan.master_addr.clone(),
    }
}

/// Whether a run that stopped at a committed checkpoint goes back to the
/// scheduler's queue (Slurm with `requeue`), to resume from it.
pub fn requeues(spec: &proto::spec::JobSpec) -> bool {
    matches!(
        spec.provider,
        proto::spec::Provider::Slurm { requeue: true, .. }
    )
}
