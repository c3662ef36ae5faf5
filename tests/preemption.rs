//! Coordinated checkpoint on a preemption notice, with real processes: a
//! SIGUSR1 to the launcher (or to one worker) stops every rank at one agreed
//! step with a committed checkpoint, the launcher exits 8 (preempted), and a
//! new run resumes there and ends with the weights of an uninterrupted run.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn job(dir: &Path, ckpt: &str, steps: u64) -> Value {
    let mut spec = train_job("pre", 2, 2, steps);
    spec["checkpoint"] =
        json!({"dir": dir.join(ckpt).to_str().unwrap(), "every_steps": 0, "keep": 2});
    spec["recovery"] = json!({"heartbeat_interval_s": 0.1, "notice_grace_s": 30});
    spec
}

/// Wait until rank 0 has logged progress (so the notice lands mid-run).
fn wait_for_steps(run_dir: &Path) {
    wait_for("rank 0 to log a step", T, || {
        std::fs::read_to_string(run_dir.join("attempt-0/rank-0.log"))
            .ok()
            .filter(|l| l.contains("step 20/"))
            .map(|_| ())
    });
}

fn stop_step(report: &Value) -> u64 {
    let steps: Vec<u64> = (0..4)
        .map(|r| {
            report["results"][r.to_string()]["preempted_at_step"]
                .as_u64()
                .expect("every rank reports its stop step")
        })
        .collect();
    assert!(
        steps.iter().all(|s| *s == steps[0]),
        "ranks stopped at different steps: {steps:?}"
    );
    steps[0]
}

#[test]
fn a_notice_to_the_launcher_checkpoints_at_one_step_and_the_next_run_resumes_exactly() {
    let dir = scratch("notice");
    let child = start_run(&dir, &job(&dir, "ck", 10_000_000), "n", &[], &["-q"]);
    wait_for_steps(&dir.join("runs/n"));
    kill(child.id() as i32, libc::SIGUSR1);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 8, "{}", out.stderr);
    let r = read_report(&dir.join("runs/n/report.json"));
    assert_eq!(r["status"], "preempted");
    let s = stop_step(&r);
    assert!(s >= 20, "{s}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("stopped at step {s}")) && msg.contains("checkpoint committed"),
        "{msg}"
    );
    assert!(dir.join(format!("ck/step-{s:010}/manifest.json")).is_file());
    let handled = events_named(&dir.join("runs/n"), "notice_handled");
    assert_eq!(handled[0]["deadline_met"], true, "{handled:?}");

    // The next run resumes at the stop step and ends where an uninterrupted
    // run ends.
    let total = s + 15;
    let (out, resumed) = run_job(&dir, &job(&dir, "ck", total), "resume", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(resumed["results"]["0"]["resumed_from_step"], s);
    let (out, clean) = run_job(
        &dir,
        &job(&dir, "ck-clean", total),
        "clean",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        resumed["summary"]["weights_sha256"],
        clean["summary"]["weights_sha256"]
    );
}

#[test]
fn a_notice_to_one_worker_stops_every_rank_at_the_same_step() {
    let dir = scratch("notice-worker");
    let child = start_run(&dir, &job(&dir, "ck", 10_000_000), "w", &[], &["-q"]);
    let run_dir = dir.join("runs/w");
    wait_for_steps(&run_dir);
    kill(worker_pid(&run_dir, 2), libc::SIGUSR1);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 8, "{}", out.stderr);
    let r = read_report(&run_dir.join("report.json"));
    let s = stop_step(&r);
    assert!(dir.join(format!("ck/step-{s:010}/manifest.json")).is_file());
    assert_eq!(r["attempts"][0]["outcome"], "preempted");
    assert!(
        r["attempts"][0]["failure"].is_null(),
        "an agreed stop is not a failure: {r}"
    );
}

#[test]
fn sigterm_is_a_notice_for_a_checkpointing_job_and_resume_continues_the_run() {
    let dir = scratch("sigterm");
    let child = start_run(&dir, &job(&dir, "ck", 400), "t", &[], &["-q"]);
    wait_for_steps(&dir.join("runs/t"));
    kill(child.id() as i32, libc::SIGTERM);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 8, "{}", out.stderr);
    let s = stop_step(&read_report(&dir.join("runs/t/report.json")));
    // `run --resume <run-dir>` takes the same job and continues it.
    let (out, r) = resume_run(&dir, "t", T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(r["results"]["0"]["resumed_from_step"], s);
    let (out, clean) = run_job(&dir, &job(&dir, "ck-clean", 400), "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        r["summary"]["weights_sha256"],
        clean["summary"]["weights_sha256"]
    );
    // A run without checkpoints cannot be resumed.
    let (out, _) = run_job(&dir, &train_job("plain", 1, 1, 5), "plain", &[], &["-q"], T);
    assert_eq!(out.code(), 0);
    let out = ringmaster(
        &dir,
        &["run", "--resume", "runs/plain", "--log-dir", "runs", "-q"],
        T,
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("checkpoint.dir: --resume needs a job with a checkpoint dir"),
        "{}",
        out.stderr
    );
}

#[test]
fn after_the_launcher_is_killed_resume_completes_the_run_exactly() {
    let dir = scratch("launcher-killed");
    let mut spec = job(&dir, "ck", 3000);
    spec["checkpoint"]["every_steps"] = json!(50);
    // Seconds of run after the first checkpoint: the kill lands mid-run.
    spec["workload"]["pace_ms"] = json!(1);
    let mut child = start_run(&dir, &spec, "k", &[], &["-q"]);
    let run_dir = dir.join("runs/k");
    wait_for("a committed checkpoint", T, || {
        std::fs::read_to_string(run_dir.join("attempt-0/rank-0.log"))
            .ok()
            .filter(|l| l.contains("checkpoint committed"))
            .map(|_| ())
    });
    let pids: Vec<i64> = events_named(&run_dir, "worker_started")
        .iter()
        .map(|e| e["pid"].as_i64().unwrap())
        .collect();
    child.kill().unwrap(); // SIGKILL: no report, no clean-up by the launcher
    child.wait().unwrap();
    for p in pids {
        wait_for("workers to go after the launcher died", T, || {
            (!alive(p as i32)).then_some(())
        });
    }
    assert!(!run_dir.join("report.json").exists());
    let (out, r) = resume_run(&dir, "k", T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        r["results"]["0"]["resumed_from_step"].as_u64().unwrap() >= 50,
        "{r}"
    );
    let (out, clean) = run_job(&dir, &job(&dir, "ck-clean", 3000), "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        r["summary"]["weights_sha256"],
        clean["summary"]["weights_sha256"]
    );
}

/// A notice whose deadline cannot be met: each step takes 0.3 s
/// (`workload.pace_ms`), longer than the 0.05 s the notice leaves, so the workers are killed at the
/// deadline without a checkpoint at the stop step. The run says so, exits 8,
/// and the next run resumes from the last periodic checkpoint, exactly.
#[test]
fn a_deadline_that_cannot_be_met_falls_back_to_the_last_periodic_checkpoint() {
    let dir = scratch("notice-late");
    let slow = |ck: &str, steps: u64| {
        let mut s = train_job("late", 1, 2, steps);
        s["workload"]["pace_ms"] = json!(300);
        s["workload"]["log_every"] = json!(1);
        s["checkpoint"] =
            json!({"dir": dir.join(ck).to_str().unwrap(), "every_steps": 2, "keep": 2});
        s["recovery"] =
            json!({"heartbeat_interval_s": 0.1, "notice_grace_s": 0.05, "grace_period_s": 1});
        s
    };
    let child = start_run(&dir, &slow("ck", 1000), "late", &[], &["-q"]);
    wait_for("a periodic checkpoint", T, || {
        std::fs::read_dir(dir.join("ck"))
            .ok()?
            .flatten()
            .find(|e| {
                // A committed checkpoint (not the preflight's probe file).
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("step-") && !n.ends_with(".tmp")
            })
            .map(|_| ())
    });
    // Land mid-step: right after a step was logged.
    let log = dir.join("runs/late/attempt-0/rank-0.log");
    let seen = wait_for("rank 0's log", T, || std::fs::read_to_string(&log).ok())
        .lines()
        .count();
    wait_for("the next step", T, || {
        (std::fs::read_to_string(&log).ok()?.lines().count() > seen).then_some(())
    });
    kill(child.id() as i32, libc::SIGUSR1);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 8, "{}", out.stderr);
    let handled = &events_named(&dir.join("runs/late"), "notice_handled")[0];
    assert_eq!(handled["deadline_met"], false, "{handled}");
    assert_eq!(handled["checkpointed"], false, "{handled}");
    let r = read_report(&dir.join("runs/late/report.json"));
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("resumes from the last periodic checkpoint"),
        "{msg}"
    );
    // The newest committed checkpoint is a periodic one (an even step).
    let mut steps: Vec<u64> = std::fs::read_dir(dir.join("ck"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort();
    let last = *steps.last().expect("a committed checkpoint");
    assert_eq!(last % 2, 0, "{steps:?}");
    let total = last + 3;
    let (out, resumed) = run_job(&dir, &slow("ck", total), "resumed", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(resumed["results"]["0"]["resumed_from_step"], last);
    let (out, clean) = run_job(&dir, &slow("ck-clean", total), "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        resumed["summary"]["weights_sha256"],
        clean["summary"]["weights_sha256"]
    );
}
