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
/// headless Service, the Indexed Job.
pub fn manifests(spec: &JobSpec, gpus: bool) -> Vec<(String, Value)> {
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
                            {"name": "RINGMASTER_KUBE_SERVICE", "value": name}
                        ],
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
        ("01-service.json".into(), service),
        ("02-job.json".into(), job),
    ]
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
        let m = manifests(&s, true);
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["00-configmap.json", "01-service.json", "02-job.json"]
        );
        let (cm, svc, job) = (&m[0].1, &m[1].1, &m[2].1);
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
        let m = manifests(&cpu, false);
        let pod = &m[2].1["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["resources"]["limits"]["cpu"], 4);
        assert!(pod["volumes"][1]["emptyDir"].is_object());
        assert!(m[1].1["metadata"].get("namespace").is_none());
    }
}
