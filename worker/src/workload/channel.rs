//! A command program's channel to its worker: a Unix datagram socket in the
//! abstract namespace (no file to clean up, no path-length limit, gone with
//! the worker), named in RINGMASTER_CHANNEL as "@name". The `ringmaster`
//! Python package sends one datagram per step, "s <step> <loss> <samples>
//! <total>" ("-" for a figure it does not give), and never waits for an
//! answer. The worker folds the reports into its progress: the heartbeat's
//! step, loss, total and a samples-per-second rate, which feed the
//! launcher's display, hang detection by progress and goodput.

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

/// A datagram's report (None: not one; it is ignored).
pub fn parse(msg: &str) -> Option<StepReport> {
    let mut f = msg.split_ascii_whitespace();
    if f.next()? != "s" {
        return None;
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
    Some(StepReport {
        step,
        loss,
        samples,
        total,
    })
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
                // Samples since the first report, for the rate.
                let mut first: Option<Instant> = None;
                let mut samples = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let Ok(n) = sock.recv(&mut buf) else { continue };
                    let Some(r) = std::str::from_utf8(&buf[..n]).ok().and_then(parse) else {
                        continue;
                    };
                    if let Some(t) = r.total {
                        progress.set_total(t);
                    }
                    progress.set_step(r.step);
                    if let Some(l) = r.loss {
                        progress.set_loss(l);
                    }
                    let t0 = *first.get_or_insert_with(Instant::now);
                    if let Some(s) = r.samples {
                        samples += s;
                        let dt = t0.elapsed().as_secs_f64();
                        if dt > 0.0 {
                            progress.set_rate(samples as f64 / dt);
                        }
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
            Some(StepReport {
                step,
                loss,
                samples,
                total,
            })
        };
        let table = [
            ("s 12 0.5 64 100", r(12, Some(0.5), Some(64), Some(100))),
            ("s 12 - - -", r(12, None, None, None)),
            ("s 3 nan 8 -", r(3, None, Some(8), None)),
            ("s 3 - 8", None),
            ("s x - - -", None),
            ("s 3 loss - -", None),
            ("q 3 - - -", None),
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
    }
}
