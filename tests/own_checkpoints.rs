//! A `command` job's own checkpoints (the `ringmaster` Python package's
//! checkpoint_dir / commit / resume), with tests/fixtures/ckpt_program.py:
//! a notice commits the checkpoint of the agreed stop step and the resumed
//! run ends with exactly the state of an uninterrupted one; a worker killed
//! mid-run restarts from the newest committed checkpoint; a rank that runs
//! past the stop step is killed at the deadline and the run falls back to
//! the last checkpoint every rank committed. The uninterrupted state comes
//! from the same script run with plain `python3`, without ringmaster.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn job(name: &str, ck: &Path, out: &Path, env: Value, recovery: Value) -> Value {
    let mut e = json!({"PYTHONPATH": repo().join("python").to_str().unwrap(),
                       "OUT_DIR": out.to_str().unwrap()});
    for (k, v) in env.as_object().unwrap() {
        e[k] = v.clone();
    }
    json!({"name": name, "resources": {"nodes": 2, "devices_per_node": 1},
           "workload": {"kind": "command", "argv": ["python3", fixture("ckpt_program.py").to_str().unwrap()]},
           "checkpoint": {"dir": ck.to_str().unwrap(), "every_steps": 20, "keep": 2},
           "notices": {"program_signal": "none"},
           "env": e, "recovery": recovery})
}

/// Each rank's final state from the script run without ringmaster.
fn uninterrupted(dir: &Path, total: u64) -> Vec<String> {
    let out = dir.join("plain");
    std::fs::create_dir_all(&out).unwrap();
    (0..2)
        .map(|rank| {
            let st = std::process::Command::new("python3")
                .arg(fixture("ckpt_program.py"))
                .env("PYTHONPATH", repo().join("python"))
                .env("OUT_DIR", &out)
                .env("RANK", rank.to_string())
                .env("TOTAL", total.to_string())
                .env("STEP_S", "0")
                .current_dir(dir)
                .status()
                .unwrap();
            assert!(st.success());
            std::fs::read_to_string(out.join(format!("final-{rank}.json"))).unwrap()
        })
        .collect()
}

fn read(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn committed_steps(run_dir: &Path) -> Vec<u64> {
    events_named(run_dir, "checkpoint_committed")
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect()
}

fn folders(ck: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    v.sort();
    v
}

/// The resumed run (`--resume`) ends with the uninterrupted state, having
/// started every rank at `step`.
fn resume_ends_as_uninterrupted(dir: &Path, id: &str, out: &Path, step: u64, want: &[String]) {
    let (res, r) = resume_run(dir, id, T);
    assert_eq!(res.code(), 0, "{}", res.stderr);
    assert_eq!(r["attempts"][0]["started_at_step"], step, "{r}");
    for rank in 0..2 {
        assert_eq!(read(out, &format!("resumed-{rank}")), step.to_string());
        assert_eq!(
            read(out, &format!("final-{rank}.json")),
            want[rank],
            "rank {rank}'s final state differs from the uninterrupted run's"
        );
    }
}

#[test]
fn a_notice_commits_the_agreed_steps_checkpoint_and_the_resumed_run_matches() {
    let dir = scratch("ownck-notice");
    let (ck, out) = (dir.join("ck"), dir.join("out"));
    std::fs::create_dir_all(&out).unwrap();
    let total = 400;
    let want = uninterrupted(&dir, total);
    let spec = job(
        "n",
        &ck,
        &out,
        json!({"TOTAL": total.to_string(), "STEP_S": "0.01"}),
        json!({"notice_grace_s": 30}),
    );
    let child = start_run(&dir, &spec, "n", &[], &["-q"]);
    let run_dir = dir.join("runs/n");
    wait_for("two periodic checkpoints", T, || {
        (committed_steps(&run_dir).len() >= 2).then_some(())
    });
    kill(child.id() as i32, libc::SIGUSR1);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 8, "{}", res.stderr);
    let s = events_named(&run_dir, "notice_sent")[0]["stop_step"]
        .as_u64()
        .expect("a stop step was agreed");
    for rank in 0..2 {
        assert_eq!(read(&out, &format!("stopped-{rank}")), s.to_string());
    }
    // Committed by the launcher once both ranks had: the manifest lists
    // each rank's file; only `keep` (2) checkpoints are left.
    assert_eq!(committed_steps(&run_dir).last(), Some(&s));
    let name = format!("step-{s:010}");
    let m = read_json(&ck.join(&name).join("manifest.json"));
    assert_eq!(m["step"], s, "{m}");
    assert_eq!(m["identity"]["fields"]["workload"], "command", "{m}");
    let files: Vec<&String> = m["files"].as_object().unwrap().keys().collect();
    assert_eq!(files, vec!["rank-0.json", "rank-1.json"], "{m}");
    let left = folders(&ck);
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[1], name, "{left:?}");
    let r = read_report(&run_dir.join("report.json"));
    let msg = r["attempts"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "every program stopped at the agreed step {s}; checkpoint of step {s} committed"
        )),
        "{msg}"
    );
    assert_eq!(
        events_named(&run_dir, "notice_handled")[0]["checkpointed"],
        true
    );
    resume_ends_as_uninterrupted(&dir, "n", &out, s, &want);
}

#[test]
fn a_killed_worker_restarts_from_the_newest_committed_checkpoint() {
    let dir = scratch("ownck-kill");
    let (ck, out) = (dir.join("ck"), dir.join("out"));
    std::fs::create_dir_all(&out).unwrap();
    let total = 300;
    let want = uninterrupted(&dir, total);
    let spec = job(
        "k",
        &ck,
        &out,
        json!({"TOTAL": total.to_string(), "STEP_S": "0.01"}),
        json!({"max_restarts": 1, "grace_period_s": 1}),
    );
    let child = start_run(&dir, &spec, "k", &[], &["-q"]);
    let run_dir = dir.join("runs/k");
    wait_for("a checkpoint of step 40 or later", T, || {
        committed_steps(&run_dir)
            .iter()
            .any(|s| *s >= 40)
            .then_some(())
    });
    kill(worker_pid(&run_dir, 1), libc::SIGKILL);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 0, "{}", res.stderr);
    let from = events_named(&run_dir, "resuming_from");
    assert_eq!(from.len(), 1, "{from:?}");
    assert_eq!(from[0]["attempt"], 1, "{from:?}");
    let step = from[0]["step"].as_u64().unwrap();
    assert!(step >= 40, "{from:?}");
    // The newest committed before attempt 1 started.
    let committed = events_named(&run_dir, "checkpoint_committed");
    let before: Vec<u64> = committed
        .iter()
        .filter(|e| e["attempt"] == 0)
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(before.last(), Some(&step), "{committed:?}");
    for rank in 0..2 {
        assert_eq!(read(&out, &format!("resumed-{rank}")), step.to_string());
        assert_eq!(read(&out, &format!("final-{rank}.json")), want[rank]);
    }
    let r = read_report(&run_dir.join("report.json"));
    assert_eq!(r["attempts"][1]["started_at_step"], step, "{r}");
}

#[test]
fn a_rank_that_runs_past_the_stop_step_is_killed_and_the_run_falls_back() {
    let dir = scratch("ownck-ignore");
    let (ck, out) = (dir.join("ck"), dir.join("out"));
    std::fs::create_dir_all(&out).unwrap();
    let total = 1500;
    let want = uninterrupted(&dir, total);
    let spec = job(
        "i",
        &ck,
        &out,
        json!({"TOTAL": total.to_string(), "STEP_S": "0.005", "IGNORE_STOP_RANK": "1"}),
        json!({"notice_grace_s": 2, "grace_period_s": 1}),
    );
    let child = start_run(&dir, &spec, "i", &[], &["-q"]);
    let run_dir = dir.join("runs/i");
    wait_for("a periodic checkpoint", T, || {
        (!committed_steps(&run_dir).is_empty()).then_some(())
    });
    kill(child.id() as i32, libc::SIGUSR1);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 8, "{}", res.stderr);
    let s = events_named(&run_dir, "notice_sent")[0]["stop_step"]
        .as_u64()
        .unwrap();
    assert_eq!(read(&out, "stopped-0"), s.to_string());
    assert!(!out.join("stopped-1").exists());
    // Rank 1 committed s only where s is one of its periodic steps (every
    // 20): otherwise the newest step every rank committed is older.
    let steps = committed_steps(&run_dir);
    let fallback = *steps.last().unwrap();
    if s % 20 == 0 {
        assert_eq!(fallback, s, "{steps:?}");
    } else {
        assert!(fallback < s, "{steps:?} stop {s}");
        assert!(!ck.join(format!("step-{s:010}")).exists());
    }
    let r = read_report(&run_dir.join("report.json"));
    let msg = r["attempts"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "rank(s) [1] did not stop by the deadline and were killed; the run resumes from step {fallback}"
        )),
        "{msg}"
    );
    assert_eq!(
        events_named(&run_dir, "notice_handled")[0]["checkpointed"],
        s % 20 == 0
    );
    resume_ends_as_uninterrupted(&dir, "i", &out, fallback, &want);
}
