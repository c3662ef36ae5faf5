//! A command program's channel to its worker: a Unix datagram socket in the
//! abstract namespace (no file to clean up, no path-length limit, gone with
//! the worker), named in RINGMASTER_CHANNEL as "@name". The `ringmaster`
//! Python package sends one datagram per step, "s <step> <loss> <samples>
//! <total>" ("-" for a figure it does not give), and one per checkpoint it
//! committed, "c <step>", and never waits for an answer. The worker folds
//! the reports into its progress: the heartbeat's step, loss, total and a
//! samples-per-second rate, which feed the launcher's display, hang
//! detection by progress and goodput, and the committed steps, which the
//! launcher commits once every rank has.

use crate::progress::Progress;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One step report.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub step: u64,
    pub loss: Option<f64>,
    pub samples: Option<u64>,
    pub total: Option<u64>,
}

/// One datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Step(StepReport),
    /// The checkpoint of this step is fully written (and synced).
    Committed(u64),
}

/// A datagram's message (None: not one; it is ignored).
pub fn parse(msg: &str) -> Option<Message> {
    let mut f = msg.split_ascii_whitespace();
    match f.next()? {
        "s" => {}
        "c" => {
            let step = f.next()?.parse().ok()?;
            return f.next().is_none().then_some(Message::Committed(step));
        }
        _ => return None,
    }
    let step = f.next()?.parse().ok()?;
    let mut opt = || -> Option<Option<&str>> {
        let v = f.next()?;
        Some((v != "-").then_some(v))
    };
    let loss = match opt()? {
        Some(v) => Some(v.parse::<f64>().ok()?).filter(|l| l.is_finite()),
        None => None,
    };
    let samples = match opt()? {
        Some(v) => Some(v.parse().ok()?),
        None => None,
    };
    let total = match opt()? {
        Some(v) => Some(v.parse().ok()?),
        None => None,
    };
    Some(Message::Step(StepReport {
        step,
        loss,
        samples,
        total,
    }))
}

pub struct Channel {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Channel {
    /// Open rank `rank`'s channel and fold its reports into `progress`.
    pub fn open(rank: u32, progress: Arc<Progress>) -> std::io::Result<Channel> {
        let name = format!("ringmaster-{}-{rank}", std::process::id());
        let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::Builder::new()
            .name("channel".into())
            .spawn(move || {
                let mut buf = [0u8; 256];
                let mut fold = Fold::new(progress);
                while !done.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        fold.message(&buf[..n]);
                    }
                }
                // What the program sent before it ended (a commit at its
                // last step) is in before the worker reports.
                if sock.set_nonblocking(true).is_ok() {
                    while let Ok(n) = sock.recv(&mut buf) {
                        fold.message(&buf[..n]);
                    }
                }
            })?;
        Ok(Channel {
            name,
            stop,
            thread: Some(thread),
        })
    }

    /// The value of RINGMASTER_CHANNEL.
    pub fn address(&self) -> String {
        format!("@{}", self.name)
    }
}

/// Reports folded into a rank's progress.
struct Fold {
    progress: Arc<Progress>,
    /// When the first report came and its step, and samples since, for
    /// the rates.
    first: Option<(Instant, u64)>,
    samples: u64,
}

impl Fold {
    fn new(progress: Arc<Progress>) -> Fold {
        Fold {
            progress,
            first: None,
            samples: 0,
        }
    }

    fn message(&mut self, bytes: &[u8]) {
        let progress = &self.progress;
        let r = match std::str::from_utf8(bytes).ok().and_then(parse) {
            Some(Message::Step(r)) => r,
            Some(Message::Committed(step)) => {
                progress.committed(step);
                return;
            }
            None => return,
        };
        if let Some(t) = r.total {
            progress.set_total(t);
        }
        progress.set_step(r.step);
        if let Some(l) = r.loss {
            progress.set_loss(l);
        }
        let (t0, s0) = *self.first.get_or_insert_with(|| (Instant::now(), r.step));
        let dt = t0.elapsed().as_secs_f64();
        if let Some(s) = r.samples {
            self.samples += s;
            if dt > 0.0 {
                progress.set_rate(self.samples as f64 / dt);
            }
        }
        // Over a few steps at least: one step's time is noise.
        if r.step >= s0 + 3 && dt > 0.0 {
            progress.set_steps_per_s((r.step - s0) as f64 / dt);
        }
    }
}

impl Drop for Channel {
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

    #[test]
    fn reports_parse_and_anything_else_is_ignored() {
        let r = |step, loss, samples, total| {
            Some(Message::Step(StepReport {
                step,
                loss,
                samples,
                total,
            }))
        };
        let table = [
            ("s 12 0.5 64 100", r(12, Some(0.5), Some(64), Some(100))),
            ("s 12 - - -", r(12, None, None, None)),
            ("s 3 nan 8 -", r(3, None, Some(8), None)),
            ("s 3 - 8", None),
            ("s x - - -", None),
            ("s 3 loss - -", None),
            ("q 3 - - -", None),
            ("c 50", Some(Message::Committed(50))),
            ("c 50 1", None),
            ("c", None),
            ("c -1", None),
            ("", None),
        ];
        for (msg, want) in table {
            assert_eq!(parse(msg), want, "{msg:?}");
        }
    }

    #[test]
    fn a_report_reaches_the_progress() {
        let p = Progress::new();
        let ch = Channel::open(7, p.clone()).unwrap();
        let to = UnixDatagram::unbound().unwrap();
        let addr = SocketAddr::from_abstract_name(ch.address().trim_start_matches('@').as_bytes())
            .unwrap();
        to.send_to_addr(b"s 5 0.25 32 40", &addr).unwrap();
        let t0 = Instant::now();
        while p.snapshot().step != 5 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let b = p.snapshot();
        assert_eq!((b.step, b.total_steps, b.loss), (5, 40, Some(0.25)));
        // Commits come through too; a beat carries the newest few.
        for s in 1..=10u64 {
            to.send_to_addr(format!("c {}", s * 10).as_bytes(), &addr)
                .unwrap();
        }
        while p.snapshot().committed.last() != Some(&100) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            p.snapshot().committed,
            vec![30, 40, 50, 60, 70, 80, 90, 100]
        );
    }
}
