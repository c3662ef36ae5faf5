//! Random spot preemptions for the simulator: seeded exponential gaps per
//! node, drawn lazily (pure).

use std::time::Duration;

/// Seconds in an average month.
const MONTH_S: f64 = 730.0 * 3600.0;

/// Random preemptions: for each node, exponential gaps with mean
/// month/rate of simulated time (divided by the time scale: real seconds),
/// drawn lazily from a seeded ChaCha stream, so the same inputs give the
/// same times however long the run.
pub struct RandomDraws {
    rng: rand_chacha::ChaCha8Rng,
    mean_real_s: f64,
    /// Each node's next preemption, real seconds from the start.
    next: Vec<f64>,
}

impl RandomDraws {
    pub fn new(nodes: u32, rate_per_month: f64, time_scale: f64, seed: u64) -> RandomDraws {
        use rand::SeedableRng;
        let mut d = RandomDraws {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            mean_real_s: MONTH_S / rate_per_month / time_scale,
            next: Vec::new(),
        };
        for _ in 0..nodes {
            let gap = d.gap();
            d.next.push(gap);
        }
        d
    }

    fn gap(&mut self) -> f64 {
        use rand::Rng;
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        -u.ln() * self.mean_real_s
    }

    /// The soonest next preemption: (real seconds from the start, node).
    fn soonest(&self) -> (f64, u32) {
        self.next
            .iter()
            .enumerate()
            .map(|(n, t)| (*t, n as u32))
            .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a })
    }

    /// The preemptions due by `now_s` (real seconds from the start), in
    /// time order; each node's next one is drawn as its last is taken.
    pub fn due(&mut self, now_s: f64) -> Vec<(f64, u32)> {
        let mut out = Vec::new();
        loop {
            let (t, n) = self.soonest();
            if t > now_s {
                return out;
            }
            out.push((t, n));
            let gap = self.gap();
            self.next[n as usize] += gap;
        }
    }
}

/// Random preemption times (real time from the start, node) within
/// `horizon` (see `RandomDraws`).
pub fn draw_preemptions(
    nodes: u32,
    rate_per_month: f64,
    time_scale: f64,
    seed: u64,
    horizon: Duration,
) -> Vec<(Duration, u32)> {
    RandomDraws::new(nodes, rate_per_month, time_scale, seed)
        .due(horizon.as_secs_f64())
        .into_iter()
        .map(|(t, n)| (Duration::from_secs_f64(t), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_preemptions_are_seeded_and_follow_the_rate() {
        let week = Duration::from_secs(7 * 24 * 3600);
        // 100 simulated weeks: about 4 x 0.25 x 23 = 23 preemptions.
        let a = draw_preemptions(4, 0.25, 100.0, 7, week);
        assert!(!a.is_empty());
        assert_eq!(
            a,
            draw_preemptions(4, 0.25, 100.0, 7, week),
            "same seed, same times"
        );
        assert_ne!(a, draw_preemptions(4, 0.25, 100.0, 8, week));
        assert!(a.iter().all(|(t, n)| *t <= week && *n < 4));
        // A time scale of 3600 runs an hour of market a second: 2 hours of
        // real time are 7200 simulated hours, about 9.9 months: 1000 nodes
        // x 0.25 a month x 9.86 months = about 2466 preemptions.
        let many = draw_preemptions(1000, 0.25, 3600.0, 1, Duration::from_secs(7200));
        let expected = 1000.0 * 0.25 * 7200.0 * 3600.0 / MONTH_S;
        let n = many.len() as f64;
        assert!(
            (n - expected).abs() < 4.0 * expected.sqrt(),
            "{n} vs {expected}"
        );
    }
}
