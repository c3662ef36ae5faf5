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

use super::{CHECKPOINT_MOUNT, JOB_MOUNT, RDZV_PORT};
use proto::exit::LauncherExit;
use proto::spec::{JobSpec, Provider};
use serde_json::{json, Value};

/// The port pod 0's launcher serves /metrics on, when the job asks for
/// metrics (`observability.metrics_addr`; its port, or 9400 for port 0): on
/// all the pod's addresses, so Prometheus can reach it.
pub fn metrics_port(spec: &JobSpec) -> Option<u16> {
    let addr: std::net::SocketAddr = spec.observability.metrics_addr.as_deref()?.parse().ok()?;
    Some(if addr.port() == 0 { 9400 } else { addr.port() })
}

/// (file name, manifest) for each object: the ConfigMap with the job, the
/// Secret with the rendezvous token the pods share (`token`), the headless
/// Service, the Indexed Job; with `pod_monitor` (and metrics asked for), a
/// Prometheus Operator PodMonitor for pod 0.
pub fn manifests(
    spec: &JobSpec,
    gpus: bool,
    token: &str,
    pod_monitor: bool,
) -> Vec<(String, Value)> {
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
    let metrics = metrics_port(spec);
    let mut service_ports = vec![json!({"name": "rendezvous", "port": RDZV_PORT})];
    let mut container_ports = vec![json!({"name": "rendezvous", "containerPort": RDZV_PORT})];
    let mut command = vec![
        json!("ringmaster"),
        json!("run"),
        json!(format!("{JOB_MOUNT}/job.json")),
        json!("--log-dir"),
        json!(format!("{CHECKPOINT_MOUNT}/runs")),
        json!("--run-id"),
        json!("$(POD_NAME)"),
    ];
    // Scraped from pod 0 (the other pods are node agents, which serve no
    // metrics): the plain prometheus.io annotations, a named port.
    let mut pod_meta = json!({"labels": meta["labels"].clone()});
    if let Some(p) = metrics {
        service_ports.push(json!({"name": "metrics", "port": p}));
        container_ports.push(json!({"name": "metrics", "containerPort": p}));
        command.extend([json!("--metrics-addr"), json!(format!("0.0.0.0:{p}"))]);
        pod_meta["annotations"] = json!({"prometheus.io/scrape": "true",
            "prometheus.io/port": p.to_string(), "prometheus.io/path": "/metrics"});
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta.clone(),
        "spec": {"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": name},
                 "ports": service_ports}
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
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
            ]},
            "template": {
                "metadata": pod_meta,
                "spec": {
                    "restartPolicy": "Never",
                    "subdomain": name,
                    // SIGTERM starts the coordinated checkpoint; this long
                    // before the SIGKILL.
                    "terminationGracePeriodSeconds": crate::provider::checkpoint_grace_s(spec),
                    "containers": [{
                        "name": "ringmaster",
                        "image": image,
                        "command": command,
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "RINGMASTER_KUBE_SERVICE", "value": name},
                            {"name": proto::contract::WorkerContract::token_variable(), "valueFrom": {"secretKeyRef": {"name": format!("{name}-token"), "key": "token"}}}
                        ],
                        "ports": container_ports,
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
    let mut out = vec![
        ("00-configmap.json".into(), configmap),
        ("01-secret.json".into(), secret),
        ("02-service.json".into(), service),
        ("03-job.json".into(), job),
    ];
    if let (true, Some(_)) = (pod_monitor, metrics) {
        let mut labels = meta["labels"].clone();
        labels["batch.kubernetes.io/job-completion-index"] = json!("0");
        out.push((
            "04-podmonitor.json".into(),
            json!({
                "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
                "metadata": meta.clone(),
                "spec": {"selector": {"matchLabels": labels},
                         "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}
            }),
        ));
    }
    out
}
