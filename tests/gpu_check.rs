//! scripts/gpu-check.sh, the script a lent GPU machine runs, checked here
//! without a GPU: `--dry-run` goes through every step (each fails fast and
//! must still be recorded) within a budget that adds up; without
//! `--dry-run` it stops right after `doctor` says GPU jobs cannot run,
//! keeping what it found.

use ringmaster_suite::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

fn gpu_check(out: &std::path::Path, args: &[&str]) -> (Outcome, Value) {
    let child = Command::new(repo().join("scripts/gpu-check.sh"))
        .args(args)
        .env("OUT", out)
        .env("RINGMASTER_BIN_DIR", bin_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_output(child, Duration::from_secs(400));
    let json = read_json(&out.join("gpu-check.json"));
    (o, json)
}

#[test]
fn the_dry_run_records_every_step_within_the_budget() {
    let dir = scratch("gpucheck-dry");
    let (out, j) = gpu_check(&dir, &["--dry-run"]);
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(j["budget_ok"], true);
    let shares = j["shares_s"].as_object().unwrap();
    let total: u64 = shares.values().map(|v| v.as_u64().unwrap()).sum();
    assert!(total <= j["budget_s"].as_u64().unwrap(), "{total}");
    let steps = j["steps"].as_object().unwrap();
    assert_eq!(steps.len(), shares.len());
    for (name, s) in steps {
        assert!(s["ok"].is_boolean(), "{name}: {s}");
        if s["ok"] == false {
            assert!(
                s["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{name}: {s}"
            );
        }
        assert!(shares.contains_key(name), "{name}");
    }
    // The libraries the launcher and a worker loaded are on record.
    assert!(j["libraries"]["worker_loads"].is_array(), "{j:#}");
    assert!(dir.join("doctor.txt").is_file());
}

#[test]
fn without_a_gpu_the_real_check_stops_after_doctor() {
    let dir = scratch("gpucheck-stop");
    let probe = ringmaster(&dir, &["doctor", "--json"], Duration::from_secs(60));
    let d: Value = serde_json::from_str(&probe.stdout).unwrap();
    if d["gpu_ready"] == true {
        eprintln!("this machine can run GPU jobs: the stop is not exercised here");
        return;
    }
    let (out, j) = gpu_check(&dir, &[]);
    assert_eq!(out.code(), 1, "{}\n{}", out.stdout, out.stderr);
    assert!(j["stopped"].as_str().unwrap().contains("doctor"), "{j:#}");
    assert_eq!(
        j["steps"].as_object().unwrap().len(),
        1,
        "only doctor ran: {j:#}"
    );
}
