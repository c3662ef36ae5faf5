//! What ringmaster asks EC2 for: the RunInstances parameters of one node
//! on one rung of the ladder, and the user data that makes the instance a
//! node of the run. Pure functions: `plan` prints them, the tests read
//! them, the provider sends them.

use super::ladder::Rung;
use proto::report::Buy;

/// The tag every instance of a run carries (its value: the run id); `down`
/// and the end of a run find the run's instances by it.
pub const RUN_TAG: &str = "ringmaster:run";
pub const NODE_TAG: &str = "ringmaster:node";
pub const JOB_TAG: &str = "ringmaster:job";

/// What stays the same for every node of a run.
#[derive(Debug, Clone)]
pub struct Template {
    pub run_id: String,
    pub job: String,
    pub instance_type: String,
    pub image_id: Option<String>,
    pub launch_template: Option<String>,
    pub launch_template_version: Option<String>,
    pub subnets: std::collections::BTreeMap<String, String>,
    pub security_group_ids: Vec<String>,
    pub iam_instance_profile: Option<String>,
    pub key_name: Option<String>,
    pub max_spot_price: Option<f64>,
    pub tags: std::collections::BTreeMap<String, String>,
    /// host:port of the launcher's rendezvous, as the instances reach it.
    pub leader: String,
    pub setup: Vec<String>,
}

/// One request: node `node`'s `generation`-th instance on `rung`.
#[derive(Debug, Clone)]
pub struct NodeRequest<'a> {
    pub node: u32,
    pub generation: u32,
    pub rung: &'a Rung,
    /// The node's single-use agent token.
    pub agent_token: &'a str,
    pub dry_run: bool,
}

/// RunInstances' parameters (the Query API's names).
pub fn run_instances_params(t: &Template, r: &NodeRequest) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| p.push((k.to_string(), v));
    put("MinCount", "1".into());
    put("MaxCount", "1".into());
    put("InstanceType", t.instance_type.clone());
    if let Some(i) = &t.image_id {
        put("ImageId", i.clone());
    }
    if let Some(lt) = &t.launch_template {
        let key = if lt.starts_with("lt-") {
            "LaunchTemplate.LaunchTemplateId"
        } else {
            "LaunchTemplate.LaunchTemplateName"
        };
        put(key, lt.clone());
        put(
            "LaunchTemplate.Version",
            t.launch_template_version
                .clone()
                .unwrap_or_else(|| "$Default".into()),
        );
    }
    put("Placement.AvailabilityZone", r.rung.zone.clone());
    if let Some(s) = t.subnets.get(&r.rung.zone) {
        put("SubnetId", s.clone());
    }
    for (i, sg) in t.security_group_ids.iter().enumerate() {
        put(&format!("SecurityGroupId.{}", i + 1), sg.clone());
    }
    if let Some(profile) = &t.iam_instance_profile {
        put("IamInstanceProfile.Name", profile.clone());
    }
    if let Some(k) = &t.key_name {
        put("KeyName", k.clone());
    }
    if r.rung.buy == Buy::Spot {
        put("InstanceMarketOptions.MarketType", "spot".into());
        put(
            "InstanceMarketOptions.SpotOptions.SpotInstanceType",
            "one-time".into(),
        );
        put(
            "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior",
            "terminate".into(),
        );
        if let Some(m) = t.max_spot_price {
            put("InstanceMarketOptions.SpotOptions.MaxPrice", format!("{m}"));
        }
    }
    if r.rung.buy == Buy::CapacityBlock {
        put("InstanceMarketOptions.MarketType", "capacity-block".into());
    }
    if let Some(cr) = &r.rung.reservation {
        put(
            "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId",
            cr.clone(),
        );
    }
    // IMDSv2 only, one hop: containers on the instance cannot reach the
    // metadata service (and the user data in it).
    put("MetadataOptions.HttpTokens", "required".into());
    put("MetadataOptions.HttpPutResponseHopLimit", "1".into());
    put("MetadataOptions.HttpEndpoint", "enabled".into());
    // Terminate, not stop, when the agent shuts the machine down.
    put("InstanceInitiatedShutdownBehavior", "terminate".into());
    put("TagSpecification.1.ResourceType", "instance".into());
    let mut tags: Vec<(String, String)> = vec![
        (RUN_TAG.into(), t.run_id.clone()),
        (NODE_TAG.into(), r.node.to_string()),
        (JOB_TAG.into(), t.job.clone()),
        (
            "Name".into(),
            format!("ringmaster-{}-node-{}", t.run_id, r.node),
        ),
    ];
    tags.extend(t.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (i, (k, v)) in tags.iter().enumerate() {
        put(&format!("TagSpecification.1.Tag.{}.Key", i + 1), k.clone());
        put(
            &format!("TagSpecification.1.Tag.{}.Value", i + 1),
            v.clone(),
        );
    }
    // Idempotent: a retried call does not start a second instance.
    put(
        "ClientToken",
        client_token(&t.run_id, r.node, r.generation, &r.rung.zone, r.rung.buy),
    );
    {
        use base64::Engine;
        put(
            "UserData",
            base64::engine::general_purpose::STANDARD.encode(user_data(t, r.node, r.agent_token)),
        );
    }
    if r.dry_run {
        put("DryRun", "true".into());
    }
    p
}

/// At most 64 ASCII characters, unique per node, instance and rung.
fn client_token(run: &str, node: u32, generation: u32, zone: &str, buy: Buy) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{run}/{node}/{generation}/{zone}/{}", buy.name()));
    h.iter().take(24).map(|b| format!("{b:02x}")).collect()
}

/// The user data: the boot script (`bootstrap`) for EC2.
pub fn user_data(t: &Template, node: u32, agent_token: &str) -> String {
    crate::bootstrap::script(&crate::bootstrap::Boot {
        cloud: proto::spec::Cloud::Aws,
        run_id: &t.run_id,
        node,
        leader: &t.leader,
        setup: &t.setup,
        token: agent_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            run_id: "r1".into(),
            job: "j".into(),
            instance_type: "p5.48xlarge".into(),
            image_id: Some("ami-1".into()),
            launch_template: None,
            launch_template_version: None,
            subnets: [("us-east-1b".to_string(), "subnet-b".to_string())].into(),
            security_group_ids: vec!["sg-1".into()],
            iam_instance_profile: None,
            key_name: None,
            max_spot_price: Some(40.0),
            tags: [("team".to_string(), "ml".to_string())].into(),
            leader: "10.0.0.5:29400".into(),
            setup: vec!["source /opt/venv/bin/activate".into()],
        }
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
        p.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn spot_request_in_a_zone_with_tags_imdsv2_and_user_data() {
        let t = template();
        let rung = Rung {
            zone: "us-east-1b".into(),
            buy: Buy::Spot,
            reservation: None,
        };
        let p = run_instances_params(
            &t,
            &NodeRequest {
                node: 1,
                generation: 0,
                rung: &rung,
                agent_token: "tok'en",
                dry_run: false,
            },
        );
        assert_eq!(get(&p, "InstanceMarketOptions.MarketType"), Some("spot"));
        assert_eq!(
            get(&p, "InstanceMarketOptions.SpotOptions.MaxPrice"),
            Some("40")
        );
        assert_eq!(get(&p, "Placement.AvailabilityZone"), Some("us-east-1b"));
        assert_eq!(get(&p, "SubnetId"), Some("subnet-b"));
        assert_eq!(get(&p, "MetadataOptions.HttpTokens"), Some("required"));
        assert_eq!(get(&p, "TagSpecification.1.Tag.1.Key"), Some(RUN_TAG));
        assert_eq!(get(&p, "TagSpecification.1.Tag.1.Value"), Some("r1"));
        assert_eq!(get(&p, "TagSpecification.1.Tag.5.Key"), Some("team"));
        assert_eq!(get(&p, "DryRun"), None);
        assert!(get(&p, "ClientToken").unwrap().len() <= 64);
        use base64::Engine;
        let ud = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(get(&p, "UserData").unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(
            ud.contains("\nringmaster agent --leader '10.0.0.5:29400' --node 1"),
            "{ud}"
        );
        assert!(ud.contains(r"printf '%s' 'tok'\''en'"), "{ud}");
        assert!(ud.contains("source /opt/venv/bin/activate\n"));
        assert!(ud.ends_with("${RINGMASTER_POWEROFF:-poweroff}\n"), "{ud}");
    }

    #[test]
    fn on_demand_in_a_reservation_has_no_spot_options() {
        let t = template();
        let rung = Rung {
            zone: "us-east-1a".into(),
            buy: Buy::OnDemand,
            reservation: Some("cr-9".into()),
        };
        let p = run_instances_params(
            &t,
            &NodeRequest {
                node: 0,
                generation: 2,
                rung: &rung,
                agent_token: "t",
                dry_run: true,
            },
        );
        assert_eq!(get(&p, "InstanceMarketOptions.MarketType"), None);
        assert_eq!(
            get(
                &p,
                "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"
            ),
            Some("cr-9")
        );
        assert_eq!(get(&p, "SubnetId"), None);
        assert_eq!(get(&p, "DryRun"), Some("true"));
        // A Capacity Block is launched into with its own market type.
        let rung = Rung {
            buy: Buy::CapacityBlock,
            ..rung
        };
        let p = run_instances_params(
            &t,
            &NodeRequest {
                node: 0,
                generation: 2,
                rung: &rung,
                agent_token: "t",
                dry_run: false,
            },
        );
        assert_eq!(
            get(&p, "InstanceMarketOptions.MarketType"),
            Some("capacity-block")
        );
        assert_eq!(
            get(&p, "InstanceMarketOptions.SpotOptions.SpotInstanceType"),
            None
        );
    }
}
