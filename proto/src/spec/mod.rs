//! The job spec: raw serde types (strict: unknown fields are errors), `--set`
//! overrides on the JSON tree, and `compile`, which checks every field and
//! reports every problem at once with its JSON path before anything starts.

mod check;
use check::check;
pub use check::check_name;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

pub const SPEC_VERSION: u32 = 1;

/// One training or benchmark job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job name; used in run ids and directory names ([A-Za-z0-9_.-]).
    pub name: String,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub provider: Provider,
    pub workload: Workload,
    #[serde(default)]
    pub collective: Collective,
    #[serde(default)]
    pub checkpoint: Checkpoint,
    #[serde(default)]
    pub recovery: Recovery,
    /// Cloud metadata services to watch for preemption notices.
    #[serde(default)]
    pub notices: Notices,
    /// What capacity to buy: `ringmaster plan` ranks the catalog's offers
    /// for this job. Absent: no capacity planning.
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// A short check of every device before the rendezvous completes.
    #[serde(default)]
    pub preflight: Preflight,
    /// Prometheus metrics while the run is alive.
    #[serde(default)]
    pub observability: Observability,
    /// Extra environment variables for every worker.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where run directories go (`<log_dir>/<run-id>/attempt-<n>/rank-<r>.log`).
    #[serde(default = "default_log_dir")]
    pub log_dir: String,
    /// Compute threads per worker (OMP_NUM_THREADS and the GEMM pool).
    /// Default: the machine's cores divided by the workers on it, at least 1.
    #[serde(default)]
    pub threads_per_worker: Option<u32>,
}

impl JobSpec {
    /// Whether the job's nodes are processes on this one machine (local
    /// and simulated nodes): then its workers share this machine's cores,
    /// memory and GPUs.
    pub fn nodes_on_one_machine(&self) -> bool {
        matches!(self.provider, Provider::Local { .. } | Provider::Sim { .. })
    }

    /// The workers that run on one machine: all of them when the nodes are
    /// this machine, else one node's.
    pub fn workers_per_machine(&self) -> u32 {
        let r = &self.resources;
        if self.nodes_on_one_machine() {
            r.nodes * r.devices_per_node
        } else {
            r.devices_per_node
        }
    }
}

fn default_log_dir() -> String {
    "runs".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// Number of nodes (machines, or logical nodes for the local provider).
    pub nodes: u32,
    /// Workers per node: one per device.
    pub devices_per_node: u32,
    /// "cpu", "auto", or a GPU model ("cuda", "h100", "a100", ...).
    pub accelerator: String,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            nodes: 1,
            devices_per_node: 1,
            accelerator: "cpu".into(),
        }
    }
}

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
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Slurm's time formats: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S".
fn valid_slurm_time(t: &str) -> bool {
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

/// What each worker runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    Gemm(GemmWorkload),
    Allreduce(AllreduceWorkload),
    Train(TrainWorkload),
    Command(CommandWorkload),
}

impl Workload {
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Gemm(_) => "gemm",
            Workload::Allreduce(_) => "allreduce",
            Workload::Train(_) => "train",
            Workload::Command(_) => "command",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    F32,
    F64,
    /// f32 storage, TF32 tensor-core math (GPU only).
    Tf32,
    /// GPU only.
    Bf16,
    /// GPU only.
    F16,
}

impl Dtype {
    pub fn size_bytes(self) -> u64 {
        match self {
            Dtype::F32 | Dtype::Tf32 => 4,
            Dtype::F64 => 8,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::Tf32 => "tf32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
    pub fn gpu_only(self) -> bool {
        matches!(self, Dtype::Tf32 | Dtype::Bf16 | Dtype::F16)
    }
}

/// Whether an accelerator name asks for the CPU.
pub fn is_cpu_accelerator(acc: &str) -> bool {
    acc.eq_ignore_ascii_case("cpu")
}

/// C = A x B, timed per rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GemmWorkload {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub dtype: Dtype,
    /// Timed repetitions (after warm-up).
    pub iterations: u32,
    pub warmup: u32,
}

impl Default for GemmWorkload {
    fn default() -> Self {
        Self {
            m: 1024,
            n: 1024,
            k: 1024,
            dtype: Dtype::F32,
            iterations: 10,
            warmup: 2,
        }
    }
}

/// An all_reduce_perf-style sweep over message sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AllreduceWorkload {
    pub min_bytes: u64,
    pub max_bytes: u64,
    /// Each size is the previous one times this factor.
    pub step_factor: u64,
    pub iterations: u32,
    pub warmup: u32,
    /// Verify every result against the expected sum.
    pub check: bool,
}

impl Default for AllreduceWorkload {
    fn default() -> Self {
        Self {
            min_bytes: 1024,
            max_bytes: 16 << 20,
            step_factor: 4,
            iterations: 10,
            warmup: 3,
            check: true,
        }
    }
}

/// Data-parallel SGD with momentum on a synthetic regression task (an MLP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainWorkload {
    pub steps: u64,
    pub input_dim: u64,
    pub hidden: u64,
    /// Linear layers, at least 2 (input -> hidden ... -> output).
    pub layers: u32,
    pub output_dim: u64,
    pub batch_per_rank: u64,
    /// Rows of one step over all ranks, kept whatever the world size: the
    /// step's data is `global_batch / batch_per_rank` blocks of
    /// `batch_per_rank` rows, block j drawn from (seed, step, j), and each
    /// rank trains its share of the blocks (the gradient weighted so the
    /// step is the mean over all of them). A checkpoint resumed on another
    /// world size trains on the same data. Unset: `batch_per_rank` x world
    /// (one block a rank, the data changes with the world size). On a GPU
    /// each rank trains one block a step (global_batch = batch_per_rank x
    /// world).
    pub global_batch: Option<u64>,
    pub lr: f64,
    pub momentum: f64,
    pub seed: u64,
    /// Report loss every this many steps.
    pub log_every: u64,
    /// Each step takes at least this many milliseconds: a stand-in for a
    /// real model's compute time in drills and simulations, so that
    /// wall-clock events (preemption notices, kills) land mid-run on any
    /// machine. 0 (default): as fast as the CPU goes.
    pub pace_ms: f64,
}

impl TrainWorkload {
    /// Host memory one worker of a `world`-rank job needs, in bytes, from
    /// what the trainer allocates: weights, momentum and gradient, the
    /// teacher matrix, activations and their gradients for one batch, the
    /// batch loader's double buffer, the ring's and an asynchronous
    /// checkpoint's segments, and 32 MiB for the process itself. An
    /// estimate to refuse what cannot fit, not a bound (measured: 226 MB
    /// peak RSS for a 285 MB estimate, hidden 4096, 4 workers).
    pub fn memory_per_worker(&self, world: u32) -> u64 {
        let p = self.param_count();
        let b = self.batch_per_rank;
        // The loader holds all of a rank's blocks.
        let lb = b.saturating_mul(self.blocks_per_rank_max(world));
        let dims =
            self.input_dim + self.hidden * (self.layers.saturating_sub(1) as u64) + self.output_dim;
        let f = 4u64; // float32
        let state = f.saturating_mul(p.saturating_mul(3));
        let teacher = f * self.input_dim.saturating_mul(self.output_dim);
        let activations = (2 * f).saturating_mul(b.saturating_mul(dims));
        let loader = (3 * f).saturating_mul(lb.saturating_mul(self.input_dim + self.output_dim));
        let segments = (2 * f).saturating_mul(p) / world.max(1) as u64;
        [state, teacher, activations, loader, segments, 32 << 20]
            .into_iter()
            .fold(0u64, u64::saturating_add)
    }

    /// Blocks of `batch_per_rank` rows in one step: `global_batch /
    /// batch_per_rank`, or one per rank.
    pub fn blocks(&self, world: u32) -> u64 {
        self.global_batch
            .map_or(world as u64, |g| g / self.batch_per_rank.max(1))
    }

    /// The blocks rank `rank` of `world` trains: a contiguous share, the
    /// first `blocks % world` ranks one more than the others.
    pub fn blocks_of(&self, rank: u32, world: u32) -> std::ops::Range<u64> {
        let (v, w, r) = (self.blocks(world), world.max(1) as u64, rank as u64);
        let (q, extra) = (v / w, v % w);
        let start = r * q + r.min(extra);
        start..start + q + u64::from(r < extra)
    }

    fn blocks_per_rank_max(&self, world: u32) -> u64 {
        self.blocks(world).div_ceil(world.max(1) as u64).max(1)
    }

    /// Parameters of the MLP: weights and biases of every layer.
    pub fn param_count(&self) -> u64 {
        let mut dims = vec![self.input_dim];
        dims.extend(std::iter::repeat_n(
            self.hidden,
            self.layers.saturating_sub(1) as usize,
        ));
        dims.push(self.output_dim);
        dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }
}

impl Default for TrainWorkload {
    fn default() -> Self {
        Self {
            steps: 200,
            input_dim: 64,
            hidden: 256,
            layers: 3,
            output_dim: 8,
            batch_per_rank: 64,
            global_batch: None,
            lr: 0.02,
            momentum: 0.9,
            seed: 0,
            log_every: 10,
            pace_ms: 0.0,
        }
    }
}

/// The user's own program, run once per device under the env contract.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandWorkload {
    pub argv: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Auto,
    Tcp,
    Nccl,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Collective {
    pub backend: Backend,
    /// Limit on every socket operation; a dead peer is an error after this.
    pub timeout_s: f64,
    /// Pipelining unit of the ring.
    pub chunk_bytes: u64,
    /// Large all-reduces go round the ring in slices of this size, so data
    /// reduced in one phase is still in cache for the next.
    pub slice_bytes: u64,
    /// SO_SNDBUF / SO_RCVBUF of ring sockets.
    pub socket_buffer_bytes: u64,
    /// Ranks of one node exchange through shared memory (a file in
    /// /dev/shm): reduce within the node, one ring per local rank across
    /// the nodes, copy back within the node (hierarchical, as NCCL moves
    /// data within a node). False: one TCP ring through every rank.
    /// Only where a node has more than one rank on the TCP backend.
    pub shared_memory: bool,
    /// The unit the shared-memory path stages data in: each local rank's
    /// slot (two sets of them: /dev/shm holds 2 x ranks per node x this).
    pub shm_chunk_bytes: u64,
}

impl Default for Collective {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            timeout_s: 60.0,
            chunk_bytes: 256 << 10,
            slice_bytes: 4 << 20,
            socket_buffer_bytes: 4 << 20,
            shared_memory: true,
            shm_chunk_bytes: 2 << 20,
        }
    }
}

/// Before the first step, every worker runs a short GEMM and a copy on its
/// device (cuBLAS and a host-to-device copy on a GPU; the `gemm` crate and
/// a memory copy on the CPU) and reports the figures with its join; the
/// launcher holds the rendezvous until it has compared them. A rank far
/// below the median marks its node slow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Preflight {
    /// Absent: on for GPU jobs, off on the CPU.
    pub enabled: Option<bool>,
    /// A rank whose GEMM rate or copy bandwidth is below this fraction of
    /// the median over all ranks is slow.
    pub min_ratio: f64,
    pub on_slow: OnSlow,
}

impl Default for Preflight {
    fn default() -> Self {
        Self {
            enabled: None,
            min_ratio: 0.5,
            on_slow: OnSlow::Warn,
        }
    }
}

/// What the launcher serves for Prometheus while a run is alive.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Observability {
    /// Serve `/metrics` (Prometheus text format) on this address, e.g.
    /// "127.0.0.1:9400" or "0.0.0.0:9400" (port 0: any free port, said in
    /// events.jsonl). Absent: no endpoint.
    pub metrics_addr: Option<String>,
}

/// What a slow node (or one whose check failed) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnSlow {
    /// Say so (console, events.jsonl, report warnings) and run.
    #[default]
    Warn,
    /// Stop before the first step, exit 10 (preflight-failed), naming the nodes.
    Fail,
    /// Retire the node and start on a replacement, where the provider
    /// replaces nodes (`sim`); elsewhere as `fail`.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Checkpoint {
    pub dir: Option<String>,
    /// 0 disables periodic checkpoints.
    pub every_steps: u64,
    pub keep: u32,
    /// Periodic checkpoints copy the state and write it on a background
    /// thread while training goes on (at most one write in flight).
    pub async_write: bool,
    /// Resume from a checkpoint of another training (one whose model
    /// shape, seed, data recipe or optimizer differ: its manifest's
    /// `identity`), on purpose. Default false: such a checkpoint stops the
    /// run before anything starts (exit 7), naming both values.
    pub allow_identity_mismatch: bool,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self {
            dir: None,
            every_steps: 0,
            keep: 3,
            async_write: false,
            allow_identity_mismatch: false,
        }
    }
}

/// Preemption-notice watchers. On every node, the worker of local rank 0
/// polls each listed metadata service; a notice stops the group at an
/// agreed step with a checkpoint, as SIGUSR1 does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Notices {
    pub watch: Vec<NoticeSource>,
    /// How often the AWS and Azure services are polled (GCP long-polls).
    /// Default 500 ms, so a notice is seen within 1 s.
    pub poll_interval_ms: Option<u64>,
    /// The signal a `command` job's program gets on a notice, sent to the
    /// program's own process only (not its group: DataLoader workers and
    /// other children are left alone), once, with the notice's details in
    /// the file named by RINGMASTER_NOTICE_FILE: "SIGTERM" (default, what
    /// torchrun-style programs handle), "SIGUSR1", "SIGUSR2", "SIGINT", or
    /// "none" (the program is not told; it is stopped at the deadline).
    pub program_signal: Option<String>,
}

/// The signals a program may be told a notice with.
pub const PROGRAM_SIGNALS: [(&str, i32); 4] = [
    ("SIGTERM", 15),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGINT", 2),
];

impl Notices {
    pub const DEFAULT_POLL_MS: u64 = 500;
    pub fn poll_interval_ms(&self) -> u64 {
        self.poll_interval_ms.unwrap_or(Self::DEFAULT_POLL_MS)
    }
    /// The program's notice signal as a number (None: "none", or a name
    /// `compile` refused).
    pub fn program_signal(&self) -> Option<i32> {
        let name = self.program_signal.as_deref().unwrap_or("SIGTERM");
        PROGRAM_SIGNALS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
    }
}

/// One metadata service. `endpoint` is the base URL (plain http); by
/// default the standard one: AWS_EC2_METADATA_SERVICE_ENDPOINT or
/// http://169.254.169.254 (AWS), GCE_METADATA_HOST or
/// metadata.google.internal (GCP), http://169.254.169.254 (Azure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "cloud", rename_all = "lowercase", deny_unknown_fields)]
pub enum NoticeSource {
    /// EC2 IMDSv2: spot/instance-action (notice) and
    /// events/recommendations/rebalance (early warning).
    Aws {
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// Compute Engine: instance/preempted, long-polled.
    Gcp {
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// Azure Scheduled Events: Preempt/Terminate for this VM.
    Azure {
        #[serde(default)]
        endpoint: Option<String>,
        /// This VM's name as Scheduled Events lists it; default: asked of
        /// the instance metadata service.
        #[serde(default)]
        vm_name: Option<String>,
    },
}

impl NoticeSource {
    pub fn cloud(&self) -> Cloud {
        match self {
            NoticeSource::Aws { .. } => Cloud::Aws,
            NoticeSource::Gcp { .. } => Cloud::Gcp,
            NoticeSource::Azure { .. } => Cloud::Azure,
        }
    }
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            NoticeSource::Aws { endpoint }
            | NoticeSource::Gcp { endpoint }
            | NoticeSource::Azure { endpoint, .. } => endpoint.as_deref(),
        }
    }
}

/// How capacity is bought. Nodes and GPUs per node come from `resources`;
/// the GPU model from `resources.accelerator` unless `gpu` names one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Offers file; default: the catalog built into ringmaster
    /// (configs/catalog.json).
    pub catalog: Option<String>,
    pub market: Market,
    /// GPU model ("h100", "a100", "l4", ...); default from
    /// resources.accelerator when that names a model.
    pub gpu: Option<String>,
    pub min_gpu_memory_gb: Option<f64>,
    /// Allowed regions; empty: all.
    pub regions: Vec<String>,
    /// Most the whole job may cost per hour (all nodes), in USD.
    pub max_price_per_hour: Option<f64>,
    /// Between nodes (multi-node jobs): "any", "rdma" (InfiniBand, EFA,
    /// RoCE) or "infiniband".
    pub interconnect: String,
    /// How long the job runs without interruptions, in hours.
    pub expected_hours: f64,
    /// Checkpoint interval, for the work a preemption loses (half of it on
    /// average).
    pub checkpoint_every_minutes: f64,
    /// From a preemption to training again (new node, load, rendezvous).
    pub recovery_minutes: f64,
    /// `plan --compare`: the work of one training step over all GPUs, in
    /// TFLOP; default for `train`: 6 x parameters x global batch.
    pub step_tflop: Option<f64>,
    /// `plan --compare`: gradient bytes all-reduced per step, in GB;
    /// default for `train`: 4 x parameters (float32).
    pub gradient_gb: Option<f64>,
    /// `plan --compare`: the share of the GPUs' peak BF16 throughput the
    /// model reaches (model FLOP utilisation).
    pub mfu: f64,
    /// `plan --compare`: the most nodes a shape may have.
    pub max_nodes: u32,
    /// Hours a year the fleet these nodes would join runs (all jobs, not
    /// only this one): a 1- or 3-year reservation is then priced at that
    /// use, the job paying its share. Unset: a reservation is priced as
    /// the whole commitment this job would have to buy.
    pub fleet_hours_per_year: Option<f64>,
    /// Capacity already bought (a reservation, nodes already paid for):
    /// it costs this job nothing extra and comes first; nodes beyond it
    /// are bought in `market`.
    pub owned: Vec<Owned>,
}

/// Nodes of one instance type the user already has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Owned {
    /// A catalog offer's instance type.
    pub instance_type: String,
    /// The offer's region; unset: any region the catalog has it in.
    #[serde(default)]
    pub region: Option<String>,
    /// How many such nodes are owned.
    pub nodes: u32,
    /// The reservation's id ("cr-...", a GCP reservation name), shown in
    /// the plan.
    #[serde(default)]
    pub id: Option<String>,
    /// Its last day ("YYYY-MM-DD", UTC); after it, its nodes are bought
    /// in `market`. Unset: it lasts the whole job.
    #[serde(default)]
    pub until: Option<String>,
}

impl Owned {
    /// The end of `until`'s day (23:59:59 UTC), or why it is no date.
    pub fn until_time(&self) -> Option<Result<std::time::SystemTime, String>> {
        self.until.as_ref().map(|d| {
            humantime::parse_rfc3339(&format!("{d}T23:59:59Z"))
                .map_err(|_| format!("must be a date YYYY-MM-DD, got {d:?}"))
        })
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            catalog: None,
            market: Market::SpotThenOnDemand,
            gpu: None,
            min_gpu_memory_gb: None,
            regions: vec![],
            max_price_per_hour: None,
            interconnect: "any".into(),
            expected_hours: 24.0,
            checkpoint_every_minutes: 30.0,
            recovery_minutes: 5.0,
            step_tflop: None,
            gradient_gb: None,
            mfu: 0.4,
            max_nodes: 8,
            fleet_hours_per_year: None,
            owned: vec![],
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

/// Which markets to buy in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    Spot,
    OnDemand,
    /// 1- or 3-year reservations.
    Reserved,
    /// Short-term reservations: EC2 Capacity Blocks, GCP flex-start and
    /// calendar mode, Azure capacity reservations (the catalog's
    /// `short_term` entries).
    ShortTerm,
    /// Spot first; on-demand offers are the fallback when spot runs out.
    SpotThenOnDemand,
    /// Whatever has the lowest expected total cost, overheads included.
    Cheapest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Recovery {
    /// Restarts after user errors: a worker that exits non-zero on its own.
    pub max_restarts: u32,
    /// Restarts after infrastructure failures: a worker killed by a signal,
    /// a lost heartbeat, a hang, a rendezvous timeout. Default: the same
    /// number as max_restarts. Preemptions count against neither.
    pub max_infra_restarts: Option<u32>,
    /// Restarts after preemptions, where the provider replaces the lost
    /// node (`sim`); the local provider cannot, and ends the run (exit 8).
    pub max_preemptions: u32,
    pub heartbeat_interval_s: f64,
    /// A worker silent for this long is declared lost.
    pub heartbeat_timeout_s: f64,
    /// A group whose step counters do not move for this long is hung.
    pub hang_timeout_s: f64,
    pub rendezvous_timeout_s: f64,
    /// SIGTERM -> SIGKILL delay when stopping workers.
    pub grace_period_s: f64,
    /// After a preemption notice (SIGUSR1), how long workers have to reach
    /// the agreed step, checkpoint and exit before they are killed.
    pub notice_grace_s: f64,
    /// Where the provider replaces lost nodes (`sim`) and the workload is
    /// `train`: the nodes that got no notice stay up with their
    /// state in memory and rejoin with the replacement, which receives the
    /// state from them; false: the whole group restarts from the
    /// checkpoint.
    pub keep_survivors: bool,
}

impl Default for Recovery {
    fn default() -> Self {
        Self {
            max_restarts: 0,
            max_infra_restarts: None,
            max_preemptions: 10,
            heartbeat_interval_s: 0.5,
            heartbeat_timeout_s: 15.0,
            hang_timeout_s: 300.0,
            rendezvous_timeout_s: 30.0,
            grace_period_s: 5.0,
            notice_grace_s: 30.0,
            keep_survivors: true,
        }
    }
}

// ---------------------------------------------------------------- errors

/// One problem with a spec, at a JSON path like `resources.devices_per_node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecIssue {
    pub path: String,
    pub message: String,
}

impl SpecIssue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{}", join_issues(.0))]
    Invalid(Vec<SpecIssue>),
}

impl CompileError {
    pub fn issues(&self) -> &[SpecIssue] {
        match self {
            CompileError::Invalid(v) => v,
        }
    }
}

fn join_issues(v: &[SpecIssue]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------- parsing

/// Parse JSON text into a tree, reporting syntax errors with line and
/// column. A key given twice in one object is an error (JSON parsers
/// disagree on which one wins; the spec must say one thing).
pub fn parse_text(text: &str) -> Result<Value, CompileError> {
    let mut de = serde_json::Deserializer::from_str(text);
    if let Err(e) = serde::de::DeserializeSeed::deserialize(NoDuplicates(String::new()), &mut de) {
        if e.is_data() {
            let msg = e.to_string();
            let (path, what) = msg.split_once('\u{1}').unwrap_or(("", &msg));
            return Err(CompileError::Invalid(vec![SpecIssue::new(
                path,
                what.to_string(),
            )]));
        }
    }
    serde_json::from_str(text).map_err(|e| {
        CompileError::Invalid(vec![SpecIssue::new(
            "",
            format!(
                "invalid JSON at line {} column {}: {}",
                e.line(),
                e.column(),
                e
            ),
        )])
    })
}

/// Walks a JSON document failing on the first key an object repeats; the
/// error reads "<path>\u{1}duplicate key ...".
struct NoDuplicates(String);

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicates {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicates {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            let path = if self.0.is_empty() {
                k.clone()
            } else {
                format!("{}.{k}", self.0)
            };
            if !seen.insert(k.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "{path}\u{1}duplicate key {k:?} (given twice in one object; say it once)"
                )));
            }
            map.next_value_seed(NoDuplicates(path))?;
        }
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(NoDuplicates(format!("{}[{i}]", self.0)))?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Where the spec has an array but its schema wants an object (serde
/// would read `"resources": [1, 2]` as the fields in order): one issue per
/// place, found by walking the tree along the JSON Schema.
fn arrays_for_objects(tree: &Value) -> Vec<SpecIssue> {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(json_schema);
    let mut out = Vec::new();
    walk_schema(schema, schema, tree, "", &mut out);
    out
}

/// The definition a `{"$ref": "#/$defs/X"}` schema points at: Some(Some)
/// for a reference, Some(None) for one that leads nowhere, None for a
/// schema that is not a reference.
fn deref<'a>(root: &'a Value, schema: &Value) -> Option<Option<&'a Value>> {
    let r = schema.get("$ref").and_then(Value::as_str)?;
    Some(
        r.strip_prefix("#/$defs/")
            .and_then(|n| root.get("$defs").and_then(|d| d.get(n))),
    )
}

fn walk_schema(root: &Value, schema: &Value, v: &Value, path: &str, out: &mut Vec<SpecIssue>) {
    if let Some(def) = deref(root, schema) {
        if let Some(def) = def {
            walk_schema(root, def, v, path, out);
        }
        return;
    }
    let variants = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array);
    if let Some(variants) = variants {
        // A tagged enum: follow the variant its tag names.
        for tag in ["kind", "type"] {
            if let Some(t) = v.get(tag).and_then(Value::as_str) {
                if let Some(var) = variants.iter().find(|var| {
                    var.pointer(&format!("/properties/{tag}/const")) == Some(&Value::from(t))
                }) {
                    return walk_schema(root, var, v, path, out);
                }
            }
        }
        let objects = variants.iter().all(|var| is_object_schema(root, var));
        if objects && v.is_array() {
            out.push(SpecIssue::new(
                path,
                "expected an object, got an array".to_string(),
            ));
        }
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Array(_) if is_object_schema(root, schema) => {
            out.push(SpecIssue::new(
                path,
                "expected an object, got an array".to_string(),
            ));
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    walk_schema(root, item, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(m) => {
            let props = schema.get("properties");
            for (k, x) in m {
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    walk_schema(root, p, x, &join(k), out);
                } else if let Some(extra) =
                    schema.get("additionalProperties").filter(|a| a.is_object())
                {
                    walk_schema(root, extra, x, &join(k), out);
                }
            }
        }
        _ => {}
    }
}

/// Whether a schema accepts objects and not arrays.
fn is_object_schema(root: &Value, schema: &Value) -> bool {
    if let Some(def) = deref(root, schema) {
        return def.is_some_and(|d| is_object_schema(root, d));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    (types.contains(&"object") || (types.is_empty() && schema.get("properties").is_some()))
        && !types.contains(&"array")
}

/// Apply one `--set path=value` override to the tree. The value is parsed as
/// JSON when it is valid JSON (numbers, booleans, arrays, quoted strings),
/// otherwise taken as a plain string. Missing intermediate objects are made.
pub fn apply_set(tree: &mut Value, assignment: &str) -> Result<(), SpecIssue> {
    let (path, raw) = assignment.split_once('=').ok_or_else(|| {
        SpecIssue::new("--set", format!("expected path=value, got `{assignment}`"))
    })?;
    let path = path.trim();
    if path.is_empty() || path.split('.').any(|s| s.is_empty()) {
        return Err(SpecIssue::new(
            "--set",
            format!("bad path `{path}` in `{assignment}`"),
        ));
    }
    let value =
        serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    set_path(tree, path, value)
}

/// Set `path` (dot-separated object keys) in `tree` to `value`.
pub fn set_path(tree: &mut Value, path: &str, value: Value) -> Result<(), SpecIssue> {
    let mut cur = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let here = parts[..i].join(".");
        let obj = match cur {
            Value::Object(m) => m,
            other => {
                return Err(SpecIssue::new(
                    here.clone(),
                    format!(
                        "cannot set `{path}`: `{here}` is {} not an object",
                        type_name(other)
                    ),
                ))
            }
        };
        if i + 1 == parts.len() {
            obj.insert(part.to_string(), value);
            return Ok(());
        }
        cur = obj
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    unreachable!("path has at least one part")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Deserialize the tree strictly. Structural problems (unknown field, wrong
/// type) carry the JSON path where serde stopped.
fn deserialize(tree: Value) -> Result<JobSpec, SpecIssue> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(tree.clone(), &mut track);
    match JobSpec::deserialize(de) {
        Ok(spec) => Ok(spec),
        Err(e) => {
            let path = track.path().to_string();
            let mut path = if path == "." { String::new() } else { path };
            let message = e.to_string();
            // Inside a tagged enum serde reports the enum's path; name the
            // unknown field itself so every error points at one key.
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .or_else(|| message.strip_prefix("missing field `"))
                .and_then(|m| m.split('`').next())
            {
                if !path.ends_with(field) {
                    path = if path.is_empty() {
                        field.to_string()
                    } else {
                        format!("{path}.{field}")
                    };
                }
            }
            // Inside a tagged enum (`workload`, `provider`) serde cannot say
            // which field had the wrong type: find it (the key whose
            // removal changes the error), or name `kind` for an unknown
            // variant.
            if let Some(Value::Object(obj)) = tree.get(&path).filter(|_| !path.contains('.')) {
                if message.starts_with("unknown variant") && obj.contains_key("kind") {
                    path = format!("{path}.kind");
                } else if ["invalid type", "invalid value", "invalid length"]
                    .iter()
                    .any(|p| message.starts_with(p))
                {
                    if let Some(key) = obj.keys().filter(|k| *k != "kind").find(|k| {
                        let mut t = tree.clone();
                        t[&path].as_object_mut().expect("an object").remove(*k);
                        JobSpec::deserialize(t)
                            .map_err(|e| e.to_string())
                            .err()
                            .as_deref()
                            != Some(message.as_str())
                    }) {
                        path = format!("{path}.{key}");
                    }
                }
            }
            Err(SpecIssue::new(path, message))
        }
    }
}

// ---------------------------------------------------------------- compile

/// A spec that passed every check, with notes on accepted-but-inactive parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub spec: JobSpec,
    pub warnings: Vec<SpecIssue>,
}

impl Compiled {
    pub fn world_size(&self) -> u32 {
        self.spec.resources.nodes * self.spec.resources.devices_per_node
    }
}

/// Remove the value at a serde_path_to_error path (`a.b`, `a[2].c`).
/// Returns false when the path cannot be followed.
fn remove_path(tree: &mut Value, path: &str) -> bool {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('.') {
        let (name, rest) = seg
            .split_once('[')
            .map(|(n, r)| (n, Some(r)))
            .unwrap_or((seg, None));
        if !name.is_empty() {
            parts.push(name);
        }
        if let Some(rest) = rest {
            parts.extend(rest.split('[').map(|i| i.trim_end_matches(']')));
        }
    }
    let Some((last, parents)) = parts.split_last() else {
        return false;
    };
    let mut cur = tree;
    for p in parents {
        cur = match cur {
            Value::Object(m) => match m.get_mut(*p) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(a) => match p.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Object(m) => m.remove(*last).is_some(),
        _ => false,
    }
}

/// Deserialize, collecting every unknown field and every wrongly typed
/// field: after each such error the offending key is removed and the parse
/// tried again (bounded). Errors that removal cannot get past (a missing
/// required field, an unknown `kind`) end the search.
fn deserialize_all(mut tree: Value) -> (Option<JobSpec>, Vec<SpecIssue>, Vec<String>) {
    let mut issues: Vec<SpecIssue> = arrays_for_objects(&tree);
    let mut removed: Vec<String> = Vec::new();
    for i in &issues {
        if remove_path(&mut tree, &i.path) {
            removed.push(i.path.clone());
        }
    }
    for _ in 0..64 {
        match deserialize(tree.clone()) {
            Ok(spec) => return (Some(spec), issues, removed),
            Err(issue) => {
                // A required key we removed ourselves: already reported.
                if let Some(field) = issue
                    .message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.split('`').next())
                {
                    if removed
                        .iter()
                        .any(|r| r == field || r.ends_with(&format!(".{field}")))
                    {
                        return (None, issues, removed);
                    }
                }
                // An unknown `kind`: the whole section goes (its default
                // stands in), so the rest of the spec is still checked.
                let unknown_kind =
                    issue.message.starts_with("unknown variant") && issue.path.ends_with(".kind");
                let section = issue.path.trim_end_matches(".kind").to_string();
                let retry = if unknown_kind {
                    remove_path(&mut tree, &section)
                } else {
                    [
                        "unknown field",
                        "invalid type",
                        "invalid value",
                        "invalid length",
                    ]
                    .iter()
                    .any(|p| issue.message.starts_with(p))
                        && !issue.path.is_empty()
                        && remove_path(&mut tree, &issue.path)
                };
                if retry {
                    removed.push(if unknown_kind {
                        section
                    } else {
                        issue.path.clone()
                    });
                }
                issues.push(issue);
                if !retry {
                    return (None, issues, removed);
                }
            }
        }
    }
    (None, issues, removed)
}

/// Parse strictly, then check every field. Every unknown or mistyped field
/// is reported (see `deserialize_all`); when the structure is right, every
/// semantic problem is reported together. Nothing may start unless this
/// returns Ok.
pub fn compile(tree: Value) -> Result<Compiled, CompileError> {
    let (spec, mut issues, removed) = deserialize_all(tree);
    let Some(spec) = spec else {
        return Err(CompileError::Invalid(issues));
    };
    // The semantic checks run even when keys had to be removed (so an
    // unknown field does not hide the other problems); what they say about
    // a removed key's default is not news.
    let mut semantic = Vec::new();
    let mut warnings = Vec::new();
    check(&spec, &mut semantic, &mut warnings);
    issues.extend(semantic.into_iter().filter(|i| {
        !removed.iter().any(|r| {
            i.path == *r
                || i.path.starts_with(&format!("{r}."))
                || i.path.starts_with(&format!("{r}["))
        })
    }));
    if issues.is_empty() {
        Ok(Compiled { spec, warnings })
    } else {
        Err(CompileError::Invalid(issues))
    }
}

/// JSON Schema of the spec, for editors.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(JobSpec)).expect("schema serialises")
}

#[cfg(test)]
mod tests;
