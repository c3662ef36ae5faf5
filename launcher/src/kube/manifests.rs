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
use proto::spec::{JobSpec, KubePod, Provider};
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
        queue,
        pod,
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
    let resources = pod_resources(spec, pod, gpus);
    let shm = pod
        .shm_size
        .clone()
        .unwrap_or_else(|| if gpus { "8Gi" } else { "1Gi" }.to_string());
    let security = security_context(pod);
    let checkpoints = match checkpoint_pvc {
        Some(c) => json!({"name": "checkpoints", "persistentVolumeClaim": {"claimName": c}}),
        None => json!({"name": "checkpoints", "emptyDir": {}}),
    };
    let mut job = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta.clone(),
        "spec": {
            "completionMode": "Indexed",
            "completions": r.nodes,
            "parallelism": r.nodes,
            "backoffLimit": backoff_limit.unwrap_or(6),
            "podFailurePolicy": pod_failure_policy(),
            "template": {
                "metadata": pod_meta,
                "spec": {
                    "restartPolicy": "Never",
                    "subdomain": name,
                    // SIGTERM starts the coordinated checkpoint: the
                    // launcher's grace, plus 30 s to commit it and exit,
                    // before the SIGKILL.
                    "terminationGracePeriodSeconds": termination_grace_s(spec),
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
                        "resources": resources,
                        "securityContext": security,
                        "volumeMounts": [
                            {"name": "job", "mountPath": JOB_MOUNT, "readOnly": true},
                            {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT},
                            {"name": "dshm", "mountPath": "/dev/shm"}
                        ]
                    }],
                    "volumes": [
                        {"name": "job", "configMap": {"name": format!("{name}-job")}},
                        checkpoints,
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}
                    ]
                }
            }
        }
    });
    place_pods(&mut job, pod, queue.as_deref(), gpus);
    let mut out = vec![
        ("00-configmap.json".into(), configmap),
        ("01-secret.json".into(), secret),
        ("02-service.json".into(), service),
        ("03-job.json".into(), job),
    ];
    if pod.disruption_budget {
        out.push((
            "04-pdb.json".into(),
            disruption_budget(&meta, &name, r.nodes),
        ));
    }
    if let (true, Some(_)) = (pod_monitor, metrics) {
        out.push(("05-podmonitor.json".into(), pod_monitor_of(&meta)));
    }
    out
}

/// The container's security context: the pod settings' own, else no
/// privilege escalation (and IPC_LOCK where RDMA devices are asked for:
/// registering memory for RDMA needs to lock it).
fn security_context(pod: &KubePod) -> Value {
    let rdma = pod.extra_resources.keys().any(|k| {
        let k = k.to_ascii_lowercase();
        k.contains("rdma") || k.contains("efa") || k.contains("infiniband")
    });
    pod.security_context.clone().unwrap_or_else(|| {
        if rdma {
            json!({"allowPrivilegeEscalation": false, "capabilities": {"add": ["IPC_LOCK"]}})
        } else {
            json!({"allowPrivilegeEscalation": false})
        }
    })
}

/// Which pod exits fail the Job and which do not count against its
/// backoff limit.
fn pod_failure_policy() -> Value {
    let code = |e: LauncherExit| e.code();
    json!({"rules": [
        // A spec or request that cannot run will not run next time either.
        {"action": "FailJob", "onExitCodes": {"containerName": "ringmaster", "operator": "In",
            "values": [code(LauncherExit::ConfigInvalid), code(LauncherExit::Unsupported)]}},
        // Stopped at a committed checkpoint (8), or stopped from outside
        // without one (130: the pod deleted): the next pod resumes; not
        // the program failing.
        {"action": "Ignore", "onExitCodes": {"containerName": "ringmaster", "operator": "In",
            "values": [code(LauncherExit::Preempted), code(LauncherExit::Interrupted)]}},
        // Evicted, preempted or drained by the cluster.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]})
}

/// A Prometheus Operator PodMonitor for pod 0 (the one serving metrics).
fn pod_monitor_of(meta: &Value) -> Value {
    let mut labels = meta["labels"].clone();
    labels["batch.kubernetes.io/job-completion-index"] = json!("0");
    json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": meta.clone(),
        "spec": {"selector": {"matchLabels": labels},
                 "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}
    })
}

/// The pod's grace between SIGTERM and SIGKILL: the launcher's own (the
/// checkpoint's write time, or recovery.notice_grace_s, the longer) plus 30
/// s to commit the checkpoint and exit.
pub fn termination_grace_s(spec: &JobSpec) -> u32 {
    let notice = spec.recovery.notice_grace_s.ceil() as u32;
    crate::provider::checkpoint_grace_s(spec).max(notice) + 30
}

/// Requests and limits: CPU requested (no limit: a limit throttles the
/// collective), memory requested and limited alike, GPUs and the extra
/// devices requested and limited.
fn pod_resources(spec: &JobSpec, pod: &proto::spec::KubePod, gpus: bool) -> Value {
    let r = &spec.resources;
    let workers = r.devices_per_node as u64;
    let cpu = pod
        .cpu
        .clone()
        .unwrap_or_else(|| (workers * spec.threads_per_worker.unwrap_or(1) as u64).to_string());
    let memory = pod.memory.clone().unwrap_or_else(|| {
        let per_worker = crate::preflight::memory_fit(spec)
            .map(|m| m.per_worker)
            .unwrap_or(4 << 30);
        let mib = ((per_worker * workers + (1 << 30)).max(2 << 30) + (1 << 20) - 1) >> 20;
        format!("{mib}Mi")
    });
    let mut requests = json!({"cpu": cpu, "memory": memory});
    let mut limits = json!({"memory": memory});
    if gpus {
        requests["nvidia.com/gpu"] = json!(r.devices_per_node);
        limits["nvidia.com/gpu"] = json!(r.devices_per_node);
    }
    for (k, n) in &pod.extra_resources {
        requests[k] = json!(n);
        limits[k] = json!(n);
    }
    json!({"requests": requests, "limits": limits})
}

/// What an operator sets on the Job and its pods (`provider.pod`,
/// `provider.queue`): TTL, placement, priority, identity, pull secrets,
/// and Kueue's label with `suspend`.
fn place_pods(job: &mut Value, pod: &proto::spec::KubePod, queue: Option<&str>, gpus: bool) {
    let js = &mut job["spec"];
    js["ttlSecondsAfterFinished"] = json!(pod.ttl_seconds_after_finished.unwrap_or(86_400));
    let ps = &mut js["template"]["spec"];
    if !pod.node_selector.is_empty() {
        ps["nodeSelector"] = json!(pod.node_selector);
    }
    match &pod.tolerations {
        Some(t) => ps["tolerations"] = json!(t),
        // GPU nodes are commonly tainted so that only GPU pods land there.
        None if gpus => {
            ps["tolerations"] =
                json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
        }
        None => {}
    }
    if let Some(a) = &pod.affinity {
        ps["affinity"] = a.clone();
    }
    if let Some(p) = &pod.priority_class {
        ps["priorityClassName"] = json!(p);
    }
    if let Some(a) = &pod.service_account {
        ps["serviceAccountName"] = json!(a);
    }
    if !pod.image_pull_secrets.is_empty() {
        ps["imagePullSecrets"] = json!(pod
            .image_pull_secrets
            .iter()
            .map(|n| json!({"name": n}))
            .collect::<Vec<_>>());
    }
    if let Some(q) = queue {
        // Kueue admits a suspended Job that names its LocalQueue.
        job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = json!(q);
        job["spec"]["suspend"] = json!(true);
    }
}

/// Every pod of the running job stays through voluntary disruptions (a
/// node drain waits for the job, or for its deletion).
fn disruption_budget(meta: &Value, name: &str, nodes: u32) -> Value {
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
        "spec": {"minAvailable": nodes,
                 "selector": {"matchLabels": {"batch.kubernetes.io/job-name": name}}}
    })
}
