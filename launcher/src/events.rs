//! events.jsonl: one JSON object per lifecycle event, with wall-clock time
//! and seconds since the launcher started. Flushed per line so a crash keeps
//! everything written so far.

use serde_json::{Map, Value};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Instant, SystemTime};

pub struct Events {
    file: File,
    start: Instant,
}

impl Events {
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Events> {
        Ok(Events {
            file: File::create(path)?,
            start,
        })
    }

    pub fn emit(&mut self, event: &str, fields: Value) {
        let mut obj = Map::new();
        obj.insert(
            "ts".into(),
            Value::String(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        obj.insert(
            "elapsed_s".into(),
            Value::from((self.start.elapsed().as_secs_f64() * 1e6).round() / 1e6),
        );
        obj.insert("event".into(), Value::String(event.into()));
        if let Value::Object(m) = fields {
            obj.extend(m);
        }
        let line = Value::Object(obj).to_string();
        if let Err(e) = writeln!(self.file, "{line}") {
            tracing::warn!("cannot write events.jsonl: {e}");
        }
    }
}
