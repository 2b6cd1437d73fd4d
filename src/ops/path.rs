//! Path (triangular) attention: edge (i, j) attends over the paths i → l → j through every
//! node l, with score `scale · q(i, l) · k(l, j)` and value `v1(i, l) ⊙ v2(l, j)`, per head:
//!
//! `out[i, j] = Σ_l w_l(i, j) · v1[i, l] ⊙ v2[l, j]`, with `w(i, j)` normalised over l
//! (softmax or Taylor, as [`super::weights`]) under a visibility of n² queries (the edges) and
//! n keys (the middle nodes): `GraphMask::path_visibility`.
//!
//! This is the attention of the Edge Transformer (Bergen et al. 2021) and of Strassen-style
//! attention; other orientations ((i, l) with (j, l), …) are these inputs transposed. The CPU
//! runs a fused kernel in O(n²) memory (`kernels::cpu::path`); the composite form here keeps
//! the n³ scores and values.

use dfdx::prelude::*;

use super::weights::normalize_composite;
use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::spec::{check_path_shapes, WeightsSpec};
use crate::tensor::*;

/// Path attention: `q`, `v1` indexed `[b, i, l, ·]`, `k`, `v2` `[b, l, j, ·]`, with `h·d` and
/// `h·e` channels (head-major), to `[b, i, j, h·e]`. The fused kernel where the device has one,
/// else [`path_attention_composite`].
pub fn path_attention<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v1: T4<E, D, T>,
    v2: T4<E, D, T>,
    heads: usize,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    // both forms check their inputs (`check_path_shapes`) before computing
    if D::fuses(Fused::PathAttention) {
        D::path_attention_fused(q, k, v1, v2, heads, spec)
    } else {
        path_attention_composite(q, k, v1, v2, heads, spec)
    }
}

/// The composite form in dfdx ops (any device; the oracle of the fused kernel): n³ scores
/// from batched matrix products, normalised over l, then the values' products summed over l.
pub fn path_attention_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v1: T4<E, D, T>,
    v2: T4<E, D, T>,
    heads: usize,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    check_path_shapes(
        *q.shape(),
        *k.shape(),
        *v1.shape(),
        *v2.shape(),
        heads,
        &spec.visibility,
    )?;
    let (b, n, _, hd) = *q.shape();
    let h = heads;
    let (d, e) = (hd / h, v1.shape().3 / h);
    // [b, r, c, h·x] → [b·h, r, c, x] → per head, the first axis last-but-one: [b·h, c, r, x]
    let split = |t: T4<E, D, T>, x: usize| {
        t.reshape_like(&(b, n, n, h, x))
            .permute::<_, Axes5<0, 3, 1, 2, 4>>()
            .reshape_like(&(b * h, n, n, x))
    };
    // scores s[bh, l, i, j] = q[bh, i, l] · k[bh, l, j]: one product per l
    let q_l = split(q, d).permute::<_, Axes4<0, 2, 1, 3>>(); // [bh, l, i, d]
    let k_l = split(k, d).permute::<_, Axes4<0, 1, 3, 2>>(); // [bh, l, d, j]
    let s = q_l.matmul(k_l) * E::of(spec.scale); // [bh, l, i, j]
    let s = s
        .permute::<_, Axes4<0, 2, 3, 1>>() // [bh, i, j, l]
        .reshape_like(&(b, h, n * n, n));
    let w = normalize_composite(s, spec)?.reshape_like(&(b * h, n, n, n)); // [bh, i, j, l]
                                                                           // values v1[bh, i, l, ·] ⊙ v2[bh, l, j, ·] as [bh, i, j, l, e]
    let shape5 = (b * h, n, n, n, e);
    let v1 = split(v1, e).broadcast_like::<_, Axis<2>>(&shape5); // [bh, i, (j), l, e]
    let v2 = split(v2, e)
        .permute::<_, Axes4<0, 2, 1, 3>>() // [bh, j, l, e]
        .broadcast_like::<_, Axis<1>>(&shape5); // [bh, (i), j, l, e]
    let out = (w.broadcast_like::<_, Axis<4>>(&shape5) * v1 * v2).sum::<_, Axis<3>>(); // [bh, i, j, e]
    Ok(out
        .reshape_like(&(b, h, n, n, e))
        .permute::<_, Axes5<0, 2, 3, 1, 4>>()
        .reshape_like(&(b, n, n, h * e)))
}
