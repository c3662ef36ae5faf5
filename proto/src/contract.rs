//! The launcher -> worker contract, typed: what a worker is told, written
//! into its environment by `to_env` and read back by `from_env`, side by
//! side, so the two cannot drift. The variable names live in `crate::env`
//! and are used only here (torchrun's names for the user's program, and
//! ringmaster's own). `Faults` are the drills' test hooks, which come from
//! the job's own `env`.

use crate::env as names;
use crate::spec::{Checkpoint, Collective, Notices, Workload};

/// The device the launcher resolved for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accelerator {
    #[default]
    Cpu,
    Cuda,
}

/// The collective backend the launcher resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    Nccl,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerContract {
    pub rank: u32,
    pub local_rank: u32,
    pub world_size: u32,
    pub local_world_size: u32,
    /// The node's rank (torchrun's GROUP_RANK).
    pub node_rank: u32,
    /// The number of nodes (torchrun's GROUP_WORLD_SIZE).
    pub nodes: u32,
    /// The restart budget (torchrun's TORCHELASTIC_MAX_RESTARTS).
    pub max_restarts: u32,
    pub master_addr: String,
    /// A free port on rank 0's node for torch's `env://` store (per attempt).
    pub master_port: u16,
    pub run_id: String,
    /// The attempt (torchrun's TORCHELASTIC_RESTART_COUNT too).
    pub restart_count: u64,
    pub rdzv_endpoint: String,
    pub rdzv_token: String,
    /// This worker's node address (the loopback alias for local nodes).
    pub node_addr: String,
    /// Where the worker writes files of its own (its error file).
    pub attempt_dir: Option<String>,
    /// OMP_NUM_THREADS and RAYON_NUM_THREADS.
    pub threads: u32,
    pub workload: Workload,
    pub collective: Collective,
    pub checkpoint: Checkpoint,
    /// Notice watchers this worker runs (local rank 0 of each node).
    pub notices: Option<Notices>,
    pub heartbeat_interval_ms: u64,
    pub accelerator: Accelerator,
    pub transport: Transport,
    /// CUDA_VISIBLE_DEVICES (with CUDA_DEVICE_ORDER=PCI_BUS_ID), GPU jobs.
    pub cuda_visible_devices: Option<String>,
    /// Workers share a GPU (NCCL_MULTI_RANK_GPU_ENABLE=1).
    pub gpu_shared: bool,
    /// LD_LIBRARY_PATH that loads the GPU libraries found.
    pub library_path: Option<String>,
    /// After a notice's checkpoint, park and wait to rejoin.
    pub keep_survivors: bool,
    /// A `train` worker takes SIGTERM as a preemption notice (Slurm,
    /// Kubernetes: every process of the job gets the scheduler's SIGTERM).
    pub sigterm_is_notice: bool,
    /// Run the preflight check before joining and report its figures.
    pub preflight: bool,
    /// A `command` job's program gets this signal on a notice (None: it is
    /// not told).
    pub program_signal: Option<i32>,
    /// A `command` job's attempt resumes from this committed checkpoint.
    pub resume: Option<ResumeFrom>,
}

/// The committed checkpoint an attempt starts from: its step and folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFrom {
    pub step: u64,
    pub dir: String,
    /// The world size that wrote it (its manifest's).
    pub world_size: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ContractError(pub String);

fn flag(on: bool) -> Option<String> {
    on.then(|| "1".to_string())
}

impl WorkerContract {
    /// The variables, in a fixed order; unset options are left out.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let n = |v: u64| Some(v.to_string());
        let vars: Vec<(&str, Option<String>)> = vec![
            (names::RANK, n(self.rank as u64)),
            (names::LOCAL_RANK, n(self.local_rank as u64)),
            (names::WORLD_SIZE, n(self.world_size as u64)),
            (names::LOCAL_WORLD_SIZE, n(self.local_world_size as u64)),
            (names::GROUP_RANK, n(self.node_rank as u64)),
            (names::ROLE_RANK, n(self.rank as u64)),
            (names::ROLE_WORLD_SIZE, n(self.world_size as u64)),
            (names::GROUP_WORLD_SIZE, n(self.nodes as u64)),
            (names::ROLE_NAME, Some("default".into())),
            (names::MASTER_ADDR, Some(self.master_addr.clone())),
            (names::MASTER_PORT, n(self.master_port as u64)),
            (names::RUN_ID, Some(self.run_id.clone())),
            (names::RESTART_COUNT, n(self.restart_count)),
            (names::TORCHELASTIC_RESTART_COUNT, n(self.restart_count)),
            (names::TORCHELASTIC_RUN_ID, Some(self.run_id.clone())),
            (
                names::TORCHELASTIC_MAX_RESTARTS,
                n(self.max_restarts as u64),
            ),
            (names::RDZV_ENDPOINT, Some(self.rdzv_endpoint.clone())),
            (names::RDZV_TOKEN, Some(self.rdzv_token.clone())),
            (names::NODE_ADDR, Some(self.node_addr.clone())),
            (names::ATTEMPT_DIR, self.attempt_dir.clone()),
            (names::OMP_NUM_THREADS, n(self.threads as u64)),
            (names::RAYON_NUM_THREADS, n(self.threads as u64)),
            (names::WORKLOAD, Some(json(&self.workload))),
            (names::COLLECTIVE, Some(json(&self.collective))),
            (names::CHECKPOINT, Some(json(&self.checkpoint))),
            (names::NOTICES, self.notices.as_ref().map(json)),
            (names::HEARTBEAT_INTERVAL_MS, n(self.heartbeat_interval_ms)),
            (
                names::ACCELERATOR,
                Some(match self.accelerator {
                    Accelerator::Cpu => "cpu".into(),
                    Accelerator::Cuda => "cuda".into(),
                }),
            ),
            (
                names::BACKEND,
                Some(match self.transport {
                    Transport::Tcp => "tcp".into(),
                    Transport::Nccl => "nccl".into(),
                }),
            ),
            (
                names::CUDA_VISIBLE_DEVICES,
                self.cuda_visible_devices.clone(),
            ),
            (
                names::CUDA_DEVICE_ORDER,
                self.cuda_visible_devices
                    .as_ref()
                    .map(|_| "PCI_BUS_ID".to_string()),
            ),
            (names::NCCL_MULTI_RANK_GPU_ENABLE, flag(self.gpu_shared)),
            (names::LD_LIBRARY_PATH, self.library_path.clone()),
            (names::KEEP_SURVIVORS, flag(self.keep_survivors)),
            (names::SIGTERM_IS_NOTICE, flag(self.sigterm_is_notice)),
            (names::PREFLIGHT, flag(self.preflight)),
            (
                names::PROGRAM_SIGNAL,
                self.program_signal.map(|s| s.to_string()),
            ),
            (
                names::RESUME_STEP,
                self.resume.as_ref().map(|r| r.step.to_string()),
            ),
            (
                names::RESUME_DIR,
                self.resume.as_ref().map(|r| r.dir.clone()),
            ),
            (
                names::RESUME_WORLD_SIZE,
                self.resume.as_ref().map(|r| r.world_size.to_string()),
            ),
        ];
        vars.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect()
    }

    /// Read the contract back; `get` looks a variable up (the process
    /// environment, or a list in tests). Every problem names its variable.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<WorkerContract, ContractError> {
        let var = |k: &str| {
            get(k).ok_or_else(|| {
                ContractError(format!(
                    "{k} is not set (start workers with `ringmaster run`)"
                ))
            })
        };
        let num = |k: &str| -> Result<u64, ContractError> {
            let v = var(k)?;
            v.parse()
                .map_err(|_| ContractError(format!("{k}={v:?} is not a valid number")))
        };
        fn parse<T: serde::de::DeserializeOwned>(k: &str, v: &str) -> Result<T, ContractError> {
            serde_json::from_str(v).map_err(|e| ContractError(format!("{k} is not valid: {e}")))
        }
        let on = |k: &str| get(k).is_some_and(|v| v == "1");
        let small = |k: &str| -> Result<u32, ContractError> {
            u32::try_from(num(k)?).map_err(|_| ContractError(format!("{k} is too large")))
        };
        let c = WorkerContract {
            rank: small(names::RANK)?,
            local_rank: small(names::LOCAL_RANK)?,
            world_size: small(names::WORLD_SIZE)?,
            local_world_size: small(names::LOCAL_WORLD_SIZE)?,
            node_rank: small(names::GROUP_RANK)?,
            nodes: get(names::GROUP_WORLD_SIZE)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            max_restarts: get(names::TORCHELASTIC_MAX_RESTARTS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            master_addr: get(names::MASTER_ADDR).unwrap_or_default(),
            master_port: get(names::MASTER_PORT)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            run_id: var(names::RUN_ID)?,
            restart_count: num(names::RESTART_COUNT)?,
            rdzv_endpoint: var(names::RDZV_ENDPOINT)?,
            rdzv_token: var(names::RDZV_TOKEN)?,
            node_addr: var(names::NODE_ADDR)?,
            attempt_dir: get(names::ATTEMPT_DIR),
            threads: get(names::OMP_NUM_THREADS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .max(1),
            workload: parse(names::WORKLOAD, &var(names::WORKLOAD)?)?,
            collective: parse(names::COLLECTIVE, &var(names::COLLECTIVE)?)?,
            checkpoint: match get(names::CHECKPOINT) {
                Some(v) => parse(names::CHECKPOINT, &v)?,
                None => Checkpoint::default(),
            },
            notices: get(names::NOTICES)
                .map(|v| parse(names::NOTICES, &v))
                .transpose()?,
            heartbeat_interval_ms: num(names::HEARTBEAT_INTERVAL_MS)?,
            accelerator: match get(names::ACCELERATOR).as_deref() {
                Some("cuda") => Accelerator::Cuda,
                _ => Accelerator::Cpu,
            },
            transport: match get(names::BACKEND).as_deref() {
                Some("nccl") => Transport::Nccl,
                _ => Transport::Tcp,
            },
            cuda_visible_devices: get(names::CUDA_VISIBLE_DEVICES),
            gpu_shared: on(names::NCCL_MULTI_RANK_GPU_ENABLE),
            library_path: get(names::LD_LIBRARY_PATH),
            keep_survivors: on(names::KEEP_SURVIVORS),
            sigterm_is_notice: on(names::SIGTERM_IS_NOTICE),
            preflight: on(names::PREFLIGHT),
            program_signal: match get(names::PROGRAM_SIGNAL) {
                Some(v) => Some(v.parse().map_err(|_| {
                    ContractError(format!(
                        "{}={v:?} is not a signal number",
                        names::PROGRAM_SIGNAL
                    ))
                })?),
                None => None,
            },
            resume: match (
                get(names::RESUME_STEP),
                get(names::RESUME_DIR),
                get(names::RESUME_WORLD_SIZE),
            ) {
                (Some(step), Some(dir), Some(world)) => Some(ResumeFrom {
                    step: step.parse().map_err(|_| {
                        ContractError(format!(
                            "{}={step:?} is not a step number",
                            names::RESUME_STEP
                        ))
                    })?,
                    dir,
                    world_size: world.parse().map_err(|_| {
                        ContractError(format!(
                            "{}={world:?} is not a world size",
                            names::RESUME_WORLD_SIZE
                        ))
                    })?,
                }),
                _ => None,
            },
        };
        if c.rank >= c.world_size {
            return Err(ContractError(format!(
                "{}={} is not below {}={}",
                names::RANK,
                c.rank,
                names::WORLD_SIZE,
                c.world_size
            )));
        }
        if c.local_rank >= c.local_world_size {
            return Err(ContractError(format!(
                "{}={} is not below {}={}",
                names::LOCAL_RANK,
                c.local_rank,
                names::LOCAL_WORLD_SIZE,
                c.local_world_size
            )));
        }
        if c.heartbeat_interval_ms == 0 {
            return Err(ContractError(format!(
                "{} must be > 0",
                names::HEARTBEAT_INTERVAL_MS
            )));
        }
        Ok(c)
    }

    /// The rank of a worker from its environment list (providers name
    /// their processes after it).
    pub fn rank_in(env: &[(String, String)]) -> Option<u32> {
        env.iter()
            .find(|(k, _)| k == names::RANK)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// What a command worker changes in its program's environment: the
    /// notice file's and the channel's variables and the checkpoint
    /// folder's with the job's cadence (set), and the run's rendezvous
    /// token (removed: the program needs no secret of the run, and a
    /// printed environment or a child process would leak it). The resume
    /// point (RINGMASTER_RESUME_STEP, _DIR) is the contract's own.
    pub fn program_env(
        notice_file: &str,
        channel: Option<&str>,
        checkpoint: &Checkpoint,
    ) -> (Vec<(String, String)>, Vec<&'static str>) {
        let mut set = vec![(names::NOTICE_FILE.to_string(), notice_file.to_string())];
        if let Some(c) = channel {
            set.push((names::CHANNEL.to_string(), c.to_string()));
        }
        if let Some(dir) = &checkpoint.dir {
            set.push((names::CHECKPOINT_DIR.to_string(), dir.clone()));
            set.push((
                names::CHECKPOINT_EVERY.to_string(),
                checkpoint.every_steps.to_string(),
            ));
        }
        (set, vec![names::RDZV_TOKEN])
    }

    /// The variable that carries the workers' library path (the GPU
    /// libraries found, then the job's or the launcher's own).
    pub const fn library_path_variable() -> &'static str {
        names::LD_LIBRARY_PATH
    }

    /// The variable that carries the run's rendezvous token (a worker's, and
    /// a Kubernetes pod's, from the job's Secret).
    pub fn token_variable() -> &'static str {
        names::RDZV_TOKEN
    }

    /// The run's token where this process was given one (a pod of a
    /// multi-node Kubernetes job).
    pub fn token_from(get: impl Fn(&str) -> Option<String>) -> Option<String> {
        get(names::RDZV_TOKEN).filter(|t| !t.is_empty())
    }

    /// The variables a job's own `env` may not set (the launcher's).
    pub fn reserved() -> &'static [&'static str] {
        &[
            names::RANK,
            names::LOCAL_RANK,
            names::WORLD_SIZE,
            names::LOCAL_WORLD_SIZE,
            names::GROUP_RANK,
            names::MASTER_ADDR,
            names::MASTER_PORT,
            names::RUN_ID,
            names::RESTART_COUNT,
            names::RDZV_ENDPOINT,
            names::RDZV_TOKEN,
            names::CHECKPOINT_DIR,
            names::CHECKPOINT_EVERY,
            names::RESUME_STEP,
            names::RESUME_DIR,
            names::RESUME_WORLD_SIZE,
        ]
    }

    /// A job's own variables on top of the contract's: they win over the
    /// defaults (threads, devices, ...), except the reserved ones, which
    /// the spec refuses to set.
    pub fn with_user_env(&self, user: &[(String, String)]) -> Vec<(String, String)> {
        let mut env = self.to_env();
        env.retain(|(k, _)| !user.iter().any(|(u, _)| u == k));
        env.extend(user.iter().cloned());
        env
    }
}

/// Fault injection for tests and drills, from the job's own `env`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// Exit (or die mid-checkpoint) at this step on this rank.
    pub at_step: Option<(u64, u32)>,
    /// In how many attempts (from the first) the fault fires.
    pub attempts: u64,
    /// SIGKILL itself halfway through writing that step's checkpoint.
    pub mid_checkpoint: bool,
    /// The node whose preflight figures are reported at a tenth.
    pub preflight_slow_node: Option<u32>,
}

impl Faults {
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Faults, ContractError> {
        let number = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| ContractError(format!("{k}={v:?} is not a number")))
        };
        let at_step = match (get(names::FAULT_AT_STEP), get(names::FAULT_RANK)) {
            (Some(s), Some(r)) => Some((
                number(names::FAULT_AT_STEP, &s)?,
                number(names::FAULT_RANK, &r)? as u32,
            )),
            _ => None,
        };
        let mid_checkpoint = match get(names::FAULT_MODE).as_deref() {
            None | Some("exit") => false,
            Some("kill-mid-checkpoint") => true,
            Some(other) => {
                return Err(ContractError(format!(
                    "{}={other:?}: expected exit or kill-mid-checkpoint",
                    names::FAULT_MODE
                )))
            }
        };
        Ok(Faults {
            at_step,
            attempts: get(names::FAULT_ATTEMPTS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            mid_checkpoint,
            preflight_slow_node: get(names::FAULT_PREFLIGHT_SLOW_NODE).and_then(|v| v.parse().ok()),
        })
    }

    /// The name of the step fault, for messages.
    pub fn at_step_name() -> &'static str {
        names::FAULT_AT_STEP
    }
}

/// A structured value of the contract, as JSON.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("contract values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sample() -> WorkerContract {
        WorkerContract {
            rank: 3,
            local_rank: 1,
            world_size: 4,
            local_world_size: 2,
            node_rank: 1,
            nodes: 2,
            max_restarts: 3,
            master_addr: "127.0.0.2".into(),
            master_port: 29500,
            run_id: "r".into(),
            restart_count: 2,
            rdzv_endpoint: "127.0.0.1:4000".into(),
            rdzv_token: "t".into(),
            node_addr: "127.0.0.3".into(),
            attempt_dir: Some("/x/attempt-2".into()),
            threads: 3,
            workload: Workload::Train(Default::default()),
            collective: Collective::default(),
            checkpoint: Checkpoint::default(),
            notices: Some(Notices::default()),
            heartbeat_interval_ms: 500,
            accelerator: Accelerator::Cuda,
            transport: Transport::Nccl,
            cuda_visible_devices: Some("MIG-1".into()),
            gpu_shared: true,
            library_path: Some("/run/lib:/wheels".into()),
            keep_survivors: true,
            sigterm_is_notice: true,
            preflight: true,
            program_signal: Some(10),
            resume: Some(ResumeFrom {
                step: 40,
                dir: "/ck/step-0000000040".into(),
                world_size: 8,
            }),
        }
    }

    #[test]
    fn to_env_and_from_env_agree() {
        let c = sample();
        let env: HashMap<String, String> = c.to_env().into_iter().collect();
        assert_eq!(env["RANK"], "3");
        assert_eq!(env["TORCHELASTIC_RESTART_COUNT"], "2");
        assert_eq!(env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
        assert_eq!(env["RAYON_NUM_THREADS"], "3");
        assert_eq!(env["GROUP_WORLD_SIZE"], "2");
        assert_eq!(env["ROLE_NAME"], "default");
        assert_eq!(env["TORCHELASTIC_RUN_ID"], "r");
        assert_eq!(env["TORCHELASTIC_MAX_RESTARTS"], "3");
        assert_eq!(env["RINGMASTER_PROGRAM_SIGNAL"], "10");
        assert_eq!(env["RINGMASTER_RESUME_STEP"], "40");
        assert_eq!(env["RINGMASTER_RESUME_DIR"], "/ck/step-0000000040");
        assert_eq!(env["RINGMASTER_RESUME_WORLD_SIZE"], "8");
        let back = WorkerContract::from_env(|k| env.get(k).cloned()).unwrap();
        assert_eq!(back, c);
        // A CPU worker's contract has no GPU variables.
        let cpu = WorkerContract {
            accelerator: Accelerator::Cpu,
            transport: Transport::Tcp,
            cuda_visible_devices: None,
            gpu_shared: false,
            library_path: None,
            notices: None,
            attempt_dir: None,
            keep_survivors: false,
            sigterm_is_notice: false,
            preflight: false,
            program_signal: None,
            resume: None,
            ..c
        };
        let env: HashMap<String, String> = cpu.to_env().into_iter().collect();
        for k in [
            "CUDA_VISIBLE_DEVICES",
            "CUDA_DEVICE_ORDER",
            "NCCL_MULTI_RANK_GPU_ENABLE",
            "LD_LIBRARY_PATH",
            "RINGMASTER_NOTICES",
            "RINGMASTER_PREFLIGHT",
            "RINGMASTER_PROGRAM_SIGNAL",
            "RINGMASTER_RESUME_STEP",
            "RINGMASTER_RESUME_DIR",
            "RINGMASTER_RESUME_WORLD_SIZE",
        ] {
            assert!(!env.contains_key(k), "{k}");
        }
        assert_eq!(
            WorkerContract::from_env(|k| env.get(k).cloned()).unwrap(),
            cpu
        );
    }

    #[test]
    fn bad_contracts_name_the_variable() {
        let good: HashMap<String, String> = sample().to_env().into_iter().collect();
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            ("RANK", None, "RANK is not set"),
            ("RANK", Some("x"), "RANK=\"x\" is not a valid number"),
            ("RANK", Some("9"), "RANK=9 is not below WORLD_SIZE=4"),
            (
                "LOCAL_RANK",
                Some("2"),
                "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2",
            ),
            (
                "RINGMASTER_WORKLOAD",
                Some("{"),
                "RINGMASTER_WORKLOAD is not valid",
            ),
            ("RINGMASTER_HEARTBEAT_INTERVAL_MS", Some("0"), "must be > 0"),
        ];
        for (k, v, want) in cases {
            let mut env = good.clone();
            match v {
                Some(v) => env.insert(k.into(), v.into()),
                None => env.remove(k),
            };
            let e = WorkerContract::from_env(|x| env.get(x).cloned()).unwrap_err();
            assert!(e.0.contains(want), "{k}: {e}");
        }
        // The user's own variables win over defaults.
        let env = sample().with_user_env(&[("OMP_NUM_THREADS".into(), "7".into())]);
        let omp: Vec<&String> = env
            .iter()
            .filter(|(k, _)| k == "OMP_NUM_THREADS")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(omp, vec!["7"]);
    }

    #[test]
    fn faults_table() {
        let f = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Faults::from_env(|k| m.get(k).cloned())
        };
        assert_eq!(
            f(&[]).unwrap(),
            Faults {
                attempts: 1,
                ..Default::default()
            }
        );
        let x = f(&[
            ("RINGMASTER_FAULT_AT_STEP", "35"),
            ("RINGMASTER_FAULT_RANK", "1"),
            ("RINGMASTER_FAULT_MODE", "kill-mid-checkpoint"),
            ("RINGMASTER_FAULT_ATTEMPTS", "2"),
        ])
        .unwrap();
        assert_eq!(
            (x.at_step, x.mid_checkpoint, x.attempts),
            (Some((35, 1)), true, 2)
        );
        assert!(f(&[("RINGMASTER_FAULT_MODE", "boom")])
            .unwrap_err()
            .0
            .contains("RINGMASTER_FAULT_MODE"));
        assert!(f(&[
            ("RINGMASTER_FAULT_AT_STEP", "x"),
            ("RINGMASTER_FAULT_RANK", "1")
        ])
        .is_err());
    }
}
