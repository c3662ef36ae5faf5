//! events.jsonl: one JSON object per lifecycle event (`proto::events`), with
//! wall-clock time and seconds since the launcher started. Flushed per line so a crash keeps
//! everything written so far.

use proto::events::{Line, RunEvent};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Instant, SystemTime};

pub struct Events {
    file: File,
    start: Instant,
    /// The run's Prometheus metrics follow its events.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Events {
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Events> {
        Ok(Events {
            file: File::create(path)?,
            start,
            metrics: None,
        })
    }

    /// Every event from now on also updates `metrics`.
    pub fn feed(&mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    pub fn emit(&mut self, event: RunEvent) {
        if let Some(m) = &self.metrics {
            m.observe(&event);
        }
        let line = Line {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            elapsed_s: (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e6,
            event,
        };
        // One write per line, so a reader never sees half of one.
        let mut text = line.to_json().to_string();
        text.push('\n');
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            tracing::warn!("cannot write events.jsonl: {e}");
        }
    }
}
