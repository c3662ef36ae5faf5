//! The rendezvous server over real sockets with scripted clients: join order
//! does not change ranks, barrier releases only when all arrive, the
//! key-value store waits for a key and is scoped to its round, and a missed
//! rendezvous names the missing members.

use launcher::rendezvous::{RdzvEvent, Rendezvous};
use proto::result::{AllreduceResult, Figures, WorkerResult};
use proto::wire::{self, ErrorKind, Request, Response, PROTOCOL_VERSION};
use std::net::TcpStream;
use std::time::Duration;

fn client(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn call(s: &mut TcpStream, r: &Request) -> Response {
    wire::write_frame(s, r).unwrap();
    wire::read_frame(s).unwrap()
}

fn join(node: u32, local: u32, round: u64) -> Request {
    Request::Join {
        version: PROTOCOL_VERSION,
        token: "tok".into(),
        round,
        node_rank: node,
        local_rank: local,
        ring_addr: format!("127.0.0.{}:{}", 2 + node, 1000 + local),
        pid: 0,
        preflight: None,
    }
}

/// Nodes 0-2 (one rank each) join round 0 (welcomed as ranks 0-2, no
/// state to take) and park; returns once the rendezvous saw all three
/// park, with each rank's thread, which ends with the reply to its park.
async fn park_three(
    addr: &str,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<RdzvEvent>,
) -> Vec<std::thread::JoinHandle<Response>> {
    let parked: Vec<_> = (0..3)
        .map(|node| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut s = client(&addr);
                assert!(matches!(
                    call(&mut s, &join(node, 0, 0)),
                    Response::Welcome { rank, state_from: None, .. } if rank == node
                ));
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                call(&mut s, &Request::Park)
            })
        })
        .collect();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(RdzvEvent::Parked { round: 0, rank })) => seen.push(rank),
            Ok(Some(_)) => {}
            other => panic!("no Parked events: {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2]);
    parked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_barrier_kv_and_rounds() {
    let (rdzv, mut events) = Rendezvous::start("127.0.0.1:0", "tok".into())
        .await
        .unwrap();
    rdzv.new_round(0, 2, 2, &[]);
    let addr = rdzv.addr().to_string();
    let (joined, world, missing) = rdzv.missing();
    assert_eq!((joined, world), (0, 4));
    assert_eq!(
        missing,
        vec![
            "node-0/local-0",
            "node-0/local-1",
            "node-1/local-0",
            "node-1/local-1"
        ]
    );

    // Join in reverse order from four threads; ranks follow node then local.
    let handles: Vec<_> = [(1, 1), (1, 0), (0, 1), (0, 0)]
        .into_iter()
        .map(|(node, local)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = client(&addr);
                let welcome = call(&mut s, &join(node, local, 0));
                let rank = match &welcome {
                    Response::Welcome {
                        rank,
                        world_size: 4,
                        ring_next,
                        lane_next,
                        ..
                    } => {
                        // Each rank is told only its successor's address,
                        // and its own local rank's on the next node (the
                        // ring across nodes of the shared-memory path).
                        let ring = [
                            "127.0.0.2:1000",
                            "127.0.0.2:1001",
                            "127.0.0.3:1000",
                            "127.0.0.3:1001",
                        ];
                        assert_eq!(ring_next, ring[(*rank as usize + 1) % 4]);
                        assert_eq!(lane_next, ring[(*rank as usize + 2) % 4]);
                        *rank
                    }
                    other => panic!("{other:?}"),
                };
                assert_eq!(rank, node * 2 + local);
                // Rank 3 publishes a key late; everyone else waits for it.
                if rank == 3 {
                    std::thread::sleep(Duration::from_millis(200));
                    assert_eq!(
                        call(
                            &mut s,
                            &Request::KvSet {
                                key: "id".into(),
                                value: "abc".into()
                            }
                        ),
                        Response::Ok
                    );
                }
                let v = call(
                    &mut s,
                    &Request::KvGet {
                        key: "id".into(),
                        wait_ms: 5000,
                    },
                );
                assert_eq!(
                    v,
                    Response::Value {
                        value: Some("abc".into())
                    }
                );
                let none = call(
                    &mut s,
                    &Request::KvGet {
                        key: "never".into(),
                        wait_ms: 50,
                    },
                );
                assert_eq!(none, Response::Value { value: None });
                assert_eq!(
                    call(&mut s, &Request::Barrier { name: "b1".into() }),
                    Response::Ok
                );
                assert_eq!(
                    call(
                        &mut s,
                        &Request::Result {
                            payload: WorkerResult::new(Figures::Allreduce(AllreduceResult {
                                backend: None,
                                world_size: 2,
                                iterations: rank as u64,
                                rows: vec![],
                            }))
                        }
                    ),
                    Response::Ok
                );
                (rank, s)
            })
        })
        .collect();
    let mut conns: Vec<(u32, TcpStream)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    conns.sort_by_key(|c| c.0);

    let mut all_joined = 0;
    let mut results = 0;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        match ev {
            RdzvEvent::AllJoined { round: 0 } => all_joined += 1,
            RdzvEvent::Result { round: 0, .. } => results += 1,
            _ => {}
        }
    }
    assert_eq!((all_joined, results), (1, 4));

    // A new round: old connections are stale, keys are gone.
    rdzv.new_round(1, 1, 1, &[]);
    match call(
        &mut conns[0].1,
        &Request::KvGet {
            key: "id".into(),
            wait_ms: 0,
        },
    ) {
        Response::Error {
            kind: ErrorKind::StaleRound,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let mut s = client(&addr);
    assert!(matches!(
        call(&mut s, &join(0, 0, 1)),
        Response::Welcome {
            rank: 0,
            world_size: 1,
            ..
        }
    ));
    assert_eq!(
        call(
            &mut s,
            &Request::KvGet {
                key: "id".into(),
                wait_ms: 0
            }
        ),
        Response::Value { value: None }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_join_learns_its_round_is_over() {
    let (rdzv, _events) = Rendezvous::start("127.0.0.1:0", "tok".into())
        .await
        .unwrap();
    rdzv.new_round(0, 1, 2, &[]);
    let addr = rdzv.addr().to_string();
    let h = std::thread::spawn(move || {
        let mut s = client(&addr);
        call(&mut s, &join(0, 0, 0))
    });
    // Wait until the join is registered, then abandon the round.
    for _ in 0..200 {
        if rdzv.missing().0 == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rdzv.missing().2, vec!["node-0/local-1"]);
    rdzv.new_round(1, 1, 2, &[]);
    match h.join().unwrap() {
        Response::Error {
            kind: ErrorKind::StaleRound,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

/// Parked ranks wait for the launcher's word: the kept ones are told to
/// rejoin when the next round opens (its Welcome names the lowest kept rank
/// as the state's source), the others to exit; `release` tells the rest to
/// exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_ranks_rejoin_or_exit_at_the_next_round() {
    let (rdzv, mut events) = Rendezvous::start("127.0.0.1:0", "tok".into())
        .await
        .unwrap();
    rdzv.new_round(0, 3, 1, &[]);
    let addr = rdzv.addr().to_string();
    let parked = park_three(&addr, &mut events).await;
    // Node 0 was lost: ranks 1 and 2 are kept; rank 1 has the state.
    rdzv.new_round(1, 3, 1, &[(1, 1), (2, 2)]);
    let replies: Vec<Response> = parked.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        replies,
        vec![
            Response::Exit,
            Response::Rejoin {
                round: 1,
                rank: 1,
                node_rank: 1,
                world_size: 3
            },
            Response::Rejoin {
                round: 1,
                rank: 2,
                node_rank: 2,
                world_size: 3
            }
        ]
    );
    let joins: Vec<_> = (0..3)
        .map(|node| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = client(&addr);
                let w = call(&mut s, &join(node, 0, 1));
                (s, w)
            })
        })
        .collect();
    let mut conns = Vec::new();
    for h in joins {
        let (s, w) = h.join().unwrap();
        assert!(matches!(
            w,
            Response::Welcome {
                round: 1,
                state_from: Some(1),
                ..
            }
        ));
        conns.push(s);
    }
    // Released without a new round (the run ends): told to exit.
    let mut s = conns.remove(0);
    let h = std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        call(&mut s, &Request::Park)
    });
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(RdzvEvent::Parked { round: 1, rank: 0 })) => break,
            Ok(Some(_)) => {}
            other => panic!("no Parked event: {other:?}"),
        }
    }
    rdzv.release(None);
    assert_eq!(h.join().unwrap(), Response::Exit);
}

/// The world shrinks from 3 nodes to 2 (node 0 gone): the survivors of
/// nodes 1 and 2 are told their seats in the smaller world (ranks 0 and 1
/// of 2), join under them, rank 0 (node 1's, the lowest kept) broadcasts
/// the state, and node 2's beats, naming its new round and rank on the
/// connection it greeted as rank 2, count as rank 1's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_rejoins_a_smaller_world_in_its_new_seat() {
    let (rdzv, mut events) = Rendezvous::start("127.0.0.1:0", "tok".into())
        .await
        .unwrap();
    rdzv.new_round(0, 3, 1, &[]);
    let addr = rdzv.addr().to_string();
    let mut beats = client(&addr);
    let hello = Request::HeartbeatHello {
        version: PROTOCOL_VERSION,
        token: "tok".into(),
        round: 0,
        node_rank: 2,
        local_rank: 0,
    };
    assert_eq!(call(&mut beats, &hello), Response::Ok);
    let parked = park_three(&addr, &mut events).await;
    rdzv.new_round(1, 2, 1, &[(1, 0), (2, 1)]);
    let replies: Vec<Response> = parked.into_iter().map(|h| h.join().unwrap()).collect();
    let seat = |rank| Response::Rejoin {
        round: 1,
        rank,
        node_rank: rank,
        world_size: 2,
    };
    assert_eq!(replies, vec![Response::Exit, seat(0), seat(1)]);
    // They join as the nodes they now are.
    let joins: Vec<_> = (0..2)
        .map(|node| {
            let addr = addr.clone();
            std::thread::spawn(move || call(&mut client(&addr), &join(node, 0, 1)))
        })
        .collect();
    for (node, h) in joins.into_iter().enumerate() {
        match h.join().unwrap() {
            Response::Welcome {
                round,
                rank,
                world_size,
                state_from,
                ..
            } => assert_eq!(
                (round, rank, world_size, state_from),
                (1, node as u32, 2, Some(0))
            ),
            other => panic!("{other:?}"),
        }
    }
    // Node 2's old heartbeat connection, in its new seat.
    let beat = proto::wire::Heartbeat {
        round: Some(1),
        rank: Some(1),
        step: 7,
        ..Default::default()
    };
    assert_eq!(call(&mut beats, &Request::Heartbeat(beat)), Response::Ok);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(RdzvEvent::Heartbeat { round, rank, beat })) if beat.step == 7 => {
                assert_eq!((round, rank), (1, 1));
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no heartbeat: {other:?}"),
        }
    }
    drop(beats);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(RdzvEvent::HeartbeatEnded { round, rank })) => {
                assert_eq!((round, rank), (1, 1));
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no heartbeat end: {other:?}"),
        }
    }
}
