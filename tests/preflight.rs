//! The preflight check (spec `preflight`): every worker measures its
//! device (here the CPU: a short GEMM and a memory copy) before it joins,
//! the launcher holds the rendezvous until it has compared the figures, and
//! a node far below the median is reported, stops the run (exit 10) or is
//! replaced, as the job says. A test hook reports node 1's figures at a
//! hundredth on the first attempt (a throttled node).

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const SLOW_NODE_1: &[(&str, &str)] = &[("RINGMASTER_FAULT_PREFLIGHT_SLOW_NODE", "1")];

fn job(on_slow: &str) -> Value {
    let mut s = train_job("pf", 2, 1, 60);
    // The hook makes node 1 a hundred times slower; healthy ranks measuring
    // at the same moment on this oversubscribed 2-core machine have been
    // seen at 0.36 of the median, so the bar is 0.25: between the two.
    s["preflight"] = json!({"enabled": true, "min_ratio": 0.25, "on_slow": on_slow});
    s
}

fn checked(run_dir: &std::path::Path) -> Vec<Value> {
    events_named(run_dir, "preflight")
}

#[test]
fn a_slow_node_is_reported_and_the_run_goes_on() {
    let dir = scratch("preflight-warn");
    let (out, r) = run_job(&dir, &job("warn"), "w", SLOW_NODE_1, &[], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("preflight: node-1 is slow"),
        "{}",
        out.stderr
    );
    let ev = checked(&dir.join("runs/w"));
    assert_eq!(ev.len(), 1, "{ev:?}");
    let figs = ev[0]["figures"].as_object().unwrap();
    assert_eq!(figs.len(), 2, "{ev:?}");
    for f in figs.values() {
        assert_eq!(f["device"], "cpu");
        assert!(
            f["gemm_gflops"].as_f64().unwrap() > 0.0 && f["copy_gbps"].as_f64().unwrap() > 0.0,
            "{f}"
        );
    }
    // Node 1 at a hundredth of node 0: below half the median (which lies
    // between the two).
    let slow: Vec<u64> = ev[0]["slow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node"].as_u64().unwrap())
        .collect();
    assert_eq!(slow, vec![1], "{ev:?}");
    let warnings = r["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("preflight: node-1 is slow")),
        "{r}"
    );
    assert_eq!(r["results"]["0"]["steps_done"], 60, "{r}");
}

#[test]
fn a_slow_node_stops_the_run_before_the_first_step_when_the_job_says_fail() {
    let dir = scratch("preflight-fail");
    let (out, r) = run_job(&dir, &job("fail"), "f", SLOW_NODE_1, &[], T);
    assert_eq!(out.code(), 10, "{}", out.stderr);
    assert!(out.stderr.contains("node-1"), "{}", out.stderr);
    assert_eq!(r["exit_name"], "preflight-failed", "{r}");
    // Nobody trained: no rank reported a result or a step.
    assert!(r["results"].as_object().is_none_or(|m| m.is_empty()), "{r}");
    assert!(events_named(&dir.join("runs/f"), "first_step").is_empty());
    // A fixed-node provider cannot replace: "replace" stops as "fail" does.
    let (out, _) = run_job(&dir, &job("replace"), "r", SLOW_NODE_1, &[], T);
    assert_eq!(out.code(), 10, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot replace the node(s)"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_slow_node_is_replaced_where_the_provider_can_and_the_replacement_is_checked() {
    let dir = scratch("preflight-replace");
    let mut spec = job("replace");
    spec["provider"] =
        json!({"kind": "sim", "cloud": "aws", "provisioning_delay_s": 0.2, "notice_window_s": 5});
    let (out, r) = run_job(&dir, &spec, "s", SLOW_NODE_1, &[], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/s");
    let ev = checked(&run_dir);
    assert_eq!(
        ev.len(),
        2,
        "checked at the start and after the replacement: {ev:?}"
    );
    assert_eq!(ev[0]["slow"][0]["node"], 1, "{ev:?}");
    assert_eq!(ev[1]["slow"], json!([]), "{ev:?}");
    let replaced: Vec<u64> = events_named(&run_dir, "node_replaced")
        .iter()
        .map(|e| e["node"].as_u64().unwrap())
        .collect();
    assert_eq!(replaced, vec![1]);
    assert_eq!(r["results"]["0"]["steps_done"], 60, "{r}");
    assert_eq!(
        r["restarts_by_kind"],
        json!({"user": 0, "infrastructure": 0, "preemption": 0, "preflight": 1, "resize": 0}),
        "{r}"
    );
}

#[test]
fn cpu_jobs_skip_the_check_unless_asked() {
    let dir = scratch("preflight-off");
    let (out, _) = run_job(&dir, &train_job("off", 2, 1, 20), "o", SLOW_NODE_1, &[], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(checked(&dir.join("runs/o")).is_empty());
    assert!(!out.stderr.contains("preflight"), "{}", out.stderr);
}

#[test]
fn plan_tells_whether_the_check_runs_and_what_follows() {
    let dir = scratch("preflight-plan");
    let job_file = write_job(&dir, &job("fail"));
    let out = ringmaster(&dir, &["plan", job_file.to_str().unwrap()], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("preflight: each worker checks its device before the first step; below 25% of the median: stop (exit 10)"),
        "{}",
        out.stdout
    );
    let job_file = write_job(&dir, &train_job("off", 2, 1, 20));
    let out = ringmaster(&dir, &["plan", job_file.to_str().unwrap()], T);
    assert!(!out.stdout.contains("preflight"), "{}", out.stdout);
}
