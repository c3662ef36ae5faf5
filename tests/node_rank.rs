//! The torchrun habit: the same `ringmaster run` started on every node
//! with `--nnodes N --node-rank K --rdzv-endpoint HOST:PORT` and a shared
//! token. Node 0 leads; the others join it as node agents. Here the
//! "nodes" are processes on loopback addresses of this machine.

use ringmaster_suite::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const TOKEN: &str = "6f1c0e55d2b94a7c8e3f0a1b2c3d4e5f";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `ringmaster run job.json --node-rank k ...` as node k would start it.
fn node(dir: &std::path::Path, k: u32, port: u16, token_file: &str, extra: &[&str]) -> Child {
    let endpoint = format!("127.0.0.1:{port}");
    let addr = format!("127.0.0.{}", 2 + k);
    let k = k.to_string();
    let mut args = vec![
        "run",
        "job.json",
        "--log-dir",
        "runs",
        "--run-id",
        "nr",
        "--quiet",
        "--nnodes",
        "3",
        "--node-rank",
        &k,
        "--rdzv-endpoint",
        &endpoint,
        "--token-file",
        token_file,
    ];
    if k != "0" {
        args.extend(["--node-addr", &addr]);
    }
    args.extend(extra);
    Command::new(ringmaster_bin())
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Three nodes started alike (the agents before the leader, as a cluster
/// manager may): one run of 6 ranks; every rank told its rank, its node,
/// node 0's address as MASTER_ADDR, and its node's own address; the
/// agents end with the run's code.
#[test]
fn nodes_started_alike_make_one_run() {
    let dir = scratch("node-rank");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let spec = json!({
        "name": "nr", "resources": {"nodes": 3, "devices_per_node": 2},
        "workload": {"kind": "command", "argv": ["sh", "-c",
            "echo who rank=$RANK of=$WORLD_SIZE node=$GROUP_RANK master=$MASTER_ADDR addr=$RINGMASTER_NODE_ADDR"]}
    });
    write_job(&dir, &spec);
    let port = free_port();
    let agents = [
        node(&dir, 2, port, "token", &[]),
        node(&dir, 1, port, "token", &[]),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let leader = node(&dir, 0, port, "token", &[]);
    let out = wait_output(leader, T);
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    for a in agents {
        let o = wait_output(a, T);
        assert_eq!(
            o.code(),
            0,
            "an agent ends with the run's code: {}",
            o.stderr
        );
    }
    let r = read_report(&dir.join("runs/nr/report.json"));
    assert_eq!(r["world_size"], 6, "{r}");
    for rank in 0..6u32 {
        let log = std::fs::read_to_string(dir.join(format!("runs/nr/attempt-0/rank-{rank}.log")))
            .unwrap();
        let node = rank / 2;
        let addr = if node == 0 {
            "127.0.0.1".to_string()
        } else {
            format!("127.0.0.{}", 2 + node)
        };
        let want = format!("who rank={rank} of=6 node={node} master=127.0.0.1 addr={addr}");
        assert!(log.contains(&want), "rank {rank}: {log}");
    }
}

/// An agent with another token is refused (it says so and fails); the
/// leader, missing node 2, gives up after the rendezvous timeout with
/// rendezvous-failed. Flag mistakes are named before anything starts.
#[test]
fn a_wrong_token_is_refused_and_flag_mistakes_are_named() {
    let dir = scratch("node-rank-bad");
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    std::fs::write(dir.join("other"), TOKEN.replace('6', "7")).unwrap();
    std::fs::write(dir.join("short"), "abc").unwrap();
    let spec = json!({
        "name": "nr", "resources": {"nodes": 3, "devices_per_node": 1},
        "workload": {"kind": "command", "argv": ["true"]},
        "recovery": {"rendezvous_timeout_s": 4, "max_restarts": 0}
    });
    write_job(&dir, &spec);
    let port = free_port();
    let leader = node(&dir, 0, port, "token", &[]);
    let good = node(&dir, 1, port, "token", &[]);
    let bad = node(&dir, 2, port, "other", &[]);
    let b = wait_output(bad, T);
    assert_ne!(b.code(), 0);
    assert!(b.stderr.contains("wrong rendezvous token"), "{}", b.stderr);
    let l = wait_output(leader, T);
    assert_eq!(l.code(), 5, "rendezvous-failed: {}\n{}", l.stdout, l.stderr);
    let g = wait_output(good, T);
    assert_eq!(
        g.code(),
        5,
        "the agent ends with the run's code: {}",
        g.stderr
    );
    // Each mistake: exit 3, one line naming the flag.
    for (args, field) in [
        (
            vec!["--node-rank", "1", "--rdzv-endpoint", "127.0.0.1:1"],
            "--token-file",
        ),
        (
            vec![
                "--node-rank",
                "3",
                "--rdzv-endpoint",
                "127.0.0.1:1",
                "--token-file",
                "token",
            ],
            "--node-rank",
        ),
        (
            vec![
                "--node-rank",
                "1",
                "--rdzv-endpoint",
                "127.0.0.1",
                "--token-file",
                "token",
            ],
            "--rdzv-endpoint",
        ),
        (
            vec![
                "--node-rank",
                "1",
                "--rdzv-endpoint",
                "127.0.0.1:1",
                "--token-file",
                "short",
            ],
            "--token-file",
        ),
    ] {
        let mut a = vec!["run", "job.json", "--nnodes", "3"];
        a.extend(args.iter());
        let o = ringmaster(&dir, &a, T);
        assert_eq!(o.code(), 3, "{a:?}: {}", o.stderr);
        assert!(o.stderr.contains(field), "{a:?}: {}", o.stderr);
    }
}
