//! What the run records of notices and of what the ranks and the provider
//! report: a watcher's notice or early warning, a rank's note, a node
//! event, and how a notice's stop went (the preemption's first phase).

use super::attempt::Attempt;
use super::machine::Event;
use super::Supervisor;
use crate::provider::{NodeEvent, Provider};
use crate::report;
use proto::result::WorkerResult;
use proto::wire::{unix_ms, NoticeInfo};
use serde_json::json;
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

impl Supervisor {
    /// A notice's stop is over (every worker out): how it went, into the
    /// attempt's message and events.jsonl; the preemption's first phase
    /// and when the workers were out. `sent`: when the notice went out and
    /// its deadline; a watcher's notice counts from when it was seen and
    /// against the cloud's deadline.
    pub(super) fn preemption_handled(
        &mut self,
        n: u32,
        attempt: Option<&mut Attempt>,
        sent: (Instant, Instant),
        seen: Option<&(u32, NoticeInfo)>,
    ) -> (report::PreemptionReport, Instant) {
        let now = Instant::now();
        let (mut at, mut deadline) = sent;
        if let Some((_, n)) = seen {
            at = at.min(wall_to_instant(n.seen_unix_ms));
            if let Some(d) = n.deadline_unix_ms {
                deadline = deadline.min(wall_to_instant(d));
            }
        }
        let results = attempt
            .as_ref()
            .map(|a| a.results.clone())
            .unwrap_or_default();
        let stopped: Vec<u64> = results
            .values()
            .filter_map(WorkerResult::preempted_at_step)
            .collect();
        let checkpointed = !results.is_empty()
            && results
                .values()
                .all(|r| r.train().is_some_and(|t| t.checkpoint_committed));
        let margin = deadline.saturating_duration_since(now).as_secs_f64();
        let met = now <= deadline;
        let source = seen
            .map(|(rank, n)| format!(" ({} via rank {rank})", n.source))
            .unwrap_or_default();
        let msg = format!(
            "preemption notice{source}: stopped {} {:.2} s after the notice, {:.2} s before the deadline; {}",
            stopped.first().map(|s| format!("at step {s}")).unwrap_or_else(|| "without an agreed step".into()),
            (now - at).as_secs_f64(),
            margin,
            if checkpointed && met { "checkpoint committed" } else { "no checkpoint at the stop step: the run resumes from the last periodic checkpoint" }
        );
        self.events.emit(
            "notice_handled",
            json!({"stopped_at_step": stopped.first(), "seconds_after_notice": (now - at).as_secs_f64(), "margin_s": margin, "deadline_met": met, "checkpointed": checkpointed,
                   "source": seen.map(|(_, n)| n.source.clone())}),
        );
        if let Some(a) = attempt {
            a.message = Some(msg);
        }
        (
            report::PreemptionReport {
                attempt: n,
                source: seen.map(|(_, n)| n.source.clone()),
                notice_to_out_s: (now - at).as_secs_f64(),
                out_to_replacement_s: None,
                out_to_first_step_s: None,
                total_s: None,
            },
            now,
        )
    }

    /// A provider's node event, into events.jsonl.
    pub(super) fn emit_node_event(&mut self, ev: &NodeEvent, provider: &dyn Provider) {
        let (name, mut body) = match ev {
            NodeEvent::Capacity {
                zone,
                spot_capacity,
            } => (
                "capacity_changed",
                json!({"zone": zone, "spot_capacity": spot_capacity}),
            ),
            NodeEvent::Preempting {
                node,
                deadline,
                cause,
                zone,
            } => (
                "node_notice",
                json!({"node": node, "cause": cause, "zone": zone,
                       "deadline": humantime::format_rfc3339_millis(*deadline).to_string()}),
            ),
            NodeEvent::Lost { node } => ("node_lost", json!({"node": node})),
            NodeEvent::Ready {
                node,
                vm,
                zone,
                market,
            } => (
                "node_replaced",
                json!({"node": node, "vm": vm, "zone": zone, "market": market,
                       "provisioning_delay_s": provider.provisioning_delay().as_secs_f64()}),
            ),
            NodeEvent::Migrate { nodes, reason } => {
                ("nodes_migrating", json!({"nodes": nodes, "reason": reason}))
            }
        };
        body["provider"] = json!(provider.kind());
        if let Some(t) = provider.market_time_s() {
            body["market_time_s"] = json!(t);
        }
        self.events.emit(name, body);
    }

    /// A rank's note for the timeline: events.jsonl under its own name; a
    /// warning also on the console and in report.json (once per text).
    pub(super) fn worker_note(&mut self, attempt: u32, rank: u32, n: proto::wire::WorkerNote) {
        if let (Some(w), true) = (
            n.detail.get("watcher").and_then(|w| w.as_str()),
            n.kind.starts_with("watcher_"),
        ) {
            let error = (n.kind == "watcher_failing").then(|| {
                n.detail
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("?")
                    .to_string()
            });
            self.watchers.record(rank, w, error, Instant::now());
        }
        self.events.emit(
            &n.kind,
            json!({"attempt": attempt, "rank": rank, "message": n.message, "warning": n.warning, "detail": n.detail}),
        );
        if n.warning {
            let text = format!("rank {rank}: {}", n.message);
            if !self.plan.warnings.contains(&text) {
                self.console.note(&format!("[ringmaster] warning: {text}"));
                self.plan.warnings.push(text);
            }
        }
    }

    /// A worker's watcher saw a notice (or an early warning): record the
    /// first preemption notice and act on it; record each warning once.
    pub(super) fn notice_seen(
        &mut self,
        attempt: u32,
        rank: u32,
        n: &NoticeInfo,
        seen: &mut Option<(u32, NoticeInfo)>,
        warnings: &mut BTreeSet<(String, String)>,
        queue: &mut VecDeque<Event>,
    ) {
        let rfc = |ms: u64| {
            humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        };
        if n.preempt && seen.is_none() {
            self.events.emit(
                "notice_received",
                json!({"attempt": attempt, "rank": rank, "source": n.source, "detail": n.detail,
                       "seen": rfc(n.seen_unix_ms), "deadline": n.deadline_unix_ms.map(rfc)}),
            );
            self.console.note(&format!(
                "[ringmaster] preemption notice from {} (rank {rank}): {}",
                n.source, n.detail
            ));
            *seen = Some((rank, n.clone()));
            queue.push_back(Event::Notice);
        } else if !n.preempt && warnings.insert((n.source.clone(), n.detail.clone())) {
            self.events.emit(
                "early_warning",
                json!({"attempt": attempt, "rank": rank, "source": n.source, "detail": n.detail}),
            );
            self.console.note(&format!(
                "[ringmaster] early warning from {} (rank {rank}): {}",
                n.source, n.detail
            ));
        }
    }
}

/// A wall-clock time (ms since the epoch) on the monotonic clock.
fn wall_to_instant(ms: u64) -> Instant {
    let now = Instant::now();
    let now_ms = unix_ms(SystemTime::now());
    if ms <= now_ms {
        now.checked_sub(Duration::from_millis(now_ms - ms))
            .unwrap_or(now)
    } else {
        now + Duration::from_millis(ms - now_ms)
    }
}
