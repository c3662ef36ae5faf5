//! Real runs of the real binaries on loopback: training at every world size
//! 1..8, bit-identical weights across runs, the benchmark workloads, and the
//! `command` workload under the torchrun-compatible env contract.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// Run `spec` in `dir` as run `id`; returns (exit code, report, outcome).
fn run(dir: &Path, spec: &Value, id: &str, extra: &[&str]) -> (i32, Value, Outcome) {
    let (out, report) = run_job(dir, spec, id, &[], extra, T);
    (out.code(), report, out)
}

#[test]
fn train_succeeds_at_every_world_size_1_to_8() {
    let dir = scratch("worlds");
    for (nodes, per) in [
        (1, 1),
        (1, 2),
        (3, 1),
        (2, 2),
        (5, 1),
        (2, 3),
        (7, 1),
        (4, 2),
    ] {
        let id = format!("w{nodes}x{per}");
        let (code, r, out) = run(&dir, &train_job(&id, nodes, per, 40), &id, &["-q"]);
        assert_eq!(code, 0, "{id}: {}\n{}", out.stderr, out.stdout);
        assert_eq!(r["world_size"], nodes * per);
        assert_eq!(
            r["results"].as_object().unwrap().len() as u32,
            nodes * per,
            "{id}: every rank reports"
        );
        let s = &r["summary"];
        assert_eq!(
            s["ranks_agree"], true,
            "{id}: ranks ended with different weights"
        );
        assert!(
            s["final_loss"].as_f64().unwrap() < s["first_loss"].as_f64().unwrap(),
            "{id}: loss did not fall: {s}"
        );
        let a = &r["attempts"][0];
        assert!(a["launch_to_ready_s"].as_f64().is_some(), "{id}: {a}");
        // Every rank ran on its own node's loopback address.
        let started = events_named(&dir.join("runs").join(&id), "worker_started");
        assert_eq!(started.len() as u32, nodes * per);
    }
}

#[test]
fn same_seed_and_world_size_give_bit_identical_weights() {
    let dir = scratch("determinism");
    let spec = train_job("det", 2, 2, 60);
    let (c1, r1, _) = run(&dir, &spec, "a", &["-q"]);
    let (c2, r2, _) = run(&dir, &spec, "b", &["-q"]);
    assert_eq!((c1, c2), (0, 0));
    let h1 = r1["summary"]["weights_sha256"].as_str().unwrap();
    assert_eq!(h1.len(), 64);
    assert_eq!(h1, r2["summary"]["weights_sha256"].as_str().unwrap());
    // And a different seed gives different weights (the hash is not constant).
    let mut other = spec.clone();
    other["workload"]["seed"] = json!(8);
    let (c3, r3, _) = run(&dir, &other, "c", &["-q"]);
    assert_eq!(c3, 0);
    assert_ne!(h1, r3["summary"]["weights_sha256"].as_str().unwrap());
}

/// The shared-memory segments a run's rank logs name (`segment PATH`):
/// those of this run only, so tests running beside it do not count.
fn shm_segments_named(run_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for attempt in std::fs::read_dir(run_dir).unwrap().flatten() {
        let Ok(logs) = std::fs::read_dir(attempt.path()) else {
            continue;
        };
        for log in logs.flatten() {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            for line in text.lines() {
                if let Some(rest) = line.split("; segment ").nth(1) {
                    found.push(rest.split(' ').next().unwrap().into());
                }
            }
        }
    }
    found
}

#[test]
fn ranks_of_a_node_share_memory_and_results_stay_exact() {
    let dir = scratch("shared-memory");
    let mut segments = Vec::new();
    let ar = |shm: bool| {
        json!({"name": "s", "resources": {"nodes": 2, "devices_per_node": 3},
               "collective": {"shared_memory": shm, "shm_chunk_bytes": 65536},
               "workload": {"kind": "allreduce", "min_bytes": 4, "max_bytes": 4194304, "step_factor": 16, "iterations": 2, "warmup": 1, "check": true}})
    };
    for (id, shm) in [("on", true), ("off", false)] {
        let (code, r, out) = run(&dir, &ar(shm), id, &["-q"]);
        assert_eq!(code, 0, "{id}: {}", out.stderr);
        // Every rank checked every size against the exact sum.
        for rank in 0..6 {
            let rows = r["results"][rank.to_string()]["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 6, "{id} rank {rank}");
            for row in rows {
                assert_eq!(row["wrong"], 0, "{id} rank {rank}: {row}");
            }
        }
        let log = std::fs::read_to_string(
            dir.join("runs")
                .join(id)
                .join("attempt-0")
                .join("rank-4.log"),
        )
        .unwrap();
        assert_eq!(
            log.contains(
                "collective: shared memory with the 3 ranks of node 1, a TCP ring across 2 node(s)"
            ),
            shm,
            "{id}: {log}"
        );
        segments.extend(shm_segments_named(&dir.join("runs").join(id)));
    }
    // Training through shared memory: every rank the same weights, the
    // loss as with one TCP ring through every rank (sums added in another
    // order: equal to rounding, not to the bit).
    let mut losses = Vec::new();
    for (id, shm) in [("t-on", true), ("t-off", false)] {
        let mut spec = train_job(id, 2, 2, 30);
        spec["collective"] = json!({"shared_memory": shm});
        let (code, r, out) = run(&dir, &spec, id, &["-q"]);
        assert_eq!(code, 0, "{id}: {}", out.stderr);
        assert_eq!(r["summary"]["ranks_agree"], true, "{id}");
        losses.push(r["summary"]["final_loss"].as_f64().unwrap());
        segments.extend(shm_segments_named(&dir.join("runs").join(id)));
    }
    let rel = (losses[0] - losses[1]).abs() / losses[1].abs();
    assert!(rel < 1e-4, "final loss {losses:?}");
    // Each node's local ranks named their segment (2 nodes x 3 ranks, then
    // 2 x 2); none outlives its run.
    assert_eq!(segments.len(), 6 + 4, "{segments:?}");
    let left: Vec<_> = segments.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "segments left behind: {left:?}");
}

/// `workload.global_batch` keeps a step's data whatever the world size:
/// the same job on 4, 3, 2 and 1 rank(s) ends at the same loss (sums in
/// another order: within 1e-4 relative), on 4 ranks bit for bit the loss
/// without it (one block a rank is the plain recipe); a run of 4 ranks
/// resumed (`run --resume --nnodes 1`) on 2 ends where 4 ranks all the way
/// do.
#[test]
fn a_global_batch_trains_the_same_model_on_any_world_size() {
    let dir = scratch("global-batch");
    let job = |id: &str, nodes: u32, per_node: u32, steps: u64, global: Option<u64>| {
        let mut s = train_job(id, nodes, per_node, steps);
        if let Some(g) = global {
            // 64 rows: 4 blocks of batch_per_rank 16.
            s["workload"]["global_batch"] = json!(g);
        }
        s
    };
    let train = |spec: &Value, id: &str| -> (f64, String) {
        let (code, r, out) = run(&dir, spec, id, &["-q"]);
        assert_eq!(code, 0, "{id}: {}", out.stderr);
        assert_eq!(r["summary"]["ranks_agree"], true, "{id}");
        let log = std::fs::read_to_string(dir.join(format!("runs/{id}/attempt-0/rank-0.log")))
            .unwrap_or_default();
        (r["summary"]["final_loss"].as_f64().unwrap(), log)
    };
    let (plain, _) = train(&job("plain", 2, 2, 30, None), "plain");
    let (four, _) = train(&job("g4", 2, 2, 30, Some(64)), "g4");
    assert_eq!(plain.to_bits(), four.to_bits(), "{plain} vs {four}");
    for (id, nodes, per_node) in [("g3", 1, 3), ("g2", 1, 2), ("g1", 1, 1)] {
        let (l, _) = train(&job(id, nodes, per_node, 30, Some(64)), id);
        let rel = (l - four).abs() / four.abs();
        assert!(rel < 1e-4, "{id}: {l} vs {four}");
    }
    // Without it, 2 ranks train on half the data: another model.
    let (half, _) = train(&job("p2", 1, 2, 30, None), "p2");
    assert!((half - four).abs() / four.abs() > 1e-4, "{half} vs {four}");

    // Capacity gone: `run --resume` of the 4-rank run on one node of 2.
    let mut first = job("first", 2, 2, 20, Some(64));
    first["checkpoint"] = json!({"dir": dir.join("ck").to_str().unwrap(), "every_steps": 10});
    train(&first, "first");
    let out = ringmaster(
        &dir,
        &[
            "run",
            "--resume",
            "runs/first",
            "--run-id",
            "then",
            "--nnodes",
            "1",
            "--set",
            "workload.steps=30",
            "-q",
            "--json",
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["world_size"], 2, "{r}");
    let log = std::fs::read_to_string(dir.join("runs/then/attempt-0/rank-0.log")).unwrap();
    assert!(log.contains("resumed from checkpoint at step 20"), "{log}");
    let resumed = r["summary"]["final_loss"].as_f64().unwrap();
    let rel = (resumed - four).abs() / four.abs();
    assert!(rel < 1e-4, "resumed on 2 ranks: {resumed} vs {four}");
}

#[test]
fn gemm_and_allreduce_workloads_report_checked_figures() {
    let dir = scratch("bench-workloads");
    let gemm = json!({"name": "g", "resources": {"nodes": 1, "devices_per_node": 2},
                      "workload": {"kind": "gemm", "m": 200, "n": 150, "k": 301, "iterations": 3, "dtype": "f64"}});
    let (code, r, out) = run(&dir, &gemm, "g", &["-q"]);
    assert_eq!(code, 0, "{}", out.stderr);
    for rank in ["0", "1"] {
        let g = &r["results"][rank];
        assert!(g["gflops_best"].as_f64().unwrap() > 0.0, "{g}");
        assert!(g["max_rel_error"].as_f64().unwrap() < 1e-10, "{g}");
    }
    let ar = json!({"name": "a", "resources": {"nodes": 3, "devices_per_node": 1},
                    "workload": {"kind": "allreduce", "min_bytes": 4, "max_bytes": 1048576, "step_factor": 8, "iterations": 2, "warmup": 1}});
    let (code, r, out) = run(&dir, &ar, "a", &["--tee"]);
    assert_eq!(code, 0, "{}", out.stderr);
    let rows = r["summary"]["rows"].as_array().unwrap();
    let sizes: Vec<u64> = rows
        .iter()
        .map(|x| x["size_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![4, 32, 256, 2048, 16384, 131072, 1048576]);
    for row in rows {
        assert_eq!(row["wrong"], 0);
        let (alg, bus) = (
            row["oop_algbw_gbps"].as_f64().unwrap(),
            row["oop_busbw_gbps"].as_f64().unwrap(),
        );
        assert!(
            (bus / alg - 2.0 * 2.0 / 3.0).abs() < 1e-9,
            "busbw = algbw x 2(n-1)/n: {row}"
        );
    }
    // --tee mirrors rank-prefixed output on stdout.
    assert!(out.stdout.contains("[rank 0]"), "{}", out.stdout);
}

#[test]
fn command_workload_runs_a_torchrun_style_program() {
    let dir = scratch("command");
    let outd = dir.join("out");
    std::fs::create_dir_all(&outd).unwrap();
    let spec = json!({"name": "cmd", "resources": {"nodes": 2, "devices_per_node": 2},
                      "workload": {"kind": "command", "argv": ["python3", fixture("peers.py").to_str().unwrap()]},
                      "env": {"OUT_DIR": outd.to_str().unwrap()}});
    let (code, r, out) = run(&dir, &spec, "cmd", &["-q"]);
    assert_eq!(code, 0, "{}\n{}", out.stderr, out.stdout);
    assert_eq!(r["status"], "succeeded");
    let mut ports = std::collections::BTreeSet::new();
    for rank in 0..4 {
        let seen = read_json(&outd.join(format!("rank-{rank}.json")));
        let env = &seen["env"];
        assert_eq!(env["RANK"], rank.to_string());
        assert_eq!(env["WORLD_SIZE"], "4");
        assert_eq!(env["LOCAL_RANK"], (rank % 2).to_string());
        assert_eq!(env["GROUP_RANK"], (rank / 2).to_string());
        assert_eq!(env["LOCAL_WORLD_SIZE"], "2");
        assert_eq!(env["MASTER_ADDR"], "127.0.0.2");
        assert_eq!(env["RINGMASTER_RESTART_COUNT"], "0");
        assert_eq!(env["RINGMASTER_RUN_ID"], "cmd");
        ports.insert(env["MASTER_PORT"].as_str().unwrap().to_string());
        if rank == 0 {
            assert_eq!(seen["seen"], json!([1, 2, 3]));
        }
    }
    assert_eq!(ports.len(), 1, "every rank must get the same MASTER_PORT");

    // The `--` form with no job file, and the program's exit code reported.
    let out = ringmaster(
        &dir,
        &[
            "run",
            "--log-dir",
            "runs",
            "--run-id",
            "exit9",
            "--nproc-per-node",
            "2",
            "--",
            "python3",
            "-c",
            "import sys,os; sys.exit(9 if os.environ['RANK']=='1' else 0)",
        ],
        T,
    );
    assert_eq!(out.code(), 4, "{}", out.stderr);
    let r = read_report(&dir.join("runs/exit9/report.json"));
    let f = &r["attempts"][0]["failure"];
    assert_eq!(f["rank"], 1);
    assert_eq!(f["exit_code"], 9);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("rank 1 (node-0/local-1) failed: exit code 9"),
        "{r}"
    );
}
