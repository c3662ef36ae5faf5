//! The hierarchical collective (shared memory within a node, TCP rings
//! across nodes) against a straightforward sum, with real segments and
//! real loopback sockets: ranks are threads, nodes groups of them.

mod common;

use common::{check_sums, data, sums};
use proto::spec::Collective as Spec;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;
use worker::collective::{Collective, ReduceOp};
use worker::hier::Hier;
use worker::progress::Progress;
use worker::ring::Ring;
use worker::shm::NodeGroup;

/// Slots of 4 KiB: buffers of a few thousand elements take several chunks.
const SLOT: usize = 4096;

fn spec() -> Spec {
    Spec {
        timeout_s: 20.0,
        chunk_bytes: 4096,
        shm_chunk_bytes: SLOT as u64,
        ..Spec::default()
    }
}

/// Run `f` on `nodes` x `per_node` ranks; results by rank.
fn with_hier<R: Send + 'static>(
    nodes: usize,
    per_node: usize,
    f: impl Fn(&mut Hier) -> R + Send + Sync + Clone + 'static,
) -> Vec<R> {
    let world = nodes * per_node;
    let listeners: Vec<TcpListener> = (0..world)
        .map(|r| TcpListener::bind((format!("127.0.0.{}", 2 + r / per_node).as_str(), 0)).unwrap())
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    // Each node's local rank 0 creates its segment and hands its path on.
    let (paths_tx, paths_rx) = mpsc::channel::<(usize, PathBuf)>();
    let mut path_rx: Vec<Option<mpsc::Receiver<PathBuf>>> = Vec::new();
    let mut path_tx: Vec<mpsc::Sender<PathBuf>> = Vec::new();
    for _ in 0..world {
        let (t, r) = mpsc::channel();
        path_tx.push(t);
        path_rx.push(Some(r));
    }
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let addrs = addrs.clone();
            let f = f.clone();
            let paths_tx = paths_tx.clone();
            let rx = path_rx[rank].take().unwrap();
            std::thread::spawn(move || {
                let (node, me) = (rank / per_node, rank % per_node);
                let t = Duration::from_secs(20);
                let mut group = if me == 0 {
                    let (g, p) =
                        NodeGroup::create(&std::env::temp_dir(), per_node, SLOT, t, rank).unwrap();
                    paths_tx.send((node, p)).unwrap();
                    g
                } else {
                    NodeGroup::attach(&rx.recv().unwrap(), me, per_node, SLOT, t, node * per_node)
                        .unwrap()
                };
                group.attached().unwrap();
                let next = &addrs[(rank + per_node) % world];
                let mut lane =
                    Ring::connect(l, node, nodes, next, "tok", &spec(), Progress::new()).unwrap();
                lane.name_members(per_node, me);
                let mut h = Hier::from_parts(rank, world, group, lane, Progress::new());
                f(&mut h)
            })
        })
        .collect();
    drop(paths_tx);
    for (node, p) in paths_rx {
        for me in 1..per_node {
            path_tx[node * per_node + me].send(p.clone()).unwrap();
        }
    }
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

const LENS: &[usize] = &[0, 1, 2, 7, 13, 511, 512, 513, 4099];
const LAYOUTS: &[(usize, usize)] = &[(1, 2), (1, 3), (2, 2), (2, 3), (3, 2), (4, 2)];

#[test]
fn all_reduce_matches_plain_sum_and_every_rank_holds_the_same_bits() {
    for &(nodes, per_node) in LAYOUTS {
        let results = with_hier(nodes, per_node, |h| sums(h, LENS));
        check_sums(&results, LENS, &format!("{nodes}x{per_node}"));
    }
}

#[test]
fn the_same_inputs_give_the_same_bits_run_after_run() {
    let run = || {
        with_hier(2, 3, |h| {
            let mut buf: Vec<f32> = data(h.rank(), 5000, 7).iter().map(|v| *v as f32).collect();
            h.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
            buf
        })
    };
    assert_eq!(run()[0], run()[0]);
}

#[test]
fn broadcast_gather_scatter_and_barrier() {
    for &(nodes, per_node) in LAYOUTS {
        let world = nodes * per_node;
        let results = with_hier(nodes, per_node, move |h| {
            let rank = h.rank();
            let mut got = Vec::new();
            for root in 0..world {
                let mut buf = if rank == root {
                    data(root, 1500, 3)
                } else {
                    vec![0.0; 1500]
                };
                h.broadcast(&mut buf, root).unwrap();
                got.push(buf);
            }
            let input = data(rank, 700, 4);
            let mut all = vec![0.0; 700 * world];
            h.all_gather(&input, &mut all).unwrap();
            let big = data(rank, 300 * world, 5);
            let mut mine = vec![0.0; 300];
            h.reduce_scatter(&big, &mut mine, ReduceOp::Sum).unwrap();
            h.barrier().unwrap();
            (got, all, mine)
        });
        for (rank, (got, all, mine)) in results.iter().enumerate() {
            for (root, buf) in got.iter().enumerate() {
                assert_eq!(
                    buf,
                    &data(root, 1500, 3),
                    "{nodes}x{per_node} rank {rank} root {root}"
                );
            }
            for r in 0..world {
                assert_eq!(
                    &all[r * 700..(r + 1) * 700],
                    &data(r, 700, 4)[..],
                    "gather block {r}"
                );
            }
            for (k, v) in mine.iter().enumerate() {
                let want: f64 = (0..world)
                    .map(|r| data(r, 300 * world, 5)[rank * 300 + k])
                    .sum();
                assert!((v - want).abs() < 1e-12, "scatter rank {rank} [{k}]");
            }
        }
    }
}
