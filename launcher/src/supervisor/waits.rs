//! Waits inside the executor's action loop (a replacement node's
//! provisioning, spot capacity, node agents connecting) that a Ctrl-C or a
//! SIGTERM cuts short: they are not behind the loop's own `select!`, so
//! they listen for the signals themselves.

use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal came during a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

pub struct Waits {
    int: Signal,
    term: Signal,
}

impl Waits {
    /// Listening from now on (a signal that came before is the loop's).
    pub fn new() -> std::io::Result<Waits> {
        Ok(Waits {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Sleep `d`, or less if SIGINT or SIGTERM comes.
    pub async fn sleep(&mut self, d: Duration) -> Result<(), Interrupted> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.int.recv() => Err(Interrupted),
            _ = self.term.recv() => Err(Interrupted),
        }
    }
}
