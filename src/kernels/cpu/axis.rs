//! Softmax and log-sum-exp along the middle axis of `[outer, n, inner]` over the visible
//! entries (`ops::axis`), one parallel pass each way. The composite pushes hidden entries
//! down with mask arithmetic and runs dfdx's softmax: about ten passes over the operand
//! forward and as many back, each allocating, where a three-index rule's operand holds n³
//! entries per channel.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{zeros, CpuBuffer, Host};
use super::grads::gradient_mut;
use super::taped::Taped;
use crate::error::Result;
use crate::spec::axis::{check, AxisOp, Visible};
use crate::tensor::*;

/// Elements per parallel task, at the least.
const CHUNK: usize = 1 << 12;

/// The fused CPU form of [`crate::ops::axis::over_axis`].
pub fn over_axis_fused<E: Real, T: Tape<E, Cpu>>(
    x: T1<E, Cpu, T>,
    visible: Visible<'_, T1<E, Cpu>>,
    dims: (usize, usize, usize),
    op: AxisOp,
) -> Result<T1<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    check(x.shape().0, &visible, |m| m.shape().0, dims)?;
    let (outer, n, inner) = dims;
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let x = taped.input(x);
    let xs = Host::read(&x);
    let keys = visible.key_rows(dims);
    let mask: Option<Host<E>> = match visible {
        Visible::Mask(m) => Some(Host::read(m)),
        _ => None,
    };
    let block = n * inner;
    let per_task = (CHUNK / block.max(1)).max(1);
    // the softmax of every row, which is also log-sum-exp's gradient
    let mut probs = zeros(xs.len());
    let mut lse = zeros(if op == AxisOp::LogSumExp {
        outer * inner
    } else {
        0
    });
    let row = |cols: &mut Columns<E>, o: usize, p: &mut [E], l: Option<&mut [E]>| {
        let xb = &xs[o * block..][..block];
        let seen = match (&mask, keys) {
            (Some(m), _) => Seen::Mask(&m[o * block..][..block]),
            (None, Some(keys)) => Seen::Keys(keys.row(o)),
            (None, None) => Seen::All,
        };
        softmax_block(xb, seen, n, inner, p, l, cols);
    };
    match op {
        AxisOp::Softmax => probs
            .par_chunks_mut(block.max(1))
            .with_min_len(per_task)
            .enumerate()
            .for_each_init(Columns::new, |cols, (o, p)| row(cols, o, p, None)),
        AxisOp::LogSumExp => probs
            .par_chunks_mut(block.max(1))
            .zip(lse.par_chunks_mut(inner.max(1)))
            .with_min_len(per_task)
            .enumerate()
            .for_each_init(Columns::new, |cols, (o, (p, l))| row(cols, o, p, Some(l))),
    }
    let x_g = x.ghost();
    match op {
        AxisOp::Softmax => {
            // the backward reads the output, which the tensor takes
            let kept = if T::OWNS_TAPE {
                probs.clone()
            } else {
                Vec::new()
            };
            taped.output(&dev, probs, (outer * block,), move |g, grads| {
                let dx = gradient_mut(grads, &x_g)?;
                dx.par_chunks_mut(block.max(1))
                    .zip(
                        kept.par_chunks(block.max(1))
                            .zip(g.par_chunks(block.max(1))),
                    )
                    .with_min_len(per_task)
                    .for_each_init(Vec::new, |dot, (dx, (p, g))| {
                        softmax_backward_block(dx, p, g, inner, dot)
                    });
                Ok(())
            })
        }
        AxisOp::LogSumExp => taped.output(&dev, lse, (outer * inner,), move |g, grads| {
            let dx = gradient_mut(grads, &x_g)?;
            dx.par_chunks_mut(block.max(1))
                .zip(
                    probs
                        .par_chunks(block.max(1))
                        .zip(g.par_chunks(inner.max(1))),
                )
                .with_min_len(per_task)
                .for_each(|(dx, (p, g))| {
                    for k in 0..n {
                        for c in 0..inner {
                            let i = k * inner + c;
                            dx[i] = dx[i] + p[i] * g[c];
                        }
                    }
                });
            Ok(())
        }),
    }
}

/// Which entries of one `[n, inner]` block take part.
#[derive(Clone, Copy)]
enum Seen<'a, E> {
    All,
    /// Whether each of the `n` keys is real (the same for every column).
    Keys(&'a [bool]),
    /// 1 (visible) or 0 (hidden) per entry.
    Mask(&'a [E]),
}

/// Per-column state of one block, kept by a task across its blocks.
struct Columns<E> {
    max: Vec<E>,
    sum: Vec<E>,
    any: Vec<bool>,
}

impl<E: Real> Columns<E> {
    fn new() -> Self {
        Self {
            max: Vec::new(),
            sum: Vec::new(),
            any: Vec::new(),
        }
    }
}

/// The softmax over the visible entries of each of a `[n, inner]` block's `inner` columns into
/// `p` (hidden entries, and columns with none visible, are 0), and with `lse` each column's
/// log-sum-exp (0 where none is visible). A NaN among the visible entries makes its column NaN.
/// The block is walked row by row (a row's columns are contiguous) and its exps are taken in
/// one vectorized pass.
fn softmax_block<E: Real>(
    x: &[E],
    visible: Seen<'_, E>,
    n: usize,
    inner: usize,
    p: &mut [E],
    lse: Option<&mut [E]>,
    cols: &mut Columns<E>,
) {
    // one copy of the loops per kind of visibility, so that `All` tests nothing, and per
    // common width (a rule's heads), so that a row's columns sit in registers
    let half = E::of(0.5);
    macro_rules! widths {
        ($seen:expr) => {
            match inner {
                1 => softmax_fixed::<E, 1>(x, $seen, n, p, lse),
                2 => softmax_fixed::<E, 2>(x, $seen, n, p, lse),
                4 => softmax_fixed::<E, 4>(x, $seen, n, p, lse),
                8 => softmax_fixed::<E, 8>(x, $seen, n, p, lse),
                16 => softmax_fixed::<E, 16>(x, $seen, n, p, lse),
                _ => softmax_block_with(x, $seen, n, inner, p, lse, cols),
            }
        };
    }
    match visible {
        Seen::All => widths!(|_, _| true),
        Seen::Keys(real) => widths!(|k, _| real[k]),
        Seen::Mask(m) => widths!(|k, c| m[k * inner + c] > half),
    }
}

/// [`softmax_block_with`] for blocks `W` columns wide: the columns' state in arrays.
#[inline(always)]
fn softmax_fixed<E: Real, const W: usize>(
    x: &[E],
    seen: impl Fn(usize, usize) -> bool,
    n: usize,
    p: &mut [E],
    lse: Option<&mut [E]>,
) {
    let (x, p) = (&x[..n * W], &mut p[..n * W]);
    let mut max = [E::neg_infinity(); W];
    let mut any = [false; W];
    for (k, row) in x.chunks_exact(W).enumerate() {
        for c in 0..W {
            if seen(k, c) {
                any[c] = true;
                // a NaN never wins here; it reaches every output through the sum below
                if row[c] > max[c] {
                    max[c] = row[c];
                }
            }
        }
    }
    // hidden entries at −∞, whose exp is exactly 0
    for (k, (row, out)) in x.chunks_exact(W).zip(p.chunks_exact_mut(W)).enumerate() {
        for c in 0..W {
            out[c] = if seen(k, c) {
                row[c] - max[c]
            } else {
                E::neg_infinity()
            };
        }
    }
    E::exp_slice(p);
    let mut sum = [E::zero(); W];
    for row in p.chunks_exact(W) {
        for c in 0..W {
            sum[c] = sum[c] + row[c];
        }
    }
    if let Some(l) = lse {
        for c in 0..W {
            l[c] = if any[c] {
                max[c] + sum[c].ln()
            } else {
                E::zero()
            };
        }
    }
    // the reciprocal, 0 for a column with none visible (its entries are 0 already)
    for c in 0..W {
        sum[c] = if any[c] { sum[c].recip() } else { E::zero() };
    }
    for row in p.chunks_exact_mut(W) {
        for c in 0..W {
            row[c] = row[c] * sum[c];
        }
    }
}

/// [`softmax_block`] with `seen(k, c)` telling whether entry (k, c) takes part.
#[inline(always)]
fn softmax_block_with<E: Real>(
    x: &[E],
    seen: impl Fn(usize, usize) -> bool,
    n: usize,
    inner: usize,
    p: &mut [E],
    lse: Option<&mut [E]>,
    cols: &mut Columns<E>,
) {
    let width = inner.max(1);
    let (x, p) = (&x[..n * inner], &mut p[..n * inner]);
    let Columns { max, sum, any } = cols;
    max.clear();
    max.resize(inner, E::neg_infinity());
    any.clear();
    any.resize(inner, false);
    for (k, row) in x.chunks_exact(width).enumerate() {
        for (c, ((&v, m), a)) in row
            .iter()
            .zip(max.iter_mut())
            .zip(any.iter_mut())
            .enumerate()
        {
            if seen(k, c) {
                *a = true;
                // a NaN never wins here; it reaches every output through the sum below
                if v > *m {
                    *m = v;
                }
            }
        }
    }
    // hidden entries at −∞, whose exp is exactly 0
    for (k, (row, out)) in x
        .chunks_exact(width)
        .zip(p.chunks_exact_mut(width))
        .enumerate()
    {
        for (c, ((&v, o), &m)) in row.iter().zip(out.iter_mut()).zip(max.iter()).enumerate() {
            *o = if seen(k, c) { v - m } else { E::neg_infinity() };
        }
    }
    E::exp_slice(p);
    sum.clear();
    sum.resize(inner, E::zero());
    for row in p.chunks_exact(width) {
        for (s, &e) in sum.iter_mut().zip(row) {
            *s = *s + e;
        }
    }
    if let Some(l) = lse {
        for (((l, &m), &s), &a) in l.iter_mut().zip(max.iter()).zip(sum.iter()).zip(any.iter()) {
            *l = if a { m + s.ln() } else { E::zero() };
        }
    }
    // the reciprocal, 0 for a column with none visible (its entries are 0 already)
    for (s, &a) in sum.iter_mut().zip(any.iter()) {
        *s = if a { s.recip() } else { E::zero() };
    }
    for row in p.chunks_exact_mut(width) {
        for (v, &r) in row.iter_mut().zip(sum.iter()) {
            *v = *v * r;
        }
    }
}

/// `dx += p ⊙ (g − Σ p·g)` down each column of a `[n, inner]` block (hidden entries have p = 0),
/// row by row; `dot` holds the columns' sums.
fn softmax_backward_block<E: Real>(dx: &mut [E], p: &[E], g: &[E], inner: usize, dot: &mut Vec<E>) {
    match inner {
        1 => return softmax_backward_fixed::<E, 1>(dx, p, g),
        2 => return softmax_backward_fixed::<E, 2>(dx, p, g),
        4 => return softmax_backward_fixed::<E, 4>(dx, p, g),
        8 => return softmax_backward_fixed::<E, 8>(dx, p, g),
        16 => return softmax_backward_fixed::<E, 16>(dx, p, g),
        _ => {}
    }
    let width = inner.max(1);
    dot.clear();
    dot.resize(inner, E::zero());
    for (p, g) in p.chunks_exact(width).zip(g.chunks_exact(width)) {
        for c in 0..inner {
            dot[c] = dot[c] + p[c] * g[c];
        }
    }
    for ((dx, p), g) in dx
        .chunks_exact_mut(width)
        .zip(p.chunks_exact(width))
        .zip(g.chunks_exact(width))
    {
        for c in 0..inner {
            dx[c] = dx[c] + p[c] * (g[c] - dot[c]);
        }
    }
}

/// [`softmax_backward_block`] for blocks `W` columns wide.
fn softmax_backward_fixed<E: Real, const W: usize>(dx: &mut [E], p: &[E], g: &[E]) {
    let mut dot = [E::zero(); W];
    for (p, g) in p.chunks_exact(W).zip(g.chunks_exact(W)) {
        for c in 0..W {
            dot[c] = dot[c] + p[c] * g[c];
        }
    }
    for ((dx, p), g) in dx
        .chunks_exact_mut(W)
        .zip(p.chunks_exact(W))
        .zip(g.chunks_exact(W))
    {
        for c in 0..W {
            dx[c] = dx[c] + p[c] * (g[c] - dot[c]);
        }
    }
}
