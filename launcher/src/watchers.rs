//! The health of the workers' notice watchers over a run, from their
//! `watcher_ok` / `watcher_failing` notes: for report.json, which watchers
//! were answering for what share of the run (a watcher that never answers
//! leaves the job unprotected while the run itself succeeds).

pub use proto::report::WatcherHealth;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Track {
    ok_since: Option<Instant>,
    healthy: Duration,
    answered: bool,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    tracks: BTreeMap<(u32, String), Track>,
}

impl Ledger {
    /// A watcher's health changed at `at`: answering (`error` None) or
    /// failing with `error`.
    pub fn record(&mut self, rank: u32, watcher: &str, error: Option<String>, at: Instant) {
        let t = self.tracks.entry((rank, watcher.to_string())).or_default();
        match error {
            None => {
                t.answered = true;
                t.ok_since.get_or_insert(at);
            }
            Some(e) => {
                if let Some(since) = t.ok_since.take() {
                    t.healthy += at.saturating_duration_since(since);
                }
                t.last_error = Some(e);
            }
        }
    }

    /// Every watcher heard of, for a run from `start` to `end`.
    pub fn summary(&self, start: Instant, end: Instant) -> Vec<WatcherHealth> {
        let run = end.saturating_duration_since(start).as_secs_f64();
        self.tracks
            .iter()
            .map(|((rank, watcher), t)| {
                let open = t
                    .ok_since
                    .map(|s| end.saturating_duration_since(s))
                    .unwrap_or_default();
                let healthy = (t.healthy + open).as_secs_f64();
                WatcherHealth {
                    rank: *rank,
                    watcher: watcher.clone(),
                    answered: t.answered,
                    healthy_share: if run > 0.0 {
                        (healthy / run).min(1.0)
                    } else {
                        0.0
                    },
                    last_error: t.last_error.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_table() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // (changes as (second, error), end second, answered, share, last error)
        let cases: Vec<(Vec<(u64, Option<&str>)>, u64, bool, f64, Option<&str>)> = vec![
            (vec![(0, None)], 10, true, 1.0, None),
            (vec![(5, None)], 10, true, 0.5, None),
            (vec![(2, Some("404"))], 10, false, 0.0, Some("404")),
            (
                vec![(0, None), (4, Some("503")), (6, None)],
                10,
                true,
                0.8,
                Some("503"),
            ),
            // A repeated ok note does not restart the healthy span.
            (vec![(0, None), (5, None)], 10, true, 1.0, None),
        ];
        for (changes, end, answered, share, err) in cases {
            let mut l = Ledger::default();
            for (s, e) in &changes {
                l.record(0, "azure", e.map(str::to_string), at(*s));
            }
            let got = l.summary(t0, at(end));
            assert_eq!(got.len(), 1);
            let g = &got[0];
            assert_eq!(
                (
                    g.answered,
                    (g.healthy_share * 100.0).round() / 100.0,
                    g.last_error.as_deref()
                ),
                (answered, share, err),
                "{changes:?}"
            );
        }
    }
}
