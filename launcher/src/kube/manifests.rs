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
