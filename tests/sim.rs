//! The spot-market simulator (provider `sim`) end to end: nodes with their
//! own metadata services, scheduled preemptions noticed by the workers'
//! watchers, the coordinated checkpoint, the lost node replaced, the run
//! resumed, and the final weights equal to an uninterrupted run's.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

fn job(dir: &std::path::Path, ck: &str, provider: serde_json::Value) -> serde_json::Value {
    let mut s = train_job("spot", 2, 1, 5000);
    // At least 5 s of steps on any machine: both preemptions (1 s and 3 s
    // into the run) land mid-run.
    s["workload"]["pace_ms"] = json!(1);
    s["checkpoint"] = json!({"dir": dir.join(ck).to_str().unwrap(), "every_steps": 100, "keep": 2});
    s["recovery"] = json!({"heartbeat_interval_s": 0.1, "grace_period_s": 2});
    s["provider"] = provider;
    s
}

#[test]
fn preempted_nodes_are_replaced_and_the_run_finishes_exactly() {
    let dir = scratch("sim");
    let (out, clean) = run_job(
        &dir,
        &job(&dir, "ck-clean", json!({"kind": "local"})),
        "clean",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for cloud in ["aws", "gcp", "azure"] {
        let provider = json!({"kind": "sim", "cloud": cloud, "provisioning_delay_s": 0.3, "notice_window_s": 5,
                              "preemptions": [{"node": 1, "at_s": 1.0}, {"node": 0, "at_s": 3.0}]});
        let mut provider = provider;
        if cloud == "aws" {
            // Billed as a g5.2xlarge at its spot price.
            provider["offer"] = json!("g5.2xlarge");
        }
        let id = format!("spot-{cloud}");
        let mut spec = job(&dir, &format!("ck-{cloud}"), provider);
        // GCP's run restarts the whole group at each preemption; the others
        // keep the survivors up.
        let keep = cloud != "gcp";
        spec["recovery"]["keep_survivors"] = json!(keep);
        let (out, r) = run_job(&dir, &spec, &id, &[], &["-q"], T);
        assert_eq!(out.code(), 0, "{cloud}: {}", out.stderr);
        let run_dir = dir.join("runs").join(&id);
        let published = events_named(&run_dir, "node_notice");
        let received = events_named(&run_dir, "notice_received");
        let replaced = events_named(&run_dir, "node_replaced");
        assert_eq!(published.len(), 2, "{cloud}");
        assert!(
            received.len() >= 2,
            "{cloud}: the watchers saw both: {received:?}"
        );
        assert!(received
            .iter()
            .all(|e| e["source"].as_str().unwrap().starts_with(cloud)));
        assert_eq!(
            replaced
                .iter()
                .map(|e| e["node"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![1, 0],
            "{cloud}"
        );
        assert_eq!(
            r["restarts_by_kind"],
            json!({"user": 0, "infrastructure": 0, "preemption": 2, "preflight": 0, "resize": 0}),
            "{cloud}"
        );
        // Kept survivors: only the replaced node's worker starts again, and
        // it gets the state from the survivor, not from the checkpoint.
        let started: Vec<u64> = (0..3)
            .map(|n| {
                events_named(&run_dir, "worker_started")
                    .iter()
                    .filter(|e| e["attempt"] == n)
                    .count() as u64
            })
            .collect();
        let kept: Vec<Value> = events_named(&run_dir, "survivors_kept")
            .iter()
            .map(|e| e["ranks"].clone())
            .collect();
        // Each attempt's first step is a step done after the stop step it
        // resumed from (a survivor's heartbeat before it trained is not).
        for n in 1..3u64 {
            let stop = r["attempts"][n as usize - 1]["reached_step"]
                .as_u64()
                .unwrap();
            let first = events_named(&run_dir, "first_step")
                .into_iter()
                .find(|e| e["attempt"] == n)
                .unwrap();
            assert!(
                first["step"].as_u64().unwrap() > stop,
                "{cloud}: {first} after {stop}"
            );
        }
        if keep {
            assert_eq!(started, vec![2, 1, 1], "{cloud}");
            assert_eq!(kept, vec![json!([0]), json!([1])], "{cloud}");
            for (n, survivor) in [(1, "0"), (2, "1")] {
                let log = std::fs::read_to_string(
                    run_dir.join(format!("attempt-{n}/rank-{survivor}.log")),
                )
                .unwrap();
                assert!(
                    log.contains("rejoined with its state in memory"),
                    "{cloud}: {log}"
                );
            }
            // At the end rank 0 is the replacement's, fed by rank 1.
            assert_eq!(r["results"]["0"]["state_in_memory"], false);
            assert_eq!(r["results"]["0"]["state_from_rank"], 1);
            assert_eq!(r["results"]["1"]["state_in_memory"], true);
        } else {
            assert_eq!(started, vec![2, 2, 2], "{cloud}");
            assert!(kept.is_empty(), "{cloud}: {kept:?}");
        }
        let a = r["attempts"].as_array().unwrap();
        assert_eq!(a[0]["failure_kind"], "preemption");
        assert_eq!(a[1]["failure_kind"], "preemption");
        // Each restart resumed where the previous attempt stopped: nothing
        // was lost at a notice the workers could act on.
        assert_eq!(a[0]["steps_lost"], 0, "{cloud}: {}", a[0]);
        assert_eq!(a[1]["steps_lost"], 0, "{cloud}: {}", a[1]);
        assert_eq!(
            r["summary"]["weights_sha256"], clean["summary"]["weights_sha256"],
            "{cloud}"
        );
        // Each preemption's time, phase by phase, and the goodput: no step
        // was computed twice.
        let p = r["preemptions"].as_array().unwrap();
        assert_eq!(p.len(), 2, "{cloud}: {r}");
        for x in p {
            let (out, repl, first) = (
                x["notice_to_out_s"].as_f64().unwrap(),
                x["out_to_replacement_s"].as_f64().unwrap(),
                x["out_to_first_step_s"].as_f64().unwrap(),
            );
            assert!(repl >= 0.3 && first >= repl, "{cloud}: {x}");
            assert!((x["total_s"].as_f64().unwrap() - (out + first)).abs() < 1e-9);
            assert!(x["source"].as_str().unwrap().starts_with(cloud));
        }
        if cloud == "aws" {
            let c = &r["cost"];
            let (cost, hours, price) = (
                c["cost_usd"].as_f64().unwrap(),
                c["node_hours"].as_f64().unwrap(),
                c["price_per_node_hour"].as_f64().unwrap(),
            );
            assert_eq!(c["market"], "spot");
            assert!((cost - hours * price).abs() < 1e-9, "{c}");
            // Two nodes for about the run's length, less the time between a
            // lost VM's release and its replacement being up.
            let dur = r["duration_s"].as_f64().unwrap() / 3600.0;
            assert!(
                hours > 1.5 * dur && hours <= 2.0 * dur + 1e-6,
                "{c} vs {dur} h"
            );
            let saved = c["savings_percent"].as_f64().unwrap();
            assert!(saved > 0.0 && saved < 100.0, "{c}");
        } else {
            assert!(r["cost"].is_null());
        }
        assert_eq!(
            r["goodput"]["steps_useful"], 5000,
            "{cloud}: {}",
            r["goodput"]
        );
        assert_eq!(
            r["goodput"]["steps_computed"], 5000,
            "{cloud}: {}",
            r["goodput"]
        );
    }
}

#[test]
fn sim_spec_errors_name_the_field() {
    let dir = scratch("sim-spec");
    let j = write_job(
        &dir,
        &job(
            &dir,
            "ck",
            json!({"kind": "sim", "cloud": "aws", "offer": "p9.huge"}),
        ),
    );
    let out = ringmaster(
        &dir,
        &["run", j.to_str().unwrap(), "--log-dir", "runs", "-q"],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("provider.offer: \"p9.huge\" is not in the built-in catalog"),
        "{}",
        out.stderr
    );
    let spec = job(
        &dir,
        "ck",
        json!({"kind": "sim", "cloud": "ibm", "provisioning_delay_s": -1, "market": "reserved", "random_preemptions": {"seed": 1}, "time_scale": 0,
                                      "zones": [{"name": "a"}, {"name": "a"}],
                                      "preemptions": [{"node": 5, "at_s": -2}]}),
    );
    let j = write_job(&dir, &spec);
    let out = ringmaster(
        &dir,
        &["validate", j.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    for want in [
        "provider.cloud: must be aws, gcp or azure, got \"ibm\"",
        "provider.provisioning_delay_s: must be >= 0, got -1",
        "provider.preemptions[0].node: must be < resources.nodes (2), got 5",
        "provider.preemptions[0].at_s: must be >= 0, got -2",
        "provider.market: must be spot, on-demand or spot-then-on-demand, got \"reserved\"",
        "provider.time_scale: must be in [0.001, 10000000], got 0",
        "provider.zones[1].name: must be a non-empty name used once, got \"a\"",
        "provider.random_preemptions.rate_per_month: is needed when provider.offer",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?} in {}",
            out.stderr
        );
    }
}
