//! The launcher's Prometheus metrics, served on `observability.metrics_addr`
//! (`--metrics-addr`) while a run is alive: `GET /metrics` in the text
//! exposition format of the `prometheus` crate, with the standard
//! `process_*` metrics of the launcher itself.
//!
//! Every series carries the run's `run_id` and `job_name` (not `job`, which
//! Prometheus gives the scrape job); per-rank series add `rank` and `node`.
//! Names follow Prometheus' conventions: a `ringmaster_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` for counters, ratios in 0..1. What
//! changes with the run comes from two places only: the run's events as
//! they are written (`observe`, called by `Events::emit`), and each rank's
//! heartbeat (`beat`) and the supervisor's tick (`tick`).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use proto::events::RunEvent;
use proto::wire::Heartbeat;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One metric's name, kind, labels and help: the table the unit test reads.
pub struct Def {
    pub name: &'static str,
    pub kind: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! defs {
    ($($id:ident: $name:literal, $kind:literal, [$($l:literal),*], $help:literal;)*) => {
        $(const $id: Def = Def { name: $name, kind: $kind, labels: &[$($l),*], help: $help };)*
        /// Every metric ringmaster defines (the process_* ones aside).
        pub const ALL: &[Def] = &[$($id),*];
    };
}

defs! {
    WORLD_SIZE: "ringmaster_world_size", "gauge", [], "Workers (ranks) in the current attempt (an elastic run's follow its nodes).";
    NODES: "ringmaster_nodes", "gauge", [], "Nodes the current attempt runs on.";
    NODES_UP: "ringmaster_nodes_up", "gauge", [], "Nodes whose workers all joined the current attempt.";
    ATTEMPT: "ringmaster_attempt", "gauge", [], "The current attempt (0 first).";
    RANK_STEP: "ringmaster_rank_step", "gauge", ["rank", "node"], "The step this rank reported last (goes back after a restart from a checkpoint).";
    RANK_STEPS: "ringmaster_rank_steps_total", "counter", ["rank", "node"], "Steps this rank computed, redone ones included.";
    RANK_STEP_RATE: "ringmaster_rank_steps_per_second", "gauge", ["rank", "node"], "This rank's step rate.";
    RANK_SAMPLES: "ringmaster_rank_samples_per_second", "gauge", ["rank", "node"], "This rank's samples per second, where the workload says.";
    RANK_LOSS: "ringmaster_rank_loss", "gauge", ["rank", "node"], "This rank's last reported loss.";
    RANK_BEAT_AGE: "ringmaster_rank_heartbeat_age_seconds", "gauge", ["rank", "node"], "Seconds since this rank's last heartbeat.";
    JOINS: "ringmaster_rendezvous_joins_total", "counter", [], "Workers that joined a rendezvous round.";
    RESTARTS: "ringmaster_restarts_total", "counter", ["kind"], "Restarts, by the budget they drew on (user, infrastructure, preemption, preflight), and an elastic run's stops to grow (resize, no budget).";
    NOTICES: "ringmaster_notices_total", "counter", ["source"], "Preemption notices the launcher acted on, by source.";
    CHECKPOINTS: "ringmaster_checkpoints_total", "counter", [], "Checkpoints committed (a command job's, by the launcher).";
    CHECKPOINT_STEP: "ringmaster_checkpoint_last_step", "gauge", [], "The step of the newest committed checkpoint.";
    CHECKPOINT_BYTES: "ringmaster_checkpoint_last_bytes", "gauge", [], "The size of the newest committed checkpoint.";
    CHECKPOINT_SECONDS: "ringmaster_checkpoint_commit_seconds", "histogram", [], "Seconds to commit a checkpoint (sync, checksum, manifest, rename).";
    RECOVERY_SECONDS: "ringmaster_recovery_seconds", "histogram", [], "From a preemption notice to the first step done again.";
    GOODPUT: "ringmaster_goodput_ratio", "gauge", [], "Steps whose work the run kept / steps computed, over the attempts ended so far (0..1).";
    COST: "ringmaster_cost_dollars", "gauge", ["basis"], "What the nodes cost so far (basis=actual), and the same useful work on demand (basis=on_demand).";
    GPU_TELEMETRY: "ringmaster_gpu_telemetry_available", "gauge", ["reason"], "1 when GPU series are exported; 0 with the reason when not.";
}

/// GPU series under ringmaster's names (base units, ratios 0..1), with the
/// node, the GPU and the ranks that use it.
const GPU_LABELS: &[&str] = &["node", "gpu", "uuid", "model", "ranks"];
const GPU_OURS: &[(&str, &str)] = &[
    (
        "ringmaster_gpu_utilization_ratio",
        "GPU utilisation (NVML), 0..1.",
    ),
    ("ringmaster_gpu_memory_used_bytes", "GPU memory used."),
    ("ringmaster_gpu_memory_total_bytes", "GPU memory in all."),
    ("ringmaster_gpu_power_watts", "GPU power draw."),
    ("ringmaster_gpu_temperature_celsius", "GPU temperature."),
    ("ringmaster_gpu_sm_clock_hertz", "GPU SM clock."),
];
/// The same under dcgm-exporter's names, units and label names (what
/// existing dashboards and autoscalers query), plus the node.
pub const DCGM_LABELS: &[&str] = &["gpu", "UUID", "device", "modelName", "Hostname", "node"];
pub const DCGM: &[(&str, &str)] = &[
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)."),
];
/// And the seed's name: utilisation in percent per GPU and node.
pub const SEED_UTIL: &str = "nvidia_gpu_utilization";

pub struct Metrics {
    registry: Registry,
    gpu_ours: Vec<GaugeVec>,
    gpu_dcgm: Vec<GaugeVec>,
    gpu_seed: GaugeVec,
    world_size: IntGauge,
    nodes: IntGauge,
    nodes_up: IntGauge,
    attempt: IntGauge,
    rank_step: IntGaugeVec,
    rank_steps: IntCounterVec,
    rank_step_rate: GaugeVec,
    rank_samples: GaugeVec,
    rank_loss: GaugeVec,
    rank_beat_age: GaugeVec,
    joins: IntCounter,
    restarts: IntCounterVec,
    notices: IntCounterVec,
    checkpoints: IntCounter,
    checkpoint_step: IntGauge,
    checkpoint_bytes: IntGauge,
    checkpoint_seconds: Histogram,
    recovery_seconds: Histogram,
    cost: GaugeVec,
    goodput: prometheus::Gauge,
    gpu_telemetry: IntGaugeVec,
    /// Per rank: the last step counted, and the rate's origin.
    ranks: Mutex<BTreeMap<u32, RankMark>>,
    /// Totals for the status file: notices acted on, restarts.
    notices_seen: std::sync::atomic::AtomicU32,
    restarts_seen: std::sync::atomic::AtomicU32,
}

#[derive(Clone, Copy)]
struct RankMark {
    step: u64,
    since: (Instant, u64),
}

fn opts(d: &Def) -> Opts {
    Opts::new(d.name, d.help)
}

impl Metrics {
    /// The metrics of run `run_id` of job `job_name`, registered.
    pub fn new(run_id: &str, job_name: &str) -> Metrics {
        let labels = HashMap::from([
            ("run_id".to_string(), run_id.to_string()),
            ("job_name".to_string(), job_name.to_string()),
        ]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid const labels");
        let ig = |d: &Def| IntGauge::with_opts(opts(d)).expect("valid metric");
        let igv = |d: &Def| IntGaugeVec::new(opts(d), d.labels).expect("valid metric");
        let gv = |d: &Def| GaugeVec::new(opts(d), d.labels).expect("valid metric");
        let icv = |d: &Def| IntCounterVec::new(opts(d), d.labels).expect("valid metric");
        let hist = |d: &Def, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(d.name, d.help).buckets(buckets))
                .expect("valid metric")
        };
        let family = |list: &[(&str, &str)], labels: &[&str]| -> Vec<GaugeVec> {
            list.iter()
                .map(|(n, h)| GaugeVec::new(Opts::new(*n, *h), labels).expect("valid metric"))
                .collect()
        };
        let m = Metrics {
            gpu_ours: family(GPU_OURS, GPU_LABELS),
            gpu_dcgm: family(DCGM, DCGM_LABELS),
            gpu_seed: GaugeVec::new(
                Opts::new(SEED_UTIL, "GPU utilisation in percent."),
                &["gpu", "node"],
            )
            .expect("valid metric"),
            world_size: ig(&WORLD_SIZE),
            nodes: ig(&NODES),
            nodes_up: ig(&NODES_UP),
            attempt: ig(&ATTEMPT),
            rank_step: igv(&RANK_STEP),
            rank_steps: icv(&RANK_STEPS),
            rank_step_rate: gv(&RANK_STEP_RATE),
            rank_samples: gv(&RANK_SAMPLES),
            rank_loss: gv(&RANK_LOSS),
            rank_beat_age: gv(&RANK_BEAT_AGE),
            joins: IntCounter::with_opts(opts(&JOINS)).expect("valid metric"),
            restarts: icv(&RESTARTS),
            notices: icv(&NOTICES),
            checkpoints: IntCounter::with_opts(opts(&CHECKPOINTS)).expect("valid metric"),
            checkpoint_step: ig(&CHECKPOINT_STEP),
            checkpoint_bytes: ig(&CHECKPOINT_BYTES),
            checkpoint_seconds: hist(
                &CHECKPOINT_SECONDS,
                prometheus::exponential_buckets(0.001, 4.0, 10).expect("valid buckets"),
            ),
            recovery_seconds: hist(
                &RECOVERY_SECONDS,
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0],
            ),
            cost: gv(&COST),
            goodput: prometheus::Gauge::with_opts(opts(&GOODPUT)).expect("valid metric"),
            gpu_telemetry: igv(&GPU_TELEMETRY),
            ranks: Mutex::new(BTreeMap::new()),
            notices_seen: Default::default(),
            restarts_seen: Default::default(),
            registry,
        };
        let r = &m.registry;
        let mut all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.world_size.clone()),
            Box::new(m.nodes.clone()),
            Box::new(m.nodes_up.clone()),
            Box::new(m.attempt.clone()),
            Box::new(m.rank_step.clone()),
            Box::new(m.rank_steps.clone()),
            Box::new(m.rank_step_rate.clone()),
            Box::new(m.rank_samples.clone()),
            Box::new(m.rank_loss.clone()),
            Box::new(m.rank_beat_age.clone()),
            Box::new(m.joins.clone()),
            Box::new(m.restarts.clone()),
            Box::new(m.notices.clone()),
            Box::new(m.checkpoints.clone()),
            Box::new(m.checkpoint_step.clone()),
            Box::new(m.checkpoint_bytes.clone()),
            Box::new(m.checkpoint_seconds.clone()),
            Box::new(m.recovery_seconds.clone()),
            Box::new(m.cost.clone()),
            Box::new(m.goodput.clone()),
            Box::new(m.gpu_telemetry.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            Box::new(m.gpu_seed.clone()),
        ];
        for g in m.gpu_ours.iter().chain(&m.gpu_dcgm) {
            all.push(Box::new(g.clone()));
        }
        for c in all {
            r.register(c).expect("each metric registered once");
        }
        // Every budget's series from the start, at 0: a first restart is a
        // change (`increase`, `changes`), not a series appearing.
        for kind in [
            "user",
            "infrastructure",
            "preemption",
            "preflight",
            "resize",
        ] {
            m.restarts.with_label_values(&[kind]);
        }
        m
    }

    /// The job's shape, and why no GPU series are exported (GPU
    /// telemetry per node is not collected yet: `reason` says so).
    pub fn shape(&self, world: u32, nodes: u32, gpu_reason: &str) {
        self.world_size.set(world as i64);
        self.nodes.set(nodes as i64);
        self.gpu_telemetry.with_label_values(&[gpu_reason]).set(0);
    }

    /// A rank's heartbeat.
    pub fn beat(&self, rank: u32, node: u32, b: &Heartbeat) {
        let (r, n) = (rank.to_string(), node.to_string());
        let l = [r.as_str(), n.as_str()];
        self.rank_step.with_label_values(&l).set(b.step as i64);
        let now = Instant::now();
        let mut ranks = self.ranks.lock().unwrap();
        let mark = ranks.entry(rank).or_insert(RankMark {
            step: b.start_step.unwrap_or(b.step),
            since: (now, b.step),
        });
        if b.step > mark.step {
            self.rank_steps
                .with_label_values(&l)
                .inc_by(b.step - mark.step);
        }
        if b.step < mark.step {
            // A restart from a checkpoint: counting resumes from here.
            mark.since = (now, b.step);
        }
        mark.step = b.step;
        let rate = b.steps_per_s.or_else(|| {
            let (t0, s0) = mark.since;
            let dt = now.duration_since(t0).as_secs_f64();
            (dt >= 1.0 && b.step >= s0).then(|| (b.step - s0) as f64 / dt)
        });
        // The rate is over the last few seconds, not the whole run: a
        // pause (a preemption, a restart) fades out of it.
        if now.duration_since(mark.since.0) > Duration::from_secs(3) {
            mark.since = (now, b.step);
        }
        drop(ranks);
        if let Some(rate) = rate {
            self.rank_step_rate.with_label_values(&l).set(rate);
        }
        if let (Some(rate), Some("samples/s")) = (b.rate, b.rate_unit.as_deref()) {
            self.rank_samples.with_label_values(&l).set(rate);
        }
        if let Some(loss) = b.loss {
            self.rank_loss.with_label_values(&l).set(loss);
        }
    }

    /// The tick: each rank's heartbeat age, and the bill so far.
    pub fn tick(&self, ages: &[(u32, u32, Duration)], cost: Option<(f64, f64)>) {
        for (rank, node, age) in ages {
            self.rank_beat_age
                .with_label_values(&[&rank.to_string(), &node.to_string()])
                .set(age.as_secs_f64());
        }
        if let Some((actual, on_demand)) = cost {
            self.cost.with_label_values(&["actual"]).set(actual);
            self.cost.with_label_values(&["on_demand"]).set(on_demand);
        }
    }

    /// A node's GPU sample (its worker of local rank 0): `host` is the
    /// node's address, `ranks` the ranks on each GPU (by NVML index).
    pub fn gpus(
        &self,
        node: u32,
        host: &str,
        samples: &[proto::telemetry::GpuSample],
        ranks: &BTreeMap<u32, Vec<u32>>,
    ) {
        self.gpu_telemetry.reset();
        self.gpu_telemetry
            .with_label_values(&["sampled per node (NVML)"])
            .set(1);
        let node = node.to_string();
        for s in samples {
            let gpu = s.index.to_string();
            let uuid = s.uuid.clone().unwrap_or_default();
            let on: Vec<String> = ranks
                .get(&s.index)
                .map(|r| r.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default();
            let on = on.join(",");
            let ours = [node.as_str(), &gpu, &uuid, &s.name, &on];
            let device = format!("nvidia{}", s.index);
            let dcgm = [gpu.as_str(), &uuid, &device, &s.name, host, &node];
            let mib = 1024.0 * 1024.0;
            let figures: [(Option<f64>, Option<f64>); 6] = [
                (
                    s.utilization_gpu_pct.map(|u| u as f64 / 100.0),
                    s.utilization_gpu_pct.map(|u| u as f64),
                ),
                (
                    Some(s.memory_used_mib as f64 * mib),
                    Some(s.memory_used_mib as f64),
                ),
                (
                    Some(s.memory_total_mib as f64 * mib),
                    Some(s.memory_total_mib.saturating_sub(s.memory_used_mib) as f64),
                ),
                (s.power_w, s.power_w),
                (
                    s.temperature_c.map(f64::from),
                    s.temperature_c.map(f64::from),
                ),
                (
                    s.sm_clock_mhz.map(|c| c as f64 * 1e6),
                    s.sm_clock_mhz.map(f64::from),
                ),
            ];
            for (i, (ours_v, dcgm_v)) in figures.into_iter().enumerate() {
                if let Some(v) = ours_v {
                    self.gpu_ours[i].with_label_values(&ours).set(v);
                }
                if let Some(v) = dcgm_v {
                    self.gpu_dcgm[i].with_label_values(&dcgm).set(v);
                }
            }
            if let Some(u) = s.utilization_gpu_pct {
                self.gpu_seed
                    .with_label_values(&[gpu.as_str(), &node])
                    .set(u as f64);
            }
        }
    }

    /// Goodput over the attempts ended so far.
    pub fn goodput(&self, ratio: f64) {
        self.goodput.set(ratio);
    }

    /// A preemption's notice -> first step again.
    pub fn recovered(&self, seconds: f64) {
        self.recovery_seconds.observe(seconds);
    }

    /// The run's events, as they are written.
    pub fn observe(&self, e: &RunEvent) {
        match e {
            RunEvent::AttemptStarted { attempt, .. } => {
                self.attempt.set(*attempt as i64);
                self.nodes_up.set(0);
            }
            RunEvent::WorkerJoined { .. } => self.joins.inc(),
            RunEvent::RendezvousComplete { .. } => self.nodes_up.set(self.nodes.get()),
            RunEvent::AttemptEnded {
                restarting: true,
                failure_kind,
                ..
            } => {
                self.restarts_seen.fetch_add(1, Ordering::Relaxed);
                self.restarts
                    .with_label_values(&[failure_kind.as_deref().unwrap_or("preemption")])
                    .inc()
            }
            // An elastic run on fewer (or all its) nodes again.
            RunEvent::WorldResized {
                nodes, world_size, ..
            } => {
                self.world_size.set(*world_size as i64);
                self.nodes.set(nodes.len() as i64);
                // Ranks are numbered again on the new nodes: the old
                // (rank, node) series end here (a counter's reset, which
                // rate() and increase() take), the new ones start with the
                // next beats.
                self.rank_step.reset();
                self.rank_steps.reset();
                self.rank_step_rate.reset();
                self.rank_samples.reset();
                self.rank_loss.reset();
                self.rank_beat_age.reset();
                self.ranks.lock().unwrap().clear();
            }
            RunEvent::NoticeSent { source, .. } => {
                self.notices_seen.fetch_add(1, Ordering::Relaxed);
                self.notices
                    .with_label_values(&[source.as_deref().unwrap_or("signal")])
                    .inc()
            }
            RunEvent::CheckpointCommitted {
                step,
                bytes,
                seconds,
                ..
            } => {
                self.checkpoints.inc();
                self.checkpoint_step.set(*step as i64);
                self.checkpoint_bytes.set(*bytes as i64);
                self.checkpoint_seconds.observe(*seconds);
            }
            // A `train` job's rank 0 committed one (its note).
            RunEvent::WorkerNote { kind, detail, .. } if kind == "checkpoint_committed" => {
                self.checkpoints.inc();
                if let Some(s) = detail["step"].as_u64() {
                    self.checkpoint_step.set(s as i64);
                }
                if let Some(s) = detail["seconds"].as_f64() {
                    self.checkpoint_seconds.observe(s);
                }
            }
            _ => {}
        }
    }

    /// Notices acted on and restarts so far; the newest committed
    /// checkpoint's step (none yet: None).
    pub fn totals(&self) -> (u32, u32, Option<u64>) {
        (
            self.notices_seen.load(Ordering::Relaxed),
            self.restarts_seen.load(Ordering::Relaxed),
            (self.checkpoints.get() > 0).then(|| self.checkpoint_step.get() as u64),
        )
    }

    /// A rank's step rate as exported (None: not known yet).
    pub fn rank_rate(&self, rank: u32, node: u32) -> Option<f64> {
        self.rank_step_rate
            .get_metric_with_label_values(&[&rank.to_string(), &node.to_string()])
            .ok()
            .map(|g| g.get())
            .filter(|_| self.ranks.lock().unwrap().contains_key(&rank))
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text format encodes");
        out
    }
}

/// The `/metrics` endpoint: a small HTTP server on its own thread, gone
/// when dropped.
pub struct Endpoint {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    pub fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<Endpoint> {
        let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("not an IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    let resp = if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
                        let ct =
                            tiny_http::Header::from_bytes("Content-Type", prometheus::TEXT_FORMAT)
                                .expect("a valid header");
                        tiny_http::Response::from_data(metrics.render()).with_header(ct)
                    } else {
                        tiny_http::Response::from_data(b"ringmaster: see /metrics\n".to_vec())
                            .with_status_code(404)
                    };
                    let _ = req.respond(resp);
                }
            })?;
        Ok(Endpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names follow Prometheus' conventions, and what is served is what
    /// the table says.
    #[test]
    fn names_labels_and_kinds_follow_the_conventions() {
        for d in ALL {
            assert!(d.name.starts_with("ringmaster_"), "{}", d.name);
            assert_eq!(
                d.kind == "counter",
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
            assert!(
                !d.labels.contains(&"job"),
                "{}: `job` is the scrape job's",
                d.name
            );
        }
        let m = Metrics::new("run-1", "demo");
        m.shape(4, 2, "cpu job");
        let beat = |step, start| Heartbeat {
            step,
            start_step: start,
            loss: Some(0.5),
            rate: Some(64.0),
            rate_unit: Some("samples/s".into()),
            steps_per_s: Some(8.0),
            ..Default::default()
        };
        m.beat(3, 1, &beat(10, Some(0)));
        m.beat(3, 1, &beat(25, Some(0)));
        // A restart from step 20: the counter does not go back.
        m.beat(3, 1, &beat(20, Some(20)));
        m.beat(3, 1, &beat(22, Some(20)));
        m.observe(&RunEvent::NoticeSent {
            deadline: "d".into(),
            notice_grace_s: 30.0,
            source: Some("aws spot/instance-action".into()),
            stop_step: Some(7),
        });
        m.observe(&RunEvent::AttemptEnded {
            attempt: 0,
            outcome: "failed".into(),
            message: None,
            restarting: true,
            failure: None,
            failure_kind: Some("user".into()),
        });
        let text = String::from_utf8(m.render()).unwrap();
        // (name, labels besides run_id and job_name, value)
        let table: &[(&str, &[(&str, &str)], f64)] = &[
            (
                "ringmaster_rank_steps_total",
                &[("rank", "3"), ("node", "1")],
                27.0,
            ),
            (
                "ringmaster_rank_step",
                &[("rank", "3"), ("node", "1")],
                22.0,
            ),
            (
                "ringmaster_rank_steps_per_second",
                &[("rank", "3"), ("node", "1")],
                8.0,
            ),
            (
                "ringmaster_rank_samples_per_second",
                &[("rank", "3"), ("node", "1")],
                64.0,
            ),
            ("ringmaster_rank_loss", &[("rank", "3"), ("node", "1")], 0.5),
            (
                "ringmaster_notices_total",
                &[("source", "aws spot/instance-action")],
                1.0,
            ),
            ("ringmaster_restarts_total", &[("kind", "user")], 1.0),
            (
                "ringmaster_gpu_telemetry_available",
                &[("reason", "cpu job")],
                0.0,
            ),
            ("ringmaster_restarts_total", &[("kind", "resize")], 0.0),
            ("ringmaster_world_size", &[], 4.0),
            ("ringmaster_nodes", &[], 2.0),
        ];
        for (name, labels, value) in table {
            let mut want: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            want.extend([
                "run_id=\"run-1\"".to_string(),
                "job_name=\"demo\"".to_string(),
            ]);
            let found = text.lines().find(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
                    && want.iter().all(|w| l.contains(w.as_str()))
                    && l.matches('=').count() == want.len()
            });
            let line = found.unwrap_or_else(|| panic!("{name} {want:?} not in\n{text}"));
            let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert_eq!(v, *value, "{line}");
        }
        assert!(text.contains("# TYPE ringmaster_checkpoint_commit_seconds histogram"));
        assert!(text.contains("process_resident_memory_bytes{"), "{text}");

        // An elastic run shrinks to one node, then stops to grow: the shape
        // follows, the old ranks' series end, and the stop to grow counts as
        // a restart of its own kind.
        m.observe(&RunEvent::WorldResized {
            attempt: 1,
            nodes: vec![0],
            world_size: 2,
            from_world_size: 4,
        });
        m.observe(&RunEvent::AttemptEnded {
            attempt: 1,
            outcome: "resized".into(),
            message: None,
            restarting: true,
            failure: None,
            failure_kind: Some("resize".into()),
        });
        // Rank 1 of the one node, resumed from step 30.
        m.beat(1, 0, &beat(40, Some(30)));
        let text = String::from_utf8(m.render()).unwrap();
        let value = |prefix: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        };
        assert!(!text.contains("rank=\"3\""), "{text}");
        assert_eq!(value("ringmaster_world_size{"), Some(2.0));
        assert_eq!(value("ringmaster_nodes{"), Some(1.0));
        assert_eq!(
            value("ringmaster_restarts_total{kind=\"resize\""),
            Some(1.0),
            "{text}"
        );
        // Counted from its resume step, not from the old rank 1's.
        assert_eq!(
            value("ringmaster_rank_steps_total{node=\"0\",rank=\"1\""),
            Some(10.0),
            "{text}"
        );
    }

    /// A node's NVML sample under ringmaster's names and units, under
    /// dcgm-exporter's names, units and labels, and the seed's; without a
    /// sample the GPU series are absent, not zero.
    #[test]
    fn gpu_samples_map_to_ours_dcgm_and_the_seeds_names() {
        let m = Metrics::new("r", "j");
        m.shape(2, 1, "no GPU in this job");
        let none = String::from_utf8(m.render()).unwrap();
        for absent in [
            "DCGM_FI_DEV_GPU_UTIL{",
            "ringmaster_gpu_utilization_ratio{",
            "nvidia_gpu_utilization{",
        ] {
            assert!(!none.contains(absent), "{absent} without a sample");
        }
        let s = proto::telemetry::GpuSample {
            index: 1,
            name: "NVIDIA H200".into(),
            uuid: Some("GPU-abc".into()),
            memory_used_mib: 1024,
            memory_total_mib: 143_771,
            utilization_gpu_pct: Some(87),
            temperature_c: Some(41),
            power_w: Some(312.5),
            sm_clock_mhz: Some(1980),
            ..Default::default()
        };
        m.gpus(0, "127.0.0.2", &[s], &BTreeMap::from([(1, vec![0, 1])]));
        let text = String::from_utf8(m.render()).unwrap();
        let has = |name: &str, labels: &[&str], value: &str| {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|x| l.contains(x))
                    && l.ends_with(&format!(" {value}"))),
                "{name} {labels:?} {value} not in\n{text}"
            );
        };
        let ours = [
            r#"node="0""#,
            r#"gpu="1""#,
            r#"uuid="GPU-abc""#,
            r#"model="NVIDIA H200""#,
            r#"ranks="0,1""#,
        ];
        has("ringmaster_gpu_utilization_ratio", &ours, "0.87");
        has("ringmaster_gpu_memory_used_bytes", &ours, "1073741824");
        has("ringmaster_gpu_power_watts", &ours, "312.5");
        has("ringmaster_gpu_temperature_celsius", &ours, "41");
        has("ringmaster_gpu_sm_clock_hertz", &ours, "1980000000");
        let dcgm = [
            r#"gpu="1""#,
            r#"UUID="GPU-abc""#,
            r#"device="nvidia1""#,
            r#"modelName="NVIDIA H200""#,
            r#"Hostname="127.0.0.2""#,
        ];
        has("DCGM_FI_DEV_GPU_UTIL", &dcgm, "87");
        has("DCGM_FI_DEV_FB_USED", &dcgm, "1024");
        has("DCGM_FI_DEV_FB_FREE", &dcgm, "142747");
        has("DCGM_FI_DEV_POWER_USAGE", &dcgm, "312.5");
        has("DCGM_FI_DEV_GPU_TEMP", &dcgm, "41");
        has("DCGM_FI_DEV_SM_CLOCK", &dcgm, "1980");
        has(
            "nvidia_gpu_utilization",
            &[r#"gpu="1""#, r#"node="0""#],
            "87",
        );
        has("ringmaster_gpu_telemetry_available", &[], "1");
        assert!(
            !text.contains("no GPU in this job"),
            "the reason went with the sample"
        );
    }

    #[test]
    fn the_endpoint_serves_metrics_and_nothing_else() {
        let m = Arc::new(Metrics::new("r", "j"));
        m.shape(2, 1, "cpu job");
        let e = Endpoint::serve("127.0.0.1:0", m).unwrap();
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(e.addr).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/metrics");
        assert!(
            ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
            "{ok}"
        );
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("ringmaster_world_size{"), "{ok}");
        assert!(get("/").contains(" 404 "));
    }
}
