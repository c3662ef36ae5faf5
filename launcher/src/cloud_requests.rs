//! GCP's and Azure's requests for a node's machine, built from the same
//! plan as EC2's (the failover ladder, the boot script) but not sent: no
//! emulator of either API exists to test them against, so these two
//! providers are not exercised end to end (`run` refuses them; `plan`
//! shows the requests). Their shapes follow the published references:
//! Compute Engine v1 `instances.insert` (Instance, Scheduling with
//! `provisioningModel: SPOT` and `instanceTerminationAction`) and Azure
//! Compute 2024-07-01 `virtualMachines` create (`priority: Spot`,
//! `evictionPolicy`, `billingProfile.maxPrice`), and tests/cloud_requests.rs
//! checks them against JSON Schemas written from those references.

use crate::aws::ladder::{ladder, Rung};
use crate::error::LaunchError;
use proto::report::Buy;
use proto::spec::{Cloud, JobSpec, Provider, SimMarket};
use serde_json::{json, Value};

/// One request: the HTTP method, the URL and the JSON body.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CloudRequest {
    pub node: u32,
    pub zone: String,
    pub market: &'static str,
    pub method: &'static str,
    pub url: String,
    pub body: Value,
}

const TOKEN: &str = "<single-use token, made at run time>";

/// A label or name part: lowercase letters, digits and '-', at most 63.
fn dns(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    out.trim_matches('-').to_string()
}

fn market(m: &Option<String>) -> SimMarket {
    m.as_deref()
        .and_then(SimMarket::parse)
        .unwrap_or(SimMarket::Spot)
}

/// Every node's first request (its ladder's top rung), in node order; None
/// for other providers.
pub fn requests(spec: &JobSpec, run_id: &str) -> Option<Vec<CloudRequest>> {
    let nodes = spec.resources.nodes;
    match &spec.provider {
        Provider::Gcp {
            zones, market: m, ..
        } => {
            let rungs = ladder(zones, market(m), None, None);
            Some(
                (0..nodes)
                    .map(|n| gcp(spec, run_id, n, &rungs[0]))
                    .collect(),
            )
        }
        Provider::Azure {
            zones, market: m, ..
        } => {
            // No zone: one regional rung per market.
            let zs = if zones.is_empty() {
                vec![String::new()]
            } else {
                zones.clone()
            };
            let rungs = ladder(&zs, market(m), None, None);
            Some(
                (0..nodes)
                    .map(|n| azure(spec, run_id, n, &rungs[0]))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// The ladder in words, for `plan`.
pub fn ladder_words(spec: &JobSpec) -> Option<String> {
    let rungs = match &spec.provider {
        Provider::Gcp {
            zones, market: m, ..
        } => ladder(zones, market(m), None, None),
        Provider::Azure {
            zones, market: m, ..
        } if !zones.is_empty() => ladder(zones, market(m), None, None),
        Provider::Azure { market: m, .. } => {
            ladder(&[String::from("(no zone)")], market(m), None, None)
        }
        _ => return None,
    };
    Some(
        rungs
            .iter()
            .map(|r| format!("{} {}", r.zone, r.buy.name()))
            .collect::<Vec<_>>()
            .join(" -> "),
    )
}

fn gcp(spec: &JobSpec, run_id: &str, node: u32, rung: &Rung) -> CloudRequest {
    let Provider::Gcp {
        project,
        machine_type,
        image,
        disk_size_gb,
        network,
        subnetwork,
        service_account,
        accelerator_type,
        accelerator_count,
        rendezvous_host,
        rendezvous_port,
        setup,
        labels,
        ..
    } = &spec.provider
    else {
        unreachable!("gcp requests for a gcp job")
    };
    let zone = &rung.zone;
    let script = crate::bootstrap::script(&crate::bootstrap::Boot {
        cloud: Cloud::Gcp,
        run_id,
        node,
        leader: &format!("{rendezvous_host}:{rendezvous_port}"),
        setup,
        token: TOKEN,
    });
    let mut all_labels = serde_json::Map::new();
    all_labels.insert("ringmaster-run".into(), json!(dns(run_id)));
    all_labels.insert("ringmaster-node".into(), json!(node.to_string()));
    all_labels.insert("ringmaster-job".into(), json!(dns(&spec.name)));
    for (k, v) in labels {
        all_labels.insert(dns(k), json!(dns(v)));
    }
    // Spot: the SPOT provisioning model, deleted (not stopped) when
    // preempted, never restarted by GCE; GPUs also need TERMINATE on host
    // maintenance.
    let scheduling = if rung.buy == Buy::Spot {
        json!({"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
               "automaticRestart": false, "onHostMaintenance": "TERMINATE"})
    } else {
        json!({"provisioningModel": "STANDARD", "automaticRestart": true, "onHostMaintenance": "TERMINATE"})
    };
    let mut nic =
        json!({"network": network.clone().unwrap_or_else(|| "global/networks/default".into())});
    if let Some(s) = subnetwork {
        nic["subnetwork"] = json!(s);
    }
    let mut disk =
        json!({"boot": true, "autoDelete": true, "initializeParams": {"sourceImage": image}});
    if let Some(gb) = disk_size_gb {
        disk["initializeParams"]["diskSizeGb"] = json!(gb.to_string());
    }
    let mut body = json!({
        "name": dns(&format!("ringmaster-{run_id}-node-{node}")),
        "machineType": format!("zones/{zone}/machineTypes/{machine_type}"),
        "scheduling": scheduling,
        "disks": [disk],
        "networkInterfaces": [nic],
        "metadata": {"items": [{"key": "startup-script", "value": script}]},
        "labels": all_labels,
    });
    if let (Some(t), Some(n)) = (accelerator_type, accelerator_count) {
        body["guestAccelerators"] = json!([{"acceleratorType": format!("zones/{zone}/acceleratorTypes/{t}"), "acceleratorCount": n}]);
    }
    if let Some(sa) = service_account {
        body["serviceAccounts"] =
            json!([{"email": sa, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]);
    }
    CloudRequest {
        node,
        zone: zone.clone(),
        market: rung.buy.name(),
        method: "POST",
        url: format!(
            "https://compute.googleapis.com/compute/v1/projects/{project}/zones/{zone}/instances"
        ),
        body,
    }
}

fn azure(spec: &JobSpec, run_id: &str, node: u32, rung: &Rung) -> CloudRequest {
    let Provider::Azure {
        subscription_id,
        resource_group,
        location,
        vm_size,
        max_price,
        image,
        subnet_id,
        admin_username,
        ssh_public_key,
        rendezvous_host,
        rendezvous_port,
        setup,
        tags,
        ..
    } = &spec.provider
    else {
        unreachable!("azure requests for an azure job")
    };
    use base64::Engine;
    let script = crate::bootstrap::script(&crate::bootstrap::Boot {
        cloud: Cloud::Azure,
        run_id,
        node,
        leader: &format!("{rendezvous_host}:{rendezvous_port}"),
        setup,
        token: TOKEN,
    });
    let name = dns(&format!("ringmaster-{run_id}-node-{node}"));
    let image_ref = if image.starts_with('/') {
        json!({"id": image})
    } else {
        let p: Vec<&str> = image.split(':').collect();
        json!({"publisher": p[0], "offer": p[1], "sku": p[2], "version": p[3]})
    };
    let mut all_tags = serde_json::Map::new();
    all_tags.insert("ringmaster-run".into(), json!(run_id));
    all_tags.insert("ringmaster-node".into(), json!(node.to_string()));
    all_tags.insert("ringmaster-job".into(), json!(spec.name));
    for (k, v) in tags {
        all_tags.insert(k.clone(), json!(v));
    }
    let mut properties = json!({
        "hardwareProfile": {"vmSize": vm_size},
        "priority": if rung.buy == Buy::Spot { "Spot" } else { "Regular" },
        "storageProfile": {
            "imageReference": image_ref,
            "osDisk": {"createOption": "FromImage", "deleteOption": "Delete"}
        },
        "osProfile": {
            "computerName": name,
            "adminUsername": admin_username,
            "customData": base64::engine::general_purpose::STANDARD.encode(script),
            "linuxConfiguration": {
                "disablePasswordAuthentication": true,
                "ssh": {"publicKeys": [{"path": format!("/home/{admin_username}/.ssh/authorized_keys"), "keyData": ssh_public_key}]}
            }
        },
        "networkProfile": {
            "networkApiVersion": "2022-11-01",
            "networkInterfaceConfigurations": [{
                "name": format!("{name}-nic"),
                "properties": {
                    "primary": true,
                    "deleteOption": "Delete",
                    "ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": subnet_id}}}]
                }
            }]
        }
    });
    if rung.buy == Buy::Spot {
        // Deleted (with its disk and NIC) when evicted; -1: up to the
        // pay-as-you-go price, never evicted for price.
        properties["evictionPolicy"] = json!("Delete");
        properties["billingProfile"] = json!({"maxPrice": max_price.unwrap_or(-1.0)});
    }
    let mut body = json!({"location": location, "tags": all_tags, "properties": properties});
    if !rung.zone.is_empty() {
        body["zones"] = json!([rung.zone]);
    }
    CloudRequest {
        node,
        zone: rung.zone.clone(),
        market: rung.buy.name(),
        method: "PUT",
        url: format!(
            "https://management.azure.com/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/Microsoft.Compute/virtualMachines/{name}?api-version=2024-07-01"
        ),
        body,
    }
}

/// `plan`'s lines for a gcp or azure job (empty for others).
pub fn plan_lines(spec: &JobSpec) -> Result<Vec<String>, LaunchError> {
    let Some(reqs) = requests(spec, "<run-id>") else {
        return Ok(Vec::new());
    };
    let mut out = vec![
        format!(
            "{}: NOT SENT: ringmaster builds these requests but does not send them (this provider is not exercised end to end); each node is asked for in this order:",
            spec.provider.kind()
        ),
        format!("  {}", ladder_words(spec).unwrap_or_default()),
    ];
    for r in &reqs {
        out.push(format!("  node {}: {} {}", r.node, r.method, r.url));
    }
    out.push("  node 0's body:".into());
    for l in serde_json::to_string_pretty(&reqs[0].body)
        .expect("body serialises")
        .lines()
    {
        out.push(format!("    {l}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(provider: Value) -> JobSpec {
        let v = json!({"name": "Big_Run", "resources": {"nodes": 2, "devices_per_node": 8},
                       "workload": {"kind": "command", "argv": ["python", "train.py"]}, "provider": provider});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn gcp_spot_is_the_spot_provisioning_model_deleted_on_preemption() {
        let s = spec(
            json!({"kind": "gcp", "project": "p", "machine_type": "a3-highgpu-8g",
                             "zones": ["us-central1-a", "us-central1-b"], "image": "projects/deeplearning-platform-release/global/images/family/common-cu124",
                             "rendezvous_host": "10.0.0.5"}),
        );
        let r = requests(&s, "Run_1").unwrap();
        assert_eq!(r.len(), 2);
        let b = &r[1].body;
        assert_eq!(
            r[1].url,
            "https://compute.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances"
        );
        assert_eq!(b["scheduling"]["provisioningModel"], "SPOT");
        assert_eq!(b["scheduling"]["instanceTerminationAction"], "DELETE");
        assert_eq!(
            b["machineType"],
            "zones/us-central1-a/machineTypes/a3-highgpu-8g"
        );
        assert_eq!(b["name"], "ringmaster-run-1-node-1");
        assert_eq!(b["labels"]["ringmaster-job"], "big-run");
        let script = b["metadata"]["items"][0]["value"].as_str().unwrap();
        assert!(script.contains("Metadata-Flavor: Google") && script.contains("--node 1 "));
        let s = spec(
            json!({"kind": "gcp", "project": "p", "machine_type": "n1-standard-8", "market": "on-demand",
                             "zones": ["z"], "image": "i", "rendezvous_host": "h",
                             "accelerator_type": "nvidia-tesla-v100", "accelerator_count": 1}),
        );
        let b = &requests(&s, "r").unwrap()[0].body;
        assert_eq!(b["scheduling"]["provisioningModel"], "STANDARD");
        assert!(b["scheduling"].get("instanceTerminationAction").is_none());
        assert_eq!(
            b["guestAccelerators"][0]["acceleratorType"],
            "zones/z/acceleratorTypes/nvidia-tesla-v100"
        );
    }

    #[test]
    fn azure_spot_has_priority_eviction_policy_and_max_price() {
        let s = spec(
            json!({"kind": "azure", "subscription_id": "sub", "resource_group": "rg", "location": "eastus",
                             "vm_size": "Standard_ND96isr_H100_v5", "zones": ["2"],
                             "image": "microsoft-dsvm:ubuntu-hpc:2204:latest",
                             "subnet_id": "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s",
                             "ssh_public_key": "ssh-ed25519 AAAA", "rendezvous_host": "10.0.0.5", "max_price": 40.5}),
        );
        let r = &requests(&s, "r").unwrap()[0];
        assert_eq!(r.method, "PUT");
        assert!(r
            .url
            .ends_with("/virtualMachines/ringmaster-r-node-0?api-version=2024-07-01"));
        let p = &r.body["properties"];
        assert_eq!(p["priority"], "Spot");
        assert_eq!(p["evictionPolicy"], "Delete");
        assert_eq!(p["billingProfile"]["maxPrice"], 40.5);
        assert_eq!(r.body["zones"], json!(["2"]));
        assert_eq!(p["storageProfile"]["imageReference"]["sku"], "2204");
        use base64::Engine;
        let script = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(p["osProfile"]["customData"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(script.contains("Metadata: true"));
    }
}
