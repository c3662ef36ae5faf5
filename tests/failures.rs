//! Failure handling with real processes: crash -> restart, restart budget,
//! rendezvous timeout naming who is missing, heartbeat loss, hang, Ctrl-C
//! (graceful, then immediate), SIGTERM-ignoring workers, and no orphans
//! after the launcher is SIGKILLed.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Child;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn start(dir: &Path, spec: &Value, id: &str, extra_env: &[(&str, &str)]) -> Child {
    start_run(dir, spec, id, extra_env, &["-q"])
}

fn run(dir: &Path, spec: &Value, id: &str, extra_env: &[(&str, &str)]) -> (Outcome, Value) {
    run_job(dir, spec, id, extra_env, &["-q"], T)
}

fn py(script: &str) -> Value {
    json!(["python3", fixture(script).to_str().unwrap()])
}

#[test]
fn a_failed_worker_restarts_the_group_and_the_run_succeeds() {
    let dir = scratch("restart");
    let spec = json!({"name": "r", "resources": {"nodes": 2, "devices_per_node": 1},
                      "workload": {"kind": "command", "argv": py("flaky.py")},
                      "env": {"FAIL_RANK": "1", "FAIL_ATTEMPTS": "1", "FAIL_CODE": "17"},
                      "recovery": {"max_restarts": 2, "grace_period_s": 2}});
    let (out, r) = run(&dir, &spec, "r", &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(r["restarts"], 1);
    let attempts = r["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["outcome"], "worker-failed");
    assert_eq!(attempts[0]["failure"]["rank"], 1);
    assert_eq!(attempts[0]["failure"]["exit_code"], 17);
    let last = attempts[0]["failure"]["last_lines"].as_array().unwrap();
    assert!(
        last.iter()
            .any(|l| l.as_str().unwrap().contains("attempt 0: simulated failure")),
        "{last:?}"
    );
    assert_eq!(attempts[1]["outcome"], "succeeded");
    // The second attempt saw RINGMASTER_RESTART_COUNT=1 in its own log folder.
    let log = std::fs::read_to_string(dir.join("runs/r/attempt-1/rank-1.log")).unwrap();
    assert!(log.contains("rank 1 attempt 1: fine"), "{log}");
    let ended = events_named(&dir.join("runs/r"), "attempt_ended");
    assert_eq!(ended[0]["restarting"], true);
    assert_eq!(ended[1]["outcome"], "succeeded");
}

#[test]
fn the_restart_budget_is_honoured_and_the_first_failure_named() {
    let dir = scratch("budget");
    let spec = json!({"name": "b", "resources": {"nodes": 1, "devices_per_node": 3},
                      "workload": {"kind": "command", "argv": py("flaky.py")},
                      "env": {"FAIL_RANK": "2", "FAIL_ATTEMPTS": "99", "FAIL_CODE": "42"},
                      "recovery": {"max_restarts": 2}});
    let (out, r) = run(&dir, &spec, "b", &[]);
    assert_eq!(out.code(), 4, "{}", out.stderr);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["exit_name"], "workers-failed");
    assert_eq!(r["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(r["restarts"], 2);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("rank 2 (node-0/local-2) failed: exit code 42"),
        "{r}"
    );
    assert!(
        out.stdout.contains("attempt 2: simulated failure"),
        "summary shows the last log lines:\n{}",
        out.stdout
    );
}

#[test]
fn rendezvous_timeout_names_the_missing_worker() {
    let dir = scratch("rdzv-timeout");
    let spec = json!({"name": "t", "resources": {"nodes": 2, "devices_per_node": 2},
                      "workload": {"kind": "train", "steps": 5},
                      "env": {"NOJOIN_RANK": "3", "REAL_WORKER": worker_bin().to_str().unwrap()},
                      "recovery": {"rendezvous_timeout_s": 1.5, "grace_period_s": 1}});
    let (out, r) = run(
        &dir,
        &spec,
        "t",
        &[(
            "RINGMASTER_WORKER_BIN",
            fixture("nojoin.sh").to_str().unwrap(),
        )],
    );
    assert_eq!(out.code(), 5, "{}", out.stderr);
    assert_eq!(
        r["message"],
        "rendezvous timed out after 1.5 s: 3/4 joined; missing node-1/local-1"
    );
    assert_eq!(r["attempts"][0]["outcome"], "rendezvous-timeout");
}

/// The pid of `rank`'s worker in attempt 0, once rendezvous completed.
fn worker_pids(run_dir: &Path, world: usize) -> Vec<i32> {
    wait_for("rendezvous to complete", T, || {
        (!events_named(run_dir, "rendezvous_complete").is_empty()).then_some(())
    });
    let mut pids = vec![0; world];
    for e in events_named(run_dir, "worker_started") {
        pids[e["rank"].as_u64().unwrap() as usize] = e["pid"].as_i64().unwrap() as i32;
    }
    pids
}

#[test]
fn a_frozen_worker_is_detected_by_heartbeat() {
    let dir = scratch("heartbeat");
    let mut spec = train_job("hb", 2, 1, 10_000_000);
    spec["recovery"] = json!({"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.5, "hang_timeout_s": 600, "grace_period_s": 0.5});
    let child = start(&dir, &spec, "hb", &[]);
    let pids = worker_pids(&dir.join("runs/hb"), 2);
    kill(pids[1], libc::SIGSTOP);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 4, "{}", out.stderr);
    let r = read_report(&dir.join("runs/hb/report.json"));
    assert_eq!(r["attempts"][0]["outcome"], "heartbeat-lost");
    assert_eq!(
        r["message"],
        "rank 1 sent no heartbeat for 1.5 s (heartbeat_timeout_s)"
    );
    for p in pids {
        wait_for("stopped worker to be killed", T, || {
            (!alive(p)).then_some(())
        });
    }
}

#[test]
fn a_group_that_stops_making_progress_is_a_hang() {
    let dir = scratch("hang");
    let mut spec = train_job("hang", 3, 1, 10_000_000);
    spec["recovery"] = json!({"heartbeat_interval_s": 0.1, "heartbeat_timeout_s": 60, "hang_timeout_s": 1, "grace_period_s": 0.5});
    let child = start(&dir, &spec, "hang", &[]);
    let pids = worker_pids(&dir.join("runs/hang"), 3);
    // Rank 2's heartbeat connection stays open in the kernel while it is
    // stopped, but nobody can finish a collective without it: the others
    // keep beating and make no progress.
    kill(pids[2], libc::SIGSTOP);
    let out = wait_output(child, T);
    let r = read_report(&dir.join("runs/hang/report.json"));
    // Rank 2 itself goes silent too; with a 60 s heartbeat timeout the hang
    // detector must be the one that fires.
    assert_eq!(out.code(), 4, "{}", out.stderr);
    assert_eq!(r["attempts"][0]["outcome"], "hang", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.starts_with("no rank made progress for 1 s (hang_timeout_s); rank 2 (node-2/local-0) stopped sending heartbeats"),
        "the frozen rank is named, not the ones waiting for it: {msg}"
    );
    for p in pids {
        wait_for("hung workers to be killed", T, || (!alive(p)).then_some(()));
    }
}

/// Pids written by sleeper.py: (program, its `sleep` child) per rank.
fn sleeper_pids(out: &Path, world: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    for rank in 0..world {
        let f = out.join(format!("pid-{rank}"));
        let text = wait_for("sleeper pid file", T, || {
            std::fs::read_to_string(&f)
                .ok()
                .filter(|t| t.ends_with('\n'))
        });
        pids.extend(text.split_whitespace().map(|p| p.parse::<i32>().unwrap()));
    }
    pids
}

fn sleeper_job(name: &str, out: &Path, ignore_term: bool, grace: f64) -> Value {
    json!({"name": name, "resources": {"nodes": 2, "devices_per_node": 1},
           "workload": {"kind": "command", "argv": py("sleeper.py")},
           "env": {"OUT_DIR": out.to_str().unwrap(), "SLEEP_S": "60", "IGNORE_TERM": if ignore_term { "1" } else { "0" }},
           "recovery": {"grace_period_s": grace}})
}

#[test]
fn sigkill_of_the_launcher_leaves_no_orphans() {
    for workload in ["command", "train"] {
        let dir = scratch("orphans");
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let spec = if workload == "command" {
            sleeper_job("o", &out, true, 30.0)
        } else {
            train_job("o", 2, 2, 10_000_000)
        };
        let world = if workload == "command" { 2 } else { 4 };
        let mut child = start(&dir, &spec, "o", &[]);
        let mut pids = worker_pids(&dir.join("runs/o"), world);
        if workload == "command" {
            pids.extend(sleeper_pids(&out, world));
        }
        assert!(pids.iter().all(|p| alive(*p)), "{workload}: all started");
        child.kill().unwrap(); // SIGKILL: the launcher gets no chance to clean up
        child.wait().unwrap();
        for p in &pids {
            wait_for(
                &format!("{workload}: process {p} to exit after the launcher died"),
                Duration::from_secs(30),
                || (!alive(*p)).then_some(()),
            );
        }
    }
}

#[test]
fn ctrl_c_stops_gracefully_and_twice_kills_now() {
    // Once: SIGTERM reaches every group, programs exit, exit code 130.
    let dir = scratch("ctrlc");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let child = start(&dir, &sleeper_job("c", &out, false, 30.0), "c", &[]);
    let mut pids = worker_pids(&dir.join("runs/c"), 2);
    pids.extend(sleeper_pids(&out, 2));
    kill(child.id() as i32, libc::SIGINT);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 130, "{}", res.stderr);
    let r = read_report(&dir.join("runs/c/report.json"));
    assert_eq!(r["status"], "interrupted");
    for p in &pids {
        wait_for("graceful stop", T, || (!alive(*p)).then_some(()));
    }

    // Programs that ignore SIGTERM, a 60 s grace period, and a second
    // Ctrl-C: killed at once rather than after the grace period.
    let dir = scratch("ctrlc2");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let child = start(&dir, &sleeper_job("c", &out, true, 60.0), "c", &[]);
    let mut pids = worker_pids(&dir.join("runs/c"), 2);
    pids.extend(sleeper_pids(&out, 2));
    kill(child.id() as i32, libc::SIGINT);
    wait_for("terminating event", T, || {
        (!events_named(&dir.join("runs/c"), "workers_terminating").is_empty()).then_some(())
    });
    kill(child.id() as i32, libc::SIGINT);
    let res = wait_output(child, Duration::from_secs(30));
    assert_eq!(res.code(), 130, "{}", res.stderr);
    for p in &pids {
        assert!(!alive(*p), "process {p} survived a second Ctrl-C");
    }
}

#[test]
fn a_setsid_child_does_not_outlive_the_run() {
    // (how the run ends, whether the program leaves its child behind)
    for (how, leave) in [("ctrl-c", false), ("program-exits", true)] {
        let dir = scratch("setsid");
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let mut spec = sleeper_job("s", &out, false, 30.0);
        spec["env"]["SETSID"] = json!("1");
        spec["env"]["LEAVE_CHILD"] = json!(if leave { "1" } else { "0" });
        let child = start(&dir, &spec, "s", &[]);
        let strays: Vec<i32> = sleeper_pids(&out, 2)
            .into_iter()
            .filter(|p| {
                // The children, in sessions of their own.
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| s.contains(") S") || s.contains(") R"))
                    .unwrap_or(false)
                    && unsafe { libc::getsid(*p) } == *p
            })
            .collect();
        assert_eq!(strays.len(), 2, "{how}: two setsid children started");
        if how == "ctrl-c" {
            kill(child.id() as i32, libc::SIGINT);
        } else {
            std::fs::write(out.join("go"), b"").unwrap();
        }
        let res = wait_output(child, T);
        assert_eq!(
            res.code(),
            if how == "ctrl-c" { 130 } else { 0 },
            "{how}: {}",
            res.stderr
        );
        for p in &strays {
            assert!(
                !alive(*p),
                "{how}: the setsid child {p} outlived the launcher"
            );
        }
    }
}

#[test]
fn an_orphan_does_not_run_on_into_the_next_attempt() {
    let dir = scratch("orphan-attempt");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut spec = sleeper_job("oa", &out, false, 30.0);
    // Attempt 0's programs start a setsid child and fail at once.
    spec["env"]["SETSID"] = json!("1");
    spec["env"]["FAIL_FIRST"] = json!("1");
    spec["recovery"]["max_restarts"] = json!(1);
    // One worker: with two, the first to fail stops the other, which may
    // not have started its child yet.
    spec["resources"]["nodes"] = json!(1);
    let child = start(&dir, &spec, "oa", &[]);
    let first: Vec<i32> = (0..1)
        .map(|rank| {
            let f = out.join(format!("pid-{rank}-a0"));
            let text = wait_for("attempt 0's pid file", T, || {
                std::fs::read_to_string(&f).ok()
            });
            text.split_whitespace().nth(1).unwrap().parse().unwrap()
        })
        .collect();
    // Attempt 1 is up: attempt 0's orphans are gone.
    wait_for("attempt 1", T, || {
        out.join("pid-0-a1").exists().then_some(())
    });
    for p in &first {
        assert!(
            !alive(*p),
            "attempt 0's setsid child {p} runs on in attempt 1"
        );
    }
    std::fs::write(out.join("go"), b"").unwrap();
    let res = wait_output(child, T);
    assert_eq!(res.code(), 0, "{}", res.stderr);
    let ended = events_named(&dir.join("runs/oa"), "strays_ended");
    assert!(ended.iter().any(|e| e["attempt"] == 1), "{ended:?}");
}

#[test]
fn workers_ignoring_sigterm_are_killed_after_the_grace_period() {
    let dir = scratch("grace");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let child = start(&dir, &sleeper_job("g", &out, true, 0.5), "g", &[]);
    let mut pids = worker_pids(&dir.join("runs/g"), 2);
    pids.extend(sleeper_pids(&out, 2));
    // Ctrl-C: the group is stopped (SIGTERM to every worker's group, then
    // SIGKILL after the grace period). (A SIGTERM to the launcher is a
    // notice for a command job: tests/own_program.rs.)
    kill(child.id() as i32, libc::SIGINT);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 130, "{}", res.stderr);
    for p in &pids {
        assert!(!alive(*p), "process {p} survived the grace period");
    }
    let exits = events_named(&dir.join("runs/g"), "worker_exited");
    assert!(
        exits.iter().any(|e| e["signal"] == 9),
        "a worker was SIGKILLed: {exits:?}"
    );
}

#[test]
fn a_crash_loop_stops_early_with_its_diagnosis() {
    let dir = scratch("crashloop");
    let mut spec = train_job("loop", 2, 1, 500);
    // Rank 1 fails at step 25 in every attempt; nothing is checkpointed, so
    // each attempt starts over and fails at the same step.
    spec["env"] = json!({"RINGMASTER_FAULT_AT_STEP": "25", "RINGMASTER_FAULT_RANK": "1", "RINGMASTER_FAULT_ATTEMPTS": "99"});
    spec["recovery"] = json!({"max_restarts": 5, "grace_period_s": 2});
    let (out, r) = run(&dir, &spec, "loop", &[]);
    assert_eq!(out.code(), 4, "{}", out.stderr);
    let attempts = r["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "stopped after the repeat, not after 6 attempts: {r}"
    );
    assert_eq!(attempts[1]["outcome"], "crash-loop");
    assert_eq!(
        r["message"],
        "crash loop: rank 1 (node-1/local-0) failed: exit code 74 (workload-failed) at step 25 in two attempts in a row; not restarting again"
    );
    let err = &attempts[0]["failure"]["worker_error"];
    assert_eq!(err["step"], 25, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("injected fault at step 25"),
        "{err}"
    );
}

/// Separate budgets: a SIGKILLed worker is an infrastructure failure and
/// restarts on that budget; a worker that exits non-zero on its own is a
/// user error, and with no user budget the run stops. The report names
/// each attempt's kind and the steps it lost.
#[test]
fn infrastructure_and_user_failures_draw_on_separate_budgets() {
    let dir = scratch("budgets");
    let mut spec = train_job("b", 2, 1, 3000);
    // Step 2900 lies seconds after step 200 on any machine: the kill lands
    // first.
    spec["workload"]["pace_ms"] = json!(1);
    spec["checkpoint"] =
        json!({"dir": dir.join("ck").to_str().unwrap(), "every_steps": 50, "keep": 2});
    spec["recovery"] = json!({"max_restarts": 0, "max_infra_restarts": 1,
                              "grace_period_s": 2, "heartbeat_interval_s": 0.1});
    // Rank 1 exits 74 at step 2900 in every attempt: a user error.
    spec["env"] = json!({"RINGMASTER_FAULT_AT_STEP": "2900", "RINGMASTER_FAULT_RANK": "1",
                         "RINGMASTER_FAULT_ATTEMPTS": "9"});
    let child = start(&dir, &spec, "b", &[]);
    let run_dir = dir.join("runs/b");
    wait_for("step 200", T, || {
        std::fs::read_to_string(run_dir.join("attempt-0/rank-0.log"))
            .ok()
            .filter(|l| l.contains("step 200/"))
    });
    kill(worker_pid(&run_dir, 1), libc::SIGKILL);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 4, "{}", out.stderr);
    let r = read_report(&run_dir.join("report.json"));
    assert_eq!(r["restarts"], 1);
    assert_eq!(
        r["restarts_by_kind"],
        json!({"user": 0, "infrastructure": 1, "preemption": 0, "preflight": 0, "resize": 0})
    );
    let a = r["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 2, "{r}");
    assert_eq!(a[0]["failure_kind"], "infrastructure");
    assert_eq!(a[0]["failure"]["signal"], 9);
    assert_eq!(a[1]["failure_kind"], "user");
    assert_eq!(a[1]["failure"]["exit_code"], 74);
    // Attempt 1 resumed from a checkpoint at or before where attempt 0
    // got to (the kill came after step 200 was logged, maybe before its
    // checkpoint committed); what lies between is the work lost.
    let (reached, resumed) = (
        a[0]["reached_step"].as_u64().unwrap(),
        a[1]["started_at_step"].as_u64().unwrap(),
    );
    assert!(
        resumed >= 150 && resumed % 50 == 0 && resumed <= reached,
        "{r}"
    );
    assert_eq!(a[0]["steps_lost"].as_u64().unwrap(), reached - resumed);
}
