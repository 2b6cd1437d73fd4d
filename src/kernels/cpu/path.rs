//! Path (triangular) attention across edges, fused: edge (i, j) attends over the paths
//! i → l → j, with score `q(i, l) · k(l, j)` and value `v1(i, l) ⊙ v2(l, j)` (the Edge
//! Transformer's attention, Bergen et al. 2021).
//!
//! Cost n³ per head; memory O(n²): the forward keeps one `[n (j), n (l)]` score block per task
//! and the backward recomputes it instead of storing the n³ weights. The forward runs in
//! parallel over (graph, i, head); the backward over (graph, head), because the key-side
//! gradients of one problem sum over every i.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{accumulate, host_copy, zeros, CpuBuffer};
use super::shared::Shared;
use super::taped::Taped;
use crate::error::Result;
use crate::spec::{Normalizer, Visibility, WeightsSpec};
use crate::tensor::*;

/// The sizes and settings of one call, and its inputs on the host. `q`, `v1` are laid out
/// `[b, i, l, h, ·]`, `k`, `v2` `[b, l, j, h, ·]`, the output `[b, i, j, h, e]`.
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
    k: Vec<E>,
    v1: Vec<E>,
    v2: Vec<E>,
}

#[inline]
fn dot<E: Real>(a: &[E], b: &[E]) -> E {
    a.iter().zip(b).fold(E::zero(), |acc, (&x, &y)| acc + x * y)
}

impl<E: Real> PathProblem<E> {
    /// Offset of channel block `head` of edge (r, c) of graph `g`, `per_head` channels a head.
    #[inline]
    fn at(&self, g: usize, r: usize, c: usize, head: usize, per_head: usize) -> usize {
        (((g * self.n + r) * self.n + c) * self.h + head) * per_head
    }

    /// Writes the normalised weights `p[j · n + l]` of query row i (graph g, head), the raw
    /// (scaled) scores into `s`, and per j into `clamped` whether a Taylor normaliser was
    /// clamped to `eps`; invisible paths get weight 0.
    fn weights(
        &self,
        g: usize,
        i: usize,
        head: usize,
        s: &mut [E],
        p: &mut [E],
        clamped: &mut [bool],
    ) {
        let (n, d) = (self.n, self.d);
        for l in 0..n {
            let q = &self.q[self.at(g, i, l, head, d)..][..d];
            for j in 0..n {
                let k = &self.k[self.at(g, l, j, head, d)..][..d];
                s[j * n + l] = dot(q, k) * self.scale;
            }
        }
        for j in 0..n {
            let query = i * n + j;
            let row_s = &s[j * n..(j + 1) * n];
            let row_p = &mut p[j * n..(j + 1) * n];
            let visible = |l: usize| self.vis.visible(g, query, l);
            clamped[j] = false;
            match self.normalizer {
                Normalizer::Softmax => {
                    let mut max = E::neg_infinity();
                    for l in (0..n).filter(|&l| visible(l)) {
                        max = max.max(row_s[l]);
                    }
                    let mut sum = E::zero();
                    for l in 0..n {
                        row_p[l] = if visible(l) {
                            let w = (row_s[l] - max).exp();
                            sum = sum + w;
                            w
                        } else {
                            E::zero()
                        };
                    }
                    if sum > E::zero() {
                        row_p.iter_mut().for_each(|w| *w = *w / sum);
                    }
                }
                Normalizer::Taylor { eps } => {
                    let half = E::of(0.5);
                    let mut sum = E::zero();
                    for l in 0..n {
                        row_p[l] = if visible(l) {
                            let x = row_s[l];
                            let w = E::one() + x + half * x * x;
                            sum = sum + w;
                            w
                        } else {
                            E::zero()
                        };
                    }
                    let eps = E::of(eps);
                    clamped[j] = sum <= eps;
                    let z = sum.max(eps);
                    row_p.iter_mut().for_each(|w| *w = *w / z);
                }
            }
        }
    }

    fn forward(&self) -> Vec<E> {
        let (b, n, h, e) = (self.b, self.n, self.h, self.e);
        let mut out = zeros::<E>(b * n * n * h * e);
        let shared = Shared::new(&mut out);
        (0..b * n * h).into_par_iter().for_each_init(
            || {
                (
                    zeros::<E>(n * n),
                    zeros::<E>(n * n),
                    vec![false; n],
                    zeros::<E>(e),
                )
            },
            |(s, p, clamped, acc), task| {
                let (g, i, head) = (task / (n * h), (task / h) % n, task % h);
                self.weights(g, i, head, s, p, clamped);
                for j in 0..n {
                    let o = self.at(g, i, j, head, e);
                    acc.iter_mut().for_each(|a| *a = E::zero());
                    for l in 0..n {
                        let w = p[j * n + l];
                        if w == E::zero() {
                            continue;
                        }
                        let v1 = &self.v1[self.at(g, i, l, head, e)..][..e];
                        let v2 = &self.v2[self.at(g, l, j, head, e)..][..e];
                        for t in 0..e {
                            acc[t] = acc[t] + w * v1[t] * v2[t];
                        }
                    }
                    for (t, &a) in acc.iter().enumerate() {
                        // SAFETY: task (g, i, head) alone writes out[g, i, ·, head, ·]
                        unsafe { shared.write(o + t, a) };
                    }
                }
            },
        );
        out
    }

    /// Gradients of q, k, v1, v2 from the output's gradient `grad`.
    fn backward(&self, grad: &[E]) -> [Vec<E>; 4] {
        let (b, n, h, d, e) = (self.b, self.n, self.h, self.d, self.e);
        let (mut dq, mut dk) = (zeros::<E>(self.q.len()), zeros::<E>(self.k.len()));
        let (mut dv1, mut dv2) = (zeros::<E>(self.v1.len()), zeros::<E>(self.v2.len()));
        let out = [&mut dq, &mut dk, &mut dv1, &mut dv2].map(|v| Shared::new(v.as_mut_slice()));
        (0..b * h).into_par_iter().for_each(|task| {
            let (g, head) = (task / h, task % h);
            let (mut s, mut p) = (zeros::<E>(n * n), zeros::<E>(n * n));
            let mut clamped = vec![false; n];
            let mut ds = zeros::<E>(n * n);
            for i in 0..n {
                self.weights(g, i, head, &mut s, &mut p, &mut clamped);
                // dP, then the score gradient through the normaliser
                for j in 0..n {
                    let go = &grad[self.at(g, i, j, head, e)..][..e];
                    let (mut dp_sum, row) = (E::zero(), j * n);
                    for l in 0..n {
                        ds[row + l] = E::zero();
                        if p[row + l] == E::zero() {
                            continue;
                        }
                        let v1 = &self.v1[self.at(g, i, l, head, e)..][..e];
                        let v2 = &self.v2[self.at(g, l, j, head, e)..][..e];
                        let dp = (0..e).fold(E::zero(), |acc, t| acc + go[t] * v1[t] * v2[t]);
                        ds[row + l] = dp;
                        dp_sum = dp_sum + p[row + l] * dp;
                    }
                    for l in 0..n {
                        let (w, dp) = (p[row + l], ds[row + l]);
                        if w == E::zero() {
                            continue;
                        }
                        ds[row + l] = match self.normalizer {
                            Normalizer::Softmax => w * (dp - dp_sum),
                            Normalizer::Taylor { eps } => {
                                // p = w/Z: dw = (dp − [Z > eps]·Σ p·dp) / Z, ds = dw · (1 + s)
                                let x = s[row + l];
                                let raw = E::one() + x + E::of(0.5) * x * x;
                                let z = (raw / w).max(E::of(eps));
                                let shift = if clamped[j] { E::zero() } else { dp_sum };
                                (dp - shift) / z * (E::one() + x)
                            }
                        };
                    }
                }
                // the four input gradients; this task owns every (g, ·, ·, head) block
                for l in 0..n {
                    let q = &self.q[self.at(g, i, l, head, d)..][..d];
                    let v1 = &self.v1[self.at(g, i, l, head, e)..][..e];
                    let (oq, ov1) = (self.at(g, i, l, head, d), self.at(g, i, l, head, e));
                    for j in 0..n {
                        let (w, dsc) = (p[j * n + l], ds[j * n + l] * self.scale);
                        if w == E::zero() && dsc == E::zero() {
                            continue;
                        }
                        let k = &self.k[self.at(g, l, j, head, d)..][..d];
                        let v2 = &self.v2[self.at(g, l, j, head, e)..][..e];
                        let go = &grad[self.at(g, i, j, head, e)..][..e];
                        let (ok, ov2) = (self.at(g, l, j, head, d), self.at(g, l, j, head, e));
                        // SAFETY: only task (g, head) touches these blocks, sequentially
                        unsafe {
                            for t in 0..d {
                                *out[0].at(oq + t) = *out[0].at(oq + t) + dsc * k[t];
                                *out[1].at(ok + t) = *out[1].at(ok + t) + dsc * q[t];
                            }
                            for t in 0..e {
                                *out[2].at(ov1 + t) = *out[2].at(ov1 + t) + w * go[t] * v2[t];
                                *out[3].at(ov2 + t) = *out[3].at(ov2 + t) + w * go[t] * v1[t];
                            }
                        }
                    }
                }
            }
        });
        [dq, dk, dv1, dv2]
    }
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
        k: host_copy(&k),
        v1: host_copy(&v1),
        v2: host_copy(&v2),
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
