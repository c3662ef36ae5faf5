//! Prometheus, for real: Debian's prometheus (installed by scripts/test.sh)
//! scrapes a running ringmaster launcher's /metrics (observability
//! .metrics_addr), and the suite asks Prometheus' HTTP API what it stored:
//! the target is up; every rank's step counter rises; a preemption shows
//! in the notice and restart counters, a SIGKILLed worker in the restart
//! counter; a command job's program's steps and the checkpoints it commits
//! show too; and every query of the Grafana dashboard
//! (deploy/grafana/ringmaster.json) returns data.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

struct Prometheus {
    child: Child,
    base: String,
}

impl Prometheus {
    /// Prometheus scraping `target` every second, its data in `dir`.
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ringmaster\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus is not installed: scripts/test.sh installs it (apt-get install prometheus)");
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_for("Prometheus to be ready", T, || {
            ureq::get(format!("{}/-/ready", p.base))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
        });
        p
    }

    /// An instant query's result vector.
    fn query(&self, q: &str) -> Vec<Value> {
        let mut resp = ureq::get(format!("{}/api/v1/query", self.base))
            .query("query", q)
            .call()
            .unwrap_or_else(|e| panic!("query {q}: {e}"));
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Wait until `q` returns at least `n` series whose values pass `ok`.
    fn wait(&self, q: &str, n: usize, ok: impl Fn(f64) -> bool) -> Vec<Value> {
        wait_for(q, T, || {
            let r = self.query(q);
            let good = r
                .iter()
                .filter(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(&ok)
                })
                .count();
            (good >= n).then_some(r)
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the run's endpoint listens (its `metrics_listening` event).
fn metrics_addr(run_dir: &Path) -> String {
    wait_for("the metrics endpoint", T, || {
        events_named(run_dir, "metrics_listening")
            .first()
            .and_then(|e| e["addr"].as_str().map(String::from))
    })
}

/// The newest worker of `rank` (a later attempt's, after a restart).
fn newest_worker(run_dir: &Path, rank: u32) -> i32 {
    events_named(run_dir, "worker_started")
        .iter()
        .rev()
        .find(|e| e["rank"] == rank && e["pid"].is_i64())
        .and_then(|e| e["pid"].as_i64())
        .unwrap() as i32
}

fn dashboard_queries() -> Vec<String> {
    let d = read_json(&repo().join("deploy/grafana/ringmaster.json"));
    let mut q: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    q.extend(
        d["annotations"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["expr"].as_str().unwrap().to_string()),
    );
    // Grafana's variables, as Grafana fills them in.
    q.iter()
        .map(|e| e.replace("$run_id", ".+").replace("$__rate_interval", "5s"))
        .collect()
}

fn stop(child: Child) {
    let pid = child.id() as i32;
    kill(pid, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    kill(pid, libc::SIGINT);
    let _ = wait_output(child, T);
}

#[test]
fn prometheus_scrapes_a_train_run_through_a_preemption_and_a_killed_worker() {
    let dir = scratch("metrics-train");
    let mut spec = train_job("obs", 2, 2, 1_000_000);
    spec["workload"]["pace_ms"] = json!(5);
    spec["checkpoint"] =
        json!({"dir": dir.join("ck").to_str().unwrap(), "every_steps": 100, "keep": 2});
    spec["provider"] = json!({"kind": "sim", "cloud": "aws", "offer": "g5.2xlarge", "provisioning_delay_s": 0.3,
                              "notice_window_s": 5, "preemptions": [{"node": 1, "at_s": 5.0}]});
    spec["recovery"] = json!({"max_restarts": 1, "grace_period_s": 1, "heartbeat_interval_s": 0.2});
    spec["observability"] = json!({"metrics_addr": "127.0.0.1:0"});
    let child = start_run(&dir, &spec, "obs", &[], &["-q"]);
    let run_dir = dir.join("runs/obs");
    let prom = Prometheus::start(&dir, &metrics_addr(&run_dir));
    prom.wait(r#"up{job="ringmaster"}"#, 1, |v| v == 1.0);
    let rising = prom.wait("rate(ringmaster_rank_steps_total[5s]) > 0", 4, |v| v > 0.0);
    let mut ranks: Vec<&str> = rising
        .iter()
        .map(|s| s["metric"]["rank"].as_str().unwrap())
        .collect();
    ranks.sort();
    assert_eq!(ranks, ["0", "1", "2", "3"], "{rising:?}");
    assert_eq!(rising[0]["metric"]["run_id"], "obs");
    assert_eq!(rising[0]["metric"]["job_name"], "obs");
    // The simulator's preemption: a notice, a restart on the preemption
    // budget, the bill.
    let notices = prom.wait("ringmaster_notices_total", 1, |v| v >= 1.0);
    assert!(
        notices[0]["metric"]["source"]
            .as_str()
            .unwrap()
            .contains("aws"),
        "{notices:?}"
    );
    prom.wait(r#"ringmaster_restarts_total{kind="preemption"}"#, 1, |v| {
        v >= 1.0
    });
    prom.wait(r#"ringmaster_cost_dollars{basis="actual"}"#, 1, |v| v > 0.0);
    // Rank 0's commits of the train job's checkpoints.
    prom.wait("ringmaster_checkpoints_total", 1, |v| v >= 1.0);
    prom.wait("ringmaster_checkpoint_last_step", 1, |v| v >= 100.0);
    // A worker SIGKILLed after that: a restart on another budget.
    prom.wait("ringmaster_attempt", 1, |v| v >= 1.0);
    prom.wait("rate(ringmaster_rank_steps_total[3s]) > 0", 4, |v| v > 0.0);
    kill(newest_worker(&run_dir, 2), libc::SIGKILL);
    prom.wait(
        r#"sum(ringmaster_restarts_total{kind!="preemption"})"#,
        1,
        |v| v >= 1.0,
    );
    prom.wait(r#"ringmaster_recovery_seconds_count"#, 1, |v| v >= 1.0);
    // Every dashboard query returns data.
    prom.wait("rate(ringmaster_rank_steps_total[3s]) > 0", 4, |v| v > 0.0);
    for q in dashboard_queries() {
        // (A scrape or two may be needed: bounded.)
        wait_for(
            &format!("the dashboard's query {q} to return series"),
            Duration::from_secs(20),
            || (!prom.query(&q).is_empty()).then_some(()),
        );
    }
    stop(child);
}

#[test]
fn prometheus_sees_a_command_programs_steps_and_checkpoints() {
    let dir = scratch("metrics-command");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let spec = json!({"name": "own", "resources": {"nodes": 2, "devices_per_node": 1},
        "workload": {"kind": "command", "argv": ["python3", fixture("ckpt_program.py").to_str().unwrap()]},
        "checkpoint": {"dir": dir.join("ck").to_str().unwrap(), "every_steps": 20, "keep": 2},
        "notices": {"program_signal": "none"},
        "env": {"PYTHONPATH": repo().join("python").to_str().unwrap(), "OUT_DIR": out.to_str().unwrap(),
                "TOTAL": "100000", "STEP_S": "0.01"},
        "observability": {"metrics_addr": "127.0.0.1:0"}});
    let child = start_run(&dir, &spec, "own", &[], &["-q"]);
    let run_dir: PathBuf = dir.join("runs/own");
    let prom = Prometheus::start(&dir, &metrics_addr(&run_dir));
    prom.wait("rate(ringmaster_rank_steps_total[5s]) > 0", 2, |v| v > 0.0);
    prom.wait("ringmaster_rank_loss", 2, |v| v >= 0.0);
    prom.wait("ringmaster_checkpoints_total", 1, |v| v >= 2.0);
    prom.wait("ringmaster_checkpoint_last_step", 1, |v| v >= 40.0);
    prom.wait("ringmaster_checkpoint_commit_seconds_count", 1, |v| {
        v >= 2.0
    });
    stop(child);
}

/// `ringmaster status RUN_DIR` from another process while the run is alive
/// (its status.json), then the outcome once it ended.
#[test]
fn status_shows_a_live_run_and_then_how_it_ended() {
    let dir = scratch("status");
    let mut spec = train_job("st", 2, 2, 600);
    spec["workload"]["pace_ms"] = json!(5);
    let child = start_run(&dir, &spec, "st", &[], &["-q"]);
    let live = wait_for("a status with steps", T, || {
        let out = ringmaster(&dir, &["status", "runs/st", "--json"], T);
        let s: Value = serde_json::from_str(out.stdout.trim()).ok()?;
        s["ranks"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["step"].as_u64().is_some_and(|x| x > 0)))
            .then_some(s)
    });
    assert_eq!(live["world_size"], 4, "{live}");
    assert_eq!(live["launcher_pid"], child.id(), "{live}");
    assert_eq!(live["total_steps"], 600, "{live}");
    let human = ringmaster(&dir, &["status", "runs/st"], T);
    assert!(
        human.stdout.contains("rank  node      step"),
        "{}",
        human.stdout
    );
    let out = wait_output(child, T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let ended = ringmaster(&dir, &["status", "runs/st"], T);
    assert!(
        ended.stdout.contains("ended: succeeded (exit 0)"),
        "{}",
        ended.stdout
    );
    let bad = ringmaster(&dir, &["status", "nowhere"], T);
    assert_eq!(bad.code(), 7, "{}", bad.stderr);
    assert!(bad.stderr.contains("not a run directory"), "{}", bad.stderr);
}
