//! Provider `aws` end to end against a real EC2 API emulator: moto's
//! server mode (PyPI `moto[server]`, installed by scripts/test.sh; its
//! `moto_server` named by RINGMASTER_TEST_MOTO), behind the suite's small
//! proxy (tests/fixtures/ec2_proxy.py: logs every request, injects EC2's
//! documented errors, answers DescribeCapacityReservations, which moto
//! lacks). moto keeps instance records, not machines: tests/fixtures/
//! ec2_machines.py plays each running instance as a machine on a loopback
//! address, running the instance's own user data with a fake metadata
//! service, and kills it when the emulator says it is terminated.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(240);
const REGION: &str = "us-east-1";

/// moto + the proxy + the machines, in `dir`; stopped when dropped.
struct Lab {
    moto: Child,
    proxy: Child,
    machines: Child,
    moto_url: String,
    proxy_url: String,
    state: PathBuf,
    control: PathBuf,
    rules: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Lab {
    fn start(dir: &Path, first_address: &str) -> Lab {
        let moto_bin = std::env::var("RINGMASTER_TEST_MOTO").unwrap_or_else(|_| {
            panic!("RINGMASTER_TEST_MOTO (moto_server) is not set: run the suite with scripts/test.sh, which installs moto[server]")
        });
        let state = dir.join("lab");
        let control = state.join("control");
        std::fs::create_dir_all(&control).unwrap();
        let port = free_port();
        let moto = Command::new(&moto_bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(state.join("moto.log")).unwrap())
            .stderr(Stdio::from(
                std::fs::File::create(state.join("moto.err")).unwrap(),
            ))
            .spawn()
            .expect("start moto_server");
        let moto_url = format!("http://127.0.0.1:{port}/");
        wait_for("moto_server", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let rules = state.join("rules.json");
        std::fs::write(&rules, "{}").unwrap();
        let port_file = state.join("proxy-port");
        let proxy = Command::new("python3")
            .arg(fixture("ec2_proxy.py"))
            .args(["--upstream", &moto_url])
            .args(["--port-file", port_file.to_str().unwrap()])
            .args(["--state", state.to_str().unwrap()])
            .args(["--rules", rules.to_str().unwrap()])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the proxy");
        let proxy_port = wait_for("the EC2 proxy", Duration::from_secs(20), || {
            std::fs::read_to_string(&port_file).ok()
        });
        let machines = Command::new("python3")
            .arg(fixture("ec2_machines.py"))
            .args(["--endpoint", &moto_url])
            .args(["--state", state.to_str().unwrap()])
            .args(["--control", control.to_str().unwrap()])
            .args(["--bin-dir", bin_dir().to_str().unwrap()])
            .args(["--first-address", first_address])
            .stdin(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(state.join("machines.err")).unwrap(),
            ))
            .spawn()
            .expect("start the machines harness");
        Lab {
            moto,
            proxy,
            machines,
            moto_url,
            proxy_url: format!("http://127.0.0.1:{}/", proxy_port.trim()),
            state,
            control,
            rules,
        }
    }

    /// The launcher's environment: the proxy as EC2's endpoint, fake keys,
    /// no profile files.
    fn env(&self, dir: &Path) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL_EC2".into(), self.proxy_url.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "AKIDRINGMASTERTEST".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing-secret".into()),
            ("AWS_REGION".into(), REGION.into()),
            ("HOME".into(), dir.display().to_string()),
        ]
    }

    fn set_rules(&self, rules: Value) {
        std::fs::write(&self.rules, rules.to_string()).unwrap();
    }

    /// Every request the proxy saw: (action, parameters, how answered).
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The emulator's instances of `run`: (id, state).
    fn instances(&self, run: &str) -> Vec<(String, String)> {
        let body = format!(
            "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3Aringmaster%3Arun&Filter.1.Value.1={run}"
        );
        let mut resp = ureq::post(&self.moto_url)
            .header("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_str())
            .expect("DescribeInstances");
        let xml = resp.body_mut().read_to_string().unwrap();
        let mut out = Vec::new();
        for block in xml.split("<instanceId>").skip(1) {
            let id = block.split("</instanceId>").next().unwrap().to_string();
            let state = block
                .split("<instanceState>")
                .nth(1)
                .and_then(|s| s.split("<name>").nth(1))
                .and_then(|s| s.split("</name>").next())
                .unwrap_or("")
                .to_string();
            out.push((id, state));
        }
        out
    }

    /// A spot notice for `node`'s instance, reclaimed after `window_s`.
    fn preempt(&self, node: u32, window_s: f64) {
        std::fs::write(
            self.control.join(format!("preempt-{node}")),
            window_s.to_string(),
        )
        .unwrap();
    }

    /// The machines the harness played: (event, id, node).
    fn machine_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.join("machines.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The harness kills the machines it plays on SIGTERM.
        kill(self.machines.id() as i32, libc::SIGTERM);
        let _ = wait_bounded(&mut self.machines, Duration::from_secs(10));
        let _ = self.machines.kill();
        let _ = self.machines.wait();
        for c in [&mut self.proxy, &mut self.moto] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn job(dir: &Path, name: &str, provider: Value) -> Value {
    let mut s = train_job(name, 2, 1, 3000);
    s["workload"]["pace_ms"] = json!(2);
    s["checkpoint"] = json!({"dir": dir.join(format!("ck-{name}")).to_str().unwrap(), "every_steps": 200, "keep": 2});
    s["recovery"] = json!({"heartbeat_interval_s": 0.2, "grace_period_s": 3});
    s["provider"] = provider;
    s
}

fn aws(extra: Value) -> Value {
    let mut p = json!({
        "kind": "aws",
        "instance_type": "g5.2xlarge",
        "zones": ["us-east-1a", "us-east-1b"],
        "image_id": "ami-0123456789abcdef0",
        "rendezvous_host": "127.0.0.1",
        "rendezvous_port": 0,
        "boot_timeout_s": 60,
        "capacity_wait_s": 2,
        "tags": {"team": "ml"}
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

fn run_env(lab: &Lab, dir: &Path) -> Vec<(String, String)> {
    lab.env(dir)
}

fn run_with(lab: &Lab, dir: &Path, spec: &Value, id: &str) -> (Outcome, Value) {
    let env = run_env(lab, dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run_job(dir, spec, id, &env, &["-q"], T)
}

/// The parameters of the lab's two RunInstances requests, each checked to
/// target reservation `cr` in its zone.
fn launched_into(lab: &Lab, cr: &str, zone: &str) -> Vec<Value> {
    let runs: Vec<Value> = lab
        .requests()
        .into_iter()
        .filter(|q| q["action"] == "RunInstances")
        .map(|q| q["params"].clone())
        .collect();
    assert_eq!(runs.len(), 2);
    for p in &runs {
        assert_eq!(
            p["CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"],
            cr
        );
        assert_eq!(p["Placement.AvailabilityZone"], zone);
    }
    runs
}

/// A run refused before it starts: exit 3, no instance of it in the lab,
/// the refusal's output.
fn refused(lab: &Lab, dir: &Path, spec: &Value, id: &str) -> Outcome {
    let env = run_env(lab, dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = wait_output(start_run(dir, spec, id, &env, &["-q"]), T);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(lab.instances(id).is_empty(), "nothing was started");
    out
}

fn all_terminated(lab: &Lab, run: &str) -> Vec<(String, String)> {
    // TerminateInstances moves them to shutting-down, then terminated.
    let t0 = Instant::now();
    loop {
        let i = lab.instances(run);
        if i.iter()
            .all(|(_, s)| s == "terminated" || s == "shutting-down")
            || t0.elapsed() > Duration::from_secs(10)
        {
            return i;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn clean_weights(dir: &Path, steps: u64) -> Value {
    let mut spec = job(dir, "clean", json!({"kind": "local"}));
    spec["workload"]["steps"] = json!(steps);
    let (out, clean) = run_job(dir, &spec, "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    clean["summary"]["weights_sha256"].clone()
}

#[test]
fn a_two_node_spot_job_runs_on_instances_and_leaves_none_running() {
    let dir = scratch("aws-run");
    let lab = Lab::start(&dir, "127.0.0.40");
    let weights = clean_weights(&dir, 3000);
    let (out, r) = run_with(&lab, &dir, &job(&dir, "spot", aws(json!({}))), "spot");
    assert_eq!(out.code(), 0, "{}\n{}", out.stderr, out.stdout);
    assert_eq!(r["summary"]["weights_sha256"], weights);
    let run_dir = dir.join("runs/spot");
    // One RunInstances per node, spot, in the first zone, with the run's
    // tags, IMDSv2 required and user data; signed with SigV4.
    let runs: Vec<Value> = lab
        .requests()
        .into_iter()
        .filter(|q| q["action"] == "RunInstances")
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for q in &runs {
        let p = &q["params"];
        assert_eq!(q["signed"], true);
        assert_eq!(p["InstanceType"], "g5.2xlarge");
        assert_eq!(p["InstanceMarketOptions.MarketType"], "spot");
        assert_eq!(p["Placement.AvailabilityZone"], "us-east-1a");
        assert_eq!(p["MetadataOptions.HttpTokens"], "required");
        assert_eq!(p["TagSpecification.1.Tag.1.Key"], "ringmaster:run");
        assert_eq!(p["TagSpecification.1.Tag.1.Value"], "spot");
        assert_eq!(p["TagSpecification.1.Tag.5.Key"], "team");
        assert!(p["UserData"].as_str().is_some());
    }
    // The agents connected from the machines' addresses and ran the
    // workers there.
    let played: Vec<Value> = lab
        .machine_log()
        .into_iter()
        .filter(|e| e["event"] == "played")
        .collect();
    assert_eq!(played.len(), 2, "{played:?}");
    let joined = events_named(&run_dir, "agent_joined");
    assert_eq!(joined.len(), 2, "{joined:?}");
    let requested = events_named(&run_dir, "machine_requested");
    assert_eq!(requested.len(), 2);
    assert!(requested
        .iter()
        .all(|e| e["outcome"] == "ok" && e["market"] == "spot"));
    // Every instance is given back, and the report lists each with its
    // market, zone, start, end and cost (the zone's spot price, from
    // DescribeSpotPriceHistory or the catalog).
    let released = events_named(&run_dir, "machines_released");
    assert_eq!(released.len(), 1, "{released:?}");
    let inst = all_terminated(&lab, "spot");
    assert_eq!(inst.len(), 2, "{inst:?}");
    assert!(
        inst.iter()
            .all(|(_, s)| s == "terminated" || s == "shutting-down"),
        "{inst:?}"
    );
    let m = r["machines"].as_array().unwrap();
    assert_eq!(m.len(), 2, "{r}");
    for x in m {
        assert_eq!(x["market"], "spot");
        assert_eq!(x["zone"], "us-east-1a");
        assert!(x["ended"].is_string(), "{x}");
        assert!(x["cost_usd"].as_f64().unwrap() > 0.0, "{x}");
    }
    assert_eq!(r["cost"]["vms"].as_array().unwrap().len(), 2);
    // Each machine ran its own user data, which started the agent.
    for p in &played {
        let ud = std::fs::read_to_string(
            lab.state
                .join(p["id"].as_str().unwrap())
                .join("user-data.sh"),
        )
        .unwrap();
        assert!(
            ud.contains("\nringmaster agent --leader '127.0.0.1:"),
            "{ud}"
        );
    }
}

#[test]
fn a_spot_notice_replaces_only_that_node_and_the_run_ends_exactly() {
    let dir = scratch("aws-preempt");
    let lab = Lab::start(&dir, "127.0.0.60");
    let weights = clean_weights(&dir, 4000);
    let mut spec = job(&dir, "pre", aws(json!({})));
    spec["workload"]["steps"] = json!(4000);
    let env = run_env(&lab, &dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let child = start_run(&dir, &spec, "pre", &env, &["-q"]);
    let run_dir = dir.join("runs/pre");
    wait_for("the first step", Duration::from_secs(120), || {
        events_named_if_any(&run_dir, "first_step").first().cloned()
    });
    // EC2's two-minute warning, shortened: reclaimed 3 s after the notice.
    lab.preempt(1, 3.0);
    let out = wait_output(child, T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = read_report(&run_dir.join("report.json"));
    assert_eq!(r["summary"]["weights_sha256"], weights);
    let received = events_named(&run_dir, "notice_received");
    assert!(!received.is_empty());
    assert!(
        received[0]["source"].as_str().unwrap().starts_with("aws"),
        "{received:?}"
    );
    // Only node 1 got a new instance; node 0's survivor was kept.
    let replaced: Vec<u64> = events_named(&run_dir, "node_replaced")
        .iter()
        .map(|e| e["node"].as_u64().unwrap())
        .collect();
    assert_eq!(replaced, vec![0, 1, 1], "first both nodes, then node 1");
    assert_eq!(
        events_named(&run_dir, "survivors_kept")
            .iter()
            .map(|e| e["ranks"].clone())
            .collect::<Vec<_>>(),
        vec![json!([0])]
    );
    let a = r["attempts"].as_array().unwrap();
    assert_eq!(a[0]["failure_kind"], "preemption");
    assert_eq!(a[0]["steps_lost"], 0);
    // Three instances in all, every one terminated now.
    let inst = all_terminated(&lab, "pre");
    assert_eq!(inst.len(), 3, "{inst:?}");
    assert!(
        inst.iter()
            .all(|(_, s)| s == "terminated" || s == "shutting-down"),
        "{inst:?}"
    );
    assert_eq!(r["machines"].as_array().unwrap().len(), 3);
    assert_eq!(r["preemptions"].as_array().unwrap().len(), 1, "{r}");
}

fn events_named_if_any(run_dir: &Path, name: &str) -> Vec<Value> {
    if !run_dir.join("events.jsonl").exists() {
        return Vec::new();
    }
    events_named(run_dir, name)
}

#[test]
fn capacity_errors_fail_over_to_another_zone_then_on_demand_or_end_with_exit_9() {
    let dir = scratch("aws-capacity");
    let lab = Lab::start(&dir, "127.0.0.80");
    lab.set_rules(json!({"rules": [
        // Throttled once: retried with backoff, not a failure.
        {"action": "RunInstances", "code": "RequestLimitExceeded", "status": 503, "times": 1},
        {"action": "RunInstances", "when": {"Placement.AvailabilityZone": "us-east-1a", "InstanceMarketOptions.MarketType": "spot"},
         "code": "InsufficientInstanceCapacity", "status": 500,
         "message": "We currently do not have sufficient g5.2xlarge capacity in the Availability Zone you requested (us-east-1a)."},
        {"action": "RunInstances", "when": {"Placement.AvailabilityZone": "us-east-1b", "InstanceMarketOptions.MarketType": "spot"},
         "code": "MaxSpotInstanceCountExceeded", "status": 400}
    ]}));
    let spec = job(&dir, "od", aws(json!({"market": "spot-then-on-demand"})));
    let (out, r) = run_with(&lab, &dir, &spec, "od");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let run_dir = dir.join("runs/od");
    let tried: Vec<(String, String, String)> = events_named(&run_dir, "machine_requested")
        .iter()
        .filter(|e| e["node"] == 0)
        .map(|e| {
            (
                e["zone"].as_str().unwrap().to_string(),
                e["market"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let t = |z: &str, m: &str, o: &str| (z.to_string(), m.to_string(), o.to_string());
    assert_eq!(
        tried,
        vec![
            t("us-east-1a", "spot", "InsufficientInstanceCapacity"),
            t("us-east-1b", "spot", "MaxSpotInstanceCountExceeded"),
            t("us-east-1a", "on-demand", "ok"),
        ]
    );
    let throttled = lab
        .requests()
        .iter()
        .filter(|q| q["answered"] == "RequestLimitExceeded")
        .count();
    assert_eq!(throttled, 1);
    assert!(r["machines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["market"] == "on-demand"));
    assert!(all_terminated(&lab, "od")
        .iter()
        .all(|(_, s)| s == "terminated" || s == "shutting-down"));

    // Spot only: no fallback, so after capacity_wait_s the run ends with
    // exit 9, no instance started.
    let spec = job(&dir, "spot-only", aws(json!({"market": "spot"})));
    let (out, r) = run_with(&lab, &dir, &spec, "spot-only");
    assert_eq!(out.code(), 9, "{}", out.stderr);
    assert_eq!(r["exit_name"], "no-capacity");
    assert!(lab.instances("spot-only").is_empty());

    // A request no zone or market fixes: one line naming the call, the
    // instance type and the zone; exit 11; nothing left running.
    lab.set_rules(json!({"rules": [
        {"action": "RunInstances", "when": {"Placement.AvailabilityZone": "us-east-1a"}, "code": "InvalidAMIID.NotFound", "status": 400,
         "message": "The image id '[ami-0123456789abcdef0]' does not exist"}
    ]}));
    let spec = job(&dir, "bad-ami", aws(json!({})));
    let (out, _) = run_with(&lab, &dir, &spec, "bad-ami");
    assert_eq!(out.code(), 11, "{}", out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains(
            "EC2 RunInstances for g5.2xlarge (spot) in us-east-1a failed: InvalidAMIID.NotFound"
        ),
        "{said}"
    );
    assert!(lab
        .instances("bad-ami")
        .iter()
        .all(|(_, s)| s == "terminated" || s == "shutting-down"));
}

/// An elastic run on EC2 (`resources.min_nodes: 1`): node 1's instance is
/// reclaimed while EC2 has no spot g5.2xlarge in either zone (the proxy
/// answers InsufficientInstanceCapacity), so after `capacity_wait_s` the
/// run goes on with node 0 alone; once EC2 has capacity again, the run
/// asks for node 1 every `capacity_retry_s`, gets an instance, and when its
/// agent connects the group stops at an agreed step and runs on both
/// again, node 0's worker kept all along. The model is the uninterrupted run's (within 1e-4: sums in
/// another order); no instance is left running.
#[test]
fn an_elastic_run_on_ec2_shrinks_and_grows_back() {
    let dir = scratch("aws-elastic");
    let lab = Lab::start(&dir, "127.0.0.90");
    let with = |mut s: Value| {
        s["workload"]["steps"] = json!(4000);
        s["workload"]["global_batch"] = json!(32);
        s
    };
    let (out, clean) = run_job(
        &dir,
        &with(job(&dir, "clean", json!({"kind": "local"}))),
        "clean",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let want = clean["summary"]["final_loss"].as_f64().unwrap();
    let mut spec = with(job(&dir, "el", aws(json!({"capacity_retry_s": 0.5}))));
    spec["resources"]["min_nodes"] = json!(1);
    let env = run_env(&lab, &dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let child = start_run(&dir, &spec, "el", &env, &["-q"]);
    let run_dir = dir.join("runs/el");
    wait_for("the first step", Duration::from_secs(120), || {
        events_named_if_any(&run_dir, "first_step").first().cloned()
    });
    lab.set_rules(json!({"rules": [
        {"action": "RunInstances", "when": {"InstanceMarketOptions.MarketType": "spot"},
         "code": "InsufficientInstanceCapacity", "status": 500, "times": -1}
    ]}));
    lab.preempt(1, 2.0);
    wait_for("the run on one node", Duration::from_secs(120), || {
        events_named_if_any(&run_dir, "world_resized")
            .first()
            .cloned()
    });
    lab.set_rules(json!({"rules": []}));
    let out = wait_output(child, T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = read_report(&run_dir.join("report.json"));
    let worlds = attempt_worlds(&r);
    assert_eq!(worlds, [2, 1, 2], "{}", r["attempts"]);
    assert_eq!(r["attempts"][1]["outcome"], "resized", "{}", r["attempts"]);
    let growing = events_named(&run_dir, "world_growing");
    assert_eq!(growing.len(), 1, "{growing:?}");
    assert_eq!(growing[0]["nodes"], json!([1]));
    // Node 0's worker (its agent's) went on through both resizes with its
    // state in memory; only node 1's new instance started a worker, and
    // the survivor's lines still reach its log.
    let kept: Vec<(Value, Value)> = events_named(&run_dir, "survivors_kept")
        .iter()
        .map(|e| (e["attempt"].clone(), e["ranks"].clone()))
        .collect();
    assert_eq!(kept, [(json!(1), json!([0])), (json!(2), json!([0]))]);
    let started: Vec<Value> = events_named(&run_dir, "worker_started")
        .iter()
        .map(|e| e["attempt"].clone())
        .collect();
    assert_eq!(started, [json!(0), json!(0), json!(2)]);
    let log = std::fs::read_to_string(run_dir.join("attempt-2/rank-0.log")).unwrap();
    assert!(log.contains("survivor: rejoining in round 2"), "{log}");
    let refused = lab
        .requests()
        .iter()
        .filter(|q| q["answered"] == "InsufficientInstanceCapacity")
        .count();
    assert!(refused >= 2, "both zones refused at least once");
    assert_same_model(&r, want);
    assert!(all_terminated(&lab, "el")
        .iter()
        .all(|(_, s)| s == "terminated" || s == "shutting-down"));
}

#[test]
fn ctrl_c_and_a_killed_launcher_leave_no_instance_running() {
    let dir = scratch("aws-down");
    let lab = Lab::start(&dir, "127.0.0.100");
    let env = run_env(&lab, &dir);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let down = |run_dir: &Path| {
        let down = Command::new(ringmaster_bin())
            .args(["down", run_dir.to_str().unwrap()])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            down.status.success(),
            "{}",
            String::from_utf8_lossy(&down.stderr)
        );
        String::from_utf8_lossy(&down.stdout).to_string()
    };
    // Ctrl-C; a killed launcher (its agents lose it and power their
    // machines off: the instances terminate on their own); a killed
    // launcher whose machines cannot power off (a setup line turns it
    // off): `ringmaster down` terminates them.
    for (id, sig, setup) in [
        ("int", libc::SIGINT, vec![]),
        ("crash", libc::SIGKILL, vec![]),
        ("stuck", libc::SIGKILL, vec!["RINGMASTER_POWEROFF=true"]),
    ] {
        let mut spec = job(&dir, id, aws(json!({"setup": setup})));
        spec["workload"]["steps"] = json!(100000);
        let child = start_run(&dir, &spec, id, &envs, &["-q"]);
        let run_dir = dir.join("runs").join(id);
        wait_for("the first step", Duration::from_secs(120), || {
            events_named_if_any(&run_dir, "first_step").first().cloned()
        });
        let running = |lab: &Lab| {
            lab.instances(id)
                .iter()
                .filter(|(_, s)| s == "running")
                .count()
        };
        assert_eq!(running(&lab), 2);
        kill(child.id() as i32, sig);
        let out = wait_output(child, T);
        match id {
            "int" => assert_eq!(out.code(), 130, "{}", out.stderr),
            "crash" => {
                let inst = all_terminated(&lab, id);
                assert!(
                    inst.iter()
                        .all(|(_, s)| s == "terminated" || s == "shutting-down"),
                    "the agents powered their machines off: {inst:?}"
                );
                assert!(down(&run_dir).starts_with("no machine of"));
            }
            _ => {
                // Nothing could give these back: still running, until
                // `down`.
                std::thread::sleep(Duration::from_secs(2));
                assert_eq!(running(&lab), 2);
                assert!(down(&run_dir).starts_with("terminated i-"));
            }
        }
        let inst = all_terminated(&lab, id);
        assert_eq!(inst.len(), 2);
        assert!(
            inst.iter()
                .all(|(_, s)| s == "terminated" || s == "shutting-down"),
            "{id}: {inst:?}"
        );
    }
}

#[test]
fn a_named_capacity_reservation_is_used() {
    let dir = scratch("aws-cr");
    let lab = Lab::start(&dir, "127.0.0.120");
    lab.set_rules(json!({"reservations": [
        {"id": "cr-0123456789abcdef0", "zone": "us-east-1b", "instance_type": "g5.2xlarge", "available": 2}
    ]}));
    let spec = job(
        &dir,
        "cr",
        aws(json!({"market": "on-demand", "capacity_reservation_id": "cr-0123456789abcdef0"})),
    );
    let (out, r) = run_with(&lab, &dir, &spec, "cr");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for p in launched_into(&lab, "cr-0123456789abcdef0", "us-east-1b") {
        assert!(p.get("InstanceMarketOptions.MarketType").is_none());
    }
    for m in r["machines"].as_array().unwrap() {
        assert_eq!(m["reservation"], "cr-0123456789abcdef0");
        assert_eq!(m["market"], "on-demand");
    }
    // A reservation of another instance type is named as the spec's error.
    lab.set_rules(json!({"reservations": [
        {"id": "cr-0123456789abcdef0", "zone": "us-east-1b", "instance_type": "p5.48xlarge", "available": 2}
    ]}));
    let spec = job(
        &dir,
        "cr-wrong",
        aws(json!({"market": "on-demand", "capacity_reservation_id": "cr-0123456789abcdef0"})),
    );
    let out = refused(&lab, &dir, &spec, "cr-wrong");
    assert!(
        out.stderr.contains("provider.capacity_reservation_id"),
        "{}",
        out.stderr
    );
}

/// A reservation that is an EC2 Capacity Block (DescribeCapacityReservations
/// says `reservationType` capacity-block) is launched into with
/// MarketType capacity-block, and the bill says so; a block that has not
/// started yet is refused before anything starts, saying so.
#[test]
fn a_capacity_block_is_launched_into_as_one() {
    let dir = scratch("aws-cb");
    let lab = Lab::start(&dir, "127.0.0.121");
    lab.set_rules(json!({"reservations": [
        {"id": "cr-0b10c0000000000001", "zone": "us-east-1c", "instance_type": "g5.2xlarge",
         "available": 2, "type": "capacity-block"}
    ]}));
    let spec = job(
        &dir,
        "cb",
        aws(json!({"market": "on-demand", "capacity_reservation_id": "cr-0b10c0000000000001"})),
    );
    let (out, r) = run_with(&lab, &dir, &spec, "cb");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for p in launched_into(&lab, "cr-0b10c0000000000001", "us-east-1c") {
        assert_eq!(
            p["InstanceMarketOptions.MarketType"], "capacity-block",
            "{p}"
        );
    }
    for m in r["machines"].as_array().unwrap() {
        assert_eq!(m["market"], "capacity-block", "{m}");
    }

    lab.set_rules(json!({"reservations": [
        {"id": "cr-0b10c0000000000001", "zone": "us-east-1c", "instance_type": "g5.2xlarge",
         "available": 2, "type": "capacity-block", "state": "scheduled"}
    ]}));
    let spec = job(
        &dir,
        "cb-early",
        aws(json!({"market": "on-demand", "capacity_reservation_id": "cr-0b10c0000000000001"})),
    );
    let out = refused(&lab, &dir, &spec, "cb-early");
    assert!(
        out.stderr
            .contains("is a Capacity Block that has not started yet (scheduled)"),
        "{}",
        out.stderr
    );
}

#[test]
fn aws_spec_errors_name_the_field() {
    let dir = scratch("aws-spec");
    for (provider, field) in [
        (
            json!({"kind": "aws", "instance_type": "g5.2xlarge", "rendezvous_host": "10.0.0.5"}),
            "provider.image_id",
        ),
        (
            json!({"kind": "aws", "instance_type": "banana", "image_id": "ami-1", "rendezvous_host": "10.0.0.5"}),
            "provider.instance_type",
        ),
        (
            json!({"kind": "aws", "instance_type": "g5.2xlarge", "image_id": "ami-1", "rendezvous_host": "10.0.0.5", "market": "cheap"}),
            "provider.market",
        ),
        (
            json!({"kind": "aws", "instance_type": "g5.2xlarge", "image_id": "ami-1", "rendezvous_host": "10.0.0.5", "capacity_reservation_id": "cr-1"}),
            "provider.capacity_reservation_id",
        ),
        (
            json!({"kind": "aws", "instance_type": "g5.2xlarge", "image_id": "ami-1", "rendezvous_host": "10.0.0.5", "tags": {"ringmaster:run": "x"}}),
            "provider.tags.ringmaster:run",
        ),
        (
            json!({"kind": "aws", "instance_type": "g5.2xlarge", "image_id": "ami-1"}),
            "provider.rendezvous_host",
        ),
    ] {
        assert_spec_error(&dir, &job(&dir, "bad", provider), field);
    }
}

#[test]
fn plan_shows_the_requests_and_dry_run_asks_ec2_with_its_dryrun_flag() {
    let dir = scratch("aws-dry");
    let lab = Lab::start(&dir, "127.0.0.140");
    let spec = job(&dir, "dry", aws(json!({"market": "spot-then-on-demand"})));
    let path = write_job(&dir, &spec);
    let env = run_env(&lab, &dir);
    let ringmaster_env = |args: &[&str]| {
        Command::new(ringmaster_bin())
            .args(args)
            .current_dir(&dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    };
    // plan: the ladder, node 0's RunInstances parameters and user data,
    // without calling EC2.
    let plan = ringmaster_env(&["plan", path.to_str().unwrap()]);
    assert!(plan.status.success());
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains(
            "us-east-1a spot -> us-east-1b spot -> us-east-1a on-demand -> us-east-1b on-demand"
        ),
        "{text}"
    );
    assert!(
        text.contains("    InstanceMarketOptions.MarketType=spot"),
        "{text}"
    );
    assert!(
        text.contains("| ringmaster agent --leader '127.0.0.1:<port>'"),
        "{text}"
    );
    assert!(lab.requests().is_empty(), "plan calls no API");
    // --dry-run: every rung asked with DryRun; nothing started.
    let out = ringmaster_env(&["run", "--dry-run", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.matches("would succeed (DryRunOperation)").count(),
        4,
        "{text}"
    );
    let asked: Vec<Value> = lab
        .requests()
        .into_iter()
        .filter(|q| q["action"] == "RunInstances")
        .collect();
    assert_eq!(asked.len(), 4);
    assert!(asked.iter().all(|q| q["params"]["DryRun"] == "true"));
    assert!(lab.instances("dry-run").is_empty());
    // A refusal is named, and the exit is 11.
    lab.set_rules(json!({"rules": [{"action": "RunInstances", "when": {"InstanceMarketOptions.MarketType": "spot"},
        "code": "UnauthorizedOperation", "status": 403, "message": "You are not authorized to perform this operation."}]}));
    let out = ringmaster_env(&["run", "--dry-run", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(11));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("RunInstances g5.2xlarge spot in us-east-1a: UnauthorizedOperation"),
        "{text}"
    );
}
