//! Command line: `run`, `validate`, `plan`, `doctor`, `gpus`, `submit`,
//! `schema`. Maps every outcome to a documented exit code
//! (proto::exit::LauncherExit). The arguments and the dispatch are here;
//! each command lives in its own module.

mod catalog;
mod check;
mod machine;
mod run;
mod submit;

use crate::error::LaunchError;
use crate::load::SpecArgs;
use crate::preflight;
use clap::{Parser, Subcommand};
use proto::exit::LauncherExit;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(name = "ringmaster", version, about = "Distributed multi-GPU training launcher", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: `ringmaster run job.json`, or `ringmaster run --nproc-per-node 2 -- python train.py`.
    /// With neither, runs the built-in quickstart (2 nodes x 2 CPU workers).
    Run(RunArgs),
    /// Check a job file; prints every problem with its JSON path.
    Validate(SpecCmd),
    /// Show what would be launched where, without launching.
    Plan(PlanCmd),
    /// Print the JSON Schema of job files (for editors).
    Schema,
    /// GPU software, GPUs, topology and compatibility verdicts on this machine.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Submit a job to a batch scheduler: `ringmaster submit --scheduler
    /// slurm job.json` writes the batch script and submits it.
    Submit(SubmitArgs),
    /// GPU telemetry from NVML.
    Gpus {
        /// nvidia-smi --query-gpu=timestamp,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw --format=csv
        #[arg(long)]
        csv: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Sample again every SECONDS until interrupted (nvidia-smi -l).
        #[arg(long = "loop", value_name = "SECONDS")]
        every: Option<f64>,
    },
    /// Write report.html for a run (it is written at the end of every run;
    /// this makes it again, e.g. after an upgrade).
    Report {
        /// The run's directory, e.g. runs/<run-id>.
        run_dir: PathBuf,
    },
    /// A node agent: connect to a run's launcher and start the workers it
    /// asks for on this machine (what an EC2 instance's user data runs;
    /// Kubernetes pods run the same agent through `ringmaster run`).
    Agent {
        /// The launcher's rendezvous, host:port.
        #[arg(long, value_name = "HOST:PORT")]
        leader: String,
        /// This machine's node rank.
        #[arg(long)]
        node: u32,
        /// A file holding the token (the node's single-use one, or the
        /// run's); --token-stdin or RINGMASTER_RDZV_TOKEN otherwise. Never
        /// on the command line, where every user of the machine can read
        /// it.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The address this node's workers listen on (default: this side
        /// of the connection to the leader).
        #[arg(long)]
        addr: Option<String>,
        /// Where the workers' logs go.
        #[arg(long, value_name = "DIR", default_value = "ringmaster-logs")]
        log_dir: PathBuf,
        /// How long to keep trying to reach the leader.
        #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
        wait: f64,
        /// The worker binary (default: ringmaster-worker next to this one).
        #[arg(long, value_name = "PATH")]
        worker_bin: Option<PathBuf>,
        /// Read the token from the first line of standard input (what the
        /// `ssh` and `slurm` providers' sessions do: not in the arguments
        /// or the environment, where the host's other users could read it).
        #[arg(long, conflicts_with = "token_file")]
        token_stdin: bool,
        /// End this node's workers and exit when standard input closes
        /// (what the `ssh` provider's sessions run: a dropped session
        /// leaves nothing behind on the host).
        #[arg(long)]
        until_stdin_closes: bool,
        /// Remove --log-dir when the leader ends the run (every line of
        /// the workers' logs was shipped to it): the `ssh` and `slurm`
        /// providers' temporary folders.
        #[arg(long)]
        remove_logs: bool,
    },
    /// The offer catalog `plan` prices with: `ringmaster catalog refresh`
    /// takes new figures from the clouds' published price files.
    Catalog {
        #[command(subcommand)]
        cmd: CatalogCmd,
    },
    /// Terminate every cloud machine a run still has (by the run's tag):
    /// after a launcher that was killed, or one that could not give them
    /// back. Credentials as for `run`.
    Down {
        /// The run's directory, e.g. runs/<run-id>.
        run_dir: PathBuf,
    },
    /// A run's live state from another terminal (its status.json, written
    /// once a second): ranks' steps and rates, checkpoint, notices, ETA.
    Status {
        /// The run's directory, e.g. runs/<run-id>.
        run_dir: PathBuf,
        /// Print status.json itself.
        #[arg(long)]
        json: bool,
        /// Show it again every SECONDS until the run ends.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<f64>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SpecCmd {
    /// Job spec (JSON).
    pub job: PathBuf,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    Slurm,
    Kubernetes,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Job spec (JSON); its provider becomes `slurm` if it is `local`.
    pub job: PathBuf,
    #[arg(long, value_enum)]
    pub scheduler: Scheduler,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Print the batch script; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the job until it ends (requeues included); exit with its code.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 1; the job goes on).
    #[arg(long, value_name = "S", default_value_t = 86400)]
    pub wait_timeout: u64,
    /// Slurm partition (overrides provider.partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm account (overrides provider.account).
    #[arg(long)]
    pub account: Option<String>,
    /// Time limit (overrides provider.time_limit).
    #[arg(long)]
    pub time: Option<String>,
    /// Kubernetes: where to write the manifests.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Kubernetes: the container image (overrides provider.image).
    #[arg(long)]
    pub image: Option<String>,
    /// Kubernetes: `kubectl apply` the manifests.
    #[arg(long)]
    pub apply: bool,
    /// Kubernetes: also write a Prometheus Operator PodMonitor for pod 0's
    /// metrics (needs observability.metrics_addr).
    #[arg(long)]
    pub pod_monitor: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlanCmd {
    #[command(flatten)]
    pub base: SpecCmd,
    /// Rank shapes (one node of 8 GPUs or two of 4, one big GPU or several
    /// smaller) by modelled cost per training step.
    #[arg(long)]
    pub compare: bool,
    /// List every rank (without it, jobs of more than 16 ranks and
    /// capacity questions show one summary line).
    #[arg(long)]
    pub ranks: bool,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// Write a catalog with the figures of the price files given (each
    /// with its source and date; the figures they quote are no longer
    /// estimates). Use it with `capacity.catalog`.
    Refresh(RefreshArgs),
}

#[derive(Debug, clap::Args)]
pub struct RefreshArgs {
    /// The catalog to start from (default: the built-in one).
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// An AWS Price List bulk offer file for EC2 (index.json of
    /// .../offers/v1.0/aws/AmazonEC2/current/<region>/).
    #[arg(long = "aws-price-list", value_name = "FILE")]
    pub aws_price_list: Vec<PathBuf>,
    /// `aws ec2 describe-spot-price-history --output json` output.
    #[arg(long = "aws-spot-history", value_name = "FILE")]
    pub aws_spot_history: Vec<PathBuf>,
    /// A page of the Azure Retail Prices API (prices.azure.com).
    #[arg(long = "azure-prices", value_name = "FILE")]
    pub azure_prices: Vec<PathBuf>,
    /// Add an offer for a region the files price and the catalog lacks
    /// (the hardware copied from the same instance type elsewhere).
    #[arg(long)]
    pub add_regions: bool,
    /// Where to write the new catalog (default: standard output).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Job spec (JSON). Optional when a command follows `--`.
    #[arg(conflicts_with = "resume")]
    pub job: Option<PathBuf>,
    /// Continue an earlier run (its directory, e.g. runs/<run-id>): the same
    /// job, resuming from its newest valid checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Mirror every worker's output on stdout, prefixed with its rank (a
    /// `command` job does so unless --quiet).
    #[arg(long)]
    pub tee: bool,
    /// No progress display or notes, and no program output for a `command`
    /// job (errors and --tee output still print).
    #[arg(long, short)]
    pub quiet: bool,
    /// Print report.json on stdout at the end instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Ask the cloud with its dry-run flag (aws: EC2's DryRun on every
    /// rung of the ladder: permissions, image, subnet checked) and start
    /// nothing. Exit 0 when every request would succeed, 11 otherwise.
    #[arg(long)]
    pub dry_run: bool,
    /// The worker binary (default: ringmaster-worker beside this binary).
    #[arg(long, value_name = "PATH", env = "RINGMASTER_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Name of the run directory (default: <name>-<time>-<random>).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// This node's rank when the same `ringmaster run` is started on every
    /// node (torchrun's --node-rank): 0 leads and hosts the rendezvous at
    /// --rdzv-endpoint; the others join it as node agents. With --nnodes
    /// and a shared token (--token-file or RINGMASTER_RDZV_TOKEN).
    #[arg(long, value_name = "K", requires = "rdzv_endpoint")]
    pub node_rank: Option<u32>,
    /// Where node 0's rendezvous listens, HOST:PORT, as every node reaches
    /// it (torchrun's --rdzv-endpoint).
    #[arg(long, value_name = "HOST:PORT")]
    pub rdzv_endpoint: Option<String>,
    /// A file holding the run's shared token (every node the same; at
    /// least 32 characters, e.g. `openssl rand -hex 16`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Where this node's workers listen (default: the address the leader
    /// sees this node connect from).
    #[arg(long, value_name = "IP")]
    pub node_addr: Option<String>,
    /// A program to run on every worker under the env contract (the `command` workload).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub(super) fn worker_bin(explicit: Option<&Path>) -> Result<PathBuf, LaunchError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let me =
                std::env::current_exe().map_err(LaunchError::system("cannot find my own path"))?;
            me.with_file_name("ringmaster-worker")
        }
    };
    if !path.is_file() {
        return Err(LaunchError::Io(format!(
            "worker binary not found at {}; build it (`cargo build --release`) or pass --worker-bin",
            path.display()
        )));
    }
    Ok(path)
}

pub(super) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub(super) fn print_warnings(c: &proto::spec::Compiled) {
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
}

/// What the spec asks of this machine that it cannot give (a `train`
/// model too big for its memory: a spec problem, exit 3, as validate says),
/// or warnings when it is close.
pub(super) fn machine_checks(c: &proto::spec::Compiled) -> Result<Vec<String>, LaunchError> {
    match preflight::memory_fit(&c.spec).map(|m| preflight::check_memory(&m)) {
        Some(Err(e)) => Err(LaunchError::Config(vec![proto::SpecIssue::new(
            "workload", e,
        )])),
        Some(Ok(Some(w))) => Ok(vec![format!("workload: {w}")]),
        _ => Ok(vec![]),
    }
}

/// Whether a job names a GPU accelerator (a scheduler must allocate GPUs;
/// `auto` asks for none).
pub(super) fn asks_for_gpus(spec: &proto::spec::JobSpec) -> bool {
    let acc = &spec.resources.accelerator;
    !proto::spec::is_cpu_accelerator(acc) && !acc.eq_ignore_ascii_case("auto")
}

pub fn main() -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGMASTER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                LauncherExit::Usage.code()
            } else {
                LauncherExit::Success.code()
            };
        }
    };
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Submit(_) | Command::Agent { .. }
    ) {
        // Commands that only print: a closed pipe (`plan job.json | head -1`)
        // ends them quietly as it ends other CLIs, by SIGPIPE. `run` and
        // `submit` keep ignoring it: they write to sockets and children.
        // SAFETY: signal(2) with SIG_DFL before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match &cli.command {
        Command::Run(a) => run::cmd_run(a),
        Command::Validate(a) => check::cmd_validate(a),
        Command::Plan(a) => check::cmd_plan(a),
        Command::Doctor { json } => machine::cmd_doctor(*json),
        Command::Gpus { csv, json, every } => machine::cmd_gpus(*csv, *json, *every),
        Command::Report { run_dir } => crate::html::write_for(run_dir)
            .map(|p| {
                println!("{}", p.display());
                LauncherExit::Success
            })
            .map_err(LaunchError::Io),
        Command::Status {
            run_dir,
            json,
            watch,
        } => machine::cmd_status(run_dir, *json, *watch),
        Command::Submit(a) => submit::cmd_submit(a),
        Command::Agent {
            leader,
            node,
            token_file,
            addr,
            log_dir,
            wait,
            worker_bin: wb,
            token_stdin,
            until_stdin_closes,
            remove_logs,
        } => run::cmd_agent(run::AgentArgs {
            leader,
            node: *node,
            token_file: token_file.as_deref(),
            addr: addr.clone(),
            log_dir,
            wait: *wait,
            worker_bin: wb.as_deref(),
            token_stdin: *token_stdin,
            until_stdin_closes: *until_stdin_closes,
            remove_logs: *remove_logs,
        }),
        Command::Catalog {
            cmd: CatalogCmd::Refresh(a),
        } => catalog::cmd_refresh(a),
        Command::Down { run_dir } => crate::aws::down(run_dir).map(|ids| {
            if ids.is_empty() {
                println!("no machine of {} is running", run_dir.display());
            } else {
                println!("terminated {}", ids.join(" "));
            }
            LauncherExit::Success
        }),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&proto::spec::json_schema())
                    .expect("schema serialises")
            );
            Ok(LauncherExit::Success)
        }
    };
    match result {
        Ok(code) => code.code(),
        Err(e) => {
            eprintln!("ringmaster: error: {}", e.chain());
            e.exit().code()
        }
    }
}
