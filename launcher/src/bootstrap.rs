//! The script a cloud machine runs at boot to become a node of a run (EC2
//! user data, GCP's `startup-script`, Azure's `customData`): the job's
//! setup lines, then `ringmaster agent` pointed at the launcher with the
//! node's single-use token (in a 0600 file, never on a command line), then
//! a power-off when the agent ends (the run over, the node replaced, the
//! launcher gone), which deletes a machine created to delete itself on
//! shutdown. The machine's private address comes from its cloud's metadata
//! service. RINGMASTER_HOME (default /var/lib/ringmaster) holds the token
//! and the workers' logs; RINGMASTER_POWEROFF replaces `poweroff`.

use proto::spec::Cloud;

/// What the script needs to know.
pub struct Boot<'a> {
    pub cloud: Cloud,
    pub run_id: &'a str,
    pub node: u32,
    /// host:port of the launcher's rendezvous.
    pub leader: &'a str,
    pub setup: &'a [String],
    pub token: &'a str,
}

/// How the machine reads its private IPv4 from its metadata service, in
/// sh (the endpoint variables are the clouds' SDK ones).
fn address_lines(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Aws => concat!(
            "imds=\"${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}\"\n",
            "imds_token=$(curl -fsS -X PUT \"$imds/latest/api/token\" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')\n",
            "addr=$(curl -fsS -H \"X-aws-ec2-metadata-token: $imds_token\" \"$imds/latest/meta-data/local-ipv4\")\n",
        ),
        Cloud::Gcp => concat!(
            "imds=\"http://${GCE_METADATA_HOST:-metadata.google.internal}\"\n",
            "addr=$(curl -fsS -H 'Metadata-Flavor: Google' \"$imds/computeMetadata/v1/instance/network-interfaces/0/ip\")\n",
        ),
        Cloud::Azure => "addr=$(curl -fsS -H 'Metadata: true' 'http://169.254.169.254/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress?api-version=2021-02-01&format=text')\n",
    }
}

pub fn script(b: &Boot) -> String {
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!(
        "# ringmaster node agent: run {}, node {}. Written by ringmaster; see docs/aws.md.\n",
        b.run_id, b.node
    ));
    s.push_str("set -euo pipefail\numask 077\n");
    s.push_str("home=\"${RINGMASTER_HOME:-/var/lib/ringmaster}\"\nmkdir -p \"$home/logs\"\n");
    s.push_str(address_lines(b.cloud));
    s.push_str("# The job's setup (provider.setup).\n");
    for line in b.setup {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!(
        "printf '%s' {} > \"$home/agent-token\"\n",
        crate::process::quote(b.token)
    ));
    s.push_str(&format!(
        "ringmaster agent --leader {} --node {} --token-file \"$home/agent-token\" --addr \"$addr\" --log-dir \"$home/logs\" || true\n",
        crate::process::quote(b.leader),
        b.node
    ));
    s.push_str("# The run is over, this node was replaced, or the launcher is gone: power off;\n# the machine is deleted on shutdown.\n");
    s.push_str("${RINGMASTER_POWEROFF:-poweroff}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cloud_reads_its_own_metadata_and_the_token_is_quoted() {
        for (cloud, marker) in [
            (Cloud::Aws, "latest/meta-data/local-ipv4"),
            (Cloud::Gcp, "Metadata-Flavor: Google"),
            (Cloud::Azure, "Metadata: true"),
        ] {
            let setup = vec!["module load cuda".to_string()];
            let s = script(&Boot {
                cloud,
                run_id: "r",
                node: 3,
                leader: "10.0.0.5:29400",
                setup: &setup,
                token: "a'b",
            });
            assert!(s.contains(marker), "{cloud:?}");
            assert!(s.contains("printf '%s' 'a'\\''b' > \"$home/agent-token\""));
            assert!(s.contains("\nmodule load cuda\n"));
            assert!(s.contains("--node 3 "));
            assert!(s.ends_with("${RINGMASTER_POWEROFF:-poweroff}\n"));
        }
    }
}
