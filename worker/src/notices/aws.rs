//! EC2 instance metadata, IMDSv2: a session token from `PUT
//! /latest/api/token`, then `spot/instance-action` (the two-minute notice:
//! 404 until one is pending, then `{"action": ..., "time": ...}`) and
//! `events/recommendations/rebalance` (an early warning that may come
//! before it). An expired token answers 401 and is fetched again.

use super::{agent, answer, Seen, WatchError, Watcher};
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Requested token lifetime (the maximum IMDS allows).
pub const TOKEN_TTL_S: u32 = 21_600;

pub struct Aws {
    base: String,
    http: ureq::Agent,
    token: Option<String>,
    /// Token PUTs so far (tests read it).
    pub token_fetches: u32,
}

#[derive(serde::Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rebalance {
    notice_time: String,
}

impl Aws {
    pub fn new(base: String) -> Self {
        Aws {
            base: base.trim_end_matches('/').to_string(),
            http: agent(Duration::from_secs(2)),
            token: None,
            token_fetches: 0,
        }
    }

    fn fetch_token(&mut self) -> Result<String, WatchError> {
        let url = format!("{}/latest/api/token", self.base);
        self.token_fetches += 1;
        let (status, body, _) = answer(
            self.http
                .put(&url)
                .header(
                    "X-aws-ec2-metadata-token-ttl-seconds",
                    TOKEN_TTL_S.to_string(),
                )
                .send_empty(),
        )?;
        match status {
            200 if !body.trim().is_empty() => Ok(body.trim().to_string()),
            200 => Err(WatchError::Retry(format!("PUT {url}: empty token"))),
            400 => Err(WatchError::Fatal(format!(
                "PUT {url}: 400 bad request: {}",
                body.trim()
            ))),
            403 => Err(WatchError::Fatal(format!(
                "PUT {url}: 403: the instance metadata service is disabled on this instance"
            ))),
            s => Err(WatchError::Retry(format!("PUT {url}: HTTP {s}"))),
        }
    }

    /// GET a metadata path with the session token; 401 means the token
    /// expired: fetch a new one and try once more. Ok(None) on 404.
    fn get(&mut self, path: &str) -> Result<Option<String>, WatchError> {
        let url = format!("{}/latest/meta-data/{path}", self.base);
        for _ in 0..2 {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => {
                    let t = self.fetch_token()?;
                    self.token = Some(t.clone());
                    t
                }
            };
            let (status, body, _) = answer(
                self.http
                    .get(&url)
                    .header("X-aws-ec2-metadata-token", &token)
                    .call(),
            )?;
            match status {
                200 => return Ok(Some(body)),
                404 => return Ok(None),
                401 => self.token = None,
                403 => {
                    return Err(WatchError::Fatal(format!(
                        "GET {url}: 403: the instance metadata service is disabled on this instance"
                    )))
                }
                s => return Err(WatchError::Retry(format!("GET {url}: HTTP {s}"))),
            }
        }
        Err(WatchError::Retry(format!(
            "GET {url}: 401 even with a fresh token"
        )))
    }
}

impl Watcher for Aws {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn poll(&mut self) -> Result<Vec<Seen>, WatchError> {
        let mut seen = Vec::new();
        if let Some(body) = self.get("spot/instance-action")? {
            let a: InstanceAction = serde_json::from_str(&body).map_err(|e| {
                WatchError::Retry(format!("spot/instance-action: unreadable {body:?}: {e}"))
            })?;
            seen.push(Seen {
                source: "aws spot/instance-action".into(),
                preempt: true,
                deadline: humantime::parse_rfc3339_weak(&a.time).ok(),
                detail: format!("{} at {}", a.action, a.time),
            });
        }
        if let Some(body) = self.get("events/recommendations/rebalance")? {
            let r: Rebalance = serde_json::from_str(&body)
                .map_err(|e| WatchError::Retry(format!("rebalance: unreadable {body:?}: {e}")))?;
            seen.push(Seen {
                source: "aws rebalance recommendation".into(),
                preempt: false,
                deadline: None,
                detail: format!("noticeTime {}", r.notice_time),
            });
        }
        Ok(seen)
    }
}
