//! Where the nodes come from: the providers and their settings.

use super::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the nodes come from. Later providers (sim, ssh, slurm, kubernetes)
/// are further variants of this closed enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Provider {
    /// N logical nodes on this machine, node i on loopback address
    /// `first_address + i` (127.0.0.2, 127.0.0.3, ...).
    Local {
        #[serde(default = "default_first_address")]
        first_address: String,
    },
    /// The spot-market simulator: local nodes as for `local`, each with its
    /// own metadata service speaking `cloud`'s formats; preemptions at the
    /// scheduled times publish a notice there and SIGKILL the node's
    /// workers at the deadline; the lost node is replaced after the
    /// provisioning delay and the run resumes from its checkpoint.
    Sim {
        #[serde(default = "default_first_address")]
        first_address: String,
        /// "aws", "gcp" or "azure".
        cloud: String,
        /// From asking for a replacement node to its being ready.
        #[serde(default = "default_provisioning_delay")]
        provisioning_delay_s: f64,
        /// From a notice to the kill; default the cloud's (AWS 120 s,
        /// GCP and Azure 30 s).
        #[serde(default)]
        notice_window_s: Option<f64>,
        /// When which node is preempted, in simulated seconds from the
        /// run's start.
        #[serde(default)]
        preemptions: Vec<SimPreemption>,
        /// The catalog offer (instance type) the nodes are billed as; none:
        /// no cost in the report.
        #[serde(default)]
        offer: Option<String>,
        /// "spot" (default), "on-demand", or "spot-then-on-demand" (spot
        /// while any allowed zone has spot capacity, else on-demand).
        #[serde(default)]
        market: Option<String>,
        /// Preemptions drawn at random as well: each spot node is
        /// interrupted at the offer's monthly rate (its interruption
        /// bracket's midpoint) in simulated time, from a seeded generator
        /// (the same seed, the same times).
        #[serde(default)]
        random_preemptions: Option<RandomPreemptions>,
        /// Simulated seconds per real second. The market runs in simulated
        /// time (scheduled preemptions, traces, random rates, billing);
        /// `provisioning_delay_s`, `notice_window_s` and `capacity_wait_s`
        /// are real seconds. 3600: an hour of market a second.
        #[serde(default = "default_time_scale")]
        time_scale: f64,
        /// The zones nodes may run in, in order of preference, each with
        /// its spot capacity (static or from a trace). Default: one zone
        /// with unlimited spot capacity.
        #[serde(default)]
        zones: Vec<SimZone>,
        /// Where a lost node's replacement is placed: `same_zone_first`
        /// (default: its zone, then the others in order; SkyPilot's
        /// FAILOVER) or `other_zones_first` (the other zones, its own last;
        /// like SkyPilot's EAGER_NEXT_REGION).
        #[serde(default)]
        failover: Failover,
        /// With market `spot` and no spot capacity in any zone: how long
        /// (real seconds) to wait for capacity before giving up (exit 9).
        #[serde(default = "default_capacity_wait")]
        capacity_wait_s: f64,
        /// Deadline mode: finish by `at_s` (simulated seconds from the
        /// start). The nodes run on spot while the slack left can absorb
        /// another preemption and the move to on-demand; once it cannot,
        /// the group stops at an agreed step and every node moves to
        /// on-demand (the safety net of Can't Be Late, NSDI'24).
        #[serde(default)]
        deadline: Option<SimDeadline>,
    },
    /// Inside a Slurm allocation: the nodes are the allocation's
    /// (`SLURM_JOB_NODELIST`, first `resources.nodes` of them), each worker
    /// is a one-task job step on its node (`srun`), the rendezvous is hosted
    /// by the launcher on the first node. `ringmaster submit --scheduler
    /// slurm` writes and submits the batch script that gets there.
    Slurm {
        #[serde(default)]
        partition: Option<String>,
        #[serde(default)]
        account: Option<String>,
        /// sbatch --time: "MM", "HH:MM:SS", "D-HH:MM:SS".
        #[serde(default)]
        time_limit: Option<String>,
        /// Seconds of warning before the time limit (`--signal=B:USR1@N`):
        /// time for the coordinated checkpoint. Default: 30 s plus the
        /// training state written at 250 MB/s, at most 600 (the same grace
        /// a Kubernetes pod gets).
        #[serde(default)]
        signal_grace_s: Option<u32>,
        /// Requeue the job after a preemption or time-limit stop with its
        /// checkpoint committed (`--requeue`, `scontrol requeue`); the next
        /// run resumes from the checkpoint. Default true.
        #[serde(default = "default_true")]
        requeue: bool,
        /// More sbatch options, one per entry ("--qos=high").
        #[serde(default)]
        sbatch_args: Vec<String>,
        /// `--cpus-per-task` (each worker is a task); default the job's
        /// `threads_per_worker` when set.
        #[serde(default)]
        cpus_per_task: Option<u32>,
        /// `--mem` per node ("64G", "500000M"); or use `mem_per_gpu`.
        #[serde(default)]
        mem: Option<String>,
        /// `--mem-per-gpu` ("80G").
        #[serde(default)]
        mem_per_gpu: Option<String>,
        /// `--exclusive`: the nodes to this job alone.
        #[serde(default)]
        exclusive: bool,
        /// How GPUs are asked for: "gres" (`--gres=gpu:N`, default) or
        /// "gpus-per-node" (`--gpus-per-node=N`), per the site's habit.
        #[serde(default)]
        gpu_request: Option<String>,
        /// Shell lines the batch script runs before ringmaster (`module
        /// load cuda/12.4`, `source /opt/venv/bin/activate`).
        #[serde(default)]
        setup: Vec<String>,
        /// Where workers reach the rendezvous; default the first node's
        /// address (its name resolved; a name that does not resolve, as on
        /// a one-machine test cluster, is 127.0.0.1).
        #[serde(default)]
        rendezvous_host: Option<String>,
    },
    /// Machines you own, reached over ssh: a hostfile as DeepSpeed's and
    /// MPI's (`host slots=N` per line), the first `resources.nodes` hosts
    /// (after include/exclude) are the nodes; each worker runs there under
    /// `ssh`, stopped when its ssh session ends.
    Ssh {
        hostfile: String,
        /// Only these hosts: "node1@node3" (DeepSpeed's --include).
        #[serde(default)]
        include: Option<String>,
        /// Not these hosts: "node2" (DeepSpeed's --exclude).
        #[serde(default)]
        exclude: Option<String>,
        /// Options for every ssh call ("-F", "/path/ssh_config", "-p", "2222").
        #[serde(default)]
        ssh_args: Vec<String>,
        /// The worker binary on the hosts (default: the same path as here).
        #[serde(default)]
        worker_path: Option<String>,
        /// Where workers reach the rendezvous (default: this machine's
        /// address towards the first host; 127.0.0.1 for loopback hosts).
        #[serde(default)]
        rendezvous_host: Option<String>,
    },
    /// Amazon EC2: ringmaster asks EC2 for one instance per node
    /// (RunInstances, spot or on-demand, into a capacity reservation when
    /// one is named), whose user data starts `ringmaster agent` pointed at
    /// this launcher's rendezvous; a preempted or lost instance is replaced
    /// (only that node), and every instance tagged with the run is
    /// terminated when the run ends. Credentials and region come the
    /// standard way (AWS_* variables, ~/.aws profiles, an instance role);
    /// never from the spec.
    Aws {
        /// The instance type: a catalog offer (priced in the report) or
        /// any EC2 type (then unpriced).
        instance_type: String,
        /// Default: AWS_REGION / AWS_DEFAULT_REGION, else the catalog
        /// offer's region.
        #[serde(default)]
        region: Option<String>,
        /// Availability zones in order of preference; default the catalog
        /// offer's zones.
        #[serde(default)]
        zones: Vec<String>,
        /// "spot" (default), "on-demand", or "spot-then-on-demand" (spot
        /// in any zone first, then on-demand).
        #[serde(default)]
        market: Option<String>,
        /// The image (AMI) with ringmaster installed, or use
        /// `launch_template`.
        #[serde(default)]
        image_id: Option<String>,
        /// A launch template id ("lt-...") or name; its version `$Default`
        /// unless `launch_template_version`.
        #[serde(default)]
        launch_template: Option<String>,
        #[serde(default)]
        launch_template_version: Option<String>,
        /// A subnet per zone ({"us-east-1a": "subnet-..."}); none: the
        /// zone's default subnet.
        #[serde(default)]
        subnets: BTreeMap<String, String>,
        #[serde(default)]
        security_group_ids: Vec<String>,
        /// The instance profile (name) the instances run with.
        #[serde(default)]
        iam_instance_profile: Option<String>,
        #[serde(default)]
        key_name: Option<String>,
        /// A capacity reservation ("cr-...") the nodes run in (on-demand
        /// capacity already bought: it comes first).
        #[serde(default)]
        capacity_reservation_id: Option<String>,
        /// The highest spot price per instance-hour to pay (default: up
        /// to the on-demand price, EC2's default).
        #[serde(default)]
        max_spot_price: Option<f64>,
        /// The address the instances reach this launcher's rendezvous at
        /// (its private IP in the VPC).
        rendezvous_host: String,
        /// The rendezvous port (open it to the instances' security group);
        /// 0: any free port (the user data names the one bound).
        #[serde(default = "default_aws_rdzv_port")]
        rendezvous_port: u16,
        /// Shell lines the user data runs before the agent (install
        /// ringmaster where the image does not have it: `pip install
        /// ringmaster`, a `module load`, a venv).
        #[serde(default)]
        setup: Vec<String>,
        /// How long the launcher waits for every node's agent to connect
        /// after asking for the instances; past it the run ends (exit 5),
        /// its instances terminated.
        #[serde(default = "default_boot_timeout")]
        boot_timeout_s: f64,
        /// With market `spot` and no spot capacity in any zone: how long
        /// to keep asking before giving up (exit 9).
        #[serde(default = "default_capacity_wait")]
        capacity_wait_s: f64,
        /// An elastic run (`resources.min_nodes`) short of nodes asks EC2
        /// for them again this often while it runs (each ask is one
        /// RunInstances per missing node).
        #[serde(default = "default_capacity_retry")]
        capacity_retry_s: f64,
        /// More tags for every instance ({"team": "ml"}); the run's own
        /// (`ringmaster:run`, `ringmaster:node`, `ringmaster:job`) are
        /// always set.
        #[serde(default)]
        tags: BTreeMap<String, String>,
    },
    /// Google Compute Engine: the `instances.insert` request of every node
    /// is built from the plan (`ringmaster plan` shows them: Spot
    /// provisioning, the boot script as `startup-script`) but not sent:
    /// `run` refuses it. Not exercised end to end.
    Gcp {
        project: String,
        /// e.g. a3-highgpu-8g.
        machine_type: String,
        /// In order of preference.
        zones: Vec<String>,
        /// "spot" (default), "on-demand", or "spot-then-on-demand".
        #[serde(default)]
        market: Option<String>,
        /// The boot disk's source image
        /// (projects/<p>/global/images/<i> or .../family/<f>).
        image: String,
        #[serde(default)]
        disk_size_gb: Option<u32>,
        #[serde(default)]
        network: Option<String>,
        #[serde(default)]
        subnetwork: Option<String>,
        #[serde(default)]
        service_account: Option<String>,
        /// Attached GPUs for N1-style machine types (e.g.
        /// nvidia-tesla-v100); A2/A3/G2 types have theirs built in.
        #[serde(default)]
        accelerator_type: Option<String>,
        #[serde(default)]
        accelerator_count: Option<u32>,
        rendezvous_host: String,
        #[serde(default = "default_aws_rdzv_port")]
        rendezvous_port: u16,
        #[serde(default)]
        setup: Vec<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// Azure: the `virtualMachines` PUT of every node is built from the
    /// plan (`ringmaster plan` shows them: Spot priority, eviction policy,
    /// max price, the boot script as `customData`) but not sent: `run`
    /// refuses it. Not exercised end to end.
    Azure {
        subscription_id: String,
        resource_group: String,
        /// e.g. eastus.
        location: String,
        /// e.g. Standard_ND96isr_H100_v5.
        vm_size: String,
        /// Availability zones ("1", "2", "3") in order of preference;
        /// none: no zone.
        #[serde(default)]
        zones: Vec<String>,
        /// "spot" (default), "on-demand", or "spot-then-on-demand".
        #[serde(default)]
        market: Option<String>,
        /// USD per hour for Spot; none: -1 (up to the pay-as-you-go price,
        /// never evicted for price).
        #[serde(default)]
        max_price: Option<f64>,
        /// "publisher:offer:sku:version" or an image resource id.
        image: String,
        /// The subnet's resource id.
        subnet_id: String,
        #[serde(default = "default_azure_admin")]
        admin_username: String,
        /// An OpenSSH public key for the admin user.
        ssh_public_key: String,
        rendezvous_host: String,
        #[serde(default = "default_aws_rdzv_port")]
        rendezvous_port: u16,
        #[serde(default)]
        setup: Vec<String>,
        #[serde(default)]
        tags: BTreeMap<String, String>,
    },
    /// A Kubernetes Indexed Job, one pod per node (`ringmaster submit
    /// --scheduler kubernetes` writes the manifests). Inside the pod the
    /// run is local to it; the scheduler's SIGTERM is a preemption notice.
    Kubernetes {
        /// The container image, with ringmaster and ringmaster-worker on
        /// its PATH.
        image: String,
        #[serde(default)]
        namespace: Option<String>,
        /// A PersistentVolumeClaim mounted at /checkpoints (the job's
        /// checkpoint.dir should be under it); none: an emptyDir, which does
        /// not outlive the pod.
        #[serde(default)]
        checkpoint_pvc: Option<String>,
        /// Pod failures before the Job fails (failures the exit code marks
        /// as permanent fail it at once). Default 6.
        #[serde(default)]
        backoff_limit: Option<u32>,
        /// A Kueue LocalQueue: the Job is written suspended with
        /// `kueue.x-k8s.io/queue-name`, and Kueue admits it.
        #[serde(default)]
        queue: Option<String>,
        /// What the pods ask for and where they may run.
        #[serde(default)]
        pod: KubePod,
    },
}

fn default_true() -> bool {
    true
}

/// `provider.pod` of a Kubernetes job: the pods' resources, placement and
/// security, with defaults an operator can accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubePod {
    /// CPU request per pod ("16", "15500m"); default one core per worker
    /// thread (workers per node x threads_per_worker, or 1 each). No CPU
    /// limit is set (a limit throttles the collective).
    #[serde(default)]
    pub cpu: Option<String>,
    /// Memory request and limit per pod ("64Gi"); default the workers'
    /// estimated memory plus 1 GiB, at least 2 GiB.
    #[serde(default)]
    pub memory: Option<String>,
    /// A memory-backed /dev/shm of this size (PyTorch's DataLoader and
    /// NCCL use it; it counts against the memory limit). Default 8Gi for
    /// GPU jobs, 1Gi otherwise.
    #[serde(default)]
    pub shm_size: Option<String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes Toleration objects; default for GPU jobs: tolerate the
    /// `nvidia.com/gpu` NoSchedule taint.
    #[serde(default)]
    pub tolerations: Option<Vec<Value>>,
    /// A Kubernetes Affinity object.
    #[serde(default)]
    pub affinity: Option<Value>,
    /// More resources per pod, requested and limited
    /// ({"vpc.amazonaws.com/efa": 32, "rdma/rdma_shared_device_a": 1}).
    #[serde(default)]
    pub extra_resources: BTreeMap<String, u32>,
    /// The container's SecurityContext; default no privilege escalation
    /// (plus IPC_LOCK when extra_resources ask for RDMA/EFA devices).
    #[serde(default)]
    pub security_context: Option<Value>,
    #[serde(default)]
    pub priority_class: Option<String>,
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Seconds a finished Job is kept (default 86400).
    #[serde(default)]
    pub ttl_seconds_after_finished: Option<u32>,
    /// A PodDisruptionBudget keeping every pod of the running job (node
    /// drains wait for it to end; default true).
    #[serde(default = "default_true")]
    pub disruption_budget: bool,
}

impl Default for KubePod {
    fn default() -> Self {
        KubePod {
            cpu: None,
            memory: None,
            shm_size: None,
            node_selector: BTreeMap::new(),
            tolerations: None,
            affinity: None,
            extra_resources: BTreeMap::new(),
            security_context: None,
            priority_class: None,
            service_account: None,
            image_pull_secrets: Vec::new(),
            ttl_seconds_after_finished: None,
            disruption_budget: true,
        }
    }
}

/// A Kubernetes name: a DNS-1123 label.
pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Slurm's time formats: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S".
pub(super) fn valid_slurm_time(t: &str) -> bool {
    let num = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    if days.is_some_and(|d| !num(d)) {
        return false;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    parts.iter().all(|p| num(p)) && (1..=3).contains(&parts.len())
}

fn default_aws_rdzv_port() -> u16 {
    29400
}

fn default_azure_admin() -> String {
    "ringmaster".into()
}

fn default_boot_timeout() -> f64 {
    600.0
}

fn default_provisioning_delay() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomPreemptions {
    pub seed: u64,
    /// Interruptions per node per month; default from the offer's bracket.
    #[serde(default)]
    pub rate_per_month: Option<f64>,
}

fn default_time_scale() -> f64 {
    1.0
}

fn default_capacity_wait() -> f64 {
    300.0
}

fn default_capacity_retry() -> f64 {
    60.0
}

/// `provider.deadline` of the `sim` provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimDeadline {
    /// When the job must be done, in simulated seconds from the start.
    pub at_s: f64,
    /// What one restart costs (notice to the first step after it), in
    /// simulated seconds. The move to on-demand happens when the slack
    /// (deadline - now - remaining work) drops below twice this.
    /// Default: 3 x the provisioning delay, in simulated time.
    #[serde(default)]
    pub restart_cost_s: Option<f64>,
}

/// Replacement placement across `provider.zones`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Failover {
    #[default]
    SameZoneFirst,
    OtherZonesFirst,
}

/// One zone of the simulated market.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimZone {
    pub name: String,
    /// Spot nodes the zone can hold at once (default: unlimited).
    #[serde(default)]
    pub spot_capacity: Option<u32>,
    /// A capacity trace: a skypilot-org/spot-traces file (`{"metadata":
    /// {"gap_seconds": G}, "data": [v0, v1, ...]}`, value i holding for
    /// simulated time [i*G, (i+1)*G)) or a list of `{"at_s": T,
    /// "capacity": N}` changes. A relative path is from the working
    /// directory, as for `checkpoint.dir`.
    #[serde(default)]
    pub trace: Option<String>,
    /// What a spot-traces value means: `count` (default: spot nodes
    /// obtainable), `available` (non-zero: `spot_capacity` nodes, zero:
    /// none) or `preempted` (non-zero: none, zero: `spot_capacity`).
    #[serde(default)]
    pub trace_values: TraceValues,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TraceValues {
    #[default]
    Count,
    Available,
    Preempted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimPreemption {
    pub node: u32,
    pub at_s: f64,
}

fn default_first_address() -> String {
    "127.0.0.2".into()
}

impl Default for Provider {
    fn default() -> Self {
        Provider::Local {
            first_address: default_first_address(),
        }
    }
}

impl Provider {
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Local { .. } => "local",
            Provider::Sim { .. } => "sim",
            Provider::Slurm { .. } => "slurm",
            Provider::Ssh { .. } => "ssh",
            Provider::Kubernetes { .. } => "kubernetes",
            Provider::Aws { .. } => "aws",
            Provider::Gcp { .. } => "gcp",
            Provider::Azure { .. } => "azure",
        }
    }
}

/// A cloud whose formats ringmaster speaks (metadata services, notices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    pub fn parse(s: &str) -> Option<Cloud> {
        match s {
            "aws" => Some(Cloud::Aws),
            "gcp" => Some(Cloud::Gcp),
            "azure" => Some(Cloud::Azure),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
        }
    }
}

/// Which markets the simulator's nodes may be bought in (`provider.market`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimMarket {
    Spot,
    OnDemand,
    /// Spot while any allowed zone has spot capacity, else on-demand.
    SpotThenOnDemand,
}

impl SimMarket {
    /// The spec's words (None: not one of them).
    pub fn parse(s: &str) -> Option<SimMarket> {
        match s {
            "spot" => Some(SimMarket::Spot),
            "on-demand" => Some(SimMarket::OnDemand),
            "spot-then-on-demand" => Some(SimMarket::SpotThenOnDemand),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SimMarket::Spot => "spot",
            SimMarket::OnDemand => "on-demand",
            SimMarket::SpotThenOnDemand => "spot-then-on-demand",
        }
    }
}

impl Provider {
    /// The simulator's cloud and market, typed (None for other providers;
    /// `compile` has checked the words).
    pub fn sim_cloud_and_market(&self) -> Option<(Cloud, SimMarket)> {
        match self {
            Provider::Sim { cloud, market, .. } => Some((
                Cloud::parse(cloud)?,
                market
                    .as_deref()
                    .map_or(Some(SimMarket::Spot), SimMarket::parse)?,
            )),
            _ => None,
        }
    }
}
