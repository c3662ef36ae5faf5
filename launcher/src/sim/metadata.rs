//! A node's cloud metadata service, as the spot-market simulator (provider
//! `sim`) runs one per node: it speaks the real formats of AWS IMDSv2, the
//! GCP metadata server and Azure Scheduled Events, so the workers' notice
//! watchers run unchanged against it. The simulator publishes notices with
//! `preempt` and `rebalance`; workers find the service the standard way
//! (`env`: AWS_EC2_METADATA_SERVICE_ENDPOINT, GCE_METADATA_HOST).

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use proto::spec::Cloud;

#[derive(Debug, Default)]
struct State {
    /// token -> expiry
    tokens: HashMap<String, Instant>,
    next_token: u64,
    /// AWS: the instance-action time; GCP: preempted; Azure: the event.
    notice: Option<SystemTime>,
    rebalance: Option<SystemTime>,
    /// GCP: bumps on every change of `preempted` (the ETag).
    version: u64,
    /// Azure
    incarnation: u64,
    event_id: Option<String>,
    acks: Vec<String>,
}

/// One running metadata service.
pub struct MetadataServer {
    cloud: Cloud,
    addr: SocketAddr,
    vm_name: String,
    shared: Arc<(Mutex<State>, Condvar)>,
    server: Arc<tiny_http::Server>,
}

impl MetadataServer {
    /// Serve `cloud`'s formats on `ip`, a free port.
    pub fn start(cloud: Cloud, ip: Ipv4Addr, vm_name: &str) -> std::io::Result<MetadataServer> {
        let server = tiny_http::Server::http(SocketAddr::from((ip, 0)))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("not an IP listener"))?;
        let server = Arc::new(server);
        let shared = Arc::new((
            Mutex::new(State {
                incarnation: 1,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let (srv, sh, name) = (server.clone(), shared.clone(), vm_name.to_string());
        std::thread::Builder::new()
            .name(format!("metadata-{addr}"))
            .spawn(move || {
                for req in srv.incoming_requests() {
                    let (sh, name) = (sh.clone(), name.clone());
                    // One thread per request: GCP's long polls block.
                    let _ = std::thread::Builder::new()
                        .name("metadata-req".into())
                        .spawn(move || handle(cloud, &sh, &name, req));
                }
            })?;
        Ok(MetadataServer {
            cloud,
            addr,
            vm_name: vm_name.to_string(),
            shared,
            server,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the clouds' own clients look for the service.
    pub fn env(&self) -> Vec<(String, String)> {
        match self.cloud {
            Cloud::Aws => vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), self.base_url())],
            Cloud::Gcp => vec![("GCE_METADATA_HOST".into(), self.addr.to_string())],
            Cloud::Azure => vec![],
        }
    }

    pub fn vm_name(&self) -> &str {
        &self.vm_name
    }

    /// Publish a preemption notice: the machine goes at `deadline`.
    pub fn preempt(&self, deadline: SystemTime) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().unwrap();
        s.notice = Some(deadline);
        s.version += 1;
        s.incarnation += 1;
        s.event_id = Some(format!("{:08X}-SIM0-{:04X}", s.version, s.incarnation));
        cv.notify_all();
    }

    /// Publish an AWS rebalance recommendation (early warning).
    pub fn rebalance(&self) {
        self.shared.0.lock().unwrap().rebalance = Some(SystemTime::now());
    }

    /// Expire every AWS session token (the next GET answers 401).
    pub fn expire_tokens(&self) {
        self.shared.0.lock().unwrap().tokens.clear();
    }

    /// Azure events acknowledged with StartRequests.
    pub fn acknowledged(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().acks.clone()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.server.unblock();
        // Wake long polls so their threads end.
        let (m, cv) = &*self.shared;
        m.lock().unwrap().version += 1;
        cv.notify_all();
    }
}

fn header<'a>(req: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn query(url: &str) -> (String, HashMap<String, String>) {
    let (path, q) = url.split_once('?').unwrap_or((url, ""));
    let params = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (path.to_string(), params)
}

fn respond(req: tiny_http::Request, status: u16, body: String, headers: &[(&str, String)]) {
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    let _ = req.respond(resp);
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn handle(cloud: Cloud, shared: &(Mutex<State>, Condvar), vm: &str, mut req: tiny_http::Request) {
    let (path, q) = query(req.url());
    let method = req.method().as_str().to_string();
    match cloud {
        Cloud::Aws => {
            if method == "PUT" && path == "/latest/api/token" {
                if header(&req, "X-Forwarded-For").is_some() {
                    return respond(req, 403, "Forbidden".into(), &[]);
                }
                let ttl = header(&req, "X-aws-ec2-metadata-token-ttl-seconds")
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|t| (1..=21_600).contains(t));
                let Some(ttl) = ttl else {
                    return respond(req, 400, "Bad Request".into(), &[]);
                };
                let token = {
                    let mut s = shared.0.lock().unwrap();
                    s.next_token += 1;
                    let t = format!("sim-token-{}-{:x}", s.next_token, rand::random::<u64>());
                    s.tokens
                        .insert(t.clone(), Instant::now() + Duration::from_secs(ttl));
                    t
                };
                return respond(
                    req,
                    200,
                    token,
                    &[("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
                );
            }
            if method != "GET" {
                return respond(req, 404, "Not Found".into(), &[]);
            }
            let s = shared.0.lock().unwrap();
            let valid = header(&req, "X-aws-ec2-metadata-token")
                .and_then(|t| s.tokens.get(t))
                .is_some_and(|exp| *exp > Instant::now());
            if !valid {
                drop(s);
                return respond(req, 401, "Unauthorized".into(), &[]);
            }
            let body = match path.as_str() {
                "/latest/meta-data/spot/instance-action" => s.notice.map(|t| {
                    serde_json::json!({"action": "terminate", "time": rfc3339(t)}).to_string()
                }),
                "/latest/meta-data/spot/termination-time" => s.notice.map(rfc3339),
                "/latest/meta-data/events/recommendations/rebalance" => s
                    .rebalance
                    .map(|t| serde_json::json!({"noticeTime": rfc3339(t)}).to_string()),
                _ => None,
            };
            drop(s);
            match body {
                Some(b) => respond(req, 200, b, &[]),
                None => respond(req, 404, "Not Found".into(), &[]),
            }
        }
        Cloud::Gcp => {
            if header(&req, "Metadata-Flavor") != Some("Google") {
                return respond(
                    req,
                    403,
                    "Missing Metadata-Flavor:Google header.".into(),
                    &[],
                );
            }
            let flavor = ("Metadata-Flavor", "Google".to_string());
            if path != "/computeMetadata/v1/instance/preempted" {
                return respond(req, 404, "not found".into(), &[flavor]);
            }
            let (m, cv) = shared;
            let mut s = m.lock().unwrap();
            if q.get("wait_for_change").map(String::as_str) == Some("true") {
                let last = q.get("last_etag").cloned();
                let limit = q
                    .get("timeout_sec")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(300)
                    .min(3600);
                let end = Instant::now() + Duration::from_secs(limit);
                while last.as_deref() == Some(&format!("{:016x}", s.version))
                    && Instant::now() < end
                {
                    s = cv.wait_timeout(s, end - Instant::now()).unwrap().0;
                }
            }
            let value = if s.notice.is_some() { "TRUE" } else { "FALSE" };
            let etag = format!("{:016x}", s.version);
            drop(s);
            respond(req, 200, value.into(), &[("ETag", etag), flavor])
        }
        Cloud::Azure => {
            let json = ("Content-Type", "application/json".to_string());
            if header(&req, "Metadata") != Some("true") {
                let e = r#"{"error": "Bad request. Required metadata header not specified"}"#;
                return respond(req, 400, e.into(), &[json]);
            }
            if method == "GET" && path == "/metadata/instance/compute/name" {
                return respond(req, 200, vm.to_string(), &[]);
            }
            if path != "/metadata/scheduledevents" || !q.contains_key("api-version") {
                let e = r#"{"error": "Bad request. api-version was not specified"}"#;
                return respond(req, 400, e.into(), &[json]);
            }
            if method == "POST" {
                let mut body = String::new();
                let _ = req.as_reader().take(1 << 16).read_to_string(&mut body);
                let ids: Option<Vec<String>> = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v["StartRequests"].as_array().map(|a| {
                            a.iter()
                                .filter_map(|r| r["EventId"].as_str().map(str::to_string))
                                .collect()
                        })
                    });
                let Some(ids) = ids else {
                    return respond(req, 400, "bad StartRequests body".into(), &[]);
                };
                let mut s = shared.0.lock().unwrap();
                for id in ids {
                    if s.event_id.as_deref() == Some(id.as_str()) {
                        s.event_id = None;
                        s.incarnation += 1;
                    }
                    s.acks.push(id);
                }
                drop(s);
                return respond(req, 200, String::new(), &[]);
            }
            let s = shared.0.lock().unwrap();
            let events: Vec<serde_json::Value> = match (&s.event_id, s.notice) {
                (Some(id), Some(t)) => vec![serde_json::json!({
                    "EventId": id, "EventType": "Preempt", "ResourceType": "VirtualMachine",
                    "Resources": [vm], "EventStatus": "Scheduled",
                    "NotBefore": httpdate::fmt_http_date(t), "Description": "",
                    "EventSource": "Platform", "DurationInSeconds": -1})],
                _ => vec![],
            };
            let doc = serde_json::json!({"DocumentIncarnation": s.incarnation, "Events": events});
            drop(s);
            respond(req, 200, doc.to_string(), &[json])
        }
    }
}
