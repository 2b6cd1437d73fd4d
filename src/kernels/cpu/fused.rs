//! Fused, multi-threaded CPU forms of the hot kernels, each a dfdx op with its own backward.
//!
//! dfdx's CPU element-wise, softmax and reduction kernels are single-threaded and allocate per
//! op; on `[b, h, n, n]` score tensors those passes, not the matmuls, dominate. Here one pass per
//! query row computes scores, talking heads, the mask rule and the normalization, in parallel
//! over rows. The backward recomputes the scores instead of storing them.
//!
//! Each op reads its inputs where dfdx keeps them ([`Host`]), computes, and registers a
//! backward closure that `+=`s into the input gradients, as dfdx's own ops do.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::grads::add_owned;
use super::shared::Shared;
use super::taped::Taped;
use crate::error::Result;
use crate::spec::Visibility;
use crate::spec::{check_weights_shapes, Normalizer, WeightsSpec};
use crate::tensor::*;

/// Query rows per run of the talking-heads gradient's sum (see `Weights::backward`).
const TALKING_ROWS: usize = 8;

/// The gradient buffer type of the CPU device (a `Vec` behind dfdx's allocation cache).
pub type CpuBuffer<E> = <Cpu as Storage<E>>::Vec;

/// Elements a kernel reads on the host: a tensor's buffer read where dfdx keeps it, or a
/// buffer the kernel computed. Either reads as a slice.
#[derive(Clone, Debug)]
pub enum Host<E: Unit> {
    /// A tape-free handle on a contiguous tensor's buffer, flattened: dfdx shares the buffer
    /// (and copies it before any write while this handle lives), so nothing is copied here.
    Tensor(Tensor<(usize,), E, Cpu>),
    /// A buffer of the kernel's own.
    Owned(Vec<E>),
}

impl<E: Real> Host<E>
where
    Cpu: Device<E>,
{
    /// `t`'s elements in buffer order, read in place: the fused ops take their inputs made
    /// contiguous ([`super::taped::Taped::input`]), so logical and buffer order agree (a
    /// tensor that is not would be made contiguous here, by a copy).
    pub fn read<S: Shape, T: Tape<E, Cpu>>(t: &Tensor<S, E, Cpu, T>) -> Self {
        let len = t.shape().num_elements();
        Self::Tensor(t.retaped::<NoneTape>().reshape_like(&(len,)))
    }
}

impl<E: Real> Host<E> {
    /// The elements as a buffer of the caller's to write: the kernel's own buffer as it is,
    /// a tensor's copied.
    pub fn into_vec(self) -> Vec<E> {
        match self {
            Self::Tensor(t) => copied(t.storage()),
            Self::Owned(v) => v,
        }
    }
}

impl<E: Unit> std::ops::Deref for Host<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        match self {
            Self::Tensor(t) => t.storage(),
            Self::Owned(v) => v,
        }
    }
}

impl<E: Unit> From<Vec<E>> for Host<E> {
    fn from(v: Vec<E>) -> Self {
        Self::Owned(v)
    }
}

/// The elements of a contiguous tensor (as `.contiguous()` returns it) as a buffer of the
/// caller's to write, copied by every thread (dfdx's `as_vec` walks an index per element).
/// Read-only uses take [`Host::read`], which copies nothing.
pub fn host_copy<S: Shape, E: Real, T: Tape<E, Cpu>>(t: &Tensor<S, E, Cpu, T>) -> Vec<E>
where
    Cpu: Device<E>,
{
    Host::read(t).into_vec()
}

/// `n` zeros, written by every thread (a large single-threaded `vec!` is a serial memset and
/// serial page faults).
pub fn zeros<E: Real>(n: usize) -> Vec<E> {
    if n < PARALLEL_FILL {
        return vec![E::zero(); n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(E::zero(), n));
    v
}

/// Fewer elements than this are zeroed on the calling thread: splitting costs more.
const PARALLEL_FILL: usize = 1 << 14;

/// A copy of `src`, written by every thread (a short one by the calling thread).
pub fn copied<E: Real>(src: &[E]) -> Vec<E> {
    if src.len() < PARALLEL_FILL {
        return src.to_vec();
    }
    let mut v = Vec::with_capacity(src.len());
    v.par_extend(src.par_iter().copied());
    v
}

/// `Σ` of eight partial sums in a fixed order (the same bits on every run).
#[inline(always)]
pub(super) fn lanes_sum<E: Real>(a: &[E; 8]) -> E {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Dot product with eight independent partial sums: a strict left-to-right sum cannot be
/// vectorized, eight lanes can.
#[inline]
fn dot<E: Real>(a: &[E], b: &[E]) -> E {
    let mut lanes = [E::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] = lanes[l] + x[l] * y[l];
        }
    }
    let tail = ra
        .iter()
        .zip(rb)
        .fold(E::zero(), |acc, (&x, &y)| acc + x * y);
    lanes.iter().fold(tail, |acc, &x| acc + x)
}

/// `y += c · x`.
#[inline]
fn axpy<E: Real>(y: &mut [E], c: E, x: &[E]) {
    y.iter_mut().zip(x).for_each(|(o, &v)| *o = *o + c * v);
}

/// Sizes and host data of one weights problem.
struct WeightsProblem<E: Real> {
    b: usize,
    h: usize,
    nq: usize,
    nk: usize,
    d: usize,
    scale: E,
    normalizer: Normalizer,
    vis: Visibility,
    q: Host<E>,
    k: Host<E>,
    bias: Option<Host<E>>,
    talking: Option<Host<E>>,
}

impl<E: Real> WeightsProblem<E> {
    /// Pre-mix scores `s[h*nk + j]` and mixed scores `t` of query row (b, i).
    fn scores(&self, b: usize, i: usize, s: &mut [E], t: &mut [E]) {
        let (h, nq, nk, d) = (self.h, self.nq, self.nk, self.d);
        for hh in 0..h {
            let q = &self.q[((b * h + hh) * nq + i) * d..][..d];
            let kb = &self.k[(b * h + hh) * nk * d..][..nk * d];
            let row = &mut s[hh * nk..(hh + 1) * nk];
            for (j, sj) in row.iter_mut().enumerate() {
                *sj = self.scale * dot(q, &kb[j * d..(j + 1) * d]);
            }
            if let Some(bias) = &self.bias {
                let br = &bias[((b * h + hh) * nq + i) * nk..][..nk];
                row.iter_mut().zip(br).for_each(|(x, &y)| *x = *x + y);
            }
        }
        match &self.talking {
            Some(w) => {
                t.iter_mut().for_each(|x| *x = E::zero());
                for ho in 0..h {
                    let out = &mut t[ho * nk..(ho + 1) * nk];
                    for hi in 0..h {
                        let c = w[ho * h + hi];
                        out.iter_mut()
                            .zip(&s[hi * nk..(hi + 1) * nk])
                            .for_each(|(o, &x)| *o = *o + c * x);
                    }
                }
            }
            None => t.copy_from_slice(s),
        }
    }

    /// Normalizes one head's mixed-score row `t` into weights `p` over the visible keys.
    /// Returns the normalizer's denominator information for the backward pass.
    fn normalize(&self, b: usize, i: usize, t: &[E], p: &mut [E]) -> E {
        let vis = |j: usize| self.vis.visible(b, i, j);
        match self.normalizer {
            Normalizer::Softmax => {
                let mut max = E::neg_infinity();
                for (j, &x) in t.iter().enumerate() {
                    if vis(j) {
                        // a NaN score makes the row NaN rather than being skipped
                        max = x.max_or_nan(max);
                    }
                }
                if max == E::neg_infinity() {
                    p.iter_mut().for_each(|x| *x = E::zero());
                    return E::zero();
                }
                let mut sum = E::zero();
                for (j, (pj, &x)) in p.iter_mut().zip(t).enumerate() {
                    *pj = if vis(j) { (x - max).exp() } else { E::zero() };
                    sum = sum + *pj;
                }
                let inv = E::one() / sum;
                p.iter_mut().for_each(|x| *x = *x * inv);
                sum
            }
            Normalizer::Taylor { eps } => {
                let mut sum = E::zero();
                for (j, (pj, &x)) in p.iter_mut().zip(t).enumerate() {
                    *pj = if vis(j) {
                        E::one() + x + x * x * E::of(0.5)
                    } else {
                        E::zero()
                    };
                    sum = sum + *pj;
                }
                let z = sum.at_least(E::of(eps));
                p.iter_mut().for_each(|x| *x = *x / z);
                sum
            }
        }
    }

    fn forward(&self) -> Vec<E> {
        let (b, h, nq, nk) = (self.b, self.h, self.nq, self.nk);
        let mut out = vec![E::zero(); b * h * nq * nk];
        let ptr = Shared::new(&mut out);
        (0..b * nq).into_par_iter().for_each_init(
            || {
                (
                    vec![E::zero(); h * nk],
                    vec![E::zero(); h * nk],
                    vec![E::zero(); nk],
                )
            },
            |(s, t, p), row| {
                let (bb, i) = (row / nq, row % nq);
                self.scores(bb, i, s, t);
                for hh in 0..h {
                    self.normalize(bb, i, &t[hh * nk..(hh + 1) * nk], p);
                    let base = ((bb * h + hh) * nq + i) * nk;
                    for (j, &x) in p.iter().enumerate() {
                        // Safety: row (bb, i) owns indices base..base+nk of every head.
                        unsafe { ptr.write(base + j, x) };
                    }
                }
            },
        );
        out
    }

    /// Returns (dq, dk, dscores-before-mixing = dbias, dtalking).
    fn backward(&self, g: &[E]) -> (Vec<E>, Vec<E>, Vec<E>, Vec<E>) {
        let (b, h, nq, nk, d) = (self.b, self.h, self.nq, self.nk, self.d);
        let mut dq = vec![E::zero(); b * h * nq * d];
        let mut ds_all = vec![E::zero(); b * h * nq * nk];
        let dq_ptr = Shared::new(&mut dq);
        let ds_ptr = Shared::new(&mut ds_all);
        let hh2 = h * h;
        // a row's scratch (scores, mixed scores, weights, their gradient, a dq row): every
        // buffer is written before it is read, so one set serves all the rows a thread runs
        let scratch = || {
            (
                vec![E::zero(); h * nk],
                vec![E::zero(); h * nk],
                vec![E::zero(); nk],
                vec![E::zero(); h * nk],
                vec![E::zero(); d],
            )
        };
        type Scratch<E> = (Vec<E>, Vec<E>, Vec<E>, Vec<E>, Vec<E>);
        let row_step = |dw: &mut [E], (s, t, p, dt, dqrow): &mut Scratch<E>, row: usize| {
            let (bb, i) = (row / nq, row % nq);
            self.scores(bb, i, s, t);
            for hh in 0..h {
                let tr = &t[hh * nk..(hh + 1) * nk];
                let sum = self.normalize(bb, i, tr, p);
                let gr = &g[((bb * h + hh) * nq + i) * nk..][..nk];
                let dtr = &mut dt[hh * nk..(hh + 1) * nk];
                let pg = dot(p, gr);
                match self.normalizer {
                    Normalizer::Softmax => {
                        for j in 0..nk {
                            dtr[j] = p[j] * (gr[j] - pg);
                        }
                    }
                    Normalizer::Taylor { eps } => {
                        let eps = E::of(eps);
                        let z = sum.at_least(eps);
                        // clamp passes the gradient only where Σw ≥ eps
                        let through = if sum >= eps { pg } else { E::zero() };
                        for j in 0..nk {
                            dtr[j] = if self.vis.visible(bb, i, j) {
                                (gr[j] - through) / z * (E::one() + tr[j])
                            } else {
                                E::zero()
                            };
                        }
                    }
                }
            }
            // undo the head mixing: ds[h] = Σ_h' W[h',h] dt[h'], dW[h',h] += dt[h'] · s[h]
            let ds: &[E] = match &self.talking {
                Some(w) => {
                    // t is not needed again for this row: it becomes ds
                    t.iter_mut().for_each(|x| *x = E::zero());
                    for ho in 0..h {
                        let dto = &dt[ho * nk..(ho + 1) * nk];
                        for hi in 0..h {
                            let si = &s[hi * nk..(hi + 1) * nk];
                            dw[ho * h + hi] = dw[ho * h + hi] + dot(dto, si);
                            let c = w[ho * h + hi];
                            axpy(&mut t[hi * nk..(hi + 1) * nk], c, dto);
                        }
                    }
                    t
                }
                None => dt,
            };
            for hh in 0..h {
                let dsr = &ds[hh * nk..(hh + 1) * nk];
                let base = ((bb * h + hh) * nq + i) * nk;
                let kb = &self.k[(bb * h + hh) * nk * d..][..nk * d];
                let qbase = ((bb * h + hh) * nq + i) * d;
                for (j, &x) in dsr.iter().enumerate() {
                    // Safety: row (bb, i) owns these indices of ds_all and dq.
                    unsafe { ds_ptr.write(base + j, x) };
                }
                // dq row = scale · Σ_j ds[j] k[j], accumulated row-wise (contiguous in k)
                dqrow.iter_mut().for_each(|x| *x = E::zero());
                for (j, &c) in dsr.iter().enumerate() {
                    if c != E::zero() {
                        axpy(dqrow, c, &kb[j * d..(j + 1) * d]);
                    }
                }
                for (c, &x) in dqrow.iter().enumerate() {
                    unsafe { dq_ptr.write(qbase + c, x * self.scale) };
                }
            }
        };
        // Rows in fixed runs, each run's talking-heads gradient summed in order, then the runs'
        // sums in run order: a rayon fold would split where work is stolen, so the sum's order,
        // and its last bits, would depend on scheduling (and a resumed run would drift from
        // an uninterrupted one).
        let rows = b * nq;
        let runs: Vec<Vec<E>> = (0..rows.div_ceil(TALKING_ROWS))
            .into_par_iter()
            .map_init(scratch, |scratch, run| {
                let mut dw = vec![E::zero(); hh2];
                for row in run * TALKING_ROWS..rows.min((run + 1) * TALKING_ROWS) {
                    row_step(&mut dw, scratch, row);
                }
                dw
            })
            .collect();
        let dtalking = runs.iter().fold(vec![E::zero(); hh2], |mut sum, run| {
            accumulate(&mut sum, run);
            sum
        });

        // dk[b,h,j] = scale · Σ_i ds[b,h,i,j] q[b,h,i]: parallel over (b, h), no write conflicts
        let mut dk = vec![E::zero(); b * h * nk * d];
        dk.par_chunks_mut(nk * d).enumerate().for_each(|(bh, dkb)| {
            let qb = &self.q[bh * nq * d..][..nq * d];
            let dsb = &ds_all[bh * nq * nk..][..nq * nk];
            for i in 0..nq {
                let qi = &qb[i * d..(i + 1) * d];
                for j in 0..nk {
                    let c = dsb[i * nk + j] * self.scale;
                    if c != E::zero() {
                        axpy(&mut dkb[j * d..(j + 1) * d], c, qi);
                    }
                }
            }
        });
        (dq, dk, ds_all, dtalking)
    }
}

/// `dst += src`, element by element.
pub fn accumulate<E: Real>(dst: &mut [E], src: &[E]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = *d + s);
}

/// The most copies of a source's gradient a broadcasting backward sums into (parts of the
/// output fixed by the sizes alone, so the sums do not depend on the number of threads).
pub const MAX_PARTS: usize = 8;

/// `dst += Σ copies`, the copies added in order, in parallel over chunks of `dst`: the same
/// bits whatever the number of threads.
pub fn add_copies<E: Real>(dst: &mut [E], copies: &[Vec<E>]) {
    const CHUNK: usize = 1 << 14;
    dst.par_chunks_mut(CHUNK).enumerate().for_each(|(c, dst)| {
        for copy in copies {
            accumulate(dst, &copy[c * CHUNK..]);
        }
    });
}

/// `Σ parts`, each of `len` elements, added in the parts' order (the same bits whatever the
/// number of threads), split over every thread by ranges of the sum: the per-chunk partial
/// weight gradients of a backward, summed on one thread, left the other threads idle.
pub fn sum_parts<E: Real>(parts: &[&[E]], len: usize) -> Vec<E> {
    // about this many additions per task
    const WORK: usize = 1 << 15;
    let span = (WORK / parts.len().max(1)).clamp(64, len.max(64));
    let mut sum = zeros(len);
    sum.par_chunks_mut(span).enumerate().for_each(|(i, dst)| {
        for part in parts {
            accumulate(dst, &part[i * span..][..dst.len()]);
        }
    });
    sum
}

/// The fused CPU form of [`super::weights::weights_composite`].
pub fn weights_fused<E: Real, T: Tape<E, Cpu>>(
    q: T4<E, Cpu, T>,
    k: T4<E, Cpu, T>,
    bias: Option<T4<E, Cpu, T>>,
    talking: Option<T2<E, Cpu, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let shape = check_weights_shapes(
        *q.shape(),
        *k.shape(),
        bias.as_ref().map(|t| *t.shape()),
        talking.as_ref().map(|t| *t.shape()),
        &spec.visibility,
    )?;
    let (b, h, nq, nk) = shape;
    let d = q.shape().3;
    let dev = q.device().clone();
    // gradient buffers follow the input's strides: work on contiguous inputs so that logical
    // order and buffer order agree (a no-op copy-free view when already contiguous)
    let mut taped = Taped::new();
    let (q, k) = (taped.input(q), taped.input(k));
    let (bias, talking) = (taped.optional(bias), taped.optional(talking));
    let problem = WeightsProblem {
        b,
        h,
        nq,
        nk,
        d,
        scale: E::of(spec.scale),
        normalizer: spec.normalizer,
        vis: spec.visibility.clone(),
        q: Host::read(&q),
        k: Host::read(&k),
        bias: bias.as_ref().map(Host::read),
        talking: talking.as_ref().map(Host::read),
    };
    let out = problem.forward();
    let (q_g, k_g) = (q.ghost(), k.ghost());
    let bias_g = bias.as_ref().map(|t| t.ghost());
    let talking_g = talking.as_ref().map(|t| t.ghost());
    taped.output(&dev, out, shape, move |g, grads| {
        let (dq, dk, dbias, dw) = problem.backward(&g);
        add_owned(grads, &q_g, dq)?;
        add_owned(grads, &k_g, dk)?;
        if let Some(bg) = &bias_g {
            add_owned(grads, bg, dbias)?;
        }
        if let Some(wg) = &talking_g {
            add_owned(grads, wg, dw)?;
        }
        Ok(())
    })
}

/// Inclusive prefix sum along axis 2 of `[B, H, N, X]` (the causal linear-attention state).
pub fn cumsum_fused<E: Real, T: Tape<E, Cpu>>(x: T4<E, Cpu, T>) -> Result<T4<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let shape = *x.shape();
    let (_, _, n, w) = shape;
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let x = taped.input(x);
    let mut data = host_copy(&x);
    prefix_scan(&mut data, n, w, false);
    let x_g = x.ghost();
    taped.output(&dev, data, shape, move |g, grads| {
        let mut g = g.to_vec();
        prefix_scan(&mut g, n, w, true);
        add_owned(grads, &x_g, g)?;
        Ok(())
    })
}

/// In-place inclusive scan over the rows of each `[n, w]` block, forward or from the end.
fn prefix_scan<E: Real>(buf: &mut [E], n: usize, w: usize, reverse: bool) {
    if n * w == 0 {
        return;
    }
    buf.par_chunks_mut(n * w).for_each(|block| {
        for step in 1..n {
            let (r, prev) = if reverse {
                (n - 1 - step, n - step)
            } else {
                (step, step - 1)
            };
            for c in 0..w {
                block[r * w + c] = block[r * w + c] + block[prev * w + c];
            }
        }
    });
}
