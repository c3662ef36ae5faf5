//! The TCP ring against a straightforward sum, over real loopback sockets:
//! every world size 1..8, lengths 0, 1, primes and non-multiples of n.

mod common;

use common::{check_sums, data, sums};
use proto::spec::Collective as Spec;
use std::net::TcpListener;
use std::time::{Duration, Instant};
use worker::collective::{Collective, CollectiveError, ReduceOp};
use worker::progress::Progress;
use worker::ring::Ring;

fn spec(timeout_s: f64) -> Spec {
    // Small chunks and slices so the multi-chunk and multi-slice
    // (pipelined) paths run even on short buffers.
    Spec {
        timeout_s,
        chunk_bytes: 4096,
        ..Spec::default()
    }
}

/// Run `f` on n connected ranks (rank i on 127.0.0.(2+i)); results by rank.
fn with_ring<R: Send + 'static>(
    n: usize,
    timeout_s: f64,
    f: impl Fn(&mut Ring) -> R + Send + Sync + Clone + 'static,
) -> Vec<R> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|i| TcpListener::bind((format!("127.0.0.{}", 2 + i).as_str(), 0)).unwrap())
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let addrs = addrs.clone();
            let f = f.clone();
            std::thread::spawn(move || {
                let next = &addrs[(rank + 1) % addrs.len()];
                let mut ring = Ring::connect(
                    l,
                    rank,
                    addrs.len(),
                    next,
                    "tok",
                    &spec(timeout_s),
                    Progress::new(),
                )
                .unwrap();
                f(&mut ring)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

const LENS: &[usize] = &[0, 1, 2, 7, 8, 13, 1000, 4099];

#[test]
fn all_reduce_matches_plain_sum_for_world_1_to_8() {
    for n in 1..=8 {
        let results = with_ring(n, 20.0, |ring| sums(ring, LENS));
        check_sums(&results, LENS, &format!("n={n}"));
    }
}

#[test]
fn broadcast_all_gather_reduce_scatter_barrier() {
    for n in 1..=8 {
        for root in [0, n - 1] {
            let res = with_ring(n, 20.0, move |ring| {
                let r = ring.rank();
                let mut b: Vec<f32> = if r == root {
                    (0..5000).map(|i| i as f32).collect()
                } else {
                    vec![0.0; 5000]
                };
                ring.broadcast(&mut b, root).unwrap();
                let input: Vec<f32> = (0..3).map(|i| (r * 10 + i) as f32).collect();
                let mut gathered = vec![0.0f32; 3 * n];
                ring.all_gather(&input, &mut gathered).unwrap();
                let rs_in: Vec<f64> = data(r, 5 * n, 7);
                let mut rs_out = vec![0.0; 5];
                ring.reduce_scatter(&rs_in, &mut rs_out, ReduceOp::Sum)
                    .unwrap();
                ring.barrier().unwrap();
                (b, gathered, rs_out)
            });
            for (r, (b, g, rs)) in res.iter().enumerate() {
                assert_eq!(
                    b,
                    &(0..5000).map(|i| i as f32).collect::<Vec<_>>(),
                    "broadcast n={n} root={root} rank={r}"
                );
                let want_g: Vec<f32> = (0..n)
                    .flat_map(|q| (0..3).map(move |i| (q * 10 + i) as f32))
                    .collect();
                assert_eq!(g, &want_g, "all_gather n={n} rank={r}");
                for i in 0..5 {
                    let want: f64 = (0..n).map(|q| data(q, 5 * n, 7)[r * 5 + i]).sum();
                    assert!(
                        (rs[i] - want).abs() < 1e-12,
                        "reduce_scatter n={n} rank={r} i={i}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_dead_peer_is_an_error_within_the_timeout_not_a_hang() {
    let n = 3;
    let t0 = Instant::now();
    let res = with_ring(n, 1.0, move |ring| {
        if ring.rank() == 2 {
            // Leaves without taking part: its sockets close.
            return None;
        }
        let mut buf = vec![1.0f32; 100_000];
        Some(ring.all_reduce(&mut buf, ReduceOp::Sum))
    });
    for r in res.into_iter().flatten() {
        let e = r.expect_err("collective with a vanished peer must fail");
        assert!(
            matches!(
                e,
                CollectiveError::PeerClosed { .. } | CollectiveError::Timeout { .. }
            ),
            "{e}"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_silent_peer_times_out() {
    let res = with_ring(2, 0.5, move |ring| {
        if ring.rank() == 1 {
            // Alive but never sends: rank 0 must time out, not wait forever.
            std::thread::sleep(Duration::from_secs(2));
            return None;
        }
        let mut buf = vec![1.0f32; 16];
        Some(ring.all_reduce(&mut buf, ReduceOp::Sum))
    });
    let e = res[0]
        .as_ref()
        .unwrap()
        .as_ref()
        .expect_err("must time out");
    assert!(matches!(e, CollectiveError::Timeout { peer: 1, .. }), "{e}");
}
