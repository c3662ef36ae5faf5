//! GCP's and Azure's requests: built from the plan, shown by `plan`, never
//! sent (`run` refuses them, exit 6). Each body is checked against a JSON
//! Schema written from the cloud's published API reference
//! (tests/fixtures/cloud-schemas/, closed objects and the reference's
//! enums) with Python's jsonschema (installed by scripts/test.sh into
//! target/test-py, RINGMASTER_TEST_PYTHONPATH).

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every error the schema finds in `body` (empty: valid).
fn schema_errors(schema: &str, body: &Value) -> Vec<String> {
    let pythonpath = std::env::var("RINGMASTER_TEST_PYTHONPATH").unwrap_or_else(|_| {
        panic!("RINGMASTER_TEST_PYTHONPATH is not set: run the suite with scripts/test.sh (it installs jsonschema)")
    });
    let code = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
body = json.load(sys.stdin)
v = jsonschema.Draft7Validator(schema)
for e in v.iter_errors(body):
    print("/".join(str(p) for p in e.absolute_path) + ": " + e.message)
"#;
    let mut child = Command::new("python3")
        .args([
            "-c",
            code,
            fixture(&format!("cloud-schemas/{schema}"))
                .to_str()
                .unwrap(),
        ])
        .env("PYTHONPATH", pythonpath)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn job(provider: Value) -> Value {
    let mut s = train_job("Cloud_Job", 2, 1, 10);
    s["provider"] = provider;
    s
}

fn plan_requests(dir: &std::path::Path, spec: &Value) -> Vec<Value> {
    let path = write_job(dir, spec);
    let out = ringmaster(
        dir,
        &["plan", "--json", path.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v["cloud_requests"].as_array().unwrap().clone()
}

#[test]
fn gcp_and_azure_requests_match_the_published_schemas_and_are_never_sent() {
    let dir = scratch("cloud-requests");
    let gcp = json!({"kind": "gcp", "project": "my-project", "machine_type": "a3-highgpu-8g",
                     "zones": ["us-central1-a", "us-central1-b"],
                     "image": "projects/deeplearning-platform-release/global/images/family/common-cu124",
                     "disk_size_gb": 200, "subnetwork": "regions/us-central1/subnetworks/default",
                     "service_account": "trainer@my-project.iam.gserviceaccount.com",
                     "rendezvous_host": "10.128.0.5", "labels": {"team": "ML"}});
    let azure = json!({"kind": "azure", "subscription_id": "00000000-0000-0000-0000-000000000000",
                       "resource_group": "rg-train", "location": "eastus", "vm_size": "Standard_ND96isr_H100_v5",
                       "zones": ["1", "2"], "image": "microsoft-dsvm:ubuntu-hpc:2204:latest",
                       "subnet_id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-train/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default",
                       "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample user@host",
                       "rendezvous_host": "10.0.0.4", "tags": {"team": "ml"}});
    for (provider, schema) in [
        (gcp, "gcp-instance.schema.json"),
        (azure, "azure-vm.schema.json"),
    ] {
        for market in ["spot", "on-demand"] {
            let mut p = provider.clone();
            p["market"] = json!(market);
            let reqs = plan_requests(&dir, &job(p.clone()));
            assert_eq!(reqs.len(), 2, "one request per node");
            for r in &reqs {
                let errors = schema_errors(schema, &r["body"]);
                assert!(
                    errors.is_empty(),
                    "{} {market}: {errors:?}\n{}",
                    p["kind"],
                    r["body"]
                );
                assert_eq!(r["market"], market);
            }
            let b = &reqs[0]["body"];
            match (p["kind"].as_str().unwrap(), market) {
                ("gcp", "spot") => {
                    assert_eq!(b["scheduling"]["provisioningModel"], "SPOT");
                    assert_eq!(b["scheduling"]["instanceTerminationAction"], "DELETE");
                }
                ("gcp", _) => assert_eq!(b["scheduling"]["provisioningModel"], "STANDARD"),
                ("azure", "spot") => {
                    assert_eq!(b["properties"]["priority"], "Spot");
                    assert_eq!(b["properties"]["evictionPolicy"], "Delete");
                    assert_eq!(b["properties"]["billingProfile"]["maxPrice"], -1.0);
                }
                _ => assert_eq!(b["properties"]["priority"], "Regular"),
            }
            // `run` refuses to pretend: nothing is sent, nothing started.
            let path = write_job(&dir, &job(p.clone()));
            let out = ringmaster(
                &dir,
                &["run", path.to_str().unwrap()],
                Duration::from_secs(30),
            );
            assert_eq!(out.code(), 6, "{}", out.stderr);
            assert!(out.stderr.contains("does not send them"), "{}", out.stderr);
            assert!(!dir.join("runs").exists(), "no run folder was made");
        }
    }
    // The check can fail: a misspelt field and a wrong enum value are found.
    let bad = json!({"name": "x", "machineType": "zones/z/machineTypes/m", "disks": [{}],
                     "networkInterfaces": [{}], "scheduling": {"provisioningModel": "SPOTTY", "terminationAction": "DELETE"}});
    let errors = schema_errors("gcp-instance.schema.json", &bad);
    assert_eq!(errors.len(), 2, "{errors:?}");
    let bad = json!({"location": "eastus", "properties": {"hardwareProfile": {"vmSize": "x"}, "priority": "Spot",
                     "storageProfile": {}, "osProfile": {}, "networkProfile": {}}});
    let errors = schema_errors("azure-vm.schema.json", &bad);
    assert!(
        !errors.is_empty(),
        "Spot without evictionPolicy and billingProfile"
    );
}

#[test]
fn gcp_and_azure_spec_errors_name_the_field() {
    let dir = scratch("cloud-spec");
    for (provider, field) in [
        (
            json!({"kind": "gcp", "project": "p", "machine_type": "m", "zones": [], "image": "i", "rendezvous_host": "h"}),
            "provider.zones",
        ),
        (
            json!({"kind": "gcp", "project": "p", "machine_type": "m", "zones": ["z"], "image": "i", "rendezvous_host": "h", "accelerator_count": 2}),
            "provider.accelerator_count",
        ),
        (
            json!({"kind": "azure", "subscription_id": "s", "resource_group": "r", "location": "l", "vm_size": "v",
                "image": "a:b:c", "subnet_id": "/subscriptions/s/x", "ssh_public_key": "ssh-ed25519 A", "rendezvous_host": "h"}),
            "provider.image",
        ),
        (
            json!({"kind": "azure", "subscription_id": "s", "resource_group": "r", "location": "l", "vm_size": "v",
                "image": "a:b:c:d", "subnet_id": "subnet-1", "ssh_public_key": "ssh-ed25519 A", "rendezvous_host": "h"}),
            "provider.subnet_id",
        ),
        (
            json!({"kind": "azure", "subscription_id": "s", "resource_group": "r", "location": "l", "vm_size": "v", "max_price": 0,
                "image": "a:b:c:d", "subnet_id": "/subscriptions/s/x", "ssh_public_key": "ssh-ed25519 A", "rendezvous_host": "h"}),
            "provider.max_price",
        ),
    ] {
        assert_spec_error(&dir, &job(provider), field);
    }
}
