//! A small EC2 client on the Query API (the API every EC2 SDK speaks):
//! form-encoded POSTs signed with SigV4 (the `aws-sigv4` crate, the same
//! signer the official SDK uses), XML answers read with `roxmltree`.
//! Only the calls ringmaster makes: RunInstances, DescribeInstances (by the
//! run's tag), TerminateInstances, DescribeSpotPriceHistory and
//! DescribeCapacityReservations. Throttling and 5xx answers are retried
//! with capped exponential backoff and jitter; every other error comes
//! back as an `ApiError` naming the call and EC2's code.
//!
//! Why not aws-sdk-ec2: its build on this 2-core machine is measured in
//! docs/benchmarks.md ("EC2 client: build cost"); the Query API needs none
//! of it.

use super::creds::Credentials;
use std::time::{Duration, SystemTime};

/// EC2's API version the requests name.
pub const API_VERSION: &str = "2016-11-15";

/// An error from EC2 (or from reaching it): the call, EC2's error code
/// ("InsufficientInstanceCapacity"; "Http" / "Transport" where no XML
/// error came back) and its message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub call: &'static str,
    pub code: String,
    pub message: String,
    pub status: u16,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.call, self.code, self.message)
    }
}

/// What an error means for the request that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry the same request after a backoff (throttled, EC2 busy).
    Retry,
    /// No room for this request here: try the next zone / market.
    Capacity,
    /// DryRun said the request would have succeeded.
    DryRunOk,
    /// Anything else: a wrong id, permissions, a quota: stop and say so.
    Fatal,
}

/// How EC2's error codes are handled (the codes are EC2's documented
/// ones, "Error codes for the Amazon EC2 API").
pub fn classify(code: &str, status: u16) -> ErrorClass {
    match code {
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "ServiceUnavailable"
        | "Unavailable"
        | "InternalError"
        | "InternalFailure"
        | "Transport" => ErrorClass::Retry,
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacityOnHost"
        | "MaxSpotInstanceCountExceeded"
        | "SpotMaxPriceTooLow"
        | "Unsupported"
        | "ReservationCapacityExceeded"
        | "InsufficientFreeAddressesInSubnet" => ErrorClass::Capacity,
        "DryRunOperation" => ErrorClass::DryRunOk,
        _ if status >= 500 => ErrorClass::Retry,
        _ => ErrorClass::Fatal,
    }
}

/// The backoff before retry `k` (0-based): 0.2 s doubling, at most 5 s,
/// with up to 50% jitter (AWS's "exponential backoff and jitter").
pub fn backoff(k: u32, jitter: f64) -> Duration {
    let base = (0.2 * 2f64.powi(k as i32)).min(5.0);
    Duration::from_secs_f64(base * (1.0 - 0.5 * jitter.clamp(0.0, 1.0)))
}

/// Attempts per call (the first and the retries).
pub const MAX_ATTEMPTS: u32 = 6;

/// One EC2 instance as DescribeInstances / RunInstances tell it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Instance {
    pub id: String,
    /// pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
    pub zone: String,
    pub launch_time: Option<String>,
    /// The state reason's code ("Server.SpotInstanceTermination").
    pub state_reason: Option<String>,
}

impl Instance {
    /// Whether it is gone or going (shutting-down, terminated, stopping,
    /// stopped).
    pub fn is_gone(&self) -> bool {
        matches!(
            self.state.as_str(),
            "shutting-down" | "terminated" | "stopping" | "stopped"
        )
    }
}

/// A spot price EC2 published.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPrice {
    pub zone: String,
    pub price: f64,
    pub timestamp: String,
}

pub struct Ec2 {
    pub endpoint: String,
    pub region: String,
    creds: Credentials,
    agent: ureq::Agent,
}

impl Ec2 {
    pub fn new(endpoint: String, region: String, creds: Credentials) -> Ec2 {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Ec2 {
            endpoint,
            region,
            creds,
            agent,
        }
    }

    /// `action` with `params`, signed; the XML body of a 200 answer.
    pub fn call(
        &self,
        action: &'static str,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let mut k = 0;
        loop {
            let err = match self.call_once(action, params) {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            if classify(&err.code, err.status) != ErrorClass::Retry || k + 1 >= MAX_ATTEMPTS {
                return Err(err);
            }
            let jitter = (SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
                % 1000) as f64
                / 1000.0;
            std::thread::sleep(backoff(k, jitter));
            k += 1;
        }
    }

    fn call_once(
        &self,
        action: &'static str,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let body = form_body(action, params);
        let fail = |code: &str, message: String, status: u16| ApiError {
            call: action,
            code: code.into(),
            message,
            status,
        };
        let headers = self.sign(&body).map_err(|m| fail("Signing", m, 0))?;
        let mut req = self.agent.post(&self.endpoint).header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        );
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut resp = req.send(body.as_str()).map_err(|e| {
            fail(
                "Transport",
                format!("{} unreachable: {e}", self.endpoint),
                0,
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| fail("Transport", format!("reading the answer: {e}"), status))?;
        if status == 200 {
            return Ok(text);
        }
        let (code, message) = parse_error(&text).unwrap_or_else(|| {
            (
                "Http".into(),
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ),
            )
        });
        Err(fail(&code, message, status))
    }

    /// SigV4 headers (authorization, x-amz-date, the session token) for a
    /// POST of `body` to the endpoint.
    fn sign(&self, body: &str) -> Result<Vec<(String, String)>, String> {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        use aws_sigv4::sign::v4;
        let identity = aws_credential_types::Credentials::new(
            &self.creds.access_key_id,
            &self.creds.secret_access_key,
            self.creds.session_token.clone(),
            None,
            "ringmaster",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let content_type = [(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )];
        let signable = SignableRequest::new(
            "POST",
            &self.endpoint,
            content_type.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// RunInstances of one instance: the instance EC2 started.
    pub fn run_instance(&self, params: &[(String, String)]) -> Result<Instance, ApiError> {
        let xml = self.call("RunInstances", params)?;
        parse_instances(&xml)
            .into_iter()
            .next()
            .ok_or_else(|| ApiError {
                call: "RunInstances",
                code: "NoInstance".into(),
                message: "the answer named no instance".into(),
                status: 200,
            })
    }

    /// Every instance whose tag `key` is `value` (any state).
    pub fn describe_tagged(&self, key: &str, value: &str) -> Result<Vec<Instance>, ApiError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut p = vec![
                ("Filter.1.Name".to_string(), format!("tag:{key}")),
                ("Filter.1.Value.1".to_string(), value.to_string()),
            ];
            if let Some(t) = &token {
                p.push(("NextToken".into(), t.clone()));
            }
            let xml = self.call("DescribeInstances", &p)?;
            out.extend(parse_instances(&xml));
            token = next_token(&xml);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// TerminateInstances of `ids` (nothing to do for none).
    pub fn terminate(&self, ids: &[String]) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Ok(());
        }
        let p: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("InstanceId.{}", i + 1), id.clone()))
            .collect();
        self.call("TerminateInstances", &p).map(|_| ())
    }

    /// The latest Linux spot price of `instance_type` per zone.
    pub fn spot_prices(&self, instance_type: &str) -> Result<Vec<SpotPrice>, ApiError> {
        let p = vec![
            ("InstanceType.1".to_string(), instance_type.to_string()),
            ("ProductDescription.1".to_string(), "Linux/UNIX".to_string()),
            ("StartTime".to_string(), iso8601(SystemTime::now())),
        ];
        let xml = self.call("DescribeSpotPriceHistory", &p)?;
        Ok(parse_spot_prices(&xml))
    }

    /// A capacity reservation's zone, instance type, state and free
    /// instances.
    pub fn capacity_reservation(&self, id: &str) -> Result<Reservation, ApiError> {
        let p = vec![("CapacityReservationId.1".to_string(), id.to_string())];
        let xml = self.call("DescribeCapacityReservations", &p)?;
        parse_reservation(&xml).ok_or_else(|| ApiError {
            call: "DescribeCapacityReservations",
            code: "InvalidCapacityReservationId.NotFound".into(),
            message: format!("no capacity reservation {id}"),
            status: 200,
        })
    }
}

/// A capacity reservation as DescribeCapacityReservations tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: String,
    pub zone: String,
    pub instance_type: String,
    pub state: String,
    pub available: u32,
    /// `reservationType`: "default", or "capacity-block" (an EC2 Capacity
    /// Block for ML, launched into with MarketType capacity-block).
    pub kind: String,
}

/// `Action=...&Version=...&k=v...`, form-encoded.
pub fn form_body(action: &str, params: &[(String, String)]) -> String {
    let mut f = form_urlencoded::Serializer::new(String::new());
    f.append_pair("Action", action);
    f.append_pair("Version", API_VERSION);
    for (k, v) in params {
        f.append_pair(k, v);
    }
    f.finish()
}

/// EC2's error answer: the first error's code and message.
pub fn parse_error(xml: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let err = doc.descendants().find(|n| n.has_tag_name("Error"))?;
    let text = |name: &str| {
        err.children()
            .find(|c| c.has_tag_name(name))
            .and_then(|c| c.text())
            .unwrap_or("")
            .to_string()
    };
    Some((text("Code"), text("Message")))
}

fn child<'a>(n: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn child_text(n: roxmltree::Node, name: &str) -> Option<String> {
    child(n, name).and_then(|c| c.text()).map(str::to_string)
}

/// The instances of a RunInstances or DescribeInstances answer.
pub fn parse_instances(xml: &str) -> Vec<Instance> {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return Vec::new();
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("instancesSet"))
        .flat_map(|set| set.children().filter(|c| c.has_tag_name("item")))
        .map(|i| Instance {
            id: child_text(i, "instanceId").unwrap_or_default(),
            state: child(i, "instanceState")
                .and_then(|s| child_text(s, "name"))
                .unwrap_or_default(),
            zone: child(i, "placement")
                .and_then(|p| child_text(p, "availabilityZone"))
                .unwrap_or_default(),
            launch_time: child_text(i, "launchTime"),
            state_reason: child(i, "stateReason").and_then(|s| child_text(s, "code")),
        })
        .collect()
}

fn next_token(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    child_text(root, "nextToken").filter(|t| !t.is_empty())
}

/// The newest price per zone of a DescribeSpotPriceHistory answer.
pub fn parse_spot_prices(xml: &str) -> Vec<SpotPrice> {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return Vec::new();
    };
    let mut newest: std::collections::BTreeMap<String, SpotPrice> = Default::default();
    for i in doc
        .descendants()
        .filter(|n| n.has_tag_name("spotPriceHistorySet"))
        .flat_map(|s| s.children().filter(|c| c.has_tag_name("item")))
    {
        let (Some(zone), Some(price), Some(ts)) = (
            child_text(i, "availabilityZone"),
            child_text(i, "spotPrice").and_then(|p| p.parse::<f64>().ok()),
            child_text(i, "timestamp"),
        ) else {
            continue;
        };
        // ISO-8601 UTC timestamps order as strings.
        if newest.get(&zone).is_none_or(|p| p.timestamp < ts) {
            newest.insert(
                zone.clone(),
                SpotPrice {
                    zone,
                    price,
                    timestamp: ts,
                },
            );
        }
    }
    newest.into_values().collect()
}

fn parse_reservation(xml: &str) -> Option<Reservation> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let i = doc
        .descendants()
        .find(|n| n.has_tag_name("capacityReservationSet"))?
        .children()
        .find(|c| c.has_tag_name("item"))?;
    Some(Reservation {
        id: child_text(i, "capacityReservationId")?,
        zone: child_text(i, "availabilityZone").unwrap_or_default(),
        instance_type: child_text(i, "instanceType").unwrap_or_default(),
        state: child_text(i, "state").unwrap_or_default(),
        available: child_text(i, "availableInstanceCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        kind: child_text(i, "reservationType").unwrap_or_else(|| "default".into()),
    })
}

/// `t` as EC2 writes times: 2026-12-02T11:12:32Z.
pub fn iso8601(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// EC2's time (2026-12-02T11:12:32.000Z) as a SystemTime.
pub fn parse_iso8601(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_as_ec2_documents_them() {
        for (code, status, class) in [
            ("RequestLimitExceeded", 503, ErrorClass::Retry),
            ("InsufficientInstanceCapacity", 500, ErrorClass::Capacity),
            ("MaxSpotInstanceCountExceeded", 400, ErrorClass::Capacity),
            ("SpotMaxPriceTooLow", 400, ErrorClass::Capacity),
            ("Unsupported", 400, ErrorClass::Capacity),
            ("ReservationCapacityExceeded", 400, ErrorClass::Capacity),
            ("DryRunOperation", 412, ErrorClass::DryRunOk),
            ("InvalidAMIID.NotFound", 400, ErrorClass::Fatal),
            ("UnauthorizedOperation", 403, ErrorClass::Fatal),
            ("AuthFailure", 401, ErrorClass::Fatal),
            ("SomethingNew", 502, ErrorClass::Retry),
            ("Transport", 0, ErrorClass::Retry),
        ] {
            assert_eq!(classify(code, status), class, "{code}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_jitter_only_shortens() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(10, 0.0), Duration::from_secs(5));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(200));
    }

    #[test]
    fn the_error_answer_gives_code_and_message() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>InsufficientInstanceCapacity</Code><Message>We currently do not have sufficient p5.48xlarge capacity in the Availability Zone you requested (us-east-1a).</Message></Error></Errors><RequestID>abc</RequestID></Response>"#;
        let (code, msg) = parse_error(xml).unwrap();
        assert_eq!(code, "InsufficientInstanceCapacity");
        assert!(msg.contains("us-east-1a"));
    }

    #[test]
    fn times_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_209_952);
        let s = iso8601(t);
        assert_eq!(s, "2026-12-02T11:12:32Z");
        assert_eq!(parse_iso8601("2026-12-02T11:12:32.000Z"), Some(t));
        assert_eq!(parse_iso8601(&s), Some(t));
    }
}
