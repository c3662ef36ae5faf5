//! What the collective tests share: the data every rank reduces, and the
//! check of an all-reduce against the plain sum.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use worker::collective::{Collective, ReduceOp};

/// Rank `rank`'s `len` values for a test (`salt` tells tests apart).
pub fn data(rank: usize, len: usize, salt: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(rank as u64 * 1000 + len as u64 + salt);
    (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// On one rank: the sum and the average over the collective of its data,
/// for each length.
pub fn sums<C: Collective>(c: &mut C, lens: &[usize]) -> Vec<(Vec<f64>, Vec<f64>)> {
    lens.iter()
        .map(|&len| {
            let mut sum = data(c.rank(), len, 1);
            c.all_reduce(&mut sum, ReduceOp::Sum).unwrap();
            let mut avg = data(c.rank(), len, 1);
            c.all_reduce(&mut avg, ReduceOp::Avg).unwrap();
            (sum, avg)
        })
        .collect()
}

/// Every rank's `sums` (by rank): each within 1e-12 of the plain sum and
/// average, and every rank holding the very same bits as rank 0.
pub fn check_sums(results: &[Vec<(Vec<f64>, Vec<f64>)>], lens: &[usize], label: &str) {
    let n = results.len();
    for (li, &len) in lens.iter().enumerate() {
        let want: Vec<f64> = (0..len)
            .map(|i| (0..n).map(|r| data(r, len, 1)[i]).sum())
            .collect();
        for (rank, res) in results.iter().enumerate() {
            let (sum, avg) = &res[li];
            assert_eq!(sum.len(), len);
            for i in 0..len {
                assert!(
                    (sum[i] - want[i]).abs() < 1e-12,
                    "{label} len={len} rank={rank} i={i}"
                );
                assert!(
                    (avg[i] - want[i] / n as f64).abs() < 1e-12,
                    "avg {label} len={len}"
                );
            }
            assert_eq!(
                res[li], results[0][li],
                "{label} len={len}: rank {rank} differs from rank 0"
            );
        }
    }
}
