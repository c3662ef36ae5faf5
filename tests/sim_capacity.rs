//! The simulated spot market's zones: spot capacity that runs out (from a
//! trace, in simulated time), on-demand fallback, failover to another zone,
//! waiting for capacity, and giving up with exit 9. Every run that finishes
//! ends with the uninterrupted run's weights.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

/// 2 nodes x 1 worker, at least 3 s of steps; the market runs an hour of
/// simulated time per real second.
fn job(dir: &Path, ck: &str, provider: Value) -> Value {
    let mut s = train_job("zones", 2, 1, 3000);
    s["workload"]["pace_ms"] = json!(1);
    s["checkpoint"] = json!({"dir": dir.join(ck).to_str().unwrap(), "every_steps": 100, "keep": 2});
    s["recovery"] = json!({"heartbeat_interval_s": 0.1, "grace_period_s": 2});
    s["provider"] = provider;
    s
}

fn sim(market: &str, failover: &str, zones: Value) -> Value {
    json!({"kind": "sim", "cloud": "aws", "offer": "g5.2xlarge", "market": market, "failover": failover,
           "time_scale": 3600, "provisioning_delay_s": 0.3, "notice_window_s": 5, "zones": zones})
}

fn trace(dir: &Path, name: &str, content: Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content.to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

fn clean_weights(dir: &Path) -> Value {
    let (out, r) = run_job(
        dir,
        &job(dir, "ck-clean", json!({"kind": "local"})),
        "clean",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    r["summary"]["weights_sha256"].clone()
}

fn replaced(run_dir: &Path) -> Vec<(u64, String, String)> {
    events_named(run_dir, "node_replaced")
        .iter()
        .map(|e| {
            (
                e["node"].as_u64().unwrap(),
                e["zone"].as_str().unwrap().to_string(),
                e["market"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Zone a's spot capacity drops from 2 to 1 an hour in (a trace of
/// events); zone b has none all along (a spot-traces file). The node the
/// drop takes back gets a notice, checkpoints with the group, and comes
/// back on-demand in its own zone; the bill splits by market.
#[test]
fn spot_running_out_falls_back_to_on_demand() {
    let dir = scratch("zones-fallback");
    let want = clean_weights(&dir);
    let a = trace(
        &dir,
        "a.json",
        json!([{"at_s": 0, "capacity": 2}, {"at_s": 3600, "capacity": 1}]),
    );
    let b = trace(
        &dir,
        "b.json",
        json!({"metadata": {"gap_seconds": 3600, "region": "us-east-1b"}, "data": [0, 0, 0]}),
    );
    let zones = json!([{"name": "us-east-1a", "trace": a}, {"name": "us-east-1b", "trace": b}]);
    let (out, r) = run_job(
        &dir,
        &job(
            &dir,
            "ck",
            sim("spot-then-on-demand", "same_zone_first", zones),
        ),
        "fb",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/fb");
    let notices = events_named(&run_dir, "node_notice");
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        (
            &notices[0]["node"],
            &notices[0]["cause"],
            &notices[0]["zone"]
        ),
        (&json!(1), &json!("capacity"), &json!("us-east-1a"))
    );
    assert_eq!(
        replaced(&run_dir),
        vec![(1, "us-east-1a".into(), "on-demand".into())]
    );
    assert_eq!(r["summary"]["weights_sha256"], want);
    assert_eq!(r["attempts"][0]["steps_lost"], 0, "{}", r["attempts"][0]);
    let c = &r["cost"];
    assert_eq!(c["market"], "spot-then-on-demand");
    assert_eq!(c["time_scale"], 3600.0);
    let (spot, od) = (&c["by_market"]["spot"], &c["by_market"]["on-demand"]);
    assert!(spot["cost_usd"].as_f64().unwrap() > 0.0, "{c}");
    assert!(od["cost_usd"].as_f64().unwrap() > 0.0, "{c}");
    let vms = c["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 3, "{c}");
    let total: f64 = vms.iter().map(|v| v["cost_usd"].as_f64().unwrap()).sum();
    assert!(
        (total - c["cost_usd"].as_f64().unwrap()).abs() < 1e-9,
        "{c}"
    );
    // Billing runs in simulated time: node-hours are about the run's real
    // seconds times two nodes (an hour a second), less the gap between a
    // VM's release and its replacement.
    let dur_h = r["duration_s"].as_f64().unwrap();
    let hours = c["node_hours"].as_f64().unwrap();
    assert!(
        hours > 1.0 * dur_h && hours <= 2.0 * dur_h + 1e-6,
        "{hours} node-hours in {dur_h} s"
    );
}

/// Both nodes lose zone a's spot capacity an hour in; zone b holds one spot
/// node. With other zones first, node 0's replacement goes to b; node 1
/// finds no spot anywhere and waits (spot only) until zone a has capacity
/// again three hours in.
#[test]
fn replacements_fail_over_to_other_zones_and_wait_for_capacity() {
    let dir = scratch("zones-failover");
    let want = clean_weights(&dir);
    let a = trace(
        &dir,
        "a.json",
        json!([{"at_s": 3600, "capacity": 0}, {"at_s": 10800, "capacity": null}]),
    );
    let zones = json!([{"name": "a", "trace": a}, {"name": "b", "spot_capacity": 1}]);
    let (out, r) = run_job(
        &dir,
        &job(&dir, "ck", sim("spot", "other_zones_first", zones)),
        "fo",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/fo");
    let causes: Vec<(u64, String)> = events_named(&run_dir, "node_notice")
        .iter()
        .map(|e| {
            (
                e["node"].as_u64().unwrap(),
                e["cause"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(causes, vec![(0, "capacity".into()), (1, "capacity".into())]);
    let waited = events_named(&run_dir, "waiting_for_capacity");
    assert_eq!(waited.len(), 1, "{waited:?}");
    assert_eq!(waited[0]["nodes"], json!([1]));
    assert_eq!(
        replaced(&run_dir),
        vec![
            (0, "b".into(), "spot".into()),
            (1, "a".into(), "spot".into())
        ]
    );
    // Node 1 was placed once zone a's capacity came back.
    let back = events_named(&run_dir, "node_replaced")[1]["market_time_s"]
        .as_f64()
        .unwrap();
    assert!(back >= 10800.0, "{back}");
    assert_eq!(r["summary"]["weights_sha256"], want);
    assert!(
        r["cost"]["by_market"]["on-demand"].is_null(),
        "{}",
        r["cost"]
    );
}

/// Spot only, and spot capacity gone everywhere for longer than
/// capacity_wait_s: the run stops with exit 9 after the coordinated
/// checkpoint, and says how to continue.
#[test]
fn no_capacity_anywhere_ends_the_run_with_exit_9_and_its_checkpoint() {
    let dir = scratch("zones-none");
    let a = trace(&dir, "a.json", json!([{"at_s": 3600, "capacity": 0}]));
    let mut provider = sim(
        "spot",
        "same_zone_first",
        json!([{"name": "a", "trace": a}]),
    );
    provider["capacity_wait_s"] = json!(0.5);
    let (out, r) = run_job(&dir, &job(&dir, "ck", provider), "none", &[], &["-q"], T);
    assert_eq!(out.code(), 9, "{}", out.stderr);
    assert_eq!(r["exit_name"], "no-capacity");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("no spot capacity in any zone") && msg.contains("--resume"),
        "{msg}"
    );
    let handled = events_named(&dir.join("runs/none"), "notice_handled");
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert_eq!(handled[0]["checkpointed"], true, "{}", handled[0]);
    let step = handled[0]["stopped_at_step"].as_u64().unwrap();
    assert!(
        dir.join("ck").join(format!("step-{step:010}")).is_dir(),
        "the notice's checkpoint is kept"
    );
}

/// The elastic tests' job: `job` with a global batch of 2 blocks and
/// `steps` steps, elastic down to one node under `provider`; and the final
/// loss of the same job uninterrupted on local nodes, to compare with.
/// The elastic job's spec (`pace_ms` per block of rows), the uninterrupted
/// run's final loss, and how long it took (real seconds).
fn elastic_job(dir: &Path, steps: u64, pace_ms: u64, provider: Value) -> (Value, f64, f64) {
    let with = |mut s: Value| {
        s["workload"]["global_batch"] = json!(32);
        s["workload"]["steps"] = json!(steps);
        s["workload"]["pace_ms"] = json!(pace_ms);
        s
    };
    let (out, clean) = run_job(
        dir,
        &with(job(dir, "ck-clean", json!({"kind": "local"}))),
        "clean",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let mut spec = with(job(dir, "ck", provider));
    spec["resources"]["min_nodes"] = json!(1);
    (
        spec,
        clean["summary"]["final_loss"].as_f64().unwrap(),
        clean["duration_s"].as_f64().unwrap(),
    )
}

/// How many workers attempt `n` started (survivors kept are not).
fn started_in(run_dir: &Path, n: u64) -> usize {
    events_named(run_dir, "worker_started")
        .iter()
        .filter(|e| e["attempt"] == n)
        .count()
}

/// Spot-only sim provider whose zone holds 2 nodes, then 1 from hour 1
/// for `hours` hours; replacements waited for 0.3 s.
fn halved_for_hours(dir: &Path, hours: u64) -> Value {
    let a = trace(
        dir,
        "a.json",
        json!([{"at_s": 0, "capacity": 2}, {"at_s": 3600, "capacity": 1}, {"at_s": (1 + hours) * 3600, "capacity": 2}]),
    );
    let mut provider = sim(
        "spot",
        "same_zone_first",
        json!([{"name": "a", "trace": a}]),
    );
    provider["capacity_wait_s"] = json!(0.3);
    provider
}

/// An elastic run (`resources.min_nodes: 1`): zone a's spot capacity drops
/// from 2 to 1 an hour in and never returns; the node it takes back gets a
/// notice, the group checkpoints at one step, no replacement comes within
/// capacity_wait_s, and the run goes on with the one node it has (world 2
/// -> 1) instead of ending with exit 9. With a global batch the model is
/// the one the two nodes would have trained: the final loss within 1e-4 of
/// the uninterrupted run's.
#[test]
fn an_elastic_run_goes_on_with_the_nodes_it_has() {
    let dir = scratch("zones-elastic");
    let a = trace(
        &dir,
        "a.json",
        json!([{"at_s": 0, "capacity": 2}, {"at_s": 3600, "capacity": 1}]),
    );
    let mut provider = sim(
        "spot",
        "same_zone_first",
        json!([{"name": "a", "trace": a}]),
    );
    provider["capacity_wait_s"] = json!(0.5);
    let (spec, want, _) = elastic_job(&dir, 3000, 1, provider);
    let (out, r) = run_job(&dir, &spec, "shrink", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/shrink");
    let resized = events_named(&run_dir, "world_resized");
    assert_eq!(resized.len(), 1, "{resized:?}");
    assert_eq!(
        (
            resized[0]["world_size"].as_u64(),
            resized[0]["from_world_size"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let handled = events_named(&run_dir, "notice_handled");
    assert_eq!(handled[0]["checkpointed"], true, "{}", handled[0]);
    // The last attempt had one rank: node 0's worker, kept with its state
    // in memory from the notice's step (no new process, no checkpoint read).
    let worlds = attempt_worlds(&r);
    assert_eq!(
        (worlds.as_slice(), r["world_size"].as_u64()),
        ([2, 1].as_slice(), Some(2)),
        "{}",
        r["attempts"]
    );
    assert_eq!(started_in(&run_dir, 1), 0);
    let kept = events_named(&run_dir, "survivors_kept");
    assert_eq!(
        (&kept[0]["ranks"], &kept[0]["from_ranks"]),
        (&json!([0]), &json!([0]))
    );
    let log = std::fs::read_to_string(run_dir.join("attempt-1/rank-0.log")).unwrap();
    let step = handled[0]["stopped_at_step"].as_u64().unwrap();
    assert!(
        log.contains(&format!(
            "rejoined with its state in memory at step {step} (no checkpoint read)"
        )),
        "{log}"
    );
    assert!(!run_dir.join("attempt-1/rank-1.log").exists());
    assert_same_model(&r, want);
}

/// Capacity comes back while the elastic run goes on with one node: the
/// launcher asks for the missing node every simulated quarter hour, it
/// boots while the run goes on, and once it is up the group stops at an
/// agreed step, checkpointed, and attempt 2 runs on both nodes again from
/// that step (no preemption, no restart budget: `max_restarts` is 1, spent
/// by the shrink); the final loss is still the uninterrupted run's.
#[test]
fn an_elastic_run_grows_back_while_it_runs() {
    let dir = scratch("zones-grow");
    let provider = halved_for_hours(&dir, 3);
    let (mut spec, want, _) = elastic_job(&dir, 8000, 1, provider);
    spec["recovery"]["max_restarts"] = json!(1);
    let (out, r) = run_job(&dir, &spec, "grow", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/grow");
    let resized: Vec<(u64, u64)> = events_named(&run_dir, "world_resized")
        .iter()
        .map(|e| {
            (
                e["from_world_size"].as_u64().unwrap(),
                e["world_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(resized, [(2, 1), (1, 2)], "{}", r["attempts"]);
    let growing = events_named(&run_dir, "world_growing");
    assert_eq!(growing.len(), 1, "{growing:?}");
    assert_eq!(
        (growing[0]["attempt"].as_u64(), &growing[0]["nodes"]),
        (Some(1), &json!([1]))
    );
    let attempts = r["attempts"].as_array().unwrap();
    let worlds: Vec<u64> = attempts
        .iter()
        .map(|a| a["world_size"].as_u64().unwrap())
        .collect();
    assert_eq!(worlds, [2, 1, 2]);
    assert_eq!(attempts[1]["outcome"], "resized", "{}", attempts[1]);
    assert_eq!(attempts[1]["failure_kind"], "resize", "{}", attempts[1]);
    // Two restarts: the shrink (a preemption) and the grow (no budget).
    assert_eq!(
        (
            &r["restarts"],
            &r["restarts_by_kind"]["preemption"],
            &r["restarts_by_kind"]["resize"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{}",
        r["restarts_by_kind"]
    );
    // Only the shrink was a preemption.
    assert_eq!(
        r["preemptions"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r["preemptions"]
    );
    let handled = events_named(&run_dir, "notice_handled");
    assert_eq!(handled.len(), 2, "{handled:?}");
    assert_eq!(handled[1]["checkpointed"], true, "{}", handled[1]);
    // Node 0's worker went on through both resizes with its state in
    // memory; only node 1's new worker started, and took the state from it.
    let step = handled[1]["stopped_at_step"].as_u64().unwrap();
    assert_eq!((started_in(&run_dir, 1), started_in(&run_dir, 2)), (0, 1));
    let log =
        |rank| std::fs::read_to_string(run_dir.join(format!("attempt-2/rank-{rank}.log"))).unwrap();
    assert!(
        log(0).contains(&format!("rejoined with its state in memory at step {step}")),
        "{}",
        log(0)
    );
    assert!(
        log(1).contains(&format!("received the state at step {step} from rank 0")),
        "{}",
        log(1)
    );
    assert_same_model(&r, want);
}

/// Survivors keep their state in memory through a resize that numbers
/// them again. Node 0 is alone in zone a, whose spot capacity goes (an
/// hour in) and comes back (two hours later); zone b is full with nodes 1
/// and 2. Node 0 gets the notice, the group checkpoints at one step, no
/// replacement comes, and attempt 1 runs on nodes 1 and 2 as ranks 0 and
/// 1 (were 1 and 2): the same two processes, no checkpoint read. Once
/// node 0 is back the group stops at an agreed step and attempt 2 runs on
/// all three: the survivors are ranks 1 and 2 again, and only node 0's new
/// worker starts, with the state broadcast from rank 1. Every heartbeat
/// of a renumbered survivor counts for its new rank (none is named
/// silent), and the model is the uninterrupted run's.
#[test]
fn survivors_keep_their_state_as_the_world_numbers_them_again() {
    let dir = scratch("zones-renumber");
    let with = |mut s: Value| {
        s["workload"]["global_batch"] = json!(48);
        s["workload"]["pace_ms"] = json!(1);
        s
    };
    let job3 = |ck: &str, provider: Value| {
        let mut s = job(&dir, ck, provider);
        s["resources"]["nodes"] = json!(3);
        s["workload"]["steps"] = json!(6000);
        with(s)
    };
    let (out, clean) = run_job(
        &dir,
        &job3("ck-clean", json!({"kind": "local"})),
        "clean",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let a = trace(
        &dir,
        "a.json",
        json!([{"at_s": 0, "capacity": 1}, {"at_s": 3600, "capacity": 0}, {"at_s": 3 * 3600, "capacity": 1}]),
    );
    let mut provider = sim(
        "spot",
        "same_zone_first",
        json!([{"name": "a", "trace": a}, {"name": "b", "spot_capacity": 2}]),
    );
    provider["capacity_wait_s"] = json!(0.3);
    let mut spec = job3("ck", provider);
    spec["resources"]["min_nodes"] = json!(2);
    let (out, r) = run_job(&dir, &spec, "renumber", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/renumber");
    assert_eq!(attempt_worlds(&r), [3, 2, 3], "{}", r["attempts"]);
    let kept: Vec<(u64, Value, Value, Value)> = events_named(&run_dir, "survivors_kept")
        .iter()
        .map(|e| {
            (
                e["attempt"].as_u64().unwrap(),
                e["ranks"].clone(),
                e["from_ranks"].clone(),
                e["state_from"].clone(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [
            (1, json!([0, 1]), json!([1, 2]), json!(0)),
            (2, json!([1, 2]), json!([0, 1]), json!(1))
        ]
    );
    assert_eq!((started_in(&run_dir, 1), started_in(&run_dir, 2)), (0, 1));
    let fresh = events_named(&run_dir, "worker_started");
    assert_eq!(
        (&fresh[3]["rank"], &fresh[3]["node"]),
        (&json!(0), &json!(0))
    );
    let handled = events_named(&run_dir, "notice_handled");
    let (shrunk, grown) = (
        handled[0]["stopped_at_step"].as_u64().unwrap(),
        handled[1]["stopped_at_step"].as_u64().unwrap(),
    );
    // The survivors' heartbeats in attempt 1 count for their new ranks:
    // the progress log shows nodes 1 and 2 as ranks 0 and 1, stepping on.
    let progress = std::fs::read_to_string(run_dir.join("progress.jsonl")).unwrap();
    let beaten = progress
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|p| p["attempt"] == 1)
        .any(|p| {
            let ranks = p["ranks"].as_array().unwrap();
            ranks.len() == 2
                && ranks.iter().enumerate().all(|(k, x)| {
                    x["rank"] == k as u64
                        && x["node"] == k as u64 + 1
                        && x["step"].as_u64().is_some_and(|s| s > shrunk)
                })
        });
    assert!(beaten, "{progress}");
    // Node 2's worker's own log (attempt 2 links to it), and node 0's new one.
    let survivor = std::fs::read_to_string(run_dir.join("attempt-2/rank-2.log")).unwrap();
    for said in [
        "survivor: rejoining in round 1 as rank 1 of 2 (was 2 of 3)".to_string(),
        format!("rejoined with its state in memory at step {shrunk} (no checkpoint read)"),
        "survivor: rejoining in round 2 as rank 2 of 3 (was 1 of 2)".to_string(),
        format!("rejoined with its state in memory at step {grown} (no checkpoint read)"),
    ] {
        assert!(survivor.contains(&said), "{said}: {survivor}");
    }
    let new = std::fs::read_to_string(run_dir.join("attempt-2/rank-0.log")).unwrap();
    assert!(
        new.contains(&format!("received the state at step {grown} from rank 1")),
        "{new}"
    );
    assert_same_model(&r, clean["summary"]["final_loss"].as_f64().unwrap());
}

/// A Ctrl-C while the launcher waits for spot capacity ends the wait at
/// once (exit 130, the checkpoint kept), not after `capacity_wait_s`.
#[test]
fn ctrl_c_cuts_a_wait_for_capacity_short() {
    let dir = scratch("zones-ctrlc");
    let a = trace(&dir, "a.json", json!([{"at_s": 3600, "capacity": 0}]));
    let mut provider = sim(
        "spot",
        "same_zone_first",
        json!([{"name": "a", "trace": a}]),
    );
    provider["capacity_wait_s"] = json!(600);
    let child = start_run(&dir, &job(&dir, "ck", provider), "cut", &[], &["-q"]);
    let run_dir = dir.join("runs/cut");
    wait_for("the wait for capacity", T, || {
        (!events_named(&run_dir, "waiting_for_capacity").is_empty()).then_some(())
    });
    kill(child.id() as i32, libc::SIGINT);
    // Bounded by T, far below the 600 s the wait would take uncut.
    let out = wait_output(child, T);
    assert_eq!(out.code(), 130, "{}", out.stderr);
    let r = read_report(&run_dir.join("report.json"));
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("interrupted while waiting for a replacement node"),
        "{r}"
    );
}

/// Deadline mode: spot while the slack can absorb another preemption and
/// the move; after a preemption (with a slow, 2 h replacement) it cannot,
/// so the group stops at an agreed step and both nodes move to on-demand,
/// and the run meets its deadline with the uninterrupted run's weights.
#[test]
fn deadline_mode_moves_to_on_demand_when_the_slack_runs_out() {
    let dir = scratch("zones-deadline");
    // About 3.5 h of steps (1500 x 2 ms+, an hour a second).
    let spec = |ck: &str, provider: Value| {
        let mut s = job(&dir, ck, provider);
        s["workload"]["steps"] = json!(1500);
        s["workload"]["pace_ms"] = json!(2);
        s
    };
    let (out, clean) = run_job(
        &dir,
        &spec("ck-clean", json!({"kind": "local"})),
        "clean",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // The work: as long as the uninterrupted run took, an hour a second.
    let work_s = clean["duration_s"].as_f64().unwrap() * 3600.0;
    let mut provider = sim("spot", "same_zone_first", json!([]));
    provider["provisioning_delay_s"] = json!(2.0);
    provider["preemptions"] = json!([{"node": 1, "at_s": 3600}]);
    // A restart costs about 2.3 h (2 h provisioning). Slack at the start
    // 6 h, over twice the 2.5 h allowed for a restart; after the preemption
    // about 3.7 h, under: move, and still 1.4 h to spare.
    provider["deadline"] = json!({"at_s": work_s + 6.0 * 3600.0, "restart_cost_s": 9000});
    let (out, r) = run_job(&dir, &spec("ck", provider), "dl", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/dl");
    let moved = events_named(&run_dir, "nodes_migrating");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["nodes"], json!([0, 1]), "{}", moved[0]);
    assert_eq!(
        replaced(&run_dir),
        vec![
            (1, "zone-a".into(), "spot".into()),
            (0, "zone-a".into(), "on-demand".into()),
            (1, "zone-a".into(), "on-demand".into())
        ]
    );
    let d = &r["cost"]["deadline"];
    assert_eq!(d["met"], true, "{d}");
    assert!(
        d["moved_to_on_demand_at_s"].as_f64().unwrap() > 3600.0,
        "{d}"
    );
    assert!(d["slack_at_move_s"].as_f64().unwrap() < 2.0 * 9000.0, "{d}");
    assert_eq!(
        r["preemptions"].as_array().unwrap().len(),
        2,
        "{}",
        r["preemptions"]
    );
    assert_eq!(
        r["summary"]["weights_sha256"],
        clean["summary"]["weights_sha256"]
    );
}

/// Your own program through an elastic run: a data-parallel `command`
/// (tests/fixtures/elastic_program.py, rank 0 saves the model, every rank
/// commits) shrinks 2 -> 1 when zone a loses a node's capacity and grows
/// back 1 -> 2 when it returns, while it runs. Each attempt is told its
/// world (WORLD_SIZE, RANK) and, resuming, the world that wrote its
/// checkpoint (`ringmaster.world_changed()`); the shrunk world commits
/// checkpoints alone (its manifests say world 1); the final model is the
/// uninterrupted program's, to the bit.
#[test]
fn a_program_of_your_own_shrinks_and_grows_with_its_checkpoints() {
    let dir = scratch("zones-own-elastic");
    let (total, step_s) = (900, 0.01);
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let status = std::process::Command::new("python3")
        .arg(fixture("elastic_program.py"))
        .env("PYTHONPATH", repo().join("python"))
        .env("OUT_DIR", &plain)
        .env("TOTAL", total.to_string())
        .env("STEP_S", "0")
        .status()
        .unwrap();
    assert!(status.success());
    let want = std::fs::read_to_string(plain.join("final.json")).unwrap();
    let provider = halved_for_hours(&dir, 3);
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let ck = dir.join("ck");
    let spec = json!({"name": "own", "resources": {"nodes": 2, "devices_per_node": 1, "min_nodes": 1},
        "workload": {"kind": "command", "argv": ["python3", fixture("elastic_program.py").to_str().unwrap()]},
        "checkpoint": {"dir": ck.to_str().unwrap(), "every_steps": 50, "keep": 2},
        "notices": {"program_signal": "none"},
        "env": {"PYTHONPATH": repo().join("python").to_str().unwrap(), "OUT_DIR": out_dir.to_str().unwrap(),
                "TOTAL": total.to_string(), "STEP_S": step_s.to_string()},
        "recovery": {"heartbeat_interval_s": 0.1, "grace_period_s": 2, "max_restarts": 1},
        "provider": provider});
    let (out, r) = run_job(&dir, &spec, "own", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/own");
    let worlds = attempt_worlds(&r);
    assert_eq!(worlds, [2, 1, 2], "{}", r["attempts"]);
    // What each attempt's programs were told.
    let told = |attempt: u32, rank: u32| -> Value {
        let p = out_dir.join(format!("attempt-{attempt}-rank-{rank}.json"));
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    };
    let handled = events_named(&run_dir, "notice_handled");
    assert_eq!(handled.len(), 2, "{handled:?}");
    let stops: Vec<u64> = handled
        .iter()
        .map(|h| h["stopped_at_step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        told(0, 0),
        json!({"world_size": 2, "rank": 0, "resumed_step": null, "resume_world_size": null, "world_changed": false})
    );
    assert_eq!(
        told(1, 0),
        json!({"world_size": 1, "rank": 0, "resumed_step": stops[0], "resume_world_size": 2, "world_changed": true})
    );
    assert!(!out_dir.join("attempt-1-rank-1.json").exists());
    for rank in 0..2 {
        assert_eq!(
            told(2, rank),
            json!({"world_size": 2, "rank": rank, "resumed_step": stops[1], "resume_world_size": 1, "world_changed": true})
        );
    }
    // The world of one committed its checkpoints alone, the stop to grow's
    // among them.
    let committed: Vec<(u64, u64)> = events_named(&run_dir, "checkpoint_committed")
        .iter()
        .map(|e| (e["attempt"].as_u64().unwrap(), e["step"].as_u64().unwrap()))
        .collect();
    assert!(committed.contains(&(1, stops[1])), "{committed:?}");
    assert!(stops[1] > stops[0], "{stops:?}");
    let final_model = std::fs::read_to_string(out_dir.join("final.json")).unwrap();
    assert_eq!(final_model, want);
}

/// Deadline mode with an elastic run: zone a's spot capacity halves an
/// hour in and never comes back, the run shrinks to the node it has. With
/// time to spare at half speed it stays there, on spot, and meets its
/// deadline without buying on-demand; with a deadline half speed cannot
/// meet, the slack runs out and the group moves to on-demand, both nodes
/// again. Either way the model is the uninterrupted run's.
#[test]
fn deadline_mode_keeps_a_shrunk_run_on_spot_while_it_can_make_it() {
    let dir = scratch("zones-deadline-elastic");
    let a = trace(
        &dir,
        "a.json",
        json!([{"at_s": 0, "capacity": 2}, {"at_s": 3600, "capacity": 1}]),
    );
    let provider = |deadline_s: f64| {
        let mut p = sim(
            "spot",
            "same_zone_first",
            json!([{"name": "a", "trace": a}]),
        );
        p["capacity_wait_s"] = json!(0.3);
        p["deadline"] = json!({"at_s": deadline_s, "restart_cost_s": 1800});
        p
    };
    // A floor of 5 ms per block of rows: one node training both blocks
    // makes half the steps (not less than half: on 2 cores the compute
    // alone would let one rank without a ring run faster than that).
    let (mut spec, want, clean_s) = elastic_job(&dir, 1000, 5, provider(0.0));
    // The work in simulated seconds (an hour a real second).
    let clean = clean_s * 3600.0;
    // Generous: three times the work (at half speed it needs about twice).
    spec["provider"] = provider(3.0 * clean + 4.0 * 3600.0);
    let (out, r) = run_job(&dir, &spec, "easy", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/easy");
    assert!(events_named(&run_dir, "nodes_migrating").is_empty());
    let worlds = attempt_worlds(&r);
    assert_eq!(worlds, [2, 1], "{}", r["attempts"]);
    assert_eq!(r["cost"]["deadline"]["met"], true, "{}", r["cost"]);
    assert!(
        r["cost"]["deadline"]["moved_to_on_demand_at_s"].is_null(),
        "{}",
        r["cost"]
    );
    assert_same_model(&r, want);
    // Tight: little more than the work on both nodes; at half speed the
    // slack runs out, and both nodes move to on-demand.
    spec["provider"] = provider(1.3 * clean + 2.0 * 3600.0);
    spec["checkpoint"]["dir"] = json!(dir.join("ck-tight").to_str().unwrap());
    let (out, r) = run_job(&dir, &spec, "tight", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/tight");
    let moved = events_named(&run_dir, "nodes_migrating");
    assert_eq!(moved.len(), 1, "{moved:?}");
    let worlds = attempt_worlds(&r);
    assert_eq!(worlds.last(), Some(&2), "{}", r["attempts"]);
    assert!(worlds.contains(&1), "{}", r["attempts"]);
    let on_demand = replaced(&run_dir)
        .into_iter()
        .filter(|(_, _, m)| m == "on-demand")
        .count();
    assert_eq!(on_demand, 2, "{}", r["attempts"]);
    assert_same_model(&r, want);
}
