//! An elastic run short of nodes grows back while it runs: every
//! `Provider::capacity_retry` the lost nodes are asked for again; the ones
//! the cloud gives back boot while the group goes on, and once they are up
//! (and their node agents connected, on a cloud) the group stops at an
//! agreed step, checkpointed (the machine's `Grow`), and the next attempt
//! runs on them too.

use super::launch::agents_missing;
use super::machine::{Event, Phase};
use super::state::RunState;
use super::Supervisor;
use crate::provider::NodeEvent;
use proto::events::RunEvent;
use proto::wire::{unix_ms, NoticeInfo};
use std::time::{Instant, SystemTime};

/// Where a run short of nodes stands with getting them back.
#[derive(Debug, Default)]
pub(super) struct Grow {
    /// When the provider is asked next (None: at the next tick).
    next_ask: Option<Instant>,
    /// Nodes the provider gave back in this attempt, and when they are up.
    pub nodes: Vec<u32>,
    ready_at: Option<Instant>,
    /// The machine was told (`Event::Grow`).
    asked: bool,
}

impl Supervisor {
    /// From the tick: ask for the missing nodes, and once some are up,
    /// stop the group to grow onto them. Only while the group is healthy
    /// (a stop under way restarts it anyway, and takes the nodes then).
    pub(super) fn check_growth(&mut self, r: &mut RunState, now: Instant) {
        let short = self.plan.nodes.len() < self.full_plan.nodes.len();
        if !short || r.machine.phase != Phase::Healthy || r.grow.asked {
            return;
        }
        if let Some(at) = r.grow.ready_at {
            // Up: booted, and where a node agent starts the workers (a
            // cloud instance), its agent connected.
            if now >= at && agents_missing(r, &r.grow.nodes).is_empty() {
                r.grow.asked = true;
                let nodes = &r.grow.nodes;
                r.seen_notice.get_or_insert((
                    0,
                    NoticeInfo {
                        source: "elastic: capacity back".into(),
                        preempt: false,
                        deadline_unix_ms: None,
                        seen_unix_ms: unix_ms(SystemTime::now()),
                        detail: format!("node(s) {nodes:?} are up"),
                    },
                ));
                self.console.note(&format!(
                    "[ringmaster] node(s) {nodes:?} are up: the group stops at an agreed step to grow onto them"
                ));
                r.queue.push_back(Event::Grow);
            }
            return;
        }
        if r.grow.next_ask.is_some_and(|t| now < t) {
            return;
        }
        r.grow.next_ask = Some(now + r.provider.capacity_retry());
        let events = match r.provider.replace_lost() {
            Ok((events, _still_waiting)) => events,
            Err(e) => {
                // Asked again at the next retry; the run goes on.
                tracing::warn!("asking for the missing nodes: {e}");
                return;
            }
        };
        for ev in &events {
            self.emit_node_event(ev, r.provider.as_ref());
            if let NodeEvent::Ready { node, .. } = ev {
                r.grow.nodes.push(*node);
            }
        }
        if !r.grow.nodes.is_empty() {
            let boot = r.provider.provisioning_delay();
            r.grow.ready_at = Some(now + boot);
            self.events.emit(RunEvent::WorldGrowing {
                attempt: r.machine.attempt,
                nodes: r.grow.nodes.clone(),
                ready_in_s: boot.as_secs_f64(),
            });
            self.console.note(&format!(
                "[ringmaster] capacity is back for node(s) {:?}: they boot while the run goes on ({:.1} s)",
                r.grow.nodes,
                boot.as_secs_f64()
            ));
        }
    }
}
