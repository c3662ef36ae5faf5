//! Slurm, for real: a local cluster (scripts/slurm/up.sh: munge, slurmctld
//! and two slurmd on this machine, started by scripts/test.sh) runs the
//! batch scripts `ringmaster submit --scheduler slurm` writes. A 2-node x
//! 2-task training job runs to the end (one job step per node running its
//! node agent); a requeue mid-run and Slurm's USR1
//! before the time limit each stop it at a committed checkpoint, and the
//! requeued job resumes and ends with the uninterrupted run's weights.
//! The jobs take the whole cluster, so the tests take turns.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(180);
static CLUSTER: Mutex<()> = Mutex::new(());

fn cluster() -> std::sync::MutexGuard<'static, ()> {
    let guard = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let ok = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    assert!(
        ok,
        "no Slurm cluster answers sinfo: start one with `SLURM_NODES=2 scripts/slurm/up.sh` (scripts/test.sh does)"
    );
    guard
}

fn job(dir: &Path, ck: &str, steps: u64) -> Value {
    let mut s = train_job("sl", 2, 2, steps);
    s["workload"]["pace_ms"] = json!(1);
    s["workload"]["log_every"] = json!(100);
    s["checkpoint"] = json!({"dir": dir.join(ck).to_str().unwrap(), "every_steps": 100, "keep": 2});
    s["recovery"] = json!({"heartbeat_interval_s": 0.1});
    s["provider"] = json!({"kind": "slurm", "signal_grace_s": 30});
    s
}

fn clean_weights(dir: &Path, steps: u64) -> Value {
    let mut s = job(dir, "ck-clean", steps);
    s["provider"] = json!({"kind": "local"});
    let (out, r) = run_job(dir, &s, "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    r["summary"]["weights_sha256"].clone()
}

fn submit(dir: &Path, spec: &Value, extra: &[&str]) -> Outcome {
    let j = write_job(dir, spec);
    let runs = dir.join("runs");
    let mut args = vec![
        "submit",
        "--scheduler",
        "slurm",
        j.to_str().unwrap(),
        "--log-dir",
        runs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ringmaster(dir, &args, T)
}

fn scontrol_job(id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait (bounded) until the job's first run has logged `step`.
fn wait_for_step(dir: &Path, id: &str, step: u64) {
    let log = dir.join(format!("runs/slurm-{id}-0/attempt-0/rank-0.log"));
    wait_for("the job's first run to train", T, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains(&format!("step {step}/")))
    });
}

/// Wait (bounded) until the job ended for good.
fn wait_done(id: &str) -> String {
    let t0 = Instant::now();
    loop {
        let s = scontrol_job(id);
        if s.contains("JobState=COMPLETED")
            || s.contains("JobState=FAILED")
            || s.contains("JobState=CANCELLED")
        {
            return s;
        }
        assert!(t0.elapsed() < T, "job {id} did not end: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_submitted_2x2_training_job_runs_to_the_end() {
    let _c = cluster();
    let dir = scratch("slurm-run");
    let want = clean_weights(&dir, 1000);
    let out = submit(&dir, &job(&dir, "ck", 1000), &["--wait"]);
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    let id = out.stdout.trim().to_string();
    assert!(
        out.stderr.contains(&format!("Slurm job {id}: COMPLETED")),
        "{}",
        out.stderr
    );
    let r = read_report(&dir.join(format!("runs/slurm-{id}-0/report.json")));
    assert_eq!(r["provider"], "slurm");
    assert_eq!(r["world_size"], 4);
    assert_eq!(r["summary"]["weights_sha256"], want);
    // One step per node ran its agent (node 0's on n1, node 1's on n2),
    // and the agents started the workers.
    assert_agents_started_every_worker(&dir.join(format!("runs/slurm-{id}-0")), 2, 4);
    let script = std::fs::read_to_string(dir.join("runs/sl.sbatch")).unwrap();
    for want in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@30",
    ] {
        assert!(script.contains(want), "{want} in {script}");
    }
}

/// Submit a 4000-step job and wait until its first run is mid-way (step
/// 500); the job id and the uninterrupted run's weights.
fn start_job(dir: &Path, extra: &[&str]) -> (String, Value) {
    let want = clean_weights(dir, 4000);
    let out = submit(dir, &job(dir, "ck", 4000), extra);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let id = out.stdout.trim().to_string();
    wait_for_step(dir, &id, 500);
    (id, want)
}

/// The job ended after one requeue: its first run stopped at a committed
/// checkpoint (exit 8), the second resumed at that step and ended with the
/// uninterrupted run's weights.
fn assert_resumed_exactly(dir: &Path, id: &str, want: &Value) {
    let end = wait_done(id);
    assert!(
        end.contains("JobState=COMPLETED") && end.contains("Restarts=1"),
        "{end}"
    );
    let first = read_report(&dir.join(format!("runs/slurm-{id}-0/report.json")));
    assert_eq!(first["exit_name"], "preempted", "{first}");
    assert!(
        first["results"]["0"]["checkpoint_committed"] == true,
        "{first}"
    );
    let second = read_report(&dir.join(format!("runs/slurm-{id}-1/report.json")));
    assert_eq!(second["exit_code"], 0, "{second}");
    assert_eq!(
        second["results"]["0"]["resumed_from_step"],
        first["results"]["0"]["preempted_at_step"]
    );
    assert_eq!(second["summary"]["weights_sha256"], *want);
}

fn run_ok(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_requeue_mid_run_resumes_from_the_checkpoint_exactly() {
    let _c = cluster();
    let dir = scratch("slurm-requeue");
    let (id, want) = start_job(&dir, &[]);
    // Slurm's own requeue: SIGTERM to every process of the job, SIGKILL
    // after KillWait; the launcher and the workers take the SIGTERM as a
    // notice and checkpoint at one agreed step.
    run_ok("scontrol", &["requeue", &id]);
    assert_resumed_exactly(&dir, &id, &want);
}

#[test]
fn usr1_before_the_time_limit_checkpoints_and_the_job_comes_back() {
    let _c = cluster();
    let dir = scratch("slurm-usr1");
    let (id, want) = start_job(&dir, &[]);
    // What --signal=B:USR1@<grace> sends before the time limit, now.
    run_ok("scancel", &["--signal=USR1", "--batch", &id]);
    assert_resumed_exactly(&dir, &id, &want);
    // Here the launcher requeued the job itself.
    let out_file = std::fs::read_to_string(dir.join(format!("runs/slurm-{id}.out"))).unwrap();
    assert!(
        out_file.contains(&format!("Slurm job {id} requeued")),
        "{out_file}"
    );
}

/// A job in the high-priority partition takes the whole cluster: Slurm
/// preempts ours (PreemptMode=REQUEUE: SIGTERM, then SIGKILL after
/// KillWait); it checkpoints at one agreed step, goes back to the queue, and
/// once the cluster is free again resumes and ends exactly.
#[test]
fn preemption_by_a_higher_priority_partition_resumes_exactly() {
    let _c = cluster();
    let dir = scratch("slurm-preempt");
    let (id, want) = start_job(&dir, &["--partition", "debug"]);
    run_ok(
        "sbatch",
        &[
            "--partition=high",
            "--nodes=2",
            "--ntasks-per-node=2",
            "--output=/dev/null",
            "--wrap=sleep 2",
        ],
    );
    assert_resumed_exactly(&dir, &id, &want);
}

#[test]
fn slurm_spec_errors_and_running_outside_an_allocation() {
    let dir = scratch("slurm-spec");
    let mut s = job(&dir, "ck", 10);
    s["provider"] = json!({"kind": "slurm", "time_limit": "1h", "signal_grace_s": 0,
                           "partition": "a b", "sbatch_args": ["-N 2"]});
    let j = write_job(&dir, &s);
    let out = ringmaster(&dir, &["validate", j.to_str().unwrap()], T);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    for want in [
        "provider.time_limit: must be minutes, MM:SS, HH:MM:SS, D-HH or D-HH:MM:SS, got \"1h\"",
        "provider.signal_grace_s: must be >= 1, got 0",
        "provider.partition: must be one word, got \"a b\"",
        "provider.sbatch_args[0]: must be one long option",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?} in {}",
            out.stderr
        );
    }
    // `run` of a slurm job outside an allocation: refused, nothing started.
    let j = write_job(&dir, &job(&dir, "ck", 10));
    let out = Command::new(ringmaster_bin())
        .args(["run", j.to_str().unwrap(), "-q"])
        .current_dir(&dir)
        .env_remove("SLURM_JOB_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "provider.kind slurm: not inside a Slurm allocation (SLURM_JOB_ID is not set)"
        ),
        "{err}"
    );
    assert!(!dir.join("runs").exists(), "nothing started");
}

/// `sbatch --test-only` on the script, on the suite's cluster.
fn test_only(script: &Path) -> std::process::Output {
    Command::new("sbatch")
        .args(["--test-only"])
        .arg(script)
        .output()
        .expect("sbatch")
}

/// The batch script an admin reads: the site's options (cpus, memory,
/// exclusivity, set-up lines, more sbatch options), CPU and GPU jobs
/// accepted by `sbatch --test-only` on the cluster (its nodes declare fake
/// GPUs), and `submit --dry-run`'s script works as printed: submitted by
/// hand, it trains to the end.
#[test]
fn dry_run_scripts_pass_sbatch_test_only_and_run_as_printed() {
    let _c = cluster();
    let dir = scratch("slurm-dry");
    let mut s = job(&dir, "ck-dry", 200);
    s["provider"] = json!({"kind": "slurm", "signal_grace_s": 30, "cpus_per_task": 1, "mem": "1G",
                           "setup": ["export RINGMASTER_SETUP_RAN=yes"],
                           "sbatch_args": ["--comment=ringmaster-test"]});
    let out = submit(&dir, &s, &["--dry-run"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let script = out.stdout.clone();
    for want in [
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=1G",
        "#SBATCH --comment=ringmaster-test",
        "\nexport RINGMASTER_SETUP_RAN=yes\n",
        "<<'RINGMASTER_JOB_JSON'",
    ] {
        assert!(script.contains(want), "{want} in {script}");
    }
    assert!(!script.contains("--gres") && !script.contains("--exclusive"));
    let path = dir.join("printed.sbatch");
    std::fs::write(&path, &script).unwrap();
    let t = test_only(&path);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    assert!(String::from_utf8_lossy(&t.stderr).contains("to start at"));
    // Submitted by hand exactly as printed: no job file existed before.
    assert!(!dir.join("runs/sl.slurm-job.json").exists());
    let sub = Command::new("sbatch")
        .arg("--parsable")
        .arg(&path)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        sub.status.success(),
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let id = String::from_utf8_lossy(&sub.stdout).trim().to_string();
    let state = wait_done(&id);
    assert!(state.contains("JobState=COMPLETED"), "{state}");
    let r = read_report(&dir.join(format!("runs/slurm-{id}-0/report.json")));
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["world_size"], 4);
    // GPU jobs: --gres (default) or --gpus-per-node, and --mem-per-gpu,
    // --exclusive; both accepted by the cluster.
    for (request, want) in [
        ("gres", "#SBATCH --gres=gpu:2"),
        ("gpus-per-node", "#SBATCH --gpus-per-node=2"),
    ] {
        let mut g = job(&dir, "ck-gpu", 10);
        g["resources"]["accelerator"] = json!("cuda");
        g["provider"] = json!({"kind": "slurm", "gpu_request": request, "mem_per_gpu": "1G", "exclusive": true});
        let out = submit(&dir, &g, &["--dry-run"]);
        assert_eq!(out.code(), 0, "{}", out.stderr);
        for w in [want, "#SBATCH --mem-per-gpu=1G", "#SBATCH --exclusive"] {
            assert!(out.stdout.contains(w), "{w} in {}", out.stdout);
        }
        let path = dir.join(format!("gpu-{request}.sbatch"));
        std::fs::write(&path, &out.stdout).unwrap();
        let t = test_only(&path);
        assert!(
            t.status.success(),
            "{request}: {}",
            String::from_utf8_lossy(&t.stderr)
        );
    }
    // The site's options are checked before any script is written.
    let mut bad = job(&dir, "ck-bad", 10);
    bad["provider"] = json!({"kind": "slurm", "mem": "lots", "mem_per_gpu": "1G", "gpu_request": "all", "cpus_per_task": 0});
    let out = submit(&dir, &bad, &["--dry-run"]);
    assert_eq!(out.code(), 3);
    for f in [
        "provider.mem",
        "provider.mem_per_gpu",
        "provider.gpu_request",
        "provider.cpus_per_task",
    ] {
        assert!(out.stderr.contains(f), "{f}: {}", out.stderr);
    }
}
