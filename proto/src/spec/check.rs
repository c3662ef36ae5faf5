//! The semantic checks `compile` runs after the strict parse: one function
//! per section of the spec, every problem collected with its JSON path.

use super::*;

pub(super) struct Checker<'a> {
    issues: &'a mut Vec<SpecIssue>,
}

impl Checker<'_> {
    fn fail(&mut self, path: &str, msg: String) {
        self.issues.push(SpecIssue::new(path, msg));
    }
    fn at_least<T: PartialOrd + fmt::Display + Copy>(&mut self, path: &str, v: T, min: T) {
        if v < min {
            self.fail(path, format!("must be >= {min}, got {v}"));
        }
    }
    fn at_most<T: PartialOrd + fmt::Display + Copy>(&mut self, path: &str, v: T, max: T) {
        if v > max {
            self.fail(path, format!("must be <= {max}, got {v}"));
        }
    }
    fn positive(&mut self, path: &str, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.fail(path, format!("must be a positive number, got {v}"));
        }
    }
    /// A duration in seconds: positive (or >= 0 with `zero_ok`) and at
    /// most MAX_SECONDS, so every timer built from it is representable.
    fn seconds(&mut self, path: &str, v: f64, zero_ok: bool) {
        let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
        if !(v.is_finite() && low_ok) {
            let want = if zero_ok { ">= 0" } else { "a positive number" };
            self.fail(path, format!("must be {want}, got {v}"));
        } else if v > MAX_SECONDS {
            self.fail(
                path,
                format!("must be at most {MAX_SECONDS} s (a year), got {v}"),
            );
        }
    }
}

/// The longest duration a spec may give (365 days): timers, deadlines and
/// sums of them stay far from the limits of the clock types.
pub const MAX_SECONDS: f64 = 31_536_000.0;

/// The largest world a spec may ask for. The launcher has been measured
/// to 8,192 ranks on a 2-core machine (docs/benchmarks.md, "Scale");
/// past that, its open-file limit is the first wall (two connections
/// per rank).
const MAX_WORLD: u64 = 65_536;
const MAX_GEMM_BYTES: u64 = 16 << 30;

/// The longest job name: the run folder's name adds a time stamp and a
/// random suffix, and a file name has at most 255 bytes.
pub const MAX_NAME_LEN: usize = 200;

/// The rules for a job's name, which also names run folders (and so for
/// `--run-id`): letters, digits, '-', '_', '.', not "." or "..", at most
/// MAX_NAME_LEN characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || "-_.".contains(*ch)))
    {
        return Err(format!(
            "may hold only letters, digits, '-', '_', '.'; found {bad:?} in {name:?}"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("must name a folder, not {name:?}"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    Ok(())
}

pub(super) fn check(s: &JobSpec, issues: &mut Vec<SpecIssue>, warnings: &mut Vec<SpecIssue>) {
    let mut c = Checker { issues };
    if let Err(m) = check_name(&s.name) {
        c.fail("name", m);
    }

    check_resources(&mut c, s);
    check_provider(&mut c, s);
    check_workload(&mut c, s);
    check_collective(&mut c, s);
    check_checkpoint(&mut c, s, warnings);
    check_recovery(&mut c, s);
    check_observability(&mut c, s);
    check_capacity(&mut c, s);
    check_notices(&mut c, s);
    check_process(&mut c, s);
}

/// Resources: the world's shape and the accelerator's name.
pub(super) fn check_resources(c: &mut Checker, s: &JobSpec) {
    let r = &s.resources;
    c.at_least("resources.nodes", r.nodes, 1);
    c.at_least("resources.devices_per_node", r.devices_per_node, 1);
    let world = r.nodes as u64 * r.devices_per_node as u64;
    if r.nodes >= 1 && r.devices_per_node >= 1 && world > MAX_WORLD {
        c.fail(
            "resources",
            format!("world size {world} (nodes x devices_per_node) exceeds {MAX_WORLD}"),
        );
    }
    let acc = r.accelerator.trim();
    if acc.is_empty() {
        c.fail(
            "resources.accelerator",
            "must not be empty (\"cpu\", \"auto\" or a GPU model)".into(),
        );
    } else if acc != r.accelerator || acc.chars().any(|ch| ch.is_whitespace()) {
        c.fail(
            "resources.accelerator",
            format!("must not contain spaces, got {:?}", r.accelerator),
        );
    } else if !is_accelerator_name(acc) {
        c.fail(
            "resources.accelerator",
            format!("must be \"cpu\", \"auto\", \"cuda\" or a GPU model (H100, A10G, L40S, ...), got {acc:?}"),
        );
    }
}

/// "cpu", "auto", "cuda", "gpu", or what a GPU model's name looks like:
/// letters, digits, '-' and '_', with a digit in it (H100, A10G, L40S,
/// RTX4090, MI300X).
fn is_accelerator_name(acc: &str) -> bool {
    ["cpu", "auto", "cuda", "gpu"]
        .iter()
        .any(|w| acc.eq_ignore_ascii_case(w))
        || (acc.bytes().any(|b| b.is_ascii_digit())
            && acc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

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

/// Workload: each kind's sizes.
pub(super) fn check_workload(c: &mut Checker, s: &JobSpec) {
    let r = &s.resources;
    match &s.workload {
        Workload::Gemm(g) => {
            c.at_least("workload.m", g.m, 1);
            c.at_least("workload.n", g.n, 1);
            c.at_least("workload.k", g.k, 1);
            c.at_least("workload.iterations", g.iterations, 1);
            if g.dtype.gpu_only() && is_cpu_accelerator(&r.accelerator) {
                c.fail("workload.dtype", format!("{} runs only on a GPU; set resources.accelerator to \"cuda\" (or a GPU model), or use f32/f64", g.dtype.name()));
            }
            if g.dtype == Dtype::F64
                && !is_cpu_accelerator(&r.accelerator)
                && !r.accelerator.eq_ignore_ascii_case("auto")
            {
                c.fail(
                    "workload.dtype",
                    "f64 GEMM runs only on the CPU; on a GPU use f32, tf32, bf16 or f16".into(),
                );
            }
            let bytes = (g.m.saturating_mul(g.k))
                .saturating_add(g.k.saturating_mul(g.n))
                .saturating_add(g.m.saturating_mul(g.n))
                .saturating_mul(g.dtype.size_bytes());
            if bytes > MAX_GEMM_BYTES {
                c.fail("workload", format!("matrices need {bytes} bytes per worker, more than the {MAX_GEMM_BYTES} allowed"));
            }
        }
        Workload::Allreduce(a) => {
            c.at_least("workload.min_bytes", a.min_bytes, 4);
            c.at_most("workload.max_bytes", a.max_bytes, 4 << 30);
            if a.min_bytes > a.max_bytes {
                c.fail(
                    "workload.max_bytes",
                    format!(
                        "must be >= min_bytes ({}), got {}",
                        a.min_bytes, a.max_bytes
                    ),
                );
            }
            c.at_least("workload.step_factor", a.step_factor, 2);
            c.at_least("workload.iterations", a.iterations, 1);
        }
        Workload::Train(t) => {
            c.at_least("workload.steps", t.steps, 1);
            c.at_least("workload.input_dim", t.input_dim, 1);
            c.at_least("workload.hidden", t.hidden, 1);
            c.at_least("workload.output_dim", t.output_dim, 1);
            c.at_least("workload.layers", t.layers, 2);
            c.at_most("workload.layers", t.layers, 64);
            c.at_least("workload.batch_per_rank", t.batch_per_rank, 1);
            if let Some(g) = t.global_batch {
                let world = r.nodes.saturating_mul(r.devices_per_node) as u64;
                let b = t.batch_per_rank.max(1);
                if g == 0 || g % b != 0 {
                    c.fail(
                        "workload.global_batch",
                        format!("must be a multiple of workload.batch_per_rank ({b}), got {g}"),
                    );
                } else if g / b < world {
                    c.fail(
                        "workload.global_batch",
                        format!(
                            "{g} rows are {} block(s) of batch_per_rank {b}: fewer than the {world} ranks (each trains at least one block)",
                            g / b
                        ),
                    );
                } else if g / b != world && !["cpu", "auto"].contains(&r.accelerator.as_str()) {
                    c.fail(
                        "workload.global_batch",
                        format!(
                            "on a GPU each rank trains one block a step: set it to batch_per_rank x ranks ({}), or leave it unset",
                            b * world
                        ),
                    );
                }
            }
            c.at_least("workload.log_every", t.log_every, 1);
            c.positive("workload.lr", t.lr);
            if !(t.pace_ms.is_finite() && (0.0..=60_000.0).contains(&t.pace_ms)) {
                c.fail(
                    "workload.pace_ms",
                    format!("must be in [0, 60000], got {}", t.pace_ms),
                );
            }
            if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
                c.fail(
                    "workload.momentum",
                    format!("must be in [0, 1), got {}", t.momentum),
                );
            }
            for (p, v) in [
                ("workload.input_dim", t.input_dim),
                ("workload.hidden", t.hidden),
                ("workload.output_dim", t.output_dim),
                ("workload.batch_per_rank", t.batch_per_rank),
            ] {
                c.at_most(p, v, 1 << 16);
            }
        }
        Workload::Command(cmd) => {
            if cmd.argv.is_empty() {
                c.fail(
                    "workload.argv",
                    "must name a program to run (e.g. [\"python\", \"train.py\"])".into(),
                );
            } else if cmd.argv[0].is_empty() {
                c.fail("workload.argv[0]", "must not be empty".into());
            }
            if let Some(cwd) = &cmd.cwd {
                if cwd.is_empty() {
                    c.fail("workload.cwd", "must not be empty when given".into());
                }
            }
        }
    }
}

/// Collective: timeouts and buffer sizes.
pub(super) fn check_collective(c: &mut Checker, s: &JobSpec) {
    let col = &s.collective;
    if col.backend == Backend::Nccl && is_cpu_accelerator(&s.resources.accelerator) {
        c.fail(
            "collective.backend",
            "\"nccl\" needs GPUs; set resources.accelerator to \"cuda\" (or a GPU model) or use \"tcp\"".into(),
        );
    }
    c.seconds("collective.timeout_s", col.timeout_s, false);
    c.at_least("collective.chunk_bytes", col.chunk_bytes, 4096);
    c.at_most("collective.chunk_bytes", col.chunk_bytes, 64 << 20);
    c.at_least("collective.slice_bytes", col.slice_bytes, 4096);
    c.at_least(
        "collective.socket_buffer_bytes",
        col.socket_buffer_bytes,
        64 << 10,
    );
    c.at_most(
        "collective.socket_buffer_bytes",
        col.socket_buffer_bytes,
        256 << 20,
    );
    c.at_least("collective.shm_chunk_bytes", col.shm_chunk_bytes, 4096);
    c.at_most("collective.shm_chunk_bytes", col.shm_chunk_bytes, 256 << 20);
    if !col.shm_chunk_bytes.is_multiple_of(8) {
        c.fail(
            "collective.shm_chunk_bytes",
            format!("{} is not a multiple of 8", col.shm_chunk_bytes),
        );
    }
}

/// Checkpoint: the folder, what is kept, which workloads checkpoint.
pub(super) fn check_checkpoint(c: &mut Checker, s: &JobSpec, warnings: &mut Vec<SpecIssue>) {
    let ck = &s.checkpoint;
    if let Some(dir) = &ck.dir {
        if dir.is_empty() {
            c.fail("checkpoint.dir", "must not be empty when given".into());
        }
    }
    c.at_least("checkpoint.keep", ck.keep, 1);
    if ck.every_steps > 0 && ck.dir.is_none() {
        c.fail(
            "checkpoint.dir",
            format!(
                "must be set when checkpoint.every_steps is {}",
                ck.every_steps
            ),
        );
    }
    if (ck.dir.is_some() || ck.every_steps > 0)
        && !matches!(s.workload, Workload::Train(_) | Workload::Command(_))
    {
        warnings.push(SpecIssue::new(
            "checkpoint",
            format!(
                "only the train and command workloads checkpoint; ignored for {}",
                s.workload.kind()
            ),
        ));
    }
}

/// Observability: the metrics address must be an IP address and a port.
pub(super) fn check_observability(c: &mut Checker, s: &JobSpec) {
    if let Some(a) = &s.observability.metrics_addr {
        if a.parse::<std::net::SocketAddr>().is_err() {
            c.fail(
                "observability.metrics_addr",
                format!("must be an IP address and port, e.g. \"127.0.0.1:9400\", got {a:?}"),
            );
        }
    }
}

/// Recovery and preflight: budgets, timeouts, the slow-node rule.
pub(super) fn check_recovery(c: &mut Checker, s: &JobSpec) {
    let rc = &s.recovery;
    let pf = &s.preflight;
    if !(pf.min_ratio > 0.0 && pf.min_ratio <= 1.0) {
        c.fail(
            "preflight.min_ratio",
            format!("must be in (0, 1], got {}", pf.min_ratio),
        );
    }
    c.seconds(
        "recovery.heartbeat_interval_s",
        rc.heartbeat_interval_s,
        false,
    );
    c.seconds(
        "recovery.heartbeat_timeout_s",
        rc.heartbeat_timeout_s,
        false,
    );
    c.seconds("recovery.hang_timeout_s", rc.hang_timeout_s, false);
    c.seconds(
        "recovery.rendezvous_timeout_s",
        rc.rendezvous_timeout_s,
        false,
    );
    c.seconds("recovery.notice_grace_s", rc.notice_grace_s, false);
    c.seconds("recovery.grace_period_s", rc.grace_period_s, true);
    if rc.heartbeat_interval_s.is_finite()
        && rc.heartbeat_timeout_s.is_finite()
        && rc.heartbeat_timeout_s < 2.0 * rc.heartbeat_interval_s
    {
        c.fail(
            "recovery.heartbeat_timeout_s",
            format!(
                "must be at least twice heartbeat_interval_s ({}), got {}",
                rc.heartbeat_interval_s, rc.heartbeat_timeout_s
            ),
        );
    }
    c.at_most("recovery.max_restarts", rc.max_restarts, 1000);
    if let Some(n) = rc.max_infra_restarts {
        c.at_most("recovery.max_infra_restarts", n, 1000);
    }
}

/// Capacity: what the planner may buy.
pub(super) fn check_capacity(c: &mut Checker, s: &JobSpec) {
    if let Some(cap) = &s.capacity {
        if !["any", "rdma", "infiniband"].contains(&cap.interconnect.as_str()) {
            c.fail(
                "capacity.interconnect",
                format!(
                    "must be any, rdma or infiniband, got {:?}",
                    cap.interconnect
                ),
            );
        }
        c.positive("capacity.expected_hours", cap.expected_hours);
        if let Some(h) = cap.fleet_hours_per_year {
            if !(h.is_finite() && h > 0.0 && h <= 8760.0) {
                c.fail(
                    "capacity.fleet_hours_per_year",
                    format!("must be hours in a year, in (0, 8760], got {h}"),
                );
            }
        }
        c.positive(
            "capacity.checkpoint_every_minutes",
            cap.checkpoint_every_minutes,
        );
        if !(cap.recovery_minutes.is_finite() && cap.recovery_minutes >= 0.0) {
            c.fail(
                "capacity.recovery_minutes",
                format!("must be >= 0, got {}", cap.recovery_minutes),
            );
        }
        if let Some(p) = cap.max_price_per_hour {
            c.positive("capacity.max_price_per_hour", p);
        }
        if let Some(m) = cap.min_gpu_memory_gb {
            c.positive("capacity.min_gpu_memory_gb", m);
        }
        if let Some(v) = cap.step_tflop {
            c.positive("capacity.step_tflop", v);
        }
        if let Some(v) = cap.gradient_gb {
            c.positive("capacity.gradient_gb", v);
        }
        if !(cap.mfu.is_finite() && cap.mfu > 0.0 && cap.mfu <= 1.0) {
            c.fail(
                "capacity.mfu",
                format!("must be in (0, 1], got {}", cap.mfu),
            );
        }
        c.at_least("capacity.max_nodes", cap.max_nodes, 1);
        c.at_most("capacity.max_nodes", cap.max_nodes, 1024);
        for (i, o) in cap.owned.iter().enumerate() {
            let at = format!("capacity.owned[{i}]");
            if o.instance_type.trim().is_empty() {
                c.fail(
                    &format!("{at}.instance_type"),
                    "must name an instance type".into(),
                );
            }
            c.at_least(&format!("{at}.nodes"), o.nodes, 1);
            if let Some(Err(e)) = o.until_time() {
                c.fail(&format!("{at}.until"), e);
            }
        }
    }
}

/// Notices: the watchers and their sources.
pub(super) fn check_notices(c: &mut Checker, s: &JobSpec) {
    let nt = &s.notices;
    if let Some(sig) = &nt.program_signal {
        if sig != "none" && !PROGRAM_SIGNALS.iter().any(|(n, _)| n == sig) {
            c.fail(
                "notices.program_signal",
                format!("must be SIGTERM, SIGUSR1, SIGUSR2, SIGINT or none, got {sig:?}"),
            );
        }
        if !matches!(s.workload, Workload::Command(_)) {
            c.fail(
                "notices.program_signal",
                format!(
                    "is for command jobs (a {} job agrees on its stop step in band)",
                    s.workload.kind()
                ),
            );
        }
    }
    if let Some(ms) = nt.poll_interval_ms {
        c.at_least("notices.poll_interval_ms", ms, 50);
        c.at_most("notices.poll_interval_ms", ms, 60_000);
    }
    let mut clouds = Vec::new();
    for (i, src) in nt.watch.iter().enumerate() {
        if clouds.contains(&src.cloud()) {
            c.fail(
                &format!("notices.watch[{i}].cloud"),
                format!("{} is listed twice", src.cloud().name()),
            );
        }
        clouds.push(src.cloud());
        if let Some(e) = src.endpoint() {
            let rest = e.strip_prefix("http://").unwrap_or("");
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                c.fail(
                    &format!("notices.watch[{i}].endpoint"),
                    format!(
                        "must be a plain http:// base URL like http://169.254.169.254, got {e:?}"
                    ),
                );
            }
        }
        if let NoticeSource::Azure {
            vm_name: Some(n), ..
        } = src
        {
            if n.is_empty() {
                c.fail(
                    &format!("notices.watch[{i}].vm_name"),
                    "must not be empty".into(),
                );
            }
        }
    }
}

/// The workers' process: env, log folder, threads.
pub(super) fn check_process(c: &mut Checker, s: &JobSpec) {
    for k in s.env.keys() {
        let path = format!("env.{k}");
        if k.is_empty()
            || k.contains('=')
            || k.contains('\0')
            || k.chars().next().is_some_and(|ch| ch.is_ascii_digit())
        {
            c.fail(&path, "is not a valid environment variable name".into());
        } else if crate::contract::WorkerContract::reserved().contains(&k.as_str()) {
            c.fail(
                &path,
                "is set by ringmaster for every worker and cannot be overridden".into(),
            );
        }
    }
    for (k, v) in &s.env {
        if v.contains('\0') {
            c.fail(
                &format!("env.{k}"),
                "contains a NUL byte, which no environment variable can hold".into(),
            );
        }
    }
    if s.log_dir.is_empty() {
        c.fail("log_dir", "must not be empty".into());
    }
    if let Some(t) = s.threads_per_worker {
        c.at_least("threads_per_worker", t, 1);
        c.at_most("threads_per_worker", t, 1024);
    }
}
