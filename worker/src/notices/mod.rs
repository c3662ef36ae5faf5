//! Preemption-notice watchers for the cloud metadata services, exactly as
//! the clouds publish them: AWS IMDSv2, GCP's metadata server and Azure
//! Scheduled Events. On each node the worker of local rank 0 runs one
//! thread per configured service; what a watcher sees goes into this rank's
//! `Progress`, which raises the notice flag (the train workload shares it
//! through its all-reduce, so every rank stops at the same step) and rides
//! the heartbeat to the launcher (which records it and tells every node).
//!
//! Each watcher is a small state machine behind `Watcher::poll`; the
//! runner owns timing, back-off and logging, so the watchers are tested
//! call by call against a fake service.

pub mod aws;
pub mod azure;
pub mod gcp;

use crate::progress::Progress;
use proto::spec::{NoticeSource, Notices};
use proto::wire::{unix_ms, NoticeInfo};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What a poll found.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub source: String,
    pub preempt: bool,
    pub deadline: Option<SystemTime>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WatchError {
    /// Worth trying again (service busy, not up yet, connection refused).
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot help (the service is switched off, or refuses what
    /// the protocol requires): the watcher stops and says why.
    #[error("{0}")]
    Fatal(String),
}

pub trait Watcher: Send {
    fn name(&self) -> &'static str;
    /// One round of requests. Long-polling watchers block in here.
    fn poll(&mut self) -> Result<Vec<Seen>, WatchError>;
    /// Whether the runner should sleep between polls (false for long polls).
    fn paced(&self) -> bool {
        true
    }
    /// After the checkpoint is committed: tell the cloud we are done early,
    /// where it has a way to hear it (Azure's StartRequests).
    fn acknowledge(&mut self) -> Result<bool, WatchError> {
        Ok(false)
    }
}

/// An HTTP agent for metadata services: status codes are answers, not
/// errors, and no request waits longer than `timeout`.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .into()
}

pub(crate) fn transport(e: ureq::Error) -> WatchError {
    WatchError::Retry(e.to_string())
}

/// Read a response as (status, body, ETag header).
pub(crate) fn answer(
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String, Option<String>), WatchError> {
    let mut resp = resp.map_err(transport)?;
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(transport)?;
    Ok((status, body, etag))
}

/// Build the watchers a spec asks for, with endpoints defaulted the
/// standard way from this node's environment.
pub fn build(cfg: &Notices) -> Vec<Box<dyn Watcher>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    cfg.watch
        .iter()
        .map(|src| -> Box<dyn Watcher> {
            match src {
                NoticeSource::Aws { endpoint } => Box::new(aws::Aws::new(
                    endpoint
                        .clone()
                        .or_else(|| env("AWS_EC2_METADATA_SERVICE_ENDPOINT"))
                        .unwrap_or_else(|| aws::DEFAULT_ENDPOINT.into()),
                )),
                NoticeSource::Gcp { endpoint } => Box::new(gcp::Gcp::new(
                    endpoint
                        .clone()
                        .or_else(|| env("GCE_METADATA_HOST").map(|h| format!("http://{h}")))
                        .unwrap_or_else(|| gcp::DEFAULT_ENDPOINT.into()),
                )),
                NoticeSource::Azure { endpoint, vm_name } => Box::new(azure::Azure::new(
                    endpoint
                        .clone()
                        .unwrap_or_else(|| azure::DEFAULT_ENDPOINT.into()),
                    vm_name.clone(),
                )),
            }
        })
        .collect()
}

/// The running watchers of this worker.
pub struct Handle {
    watchers: Vec<Arc<Mutex<Box<dyn Watcher>>>>,
}

impl Handle {
    /// Acknowledge a handled notice wherever the cloud takes one.
    pub fn acknowledge(&self, rank: u32) {
        for w in &self.watchers {
            // A watcher blocked in a long poll holds its lock; only the
            // ones that can acknowledge matter, and they never block long.
            let Ok(mut w) = w.try_lock() else { continue };
            match w.acknowledge() {
                Ok(true) => eprintln!("[rank {rank}] notice watcher {}: acknowledged", w.name()),
                Ok(false) => {}
                Err(e) => eprintln!(
                    "[rank {rank}] notice watcher {}: cannot acknowledge: {e}",
                    w.name()
                ),
            }
        }
    }
}

/// Start one thread per watcher. Notices go to `progress`; errors to this
/// worker's log (stderr), retryable ones at most every 30 s per watcher.
pub fn start(cfg: &Notices, rank: u32, progress: Arc<Progress>) -> Handle {
    let interval = Duration::from_millis(cfg.poll_interval_ms());
    let mut watchers = Vec::new();
    for w in build(cfg) {
        let name = w.name();
        let shared = Arc::new(Mutex::new(w));
        watchers.push(shared.clone());
        let progress = progress.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("notices-{name}"))
            .spawn(move || run(shared, rank, interval, &progress));
        if let Err(e) = spawned {
            eprintln!("[rank {rank}] notice watcher {name}: cannot start a thread: {e}");
        }
    }
    Handle { watchers }
}

/// Polls in a row without a good answer before a watcher is reported
/// failing (the run is not protected by it).
pub const FAILING_AFTER: u32 = 3;

/// A watcher's health as the run's timeline shows it: `watcher_ok` once it
/// has had a good answer (again), `watcher_failing` (a warning) once it has
/// had `FAILING_AFTER` bad ones in a row, or stopped for good.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Health {
    /// What was last reported: None (nothing yet), Some(true) ok, Some(false) failing.
    reported: Option<bool>,
    failures: u32,
}

/// What to put on the timeline after a poll.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthNote {
    Ok,
    Failing { error: String, polls: u32 },
}

impl Health {
    /// Failed polls in a row (the runner backs off by it).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// After one poll: `Ok(())` a good answer, `Err((message, fatal))` a
    /// failed one (fatal: the watcher stops).
    pub fn after(&mut self, poll: Result<(), (&str, bool)>) -> Option<HealthNote> {
        match poll {
            Ok(()) => {
                self.failures = 0;
                (self.reported != Some(true)).then(|| {
                    self.reported = Some(true);
                    HealthNote::Ok
                })
            }
            Err((error, fatal)) => {
                self.failures += 1;
                let due = fatal || self.failures >= FAILING_AFTER;
                (due && self.reported != Some(false)).then(|| {
                    self.reported = Some(false);
                    HealthNote::Failing {
                        error: error.to_string(),
                        polls: self.failures,
                    }
                })
            }
        }
    }
}

/// Put a health change on the timeline.
fn note_health(progress: &Progress, name: &str, note: HealthNote) {
    match note {
        HealthNote::Ok => progress.note(
            "watcher_ok",
            format!("notice watcher {name}: answering"),
            false,
            serde_json::json!({"watcher": name}),
        ),
        HealthNote::Failing { error, polls } => progress.note(
            "watcher_failing",
            format!(
                "notice watcher {name} has had no good answer in {polls} poll(s): {error}; preemption notices from it would be missed"
            ),
            true,
            serde_json::json!({"watcher": name, "error": error, "polls": polls}),
        ),
    }
}

fn run(w: Arc<Mutex<Box<dyn Watcher>>>, rank: u32, interval: Duration, progress: &Progress) {
    let name = w.lock().unwrap().name();
    eprintln!("[rank {rank}] notice watcher {name}: watching");
    let mut last_complaint: Option<std::time::Instant> = None;
    let mut health = Health::default();
    let mut reported = std::collections::HashSet::new();
    loop {
        let (result, paced) = {
            let mut g = w.lock().unwrap();
            (g.poll(), g.paced())
        };
        let change = health.after(match &result {
            Ok(_) => Ok(()),
            Err(WatchError::Fatal(m)) => Err((m.as_str(), true)),
            Err(WatchError::Retry(m)) => Err((m.as_str(), false)),
        });
        if let Some(change) = change {
            note_health(progress, name, change);
        }
        let pause = match result {
            Ok(seen) => {
                for s in seen {
                    let key = (s.source.clone(), s.detail.clone());
                    if !reported.insert(key) {
                        continue;
                    }
                    let what = if s.preempt {
                        "preemption notice"
                    } else {
                        "early warning"
                    };
                    let by = s
                        .deadline
                        .map(|d| format!(", deadline {}", humantime::format_rfc3339_seconds(d)))
                        .unwrap_or_default();
                    eprintln!("[rank {rank}] {what} from {}{by}: {}", s.source, s.detail);
                    progress.record_notice(NoticeInfo {
                        source: s.source,
                        preempt: s.preempt,
                        deadline_unix_ms: s.deadline.map(unix_ms),
                        seen_unix_ms: unix_ms(SystemTime::now()),
                        detail: s.detail,
                    });
                }
                if paced {
                    interval
                } else {
                    Duration::ZERO
                }
            }
            Err(WatchError::Fatal(m)) => {
                eprintln!("[rank {rank}] notice watcher {name}: stopped: {m}");
                return;
            }
            Err(WatchError::Retry(m)) => {
                if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    eprintln!("[rank {rank}] notice watcher {name}: {m} (retrying)");
                    last_complaint = Some(std::time::Instant::now());
                }
                // Back off up to 8 intervals while the service is down.
                interval * health.failures().min(8)
            }
        };
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn health_table() {
        let ok = || Ok(());
        let retry = || Err(("404 Not Found", false));
        let fatal = || Err(("410 Gone", true));
        let failing = |polls| {
            Some(HealthNote::Failing {
                error: "404 Not Found".into(),
                polls,
            })
        };
        // (polls, the note after each)
        type Poll = fn() -> Result<(), (&'static str, bool)>;
        let cases: Vec<(Vec<Poll>, Vec<Option<HealthNote>>)> = vec![
            (vec![ok, ok], vec![Some(HealthNote::Ok), None]),
            // Never a good answer: failing after the third poll, once.
            (
                vec![retry, retry, retry, retry],
                vec![None, None, failing(3), None],
            ),
            // Two bad polls between good ones are not news.
            (
                vec![ok, retry, retry, ok],
                vec![Some(HealthNote::Ok), None, None, None],
            ),
            // Failing, then answering again.
            (
                vec![ok, retry, retry, retry, ok],
                vec![
                    Some(HealthNote::Ok),
                    None,
                    None,
                    failing(3),
                    Some(HealthNote::Ok),
                ],
            ),
            // A fatal error is news at once.
            (
                vec![fatal],
                vec![Some(HealthNote::Failing {
                    error: "410 Gone".into(),
                    polls: 1,
                })],
            ),
        ];
        for (polls, want) in cases {
            let mut h = Health::default();
            let got: Vec<_> = polls.iter().map(|p| h.after(p())).collect();
            assert_eq!(got, want);
        }
    }
}
