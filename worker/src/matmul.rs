//! Safe matrix views over slices and C = A·B (+ C) through the `gemm` crate,
//! which picks SIMD kernels at run time (AVX2/AVX-512/FMA) and threads with
//! rayon. The one unsafe call is checked by the bounds test in `MatRef::new`.

use gemm::Parallelism;

pub trait Scalar: Copy + Default + Send + Sync + 'static + std::fmt::Debug {
    const ZERO: Self;
    const ONE: Self;
}
impl Scalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
impl Scalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// A rows x cols view with element (i, j) at `i*rs + j*cs`.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// Row-major rows x cols.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Threads for the GEMM kernels.
pub fn parallelism(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// dst (row-major rows x cols) = lhs · rhs, or dst += lhs · rhs when `accumulate`.
pub fn matmul<T: Scalar>(
    dst: &mut [T],
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    par: Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions");
    assert_eq!(dst.len(), m * n, "destination size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(T::ZERO);
        }
        return;
    }
    // SAFETY: every view was built from a slice whose length matches its
    // shape (MatRef::new, and t() only swaps shape with strides), and dst has
    // exactly m*n elements, so every index gemm forms is in bounds. dst does
    // not alias lhs or rhs: it is a distinct &mut borrow.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_reference_including_transposes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 64, 64)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
            let want = naive(&a, &b, m, k, n);
            let mut c = vec![0.0; m * n];
            matmul(
                &mut c,
                MatRef::new(&a, m, k),
                MatRef::new(&b, k, n),
                false,
                parallelism(2),
            );
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-9);
            }
            // (A^T)^T · B through a stored transpose.
            let at: Vec<f64> = (0..k * m).map(|idx| a[(idx % m) * k + idx / m]).collect();
            let mut c2 = vec![1.0; m * n];
            matmul(
                &mut c2,
                MatRef::new(&at, k, m).t(),
                MatRef::new(&b, k, n),
                true,
                Parallelism::None,
            );
            for (x, y) in c2.iter().zip(&want) {
                assert!((x - (y + 1.0)).abs() < 1e-9);
            }
        }
    }
}
