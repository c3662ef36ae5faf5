//! Kubernetes manifests for `ringmaster submit --scheduler kubernetes`: an
//! Indexed Job (one pod per node, completion index = node rank) that runs
//! `ringmaster run` on the job file from a ConfigMap, a headless Service
//! for the rendezvous, GPU limits (`nvidia.com/gpu`, the device plugin's
//! resource), a termination grace that covers a checkpoint, the checkpoint
//! volume, and a pod failure policy mapped from the launcher's exit codes
//! (like Kubeflow's ExitCode restart policy): a bad spec or an unsupported
//! request fails the Job at once, a preemption-checkpointed exit or a
//! disruption (eviction, node drain) is retried without counting, other
//! failures count against the backoff limit. Written as JSON, which kubectl
//! takes as it takes YAML.

use proto::exit::LauncherExit;
use proto::spec::{JobSpec, Provider};
use serde_json::{json, Value};

/// Where the pod finds the job file and keeps checkpoints and runs.
pub const JOB_MOUNT: &str = "/etc/ringmaster";
pub const CHECKPOINT_MOUNT: &str = "/checkpoints";
/// The rendezvous port the headless Service names.
pub const RDZV_PORT: u16 = 29400;

/// (file name, manifest) for each object: the ConfigMap with the job, the
/// Secret with the rendezvous token the pods share (`token`), the headless
/// Service, the Indexed Job.
pub fn manifests(spec: &JobSpec, gpus: bool, token: &str) -> Vec<(String, Value)> {
    let Provider::Kubernetes {
        image,
        namespace,
        checkpoint_pvc,
        backoff_limit,
    } = &spec.provider
    else {
        panic!("manifests of a non-kubernetes job");
    };
    let name = spec.name.to_ascii_lowercase().replace(['_', '.'], "-");
    let r = &spec.resources;
    let mut meta = json!({"name": name, "labels": {"app.kubernetes.io/name": "ringmaster", "app.kubernetes.io/instance": name}});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    let with_name = |suffix: &str| {
        let mut m = meta.clone();
        m["name"] = json!(format!("{name}{suffix}"));
        m
    };
    let configmap = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": with_name("-job"),
        "data": {"job.json": serde_json::to_string_pretty(spec).expect("spec serialises")}
    });
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": with_name("-token"),
        "type": "Opaque", "stringData": {"token": token}
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta.clone(),
        "spec": {"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": name},
                 "ports": [{"name": "rendezvous", "port": RDZV_PORT}]}
    });
    let limits = if gpus {
        json!({"nvidia.com/gpu": r.devices_per_node})
    } else {
        json!({"cpu": r.devices_per_node})
    };
    let checkpoints = match checkpoint_pvc {
        Some(c) => json!({"name": "checkpoints", "persistentVolumeClaim": {"claimName": c}}),
        None => json!({"name": "checkpoints", "emptyDir": {}}),
    };
    let code = |e: LauncherExit| e.code();
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta.clone(),
        "spec": {
            "completionMode": "Indexed",
            "completions": r.nodes,
            "parallelism": r.nodes,
            "backoffLimit": backoff_limit.unwrap_or(6),
            "podFailurePolicy": {"rules": [
                // A spec or request that cannot run will not run next time either.
                {"action": "FailJob", "onExitCodes": {"containerName": "ringmaster", "operator": "In",
                    "values": [code(LauncherExit::ConfigInvalid), code(LauncherExit::Unsupported)]}},
                // Stopped at a committed checkpoint: the next pod resumes; not a failure.
                {"action": "Ignore", "onExitCodes": {"containerName": "ringmaster", "operator": "In",
                    "values": [code(LauncherExit::Preempted)]}},
                // Evicted, preempted or drained by the cluster.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
            ]},
            "template": {
                "metadata": {"labels": meta["labels"].clone()},
                "spec": {
                    "restartPolicy": "Never",
                    "subdomain": name,
                    // SIGTERM starts the coordinated checkpoint; this long
                    // before the SIGKILL.
                    "terminationGracePeriodSeconds": crate::provider::checkpoint_grace_s(spec),
                    "containers": [{
                        "name": "ringmaster",
                        "image": image,
                        "command": ["ringmaster", "run", format!("{JOB_MOUNT}/job.json"),
                                    "--log-dir", format!("{CHECKPOINT_MOUNT}/runs"), "--run-id", "$(POD_NAME)"],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "RINGMASTER_KUBE_SERVICE", "value": name},
                            {"name": proto::contract::WorkerContract::token_variable(), "valueFrom": {"secretKeyRef": {"name": format!("{name}-token"), "key": "token"}}}
                        ],
                        "ports": [{"name": "rendezvous", "containerPort": RDZV_PORT}],
                        "resources": {"limits": limits},
                        "volumeMounts": [
                            {"name": "job", "mountPath": JOB_MOUNT, "readOnly": true},
                            {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}
                        ]
                    }],
                    "volumes": [
                        {"name": "job", "configMap": {"name": format!("{name}-job")}},
                        checkpoints
                    ]
                }
            }
        }
    });
    vec![
        ("00-configmap.json".into(), configmap),
        ("01-secret.json".into(), secret),
        ("02-service.json".into(), service),
        ("03-job.json".into(), job),
    ]
}

/// Whether the job is a Kubernetes job of several pods (a leader and node
/// agents).
pub fn multi_node(spec: &JobSpec) -> bool {
    matches!(spec.provider, Provider::Kubernetes { .. }) && spec.resources.nodes > 1
}

/// The rendezvous port (the Service's; RINGMASTER_KUBE_RDZV_PORT to move it).
pub fn rdzv_port() -> u16 {
    std::env::var("RINGMASTER_KUBE_RDZV_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(RDZV_PORT)
}

/// This pod's node rank: the Indexed Job's completion index.
pub fn pod_index() -> Option<u32> {
    std::env::var("JOB_COMPLETION_INDEX").ok()?.parse().ok()
}

/// Pod `k`'s stable name in the Service's domain: `<job>-<k>.<service>`.
pub fn pod_host(spec: &JobSpec, k: u32) -> String {
    let name = dns_name(&spec.name);
    let service = std::env::var("RINGMASTER_KUBE_SERVICE").unwrap_or_else(|_| name.clone());
    format!("{name}-{k}.{service}")
}

fn dns_name(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// The leader (pod 0): node 0's workers here, every other node's through
/// that pod's agent.
pub struct KubeProvider {
    rdzv: crate::rendezvous::Rendezvous,
    nodes: u32,
}

impl KubeProvider {
    pub fn new(rdzv: crate::rendezvous::Rendezvous, nodes: u32) -> Self {
        KubeProvider { rdzv, nodes }
    }
}

impl crate::provider::Provider for KubeProvider {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }
    fn agent_nodes(&self) -> Vec<u32> {
        (1..self.nodes).collect()
    }
    fn spawn_worker(
        &self,
        node: u32,
        bin: &std::path::Path,
        c: &proto::contract::WorkerContract,
        env: &[(String, String)],
        log: &std::path::Path,
        tee: Option<(u32, crate::progress::Console)>,
    ) -> std::io::Result<crate::provider::Spawned> {
        if node == 0 {
            return crate::process::spawn_worker(bin, env, log, tee)
                .map(crate::provider::Spawned::Local);
        }
        let rank = c.rank;
        let agent = self.rdzv.agent(node).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("the agent of node {node} is not connected"),
            )
        })?;
        agent
            .send(proto::wire::Response::Spawn {
                rank,
                env: env.to_vec(),
            })
            .map_err(|_| std::io::Error::other(format!("the agent of node {node} is gone")))?;
        Ok(crate::provider::Spawned::Remote)
    }
}

/// A node agent (pod k > 0): connect to the leader's rendezvous, start the
/// workers it asks for (their output in `log_dir`), report their starts
/// and exits, pass the kubelet's SIGTERM on as a notice, and end with the
/// run's exit code when the leader says so (rendezvous-failed if the
/// leader goes away: every worker here is killed first).
pub async fn run_agent(
    leader: &str,
    token: &str,
    node: u32,
    worker_bin: &std::path::Path,
    log_dir: &std::path::Path,
    wait: std::time::Duration,
) -> Result<i32, crate::error::LaunchError> {
    use crate::error::LaunchError;
    use proto::wire::{Request, Response, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    std::fs::create_dir_all(log_dir).map_err(LaunchError::system(format!(
        "cannot create {}",
        log_dir.display()
    )))?;
    let until = std::time::Instant::now() + wait;
    let stream = loop {
        match tokio::net::TcpStream::connect(leader).await {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() >= until => {
                return Err(LaunchError::Io(format!(
                    "cannot reach the leader at {leader}: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let hello = proto::wire::encode(&Request::AgentHello {
        version: PROTOCOL_VERSION,
        token: token.to_string(),
        node,
    });
    wr.write_all(&hello)
        .await
        .map_err(LaunchError::system(format!("leader {leader}")))?;
    async fn frame(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Response> {
        let mut len = [0u8; 4];
        rd.read_exact(&mut len).await.ok()?;
        let mut body =
            vec![0u8; u32::from_be_bytes(len).min(proto::wire::MAX_FRAME_BYTES) as usize];
        rd.read_exact(&mut body).await.ok()?;
        serde_json::from_slice(&body).ok()
    }
    match frame(&mut rd).await {
        Some(Response::Ok) => {}
        Some(Response::Error { kind, message }) => {
            return Err(LaunchError::Io(format!(
                "the leader refused this agent ({kind:?}): {message}"
            )))
        }
        other => {
            return Err(LaunchError::Io(format!(
                "unexpected reply from the leader: {other:?}"
            )))
        }
    }
    eprintln!("[ringmaster agent {node}] connected to {leader}");
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
    let writer = tokio::spawn(async move {
        while let Some(r) = out_rx.recv().await {
            if wr.write_all(&proto::wire::encode(&r)).await.is_err() {
                return;
            }
        }
    });
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| LaunchError::Internal(e.to_string()))?;
    let mut groups: std::collections::BTreeMap<u32, u32> = Default::default();
    let code = loop {
        tokio::select! {
            cmd = frame(&mut rd) => match cmd {
                Some(Response::Spawn { rank, env }) => {
                    let log = log_dir.join(format!("rank-{rank}.log"));
                    match crate::process::spawn_worker(worker_bin, &env, &log, None) {
                        Ok(mut child) => {
                            let pid = child.id().unwrap_or(0);
                            groups.insert(rank, pid);
                            let _ = out_tx.send(Request::AgentStarted { rank, pid });
                            let tx = out_tx.clone();
                            tokio::spawn(async move {
                                use std::os::unix::process::ExitStatusExt;
                                // The worker's log goes to the leader as
                                // it grows, the rest when it ends, then the
                                // exit.
                                let mut sent = 0usize;
                                let mut ship = |tx: &tokio::sync::mpsc::UnboundedSender<Request>| {
                                    let text = std::fs::read(&log).unwrap_or_default();
                                    let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                                    if end > sent {
                                        let lines = String::from_utf8_lossy(&text[sent..end])
                                            .lines()
                                            .map(String::from)
                                            .collect();
                                        sent = end;
                                        let _ = tx.send(Request::AgentLog { rank, lines });
                                    }
                                };
                                let status = loop {
                                    tokio::select! {
                                        s = child.wait() => break s,
                                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => ship(&tx),
                                    }
                                };
                                ship(&tx);
                                let (code, signal) = match status {
                                    Ok(s) => (s.code(), s.signal()),
                                    Err(_) => (Some(-1), None),
                                };
                                let _ = tx.send(Request::AgentExited { rank, code, signal });
                            });
                        }
                        Err(e) => {
                            eprintln!("[ringmaster agent {node}] cannot start rank {rank}: {e}");
                            let _ = out_tx.send(Request::AgentExited { rank, code: Some(proto::exit::WorkerExit::Internal.code()), signal: None });
                        }
                    }
                }
                Some(Response::Signal { rank, signal }) => {
                    if let (Some(pg), Ok(sig)) = (groups.get(&rank), nix::sys::signal::Signal::try_from(signal)) {
                        crate::process::signal_group(*pg, sig);
                    }
                }
                Some(Response::Shutdown { code }) => break code,
                Some(_) => {}
                None => {
                    eprintln!("[ringmaster agent {node}] the leader is gone");
                    break proto::exit::LauncherExit::RendezvousFailed.code();
                }
            },
            _ = sigterm.recv() => {
                eprintln!("[ringmaster agent {node}] SIGTERM: asking the leader for a checkpoint");
                let _ = out_tx.send(Request::AgentNotice);
            }
        }
    };
    for pg in groups.values() {
        crate::process::signal_group(*pg, nix::sys::signal::Signal::SIGKILL);
    }
    drop(out_tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> JobSpec {
        proto::spec::compile(v).unwrap().spec
    }

    #[test]
    fn an_indexed_job_with_its_service_grace_and_failure_policy() {
        let s = spec(json!({
            "name": "mlp_run", "resources": {"nodes": 1, "devices_per_node": 4},
            "workload": {"kind": "train"},
            "checkpoint": {"dir": "/checkpoints/ck", "every_steps": 100},
            "provider": {"kind": "kubernetes", "image": "ghcr.io/x/ringmaster:1", "namespace": "ml",
                         "checkpoint_pvc": "ckpt", "backoff_limit": 3}}));
        let m = manifests(&s, true, "t0k");
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "00-configmap.json",
                "01-secret.json",
                "02-service.json",
                "03-job.json"
            ]
        );
        let (cm, secret, svc, job) = (&m[0].1, &m[1].1, &m[2].1, &m[3].1);
        assert_eq!(secret["stringData"]["token"], "t0k");
        assert_eq!(cm["metadata"]["name"], "mlp-run-job");
        let carried: JobSpec =
            serde_json::from_str(cm["data"]["job.json"].as_str().unwrap()).unwrap();
        assert_eq!(carried, s, "the pod runs exactly this job");
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(
            svc["spec"]["selector"]["batch.kubernetes.io/job-name"],
            "mlp-run"
        );
        assert_eq!(svc["metadata"]["namespace"], "ml");
        let js = &job["spec"];
        assert_eq!(js["completionMode"], "Indexed");
        assert_eq!(
            (js["completions"].as_u64(), js["parallelism"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(js["backoffLimit"], 3);
        let rules = js["podFailurePolicy"]["rules"].as_array().unwrap();
        assert_eq!(rules[0]["action"], "FailJob");
        assert_eq!(rules[0]["onExitCodes"]["values"], json!([3, 6]));
        assert_eq!(rules[1]["action"], "Ignore");
        assert_eq!(rules[1]["onExitCodes"]["values"], json!([8]));
        assert_eq!(rules[2]["onPodConditions"][0]["type"], "DisruptionTarget");
        let pod = &js["template"]["spec"];
        assert_eq!(
            pod["restartPolicy"], "Never",
            "a pod failure policy needs Never"
        );
        assert_eq!(pod["subdomain"], "mlp-run");
        assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "ghcr.io/x/ringmaster:1");
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 4);
        assert_eq!(c["command"][2], "/etc/ringmaster/job.json");
        assert!(c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POD_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
        assert!(c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "RINGMASTER_RDZV_TOKEN"
                && e["valueFrom"]["secretKeyRef"]["name"] == "mlp-run-token"));
        assert_eq!(
            pod["volumes"][1]["persistentVolumeClaim"]["claimName"],
            "ckpt"
        );
        // A CPU job asks for CPUs, and without a claim gets an emptyDir.
        let mut cpu = s.clone();
        cpu.provider = Provider::Kubernetes {
            image: "img".into(),
            namespace: None,
            checkpoint_pvc: None,
            backoff_limit: None,
        };
        let m = manifests(&cpu, false, "t");
        let pod = &m[3].1["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["resources"]["limits"]["cpu"], 4);
        assert!(pod["volumes"][1]["emptyDir"].is_object());
        assert!(m[2].1["metadata"].get("namespace").is_none());
    }
}
