//! The `ssh` provider against a real sshd on 127.0.0.1:2222
//! (scripts/ssh/up.sh, started by scripts/test.sh; hosts node1..node4 all
//! reach it through its own ssh_config): a 2 x 2 training job over ssh ends
//! with the local run's weights, its workers started by one agent session
//! per host; a dropped session is a lost host (its agent stops the host's
//! workers, a new session comes, the group restarts from its checkpoint,
//! and no worker is left behind); hostfile problems name the field.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);
const SSH_DIR: &str = "/tmp/ringmaster-ssh";

fn sshd_up() {
    let cfg = Path::new(SSH_DIR).join("ssh_config");
    let ok = cfg.is_file()
        && std::process::Command::new("ssh")
            .args(["-F", cfg.to_str().unwrap(), "node1", "true"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no test sshd: start it with scripts/ssh/up.sh (scripts/test.sh does)"
    );
}

fn job(dir: &Path, ck: &str, steps: u64, hosts: &str) -> Value {
    std::fs::write(dir.join("hostfile"), hosts).unwrap();
    let mut s = train_job("ssh", 2, 2, steps);
    s["workload"]["pace_ms"] = json!(1);
    s["workload"]["log_every"] = json!(100);
    s["checkpoint"] = json!({"dir": dir.join(ck).to_str().unwrap(), "every_steps": 100, "keep": 2});
    s["recovery"] =
        json!({"heartbeat_interval_s": 0.1, "max_infra_restarts": 1, "grace_period_s": 2});
    s["provider"] = json!({"kind": "ssh", "hostfile": dir.join("hostfile").to_str().unwrap(),
                           "ssh_args": ["-F", format!("{SSH_DIR}/ssh_config")]});
    s
}

fn clean(dir: &Path, steps: u64) -> Value {
    let mut s = job(dir, "ck-clean", steps, "node1 slots=2\nnode2 slots=2\n");
    s["provider"] = json!({"kind": "local"});
    let (out, r) = run_job(dir, &s, "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    r["summary"]["weights_sha256"].clone()
}

fn accepted() -> usize {
    std::fs::read_to_string(Path::new(SSH_DIR).join("sshd.log"))
        .unwrap_or_default()
        .matches("Accepted publickey")
        .count()
}

#[test]
fn a_2x2_job_over_ssh_ends_with_the_local_runs_weights() {
    sshd_up();
    let dir = scratch("ssh-run");
    let want = clean(&dir, 800);
    let before = accepted();
    let spec = job(
        &dir,
        "ck",
        800,
        "# lab\nnode1 slots=2\nnode3 slots=4\nnode2 slots=2\n",
    );
    let mut spec = spec;
    spec["provider"]["exclude"] = json!("node3");
    // The hosts' copies of the workers' logs (the sshd's sessions have no
    // TMPDIR): there while the run goes, removed when it ends.
    let host_logs: Vec<_> = (0..2)
        .map(|k| std::path::PathBuf::from(format!("/tmp/ringmaster-s-node-{k}")))
        .collect();
    for d in &host_logs {
        let _ = std::fs::remove_dir_all(d);
    }
    let (out, r) = run_job(&dir, &spec, "s", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(r["provider"], "ssh");
    assert_eq!(r["summary"]["weights_sha256"], want);
    // One session per host (at least two more came in: other tests use
    // the sshd too), its agent starting both of its workers.
    assert!(accepted() >= before + 2, "{} -> {}", before, accepted());
    let run_dir = dir.join("runs/s");
    assert_agents_started_every_worker(&run_dir, 2, 4);
    for d in &host_logs {
        assert!(!d.exists(), "{} left on the host", d.display());
    }
    let shipped = std::fs::read_to_string(run_dir.join("attempt-0/rank-3.log")).unwrap();
    assert!(shipped.contains("trained to step 800 of 800"), "{shipped}");
}

/// The launcher's ssh session to `node`'s host: its child whose command
/// line runs that node's agent.
fn session_of(launcher: u32, node: u32) -> Option<i32> {
    let want = format!("--node {node} ");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if ppid == Some(launcher) && cmd.starts_with("ssh ") && cmd.contains(&want) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_dropped_session_is_a_lost_host_and_nothing_is_left_behind() {
    sshd_up();
    let dir = scratch("ssh-drop");
    let want = clean(&dir, 3000);
    let spec = job(&dir, "ck", 3000, "node1 slots=2\nnode2 slots=2\n");
    let child = start_run(&dir, &spec, "d", &[], &["-q"]);
    let run_dir = dir.join("runs/d");
    wait_for("step 500", T, || {
        std::fs::read_to_string(run_dir.join("attempt-0/rank-0.log"))
            .ok()
            .filter(|l| l.contains("step 500/"))
    });
    // The local end of node 1's session (host node2) and a worker its
    // agent runs.
    let session = session_of(child.id(), 1).expect("node 1's ssh session");
    let remote = events_named(&run_dir, "worker_joined")
        .into_iter()
        .find(|e| e["rank"] == 3 && e["attempt"] == 0)
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    assert!(alive(remote));
    kill(session, libc::SIGKILL);
    wait_for(
        "the remote worker to be stopped",
        Duration::from_secs(20),
        || (!alive(remote)).then_some(()),
    );
    let out = wait_output(child, T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = read_report(&run_dir.join("report.json"));
    assert_eq!(r["restarts_by_kind"]["infrastructure"], 1, "{r}");
    let failed = r["attempts"][0]["failure"]["rank"].as_u64();
    assert!(matches!(failed, Some(2 | 3)), "a rank of node 1: {r}");
    assert_eq!(r["summary"]["weights_sha256"], want);
    // Node 1's agent went and a new session's came.
    assert_eq!(events_named(&run_dir, "agent_lost").len(), 1);
    let joined: Vec<u64> = events_named(&run_dir, "agent_joined")
        .iter()
        .map(|e| e["node"].as_u64().unwrap())
        .collect();
    assert_eq!(joined.iter().filter(|n| **n == 1).count(), 2, "{joined:?}");
    // No worker of the run is left on any host.
    for e in events_named(&run_dir, "worker_joined") {
        let pid = e["pid"].as_i64().unwrap() as i32;
        wait_for("every worker gone", Duration::from_secs(20), || {
            (!alive(pid)).then_some(())
        });
    }
}

#[test]
fn hostfile_problems_name_the_field() {
    let dir = scratch("ssh-spec");
    for (hosts, extra, want) in [
        ("node1 slots=2\n", json!({}), "resources.nodes: "),
        (
            "node1 slots=2\nnode2 slots=1\n",
            json!({}),
            "resources.devices_per_node: node2 has slots=1",
        ),
        (
            "node1 slots=2\nnode2 cores=2\n",
            json!({}),
            "provider.hostfile: ",
        ),
        (
            "node1 slots=2\nnode2 slots=2\n",
            json!({"include": "node7"}),
            "provider.include: node7 is not in the hostfile",
        ),
    ] {
        let mut spec = job(&dir, "ck", 10, hosts);
        for (k, v) in extra.as_object().unwrap() {
            spec["provider"][k] = v.clone();
        }
        let j = write_job(&dir, &spec);
        let out = ringmaster(
            &dir,
            &["run", j.to_str().unwrap(), "-q", "--log-dir", "runs"],
            T,
        );
        assert_eq!(out.code(), 3, "{hosts}: {}", out.stderr);
        assert!(
            out.stderr.contains(want),
            "{hosts}: {want:?} in {}",
            out.stderr
        );
        assert!(!dir.join("runs").exists(), "nothing started");
    }
    let mut spec = job(&dir, "ck", 10, "x");
    spec["provider"]["hostfile"] = json!(dir.join("missing").to_str().unwrap());
    let j = write_job(&dir, &spec);
    let out = ringmaster(&dir, &["run", j.to_str().unwrap(), "-q"], T);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("provider.hostfile: cannot read"),
        "{}",
        out.stderr
    );
}

/// The preflight check finds node 1's host (node2) slow: with `on_slow:
/// "replace"` the hostfile's spare (node3) takes its place before the first
/// step, is checked in turn, and the run ends with the local run's weights.
#[test]
fn a_slow_host_gives_its_place_to_a_spare_from_the_hostfile() {
    sshd_up();
    let dir = scratch("ssh-spare");
    let want = clean(&dir, 200);
    let mut spec = job(
        &dir,
        "ck",
        200,
        "node1 slots=2\nnode2 slots=2\nnode3 slots=2\n",
    );
    // Node 1's hook: ten times slower. Four workers measure at once on this
    // 2-core machine (healthy ones seen at 0.39 of the median), so the bar
    // is 0.25.
    spec["preflight"] = json!({"enabled": true, "min_ratio": 0.25, "on_slow": "replace"});
    spec["env"] = json!({"RINGMASTER_FAULT_PREFLIGHT_SLOW_NODE": "1"});
    let (out, r) = run_job(&dir, &spec, "spare", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/spare");
    let checks = events_named(&run_dir, "preflight");
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert_eq!(checks[0]["slow"][0]["node"], 1, "{checks:?}");
    assert_eq!(checks[1]["slow"], json!([]), "{checks:?}");
    let replaced = events_named(&run_dir, "node_replaced");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_eq!(replaced[0]["node"], 1);
    assert_eq!(replaced[0]["vm"], "node3 (was node2)");
    assert_eq!(r["restarts_by_kind"]["preflight"], 1, "{r}");
    assert_eq!(r["summary"]["weights_sha256"], want);
    // Without a spare left, the same job stops before the first step.
    std::fs::write(dir.join("hostfile"), "node1 slots=2\nnode2 slots=2\n").unwrap();
    spec["checkpoint"]["dir"] = json!(dir.join("ck2").to_str().unwrap());
    let (out, _) = run_job(&dir, &spec, "nospare", &[], &["-q"], T);
    assert_eq!(out.code(), 10, "{}", out.stderr);
}
