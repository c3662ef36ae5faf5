//! report.json and the human summary printed at the end of a run.

pub use proto::report::{AttemptReport, FailureReport, Goodput, PreemptionReport, Report};
use proto::result::{Figures, WorkerResult};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Goodput from the attempts' start and reached steps (None when the
/// workload has no steps or nothing was computed).
pub fn goodput(attempts: &[AttemptReport]) -> Option<Goodput> {
    let spans: Vec<(u64, u64)> = attempts
        .iter()
        .filter_map(|a| Some((a.started_at_step.unwrap_or(0), a.reached_step?)))
        .collect();
    let computed: u64 = spans.iter().map(|(s, r)| r.saturating_sub(*s)).sum();
    let first = attempts.first()?.started_at_step.unwrap_or(0);
    let useful = attempts.last()?.reached_step?.saturating_sub(first);
    (computed > 0).then(|| Goodput {
        steps_useful: useful,
        steps_computed: computed,
        goodput: useful as f64 / computed as f64,
    })
}

/// Figures across ranks, by workload kind.
pub fn summarize(workload: &str, results: &BTreeMap<u32, WorkerResult>) -> Value {
    match workload {
        "gemm" => {
            let per: Vec<f64> = results
                .values()
                .filter_map(|r| match &r.figures {
                    Figures::Gemm(g) => Some(g.gflops_best),
                    _ => None,
                })
                .collect();
            json!({
                "gflops_best_per_rank": per,
                "gflops_total": per.iter().sum::<f64>(),
                "gflops_min": per.iter().cloned().reduce(f64::min),
            })
        }
        "allreduce" => results
            .get(&0)
            .map(|r| match &r.figures {
                Figures::Allreduce(a) => json!({"rows": a.rows}),
                _ => json!({"rows": null}),
            })
            .unwrap_or(Value::Null),
        "train" => {
            let sums: Vec<&str> = results
                .values()
                .filter_map(|r| r.train().map(|t| t.weights_sha256.as_str()))
                .collect();
            // Disagreement needs two ranks that differ; fewer reports
            // (an interrupted run) are not a disagreement.
            let agree = sums.iter().all(|s| *s == sums[0]);
            let r0 = results.get(&0).and_then(WorkerResult::train);
            json!({
                "final_loss": r0.and_then(|t| t.final_loss),
                "first_loss": r0.and_then(|t| t.first_loss),
                "steps_per_s": r0.and_then(|t| t.steps_per_s),
                "samples_per_s": r0.and_then(|t| t.samples_per_s),
                "params": r0.map(|t| t.params),
                "weights_sha256": sums.first(),
                "ranks_agree": agree,
                "ranks_reported": sums.len(),
            })
        }
        _ => Value::Null,
    }
}

/// The human summary (a few lines).
pub fn human(r: &Report) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "ringmaster: {} {} ({} x {} {} workers, {}) in {:.2} s, {} restart(s); exit {} ({})",
        r.name,
        r.status,
        r.nodes,
        r.devices_per_node,
        r.workload,
        r.provider,
        r.duration_s,
        r.restarts,
        r.exit_code,
        r.exit_name
    ));
    // Why the run ended, where no attempt says it (no capacity, a cloud
    // error before any worker started).
    if let Some(m) = &r.message {
        if !r.attempts.iter().any(|a| a.message.as_deref() == Some(m)) {
            out.push(format!("  {m}"));
        }
    }
    for a in &r.attempts {
        let ready = a
            .launch_to_ready_s
            .map(|s| format!("ready in {:.3} s", s))
            .unwrap_or_else(|| "never ready".into());
        let rdzv = a
            .rendezvous_s
            .map(|s| format!(", rendezvous {:.3} s", s))
            .unwrap_or_default();
        out.push(format!(
            "  attempt {}: {} ({ready}{rdzv}, {:.2} s)",
            a.attempt, a.outcome, a.duration_s
        ));
        if let Some(m) = &a.message {
            out.push(format!("    {m}"));
        }
        if let Some(f) = &a.failure {
            for l in &f.last_lines {
                out.push(format!("    | {l}"));
            }
        }
    }
    for p in &r.preemptions {
        let opt = |v: Option<f64>| v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "-".into());
        out.push(format!(
            "  preemption ending attempt {} ({}): notice -> out {:.2} s, -> replacement ready {}, -> first step {}; {} in all",
            p.attempt,
            p.source.as_deref().unwrap_or("signal"),
            p.notice_to_out_s,
            opt(p.out_to_replacement_s),
            opt(p.out_to_first_step_s),
            opt(p.total_s)
        ));
    }
    if let Some(c) = &r.cost {
        out.push(format!(
            "  cost ${:.2} for {:.3} node-hours of {} {} at ${:.2}/h; the useful work on-demand: ${:.2} ({:.1}% saved)",
            c.cost_usd,
            c.node_hours,
            c.offer,
            c.market,
            c.price_per_node_hour,
            c.on_demand_equivalent_usd,
            c.savings_percent
        ));
    }
    if let Some(g) = &r.goodput {
        out.push(format!(
            "  goodput {:.1}% ({} useful of {} steps computed)",
            100.0 * g.goodput,
            g.steps_useful,
            g.steps_computed
        ));
    }
    let s = &r.summary;
    match r.workload.as_str() {
        "train" if !s.is_null() => {
            // Only the figures that exist (a run stopped before its first
            // step has no loss and no rate).
            let mut parts = Vec::new();
            match (s["first_loss"].as_f64(), s["final_loss"].as_f64()) {
                (Some(a), Some(b)) => parts.push(format!("loss {a:.6} -> {b:.6}")),
                (None, Some(b)) => parts.push(format!("loss {b:.6}")),
                _ => {}
            }
            if let Some(r) = s["steps_per_s"].as_f64() {
                let samples = s["samples_per_s"]
                    .as_f64()
                    .map(|x| format!(" ({x:.0} samples/s)"))
                    .unwrap_or_default();
                parts.push(format!("{r:.2} steps/s{samples}"));
            }
            let reported = s["ranks_reported"].as_u64().unwrap_or(0);
            if let Some(w) = s["weights_sha256"].as_str() {
                let agreement = match (s["ranks_agree"].as_bool(), reported) {
                    (Some(false), _) => "RANKS DISAGREE".to_string(),
                    (_, n) if n == r.world_size as u64 => "identical on every rank".to_string(),
                    (_, n) => format!("from {n} of {} ranks", r.world_size),
                };
                parts.push(format!("weights sha256 {w} ({agreement})"));
            }
            if parts.is_empty() {
                parts.push("no figures (no rank finished an attempt)".into());
            }
            out.push(format!("  train: {}", parts.join(", ")));
        }
        "gemm" if !s.is_null() => {
            let per: Vec<String> = s["gflops_best_per_rank"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .map(|g| format!("{g:.1}"))
                .collect();
            out.push(format!(
                "  gemm: {} GFLOP/s in total; per rank: {}",
                s["gflops_total"]
                    .as_f64()
                    .map(|g| format!("{g:.1}"))
                    .unwrap_or_default(),
                per.join(", ")
            ));
        }
        "allreduce" if !s.is_null() => {
            out.push("  allreduce (rank 0):      size(B)   oop busbw GB/s   ip busbw GB/s".into());
            for row in s["rows"].as_array().into_iter().flatten() {
                out.push(format!(
                    "  {:>30} {:>16.3} {:>15.3}",
                    row["size_bytes"].as_u64().unwrap_or(0),
                    row["oop_busbw_gbps"].as_f64().unwrap_or(f64::NAN),
                    row["ip_busbw_gbps"].as_f64().unwrap_or(f64::NAN)
                ));
            }
        }
        _ => {}
    }
    out.push(format!("  logs and report: {}", r.run_dir));
    out.join("\n")
}

/// Fill in each attempt's steps lost: how far it got beyond the step the
/// next attempt started from. What the launcher saw of an attempt (its
/// heartbeats, error files) can lag the workers by a heartbeat interval;
/// the checkpoint the next attempt started from was reached too, so
/// `reached_step` is at least that, and `steps_lost` is a lower bound.
pub fn with_steps_lost(mut attempts: Vec<AttemptReport>) -> Vec<AttemptReport> {
    for i in 1..attempts.len() {
        let next_start = attempts[i].started_at_step;
        let prev = &mut attempts[i - 1];
        if let Some(start) = next_start {
            let reached = prev.reached_step.unwrap_or(start).max(start);
            prev.reached_step = Some(reached);
            prev.steps_lost = Some(reached - start);
        }
    }
    attempts
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn attempt(start: Option<u64>, reached: Option<u64>) -> AttemptReport {
        AttemptReport {
            attempt: 0,
            outcome: "worker-failed".into(),
            message: None,
            launch_to_ready_s: None,
            rendezvous_s: None,
            duration_s: 0.0,
            failure: None,
            failure_kind: None,
            started_at_step: start,
            reached_step: reached,
            steps_lost: None,
            world_size: Some(2),
        }
    }

    fn train(loss: Option<(f64, f64)>, rate: Option<f64>, sha: &str) -> WorkerResult {
        train_result(loss, rate, sha, None)
    }

    /// A rank's train result with these figures (the rest zero);
    /// `stopped_at`: a notice's stop step, with the checkpoint committed.
    pub(crate) fn train_result(
        loss: Option<(f64, f64)>,
        rate: Option<f64>,
        sha: &str,
        stopped_at: Option<u64>,
    ) -> WorkerResult {
        use proto::result::{StepSeconds, TrainResult};
        WorkerResult::new(Figures::Train(TrainResult {
            device: "cpu".into(),
            steps: 10,
            steps_done: 10,
            stop_checkpoint_s: None,
            params: 1,
            world_size: 2,
            first_loss: loss.map(|l| l.0),
            final_loss: loss.map(|l| l.1),
            steps_per_s: rate,
            samples_per_s: rate.map(|r| r * 64.0),
            weights_sha256: sha.into(),
            resumed_from_step: 0,
            state_in_memory: false,
            state_from_rank: None,
            preempted: stopped_at.is_some(),
            preempted_at_step: stopped_at,
            checkpoint_committed: stopped_at.is_some(),
            checkpoints_written: 0,
            checkpoint_seconds: 0.0,
            checkpoint_async: false,
            checkpoint_stall_per_step_s: 0.0,
            seconds_per_step: StepSeconds {
                data_wait: 0.0,
                forward_backward: 0.0,
                allreduce: 0.0,
                update: 0.0,
            },
        }))
    }

    #[test]
    fn train_summary_prints_only_figures_that_exist() {
        let report = |results: BTreeMap<u32, WorkerResult>, world: u32| Report {
            run_id: "r".into(),
            name: "n".into(),
            status: "interrupted".into(),
            exit_code: 130,
            exit_name: "interrupted".into(),
            message: None,
            provider: "local".into(),
            workload: "train".into(),
            world_size: world,
            nodes: 1,
            devices_per_node: world,
            threads_per_worker: 1,
            run_dir: "runs/r".into(),
            started: String::new(),
            duration_s: 1.0,
            restarts: 0,
            restarts_by_kind: BTreeMap::new(),
            attempts: vec![],
            preemptions: vec![],
            goodput: None,
            cost: None,
            machines: vec![],
            summary: summarize("train", &results),
            results,
            watchers: vec![],
            warnings: vec![],
        };
        // (results per rank, words that must be there, words that must not)
        let full = |sha: &str| train(Some((1.0, 0.5)), Some(10.0), sha);
        let cases: Vec<(Vec<(u32, WorkerResult)>, u32, Vec<&str>, Vec<&str>)> = vec![
            (
                vec![(0, full("a")), (1, full("a"))],
                2,
                vec![
                    "loss 1.000000 -> 0.500000",
                    "10.00 steps/s",
                    "identical on every rank",
                ],
                vec!["NaN"],
            ),
            (
                vec![(0, full("a")), (1, full("b"))],
                2,
                vec!["RANKS DISAGREE"],
                vec![],
            ),
            // Interrupted: one rank reported.
            (
                vec![(0, full("a"))],
                2,
                vec!["from 1 of 2 ranks"],
                vec!["DISAGREE", "NaN"],
            ),
            // No step run: no loss, no rate.
            (
                vec![(0, train(None, None, "a"))],
                1,
                vec!["weights sha256 a"],
                vec!["NaN", "steps/s", "loss"],
            ),
            (vec![], 2, vec!["no figures"], vec!["NaN", "DISAGREE"]),
        ];
        for (results, world, want, not) in cases {
            let text = human(&report(results.into_iter().collect(), world));
            for w in want {
                assert!(text.contains(w), "{w:?} not in {text}");
            }
            for n in not {
                assert!(!text.contains(n), "{n:?} in {text}");
            }
        }
    }

    #[test]
    fn goodput_counts_redone_steps() {
        // 0 -> 230 (resumed from 200), 200 -> 500: 530 computed, 500 kept.
        let a = with_steps_lost(vec![
            attempt(Some(0), Some(230)),
            attempt(Some(200), Some(500)),
        ]);
        let g = goodput(&a).unwrap();
        assert_eq!((g.steps_useful, g.steps_computed), (500, 530));
        assert!((g.goodput - 500.0 / 530.0).abs() < 1e-12);
        assert!(goodput(&[attempt(None, None)]).is_none());
    }

    #[test]
    fn steps_lost_between_attempts() {
        // (reached by attempt k, start of attempt k+1) -> (reached, lost)
        let table = [
            (Some(230), Some(200), Some(230), Some(30)),
            // The launcher last saw step 173, but the next attempt resumed
            // from step 200's checkpoint: 200 was reached.
            (Some(173), Some(200), Some(200), Some(0)),
            (None, Some(50), Some(50), Some(0)),
            (Some(90), None, Some(90), None),
        ];
        for (reached, next, want_reached, want_lost) in table {
            let out = with_steps_lost(vec![attempt(Some(0), reached), attempt(next, None)]);
            assert_eq!(out[0].reached_step, want_reached, "{reached:?} {next:?}");
            assert_eq!(out[0].steps_lost, want_lost, "{reached:?} {next:?}");
        }
    }
}
