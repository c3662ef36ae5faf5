//! The `train` workload's MLP step as a list of BLAS-style operations over
//! named buffers: what the GPU runs (one cuBLAS call or one small kernel per
//! operation, `mlp_cuda.rs`) and what a plain reference interpreter here
//! runs on the CPU. The list is a pure function of the layer sizes, so the
//! column-major cuBLAS conventions (transposes, leading dimensions) are
//! checked on machines without a GPU: the worker's tests compare the
//! reference interpreter's gradient with the CPU trainer's.
//!
//! Row-major matrices as the CPU trainer stores them: a row-major r x c
//! matrix is a column-major c x r matrix with leading dimension c, which is
//! how cuBLAS sees it.

/// A buffer of the device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buf {
    /// Weights and biases, flat (layer l: weights din x dout row-major, then bias).
    Params,
    Velocity,
    /// Gradient, then the loss, then the notice flag (`len + 2`).
    Grad,
    /// Act(0) is the batch, Act(l) the input of layer l, Act(L) the output.
    Act(usize),
    /// Two gradient buffers for the backward pass, used in turn.
    Dz,
    Da,
    /// The batch's targets.
    Y,
    /// `batch` ones (bias gradients as a matrix-vector product).
    Ones,
    /// The teacher T (input x output, row-major): targets are tanh(x·T).
    Teacher,
}

/// `len` floats of `buf` from `off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ref {
    pub buf: Buf,
    pub off: usize,
    pub len: usize,
}

impl Ref {
    fn new(buf: Buf, off: usize, len: usize) -> Ref {
        Ref { buf, off, len }
    }
}

/// One operation. Gemm and Gemv follow cuBLAS (column-major, `t` = transpose).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// c = alpha·op(a)·op(b) + beta·c, op(a) m x k, op(b) k x n, c m x n.
    Gemm {
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Ref,
        lda: usize,
        b: Ref,
        ldb: usize,
        beta: f32,
        c: Ref,
        ldc: usize,
    },
    /// y = alpha·a·x + beta·y, a m x n (no transpose), x n, y m.
    Gemv {
        m: usize,
        n: usize,
        alpha: f32,
        a: Ref,
        lda: usize,
        x: Ref,
        beta: f32,
        y: Ref,
    },
    /// z[i] = bias[i % cols]: every row of z starts as the bias.
    BiasRows { z: Ref, bias: Ref, cols: usize },
    /// z = max(z, 0).
    Relu { z: Ref },
    /// z = tanh(z).
    Tanh { z: Ref },
    /// d = 0 where a <= 0 (ReLU's derivative).
    ReluMask { d: Ref, a: Ref },
    /// dz = (out - y)·scale.
    LossGrad {
        dz: Ref,
        out: Ref,
        y: Ref,
        scale: f32,
    },
}

/// Sizes of the model and its buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Shapes {
    pub dims: Vec<usize>,
    pub batch: usize,
    /// Offsets of each layer's weights and bias in Params.
    pub w: Vec<usize>,
    pub b: Vec<usize>,
    pub len: usize,
}

impl Shapes {
    /// Same layout as the CPU trainer: per layer, weights then bias.
    pub fn new(dims: &[usize], batch: usize) -> Shapes {
        let (mut w, mut b, mut off) = (Vec::new(), Vec::new(), 0);
        for l in 0..dims.len() - 1 {
            w.push(off);
            off += dims[l] * dims[l + 1];
            b.push(off);
            off += dims[l + 1];
        }
        Shapes {
            dims: dims.to_vec(),
            batch,
            w,
            b,
            len: off,
        }
    }

    pub fn layers(&self) -> usize {
        self.w.len()
    }

    /// Floats each buffer holds.
    pub fn size(&self, buf: Buf) -> usize {
        let widest = self.dims.iter().max().copied().unwrap_or(0) * self.batch;
        match buf {
            Buf::Params | Buf::Velocity => self.len,
            Buf::Grad => self.len + 2,
            Buf::Act(l) => self.batch * self.dims[l],
            Buf::Dz | Buf::Da => widest,
            Buf::Y => self.batch * self.dims[self.layers()],
            Buf::Ones => self.batch,
            Buf::Teacher => self.dims[0] * self.dims[self.layers()],
        }
    }

    /// Every buffer the step uses.
    pub fn buffers(&self) -> Vec<Buf> {
        let mut v = vec![Buf::Params, Buf::Velocity, Buf::Grad];
        v.extend((0..=self.layers()).map(Buf::Act));
        v.extend([Buf::Dz, Buf::Da, Buf::Y, Buf::Ones, Buf::Teacher]);
        v
    }
}

/// The batch's targets from its inputs (in Act(0)): Y = tanh(X·T), as the
/// CPU trainer's loader makes them, so only X crosses from the host.
pub fn target_ops(s: &Shapes) -> Vec<Op> {
    let (nb, d, o) = (s.batch, s.dims[0], s.dims[s.layers()]);
    let y = Ref::new(Buf::Y, 0, nb * o);
    vec![
        // Y (nb x o) = X (nb x d) · T (d x o), i.e. column-major Yᵀ = Tᵀ·Xᵀ.
        Op::Gemm {
            ta: false,
            tb: false,
            m: o,
            n: nb,
            k: d,
            alpha: 1.0,
            a: Ref::new(Buf::Teacher, 0, d * o),
            lda: o,
            b: Ref::new(Buf::Act(0), 0, nb * d),
            ldb: d,
            beta: 0.0,
            c: y,
            ldc: o,
        },
        Op::Tanh { z: y },
    ]
}

/// Forward and backward for one batch (in Act(0) and Y): the gradient of
/// 0.5·mean((f(x) - y)²) into Grad[..len] and that loss into Grad[len].
pub fn step_ops(s: &Shapes) -> Vec<Op> {
    let nb = s.batch;
    let layers = s.layers();
    let d = &s.dims;
    let mut ops = Vec::new();
    for l in 0..layers {
        let (din, dout) = (d[l], d[l + 1]);
        let z = Ref::new(Buf::Act(l + 1), 0, nb * dout);
        ops.push(Op::BiasRows {
            z,
            bias: Ref::new(Buf::Params, s.b[l], dout),
            cols: dout,
        });
        // Z (nb x dout) += A (nb x din) · W (din x dout), i.e. column-major
        // Zᵀ = Wᵀ·Aᵀ.
        ops.push(Op::Gemm {
            ta: false,
            tb: false,
            m: dout,
            n: nb,
            k: din,
            alpha: 1.0,
            a: Ref::new(Buf::Params, s.w[l], din * dout),
            lda: dout,
            b: Ref::new(Buf::Act(l), 0, nb * din),
            ldb: din,
            beta: 1.0,
            c: z,
            ldc: dout,
        });
        if l + 1 < layers {
            ops.push(Op::Relu { z });
        }
    }
    let out_len = nb * d[layers];
    let scale = 1.0 / out_len as f32;
    let dz = Ref::new(Buf::Dz, 0, out_len);
    ops.push(Op::LossGrad {
        dz,
        out: Ref::new(Buf::Act(layers), 0, out_len),
        y: Ref::new(Buf::Y, 0, out_len),
        scale,
    });
    // loss = 0.5·scale·Σe² = (0.5/scale)·Σdz², as a 1 x n matrix times dz.
    ops.push(Op::Gemv {
        m: 1,
        n: out_len,
        alpha: 0.5 / scale,
        a: dz,
        lda: 1,
        x: dz,
        beta: 0.0,
        y: Ref::new(Buf::Grad, s.len, 1),
    });
    let (mut cur, mut other) = (Buf::Dz, Buf::Da);
    for l in (0..layers).rev() {
        let (din, dout) = (d[l], d[l + 1]);
        let g = Ref::new(cur, 0, nb * dout);
        // gW (din x dout) = Aᵀ·dZ, i.e. column-major gWᵀ = dZᵀ·A.
        ops.push(Op::Gemm {
            ta: false,
            tb: true,
            m: dout,
            n: din,
            k: nb,
            alpha: 1.0,
            a: g,
            lda: dout,
            b: Ref::new(Buf::Act(l), 0, nb * din),
            ldb: din,
            beta: 0.0,
            c: Ref::new(Buf::Grad, s.w[l], din * dout),
            ldc: dout,
        });
        // gb = column sums of dZ = dZᵀ·1.
        ops.push(Op::Gemv {
            m: dout,
            n: nb,
            alpha: 1.0,
            a: g,
            lda: dout,
            x: Ref::new(Buf::Ones, 0, nb),
            beta: 0.0,
            y: Ref::new(Buf::Grad, s.b[l], dout),
        });
        if l > 0 {
            // dA (nb x din) = dZ·Wᵀ, i.e. column-major dAᵀ = W·dZᵀ.
            let da = Ref::new(other, 0, nb * din);
            ops.push(Op::Gemm {
                ta: true,
                tb: false,
                m: din,
                n: nb,
                k: dout,
                alpha: 1.0,
                a: Ref::new(Buf::Params, s.w[l], din * dout),
                lda: dout,
                b: g,
                ldb: dout,
                beta: 0.0,
                c: da,
                ldc: din,
            });
            ops.push(Op::ReluMask {
                d: da,
                a: Ref::new(Buf::Act(l), 0, nb * din),
            });
            std::mem::swap(&mut cur, &mut other);
        }
    }
    ops
}

/// The reference interpreter: each operation by its definition, in plain
/// loops (f64 accumulation). For tests, not for speed.
pub mod reference {
    use super::*;
    use std::collections::HashMap;

    pub struct Host {
        pub bufs: HashMap<Buf, Vec<f32>>,
    }

    impl Host {
        pub fn new(s: &Shapes) -> Host {
            let mut bufs: HashMap<Buf, Vec<f32>> = s
                .buffers()
                .into_iter()
                .map(|b| (b, vec![0f32; s.size(b)]))
                .collect();
            bufs.insert(Buf::Ones, vec![1f32; s.size(Buf::Ones)]);
            Host { bufs }
        }

        fn get(&self, r: Ref) -> Vec<f32> {
            self.bufs[&r.buf][r.off..r.off + r.len].to_vec()
        }

        fn put(&mut self, r: Ref, v: &[f32]) {
            self.bufs.get_mut(&r.buf).expect("buffer")[r.off..r.off + r.len].copy_from_slice(v);
        }

        pub fn run(&mut self, ops: &[Op]) {
            for op in ops {
                self.apply(op);
            }
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Gemm {
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    alpha,
                    a,
                    lda,
                    b,
                    ldb,
                    beta,
                    c,
                    ldc,
                } => {
                    let (av, bv, mut cv) = (self.get(a), self.get(b), self.get(c));
                    let at =
                        |i: usize, p: usize| if ta { av[p + i * lda] } else { av[i + p * lda] };
                    let bt =
                        |p: usize, j: usize| if tb { bv[j + p * ldb] } else { bv[p + j * ldb] };
                    for j in 0..n {
                        for i in 0..m {
                            let s: f64 = (0..k).map(|p| at(i, p) as f64 * bt(p, j) as f64).sum();
                            let o = &mut cv[i + j * ldc];
                            *o = alpha * s as f32 + if beta == 0.0 { 0.0 } else { beta * *o };
                        }
                    }
                    self.put(c, &cv);
                }
                Op::Gemv {
                    m,
                    n,
                    alpha,
                    a,
                    lda,
                    x,
                    beta,
                    y,
                } => {
                    let (av, xv, mut yv) = (self.get(a), self.get(x), self.get(y));
                    for (i, o) in yv.iter_mut().enumerate().take(m) {
                        let s: f64 = (0..n).map(|j| av[i + j * lda] as f64 * xv[j] as f64).sum();
                        *o = alpha * s as f32 + if beta == 0.0 { 0.0 } else { beta * *o };
                    }
                    self.put(y, &yv);
                }
                Op::BiasRows { z, bias, cols } => {
                    let bv = self.get(bias);
                    let zv: Vec<f32> = (0..z.len).map(|i| bv[i % cols]).collect();
                    self.put(z, &zv);
                }
                Op::Relu { z } => {
                    let zv: Vec<f32> = self.get(z).iter().map(|v| v.max(0.0)).collect();
                    self.put(z, &zv);
                }
                Op::Tanh { z } => {
                    let zv: Vec<f32> = self.get(z).iter().map(|v| v.tanh()).collect();
                    self.put(z, &zv);
                }
                Op::ReluMask { d, a } => {
                    let av = self.get(a);
                    let dv: Vec<f32> = self
                        .get(d)
                        .iter()
                        .zip(&av)
                        .map(|(d, a)| if *a <= 0.0 { 0.0 } else { *d })
                        .collect();
                    self.put(d, &dv);
                }
                Op::LossGrad { dz, out, y, scale } => {
                    let (ov, yv) = (self.get(out), self.get(y));
                    let dv: Vec<f32> = ov.iter().zip(&yv).map(|(o, t)| (o - t) * scale).collect();
                    self.put(dz, &dv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_stays_inside_its_buffer_and_writes_do_not_alias_reads() {
        for (dims, batch) in [(vec![5, 7, 7, 3], 4), (vec![3, 2], 1), (vec![16, 8, 4], 9)] {
            let s = Shapes::new(&dims, batch);
            let mut ops = target_ops(&s);
            ops.extend(step_ops(&s));
            let inside = |r: &Ref| assert!(r.off + r.len <= s.size(r.buf), "{r:?} in {dims:?}");
            for op in &ops {
                match op {
                    Op::Gemm {
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        a,
                        lda,
                        b,
                        ldb,
                        c,
                        ldc,
                        ..
                    } => {
                        [a, b, c].into_iter().for_each(inside);
                        // The matrices fit their references.
                        let (ar, ac) = if *ta { (*k, *m) } else { (*m, *k) };
                        let (br, bc) = if *tb { (*n, *k) } else { (*k, *n) };
                        assert!(*lda >= ar && (ac - 1) * lda + ar <= a.len, "{op:?}");
                        assert!(*ldb >= br && (bc - 1) * ldb + br <= b.len, "{op:?}");
                        assert!(*ldc >= *m && (n - 1) * ldc + m <= c.len, "{op:?}");
                        assert!(c.buf != a.buf && c.buf != b.buf, "{op:?}");
                    }
                    Op::Gemv {
                        m, n, a, lda, x, y, ..
                    } => {
                        [a, x, y].into_iter().for_each(inside);
                        assert!((n - 1) * lda + m <= a.len && x.len == *n && y.len == *m);
                        assert!(y.buf != a.buf && y.buf != x.buf, "{op:?}");
                    }
                    Op::BiasRows { z, bias, cols } => {
                        inside(z);
                        inside(bias);
                        assert_eq!((z.len % cols, bias.len), (0, *cols));
                    }
                    Op::Relu { z } | Op::Tanh { z } => inside(z),
                    Op::ReluMask { d, a } => {
                        inside(d);
                        inside(a);
                        assert_eq!(d.len, a.len);
                    }
                    Op::LossGrad { dz, out, y, .. } => {
                        [dz, out, y].into_iter().for_each(inside);
                        assert!(dz.len == out.len && out.len == y.len);
                    }
                }
            }
            // The loss lands in its slot, past the gradient.
            assert!(ops
                .iter()
                .any(|o| matches!(o, Op::Gemv { y, .. } if y.buf == Buf::Grad && y.off == s.len)));
        }
    }

    #[test]
    fn one_layer_gradient_by_hand() {
        // f(x) = x·W + b with x = [1, 2], W = [[1], [1]], b = [0.5], y = 3:
        // out 3.5, e = 0.5, loss 0.125, dW = x·e = [0.5, 1], db = 0.5.
        let s = Shapes::new(&[2, 1], 1);
        let mut h = reference::Host::new(&s);
        h.bufs.insert(Buf::Params, vec![1.0, 1.0, 0.5]);
        h.bufs.insert(Buf::Act(0), vec![1.0, 2.0]);
        h.bufs.insert(Buf::Y, vec![3.0]);
        h.run(&step_ops(&s));
        assert_eq!(h.bufs[&Buf::Act(1)], vec![3.5]);
        assert_eq!(&h.bufs[&Buf::Grad][..4], &[0.5, 1.0, 0.5, 0.125]);
    }
}
