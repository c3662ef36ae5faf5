//! Azure Scheduled Events: `GET /metadata/scheduledevents` with
//! `Metadata: true`. A `Preempt` (or `Terminate`) event whose Resources
//! name this VM is the notice; its NotBefore (RFC 1123) is the deadline.
//! The document changes only when its DocumentIncarnation does. Once the
//! checkpoint is committed the event is acknowledged (StartRequests), so
//! Azure may go ahead early. The first call after boot may take up to two
//! minutes while the service switches itself on.

use super::{agent, answer, Seen, WatchError, Watcher};
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const API: &str = "api-version=2020-07-01";
/// The first call may take this long (the service starting up).
const FIRST_CALL: Duration = Duration::from_secs(150);

pub struct Azure {
    base: String,
    first: ureq::Agent,
    http: ureq::Agent,
    vm_name: Option<String>,
    answered: bool,
    incarnation: Option<u64>,
    /// Preempt events for this VM not yet acknowledged.
    pending: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Document {
    document_incarnation: u64,
    events: Vec<Event>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Event {
    event_id: String,
    event_type: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    event_status: String,
    #[serde(default)]
    not_before: String,
}

impl Azure {
    pub fn new(base: String, vm_name: Option<String>) -> Self {
        Azure {
            base: base.trim_end_matches('/').to_string(),
            first: agent(FIRST_CALL),
            http: agent(Duration::from_secs(5)),
            vm_name,
            answered: false,
            incarnation: None,
            pending: Vec::new(),
        }
    }

    fn events_url(&self) -> String {
        format!("{}/metadata/scheduledevents?{API}", self.base)
    }

    fn agent(&self) -> &ureq::Agent {
        if self.answered {
            &self.http
        } else {
            &self.first
        }
    }

    fn vm_name(&mut self) -> Result<String, WatchError> {
        if let Some(n) = &self.vm_name {
            return Ok(n.clone());
        }
        let url = format!(
            "{}/metadata/instance/compute/name?api-version=2021-02-01&format=text",
            self.base
        );
        let (status, body, _) = answer(self.agent().get(&url).header("Metadata", "true").call())?;
        match status {
            200 if !body.trim().is_empty() => {
                self.answered = true;
                self.vm_name = Some(body.trim().to_string());
                Ok(body.trim().to_string())
            }
            400 => Err(WatchError::Fatal(format!(
                "GET {url}: 400: {}",
                body.trim()
            ))),
            s => Err(WatchError::Retry(format!(
                "GET {url}: HTTP {s} (this VM's name)"
            ))),
        }
    }
}

impl Watcher for Azure {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn poll(&mut self) -> Result<Vec<Seen>, WatchError> {
        let me = self.vm_name()?;
        let url = self.events_url();
        let (status, body, _) = answer(self.agent().get(&url).header("Metadata", "true").call())?;
        match status {
            200 => self.answered = true,
            400 => {
                return Err(WatchError::Fatal(format!(
                    "GET {url}: 400 (Metadata header or api-version refused): {}",
                    body.trim()
                )))
            }
            s => return Err(WatchError::Retry(format!("GET {url}: HTTP {s}"))),
        }
        let doc: Document = serde_json::from_str(&body)
            .map_err(|e| WatchError::Retry(format!("GET {url}: unreadable document: {e}")))?;
        if self.incarnation == Some(doc.document_incarnation) {
            return Ok(vec![]);
        }
        self.incarnation = Some(doc.document_incarnation);
        let mut seen = Vec::new();
        for ev in doc.events.iter().filter(|e| e.resources.contains(&me)) {
            let preempt = matches!(ev.event_type.as_str(), "Preempt" | "Terminate");
            if preempt && !self.pending.contains(&ev.event_id) {
                self.pending.push(ev.event_id.clone());
            }
            seen.push(Seen {
                source: format!("azure {}", ev.event_type),
                preempt,
                deadline: httpdate::parse_http_date(&ev.not_before).ok(),
                detail: format!(
                    "event {} {} not before {:?} (incarnation {})",
                    ev.event_id, ev.event_status, ev.not_before, doc.document_incarnation
                ),
            });
        }
        Ok(seen)
    }

    fn acknowledge(&mut self) -> Result<bool, WatchError> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let requests: Vec<_> = self
            .pending
            .iter()
            .map(|id| serde_json::json!({ "EventId": id }))
            .collect();
        let body = serde_json::json!({ "StartRequests": requests }).to_string();
        let url = self.events_url();
        let (status, text, _) = answer(
            self.http
                .post(&url)
                .header("Metadata", "true")
                .header("Content-Type", "application/json")
                .send(body.as_str()),
        )?;
        if status != 200 {
            return Err(WatchError::Retry(format!(
                "POST {url}: HTTP {status}: {}",
                text.trim()
            )));
        }
        self.pending.clear();
        Ok(true)
    }
}
