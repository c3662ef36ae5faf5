//! Compute Engine metadata server: `instance/preempted` reads `TRUE` once
//! the VM is being preempted (30 s before it is switched off). Watched with
//! the server's long poll: `?wait_for_change=true&last_etag=<etag>` returns
//! as soon as the value changes (at once if it already has). Every request
//! carries `Metadata-Flavor: Google`.

use super::{agent, answer, Seen, WatchError, Watcher};
use std::time::{Duration, SystemTime};

pub const DEFAULT_ENDPOINT: &str = "http://metadata.google.internal";
/// GCP's window from the notice to the hard stop.
pub const NOTICE_WINDOW: Duration = Duration::from_secs(30);
/// Longest single long poll; the server answers with the unchanged value
/// when it runs out.
const LONG_POLL_S: u64 = 60;

pub struct Gcp {
    base: String,
    http: ureq::Agent,
    etag: Option<String>,
}

impl Gcp {
    pub fn new(base: String) -> Self {
        Gcp {
            base: base.trim_end_matches('/').to_string(),
            http: agent(Duration::from_secs(LONG_POLL_S + 10)),
            etag: None,
        }
    }
}

impl Watcher for Gcp {
    fn name(&self) -> &'static str {
        "gcp"
    }

    fn paced(&self) -> bool {
        // The first read returns at once; after it, the long poll paces.
        self.etag.is_none()
    }

    fn poll(&mut self) -> Result<Vec<Seen>, WatchError> {
        let mut url = format!("{}/computeMetadata/v1/instance/preempted", self.base);
        if let Some(tag) = &self.etag {
            url.push_str(&format!(
                "?wait_for_change=true&last_etag={tag}&timeout_sec={LONG_POLL_S}"
            ));
        }
        let (status, body, etag) = answer(
            self.http
                .get(&url)
                .header("Metadata-Flavor", "Google")
                .call(),
        )?;
        match status {
            200 => {}
            403 => {
                return Err(WatchError::Fatal(format!(
                    "GET {url}: 403: the server refused the request (Metadata-Flavor header)"
                )))
            }
            s => {
                // Forget the ETag: start again with a plain read.
                self.etag = None;
                return Err(WatchError::Retry(format!("GET {url}: HTTP {s}")));
            }
        }
        self.etag = etag;
        if self.etag.is_none() {
            return Err(WatchError::Retry(format!(
                "GET {url}: no ETag in the answer"
            )));
        }
        Ok(match body.trim() {
            "TRUE" => vec![Seen {
                source: "gcp instance/preempted".into(),
                preempt: true,
                deadline: Some(SystemTime::now() + NOTICE_WINDOW),
                detail: "preempted = TRUE".into(),
            }],
            "FALSE" => vec![],
            other => {
                return Err(WatchError::Retry(format!(
                    "GET {url}: unexpected value {other:?}"
                )))
            }
        })
    }
}
