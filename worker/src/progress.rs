//! This rank's progress, written by the workload and read by the heartbeat
//! thread. Lock-free counters; the strings change rarely.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a rank knows of its notice (`Progress::notice_details`).
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeDetails {
    pub source: String,
    pub deadline_unix_ms: Option<u64>,
    pub stop_step: Option<u64>,
}

/// How many committed steps a heartbeat carries: enough that a rank whose
/// beats are a few commits behind still names the step the others did.
pub const COMMITTED_KEPT: usize = 8;

#[derive(Debug, Default)]
pub struct Progress {
    step: AtomicU64,
    total: AtomicU64,
    collectives: AtomicU64,
    /// f64 bits; NaN means none.
    loss: AtomicU64,
    rate: AtomicU64,
    /// f64 bits; NaN means none: steps per second (a program's reports).
    steps_per_s: AtomicU64,
    labels: Mutex<(String, String)>,
    in_collective: std::sync::atomic::AtomicBool,
    /// A preemption notice reached this rank (launcher or signal).
    notice: std::sync::atomic::AtomicBool,
    /// The step this attempt started from; u64::MAX: not a stepped workload.
    start_step: AtomicU64,
    /// The round a survivor rejoined and its rank there (together: a beat
    /// never names one without the other); None: the round and rank it
    /// started with.
    seat: Mutex<Option<(u64, u32)>>,
    /// What this rank's own watchers saw, for the launcher.
    seen: Mutex<Option<proto::wire::NoticeInfo>>,
    /// The launcher's notice: its deadline (ms since the epoch), why, and
    /// the agreed stop step (a program that reports steps).
    from_launcher: Mutex<Option<(u64, String, Option<u64>)>>,
    /// Notes for the launcher's timeline, sent with the next beat.
    notes: Mutex<Vec<proto::wire::WorkerNote>>,
    /// The steps whose checkpoint the program committed (`ringmaster.commit`),
    /// the newest `COMMITTED_KEPT`, oldest first.
    committed: Mutex<Vec<u64>>,
    /// The node's newest GPU sample not yet sent (local rank 0, GPU jobs).
    gpus: Mutex<Vec<proto::telemetry::GpuSample>>,
    /// Wakes the heartbeat thread early for news the launcher should have
    /// at once (a notice, the step an attempt resumed from).
    wake: (Mutex<bool>, std::sync::Condvar),
}

impl Progress {
    pub fn new() -> Arc<Self> {
        let p = Progress::default();
        p.loss.store(f64::NAN.to_bits(), Ordering::Relaxed);
        p.rate.store(f64::NAN.to_bits(), Ordering::Relaxed);
        p.steps_per_s.store(f64::NAN.to_bits(), Ordering::Relaxed);
        p.start_step.store(u64::MAX, Ordering::Relaxed);
        Arc::new(p)
    }
    pub fn set_phase(&self, phase: &str, rate_unit: &str, total: u64) {
        *self.labels.lock().unwrap() = (phase.to_string(), rate_unit.to_string());
        self.total.store(total, Ordering::Relaxed);
        self.step.store(0, Ordering::Relaxed);
    }
    pub fn set_start_step(&self, step: u64) {
        self.start_step.store(step, Ordering::Relaxed);
        self.set_step(step);
        self.beat_now();
    }
    /// Ask the heartbeat thread to send now.
    pub fn beat_now(&self) {
        *self.wake.0.lock().unwrap() = true;
        self.wake.1.notify_all();
    }
    /// The heartbeat thread's pause: `interval`, or less if woken.
    pub fn wait_beat(&self, interval: std::time::Duration) {
        let guard = self.wake.0.lock().unwrap();
        let (mut woken, _) = self
            .wake
            .1
            .wait_timeout_while(guard, interval, |w| !*w)
            .unwrap();
        *woken = false;
    }
    /// The steps the workload will run (a program says so in its reports).
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }
    pub fn set_loss(&self, loss: f64) {
        self.loss.store(loss.to_bits(), Ordering::Relaxed);
    }
    pub fn set_rate(&self, rate: f64) {
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
    }
    pub fn set_steps_per_s(&self, rate: f64) {
        self.steps_per_s.store(rate.to_bits(), Ordering::Relaxed);
    }
    pub fn set_notice(&self) {
        self.notice.store(true, Ordering::Relaxed);
    }
    pub fn notice(&self) -> bool {
        self.notice.load(Ordering::Relaxed)
    }
    /// The launcher sent a notice (with a heartbeat's answer).
    pub fn set_launcher_notice(&self, deadline_unix_ms: u64, reason: String, stop: Option<u64>) {
        self.from_launcher
            .lock()
            .unwrap()
            .get_or_insert((deadline_unix_ms, reason, stop));
        self.set_notice();
    }
    /// What is known of the notice this rank got: where it came from, its
    /// deadline (the earlier of the launcher's and the cloud's), and the
    /// agreed stop step once the launcher sent one.
    pub fn notice_details(&self) -> NoticeDetails {
        let seen = self.seen.lock().unwrap().clone().filter(|s| s.preempt);
        let launcher = self.from_launcher.lock().unwrap().clone();
        let source = match (&seen, &launcher) {
            (Some(s), _) => s.source.clone(),
            (None, Some((_, reason, _))) => format!("launcher: {reason}"),
            (None, None) => "signal to the worker".into(),
        };
        let deadline_unix_ms = [
            seen.and_then(|s| s.deadline_unix_ms),
            launcher.as_ref().map(|(d, _, _)| *d),
        ]
        .into_iter()
        .flatten()
        .min();
        NoticeDetails {
            source,
            deadline_unix_ms,
            stop_step: launcher.and_then(|(_, _, s)| s),
        }
    }
    /// This rank survived a notice and rejoins in `round` as `rank` at
    /// `step`: its heartbeats name that round and rank from now on, the
    /// round starts at that step (so the launcher sees no step done before
    /// one is), and the handled notice is cleared.
    pub fn rejoin(&self, round: u64, rank: u32, step: u64) {
        self.start_step.store(step, Ordering::Relaxed);
        self.step.store(step, Ordering::Relaxed);
        *self.seat.lock().unwrap() = Some((round, rank));
        self.notice.store(false, Ordering::Relaxed);
        *self.seen.lock().unwrap() = None;
        *self.from_launcher.lock().unwrap() = None;
    }
    /// A watcher saw a notice (or an early warning): keep it for the
    /// heartbeat. The first preemption notice stays; it also raises the
    /// notice flag that the train workload shares through its all-reduce.
    pub fn record_notice(&self, info: proto::wire::NoticeInfo) {
        let mut seen = self.seen.lock().unwrap();
        if seen.as_ref().is_some_and(|s| s.preempt) {
            return;
        }
        if info.preempt {
            self.set_notice();
        }
        *seen = Some(info);
        drop(seen);
        self.beat_now();
    }
    /// Put a note on the run's timeline (sent with the next beat, which
    /// goes at once).
    pub fn note(&self, kind: &str, message: String, warning: bool, detail: serde_json::Value) {
        self.notes.lock().unwrap().push(proto::wire::WorkerNote {
            kind: kind.to_string(),
            message,
            warning,
            detail,
        });
        self.beat_now();
    }
    /// The notes not yet sent (the heartbeat thread takes them).
    pub fn take_notes(&self) -> Vec<proto::wire::WorkerNote> {
        std::mem::take(&mut *self.notes.lock().unwrap())
    }
    /// The program committed its checkpoint of `step`: the launcher hears
    /// of it with a beat sent at once.
    pub fn committed(&self, step: u64) {
        let mut c = self.committed.lock().unwrap();
        if !c.contains(&step) {
            c.push(step);
            c.sort_unstable();
            let extra = c.len().saturating_sub(COMMITTED_KEPT);
            c.drain(..extra);
        }
        drop(c);
        self.beat_now();
    }
    /// The node's GPUs, for the next beat.
    pub fn set_gpus(&self, samples: Vec<proto::telemetry::GpuSample>) {
        *self.gpus.lock().unwrap() = samples;
    }
    pub fn collective_started(&self) {
        self.in_collective.store(true, Ordering::Relaxed);
    }
    pub fn collective_done(&self) {
        self.in_collective.store(false, Ordering::Relaxed);
        self.collectives.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> proto::wire::Heartbeat {
        let opt =
            |a: &AtomicU64| Some(f64::from_bits(a.load(Ordering::Relaxed))).filter(|v| !v.is_nan());
        let (phase, unit) = self.labels.lock().unwrap().clone();
        let seat = *self.seat.lock().unwrap();
        proto::wire::Heartbeat {
            step: self.step.load(Ordering::Relaxed),
            total_steps: self.total.load(Ordering::Relaxed),
            collectives: self.collectives.load(Ordering::Relaxed),
            loss: opt(&self.loss),
            rate: opt(&self.rate),
            steps_per_s: opt(&self.steps_per_s),
            rate_unit: Some(unit).filter(|u| !u.is_empty()),
            phase,
            in_collective: self.in_collective.load(Ordering::Relaxed),
            notice: self.seen.lock().unwrap().clone(),
            start_step: Some(self.start_step.load(Ordering::Relaxed)).filter(|s| *s != u64::MAX),
            round: seat.map(|(round, _)| round),
            rank: seat.map(|(_, rank)| rank),
            committed: self.committed.lock().unwrap().clone(),
            gpus: std::mem::take(&mut *self.gpus.lock().unwrap()),
            notes: Vec::new(),
        }
    }
}
