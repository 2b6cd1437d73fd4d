//! Memory-efficient attention on the CPU: `out = normalize(scale · q·kᵀ + bias) · v` computed
//! in blocks of queries and keys with matrix products (the `gemm` crate that dfdx uses), the
//! softmax accumulated online, and a backward pass that recomputes each block's scores instead
//! of storing them. Memory grows with the number of queries and keys, never with their product:
//! attention across all n² edges runs at n = 128 (n⁴ pairs per head) in a few megabytes.
//!
//! Work is split over (problem, head) pairs with rayon; within a pair, blocks run in order, so
//! the backward's key and value gradients have one writer each. The visibility rule (padding,
//! causal times) is applied per element; the Taylor normalizer (`1 + s + s²/2` over
//! `max(Σ, eps)`) accumulates without a running maximum.
//!
//! A bias may be shared by consecutive problems (see [`bias_share`]): triangle attention's bias
//! from the third side of a triangle is the same for every row of a graph, and is read in place
//! rather than copied n times.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{copied, zeros, CpuBuffer, Host};
use super::gemm::{mm, Mat, MatMut};
use super::grads::add_owned;
use super::shared::Shared;
use super::taped::Taped;
use crate::error::{Error, Result};
use crate::spec::EdgePattern;
use crate::spec::Visibility;
use crate::spec::{check_attention_shapes, Normalizer, WeightsSpec};
use crate::tensor::*;

const BLOCK_Q: usize = 128;
const BLOCK_K: usize = 256;

/// Where element `(problem, head, row, channel)` of a q/k/v/out operand lives in its flat
/// buffer: channels are contiguous; a problem index splits into `(p / count, p % count)` with
/// strides `(outer, inner)`. Every attention pattern over nodes or edges is such a view of the
/// node or edge tensor, so no permuted copy is ever made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub outer: usize,
    pub inner: usize,
    pub count: usize,
    pub head: usize,
    pub row: usize,
}

impl Layout {
    /// `[P, H, n, c]` stored contiguously.
    pub fn contiguous(h: usize, n: usize, c: usize) -> Self {
        Self {
            outer: h * n * c,
            inner: 0,
            count: 1,
            head: n * c,
            row: c,
        }
    }
    #[inline]
    fn base(&self, p: usize, h: usize) -> usize {
        (p / self.count) * self.outer + (p % self.count) * self.inner + h * self.head
    }

    /// Whether `p` problems × `h` heads × `rows` rows of `width` elements address pairwise
    /// disjoint elements, so that parallel tasks (one per problem and head, writing its rows
    /// or their gradients) never write the same element. Sufficient: taking the axes by
    /// increasing stride, each stride passes the span of every smaller axis.
    fn disjoint(&self, p: usize, h: usize, rows: usize, width: usize) -> bool {
        let count = self.count.max(1);
        let mut axes = [
            (self.inner, p.min(count)),
            (self.outer, p.div_ceil(count)),
            (self.head, h),
            (self.row, rows),
        ];
        axes.sort_unstable();
        let mut span = width;
        for (stride, extent) in axes {
            if extent <= 1 {
                continue;
            }
            if stride < span {
                return false;
            }
            span = stride * (extent - 1) + span;
        }
        true
    }
}

/// Where an edge pattern's problems, heads and rows live in a `[b, n, n, channels]` edge tensor
/// whose heads are blocks of `per_head` channels (see [`super::patterns::EdgePattern`]).
pub fn edge_layout(pattern: EdgePattern, n: usize, channels: usize, per_head: usize) -> Layout {
    let base = Layout {
        outer: n * n * channels,
        inner: 0,
        count: 1,
        head: per_head,
        row: channels,
    };
    match pattern {
        EdgePattern::All => base,
        EdgePattern::Row => Layout {
            outer: n * channels,
            ..base
        },
        EdgePattern::Column => Layout {
            inner: channels,
            count: n,
            row: n * channels,
            ..base
        },
        EdgePattern::Diagonal => Layout {
            row: (n + 1) * channels,
            ..base
        },
    }
}

/// Sets the invisible entries of a score row to −∞ (they vanish under `exp`).
#[inline]
fn hide<E: Real>(row: &mut [E], visible: impl Fn(usize) -> bool) {
    for (c, x) in row.iter_mut().enumerate() {
        if !visible(c) {
            *x = E::neg_infinity();
        }
    }
}

/// The maximum of a row, in eight lanes (a plain fold does not vectorize). NaN is skipped:
/// it reaches the output through `exp`, and a row of NaN alone is told apart from a row with
/// no visible key where the maximum is −∞ (off the hot path).
#[inline]
fn row_max<E: Real>(row: &[E]) -> E {
    let mut lanes = [E::neg_infinity(); 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for ch in chunks {
        for l in 0..8 {
            lanes[l] = if ch[l] > lanes[l] { ch[l] } else { lanes[l] };
        }
    }
    tail.iter()
        .chain(lanes.iter())
        .fold(E::neg_infinity(), |m, &x| if x > m { x } else { m })
}

/// The sum of a row, in eight lanes.
#[inline]
fn row_sum<E: Real>(row: &[E]) -> E {
    let mut lanes = [E::zero(); 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for ch in chunks {
        for l in 0..8 {
            lanes[l] = lanes[l] + ch[l];
        }
    }
    tail.iter()
        .chain(lanes.iter())
        .fold(E::zero(), |a, &x| a + x)
}

/// Asks the cache for `rows` runs of `span` elements, `row` apart, from `start` in `buf`.
fn prefetch_span<E>(buf: &[E], start: usize, row: usize, rows: usize, span: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let line = (64 / std::mem::size_of::<E>()).max(1);
        for i in 0..rows {
            let first = start + i * row;
            for off in (0..span).step_by(line) {
                if let Some(x) = buf.get(first + off) {
                    // Safety: a prefetch reads nothing; the address lies in `buf`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(x as *const E as *const i8) };
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (buf, start, row, rows, span);
}

/// Visibility of one problem, indexed without recomputing offsets.
struct ProblemMask<'a> {
    key_valid: Option<&'a [bool]>,
    times: Option<(&'a [usize], &'a [usize])>,
    /// `[queries × keys]`.
    pairs: Option<&'a [bool]>,
    keys: usize,
}

impl<'a> ProblemMask<'a> {
    fn new(vis: &'a Visibility, p: usize) -> Self {
        let (nq, nk) = (vis.queries, vis.keys);
        Self {
            key_valid: vis.key_valid.as_ref().map(|v| &v[p * nk..(p + 1) * nk]),
            times: vis
                .times
                .as_ref()
                .map(|t| (&t.query[p * nq..(p + 1) * nq], &t.key[p * nk..(p + 1) * nk])),
            pairs: vis
                .pairs
                .as_ref()
                .map(|v| &v[p * nq * nk..(p + 1) * nq * nk]),
            keys: nk,
        }
    }
    fn all_visible(&self) -> bool {
        self.key_valid.is_none() && self.times.is_none() && self.pairs.is_none()
    }
    #[inline]
    fn visible(&self, i: usize, j: usize) -> bool {
        self.key_valid.map_or(true, |v| v[j])
            && self.times.map_or(true, |(q, k)| k[j] <= q[i])
            && self.pairs.map_or(true, |v| v[i * self.keys + j])
    }
}

/// Host data and sizes of one attention call.
pub(super) struct Problem<E: Real> {
    pub(super) p: usize,
    pub(super) h: usize,
    pub(super) nq: usize,
    pub(super) nk: usize,
    pub(super) d: usize,
    pub(super) e: usize,
    pub(super) scale: E,
    pub(super) normalizer: Normalizer,
    pub(super) vis: Visibility,
    pub(super) q: Host<E>,
    pub(super) k: Host<E>,
    pub(super) v: Host<E>,
    pub(super) ql: Layout,
    pub(super) kl: Layout,
    pub(super) vl: Layout,
    /// The output's layout (its buffer has `out_len` elements).
    pub(super) ol: Layout,
    pub(super) out_len: usize,
    pub(super) bias: Option<Host<E>>,
    /// How many consecutive problems read each `[h, nq, nk]` block of `bias` (1: one block per
    /// problem).
    pub(super) bias_share: usize,
}

/// Bias blocks `[groups, h, nq, nk]` for `p` problems: how many consecutive problems share
/// each group's block (`p / groups`, which must divide evenly; 1 without problems).
pub(super) fn bias_share(
    what: &str,
    bias: (usize, usize, usize, usize),
    (p, h, nq, nk): (usize, usize, usize, usize),
) -> Result<usize> {
    let (groups, bh, bq, bk) = bias;
    let fits = (bh, bq, bk) == (h, nq, nk)
        && if p == 0 {
            groups == 0
        } else {
            groups > 0 && p % groups == 0
        };
    if !fits {
        return Err(Error::shape(
            what,
            format!("[groups, {h}, {nq}, {nk}] with groups dividing {p} problems"),
            format!("{bias:?}"),
        ));
    }
    Ok(if groups == 0 { 1 } else { p / groups })
}

/// Partial sums kept per shared bias block in the backward pass: the problems sharing a block
/// are split into at most this many runs, each summed by one task, then added in a fixed order
/// (so results do not depend on how rayon schedules the tasks).
const BIAS_RUNS: usize = 8;

/// Buffers reused across the (problem, head) pairs one rayon task runs.
struct Scratch<E> {
    s: Vec<E>,
    p: Vec<E>,
    dp: Vec<E>,
    acc: Vec<E>,
    run_max: Vec<E>,
    run_sum: Vec<E>,
    g: Vec<E>,
    #[cfg(target_arch = "x86_64")]
    lanes: super::lanes::Scratch,
}

/// Per-query statistics kept from the forward pass: softmax `log Σ exp` (−∞ when no key is
/// visible) or the Taylor sum Σw.
pub(super) struct Stats<E> {
    pub(super) out: Vec<E>,
    pub(super) stat: Vec<E>,
}

impl<E: Real> Problem<E> {
    /// Scores of a block: `s = scale · q[i0..i0+bq] · k[j0..j0+bk]ᵀ (+ bias)`, row stride `bk`.
    fn scores(&self, ph: usize, i0: usize, bq: usize, j0: usize, bk: usize, s: &mut [E]) {
        let (nq, nk, d) = (self.nq, self.nk, self.d);
        let (p, h) = (ph / self.h, ph % self.h);
        let q = &self.q[self.ql.base(p, h) + i0 * self.ql.row..];
        let k = &self.k[self.kl.base(p, h) + j0 * self.kl.row..];
        mm(
            MatMut::rows(s, (bq, bk), bk),
            false,
            Mat::rows(q, (bq, d), self.ql.row),
            Mat::rows(k, (bk, d), self.kl.row).t(),
            self.scale,
        );
        if let Some(bias) = &self.bias {
            for r in 0..bq {
                let block = (p / self.bias_share) * self.h + h;
                let br = &bias[(block * nq + i0 + r) * nk + j0..][..bk];
                s[r * bk..(r + 1) * bk]
                    .iter_mut()
                    .zip(br)
                    .for_each(|(x, &b)| *x = *x + b);
            }
        }
    }

    /// Asks the cache for what a later pair reads of an operand laid out by `l` (`rows` rows
    /// of `width` channels per head), while pair `ph` computes: a pair starts with cache misses
    /// on its rows otherwise (a sixth of the small model's Taylor kernel, a tenth of the README
    /// model's). Where a row's heads lie within 256 bytes (the small model's edges), the pairs
    /// of one problem share those lines: the next problem's, once per problem. Else the next
    /// pair's own rows (one line each for 16-channel heads).
    fn prefetch_next(&self, ph: usize, buf: &[E], l: &Layout, (rows, width): (usize, usize)) {
        let (p, h) = (ph / self.h, ph % self.h);
        let size = std::mem::size_of::<E>();
        let all_heads = self.h.saturating_sub(1) * l.head + width;
        if l.head < l.row && all_heads * size <= 256 {
            if h == 0 && p + 1 < self.p {
                prefetch_span(buf, l.base(p + 1, 0), l.row, rows, all_heads);
            }
        } else if ph + 1 < self.p * self.h && width * size <= 256 {
            let next = ph + 1;
            prefetch_span(
                buf,
                l.base(next / self.h, next % self.h),
                l.row,
                rows,
                width,
            );
        }
    }

    /// Scratch for one task: block-sized score buffers (three of them) and per-row state.
    fn scratch(&self) -> Scratch<E> {
        let block = BLOCK_Q.min(self.nq).max(1) * BLOCK_K.min(self.nk).max(1);
        let rows = BLOCK_Q.min(self.nq).max(1);
        Scratch {
            s: vec![E::zero(); block],
            p: vec![E::zero(); block],
            dp: vec![E::zero(); block],
            acc: vec![E::zero(); rows * self.e],
            run_max: vec![E::zero(); rows],
            run_sum: vec![E::zero(); rows],
            g: vec![E::zero(); self.nq * self.e],
            #[cfg(target_arch = "x86_64")]
            lanes: Default::default(),
        }
    }

    /// Pair `ph` as the operands of the f32 kernel that runs sixteen queries in two vectors,
    /// when that kernel applies: f32, some queries and keys, no causal times or per-pair
    /// visibility, head widths that are nonzero multiples of eight, and a CPU with AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    fn lanes_pair(&self, ph: usize) -> Option<super::lanes::Pair<'_>> {
        let weights = match self.normalizer {
            Normalizer::Taylor { eps } => super::lanes::Weights::Taylor { eps: eps as f32 },
            Normalizer::Softmax => super::lanes::Weights::Softmax,
        };
        if std::any::TypeId::of::<E>() != std::any::TypeId::of::<f32>()
            || self.vis.times.is_some()
            || self.vis.pairs.is_some()
            || self.nq == 0
            || self.nk == 0
            || !super::lanes::applies(self.d, self.e)
        {
            return None;
        }
        let (p, h, nk) = (ph / self.h, ph % self.h, self.nk);
        // E is f32 (checked above)
        let at = |buf: &[E], base: usize| buf[base..].as_ptr() as *const f32;
        let bias_block = (p / self.bias_share) * self.h + h;
        Some(super::lanes::Pair {
            q: at(&self.q, self.ql.base(p, h)),
            q_row: self.ql.row,
            k: at(&self.k, self.kl.base(p, h)),
            k_row: self.kl.row,
            v: at(&self.v, self.vl.base(p, h)),
            v_row: self.vl.row,
            nq: self.nq,
            nk,
            d: self.d,
            e: self.e,
            scale: self.scale.as_f64() as f32,
            weights,
            bias: self.bias.as_ref().map(|b| at(b, bias_block * self.nq * nk)),
            key_valid: self
                .vis
                .key_valid
                .as_ref()
                .map(|v| &v[p * nk..(p + 1) * nk]),
        })
    }

    fn forward_pair(
        &self,
        ph: usize,
        out: Shared<'_, E>,
        stat: &mut [E],
        scratch: &mut Scratch<E>,
    ) {
        let (nq, nk, e) = (self.nq, self.nk, self.e);
        let (p, h) = (ph / self.h, ph % self.h);
        let v_base = self.vl.base(p, h);
        let o_base = self.ol.base(p, h);
        self.prefetch_next(ph, &self.q, &self.ql, (nq, self.d));
        self.prefetch_next(ph, &self.k, &self.kl, (nk, self.d));
        self.prefetch_next(ph, &self.v, &self.vl, (nk, e));
        #[cfg(target_arch = "x86_64")]
        if let Some(pair) = self.lanes_pair(ph) {
            // Safety: E is f32 (lanes_pair checked); the kernel writes this pair's output rows
            // alone and nq sums into `stat`.
            unsafe {
                let stat = std::slice::from_raw_parts_mut(stat.as_mut_ptr() as *mut f32, nq);
                let out = out.at(o_base) as *mut f32;
                super::lanes::forward(&pair, out, self.ol.row, stat, &mut scratch.lanes);
            }
            return;
        }
        let mask = ProblemMask::new(&self.vis, ph / self.h);
        let Scratch {
            s,
            acc,
            run_max,
            run_sum,
            ..
        } = scratch;
        for i0 in (0..nq).step_by(BLOCK_Q) {
            let bq = BLOCK_Q.min(nq - i0);
            acc[..bq * e].iter_mut().for_each(|x| *x = E::zero());
            run_max[..bq]
                .iter_mut()
                .for_each(|x| *x = E::neg_infinity());
            run_sum[..bq].iter_mut().for_each(|x| *x = E::zero());
            for j0 in (0..nk).step_by(BLOCK_K) {
                let bk = BLOCK_K.min(nk - j0);
                let s = &mut s[..bq * bk];
                self.scores(ph, i0, bq, j0, bk, s);
                for r in 0..bq {
                    let row = &mut s[r * bk..(r + 1) * bk];
                    let i = i0 + r;
                    match self.normalizer {
                        Normalizer::Softmax => {
                            if !mask.all_visible() {
                                hide(row, |c| mask.visible(i, j0 + c));
                            }
                            let m = row_max(row);
                            if m == E::neg_infinity() {
                                // no visible key, or nothing but NaN: a NaN must not vanish
                                let nan = row.iter().any(|x| x.is_nan());
                                let fill = if nan { E::nan() } else { E::zero() };
                                if nan {
                                    run_max[r] = E::nan();
                                    run_sum[r] = E::nan();
                                }
                                row.iter_mut().for_each(|x| *x = fill);
                                continue;
                            }
                            let new_max = if m > run_max[r] { m } else { run_max[r] };
                            let correction = if run_max[r] == E::neg_infinity() {
                                E::zero()
                            } else {
                                (run_max[r] - new_max).exp()
                            };
                            row.iter_mut().for_each(|x| *x = *x - new_max);
                            E::exp_slice(row);
                            let sum = row_sum(row);
                            run_sum[r] = run_sum[r] * correction + sum;
                            run_max[r] = new_max;
                            if correction != E::one() {
                                acc[r * e..(r + 1) * e]
                                    .iter_mut()
                                    .for_each(|x| *x = *x * correction);
                            }
                        }
                        Normalizer::Taylor { .. } => {
                            let half = E::of(0.5);
                            row.iter_mut()
                                .for_each(|x| *x = E::one() + *x + *x * *x * half);
                            if !mask.all_visible() {
                                for (c, x) in row.iter_mut().enumerate() {
                                    if !mask.visible(i, j0 + c) {
                                        *x = E::zero();
                                    }
                                }
                            }
                            run_sum[r] = run_sum[r] + row_sum(row);
                        }
                    }
                }
                let v = &self.v[v_base + j0 * self.vl.row..];
                mm(
                    MatMut::rows(acc, (bq, e), e),
                    true,
                    Mat::rows(s, (bq, bk), bk),
                    Mat::rows(v, (bk, e), self.vl.row),
                    E::one(),
                );
            }
            for r in 0..bq {
                let (z, st) = match self.normalizer {
                    // a NaN sum goes this way too, and on to the output
                    Normalizer::Softmax if !(run_sum[r] <= E::zero()) => {
                        (run_sum[r], run_max[r] + run_sum[r].ln())
                    }
                    Normalizer::Softmax => (E::zero(), E::neg_infinity()),
                    Normalizer::Taylor { eps } => (run_sum[r].at_least(E::of(eps)), run_sum[r]),
                };
                let inv = if !(z <= E::zero()) {
                    E::one() / z
                } else {
                    E::zero()
                };
                let row = o_base + (i0 + r) * self.ol.row;
                for (c, &a) in acc[r * e..(r + 1) * e].iter().enumerate() {
                    // Safety: pair (p, h) alone writes its rows of the output.
                    unsafe { out.write(row + c, a * inv) };
                }
                stat[i0 + r] = st;
            }
        }
    }

    pub(super) fn forward(&self) -> Stats<E> {
        let (pairs, nq) = (self.p * self.h, self.nq);
        let mut out = zeros(self.out_len);
        let mut stat = zeros(pairs * nq);
        let ptr = Shared::new(&mut out);
        stat.par_chunks_mut(nq.max(1)).enumerate().for_each_init(
            || self.scratch(),
            |scr, (ph, st)| self.forward_pair(ph, ptr, st, scr),
        );
        Stats { out, stat }
    }

    /// Gradients of one (problem, head) pair: dq, dk, dv (and dbias) slices it owns.
    #[allow(clippy::too_many_arguments)]
    fn backward_pair(
        &self,
        ph: usize,
        fwd: &Stats<E>,
        g_all: &[E],
        (dq, dk, dv): (Shared<'_, E>, Shared<'_, E>, Shared<'_, E>),
        mut dbias: Option<&mut [E]>,
        scratch: &mut Scratch<E>,
    ) {
        let (nq, nk, d, e) = (self.nq, self.nk, self.d, self.e);
        let (p, h) = (ph / self.h, ph % self.h);
        let mask = ProblemMask::new(&self.vis, p);
        let stat = &fwd.stat[ph * nq..(ph + 1) * nq];
        let (qb, kb, vb, ob) = (
            self.ql.base(p, h),
            self.kl.base(p, h),
            self.vl.base(p, h),
            self.ol.base(p, h),
        );
        self.prefetch_next(ph, &self.q, &self.ql, (nq, d));
        self.prefetch_next(ph, &self.k, &self.kl, (nk, d));
        self.prefetch_next(ph, &self.v, &self.vl, (nk, e));
        self.prefetch_next(ph, &fwd.out, &self.ol, (nq, e));
        self.prefetch_next(ph, g_all, &self.ol, (nq, e));
        #[cfg(target_arch = "x86_64")]
        if let Some(pair) = self.lanes_pair(ph) {
            // Safety: E is f32 (lanes_pair checked); this pair alone writes its rows of dq,
            // dk and dv, and the bias gradient block it was given; g and the output share the
            // layout `ol`.
            unsafe {
                let dbias = dbias.map(|db| db[..nq * nk].as_mut_ptr() as *mut f32);
                let stat = std::slice::from_raw_parts(stat.as_ptr() as *const f32, nq);
                let o = fwd.out[ob..].as_ptr() as *const f32;
                let g = g_all[ob..].as_ptr() as *const f32;
                let grads = (
                    dq.at(qb) as *mut f32,
                    dk.at(kb) as *mut f32,
                    dv.at(vb) as *mut f32,
                );
                super::lanes::backward(
                    &pair,
                    (o, g, self.ol.row),
                    stat,
                    grads,
                    dbias,
                    &mut scratch.lanes,
                );
            }
            return;
        }
        // this pair's output gradient, gathered into [nq, e] rows
        let Scratch { s, p, dp, g, .. } = scratch;
        for i in 0..nq {
            g[i * e..(i + 1) * e].copy_from_slice(&g_all[ob + i * self.ol.row..][..e]);
        }
        // D_i = dO_i · O_i (Σ_j P_ij dP_ij)
        let dsum: Vec<E> = (0..nq)
            .map(|i| {
                g[i * e..(i + 1) * e]
                    .iter()
                    .zip(&fwd.out[ob + i * self.ol.row..][..e])
                    .fold(E::zero(), |a, (&x, &y)| a + x * y)
            })
            .collect();
        let q_all = &self.q[qb..];
        let k_all = &self.k[kb..];
        let v_all = &self.v[vb..];
        let (qr, kr, vr) = (self.ql.row, self.kl.row, self.vl.row);
        for i0 in (0..nq).step_by(BLOCK_Q) {
            let bq = BLOCK_Q.min(nq - i0);
            for j0 in (0..nk).step_by(BLOCK_K) {
                let bk = BLOCK_K.min(nk - j0);
                let (s, p, dp) = (&mut s[..bq * bk], &mut p[..bq * bk], &mut dp[..bq * bk]);
                self.scores(ph, i0, bq, j0, bk, s);
                for r in 0..bq {
                    let i = i0 + r;
                    let (srow, prow) = (&s[r * bk..(r + 1) * bk], &mut p[r * bk..(r + 1) * bk]);
                    match self.normalizer {
                        Normalizer::Softmax => {
                            let lse = stat[i];
                            if lse == E::neg_infinity() {
                                prow.iter_mut().for_each(|x| *x = E::zero());
                                continue;
                            }
                            prow.iter_mut().zip(srow).for_each(|(pv, &x)| *pv = x - lse);
                            if !mask.all_visible() {
                                hide(prow, |c| mask.visible(i, j0 + c));
                            }
                            E::exp_slice(prow);
                        }
                        Normalizer::Taylor { eps } => {
                            let inv_z = E::one() / stat[i].at_least(E::of(eps));
                            let half = E::of(0.5);
                            for (pv, &x) in prow.iter_mut().zip(srow) {
                                *pv = (E::one() + x + x * x * half) * inv_z;
                            }
                            if !mask.all_visible() {
                                for (c, pv) in prow.iter_mut().enumerate() {
                                    if !mask.visible(i, j0 + c) {
                                        *pv = E::zero();
                                    }
                                }
                            }
                        }
                    }
                }
                let g_block = Mat::rows(&g[i0 * e..], (bq, e), e);
                // dP = dO · vᵀ
                mm(
                    MatMut::rows(dp, (bq, bk), bk),
                    false,
                    g_block,
                    Mat::rows(&v_all[j0 * vr..], (bk, e), vr).t(),
                    E::one(),
                );
                // dv += Pᵀ · dO
                // SAFETY: this task alone writes the value gradients of its problem and head
                let dv_block = unsafe { MatMut::in_shared(dv, vb + j0 * vr, (bk, e), vr) };
                mm(
                    dv_block,
                    true,
                    Mat::rows(p, (bq, bk), bk).t(),
                    g_block,
                    E::one(),
                );
                // dS, written over dp
                for r in 0..bq {
                    let i = i0 + r;
                    let prow = &p[r * bk..(r + 1) * bk];
                    let srow = &s[r * bk..(r + 1) * bk];
                    let drow = &mut dp[r * bk..(r + 1) * bk];
                    match self.normalizer {
                        Normalizer::Softmax => {
                            for c in 0..bk {
                                drow[c] = prow[c] * (drow[c] - dsum[i]);
                            }
                        }
                        Normalizer::Taylor { eps } => {
                            let eps = E::of(eps);
                            let inv_z = E::one() / stat[i].at_least(eps);
                            // the clamp passes the gradient only where Σw ≥ eps
                            let through = if stat[i] >= eps { dsum[i] } else { E::zero() };
                            for (dv, &x) in drow.iter_mut().zip(srow) {
                                *dv = (*dv - through) * inv_z * (E::one() + x);
                            }
                            if !mask.all_visible() {
                                for (c, dv) in drow.iter_mut().enumerate() {
                                    if !mask.visible(i, j0 + c) {
                                        *dv = E::zero();
                                    }
                                }
                            }
                        }
                    }
                    if let Some(db) = dbias.as_deref_mut() {
                        let dst = &mut db[i * nk + j0..][..bk];
                        dst.iter_mut()
                            .zip(drow.iter())
                            .for_each(|(o, &x)| *o = *o + x);
                    }
                }
                let ds = Mat::rows(dp, (bq, bk), bk);
                // SAFETY: this task alone writes the query and key gradients of its problem and
                // head
                let (dq_block, dk_block) = unsafe {
                    (
                        MatMut::in_shared(dq, qb + i0 * qr, (bq, d), qr),
                        MatMut::in_shared(dk, kb + j0 * kr, (bk, d), kr),
                    )
                };
                // dq += scale · dS · k
                mm(
                    dq_block,
                    true,
                    ds,
                    Mat::rows(&k_all[j0 * kr..], (bk, d), kr),
                    self.scale,
                );
                // dk += scale · dSᵀ · q
                mm(
                    dk_block,
                    true,
                    ds.t(),
                    Mat::rows(&q_all[i0 * qr..], (bq, d), qr),
                    self.scale,
                );
            }
        }
    }

    /// The backward pass where problems share bias blocks: the problems of one (group, head)
    /// are split into up to [`BIAS_RUNS`] runs, each run's bias gradient summed in a scratch
    /// block of its own, the runs then added in order. Returns the bias gradient
    /// (`len` elements, the bias's shape).
    fn backward_shared_bias(
        &self,
        fwd: &Stats<E>,
        g: &[E],
        ptrs: (Shared<'_, E>, Shared<'_, E>, Shared<'_, E>),
        len: usize,
    ) -> Vec<E> {
        let (share, block) = (self.bias_share, self.nq * self.nk);
        let blocks = len / block.max(1);
        let runs = share.min(BIAS_RUNS);
        let per_run = share.div_ceil(runs);
        // partial[(blk, run)]: bias block blk = group·h + head, summed over one run's problems
        let mut partial = zeros(blocks * runs * block);
        partial
            .par_chunks_mut(block.max(1))
            .enumerate()
            .for_each_init(
                || self.scratch(),
                |scr, (at, db)| {
                    let (blk, run) = (at / runs, at % runs);
                    let (group, head) = (blk / self.h, blk % self.h);
                    let first = group * share;
                    for p in first + run * per_run..(first + (run + 1) * per_run).min(first + share)
                    {
                        self.backward_pair(p * self.h + head, fwd, g, ptrs, Some(&mut *db), scr);
                    }
                },
            );
        let mut db = zeros(len);
        db.par_chunks_mut(block.max(1))
            .zip(partial.par_chunks(runs * block.max(1)))
            .for_each(|(out, runs_of_block)| {
                for run in runs_of_block.chunks(block.max(1)) {
                    out.iter_mut().zip(run).for_each(|(o, &x)| *o = *o + x);
                }
            });
        db
    }

    pub(super) fn backward(
        &self,
        fwd: &Stats<E>,
        g: &[E],
    ) -> (Vec<E>, Vec<E>, Vec<E>, Option<Vec<E>>) {
        let (pairs, nq, nk) = (self.p * self.h, self.nq, self.nk);
        let mut dq = zeros(self.q.len());
        let mut dk = zeros(self.k.len());
        let mut dv = zeros(self.v.len());
        let ptrs = (
            Shared::new(&mut dq),
            Shared::new(&mut dk),
            Shared::new(&mut dv),
        );
        let dbias = match &self.bias {
            Some(bias) if self.bias_share > 1 => {
                Some(self.backward_shared_bias(fwd, g, ptrs, bias.len()))
            }
            Some(_) => {
                let mut db = zeros(pairs * nq * nk);
                db.par_chunks_mut((nq * nk).max(1))
                    .enumerate()
                    .for_each_init(
                        || self.scratch(),
                        |scr, (ph, db)| self.backward_pair(ph, fwd, g, ptrs, Some(db), scr),
                    );
                Some(db)
            }
            None => {
                (0..pairs).into_par_iter().for_each_init(
                    || self.scratch(),
                    |scr, ph| self.backward_pair(ph, fwd, g, ptrs, None, scr),
                );
                None
            }
        };
        (dq, dk, dv, dbias)
    }
}

/// The sizes of an attention call over strided operands.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub problems: usize,
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub dim: usize,
    pub dim_value: usize,
}

/// Attention over operands stored in any tensors whose elements the [`Layout`]s address:
/// `out` (shape `out_shape`, laid out by `ol`) = `normalize(scale · q·kᵀ + bias) · v`, `bias`
/// `[G, H, nq, nk]` contiguous, each of its G blocks read by P / G consecutive problems. The weights are never stored.
#[allow(clippy::too_many_arguments)]
pub fn attention_strided<S: Shape, So: Shape, E: Real, T: Tape<E, Cpu>>(
    (q, ql): (Tensor<S, E, Cpu, T>, Layout),
    (k, kl): (Tensor<S, E, Cpu, T>, Layout),
    (v, vl): (Tensor<S, E, Cpu, T>, Layout),
    bias: Option<T4<E, Cpu, T>>,
    (out_shape, ol): (So, Layout),
    sizes: Sizes,
    spec: &WeightsSpec,
) -> Result<Tensor<So, E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let Sizes {
        problems: p,
        heads: h,
        queries: nq,
        keys: nk,
        dim: d,
        dim_value: e,
    } = sizes;
    let vis = &spec.visibility;
    if (vis.batch, vis.queries, vis.keys) != (p, nq, nk) {
        return Err(Error::shape(
            "attention visibility",
            format!("{:?}", (p, nq, nk)),
            format!("{:?}", (vis.batch, vis.queries, vis.keys)),
        ));
    }
    let bias_share = match &bias {
        Some(b) => bias_share("attention bias", *b.shape(), (p, h, nq, nk))?,
        None => 1,
    };
    // every addressed element must lie inside its buffer
    let last = |l: &Layout, rows: usize, c: usize| {
        if p * h * rows * c == 0 || l.count == 0 {
            0
        } else {
            (0..p).map(|pp| l.base(pp, h - 1)).max().unwrap_or(0) + (rows - 1) * l.row + c
        }
    };
    let checks = [
        ("queries", last(&ql, nq, d), q.shape().num_elements()),
        ("keys", last(&kl, nk, d), k.shape().num_elements()),
        ("values", last(&vl, nk, e), v.shape().num_elements()),
        ("output", last(&ol, nq, e), out_shape.num_elements()),
    ];
    for (what, need, have) in checks {
        if need > have {
            return Err(Error::shape(
                format!("attention {what} layout"),
                format!("≥ {need} elements"),
                have,
            ));
        }
    }
    // one task per problem and head writes its output rows and its gradient rows of q, k, v
    let layouts = [
        ("queries", &ql, nq, d),
        ("keys", &kl, nk, d),
        ("values", &vl, nk, e),
        ("output", &ol, nq, e),
    ];
    for (what, layout, rows, width) in layouts {
        if !layout.disjoint(p, h, rows, width) {
            return Err(Error::config(
                format!("attention {what} layout"),
                format!("{layout:?} addresses some element from two problems, heads or rows"),
            ));
        }
    }
    let dev = q.device().clone();
    let mut taped = Taped::new();
    let (q, k, v) = (taped.input(q), taped.input(k), taped.input(v));
    let bias = taped.optional(bias);
    let problem = Problem {
        p,
        h,
        nq,
        nk,
        d,
        e,
        scale: E::of(spec.scale),
        normalizer: spec.normalizer,
        vis: vis.clone(),
        q: Host::read(&q),
        k: Host::read(&k),
        v: Host::read(&v),
        ql,
        kl,
        vl,
        ol,
        out_len: out_shape.num_elements(),
        bias: bias.as_ref().map(Host::read),
        bias_share,
    };
    let mut fwd = problem.forward();
    // the backward reads the output: copy it when there is a tape, else hand it over
    let out = if T::OWNS_TAPE {
        copied(&fwd.out)
    } else {
        std::mem::take(&mut fwd.out)
    };
    let (q_g, k_g, v_g) = (q.ghost(), k.ghost(), v.ghost());
    let bias_g = bias.as_ref().map(|t| t.ghost());
    taped.output(&dev, out, out_shape, move |g, grads| {
        let (dq, dk, dv, dbias) = problem.backward(&fwd, &g);
        add_owned(grads, &q_g, dq)?;
        add_owned(grads, &k_g, dk)?;
        add_owned(grads, &v_g, dv)?;
        if let (Some(bg), Some(db)) = (&bias_g, dbias) {
            add_owned(grads, bg, db)?;
        }
        Ok(())
    })
}

/// Attention `q [P, H, nq, d]` over `k [P, H, nk, d]`, `v [P, H, nk, e]` with an optional
/// additive `bias [P, H, nq, nk]`, without storing the weights. (Talking heads mix scores
/// across heads and need them all at once: they take the weights kernel.)
pub fn attention_fused<E: Real, T: Tape<E, Cpu>>(
    q: T4<E, Cpu, T>,
    k: T4<E, Cpu, T>,
    v: T4<E, Cpu, T>,
    bias: Option<T4<E, Cpu, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    check_attention_shapes(*q.shape(), *k.shape(), *v.shape())?;
    let (p, h, nq, d) = *q.shape();
    let (nk, e) = (k.shape().2, v.shape().3);
    let sizes = Sizes {
        problems: p,
        heads: h,
        queries: nq,
        keys: nk,
        dim: d,
        dim_value: e,
    };
    attention_strided(
        (q, Layout::contiguous(h, nq, d)),
        (k, Layout::contiguous(h, nk, d)),
        (v, Layout::contiguous(h, nk, e)),
        bias,
        ((p, h, nq, e), Layout::contiguous(h, nq, e)),
        sizes,
        spec,
    )
}

#[cfg(test)]
mod tests {
    use super::{edge_layout, Layout};
    use crate::spec::{pattern_dims, EdgePattern};

    #[test]
    fn every_edge_pattern_writes_disjoint_rows_and_overlaps_are_caught() {
        let (b, n, heads, per_head) = (3, 5, 2, 4);
        for pattern in [
            EdgePattern::All,
            EdgePattern::Row,
            EdgePattern::Column,
            EdgePattern::Diagonal,
        ] {
            let (problems, len, _) = pattern_dims(pattern, b, n);
            let l = edge_layout(pattern, n, heads * per_head, per_head);
            assert!(l.disjoint(problems, heads, len, per_head), "{pattern:?}");
            // a head wider than its stride overlaps the next head
            assert!(
                !l.disjoint(problems, heads, len, per_head + 1),
                "{pattern:?}"
            );
        }
        let c = Layout::contiguous(heads, n, per_head);
        assert!(c.disjoint(b, heads, n, per_head));
        // heads stored on top of each other, or problems sharing one block
        assert!(!Layout { head: 0, ..c }.disjoint(b, heads, n, per_head));
        assert!(!Layout { outer: 0, ..c }.disjoint(b, heads, n, per_head));
        assert!(Layout { outer: 0, ..c }.disjoint(1, heads, n, per_head));
    }
}
