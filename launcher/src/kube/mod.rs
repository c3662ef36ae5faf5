//! Kubernetes: a job of N nodes is an Indexed Job of N pods running
//! `ringmaster run` on the same job file; pod 0 leads (its launcher hosts
//! the rendezvous and supervises), the others are node agents that start
//! their node's workers on its word. `manifests` writes the objects
//! (`ringmaster submit --scheduler kubernetes`); pod 0's provider is
//! `node_rank::Leader` and the other pods run `agent::run_agent`, as the
//! nodes of a `run --node-rank` run do; this module holds what they share
//! (the pods' names, ports and mounts).

mod manifests;

pub use manifests::{manifests, metrics_port};

use proto::spec::{JobSpec, Provider};

/// Where the pod finds the job file and keeps checkpoints and runs.
pub const JOB_MOUNT: &str = "/etc/ringmaster";
pub const CHECKPOINT_MOUNT: &str = "/checkpoints";
/// The rendezvous port the headless Service names.
pub const RDZV_PORT: u16 = 29400;

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

/// A job for `submit --scheduler kubernetes`: a `kubernetes` job (its
/// image replaced by `--image` when given) or a `local` one made into it
/// (`--image` required); any other provider is an error naming
/// `provider.kind`.
pub fn into_kubernetes(
    spec: &mut JobSpec,
    image: Option<&str>,
) -> Result<(), crate::error::LaunchError> {
    use crate::error::LaunchError;
    let issue = |f: &str, m: String| LaunchError::Config(vec![proto::SpecIssue::new(f, m)]);
    let image_flag: Option<String> = image.map(str::to_string);
    match &mut spec.provider {
        Provider::Kubernetes { image, .. } => {
            if let Some(i) = &image_flag {
                image.clone_from(i);
            }
        }
        Provider::Local { .. } => {
            let image = image_flag.clone().ok_or_else(|| {
                issue("provider.image", "a kubernetes job needs an image: set provider.image or pass --image".into())
            })?;
            spec.provider = Provider::Kubernetes {
                image,
                namespace: None,
                checkpoint_pvc: None,
                backoff_limit: None,
                queue: None,
                pod: Default::default(),
            };
        }
        other => {
            return Err(issue(
                "provider.kind",
                format!("a {} job cannot be submitted to Kubernetes; use kind \"kubernetes\" (or \"local\")", other.kind()),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
        let m = manifests(&s, true, "t0k", false);
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "00-configmap.json",
                "01-secret.json",
                "02-service.json",
                "03-job.json",
                "04-pdb.json"
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
        assert_eq!(rules[1]["onExitCodes"]["values"], json!([8, 130]));
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
            queue: None,
            pod: Default::default(),
        };
        let m = manifests(&cpu, false, "t", false);
        let pod = &m[3].1["spec"]["template"]["spec"];
        let res = &pod["containers"][0]["resources"];
        assert_eq!(res["requests"]["cpu"], "4");
        assert!(res["limits"].get("cpu").is_none(), "no CPU limit");
        assert_eq!(res["limits"]["memory"], res["requests"]["memory"]);
        assert!(pod["volumes"][1]["emptyDir"].is_object());
        assert!(m[2].1["metadata"].get("namespace").is_none());
    }
}
