//! Three answers to spot capacity that comes and goes, replayed on one
//! capacity trace (pure): wait for spot, fall back to on-demand, shrink to
//! the nodes there are and grow back. Minute by minute: the market takes
//! spot nodes back where the trace drops below what the run holds, each
//! policy decides which nodes it holds and how many the job runs on, and
//! every change of that number costs `recovery_h` without progress (stop
//! at an agreed step, nodes up, restart: no work lost, the notice's
//! checkpoint). A world of k of N nodes makes k/N of the progress (the
//! global batch kept, the same model). What the run holds is billed,
//! survivors waiting for capacity included.

use serde::Serialize;

/// One job on one offer under one capacity trace.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub nodes: u32,
    /// The fewest nodes the shrinking policy runs on.
    pub min_nodes: u32,
    /// Hours of work on all nodes.
    pub work_h: f64,
    /// USD per node-hour.
    pub spot: f64,
    pub on_demand: f64,
    /// From a change of nodes to training again.
    pub recovery_h: f64,
    /// How long the shrinking policy waits for lost nodes before it goes
    /// on without them (`provider.capacity_wait_s`).
    pub shrink_after_h: f64,
    /// Spot nodes the market holds over time (simulated seconds, as the
    /// `sim` provider's traces), the last value after the end.
    pub capacity: crate::sim::market::Capacity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Spot only: stop and wait until every node is back.
    Wait,
    /// Spot, lost nodes replaced on-demand (they stay on-demand).
    OnDemand,
    /// Spot only: go on with the nodes there are (down to `min_nodes`),
    /// grow back when capacity returns.
    Shrink,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Wait, Policy::OnDemand, Policy::Shrink];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Wait => "wait for spot",
            Policy::OnDemand => "fall back to on-demand",
            Policy::Shrink => "shrink and grow back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub policy: Policy,
    /// Within the horizon (a trace whose capacity never comes back leaves
    /// the waiting policy waiting).
    pub finished: bool,
    pub hours: f64,
    pub cost_usd: f64,
    /// The job's node-hours over the node-hours paid.
    pub goodput: f64,
    /// Preemptions: spot nodes the market took back.
    pub preemptions: u32,
    /// Times the job started again on a new set of nodes.
    pub restarts: u32,
    pub spot_node_hours: f64,
    pub on_demand_node_hours: f64,
}

/// A minute.
const DT: f64 = 1.0 / 60.0;

impl Scenario {
    /// Spot nodes at hour `t` (unlimited: all the job's).
    fn capacity_at(&self, t: f64) -> u32 {
        self.capacity
            .at(t * 3600.0)
            .map_or(self.nodes, |c| c.min(self.nodes))
    }

    /// Long enough for any policy that can finish: the trace's last change,
    /// then the work on the fewest nodes, and the restarts.
    fn horizon_h(&self) -> f64 {
        let last = self
            .capacity
            .changes()
            .last()
            .map_or(0.0, |(t, _)| t / 3600.0);
        let slowest = self.work_h * self.nodes as f64 / self.min_nodes.max(1) as f64;
        last + 2.0 * slowest + 100.0 * self.recovery_h + self.shrink_after_h + 1.0
    }
}

/// Replay `policy` on the scenario.
pub fn replay(s: &Scenario, policy: Policy) -> Outcome {
    let n = s.nodes;
    let horizon = s.horizon_h();
    let (mut t, mut left) = (0.0_f64, s.work_h);
    let (mut spot, mut od) = (s.capacity_at(0.0), 0u32);
    if policy == Policy::OnDemand {
        od = n - spot;
    }
    // The nodes the job runs on, the size it is restarting to and until
    // when, the last time the market took nodes.
    let mut running = 0u32;
    let mut restart: Option<(u32, f64)> = None;
    let mut lost_at: Option<f64> = None;
    let (mut preemptions, mut restarts) = (0u32, 0u32);
    let (mut spot_h, mut od_h) = (0.0, 0.0);
    while left > 1e-9 && t < horizon {
        let c = s.capacity_at(t);
        if spot > c {
            // The market takes nodes back: the group stops at an agreed
            // step (checkpointed).
            preemptions += spot - c;
            spot = c;
            running = 0;
            restart = None;
            lost_at = Some(t);
        }
        // Which nodes the policy holds, and how many the job runs on.
        let size = match policy {
            Policy::Wait => {
                if c >= n {
                    spot = n;
                }
                if spot == n {
                    n
                } else {
                    0
                }
            }
            Policy::OnDemand => {
                spot = spot.max(c.min(n - od));
                od = n - spot;
                n
            }
            Policy::Shrink => {
                let waited = lost_at.is_none_or(|l| t - l >= s.shrink_after_h - 1e-9);
                if c > spot && (spot < n) && (waited || c >= n) {
                    spot = c.min(n);
                }
                if spot == n || (spot >= s.min_nodes && waited) {
                    spot
                } else {
                    0
                }
            }
        };
        if size == 0 {
            running = 0;
            restart = None;
        } else if size != running && restart.is_none_or(|(k, _)| k != size) {
            running = 0;
            restart = Some((size, t + s.recovery_h));
            restarts += 1;
        }
        if let Some((k, until)) = restart {
            if t + 1e-9 >= until {
                running = k;
                restart = None;
            }
        }
        let step = if running > 0 {
            // The last minute's fraction, where the work ends inside it.
            let rate = running as f64 / n as f64;
            let step = DT.min(left / rate);
            left -= step * rate;
            step
        } else {
            DT
        };
        spot_h += spot as f64 * step;
        od_h += od as f64 * step;
        t += step;
    }
    let paid = spot_h + od_h;
    Outcome {
        policy,
        finished: left <= 1e-9,
        hours: t,
        cost_usd: spot_h * s.spot + od_h * s.on_demand,
        goodput: if paid > 0.0 {
            (s.work_h - left.max(0.0)) * n as f64 / paid
        } else {
            0.0
        },
        preemptions,
        restarts,
        spot_node_hours: spot_h,
        on_demand_node_hours: od_h,
    }
}

/// `plan`'s comparison: the scenario in words and each policy's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The offer the prices are of ("p4d.24xlarge aws us-east-1").
    pub offer: String,
    pub trace: String,
    pub nodes: u32,
    pub min_nodes: u32,
    pub work_h: f64,
    pub spot_per_node_h: f64,
    pub on_demand_per_node_h: f64,
    pub recovery_h: f64,
    pub shrink_after_h: f64,
    /// Where a figure is assumed, not the job's own.
    pub assumptions: Vec<String>,
    pub outcomes: Vec<Outcome>,
}

pub fn compare(s: &Scenario, offer: String, trace: String, assumptions: Vec<String>) -> Comparison {
    Comparison {
        offer,
        trace,
        nodes: s.nodes,
        min_nodes: s.min_nodes,
        work_h: s.work_h,
        spot_per_node_h: s.spot,
        on_demand_per_node_h: s.on_demand,
        recovery_h: s.recovery_h,
        shrink_after_h: s.shrink_after_h,
        assumptions,
        outcomes: Policy::ALL.iter().map(|p| replay(s, *p)).collect(),
    }
}

/// The comparison as `plan` prints it.
pub fn human_policies(c: &Comparison) -> String {
    let mut out = format!(
        "spot capacity as in {} ({} x {}: spot ${:.3}, on-demand ${:.3} a node-hour; {:.1} h of work on {} nodes; {:.0} min per restart; shrink to >= {} nodes after {:.0} min):\n",
        c.trace,
        c.nodes,
        c.offer,
        c.spot_per_node_h,
        c.on_demand_per_node_h,
        c.work_h,
        c.nodes,
        c.recovery_h * 60.0,
        c.min_nodes,
        c.shrink_after_h * 60.0
    );
    out.push_str(&format!(
        "  {:<24} {:>9} {:>11} {:>8} {:>12} {:>9}\n",
        "policy", "hours", "cost", "goodput", "preemptions", "restarts"
    ));
    for o in &c.outcomes {
        let (hours, cost) = if o.finished {
            (format!("{:.1}", o.hours), format!("${:.0}", o.cost_usd))
        } else {
            (format!(">{:.0}", o.hours), format!(">${:.0}", o.cost_usd))
        };
        out.push_str(&format!(
            "  {:<24} {:>9} {:>11} {:>7.1}% {:>12} {:>9}{}\n",
            o.policy.name(),
            hours,
            cost,
            100.0 * o.goodput,
            o.preemptions,
            o.restarts,
            if o.finished {
                ""
            } else {
                "  (never finishes: capacity does not come back)"
            }
        ));
    }
    let done: Vec<&Outcome> = c.outcomes.iter().filter(|o| o.finished).collect();
    let best = |key: fn(&Outcome) -> f64| {
        done.iter()
            .min_by(|a, b| key(a).total_cmp(&key(b)))
            .map(|o| o.policy.name())
    };
    if let (Some(fast), Some(cheap)) = (best(|o| o.hours), best(|o| o.cost_usd)) {
        out.push_str(&format!("  fastest: {fast}; cheapest: {cheap}\n"));
    }
    for a in &c.assumptions {
        out.push_str(&format!("  assumed: {a}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace of (hour, capacity) steps.
    fn hours(steps: &[(f64, Option<u32>)]) -> crate::sim::market::Capacity {
        crate::sim::market::Capacity::new(steps.iter().map(|(h, c)| (h * 3600.0, *c)).collect())
    }

    /// 4 nodes, 60 h of work, spot $1, on-demand $3 a node-hour, 6 min
    /// per restart, shrink after 30 min; half the capacity gone from hour
    /// 10 to hour 34.
    fn halved() -> Scenario {
        Scenario {
            nodes: 4,
            min_nodes: 2,
            work_h: 60.0,
            spot: 1.0,
            on_demand: 3.0,
            recovery_h: 0.1,
            shrink_after_h: 0.5,
            capacity: hours(&[(0.0, Some(4)), (10.0, Some(2)), (34.0, Some(4))]),
        }
    }

    /// Within three of the replay's minutes (hours, and dollars at a few
    /// nodes' price).
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.05 + b.abs() * 1e-3
    }

    #[test]
    fn unlimited_capacity_is_the_same_for_every_policy() {
        let mut s = halved();
        s.capacity = hours(&[(0.0, None)]);
        for p in Policy::ALL {
            let o = replay(&s, p);
            // One start (0.1 h) and 60 h of work on 4 spot nodes.
            assert!(o.finished, "{o:?}");
            assert!(close(o.hours, 60.1), "{o:?}");
            assert!(close(o.cost_usd, 4.0 * 60.1), "{o:?}");
            assert_eq!((o.preemptions, o.restarts), (0, 1), "{o:?}");
        }
    }

    /// The table the three policies make on a halved day, worked by hand:
    /// wait: 10 h of work, 24 h waiting on 2 nodes, a restart, 50 h more;
    /// on-demand: 2 nodes on-demand from hour 10 to the end; shrink: half
    /// speed from hour 10.6 to 34, then a restart to all four.
    #[test]
    fn a_halved_day_under_each_policy() {
        let s = halved();
        let wait = replay(&s, Policy::Wait);
        // 0.1 + 9.9 h work (10 h), wait to 34, 0.1 restart, 50.1 h of work
        // left... 60 - 9.9 = 50.1 h: ends at 34.1 + 50.1 = 84.2.
        assert!(close(wait.hours, 84.2), "{wait:?}");
        assert_eq!((wait.preemptions, wait.restarts), (2, 2));
        // Billed: 4 nodes for 10 h, 2 survivors for 24 h, 4 for 50.2 h.
        assert!(close(wait.cost_usd, 40.0 + 48.0 + 4.0 * 50.2), "{wait:?}");
        let od = replay(&s, Policy::OnDemand);
        // A restart at hour 10 costs 0.1 h: ends at 60.2.
        assert!(close(od.hours, 60.2), "{od:?}");
        assert!(close(od.on_demand_node_hours, 2.0 * 50.2), "{od:?}");
        assert!(
            close(od.cost_usd, 4.0 * 10.0 + 2.0 * 50.2 + 3.0 * 2.0 * 50.2),
            "{od:?}"
        );
        let sh = replay(&s, Policy::Shrink);
        // 9.9 h done by hour 10; waits 0.5 h, restarts 0.1 h: from 10.6 to
        // 34 at half speed (11.7 h of work); restart to 34.1; 60 - 9.9 -
        // 11.7 = 38.4 h left: ends at 72.5.
        assert!(close(sh.hours, 72.5), "{sh:?}");
        assert_eq!((sh.preemptions, sh.restarts), (2, 3), "{sh:?}");
        assert!(close(sh.cost_usd, 40.0 + 2.0 * 24.0 + 4.0 * 38.5), "{sh:?}");
        // The order a planner reads: on-demand fastest, shrink cheapest.
        assert!(od.hours < sh.hours && sh.hours < wait.hours);
        assert!(sh.cost_usd < wait.cost_usd && wait.cost_usd < od.cost_usd);
        assert!(sh.goodput > wait.goodput, "{sh:?} {wait:?}");
    }

    #[test]
    fn capacity_that_never_comes_back() {
        let mut s = halved();
        s.capacity = hours(&[(0.0, Some(4)), (10.0, Some(1))]);
        // Waiting never ends; the fallback finishes; one node is below
        // min_nodes: the shrinking policy waits as well.
        assert!(!replay(&s, Policy::Wait).finished);
        assert!(replay(&s, Policy::OnDemand).finished);
        assert!(!replay(&s, Policy::Shrink).finished);
        s.min_nodes = 1;
        let sh = replay(&s, Policy::Shrink);
        assert!(sh.finished, "{sh:?}");
        // Quarter speed from hour 10.6: 50.1 x 4 h more.
        assert!(close(sh.hours, 10.6 + 0.0 + 4.0 * 50.1), "{sh:?}");
    }
}
