//! The providers' fields: each provider's own checks, and which fields
//! belong to which provider.

use super::*;

/// The simulator's fields: deadline mode, its clock, the market, the
/// zones and the scripted preemptions.
pub(super) fn check_sim(c: &mut Checker, s: &JobSpec) {
    let r = &s.resources;
    let Provider::Sim {
        cloud,
        provisioning_delay_s,
        notice_window_s,
        preemptions,
        market,
        random_preemptions,
        offer,
        time_scale,
        zones,
        capacity_wait_s,
        deadline,
        ..
    } = &s.provider
    else {
        return;
    };
    if let Some(d) = deadline {
        c.seconds("provider.deadline.at_s", d.at_s, false);
        if let Some(r) = d.restart_cost_s {
            c.seconds("provider.deadline.restart_cost_s", r, false);
        }
        if market.as_deref().and_then(SimMarket::parse) == Some(SimMarket::OnDemand) {
            c.fail(
                "provider.deadline",
                "needs a spot market to move off (provider.market is on-demand)".into(),
            );
        }
    }
    if !(time_scale.is_finite() && (1e-3..=1e7).contains(time_scale)) {
        c.fail(
            "provider.time_scale",
            format!("must be in [0.001, 10000000], got {time_scale}"),
        );
    }
    c.seconds("provider.capacity_wait_s", *capacity_wait_s, false);
    let mut names = std::collections::BTreeSet::new();
    for (i, z) in zones.iter().enumerate() {
        if z.name.is_empty() || !names.insert(z.name.as_str()) {
            c.fail(
                &format!("provider.zones[{i}].name"),
                format!("must be a non-empty name used once, got {:?}", z.name),
            );
        }
    }
    if let Some(rp) = random_preemptions {
        match rp.rate_per_month {
            Some(r) => c.positive("provider.random_preemptions.rate_per_month", r),
            None if offer.is_none() => c.fail(
                "provider.random_preemptions.rate_per_month",
                "is needed when provider.offer (whose interruption bracket gives the rate) is not set".into(),
            ),
            None => {}
        }
    }
    if let Some(m) = market {
        if SimMarket::parse(m).is_none() {
            c.fail(
                "provider.market",
                format!("must be spot, on-demand or spot-then-on-demand, got {m:?}"),
            );
        }
    }
    if Cloud::parse(cloud).is_none() {
        c.fail(
            "provider.cloud",
            format!("must be aws, gcp or azure, got {cloud:?}"),
        );
    }
    c.seconds("provider.provisioning_delay_s", *provisioning_delay_s, true);
    if let Some(w) = notice_window_s {
        c.seconds("provider.notice_window_s", *w, false);
    }
    for (i, p) in preemptions.iter().enumerate() {
        if p.node >= r.nodes {
            c.fail(
                &format!("provider.preemptions[{i}].node"),
                format!("must be < resources.nodes ({}), got {}", r.nodes, p.node),
            );
        }
        c.seconds(&format!("provider.preemptions[{i}].at_s"), p.at_s, true);
    }
}

/// EC2's fields: the instance type, where it runs, the image, the
/// rendezvous the instances reach, the market, the waits.
pub(super) fn check_aws(c: &mut Checker, s: &JobSpec) {
    let Provider::Aws {
        instance_type,
        zones,
        market,
        image_id,
        launch_template,
        subnets,
        capacity_reservation_id,
        max_spot_price,
        rendezvous_host,
        boot_timeout_s,
        capacity_wait_s,
        capacity_retry_s,
        tags,
        region,
        ..
    } = &s.provider
    else {
        return;
    };
    let word = |v: &str| !v.is_empty() && !v.contains(char::is_whitespace);
    if !word(instance_type) || !instance_type.contains('.') {
        c.fail(
            "provider.instance_type",
            format!("must be an EC2 instance type such as p5.48xlarge, got {instance_type:?}"),
        );
    }
    if let Some(r) = region {
        if !word(r) {
            c.fail(
                "provider.region",
                format!("must be a region name such as us-east-1, got {r:?}"),
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, z) in zones.iter().enumerate() {
        if !word(z) || !seen.insert(z.as_str()) {
            c.fail(
                &format!("provider.zones[{i}]"),
                format!("must be an availability zone named once, got {z:?}"),
            );
        }
    }
    for z in subnets.keys() {
        if !zones.is_empty() && !zones.contains(z) {
            c.fail(
                &format!("provider.subnets.{z}"),
                format!("names a zone not in provider.zones ({})", zones.join(", ")),
            );
        }
    }
    match (image_id, launch_template) {
        (None, None) => c.fail(
            "provider.image_id",
            "an aws job needs an image (AMI) with ringmaster on it, or provider.launch_template"
                .into(),
        ),
        (Some(i), _) if !i.starts_with("ami-") => c.fail(
            "provider.image_id",
            format!("must be an AMI id (ami-...), got {i:?}"),
        ),
        _ => {}
    }
    if let Some(m) = market {
        if SimMarket::parse(m).is_none() {
            c.fail(
                "provider.market",
                format!("must be spot, on-demand or spot-then-on-demand, got {m:?}"),
            );
        }
    }
    if let Some(cr) = capacity_reservation_id {
        if !cr.starts_with("cr-") {
            c.fail(
                "provider.capacity_reservation_id",
                format!("must be a capacity reservation id (cr-...), got {cr:?}"),
            );
        }
        if market
            .as_deref()
            .and_then(SimMarket::parse)
            .unwrap_or(SimMarket::Spot)
            == SimMarket::Spot
        {
            c.fail(
                "provider.capacity_reservation_id",
                "a capacity reservation holds on-demand capacity: set provider.market to on-demand (or spot-then-on-demand)".into(),
            );
        }
    }
    if let Some(p) = max_spot_price {
        c.positive("provider.max_spot_price", *p);
    }
    if !word(rendezvous_host) {
        c.fail(
            "provider.rendezvous_host",
            format!(
                "must be the address the instances reach this launcher at, got {rendezvous_host:?}"
            ),
        );
    }
    c.seconds("provider.boot_timeout_s", *boot_timeout_s, false);
    c.seconds("provider.capacity_wait_s", *capacity_wait_s, false);
    c.seconds("provider.capacity_retry_s", *capacity_retry_s, false);
    for k in tags.keys() {
        if k.starts_with("ringmaster:") || k.starts_with("aws:") || k.is_empty() || k.len() > 128 {
            c.fail(
                &format!("provider.tags.{k}"),
                "tag keys must be 1-128 characters and not start with ringmaster: or aws: (those are set by ringmaster and AWS)".into(),
            );
        }
    }
}

/// GCP's and Azure's fields (their requests are built, not sent).
pub(super) fn check_request_only(c: &mut Checker, s: &JobSpec) {
    let word = |v: &str| !v.is_empty() && !v.contains(char::is_whitespace);
    let (words, zones, market): (Vec<(&str, &String)>, &Vec<String>, &Option<String>) = match &s
        .provider
    {
        Provider::Gcp {
            project,
            machine_type,
            zones,
            market,
            image,
            rendezvous_host,
            accelerator_type,
            accelerator_count,
            ..
        } => {
            if zones.is_empty() {
                c.fail("provider.zones", "must name at least one zone".into());
            }
            if accelerator_type.is_some() != accelerator_count.is_some() {
                c.fail(
                    "provider.accelerator_count",
                    "accelerator_type and accelerator_count go together".into(),
                );
            }
            (
                vec![
                    ("provider.project", project),
                    ("provider.machine_type", machine_type),
                    ("provider.image", image),
                    ("provider.rendezvous_host", rendezvous_host),
                ],
                zones,
                market,
            )
        }
        Provider::Azure {
            subscription_id,
            resource_group,
            location,
            vm_size,
            zones,
            market,
            max_price,
            image,
            subnet_id,
            admin_username,
            ssh_public_key,
            rendezvous_host,
            ..
        } => {
            if let Some(p) = max_price {
                if !(*p == -1.0 || (p.is_finite() && *p > 0.0)) {
                    c.fail(
                            "provider.max_price",
                            format!("must be USD per hour > 0, or -1 (up to the pay-as-you-go price), got {p}"),
                        );
                }
            }
            if !ssh_public_key.starts_with("ssh-") && !ssh_public_key.starts_with("ecdsa-") {
                c.fail(
                    "provider.ssh_public_key",
                    "must be an OpenSSH public key (ssh-ed25519 ..., ssh-rsa ...)".into(),
                );
            }
            if !image.starts_with('/') && image.split(':').count() != 4 {
                c.fail(
                        "provider.image",
                        format!("must be publisher:offer:sku:version or an image resource id, got {image:?}"),
                    );
            }
            if !subnet_id.starts_with("/subscriptions/") {
                c.fail(
                        "provider.subnet_id",
                        format!("must be a subnet resource id (/subscriptions/.../subnets/...), got {subnet_id:?}"),
                    );
            }
            (
                vec![
                    ("provider.subscription_id", subscription_id),
                    ("provider.resource_group", resource_group),
                    ("provider.location", location),
                    ("provider.vm_size", vm_size),
                    ("provider.admin_username", admin_username),
                    ("provider.rendezvous_host", rendezvous_host),
                ],
                zones,
                market,
            )
        }
        _ => return,
    };
    for (field, v) in words {
        if !word(v) {
            c.fail(field, format!("must be one word, got {v:?}"));
        }
    }
    for (i, z) in zones.iter().enumerate() {
        if !word(z) {
            c.fail(
                &format!("provider.zones[{i}]"),
                format!("must be a zone name, got {z:?}"),
            );
        }
    }
    if let Some(m) = market {
        if SimMarket::parse(m).is_none() {
            c.fail(
                "provider.market",
                format!("must be spot, on-demand or spot-then-on-demand, got {m:?}"),
            );
        }
    }
}

/// Slurm's fields: the time limit, the warning, partition/account words,
/// sbatch options, and the site's resource options.
pub(super) fn check_slurm(c: &mut Checker, s: &JobSpec) {
    let Provider::Slurm {
        time_limit,
        signal_grace_s,
        sbatch_args,
        partition,
        account,
        cpus_per_task,
        mem,
        mem_per_gpu,
        gpu_request,
        setup,
        ..
    } = &s.provider
    else {
        return;
    };
    if cpus_per_task == &Some(0) {
        c.fail("provider.cpus_per_task", "must be >= 1, got 0".into());
    }
    let size = |v: &str| {
        let digits = v.trim_end_matches(['K', 'M', 'G', 'T']);
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && v.len() - digits.len() <= 1
    };
    for (field, v) in [("provider.mem", mem), ("provider.mem_per_gpu", mem_per_gpu)] {
        if let Some(v) = v {
            if !size(v) {
                c.fail(
                    field,
                    format!("must be a size as sbatch takes it (\"64G\", \"500000M\"), got {v:?}"),
                );
            }
        }
    }
    if mem.is_some() && mem_per_gpu.is_some() {
        c.fail(
            "provider.mem_per_gpu",
            "sbatch takes --mem or --mem-per-gpu, not both".into(),
        );
    }
    if let Some(g) = gpu_request {
        if g != "gres" && g != "gpus-per-node" {
            c.fail(
                "provider.gpu_request",
                format!("must be \"gres\" or \"gpus-per-node\", got {g:?}"),
            );
        }
    }
    for (i, l) in setup.iter().enumerate() {
        if l.contains('\n') || l.contains('\0') {
            c.fail(&format!("provider.setup[{i}]"), "must be one line".into());
        }
    }
    if let Some(t) = time_limit {
        if !valid_slurm_time(t) {
            c.fail(
                "provider.time_limit",
                format!("must be minutes, MM:SS, HH:MM:SS, D-HH or D-HH:MM:SS, got {t:?}"),
            );
        }
    }
    if signal_grace_s == &Some(0) {
        c.fail("provider.signal_grace_s", "must be >= 1, got 0".into());
    }
    for (field, v) in [
        ("provider.partition", partition),
        ("provider.account", account),
    ] {
        if v.as_deref()
            .is_some_and(|v| v.is_empty() || v.contains(char::is_whitespace))
        {
            c.fail(
                field,
                format!("must be one word, got {:?}", v.as_deref().unwrap_or("")),
            );
        }
    }
    for (i, a) in sbatch_args.iter().enumerate() {
        if !a.starts_with("--") || a.contains('\n') {
            c.fail(
                &format!("provider.sbatch_args[{i}]"),
                format!("must be one long option (--name or --name=value), got {a:?}"),
            );
        }
    }
}

/// Kubernetes' fields: the image, names, and the pods' quantities,
/// placement objects and queue.
pub(super) fn check_kube(c: &mut Checker, s: &JobSpec) {
    let Provider::Kubernetes {
        image,
        namespace,
        checkpoint_pvc,
        queue,
        pod,
        ..
    } = &s.provider
    else {
        return;
    };
    // Kubernetes quantities: 16, 15500m, 64Gi, 1.5G.
    let quantity = |v: &str| {
        let num = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &v[num.len()..];
        !num.is_empty()
            && num.parse::<f64>().is_ok_and(|n| n > 0.0)
            && [
                "", "m", "k", "Ki", "M", "Mi", "G", "Gi", "T", "Ti", "P", "Pi",
            ]
            .contains(&unit)
    };
    for (field, v) in [
        ("provider.pod.cpu", &pod.cpu),
        ("provider.pod.memory", &pod.memory),
        ("provider.pod.shm_size", &pod.shm_size),
    ] {
        if let Some(v) = v {
            if !quantity(v) {
                c.fail(
                    field,
                    format!(
                        "must be a Kubernetes quantity (\"16\", \"500m\", \"64Gi\"), got {v:?}"
                    ),
                );
            }
        }
    }
    if let Some(t) = &pod.tolerations {
        for (i, x) in t.iter().enumerate() {
            if !x.is_object() {
                c.fail(
                    &format!("provider.pod.tolerations[{i}]"),
                    "must be a Kubernetes Toleration object".into(),
                );
            }
        }
    }
    if pod.affinity.as_ref().is_some_and(|a| !a.is_object()) {
        c.fail(
            "provider.pod.affinity",
            "must be a Kubernetes Affinity object".into(),
        );
    }
    for (field, v) in [
        ("provider.queue", queue),
        ("provider.pod.priority_class", &pod.priority_class),
        ("provider.pod.service_account", &pod.service_account),
    ] {
        if let Some(v) = v {
            if !is_dns_label(v) {
                c.fail(
                    field,
                    format!("must be a DNS label (a-z, 0-9, '-', at most 63), got {v:?}"),
                );
            }
        }
    }
    if image.trim().is_empty() || image.contains(char::is_whitespace) {
        c.fail(
            "provider.image",
            format!("must be an image reference, got {image:?}"),
        );
    }
    for (field, v) in [
        ("provider.namespace", namespace),
        ("provider.checkpoint_pvc", checkpoint_pvc),
    ] {
        if let Some(v) = v {
            if !is_dns_label(v) {
                c.fail(
                    field,
                    format!("must be a DNS label (a-z, 0-9, '-', at most 63), got {v:?}"),
                );
            }
        }
    }
}

/// Provider: its fields, and the local nodes' loopback addresses.
pub(super) fn check_provider(c: &mut Checker, s: &JobSpec) {
    let r = &s.resources;
    let first_address = match &s.provider {
        Provider::Local { first_address } => Some(first_address),
        Provider::Sim { first_address, .. } => {
            check_sim(c, s);
            Some(first_address)
        }
        Provider::Slurm { .. } => {
            check_slurm(c, s);
            None
        }
        Provider::Aws { .. } => {
            check_aws(c, s);
            None
        }
        Provider::Gcp { .. } | Provider::Azure { .. } => {
            check_request_only(c, s);
            None
        }
        Provider::Ssh { hostfile, .. } => {
            if hostfile.trim().is_empty() {
                c.fail("provider.hostfile", "must name a hostfile".into());
            }
            None
        }
        Provider::Kubernetes { .. } => {
            check_kube(c, s);
            None
        }
    };
    if let Some(first_address) = first_address {
        match first_address.parse::<std::net::Ipv4Addr>() {
            Ok(ip) if ip.is_loopback() => {
                // Node i is first_address + i, anywhere in 127/8 (a
                // thousand nodes need more than one last octet).
                let room =
                    u32::from(std::net::Ipv4Addr::new(127, 255, 255, 254)) - u32::from(ip) + 1;
                if r.nodes > room {
                    c.fail(
                        "resources.nodes",
                        format!("the local provider has loopback addresses for at most {room} nodes from {ip}, got {}", r.nodes),
                    );
                }
            }
            Ok(ip) => c.fail(
                "provider.first_address",
                format!("must be a loopback address (127.x.y.z), got {ip}"),
            ),
            Err(_) => c.fail(
                "provider.first_address",
                format!("must be an IPv4 address, got {first_address:?}"),
            ),
        }
    }
}
