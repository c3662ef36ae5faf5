//! Which rank a hung group is waiting for. Pure, tested by tables.
//!
//! torch elastic often names a rank that merely waited; here the culprit is
//! the rank that stopped reporting at all (a frozen process), or else the
//! rank that is not inside a collective while others wait in one (stuck in
//! its own compute), the one furthest behind first.

use proto::wire::Heartbeat;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Culprit {
    pub rank: u32,
    pub why: &'static str,
    pub step: Option<u64>,
}

/// `beats[r]`: rank r's last heartbeat; `ages[r]`: time since it arrived.
pub fn hang_culprit(
    beats: &[Option<Heartbeat>],
    ages: &[Option<Duration>],
    interval: Duration,
) -> Option<Culprit> {
    let silent_after = (interval * 3).max(Duration::from_millis(250));
    let oldest = ages
        .iter()
        .enumerate()
        .filter_map(|(r, a)| a.map(|a| (r, a)))
        .filter(|(_, a)| *a > silent_after)
        .max_by_key(|(_, a)| *a);
    if let Some((r, _)) = oldest {
        return Some(Culprit {
            rank: r as u32,
            why: "stopped sending heartbeats",
            step: beats[r].as_ref().map(|b| b.step),
        });
    }
    let waiting = beats.iter().flatten().any(|b| b.in_collective);
    if !waiting {
        // No collective seen (a program that reports only its steps): the
        // rank that stopped advancing first, where the ranks differ.
        let steps: Vec<(usize, u64)> = beats
            .iter()
            .enumerate()
            .filter_map(|(r, b)| b.as_ref().map(|b| (r, b.step)))
            .collect();
        let (lo, hi) = (
            steps.iter().map(|s| s.1).min()?,
            steps.iter().map(|s| s.1).max()?,
        );
        return (lo < hi)
            .then(|| steps.iter().find(|s| s.1 == lo))
            .flatten()
            .map(|(r, step)| Culprit {
                rank: *r as u32,
                why: "stopped advancing first (the lowest step)",
                step: Some(*step),
            });
    }
    beats
        .iter()
        .enumerate()
        .filter_map(|(r, b)| b.as_ref().map(|b| (r, b)))
        .filter(|(_, b)| !b.in_collective)
        .min_by_key(|(_, b)| (b.step, b.collectives))
        .map(|(r, b)| Culprit {
            rank: r as u32,
            why: "is not in a collective while the others wait for it",
            step: Some(b.step),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(step: u64, collectives: u64, in_collective: bool) -> Option<Heartbeat> {
        Some(Heartbeat {
            step,
            collectives,
            in_collective,
            total_steps: 100,
            ..Default::default()
        })
    }

    #[test]
    fn culprit_table() {
        let s = Duration::from_secs;
        let i = Duration::from_millis(100);
        let cases: Vec<(
            Vec<Option<Heartbeat>>,
            Vec<Option<Duration>>,
            Option<(u32, &str)>,
        )> = vec![
            // Rank 2 froze: its heartbeats stopped; the others wait.
            (
                vec![hb(7, 14, true), hb(7, 14, true), hb(7, 13, false)],
                vec![Some(s(0)), Some(s(0)), Some(s(5))],
                Some((2, "stopped sending heartbeats")),
            ),
            // Rank 1 is stuck in its own compute; the others wait in step 8's all-reduce.
            (
                vec![hb(7, 14, true), hb(7, 14, false), hb(7, 14, true)],
                vec![Some(s(0)); 3],
                Some((1, "is not in a collective while the others wait for it")),
            ),
            // Two outside: the one furthest behind.
            (
                vec![hb(9, 18, false), hb(8, 16, false), hb(9, 18, true)],
                vec![Some(s(0)); 3],
                Some((1, "is not in a collective while the others wait for it")),
            ),
            // Nobody waits on anybody, all at one step: no culprit to name.
            (
                vec![hb(3, 6, false), hb(3, 6, false)],
                vec![Some(s(0)); 2],
                None,
            ),
            // No collectives seen (a program's own reports): the rank
            // furthest behind stopped first.
            (
                vec![hb(21, 0, false), hb(20, 0, false), hb(21, 0, false)],
                vec![Some(s(0)); 3],
                Some((1, "stopped advancing first (the lowest step)")),
            ),
        ];
        for (beats, ages, want) in cases {
            let got = hang_culprit(&beats, &ages, i).map(|c| (c.rank, c.why));
            assert_eq!(got, want, "{beats:?}");
        }
    }
}
