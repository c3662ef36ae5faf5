//! The batch script `ringmaster submit --scheduler slurm` writes: the job's
//! shape as #SBATCH options, requeue and the time-limit warning signal, and
//! one line that runs `ringmaster run` on the job file inside the
//! allocation (exec'd, so Slurm's signals reach the launcher itself).

use crate::error::LaunchError;
use crate::process::sh;
use proto::spec::{JobSpec, Provider};
use std::path::Path;

/// What the script runs besides the spec.
pub struct ScriptArgs<'a> {
    /// The ringmaster binary the job runs.
    pub ringmaster: &'a Path,
    /// The job file (absolute).
    pub job: &'a Path,
    /// Where run folders and Slurm's output go (absolute).
    pub log_dir: &'a Path,
}

/// Seconds of warning before the time limit: the spec's `signal_grace_s`,
/// or `provider::checkpoint_grace_s`.
pub fn grace_s(spec: &JobSpec) -> u32 {
    if let Provider::Slurm {
        signal_grace_s: Some(g),
        ..
    } = &spec.provider
    {
        return *g;
    }
    crate::provider::checkpoint_grace_s(spec)
}

pub fn script(spec: &JobSpec, gpus: bool, a: &ScriptArgs) -> String {
    let r = &spec.resources;
    let mut o: Vec<String> = vec![
        format!("--job-name={}", sh(&spec.name)),
        format!("--nodes={}", r.nodes),
        format!("--ntasks-per-node={}", r.devices_per_node),
        format!(
            "--output={}",
            sh(&a.log_dir.join("slurm-%j.out").display().to_string())
        ),
        "--open-mode=append".into(),
        format!("--signal=B:USR1@{}", grace_s(spec)),
    ];
    let mut setup_lines: &[String] = &[];
    if let Provider::Slurm {
        partition,
        account,
        time_limit,
        requeue,
        sbatch_args,
        cpus_per_task,
        mem,
        mem_per_gpu,
        exclusive,
        gpu_request,
        setup,
        ..
    } = &spec.provider
    {
        setup_lines = setup;
        if gpus {
            o.push(match gpu_request.as_deref() {
                Some("gpus-per-node") => format!("--gpus-per-node={}", r.devices_per_node),
                _ => format!("--gres=gpu:{}", r.devices_per_node),
            });
        }
        if let Some(n) = cpus_per_task.or(spec.threads_per_worker) {
            o.push(format!("--cpus-per-task={n}"));
        }
        if let Some(m) = mem {
            o.push(format!("--mem={m}"));
        }
        if let Some(m) = mem_per_gpu {
            o.push(format!("--mem-per-gpu={m}"));
        }
        if *exclusive {
            o.push("--exclusive".into());
        }
        if let Some(p) = partition {
            o.push(format!("--partition={}", sh(p)));
        }
        if let Some(acc) = account {
            o.push(format!("--account={}", sh(acc)));
        }
        if let Some(t) = time_limit {
            o.push(format!("--time={t}"));
        }
        o.push(
            if *requeue {
                "--requeue"
            } else {
                "--no-requeue"
            }
            .into(),
        );
        o.extend(sbatch_args.iter().cloned());
    }
    let mut s = String::from("#!/bin/bash\n# Written by `ringmaster submit --scheduler slurm`.\n");
    for opt in &o {
        s.push_str(&format!("#SBATCH {opt}\n"));
    }
    // The job file travels inside the script, so the script works as
    // printed (`submit --dry-run`) and a requeued job reads the same job.
    s.push_str(&format!(
        "set -eo pipefail\nmkdir -p {dir}\ncat > {job} <<'RINGMASTER_JOB_JSON'\n{}\nRINGMASTER_JOB_JSON\n",
        serde_json::to_string_pretty(spec).expect("spec serialises"),
        dir = sh(&a.log_dir.display().to_string()),
        job = sh(&a.job.display().to_string()),
    ));
    if !setup_lines.is_empty() {
        s.push_str("# The site's set-up (provider.setup).\n");
        for l in setup_lines {
            s.push_str(l);
            s.push('\n');
        }
    }
    s.push_str(&format!(
        "# One run folder per Slurm job; a requeued job (SLURM_RESTART_COUNT > 0)\n\
         # resumes from the job's newest checkpoint.\n\
         exec {} run {} --log-dir {} --run-id \"slurm-${{SLURM_JOB_ID}}-${{SLURM_RESTART_COUNT:-0}}\" --quiet\n",
        sh(&a.ringmaster.display().to_string()),
        sh(&a.job.display().to_string()),
        sh(&a.log_dir.display().to_string()),
    ));
    s
}

/// One line of `scontrol show job -o`: its fields.
fn job_fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The newest "step N/M" line of the job's current run (rank 0's log).
fn last_step(log_dir: &Path, job_id: &str, restarts: &str) -> Option<String> {
    let run = log_dir.join(format!("slurm-{job_id}-{restarts}"));
    let mut attempts: Vec<_> = std::fs::read_dir(&run)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("attempt-"))
        .map(|e| e.path())
        .collect();
    attempts.sort();
    let log = std::fs::read_to_string(attempts.last()?.join("rank-0.log")).ok()?;
    log.lines()
        .rev()
        .find(|l| l.contains("] step "))
        .map(|l| l.trim_start_matches("[rank 0] ").to_string())
}

/// Follow a job until it ends for good (a requeued job comes back), printing
/// its state changes and, while it runs, its progress (rank 0's newest step
/// line from the run folder under `log_dir`, every 5 s at most); the
/// launcher's exit code of its last run.
pub fn wait(
    job_id: &str,
    log_dir: &Path,
    limit: std::time::Duration,
) -> Result<proto::exit::LauncherExit, crate::error::LaunchError> {
    use crate::error::LaunchError;
    use proto::exit::LauncherExit;
    let t0 = std::time::Instant::now();
    let mut last = String::new();
    let (mut shown_step, mut shown_at) = (String::new(), std::time::Instant::now());
    loop {
        let out = std::process::Command::new("scontrol")
            .args(["show", "job", "-o", job_id])
            .output()
            .map_err(|e| LaunchError::Unsupported(format!("cannot run scontrol: {e}")))?;
        let f = job_fields(&String::from_utf8_lossy(&out.stdout));
        let state = f.get("JobState").cloned().unwrap_or_default();
        let restarts = f.get("Restarts").cloned().unwrap_or_default();
        let now = format!("{state} (restarts {restarts})");
        if now != last {
            eprintln!("[ringmaster] Slurm job {job_id}: {now}");
            last = now;
        }
        if state == "RUNNING" && shown_at.elapsed() >= std::time::Duration::from_secs(5) {
            if let Some(step) = last_step(log_dir, job_id, &restarts).filter(|s| *s != shown_step) {
                eprintln!("[ringmaster] Slurm job {job_id}: {step}");
                shown_step = step;
                shown_at = std::time::Instant::now();
            }
        }
        match state.as_str() {
            "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY"
            | "BOOT_FAIL" | "DEADLINE" => {
                // ExitCode=code:signal of the batch script (ringmaster).
                let code: i32 = f
                    .get("ExitCode")
                    .and_then(|e| e.split(':').next())
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                return Ok(
                    LauncherExit::from_code(code).unwrap_or(if state == "COMPLETED" {
                        LauncherExit::Success
                    } else {
                        LauncherExit::WorkersFailed
                    }),
                );
            }
            "" if !out.status.success() => {
                return Err(LaunchError::Io(format!(
                    "scontrol show job {job_id}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            _ => {}
        }
        if t0.elapsed() > limit {
            eprintln!(
                "[ringmaster] stopped waiting for Slurm job {job_id} after {:?}; it goes on",
                limit
            );
            return Ok(LauncherExit::Internal);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A job for `submit --scheduler slurm`: a `slurm` job or a `local` one
/// made into it, with `--partition`, `--account` and `--time` applied; any
/// other provider is an error naming `provider.kind`.
pub fn into_slurm(
    spec: &mut JobSpec,
    partition_flag: Option<&str>,
    account_flag: Option<&str>,
    time_flag: Option<&str>,
) -> Result<(), LaunchError> {
    match &spec.provider {
        Provider::Slurm { .. } => {}
        Provider::Local { .. } => {
            spec.provider = Provider::Slurm {
                partition: None,
                account: None,
                time_limit: None,
                signal_grace_s: None,
                requeue: true,
                sbatch_args: Vec::new(),
                rendezvous_host: None,
                cpus_per_task: None,
                mem: None,
                mem_per_gpu: None,
                exclusive: false,
                gpu_request: None,
                setup: Vec::new(),
            }
        }
        other => {
            return Err(LaunchError::Config(vec![proto::SpecIssue::new(
                "provider.kind",
                format!(
                    "a {} job cannot be submitted to Slurm; use kind \"slurm\" (or \"local\")",
                    other.kind()
                ),
            )]))
        }
    }
    if let Provider::Slurm {
        partition,
        account,
        time_limit,
        ..
    } = &mut spec.provider
    {
        if let Some(p) = partition_flag {
            *partition = Some(p.to_string());
        }
        if let Some(a) = account_flag {
            *account = Some(a.to_string());
        }
        if let Some(t) = time_flag {
            *time_limit = Some(t.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> JobSpec {
        proto::spec::compile(v).unwrap().spec
    }

    #[test]
    fn the_script_carries_the_jobs_shape_and_signals() {
        let spec = spec(serde_json::json!({
            "name": "my-job", "resources": {"nodes": 2, "devices_per_node": 4},
            "workload": {"kind": "gemm"},
            "provider": {"kind": "slurm", "partition": "gpu", "time_limit": "1:00:00",
                         "signal_grace_s": 90, "sbatch_args": ["--qos=high"]}}));
        let s = script(
            &spec,
            true,
            &ScriptArgs {
                ringmaster: Path::new("/opt/rm/ringmaster"),
                job: Path::new("/home/u/job.json"),
                log_dir: Path::new("/home/u/runs"),
            },
        );
        for want in [
            "#SBATCH --job-name=my-job\n",
            "#SBATCH --nodes=2\n",
            "#SBATCH --ntasks-per-node=4\n",
            "#SBATCH --gres=gpu:4\n",
            "#SBATCH --signal=B:USR1@90\n",
            "#SBATCH --requeue\n",
            "#SBATCH --open-mode=append\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --time=1:00:00\n",
            "#SBATCH --qos=high\n",
            "#SBATCH --output=/home/u/runs/slurm-%j.out\n",
            "exec /opt/rm/ringmaster run /home/u/job.json --log-dir /home/u/runs --run-id \"slurm-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}\"",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(!s.contains("--account"));
        assert_eq!(sh("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(sh("/plain/path-1.json"), "/plain/path-1.json");
    }

    #[test]
    fn the_default_grace_covers_writing_the_checkpoint() {
        let job = |w: serde_json::Value| {
            spec(serde_json::json!({"name": "g", "workload": w, "provider": {"kind": "slurm"}}))
        };
        // Not a train job: nothing to write but the step in flight.
        assert_eq!(grace_s(&job(serde_json::json!({"kind": "gemm"}))), 30);
        // 2 x 65536^2 params: about 69 GB of state, 275 s at 250 MB/s.
        let train = |layers: u32| {
            job(
                serde_json::json!({"kind": "train", "layers": layers, "input_dim": 65536,
                                   "hidden": 65536, "output_dim": 65536}),
            )
        };
        let big = train(2);
        let proto::spec::Workload::Train(t) = &big.workload else {
            unreachable!()
        };
        let want = (30.0 + t.param_count() as f64 * 8.0 / 250e6).ceil() as u32;
        assert_eq!(grace_s(&big), want);
        assert!((300..=310).contains(&want), "{want}");
        let capped = train(64);
        assert_eq!(grace_s(&capped), 600, "capped");
    }
}
