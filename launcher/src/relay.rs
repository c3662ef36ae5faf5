//! One TCP connection carrying many byte streams: a node agent relays its
//! ranks' rendezvous connections (each rank's control and heartbeat
//! connection) to the launcher over its own one connection, so the
//! launcher holds one connection per node, not two per rank.
//!
//! After the agent's greeting (a plain frame, `agent_hello` with
//! `relay: true`) and the launcher's plain `ok`, both sides speak relay
//! frames: a 4-byte big-endian length of what follows, the stream's id
//! (4 bytes, big-endian), an op (`OPEN`, `DATA`, `CLOSE`) and the data.
//! Stream 0 is open from the start (the agent's own messages); the agent
//! opens the others, one per connection a worker makes to it. A stream is
//! a [`VirtualStream`] on both sides: the launcher serves it as it serves
//! a TCP connection, the agent copies it to and from the worker's.
//!
//! Writes never wait (the channel to the connection's writer is
//! unbounded: what a rank sends is bounded by the protocol, a frame at a
//! time); the writer puts every frame queued at that moment into one
//! buffer and one write, so a node's heartbeats of one interval cross in
//! a few syscalls.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

const OPEN: u8 = 0;
const DATA: u8 = 1;
const CLOSE: u8 = 2;
/// A write is cut into chunks of at most this many bytes.
pub const MAX_CHUNK: usize = 64 << 10;
/// The id of the stream both sides have from the start.
pub const CONTROL: u32 = 0;

/// Which end of the connection: the agent opens odd ids, the launcher even
/// ones (it opens none today), so the two never pick the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Agent,
    Launcher,
}

enum Out {
    Frame {
        id: u32,
        op: u8,
        data: Vec<u8>,
    },
    /// Answered once everything queued before it is written.
    Flushed(tokio::sync::oneshot::Sender<()>),
}

type Table = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>>;

/// A running relay connection: open streams on it; dropping the last
/// handle (every clone) ends its reader and writer, closing the
/// connection, and every stream on it reads its end.
#[derive(Clone)]
pub struct Relay {
    out: mpsc::UnboundedSender<Out>,
    table: Table,
    next: Arc<AtomicU32>,
    _tasks: Arc<Tasks>,
}

/// The connection's reader and writer; when the last handle goes, they
/// end and every stream still open reads its end.
struct Tasks(Vec<tokio::task::AbortHandle>, Table);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
        self.1.lock().unwrap().clear();
    }
}

impl Relay {
    /// Speak relay frames over `conn`. Returns the relay, its stream 0,
    /// and the streams the other side opens, as they come.
    pub fn start<S>(
        conn: S,
        side: Side,
    ) -> (Relay, VirtualStream, mpsc::UnboundedReceiver<VirtualStream>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(conn);
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Out>();
        let (opened_tx, opened_rx) = mpsc::unbounded_channel();
        let table: Table = Default::default();
        let control = VirtualStream::register(CONTROL, &table, &out_tx);
        let reader = tokio::spawn(read_loop(rd, table.clone(), out_tx.clone(), opened_tx));
        let writer = tokio::spawn(write_loop(wr, out_rx));
        let relay = Relay {
            out: out_tx,
            table: table.clone(),
            next: Arc::new(AtomicU32::new(match side {
                Side::Agent => 1,
                Side::Launcher => 2,
            })),
            _tasks: Arc::new(Tasks(
                vec![reader.abort_handle(), writer.abort_handle()],
                table.clone(),
            )),
        };
        (relay, control, opened_rx)
    }

    /// Open a new stream to the other side.
    pub fn open(&self) -> io::Result<VirtualStream> {
        let id = self.next.fetch_add(2, Ordering::Relaxed);
        let s = VirtualStream::register(id, &self.table, &self.out);
        self.out
            .send(Out::Frame {
                id,
                op: OPEN,
                data: Vec::new(),
            })
            .map_err(|_| gone())?;
        Ok(s)
    }

    /// Wait until everything written so far is on the connection (an
    /// agent's last reports, before it exits).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.out.send(Out::Flushed(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Streams open now (stream 0 included).
    pub fn streams(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the relay connection is gone")
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    table: Table,
    out: mpsc::UnboundedSender<Out>,
    opened: mpsc::UnboundedSender<VirtualStream>,
) {
    loop {
        let Ok(len) = rd.read_u32().await else { break };
        let len = len as usize;
        if !(5..=5 + MAX_CHUNK).contains(&len) {
            break;
        }
        let Ok(id) = rd.read_u32().await else { break };
        let Ok(op) = rd.read_u8().await else { break };
        let mut data = vec![0u8; len - 5];
        if rd.read_exact(&mut data).await.is_err() {
            break;
        }
        match op {
            OPEN => {
                // Nobody taking new streams: this one ends at once
                // (dropped, which tells the other side).
                let _ = opened.send(VirtualStream::register(id, &table, &out));
            }
            DATA => {
                if let Some(tx) = table.lock().unwrap().get(&id) {
                    let _ = tx.send(data);
                }
            }
            CLOSE => {
                table.lock().unwrap().remove(&id);
            }
            _ => break,
        }
    }
    // Every stream reads its end.
    table.lock().unwrap().clear();
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut buf = Vec::with_capacity(MAX_CHUNK);
    let mut flushed = Vec::new();
    while let Some(o) = rx.recv().await {
        buf.clear();
        put(&mut buf, o, &mut flushed);
        // Everything queued now goes in the same write.
        while buf.len() < 4 * MAX_CHUNK {
            match rx.try_recv() {
                Ok(o) => put(&mut buf, o, &mut flushed),
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        for f in flushed.drain(..) {
            let _ = f.send(());
        }
    }
    let _ = wr.shutdown().await;
}

fn put(buf: &mut Vec<u8>, o: Out, flushed: &mut Vec<tokio::sync::oneshot::Sender<()>>) {
    match o {
        Out::Frame { id, op, data } => {
            buf.extend_from_slice(&(5 + data.len() as u32).to_be_bytes());
            buf.extend_from_slice(&id.to_be_bytes());
            buf.push(op);
            buf.extend_from_slice(&data);
        }
        Out::Flushed(f) => flushed.push(f),
    }
}

/// One stream of a relay connection, read and written like a TCP
/// connection. Dropping it (or shutting it down) closes it on both sides.
pub struct VirtualStream {
    id: u32,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Vec<u8>,
    at: usize,
    out: mpsc::UnboundedSender<Out>,
    table: Table,
    closed: bool,
}

impl VirtualStream {
    fn register(id: u32, table: &Table, out: &mpsc::UnboundedSender<Out>) -> VirtualStream {
        let (tx, rx) = mpsc::unbounded_channel();
        table.lock().unwrap().insert(id, tx);
        VirtualStream {
            id,
            rx,
            pending: Vec::new(),
            at: 0,
            out: out.clone(),
            table: table.clone(),
            closed: false,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.out.send(Out::Frame {
                id: self.id,
                op: CLOSE,
                data: Vec::new(),
            });
        }
    }
}

impl Drop for VirtualStream {
    fn drop(&mut self) {
        self.close();
        self.table.lock().unwrap().remove(&self.id);
    }
}

impl AsyncRead for VirtualStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.at < self.pending.len() {
                let n = buf.remaining().min(self.pending.len() - self.at);
                let at = self.at;
                buf.put_slice(&self.pending[at..at + n]);
                self.at += n;
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(data)) => {
                    self.pending = data;
                    self.at = 0;
                }
                // Closed by the other side, or the connection is gone.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for VirtualStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(gone()));
        }
        let n = buf.len().min(MAX_CHUNK);
        let out = Out::Frame {
            id: self.id,
            op: DATA,
            data: buf[..n].to_vec(),
        };
        if self.out.send(out).is_err() {
            self.closed = true;
            return Poll::Ready(Err(gone()));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close();
        Poll::Ready(Ok(()))
    }
}

/// Copy between a worker's TCP connection and its relayed stream until
/// either side ends.
pub async fn pipe(mut tcp: tokio::net::TcpStream, mut vs: VirtualStream) {
    let _ = tcp.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut vs).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (
        (Relay, VirtualStream, mpsc::UnboundedReceiver<VirtualStream>),
        (Relay, VirtualStream, mpsc::UnboundedReceiver<VirtualStream>),
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (
            Relay::start(a, Side::Agent),
            Relay::start(b, Side::Launcher),
        )
    }

    #[tokio::test]
    async fn streams_carry_their_own_bytes_both_ways() {
        let ((agent, mut a0, _), (_launcher, mut l0, mut opened)) = pair().await;
        a0.write_all(b"hello on 0").await.unwrap();
        let mut got = [0u8; 10];
        l0.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello on 0");
        // Three streams at once, interleaved writes, each answered.
        let mut mine: Vec<_> = (0..3).map(|_| agent.open().unwrap()).collect();
        assert_eq!(
            mine.iter().map(|s| s.id()).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        for (i, s) in mine.iter_mut().enumerate().rev() {
            s.write_all(format!("stream {i}").as_bytes()).await.unwrap();
        }
        let mut theirs = Vec::new();
        for _ in 0..3 {
            theirs.push(opened.recv().await.unwrap());
        }
        for s in theirs.iter_mut() {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            let i = (s.id() - 1) / 2;
            assert_eq!(&b, format!("stream {i}").as_bytes());
            s.write_all(format!("reply {i}").as_bytes()).await.unwrap();
        }
        for (i, s) in mine.iter_mut().enumerate() {
            let mut b = [0u8; 7];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, format!("reply {i}").as_bytes());
        }
        // Stream 0 still works after the others.
        l0.write_all(b"!").await.unwrap();
        let mut b = [0u8; 1];
        a0.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"!");
    }

    #[tokio::test]
    async fn a_write_larger_than_a_chunk_arrives_whole() {
        let ((agent, _a0, _), (_l, _l0, mut opened)) = pair().await;
        let mut s = agent.open().unwrap();
        let data: Vec<u8> = (0..(3 * MAX_CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let w = tokio::spawn(async move {
            s.write_all(&sent).await.unwrap();
            s
        });
        let mut t = opened.recv().await.unwrap();
        let mut got = vec![0u8; data.len()];
        t.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
        drop(w.await.unwrap());
    }

    #[tokio::test]
    async fn closing_a_stream_ends_it_on_the_other_side_only() {
        let ((agent, _a0, _), (launcher, _l0, mut opened)) = pair().await;
        let mut one = agent.open().unwrap();
        let mut two = agent.open().unwrap();
        one.write_all(b"x").await.unwrap();
        two.write_all(b"y").await.unwrap();
        let mut t1 = opened.recv().await.unwrap();
        let mut t2 = opened.recv().await.unwrap();
        let mut b = [0u8; 1];
        t1.read_exact(&mut b).await.unwrap();
        // The launcher's side drops stream 1: the agent's reads end.
        drop(t1);
        let mut rest = Vec::new();
        one.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // Stream 3 goes on.
        t2.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"y");
        t2.write_all(b"z").await.unwrap();
        two.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"z");
        // Both sides forget the closed stream (0 and 3 left).
        drop(one);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(agent.streams(), 2);
        assert_eq!(launcher.streams(), 2);
    }

    #[tokio::test]
    async fn losing_the_connection_ends_every_stream() {
        let ((agent, mut a0, _), (launcher, _l0, mut opened)) = pair().await;
        let mut s = agent.open().unwrap();
        s.write_all(b"x").await.unwrap();
        let mut t = opened.recv().await.unwrap();
        let mut b = [0u8; 1];
        t.read_exact(&mut b).await.unwrap();
        // The launcher's end goes away (its relay handle dropped: reader
        // and writer end, the connection closes).
        drop(launcher);
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("the stream ends")
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), a0.read_to_end(&mut rest))
            .await
            .expect("stream 0 ends")
            .unwrap();
        assert!(rest.is_empty());
        // Writes now fail.
        let mut failed = false;
        for _ in 0..50 {
            if s.write_all(b"more").await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(failed, "writes after the connection is gone fail");
        drop(agent);
    }

    #[tokio::test]
    async fn a_malformed_frame_ends_the_connection() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (_relay, mut s0, _) = Relay::start(a, Side::Launcher);
        // A length past the largest chunk.
        b.write_all(&(10u32 << 20).to_be_bytes()).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s0.read_to_end(&mut rest))
            .await
            .expect("stream 0 ends")
            .unwrap();
        assert!(rest.is_empty());
    }
}
