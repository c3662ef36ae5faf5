//! What the supervisor's tick adds to the run's Prometheus metrics
//! (`crate::metrics`); events and heartbeats feed them where they happen.

use super::state::RunState;
use super::Supervisor;
use std::io::Write;

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
        let status = self.status(r, now);
        if let Err(e) = crate::status::write(&self.run_dir, &status) {
            tracing::warn!("cannot write status.json: {e}");
        }
        let sample = crate::status::Sample {
            t: (self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            attempt: status.attempt,
            ranks: status.ranks.into_iter().take(64).collect(),
            cost: cost.map(|(c, _)| c),
        };
        if let Err(e) = crate::status::append(&self.run_dir, &sample) {
            tracing::warn!("cannot write progress.jsonl: {e}");
        }
    }

    /// What `ringmaster status` shows (`crate::status`).
    fn status(&self, r: &RunState, now: std::time::Instant) -> crate::status::Status {
        let (notices, restarts, checkpoint_step) = self.metrics.totals();
        let progress = r.attempt.as_ref().and_then(|a| a.progress());
        let ranks = self
            .plan
            .workers
            .iter()
            .map(|w| {
                let a = r.attempt.as_ref();
                let beat = a.and_then(|a| a.beats[w.rank as usize].as_ref());
                crate::status::RankStatus {
                    rank: w.rank,
                    node: w.node_rank,
                    step: beat.map(|b| b.step),
                    steps_per_s: self.metrics.rank_rate(w.rank, w.node_rank),
                    loss: beat.and_then(|b| b.loss),
                    heartbeat_age_s: a
                        .and_then(|a| a.last_beat[w.rank as usize])
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    exited: a.is_some_and(|a| a.exits.contains_key(&w.rank)),
                }
            })
            .collect();
        let eta_s = progress.as_ref().and_then(|p| {
            p.steps_per_s
                .filter(|r| *r > 0.0)
                .map(|r| p.total_steps.saturating_sub(p.step) as f64 / r)
        });
        crate::status::Status {
            run_id: self.run_id.clone(),
            job_name: self.compiled.spec.name.clone(),
            launcher_pid: std::process::id(),
            updated: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            attempt: r.attempt.as_ref().map(|a| a.n).unwrap_or_default(),
            world_size: self.plan.world_size,
            nodes: self.compiled.spec.resources.nodes,
            ranks,
            step: progress.as_ref().map(|p| p.step),
            total_steps: progress.as_ref().map(|p| p.total_steps),
            steps_per_s: progress.as_ref().and_then(|p| p.steps_per_s),
            eta_s,
            checkpoint_step,
            notices,
            restarts,
        }
    }
}

impl Supervisor {
    /// A node's GPU sample (its local rank 0's worker): exported per GPU
    /// with the ranks on it, and appended to the run's telemetry.csv
    /// (nvidia-smi's columns, then node and ranks).
    pub(super) fn node_gpus(&mut self, node: u32, samples: &[gpu::telemetry::GpuSample]) {
        let on_node: Vec<(u32, &str)> = self
            .plan
            .workers
            .iter()
            .filter(|w| w.node_rank == node)
            .filter_map(|w| {
                w.contract
                    .cuda_visible_devices
                    .as_deref()
                    .map(|d| (w.rank, d))
            })
            .collect();
        let ranks = gpu::telemetry::ranks_per_gpu(samples, &on_node);
        let host = self
            .plan
            .workers
            .iter()
            .find(|w| w.node_rank == node)
            .map(|w| w.node_addr.clone())
            .unwrap_or_default();
        self.metrics.gpus(node, &host, samples, &ranks);
        let path = self.run_dir.join("telemetry.csv");
        let fresh = !path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        let Ok(mut f) = file else { return };
        let now = std::time::SystemTime::now();
        let mut text = String::new();
        if fresh {
            text.push_str(gpu::telemetry::CSV_HEADER);
            text.push_str(", node, ranks\n");
        }
        for s in samples {
            let on: Vec<String> = ranks
                .get(&s.index)
                .map(|r| r.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default();
            text.push_str(&format!(
                "{}, {node}, {}\n",
                gpu::telemetry::csv_row(now, s),
                on.join(";")
            ));
        }
        if let Err(e) = f.write_all(text.as_bytes()) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}
