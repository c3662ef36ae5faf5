//! A user's own program (`command` jobs) and preemption notices, with a
//! program that imports nothing of ringmaster (tests/fixtures/own_program.py):
//! the notice reaches every rank's program once, by the job's signal, to the
//! program's process only (its child is untouched), with the notice's
//! details in RINGMASTER_NOTICE_FILE; SIGTERM to the launcher (what Slurm
//! and Kubernetes send) is such a notice; a program that ignores it is
//! stopped at the deadline and the report says which; SIGUSR1 to one
//! worker tells every rank; the program's environment has torchrun's
//! variables and not the run's token.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, SystemTime};

const T: Duration = Duration::from_secs(120);

fn job(name: &str, out: &Path, env: Value, notices: Value, grace: f64) -> Value {
    let mut e = json!({"OUT_DIR": out.to_str().unwrap(), "SLEEP_S": "60"});
    for (k, v) in env.as_object().unwrap() {
        e[k] = v.clone();
    }
    json!({"name": name, "resources": {"nodes": 2, "devices_per_node": 1},
           "workload": {"kind": "command", "argv": ["python3", fixture("own_program.py").to_str().unwrap()]},
           "env": e, "notices": notices,
           "recovery": {"notice_grace_s": grace, "grace_period_s": 2}})
}

/// Start the job; returns once both programs run.
fn start(dir: &Path, spec: &Value, id: &str) -> (Child, std::path::PathBuf) {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let child = start_run(dir, spec, id, &[], &[]);
    for rank in 0..2 {
        wait_for(&format!("rank {rank}'s program"), T, || {
            out.join(format!("pid-{rank}")).exists().then_some(())
        });
    }
    (child, out)
}

fn read(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Each rank's program got the notice once, with the file's details, and
/// its child got nothing.
fn told_once(out: &Path, source: &str) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for rank in 0..2 {
        assert_eq!(read(out, &format!("signals-{rank}")), "1", "rank {rank}");
        let n: Value = serde_json::from_str(&read(out, &format!("notice-{rank}.json"))).unwrap();
        assert!(
            n["source"].as_str().unwrap().contains(source),
            "rank {rank}: {n}"
        );
        let d = n["deadline_unix_s"].as_f64().unwrap();
        assert!(d > now - 60.0 && d < now + 60.0, "rank {rank}: {n}");
        assert!(n["deadline"].as_str().unwrap().ends_with('Z'), "{n}");
        assert!(
            !out.join(format!("child-signalled-{rank}")).exists(),
            "rank {rank}'s child got a signal"
        );
    }
}

#[test]
fn sigusr1_to_the_launcher_tells_each_program_once_and_not_its_children() {
    let dir = scratch("own-usr1");
    let spec = job(
        "u",
        &dir.join("out"),
        json!({"NOTICE_SIG": "SIGUSR1"}),
        json!({"program_signal": "SIGUSR1"}),
        30.0,
    );
    let (child, out) = start(&dir, &spec, "u");
    let pid = child.id() as i32;
    // The launcher says its pid, so `kill -USR1` is easy.
    wait_for("the launcher to start the rendezvous", T, || {
        (!events_named(&dir.join("runs/u"), "rendezvous_complete").is_empty()).then_some(())
    });
    kill(pid, libc::SIGUSR1);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 8, "{}", res.stderr);
    assert!(
        res.stderr.contains(&format!("launcher pid {pid}")),
        "{}",
        res.stderr
    );
    // The program's output on the console, rank-prefixed, as torchrun shows it.
    for rank in 0..2 {
        assert!(
            res.stdout
                .contains(&format!("program of rank {rank} started")),
            "{}",
            res.stdout
        );
    }
    told_once(&out, "launcher");
    let r = read_report(&dir.join("runs/u/report.json"));
    assert_eq!(r["exit_name"], "preempted", "{r}");
    let msg = r["attempts"][0]["message"].as_str().unwrap();
    assert!(msg.contains("every program stopped"), "{msg}");
    // The program's environment: torchrun's variables, not the run's token.
    for rank in 0..2 {
        let env: Value = serde_json::from_str(&read(&out, &format!("env-{rank}.json"))).unwrap();
        assert_eq!(env["GROUP_WORLD_SIZE"], "2", "{env}");
        assert_eq!(env["ROLE_NAME"], "default", "{env}");
        assert_eq!(env["TORCHELASTIC_RUN_ID"], "u", "{env}");
        assert_eq!(env["TORCHELASTIC_MAX_RESTARTS"], "0", "{env}");
        assert!(env["RINGMASTER_RDZV_TOKEN"].is_null(), "{env}");
        assert!(
            env["RINGMASTER_NOTICE_FILE"]
                .as_str()
                .unwrap()
                .ends_with(&format!("rank-{rank}.notice.json")),
            "{env}"
        );
    }
}

#[test]
fn sigterm_to_the_launcher_is_a_notice_with_the_notice_grace() {
    // The default program signal is SIGTERM, the one torchrun-style
    // programs handle; a grace period of 2 s would kill a handler that
    // needs longer, the notice grace (30 s) does not.
    let dir = scratch("own-term");
    let spec = job("t", &dir.join("out"), json!({}), json!({}), 30.0);
    let (child, out) = start(&dir, &spec, "t");
    wait_for("the rendezvous", T, || {
        (!events_named(&dir.join("runs/t"), "rendezvous_complete").is_empty()).then_some(())
    });
    kill(child.id() as i32, libc::SIGTERM);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 8, "{}", res.stderr);
    told_once(&out, "launcher");
    let sent = events_named(&dir.join("runs/t"), "notice_sent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["notice_grace_s"], 30.0);
    assert!(events_named(&dir.join("runs/t"), "workers_terminating").is_empty());
    // Each worker exited as preempted: its program stopped after the notice.
    for e in events_named(&dir.join("runs/t"), "worker_exited") {
        assert_eq!(e["exit_code"], 77, "{e}");
    }
}

#[test]
fn a_program_that_ignores_the_notice_is_stopped_at_the_deadline() {
    let dir = scratch("own-ignore");
    let spec = job(
        "i",
        &dir.join("out"),
        json!({"IGNORE": "1"}),
        json!({}),
        2.0,
    );
    let (child, out) = start(&dir, &spec, "i");
    wait_for("the rendezvous", T, || {
        (!events_named(&dir.join("runs/i"), "rendezvous_complete").is_empty()).then_some(())
    });
    kill(child.id() as i32, libc::SIGUSR1);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 8, "{}", res.stderr);
    let r = read_report(&dir.join("runs/i/report.json"));
    let msg = r["attempts"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("rank(s) [0, 1] did not stop by the deadline and were killed"),
        "{msg}"
    );
    let handled = events_named(&dir.join("runs/i"), "notice_handled");
    assert_eq!(handled[0]["deadline_met"], false, "{handled:?}");
    // Told, it ignored the signal: no notice handled by the program.
    assert!(!out.join("signals-0").exists());
}

#[test]
fn sigusr1_to_one_worker_tells_every_rank() {
    let dir = scratch("own-worker");
    let spec = job("w", &dir.join("out"), json!({}), json!({}), 30.0);
    let (child, out) = start(&dir, &spec, "w");
    let run_dir = dir.join("runs/w");
    wait_for("the rendezvous", T, || {
        (!events_named(&run_dir, "rendezvous_complete").is_empty()).then_some(())
    });
    let worker1 = events_named(&run_dir, "worker_started")
        .iter()
        .find(|e| e["rank"] == 1)
        .and_then(|e| e["pid"].as_i64())
        .unwrap() as i32;
    kill(worker1, libc::SIGUSR1);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 8, "{}", res.stderr);
    // Rank 1 heard it from its own worker; rank 0 from the launcher.
    told_once_each(&out, ["launcher", "signal to the worker of rank 1"]);
    let got = events_named(&run_dir, "notice_received");
    assert_eq!(got[0]["rank"], 1, "{got:?}");
}

fn told_once_each(out: &Path, sources: [&str; 2]) {
    for (rank, source) in sources.iter().enumerate() {
        assert_eq!(read(out, &format!("signals-{rank}")), "1", "rank {rank}");
        let n: Value = serde_json::from_str(&read(out, &format!("notice-{rank}.json"))).unwrap();
        assert!(
            n["source"].as_str().unwrap().contains(source),
            "rank {rank}: {n}"
        );
    }
}

fn reporter(name: &str, env: Value, recovery: Value) -> Value {
    let mut e = json!({"PYTHONPATH": repo().join("python").to_str().unwrap()});
    for (k, v) in env.as_object().unwrap() {
        e[k] = v.clone();
    }
    json!({"name": name, "resources": {"nodes": 2, "devices_per_node": 1},
           "workload": {"kind": "command", "argv": ["python3", fixture("reporter.py").to_str().unwrap()]},
           "env": e, "recovery": recovery})
}

#[test]
fn a_program_that_reports_its_steps_is_followed_and_counted() {
    let dir = scratch("own-report");
    let (out, r) = run_job(
        &dir,
        &reporter("rep", json!({"TOTAL": "40"}), json!({})),
        "rep",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/rep");
    let first = events_named(&run_dir, "first_step");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(r["attempts"][0]["reached_step"], 40, "{r}");
    assert_eq!(r["goodput"]["steps_useful"], 40, "{r}");
    assert_eq!(r["goodput"]["steps_computed"], 40, "{r}");
}

#[test]
fn a_program_that_stops_reporting_is_a_hang_and_the_rank_is_named() {
    let dir = scratch("own-hang");
    let spec = reporter(
        "hang",
        json!({"TOTAL": "1000", "HANG_AT": "10", "HANG_RANK": "1"}),
        json!({"hang_timeout_s": 2, "max_restarts": 0, "grace_period_s": 1}),
    );
    let (out, r) = run_job(&dir, &spec, "hang", &[], &["-q"], T);
    assert_eq!(out.code(), 4, "{}", out.stderr);
    let msg = r["attempts"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "rank 1 (node-1/local-0) stopped advancing first (the lowest step) at step 10"
        ),
        "{msg}"
    );
    assert!(msg.contains("steps by rank: [11,10]"), "{msg}");
    assert_eq!(r["attempts"][0]["failure_kind"], "infrastructure", "{r}");
}

#[test]
fn every_rank_stops_at_the_agreed_step() {
    let dir = scratch("own-agreed");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut spec = reporter(
        "agreed",
        json!({"TOTAL": "100000", "STEP_S": "0.01", "OUT_DIR": out.to_str().unwrap()}),
        json!({"notice_grace_s": 30}),
    );
    // The program stops through `report` alone: no signal.
    spec["notices"] = json!({"program_signal": "none"});
    let child = start_run(&dir, &spec, "agreed", &[], &["-q"]);
    let run_dir = dir.join("runs/agreed");
    wait_for("steps to be reported", T, || {
        events_named(&run_dir, "first_step").first().cloned()
    });
    std::thread::sleep(Duration::from_millis(800));
    kill(child.id() as i32, libc::SIGUSR1);
    let res = wait_output(child, T);
    assert_eq!(res.code(), 8, "{}", res.stderr);
    let sent = events_named(&run_dir, "notice_sent");
    let s = sent[0]["stop_step"]
        .as_u64()
        .expect("a stop step was agreed");
    for rank in 0..2 {
        assert_eq!(
            read(&out, &format!("stopped-{rank}")),
            s.to_string(),
            "rank {rank}"
        );
    }
    let r = read_report(&run_dir.join("report.json"));
    let msg = r["attempts"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("every program stopped at the agreed step {s}")),
        "{msg}"
    );
    assert_eq!(r["results"]["0"]["last_step"], s, "{r}");
    assert_eq!(r["results"]["1"]["stopped_for_notice"], true, "{r}");
    let handled = events_named(&run_dir, "notice_handled");
    assert_eq!(handled[0]["stopped_at_step"], s, "{handled:?}");
}
