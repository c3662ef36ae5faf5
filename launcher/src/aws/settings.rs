//! What an aws job asks EC2 for, without asking: the settings read from
//! the spec and the environment, `plan`'s lines and `run --dry-run`.

use super::ec2::{self, Ec2, ErrorClass};
use super::request::{self, NodeRequest, Template};
use super::{creds, ladder};
use crate::error::LaunchError;
use proto::report::Buy;
use proto::spec::{JobSpec, Provider, SimMarket};
use std::time::Duration;

/// What an aws job asks for, read from its spec and the environment
/// (region, endpoint) without calling EC2: `run`, `plan` and `--dry-run`
/// build their requests from it.
pub struct Settings {
    pub template: Template,
    pub zones: Vec<String>,
    pub market: SimMarket,
    pub region: String,
    pub endpoint: String,
    pub reservation_id: Option<String>,
    pub offer: Option<crate::capacity::Offer>,
    pub boot_timeout: Duration,
    pub capacity_wait: Duration,
    pub capacity_retry: Duration,
}

/// The settings of an aws job whose instances reach the launcher's
/// rendezvous on `port` (a number, or a placeholder for `plan`).
pub fn settings(spec: &JobSpec, run_id: &str, port: &str) -> Result<Settings, LaunchError> {
    let Provider::Aws {
        instance_type,
        region,
        zones,
        market,
        image_id,
        launch_template,
        launch_template_version,
        subnets,
        security_group_ids,
        iam_instance_profile,
        key_name,
        capacity_reservation_id,
        max_spot_price,
        rendezvous_host,
        setup,
        boot_timeout_s,
        capacity_wait_s,
        capacity_retry_s,
        tags,
        ..
    } = &spec.provider
    else {
        return Err(LaunchError::Internal("not an aws job".into()));
    };
    let issue = |f: &str, m: String| LaunchError::Config(vec![proto::SpecIssue::new(f, m)]);
    // The catalog's offers of this type (one per region it lists).
    let offers: Vec<_> =
        crate::capacity::parse_catalog(crate::capacity::BUILT_IN, "built-in catalog")
            .map(|c| c.offers)
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o.cloud == "aws" && &o.instance_type == instance_type)
            .collect();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let region = creds::region(
        &env,
        region.as_deref(),
        offers.first().map(|o| o.region.as_str()),
    )
    .ok_or_else(|| {
        issue(
            "provider.region",
            "no region: set provider.region or AWS_REGION".into(),
        )
    })?;
    let offer = offers.into_iter().find(|o| o.region == region);
    let zones = if zones.is_empty() {
        match &offer {
            Some(o) => o.zones.clone(),
            _ => {
                return Err(issue(
                    "provider.zones",
                    format!("{instance_type} in {region} is not in the built-in catalog: name the zones to use"),
                ))
            }
        }
    } else {
        zones.clone()
    };
    let endpoint = creds::endpoint(&env, &region);
    Ok(Settings {
        template: Template {
            run_id: run_id.to_string(),
            job: spec.name.clone(),
            instance_type: instance_type.clone(),
            image_id: image_id.clone(),
            launch_template: launch_template.clone(),
            launch_template_version: launch_template_version.clone(),
            subnets: subnets.clone(),
            security_group_ids: security_group_ids.clone(),
            iam_instance_profile: iam_instance_profile.clone(),
            key_name: key_name.clone(),
            max_spot_price: *max_spot_price,
            tags: tags.clone(),
            leader: format!("{rendezvous_host}:{port}"),
            setup: setup.clone(),
        },
        zones,
        market: market
            .as_deref()
            .and_then(SimMarket::parse)
            .unwrap_or(SimMarket::Spot),
        region,
        endpoint,
        reservation_id: capacity_reservation_id.clone(),
        offer,
        boot_timeout: Duration::from_secs_f64(*boot_timeout_s),
        capacity_wait: Duration::from_secs_f64(*capacity_wait_s),
        capacity_retry: Duration::from_secs_f64(*capacity_retry_s),
    })
}

/// What `plan` shows of an aws job: where it asks, in which order, and
/// node 0's first request in full (its token shown as a placeholder).
pub fn plan_lines(spec: &JobSpec) -> Result<Vec<String>, LaunchError> {
    let port = match &spec.provider {
        Provider::Aws {
            rendezvous_port: 0, ..
        } => "<port>".to_string(),
        Provider::Aws {
            rendezvous_port, ..
        } => rendezvous_port.to_string(),
        _ => return Ok(Vec::new()),
    };
    let s = settings(spec, "<run-id>", &port)?;
    let rungs = ladder::ladder(
        &s.zones,
        s.market,
        s.reservation_id
            .as_deref()
            .map(|id| (id, "<its zone>", Buy::OnDemand)),
        None,
    );
    let mut out = vec![
        format!(
            "aws: {} x {} in {} (endpoint {}), market {}; each node's instance is asked for in this order, the next on a capacity error:",
            spec.resources.nodes,
            s.template.instance_type,
            s.region,
            s.endpoint,
            s.market.name()
        ),
        format!(
            "  {}",
            rungs
                .iter()
                .map(|r| format!(
                    "{} {}{}",
                    r.zone,
                    r.buy.name(),
                    r.reservation.as_deref().map(|c| format!(" in {c}")).unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(" -> ")
        ),
        format!(
            "  price: {}",
            match &s.offer {
                Some(o) => format!(
                    "catalog (as of {}): spot {}, on-demand ${:.3}/h per instance",
                    o.as_of,
                    o.price_per_hour
                        .spot
                        .map_or("none".to_string(), |p| format!("${p:.3}/h")),
                    o.price_per_hour.on_demand
                ),
                None => "not in the catalog: the report will not price the instances".into(),
            }
        ),
        "  node 0's first request (EC2 Query API, RunInstances):".into(),
    ];
    let rung = &rungs[0];
    let params = request::run_instances_params(
        &s.template,
        &NodeRequest {
            node: 0,
            generation: 0,
            rung,
            agent_token: "<single-use token, made at run time>",
            dry_run: false,
        },
    );
    for (k, v) in &params {
        if k != "UserData" {
            out.push(format!("    {k}={v}"));
        }
    }
    out.push("    UserData (base64 of):".into());
    for l in request::user_data(&s.template, 0, "<single-use token, made at run time>").lines() {
        out.push(format!("      | {l}"));
    }
    Ok(out)
}

/// One dry-run request: what was asked, and Ok (would succeed) or EC2's
/// error.
pub type DryRunAnswer = (String, Result<(), String>);

/// `run --dry-run` of an aws job: every rung of node 0's ladder asked with
/// EC2's DryRun flag (permissions and parameters checked, nothing
/// started): (rung, "would succeed" or the error).
pub fn dry_run(spec: &JobSpec) -> Result<Vec<DryRunAnswer>, LaunchError> {
    let s = settings(spec, "dry-run", "0")?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let creds = creds::credentials(&env).map_err(LaunchError::Cloud)?;
    let ec2 = Ec2::new(s.endpoint.clone(), s.region.clone(), creds);
    let reservation = match &s.reservation_id {
        Some(id) => {
            let r = ec2.capacity_reservation(id).map_err(|e| {
                LaunchError::Cloud(format!("{e} (provider.capacity_reservation_id)"))
            })?;
            let buy = if r.kind == "capacity-block" {
                Buy::CapacityBlock
            } else {
                Buy::OnDemand
            };
            Some((r.id, r.zone, buy))
        }
        None => None,
    };
    let rungs = ladder::ladder(
        &s.zones,
        s.market,
        reservation
            .as_ref()
            .map(|(i, z, b)| (i.as_str(), z.as_str(), *b)),
        None,
    );
    Ok(rungs
        .iter()
        .map(|rung| {
            let params = request::run_instances_params(
                &s.template,
                &NodeRequest {
                    node: 0,
                    generation: 0,
                    rung,
                    agent_token: "dry-run",
                    dry_run: true,
                },
            );
            let what = format!(
                "RunInstances {} {} in {}{}",
                s.template.instance_type,
                rung.buy.name(),
                rung.zone,
                rung.reservation
                    .as_deref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            );
            let outcome = match ec2.run_instance(&params) {
                Err(e) if ec2::classify(&e.code, e.status) == ErrorClass::DryRunOk => Ok(()),
                Err(e) => Err(format!("{}: {}", e.code, e.message)),
                Ok(i) => {
                    // An endpoint that ignored DryRun started one: give it
                    // back at once.
                    let _ = ec2.terminate(std::slice::from_ref(&i.id));
                    Err(format!(
                        "the endpoint ignored DryRun and started {} (terminated)",
                        i.id
                    ))
                }
            };
            (what, outcome)
        })
        .collect())
}
