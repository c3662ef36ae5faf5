//! A real PyTorch DDP (gloo) training script, examples/ddp_train.py, under
//! ringmaster as its users install it: the wheel (pyproject.toml, maturin)
//! installed with torch into a fresh venv, whose `ringmaster` and
//! `ringmaster-worker` binaries run here (not target/'s). scripts/test.sh
//! builds and installs them and names the venv in RINGMASTER_TEST_VENV.
//!
//! 2 nodes x 2 workers, fixed seeds, deterministic CPU kernels: a notice
//! from SIGUSR1 to the launcher, from a cloud's metadata service (the
//! suite's fake), and from the simulator's scheduled preemption each stop
//! every rank at one agreed step with that step's checkpoint committed, and
//! the resumed run ends with exactly the weights of an uninterrupted run;
//! so does a run whose worker is SIGKILLed mid-run. The same script runs
//! unchanged with plain `python` and under torchrun.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const T: Duration = Duration::from_secs(240);
const STEPS: u64 = 800;

fn venv() -> PathBuf {
    std::env::var_os("RINGMASTER_TEST_VENV")
        .map(PathBuf::from)
        .expect("RINGMASTER_TEST_VENV is not set: run the suite with scripts/test.sh, which builds the wheel and installs it with torch into target/test-venv")
}

fn script() -> String {
    repo().join("examples/ddp_train.py").display().to_string()
}

fn job(dir: &Path, id: &str) -> Value {
    job_of(dir, id, &script())
}

fn job_of(dir: &Path, id: &str, script: &str) -> Value {
    json!({"name": id, "resources": {"nodes": 2, "devices_per_node": 2},
           "workload": {"kind": "command", "argv": [venv().join("bin/python"), script]},
           "notices": {"program_signal": "none"},
           "checkpoint": {"dir": dir.join(format!("ck-{id}")), "every_steps": 50, "keep": 2},
           "env": {"STEPS": STEPS.to_string(), "STEP_S": "0.01",
                   "FINAL_OUT": dir.join(format!("final-{id}"))},
           "recovery": {"notice_grace_s": 60, "heartbeat_interval_s": 0.2, "grace_period_s": 2}})
}

/// The wheel's `ringmaster` with `args` in `dir`.
fn start(dir: &Path, args: &[&str]) -> Child {
    Command::new(venv().join("bin/ringmaster"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the wheel's ringmaster")
}

fn start_job(dir: &Path, spec: &Value, id: &str) -> Child {
    let path = dir.join(format!("{id}.json"));
    std::fs::write(&path, serde_json::to_vec(spec).unwrap()).unwrap();
    start(
        dir,
        &[
            "run",
            path.to_str().unwrap(),
            "--log-dir",
            "runs",
            "--run-id",
            id,
            "-q",
        ],
    )
}

fn final_weights(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(format!("final-{id}")))
        .unwrap_or_else(|e| panic!("run {id} wrote no final weights: {e}"))
}

/// The final weights' SHA-256 of the uninterrupted run (once per process).
fn uninterrupted() -> &'static str {
    static W: OnceLock<String> = OnceLock::new();
    W.get_or_init(|| {
        let dir = scratch("torch-clean");
        let out = wait_output(start_job(&dir, &job(&dir, "clean"), "clean"), T);
        assert_eq!(out.code(), 0, "{}", out.stderr);
        final_weights(&dir, "clean")
    })
}

fn wait_for_commit(run_dir: &Path, step: u64) {
    wait_for(&format!("the checkpoint of step {step}"), T, || {
        events_named(run_dir, "checkpoint_committed")
            .iter()
            .any(|e| e["step"] == step)
            .then_some(())
    });
}

/// Every rank stopped at the agreed step S with S's checkpoint committed
/// (its events and the ranks' own words in their logs); returns S.
fn stopped_at_one_step(run_dir: &Path) -> u64 {
    let s = events_named(run_dir, "notice_sent")[0]["stop_step"]
        .as_u64()
        .expect("a stop step was agreed");
    let committed = events_named(run_dir, "checkpoint_committed");
    assert!(committed.iter().any(|e| e["step"] == s), "{committed:?}");
    let handled = &events_named(run_dir, "notice_handled")[0];
    assert_eq!(handled["checkpointed"], true, "{handled}");
    assert_eq!(handled["stopped_at_step"], s, "{handled}");
    for rank in 0..4 {
        let log =
            std::fs::read_to_string(run_dir.join(format!("attempt-0/rank-{rank}.log"))).unwrap();
        assert!(
            log.contains(&format!(
                "rank {rank}: stopped at the agreed step {s}, checkpoint saved"
            )),
            "rank {rank}: {log}"
        );
    }
    s
}

/// `--resume` the run `id`: it starts at `step` and ends with the
/// uninterrupted run's weights.
fn resume_is_exact(dir: &Path, id: &str, step: u64) {
    let (out, _) = resume_run_at(&venv().join("bin/ringmaster"), dir, id, T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let from = events_named(
        &dir.join("runs").join(format!("{id}-resumed")),
        "resuming_from",
    );
    assert_eq!(from[0]["step"], step, "{from:?}");
    assert_eq!(final_weights(dir, id), uninterrupted(), "run {id}");
}

#[test]
fn sigusr1_to_the_launcher_stops_every_rank_at_one_step_and_resume_is_exact() {
    let want = uninterrupted();
    let dir = scratch("torch-usr1");
    let child = start_job(&dir, &job(&dir, "usr1"), "usr1");
    let run_dir = dir.join("runs/usr1");
    wait_for_commit(&run_dir, 50);
    kill(child.id() as i32, libc::SIGUSR1);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 8, "{}", out.stderr);
    let s = stopped_at_one_step(&run_dir);
    assert!(
        !dir.join("final-usr1").exists(),
        "it stopped before the end"
    );
    resume_is_exact(&dir, "usr1", s);
    assert_eq!(final_weights(&dir, "usr1"), want);
}

/// examples/ddp_dcp.py: the same training with torch.distributed.checkpoint,
/// every rank writing its part into the one folder; the committed folder
/// lists them all, and the resumed run ends with the same weights as the
/// torch.save script's uninterrupted run (the arithmetic is the same).
#[test]
fn dcp_checkpoints_are_committed_and_resume_is_exact() {
    let dir = scratch("torch-dcp");
    let mut spec = job_of(
        &dir,
        "dcp",
        &repo().join("examples/ddp_dcp.py").display().to_string(),
    );
    spec["checkpoint"]["every_steps"] = json!(100);
    let child = start_job(&dir, &spec, "dcp");
    let run_dir = dir.join("runs/dcp");
    wait_for_commit(&run_dir, 100);
    kill(child.id() as i32, libc::SIGUSR1);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 8, "{}", out.stderr);
    let s = stopped_at_one_step(&run_dir);
    let m = read_json(&dir.join(format!("ck-dcp/step-{s:010}/manifest.json")));
    let files: Vec<&String> = m["files"].as_object().unwrap().keys().collect();
    assert!(files.contains(&&".metadata".to_string()), "{files:?}");
    for rank in 0..4 {
        assert!(files.contains(&&format!("__{rank}_0.distcp")), "{files:?}");
    }
    resume_is_exact(&dir, "dcp", s);
}

#[test]
fn a_cloud_notice_stops_every_rank_at_one_step_and_resume_is_exact() {
    let dir = scratch("torch-aws");
    let fake = FakeMetadata::start("aws", &[]);
    let mut spec = job(&dir, "aws");
    spec["notices"]["watch"] = json!([{"cloud": "aws", "endpoint": fake.base}]);
    spec["notices"]["poll_interval_ms"] = json!(100);
    let child = start_job(&dir, &spec, "aws");
    let run_dir = dir.join("runs/aws");
    wait_for_commit(&run_dir, 50);
    fake.control("notice", json!({"in_s": 60}));
    let out = wait_output(child, T);
    assert_eq!(out.code(), 8, "{}", out.stderr);
    let received = events_named(&run_dir, "notice_received");
    assert!(
        received[0]["source"].as_str().unwrap().starts_with("aws"),
        "{received:?}"
    );
    let s = stopped_at_one_step(&run_dir);
    drop(fake);
    resume_is_exact(&dir, "aws", s);
}

#[test]
fn the_simulators_preemption_replaces_the_node_and_the_run_ends_exact() {
    let want = uninterrupted();
    let dir = scratch("torch-sim");
    let mut spec = job(&dir, "sim");
    // Mid-run on any machine: slower steps (the sleep does not change the
    // arithmetic) make the run's steps last over 24 s, and the preemption
    // comes 20 s in, after even a loaded machine's start (torch's import
    // took over 10 s under CI's load).
    spec["env"]["STEP_S"] = json!("0.03");
    spec["provider"] = json!({"kind": "sim", "cloud": "aws", "provisioning_delay_s": 0.3,
                              "notice_window_s": 30, "preemptions": [{"node": 1, "at_s": 20.0}]});
    let out = wait_output(start_job(&dir, &spec, "sim"), T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/sim");
    assert_eq!(events_named(&run_dir, "node_replaced").len(), 1);
    let s = stopped_at_one_step(&run_dir);
    let from = events_named(&run_dir, "resuming_from");
    assert_eq!(from[0]["attempt"], 1, "{from:?}");
    assert_eq!(from[0]["step"], s, "{from:?}");
    assert_eq!(final_weights(&dir, "sim"), want);
}

#[test]
fn a_killed_worker_restarts_from_the_last_committed_checkpoint_and_ends_exact() {
    let want = uninterrupted();
    let dir = scratch("torch-kill");
    let mut spec = job(&dir, "kill");
    spec["recovery"]["max_restarts"] = json!(1);
    let child = start_job(&dir, &spec, "kill");
    let run_dir = dir.join("runs/kill");
    wait_for_commit(&run_dir, 100);
    kill(worker_pid(&run_dir, 3), libc::SIGKILL);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let from = events_named(&run_dir, "resuming_from");
    assert_eq!(from[0]["attempt"], 1, "{from:?}");
    assert!(from[0]["step"].as_u64().unwrap() >= 100, "{from:?}");
    assert_eq!(final_weights(&dir, "kill"), want);
}

#[test]
fn the_same_script_runs_with_plain_python_and_under_torchrun() {
    let dir = scratch("torch-plain");
    for (what, cmd) in [
        (
            "python",
            vec![venv().join("bin/python").display().to_string()],
        ),
        (
            "torchrun",
            vec![
                venv().join("bin/torchrun").display().to_string(),
                "--standalone".into(),
                "--nproc-per-node".into(),
                "2".into(),
            ],
        ),
    ] {
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg(script())
            .env("STEPS", "50")
            .env("FINAL_OUT", dir.join(format!("final-{what}")))
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(final_weights(&dir, what).len(), 64, "{what}");
        // Without ringmaster there is no checkpoint cadence: nothing saved.
        assert!(!dir.join("checkpoints").exists(), "{what}");
    }
}

fn scontrol_job(id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .expect("scontrol: start a cluster with `SLURM_NODES=2 scripts/slurm/up.sh` (scripts/test.sh does)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Slurm's requeue sends SIGTERM to every process of the job, the script's
/// Python processes included: the `ringmaster` package keeps a program
/// without a SIGTERM handler of its own running to the agreed step; the
/// requeued job resumes there and ends with the uninterrupted weights.
#[test]
fn a_slurm_requeue_stops_every_rank_at_one_step_and_the_requeued_job_ends_exact() {
    let want = uninterrupted();
    let dir = scratch("torch-slurm");
    let mut spec = job(&dir, "slurm");
    spec["provider"] = json!({"kind": "slurm", "signal_grace_s": 30});
    let j = write_job(&dir, &spec);
    let runs = dir.join("runs");
    let args = [
        "submit",
        "--scheduler",
        "slurm",
        j.to_str().unwrap(),
        "--log-dir",
        runs.to_str().unwrap(),
    ];
    let out = ringmaster_at(&venv().join("bin/ringmaster"), &dir, &args, T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let id = out.stdout.trim().to_string();
    let first = runs.join(format!("slurm-{id}-0"));
    wait_for_commit(&first, 50);
    let rq = Command::new("scontrol")
        .args(["requeue", &id])
        .output()
        .unwrap();
    assert!(
        rq.status.success(),
        "{}",
        String::from_utf8_lossy(&rq.stderr)
    );
    let end = wait_for("the requeued job to end", T, || {
        let s = scontrol_job(&id);
        ["COMPLETED", "FAILED", "CANCELLED"]
            .iter()
            .any(|st| s.contains(&format!("JobState={st}")))
            .then_some(s)
    });
    assert!(
        end.contains("JobState=COMPLETED") && end.contains("Restarts=1"),
        "{end}"
    );
    let r = read_report(&first.join("report.json"));
    assert_eq!(r["exit_name"], "preempted", "{r}");
    let s = stopped_at_one_step(&first);
    let from = events_named(&runs.join(format!("slurm-{id}-1")), "resuming_from");
    assert_eq!(from[0]["step"], s, "{from:?}");
    assert_eq!(final_weights(&dir, "slurm"), want);
}
