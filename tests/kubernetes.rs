//! Kubernetes without a cluster (none is reachable here): the manifests
//! `submit --scheduler kubernetes` writes, `--apply` without kubectl, and
//! the pods' side for real, as processes on this machine with the
//! environment the manifests give them: the job file from the ConfigMap run
//! as the container runs it, the kubelet's SIGTERM taken as a notice
//! (checkpoint, exit 8, which the pod failure policy does not count), the
//! next pods resuming to the uninterrupted run's weights; for a two-pod job
//! pod 1 is a node agent that starts its workers for pod 0's launcher.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn manifests(dir: &std::path::Path, spec: &Value, extra: &[&str]) -> Outcome {
    let j = write_job(dir, spec);
    let out = dir.join("k8s");
    let mut args = vec![
        "submit",
        "--scheduler",
        "kubernetes",
        j.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ringmaster(dir, &args, T)
}

/// A pod: `ringmaster run` on the job file as the container command runs
/// it, with POD_NAME and `env` as the manifests set them.
fn pod(
    dir: &std::path::Path,
    job: &std::path::Path,
    id: &str,
    env: &[(&str, &str)],
) -> std::process::Child {
    std::process::Command::new(ringmaster_bin())
        .args([
            "run",
            job.to_str().unwrap(),
            "--log-dir",
            "runs",
            "--run-id",
            id,
            "-q",
        ])
        .current_dir(dir)
        .env("POD_NAME", id)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn manifests_carry_the_job_and_a_pod_resumes_after_sigterm() {
    let dir = scratch("kube");
    let mut spec = train_job("kjob", 1, 2, 3000);
    spec["workload"]["pace_ms"] = json!(1);
    spec["checkpoint"] =
        json!({"dir": dir.join("ck").to_str().unwrap(), "every_steps": 100, "keep": 2});
    spec["recovery"] = json!({"heartbeat_interval_s": 0.1});
    let out = manifests(&dir, &spec, &["--image", "ghcr.io/example/ringmaster:test"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let read = |f: &str| read_json(&dir.join("k8s").join(f));
    let (cm, svc, job) = (
        read("00-configmap.json"),
        read("02-service.json"),
        read("03-job.json"),
    );
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/example/ringmaster:test");
    assert_eq!(c["resources"]["requests"]["cpu"], "2");

    // The pod: the ConfigMap's job file, run as the container command runs it.
    let pod_job = dir.join("pod-job.json");
    std::fs::write(&pod_job, cm["data"]["job.json"].as_str().unwrap()).unwrap();
    let run = |id: &str| pod(&dir, &pod_job, id, &[]);
    let child = run("kjob-0-a");
    wait_for("steps in the pod", T, || {
        std::fs::read_to_string(dir.join("runs/kjob-0-a/attempt-0/rank-0.log"))
            .ok()
            .filter(|l| l.contains("step 500/"))
    });
    kill(child.id() as i32, libc::SIGTERM); // the kubelet stopping the pod
    let out = wait_output(child, T);
    assert_eq!(out.code(), 8, "{}", out.stderr);
    let r = read_report(&dir.join("runs/kjob-0-a/report.json"));
    assert_eq!(r["provider"], "kubernetes");
    assert_eq!(r["results"]["0"]["checkpoint_committed"], true, "{r}");
    // Exit 8 is one the failure policy ignores: the Job makes a new pod.
    let rules = job["spec"]["podFailurePolicy"]["rules"].as_array().unwrap();
    assert!(rules
        .iter()
        .any(|x| x["action"] == "Ignore" && x["onExitCodes"]["values"] == json!([8, 130])));
    let out = wait_output(run("kjob-0-b"), T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let resumed = read_report(&dir.join("runs/kjob-0-b/report.json"));
    assert_eq!(
        resumed["results"]["0"]["resumed_from_step"],
        r["results"]["0"]["preempted_at_step"]
    );
    let mut clean = spec.clone();
    clean["checkpoint"]["dir"] = json!(dir.join("ck-clean").to_str().unwrap());
    let (out, want) = run_job(&dir, &clean, "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        resumed["summary"]["weights_sha256"],
        want["summary"]["weights_sha256"]
    );
}

#[test]
fn kubernetes_errors_name_the_field_or_the_missing_tool() {
    let dir = scratch("kube-spec");
    let spec = train_job("k", 1, 1, 10);
    let out = manifests(&dir, &spec, &[]);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("provider.image: a kubernetes job needs an image"),
        "{}",
        out.stderr
    );
    let mut bad = train_job("k", 2, 1, 10);
    bad["provider"] = json!({"kind": "kubernetes", "image": "img", "namespace": "Bad_NS"});
    let out = manifests(&dir, &bad, &[]);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("provider.namespace: must be a DNS label"),
        "{}",
        out.stderr
    );
    // --apply where kubectl cannot be found: one clear error, exit 6.
    let j = write_job(&dir, &spec);
    let out = std::process::Command::new(ringmaster_bin())
        .args([
            "submit",
            "--scheduler",
            "kubernetes",
            j.to_str().unwrap(),
            "--image",
            "img",
            "--apply",
            "--out",
        ])
        .arg(dir.join("k8s"))
        .env("PATH", "/nonexistent")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--apply: cannot run kubectl"));
}

/// Two pods: pod 0 leads (rendezvous, node 0's workers), pod 1's agent
/// starts node 1's workers on its word. The kubelet's SIGTERM to pod 1
/// becomes a notice: every rank stops at one step with the checkpoint, both
/// pods exit 8; the next two pods resume and end exactly.
#[test]
fn a_two_pod_job_runs_with_a_node_agent_and_resumes_after_sigterm() {
    let dir = scratch("kube-pods");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut spec = train_job("kpods", 2, 2, 3000);
    spec["workload"]["pace_ms"] = json!(1);
    spec["checkpoint"] =
        json!({"dir": dir.join("ck").to_str().unwrap(), "every_steps": 100, "keep": 2});
    spec["recovery"] = json!({"heartbeat_interval_s": 0.1});
    let mut clean = spec.clone();
    clean["checkpoint"]["dir"] = json!(dir.join("ck-clean").to_str().unwrap());
    let (out, want) = run_job(&dir, &clean, "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    spec["provider"] = json!({"kind": "kubernetes", "image": "img"});
    let job = write_job(&dir, &spec);
    // What the manifests give each pod, with pod 0's address as seen here.
    let pod = |k: u32, id: &str| {
        let (k, port) = (k.to_string(), port.to_string());
        let leader = format!("127.0.0.1:{port}");
        let env = [
            ("JOB_COMPLETION_INDEX", k.as_str()),
            ("RINGMASTER_RDZV_TOKEN", "shared-secret"),
            ("RINGMASTER_KUBE_RDZV_PORT", port.as_str()),
            ("RINGMASTER_KUBE_LEADER", leader.as_str()),
        ];
        pod(&dir, &job, id, &env)
    };
    let (p0, p1) = (pod(0, "kpods-0-a"), pod(1, "kpods-1-a"));
    wait_for("steps on node 1", T, || {
        std::fs::read_to_string(dir.join("runs/kpods-0-a/attempt-0/rank-0.log"))
            .ok()
            .filter(|l| l.contains("step 500/"))
    });
    // Node 1's workers run under pod 1's agent, and log there.
    assert!(dir.join("runs/kpods-1-a/rank-2.log").is_file());
    kill(p1.id() as i32, libc::SIGTERM);
    let (o0, o1) = (wait_output(p0, T), wait_output(p1, T));
    assert_eq!(o0.code(), 8, "{}", o0.stderr);
    assert_eq!(
        o1.code(),
        8,
        "pod 1 ends with the run's code: {}",
        o1.stderr
    );
    let r = read_report(&dir.join("runs/kpods-0-a/report.json"));
    assert_eq!(r["results"]["3"]["checkpoint_committed"], true, "{r}");
    // Node 1's workers' output also reached the leader's run folder.
    let remote_log =
        std::fs::read_to_string(dir.join("runs/kpods-0-a/attempt-0/rank-3.log")).unwrap();
    assert!(
        remote_log.contains("[rank 3] stopping at step"),
        "{remote_log}"
    );
    let stop = r["results"]["0"]["preempted_at_step"].clone();
    let (p0, p1) = (pod(0, "kpods-0-b"), pod(1, "kpods-1-b"));
    let (o0, o1) = (wait_output(p0, T), wait_output(p1, T));
    assert_eq!(
        (o0.code(), o1.code()),
        (0, 0),
        "{}\n{}",
        o0.stderr,
        o1.stderr
    );
    let r = read_report(&dir.join("runs/kpods-0-b/report.json"));
    assert_eq!(r["results"]["2"]["resumed_from_step"], stop);
    assert_eq!(
        r["summary"]["weights_sha256"],
        want["summary"]["weights_sha256"]
    );
}

/// `kubernetes-validate --strict` (PyPI: the OpenAPI schemas of current
/// Kubernetes releases, offline) on the manifests' files, against release
/// `version`.
fn validate(version: &str, files: &[std::path::PathBuf]) -> Outcome {
    let pypath = std::env::var("RINGMASTER_TEST_PYTHONPATH").expect(
        "RINGMASTER_TEST_PYTHONPATH is not set: scripts/test.sh installs kubernetes-validate there",
    );
    let child = std::process::Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .args(files)
        .env("PYTHONPATH", pypath)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, T)
}

/// Every manifest `submit --scheduler kubernetes` writes is a valid object
/// of a current Kubernetes release: CPU and GPU jobs, with and without a
/// checkpoint volume, with and without metrics. With metrics, pod 0 is
/// scrapable (a named port on the Service and the container, the
/// prometheus.io annotations) and `--pod-monitor` writes a PodMonitor for
/// it. The validator is shown to fail on a broken object.
#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    let dir = scratch("kube-validate");
    let base = json!({"name": "val", "resources": {"nodes": 2, "devices_per_node": 2},
        "workload": {"kind": "gemm", "n": 64, "iterations": 1},
        "provider": {"kind": "kubernetes", "image": "example/ringmaster:1"}});
    let mut gpu = base.clone();
    gpu["resources"]["accelerator"] = json!("cuda");
    gpu["provider"]["checkpoint_pvc"] = json!("ckpt");
    gpu["provider"]["namespace"] = json!("training");
    let mut metrics = base.clone();
    metrics["observability"] = json!({"metrics_addr": "0.0.0.0:9400"});
    // Everything an operator sets: resources, placement, security, a
    // Kueue queue, RDMA devices, no disruption budget.
    let mut operator = gpu.clone();
    operator["provider"]["queue"] = json!("team-a");
    operator["provider"]["pod"] = json!({
        "cpu": "90", "memory": "900Gi", "shm_size": "64Gi",
        "node_selector": {"node.kubernetes.io/instance-type": "p5.48xlarge"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]}]}]}}},
        "extra_resources": {"vpc.amazonaws.com/efa": 32},
        "priority_class": "training-high", "service_account": "trainer",
        "image_pull_secrets": ["regcred"], "ttl_seconds_after_finished": 3600,
        "disruption_budget": false
    });
    for (name, spec, extra, objects) in [
        ("cpu", &base, &[][..], 5),
        ("gpu", &gpu, &[][..], 5),
        ("metrics", &metrics, &["--pod-monitor"][..], 5),
        ("operator", &operator, &[][..], 4),
    ] {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let out = manifests(&d, spec, extra);
        assert_eq!(out.code(), 0, "{name}: {}", out.stderr);
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(d.join("k8s"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        // The PodMonitor is a CRD's object: not in Kubernetes' own schemas.
        let core: Vec<_> = files
            .iter()
            .filter(|f| !f.ends_with("05-podmonitor.json"))
            .cloned()
            .collect();
        assert_eq!(core.len(), objects, "{name}: {files:?}");
        // A release two years old and the newest the validator knows.
        for version in ["1.33.0", "1.37.0"] {
            let v = validate(version, &core);
            assert_eq!(v.code(), 0, "{name} on {version}: {}{}", v.stdout, v.stderr);
            assert_eq!(
                v.stdout.matches(" passed for resource ").count(),
                objects,
                "{}",
                v.stdout
            );
        }
    }
    // What the operator's pods carry.
    let job = read_json(&dir.join("operator/k8s/03-job.json"));
    assert_eq!(
        job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
        "team-a"
    );
    assert_eq!(job["spec"]["suspend"], true);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600);
    let ps = &job["spec"]["template"]["spec"];
    assert_eq!(ps["priorityClassName"], "training-high");
    assert_eq!(ps["serviceAccountName"], "trainer");
    assert_eq!(ps["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(ps["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        ps["nodeSelector"]["node.kubernetes.io/instance-type"],
        "p5.48xlarge"
    );
    let c = &ps["containers"][0];
    assert_eq!(c["resources"]["requests"]["cpu"], "90");
    assert_eq!(c["resources"]["limits"]["memory"], "900Gi");
    assert_eq!(c["resources"]["limits"]["vpc.amazonaws.com/efa"], 32);
    assert_eq!(c["securityContext"]["capabilities"]["add"][0], "IPC_LOCK");
    assert!(ps["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "dshm"
            && v["emptyDir"]["medium"] == "Memory"
            && v["emptyDir"]["sizeLimit"] == "64Gi"));
    // The defaults: GPU nodes' taint tolerated, requests and limits, a
    // disruption budget keeping every pod, a grace with room to commit.
    let job = read_json(&dir.join("gpu/k8s/03-job.json"));
    let ps = &job["spec"]["template"]["spec"];
    assert_eq!(ps["tolerations"][0]["key"], "nvidia.com/gpu");
    let c = &ps["containers"][0];
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 2);
    assert!(
        job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            >= 60
    );
    let pdb = read_json(&dir.join("gpu/k8s/04-pdb.json"));
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], base["resources"]["nodes"]);
    let k8s = dir.join("metrics/k8s");
    let service = read_json(&k8s.join("02-service.json"));
    assert!(service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics" && p["port"] == 9400));
    let job = read_json(&k8s.join("03-job.json"));
    let pod = &job["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9400");
    let c = &pod["spec"]["containers"][0];
    let cmd: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        cmd.windows(2)
            .any(|w| w == ["--metrics-addr", "0.0.0.0:9400"]),
        "{cmd:?}"
    );
    let pm = read_json(&k8s.join("05-podmonitor.json"));
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/job-completion-index"],
        "0"
    );
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    // Without metrics no metrics port, and --pod-monitor is refused.
    let plain = read_json(&dir.join("cpu/k8s/02-service.json"));
    assert_eq!(plain["spec"]["ports"].as_array().unwrap().len(), 1);
    let refused = manifests(&dir.join("cpu"), &base, &["--pod-monitor"]);
    assert_eq!(refused.code(), 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("observability.metrics_addr"),
        "{}",
        refused.stderr
    );
    // The validator can fail: a field no Job has.
    let mut broken = job.clone();
    broken["spec"]["completionMod"] = json!("Indexed");
    let b = dir.join("broken.json");
    std::fs::write(&b, broken.to_string()).unwrap();
    let v = validate("1.37.0", &[b]);
    assert_ne!(v.code(), 0, "{}{}", v.stdout, v.stderr);
}
