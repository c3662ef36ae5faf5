//! What the supervisor's tick adds to the run's Prometheus metrics
//! (`crate::metrics`); events and heartbeats feed them where they happen.

use super::state::RunState;
use super::Supervisor;

impl Supervisor {
    /// Once a second: each live rank's heartbeat age, and the bill so far
    /// (a provider that bills).
    pub(super) fn refresh_metrics(&mut self, r: &RunState, now: std::time::Instant) {
        let ages: Vec<(u32, u32, std::time::Duration)> = r
            .attempt
            .iter()
            .flat_map(|a| {
                a.last_beat.iter().enumerate().filter_map(|(rank, t)| {
                    t.map(|t| {
                        (
                            rank as u32,
                            a.node_of[rank],
                            now.saturating_duration_since(t),
                        )
                    })
                })
            })
            .collect();
        let cost = r
            .provider
            .cost(self.start.elapsed().as_secs_f64())
            .map(|c| (c.cost_usd, c.on_demand_equivalent_usd));
        self.metrics.tick(&ages, cost);
    }
}
