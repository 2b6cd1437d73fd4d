//! Path (triangular) attention across edges, fused: edge (i, j) attends over the paths
//! i → l → j, with score `q(i, l) · k(l, j)` and value `v1(i, l) ⊙ v2(l, j)` (the Edge
//! Transformer's attention, Bergen et al. 2021).
//!
//! Cost n³ per head; memory O(n²): the forward keeps the `[n (l), n (j)]` weights of a few query
//! rows per task and the backward recomputes them instead of storing the n³ weights.
//!
//! Neither the scores nor the values are matrix products (the value is a product of three
//! factors, elementwise in the channel), so every step runs as multiply-adds along `j`: the
//! key-side operands are copied once into `[graph, head, l, channel, j]` rows (the query side
//! into `[graph, head, i, l, channel]`), and the work of query row i is `n · d` (scores) and
//! `n · e` (values) multiply-adds of length-n rows, which vectorize (with AVX2 and FMA where the
//! CPU has them). The forward runs in parallel over (graph, head, block of query rows), so that
//! each middle node's key-side rows serve the whole block while in cache, and keeps each
//! query's normaliser. The backward recomputes the weights of one middle node l at a time from
//! those normalisers (the normaliser's own gradient needs only `Σ dO · O`, as in flash
//! attention), so it runs over (graph, head, run of l): each task is the one writer of its
//! gradient entries, and its key-side rows stay in cache while the query rows pass them two at
//! a time.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{copied, lanes_sum, zeros, CpuBuffer, Host};
use super::grads::add_owned;
use super::shared::Shared;
use super::taped::Taped;
use crate::error::Result;
use crate::spec::{Normalizer, Visibility, WeightsSpec};
use crate::tensor::*;

/// The sizes and settings of one call, and its inputs on the host. The inputs arrive laid out
/// `[b, row, column, h, ·]` and the output leaves as `[b, i, j, h, e]`; the query-side inputs
/// are kept heads first (`qh`, `v1h`: `[b, h, i, l, ·]`, so that a head's rows are contiguous)
/// and the key-side ones as rows along j (`kt`, `v2t`: `[b, h, l, channel, j]`).
struct PathProblem<E: Real> {
    b: usize,
    n: usize,
    h: usize,
    d: usize,
    e: usize,
    scale: E,
    normalizer: Normalizer,
    vis: Visibility,
    qh: Vec<E>,
    v1h: Vec<E>,
    kt: Vec<E>,
    v2t: Vec<E>,
}

/// Per column j of one query row: the normaliser `z` (softmax: `log Σ exp`; Taylor:
/// `max(Σ, eps)`) and whether it was clamped to `eps`; `col`, a column scratch row.
struct ColumnStats<E> {
    z: Vec<E>,
    col: Vec<E>,
    clamped: Vec<bool>,
}

impl<E: Real> ColumnStats<E> {
    fn new(n: usize) -> Self {
        Self {
            z: zeros(n),
            col: zeros(n),
            clamped: vec![false; n],
        }
    }
}

/// A forward task's scratch: the weights of its query rows (`[row, l, j]`), their output rows
/// (`[row, t, j]`), one row's column statistics and two scaled queries.
struct ForwardScratch<E> {
    p: Vec<E>,
    o: Vec<E>,
    stats: ColumnStats<E>,
    qs: Vec<E>,
}

/// Lanes of j in one register block of scores: four AVX2 vectors of f32, so that the block's
/// sums stay in registers while the channel loop runs (each key-side row is read once per
/// block instead of being read and written back once per channel).
const J_BLOCK: usize = 32;

/// Query rows per forward task at `n` nodes: their weights (`rows · n²` entries) stay within
/// about 256 KiB (the second-level cache), and the key-side rows of each middle node l, read
/// once per task, serve every row in it.
fn forward_rows<E>(n: usize) -> usize {
    let entries = (256 << 10) / std::mem::size_of::<E>();
    (entries / (n * n).max(1)).clamp(1, 8)
}

/// Middle nodes per pass of [`add_values`]: their key-side values (`VALUE_CHUNK · e · n`
/// entries, 128 KiB at e = 16, n = 128) stay in the second-level cache while every query row
/// of the task passes them, and each output entry is read and written once per pass.
const VALUE_CHUNK: usize = 16;

/// A register tile of [`add_values`]: `VALUE_T` channels × `VALUE_J` lanes of j (two AVX2
/// vectors of f32 each: eight sums, and each key-side weight row loaded once for four
/// channels).
const VALUE_T: usize = 4;
const VALUE_J: usize = 16;

/// `o[r, t, j] += Σ_l c[r, l, t] · p[r, l, j] · v[l, t, j]` over the middle nodes `ls`, for
/// every query row r (`o`: `[rows, e, n]`, `p`: `[rows, n (l), n (j)]`, `c`: `[rows, n, e]`,
/// `v`: `[n, e, n]`). Tiles of [`VALUE_T`] × [`VALUE_J`] sums stay in registers while l runs
/// (per node: two vectors of weights, four coefficients and eight vectors of values for eight
/// multiplies and eight multiply-adds; before, the weights and the sums were reloaded for every
/// channel); the nodes are added in order, as repeated [`axpy2`]s would.
#[inline(always)]
fn add_values<E: Real, const FMA: bool>(
    o: &mut [E],
    p: &[E],
    c: &[E],
    v: &[E],
    (n, e): (usize, usize),
    ls: std::ops::Range<usize>,
) {
    let rows = o.len() / (e * n).max(1);
    let (full_j, full_t) = (n - n % VALUE_J, e - e % VALUE_T);
    assert!(
        p.len() >= rows * n * n && c.len() >= rows * n * e && v.len() >= n * e * n && ls.end <= n,
        "value operands too short"
    );
    #[cfg(target_arch = "x86_64")]
    let tiled = FMA && std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>();
    #[cfg(not(target_arch = "x86_64"))]
    let tiled = false;
    for j0 in (0..full_j).step_by(VALUE_J) {
        for t0 in (0..full_t).step_by(VALUE_T) {
            // the rows innermost: the tile's rows of values serve them all from the first-level cache
            for r in 0..rows {
                let (o, p, c) = (
                    &mut o[r * e * n..][..e * n],
                    &p[r * n * n..][..n * n],
                    &c[r * n * e..][..n * e],
                );
                #[cfg(target_arch = "x86_64")]
                if tiled {
                    // SAFETY: E is f32 (checked above) and FMA code runs only where the CPU has
                    // AVX2 and FMA; every offset read or written lies within the slices (the
                    // tile within the rows, ls within n: asserted above)
                    unsafe {
                        value_tile_f32_avx2(
                            o.as_mut_ptr() as *mut f32,
                            p.as_ptr() as *const f32,
                            c.as_ptr() as *const f32,
                            v.as_ptr() as *const f32,
                            (n, e, t0, j0),
                            ls.clone(),
                        )
                    };
                    continue;
                }
                let mut acc: [[E; VALUE_J]; VALUE_T] = std::array::from_fn(|t| {
                    o[(t0 + t) * n + j0..][..VALUE_J]
                        .try_into()
                        .expect("a tile row")
                });
                for l in ls.clone() {
                    let pl = &p[l * n + j0..][..VALUE_J];
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let cl = c[l * e + t0 + t];
                        let vl = &v[(l * e + t0 + t) * n + j0..][..VALUE_J];
                        for ((s, &pj), &vj) in acc.iter_mut().zip(pl).zip(vl) {
                            *s = madd::<E, FMA>(cl, pj * vj, *s);
                        }
                    }
                }
                for (t, acc) in acc.iter().enumerate() {
                    o[(t0 + t) * n + j0..][..VALUE_J].copy_from_slice(acc);
                }
            }
        }
    }
    // what the tiles leave: the channels past the last whole tile (lanes below full_j), and
    // every channel's lanes from full_j
    for r in 0..rows {
        let (o, p, c) = (
            &mut o[r * e * n..][..e * n],
            &p[r * n * n..][..n * n],
            &c[r * n * e..][..n * e],
        );
        for t in 0..e {
            let lanes = if t < full_t { full_j..n } else { 0..n };
            for l in ls.clone() {
                axpy2::<E, FMA>(
                    &mut o[t * n..][lanes.clone()],
                    c[l * e + t],
                    &p[l * n..][lanes.clone()],
                    &v[(l * e + t) * n..][lanes.clone()],
                );
            }
        }
    }
}

/// One [`VALUE_T`] × [`VALUE_J`] tile of [`add_values`] at channel `t0`, lane `j0` of one
/// query row, in AVX2 registers: eight sums, and per middle node two loads of weights, four
/// broadcast coefficients and eight loads of values for eight multiplies and eight
/// multiply-adds (as the generic loop computes them: `s + c · (p · v)`, rounded alike).
///
/// Safety: the CPU has AVX2 and FMA; `o` (`[e, n]`), `p` (`[n, n]`), `c` (`[n, e]`) and `v`
/// (`[n, e, n]`) address their whole rows, `t0 + VALUE_T ≤ e`, `j0 + VALUE_J ≤ n`, `ls.end ≤ n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn value_tile_f32_avx2(
    o: *mut f32,
    p: *const f32,
    c: *const f32,
    v: *const f32,
    (n, e, t0, j0): (usize, usize, usize, usize),
    ls: std::ops::Range<usize>,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let row = |t: usize| o.add((t0 + t) * n + j0);
        let mut acc: [[__m256; 2]; VALUE_T] =
            std::array::from_fn(|t| [_mm256_loadu_ps(row(t)), _mm256_loadu_ps(row(t).add(8))]);
        for l in ls {
            let pl = p.add(l * n + j0);
            let (p0, p1) = (_mm256_loadu_ps(pl), _mm256_loadu_ps(pl.add(8)));
            for (t, acc) in acc.iter_mut().enumerate() {
                let cl = _mm256_broadcast_ss(&*c.add(l * e + t0 + t));
                let vl = v.add((l * e + t0 + t) * n + j0);
                let x0 = _mm256_mul_ps(p0, _mm256_loadu_ps(vl));
                let x1 = _mm256_mul_ps(p1, _mm256_loadu_ps(vl.add(8)));
                acc[0] = _mm256_fmadd_ps(cl, x0, acc[0]);
                acc[1] = _mm256_fmadd_ps(cl, x1, acc[1]);
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(row(t), acc[0]);
            _mm256_storeu_ps(row(t).add(8), acc[1]);
        }
    }
}

/// For each of `M` coefficient rows `a[m]` (`a`: `[M, d]`), `out[m · out_stride + j] =
/// Σ_t a[m, t] · rows[t · stride + j]` for j below `n`: the sums of [`J_BLOCK`] lanes of every
/// m stay in registers while t runs (independent sums, and each row of `rows` read once for
/// all m), in the same order as repeated [`axpy`]s.
#[inline(always)]
fn combine_rows<E: Real, const FMA: bool, const M: usize>(
    (out, out_stride): (&mut [E], usize),
    n: usize,
    a: &[E],
    (rows, stride): (&[E], usize),
) {
    let d = a.len() / M;
    let full = n - n % J_BLOCK;
    for j0 in (0..full).step_by(J_BLOCK) {
        let mut acc = [[E::zero(); J_BLOCK]; M];
        for t in 0..d {
            let row = &rows[t * stride + j0..][..J_BLOCK];
            for (m, acc) in acc.iter_mut().enumerate() {
                let am = a[m * d + t];
                for (s, &x) in acc.iter_mut().zip(row) {
                    *s = madd::<E, FMA>(am, x, *s);
                }
            }
        }
        for (m, acc) in acc.iter().enumerate() {
            out[m * out_stride + j0..][..J_BLOCK].copy_from_slice(acc);
        }
    }
    for m in 0..M {
        let tail = &mut out[m * out_stride + full..][..n - full];
        tail.iter_mut().for_each(|x| *x = E::zero());
        for t in 0..d {
            axpy::<E, FMA>(tail, a[m * d + t], &rows[t * stride + full..][..n - full]);
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

/// `Σ x ⊙ y` in eight interleaved partial sums, added in a fixed order (explicit AVX2 vectors
/// for f32 where `FMA`: the compiler does not vectorize the reduction well).
#[inline(always)]
fn dot<E: Real, const FMA: bool>(x: &[E], y: &[E]) -> E {
    #[cfg(target_arch = "x86_64")]
    if FMA && std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>() {
        let n = x.len().min(y.len());
        // SAFETY: E is f32 (checked above), so the slices reinterpret as they are; FMA code
        // runs only where the CPU has AVX2 and FMA
        let sum = unsafe {
            dot_f32_avx2(
                std::slice::from_raw_parts(x.as_ptr() as *const f32, n),
                std::slice::from_raw_parts(y.as_ptr() as *const f32, n),
            )
        };
        return E::of(f64::from(sum));
    }
    let mut acc = [E::zero(); LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (x8, y8) in xc.zip(yc) {
        for k in 0..LANES {
            acc[k] = madd::<E, FMA>(x8[k], y8[k], acc[k]);
        }
    }
    let mut tail = E::zero();
    for (&x, &y) in xr.iter().zip(yr) {
        tail = madd::<E, FMA>(x, y, tail);
    }
    lanes_sum(&acc) + tail
}

/// `Σ x ⊙ y` over the shorter length: sixteen lanes in two vectors, then the tail.
///
/// Safety: the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(x: &[f32], y: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut k = 0;
    // SAFETY: every load reads 8 elements below n of both slices
    unsafe {
        while k + 16 <= n {
            let (xp, yp) = (x.as_ptr().add(k), y.as_ptr().add(k));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp), _mm256_loadu_ps(yp), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(8)), _mm256_loadu_ps(yp.add(8)), a1);
            k += 16;
        }
        if k + 8 <= n {
            let (xp, yp) = (x.as_ptr().add(k), y.as_ptr().add(k));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp), _mm256_loadu_ps(yp), a0);
            k += 8;
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: stores 8 lanes into an array of 8
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1)) };
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (&a, &b) in x[k..n].iter().zip(&y[k..n]) {
        sum = a.mul_add(b, sum);
    }
    sum
}

impl<E: Real> PathProblem<E> {
    /// Offset of channel block `head` of edge (r, c) of graph `g`, `per_head` channels a head.
    #[inline]
    fn at(&self, g: usize, r: usize, c: usize, head: usize, per_head: usize) -> usize {
        (((g * self.n + r) * self.n + c) * self.h + head) * per_head
    }

    /// Offset of channel block (r, c) of `head`, graph g, in the heads-first copies.
    #[inline]
    fn at_h(&self, g: usize, head: usize, r: usize, c: usize, per_head: usize) -> usize {
        (((g * self.h + head) * self.n + r) * self.n + c) * per_head
    }

    /// Offset of the row `[j]` of channel t of node l in the `[b, h, l, channel, j]` copies.
    #[inline]
    fn at_t(&self, g: usize, head: usize, l: usize, t: usize, per_head: usize) -> usize {
        (((g * self.h + head) * self.n + l) * per_head + t) * self.n
    }

    /// The queries of the `qs.len() / d` rows from `i0` at middle node l (graph g, head), scaled,
    /// into `qs` (`[row, d]`).
    #[inline(always)]
    fn scaled_queries(&self, (g, head, i0): (usize, usize, usize), l: usize, qs: &mut [E]) {
        let d = self.d;
        for (u, s) in qs.chunks_exact_mut(d).enumerate() {
            let q = &self.qh[self.at_h(g, head, i0 + u, l, d)..][..d];
            s.iter_mut().zip(q).for_each(|(s, &x)| *s = x * self.scale);
        }
    }

    /// The scores of query rows `rows` (graph g, head) into `p` (`[row, l, j]`): for each middle
    /// node l, its key-side rows serve every query row of the block while they are in cache.
    #[inline(always)]
    fn scores<const FMA: bool>(
        &self,
        (g, head): (usize, usize),
        rows: std::ops::Range<usize>,
        p: &mut [E],
        qs: &mut [E],
    ) {
        let (n, d) = (self.n, self.d);
        for l in 0..n {
            let kt = (&self.kt[self.at_t(g, head, l, 0, d)..][..d * n], n);
            let mut r = 0;
            while r < rows.len() {
                // two query rows at a time where two are left
                let m = if rows.len() - r >= 2 { 2 } else { 1 };
                self.scaled_queries((g, head, rows.start + r), l, &mut qs[..m * d]);
                let out = (&mut p[(r * n + l) * n..], n * n);
                if m == 2 {
                    combine_rows::<E, FMA, 2>(out, n, &qs[..2 * d], kt);
                } else {
                    combine_rows::<E, FMA, 1>(out, n, &qs[..d], kt);
                }
                r += m;
            }
        }
    }

    /// Query row i's scores `p` (`[l, j]`, graph g, head) normalised over l per column j in
    /// place: invisible paths get weight 0; the column statistics go to `w`.
    #[inline(always)]
    fn normalize(&self, g: usize, i: usize, p: &mut [E], w: &mut ColumnStats<E>) {
        let n = self.n;
        let ColumnStats { z, col, clamped } = w;
        let masked = !self.vis.all_visible();
        let visible = |l: usize, j: usize| self.vis.visible(g, i * n + j, l);
        let sum = col;
        match self.normalizer {
            Normalizer::Softmax => {
                // per column j: the maximum over visible l, exp, the sum, then the division
                let max = z;
                max.iter_mut().for_each(|m| *m = E::neg_infinity());
                for l in 0..n {
                    let prow = &mut p[l * n..(l + 1) * n];
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
                sum.iter_mut().for_each(|a| *a = E::zero());
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
                // kept for the backward: log Σ exp per column (+∞ where nothing is visible,
                // so that every recomputed weight is 0)
                for (m, &a) in max.iter_mut().zip(sum.iter()) {
                    *m = if a > E::zero() {
                        *m + a.ln()
                    } else if a.is_nan() {
                        a
                    } else {
                        E::infinity()
                    };
                }
                // the sums become their reciprocals (a column summing to 0 stays 0)
                sum.iter_mut().for_each(|a| {
                    *a = if *a > E::zero() {
                        E::one() / *a
                    } else {
                        E::one()
                    }
                });
            }
            Normalizer::Taylor { eps } => {
                let half = E::of(0.5);
                z.iter_mut().for_each(|a| *a = E::zero());
                for l in 0..n {
                    let prow = &mut p[l * n..(l + 1) * n];
                    for x in prow.iter_mut() {
                        *x = E::one() + *x + half * *x * *x;
                    }
                    if masked {
                        for (j, w) in prow.iter_mut().enumerate() {
                            if !visible(l, j) {
                                *w = E::zero();
                            }
                        }
                    }
                    z.iter_mut()
                        .zip(prow.iter())
                        .for_each(|(a, &w)| *a = *a + w);
                }
                let eps = E::of(eps);
                for ((c, a), r) in clamped.iter_mut().zip(z.iter_mut()).zip(sum.iter_mut()) {
                    *c = *a <= eps;
                    *a = a.at_least(eps);
                    *r = E::one() / *a;
                }
            }
        }
        for l in 0..n {
            let prow = &mut p[l * n..(l + 1) * n];
            prow.iter_mut()
                .zip(sum.iter())
                .for_each(|(x, &r)| *x = *x * r);
        }
    }

    /// Output rows of query rows `rows` (graph g, head): `o[t, j] = Σ_l p[l, j] · v1(i, l)_t ·
    /// v2(l, j)_t`, written into `out` (`[b, i, j, h, e]`), and the rows' normalisers into
    /// `stats` (`[b, h, i, j]`).
    #[inline(always)]
    fn forward_block<const FMA: bool>(
        &self,
        (g, head): (usize, usize),
        rows: std::ops::Range<usize>,
        scratch: &mut ForwardScratch<E>,
        (out, z, clamped): (Shared<'_, E>, Shared<'_, E>, Shared<'_, bool>),
    ) {
        let (n, e) = (self.n, self.e);
        let ForwardScratch { p, o, stats, qs } = scratch;
        let (p, o) = (&mut p[..rows.len() * n * n], &mut o[..rows.len() * e * n]);
        self.scores::<FMA>((g, head), rows.clone(), p, qs);
        for (r, i) in rows.clone().enumerate() {
            let p = &mut p[r * n * n..][..n * n];
            self.normalize(g, i, p, stats);
            let at = self.stat_at(g, head, i);
            for j in 0..n {
                // SAFETY: the task of (g, head, rows) alone writes these rows of normalisers
                unsafe {
                    z.write(at + j, stats.z[j]);
                    clamped.write(at + j, stats.clamped[j]);
                }
            }
        }
        // the values, a chunk of middle nodes at a time: their rows of v2 serve every query row
        o.iter_mut().for_each(|x| *x = E::zero());
        let v1 = &self.v1h[self.at_h(g, head, rows.start, 0, e)..][..rows.len() * n * e];
        let v2t = &self.v2t[self.at_t(g, head, 0, 0, e)..][..n * e * n];
        for l0 in (0..n).step_by(VALUE_CHUNK) {
            let ls = l0..(l0 + VALUE_CHUNK).min(n);
            add_values::<E, FMA>(o, p, v1, v2t, (n, e), ls);
        }
        for (r, i) in rows.enumerate() {
            let o = &o[r * e * n..][..e * n];
            for j in 0..n {
                let at = self.at(g, i, j, head, e);
                for t in 0..e {
                    // SAFETY: the task of (g, head, rows) alone writes out[g, rows, ·, head, ·]
                    unsafe { out.write(at + t, o[t * n + j]) };
                }
            }
        }
    }

    /// Offset of query row i's normalisers (graph g, head) in `[b, h, i, j]`.
    #[inline]
    fn stat_at(&self, g: usize, head: usize, i: usize) -> usize {
        ((g * self.h + head) * self.n + i) * self.n
    }

    /// [`Self::forward_block`] compiled for AVX2 and FMA.
    ///
    /// Safety: the CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_block_fma(
        &self,
        task: (usize, usize),
        rows: std::ops::Range<usize>,
        scratch: &mut ForwardScratch<E>,
        outs: (Shared<'_, E>, Shared<'_, E>, Shared<'_, bool>),
    ) {
        self.forward_block::<true>(task, rows, scratch, outs)
    }

    /// Runs over (graph, head, block of query rows; see [`forward_rows`]).
    fn forward(&self) -> PathForward<E> {
        let (b, n, h, e) = (self.b, self.n, self.h, self.e);
        let mut out = zeros::<E>(b * n * n * h * e);
        let mut z = zeros::<E>(b * h * n * n);
        let mut clamped = vec![false; b * h * n * n];
        let outs = (
            Shared::new(&mut out),
            Shared::new(&mut z),
            Shared::new(&mut clamped),
        );
        let fma = has_fma();
        let rows = forward_rows::<E>(n);
        let blocks = n.div_ceil(rows);
        (0..b * h * blocks).into_par_iter().for_each_init(
            || ForwardScratch {
                p: zeros::<E>(rows * n * n),
                o: zeros::<E>(rows * e * n),
                stats: ColumnStats::new(n),
                qs: zeros::<E>(2 * self.d),
            },
            |scratch, task| {
                let (g, head, blk) = (task / (h * blocks), (task / blocks) % h, task % blocks);
                let range = blk * rows..((blk + 1) * rows).min(n);
                #[cfg(target_arch = "x86_64")]
                if fma {
                    // SAFETY: has_fma checked the CPU
                    unsafe { self.forward_block_fma((g, head), range, scratch, outs) };
                    return;
                }
                let _ = fma;
                self.forward_block::<false>((g, head), range, scratch, outs);
            },
        );
        PathForward { out, z, clamped }
    }

    /// The gradients through the paths of the `M` query rows from `i0` over middle nodes `ls`
    /// (graph g, head): their entries `(i, l)` of dq and dv1, and the key-side rows `l` of
    /// `dkt`, `dv2t` (`[b, h, l, channel, j]`), which only this task writes. The weights are
    /// recomputed from the scores and the forward's normalisers; `go` is the rows' output
    /// gradient as `[row, t, j]`, `dsum` their `Σ_t dO · O` per column (`[row, j]`, what the
    /// normaliser's gradient needs). The rows share every read of the key-side rows and every
    /// update of their gradients.
    #[inline(always)]
    fn backward_rows<const FMA: bool, const M: usize>(
        &self,
        ((g, head, i0), ls, (go, dsum)): RowsJob<'_, E>,
        fwd: &PathForward<E>,
        scratch: &mut BackwardScratch<E>,
        grads: [Shared<'_, E>; 4],
    ) {
        let (n, d, e) = (self.n, self.d, self.e);
        let [dq, dkt, dv1, dv2t] = grads;
        let BackwardScratch { s, p, dp, qs } = scratch;
        let (s, p, dp, qs) = (
            &mut s[..M * n],
            &mut p[..M * n],
            &mut dp[..M * n],
            &mut qs[..M * d],
        );
        let row = self.stat_at(g, head, i0);
        let (z, clamped) = (&fwd.z[row..][..M * n], &fwd.clamped[row..][..M * n]);
        let masked = !self.vis.all_visible();
        let go: [&[E]; M] = std::array::from_fn(|m| &go[m * e * n..][..e * n]);
        for l in ls {
            let at_q: [usize; M] = std::array::from_fn(|m| self.at_h(g, head, i0 + m, l, d));
            let at_v1: [usize; M] = std::array::from_fn(|m| self.at_h(g, head, i0 + m, l, e));
            let (at_k, at_v2) = (self.at_t(g, head, l, 0, d), self.at_t(g, head, l, 0, e));
            let kt = &self.kt[at_k..][..d * n];
            let v2t = &self.v2t[at_v2..][..e * n];
            self.scaled_queries((g, head, i0), l, qs);
            combine_rows::<E, FMA, M>((s, n), n, qs, (kt, n));
            match self.normalizer {
                Normalizer::Softmax => {
                    p.iter_mut()
                        .zip(s.iter().zip(z))
                        .for_each(|(w, (&x, &lse))| *w = x - lse);
                    E::exp_slice(p);
                }
                Normalizer::Taylor { .. } => {
                    let half = E::of(0.5);
                    p.iter_mut()
                        .zip(s.iter().zip(z))
                        .for_each(|(w, (&x, &z))| *w = (E::one() + x + half * x * x) / z);
                }
            }
            if masked {
                for (m, p) in p.chunks_exact_mut(n).enumerate() {
                    for (j, w) in p.iter_mut().enumerate() {
                        if !self.vis.visible(g, (i0 + m) * n + j, l) {
                            *w = E::zero();
                        }
                    }
                }
            }
            // dP[j] = Σ_t v1_t · dO_t[j] · v2_t[j]; dv1_t = Σ_j p · dO_t · v2_t;
            // dv2_t += v1_t · p ⊙ dO_t
            dp.iter_mut().for_each(|x| *x = E::zero());
            for t in 0..e {
                let c: [E; M] = std::array::from_fn(|m| self.v1h[at_v1[m] + t]);
                let go_t: [&[E]; M] = std::array::from_fn(|m| &go[m][t * n..][..n]);
                // SAFETY: entries (rows, l) of dv1 and row l of dv2t belong to this task alone
                unsafe {
                    let dv2_t = std::slice::from_raw_parts_mut(dv2t.at(at_v2 + t * n), n);
                    let sums =
                        value_grads::<E, FMA, M>((dp, dv2_t), c, p, go_t, &v2t[t * n..][..n]);
                    for (m, &x) in sums.iter().enumerate() {
                        dv1.write(at_v1[m] + t, x);
                    }
                }
            }
            // the scores' gradient through the normaliser (with the scale), written over dp
            match self.normalizer {
                Normalizer::Softmax => {
                    for ((x, &w), &ds) in dp.iter_mut().zip(p.iter()).zip(dsum) {
                        *x = w * (*x - ds) * self.scale;
                    }
                }
                Normalizer::Taylor { .. } => {
                    // p = w/Z: dw = (dp − [Z > eps]·Σ p·dp) / Z, ds = dw · (1 + s)
                    for (j, x) in dp.iter_mut().enumerate() {
                        let through = if clamped[j] { E::zero() } else { dsum[j] };
                        *x = (*x - through) * self.scale / z[j] * (E::one() + s[j]);
                    }
                    if masked {
                        for (m, dp) in dp.chunks_exact_mut(n).enumerate() {
                            for (j, x) in dp.iter_mut().enumerate() {
                                if !self.vis.visible(g, (i0 + m) * n + j, l) {
                                    *x = E::zero();
                                }
                            }
                        }
                    }
                }
            }
            // dq(i, l)_t = Σ_j dS[j] k(l, j)_t; dk(l, ·)_t += q(i, l)_t · dS
            for t in 0..d {
                let c: [E; M] = std::array::from_fn(|m| self.qh[at_q[m] + t]);
                // SAFETY: entries (rows, l) of dq and row l of dkt belong to this task alone
                unsafe {
                    let dk_t = std::slice::from_raw_parts_mut(dkt.at(at_k + t * n), n);
                    let k_t = &kt[t * n..][..n];
                    for m in 0..M {
                        dq.write(at_q[m] + t, dot::<E, FMA>(&dp[m * n..][..n], k_t));
                    }
                    add_key_grads::<E, FMA, M>(dk_t, c, dp);
                }
            }
        }
    }

    /// [`Self::backward_rows`] compiled for AVX2 and FMA.
    ///
    /// Safety: the CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_rows_fma<const M: usize>(
        &self,
        job: RowsJob<'_, E>,
        fwd: &PathForward<E>,
        scratch: &mut BackwardScratch<E>,
        grads: [Shared<'_, E>; 4],
    ) {
        self.backward_rows::<true, M>(job, fwd, scratch, grads)
    }

    /// [`Self::backward_rows`] for the `M` rows of `job`, with the fast build where the
    /// CPU has one.
    fn backward_rows_any<const M: usize>(
        &self,
        fma: bool,
        job: RowsJob<'_, E>,
        fwd: &PathForward<E>,
        scratch: &mut BackwardScratch<E>,
        grads: [Shared<'_, E>; 4],
    ) {
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the caller's has_fma checked the CPU
            unsafe { self.backward_rows_fma::<M>(job, fwd, scratch, grads) };
            return;
        }
        let _ = fma;
        self.backward_rows::<false, M>(job, fwd, scratch, grads);
    }

    /// Gradients of q, k, v1, v2 from the output's gradient `grad`. Tasks own runs of
    /// [`MIDDLE_BLOCK`] middle nodes l of one (graph, head): every gradient entry has one
    /// writer, and the key-side rows of a run stay in cache while every query row passes.
    fn backward(&self, grad: &[E], fwd: &PathForward<E>) -> [Vec<E>; 4] {
        let (b, n, h, d, e) = (self.b, self.n, self.h, self.d, self.e);
        // per (graph, head, i): the output gradient as [t, j] and Σ_t dO · O per column
        let mut go = zeros::<E>(b * h * n * e * n);
        let mut dsum = zeros::<E>(b * h * n * n);
        go.par_chunks_mut((e * n).max(1))
            .zip(dsum.par_chunks_mut(n.max(1)))
            .enumerate()
            .for_each(|(ghi, (rows, ds))| {
                let (g, head, i) = (ghi / (h * n), (ghi / n) % h, ghi % n);
                for j in 0..n {
                    let at = self.at(g, i, j, head, e);
                    let (gr, o) = (&grad[at..][..e], &fwd.out[at..][..e]);
                    for (t, &x) in gr.iter().enumerate() {
                        rows[t * n + j] = x;
                    }
                    ds[j] = gr.iter().zip(o).fold(E::zero(), |a, (&x, &y)| a + x * y);
                }
            });
        let (mut dq, mut dv1) = (zeros::<E>(self.qh.len()), zeros::<E>(self.v1h.len()));
        let (mut dkt, mut dv2t) = (zeros::<E>(self.kt.len()), zeros::<E>(self.v2t.len()));
        let grads = [
            Shared::new(&mut dq),
            Shared::new(&mut dkt),
            Shared::new(&mut dv1),
            Shared::new(&mut dv2t),
        ];
        let blocks = n.div_ceil(MIDDLE_BLOCK);
        let fma = has_fma();
        (0..b * h * blocks).into_par_iter().for_each_init(
            || BackwardScratch::new(n, d),
            |scratch, task| {
                let (g, head, blk) = (task / (h * blocks), (task / blocks) % h, task % blocks);
                let ls = blk * MIDDLE_BLOCK..((blk + 1) * MIDDLE_BLOCK).min(n);
                // query rows two at a time, the last alone when n is odd
                let mut i = 0;
                while i < n {
                    let m = if n - i >= 2 { 2 } else { 1 };
                    let at = (g * h + head) * n + i;
                    let rows = (&go[at * e * n..][..m * e * n], &dsum[at * n..][..m * n]);
                    let job = ((g, head, i), ls.clone(), rows);
                    if m == 2 {
                        self.backward_rows_any::<2>(fma, job, fwd, scratch, grads);
                    } else {
                        self.backward_rows_any::<1>(fma, job, fwd, scratch, grads);
                    }
                    i += m;
                }
            },
        );
        [
            heads_back(&dq, (n, h, d), Block::Channels),
            heads_back(&dkt, (n, h, d), Block::Rows),
            heads_back(&dv1, (n, h, e), Block::Channels),
            heads_back(&dv2t, (n, h, e), Block::Rows),
        ]
    }
}

/// What the forward pass keeps for the backward: the output (`[b, i, j, h, e]`) and per query
/// (`[b, h, i, j]`) the normaliser and whether it was clamped (see [`ColumnStats`]).
struct PathForward<E> {
    out: Vec<E>,
    z: Vec<E>,
    clamped: Vec<bool>,
}

/// One call of [`PathProblem::backward_rows`]: (graph, head, first query row), the middle
/// nodes, and the rows' output gradient and `Σ_t dO · O`.
type RowsJob<'a, E> = (
    (usize, usize, usize),
    std::ops::Range<usize>,
    (&'a [E], &'a [E]),
);

/// Middle nodes per backward task: their key-side rows (`4 · (d + e)` rows of n) are reused
/// by every query row.
const MIDDLE_BLOCK: usize = 4;

/// Per-task rows of the backward pass (each `[row, j]` for up to two query rows): scores,
/// weights and the weights' gradient; and the rows' scaled queries.
struct BackwardScratch<E> {
    s: Vec<E>,
    p: Vec<E>,
    dp: Vec<E>,
    qs: Vec<E>,
}

impl<E: Real> BackwardScratch<E> {
    fn new(n: usize, d: usize) -> Self {
        Self {
            s: zeros(2 * n),
            p: zeros(2 * n),
            dp: zeros(2 * n),
            qs: zeros(2 * d),
        }
    }
}

/// Lanes of the partial sums in [`dot`] and [`value_grads`].
const LANES: usize = 8;

/// One channel t of the values' gradients for `M` query rows, in one pass over j: with
/// `x_m = go_m[j] · v[j]`, `dp_m[j] += c_m · x_m` and `dv2[j] += Σ_m c_m · p_m[j] · go_m[j]`
/// (`dp`, `p`: `[M, n]`); returns `Σ_j p_m[j] · x_m` per row (summed in [`LANES`] partial
/// sums).
#[inline(always)]
fn value_grads<E: Real, const FMA: bool, const M: usize>(
    (dp, dv2): (&mut [E], &mut [E]),
    c: [E; M],
    p: &[E],
    go: [&[E]; M],
    v: &[E],
) -> [E; M] {
    let n = v.len();
    let full = n - n % LANES;
    let mut acc = [[E::zero(); LANES]; M];
    for j0 in (0..full).step_by(LANES) {
        let lanes = |x: &[E]| -> [E; LANES] { x[j0..j0 + LANES].try_into().expect("lanes") };
        let vj = lanes(v);
        let mut d2 = lanes(dv2);
        for (m, acc) in acc.iter_mut().enumerate() {
            let (g, w) = (lanes(go[m]), lanes(&p[m * n..]));
            let dpm = &mut dp[m * n + j0..][..LANES];
            // one statement per loop: each loop is one vector operation
            let mut x = [E::zero(); LANES];
            for ((x, &g), &v) in x.iter_mut().zip(&g).zip(&vj) {
                *x = g * v;
            }
            for (d, &x) in dpm.iter_mut().zip(&x) {
                *d = madd::<E, FMA>(c[m], x, *d);
            }
            for ((a, &w), &x) in acc.iter_mut().zip(&w).zip(&x) {
                *a = madd::<E, FMA>(w, x, *a);
            }
            for ((d, &w), &g) in d2.iter_mut().zip(&w).zip(&g) {
                *d = madd::<E, FMA>(c[m], w * g, *d);
            }
        }
        dv2[j0..j0 + LANES].copy_from_slice(&d2);
    }
    let mut tail = [E::zero(); M];
    for j in full..n {
        let mut d2 = dv2[j];
        for m in 0..M {
            let (g, w) = (go[m][j], p[m * n + j]);
            let x = g * v[j];
            dp[m * n + j] = madd::<E, FMA>(c[m], x, dp[m * n + j]);
            tail[m] = madd::<E, FMA>(w, x, tail[m]);
            d2 = madd::<E, FMA>(c[m], w * g, d2);
        }
        dv2[j] = d2;
    }
    std::array::from_fn(|m| lanes_sum(&acc[m]) + tail[m])
}

/// One channel t of the keys' gradients for `M` query rows: `dk[j] += Σ_m c_m · ds_m[j]`
/// (`ds`: `[M, n]`), the rows added in order.
#[inline(always)]
fn add_key_grads<E: Real, const FMA: bool, const M: usize>(dk: &mut [E], c: [E; M], ds: &[E]) {
    let n = dk.len();
    for (m, &cm) in c.iter().enumerate() {
        axpy::<E, FMA>(dk, cm, &ds[m * n..][..n]);
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

/// How a heads-first copy lays out each (graph, head, r) block of `n · per_head` values.
#[derive(Clone, Copy, PartialEq)]
enum Block {
    /// `[c, channel]`: each column's channels together (the query side).
    Channels,
    /// `[channel, c]`: rows along the columns (the key side, read along j).
    Rows,
}

/// `x` (the edges' layout `[b, r, c, h, per_head]`) heads first, `[b, h, r, ·]`, each block
/// laid out as `block` says.
fn heads_first<E: Real>(x: &[E], (n, h, per_head): (usize, usize, usize), block: Block) -> Vec<E> {
    let mut out = zeros::<E>(x.len());
    out.par_chunks_mut((n * per_head).max(1))
        .enumerate()
        .for_each(|(ghr, dst)| {
            let (g, head, r) = (ghr / (h * n), (ghr / n) % h, ghr % n);
            for c in 0..n {
                let src = &x[(((g * n + r) * n + c) * h + head) * per_head..][..per_head];
                if block == Block::Channels {
                    dst[c * per_head..][..per_head].copy_from_slice(src);
                } else {
                    for (t, &v) in src.iter().enumerate() {
                        dst[t * n + c] = v;
                    }
                }
            }
        });
    out
}

/// `x` heads first (blocks laid out as `block` says) back to the edges' layout
/// `[b, r, c, h, per_head]`: the inverse of [`heads_first`].
fn heads_back<E: Real>(x: &[E], (n, h, per_head): (usize, usize, usize), block: Block) -> Vec<E> {
    let mut out = zeros::<E>(x.len());
    out.par_chunks_mut((n * h * per_head).max(1))
        .enumerate()
        .for_each(|(gr, row)| {
            let (g, r) = (gr / n, gr % n);
            for head in 0..h {
                let src = &x[((g * h + head) * n + r) * n * per_head..][..n * per_head];
                for c in 0..n {
                    let dst = &mut row[(c * h + head) * per_head..][..per_head];
                    if block == Block::Channels {
                        dst.copy_from_slice(&src[c * per_head..][..per_head]);
                    } else {
                        for (t, v) in dst.iter_mut().enumerate() {
                            *v = src[t * n + c];
                        }
                    }
                }
            }
        });
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
    let (d, e) = (hd / heads, he / heads);
    let problem = PathProblem {
        b,
        n,
        h: heads,
        d,
        e,
        scale: E::of(spec.scale),
        normalizer: spec.normalizer,
        vis: spec.visibility.clone(),
        qh: heads_first(&Host::read(&q), (n, heads, d), Block::Channels),
        v1h: heads_first(&Host::read(&v1), (n, heads, e), Block::Channels),
        kt: heads_first(&Host::read(&k), (n, heads, d), Block::Rows),
        v2t: heads_first(&Host::read(&v2), (n, heads, e), Block::Rows),
    };
    let mut fwd = problem.forward();
    // the backward reads the output: copy it when there is a tape, else hand it over
    let out = if T::OWNS_TAPE {
        copied(&fwd.out)
    } else {
        std::mem::take(&mut fwd.out)
    };
    let ghosts = [q.ghost(), k.ghost(), v1.ghost(), v2.ghost()];
    taped.output(&dev, out, (b, n, n, he), move |g, grads| {
        let parts = problem.backward(&g, &fwd);
        for (ghost, part) in ghosts.iter().zip(parts) {
            add_owned(grads, ghost, part)?;
        }
        Ok(())
    })
}
