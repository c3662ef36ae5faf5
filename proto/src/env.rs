//! Names of the environment variables that make up the worker contract
//! (torchrun-compatible names plus ringmaster's own). Used by
//! `crate::contract` only, which writes and reads them.

pub const RANK: &str = "RANK";
pub const LOCAL_RANK: &str = "LOCAL_RANK";
pub const WORLD_SIZE: &str = "WORLD_SIZE";
pub const LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
pub const GROUP_RANK: &str = "GROUP_RANK";
/// torchrun also exports these two; some scripts read them.
pub const ROLE_RANK: &str = "ROLE_RANK";
pub const ROLE_WORLD_SIZE: &str = "ROLE_WORLD_SIZE";
/// torchrun's: the number of nodes (agents), the role's name ("default"),
/// the run's id and its restart budget.
pub const GROUP_WORLD_SIZE: &str = "GROUP_WORLD_SIZE";
pub const ROLE_NAME: &str = "ROLE_NAME";
pub const TORCHELASTIC_RUN_ID: &str = "TORCHELASTIC_RUN_ID";
pub const TORCHELASTIC_MAX_RESTARTS: &str = "TORCHELASTIC_MAX_RESTARTS";
pub const MASTER_ADDR: &str = "MASTER_ADDR";
pub const MASTER_PORT: &str = "MASTER_PORT";
pub const OMP_NUM_THREADS: &str = "OMP_NUM_THREADS";
pub const RAYON_NUM_THREADS: &str = "RAYON_NUM_THREADS";
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
pub const CUDA_DEVICE_ORDER: &str = "CUDA_DEVICE_ORDER";
pub const NCCL_MULTI_RANK_GPU_ENABLE: &str = "NCCL_MULTI_RANK_GPU_ENABLE";
pub const LD_LIBRARY_PATH: &str = "LD_LIBRARY_PATH";

pub const RUN_ID: &str = "RINGMASTER_RUN_ID";
pub const RESTART_COUNT: &str = "RINGMASTER_RESTART_COUNT";
/// torchrun's name for the same number.
pub const TORCHELASTIC_RESTART_COUNT: &str = "TORCHELASTIC_RESTART_COUNT";
pub const RDZV_ENDPOINT: &str = "RINGMASTER_RDZV_ENDPOINT";
pub const RDZV_TOKEN: &str = "RINGMASTER_RDZV_TOKEN";
/// Address of this worker's node (the loopback alias for local nodes).
pub const NODE_ADDR: &str = "RINGMASTER_NODE_ADDR";
/// The compiled workload, as JSON (`spec::Workload`).
pub const WORKLOAD: &str = "RINGMASTER_WORKLOAD";
/// Collective settings, as JSON (`spec::Collective`).
pub const COLLECTIVE: &str = "RINGMASTER_COLLECTIVE";
pub const HEARTBEAT_INTERVAL_MS: &str = "RINGMASTER_HEARTBEAT_INTERVAL_MS";
/// Where the worker writes files of its own (results, tensors).
pub const ATTEMPT_DIR: &str = "RINGMASTER_ATTEMPT_DIR";
/// "cpu" or "cuda": the device the launcher resolved for this worker.
pub const ACCELERATOR: &str = "RINGMASTER_ACCELERATOR";
/// "tcp" or "nccl": the collective backend the launcher resolved.
pub const BACKEND: &str = "RINGMASTER_BACKEND";
/// Checkpoint settings, as JSON (`spec::Checkpoint`).
pub const CHECKPOINT: &str = "RINGMASTER_CHECKPOINT";
/// Notice watchers, as JSON (`spec::Notices`); only on local rank 0.
pub const NOTICES: &str = "RINGMASTER_NOTICES";
/// "1": after a notice's checkpoint, park and wait to rejoin with the state
/// in memory (`recovery.keep_survivors` where the provider replaces nodes).
pub const KEEP_SURVIVORS: &str = "RINGMASTER_KEEP_SURVIVORS";
/// "1": a `train` worker takes SIGTERM as a preemption notice (stop at the
/// agreed step with a checkpoint) rather than dying: under Slurm and
/// Kubernetes every process of the job gets the scheduler's SIGTERM.
pub const SIGTERM_IS_NOTICE: &str = "RINGMASTER_SIGTERM_IS_NOTICE";
/// Fault injection for tests and drills: the worker of rank
/// RINGMASTER_FAULT_RANK exits with code 74 when it reaches step
/// "1": run the preflight check before joining and report its figures.
pub const PREFLIGHT: &str = "RINGMASTER_PREFLIGHT";
/// A `command` job: the signal number its program gets on a notice
/// (`notices.program_signal`); unset: the program is not told.
pub const PROGRAM_SIGNAL: &str = "RINGMASTER_PROGRAM_SIGNAL";
/// Set by the worker for the program it starts: the file that holds the
/// notice's details once one came (source, deadline).
pub const NOTICE_FILE: &str = "RINGMASTER_NOTICE_FILE";
/// Set by the worker for the program it starts: the abstract Unix socket
/// ("@name") the `ringmaster` Python package reports steps to.
pub const CHANNEL: &str = "RINGMASTER_CHANNEL";
/// Set for a `command` job's program with a checkpoint folder: the folder
/// (`checkpoint.dir`) and the job's cadence (`checkpoint.every_steps`).
pub const CHECKPOINT_DIR: &str = "RINGMASTER_CHECKPOINT_DIR";
pub const CHECKPOINT_EVERY: &str = "RINGMASTER_CHECKPOINT_EVERY";
/// Set for a `command` job's program when its attempt resumes: the step of
/// the newest committed checkpoint and its folder.
pub const RESUME_STEP: &str = "RINGMASTER_RESUME_STEP";
pub const RESUME_DIR: &str = "RINGMASTER_RESUME_DIR";
/// ... and the world size that wrote it (an elastic run may resume in a
/// world of another size: the program reshards).
pub const RESUME_WORLD_SIZE: &str = "RINGMASTER_RESUME_WORLD_SIZE";
/// Test hook: the node whose preflight figures are reported at a tenth.
pub const FAULT_PREFLIGHT_SLOW_NODE: &str = "RINGMASTER_FAULT_PREFLIGHT_SLOW_NODE";
/// RINGMASTER_FAULT_AT_STEP, on the first attempt only.
pub const FAULT_AT_STEP: &str = "RINGMASTER_FAULT_AT_STEP";
pub const FAULT_RANK: &str = "RINGMASTER_FAULT_RANK";
/// "exit" (default): exit 74 at the step. "kill-mid-checkpoint": SIGKILL
/// itself halfway through writing its first shard of the checkpoint of
/// that step (a kill during a checkpoint write, made repeatable).
pub const FAULT_MODE: &str = "RINGMASTER_FAULT_MODE";
/// In how many attempts (from the first) the fault fires; default 1.
pub const FAULT_ATTEMPTS: &str = "RINGMASTER_FAULT_ATTEMPTS";
