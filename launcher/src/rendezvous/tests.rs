//! Node agents at the rendezvous: single-use agent tokens, the address an
//! agent gives, and a dismissed agent's place taken by the next.

use super::*;
use proto::wire::{Request, Response, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn hello(addr: SocketAddr, token: &str, node: u32) -> (TcpStream, Response) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let frame = proto::wire::encode(&Request::AgentHello {
        version: PROTOCOL_VERSION,
        token: token.into(),
        node,
        addr: Some(format!("10.0.0.{node}")),
        relay: false,
    });
    s.write_all(&frame).await.unwrap();
    let r = read(&mut s).await;
    (s, r)
}

async fn read(s: &mut (impl AsyncReadExt + Unpin)) -> Response {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn an_agent_token_admits_its_node_once_and_a_dismissed_agent_is_replaced() {
    let (rdzv, mut events) = Rendezvous::start("127.0.0.1:0", "run-token".into())
        .await
        .unwrap();
    let t1 = rdzv.enroll_agent(1);
    assert_ne!(t1, "run-token");
    // Not node 2's token.
    let (_, r) = hello(rdzv.addr(), &t1, 2).await;
    assert!(matches!(r, Response::Error { .. }), "{r:?}");
    let (mut first, r) = hello(rdzv.addr(), &t1, 1).await;
    assert_eq!(r, Response::Ok);
    assert_eq!(rdzv.agent_addr(1).as_deref(), Some("10.0.0.1"));
    // Used up: the same token again is refused.
    let (_, r) = hello(rdzv.addr(), &t1, 1).await;
    assert!(matches!(r, Response::Error { .. }), "{r:?}");
    // A replacement: the old agent is told to shut down, the new one (its
    // own token) takes the node, and the old one's end is not the node's.
    rdzv.dismiss_agent(1);
    assert_eq!(read(&mut first).await, Response::Shutdown { code: 8 });
    assert!(rdzv.agent(1).is_none());
    let t2 = rdzv.enroll_agent(1);
    let (_second, r) = hello(rdzv.addr(), &t2, 1).await;
    assert_eq!(r, Response::Ok);
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(rdzv.agent(1).is_some(), "the new agent keeps the node");
    let mut lost = 0;
    while let Ok(ev) = events.try_recv() {
        if matches!(
            ev,
            RdzvEvent::AgentLost {
                node: 1,
                dismissed: false,
                ..
            }
        ) {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "a dismissed agent's end is no lost node");
    // The run's own token still admits an agent (Kubernetes pods).
    let (_, r) = hello(rdzv.addr(), "run-token", 3).await;
    assert_eq!(r, Response::Ok);
}

/// A notice reaches a heartbeat connection the moment the launcher gives
/// it, without waiting for the rank's next beat; later beats are answered
/// with it too. A survivor's beats in its next round make the next notice
/// new again (pushed once more).
#[tokio::test]
async fn a_notice_is_pushed_on_every_heartbeat_connection_at_once() {
    let (rdzv, _events) = Rendezvous::start("127.0.0.1:0", "tok".into())
        .await
        .unwrap();
    rdzv.new_round(0, 2, 1, &[]);
    let mut conns = Vec::new();
    for node in 0..2 {
        let mut s = TcpStream::connect(rdzv.addr()).await.unwrap();
        let hello = Request::HeartbeatHello {
            version: PROTOCOL_VERSION,
            token: "tok".into(),
            round: 0,
            node_rank: node,
            local_rank: 0,
        };
        s.write_all(&proto::wire::encode(&hello)).await.unwrap();
        assert_eq!(read(&mut s).await, Response::Ok);
        s.write_all(&proto::wire::encode(
            &Request::Heartbeat(Default::default()),
        ))
        .await
        .unwrap();
        assert_eq!(read(&mut s).await, Response::Ok);
        conns.push(s);
    }
    rdzv.notify(42, "spot", Some(7));
    let want = Response::Notice {
        deadline_unix_ms: 42,
        reason: "spot".into(),
        stop_step: Some(7),
    };
    for s in conns.iter_mut() {
        // No beat sent: pushed.
        let got = tokio::time::timeout(Duration::from_secs(5), read(s)).await;
        assert_eq!(got.expect("pushed without a beat"), want);
    }
    // The next beat's answer carries it too, and nothing else is pushed.
    let s = &mut conns[0];
    s.write_all(&proto::wire::encode(
        &Request::Heartbeat(Default::default()),
    ))
    .await
    .unwrap();
    assert_eq!(read(s).await, want);
    let mut byte = [0u8; 1];
    let more = tokio::time::timeout(Duration::from_millis(300), s.read(&mut byte)).await;
    assert!(more.is_err(), "one push per notice: {more:?}");
    // Rank 1 survives into round 1 (its beats name it): the round's own
    // notice is pushed again.
    rdzv.new_round(1, 2, 1, &[(1, 1)]);
    let s = &mut conns[1];
    let beat = proto::wire::Heartbeat {
        round: Some(1),
        ..Default::default()
    };
    s.write_all(&proto::wire::encode(&Request::Heartbeat(beat)))
        .await
        .unwrap();
    assert_eq!(read(s).await, Response::Ok);
    rdzv.notify(43, "spot again", None);
    let got = tokio::time::timeout(Duration::from_secs(5), read(s)).await;
    assert_eq!(
        got.expect("pushed in the new round"),
        Response::Notice {
            deadline_unix_ms: 43,
            reason: "spot again".into(),
            stop_step: None
        }
    );
}

/// The unauthenticated-connection guard is sized by the round: a world
/// whose ranks open more than MAX_UNAUTHENTICATED connections at once is
/// not cut off; a small one keeps the fixed limit.
#[tokio::test]
async fn the_connection_guard_grows_with_the_round() {
    // Both ends of 1,124 connections live in this process.
    crate::process::raise_fd_limit(1, 1, false);
    let (rdzv, _events) = Rendezvous::start("127.0.0.1:0", "tok".into())
        .await
        .unwrap();
    let held = |n: usize| {
        let addr = rdzv.addr();
        async move {
            // From distinct sources (the per-source limit is another rule).
            let mut conns = Vec::new();
            for i in 0..n {
                let ip = std::net::Ipv4Addr::from(
                    u32::from(std::net::Ipv4Addr::new(127, 3, 0, 1)) + i as u32,
                );
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::new(ip.into(), 0)).unwrap();
                conns.push(sock.connect(addr).await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Closed unread (EOF now) or still held (nothing to read yet),
            // looked at without waiting (the server's 3 s greeting timeout
            // must not come first).
            let mut open = 0;
            for c in conns.iter() {
                let mut b = [0u8; 1];
                if matches!(c.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                {
                    open += 1;
                }
            }
            open
        }
    };
    rdzv.new_round(0, 2, 1, &[]);
    assert_eq!(held(MAX_UNAUTHENTICATED + 100).await, MAX_UNAUTHENTICATED);
    // (Their slots are given back as the server sees them close.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A round of 700 ranks on 700 nodes: 2,100 connections at once.
    rdzv.new_round(1, 700, 1, &[]);
    assert_eq!(
        held(MAX_UNAUTHENTICATED + 100).await,
        MAX_UNAUTHENTICATED + 100
    );
}

/// A node agent that relays: its workers' join and heartbeats travel as
/// streams of its one connection and are served as a direct connection
/// is (welcome, pushed notice); a relay inside a relayed stream is
/// refused; when the agent's connection ends, its relayed ranks' streams
/// end with it.
#[tokio::test]
async fn an_agent_relays_its_ranks_over_its_one_connection() {
    use crate::relay::{Relay, Side};
    let (rdzv, mut events) = Rendezvous::start("127.0.0.1:0", "tok".into())
        .await
        .unwrap();
    rdzv.new_round(0, 2, 1, &[]);
    let mut conn = TcpStream::connect(rdzv.addr()).await.unwrap();
    let hello = Request::AgentHello {
        version: PROTOCOL_VERSION,
        token: "tok".into(),
        node: 1,
        addr: Some("10.0.0.1".into()),
        relay: true,
    };
    conn.write_all(&proto::wire::encode(&hello)).await.unwrap();
    assert_eq!(
        read(&mut conn).await,
        Response::Ok,
        "admitted: a plain frame"
    );
    let (relay, mut control, _) = Relay::start(conn, Side::Agent);
    assert_eq!(
        read(&mut control).await,
        Response::Ok,
        "registered: stream 0"
    );
    assert_eq!(rdzv.agent_addr(1).as_deref(), Some("10.0.0.1"));
    // Rank 1 (node 1) beats and joins through the relay.
    let mut hb = relay.open().unwrap();
    let beat_hello = Request::HeartbeatHello {
        version: PROTOCOL_VERSION,
        token: "tok".into(),
        round: 0,
        node_rank: 1,
        local_rank: 0,
    };
    hb.write_all(&proto::wire::encode(&beat_hello))
        .await
        .unwrap();
    assert_eq!(read(&mut hb).await, Response::Ok);
    let join = |node: u32| Request::Join {
        version: PROTOCOL_VERSION,
        token: "tok".into(),
        round: 0,
        node_rank: node,
        local_rank: 0,
        ring_addr: format!("10.0.0.{node}:9000"),
        pid: 1,
        preflight: None,
    };
    let mut ctl1 = relay.open().unwrap();
    ctl1.write_all(&proto::wire::encode(&join(1)))
        .await
        .unwrap();
    // Rank 0 joins directly.
    let mut ctl0 = TcpStream::connect(rdzv.addr()).await.unwrap();
    ctl0.write_all(&proto::wire::encode(&join(0)))
        .await
        .unwrap();
    let welcomed = |r: Result<Response, _>, rank: u32| match r {
        Ok(Response::Welcome {
            rank: r,
            world_size: 2,
            ..
        }) => assert_eq!(r, rank),
        other => panic!("rank {rank}: {other:?}"),
    };
    welcomed(
        tokio::time::timeout(Duration::from_secs(5), read(&mut ctl0)).await,
        0,
    );
    welcomed(
        tokio::time::timeout(Duration::from_secs(5), read(&mut ctl1)).await,
        1,
    );
    // A barrier through the relay answers when both are in.
    let barrier = proto::wire::encode(&Request::Barrier { name: "b".into() });
    ctl1.write_all(&barrier).await.unwrap();
    ctl0.write_all(&barrier).await.unwrap();
    assert_eq!(read(&mut ctl1).await, Response::Ok);
    assert_eq!(read(&mut ctl0).await, Response::Ok);
    // A notice is pushed to the relayed heartbeat stream.
    rdzv.notify(42, "spot", Some(7));
    let got = tokio::time::timeout(Duration::from_secs(5), read(&mut hb)).await;
    assert_eq!(
        got.expect("pushed through the relay"),
        Response::Notice {
            deadline_unix_ms: 42,
            reason: "spot".into(),
            stop_step: Some(7)
        }
    );
    // No relay inside a relayed stream.
    let mut nested = relay.open().unwrap();
    nested
        .write_all(&proto::wire::encode(&hello))
        .await
        .unwrap();
    assert!(matches!(
        read(&mut nested).await,
        Response::Error {
            kind: ErrorKind::Protocol,
            ..
        }
    ));
    // The agent's connection ends: the node is lost and rank 1's
    // heartbeat stream ends at the launcher.
    drop((relay, control, hb, ctl1, nested));
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let (mut lost, mut beat_ended) = (false, false);
        while !(lost && beat_ended) {
            match events.recv().await {
                Some(RdzvEvent::AgentLost { node: 1, .. }) => lost = true,
                Some(RdzvEvent::HeartbeatEnded { rank: 1, .. }) => beat_ended = true,
                Some(_) => {}
                None => break,
            }
        }
        (lost, beat_ended)
    })
    .await;
    assert_eq!(ended.expect("in time"), (true, true));
}
