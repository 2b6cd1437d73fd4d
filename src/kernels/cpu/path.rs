//! Path (triangular) attention across edges, fused: edge (i, j) attends over the paths
//! i → l → j, with score `q(i, l) · k(l, j)` and value `v1(i, l) ⊙ v2(l, j)` (the Edge
//! Transformer's attention, Bergen et al. 2021).
//!
//! Cost n³ per head; memory O(n²): the forward keeps one `[n (l), n (j)]` score block per task
//! and the backward recomputes it instead of storing the n³ weights.
//!
//! Neither the scores nor the values are matrix products (the value is a product of three
//! factors, elementwise in the channel), so every step runs as multiply-adds along `j`: the
//! key-side operands are copied once into `[graph, head, l, channel, j]` rows, and the work of
//! query row i is `n · d` (scores) and `n · e` (values) multiply-adds of length-n rows, which
//! vectorize (with AVX2 and FMA where the CPU has them). The forward runs in parallel over
//! (graph, i, head). The backward's key-side gradients sum over every i: it runs over
//! (graph, head, run of i), each run summing into a block of its own, the runs then added in
//! a fixed order.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{accumulate, host_copy, zeros, CpuBuffer};
use super::shared::Shared;
use super::taped::Taped;
use crate::error::Result;
use crate::spec::{Normalizer, Visibility, WeightsSpec};
use crate::tensor::*;

/// The backward pass splits each (graph, head)'s query rows into this many runs, divided by
/// the number of (graph, head) pairs (at least one run each): enough tasks for a few cores
/// without a scratch block per row. A function of the shapes alone, so results do not depend
/// on the machine.
const BACKWARD_TASKS: usize = 8;

/// The sizes and settings of one call, and its inputs on the host. `q`, `v1` are laid out
/// `[b, i, l, h, ·]`, `k`, `v2` `[b, l, j, h, ·]`, the output `[b, i, j, h, e]`; `kt` and `v2t`
/// are `k` and `v2` as `[b, h, l, channel, j]`.
struct PathProblem<E> {
    b: usize,
    n: usize,
    h: usize,
    d: usize,
    e: usize,
    scale: E,
    normalizer: Normalizer,
    vis: Visibility,
    q: Vec<E>,
    v1: Vec<E>,
    kt: Vec<E>,
    v2t: Vec<E>,
}

/// One query row's weights: `s` the scaled scores and `p` the weights, both `[l, j]`; per
/// column j the normaliser `z` (Taylor: `max(Σ, eps)`) and whether it was clamped to `eps`.
struct RowWeights<E> {
    s: Vec<E>,
    p: Vec<E>,
    z: Vec<E>,
    clamped: Vec<bool>,
}

impl<E: Real> RowWeights<E> {
    fn new(n: usize) -> Self {
        Self {
            s: zeros(n * n),
            p: zeros(n * n),
            z: zeros(n),
            clamped: vec![false; n],
        }
    }
}

/// `a · b + c`, fused where `FMA` (compiled with the CPU feature) and as two roundings otherwise.
#[inline(always)]
fn madd<E: Real, const FMA: bool>(a: E, b: E, c: E) -> E {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `y += a · x`.
#[inline(always)]
fn axpy<E: Real, const FMA: bool>(y: &mut [E], a: E, x: &[E]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = madd::<E, FMA>(a, x, *y);
    }
}

/// `y += a · (x1 ⊙ x2)`.
#[inline(always)]
fn axpy2<E: Real, const FMA: bool>(y: &mut [E], a: E, x1: &[E], x2: &[E]) {
    for (y, (&x1, &x2)) in y.iter_mut().zip(x1.iter().zip(x2)) {
        *y = madd::<E, FMA>(a, x1 * x2, *y);
    }
}

/// `Σ x ⊙ y` in eight interleaved partial sums (so that it vectorizes), added in a fixed order.
#[inline(always)]
fn dot<E: Real, const FMA: bool>(x: &[E], y: &[E]) -> E {
    let mut acc = [E::zero(); 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (x8, y8) in xc.zip(yc) {
        for k in 0..8 {
            acc[k] = madd::<E, FMA>(x8[k], y8[k], acc[k]);
        }
    }
    let mut tail = E::zero();
    for (&x, &y) in xr.iter().zip(yr) {
        tail = madd::<E, FMA>(x, y, tail);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

impl<E: Real> PathProblem<E> {
    /// Offset of channel block `head` of edge (r, c) of graph `g`, `per_head` channels a head.
    #[inline]
    fn at(&self, g: usize, r: usize, c: usize, head: usize, per_head: usize) -> usize {
        (((g * self.n + r) * self.n + c) * self.h + head) * per_head
    }

    /// Offset of the row `[j]` of channel t of node l in the `[b, h, l, channel, j]` copies.
    #[inline]
    fn at_t(&self, g: usize, head: usize, l: usize, t: usize, per_head: usize) -> usize {
        (((g * self.h + head) * self.n + l) * per_head + t) * self.n
    }

    fn masked(&self) -> bool {
        self.vis.key_valid.is_some() || self.vis.times.is_some() || self.vis.pairs.is_some()
    }

    /// The weights of query row i (graph g, head) into `w`: invisible paths get weight 0.
    #[inline(always)]
    fn weights<const FMA: bool>(&self, g: usize, i: usize, head: usize, w: &mut RowWeights<E>) {
        let (n, d) = (self.n, self.d);
        let RowWeights { s, p, z, clamped } = w;
        for l in 0..n {
            let row = &mut s[l * n..(l + 1) * n];
            row.iter_mut().for_each(|x| *x = E::zero());
            let q = &self.q[self.at(g, i, l, head, d)..][..d];
            for (t, &qt) in q.iter().enumerate() {
                axpy::<E, FMA>(
                    row,
                    qt * self.scale,
                    &self.kt[self.at_t(g, head, l, t, d)..][..n],
                );
            }
        }
        let masked = self.masked();
        let visible = |l: usize, j: usize| self.vis.visible(g, i * n + j, l);
        match self.normalizer {
            Normalizer::Softmax => {
                // per column j: the maximum over visible l, exp, the sum, then the division
                let max = z;
                max.iter_mut().for_each(|m| *m = E::neg_infinity());
                for l in 0..n {
                    let (srow, prow) = (&s[l * n..(l + 1) * n], &mut p[l * n..(l + 1) * n]);
                    prow.copy_from_slice(srow);
                    if masked {
                        for (j, x) in prow.iter_mut().enumerate() {
                            if !visible(l, j) {
                                *x = E::neg_infinity();
                            }
                        }
                    }
                    for (m, &x) in max.iter_mut().zip(prow.iter()) {
                        *m = m.max_or_nan(x);
                    }
                }
                // a column with no visible path: every weight exp(−∞) = 0
                max.iter_mut()
                    .filter(|m| **m == E::neg_infinity())
                    .for_each(|m| *m = E::zero());
                let mut sum = zeros::<E>(n);
                for l in 0..n {
                    let prow = &mut p[l * n..(l + 1) * n];
                    prow.iter_mut()
                        .zip(max.iter())
                        .for_each(|(x, &m)| *x = *x - m);
                    E::exp_slice(prow);
                    sum.iter_mut()
                        .zip(prow.iter())
                        .for_each(|(a, &x)| *a = *a + x);
                }
                let inv: Vec<E> = sum
                    .iter()
                    .map(|&a| {
                        if a > E::zero() {
                            E::one() / a
                        } else {
                            E::one()
                        }
                    })
                    .collect();
                for l in 0..n {
                    let prow = &mut p[l * n..(l + 1) * n];
                    prow.iter_mut().zip(&inv).for_each(|(x, &r)| *x = *x * r);
                }
            }
            Normalizer::Taylor { eps } => {
                let half = E::of(0.5);
                let sum = z;
                sum.iter_mut().for_each(|a| *a = E::zero());
                for l in 0..n {
                    let (srow, prow) = (&s[l * n..(l + 1) * n], &mut p[l * n..(l + 1) * n]);
                    for (w, &x) in prow.iter_mut().zip(srow) {
                        *w = E::one() + x + half * x * x;
                    }
                    if masked {
                        for (j, w) in prow.iter_mut().enumerate() {
                            if !visible(l, j) {
                                *w = E::zero();
                            }
                        }
                    }
                    sum.iter_mut()
                        .zip(prow.iter())
                        .for_each(|(a, &w)| *a = *a + w);
                }
                let eps = E::of(eps);
                for (c, a) in clamped.iter_mut().zip(sum.iter_mut()) {
                    *c = *a <= eps;
                    *a = a.at_least(eps);
                }
                let inv: Vec<E> = sum.iter().map(|&a| E::one() / a).collect();
                for l in 0..n {
                    let prow = &mut p[l * n..(l + 1) * n];
                    prow.iter_mut().zip(&inv).for_each(|(x, &r)| *x = *x * r);
                }
            }
        }
    }

    /// Output rows of query row i (graph g, head): `o[t, j] = Σ_l p[l, j] · v1(i, l)_t ·
    /// v2(l, j)_t`, written into `out` (`[b, i, j, h, e]`).
    #[inline(always)]
    fn forward_row<const FMA: bool>(
        &self,
        (g, i, head): (usize, usize, usize),
        w: &mut RowWeights<E>,
        o: &mut [E],
        out: Shared<'_, E>,
    ) {
        let (n, e) = (self.n, self.e);
        self.weights::<FMA>(g, i, head, w);
        o.iter_mut().for_each(|x| *x = E::zero());
        for l in 0..n {
            let prow = &w.p[l * n..(l + 1) * n];
            let v1 = &self.v1[self.at(g, i, l, head, e)..][..e];
            for (t, &c) in v1.iter().enumerate() {
                let v2 = &self.v2t[self.at_t(g, head, l, t, e)..][..n];
                axpy2::<E, FMA>(&mut o[t * n..(t + 1) * n], c, prow, v2);
            }
        }
        for j in 0..n {
            let at = self.at(g, i, j, head, e);
            for t in 0..e {
                // SAFETY: the task of (g, i, head) alone writes out[g, i, ·, head, ·]
                unsafe { out.write(at + t, o[t * n + j]) };
            }
        }
    }

    /// [`Self::forward_row`] compiled for AVX2 and FMA.
    ///
    /// Safety: the CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_row_fma(
        &self,
        task: (usize, usize, usize),
        w: &mut RowWeights<E>,
        o: &mut [E],
        out: Shared<'_, E>,
    ) {
        self.forward_row::<true>(task, w, o, out)
    }

    fn forward(&self) -> Vec<E> {
        let (b, n, h, e) = (self.b, self.n, self.h, self.e);
        let mut out = zeros::<E>(b * n * n * h * e);
        let shared = Shared::new(&mut out);
        let fma = has_fma();
        (0..b * n * h).into_par_iter().for_each_init(
            || (RowWeights::new(n), zeros::<E>(e * n)),
            |(w, o), task| {
                let task = (task / (n * h), (task / h) % n, task % h);
                #[cfg(target_arch = "x86_64")]
                if fma {
                    // SAFETY: has_fma checked the CPU
                    unsafe { self.forward_row_fma(task, w, o, shared) };
                    return;
                }
                let _ = fma;
                self.forward_row::<false>(task, w, o, shared);
            },
        );
        out
    }

    /// The gradients of query row i (graph g, head): its rows of dq and dv1 into `dq`, `dv1`
    /// (`[b, i, l, h, ·]`, this row's task alone writes them), and the key-side gradients
    /// added into `dkt`, `dv2t`, the (graph, head) blocks `[l, channel, j]` of this task's run.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn backward_row<const FMA: bool>(
        &self,
        (g, i, head): (usize, usize, usize),
        grad: &[E],
        w: &mut RowWeights<E>,
        scratch: &mut BackwardScratch<E>,
        (dq, dv1): (Shared<'_, E>, Shared<'_, E>),
        (dkt, dv2t): (&mut [E], &mut [E]),
    ) {
        let (n, d, e) = (self.n, self.d, self.e);
        self.weights::<FMA>(g, i, head, w);
        let BackwardScratch { go, dp, tmp, dsum } = scratch;
        for j in 0..n {
            let g_row = &grad[self.at(g, i, j, head, e)..][..e];
            for (t, &x) in g_row.iter().enumerate() {
                go[t * n + j] = x;
            }
        }
        dp.iter_mut().for_each(|x| *x = E::zero());
        for l in 0..n {
            let prow = &w.p[l * n..(l + 1) * n];
            let dprow = &mut dp[l * n..(l + 1) * n];
            let at_v1 = self.at(g, i, l, head, e);
            let v1 = &self.v1[at_v1..][..e];
            for (t, &c) in v1.iter().enumerate() {
                let at = self.at_t(g, head, l, t, e) - self.at_t(g, head, 0, 0, e);
                let v2 = &self.v2t[self.at_t(g, head, l, t, e)..][..n];
                let go_t = &go[t * n..(t + 1) * n];
                // tmp = dO_t ⊙ v2_t: dP += v1_t · tmp, dv1_t = p · tmp
                tmp.iter_mut()
                    .zip(go_t.iter().zip(v2))
                    .for_each(|(x, (&a, &b))| *x = a * b);
                axpy::<E, FMA>(dprow, c, tmp);
                // SAFETY: this task alone writes row i of dv1 (graph g, head)
                unsafe { dv1.write(at_v1 + t, dot::<E, FMA>(prow, tmp)) };
                // dv2_t += v1_t · (p ⊙ dO_t)
                axpy2::<E, FMA>(&mut dv2t[at..at + n], c, prow, go_t);
            }
        }
        // the scores' gradient through the normaliser, written over dp
        let masked = self.masked();
        dsum.iter_mut().for_each(|x| *x = E::zero());
        for l in 0..n {
            let (prow, dprow) = (&w.p[l * n..(l + 1) * n], &dp[l * n..(l + 1) * n]);
            axpy2::<E, FMA>(dsum, E::one(), prow, dprow);
        }
        match self.normalizer {
            Normalizer::Softmax => {
                for l in 0..n {
                    let prow = &w.p[l * n..(l + 1) * n];
                    let dprow = &mut dp[l * n..(l + 1) * n];
                    for ((x, &pw), &ds) in dprow.iter_mut().zip(prow).zip(dsum.iter()) {
                        *x = pw * (*x - ds) * self.scale;
                    }
                }
            }
            Normalizer::Taylor { .. } => {
                // p = w/Z: dw = (dp − [Z > eps]·Σ p·dp) / Z, ds = dw · (1 + s)
                for (ds, &c) in dsum.iter_mut().zip(&w.clamped) {
                    if c {
                        *ds = E::zero();
                    }
                }
                let inv: Vec<E> = w.z.iter().map(|&z| self.scale / z).collect();
                for l in 0..n {
                    let srow = &w.s[l * n..(l + 1) * n];
                    let dprow = &mut dp[l * n..(l + 1) * n];
                    for (((x, &s), &ds), &r) in
                        dprow.iter_mut().zip(srow).zip(dsum.iter()).zip(&inv)
                    {
                        *x = (*x - ds) * r * (E::one() + s);
                    }
                    if masked {
                        for (j, x) in dprow.iter_mut().enumerate() {
                            if !self.vis.visible(g, i * n + j, l) {
                                *x = E::zero();
                            }
                        }
                    }
                }
            }
        }
        // dq(i, l)_t = Σ_j dS[l, j] k(l, j)_t; dk(l, ·)_t += q(i, l)_t · dS[l, ·]
        for l in 0..n {
            let dsrow = &dp[l * n..(l + 1) * n];
            let at_q = self.at(g, i, l, head, d);
            let q = &self.q[at_q..][..d];
            for (t, &qt) in q.iter().enumerate() {
                let k = &self.kt[self.at_t(g, head, l, t, d)..][..n];
                // SAFETY: this task alone writes row i of dq (graph g, head)
                unsafe { dq.write(at_q + t, dot::<E, FMA>(dsrow, k)) };
                let at = self.at_t(g, head, l, t, d) - self.at_t(g, head, 0, 0, d);
                axpy::<E, FMA>(&mut dkt[at..at + n], qt, dsrow);
            }
        }
    }

    /// [`Self::backward_row`] compiled for AVX2 and FMA.
    ///
    /// Safety: the CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn backward_row_fma(
        &self,
        task: (usize, usize, usize),
        grad: &[E],
        w: &mut RowWeights<E>,
        scratch: &mut BackwardScratch<E>,
        rows: (Shared<'_, E>, Shared<'_, E>),
        keys: (&mut [E], &mut [E]),
    ) {
        self.backward_row::<true>(task, grad, w, scratch, rows, keys)
    }

    /// Gradients of q, k, v1, v2 from the output's gradient `grad`.
    fn backward(&self, grad: &[E]) -> [Vec<E>; 4] {
        let (b, n, h, d, e) = (self.b, self.n, self.h, self.d, self.e);
        let (mut dq, mut dv1) = (zeros::<E>(self.q.len()), zeros::<E>(self.v1.len()));
        let pairs = b * h;
        let runs = BACKWARD_TASKS.div_ceil(pairs.max(1)).clamp(1, n.max(1));
        let per_run = n.div_ceil(runs);
        // per (pair, run): the key-side gradients [l, channel, j] of that run's rows
        let (kb, vb) = (n * d * n, n * e * n);
        let mut dkt = zeros::<E>(pairs * runs * kb);
        let mut dv2t = zeros::<E>(pairs * runs * vb);
        let rows = (Shared::new(&mut dq), Shared::new(&mut dv1));
        let fma = has_fma();
        dkt.par_chunks_mut(kb.max(1))
            .zip(dv2t.par_chunks_mut(vb.max(1)))
            .enumerate()
            .for_each(|(task, (dk_run, dv2_run))| {
                let (pair, run) = (task / runs, task % runs);
                let (g, head) = (pair / h, pair % h);
                let mut w = RowWeights::new(n);
                let mut scratch = BackwardScratch::new(n, e);
                for i in run * per_run..((run + 1) * per_run).min(n) {
                    let keys = (&mut *dk_run, &mut *dv2_run);
                    #[cfg(target_arch = "x86_64")]
                    if fma {
                        // SAFETY: has_fma checked the CPU
                        unsafe {
                            self.backward_row_fma(
                                (g, i, head),
                                grad,
                                &mut w,
                                &mut scratch,
                                rows,
                                keys,
                            )
                        };
                        continue;
                    }
                    let _ = fma;
                    self.backward_row::<false>(
                        (g, i, head),
                        grad,
                        &mut w,
                        &mut scratch,
                        rows,
                        keys,
                    );
                }
            });
        // the runs summed in order, back into the `[b, l, j, h, ·]` layouts
        let gather = |blocks: &[E], per_head: usize| {
            let block = n * per_head * n;
            let mut out = zeros::<E>(b * n * n * h * per_head);
            out.par_chunks_mut((n * h * per_head).max(1))
                .enumerate()
                .for_each(|(gl, row)| {
                    let (g, l) = (gl / n, gl % n);
                    for head in 0..h {
                        let pair = g * h + head;
                        for run in 0..runs {
                            let src = &blocks[(pair * runs + run) * block + l * per_head * n..]
                                [..per_head * n];
                            for t in 0..per_head {
                                for j in 0..n {
                                    let o = &mut row[(j * h + head) * per_head + t];
                                    *o = *o + src[t * n + j];
                                }
                            }
                        }
                    }
                });
            out
        };
        let dk = gather(&dkt, d);
        let dv2 = gather(&dv2t, e);
        [dq, dk, dv1, dv2]
    }
}

/// Per-task buffers of the backward pass: the output gradient of one query row `[e, j]`, the
/// weights' gradient `[l, j]`, one row of products and the per-column sums.
struct BackwardScratch<E> {
    go: Vec<E>,
    dp: Vec<E>,
    tmp: Vec<E>,
    dsum: Vec<E>,
}

impl<E: Real> BackwardScratch<E> {
    fn new(n: usize, e: usize) -> Self {
        Self {
            go: zeros(e * n),
            dp: zeros(n * n),
            tmp: zeros(n),
            dsum: zeros(n),
        }
    }
}

/// Whether the CPU has AVX2 and FMA (the kernels' fast build).
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` (`[b, l, j, h, per_head]`) as `[b, h, l, channel, j]`: rows along j.
fn transposed<E: Real>(x: &[E], (b, n, h, per_head): (usize, usize, usize, usize)) -> Vec<E> {
    let mut out = zeros::<E>(x.len());
    out.par_chunks_mut((per_head * n).max(1))
        .enumerate()
        .for_each(|(ghl, rows)| {
            let (g, head, l) = (ghl / (h * n), (ghl / n) % h, ghl % n);
            for j in 0..n {
                let src = &x[(((g * n + l) * n + j) * h + head) * per_head..][..per_head];
                for (t, &v) in src.iter().enumerate() {
                    rows[t * n + j] = v;
                }
            }
        });
    let _ = b;
    out
}

/// The fused CPU form of [`crate::ops::path::path_attention`].
pub fn path_attention_fused<E: Real, T: Tape<E, Cpu>>(
    q: T4<E, Cpu, T>,
    k: T4<E, Cpu, T>,
    v1: T4<E, Cpu, T>,
    v2: T4<E, Cpu, T>,
    heads: usize,
    spec: &WeightsSpec,
) -> Result<T4<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let (b, n, _, hd) = *q.shape();
    let he = v1.shape().3;
    crate::spec::check_path_shapes(
        *q.shape(),
        *k.shape(),
        *v1.shape(),
        *v2.shape(),
        heads,
        &spec.visibility,
    )?;
    let dev = q.device().clone();
    let mut taped = Taped::new();
    let (q, k, v1, v2) = (
        taped.input(q),
        taped.input(k),
        taped.input(v1),
        taped.input(v2),
    );
    let problem = PathProblem {
        b,
        n,
        h: heads,
        d: hd / heads,
        e: he / heads,
        scale: E::of(spec.scale),
        normalizer: spec.normalizer,
        vis: spec.visibility.clone(),
        q: host_copy(&q),
        v1: host_copy(&v1),
        kt: transposed(&host_copy(&k), (b, n, heads, hd / heads)),
        v2t: transposed(&host_copy(&v2), (b, n, heads, he / heads)),
    };
    let out = problem.forward();
    let ghosts = [q.ghost(), k.ghost(), v1.ghost(), v2.ghost()];
    taped.output(&dev, out, (b, n, n, he), move |g, grads| {
        let parts = problem.backward(&g);
        for (ghost, part) in ghosts.iter().zip(parts) {
            accumulate(grads.get_or_alloc_mut(ghost)?, &part);
        }
        Ok(())
    })
}
