//! The launcher at 1,024 ranks: a real `ringmaster run --node-rank 0`
//! (node 0's 8 ranks real workers running a program that reports its
//! steps) and ringmaster-loadgen playing nodes 1..127 over loopback TCP
//! (an agent connection per node, each rank's heartbeat and control
//! connection a stream its agent relays, as the real agent does).
//! Correctness only, no speed (scripts/bench-scale.sh measures): every
//! rank admitted exactly once per round, the silent rank named, the group
//! restarted, the notice's agreed step reaching every rank and every rank
//! stopping there, and the leader holding about a connection per node,
//! not two per rank.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(240);
const NODES: u32 = 128;
const PER_NODE: u32 = 8;

#[test]
fn a_thousand_ranks_join_once_a_silent_one_is_named_and_all_stop_at_the_agreed_step() {
    let ranks = NODES * PER_NODE;
    let dir = scratch("scale-1k");
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(dir.join("token"), "9c2f4e6a8b0d1f3e5a7c9e1b3d5f7a9c").unwrap();
    let spec = json!({
        "name": "scale", "resources": {"nodes": NODES, "devices_per_node": PER_NODE},
        "workload": {"kind": "command", "argv": ["python3", fixture("reporter.py").to_str().unwrap()]},
        "env": {"PYTHONPATH": repo().join("python").to_str().unwrap(), "TOTAL": "1000000",
                "STEP_S": "0.02", "OUT_DIR": dir.join("out").to_str().unwrap()},
        "notices": {"program_signal": "none"},
        "recovery": {"heartbeat_interval_s": 1, "heartbeat_timeout_s": 3, "hang_timeout_s": 600,
                     "rendezvous_timeout_s": 120, "max_restarts": 1, "notice_grace_s": 60}
    });
    write_job(&dir, &spec);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let leader = Command::new(ringmaster_bin())
        .args([
            "run",
            "job.json",
            "--node-rank",
            "0",
            "--rdzv-endpoint",
            &endpoint,
        ])
        .args([
            "--token-file",
            "token",
            "-q",
            "--log-dir",
            "runs",
            "--run-id",
            "scale",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let silent = ranks - 3;
    let loadgen = Command::new(bin_dir().join("ringmaster-loadgen"))
        .args(["--leader", &endpoint, "--token-file", "token"])
        .args(["--last", &(NODES - 1).to_string(), "--step-ms", "20"])
        .args(["--silent-rank", &silent.to_string(), "--silent-at", "100"])
        .args(["--out", "loadgen.json", "--limit-s", "200"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_dir = dir.join("runs/scale");
    // The first attempt ends at the silent rank; once the second has
    // everyone and steps are being reported, the notice.
    wait_for("the second attempt's first step", T, || {
        events_named(&run_dir, "first_step")
            .iter()
            .any(|e| e["attempt"] == 1)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    // Every rank joined and beating: the leader's descriptors are its
    // agents' connections (one a node), node 0's real workers' (two a
    // rank) and a fixed few (logs, listeners, pipes), not two per rank.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", leader.id()))
        .unwrap()
        .count() as u32;
    let most = (NODES - 1) + 2 * PER_NODE + 200;
    eprintln!("the leader holds {fds} descriptors for {ranks} ranks");
    assert!(
        fds <= most,
        "the leader holds {fds} descriptors for {ranks} ranks on {NODES} nodes (at most {most} expected)"
    );
    kill(leader.id() as i32, libc::SIGUSR1);
    let out = wait_output(leader, T);
    let lg = wait_output(loadgen, T);
    assert_eq!(
        out.code(),
        8,
        "stopped at the agreed step: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(lg.code(), 0, "{}", lg.stderr);
    let lg = read_json(&dir.join("loadgen.json"));
    assert_eq!(lg["failures_total"], 0, "{lg}");
    assert_eq!(lg["agent_refusals"], json!([]));
    assert_eq!(
        lg["agents_connected_ms"].as_array().unwrap().len(),
        NODES as usize - 1
    );

    // Every rank joined exactly once in each attempt.
    let joined = events_named(&run_dir, "worker_joined");
    for attempt in 0..2u64 {
        let ranks_in: Vec<u64> = joined
            .iter()
            .filter(|e| e["attempt"] == attempt)
            .map(|e| e["rank"].as_u64().unwrap())
            .collect();
        let distinct: BTreeSet<u64> = ranks_in.iter().copied().collect();
        assert_eq!(ranks_in.len(), ranks as usize, "attempt {attempt}");
        assert_eq!(distinct, (0..ranks as u64).collect(), "attempt {attempt}");
        let welcomed: BTreeSet<u64> = lg["welcomes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w[0] == attempt)
            .map(|w| w[1].as_u64().unwrap())
            .collect();
        assert_eq!(welcomed, (PER_NODE as u64..ranks as u64).collect());
    }

    // The silent rank, and only it, is named; the group restarts.
    let ended = events_named(&run_dir, "attempt_ended");
    assert_eq!(ended[0]["outcome"], "heartbeat-lost", "{:?}", ended[0]);
    let named = format!("rank {silent} sent no heartbeat");
    assert!(
        ended[0]["message"].as_str().unwrap().starts_with(&named),
        "{:?}",
        ended[0]
    );
    assert_eq!(ended[0]["restarting"], true);

    // The notice: one agreed step, known to every rank, and every rank
    // stopped there (the real programs and the played ranks).
    let sent = &events_named(&run_dir, "notice_sent")[0];
    let agreed = sent["stop_step"].as_u64().expect("an agreed stop step");
    let notices: Vec<&Value> = lg["notices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n[0] == 1)
        .collect();
    assert_eq!(notices.len(), (ranks - PER_NODE) as usize);
    assert!(notices.iter().all(|n| n[3] == agreed), "{notices:?}");
    let stops: BTreeSet<u64> = lg["stops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == 1)
        .map(|s| s[2].as_u64().unwrap())
        .collect();
    assert_eq!(stops, BTreeSet::from([agreed]));
    for rank in 0..PER_NODE {
        let s = std::fs::read_to_string(dir.join(format!("out/stopped-{rank}"))).unwrap();
        assert_eq!(s.trim().parse::<u64>().unwrap(), agreed, "real rank {rank}");
    }
    let r = read_report(&run_dir.join("report.json"));
    assert_eq!(r["world_size"], ranks);
}
